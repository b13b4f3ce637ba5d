import { AbortedError, ConfigInvalidError, EvolvmError } from '../../errors.js';

/** The bounds of one wait. `timeoutMs: Infinity` waits without a timer (then `signal` is the only bound). */
export interface WaitBounds {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
}

// setTimeout fires at once for delays above this; a longer timeout is as good as none.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The error a wait rejects with when its signal aborts: the reason itself when it is already an evolvm error
 * (an enclosing {@link Deadline} aborts with its timeout error), else an {@link AbortedError}.
 */
export function abortReason(signal: AbortSignal, operation: string): Error {
  return signal.reason instanceof EvolvmError ? signal.reason : new AbortedError(operation, { cause: signal.reason });
}

/** @throws {ConfigInvalidError} unless `value` is a number >= 0 (Infinity allowed). */
export function checkTimeout(option: string, value: unknown): void {
  if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
    throw new ConfigInvalidError([{ path: option, message: 'expected a number of ms >= 0 (Infinity for none)', value }]);
  }
}

/**
 * A promise that `start` settles, or the timeout, or the signal, whichever comes first. `start` runs
 * synchronously and returns its cleanup, which runs exactly once however the promise settles.
 * An invalid `timeoutMs` rejects with {@link ConfigInvalidError}.
 */
export function bounded<T>(
  operation: string,
  bounds: WaitBounds,
  onTimeout: () => Error,
  start: (resolve: (value: T) => void, reject: (error: unknown) => void) => (() => void) | void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const { timeoutMs, signal } = bounds;
    checkTimeout('timeoutMs', timeoutMs);
    if (signal?.aborted) {
      reject(abortReason(signal, operation));
      return;
    }
    let settled = false;
    let cleanup: (() => void) | void;
    let timer: NodeJS.Timeout | undefined;
    const settle = (finish: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      cleanup?.();
      finish();
    };
    const onAbort = (): void => settle(() => reject(abortReason(signal!, operation)));
    const ok = (value: T): void => settle(() => resolve(value));
    const fail = (error: unknown): void => settle(() => reject(error));

    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs <= MAX_TIMER_MS) timer = setTimeout(() => fail(onTimeout()), timeoutMs);
    try {
      const stop = start(ok, fail);
      // start may settle synchronously, before its cleanup was known.
      if (settled) stop?.();
      else cleanup = stop;
    } catch (error) {
      fail(error);
    }
  });
}

/** Resolves after `ms`; rejects as {@link bounded} does when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined, operation: string): Promise<void> {
  return bounded<void>(operation, { timeoutMs: Infinity, signal }, unreachableTimeout, (resolve) => {
    const timer = setTimeout(resolve, ms);
    return () => clearTimeout(timer);
  });
}

/** For waits bounded by a signal alone. */
export function unreachableTimeout(): Error {
  return new Error('unreachable: this wait has no timer');
}

/**
 * One bound over several steps: a timeout and the caller's signal folded into one {@link signal}, whose abort
 * reason is the error to throw (the timeout error, or an {@link AbortedError} for the caller's abort). Pass
 * `{ timeoutMs: Infinity, signal: deadline.signal }` to each step. {@link dispose} releases the timer and aborts
 * the signal, so a step still waiting when the work ends is released too.
 */
export class Deadline {
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #release: () => void;

  /** @throws {ConfigInvalidError} an invalid `timeoutMs`. */
  constructor(operation: string, bounds: WaitBounds, onTimeout: () => EvolvmError) {
    checkTimeout('timeoutMs', bounds.timeoutMs);
    const controller = this.#controller;
    this.signal = controller.signal;
    const outer = bounds.signal;
    const onAbort = (): void => controller.abort(abortReason(outer!, operation));
    if (outer?.aborted) onAbort();
    else outer?.addEventListener('abort', onAbort, { once: true });
    const timer = bounds.timeoutMs <= MAX_TIMER_MS ? setTimeout(() => controller.abort(onTimeout()), bounds.timeoutMs) : undefined;
    this.#release = () => {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
      controller.abort(new AbortedError(`${operation} (finished)`));
    };
  }

  dispose(): void {
    this.#release();
  }
}

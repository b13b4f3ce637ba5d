import { setTimeout as delay } from 'node:timers/promises';
import { AbortedError } from '../errors.js';

/**
 * Runs `work` with a timeout and an optional caller signal. The signal handed to `work` aborts on either,
 * so the work can stop early; `onTimeout` builds the typed error for an expired bound.
 */
export async function withDeadline<T>(
  operation: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  onTimeout: () => Error,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  if (signal?.aborted) throw new AbortedError(operation, { cause: signal.reason });
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const bounded = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = onTimeout();
      controller.abort(error);
      reject(error);
    }, timeoutMs);
    timer.unref?.();
    if (signal) {
      onAbort = () => {
        const error = new AbortedError(operation, { cause: signal.reason });
        controller.abort(error);
        reject(error);
      };
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  try {
    return await Promise.race([work(controller.signal), bounded]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

/** Sleeps, rejecting with AbortedError when the signal fires. */
export async function sleep(ms: number, signal?: AbortSignal, operation = 'wait'): Promise<void> {
  try {
    await delay(ms, undefined, { signal });
  } catch (error) {
    throw new AbortedError(operation, { cause: error });
  }
}

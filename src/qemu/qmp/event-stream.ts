import type { QmpEvent } from './messages.js';
import { abortReason } from './wait.js';

/** Which events a stream receives: one name, any of several names, or a predicate. */
export type QmpEventFilter = string | readonly string[] | ((event: QmpEvent) => boolean);

export interface QmpEventStreamOptions {
  /** Ends the stream: a pending or later `next()` rejects with `AbortedError`. */
  readonly signal?: AbortSignal;
  /** Events kept while nobody reads; past it the oldest are dropped and counted in `dropped`. Default 1000. */
  readonly maxBuffered?: number;
}

/** How the client feeds a subscriber. `end(undefined)` is a clean end; `end(error)` a dropped connection. */
export interface EventSink {
  event(event: QmpEvent): void;
  end(error: Error | undefined): void;
}

const DEFAULT_MAX_BUFFERED = 1000;

type Reader = { resolve(result: IteratorResult<QmpEvent>): void; reject(error: unknown): void };

/**
 * The events of one QMP client as an async iterator. It subscribes when it is created, not on the first
 * `next()`, and buffers what arrives before it is read, so it can be created before the command that causes
 * the events. Leave it (`break`, `return()`, `await using`) to unsubscribe.
 *
 * When the client closes the stream ends after its buffered events; when the connection drops it then throws
 * the client's `QmpDisconnectedError` (or the `QmpProtocolError` that ended it).
 */
export class QmpEventStream implements AsyncIterableIterator<QmpEvent>, AsyncDisposable {
  readonly #buffer: QmpEvent[] = [];
  readonly #readers: Reader[] = [];
  readonly #maxBuffered: number;
  readonly #signal: AbortSignal | undefined;
  #unsubscribe: (() => void) | undefined;
  #ended = false;
  #error: unknown;
  #dropped = 0;

  /** @internal Created by `QmpClient.events()`. */
  constructor(
    subscribe: (sink: EventSink) => () => void,
    filter: QmpEventFilter | undefined,
    options: QmpEventStreamOptions = {},
  ) {
    this.#maxBuffered = options.maxBuffered ?? DEFAULT_MAX_BUFFERED;
    this.#signal = options.signal;
    const matches = toPredicate(filter);
    const unsubscribe = subscribe({
      event: (event) => {
        try {
          if (matches(event)) this.#push(event);
        } catch (error) {
          this.#end(error);
        }
      },
      end: (error) => this.#end(error),
    });
    if (this.#ended) unsubscribe();
    else this.#unsubscribe = unsubscribe;
    if (this.#signal?.aborted) this.#onAbort();
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Events dropped because more than `maxBuffered` waited unread. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * The next matching event, waiting for it if none is buffered.
   * @throws {QmpDisconnectedError} the connection dropped (after the buffered events were read).
   * @throws {QmpProtocolError} QEMU broke the protocol and the client dropped the connection.
   * @throws {AbortedError} the stream's signal aborted.
   */
  next(): Promise<IteratorResult<QmpEvent>> {
    const event = this.#buffer.shift();
    if (event !== undefined) return Promise.resolve({ value: event, done: false });
    if (this.#ended) {
      const error = this.#error;
      // An iterator that threw is finished: report the error once.
      this.#error = undefined;
      return error === undefined ? Promise.resolve(DONE) : Promise.reject(error);
    }
    return new Promise((resolve, reject) => this.#readers.push({ resolve, reject }));
  }

  /** Unsubscribes and discards buffered events; waiting `next()` calls resolve as done. */
  return(): Promise<IteratorResult<QmpEvent>> {
    this.#buffer.length = 0;
    this.#end(undefined);
    this.#error = undefined;
    return Promise.resolve(DONE);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.return();
  }

  #push(event: QmpEvent): void {
    const reader = this.#readers.shift();
    if (reader) {
      reader.resolve({ value: event, done: false });
      return;
    }
    this.#buffer.push(event);
    if (this.#buffer.length > this.#maxBuffered) {
      this.#buffer.shift();
      this.#dropped++;
    }
  }

  #end(error: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    // Readers wait only while the buffer is empty, so they take the end now.
    for (const reader of this.#readers.splice(0)) {
      if (this.#error === undefined) reader.resolve(DONE);
      else {
        reader.reject(this.#error);
        this.#error = undefined;
      }
    }
  }

  readonly #onAbort = (): void => this.#end(abortReason(this.#signal!, 'QMP event stream'));
}

const DONE: IteratorReturnResult<undefined> = { value: undefined, done: true };

function toPredicate(filter: QmpEventFilter | undefined): (event: QmpEvent) => boolean {
  if (filter === undefined) return () => true;
  if (typeof filter === 'string') return (event) => event.event === filter;
  if (typeof filter === 'function') return filter;
  const names = new Set(filter);
  return (event) => names.has(event.event);
}

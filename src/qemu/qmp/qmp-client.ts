import type { Socket } from 'node:net';
import { ConfigInvalidError, QmpCommandError, QmpDisconnectedError, QmpProtocolError } from '../../errors.js';
import { QmpEventStream, type EventSink, type QmpEventFilter, type QmpEventStreamOptions } from './event-stream.js';
import { DEFAULT_MAX_LINE_BYTES, LineDecoder } from './line-decoder.js';
import { parseInbound, type QmpEvent, type QmpGreeting, type QmpInbound } from './messages.js';
import { connectUnixSocket } from './unix-connect.js';
import { bounded, checkTimeout, Deadline, unreachableTimeout, type WaitBounds } from './wait.js';

/** The run state: `connecting` (greeting, capabilities) → `running` → `disconnecting` → `closed`. */
export type QmpClientState = 'connecting' | 'running' | 'disconnecting' | 'closed';

export interface QmpConnectOptions {
  /** Bounds the whole start: waiting for the socket to appear, the greeting and `qmp_capabilities`. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** The timeout of an `execute` that passes none. Default 30 000 ms. */
  readonly commandTimeoutMs?: number;
  /** The longest line QEMU may send. Default 1 MiB. */
  readonly maxLineBytes?: number;
}

export interface QmpExecuteOptions {
  /** Default: the client's `commandTimeoutMs`. `Infinity` leaves `signal` as the only bound. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

export interface QmpWaitOptions {
  /** `Infinity` leaves `signal` as the only bound. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

/** How the connection ended: who closed it, and the error that made the client drop it, if any. */
export interface QmpCloseInfo {
  readonly initiator: 'client' | 'peer';
  readonly error: Error | undefined;
}

/** What `on()` listeners receive. */
export interface QmpClientEventMap {
  /** Every QMP event, as it arrives. */
  event: QmpEvent;
  /** Once, when the connection is closed. */
  close: QmpCloseInfo;
}

export type QmpListener<K extends keyof QmpClientEventMap> = (payload: QmpClientEventMap[K]) => void;

interface PendingCommand {
  readonly command: string;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
// How long close() waits for QEMU to answer our FIN before it destroys the socket.
const CLOSE_GRACE_MS = 1_000;

/**
 * A QMP session with one QEMU process over a unix socket, modelled on QEMU's own python client
 * (`python/qemu/qmp`): an explicit run state; greeting, then `qmp_capabilities`, then a reader loop; every
 * command carries an id and its reply is routed by that id (replies with unknown ids are dropped); when the
 * connection drops, everything that waits on it is rejected.
 *
 * @example
 * await using qmp = await QmpClient.connect(`${dir}/qmp.sock`, { timeoutMs: 5_000 });
 * const stopped = qmp.waitForEvent('STOP', () => true, { timeoutMs: 5_000 });
 * await qmp.execute('stop');
 * await stopped;
 */
export class QmpClient implements AsyncDisposable {
  /** Resolves (never rejects) once the socket is closed, whoever closed it. */
  readonly closed: Promise<QmpCloseInfo>;
  readonly path: string;

  #state: QmpClientState = 'connecting';
  readonly #socket: Socket;
  readonly #decoder: LineDecoder;
  readonly #commandTimeoutMs: number;
  #lastId = 0;
  readonly #pending = new Map<number, PendingCommand>();
  readonly #sinks = new Set<EventSink>();
  readonly #listeners: { [K in keyof QmpClientEventMap]: Set<QmpListener<K>> } = { event: new Set(), close: new Set() };
  #greeting: QmpGreeting | undefined;
  #greetingWaiter: { resolve(greeting: QmpGreeting): void; reject(error: unknown): void } | undefined;
  #closeInfo: QmpCloseInfo | undefined;
  // What event sinks get once the connection is closing: undefined for a clean close by this client.
  #sinkEnd: Error | undefined;
  #socketError: Error | undefined;
  #graceTimer: NodeJS.Timeout | undefined;
  #resolveClosed: (info: QmpCloseInfo) => void = () => {};

  private constructor(socket: Socket, path: string, commandTimeoutMs: number, maxLineBytes: number) {
    this.#socket = socket;
    this.path = path;
    this.#commandTimeoutMs = commandTimeoutMs;
    this.#decoder = new LineDecoder({ maxLineBytes });
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (error) => (this.#socketError ??= error));
    socket.on('close', () => this.#finish());
  }

  /**
   * Connects to QEMU's QMP socket, waiting for it to appear (QEMU creates it shortly after spawn), reads the
   * greeting and negotiates capabilities. Resolves in state `running`.
   * @throws {QmpCommandError} class `Timeout`: no QMP session within `timeoutMs` (the last connect error is the `cause`).
   * @throws {AbortedError} `signal` aborted.
   * @throws {QmpDisconnectedError} the connect failed for another reason than a missing or refusing socket, or
   *   the connection closed before the session started.
   * @throws {QmpProtocolError} QEMU sent no valid greeting, or a line that is too long or not JSON.
   * @throws {QmpCommandError} QEMU refused `qmp_capabilities`.
   * @throws {ConfigInvalidError} an option is out of range.
   */
  static async connect(path: string, options: QmpConnectOptions): Promise<QmpClient> {
    const commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    checkTimeout('commandTimeoutMs', commandTimeoutMs);
    if (!Number.isSafeInteger(maxLineBytes) || maxLineBytes < 1) {
      throw new ConfigInvalidError([{ path: 'maxLineBytes', message: 'expected a positive integer', value: maxLineBytes }]);
    }
    let lastError: unknown;
    const deadline = new Deadline(
      'QMP connect',
      options,
      () => new QmpCommandError('connect', 'Timeout', `no QMP session on ${path} within ${options.timeoutMs} ms`, { cause: lastError }),
    );
    try {
      const socket = await connectUnixSocket(path, deadline.signal, (error) => (lastError = error));
      const client = new QmpClient(socket, path, commandTimeoutMs, maxLineBytes);
      try {
        await client.#handshake(deadline.signal);
      } catch (error) {
        client.#shutdown('client', error instanceof Error ? error : new Error(String(error)));
        await client.closed;
        throw error;
      }
      return client;
    } finally {
      deadline.dispose();
    }
  }

  get state(): QmpClientState {
    return this.#state;
  }

  /** The greeting QEMU sent: its version and capabilities. */
  get greeting(): QmpGreeting {
    if (this.#greeting === undefined) throw new QmpProtocolError('no greeting received yet');
    return this.#greeting;
  }

  /**
   * Sends a command and waits for its reply. The command is written before this returns, so a
   * {@link waitForEvent} or {@link events} created before the call sees every event the command causes.
   * A timeout or abort stops the wait, not the command: QEMU still runs it, and its late reply is dropped.
   * @returns the reply's `return` value.
   * @throws {QmpCommandError} QEMU answered with an error (its `class` and `desc`), or class `Timeout`: no reply in time.
   * @throws {AbortedError} `signal` aborted.
   * @throws {QmpDisconnectedError} the client is not running, or the connection dropped before the reply.
   * @throws {QmpProtocolError} QEMU broke the protocol while the command was pending (the client then closes).
   * @throws {ConfigInvalidError} `timeoutMs` is not a number >= 0.
   */
  async execute<T = unknown>(command: string, args?: object, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.#state !== 'running') throw new QmpDisconnectedError(command);
    return this.#send<T>(command, args, { timeoutMs: options.timeoutMs ?? this.#commandTimeoutMs, signal: options.signal });
  }

  /**
   * Waits for the first event named `name` that `predicate` accepts, counting from this call: it subscribes
   * at once. To catch an event a command causes, call this first, then `execute`, then await it, because
   * QEMU may send the event in the same read as the reply. The returned promise is marked handled, so one
   * left unawaited because `execute` threw does not crash the process; pass a `signal` to release it early.
   * @throws {QmpCommandError} class `Timeout`: no such event within `timeoutMs`.
   * @throws {AbortedError} `signal` aborted.
   * @throws {QmpDisconnectedError} the connection closed first (or already had).
   * @throws {QmpProtocolError} QEMU broke the protocol and the client dropped the connection.
   * @throws whatever `predicate` throws.
   */
  waitForEvent(name: string, predicate: (event: QmpEvent) => boolean, options: QmpWaitOptions): Promise<QmpEvent> {
    const waited = bounded<QmpEvent>(
      `QMP wait for ${name}`,
      options,
      () => new QmpCommandError(`wait for ${name}`, 'Timeout', `no matching ${name} event within ${options.timeoutMs} ms`),
      (resolve, reject) =>
        this.#subscribe({
          event: (event) => {
            if (event.event !== name) return;
            try {
              if (predicate(event)) resolve(event);
            } catch (error) {
              reject(error);
            }
          },
          end: (error) => reject(error ?? new QmpDisconnectedError(undefined)),
        }),
    );
    waited.catch(() => {});
    return waited;
  }

  /**
   * The events that match `filter` from now on, as an async iterator that buffers until read (see
   * {@link QmpEventStream}). Create it before the command that causes the events.
   */
  events(filter?: QmpEventFilter, options?: QmpEventStreamOptions): QmpEventStream {
    return new QmpEventStream((sink) => this.#subscribe(sink), filter, options);
  }

  /**
   * Adds a listener; returns the function that removes it. A listener runs synchronously as each message is
   * read and must not throw: what it throws is rethrown from a microtask, as an uncaught exception.
   */
  on<K extends keyof QmpClientEventMap>(type: K, listener: QmpListener<K>): () => void {
    this.#listeners[type].add(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof QmpClientEventMap>(type: K, listener: QmpListener<K>): void {
    this.#listeners[type].delete(listener);
  }

  /**
   * Whether an open connection keeps Node's event loop alive (it does by default). A QEMU kept waiting in the
   * background (a standby machine) must not keep a program that is done from exiting.
   */
  holdEventLoop(hold: boolean): void {
    if (hold) this.#socket.ref();
    else this.#socket.unref();
  }

  /**
   * Closes the connection: pending commands and event waiters reject with {@link QmpDisconnectedError} at once,
   * event streams end, and the promise resolves when the socket is closed. Idempotent.
   */
  close(): Promise<void> {
    this.#shutdown('client', undefined);
    return this.closed.then(() => undefined);
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #handshake(signal: AbortSignal): Promise<void> {
    await bounded<QmpGreeting>('QMP connect', { timeoutMs: Infinity, signal }, unreachableTimeout, (resolve, reject) => {
      if (this.#greeting !== undefined) return resolve(this.#greeting);
      if (this.#closeInfo !== undefined) return reject(this.#dropError(undefined));
      this.#greetingWaiter = { resolve, reject };
      return () => (this.#greetingWaiter = undefined);
    });
    await this.#send('qmp_capabilities', undefined, { timeoutMs: Infinity, signal });
    // A drop during the await above already moved the state on.
    if (this.#state === 'connecting') this.#state = 'running';
  }

  #send<T>(command: string, args: object | undefined, bounds: WaitBounds): Promise<T> {
    const id = ++this.#lastId;
    const line = `${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`;
    return bounded<T>(
      `QMP ${command}`,
      bounds,
      () => new QmpCommandError(command, 'Timeout', `no reply within ${bounds.timeoutMs} ms`),
      (resolve, reject) => {
        if (this.#closeInfo !== undefined) return reject(this.#dropError(command));
        this.#pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject });
        this.#socket.write(line);
        return () => this.#pending.delete(id);
      },
    );
  }

  #subscribe(sink: EventSink): () => void {
    if (this.#closeInfo !== undefined) {
      sink.end(this.#sinkEnd);
      return () => {};
    }
    this.#sinks.add(sink);
    return () => this.#sinks.delete(sink);
  }

  #onData(chunk: Buffer): void {
    if (this.#closeInfo !== undefined) return;
    try {
      for (const message of this.#decoder.push(chunk)) {
        this.#dispatch(parseInbound(message));
        if (this.#closeInfo !== undefined) return;
      }
    } catch (error) {
      this.#shutdown('client', error as QmpProtocolError);
    }
  }

  /** @throws {QmpProtocolError} a message out of place. */
  #dispatch(message: QmpInbound): void {
    if (this.#greeting === undefined && message.kind !== 'greeting') {
      throw new QmpProtocolError(`expected the greeting, got ${message.kind === 'event' ? 'an event' : 'a reply'} first`);
    }
    switch (message.kind) {
      case 'greeting':
        if (this.#greeting !== undefined) throw new QmpProtocolError('a second greeting');
        this.#greeting = message.greeting;
        this.#greetingWaiter?.resolve(message.greeting);
        return;
      case 'event':
        for (const sink of [...this.#sinks]) sink.event(message.event);
        this.#emit('event', message.event);
        return;
      case 'return':
      case 'error': {
        const pending = typeof message.id === 'number' ? this.#pending.get(message.id) : undefined;
        // qmp-spec: "Clients should drop all the responses that have an unknown id field."
        if (pending === undefined) return;
        this.#pending.delete(message.id as number);
        if (message.kind === 'return') pending.resolve(message.value);
        else pending.reject(new QmpCommandError(pending.command, message.errorClass, message.desc));
        return;
      }
      default: {
        const unreachable: never = message;
        return unreachable;
      }
    }
  }

  #emit<K extends keyof QmpClientEventMap>(type: K, payload: QmpClientEventMap[K]): void {
    for (const listener of [...this.#listeners[type]]) {
      try {
        listener(payload);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /**
   * Starts closing, once: moves to `disconnecting`, fails everything that waits and closes the socket.
   * The socket's `close` event finishes the job ({@link #finish}).
   */
  #shutdown(initiator: 'client' | 'peer', error: Error | undefined): void {
    if (this.#closeInfo !== undefined) return;
    this.#closeInfo = { initiator, error };
    this.#state = 'disconnecting';
    this.#sinkEnd = initiator === 'client' && error === undefined ? undefined : this.#dropError(undefined);
    for (const pending of this.#pending.values()) pending.reject(this.#dropError(pending.command));
    this.#pending.clear();
    this.#greetingWaiter?.reject(this.#dropError(undefined));
    for (const sink of [...this.#sinks]) sink.end(this.#sinkEnd);
    this.#sinks.clear();
    if (initiator === 'client' && error === undefined) {
      // A graceful close flushes what was written (a `quit`, say); QEMU answers our FIN by closing.
      this.#socket.end();
      this.#graceTimer = setTimeout(() => this.#socket.destroy(), CLOSE_GRACE_MS);
    } else {
      this.#socket.destroy();
    }
  }

  #dropError(command: string | undefined): Error {
    const error = this.#closeInfo?.error;
    return error instanceof QmpProtocolError ? error : new QmpDisconnectedError(command, { cause: error });
  }

  #finish(): void {
    this.#shutdown('peer', this.#socketError);
    clearTimeout(this.#graceTimer);
    this.#state = 'closed';
    const info = this.#closeInfo!;
    this.#emit('close', info);
    this.#resolveClosed(info);
  }
}

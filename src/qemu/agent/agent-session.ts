import net from 'node:net';
import {
  AbortedError,
  AgentDisconnectedError,
  AgentTimeoutError,
  EvolvmError,
  GuestOperationError,
  GuestProtocolViolationError,
} from '../../errors.js';
import { sleep } from '../../util/deadline.js';
import { FrameDecoder, MAX_FRAME_BYTES } from './frame-decoder.js';
import { encodeFrame } from './frame-encoder.js';
import { parseGuestMessage, parseHello, PROTOCOL_VERSION, type GuestHello, type GuestMessage } from './messages.js';

export type ChunkStream = 'stdout' | 'stderr' | 'data';

export interface RequestOptions {
  /** Bound on this request; defaults to the session's. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Receives streamed output before the reply. */
  onChunk?: (stream: ChunkStream, data: Uint8Array) => void;
  /**
   * Serves the guest's host-function calls made while this request runs. A rejection is sent back to the guest
   * as an error (code from an EvolvmError's `guestCode`/`code`, else `HOST_ERROR`).
   */
  onHostCall?: (fn: string, args: unknown[]) => Promise<unknown>;
}

/** What every session needs, with or without a hello. */
export interface SessionOptions {
  socketPath: string;
  /** Default bound on one request. */
  requestTimeoutMs: number;
  signal?: AbortSignal;
  maxFrameBytes?: number;
  /**
   * Decides the error pending requests get when the channel closes (the machine knows whether QEMU died).
   * Defaults to {@link AgentDisconnectedError}.
   */
  closeReason?: () => Promise<EvolvmError>;
}

export interface AgentSessionOptions extends SessionOptions {
  /** Bound on connecting and on the first hello. */
  helloTimeoutMs: number;
  /**
   * Ask for the hello instead of waiting for the one the agent sends when it starts: a guest restored from a
   * snapshot was already running and may not announce itself.
   */
  requestHello?: boolean;
}

interface Pending {
  op: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  onChunk: RequestOptions['onChunk'];
  onHostCall: RequestOptions['onHostCall'];
  timer: NodeJS.Timeout;
  /** The caller's signal and the listener on it, when there is one. */
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

type SessionState = 'running' | 'closed';

export interface ResyncOptions {
  /** The request that reads the fresh hello (default `hello`). */
  op?: string;
  args?: Record<string, unknown>;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Host-function calls the guest may have in flight at once; more are refused (the guest is untrusted). */
export const MAX_HOST_CALLS_IN_FLIGHT = 64;

/** The id of the hello a connecting session may ask for; session ids start above it, so it is never reused. */
const HELLO_REQUEST_ID = 1;

/**
 * A request/reply session with the guest agent over the virtio-serial socket. Owns the socket and the
 * pending requests: ids are never reused, replies to unknown ids are dropped, every request is bounded in
 * time, and every pending request fails when the channel closes, a restore invalidates it, or the guest
 * breaks the protocol.
 */
export class AgentSession {
  #state: SessionState = 'running';
  // Undefined for a session opened without a hello (a runtime's direct port, see open).
  #hello: GuestHello | undefined;
  #nextId = HELLO_REQUEST_ID + 1;
  readonly #pending = new Map<number, Pending>();
  readonly #socket: net.Socket;
  #decoder: FrameDecoder;
  readonly #idleWaiters = new Set<() => void>();
  #hostCallsInFlight = 0;
  readonly #options: SessionOptions;
  #failure: EvolvmError | undefined;
  readonly closed: Promise<void>;
  #markClosed!: () => void;

  private constructor(socket: net.Socket, decoder: FrameDecoder, hello: GuestHello | undefined, options: SessionOptions) {
    this.#socket = socket;
    this.#decoder = decoder;
    this.#hello = hello;
    this.#options = options;
    this.closed = new Promise((resolve) => (this.#markClosed = resolve));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => void this.#onClose());
    socket.resume();
  }

  /**
   * Connects to the agent socket (retrying until QEMU has created it) and waits for the guest's hello.
   * @throws {AgentTimeoutError} when no hello arrives within `helloTimeoutMs`.
   * @throws {GuestProtocolViolationError} when the guest's first frame is not a valid hello.
   * @throws {AbortedError} when `signal` fires.
   */
  static async connect(options: AgentSessionOptions): Promise<AgentSession> {
    const deadline = Date.now() + options.helloTimeoutMs;
    const socket = await connectWithRetry(options.socketPath, deadline, options.signal);
    const decoder = new FrameDecoder(options.maxFrameBytes ?? MAX_FRAME_BYTES);
    try {
      if (options.requestHello) socket.write(encodeFrame({ t: 'req', id: HELLO_REQUEST_ID, op: 'hello', a: {} }));
      const first = await readFirstFrame(socket, decoder, deadline, options);
      const message = parseGuestMessage(first.message);
      let hello: GuestHello;
      if (message.t === 'hello') hello = message.hello;
      else if (options.requestHello && message.t === 'res' && message.id === HELLO_REQUEST_ID && message.ok) hello = parseHello(message.v);
      else throw new GuestProtocolViolationError(`expected hello, got ${message.t}`);
      if (hello.v !== PROTOCOL_VERSION) {
        throw new GuestProtocolViolationError(`guest speaks protocol ${hello.v}, host ${PROTOCOL_VERSION}`);
      }
      const session = new AgentSession(socket, decoder, hello, options);
      for (const raw of first.rest) session.#dispatch(raw);
      return session;
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }

  /**
   * Opens a session on a channel whose peer says no hello: a runtime's direct port (guest/RUNTIMES.md), which
   * carries requests, replies and host calls in the same frames as the agent's channel.
   * @throws {AgentTimeoutError} when the socket cannot be connected within `connectTimeoutMs`.
   * @throws {AbortedError} when `signal` fires.
   */
  static async open(options: SessionOptions & { connectTimeoutMs: number }): Promise<AgentSession> {
    const socket = await connectWithRetry(options.socketPath, Date.now() + options.connectTimeoutMs, options.signal);
    return new AgentSession(socket, new FrameDecoder(options.maxFrameBytes ?? MAX_FRAME_BYTES), undefined, options);
  }

  /** The guest's latest hello. @throws {Error} for a session opened without one ({@link open}). */
  get hello(): GuestHello {
    if (!this.#hello) throw new Error('this session was opened without a hello');
    return this.#hello;
  }

  get state(): SessionState {
    return this.#state;
  }

  /** Requests in flight. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /**
   * Sends one request and waits for its reply.
   * @throws {AgentTimeoutError} when no reply arrives within the bound (a late reply is dropped).
   * @throws {GuestOperationError} when the guest answers with an error.
   * @throws {AgentDisconnectedError} or the machine's close reason when the channel is lost.
   * @throws {AbortedError} when `signal` fires.
   */
  request(op: string, args: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<unknown> {
    if (this.#state !== 'running') {
      return Promise.reject(this.#failure ?? new AgentDisconnectedError(op, 'session closed'));
    }
    if (options.signal?.aborted) return Promise.reject(new AbortedError(op, { cause: options.signal.reason }));
    const id = this.#nextId++;
    let frame: Buffer;
    try {
      frame = encodeFrame({ t: 'req', id, op, a: args }, this.#options.maxFrameBytes);
    } catch (error) {
      return Promise.reject(new GuestOperationError(op, 'TOO_LARGE', (error as Error).message, { cause: error }));
    }
    const timeoutMs = options.timeoutMs ?? this.#options.requestTimeoutMs;
    const { signal } = options;
    return new Promise((resolve, reject) => {
      // The hot path (a call) allocates no closures but the promise's: the timer gets its arguments.
      const timer = setTimeout(this.#onTimeout, timeoutMs, id, op, timeoutMs);
      let onAbort: (() => void) | undefined;
      if (signal) {
        onAbort = () => this.#settle(id, new AbortedError(op, { cause: signal.reason }));
        signal.addEventListener('abort', onAbort, { once: true });
      }
      this.#pending.set(id, { op, resolve, reject, onChunk: options.onChunk, onHostCall: options.onHostCall, timer, signal, onAbort });
      this.#socket.write(frame);
    });
  }

  readonly #onTimeout = (id: number, op: string, timeoutMs: number): void => {
    this.#settle(id, new AgentTimeoutError(op, timeoutMs));
  };

  /**
   * Called after the VM's memory was restored from a snapshot: fails every pending request (their replies
   * belong to a timeline that no longer exists) and asks the guest for a fresh hello, with `op` (default
   * `hello`; any op that answers with the hello map, such as `refresh`).
   * @throws {AgentTimeoutError} when the restored guest does not answer.
   * @throws {GuestOperationError} when the guest answers `op` with an error.
   */
  async resync(reason: string, options: ResyncOptions = {}): Promise<GuestHello> {
    this.restart(reason);
    const value = await this.request(options.op ?? 'hello', options.args ?? {}, options);
    this.#hello = parseHello(value);
    return this.#hello;
  }

  /**
   * Called after the VM's memory was restored from a snapshot: fails every pending request with `reason` and
   * starts the incoming stream afresh. A frame cut short by the restore will never be finished; the restored
   * guest was quiet when its snapshot was saved (see whenIdle), so its next byte starts a frame.
   */
  restart(reason: string): void {
    this.failPending(new AgentDisconnectedError(undefined, reason));
    this.#decoder = new FrameDecoder(this.#options.maxFrameBytes ?? MAX_FRAME_BYTES);
  }

  /**
   * Resolves once no request is in flight, so that a snapshot taken now holds no half-sent frame.
   * @throws {AgentTimeoutError} when requests are still pending after `timeoutMs`.
   */
  async whenIdle(timeoutMs: number): Promise<void> {
    if (this.#pending.size === 0) return;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#idleWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#idleWaiters.delete(done);
        reject(new AgentTimeoutError(`quiesce (${this.#pending.size} requests in flight)`, timeoutMs));
      }, timeoutMs);
      this.#idleWaiters.add(done);
    });
  }

  /** Rejects every pending request with `error`; the session stays open. */
  failPending(error: Error): void {
    for (const id of [...this.#pending.keys()]) this.#settle(id, error);
  }

  /** Closes the channel; pending requests fail with `error` (default: session closed). Idempotent. */
  close(error?: EvolvmError): void {
    if (this.#state === 'closed') return;
    this.#fail(error ?? new AgentDisconnectedError(undefined, 'session closed'));
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    if (this.#state !== 'running') return;
    let frames: Record<string, unknown>[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (error) {
      this.#violation(error);
      return;
    }
    for (const raw of frames) {
      if (this.#state !== 'running') return;
      this.#dispatch(raw);
    }
  }

  #dispatch(raw: Record<string, unknown>): void {
    let message: GuestMessage;
    try {
      message = parseGuestMessage(raw);
    } catch (error) {
      this.#violation(error);
      return;
    }
    switch (message.t) {
      case 'hello':
        this.#hello = message.hello;
        return;
      case 'chunk':
        this.#pending.get(message.id)?.onChunk?.(message.s, message.d);
        return;
      case 'hostcall':
        this.#serveHostCall(message.id, message.call, message.fn, message.args);
        return;
      case 'res': {
        const pending = this.#pending.get(message.id);
        if (!pending) return; // a reply to a timed-out, aborted or pre-restore request
        if (message.ok) this.#settle(message.id, undefined, message.v);
        else this.#settle(message.id, new GuestOperationError(pending.op, message.e.code, message.e.msg));
        return;
      }
    }
  }

  #serveHostCall(id: number, call: number, fn: string, args: unknown[]): void {
    const handler = this.#pending.get(id)?.onHostCall;
    const reply = (fields: Record<string, unknown>) => {
      if (this.#state !== 'running') return;
      try {
        this.#socket.write(encodeFrame({ t: 'hostret', id, call, ...fields }, this.#options.maxFrameBytes));
      } catch (error) {
        this.#socket.write(encodeFrame({ t: 'hostret', id, call, ok: false, e: { code: 'TOO_LARGE', msg: (error as Error).message } }));
      }
    };
    if (!handler) {
      reply({ ok: false, e: { code: 'NO_HOST_FUNCTIONS', msg: `no host function ${fn} is served for this request` } });
      return;
    }
    if (this.#hostCallsInFlight >= MAX_HOST_CALLS_IN_FLIGHT) {
      reply({ ok: false, e: { code: 'BUSY', msg: `more than ${MAX_HOST_CALLS_IN_FLIGHT} host calls in flight` } });
      return;
    }
    this.#hostCallsInFlight++;
    handler(fn, args)
      .finally(() => this.#hostCallsInFlight--)
      .then(
      (value) => reply({ ok: true, v: value ?? null }),
      (error: unknown) => {
        const e = error as { guestCode?: unknown; code?: unknown; message?: unknown };
        const code = typeof e?.guestCode === 'string' ? e.guestCode : typeof e?.code === 'string' ? e.code : 'HOST_ERROR';
        reply({ ok: false, e: { code, msg: String(e?.message ?? error).slice(0, 4096) } });
      },
    );
  }

  #settle(id: number, error: Error | undefined, value?: unknown): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (pending.onAbort) pending.signal!.removeEventListener('abort', pending.onAbort);
    if (this.#pending.size === 0) for (const waiter of [...this.#idleWaiters]) waiter();
    if (error) pending.reject(error);
    else pending.resolve(value);
  }

  #violation(error: unknown): void {
    const violation =
      error instanceof GuestProtocolViolationError
        ? error
        : new GuestProtocolViolationError(String((error as Error)?.message ?? error), { cause: error });
    this.#fail(violation);
    this.#socket.destroy();
  }

  async #onClose(): Promise<void> {
    if (this.#state === 'closed') return;
    const error = this.#options.closeReason
      ? await this.#options.closeReason().catch(
          (cause: unknown) => new AgentDisconnectedError(undefined, 'socket closed', { cause }),
        )
      : new AgentDisconnectedError(undefined, 'socket closed');
    this.#fail(error);
  }

  #fail(error: EvolvmError): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#failure = error;
    this.failPending(error);
    this.#markClosed();
  }
}

async function connectWithRetry(path: string, deadline: number, signal: AbortSignal | undefined): Promise<net.Socket> {
  for (;;) {
    if (signal?.aborted) throw new AbortedError('agent connect', { cause: signal.reason });
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const socket = net.createConnection(path);
        socket.once('connect', () => {
          socket.removeAllListeners('error');
          // Until the session attaches its handlers, an error (QEMU dying: ECONNRESET) must not go unhandled;
          // the 'close' that follows it is what the waiters see.
          socket.on('error', () => {});
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() >= deadline) {
        throw new AgentTimeoutError('connect', Math.max(0, deadline - Date.now()), { cause: error });
      }
      await sleep(10, signal, 'agent connect');
    }
  }
}

/** Waits for the first complete frame; returns it plus any frames that arrived in the same chunks. */
function readFirstFrame(
  socket: net.Socket,
  decoder: FrameDecoder,
  deadline: number,
  options: AgentSessionOptions,
): Promise<{ message: Record<string, unknown>; rest: Record<string, unknown>[] }> {
  return new Promise((resolve, reject) => {
    const finish = (error?: Error, frames?: Record<string, unknown>[]) => {
      clearTimeout(timer);
      // Paused until the session attaches its own reader, so no byte is dropped in between.
      socket.pause();
      socket.off('data', onData);
      socket.off('close', onClose);
      options.signal?.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve({ message: frames![0]!, rest: frames!.slice(1) });
    };
    const onData = (chunk: Buffer) => {
      try {
        const frames = decoder.push(chunk);
        if (frames.length > 0) finish(undefined, frames);
      } catch (error) {
        finish(error as Error);
      }
    };
    const onClose = () =>
      void (options.closeReason?.() ?? Promise.resolve(new AgentDisconnectedError('hello', 'socket closed'))).then(
        (error) => finish(error),
        (error: unknown) => finish(error as Error),
      );
    const onAbort = () => finish(new AbortedError('agent hello', { cause: options.signal?.reason }));
    const timer = setTimeout(() => finish(new AgentTimeoutError('hello', options.helloTimeoutMs)), Math.max(0, deadline - Date.now()));
    socket.on('data', onData);
    socket.once('close', onClose);
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

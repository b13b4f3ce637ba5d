import { AbortedError, AgentDisconnectedError, AgentTimeoutError, GuestOperationError, type EvolvmError } from '../../errors.js';
import { AgentSession, type RequestOptions, type SessionOptions } from './agent-session.js';

/** The runtimes' direct port: its name in the guest, and the id of its QEMU device (VSERPORT_CHANGE names it). */
export const RUNTIME_PORT_NAME = 'org.evolvm.rt';
export const RUNTIME_PORT_ID = 'evolvm-rt';

/** Which runtime a request is for, and whether that runtime holds the direct port. */
export interface RuntimeAddress {
  readonly kind: string;
  /** Set when `rt_start` gave the runtime the direct port (guest/RUNTIMES.md). */
  readonly direct?: boolean;
}

export interface RuntimeChannelOptions extends SessionOptions {
  connectTimeoutMs: number;
}

/**
 * The host end of the runtimes' direct port (guest/RUNTIMES.md): requests go straight to the runtime that holds
 * the port instead of being relayed by the agent, which saves two guest context switches a call (under TCG each
 * one flushes QEMU's TLB). The runtime cannot tell a stale request from a fresh one, so none may reach it: when a
 * snapshot is loaded or the runtime goes away while the guest may not have read everything sent to it, the
 * connection is dropped (QEMU discards what it had not read from it) and a new one made.
 */
export class RuntimeChannel {
  readonly #options: RuntimeChannelOptions;
  #session: Promise<AgentSession> | undefined;
  #current: AgentSession | undefined;
  // A request ended without its reply (timed out, aborted): its bytes may still be unread.
  #maybeUnread = false;
  #closed: EvolvmError | undefined;

  constructor(options: RuntimeChannelOptions) {
    this.#options = options;
  }

  /**
   * Connects now (QEMU listens from its start), so that a runtime given the port finds the host there.
   * @throws {AgentTimeoutError} when the socket cannot be connected in time; {@link AbortedError}.
   */
  async connect(signal?: AbortSignal): Promise<void> {
    await this.#connected(signal);
  }

  /**
   * Sends one request to the runtime holding the port and waits for its reply.
   * @throws the errors of {@link AgentSession.request}; {@link GuestOperationError} `RUNTIME_EXITED` when the
   *   runtime closed the port while the request was pending.
   */
  async request(op: string, args: Record<string, unknown>, options: RequestOptions = {}): Promise<unknown> {
    // The hot path (a call) takes the open session as it is, without a turn through #connected's promise.
    const current = this.#current;
    const session = current?.state === 'running' && !this.#closed ? current : await this.#connected();
    try {
      return await session.request(op, args, options);
    } catch (error) {
      if (error instanceof AgentTimeoutError || error instanceof AbortedError) this.#maybeUnread = true;
      throw error;
    }
  }

  /**
   * Resolves once no request is in flight.
   * @throws {AgentTimeoutError} when requests are still pending after `timeoutMs`.
   */
  async whenIdle(timeoutMs: number): Promise<void> {
    await this.#current?.whenIdle(timeoutMs);
  }

  /** Before a snapshot load: drops the connection if the guest may not have read all that was sent on it. */
  beforeLoad(reason: string): void {
    const current = this.#current;
    if (current && (this.#maybeUnread || current.pendingCount > 0)) this.#drop(new AgentDisconnectedError(undefined, reason));
  }

  /** After a snapshot load: fails what was pending, starts the stream afresh, and reconnects if it was dropped. */
  afterLoad(reason: string): void {
    if (this.#current?.state === 'running') this.#current.restart(reason);
    else this.#drop(new AgentDisconnectedError(undefined, reason));
    this.#maybeUnread = false;
    this.#reconnect();
  }

  /** The runtime closed the port (it exited): pending requests fail with `RUNTIME_EXITED`, unread bytes go. */
  peerClosed(why: string): void {
    const current = this.#current;
    if (!current || (!this.#maybeUnread && current.pendingCount === 0)) return;
    this.#drop(new GuestOperationError('rt_req', 'RUNTIME_EXITED', why));
    this.#maybeUnread = false;
    this.#reconnect();
  }

  /** Closes the channel for good; pending and later requests fail with `error`. Idempotent. */
  close(error: EvolvmError = new AgentDisconnectedError(undefined, 'runtime channel closed')): void {
    this.#closed ??= error;
    this.#drop(error);
  }

  #drop(error: EvolvmError): void {
    this.#current?.close(error);
    this.#current = undefined;
    this.#session = undefined;
  }

  #reconnect(): void {
    if (this.#session || this.#closed) return;
    // A failure here is seen by the next request, which connects again.
    this.#connected().catch(() => {});
  }

  #connected(signal?: AbortSignal): Promise<AgentSession> {
    if (this.#closed) return Promise.reject(this.#closed);
    // A session the runtime broke (a frame that is not the protocol) is replaced; its requests failed typed.
    if (this.#current?.state === 'closed') this.#drop(new AgentDisconnectedError(undefined, 'replaced'));
    if (!this.#session) {
      const session = AgentSession.open({ ...this.#options, signal }).then((opened) => {
        if (this.#closed || this.#session !== session) {
          opened.close(this.#closed);
          throw this.#closed ?? new AgentDisconnectedError(undefined, 'runtime channel reconnected meanwhile');
        }
        this.#current = opened;
        return opened;
      });
      session.catch(() => {
        if (this.#session === session) this.#session = undefined;
      });
      this.#session = session;
    }
    return this.#session;
  }
}

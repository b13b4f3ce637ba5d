import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A command as the client sent it. */
export interface ReceivedCommand {
  readonly execute: string;
  readonly arguments?: Record<string, unknown>;
  readonly id: unknown;
}

export type CommandHandler = (command: ReceivedCommand, peer: FakeQmpPeer) => void;

export const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] },
};

/**
 * A fake QEMU QMP server on a unix socket in its own temp dir, for one client at a time. Commands with a
 * handler are answered by it (`qmp_capabilities` has one by default); the others queue for `nextCommand()`.
 */
export class FakeQmpPeer {
  /** Every command received, in order. */
  readonly received: ReceivedCommand[] = [];
  readonly #handlers = new Map<string, CommandHandler>();
  readonly #queue: ReceivedCommand[] = [];
  readonly #waiting: Array<(command: ReceivedCommand) => void> = [];
  #server: Server | undefined;
  #connection: Socket | undefined;
  #connected: Promise<Socket>;
  #onConnection: (socket: Socket) => void = () => {};

  private constructor(
    readonly dir: string,
    readonly path: string,
  ) {
    this.#connected = new Promise((resolve) => (this.#onConnection = resolve));
    this.handle('qmp_capabilities', (command, peer) => peer.reply(command, {}));
  }

  /** A peer whose socket does not exist yet: call `listen()`. */
  static async create(): Promise<FakeQmpPeer> {
    const dir = await mkdtemp(join(tmpdir(), 'evolvm-qmp-'));
    return new FakeQmpPeer(dir, join(dir, 'qmp.sock'));
  }

  /** A listening peer that greets each client. */
  static async start(options?: { greeting?: unknown }): Promise<FakeQmpPeer> {
    const peer = await FakeQmpPeer.create();
    await peer.listen(options);
    return peer;
  }

  /** Creates the socket; `greeting: null` sends none, anything else replaces the standard one. */
  listen(options: { greeting?: unknown } = {}): Promise<void> {
    const greeting = options.greeting === undefined ? GREETING : options.greeting;
    const server = createServer((socket) => {
      this.#connection = socket;
      socket.on('error', () => {});
      let text = '';
      socket.on('data', (chunk) => {
        text += chunk.toString('utf8');
        for (let newline = text.indexOf('\n'); newline !== -1; newline = text.indexOf('\n')) {
          const line = text.slice(0, newline);
          text = text.slice(newline + 1);
          this.#receive(JSON.parse(line) as ReceivedCommand);
        }
      });
      if (greeting !== null) this.send(greeting);
      this.#onConnection(socket);
    });
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
  }

  /** Resolves once a client has connected. */
  connected(): Promise<Socket> {
    return this.#connected;
  }

  handle(command: string, handler: CommandHandler): void {
    this.#handlers.set(command, handler);
  }

  /** The next command without a handler. */
  nextCommand(): Promise<ReceivedCommand> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  send(message: unknown): void {
    this.sendRaw(`${JSON.stringify(message)}\r\n`);
  }

  sendRaw(data: string | Buffer): void {
    this.#socket().write(data);
  }

  /** Writes `data` a few bytes at a time, yielding to the event loop between writes so they arrive apart. */
  async sendInPieces(data: string, size: number): Promise<void> {
    const bytes = Buffer.from(data);
    for (let at = 0; at < bytes.length; at += size) {
      this.#socket().write(bytes.subarray(at, at + size));
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  reply(command: ReceivedCommand, value: unknown = {}): void {
    this.send({ return: value, id: command.id });
  }

  replyError(command: ReceivedCommand, errorClass: string, desc: string): void {
    this.send({ error: { class: errorClass, desc }, id: command.id });
  }

  event(name: string, data?: Record<string, unknown>): void {
    this.send(eventMessage(name, data));
  }

  /** Closes the client's connection from this side. */
  dropConnection(): void {
    this.#connection?.destroy();
  }

  /** Closes everything and removes the temp dir. */
  async dispose(): Promise<void> {
    this.#connection?.destroy();
    const server = this.#server;
    if (server?.listening) await new Promise((resolve) => server.close(resolve));
    await rm(this.dir, { recursive: true, force: true });
  }

  #receive(command: ReceivedCommand): void {
    this.received.push(command);
    const handler = this.#handlers.get(command.execute);
    if (handler) return handler(command, this);
    const waiter = this.#waiting.shift();
    if (waiter) waiter(command);
    else this.#queue.push(command);
  }

  #socket(): Socket {
    if (!this.#connection) throw new Error('no client connected');
    return this.#connection;
  }
}

export function eventMessage(name: string, data?: Record<string, unknown>): Record<string, unknown> {
  return { event: name, ...(data ? { data } : {}), timestamp: { seconds: 1700000000, microseconds: 1 } };
}

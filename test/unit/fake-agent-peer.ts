import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FrameDecoder } from '../../src/qemu/agent/frame-decoder.js';
import { encodeFrame } from '../../src/qemu/agent/frame-encoder.js';

export const HELLO = { v: 1, agent: 'fake/0', kernel: '6.1', arch: 'x86_64', boot_id: 'b', max_frame: 16 << 20, ops: ['ping'], mem_kib: 1, cpus: 1 };

/** Plays the guest side of the agent protocol on a unix socket, scripted by the test. */
export class FakeAgentPeer {
  readonly dir = mkdtempSync(join(tmpdir(), 'evolvm-fake-agent-'));
  readonly path = join(this.dir, 'agent.sock');
  readonly requests: Array<Record<string, unknown>> = [];
  /** Connections accepted so far. */
  connections = 0;
  #server: net.Server;
  #socket: net.Socket | undefined;
  #waiters: Array<() => void> = [];

  constructor(onRequest: (peer: FakeAgentPeer, request: Record<string, unknown>) => void, options: { hello?: boolean } = {}) {
    this.#server = net.createServer((socket) => {
      this.#socket = socket;
      this.connections++;
      const decoder = new FrameDecoder();
      socket.on('data', (chunk) => {
        for (const request of decoder.push(chunk)) {
          this.requests.push(request);
          onRequest(this, request);
          for (const w of this.#waiters.splice(0)) w();
        }
      });
      socket.on('error', () => {});
      if (options.hello !== false) this.send({ t: 'hello', ...HELLO });
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.#server.listen(this.path, resolve));
  }

  send(message: Record<string, unknown>): void {
    this.#socket?.write(encodeFrame(message));
  }

  raw(bytes: Buffer): void {
    this.#socket?.write(bytes);
  }

  reply(request: Record<string, unknown>, v: unknown = {}): void {
    this.send({ t: 'res', id: request.id, ok: true, v });
  }

  disconnect(): void {
    this.#socket?.destroy();
  }

  async nextRequest(): Promise<void> {
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  async close(): Promise<void> {
    this.#socket?.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { receiveSocketToFile, streamFileToSocket } from '../../src/qemu/migration-stream.js';

describe('migration streams over a unix socket', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'evolvm-migration-stream-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('streams a file from an offset into a listening socket', async () => {
    const file = join(dir, 'state');
    const bytes = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    bytes.write('HEAD', 0);
    bytes.write('TAIL', bytes.length - 4);
    writeFileSync(file, bytes);
    const socketPath = join(dir, 'in.sock');
    const received: Buffer[] = [];
    const server = createServer((socket) => socket.on('data', (chunk) => received.push(chunk)));
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const stream = streamFileToSocket(file, 4, socketPath);
      await stream.done;
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(Buffer.concat(received).equals(bytes.subarray(4))).toBe(true);
    } finally {
      server.close();
    }
  });

  it('rejects when nobody listens', async () => {
    writeFileSync(join(dir, 'state'), 'x');
    await expect(streamFileToSocket(join(dir, 'state'), 0, join(dir, 'nobody.sock')).done).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('appends one connection to a file, refuses a second, and removes its socket when closed', async () => {
    const file = join(dir, 'vmstate');
    writeFileSync(file, 'RAM:');
    const socketPath = join(dir, 'out.sock');
    const incoming = await receiveSocketToFile(socketPath, file);
    const first = connect(socketPath);
    await new Promise((resolve) => first.once('connect', resolve));
    const second = connect(socketPath);
    const secondClosed = new Promise((resolve) => second.once('close', resolve));
    second.on('error', () => {});
    first.end('device state');
    await incoming.done;
    await secondClosed;
    expect(readFileSync(file, 'utf8')).toBe('RAM:device state');
    await incoming.close();
    expect(existsSync(socketPath)).toBe(false);
  });

  it('fails to listen where a file already is', async () => {
    const socketPath = join(dir, 'taken');
    writeFileSync(socketPath, '');
    await expect(receiveSocketToFile(socketPath, join(dir, 'f'))).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});

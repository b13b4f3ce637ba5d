import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { loadDeviceState } from '../../src/qemu/device-state.js';
import { QmpClient } from '../../src/qemu/qmp/index.js';
import { FakeQmpPeer } from './qmp-fake-peer.js';

// A fake QEMU for the restore's device-state load: QMP from FakeQmpPeer, and an incoming-migration socket that
// reads the stream. The real load is tested on real guests (persist.test.ts); this is about how the stream ends.
const work = mkdtempSync(join(tmpdir(), 'evolvm-device-state-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let peer: FakeQmpPeer | undefined;
let client: QmpClient | undefined;
let incoming: Server | undefined;
afterEach(async () => {
  client?.close();
  await new Promise((resolve) => (incoming?.listening ? incoming.close(resolve) : resolve(undefined)));
  await peer?.dispose();
  peer = client = incoming = undefined;
});

/**
 * Answers the load's commands as QEMU does. The incoming socket reads `expected` bytes, then (like QEMU once its
 * load is done) closes at once, before the sender's end has finished; query-migrate says
 * `completed` from then on.
 */
async function fakeQemu(expected: number): Promise<{ peer: FakeQmpPeer; received: () => Buffer; commands: () => string[] }> {
  const fake = await FakeQmpPeer.start();
  const chunks: Buffer[] = [];
  let completed = false;
  fake.handle('migrate-set-capabilities', (command, p) => p.reply(command));
  fake.handle('migrate-incoming', (command, p) => {
    const path = String(command.arguments?.uri).replace(/^unix:/, '');
    incoming = createServer((socket) => {
      let got = 0;
      socket.on('error', () => {});
      socket.on('data', (chunk) => {
        chunks.push(chunk);
        got += chunk.length;
        if (got >= expected) {
          completed = true;
          socket.destroy();
          p.event('MIGRATION', { status: 'completed' });
        }
      });
    });
    incoming.listen(path, () => p.reply(command));
  });
  fake.handle('query-migrate', (command, p) => p.reply(command, { status: completed ? 'completed' : 'active' }));
  fake.handle('cont', (command, p) => p.reply(command));
  return { peer: fake, received: () => Buffer.concat(chunks), commands: () => fake.received.map((c) => c.execute) };
}

describe('the device-state load of a restore', () => {
  // Node's pipeline reports "Premature close" when the reader closes the moment it has the last byte, before the
  // writer's end has finished: measured 55 in 300 for a 4 KiB stream, 3 in 300 for a real device state's 227 KiB.
  // Thirty rounds of 4 KiB make a load that awaited the stream fail here almost surely (once seen in a fork test).
  it('succeeds when QEMU closes the stream the moment its load is complete, before the sender has finished', async () => {
    for (let round = 0; round < 30; round++) {
      const file = join(await tempDir(), 'vmstate');
      const ram = randomBytes(64 * 1024);
      const state = randomBytes(4096);
      writeFileSync(file, Buffer.concat([ram, state]));
      const fake = await fakeQemu(state.length);
      peer = fake.peer;
      client = await QmpClient.connect(peer.path, { timeoutMs: 2_000 });
      const incomingSocket = join(peer.dir, 'incoming.sock');
      await loadDeviceState(client, { incomingSocket, file, offset: ram.length, timeoutMs: 5_000 });
      expect(fake.received().equals(state)).toBe(true);
      expect(fake.commands()).toEqual(['qmp_capabilities', 'migrate-set-capabilities', 'migrate-incoming', 'query-migrate', ...fake.commands().slice(4, -1), 'cont']);
      expect(existsSync(incomingSocket)).toBe(false);
      client.close();
      await new Promise((resolve) => incoming!.close(resolve));
      await peer.dispose();
      peer = client = incoming = undefined;
    }
  });
});

/** A fresh folder under the file's own, which is removed after the file. */
async function tempDir(): Promise<string> {
  return mkdtemp(join(work, 'round-'));
}

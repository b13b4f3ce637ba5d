import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { QemuStartError } from '../../src/index.js';
import { remapRam } from '../../src/qemu/standby-bind.js';

const work = mkdtempSync(join(tmpdir(), 'evolvm-standby-bind-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A fake of the shim's remap listener (native/ram-remap.c): records the request, answers `reply`, closes. */
async function fakeListener(name: string, reply: string): Promise<{ path: string; requests: string[]; server: Server }> {
  const path = join(work, name);
  const requests: string[] = [];
  const server = createServer((socket) => {
    let request = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      request += chunk;
      if (!request.includes('\n')) return;
      requests.push(request);
      socket.end(reply);
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, requests, server };
}

describe('remapRam (the request a standby QEMU maps a snapshot RAM image on)', () => {
  it('sends the placeholder and the image, tab-separated on one line, and resolves on ok', async () => {
    const fake = await fakeListener('ok.sock', 'ok\n');
    await remapRam(fake.path, '/dev/shm/placeholder', '/store/x/vmstate');
    expect(fake.requests).toEqual(['/dev/shm/placeholder\t/store/x/vmstate\n']);
    fake.server.close();
  });

  it("rejects with QemuStartError carrying the shim's error text", async () => {
    const fake = await fakeListener('error.sock', 'error /store/x/vmstate holds 4096 bytes, RAM is 134217728\n');
    const error = await remapRam(fake.path, '/p', '/store/x/vmstate').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuStartError);
    expect((error as Error).message).toMatch(/RAM remap: \/store\/x\/vmstate holds 4096 bytes/);
    fake.server.close();
  });

  it('rejects a reply that is neither ok nor an error, and a closed socket without a reply', async () => {
    const garbage = await fakeListener('garbage.sock', 'sure thing\n');
    await expect(remapRam(garbage.path, '/p', '/i')).rejects.toThrow(/unexpected reply "sure thing\\n"/);
    garbage.server.close();
    const silent = await fakeListener('silent.sock', '');
    await expect(remapRam(silent.path, '/p', '/i')).rejects.toThrow(/unexpected reply ""/);
    silent.server.close();
  });

  it('rejects a path the one-line request cannot carry, without connecting', async () => {
    await expect(remapRam(join(work, 'none.sock'), '/p', '/a\tb')).rejects.toBeInstanceOf(QemuStartError);
    await expect(remapRam(join(work, 'none.sock'), '/p\n', '/i')).rejects.toBeInstanceOf(QemuStartError);
  });

  it('rejects when nothing listens (the standby is gone)', async () => {
    await expect(remapRam(join(work, 'none.sock'), '/p', '/i')).rejects.toBeInstanceOf(QemuStartError);
  });
});

import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  AgentTimeoutError,
  ConfigInvalidError,
  GuestNotBuiltError,
  Machine,
  OperationNotAllowedError,
  QemuExitedError,
  QemuNotFoundError,
} from '../../src/index.js';
import { expectNoLeaks, qemuProcessesUnder, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('faults');
// Bad boot images made below live apart from the run directory, which must end up empty.
const imageDir = mkdtempSync(join(tmpdir(), 'evolvm-bad-boot-'));

afterAll(async () => {
  rmSync(imageDir, { recursive: true, force: true });
  await expectNoLeaks(runDir);
});

describe('bad input fails with a typed error and leaves nothing behind', () => {
  it('refuses each invalid option before starting anything', async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ memoryMiB: 32 }, 'memoryMiB'],
      [{ cpus: -1 }, 'cpus'],
      [{ machine: 'isapc' }, 'machine'],
      [{ accel: 'whpx' }, 'accel'],
      [{ bootTimeoutMs: 0 }, 'bootTimeoutMs'],
      [{ memorySize: 128 }, 'memorySize'],
    ];
    for (const [config, path] of cases) {
      const error = await Machine.boot({ runDir, ...config } as never).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigInvalidError);
      expect((error as ConfigInvalidError).issues.map((i) => i.path)).toEqual([path]);
    }
  });

  it('reports a missing kernel', async () => {
    const error = await Machine.boot({ runDir, kernel: '/nonexistent/vmlinuz' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestNotBuiltError);
    expect((error as GuestNotBuiltError).path).toBe('/nonexistent/vmlinuz');
  });

  it('reports a QEMU binary that is not there, with the install hint', async () => {
    const error = await Machine.boot({ runDir, qemuBinary: 'qemu-system-nonexistent' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuNotFoundError);
    expect((error as QemuNotFoundError).message).toMatch(/apt-get install qemu-system-x86/);
  });

  it('reports QEMU exiting at start-up with its stderr', async () => {
    const fake = join(runDir, '..', `evolvm-fake-qemu-${process.pid}`);
    writeFileSync(fake, '#!/bin/sh\necho "fake qemu: cannot start" >&2\nexit 3\n');
    chmodSync(fake, 0o755);
    const error = await Machine.boot({ runDir, qemuBinary: fake })
      .catch((e: unknown) => e)
      .finally(() => rmSync(fake, { force: true }));
    expect(error).toBeInstanceOf(QemuExitedError);
    expect(error).toMatchObject({ exitCode: 3 });
    expect((error as QemuExitedError).consoleTail).toMatch(/fake qemu: cannot start/);
  });

  it('times out a guest that never says hello, within the configured bound', async () => {
    const started = Date.now();
    const error = await Machine.boot({ runDir, cmdline: 'evolvm.agent=0', bootTimeoutMs: 6_000 }).catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    expect(error).toBeInstanceOf(AgentTimeoutError);
    expect(error).toMatchObject({ operation: 'hello', timeoutMs: 6_000 });
    expect(elapsed).toBeGreaterThanOrEqual(5_900);
    expect(elapsed).toBeLessThan(6_000 + 4_000);
    expect(qemuProcessesUnder(runDir)).toEqual([]);
  });

  const guestDir = process.env.EVOLVM_GUEST_DIR ?? join(process.cwd(), 'guest', 'out', 'x86_64');
  /** A boot image (guest/boot/kernel-blob.h) that announces `count` runs, the first ones given, and no bytes. */
  const badImage = (name: string, count: number, runs: [address: number, length: number][], entry = 0x1000000) => {
    const header = Buffer.alloc(4096);
    header.write('EVKBLOB1', 0);
    header.writeUInt32LE(entry, 8);
    header.writeUInt32LE(count, 12);
    header.writeUInt32LE(4096, 16);
    runs.forEach(([address, length], i) => {
      header.writeUInt32LE(address, 24 + i * 8);
      header.writeUInt32LE(length, 28 + i * 8);
    });
    const path = join(imageDir, `${name}.img`);
    writeFileSync(path, Buffer.concat([header, Buffer.from('070701')]));
    return path;
  };
  it.each([
    ['its initrd is not a boot image', () => join(guestDir, 'initramfs.cpio'), /initrd is not a boot image/],
    ['its boot image announces more runs than the loader takes', () => badImage('many', 5000, []), /too many runs/],
    ['its boot image has an empty run', () => badImage('empty', 300, []), /has an empty run/],
    ['its boot image runs overrun the initramfs', () => badImage('overrun', 1, [[0x1000000, 100_000]]), /runs overrun the initramfs/],
    ['its boot image entry is outside its runs', () => badImage('entry', 1, [[0x1000000, 1000]], 0x2000000), /entry is outside its runs/],
  ])('says on the console why pvh-loader stopped when %s', async (_why, initrd, message) => {
    const error = await Machine.boot({ runDir, kernel: join(guestDir, 'pvh-loader.elf'), initrd: initrd(), bootTimeoutMs: 2_500 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AgentTimeoutError);
    expect((error as AgentTimeoutError).consoleTail).toMatch(/evolvm pvh-loader: /);
    expect((error as AgentTimeoutError).consoleTail).toMatch(message);
    expect((error as Error).message).toMatch(/console tail/);
    expect(qemuProcessesUnder(runDir)).toEqual([]);
  });

  it('turns QEMU killed from outside during an exec into a QEMU-exited error', async () => {
    const vm = await Machine.boot({ runDir });
    const pending = vm.exec(['sleep', '60']);
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(vm.pid, 'SIGKILL');
    const error = await pending.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuExitedError);
    expect(error).toMatchObject({ signal: 'SIGKILL' });
    expect(vm.state).toBe('crashed');
    // Later calls fail the same way, at once.
    await expect(vm.ping()).rejects.toBeInstanceOf(QemuExitedError);
    await vm.stop();
  });

  it('refuses guest I/O after stop with a lifecycle error', async () => {
    const vm = await Machine.boot({ runDir });
    await vm.stop();
    expect(vm.state).toBe('stopped');
    const error = await vm.exec(['true']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OperationNotAllowedError);
    expect(error).toMatchObject({ state: 'stopped' });
  });

  it('aborts a boot with an AbortSignal and cleans up', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    await expect(Machine.boot({ runDir }, { signal: controller.signal })).rejects.toMatchObject({ code: 'ABORTED' });
    expect(qemuProcessesUnder(runDir)).toEqual([]);
  });
});

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestOperationError, Machine } from '../../src/index.js';
import { qemuEnvironment } from '../../src/qemu/qemu-process.js';
import { ramRomRanges } from '../../src/snapshot/rom-ranges.js';
import { expectNoLeaks, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('machine');
let vm: Machine;

beforeAll(async () => {
  vm = await Machine.boot({ runDir });
});

afterAll(async () => {
  await vm?.stop();
  await expectNoLeaks(runDir);
});

describe('a booted machine', () => {
  it('says hello with protocol version and guest facts', () => {
    expect(vm.hello).toMatchObject({ v: 1, arch: 'x86_64', cpus: 1 });
    // The guest's RAM less what the kernel keeps for itself (read once when the agent starts).
    expect(vm.hello.mem_kib).toBeGreaterThan(64 * 1024);
    expect(vm.hello.mem_kib).toBeLessThanOrEqual(vm.config.memoryMiB * 1024);
    expect(vm.hello.kernel).toMatch(/cloud-amd64/);
    expect(vm.hello.ops).toEqual(expect.arrayContaining(['ping', 'exec', 'file_write', 'file_read', 'set_clock', 'reseed', 'refresh']));
    expect(vm.state).toBe('running');
  });

  it('runs QEMU with the idle-trim shim preloaded (native/idle-malloc-trim.c)', async () => {
    expect(await readFile(`/proc/${vm.pid}/maps`, 'utf8')).toContain('libevolvm-idle-malloc-trim.so');
  });

  it('runs QEMU forked from a QEMU zygote (native/qemu-zygote.c), showing its own command line', async () => {
    const parent = Number(/^PPid:\s+(\d+)/m.exec(await readFile(`/proc/${vm.pid}/status`, 'utf8'))?.[1]);
    expect(await readFile(`/proc/${parent}/cmdline`, 'latin1')).toMatch(/^[^\0]*qemu-system-x86_64\0-evolvm-zygote\0/);
    // What ps and pgrep show (the leak checks look for QEMUs by their run directory): QEMU's own arguments.
    const args = (await readFile(`/proc/${vm.pid}/cmdline`, 'latin1')).split('\0').filter((arg) => arg.length > 0);
    expect(args).toContain('-qmp');
    expect(args.join(' ')).toContain(vm.paths.dir);
  });

  it('boots through pvh-loader: the kernel is no ROM blob that a snapshot-load would write back over RAM', async () => {
    expect(vm.image.kernel).toMatch(/pvh-loader\.elf$/);
    expect(vm.image.initrd).toMatch(/boot\.img$/);
    const roms = await vm.qmp.execute<string>('human-monitor-command', { 'command-line': 'info roms' });
    const ranges = ramRomRanges(roms, vm.config.memoryMiB * 1024 * 1024) ?? [];
    const bytes = ranges.reduce((sum, range) => sum + range.length, 0);
    // The loader and its stack only (~46 KiB), not the kernel's ~46 MiB.
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThan(256 * 1024);
    expect(vm.hello.kernel).toMatch(/cloud-amd64/);
  });

  it('runs QEMU with malloc on transparent huge pages (through the setpriv wrapper)', async () => {
    const environ = (await readFile(`/proc/${vm.pid}/environ`, 'utf8')).split('\0');
    expect(environ).toContain(`GLIBC_TUNABLES=${qemuEnvironment().GLIBC_TUNABLES}`);
    expect(environ.find((entry) => entry.startsWith('GLIBC_TUNABLES='))).toMatch(/glibc\.malloc\.hugetlb=/);
    expect(environ).toContain('LC_ALL=C');
  });

  it('answers ping', async () => {
    await expect(vm.ping()).resolves.toBeUndefined();
  });

  it('runs echo', async () => {
    const result = await vm.exec(['echo', 'hello', 'world']);
    expect(result).toMatchObject({ exitCode: 0, stdout: 'hello world\n', stderr: '', timedOut: false });
  });

  it('reports a non-zero exit code and stderr', async () => {
    const result = await vm.exec(['sh', '-c', 'echo oops >&2; exit 7']);
    expect(result.exitCode).toBe(7);
    expect(result.stderr).toBe('oops\n');
  });

  it('reports 127 for a missing program', async () => {
    expect((await vm.exec(['/no/such/program'])).exitCode).toBe(127);
  });

  it('streams 10,000 lines of stdout', async () => {
    let chunks = 0;
    const result = await vm.exec(['seq', '1', '10000'], { onStdout: () => chunks++ });
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(10_000);
    expect(lines[0]).toBe('1');
    expect(lines[9_999]).toBe('10000');
    expect(chunks).toBeGreaterThan(0);
  });

  it('passes environment variables', async () => {
    const result = await vm.exec(['sh', '-c', 'echo "$GREETING $TARGET"'], { env: { GREETING: 'hi', TARGET: 'there' } });
    expect(result.stdout).toBe('hi there\n');
  });

  it('runs in the given working directory', async () => {
    expect((await vm.exec(['pwd'], { cwd: '/proc' })).stdout).toBe('/proc\n');
  });

  it('feeds stdin', async () => {
    const result = await vm.exec(['sh', '-c', 'wc -l; cat'], { stdin: 'a\nb\nc\n' });
    expect(result.stdout.trim().split('\n')[0]!.trim()).toBe('3');
  });

  it('runs a pipeline through sh -c', async () => {
    const result = await vm.exec(['sh', '-c', 'seq 1 100 | grep 7 | wc -l']);
    expect(result.stdout.trim()).toBe('19');
  });

  it('kills a command that exceeds its timeout', async () => {
    const started = Date.now();
    const result = await vm.exec(['sleep', '30'], { timeoutMs: 500 });
    expect(result.timedOut).toBe(true);
    expect(result.signal).toBe(9);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('runs 10 execs concurrently and routes each output to its caller', async () => {
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => vm.exec(['sh', '-c', `sleep 0.$((${i} % 3)); echo job-${i}`])),
    );
    expect(results.map((r) => r.stdout.trim())).toEqual(Array.from({ length: 10 }, (_, i) => `job-${i}`));
  });
});

describe('guest files', () => {
  it('round-trips 1 MiB with the same checksum', async () => {
    const data = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    await vm.writeFile('/tmp/blob.bin', data);
    const back = await vm.readFile('/tmp/blob.bin');
    expect(createHash('sha256').update(back).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    const guestSum = (await vm.exec(['sha256sum', '/tmp/blob.bin'])).stdout.split(' ')[0];
    expect(guestSum).toBe(createHash('sha256').update(data).digest('hex'));
  });

  it('round-trips 5 MiB across several write requests', async () => {
    const data = Buffer.alloc(5 * 1024 * 1024 + 17, 0xab);
    await vm.writeFile('/tmp/big.bin', data);
    expect((await vm.readFile('/tmp/big.bin')).equals(data)).toBe(true);
  });

  it('creates nested directories on request', async () => {
    await vm.writeFile('/tmp/a/b/c/d.txt', 'deep', { mkdirs: true });
    expect((await vm.readFile('/tmp/a/b/c/d.txt')).toString()).toBe('deep');
  });

  it('handles special characters in names', async () => {
    const path = "/tmp/sp ace/ünï cødé 'q' \"dq\" $x;&|.txt";
    await vm.writeFile(path, 'special', { mkdirs: true });
    expect((await vm.readFile(path)).toString()).toBe('special');
    expect((await vm.exec(['cat', path])).stdout).toBe('special');
  });

  it('writes an empty file', async () => {
    await vm.writeFile('/tmp/empty', '');
    expect((await vm.readFile('/tmp/empty')).length).toBe(0);
  });

  it('refuses a missing file with a typed ENOENT error', async () => {
    const error = await vm.readFile('/tmp/does/not/exist').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestOperationError);
    expect(error).toMatchObject({ code: 'GUEST_OPERATION_FAILED', guestCode: 'ENOENT' });
  });

  it('refuses a write into a missing directory without mkdirs', async () => {
    await expect(vm.writeFile('/tmp/nope/x', 'y')).rejects.toMatchObject({ guestCode: 'ENOENT' });
  });
});

describe('clock and entropy', () => {
  it('refreshes clock and RNG in one request that answers with the hello map, and refuses a bad seed', async () => {
    await vm.exec(['date', '-s', '@1000000000']);
    const value = (await vm.request('refresh', { ns: BigInt(Date.now()) * 1_000_000n, seed: Buffer.alloc(32, 7) })) as Record<string, unknown>;
    expect(value).toMatchObject({ v: 1, arch: 'x86_64', boot_id: vm.hello.boot_id });
    const guestSeconds = Number((await vm.exec(['date', '+%s'])).stdout.trim());
    expect(Math.abs(guestSeconds - Date.now() / 1000)).toBeLessThan(5);
    await expect(vm.request('refresh', { ns: BigInt(Date.now()) * 1_000_000n, seed: Buffer.alloc(8) })).rejects.toMatchObject({ guestCode: 'BAD_REQUEST' });
    await vm.refreshIdentity({ name: 'sandbox-1' });
    expect((await vm.exec(['hostname'])).stdout.trim()).toBe('sandbox-1');
    await expect(vm.refreshIdentity({ name: 'x'.repeat(65) })).rejects.toMatchObject({ guestCode: 'BAD_REQUEST' });
    // Before the guest's boot time: the kernel refuses it.
    await expect(vm.request('refresh', { ns: 1n, seed: Buffer.alloc(32) })).rejects.toMatchObject({ guestCode: 'EINVAL' });
    await expect(vm.request('refresh', { seed: Buffer.alloc(32) })).rejects.toMatchObject({ guestCode: 'BAD_REQUEST' });
  });

  it('sets the guest clock to the host time', async () => {
    await vm.exec(['date', '-s', '@1000000000']);
    await vm.refreshIdentity();
    const guestSeconds = Number((await vm.exec(['date', '+%s'])).stdout.trim());
    expect(Math.abs(guestSeconds - Date.now() / 1000)).toBeLessThan(5);
  });
});

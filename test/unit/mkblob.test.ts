import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// guest/boot/mkblob.c, the build tool that joins the PVH vmlinux and the initramfs into boot.img (the format is
// guest/boot/kernel-blob.h). Compiled here with the host's gcc, as guest/build.sh does.
const dir = mkdtempSync(join(tmpdir(), 'evolvm-mkblob-'));
const mkblob = join(dir, 'mkblob');
const guest = process.env.EVOLVM_GUEST_DIR ?? join(process.cwd(), 'guest', 'out', 'x86_64');
const vmlinux = join(guest, 'vmlinux');

beforeAll(() => {
  execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', mkblob, join('guest', 'boot', 'mkblob.c')]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(...args: string[]) {
  return spawnSync(mkblob, args, { encoding: 'utf8' });
}

describe('mkblob', () => {
  it("joins the kernel's non-zero runs and the initramfs at a 4 KiB boundary", () => {
    const initramfs = join(dir, 'initramfs.cpio');
    writeFileSync(initramfs, 'a cpio archive stands here');
    const image = join(dir, 'boot.img');
    const result = run(vmlinux, initramfs, image);
    expect(result.status).toBe(0);
    const bytes = readFileSync(image);
    expect(bytes.subarray(0, 8).toString()).toBe('EVKBLOB1');
    const entry = bytes.readUInt32LE(8);
    const runCount = bytes.readUInt32LE(12);
    const offset = bytes.readUInt32LE(16);
    // The PVH entry lies in the first run (the kernel's text, loaded at 16 MiB).
    expect(runCount).toBeGreaterThan(1);
    const first = { address: bytes.readUInt32LE(24), length: bytes.readUInt32LE(28) };
    expect(entry).toBeGreaterThanOrEqual(first.address);
    expect(entry).toBeLessThan(first.address + first.length);
    let total = 24 + runCount * 8;
    for (let i = 0; i < runCount; i++) total += bytes.readUInt32LE(24 + i * 8 + 4);
    expect(offset % 4096).toBe(0);
    expect(offset).toBeGreaterThanOrEqual(total);
    expect(bytes.subarray(offset).toString()).toBe('a cpio archive stands here');
    expect(result.stderr).toMatch(/initramfs at \d+/);
  });

  it('refuses what is not a PVH x86-64 kernel, and writes nothing', () => {
    const initramfs = join(dir, 'small.cpio');
    writeFileSync(initramfs, 'x');
    const truncated = join(dir, 'truncated');
    writeFileSync(truncated, readFileSync(vmlinux).subarray(0, 8192));
    const cases: [string, RegExp][] = [
      [initramfs, /not an x86-64 ELF file/],
      ['/bin/true', /no PVH entry note/],
      [truncated, /outside the file/],
      [join(dir, 'missing'), /No such file/],
    ];
    for (const [kernel, message] of cases) {
      const image = join(dir, 'refused.img');
      const result = run(kernel, initramfs, image);
      expect(result.status).toBe(1);
      expect(result.stderr).toMatch(message);
      expect(existsSync(image)).toBe(false);
    }
    expect(run(vmlinux).status).toBe(2);
  });
});

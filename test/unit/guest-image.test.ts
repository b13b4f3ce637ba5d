import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GuestNotBuiltError } from '../../src/index.js';
import { resolveGuestImage } from '../../src/qemu/guest-image.js';

describe('resolveGuestImage picks what to boot', () => {
  let dir: string;
  const saved = process.env.EVOLVM_GUEST_DIR;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'evolvm-guest-image-'));
    process.env.EVOLVM_GUEST_DIR = dir;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ input_hash: 'abc123' }));
  });

  afterEach(() => {
    if (saved === undefined) delete process.env.EVOLVM_GUEST_DIR;
    else process.env.EVOLVM_GUEST_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  });

  const touch = (...names: string[]) => names.forEach((name) => writeFileSync(join(dir, name), 'x'));

  it('boots pvh-loader with boot.img when the build made both', () => {
    touch('pvh-loader.elf', 'boot.img', 'vmlinux', 'vmlinuz', 'initramfs.cpio', 'initramfs.cpio.gz');
    expect(resolveGuestImage()).toEqual({ kernel: join(dir, 'pvh-loader.elf'), initrd: join(dir, 'boot.img'), hash: 'abc123' });
  });

  it('falls back to the PVH vmlinux and the plain cpio without the loader or without its image', () => {
    touch('vmlinux', 'vmlinuz', 'initramfs.cpio', 'boot.img');
    expect(resolveGuestImage()).toMatchObject({ kernel: join(dir, 'vmlinux'), initrd: join(dir, 'initramfs.cpio') });
    rmSync(join(dir, 'boot.img'));
    touch('pvh-loader.elf');
    expect(resolveGuestImage()).toMatchObject({ kernel: join(dir, 'vmlinux'), initrd: join(dir, 'initramfs.cpio') });
  });

  it('falls back to the bzImage and the gzipped cpio', () => {
    touch('vmlinuz', 'initramfs.cpio.gz');
    expect(resolveGuestImage()).toMatchObject({ kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initramfs.cpio.gz') });
  });

  it('never pairs the loader with a kernel or initrd given by path', () => {
    touch('pvh-loader.elf', 'boot.img', 'vmlinux', 'initramfs.cpio', 'my-initrd');
    expect(resolveGuestImage(undefined, join(dir, 'my-initrd'))).toEqual({
      kernel: join(dir, 'vmlinux'),
      initrd: join(dir, 'my-initrd'),
      hash: 'custom',
    });
  });

  it('names the missing file', () => {
    expect(() => resolveGuestImage()).toThrow(GuestNotBuiltError);
  });
});

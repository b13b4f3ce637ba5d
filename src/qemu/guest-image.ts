import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GuestNotBuiltError } from '../errors.js';

/** The kernel and initramfs a machine boots, and the guest image's identity (for snapshot compatibility). */
export interface GuestImage {
  readonly kernel: string;
  readonly initrd: string;
  /** The guest build's content hash, or `custom` for a kernel/initrd given by path. */
  readonly hash: string;
  /** Read-only squashfs with the guest runtimes, attached as a disk (absent for a custom kernel/initrd). */
  readonly maps?: string;
}

/** The evolvm package root, found by walking up from this module (works from src/ and from dist/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'evolvm') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the evolvm package root');
    dir = parent;
  }
}

/** Where the built guest lives: `EVOLVM_GUEST_DIR`, else `guest/out/x86_64` in the package. */
export function defaultGuestDir(): string {
  return process.env.EVOLVM_GUEST_DIR ?? join(packageRoot(), 'guest', 'out', 'x86_64');
}

// pvh-loader with the boot image (the PVH kernel's bytes and the initramfs) boots as fast as the PVH ELF and leaves
// no kernel ROM for QEMU to write back over RAM on each snapshot-load (guest/boot/pvh-loader.c). Without them, the
// PVH ELF boots faster than the bzImage (no decompression); the uncompressed cpio skips gunzip.
const LOADER = { kernel: 'pvh-loader.elf', initrd: 'boot.img' };
const KERNEL_NAMES = ['vmlinux', 'vmlinuz'];
const INITRD_NAMES = ['initramfs.cpio', 'initramfs.cpio.gz'];

/**
 * Resolves the kernel and initramfs to boot: the given paths, or the built guest's.
 * @throws {GuestNotBuiltError} when a file is missing.
 */
export function resolveGuestImage(kernel?: string, initrd?: string): GuestImage {
  const dir = defaultGuestDir();
  const loader = { kernel: join(dir, LOADER.kernel), initrd: join(dir, LOADER.initrd) };
  const useLoader = !kernel && !initrd && existsSync(loader.kernel) && existsSync(loader.initrd);
  const kernelPath = kernel ? resolve(kernel) : useLoader ? loader.kernel : firstExisting(dir, KERNEL_NAMES);
  const initrdPath = initrd ? resolve(initrd) : useLoader ? loader.initrd : firstExisting(dir, INITRD_NAMES);
  for (const path of [kernelPath, initrdPath]) if (!existsSync(path)) throw new GuestNotBuiltError(path);
  const maps = join(dir, 'runtimes.squashfs');
  if (kernel || initrd) return { kernel: kernelPath, initrd: initrdPath, hash: 'custom' };
  return { kernel: kernelPath, initrd: initrdPath, hash: readBuildHash(dir), ...(existsSync(maps) ? { maps } : {}) };
}

function firstExisting(dir: string, names: readonly string[]): string {
  for (const name of names) if (existsSync(join(dir, name))) return join(dir, name);
  return join(dir, names[names.length - 1]!);
}

function readBuildHash(dir: string): string {
  try {
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    const hash = manifest.inputHash ?? manifest.input_hash ?? manifest.hash;
    return typeof hash === 'string' ? hash : 'unknown';
  } catch {
    return 'unknown';
  }
}

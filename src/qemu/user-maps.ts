import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigInvalidError } from '../errors.js';

/** A map's name: what the guest sees it as (`/maps/NAME`). Its disk serial is `emap-NAME`, and serials hold 20 bytes. */
export const MAP_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,14}$/;
/** Each map is a virtio-blk disk (a PCI slot on q35). */
export const MAX_MAPS = 8;
/** microvm has 8 virtio-mmio transports, and evolvm's own devices take 3 of them (measured: a 6th map stops QEMU). */
export const MAX_MICROVM_MAPS = 5;
/** The serial prefix the guest's init looks for (guest/init/init.c, USER_MAP_PREFIX). */
export const USER_MAP_SERIAL_PREFIX = 'emap-';

/** The file systems a map may hold: squashfs, or ext2/3/4 (mounted read-only without its journal replayed). */
export type UserMapFormat = 'squashfs' | 'ext';

/** A read-only image the guest mounts at `/maps/<name>`. */
export interface UserMap {
  readonly name: string;
  /** Absolute host path of the image (squashfs or ext2/3/4: see mapFormatOf). */
  readonly path: string;
}

/** Where the ext2/3/4 superblock's magic (0xEF53, little-endian) lies: the superblock starts at 1024. */
const EXT_MAGIC_OFFSET = 1024 + 56;

/**
 * The file system in an image, from its first bytes (as the guest's init tells them apart): squashfs starts with
 * `hsqs`, an ext2/3/4 superblock holds 0xEF53 at byte 1080. Undefined for anything else.
 * @throws the open or read error.
 */
export function mapFormatOf(path: string): UserMapFormat | undefined {
  const head = Buffer.alloc(EXT_MAGIC_OFFSET + 2);
  const fd = openSync(path, 'r');
  let length: number;
  try {
    length = readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (length >= 4 && head.toString('latin1', 0, 4) === 'hsqs') return 'squashfs';
  if (length >= EXT_MAGIC_OFFSET + 2 && head.readUInt16LE(EXT_MAGIC_OFFSET) === 0xef53) return 'ext';
  return undefined;
}

/**
 * The config's maps in a fixed order (by name, so the same maps always make the same devices, as a restore
 * needs), each checked to be a regular file holding squashfs or ext2/3/4.
 * @throws {ConfigInvalidError} naming `maps.<name>` for a path that is not a regular file or holds no file system
 * the guest mounts, or `maps` for more maps than a microvm has room for.
 */
export function resolveUserMaps(maps: Readonly<Record<string, string>>, machine: 'q35' | 'microvm' = 'q35'): UserMap[] {
  const count = Object.keys(maps).length;
  if (machine === 'microvm' && count > MAX_MICROVM_MAPS) {
    throw new ConfigInvalidError([{ path: 'maps', message: `a microvm has room for ${MAX_MICROVM_MAPS} maps (virtio-mmio transports)`, value: count }]);
  }
  const issues: Array<{ path: string; message: string; value: string }> = [];
  const resolved: UserMap[] = [];
  for (const [name, given] of Object.entries(maps).sort(([a], [b]) => (a < b ? -1 : 1))) {
    const path = resolve(given);
    let format: UserMapFormat | undefined;
    try {
      if (!statSync(path).isFile()) {
        issues.push({ path: `maps.${name}`, message: 'not a regular file', value: path });
        continue;
      }
      format = mapFormatOf(path);
    } catch (error) {
      const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
      issues.push({ path: `maps.${name}`, message: missing ? 'no such file' : `cannot be read: ${(error as Error).message}`, value: path });
      continue;
    }
    if (!format) issues.push({ path: `maps.${name}`, message: 'not a squashfs or ext2/3/4 image', value: path });
    else resolved.push({ name, path });
  }
  if (issues.length > 0) throw new ConfigInvalidError(issues);
  return resolved;
}

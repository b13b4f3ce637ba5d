import { statSync } from 'node:fs';
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

/** A read-only image the guest mounts at `/maps/<name>`. */
export interface UserMap {
  readonly name: string;
  /** Absolute host path of the image (a squashfs). */
  readonly path: string;
}

/**
 * The config's maps in a fixed order (by name, so the same maps always make the same devices, as a restore
 * needs), each checked to be a regular file.
 * @throws {ConfigInvalidError} naming `maps.<name>` for a path that is not a regular file, or `maps` for more
 * maps than a microvm has room for.
 */
export function resolveUserMaps(maps: Readonly<Record<string, string>>, machine: 'q35' | 'microvm' = 'q35'): UserMap[] {
  const count = Object.keys(maps).length;
  if (machine === 'microvm' && count > MAX_MICROVM_MAPS) {
    throw new ConfigInvalidError([{ path: 'maps', message: `a microvm has room for ${MAX_MICROVM_MAPS} maps (virtio-mmio transports)`, value: count }]);
  }
  const resolved = Object.entries(maps)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([name, path]) => ({ name, path: resolve(path) }));
  const issues = resolved.flatMap(({ name, path }) => {
    try {
      return statSync(path).isFile() ? [] : [{ path: `maps.${name}`, message: 'not a regular file', value: path }];
    } catch {
      return [{ path: `maps.${name}`, message: 'no such file', value: path }];
    }
  });
  if (issues.length > 0) throw new ConfigInvalidError(issues);
  return resolved;
}

import { open } from 'node:fs/promises';
import { execaSync } from 'execa';
import { ConfigInvalidError, SnapshotMismatchError } from '../errors.js';
import { machineOptions } from '../qemu/argv.js';
import type { MachineConfigInput, RestoreConfig } from '../qemu/config.js';
import { resolveGuestImage } from '../qemu/guest-image.js';
import { resolveExecutable } from '../qemu/resolve-executable.js';
import { resolveUserMaps, type UserMap } from '../qemu/user-maps.js';
import { parsePersistedExtra, type PersistedExtra } from './persisted-extra.js';
import { cached, cachedSync, fileIdentity } from '../util/file-cache.js';
import { hashHandle } from './store/fs-io.js';
import type { SnapshotManifest } from './store/manifest.js';

const versions = new Map<string, string>();

/**
 * The version a qemu-system binary reports, e.g. `7.2.22`: cached per binary in this process and on disk
 * (`qemu --version` is a ~70 ms process here; the disk entry is keyed by the binary's size, mtime and inode).
 * @throws {QemuNotFoundError} when the binary is missing.
 */
export function qemuVersion(binary: string): string {
  const path = resolveExecutable(binary);
  let version = versions.get(path);
  if (!version) {
    const bytes = cachedSync('qemu-version', fileIdentity(path), (cached) => cached.length > 0 && cached.length < 200, () => {
      const out = execaSync(path, ['--version'], { stdin: 'ignore' }).stdout;
      return Buffer.from(/version (\d+\.\d+\.\d+)/.exec(out)?.[1] ?? out.split('\n')[0]!.trim());
    });
    version = bytes.toString('utf8');
    versions.set(path, version);
  }
  return version;
}

export interface HostFacts {
  readonly qemuVersion: string;
  readonly machine: string;
  readonly imageHash: string;
}

/**
 * Checks that this host can load a snapshot: device state only loads into the same QEMU version and machine
 * type, and the guest's kernel must be the one whose memory image it is. Memory size and CPU count are taken
 * from the snapshot, so they cannot differ.
 * @throws {SnapshotMismatchError} naming what differs.
 */
export function assertCompatible(manifest: SnapshotManifest, ref: string, host: HostFacts): void {
  const checks: Array<[SnapshotMismatchError['what'], string, string]> = [
    ['qemu', manifest.qemu.version, host.qemuVersion],
    ['machine', manifest.qemu.machine, host.machine],
    ['guest', manifest.guest.imageHash, host.imageHash],
  ];
  for (const [what, expected, actual] of checks) {
    if (expected !== actual) throw new SnapshotMismatchError(ref, what, expected, actual);
  }
}

/**
 * What a persisted snapshot records of its maps, and what a restore must match: each map's name, size and sha256
 * (`name:size:sha256`, space-separated; '' for none). A map is only read by the guest, so its content, not its
 * path, is what a restored guest depends on: its page cache holds the old bytes. The hash is cached per file
 * identity (path, size, mtime, inode), so only a new or changed file is read whole.
 * @throws {ConfigInvalidError} naming `maps.<name>` for a map that cannot be read.
 */
export async function userMapsFingerprint(maps: readonly UserMap[]): Promise<string> {
  const parts: string[] = [];
  for (const map of maps) {
    try {
      // `size:sha256`, from one read of the file, so that the two describe the same bytes.
      const entry = await cached('map-sha256', fileIdentity(map.path), (bytes) => /^\d+:[0-9a-f]{64}$/.test(bytes.toString('utf8')), async () => {
        const handle = await open(map.path, 'r');
        try {
          const { size, sha256 } = await hashHandle(handle, { operation: `hash map ${map.name}` });
          return Buffer.from(`${size}:${sha256}`);
        } finally {
          await handle.close();
        }
      });
      parts.push(`${map.name}:${entry.toString('utf8')}`);
    } catch (error) {
      // Gone or unreadable since it was checked.
      throw new ConfigInvalidError([{ path: `maps.${map.name}`, message: `cannot be read: ${(error as Error).message}`, value: map.path }], { cause: error });
    }
  }
  return parts.join(' ');
}

/** What a restore starts: the snapshot's machine shape under the restore's config. */
export interface RestoreShape {
  readonly extra: PersistedExtra;
  readonly machineConfig: MachineConfigInput;
}

/**
 * Checks that this host can restore a snapshot of stage `stageName` with `config`, and gives the machine to start:
 * the snapshot's memory, CPUs, machine type and firmware (its device state loads only into the same shape), the
 * rest from `config`. Checked: the stage, the QEMU version, machine type and guest image (assertCompatible), the
 * device model, and the maps' names and content.
 * @throws {SnapshotMismatchError} naming what differs.
 * @throws {SnapshotCorruptError} when the manifest's `extra` is not what evolvm writes.
 * @throws {ConfigInvalidError} for a map that cannot be read.
 */
export async function checkRestorable(manifest: SnapshotManifest, ref: string, stageName: string, config: RestoreConfig): Promise<RestoreShape> {
  if (manifest.stage.name !== stageName) throw new SnapshotMismatchError(ref, 'stage', manifest.stage.name, stageName);
  const extra = parsePersistedExtra(manifest);
  const machineConfig = { ...config, memoryMiB: manifest.memoryMiB, cpus: extra.cpus, machine: manifest.qemu.machine as 'q35', firmware: extra.firmware ?? config.firmware };
  assertCompatible(manifest, ref, {
    qemuVersion: qemuVersion(config.qemuBinary),
    machine: machineConfig.machine,
    imageHash: resolveGuestImage(config.kernel, config.initrd).hash,
  });
  const model = machineOptions(machineConfig);
  if (model !== extra.machineOptions) throw new SnapshotMismatchError(ref, 'machine', extra.machineOptions || '(not recorded)', model);
  const maps = await userMapsFingerprint(resolveUserMaps(config.maps, machineConfig.machine));
  if (maps !== extra.maps) throw new SnapshotMismatchError(ref, 'maps', extra.maps || '(none)', maps || '(none)');
  return { extra, machineConfig };
}

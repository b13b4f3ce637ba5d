import { execaSync } from 'execa';
import { SnapshotMismatchError } from '../errors.js';
import { resolveExecutable } from '../qemu/resolve-executable.js';
import { cachedSync, fileIdentity } from '../util/file-cache.js';
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

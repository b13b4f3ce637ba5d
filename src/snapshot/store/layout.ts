import { join } from 'node:path';
import type { SnapshotFileKind } from './manifest.js';
import { SNAPSHOT_ID_PATTERN } from './manifest.js';

/**
 * The layout of a store directory:
 *
 * ```
 * <root>/
 *   <id>/manifest.json, vmstate, disk   committed snapshots (files 0444); the rename into <id> is the commit point
 *   .staging-<random>/                  a create in progress; .owner names the writer (pid, host, start time)
 *   .trash-<random>/                    a snapshot or a dead staging directory being removed
 *   .names/<name>                       name → id index: one small JSON file per name, published with link()
 *   .locks/<id>.lease-<nonce>           one per process that leases <id> (JSON owner)
 *   .locks/<id>.delete                  a delete of <id> in progress (JSON owner)
 *   .tmp/                               temporary files, published into .names/ and .locks/ by link or rename
 * ```
 *
 * Every name that is not a snapshot starts with `.`, which an id never does.
 */
export const STAGING_PREFIX = '.staging-';
export const TRASH_PREFIX = '.trash-';
export const NAMES_DIR = '.names';
export const LOCKS_DIR = '.locks';
export const TEMP_DIR = '.tmp';
export const MANIFEST_FILE = 'manifest.json';
/** Inside a staging directory: the writer's owner record; removed just before the commit rename. */
export const OWNER_FILE = '.owner';
/** The file names this store gives a snapshot's files (recorded in the manifest's `files[kind].path`). */
export const FILE_NAMES: Readonly<Record<SnapshotFileKind, string>> = { vmstate: 'vmstate', disk: 'disk' };
/** Bound on an owner, name or lock record. */
export const MAX_RECORD_BYTES = 64 * 1024;
/** A staging directory name as written into a name record (validated before it is joined to a path). */
export const STAGING_NAME_PATTERN = /^\.staging-[A-Za-z0-9_-]{1,64}$/;

export function isSnapshotId(name: string): boolean {
  return SNAPSHOT_ID_PATTERN.test(name);
}

export class StoreLayout {
  constructor(readonly root: string) {}
  snapshotDir(id: string): string {
    return join(this.root, id);
  }
  file(id: string, kind: SnapshotFileKind): string {
    return join(this.root, id, FILE_NAMES[kind]);
  }
  manifest(id: string): string {
    return join(this.root, id, MANIFEST_FILE);
  }
  get namesDir(): string {
    return join(this.root, NAMES_DIR);
  }
  get locksDir(): string {
    return join(this.root, LOCKS_DIR);
  }
  get tempDir(): string {
    return join(this.root, TEMP_DIR);
  }
  name(name: string): string {
    return join(this.root, NAMES_DIR, name);
  }
}

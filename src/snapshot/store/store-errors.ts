import { EvolvmError, type ErrorCode } from '../../errors.js';

/**
 * The codes the snapshot store adds. Until `ErrorCode` in src/errors.ts lists them, each class declares its
 * `code` as `Extract<ErrorCode, 'X'>` (which is `never` for now, and becomes the literal once the union
 * has it), so nothing here has to change when the union grows.
 */
export type StoreErrorCode =
  | 'SNAPSHOT_CORRUPT'
  | 'SNAPSHOT_INCOMPATIBLE'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_EXISTS'
  | 'SNAPSHOT_LOCKED'
  | 'SNAPSHOT_IN_USE_BY_CHILD';

/** Which check a stored snapshot failed. */
export type CorruptionReason =
  /** manifest.json is not valid UTF-8 JSON. */
  | 'manifest-json'
  /** manifest.json parsed but a field is wrong; `issues` names each field. */
  | 'manifest-schema'
  /** manifest.json is larger than the bound (1 MiB). */
  | 'manifest-too-large'
  /** The manifest's `id` is not the name of the directory it sits in. */
  | 'id-mismatch'
  /** A file named by the manifest (or the manifest itself) is missing. */
  | 'missing'
  /** A path is a symbolic link; the store never follows one. */
  | 'symlink'
  /** A path is not a regular file (a directory, a device, a FIFO...), or the snapshot directory is not one. */
  | 'not-regular'
  /** A file's size differs from the manifest's. */
  | 'size'
  /** A file is writable; committed files are 0444. */
  | 'mode'
  /** A file's sha256 differs from the manifest's (found by `verify` only). */
  | 'hash'
  /** The snapshot directory or the writer's staging directory holds a file the format does not know. */
  | 'unexpected-file';

export interface ManifestIssue {
  /** Dotted path of the offending field (`stage.lineage.0.transition`); empty for the root. */
  readonly path: string;
  readonly message: string;
}

/** Something the store reads is damaged: a manifest, or a file it names. Nothing is repaired or removed. */
export class SnapshotCorruptError extends EvolvmError {
  readonly code = 'SNAPSHOT_CORRUPT' as Extract<ErrorCode, 'SNAPSHOT_CORRUPT'>;
  /** Each offending manifest field (for `manifest-schema`); empty otherwise. */
  readonly issues: readonly ManifestIssue[];
  /** The first offending field's path (for `manifest-schema`), else null. */
  readonly field: string | null;
  /** What the manifest says (a size, a sha256), when the check compares. */
  readonly expected: string | number | undefined;
  /** What the file is, when the check compares. */
  readonly actual: string | number | undefined;
  constructor(
    /** The snapshot id, or the directory name when no id is known yet. */
    readonly snapshot: string,
    readonly reason: CorruptionReason,
    /** The file inside the snapshot (`manifest.json`, `vmstate`, `disk`), or null for the directory itself. */
    readonly file: string | null,
    readonly detail: string,
    options: {
      issues?: readonly ManifestIssue[];
      expected?: string | number;
      actual?: string | number;
      cause?: unknown;
    } = {},
  ) {
    super(`snapshot ${snapshot}${file ? ` ${file}` : ''} is corrupt (${reason}): ${detail}`, { cause: options.cause });
    this.issues = options.issues ?? [];
    this.field = this.issues[0]?.path ?? null;
    this.expected = options.expected;
    this.actual = options.actual;
  }
}

/** A manifest was written by a format version this code does not read. */
export class SnapshotIncompatibleError extends EvolvmError {
  readonly code = 'SNAPSHOT_INCOMPATIBLE' as Extract<ErrorCode, 'SNAPSHOT_INCOMPATIBLE'>;
  constructor(
    readonly snapshot: string,
    readonly formatVersion: unknown,
    readonly supported: readonly number[],
    options?: { cause?: unknown },
  ) {
    super(
      `snapshot ${snapshot} has manifest formatVersion ${JSON.stringify(formatVersion)}; this evolvm reads ${supported.join(', ')}`,
      options,
    );
  }
}

/** No snapshot has this id or name. */
export class SnapshotNotFoundError extends EvolvmError {
  readonly code = 'SNAPSHOT_NOT_FOUND' as Extract<ErrorCode, 'SNAPSHOT_NOT_FOUND'>;
  constructor(readonly ref: string, readonly store: string, options?: { cause?: unknown }) {
    super(`no snapshot ${ref} in ${store}`, options);
  }
}

/** The name is taken, by a committed snapshot (`existingId`) or by a create still in progress (null). */
export class SnapshotExistsError extends EvolvmError {
  readonly code = 'SNAPSHOT_EXISTS' as Extract<ErrorCode, 'SNAPSHOT_EXISTS'>;
  constructor(readonly snapshotName: string, readonly existingId: string | null, options?: { cause?: unknown }) {
    super(
      existingId
        ? `a snapshot named ${snapshotName} already exists (${existingId}); snapshots are never overwritten`
        : `a snapshot named ${snapshotName} is being created by another writer`,
      options,
    );
  }
}

/** Who holds a lock: read from the lock file. */
export interface LockHolder {
  readonly pid: number;
  readonly host: string;
}

/** The snapshot is leased (in use by a restore) or is being deleted, so the operation was refused. */
export class SnapshotLockedError extends EvolvmError {
  readonly code = 'SNAPSHOT_LOCKED' as Extract<ErrorCode, 'SNAPSHOT_LOCKED'>;
  constructor(
    readonly id: string,
    readonly operation: 'delete' | 'lease',
    /** `leased`: live leases exist; `deleting`: a delete is in progress. */
    readonly reason: 'leased' | 'deleting',
    readonly holders: readonly LockHolder[],
    options?: { cause?: unknown },
  ) {
    super(
      `cannot ${operation} snapshot ${id}: it is ${reason === 'leased' ? 'leased' : 'being deleted'}` +
        (holders.length ? ` by ${holders.map((h) => `pid ${h.pid} on ${h.host}`).join(', ')}` : ''),
      options,
    );
  }
}

/** The snapshot's disk layer backs another snapshot's disk layer, so it cannot be deleted. */
export class SnapshotInUseByChildError extends EvolvmError {
  readonly code = 'SNAPSHOT_IN_USE_BY_CHILD' as Extract<ErrorCode, 'SNAPSHOT_IN_USE_BY_CHILD'>;
  constructor(readonly id: string, readonly children: readonly string[], options?: { cause?: unknown }) {
    super(`cannot delete snapshot ${id}: snapshots ${children.join(', ')} have it as parent`, options);
  }
}

export type SnapshotStoreError =
  | SnapshotCorruptError
  | SnapshotIncompatibleError
  | SnapshotNotFoundError
  | SnapshotExistsError
  | SnapshotLockedError
  | SnapshotInUseByChildError;

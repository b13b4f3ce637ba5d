import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, realpath, rename, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { z } from 'zod';
import { ConfigInvalidError, EvolvmError } from '../../errors.js';
import { CleanupStack } from '../../util/cleanup-stack.js';
import {
  errnoOf,
  fsyncDir,
  hashHandle,
  openRegular,
  pathKind,
  randomToken,
  readBounded,
  removeTree,
  throwIfAborted,
  writeNewFile,
  type OpenProblem,
} from './fs-io.js';
import {
  FILE_NAMES,
  isSnapshotId,
  MANIFEST_FILE,
  MAX_RECORD_BYTES,
  OWNER_FILE,
  STAGING_PREFIX,
  StoreLayout,
  TRASH_PREFIX,
} from './layout.js';
import { decodeOwner, LockTable } from './locks.js';
import {
  issuesOf,
  MANIFEST_FORMAT_VERSION,
  MAX_MANIFEST_BYTES,
  parseManifest,
  parseManifestBytes,
  serializeManifest,
  SNAPSHOT_FILE_KINDS,
  SnapshotManifestDraftSchema,
  SnapshotNameSchema,
  type SnapshotFileKind,
  type SnapshotManifest,
  type SnapshotManifestDraft,
} from './manifest.js';
import { NameIndex } from './names.js';
import { currentOwner, livenessOf } from '../../util/owner.js';
import {
  SnapshotCorruptError,
  SnapshotInUseByChildError,
  SnapshotLockedError,
  SnapshotNotFoundError,
  type CorruptionReason,
} from './store-errors.js';

/** A committed snapshot, after the eager checks (see {@link FsSnapshotStore.get}). */
export interface SnapshotInfo {
  readonly id: string;
  readonly name: string;
  readonly manifest: SnapshotManifest;
  /** The snapshot's directory. */
  readonly dir: string;
  /** Absolute paths of the files, for the restorer. */
  readonly paths: Readonly<Record<SnapshotFileKind, string>>;
  /** Total size of the files in bytes. */
  readonly sizeBytes: number;
}

/** One row of {@link SnapshotStore.list}: a snapshot that passed the eager checks, or the error it failed with. */
export type SnapshotListEntry =
  | { readonly ok: true; readonly id: string; readonly snapshot: SnapshotInfo }
  | { readonly ok: false; readonly id: string; readonly error: EvolvmError };

/** What a writer gets besides the staging directory. */
export interface SnapshotWriteContext {
  /** The id the snapshot will have once committed (its directory will be `<root>/<id>`). */
  readonly id: string;
  /** Where the writer must put the QEMU vmstate (the `migrate` output). */
  readonly vmstatePath: string;
  /** Where the writer must put the frozen qcow2 disk layer. */
  readonly diskPath: string;
  readonly signal: AbortSignal | undefined;
}

/**
 * Fills a staging directory with exactly the two files `vmstate` and `disk` and returns the manifest
 * fields only the writer knows. A parent's disk can be referenced as `../<parent id>/disk`: the staging
 * directory and the committed one are both children of the store root.
 */
export type SnapshotWriter = (stagingDir: string, context: SnapshotWriteContext) => Promise<SnapshotManifestDraft>;

export interface VerifyProgress {
  readonly file: SnapshotFileKind;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

export interface StoreCallOptions {
  signal?: AbortSignal;
}

export interface VerifyOptions extends StoreCallOptions {
  /** Called once before hashing starts (bytesDone 0) and after each chunk (1 MiB) hashed. */
  onProgress?: (progress: VerifyProgress) => void;
}

/** A snapshot held in use. While any lease on it is live, `delete` refuses it. */
export interface SnapshotLease extends AsyncDisposable {
  readonly snapshot: SnapshotInfo;
  /** Gives the lease up; a second call does nothing. */
  release(): Promise<void>;
}

/** What `gc` removed or repaired. */
export interface GcReport {
  readonly removed: ReadonlyArray<{ readonly kind: 'staging' | 'trash' | 'temp' | 'lock' | 'name' | 'owner'; readonly path: string }>;
  /** Names whose index entry was missing for a committed snapshot and has been re-created. */
  readonly restoredNames: readonly string[];
}

/**
 * Where persisted stages live. A reference (`ref`) is a snapshot id or a snapshot name; an id wins when a
 * string is both.
 */
export interface SnapshotStore {
  /**
   * Writes a new snapshot: `write` fills a staging directory, then the store hashes the files, writes the
   * manifest and commits atomically.
   * @throws {SnapshotExistsError} when `name` is taken (a snapshot is never overwritten).
   * @throws {ConfigInvalidError} for a bad name or a bad manifest draft (issues name each field).
   * @throws {SnapshotCorruptError} when the writer left a file missing, a symlink, or an unknown file.
   * @throws {SnapshotNotFoundError} / {@link SnapshotLockedError} when the draft's parent is missing or being deleted.
   * @throws {AbortedError}, or whatever `write` throws.
   */
  create(name: string, write: SnapshotWriter, options?: StoreCallOptions): Promise<SnapshotInfo>;
  /** Every committed snapshot, oldest first, each with its eager-check result. */
  list(options?: StoreCallOptions): Promise<SnapshotListEntry[]>;
  /**
   * A snapshot, after the eager checks.
   * @throws {SnapshotNotFoundError}, {@link SnapshotCorruptError}, {@link SnapshotIncompatibleError}.
   */
  get(ref: string, options?: StoreCallOptions): Promise<SnapshotInfo>;
  /**
   * The eager checks, then every file re-hashed.
   * @throws {SnapshotCorruptError} `hash` for a file whose content changed; as `get` otherwise.
   */
  verify(ref: string, options?: VerifyOptions): Promise<SnapshotInfo>;
  /**
   * Holds a snapshot in use (for a restore), after the eager checks.
   * @throws {SnapshotLockedError} `deleting` when a delete is under way; as `get` otherwise.
   */
  lease(ref: string, options?: StoreCallOptions): Promise<SnapshotLease>;
  /**
   * Deletes a snapshot atomically (a corrupt one too).
   * @throws {SnapshotLockedError} when leased or being deleted; {@link SnapshotInUseByChildError}; {@link SnapshotNotFoundError}.
   */
  delete(ref: string, options?: StoreCallOptions): Promise<void>;
  /** Removes what crashed writers and deleters left behind. Never touches a committed snapshot. */
  gc(options?: StoreCallOptions): Promise<GcReport>;
  /** The path of a snapshot's file, for the restorer (no check: use `get` or `lease` first). */
  pathOf(id: string, kind: SnapshotFileKind): string;
}

export interface FsSnapshotStoreOptions {
  signal?: AbortSignal;
  /**
   * A staging directory whose writer cannot be checked (no owner record, or one from another host) is
   * removed once it is older than this (default 15 minutes); one whose writer is dead is removed at once.
   */
  staleAfterMs?: number;
  /** Run {@link FsSnapshotStore.gc} on open (default true); false leaves the store untouched, as a read-only tool wants. */
  recover?: boolean;
}

const OpenOptionsSchema = z.strictObject({
  signal: z.instanceof(AbortSignal).optional(),
  recover: z.boolean().default(true),
  staleAfterMs: z.number().int().min(0).max(7 * 24 * 3_600_000).default(15 * 60_000),
});

/** Leases held by this process, shared by every store object on the same root: key → refcount and file. */
const processLeases = new Map<string, { count: number; file: string }>();
/** Per-key promise chains, so that leasing and releasing one snapshot in this process never interleave. */
const chains = new Map<string, Promise<unknown>>();

function serial<T>(key: string, work: () => Promise<T>): Promise<T> {
  const next = (chains.get(key) ?? Promise.resolve()).catch(() => {}).then(work);
  chains.set(key, next);
  void next.finally(() => chains.get(key) === next && chains.delete(key)).catch(() => {});
  return next;
}

/**
 * A snapshot store in a directory (layout in layout.ts). Crash safety: a snapshot becomes visible only by
 * the rename of its complete, fsynced staging directory to `<id>/`; everything a crash can leave behind
 * (staging directories, trash, stale name claims and locks) is recognisable and removed by `open`/`gc`.
 *
 * Checks, eager and lazy:
 * - EAGER, on `get`, `lease`, `list` and after `create`: the snapshot directory is a real directory; the
 *   manifest is a regular file of at most 1 MiB, valid JSON and valid against the schema, of a supported
 *   format version, with an `id` equal to its directory's name; each file it names exists, is a regular
 *   file (lstat: a symlink is refused, never followed), has the recorded size, and is read-only. These
 *   cost a few syscalls and catch truncation, swapped-in links and half-written or edited manifests.
 * - LAZY, on `verify` only: each file's sha256. Hashing a 50–90 MiB vmstate costs 100+ ms, and a restore
 *   reads the vmstate anyway (QEMU refuses a damaged migration stream and a damaged qcow2), so paying for
 *   it on every restore would double the I/O; `verify` (and `evolvm snapshot verify`) is for audits, after
 *   a copy, or after a failed restore. Consequence: a same-size in-place edit of a file passes `get`.
 *
 * @example
 * ```ts
 * const store = await FsSnapshotStore.open('/var/lib/evolvm/snapshots');
 * const snap = await store.create('py-loaded', async (dir, { vmstatePath, diskPath }) => {
 *   await machine.migrateTo(vmstatePath); await freezeDisk(diskPath);
 *   return { stage, parent: null, qemu, guest, memoryMiB: 256, hostFunctions: [] };
 * });
 * await using lease = await store.lease('py-loaded');
 * restore(lease.snapshot.paths.vmstate, lease.snapshot.paths.disk);
 * ```
 */
export class FsSnapshotStore implements SnapshotStore {
  readonly #layout: StoreLayout;
  readonly #names: NameIndex;
  readonly #locks: LockTable;
  readonly #staleAfterMs: number;

  private constructor(root: string, staleAfterMs: number) {
    this.#layout = new StoreLayout(root);
    this.#names = new NameIndex(this.#layout);
    this.#locks = new LockTable(this.#layout);
    this.#staleAfterMs = staleAfterMs;
  }

  /** The store's directory (real path). */
  get root(): string {
    return this.#layout.root;
  }

  /**
   * Opens (creating if needed) the store at `root`, then (unless `recover: false`) runs {@link gc} to clean
   * up after crashed writers and deleters.
   * @throws {ConfigInvalidError} for bad options; {@link AbortedError}; file-system errors for an unusable root.
   */
  static async open(root: string, options: FsSnapshotStoreOptions = {}): Promise<FsSnapshotStore> {
    const parsed = OpenOptionsSchema.safeParse(options);
    if (!parsed.success) throw new ConfigInvalidError(issuesOf(parsed.error), { cause: parsed.error });
    throwIfAborted(parsed.data.signal, 'snapshot store open');
    await mkdir(root, { recursive: true });
    const store = new FsSnapshotStore(await realpath(root), parsed.data.staleAfterMs);
    for (const dir of [store.#layout.namesDir, store.#layout.locksDir, store.#layout.tempDir]) await mkdir(dir, { recursive: true });
    if (parsed.data.recover) await store.gc({ signal: parsed.data.signal });
    return store;
  }

  async create(name: string, write: SnapshotWriter, options: StoreCallOptions = {}): Promise<SnapshotInfo> {
    const { signal } = options;
    const checkedName = SnapshotNameSchema.safeParse(name);
    if (!checkedName.success) {
      throw new ConfigInvalidError([{ path: 'name', message: checkedName.error.issues[0]?.message ?? 'invalid', value: name }]);
    }
    throwIfAborted(signal, `snapshot create ${name}`);
    const id = randomUUID();
    const label = `${name} (being created)`;
    let committed = false;
    const cleanup = new CleanupStack();
    try {
      // Made in the temp folder with its owner record, then renamed into place: every staging directory has an
      // owner open can check, even when the writer is killed between creating it and writing the record.
      const pending = await mkdtemp(join(this.#layout.tempDir, 'staging-'));
      cleanup.defer('remove unpublished staging directory', () => removeTree(pending));
      await writeNewFile(join(pending, OWNER_FILE), new TextEncoder().encode(JSON.stringify(currentOwner(randomToken()))));
      const staging = join(this.#layout.root, `${STAGING_PREFIX}${basename(pending).slice('staging-'.length)}`);
      await rename(pending, staging);
      cleanup.defer('remove staging directory', () => (committed ? undefined : removeTree(staging)));
      // Claimed before the writer runs, so a taken name fails before seconds of migration are spent.
      const claim = await this.#names.claim(name, id, basename(staging));
      cleanup.defer('release name claim', () => (committed ? undefined : this.#names.release(name, { nonce: claim.nonce })));

      const vmstatePath = join(staging, FILE_NAMES.vmstate);
      const diskPath = join(staging, FILE_NAMES.disk);
      const draftInput = await write(staging, { id, vmstatePath, diskPath, signal });
      throwIfAborted(signal, `snapshot create ${name}`);
      const draft = SnapshotManifestDraftSchema.safeParse(draftInput);
      if (!draft.success) throw new ConfigInvalidError(issuesOf(draft.error), { cause: draft.error });

      // The parent is leased until the commit, so a concurrent delete cannot remove the layer this one's disk backs onto.
      if (draft.data.parent !== null) {
        const parentLease = await this.#leaseId(draft.data.parent, draft.data.parent);
        cleanup.defer('release parent lease', () => parentLease.release());
      }

      for (const entry of await readdir(staging)) {
        if (entry !== OWNER_FILE && entry !== FILE_NAMES.vmstate && entry !== FILE_NAMES.disk) {
          throw new SnapshotCorruptError(label, 'unexpected-file', entry, 'the writer must leave only vmstate and disk in the staging directory');
        }
      }
      const files = {} as Record<SnapshotFileKind, { path: string; size: number; sha256: string }>;
      for (const kind of SNAPSHOT_FILE_KINDS) {
        const opened = await openRegular(join(staging, FILE_NAMES[kind]));
        if (!opened.ok) throw openProblem(label, kind, opened.problem);
        try {
          const { sha256, size } = await hashHandle(opened.handle, { signal, operation: `snapshot create ${name}` });
          await opened.handle.chmod(0o444);
          await opened.handle.sync();
          files[kind] = { path: FILE_NAMES[kind], size, sha256 };
        } finally {
          await opened.handle.close();
        }
      }
      const manifest = parseManifest(
        { formatVersion: MANIFEST_FORMAT_VERSION, id, name, createdAt: new Date().toISOString(), ...draft.data, files },
        label,
      );
      await writeNewFile(join(staging, MANIFEST_FILE), serializeManifest(manifest), 0o444);
      await fsyncDir(staging);
      throwIfAborted(signal, `snapshot create ${name}`);
      // The commit point: a complete, fsynced directory appears under its id in one step. The owner record goes
      // only after it: a staging directory without one is kept for the stale bound (a kill between removing it
      // and the rename left such a directory behind for 15 minutes).
      await rename(staging, this.#layout.snapshotDir(id));
      committed = true;
      await fsyncDir(this.#layout.root);
      await removeOwnerRecord(this.#layout.snapshotDir(id));
    } catch (error) {
      await cleanup.dispose();
      throw error;
    }
    await cleanup.dispose();
    return this.#read(id);
  }

  async list(options: StoreCallOptions = {}): Promise<SnapshotListEntry[]> {
    const entries: SnapshotListEntry[] = [];
    for (const id of await this.#ids()) {
      throwIfAborted(options.signal, 'snapshot list');
      try {
        entries.push({ ok: true, id, snapshot: await this.#read(id) });
      } catch (error) {
        if (error instanceof SnapshotNotFoundError) continue; // deleted while we listed
        if (!(error instanceof EvolvmError)) throw error;
        entries.push({ ok: false, id, error });
      }
    }
    const key = (e: SnapshotListEntry): string => (e.ok ? e.snapshot.manifest.createdAt : '');
    return entries.sort((a, b) => key(a).localeCompare(key(b)) || a.id.localeCompare(b.id));
  }

  async get(ref: string, options: StoreCallOptions = {}): Promise<SnapshotInfo> {
    throwIfAborted(options.signal, `snapshot get ${ref}`);
    return this.#read(await this.#resolve(ref));
  }

  async verify(ref: string, options: VerifyOptions = {}): Promise<SnapshotInfo> {
    const { signal, onProgress } = options;
    const info = await this.get(ref, { signal });
    const bytesTotal = info.sizeBytes;
    let bytesDone = 0;
    onProgress?.({ file: SNAPSHOT_FILE_KINDS[0], bytesDone, bytesTotal });
    for (const kind of SNAPSHOT_FILE_KINDS) {
      const entry = info.manifest.files[kind];
      const opened = await openRegular(info.paths[kind]);
      if (!opened.ok) throw openProblem(info.id, kind, opened.problem);
      try {
        const { sha256, size } = await hashHandle(opened.handle, {
          signal,
          operation: `snapshot verify ${ref}`,
          onBytes: (n) => {
            bytesDone += n;
            onProgress?.({ file: kind, bytesDone, bytesTotal });
          },
        });
        if (size !== entry.size) {
          throw new SnapshotCorruptError(info.id, 'size', kind, `${size} bytes, the manifest says ${entry.size}`, { expected: entry.size, actual: size });
        }
        if (sha256 !== entry.sha256) {
          throw new SnapshotCorruptError(info.id, 'hash', kind, `sha256 ${sha256}, the manifest says ${entry.sha256}`, {
            expected: entry.sha256,
            actual: sha256,
          });
        }
      } finally {
        await opened.handle.close();
      }
    }
    return info;
  }

  async lease(ref: string, options: StoreCallOptions = {}): Promise<SnapshotLease> {
    throwIfAborted(options.signal, `snapshot lease ${ref}`);
    return this.#leaseId(await this.#resolve(ref), ref);
  }

  async delete(ref: string, options: StoreCallOptions = {}): Promise<void> {
    throwIfAborted(options.signal, `snapshot delete ${ref}`);
    const id = await this.#resolve(ref);
    const nonce = await this.#locks.beginDelete(id);
    try {
      // Checked after the intent is published: a lease published before it is seen here, one after sees the intent.
      const holders = await this.#locks.leaseHolders(id);
      if (holders.length > 0) throw new SnapshotLockedError(id, 'delete', 'leased', holders);
      const children = await this.#childrenOf(id);
      if (children.length > 0) throw new SnapshotInUseByChildError(id, children);
      const name = await this.#nameOf(id);
      const trash = join(this.#layout.root, `${TRASH_PREFIX}${randomToken()}`);
      try {
        await rename(this.#layout.snapshotDir(id), trash);
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') throw new SnapshotNotFoundError(ref, this.root, { cause: error });
        throw error;
      }
      await fsyncDir(this.#layout.root);
      if (name !== null) await this.#names.release(name, { id });
      await removeTree(trash);
    } finally {
      await this.#locks.endDelete(id, nonce);
    }
  }

  async gc(options: StoreCallOptions = {}): Promise<GcReport> {
    const removed: Array<GcReport['removed'][number]> = [];
    const now = Date.now();
    for (const entry of await readdir(this.#layout.root)) {
      throwIfAborted(options.signal, 'snapshot gc');
      const path = join(this.#layout.root, entry);
      if (entry.startsWith(TRASH_PREFIX)) {
        // A trash directory is garbage by definition: its rename was the delete's commit point.
        if (await removeQuietly(path)) removed.push({ kind: 'trash', path });
      } else if (entry.startsWith(STAGING_PREFIX) && (await this.#stagingIsStale(path, now))) {
        // Renamed first, so a half-removed staging directory is never mistaken for one without an owner yet.
        const trash = join(this.#layout.root, `${TRASH_PREFIX}${randomToken()}`);
        try {
          await rename(path, trash);
        } catch (error) {
          if (errnoOf(error) === 'ENOENT') continue;
          throw error;
        }
        await removeQuietly(trash);
        removed.push({ kind: 'staging', path });
      }
    }
    // A writer killed between its commit and removing its owner record left that record in the snapshot: not a
    // file of the snapshot (nothing reads it there), only clutter.
    for (const id of await this.#ids()) {
      const dir = this.#layout.snapshotDir(id);
      const read = await readBounded(join(dir, OWNER_FILE), MAX_RECORD_BYTES);
      const owner = read.ok ? decodeOwner(read.bytes) : null;
      if (read.ok && (!owner || livenessOf(owner) !== 'alive')) {
        await removeOwnerRecord(dir);
        removed.push({ kind: 'owner', path: join(dir, OWNER_FILE) });
      }
    }
    for (const entry of await readdir(this.#layout.tempDir)) {
      const path = join(this.#layout.tempDir, entry);
      const { stats } = await pathKind(path);
      if (stats && now - stats.mtimeMs > this.#staleAfterMs && (await removeQuietly(path))) removed.push({ kind: 'temp', path });
    }
    for (const path of await this.#locks.sweep()) removed.push({ kind: 'lock', path });
    const committed = (await this.list(options)).flatMap((e) => (e.ok ? [{ id: e.id, name: e.snapshot.name }] : []));
    const names = await this.#names.repair(committed);
    for (const name of names.removed) removed.push({ kind: 'name', path: this.#layout.name(name) });
    return { removed, restoredNames: names.restored };
  }

  pathOf(id: string, kind: SnapshotFileKind): string {
    if (!isSnapshotId(id)) throw new SnapshotNotFoundError(id, this.root);
    return this.#layout.file(id, kind);
  }

  /** Resolves a reference to the id of an existing snapshot directory (which may still be corrupt). */
  async #resolve(ref: string): Promise<string> {
    if (isSnapshotId(ref) && (await pathKind(this.#layout.snapshotDir(ref))).kind !== 'missing') return ref;
    if (SnapshotNameSchema.safeParse(ref).success) {
      const id = await this.#names.lookup(ref);
      if (id !== null) return id;
    }
    throw new SnapshotNotFoundError(ref, this.root);
  }

  /** Every directory entry that could be a snapshot. */
  async #ids(): Promise<string[]> {
    return (await readdir(this.#layout.root)).filter(isSnapshotId);
  }

  /** Reads a snapshot and runs the eager checks (see the class comment). */
  async #read(id: string): Promise<SnapshotInfo> {
    const dir = this.#layout.snapshotDir(id);
    const { kind } = await pathKind(dir);
    if (kind === 'missing') throw new SnapshotNotFoundError(id, this.root);
    if (kind === 'symlink') throw new SnapshotCorruptError(id, 'symlink', null, 'the snapshot directory is a symbolic link');
    if (kind !== 'directory') throw new SnapshotCorruptError(id, 'not-regular', null, 'the snapshot path is not a directory');

    const read = await readBounded(this.#layout.manifest(id), MAX_MANIFEST_BYTES);
    if (!read.ok) {
      if (read.problem === 'too-large') {
        throw new SnapshotCorruptError(id, 'manifest-too-large', MANIFEST_FILE, `larger than ${MAX_MANIFEST_BYTES} bytes`);
      }
      throw openProblem(id, MANIFEST_FILE, read.problem);
    }
    const manifest = parseManifestBytes(read.bytes, id);
    if (manifest.id !== id) {
      throw new SnapshotCorruptError(id, 'id-mismatch', MANIFEST_FILE, `the manifest's id is ${manifest.id}`, { expected: id, actual: manifest.id });
    }
    const paths = {} as Record<SnapshotFileKind, string>;
    for (const fileKind of SNAPSHOT_FILE_KINDS) {
      const entry = manifest.files[fileKind];
      if (entry.path !== FILE_NAMES[fileKind]) {
        const issue = { path: `files.${fileKind}.path`, message: `must be ${FILE_NAMES[fileKind]} in this store` };
        throw new SnapshotCorruptError(id, 'manifest-schema', MANIFEST_FILE, `${issue.path}: ${issue.message}`, { issues: [issue] });
      }
      const path = join(dir, entry.path);
      const { kind: fileType, stats } = await pathKind(path);
      if (fileType !== 'file' || !stats) throw openProblem(id, fileKind, fileType === 'missing' ? 'missing' : fileType === 'symlink' ? 'symlink' : 'not-regular');
      if (stats.size !== entry.size) {
        throw new SnapshotCorruptError(id, 'size', fileKind, `${stats.size} bytes, the manifest says ${entry.size}`, { expected: entry.size, actual: stats.size });
      }
      if ((stats.mode & 0o222) !== 0) {
        throw new SnapshotCorruptError(id, 'mode', fileKind, `mode ${(stats.mode & 0o777).toString(8)} is writable; committed files are 0444`);
      }
      paths[fileKind] = path;
    }
    return { id, name: manifest.name, manifest, dir, paths, sizeBytes: manifest.files.vmstate.size + manifest.files.disk.size };
  }

  /**
   * Leases `id`: one lease file per process and snapshot, counted in-process. The file is published before
   * the delete intent is looked for, and the snapshot is re-read after, so a delete that raced is seen.
   */
  async #leaseId(id: string, ref: string): Promise<SnapshotLease> {
    const key = `${this.root}\0${id}`;
    const snapshot = await serial(key, async () => {
      const held = processLeases.get(key);
      if (held) {
        held.count++;
        try {
          return await this.#read(id);
        } catch (error) {
          await this.#releaseKey(key);
          throw error;
        }
      }
      const file = await this.#locks.addLease(id);
      try {
        const deleter = await this.#locks.deleter(id);
        if (deleter) throw new SnapshotLockedError(id, 'lease', 'deleting', [deleter]);
        const info = await this.#read(id).catch((error: unknown) => {
          throw error instanceof SnapshotNotFoundError ? new SnapshotNotFoundError(ref, this.root) : error;
        });
        processLeases.set(key, { count: 1, file });
        return info;
      } catch (error) {
        await this.#locks.removeLease(file);
        throw error;
      }
    });
    let released = false;
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      await serial(key, () => this.#releaseKey(key));
    };
    return { snapshot, release, [Symbol.asyncDispose]: release };
  }

  async #releaseKey(key: string): Promise<void> {
    const held = processLeases.get(key);
    if (!held) return;
    if (--held.count > 0) return;
    processLeases.delete(key);
    await this.#locks.removeLease(held.file);
  }

  /**
   * The snapshots whose manifest names `id` as parent. A manifest that fails the schema still counts when
   * its JSON names the parent: deleting a layer under a damaged child would make the damage permanent.
   */
  async #childrenOf(id: string): Promise<string[]> {
    const children: string[] = [];
    for (const other of await this.#ids()) {
      if (other === id) continue;
      const read = await readBounded(this.#layout.manifest(other), MAX_MANIFEST_BYTES).catch(() => null);
      if (!read?.ok) continue;
      try {
        const value = JSON.parse(read.bytes.toString('utf8')) as { parent?: unknown } | null;
        if (value?.parent === id) children.push(other);
      } catch {
        // Unreadable JSON names no parent.
      }
    }
    return children;
  }

  /** The name in a snapshot's manifest, if the manifest can be read at all (a corrupt snapshot can be deleted too). */
  async #nameOf(id: string): Promise<string | null> {
    const read = await readBounded(this.#layout.manifest(id), MAX_MANIFEST_BYTES).catch(() => null);
    if (!read?.ok) return null;
    try {
      const name = (JSON.parse(read.bytes.toString('utf8')) as { name?: unknown } | null)?.name;
      return typeof name === 'string' && SnapshotNameSchema.safeParse(name).success ? name : null;
    } catch {
      return null;
    }
  }

  /** A staging directory is stale when its writer is dead, or cannot be checked and it is older than the bound. */
  async #stagingIsStale(path: string, now: number): Promise<boolean> {
    const { kind, stats } = await pathKind(path);
    if (kind !== 'directory' || !stats) return kind !== 'missing';
    const read = await readBounded(join(path, OWNER_FILE), MAX_RECORD_BYTES);
    const owner = read.ok ? decodeOwner(read.bytes) : null;
    const liveness = owner ? livenessOf(owner) : 'unknown';
    if (liveness === 'dead') return true;
    if (liveness === 'alive') return false;
    return now - stats.mtimeMs > this.#staleAfterMs;
  }
}

/** Removes a committed snapshot's owner record (written for its staging directory), if it is still there. */
async function removeOwnerRecord(dir: string): Promise<void> {
  try {
    await unlink(join(dir, OWNER_FILE));
  } catch (error) {
    if (errnoOf(error) !== 'ENOENT') throw error;
    return;
  }
  await fsyncDir(dir);
}

/** Removes a tree for gc; a failure (another process removing it too) leaves it for the next gc. */
async function removeQuietly(path: string): Promise<boolean> {
  try {
    await removeTree(path);
    return true;
  } catch {
    return false;
  }
}

function openProblem(snapshot: string, file: string, problem: OpenProblem): SnapshotCorruptError {
  const reasons: Record<OpenProblem, [CorruptionReason, string]> = {
    missing: ['missing', 'the file does not exist'],
    symlink: ['symlink', 'the file is a symbolic link; the store never follows one'],
    'not-regular': ['not-regular', 'not a regular file'],
  };
  const [reason, detail] = reasons[problem];
  return new SnapshotCorruptError(snapshot, reason, file, detail);
}

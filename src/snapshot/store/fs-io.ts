import { createHash, randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { link, lstat, open, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { AbortedError } from '../../errors.js';

/**
 * The store's file-system primitives. Every open uses O_NOFOLLOW and every stat is an lstat, so no
 * symbolic link inside the store is ever followed; every read is bounded or streamed.
 */

/** Chunk size for streamed hashing. */
const HASH_CHUNK_BYTES = 1024 * 1024;

export type PathKind = 'missing' | 'symlink' | 'file' | 'directory' | 'other';

export function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

export function randomToken(bytes = 8): string {
  return randomBytes(bytes).toString('hex');
}

export function throwIfAborted(signal: AbortSignal | undefined, operation: string): void {
  if (signal?.aborted) throw new AbortedError(operation, { cause: signal.reason });
}

/** What sits at `path`, without following a final symlink. */
export async function pathKind(path: string): Promise<{ kind: PathKind; stats: Stats | null }> {
  try {
    const stats = await lstat(path);
    const kind = stats.isSymbolicLink() ? 'symlink' : stats.isFile() ? 'file' : stats.isDirectory() ? 'directory' : 'other';
    return { kind, stats };
  } catch (error) {
    if (errnoOf(error) === 'ENOENT' || errnoOf(error) === 'ENOTDIR') return { kind: 'missing', stats: null };
    throw error;
  }
}

export type OpenProblem = 'missing' | 'symlink' | 'not-regular';

/**
 * Opens a regular file for reading without following a symlink, and fstats the open descriptor (so the
 * checks apply to the file actually read, not to whatever the path named a moment earlier).
 */
export async function openRegular(
  path: string,
): Promise<{ ok: true; handle: FileHandle; stats: Stats } | { ok: false; problem: OpenProblem }> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return { ok: false, problem: 'missing' };
    if (code === 'ELOOP') return { ok: false, problem: 'symlink' };
    throw error;
  }
  const stats = await handle.stat();
  if (!stats.isFile()) {
    await handle.close();
    return { ok: false, problem: 'not-regular' };
  }
  return { ok: true, handle, stats };
}

/** Reads a whole regular file of at most `maxBytes`. */
export async function readBounded(
  path: string,
  maxBytes: number,
): Promise<{ ok: true; bytes: Buffer } | { ok: false; problem: OpenProblem | 'too-large' }> {
  const opened = await openRegular(path);
  if (!opened.ok) return opened;
  try {
    if (opened.stats.size > maxBytes) return { ok: false, problem: 'too-large' };
    // Sized to the file plus one byte, grown (up to the bound plus one) if the file grew after fstat: zeroing the
    // whole bound on every read cost page faults on each snapshot lease.
    let buffer = Buffer.alloc(Math.min(opened.stats.size, maxBytes) + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await opened.handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buffer.length) {
        if (buffer.length > maxBytes) break;
        const grown = Buffer.alloc(Math.min(buffer.length * 2, maxBytes + 1));
        buffer.copy(grown, 0, 0, length);
        buffer = grown;
      }
    }
    if (length > maxBytes) return { ok: false, problem: 'too-large' };
    return { ok: true, bytes: buffer.subarray(0, length) };
  } finally {
    await opened.handle.close();
  }
}

/** Streams an open file through sha256 from offset 0; returns the digest and the number of bytes read. */
export async function hashHandle(
  handle: FileHandle,
  options: { signal?: AbortSignal; operation: string; onBytes?: (bytes: number) => void },
): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(HASH_CHUNK_BYTES);
  let position = 0;
  for (;;) {
    throwIfAborted(options.signal, options.operation);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
    options.onBytes?.(bytesRead);
  }
  return { sha256: hash.digest('hex'), size: position };
}

/** fsyncs a directory, so that entries created, renamed or removed in it survive a crash. */
export async function fsyncDir(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Creates `path` (refusing an existing one), writes `bytes`, sets `mode`, fsyncs unless `durable` is false. */
export async function writeNewFile(path: string, bytes: Uint8Array, mode = 0o644, durable = true): Promise<void> {
  const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    await handle.writeFile(bytes);
    await handle.chmod(mode);
    if (durable) await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Publishes a small file with complete contents in one step: written to a temporary name in `tempDir` (same
 * file system), fsynced, then `link`ed to `path` when `exclusive` (fails with EEXIST, never replaces) or
 * `rename`d. The parent of `path` is fsynced after, unless `durable` is false: for records that only live
 * processes read (a crash of the host ends every process they speak of), whose fsyncs cost milliseconds.
 * @returns false when `exclusive` and `path` exists.
 */
export async function publishFile(
  tempDir: string,
  path: string,
  bytes: Uint8Array,
  options: { exclusive: boolean; parent: string; durable?: boolean },
): Promise<boolean> {
  const durable = options.durable ?? true;
  const temp = join(tempDir, `.tmp-${randomToken()}`);
  await writeNewFile(temp, bytes, 0o644, durable);
  try {
    if (options.exclusive) {
      try {
        await link(temp, path);
      } catch (error) {
        if (errnoOf(error) === 'EEXIST') return false;
        throw error;
      }
    } else {
      await rename(temp, path);
    }
  } finally {
    await unlink(temp).catch(() => {});
  }
  if (durable) await fsyncDir(options.parent);
  return true;
}

/**
 * Removes `path` only if it still holds the record `isSame` recognises (`null`: the record is unreadable,
 * or not a regular file). The file is first renamed to a private name (atomic, so two removers cannot
 * both act on one file), then checked; a file that turned out to be a newer record is linked back (unless
 * yet another record took the path meanwhile, in which case the newer one wins).
 * @returns whether the record was removed.
 */
export async function removeIfSame(
  path: string,
  tempDir: string,
  isSame: (bytes: Buffer | null) => boolean,
  maxBytes = 64 * 1024,
): Promise<boolean> {
  const moved = join(tempDir, `.tmp-break-${randomToken()}`);
  try {
    await rename(path, moved);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return false;
    throw error;
  }
  const read = await readBounded(moved, maxBytes);
  if (isSame(read.ok ? read.bytes : null)) {
    await removeTree(moved);
    return true;
  }
  await link(moved, path).catch(() => {});
  await unlink(moved).catch(() => {});
  return false;
}

/** Removes a directory tree; a tree that is already gone is not an error. */
export async function removeTree(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}

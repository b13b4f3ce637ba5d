import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * A small on-disk cache for facts evolvm would otherwise recompute in every process, shared by one user's
 * processes: a QEMU binary's version (`qemu --version` is a ~70 ms process here), empty qcow2 templates
 * (`qemu-img create` ~35 ms) and the sha256 of each read-only map (a read of the whole file). Only a speed-up: a miss, an unreadable or refused entry, or a cache directory that
 * cannot be written all fall back to computing the value. Entries are written atomically (temporary file, then
 * rename) and keyed by everything the value depends on, files included by size, mtime and inode.
 * Where: `EVOLVM_CACHE_DIR`, else `$XDG_CACHE_HOME/evolvm`, else `~/.cache/evolvm`.
 */
export function fileCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.EVOLVM_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'evolvm');
}

/** What a cache key says about a file: its path, size, mtime and inode (a replaced or rebuilt file is a new key). */
export function fileIdentity(path: string): string {
  const stat = statSync(path);
  return `${path}\0${stat.size}\0${stat.mtimeMs}\0${stat.ino}`;
}

function entryPath(kind: string, key: string): string {
  return join(fileCacheDir(), `${kind}-${createHash('sha256').update(key).digest('hex').slice(0, 32)}`);
}

/**
 * The cached bytes for `key` if there are some that `valid` accepts, else `make()`'s, which are then stored.
 * @throws only what `make` throws.
 */
export function cachedSync(kind: string, key: string, valid: (bytes: Buffer) => boolean, make: () => Buffer): Buffer {
  const path = entryPath(kind, key);
  const hit = lookup(path, valid);
  if (hit) return hit;
  const bytes = make();
  store(path, bytes);
  return bytes;
}

/** {@link cachedSync} for a value that takes a while to make. */
export async function cached(kind: string, key: string, valid: (bytes: Buffer) => boolean, make: () => Promise<Buffer>): Promise<Buffer> {
  const path = entryPath(kind, key);
  const hit = lookup(path, valid);
  if (hit) return hit;
  const bytes = await make();
  store(path, bytes);
  return bytes;
}

/** The entry at `path` if there is one and `valid` accepts it. */
function lookup(path: string, valid: (bytes: Buffer) => boolean): Buffer | undefined {
  try {
    const bytes = readFileSync(path);
    return valid(bytes) ? bytes : undefined;
  } catch {
    return undefined;
  }
}

function store(path: string, bytes: Buffer): void {
  const temporary = `${path}.${randomUUID()}.tmp`;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(temporary, bytes, { mode: 0o600 });
    renameSync(temporary, path);
  } catch {
    // A cache that cannot be written only costs the next process the same work again.
    try {
      rmSync(temporary, { force: true });
    } catch {
      // nothing was written
    }
  }
}

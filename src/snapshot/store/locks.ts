import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { MAX_RECORD_BYTES, type StoreLayout } from './layout.js';
import { errnoOf, publishFile, randomToken, readBounded, removeIfSame } from './fs-io.js';
import { currentOwner, livenessOf, OwnerSchema, type Owner } from '../../util/owner.js';
import { SnapshotLockedError, type LockHolder } from './store-errors.js';

const LEASE_INFIX = '.lease-';
const DELETE_SUFFIX = '.delete';

/**
 * Leases and delete intents, as files in `.locks/`. A lease file says "process P uses snapshot X"; a delete
 * intent says "process P is deleting X". Each side publishes its own file first and then looks for the
 * other's, so a lease and a delete that race cannot both succeed (at worst both are refused). A record
 * whose process is dead (pid gone, or reused by a process with another start time) is ignored, and
 * removed by `gc`. Records are not fsynced: only live processes' records count, and a crash of the host
 * leaves none alive, so a record lost with it changes nothing (each fsync cost ~1-2 ms per warm start).
 */
export class LockTable {
  constructor(private readonly layout: StoreLayout) {}

  /** Publishes a lease file for `id`; returns its path. */
  async addLease(id: string): Promise<string> {
    const nonce = randomToken();
    const path = join(this.layout.locksDir, `${id}${LEASE_INFIX}${nonce}`);
    await publishFile(this.layout.tempDir, path, encode(currentOwner(nonce)), { exclusive: true, parent: this.layout.locksDir, durable: false });
    return path;
  }

  async removeLease(path: string): Promise<void> {
    await removeIfSame(path, this.layout.tempDir, () => true);
  }

  /** The live (or unverifiable) holders of leases on `id`. */
  async leaseHolders(id: string): Promise<LockHolder[]> {
    const holders: LockHolder[] = [];
    for (const file of await this.#files()) {
      if (!file.startsWith(`${id}${LEASE_INFIX}`)) continue;
      const owner = await this.#readOwner(file);
      if (owner && livenessOf(owner) !== 'dead') holders.push({ pid: owner.pid, host: owner.host });
    }
    return holders;
  }

  /** The live (or unverifiable) process deleting `id`, if any. */
  async deleter(id: string): Promise<LockHolder | null> {
    const owner = await this.#readOwner(`${id}${DELETE_SUFFIX}`);
    return owner && livenessOf(owner) !== 'dead' ? { pid: owner.pid, host: owner.host } : null;
  }

  /**
   * Publishes the delete intent for `id`, replacing a dead deleter's.
   * @returns the intent's nonce, for {@link endDelete}.
   * @throws {SnapshotLockedError} `deleting` when a live process is deleting `id`.
   */
  async beginDelete(id: string): Promise<string> {
    const nonce = randomToken();
    const path = join(this.layout.locksDir, `${id}${DELETE_SUFFIX}`);
    const bytes = encode(currentOwner(nonce));
    for (let round = 0; round < 5; round++) {
      if (await publishFile(this.layout.tempDir, path, bytes, { exclusive: true, parent: this.layout.locksDir, durable: false })) return nonce;
      const owner = await this.#readOwner(`${id}${DELETE_SUFFIX}`);
      if (owner && livenessOf(owner) !== 'dead') throw new SnapshotLockedError(id, 'delete', 'deleting', [{ pid: owner.pid, host: owner.host }]);
      await removeIfSame(path, this.layout.tempDir, (b) => (owner ? b !== null && decodeOwner(b)?.nonce === owner.nonce : decodeOwner(b) === null));
    }
    throw new SnapshotLockedError(id, 'delete', 'deleting', []);
  }

  async endDelete(id: string, nonce: string): Promise<void> {
    await removeIfSame(join(this.layout.locksDir, `${id}${DELETE_SUFFIX}`), this.layout.tempDir, (b) => decodeOwner(b)?.nonce === nonce);
  }

  /** Removes lease files and delete intents whose process is dead, and unreadable records. */
  async sweep(): Promise<string[]> {
    const removed: string[] = [];
    for (const file of await this.#files()) {
      if (!file.includes(LEASE_INFIX) && !file.endsWith(DELETE_SUFFIX)) continue;
      const owner = await this.#readOwner(file);
      if (owner && livenessOf(owner) !== 'dead') continue;
      const isSame = (b: Buffer | null): boolean => (owner ? decodeOwner(b)?.nonce === owner.nonce : decodeOwner(b) === null);
      if (await removeIfSame(join(this.layout.locksDir, file), this.layout.tempDir, isSame)) removed.push(join(this.layout.locksDir, file));
    }
    return removed;
  }

  async #files(): Promise<string[]> {
    try {
      return await readdir(this.layout.locksDir);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return [];
      throw error;
    }
  }

  async #readOwner(file: string): Promise<Owner | null> {
    const read = await readBounded(join(this.layout.locksDir, file), MAX_RECORD_BYTES);
    return read.ok ? decodeOwner(read.bytes) : null;
  }
}

function encode(owner: Owner): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(owner)}\n`);
}

export function decodeOwner(bytes: Buffer | null): Owner | null {
  if (!bytes) return null;
  try {
    const result = OwnerSchema.safeParse(JSON.parse(bytes.toString('utf8')));
    return result.success ? result.data : null;
  } catch {
    return null;
  }
}

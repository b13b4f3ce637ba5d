import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { STAGING_NAME_PATTERN, MAX_RECORD_BYTES, type StoreLayout } from './layout.js';
import { pathKind, publishFile, randomToken, readBounded, removeIfSame } from './fs-io.js';
import { SnapshotIdSchema, SnapshotNameSchema } from './manifest.js';
import { currentOwner, livenessOf, OwnerSchema } from '../../util/owner.js';
import { SnapshotExistsError } from './store-errors.js';

/**
 * The name → id index: `.names/<name>` holds `{ name, id, staging, owner }`. It doubles as the name's
 * claim: a writer publishes it with `link()` (which never replaces an existing file) BEFORE it writes
 * anything, so two writers cannot both own a name. An entry is in one of three states, decided from the
 * file system alone, so every crash leaves a state the next reader understands:
 *
 * - committed: `<id>/` exists (the writer's rename happened);
 * - in progress: the writer's staging directory still exists and its pid is alive (or on another host);
 * - stale: neither (the writer died, or a delete removed `<id>/` and died before removing the entry).
 *
 * A stale entry is removed by whoever meets it (a writer claiming the name, or `gc`), with
 * {@link removeIfSame} so that two removers never remove a newer claim.
 */
const NameEntrySchema = z.strictObject({
  name: SnapshotNameSchema,
  id: SnapshotIdSchema,
  /** The writer's staging directory (a name in the store root); null for an entry rebuilt by `gc`. */
  staging: z.string().regex(STAGING_NAME_PATTERN).nullable(),
  owner: OwnerSchema,
});
type NameEntry = z.output<typeof NameEntrySchema>;
export type NameState = 'committed' | 'in-progress' | 'stale';

export interface NameClaim {
  readonly name: string;
  readonly nonce: string;
}

export class NameIndex {
  constructor(private readonly layout: StoreLayout) {}

  /**
   * Claims `name` for a snapshot that will be committed as `id` from `staging`.
   * @throws {SnapshotExistsError} when the name is committed or claimed by a live writer.
   */
  async claim(name: string, id: string, staging: string): Promise<NameClaim> {
    const nonce = randomToken();
    const entry: NameEntry = { name, id, staging, owner: currentOwner(nonce) };
    const bytes = encode(entry);
    // A few rounds: each lost round means a stale entry was removed (by us or someone else) in between.
    for (let round = 0; round < 5; round++) {
      if (await publishFile(this.layout.tempDir, this.layout.name(name), bytes, { exclusive: true, parent: this.layout.namesDir })) {
        return { name, nonce };
      }
      const existing = await this.#read(name);
      if (existing === 'missing') continue;
      if (existing !== 'invalid') {
        const state = await this.stateOf(existing.entry);
        if (state === 'committed') throw new SnapshotExistsError(name, existing.entry.id);
        if (state === 'in-progress') throw new SnapshotExistsError(name, null);
      }
      await this.#removeRecord(name, existing === 'invalid' ? null : existing.raw);
    }
    throw new SnapshotExistsError(name, null);
  }

  /** Gives up a claim (a failed create) or the index entry of a deleted snapshot, if it is still ours. */
  async release(name: string, match: { nonce: string } | { id: string }): Promise<void> {
    await removeIfSame(this.layout.name(name), this.layout.tempDir, (bytes) => {
      const entry = bytes && decode(bytes);
      if (!entry) return false;
      return 'nonce' in match ? entry.owner.nonce === match.nonce : entry.id === match.id;
    });
  }

  /** The id a name resolves to, if its entry is committed. */
  async lookup(name: string): Promise<string | null> {
    const existing = await this.#read(name);
    if (existing === 'missing' || existing === 'invalid') return null;
    return (await this.stateOf(existing.entry)) === 'committed' ? existing.entry.id : null;
  }

  /**
   * The entry's state. The staging directory is checked BEFORE `<id>/`: the commit renames one into the
   * other, so checking in this order can never see neither for an entry whose commit is under way.
   */
  async stateOf(entry: NameEntry): Promise<NameState> {
    if (entry.staging !== null && (await pathKind(join(this.layout.root, entry.staging))).kind === 'directory') {
      return livenessOf(entry.owner) === 'dead' ? 'stale' : 'in-progress';
    }
    return (await pathKind(this.layout.snapshotDir(entry.id))).kind === 'directory' ? 'committed' : 'stale';
  }

  /**
   * Removes stale and unreadable entries and re-creates the entry of any committed snapshot that lacks one.
   * @returns the names removed and the names restored.
   */
  async repair(committed: ReadonlyArray<{ id: string; name: string }>): Promise<{ removed: string[]; restored: string[] }> {
    const removed: string[] = [];
    const restored: string[] = [];
    for (const name of await readdir(this.layout.namesDir)) {
      const existing = await this.#read(name);
      if (existing === 'missing') continue;
      if (existing !== 'invalid' && existing.entry.name === name && (await this.stateOf(existing.entry)) !== 'stale') continue;
      if (await this.#removeRecord(name, existing === 'invalid' ? null : existing.raw)) removed.push(name);
    }
    for (const { id, name } of committed) {
      const entry: NameEntry = { name, id, staging: null, owner: currentOwner(randomToken()) };
      if (await publishFile(this.layout.tempDir, this.layout.name(name), encode(entry), { exclusive: true, parent: this.layout.namesDir })) {
        restored.push(name);
      }
    }
    return { removed, restored };
  }

  async #read(name: string): Promise<'missing' | 'invalid' | { entry: NameEntry; raw: Buffer }> {
    const read = await readBounded(this.layout.name(name), MAX_RECORD_BYTES);
    if (!read.ok) return read.problem === 'missing' ? 'missing' : 'invalid';
    const entry = decode(read.bytes);
    return entry && entry.name === name ? { entry, raw: read.bytes } : 'invalid';
  }

  /** Removes the record at `name` if it still has the bytes `raw` (or, for null, is still unreadable). */
  async #removeRecord(name: string, raw: Buffer | null): Promise<boolean> {
    return removeIfSame(this.layout.name(name), this.layout.tempDir, (bytes) =>
      raw ? bytes !== null && bytes.equals(raw) : bytes === null || decode(bytes)?.name !== name,
    );
  }
}

function encode(entry: NameEntry): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(entry)}\n`);
}

function decode(bytes: Buffer): NameEntry | null {
  try {
    const result = NameEntrySchema.safeParse(JSON.parse(bytes.toString('utf8')));
    return result.success ? result.data : null;
  } catch {
    return null;
  }
}

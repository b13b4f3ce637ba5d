import { readdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';
import { SnapshotInUseByChildError, SnapshotLockedError, SnapshotNotFoundError } from '../../src/snapshot/store/store-errors.js';
import { killHard, rejectionOf, spawnChild, tempDir, writerOf } from './store-helpers.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let store: FsSnapshotStore;
beforeEach(async () => {
  dir = await tempDir('leases');
  store = await FsSnapshotStore.open(join(dir.path, 'store'));
});
afterEach(async () => {
  await dir.dispose();
});

async function lockFiles(): Promise<string[]> {
  return readdir(join(store.root, '.locks'));
}

async function locked(promise: Promise<unknown>): Promise<SnapshotLockedError> {
  const error = await rejectionOf(promise);
  expect(error).toBeInstanceOf(SnapshotLockedError);
  expect(error.code).toBe('SNAPSHOT_LOCKED');
  return error as unknown as SnapshotLockedError;
}

describe('leases and delete', () => {
  it('refuses delete while leased; after release, delete works and frees the name', async () => {
    const snap = await store.create('base', writerOf());
    const lease = await store.lease('base');
    expect(lease.snapshot.id).toBe(snap.id);
    expect(await locked(store.delete('base'))).toMatchObject({ reason: 'leased', holders: [{ pid: process.pid }] });
    await lease.release();
    await lease.release(); // idempotent
    expect(await lockFiles()).toEqual([]);
    await store.delete('base');
    await expect(store.get('base')).rejects.toBeInstanceOf(SnapshotNotFoundError);
    expect((await readdir(store.root)).filter((e) => !e.startsWith('.'))).toEqual([]);
    await store.create('base', writerOf());
  });

  it('counts leases in-process: one lock file, delete refused until the last release', async () => {
    await store.create('base', writerOf());
    const other = await FsSnapshotStore.open(store.root);
    const a = await store.lease('base');
    const b = await other.lease('base');
    expect(await lockFiles()).toHaveLength(1);
    await a.release();
    await locked(store.delete('base'));
    await b.release();
    expect(await lockFiles()).toEqual([]);
    await store.delete('base');
  });

  it('releases on `await using`', async () => {
    await store.create('base', writerOf());
    {
      await using lease = await store.lease('base');
      expect(lease.snapshot.name).toBe('base');
      await locked(store.delete('base'));
    }
    await store.delete('base');
  });

  it('sees a lease held by another process, and ignores it once that process is killed', async () => {
    const snap = await store.create('base', writerOf());
    const { child } = await spawnChild(['lease', store.root, 'base'], 'leased');
    try {
      expect(await locked(store.delete('base'))).toMatchObject({ reason: 'leased', holders: [{ pid: child.pid }] });
    } finally {
      await killHard(child);
    }
    expect(await lockFiles()).toHaveLength(1); // the dead process's lock file is still there...
    await store.delete(snap.id); // ...and ignored
    expect((await store.gc()).removed.map((r) => r.kind)).toEqual(['lock']);
    expect(await lockFiles()).toEqual([]);
  });

  it('ignores a lock whose pid was reused by a different process (start time differs)', async () => {
    const snap = await store.create('base', writerOf());
    const owner = { pid: process.pid, host: hostname(), startTicks: '1', nonce: 'n1', createdAt: new Date().toISOString() };
    await writeFile(join(store.root, '.locks', `${snap.id}.lease-n1`), JSON.stringify(owner));
    await store.delete('base');
  });

  it('treats a lock from another host as held (it cannot be checked)', async () => {
    const snap = await store.create('base', writerOf());
    const owner = { pid: 1, host: 'elsewhere.example', startTicks: null, nonce: 'n2', createdAt: new Date().toISOString() };
    await writeFile(join(store.root, '.locks', `${snap.id}.lease-n2`), JSON.stringify(owner));
    expect(await locked(store.delete('base'))).toMatchObject({ holders: [{ host: 'elsewhere.example' }] });
  });

  it('refuses to lease a snapshot a live process is deleting', async () => {
    const snap = await store.create('base', writerOf());
    const owner = { pid: process.pid, host: hostname(), startTicks: null, nonce: 'n3', createdAt: new Date().toISOString() };
    await writeFile(join(store.root, '.locks', `${snap.id}.delete`), JSON.stringify(owner));
    expect(await locked(store.lease('base'))).toMatchObject({ reason: 'deleting', operation: 'lease' });
    expect(await locked(store.delete('base'))).toMatchObject({ reason: 'deleting', operation: 'delete' });
    expect(await lockFiles()).toEqual([`${snap.id}.delete`]); // the refused lease removed its own file
  });

  it('refuses to delete a parent while a child exists; deleting the child first works', async () => {
    const parent = await store.create('parent', writerOf());
    const child = await store.create('child', writerOf('v', 'd', { parent: parent.id }));
    expect(child.manifest.parent).toBe(parent.id);
    const error = await rejectionOf(store.delete('parent'));
    expect(error).toBeInstanceOf(SnapshotInUseByChildError);
    expect(error.code).toBe('SNAPSHOT_IN_USE_BY_CHILD');
    expect((error as unknown as SnapshotInUseByChildError).children).toEqual([child.id]);
    await store.delete('child');
    await store.delete('parent');
    expect(await store.list()).toEqual([]);
  });

  it('never commits a child whose parent a concurrent delete removed (20 races)', async () => {
    const outcomes = new Set<string>();
    for (let round = 0; round < 20; round++) {
      const parent = await store.create(`parent-${round}`, writerOf());
      const delay = (round % 5) * 2;
      const [created, deleted] = await Promise.allSettled([
        store.create(`child-${round}`, writerOf(Buffer.alloc(256 * 1024), 'd', { parent: parent.id })),
        new Promise((resolve) => setTimeout(resolve, delay)).then(() => store.delete(parent.id)),
      ]);
      const parentExists = await store.get(parent.id).then(() => true, () => false);
      if (created.status === 'fulfilled') expect(parentExists).toBe(true);
      for (const result of [created, deleted]) {
        if (result.status === 'rejected') expect(String((result.reason as { code?: string }).code)).toMatch(/^SNAPSHOT_(LOCKED|IN_USE_BY_CHILD|NOT_FOUND)$/);
      }
      outcomes.add(`${created.status}/${deleted.status}`);
    }
    // Every child that exists still has its parent.
    const all = (await store.list()).flatMap((e) => (e.ok ? [e.snapshot] : []));
    const ids = new Set(all.map((s) => s.id));
    for (const s of all) if (s.manifest.parent !== null) expect(ids.has(s.manifest.parent)).toBe(true);
  });

  it('gc removes nothing that is leased or committed', async () => {
    await store.create('a', writerOf());
    const lease = await store.lease('a');
    expect((await store.gc()).removed).toEqual([]);
    await expect(store.verify('a')).resolves.toBeDefined();
    await lease.release();
  });
});

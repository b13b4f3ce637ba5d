import { mkdir, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';
import { SnapshotExistsError } from '../../src/snapshot/store/store-errors.js';
import { rejectionOf, tempDir, writerOf } from './store-helpers.js';

const DEAD_PID = 2 ** 22 + 1; // above every Linux pid_max, so never a live process

let dir: Awaited<ReturnType<typeof tempDir>>;
let root: string;
beforeEach(async () => {
  dir = await tempDir('recovery');
  root = join(dir.path, 'store');
  await FsSnapshotStore.open(root);
});
afterEach(async () => {
  await dir.dispose();
});

function owner(pid: number, host = hostname()) {
  return JSON.stringify({ pid, host, startTicks: null, nonce: `n${pid}`, createdAt: new Date().toISOString() });
}

async function staging(name: string, ownerJson: string | null, ageMs = 0): Promise<string> {
  const path = join(root, name);
  await mkdir(path);
  if (ownerJson !== null) await writeFile(join(path, '.owner'), ownerJson);
  await writeFile(join(path, 'vmstate'), 'partial');
  if (ageMs > 0) {
    const then = new Date(Date.now() - ageMs);
    await utimes(path, then, then);
  }
  return path;
}

async function rootEntries(): Promise<string[]> {
  return (await readdir(root)).filter((e) => !['.names', '.locks', '.tmp'].includes(e)).sort();
}

describe('recovery on open and gc', () => {
  it('removes the staging directory of a dead writer at once, and keeps a live writer\'s', async () => {
    await staging('.staging-dead', owner(DEAD_PID));
    await staging('.staging-live', owner(process.pid));
    await FsSnapshotStore.open(root);
    expect(await rootEntries()).toEqual(['.staging-live']);
  });

  it('keeps a staging directory it cannot check (no owner, or another host) until it is older than staleAfterMs', async () => {
    await staging('.staging-noowner', null);
    await staging('.staging-remote', owner(1, 'elsewhere.example'));
    await staging('.staging-oldremote', owner(1, 'elsewhere.example'), 3_600_000);
    await FsSnapshotStore.open(root, { staleAfterMs: 60_000 });
    expect(await rootEntries()).toEqual(['.staging-noowner', '.staging-remote']);
    const report = await (await FsSnapshotStore.open(root, { staleAfterMs: 0, recover: false })).gc();
    expect(report.removed.map((r) => r.kind)).toEqual(['staging', 'staging']);
    expect(await rootEntries()).toEqual([]);
  });

  it('removes leftover trash directories', async () => {
    await mkdir(join(root, '.trash-1234'));
    await writeFile(join(root, '.trash-1234', 'vmstate'), 'x', { mode: 0o444 });
    await FsSnapshotStore.open(root);
    expect(await rootEntries()).toEqual([]);
  });

  it('frees a name claimed by a writer that crashed before committing', async () => {
    const store = await FsSnapshotStore.open(root);
    await staging('.staging-crashed', owner(DEAD_PID));
    const claim = { name: 'wanted', id: 'abc', staging: '.staging-crashed', owner: JSON.parse(owner(DEAD_PID)) as unknown };
    await writeFile(join(root, '.names', 'wanted'), JSON.stringify(claim));
    // The crashed writer's staging directory is still there, but its pid is dead: the claim is stale.
    await store.create('wanted', writerOf());
    expect((await store.get('wanted')).name).toBe('wanted');
  });

  it('refuses a name claimed by a live writer that has not committed yet', async () => {
    const store = await FsSnapshotStore.open(root);
    await staging('.staging-busy', owner(process.pid));
    const claim = { name: 'busy', id: 'abc', staging: '.staging-busy', owner: JSON.parse(owner(process.pid)) as unknown };
    await writeFile(join(root, '.names', 'busy'), JSON.stringify(claim));
    const error = await rejectionOf(store.create('busy', writerOf()));
    expect(error).toBeInstanceOf(SnapshotExistsError);
    expect((error as unknown as SnapshotExistsError).existingId).toBeNull();
  });

  it("commits with the writer's owner record until the rename, and gc removes one a killed writer left in its snapshot", async () => {
    const store = await FsSnapshotStore.open(root);
    const done = await store.create('owned', writerOf());
    const snapshotDir = join(root, done.id);
    expect((await readdir(snapshotDir)).sort()).toEqual(['disk', 'manifest.json', 'vmstate']);
    // A writer killed between the commit and removing its record; a live one's record stays.
    await writeFile(join(snapshotDir, '.owner'), owner(DEAD_PID));
    const report = await store.gc();
    expect(report.removed).toEqual([{ kind: 'owner', path: join(snapshotDir, '.owner') }]);
    expect((await readdir(snapshotDir)).sort()).toEqual(['disk', 'manifest.json', 'vmstate']);
    await writeFile(join(snapshotDir, '.owner'), owner(process.pid));
    expect((await store.gc()).removed).toEqual([]);
    await expect(store.verify('owned')).resolves.toMatchObject({ name: 'owned' });
  });

  it('rebuilds a lost name index from the manifests, and drops entries that point nowhere', async () => {
    const store = await FsSnapshotStore.open(root);
    const a = await store.create('a', writerOf());
    await store.create('b', writerOf());
    await rm(join(root, '.names'), { recursive: true });
    await mkdir(join(root, '.names'));
    const dangling = { name: 'ghost', id: 'gone', staging: null, owner: JSON.parse(owner(process.pid)) as unknown };
    await writeFile(join(root, '.names', 'ghost'), JSON.stringify(dangling));
    const report = await store.gc();
    expect([...report.restoredNames].sort()).toEqual(['a', 'b']);
    expect(report.removed).toEqual([{ kind: 'name', path: join(root, '.names', 'ghost') }]);
    expect((await store.get('a')).id).toBe(a.id);
  });
});

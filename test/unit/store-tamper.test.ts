import { chmod, open, readFile, rename, rm, symlink, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsSnapshotStore, type SnapshotInfo } from '../../src/snapshot/store/snapshot-store.js';
import { SnapshotCorruptError, SnapshotIncompatibleError } from '../../src/snapshot/store/store-errors.js';
import { rejectionOf, tempDir, writerOf } from './store-helpers.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let store: FsSnapshotStore;
let snap: SnapshotInfo;
beforeEach(async () => {
  dir = await tempDir('tamper');
  store = await FsSnapshotStore.open(join(dir.path, 'store'));
  snap = await store.create('victim', writerOf(Buffer.alloc(2 * 1024 * 1024 + 3, 7), Buffer.alloc(64 * 1024, 9)));
});
afterEach(async () => {
  await dir.dispose();
});

/** Makes a committed file writable, lets `edit` change it, and makes it read-only again (as an attacker or a bad copy would). */
async function tamper(path: string, edit: (path: string) => Promise<void>): Promise<void> {
  await chmod(path, 0o644);
  await edit(path);
  await chmod(path, 0o444).catch(() => {});
}

async function corruption(promise: Promise<unknown>): Promise<SnapshotCorruptError> {
  const error = await rejectionOf(promise);
  expect(error).toBeInstanceOf(SnapshotCorruptError);
  expect(error.code).toBe('SNAPSHOT_CORRUPT');
  return error as unknown as SnapshotCorruptError;
}

describe('tampered snapshots', () => {
  it('a flipped byte in vmstate passes get (eager checks skip hashing) and fails verify (hash)', async () => {
    await tamper(snap.paths.vmstate, async (path) => {
      const handle = await open(path, 'r+');
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, 1_000_000);
      byte[0] = byte[0]! ^ 0xff;
      await handle.write(byte, 0, 1, 1_000_000);
      await handle.close();
    });
    // Documented decision: get/lease do not hash (a restore reads the vmstate anyway); verify does.
    await expect(store.get('victim')).resolves.toMatchObject({ id: snap.id });
    const error = await corruption(store.verify('victim'));
    expect(error).toMatchObject({ reason: 'hash', file: 'vmstate', expected: snap.manifest.files.vmstate.sha256 });
  });

  it('a different file of the same size passes get and fails verify', async () => {
    await tamper(snap.paths.disk, (path) => writeFile(path, Buffer.alloc(64 * 1024, 8)));
    await expect(store.get('victim')).resolves.toBeDefined();
    expect(await corruption(store.verify('victim'))).toMatchObject({ reason: 'hash', file: 'disk' });
  });

  it('a truncated file fails get (size)', async () => {
    await tamper(snap.paths.vmstate, (path) => truncate(path, 1024));
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'size', file: 'vmstate', expected: 2 * 1024 * 1024 + 3, actual: 1024 });
    expect(await corruption(store.verify('victim'))).toMatchObject({ reason: 'size' });
  });

  it('a file replaced by a symlink to an identical copy fails get (symlink), and is never followed', async () => {
    const copy = join(dir.path, 'copy');
    await writeFile(copy, await readFile(snap.paths.vmstate));
    await rm(snap.paths.vmstate, { force: true });
    await symlink(copy, snap.paths.vmstate);
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'symlink', file: 'vmstate' });
    expect(await corruption(store.verify('victim'))).toMatchObject({ reason: 'symlink' });
  });

  it('a symlinked manifest.json fails get (symlink)', async () => {
    const copy = join(dir.path, 'manifest-copy.json');
    await writeFile(copy, await readFile(join(snap.dir, 'manifest.json')));
    await rm(join(snap.dir, 'manifest.json'), { force: true });
    await symlink(copy, join(snap.dir, 'manifest.json'));
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'symlink', file: 'manifest.json' });
  });

  it('a snapshot directory replaced by a symlink fails get (symlink)', async () => {
    const moved = join(dir.path, 'moved');
    await rename(snap.dir, moved);
    await symlink(moved, snap.dir);
    expect(await corruption(store.get(snap.id))).toMatchObject({ reason: 'symlink', file: null });
  });

  it('a missing file, a directory in its place, or a writable file fail get with their own reasons', async () => {
    await unlink(snap.paths.disk);
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'missing', file: 'disk' });
    const { mkdir } = await import('node:fs/promises');
    await mkdir(snap.paths.disk);
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'not-regular', file: 'disk' });
    await rm(snap.paths.disk, { recursive: true });
    await writeFile(snap.paths.disk, Buffer.alloc(64 * 1024, 9), { mode: 0o644 });
    expect(await corruption(store.get('victim'))).toMatchObject({ reason: 'mode', file: 'disk' });
  });

  it('a manifest.json that is not JSON fails get (manifest-json) and shows as a failed row in list', async () => {
    await tamper(join(snap.dir, 'manifest.json'), (path) => writeFile(path, '{"formatVersion": 1, "id": '));
    expect(await corruption(store.get(snap.id))).toMatchObject({ reason: 'manifest-json', file: 'manifest.json' });
    const [row] = await store.list();
    expect(row).toMatchObject({ ok: false, id: snap.id });
    expect(!row!.ok && row!.error).toBeInstanceOf(SnapshotCorruptError);
  });

  it('a manifest with a bad field fails get, naming the field', async () => {
    await tamper(join(snap.dir, 'manifest.json'), async (path) => {
      const manifest = JSON.parse(await readFile(path, 'utf8')) as { memoryMiB: unknown };
      manifest.memoryMiB = 'lots';
      await writeFile(path, JSON.stringify(manifest));
    });
    const error = await corruption(store.get(snap.id));
    expect(error).toMatchObject({ reason: 'manifest-schema', field: 'memoryMiB' });
    expect(error.message).toContain('memoryMiB');
  });

  it('a manifest that edits a file size fails get (size), and one that edits a hash fails verify (hash)', async () => {
    const path = join(snap.dir, 'manifest.json');
    const original = await readFile(path, 'utf8');
    await tamper(path, (p) => writeFile(p, original.replace(`"size": ${snap.manifest.files.disk.size}`, '"size": 1')));
    expect(await corruption(store.get(snap.id))).toMatchObject({ reason: 'size', file: 'disk' });
    await tamper(path, (p) => writeFile(p, original.replace(snap.manifest.files.disk.sha256, '0'.repeat(64))));
    await expect(store.get(snap.id)).resolves.toBeDefined();
    expect(await corruption(store.verify(snap.id))).toMatchObject({ reason: 'hash', file: 'disk' });
  });

  it('a manifest whose id is another directory name fails get (id-mismatch)', async () => {
    const other = await store.create('other', writerOf());
    await rm(other.dir, { recursive: true, force: true });
    await rename(snap.dir, other.dir);
    expect(await corruption(store.get(other.id))).toMatchObject({ reason: 'id-mismatch' });
  });

  it('an oversized manifest fails get without being read whole (manifest-too-large)', async () => {
    await tamper(join(snap.dir, 'manifest.json'), (path) => writeFile(path, Buffer.alloc(1024 * 1024 + 1, 0x20)));
    expect(await corruption(store.get(snap.id))).toMatchObject({ reason: 'manifest-too-large' });
  });

  it('a manifest from a newer format version is SNAPSHOT_INCOMPATIBLE', async () => {
    await tamper(join(snap.dir, 'manifest.json'), async (path) => {
      const manifest = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
      await writeFile(path, JSON.stringify({ ...manifest, formatVersion: 2 }));
    });
    const error = await rejectionOf(store.get(snap.id));
    expect(error).toBeInstanceOf(SnapshotIncompatibleError);
    expect(error.code).toBe('SNAPSHOT_INCOMPATIBLE');
  });

  it('a corrupt snapshot can still be deleted', async () => {
    await tamper(join(snap.dir, 'manifest.json'), (path) => writeFile(path, 'garbage'));
    await store.delete(snap.id);
    expect(await store.list()).toEqual([]);
    // Its name could not be read from the manifest, so its index entry is left stale; the name is still free.
    await store.create('victim', writerOf());
  });
});

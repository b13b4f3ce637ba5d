import { lstat, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigInvalidError } from '../../src/errors.js';
import { parseManifestBytes } from '../../src/snapshot/store/manifest.js';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';
import { SnapshotCorruptError, SnapshotExistsError, SnapshotNotFoundError } from '../../src/snapshot/store/store-errors.js';
import { draft, rejectionOf, tempDir, writerOf } from './store-helpers.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let store: FsSnapshotStore;
beforeEach(async () => {
  dir = await tempDir('basic');
  store = await FsSnapshotStore.open(join(dir.path, 'store'));
});
afterEach(async () => {
  await dir.dispose();
});

/** Entries of the store root that are not snapshots or the store's own folders. */
async function leftovers(): Promise<string[]> {
  return (await readdir(store.root)).filter((e) => e.startsWith('.staging-') || e.startsWith('.trash-'));
}

describe('FsSnapshotStore create / list / get / verify', () => {
  it('round-trips a snapshot: the manifest on disk is what create returned, and verify passes', async () => {
    const vmstate = Buffer.alloc(3 * 1024 * 1024 + 7, 1);
    const created = await store.create('base', writerOf(vmstate, 'disk'));
    expect(created.name).toBe('base');
    expect(created.manifest).toMatchObject({ formatVersion: 1, id: created.id, name: 'base', ...draft() });
    expect(created.manifest.files.vmstate).toEqual({
      path: 'vmstate',
      size: vmstate.length,
      sha256: (await import('node:crypto')).createHash('sha256').update(vmstate).digest('hex'),
    });
    expect(parseManifestBytes(await readFile(join(created.dir, 'manifest.json')))).toEqual(created.manifest);
    expect(await store.get('base')).toEqual(created);
    expect(await store.get(created.id)).toEqual(created);
    expect((await store.list()).map((e) => e.ok && e.snapshot.id)).toEqual([created.id]);

    const progress: number[] = [];
    await store.verify('base', { onProgress: (p) => progress.push(p.bytesDone) });
    expect(progress.at(-1)).toBe(created.sizeBytes);
    expect(progress.length).toBeGreaterThanOrEqual(4); // streamed in 1 MiB chunks
    // Buffer.equals: toEqual walks a multi-MiB buffer element by element.
    expect((await readFile(store.pathOf(created.id, 'vmstate'))).equals(vmstate)).toBe(true);
    expect(await leftovers()).toEqual([]);
  });

  it('leaves exactly manifest.json, vmstate and disk, all read-only, in the committed directory', async () => {
    const created = await store.create('ro', writerOf());
    expect((await readdir(created.dir)).sort()).toEqual(['disk', 'manifest.json', 'vmstate']);
    for (const file of ['disk', 'manifest.json', 'vmstate']) {
      expect((await lstat(join(created.dir, file))).mode & 0o777).toBe(0o444);
    }
  });

  it('never overwrites a name: a second create with it fails before the writer runs', async () => {
    const first = await store.create('same', writerOf('first'));
    let ran = false;
    const error = await rejectionOf(
      store.create('same', async (...args) => {
        ran = true;
        return writerOf('second')(...args);
      }),
    );
    expect(error).toBeInstanceOf(SnapshotExistsError);
    expect(error.code).toBe('SNAPSHOT_EXISTS');
    expect((error as unknown as SnapshotExistsError).existingId).toBe(first.id);
    expect(ran).toBe(false);
    expect(await readFile(store.pathOf(first.id, 'vmstate'), 'utf8')).toBe('first');
    expect(await leftovers()).toEqual([]);
  });

  it('lets only one of two concurrent creates of one name win', async () => {
    const results = await Promise.allSettled([store.create('race', writerOf('a')), store.create('race', writerOf('b'))]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const failure = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(failure.reason).toBeInstanceOf(SnapshotExistsError);
    expect(await store.list()).toHaveLength(1);
  });

  it('refuses a bad name as a ConfigInvalidError naming `name`', async () => {
    for (const name of ['', '..', 'a/b', 'x'.repeat(129), 'sp ace']) {
      const error = await rejectionOf(store.create(name, writerOf()));
      expect(error).toBeInstanceOf(ConfigInvalidError);
      expect((error as unknown as ConfigInvalidError).issues[0]!.path).toBe('name');
    }
  });

  it('refuses a bad draft naming the field, and removes the staging directory and the name claim', async () => {
    const error = await rejectionOf(store.create('bad-draft', writerOf('v', 'd', { memoryMiB: -1 })));
    expect(error).toBeInstanceOf(ConfigInvalidError);
    expect((error as unknown as ConfigInvalidError).issues.map((i) => i.path)).toEqual(['memoryMiB']);
    expect(await leftovers()).toEqual([]);
    await store.create('bad-draft', writerOf()); // the name is free again
  });

  it('cleans up when the writer throws, and rethrows its error unchanged', async () => {
    const boom = new Error('migrate failed');
    const error = await rejectionOf(
      store.create('w', async (_dir, { vmstatePath }) => {
        await writeFile(vmstatePath, 'partial');
        throw boom;
      }),
    );
    expect(error).toBe(boom);
    expect(await leftovers()).toEqual([]);
    expect(await store.list()).toEqual([]);
    await store.create('w', writerOf());
  });

  it('refuses a writer that leaves a file missing, a symlink, or an unknown file', async () => {
    const { symlink } = await import('node:fs/promises');
    const outside = join(dir.path, 'outside');
    await writeFile(outside, 'x');
    const cases: Array<[string, Parameters<typeof store.create>[1], string]> = [
      ['missing', async (_d, { vmstatePath }) => (await writeFile(vmstatePath, 'v'), draft()), 'missing'],
      ['link', async (_d, { vmstatePath, diskPath }) => (await writeFile(vmstatePath, 'v'), await symlink(outside, diskPath), draft()), 'symlink'],
      ['extra', async (d, ctx) => (await writerOf()(d, ctx), await writeFile(join(d, 'qemu.log'), ''), draft()), 'unexpected-file'],
    ];
    for (const [name, writer, reason] of cases) {
      const error = await rejectionOf(store.create(name, writer));
      expect(error).toBeInstanceOf(SnapshotCorruptError);
      expect((error as unknown as SnapshotCorruptError).reason).toBe(reason);
    }
    expect(await leftovers()).toEqual([]);
    expect(await store.list()).toEqual([]);
  });

  it('refuses a draft whose parent does not exist', async () => {
    const error = await rejectionOf(store.create('orphan', writerOf('v', 'd', { parent: 'no-such-id' })));
    expect(error).toBeInstanceOf(SnapshotNotFoundError);
    expect(await leftovers()).toEqual([]);
  });

  it('stops at an aborted signal and leaves nothing behind', async () => {
    const controller = new AbortController();
    const error = await rejectionOf(
      store.create('aborted', async (d, ctx) => {
        const result = await writerOf()(d, ctx);
        controller.abort();
        return result;
      }, { signal: controller.signal }),
    );
    expect(error.code).toBe('ABORTED');
    expect(await leftovers()).toEqual([]);
    expect(await store.list()).toEqual([]);
  });

  it('throws SNAPSHOT_NOT_FOUND for an unknown id or name', async () => {
    for (const ref of ['nope', '0f8fad5b-d9cb-469f-a165-70867728950e', '../etc']) {
      const error = await rejectionOf(store.get(ref));
      expect(error).toBeInstanceOf(SnapshotNotFoundError);
      expect(error.code).toBe('SNAPSHOT_NOT_FOUND');
    }
  });

  it('lists snapshots oldest first and reopens an existing store with the same contents', async () => {
    const a = await store.create('a', writerOf());
    const b = await store.create('b', writerOf());
    const reopened = await FsSnapshotStore.open(store.root);
    expect((await reopened.list()).map((e) => e.id)).toEqual([a.id, b.id]);
  });
});

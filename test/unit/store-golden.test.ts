import { chmod, cp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { parseManifestBytes, serializeManifest } from '../../src/snapshot/store/manifest.js';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';
import { tempDir } from './store-helpers.js';

const GOLDEN_V1 = fileURLToPath(new URL('../fixtures/golden/v1/', import.meta.url));
const GOLDEN_ID = '0f8fad5b-d9cb-469f-a165-70867728950e';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const dispose of cleanups.splice(0)) await dispose();
});

describe('golden format v1 snapshot', () => {
  it('parses with the current schema, field for field', async () => {
    const manifest = parseManifestBytes(await readFile(join(GOLDEN_V1, 'manifest.json')), 'golden-v1');
    expect(manifest).toMatchObject({
      formatVersion: 1,
      id: GOLDEN_ID,
      name: 'golden-v1',
      parent: null,
      memoryMiB: 128,
      stage: { name: 'UserCodeLoaded' },
      files: { vmstate: { path: 'vmstate', size: 33 }, disk: { path: 'disk', size: 36 } },
    });
    expect(manifest.stage.lineage.map((l) => l.transition)).toEqual([null, 'loadRuntime', 'loadCode']);
    expect(manifest.hostFunctions[0]).toMatchObject({ name: 'log', wasm: null });
  });

  it('round-trips through serializeManifest without losing a field', async () => {
    const bytes = await readFile(join(GOLDEN_V1, 'manifest.json'));
    const manifest = parseManifestBytes(bytes, 'golden-v1');
    expect(JSON.parse(new TextDecoder().decode(serializeManifest(manifest)))).toEqual(JSON.parse(bytes.toString('utf8')));
  });

  it('loads and verifies when placed in a store as its directory', async () => {
    const dir = await tempDir('golden');
    cleanups.push(dir.dispose);
    const store = await FsSnapshotStore.open(dir.path);
    const target = join(store.root, GOLDEN_ID);
    await cp(GOLDEN_V1, target, { recursive: true });
    for (const file of ['manifest.json', 'vmstate', 'disk']) await chmod(join(target, file), 0o444);
    // The name index is derived state: gc rebuilds the entry of a snapshot that arrived by copy.
    expect((await store.gc()).restoredNames).toEqual(['golden-v1']);
    const info = await store.verify('golden-v1');
    expect(info.id).toBe(GOLDEN_ID);
    expect(await readFile(store.pathOf(GOLDEN_ID, 'vmstate'), 'utf8')).toBe('evolvm golden vmstate, format v1\n');
  });
});

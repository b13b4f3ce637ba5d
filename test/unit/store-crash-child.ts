/**
 * A child process for the store's crash and lease tests (run with `node --import tsx`):
 *
 * - `loop ROOT`: prints `ready` (so the kill can land inside `open`'s own recovery too), opens the store
 *   and, forever, creates snapshots with multi-MiB files (some layered on the previous one), leases and
 *   releases one, and deletes old ones. The test SIGKILLs it at a random moment.
 * - `lease ROOT REF`: leases REF, prints `leased`, and waits to be killed.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';

const [mode, root, ref] = process.argv.slice(2);
if (!root) throw new Error('usage: store-crash-child.ts loop|lease ROOT [REF]');
if (mode === 'loop') process.stdout.write('ready\n');
const store = await FsSnapshotStore.open(root);

if (mode === 'lease') {
  await store.lease(ref!);
  process.stdout.write('leased\n');
  setInterval(() => {}, 1 << 30);
} else {
  let previous: string | null = null;
  for (let n = 0; ; n++) {
    const vmstate = randomBytes(randomInt(1, 5) * 1024 * 1024);
    const disk = randomBytes(randomInt(1, 3) * 1024 * 1024);
    const parent: string | null = n % 3 === 0 ? null : previous;
    const info = await store.create(`s-${process.pid}-${n}`, async (_dir, { vmstatePath, diskPath }) => {
      await writeFile(vmstatePath, vmstate);
      await writeFile(diskPath, disk);
      return {
        stage: { name: 'Loop', lineage: [{ stage: 'Loop', transition: null, args: { n } }] },
        parent,
        qemu: { version: 'test', machine: 'q35' },
        guest: { imageHash: 'test' },
        memoryMiB: 128,
        hostFunctions: [],
      };
    });
    previous = info.id;
    process.stdout.write(`created ${info.id}\n`);
    const lease = await store.lease(info.name);
    await lease.release();
    // Keep the store small: delete the oldest snapshots no other snapshot backs onto.
    const all = (await store.list()).flatMap((e) => (e.ok ? [e.snapshot] : []));
    for (const old of all.slice(0, Math.max(0, all.length - 3))) {
      await store.delete(old.id).catch((error: { code?: string }) => {
        if (error.code !== 'SNAPSHOT_IN_USE_BY_CHILD') throw error;
      });
    }
  }
}

import { createHash } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  AbortedError,
  ConfigInvalidError,
  defineHostFunction,
  FsSnapshotStore,
  OperationNotAllowedError,
  SnapshotLockedError,
  HostFunctionsMismatchError,
  KernelBooted,
  loadCode,
  loadRuntime,
  RuntimeLoaded,
  Sandbox,
  sandboxOf,
  SnapshotMismatchError,
  UserCodeLoaded,
  type Stage,
} from '../../src/index.js';
import { parseRestoreConfig } from '../../src/qemu/config.js';
import { expectNoLeaks, qemuProcessesUnder, testRunDir } from '../helpers/leaks.js';
import { markStage as markStageAt, stageMarkers } from '../helpers/stage-markers.js';

const runDir = testRunDir('persist');
const storeDir = mkdtempSync(join(tmpdir(), 'evolvm-test-store-'));
let store: FsSnapshotStore;
const echo = defineHostFunction({ name: 'echo', params: z.tuple([z.number()]), result: z.number(), impl: (x) => x });

/** Template: booted → runtime → code, each persisted, with markers in RAM (tmpfs) and on the disk. */
beforeAll(async () => {
  store = await FsSnapshotStore.open(storeDir);
  const booted = await KernelBooted.boot({ runDir }, { hostFunctions: [echo] });
  try {
    await markStage(booted, 'booted');
    await booted.persist(store, 'booted');
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    await markStage(runtime, 'runtime');
    await runtime.persist(store, 'runtime');
    const code = await runtime.evolve(loadCode('hello() { echo "hello $1"; }'));
    await markStage(code, 'code');
    await code.persist(store, 'code');
  } finally {
    await booted.close();
  }
}, 180_000);

afterAll(async () => {
  await expectNoLeaks(runDir);
  // No lease may outlive the sandboxes that held it.
  expect(readdirSync(join(storeDir, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
  rmSync(storeDir, { recursive: true, force: true });
});

/** The stages' markers, each on its own disk sector. */
function markStage(stage: Stage, name: string): Promise<void> {
  return markStageAt(stage, name, ['booted', 'runtime', 'code'].indexOf(name));
}

/** A copy of snapshot `ref` in a store of its own, whose manifest says it was made by QEMU 1.0.0. */
async function copyClaimingOldQemu(ref: string): Promise<{ store: FsSnapshotStore; id: string }> {
  return copyWithManifest<{ qemu: { version: string } }>(ref, (draft) => ({ ...draft, qemu: { ...draft.qemu, version: '1.0.0' } }));
}

/** A copy of `ref` in a store of its own, committed with a manifest `change` rewrote. */
async function copyWithManifest<D extends object>(ref: string, change: (draft: D) => D): Promise<{ store: FsSnapshotStore; id: string }> {
  const info = await store.get(ref);
  const copyStore = await FsSnapshotStore.open(mkdtempSync(join(tmpdir(), 'evolvm-test-store-copy-')));
  const copy = await copyStore.create(`${ref}-copy`, async (_dir, ctx) => {
    writeFileSync(ctx.vmstatePath, readFileSync(info.paths.vmstate));
    writeFileSync(ctx.diskPath, readFileSync(info.paths.disk));
    const { id: _id, name: _name, createdAt: _c, files: _f, formatVersion: _v, ...draft } = info.manifest;
    return change({ ...draft, parent: null } as unknown as D) as never;
  });
  return { store: copyStore, id: copy.id };
}

function fileDigests(id: string): Record<string, string> {
  const dir = join(storeDir, id);
  return Object.fromEntries(readdirSync(dir).map((f) => [f, createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')]));
}

describe('persisted stages restore in a new QEMU process with identical state', () => {
  it('KernelBooted', async () => {
    const booted = await KernelBooted.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo] });
    try {
      expect(booted).toBeInstanceOf(KernelBooted);
      expect(await stageMarkers(booted)).toEqual({ ram: ['in-ram-booted'], disk: ['disk-booted'] });
    } finally {
      await booted.close();
    }
  });

  it('RuntimeLoaded, with its runtime process and lineage', async () => {
    const runtime = await RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir }, { hostFunctions: [echo] });
    try {
      expect(runtime.lineage).toEqual(['KernelBooted', 'RuntimeLoaded']);
      expect(runtime.runtime.kind).toBe('shell');
      expect((await runtime.exec(['kill', '-0', String(runtime.runtime.pid)])).exitCode).toBe(0);
      expect(await stageMarkers(runtime)).toEqual({ ram: ['in-ram-booted', 'in-ram-runtime'], disk: ['disk-booted', 'disk-runtime'] });
    } finally {
      await runtime.close();
    }
  });

  it('UserCodeLoaded, callable and able to evolve further', async () => {
    const code = await UserCodeLoaded.fromSnapshot(store, 'code', { runDir }, { hostFunctions: [echo] });
    try {
      expect(await code.call('hello', 'again')).toBe('hello again\n');
      expect(await stageMarkers(code)).toEqual({ ram: ['in-ram-booted', 'in-ram-code', 'in-ram-runtime'], disk: ['disk-booted', 'disk-runtime', 'disk-code'] });
      // Guest time is the host's, not the snapshot's.
      expect(Math.abs(Number((await code.exec(['date', '+%s'])).stdout) - Date.now() / 1000)).toBeLessThan(5);
    } finally {
      await code.close();
    }
  });

  it('refuses a snapshot of another stage with a typed error', async () => {
    const error = await RuntimeLoaded.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SnapshotMismatchError);
    expect(error).toMatchObject({ what: 'stage', expected: 'KernelBooted', actual: 'RuntimeLoaded' });
  });

  it('refuses to restore without the host functions the stage was built with', async () => {
    const error = await KernelBooted.fromSnapshot(store, 'booted', { runDir }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HostFunctionsMismatchError);
    expect(error).toMatchObject({ missing: ['echo'] });
  });

  it('refuses a snapshot made with another guest image', async () => {
    const guest = join(process.cwd(), 'guest', 'out', 'x86_64');
    const error = await KernelBooted.fromSnapshot(
      store,
      'booted',
      { runDir, kernel: join(guest, 'vmlinux'), initrd: join(guest, 'initramfs.cpio') },
      { hostFunctions: [echo] },
    ).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'SNAPSHOT_MISMATCH', what: 'guest' });
  });
});

describe('machine shape', () => {
  it('restores a SeaBIOS snapshot with the firmware it recorded, whatever the restore config says', async () => {
    const seabios = await KernelBooted.boot({ runDir, firmware: 'seabios' });
    try {
      await seabios.writeFile('/tmp/seabios-marker', 'from seabios');
      await seabios.persist(store, 'seabios');
    } finally {
      await seabios.close();
    }
    const restored = await KernelBooted.fromSnapshot(store, 'seabios', { runDir });
    try {
      expect((await restored.readFile('/tmp/seabios-marker')).toString()).toBe('from seabios');
      expect(sandboxOf(restored).machine.config.firmware).toBe('seabios');
    } finally {
      await restored.close();
    }
    await store.delete('seabios');
  }, 120_000);
});

describe('layers', () => {
  it('stores each child stage as a disk layer over its parent, and protects the parent', async () => {
    const booted = await store.get('booted');
    const runtime = await store.get('runtime');
    const code = await store.get('code');
    expect(booted.manifest.parent).toBeNull();
    expect(runtime.manifest.parent).toBe(booted.id);
    expect(code.manifest.parent).toBe(runtime.id);
    await expect(store.delete('booted')).rejects.toMatchObject({ code: 'SNAPSHOT_IN_USE_BY_CHILD' });
  });

  it('keeps a booted stage on disk well under its RAM size', async () => {
    const { statSync } = await import('node:fs');
    const info = await store.get('booted');
    const onDisk = Object.values(info.paths).reduce((sum, path) => sum + statSync(path).blocks * 512, 0);
    expect(onDisk / (info.manifest.memoryMiB * 1024 * 1024)).toBeLessThan(0.6);
  });
});

describe('layering on a warm-started sandbox', () => {
  it("refuses to persist a copy-on-write restore, and with ram: 'copy' persists the next stage as a layer over the snapshot", async () => {
    const cow = await RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir }, { hostFunctions: [echo] });
    try {
      await expect(cow.persist(store, 'never')).rejects.toMatchObject({ code: 'OPERATION_NOT_ALLOWED' });
    } finally {
      await cow.close();
    }
    await expect(RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir }, { hostFunctions: [echo], ram: 'fast' as never })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
    });

    const runtime = await RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir }, { hostFunctions: [echo], ram: 'copy' });
    let layered: string;
    try {
      expect(sandboxOf(runtime).machine.ramShared).toBe(true);
      const code = await runtime.evolve(loadCode('layer() { echo "layer $1"; }'));
      await code.writeFile('/tmp/in-ram-layer', 'layer');
      // In-VM snapshots work as on a booted sandbox: back to the restored stage and forward again.
      const back = await code.devolve();
      expect((await stageMarkers(back)).ram).toEqual(['in-ram-booted', 'in-ram-runtime']);
      const again = await back.evolve(loadCode('layer() { echo "layer $1"; }'));
      await markStage(again, 'code');
      const info = await again.persist(store, 'layered-code');
      layered = info.id;
      expect(info.manifest.parent).toBe((await store.get('runtime')).id);
    } finally {
      await runtime.close();
    }
    const restored = await UserCodeLoaded.fromSnapshot(store, layered, { runDir }, { hostFunctions: [echo] });
    try {
      expect(await restored.call('layer', 'two')).toBe('layer two\n');
      expect(await stageMarkers(restored)).toEqual({ ram: ['in-ram-booted', 'in-ram-code', 'in-ram-runtime'], disk: ['disk-booted', 'disk-runtime', 'disk-code'] });
    } finally {
      await restored.close();
    }
    await store.delete(layered);
  });
});

describe('forks from a template', () => {
  it('starts 8 clones, each with its own identity and RNG, isolated from each other and from the template', async () => {
    const before = fileDigests((await store.get('runtime')).id);
    const clones = await RuntimeLoaded.fork(store, 'runtime', 8, { runDir }, { hostFunctions: [echo] });
    try {
      expect(new Set(clones.map((c) => c.sandboxId)).size).toBe(8);
      const ids = await Promise.all(clones.map(async (c) => (await c.readFile('/run/evolvm/sandbox-id')).toString().trim()));
      expect(ids).toEqual(clones.map((c) => c.sandboxId));
      const random = await Promise.all(clones.map(async (c) => (await c.exec(['sh', '-c', 'head -c 16 /dev/urandom | od -An -tx1'])).stdout));
      expect(new Set(random).size).toBe(8);
      await clones[0]!.writeFile('/tmp/only-in-clone-0', 'x');
      await clones[0]!.exec(['sh', '-c', 'echo clone-0 | dd of=/dev/vda bs=512 seek=5 count=1 conv=notrunc 2>/dev/null']);
      for (const clone of clones.slice(1)) {
        expect((await clone.exec(['test', '-e', '/tmp/only-in-clone-0'])).exitCode).toBe(1);
        expect((await clone.exec(['sh', '-c', "dd if=/dev/vda bs=512 skip=5 count=1 2>/dev/null | tr -d '\\000' | head -n 1"])).stdout.trim()).toBe('');
      }
    } finally {
      await Promise.all(clones.map((c) => c.close()));
    }
    expect(fileDigests((await store.get('runtime')).id)).toEqual(before);
    await expect(store.verify('runtime')).resolves.toMatchObject({ name: 'runtime' });
  }, 180_000);

  // A restore takes 200+ ms here: 5 ms in it is reading the snapshot, 60 ms in QEMU is starting.
  it.each([5, 60])('stops a restore aborted %i ms in: typed error, no QEMU left, the snapshot not leased', async (ms) => {
    const before = qemuProcessesUnder(runDir).length;
    const restore = RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir }, { hostFunctions: [echo], signal: AbortSignal.timeout(ms) });
    await expect(restore).rejects.toBeInstanceOf(AbortedError);
    expect(qemuProcessesUnder(runDir)).toHaveLength(before);
    expect(readdirSync(join(storeDir, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
  });
});

describe('a warm pool', () => {
  it('keeps sandboxes ready, starts each with its own identity, and replaces the ones taken', async () => {
    const before = qemuProcessesUnder(runDir).length;
    const pool = await UserCodeLoaded.pool(store, 'code', 2, { runDir }, { hostFunctions: [echo] });
    const taken: UserCodeLoaded[] = [];
    try {
      for (let i = 0; i < 100 && pool.ready < 2; i++) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(pool.ready).toBe(2);
      // Restored and idle, waiting for an identity: two more QEMUs than before.
      expect(qemuProcessesUnder(runDir)).toHaveLength(before + 2);
      for (let i = 0; i < 3; i++) taken.push(await pool.take());
      expect(new Set(taken.map((s) => s.sandboxId)).size).toBe(3);
      for (const sandbox of taken) {
        expect(sandbox).toBeInstanceOf(UserCodeLoaded);
        expect((await sandbox.readFile('/run/evolvm/sandbox-id')).toString().trim()).toBe(sandbox.sandboxId);
        expect(await sandbox.call('hello', 'pool')).toBe('hello pool\n');
      }
      const random = await Promise.all(taken.map(async (s) => (await s.exec(['sh', '-c', 'head -c 16 /dev/urandom | od -An -tx1'])).stdout));
      expect(new Set(random).size).toBe(3);
      // The snapshot is leased while the pool holds ready sandboxes.
      await expect(store.delete('code')).rejects.toBeInstanceOf(SnapshotLockedError);
    } finally {
      await Promise.all(taken.map((s) => s.close()));
      await pool.close();
    }
    expect(qemuProcessesUnder(runDir)).toHaveLength(before);
    await expect(pool.take()).rejects.toBeInstanceOf(OperationNotAllowedError);
    expect(readdirSync(join(storeDir, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
  }, 120_000);

  it('drops a ready sandbox whose QEMU died while waiting, and starts another', async () => {
    const before = new Set(qemuProcessesUnder(runDir));
    const pool = await KernelBooted.pool(store, 'booted', 1, { runDir }, { hostFunctions: [echo] });
    try {
      const waiting = qemuProcessesUnder(runDir).filter((line) => !before.has(line));
      expect(waiting).toHaveLength(1);
      process.kill(Number(waiting[0]!.split(' ')[0]), 'SIGKILL');
      for (let i = 0; i < 50 && qemuProcessesUnder(runDir).length > before.size; i++) await new Promise((resolve) => setTimeout(resolve, 20));
      const sandbox = await pool.take();
      try {
        expect((await sandbox.exec(['true'])).exitCode).toBe(0);
      } finally {
        await sandbox.close();
      }
    } finally {
      await pool.close();
    }
    expect(qemuProcessesUnder(runDir)).toHaveLength(before.size);
  }, 60_000);

  it('builds on prepared restores, which start once or are discarded without leaving anything', async () => {
    const before = qemuProcessesUnder(runDir).length;
    const prepared = await Sandbox.prepareRestore(KernelBooted, store, 'booted', parseRestoreConfig({ runDir }), { hostFunctions: [echo] });
    expect(qemuProcessesUnder(runDir)).toHaveLength(before + 1);
    await prepared.machine.discard();
    await prepared.lease.release();
    await expect(prepared.machine.start()).rejects.toBeInstanceOf(OperationNotAllowedError);
    expect(qemuProcessesUnder(runDir)).toHaveLength(before);
  });

  it('refuses a size out of range and a cold-boot fallback, starting nothing', async () => {
    for (const size of [0, 1.5, 65]) {
      await expect(KernelBooted.pool(store, 'booted', size, { runDir })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'size' }] });
    }
    await expect(KernelBooted.pool(store, 'booted', 1, { runDir }, { fallback: 'cold-boot' })).rejects.toBeInstanceOf(ConfigInvalidError);
    await expect(RuntimeLoaded.pool(store, 'booted', 1, { runDir })).rejects.toBeInstanceOf(SnapshotMismatchError);
    expect(readdirSync(join(storeDir, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
  });
});

describe('RNG of clones', () => {
  // Entropy added to a ready CRNG reaches it only at its next scheduled reseed (the kernel waits up to 60 s, and
  // at least half the uptime early on); a template persisted right after a reseed would give its clones the same
  // bytes until then, unless the restore forces the reseed.
  it('differs between clones even when the template reseeded its CRNG just before it was persisted', async () => {
    const template = await KernelBooted.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo], ram: 'copy' });
    try {
      // A read reseeds the CRNG when its seed is old; either way its seed is now recent.
      await template.exec(['sh', '-c', 'head -c 16 /dev/urandom >/dev/null']);
      await template.persist(store, 'rng-template');
    } finally {
      await template.close();
    }
    const clones = await KernelBooted.fork(store, 'rng-template', 2, { runDir }, { hostFunctions: [echo] });
    try {
      const random = await Promise.all(clones.map(async (c) => (await c.exec(['sh', '-c', 'head -c 16 /dev/urandom | od -An -tx1'])).stdout));
      expect(random[0]).toMatch(/[0-9a-f]{2}/);
      expect(random[0]).not.toBe(random[1]);
    } finally {
      await Promise.all(clones.map((c) => c.close()));
    }
    await store.delete('rng-template');
  }, 120_000);
});

describe('tampered snapshots', () => {
  it('refuses a manifest that claims another QEMU version', async () => {
    const { store: tampered, id } = await copyClaimingOldQemu('booted');
    try {
      const error = await KernelBooted.fromSnapshot(tampered, id, { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'SNAPSHOT_MISMATCH', what: 'qemu', expected: '1.0.0' });
    } finally {
      rmSync(tampered.root, { recursive: true, force: true });
    }
  });

  it('refuses a snapshot of another device model (older snapshots did not record theirs) before starting QEMU', async () => {
    const { store: other, id } = await copyWithManifest<{ extra: Record<string, unknown> }>('booted', (draft) => {
      const { machineOptions: _m, ...extra } = draft.extra;
      return { ...draft, extra };
    });
    try {
      const error = await KernelBooted.fromSnapshot(other, id, { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'SNAPSHOT_MISMATCH', what: 'machine', expected: '(not recorded)', actual: 'q35,sata=off,smbus=off,vmport=off,pit=off' });
      expect(qemuProcessesUnder(runDir)).toEqual([]);
    } finally {
      rmSync(other.root, { recursive: true, force: true });
    }
  });

  it('with fallback: cold-boot, replays the recorded transitions from a fresh boot and says so', async () => {
    const { store: other, id } = await copyClaimingOldQemu('code');
    try {
      const reasons: unknown[] = [];
      const code = await UserCodeLoaded.fromSnapshot(other, id, { runDir }, { hostFunctions: [echo], fallback: 'cold-boot', onFallback: (r) => reasons.push(r) });
      try {
        expect(reasons).toHaveLength(1);
        expect(reasons[0]).toMatchObject({ code: 'SNAPSHOT_MISMATCH', what: 'qemu' });
        expect(sandboxOf(code).origin).toMatchObject({ kind: 'cold-boot-fallback', snapshot: id });
        expect(code.lineage).toEqual(['KernelBooted', 'RuntimeLoaded', 'UserCodeLoaded']);
        // What the transitions made is back; what was done by hand after them is not (it was never recorded).
        expect(await code.call('hello', 'replay')).toBe('hello replay\n');
        expect((await stageMarkers(code)).ram).toEqual([]);
      } finally {
        await code.close();
      }
    } finally {
      rmSync(other.root, { recursive: true, force: true });
    }
  }, 120_000);

  it('fails typed when the device state is garbage of the right size, and leaves nothing behind', async () => {
    const info = await store.get('booted');
    const path = info.paths.vmstate;
    const original = readFileSync(path);
    const offset = (info.manifest.extra as { deviceStateOffset: number }).deviceStateOffset;
    const garbled = Buffer.from(original);
    garbled.fill(0x5a, offset + 64, Math.min(garbled.length, offset + 4096));
    chmodSync(path, 0o644);
    writeFileSync(path, garbled);
    chmodSync(path, 0o444);
    try {
      const error = await KernelBooted.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'QEMU_EXITED', during: 'restore' });
      expect((error as Error).message).toMatch(/migration|load/i);
    } finally {
      chmodSync(path, 0o644);
      writeFileSync(path, original);
      chmodSync(path, 0o444);
    }
  });

  it("refuses a manifest whose evolvm fields (extra) are damaged with SnapshotCorruptError naming the field, starting nothing", async () => {
    const before = qemuProcessesUnder(runDir).length;
    const copy = await copyWithManifest<{ extra: Record<string, unknown> }>('booted', (draft) => ({ ...draft, extra: { ...draft.extra, cpus: 'two' } }));
    try {
      const error = await KernelBooted.fromSnapshot(copy.store, copy.id, { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'SNAPSHOT_CORRUPT', reason: 'manifest-schema', field: 'extra.cpus' });
      expect(qemuProcessesUnder(runDir)).toHaveLength(before);
      expect(readdirSync(join(copy.store.root, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
    } finally {
      rmSync(copy.store.root, { recursive: true, force: true });
    }
  });

  it('refuses a snapshot a live process is deleting, stopping the QEMU it started beside the lease', async () => {
    const info = await store.get('booted');
    const before = qemuProcessesUnder(runDir).length;
    // A delete intent of this (live) process, as a delete in progress publishes it.
    const intent = join(storeDir, '.locks', `${info.id}.delete`);
    writeFileSync(intent, JSON.stringify({ pid: process.pid, host: hostname(), startTicks: null, nonce: 'restore-test', createdAt: new Date().toISOString() }));
    try {
      const error = await KernelBooted.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo] }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SnapshotLockedError);
      expect(error).toMatchObject({ reason: 'deleting', operation: 'lease' });
    } finally {
      rmSync(intent, { force: true });
    }
    expect(qemuProcessesUnder(runDir)).toHaveLength(before);
    expect(readdirSync(join(storeDir, '.locks')).filter((f) => f.includes('.lease-'))).toEqual([]);
  });

  it('refuses a truncated vmstate before starting QEMU', async () => {
    const info = await store.get('booted');
    const path = info.paths.vmstate;
    const original = readFileSync(path);
    chmodSync(path, 0o644);
    writeFileSync(path, original.subarray(0, original.length - 1));
    chmodSync(path, 0o444);
    try {
      await expect(KernelBooted.fromSnapshot(store, 'booted', { runDir }, { hostFunctions: [echo] })).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    } finally {
      chmodSync(path, 0o644);
      writeFileSync(path, original);
      chmodSync(path, 0o444);
    }
  });
});

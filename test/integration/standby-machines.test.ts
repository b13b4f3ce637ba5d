import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeStandbyMachines, FsSnapshotStore, KernelBooted, loadCode, loadRuntime, Machine, QemuStartError, RuntimeLoaded, sandboxOf } from '../../src/index.js';
import { readyStandbyPids, standbysSettled } from '../../src/qemu/standby-machines.js';
import { expectNoLeaks, qemuProcessesUnder, testRunDir } from '../helpers/leaks.js';
import { markStage, stageMarkers } from '../helpers/stage-markers.js';

// Standbys are off for the rest of the suite (vitest.config.ts): on here, as they are by default.
const previous = process.env.EVOLVM_QEMU_STANDBY;
process.env.EVOLVM_QEMU_STANDBY = 'on';

const runDir = testRunDir('standby');
const storeDir = mkdtempSync(join(tmpdir(), 'evolvm-test-standby-store-'));
let store: FsSnapshotStore;

/** Waits for the standby machine a restore asked for (it starts 200 ms after it) and gives its QEMU pid. */
async function standbyReady(): Promise<number> {
  expect(readyStandbyPids()).toEqual([]); // not yet: restores were not quiet for long enough
  await standbysSettled();
  const pids = readyStandbyPids();
  expect(pids).toHaveLength(1);
  return pids[0]!;
}

/** Restores 'booted' with `config` and checks that it ran in a QEMU of its own (not `standbyPid`), whole. */
async function expectBootedWithoutStandby(config: { runDir: string; bootTimeoutMs?: number }, standbyPid: number): Promise<void> {
  const restored = await KernelBooted.fromSnapshot(store, 'booted', config);
  try {
    expect(sandboxOf(restored).machine.pid).not.toBe(standbyPid);
    expect(await stageMarkers(restored)).toEqual({ ram: ['in-ram-booted'], disk: ['disk-booted'] });
  } finally {
    await restored.close();
  }
}

beforeAll(async () => {
  store = await FsSnapshotStore.open(storeDir);
  const booted = await KernelBooted.boot({ runDir });
  try {
    await markStage(booted, 'booted', 0);
    await booted.persist(store, 'booted');
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    await markStage(runtime, 'runtime', 1);
    // A layer over 'booted': its disk is a qcow2 over booted's, so a standby opens a backing chain of two.
    await runtime.persist(store, 'runtime');
  } finally {
    await booted.close();
  }
}, 180_000);

afterAll(async () => {
  await closeStandbyMachines();
  await expectNoLeaks(runDir);
  rmSync(storeDir, { recursive: true, force: true });
  if (previous === undefined) delete process.env.EVOLVM_QEMU_STANDBY;
  else process.env.EVOLVM_QEMU_STANDBY = previous;
});

describe('standby machines (a QEMU started ahead, bound to a snapshot at restore)', () => {
  it('starts one after a restore, and the next restore of that shape runs in it with the snapshot whole', async () => {
    const first = await RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir });
    await first.close();
    const standbyPid = await standbyReady();

    const restored = await RuntimeLoaded.fromSnapshot(store, 'runtime', { runDir });
    try {
      expect(sandboxOf(restored).machine.pid).toBe(standbyPid);
      expect(readyStandbyPids()).not.toContain(standbyPid);
      // RAM from the snapshot's image, disk from its two layers, the runtime process alive.
      expect(await stageMarkers(restored)).toEqual({ ram: ['in-ram-booted', 'in-ram-runtime'], disk: ['disk-booted', 'disk-runtime'] });
      expect((await restored.exec(['kill', '-0', String(restored.runtime.pid)])).exitCode).toBe(0);
      // Its own identity, the host's clock.
      expect(restored.sandboxId).not.toBe(first.sandboxId);
      expect((await restored.exec(['hostname'])).stdout.trim()).toBe(restored.sandboxId);
      expect(Math.abs(Number((await restored.exec(['date', '+%s'])).stdout) - Date.now() / 1000)).toBeLessThan(5);

      // In-VM snapshots work on the remapped RAM: evolve, write, devolve, and the write is gone.
      const code = await restored.evolve(loadCode('hi() { echo hi; }'));
      await code.writeFile('/tmp/in-ram-later', 'x');
      await code.exec(['sh', '-c', 'echo disk-later | dd of=/dev/vda bs=512 seek=1 count=1 conv=notrunc 2>/dev/null']);
      const back = await code.devolve();
      expect(await stageMarkers(back)).toEqual({ ram: ['in-ram-booted', 'in-ram-runtime'], disk: ['disk-booted', 'disk-runtime'] });
    } finally {
      await restored.close();
    }
    // The snapshot's files were never written.
    await expect(store.verify('runtime')).resolves.toBeDefined();
  });

  it('serves only its own shape: a restore with another machine config starts its own QEMU', async () => {
    await (await KernelBooted.fromSnapshot(store, 'booted', { runDir })).close();
    const standbyPid = await standbyReady();
    await expectBootedWithoutStandby({ runDir, bootTimeoutMs: 59_000 }, standbyPid);
  });

  it('is not used once a file its QEMU opened was replaced (a map), though the path and the content match', async () => {
    await closeStandbyMachines();
    const maps = mkdtempSync(join(tmpdir(), 'evolvm-test-standby-maps-'));
    try {
      mkdirSync(join(maps, 'tree'));
      writeFileSync(join(maps, 'tree', 'hello.txt'), 'from the map');
      execFileSync('mksquashfs', [join(maps, 'tree'), join(maps, 'm.sqfs'), '-noappend', '-quiet', '-no-progress', '-all-root']);
      const config = { runDir, maps: { m: join(maps, 'm.sqfs') } };
      const booted = await KernelBooted.boot(config);
      try {
        await booted.persist(store, 'with-map');
      } finally {
        await booted.close();
      }
      await (await KernelBooted.fromSnapshot(store, 'with-map', config)).close();
      const standbyPid = await standbyReady();
      // The same bytes under the same path, as a new file: the standby's QEMU holds the old one open.
      copyFileSync(join(maps, 'm.sqfs'), join(maps, 'm.new'));
      renameSync(join(maps, 'm.new'), join(maps, 'm.sqfs'));
      const restored = await KernelBooted.fromSnapshot(store, 'with-map', config);
      try {
        expect(sandboxOf(restored).machine.pid).not.toBe(standbyPid);
        expect((await restored.readFile('/maps/m/hello.txt')).toString()).toBe('from the map');
      } finally {
        await restored.close();
      }
    } finally {
      await closeStandbyMachines();
      rmSync(maps, { recursive: true, force: true });
    }
  });

  it('falls back to a fresh QEMU when the standby died while it waited', async () => {
    await closeStandbyMachines();
    await (await KernelBooted.fromSnapshot(store, 'booted', { runDir })).close();
    const standbyPid = await standbyReady();
    process.kill(standbyPid, 'SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 100));
    await expectBootedWithoutStandby({ runDir }, standbyPid);
  });

  it('a bind refused by QEMU (a RAM image smaller than RAM) is a typed error and leaves nothing', async () => {
    await closeStandbyMachines();
    const before = qemuProcessesUnder(runDir).length;
    const standby = await Machine.prepareStandby({ runDir });
    const small = join(storeDir, 'small.img');
    writeFileSync(small, Buffer.alloc(4096));
    const { paths } = await store.get('booted');
    standby.bind({ ramImage: small, deviceStateOffset: 4096, diskLayer: paths.disk });
    const error = await standby.start().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuStartError);
    expect((error as Error).message).toMatch(/holds 4096 bytes/);
    for (let i = 0; i < 50 && qemuProcessesUnder(runDir).length > before; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(qemuProcessesUnder(runDir)).toHaveLength(before);
  });

  it('keeps a Node process that awaits only standbysSettled alive until the standby is up', async () => {
    const child = fileURLToPath(new URL('./standby-settled-child.ts', import.meta.url));
    const output = execFileSync(process.execPath, ['--import', 'tsx', child, runDir], { encoding: 'utf8', timeout: 30_000 });
    expect(output).toContain('settled with 1 standby');
  });

  it('does not start one with EVOLVM_QEMU_STANDBY=off, and closeStandbyMachines stops them all', async () => {
    await closeStandbyMachines();
    process.env.EVOLVM_QEMU_STANDBY = 'off';
    try {
      await (await KernelBooted.fromSnapshot(store, 'booted', { runDir })).close();
      await new Promise((resolve) => setTimeout(resolve, 600));
      expect(readyStandbyPids()).toEqual([]);
    } finally {
      process.env.EVOLVM_QEMU_STANDBY = 'on';
    }
    await (await KernelBooted.fromSnapshot(store, 'booted', { runDir })).close();
    const pid = await standbyReady();
    await closeStandbyMachines();
    expect(readyStandbyPids()).toEqual([]);
    for (let i = 0; i < 50 && qemuProcessesUnder(runDir).some((line) => line.startsWith(`${pid} `)); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(qemuProcessesUnder(runDir).filter((line) => line.startsWith(`${pid} `))).toEqual([]);
    expect(readdirSync(runDir)).toEqual([]);
  });
});

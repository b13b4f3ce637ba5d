import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { AgentTimeoutError, FsSnapshotStore, KernelBooted, loadCode, loadRuntime, sandboxOf, StagePoisonedError, type RuntimeLoaded, type Stage } from '../../src/index.js';
import { expectNoLeaks, qemuProcessesUnder, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('stage-faults');

afterAll(async () => {
  await expectNoLeaks(runDir);
});

/** SIGKILLs the sandbox's QEMU the moment its lifecycle enters `state`. */
function killWhenEntering(stage: Stage, state: 'saving' | 'restoring'): void {
  const { machine } = sandboxOf(stage);
  const stop = machine.lifecycle.subscribe((current) => {
    if (current !== state) return;
    stop();
    process.kill(machine.pid, 'SIGKILL');
  });
}

/** SIGKILLs the sandbox's QEMU when its next `command` job starts: the RAM image is written by then. */
function killWhenJobStarts(stage: Stage, command: 'snapshot-save' | 'snapshot-load'): void {
  const { machine } = sandboxOf(stage);
  const stop = machine.qmp.on('event', (event) => {
    const id = event.data['id'];
    if (event.event !== 'JOB_STATUS_CHANGE' || event.data['status'] !== 'created' || typeof id !== 'string' || !id.startsWith(command)) return;
    stop();
    expect(ramImagesOf(stage)).not.toEqual([]);
    process.kill(machine.pid, 'SIGKILL');
  });
}

/** The snapshot RAM images on tmpfs that belong to the stage's machine. */
function ramImagesOf(stage: Stage): string[] {
  const ramFile = basename(sandboxOf(stage).machine.paths.ramFile);
  return readdirSync('/dev/shm').filter((name) => name.startsWith(`${ramFile}.snap-`));
}

/** Closes the sandbox, then checks that no QEMU and no snapshot RAM image of it is left. */
async function closeAndExpectNothingLeft(stage: Stage): Promise<void> {
  await stage.close();
  expect(qemuProcessesUnder(runDir)).toEqual([]);
  expect(ramImagesOf(stage)).toEqual([]);
}

/** A new sandbox moved on to RuntimeLoaded (shell runtime). */
async function bootToRuntime(): Promise<{ booted: KernelBooted; runtime: RuntimeLoaded }> {
  const booted = await KernelBooted.boot({ runDir });
  return { booted, runtime: await booted.evolve(loadRuntime({ kind: 'shell' })) };
}

async function expectPoisoned(stages: Stage[]): Promise<void> {
  for (const stage of stages) {
    expect(stage.status).toBe('poisoned');
    const error = await stage.exec(['true']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StagePoisonedError);
    expect((error as StagePoisonedError).reason).toMatch(/QEMU exited/);
  }
}

describe('QEMU dying under a stage operation', () => {
  // Two moments each: as the lifecycle enters the state (before anything is written), and when the QMP job
  // starts (the RAM image is written by then, for a load written back into guest RAM).
  const saveKills = [
    ['during snapshot-save', (stage: Stage) => killWhenEntering(stage, 'saving')],
    ['during the snapshot-save job, after the RAM image was written', (stage: Stage) => killWhenJobStarts(stage, 'snapshot-save')],
  ] as const;
  const loadKills = [
    ['during snapshot-load', (stage: Stage) => killWhenEntering(stage, 'restoring')],
    ['during the snapshot-load job, after RAM was written back', (stage: Stage) => killWhenJobStarts(stage, 'snapshot-load')],
  ] as const;

  it.each(saveKills)('%s: the evolve fails typed, every stage object is poisoned, nothing leaks', async (_when, arrangeKill) => {
    const booted = await KernelBooted.boot({ runDir });
    await booted.writeFile('/tmp/dirty', 'so the evolve must save');
    arrangeKill(booted);
    const error = await booted.evolve(loadRuntime({ kind: 'shell' })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StagePoisonedError);
    expect((error as StagePoisonedError).cause).toMatchObject({ code: 'SNAPSHOT_FAILED' });
    await expectPoisoned([booted]);
    await closeAndExpectNothingLeft(booted);
  });

  it.each(loadKills)('%s: the devolve fails typed, every stage object is poisoned, nothing leaks', async (_when, arrangeKill) => {
    const booted = await KernelBooted.boot({ runDir });
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    const code = await runtime.evolve(loadCode('f() { :; }'));
    expect(ramImagesOf(code)).toHaveLength(2);
    arrangeKill(code);
    const error = await code.devolve().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StagePoisonedError);
    await expectPoisoned([booted, runtime, code]);
    await closeAndExpectNothingLeft(code);
  });

  it('a restored guest that does not resync: devolve returns, the next operation finds the sandbox poisoned, nothing leaks', async () => {
    const { booted, runtime } = await bootToRuntime();
    const { machine } = sandboxOf(runtime);
    // The guest's resync is never answered (as from a guest hung right after the load).
    vi.spyOn(machine, 'resyncAfterLoad').mockRejectedValueOnce(new AgentTimeoutError('refresh', 10));
    const back = await runtime.devolve();
    const error = await back.exec(['true']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StagePoisonedError);
    expect((error as StagePoisonedError).reason).toMatch(/devolve to KernelBooted: the restored guest did not resync/);
    expect((error as StagePoisonedError).cause).toMatchObject({ code: 'SNAPSHOT_FAILED' });
    for (const stage of [booted, runtime, back]) expect(stage.status).toBe('poisoned');
    await expect(back.evolve(loadRuntime({ kind: 'shell' }))).rejects.toBeInstanceOf(StagePoisonedError);
    // The sandbox stopped QEMU itself, before any close.
    expect(qemuProcessesUnder(runDir)).toEqual([]);
    await closeAndExpectNothingLeft(back);
  });

  it('right after a devolve, while the guest resyncs: the next operation fails typed, saying QEMU exited', async () => {
    const { booted, runtime } = await bootToRuntime();
    const back = await runtime.devolve();
    process.kill(sandboxOf(back).machine.pid, 'SIGKILL');
    const error = await back.exec(['true']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StagePoisonedError);
    expect((error as StagePoisonedError).reason).toMatch(/QEMU exited/);
    await expectPoisoned([booted, runtime, back]);
    await closeAndExpectNothingLeft(back);
  });

  it('a close right after a devolve that deletes snapshots behind it: no error, nothing leaks', async () => {
    const { booted, runtime } = await bootToRuntime();
    const code = await runtime.evolve(loadCode('f() { :; }'));
    // RuntimeLoaded has a snapshot (code was evolved from it); the jump back leaves it to be deleted.
    const back = await code.devolveTo(KernelBooted);
    await back.close();
    for (const stage of [booted, runtime, code, back]) expect(stage.status).toBe('poisoned');
    expect(qemuProcessesUnder(runDir)).toEqual([]);
    expect(ramImagesOf(back)).toEqual([]);
  });

  it('a close right after a devolve, while the guest resyncs: no error, every stage object closed, nothing leaks', async () => {
    const { booted, runtime } = await bootToRuntime();
    const back = await runtime.devolve();
    await back.close();
    for (const stage of [booted, runtime, back]) expect(stage.status).toBe('poisoned');
    await expect(back.exec(['true'])).rejects.toMatchObject({ reason: 'sandbox closed' });
    expect(qemuProcessesUnder(runDir)).toEqual([]);
    expect(ramImagesOf(back)).toEqual([]);
  });

  it("during a persist's migration: the persist fails typed, the store keeps nothing of it, nothing leaks", async () => {
    const storeDir = mkdtempSync(join(tmpdir(), 'evolvm-fault-store-'));
    try {
      const store = await FsSnapshotStore.open(storeDir);
      const booted = await KernelBooted.boot({ runDir });
      const { machine } = sandboxOf(booted);
      // QEMU dies just as it is told to migrate into the socket the persist serves.
      const execute = machine.qmp.execute.bind(machine.qmp);
      machine.qmp.execute = ((command: string, ...rest: unknown[]) => {
        if (command === 'migrate') {
          expect(existsSync(machine.paths.migrationSocket)).toBe(true);
          process.kill(machine.pid, 'SIGKILL');
        }
        return (execute as (...args: unknown[]) => Promise<unknown>)(command, ...rest);
      }) as typeof machine.qmp.execute;
      const error = await booted.persist(store, 'never').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StagePoisonedError);
      await expectPoisoned([booted]);
      expect(existsSync(machine.paths.migrationSocket)).toBe(false);
      await booted.close();
      expect(await store.list()).toEqual([]);
      expect(readdirSync(storeDir).filter((name) => !name.startsWith('.'))).toEqual([]);
      expect(qemuProcessesUnder(runDir)).toEqual([]);
    } finally {
      rmSync(storeDir, { recursive: true, force: true });
    }
  });

  it('at rest: every live and stale stage object is poisoned and says why', async () => {
    const booted = await KernelBooted.boot({ runDir });
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    process.kill(sandboxOf(runtime).machine.pid, 'SIGKILL');
    for (let i = 0; i < 50 && runtime.status !== 'poisoned'; i++) await new Promise((r) => setTimeout(r, 50));
    await expectPoisoned([booted, runtime]);
    await expect(runtime.devolve()).rejects.toBeInstanceOf(StagePoisonedError);
    await runtime.close();
  });
});

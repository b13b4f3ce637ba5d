import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  defineTransition,
  GuestOperationError,
  KernelBooted,
  loadCode,
  loadRuntime,
  RuntimeLoaded,
  sandboxOf,
  StageStaleError,
  TransitionFailedError,
  UserCodeLoaded,
  type Stage,
} from '../../src/index.js';
import { expectNoLeaks, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('stages');
// One sandbox for the whole file: every test starts and ends at the root stage, which each test hands on.
let root: KernelBooted;

beforeAll(async () => {
  root = await KernelBooted.boot({ runDir });
});

afterAll(async () => {
  await root?.close();
  await expectNoLeaks(runDir);
});

const ADD = 'add() { echo $(($1 + $2)); }';

async function exists(stage: Stage, path: string): Promise<boolean> {
  return (await stage.exec(['test', '-e', path])).exitCode === 0;
}

// A zombie (killed, not yet reaped by the agent) counts as gone.
async function processAlive(stage: Stage, pid: number): Promise<boolean> {
  return (await stage.exec(['sh', '-c', `grep -q '^State:[[:space:]]*[^Z]' /proc/${pid}/status`])).exitCode === 0;
}

/** Kills a guest process and waits (bounded) until it is gone. */
async function killAndWait(stage: Stage, pid: number): Promise<void> {
  await stage.exec(['kill', String(pid)]);
  for (const deadline = Date.now() + 5_000; Date.now() < deadline; ) {
    if (!(await processAlive(stage, pid))) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function snapshotsInScratch(stage: Stage): string[] {
  const out = execFileSync('qemu-img', ['snapshot', '-U', '-l', sandboxOf(stage).machine.paths.scratchDisk], { encoding: 'utf8' });
  return out.split('\n').slice(2).filter((line) => line.trim()).map((line) => line.trim().split(/\s+/)[1]!);
}

describe('evolve and devolve restore guest state exactly', () => {
  it('a marker made after evolve is gone after devolve, and back only when the transition re-creates it', async () => {
    const markRuntime = defineTransition({
      name: 'markRuntime',
      from: KernelBooted,
      to: RuntimeLoaded,
      run: async ({ guest }) => {
        await guest.writeFile('/tmp/by-transition', 'yes');
        return { kind: 'shell' as const, pid: 0, version: 'test' };
      },
    });
    const runtime = await root.evolve(markRuntime);
    await runtime.writeFile('/tmp/after-evolve', 'marker');
    // A value held by a guest process: it lives only in RAM.
    const held = await runtime.exec(['sh', '-c', 'MARKER=held-value sleep 3600 </dev/null >/dev/null 2>&1 & echo $!']);
    const pid = Number(held.stdout.trim());
    expect(await processAlive(runtime, pid)).toBe(true);

    const back = await runtime.devolve();
    expect(back).toBeInstanceOf(KernelBooted);
    expect(await exists(back, '/tmp/after-evolve')).toBe(false);
    expect(await exists(back, '/tmp/by-transition')).toBe(false);
    expect(await processAlive(back, pid)).toBe(false);

    const again = await back.evolve(markRuntime);
    expect(await exists(again, '/tmp/by-transition')).toBe(true);
    expect(await exists(again, '/tmp/after-evolve')).toBe(false);
    root = await again.devolve();
  });

  it('keeps what the source stage had when it evolved', async () => {
    await root.writeFile('/tmp/root-marker', 'root');
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    expect((await runtime.readFile('/tmp/root-marker')).toString()).toBe('root');
    root = await runtime.devolve();
    expect((await root.readFile('/tmp/root-marker')).toString()).toBe('root');
  });

  it('restores the runtime process of RuntimeLoaded after a devolve from user code', async () => {
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    const { pid } = runtime.runtime;
    const code = await runtime.evolve(loadCode(ADD));
    await killAndWait(code, pid);
    expect(await processAlive(code, pid)).toBe(false);
    const restored = await code.devolve();
    expect(await processAlive(restored, pid)).toBe(true);
    root = await restored.devolve();
  });
});

describe('identity', () => {
  it("names the guest by the sandbox's id: its hostname, read at /run/evolvm/sandbox-id", async () => {
    expect((await root.exec(['hostname'])).stdout.trim()).toBe(root.sandboxId);
    expect((await root.readFile('/run/evolvm/sandbox-id')).toString()).toBe(`${root.sandboxId}\n`);
  });
});

describe('the guest after a devolve', () => {
  /** Enters RuntimeLoaded with 16 random bytes the guest read in the transition (the stage's data). */
  const readRandom = defineTransition({
    name: 'readRandom',
    from: KernelBooted,
    to: RuntimeLoaded,
    run: async ({ guest }) => {
      const random = await guest.exec(['sh', '-c', 'head -c 16 /dev/urandom | od -An -tx1']);
      return { kind: 'shell' as const, pid: 0, version: random.stdout.trim() };
    },
  });

  it('has its clock set before any later request runs, though devolve does not wait for the guest to do it', async () => {
    await root.exec(['date', '-s', '@1000000000']);
    // The snapshot taken here holds a guest clock in 2001.
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    const { machine } = sandboxOf(runtime);
    const resync = machine.resyncAfterLoad.bind(machine);
    let refreshed = false;
    // The resync (clock, RNG, hello) held back on the host for a while, so the order below does not hang on timing.
    const spy = vi.spyOn(machine, 'resyncAfterLoad').mockImplementation(async (reason) => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      await resync(reason);
      refreshed = true;
    });
    try {
      root = await runtime.devolve();
      expect(refreshed).toBe(false);
      const guestSeconds = Number((await root.exec(['date', '+%s'])).stdout.trim());
      expect(refreshed).toBe(true);
      expect(Math.abs(guestSeconds - Date.now() / 1000)).toBeLessThan(5);
      // An evolve right after a devolve waits the same way.
      const again = await root.evolve(loadRuntime({ kind: 'shell' }));
      expect(spy).toHaveBeenCalledTimes(1);
      refreshed = false;
      root = await again.devolve();
      root = await (await root.evolve(loadRuntime({ kind: 'shell' }))).devolve();
      expect(refreshed).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });

  it('has its RNG reseeded: the same snapshot restored twice reads different random bytes', async () => {
    // A read reseeds the CRNG when its seed is old; so its seed is recent when the evolve below snapshots it, and
    // the kernel would not reseed on its own soon after a load (see "RNG of clones" in persist.test.ts).
    await root.exec(['sh', '-c', 'head -c 16 /dev/urandom >/dev/null']);
    const first = await root.evolve(readRandom);
    root = await first.devolve();
    // root is unchanged since its snapshot, so this evolve starts from exactly the state the first one did.
    const second = await root.evolve(readRandom);
    expect(first.runtime.version).toMatch(/^[0-9a-f]{2}( [0-9a-f]{2}){15}$/);
    expect(second.runtime.version).not.toBe(first.runtime.version);
    root = await second.devolve();
  });
});

describe('moving through the lineage', () => {
  it('devolves from the leaf to the root one level at a time', async () => {
    const code = await (await root.evolve(loadRuntime({ kind: 'shell' }))).evolve(loadCode(ADD));
    expect(code.lineage).toEqual(['KernelBooted', 'RuntimeLoaded', 'UserCodeLoaded']);
    expect(await code.call('add', '2', '40')).toBe('42\n');
    const runtime = await code.devolve();
    expect(runtime).toBeInstanceOf(RuntimeLoaded);
    root = await runtime.devolve();
    expect(root).toBeInstanceOf(KernelBooted);
    expect(await exists(root, '/run/evolvm/runtime/pid')).toBe(false);
  });

  it('devolves from the leaf to the root in one jump', async () => {
    const code = await (await root.evolve(loadRuntime({ kind: 'shell' }))).evolve(loadCode(ADD));
    root = await code.devolveTo(KernelBooted);
    expect(root).toBeInstanceOf(KernelBooted);
    expect(await exists(root, '/run/evolvm/runtime')).toBe(false);
    // RuntimeLoaded's snapshot is deleted behind the devolve; settled() waits for that.
    await sandboxOf(root).settled();
    expect(snapshotsInScratch(root)).toHaveLength(1);
    expect(sandboxOf(root).snapshots.tags.size).toBe(1);
  });

  it('evolves a different branch after a devolve (hot swap)', async () => {
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    const first = await runtime.evolve(loadCode('who() { echo first; }'));
    expect(await first.call('who')).toBe('first\n');
    const again = await first.devolve();
    const second = await again.evolve(loadCode('who() { echo second; }'));
    expect(await second.call('who')).toBe('second\n');
    await expect(second.call('add', '1', '2')).rejects.toBeInstanceOf(GuestOperationError);
    root = await second.devolveTo(KernelBooted);
  });

  it('runs 20 evolve/devolve cycles without the scratch disk growing beyond the live snapshots', async () => {
    const scratch = sandboxOf(root).machine.paths.scratchDisk;
    const allocated = () => statSync(scratch).blocks * 512;
    let afterFirst = 0;
    for (let cycle = 0; cycle < 20; cycle++) {
      // Writing on the root makes it dirty, so every cycle saves two snapshots and deletes two.
      await root.writeFile('/tmp/cycle', String(cycle));
      const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
      await runtime.writeFile('/tmp/runtime-cycle', String(cycle));
      const code = await runtime.evolve(loadCode(ADD));
      root = await code.devolveTo(KernelBooted);
      expect((await root.readFile('/tmp/cycle')).toString()).toBe(String(cycle));
      if (cycle === 0) afterFirst = allocated();
    }
    await sandboxOf(root).settled();
    expect(snapshotsInScratch(root)).toHaveLength(1);
    expect(sandboxOf(root).snapshots.tags.size).toBe(1);
    // Each snapshot's RAM is a sparse image beside the RAM file; deleted snapshots take theirs along.
    const ramFile = basename(sandboxOf(root).machine.paths.ramFile);
    expect(readdirSync('/dev/shm').filter((name) => name.startsWith(`${ramFile}.snap-`))).toHaveLength(1);
    // Freed snapshot clusters are reused: 19 more cycles may not add more than a little slack.
    expect(allocated()).toBeLessThan(afterFirst * 1.5);
  }, 300_000);
});

describe('stale stage objects', () => {
  it('refuse every call after evolve, naming the stage the sandbox is in now', async () => {
    const booted = root;
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    expect(booted.status).toBe('consumed');
    expect(runtime.status).toBe('ready');
    const error = await booted.exec(['true']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StageStaleError);
    expect(error).toMatchObject({ code: 'STAGE_STALE', stage: 'KernelBooted', currentStage: 'RuntimeLoaded' });
    await expect(booted.evolve(loadRuntime({ kind: 'shell' }))).rejects.toBeInstanceOf(StageStaleError);

    const code = await runtime.evolve(loadCode(ADD));
    const up = await code.devolve();
    expect(code.status).toBe('consumed');
    await expect(code.call('add', '1', '1')).rejects.toMatchObject({ code: 'STAGE_STALE', currentStage: 'RuntimeLoaded' });
    await expect(code.devolve()).rejects.toBeInstanceOf(StageStaleError);
    // The object consumed by its earlier evolve stays stale even though the sandbox is back in its class.
    await expect(runtime.exec(['true'])).rejects.toBeInstanceOf(StageStaleError);
    expect(up).not.toBe(runtime);
    root = await up.devolve();
  });

  it('refuses a transition whose source class does not match at run time (an unchecked cast)', async () => {
    const wrong = loadCode(ADD) as unknown as Parameters<KernelBooted['evolve']>[0];
    await expect(root.evolve(wrong as never)).rejects.toMatchObject({ code: 'OPERATION_NOT_ALLOWED' });
    expect(root.status).toBe('ready');
  });
});

describe('other machine shapes', () => {
  it('round-trips on microvm with 256 MiB and on q35 + SeaBIOS with 384 MiB (RAM images, ROM ranges)', async () => {
    for (const config of [{ machine: 'microvm', memoryMiB: 256 }, { machine: 'q35', firmware: 'seabios', memoryMiB: 384 }] as const) {
      let booted = await KernelBooted.boot({ runDir, ...config });
      try {
        for (let cycle = 0; cycle < 2; cycle++) {
          await booted.writeFile('/tmp/root-marker', `${config.machine} ${cycle}`);
          const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
          await runtime.writeFile('/tmp/runtime-marker', 'made after evolve');
          booted = await runtime.devolve();
          await expect(booted.readFile('/tmp/runtime-marker')).rejects.toBeInstanceOf(GuestOperationError);
          expect((await booted.readFile('/tmp/root-marker')).toString()).toBe(`${config.machine} ${cycle}`);
        }
      } finally {
        await booted.close();
      }
    }
  }, 120_000);
});

describe('atomic evolve', () => {
  it('rolls back a transition that fails in the guest; the source stays usable', async () => {
    const failing = defineTransition({
      name: 'failingLoad',
      from: KernelBooted,
      to: RuntimeLoaded,
      run: async ({ guest }) => {
        await guest.writeFile('/tmp/half-loaded', 'partial');
        const result = await guest.exec(['sh', '-c', 'exit 9']);
        throw new GuestOperationError('failingLoad', 'EXIT', `exit ${result.exitCode}`);
      },
    });
    const error = await root.evolve(failing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransitionFailedError);
    expect(error).toMatchObject({ transition: 'failingLoad', from: 'KernelBooted', rolledBack: true });
    expect((error as TransitionFailedError).cause).toBeInstanceOf(GuestOperationError);
    expect(root.status).toBe('ready');
    expect(await exists(root, '/tmp/half-loaded')).toBe(false);
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    root = await runtime.devolve();
  });

  it('rolls back a failing transition from a changed stage, whose replaced snapshot is deleted beside it', async () => {
    // Root has a snapshot from earlier evolves; the write makes the evolve save a new one and delete the old one
    // while the transition runs. The rollback must load the new one, after that delete.
    root = await (await root.evolve(loadRuntime({ kind: 'shell' }))).devolve();
    await root.writeFile('/tmp/before-failing', 'kept');
    const failing = defineTransition({
      name: 'failingAfterSave',
      from: KernelBooted,
      to: RuntimeLoaded,
      run: async ({ guest }) => {
        await guest.writeFile('/tmp/half-loaded', 'partial');
        throw new GuestOperationError('failingAfterSave', 'EXIT', 'refused');
      },
    });
    await expect(root.evolve(failing)).rejects.toMatchObject({ transition: 'failingAfterSave', rolledBack: true });
    expect((await root.readFile('/tmp/before-failing')).toString()).toBe('kept');
    expect(await exists(root, '/tmp/half-loaded')).toBe(false);
    expect(snapshotsInScratch(root)).toHaveLength(1);
    expect(sandboxOf(root).snapshots.tags.size).toBe(1);
    const ramFile = basename(sandboxOf(root).machine.paths.ramFile);
    expect(readdirSync('/dev/shm').filter((name) => name.startsWith(`${ramFile}.snap-`))).toHaveLength(1);
  });

  it('rolls back a transition that hangs past its bound', async () => {
    const hanging = defineTransition({
      name: 'hangingLoad',
      from: KernelBooted,
      to: RuntimeLoaded,
      timeoutMs: 1_000,
      run: async ({ guest }) => {
        await guest.writeFile('/tmp/hung', 'x');
        await guest.exec(['sleep', '600']);
        return { kind: 'shell' as const, pid: 0, version: 'test' };
      },
    });
    const started = Date.now();
    const error = await root.evolve(hanging).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'TRANSITION_FAILED', rolledBack: true });
    expect((error as TransitionFailedError).cause).toMatchObject({ code: 'AGENT_TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await exists(root, '/tmp/hung')).toBe(false);
    // The sleep started by the hung transition was rolled back with the rest of the guest.
    expect((await root.exec(['sh', '-c', 'pgrep -x sleep || true'])).stdout.trim()).toBe('');
  });

  it('rolls back when user code fails to load', async () => {
    const runtime = await root.evolve(loadRuntime({ kind: 'shell' }));
    const error = await runtime.evolve(loadCode('this is not ( valid shell')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'TRANSITION_FAILED', rolledBack: true });
    expect(runtime.status).toBe('ready');
    const code = await runtime.evolve(loadCode(ADD));
    expect(code).toBeInstanceOf(UserCodeLoaded);
    root = await code.devolveTo(KernelBooted);
  });
});

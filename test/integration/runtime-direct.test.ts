import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import {
  AgentTimeoutError,
  defineHostFunction,
  FsSnapshotStore,
  GuestOperationError,
  KernelBooted,
  loadCode,
  loadRuntime,
  RuntimeLoaded,
  sandboxOf,
  UserCodeLoaded,
} from '../../src/index.js';
import { testRunDir } from '../helpers/leaks.js';
import { shareRuntime } from '../helpers/shared-runtime.js';

const runDir = testRunDir('runtime-direct');
const storeDir = mkdtempSync(join(tmpdir(), 'evolvm-direct-store-'));
const double = defineHostFunction({
  name: 'double',
  params: z.tuple([z.number().int()]),
  result: z.number().int(),
  impl: (x) => x * 2,
});
const COUNTER = `
var n = 0;
function increment() { n = n + 1; return n; }
function get() { return n; }
function quadruple(x) { return host.double(host.double(x)); }
function forever() { for (;;) {} }
`;

// One sandbox; every test starts from this RuntimeLoaded (js, on the direct port) and hands it on.
let runtime: RuntimeLoaded;
const { withCode } = shareRuntime(runDir, 'js', [double], { get: () => runtime, set: (stage) => (runtime = stage) });
afterAll(() => rmSync(storeDir, { recursive: true, force: true }));

/** Loads the counter script, runs `body`, and devolves back to the runtime stage. */
const withCounter = <T>(body: (code: UserCodeLoaded) => Promise<T>) => withCode(COUNTER, body);

describe("a runtime on the runtimes' own port", () => {
  it('is the default: loads and calls go to the runtime directly, host functions included, not through the agent', async () => {
    expect(runtime.runtime).toMatchObject({ kind: 'js', direct: true });
    const relayed = vi.spyOn(sandboxOf(runtime).machine.agent, 'request');
    try {
      await withCounter(async (code) => {
        expect(await code.call('increment')).toBe(1);
        expect(await code.call('quadruple', 5)).toBe(20);
        expect(await Promise.all([code.call('increment'), code.call('increment'), code.call('quadruple', 1)])).toEqual([2, 3, 4]);
      });
      expect(relayed.mock.calls.filter(([op]) => op === 'rt_req')).toEqual([]);
    } finally {
      relayed.mockRestore();
    }
  });

  it('can be turned off: direct: false relays through the agent, with the same results', async () => {
    const booted = await runtime.devolve();
    const relayed = vi.spyOn(sandboxOf(booted).machine.agent, 'request');
    let stage: KernelBooted | RuntimeLoaded | UserCodeLoaded = booted;
    try {
      const relayedRuntime = await booted.evolve(loadRuntime({ kind: 'js', direct: false }));
      stage = relayedRuntime;
      expect(relayedRuntime.runtime.direct).toBe(false);
      const code = await relayedRuntime.evolve(loadCode(COUNTER));
      stage = code;
      expect(await code.call('increment')).toBe(1);
      expect(await code.call('quadruple', 5)).toBe(20);
      expect(relayed.mock.calls.filter(([op]) => op === 'rt_req').length).toBeGreaterThanOrEqual(3);
    } finally {
      relayed.mockRestore();
      const root =
        stage instanceof KernelBooted ? stage : stage instanceof RuntimeLoaded ? await stage.devolve() : await stage.devolveTo(KernelBooted);
      runtime = await root.evolve(loadRuntime({ kind: 'js' }));
    }
  });

  it('is held by one runtime at a time: another asking for it gets EBUSY', async () => {
    const { machine } = sandboxOf(runtime);
    await expect(runtime.request('rt_start', { name: 'wasm', direct: true })).rejects.toMatchObject({ guestCode: 'EBUSY' });
    const relayed = (await runtime.request('rt_start', { name: 'wasm' })) as { direct?: boolean };
    expect(relayed.direct).toBe(false);
    expect(machine.state).toBe('running');
    // The stage changed (a second runtime runs): move back to the runtime stage's snapshot.
    runtime = await (await runtime.devolve()).evolve(loadRuntime({ kind: 'js' }));
  });

  it('fails a pending call with RUNTIME_EXITED at once when the runtime dies, and the sandbox moves on', async () => {
    await withCounter(async (code) => {
      const call = code.callWith({ timeoutMs: 60_000 }, 'forever').catch((e: unknown) => e);
      // The runtime spins; the agent still runs (the guest kernel preempts the runtime).
      await new Promise((resolve) => setTimeout(resolve, 200));
      const started = Date.now();
      await code.exec(['kill', '-9', String(runtime.runtime.pid)]);
      const error = await call;
      expect(error).toBeInstanceOf(GuestOperationError);
      expect(error).toMatchObject({ guestCode: 'RUNTIME_EXITED' });
      expect(Date.now() - started).toBeLessThan(5_000);
    });
    // Back at the runtime stage (its snapshot has the runtime alive): calls work again.
    await withCounter(async (code) => expect(await code.call('increment')).toBe(1));
  });

  it('never lets a request the guest had not read reach a restored runtime', async () => {
    await withCounter(async (code) => {
      const { machine, snapshots } = sandboxOf(code);
      const address = { kind: 'js', direct: true };
      expect(await machine.runtimeRequest(address, 'call', { fn: 'increment', args: [] })).toEqual({ results: [1] });
      await snapshots.save('direct-stale');
      try {
        // The runtime spins; behind that call, 24 MiB of padding (more than the guest's port buffers take),
        // then increments that a restored runtime must never run.
        const bounded = { timeoutMs: 1_000 };
        const sent = [
          machine.runtimeRequest(address, 'call', { fn: 'forever', args: [] }, bounded),
          ...Array.from({ length: 24 }, () => machine.runtimeRequest(address, 'call', { fn: 'get', args: [Buffer.alloc(1 << 20)] }, bounded)),
          ...Array.from({ length: 5 }, () => machine.runtimeRequest(address, 'call', { fn: 'increment', args: [] }, bounded)),
        ].map((request) => request.catch((e: unknown) => e));
        for (const outcome of await Promise.all(sent)) expect(outcome).toBeInstanceOf(AgentTimeoutError);
        await (await snapshots.load('direct-stale')).resynced;
        expect(await machine.runtimeRequest(address, 'call', { fn: 'get', args: [] })).toEqual({ results: [1] });
        // Still at 1 a moment later: nothing was left waiting either.
        await new Promise((resolve) => setTimeout(resolve, 300));
        expect(await code.call('get')).toBe(1);
      } finally {
        await snapshots.delete('direct-stale');
      }
    });
  }, 60_000);

  it('is served again after a persist and a restore, and in each fork clone on its own', async () => {
    const store = await FsSnapshotStore.open(storeDir);
    await withCounter(async (code) => {
      expect(await code.call('increment')).toBe(1);
      await code.persist(store, 'counter');
    });
    const restored = await UserCodeLoaded.fromSnapshot(store, 'counter', { runDir }, { hostFunctions: [double] });
    try {
      expect(await restored.call('increment')).toBe(2);
      expect(await restored.call('quadruple', 3)).toBe(12);
    } finally {
      await restored.close();
    }
    const clones = await UserCodeLoaded.fork(store, 'counter', 2, { runDir }, { hostFunctions: [double] });
    try {
      expect(await clones[0]!.call('increment')).toBe(2);
      expect(await clones[0]!.call('increment')).toBe(3);
      expect(await clones[1]!.call('increment')).toBe(2);
    } finally {
      await Promise.all(clones.map((clone) => clone.close()));
    }
  }, 120_000);
});

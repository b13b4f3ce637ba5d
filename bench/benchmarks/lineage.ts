import { KernelBooted, loadRuntime, sandboxOf, type RuntimeLoaded } from '../../src/index.js';
import { resultOf, since, type BenchGroup, type Metric } from '../benchmark.js';
import { setTimeout as delay } from 'node:timers/promises';
import { startVmstateSnapshotTarget, timedRawLoadOf } from './raw-snapshot.js';

/** How long QEMU must be quiet before the idle-trim shim trims its heap (QUIET_MS in native/idle-malloc-trim.c). */
const TRIM_QUIET_MS = 100;

const evolve: Metric = { name: 'evolve', unit: 'ms' };
const evolveClean: Metric = { name: 'evolve-clean', unit: 'ms' };
const devolve: Metric = { name: 'devolve', unit: 'ms', target: { op: '<=', value: 60 } };
const devolveReady: Metric = { name: 'devolve-ready', unit: 'ms' };
const rawSnapshotLoad: Metric = { name: 'raw-snapshot-load', unit: 'ms' };
const vmstateSnapshotLoad: Metric = { name: 'vmstate-snapshot-load', unit: 'ms' };

/** A write here marks KernelBooted as changed since its snapshot, so the next evolve must save it again. */
const DIRTY_PATH = '/tmp/evolvm-bench-dirty';

/**
 * KernelBooted ⇄ RuntimeLoaded on one sandbox, and beside it a plain machine for the raw `snapshot-load`.
 * Each cycle times:
 * - `evolve`: after a write, so the evolve saves a new snapshot (and deletes the one it replaces), then loads the runtime;
 * - `evolve-clean`: right after a devolve, when the source's snapshot still holds it and the save is skipped;
 * - `devolve`: one level back, after each of the two evolves (two samples per cycle). devolve returns once QEMU
 *   has loaded the snapshot and resumed the guest; the guest's resync (hello, clock, RNG) runs behind it;
 * - `devolve-ready`: the same devolve until the guest has answered a ping sent right after it, which it does
 *   only after the resync (the agent serves its channel in order);
 * - `raw-snapshot-load`: after each devolve, the very snapshot that devolve loaded (same machine, tag and RAM
 *   image), loaded again straight over QMP, after a change to the guest as before a devolve and a 150 ms pause
 *   (QEMU's deferred heap trim then runs first, as it does between an evolve and its devolve). Interleaving the
 *   two keeps their ratio honest while other work on the host comes and goes.
 * - `vmstate-snapshot-load`: QEMU's own `snapshot-load` with RAM in the vmstate (what devolve used before), on a
 *   plain machine beside the sandbox, once per cycle, for comparison.
 * A first, untimed cycle takes the first snapshot and warms TCG's code cache.
 */
export const lineageGroup: BenchGroup = {
  metrics: [evolve, evolveClean, devolve, devolveReady, rawSnapshotLoad, vmstateSnapshotLoad],
  async run(context) {
    const { runs, runDir, signal, log } = context;
    const cycles = runs(5);
    const samples = { evolve: [] as number[], clean: [] as number[], devolve: [] as number[], ready: [] as number[], raw: [] as number[], vmstate: [] as number[] };
    const transition = loadRuntime({ kind: 'shell' });
    const root = await KernelBooted.boot({ runDir }, { signal });
    try {
      const vmstateTarget = await startVmstateSnapshotTarget(context);
      try {
        let booted = root;
        for (let cycle = 0; cycle <= cycles; cycle++) {
          signal.throwIfAborted();
          const warmUp = cycle === 0;
          const timed = async <T>(into: number[], step: () => Promise<T>): Promise<T> => {
            const start = performance.now();
            const value = await step();
            if (!warmUp) into.push(since(start));
            return value;
          };
          const rawLoad = async () => {
            // Each devolve comes after an evolve whose snapshot save ended >100 ms before, so QEMU has run its
            // deferred heap trim (native/idle-malloc-trim.c) and the load faults that memory back in. The raw
            // load would otherwise start within 100 ms of the devolve, before any trim: wait, untimed, so that
            // both loads find QEMU's heap alike.
            await delay(TRIM_QUIET_MS + 50, undefined, { signal });
            const elapsed = await timedRawLoadOf(booted, signal);
            if (!warmUp) samples.raw.push(elapsed);
          };
          await booted.writeFile(DIRTY_PATH, `cycle ${cycle}\n`, { signal });
          let runtime: RuntimeLoaded = await timed(samples.evolve, () => booted.evolve(transition, { signal }));
          const readyStart = performance.now();
          booted = await timed(samples.devolve, () => runtime.devolve({ signal }));
          // Not a stage request: that would mark KernelBooted changed and make the next evolve save again.
          await sandboxOf(booted).machine.ping({ signal });
          if (!warmUp) samples.ready.push(since(readyStart));
          await rawLoad();
          runtime = await timed(samples.clean, () => booted.evolve(transition, { signal }));
          booted = await timed(samples.devolve, () => runtime.devolve({ signal }));
          await rawLoad();
          const vmstateLoad = await vmstateTarget.timedLoad();
          if (!warmUp) samples.vmstate.push(vmstateLoad);
          if (!warmUp) {
            const ms = (values: number[], count = 1) => values.slice(-count).map((value) => value.toFixed(0)).join('/');
            log(`lineage ${cycle}/${cycles}: evolve ${ms(samples.evolve)}, evolve-clean ${ms(samples.clean)}, devolve ${ms(samples.devolve, 2)} (ready ${ms(samples.ready)}), raw load ${ms(samples.raw, 2)}, vmstate load ${ms(samples.vmstate)} ms`);
          }
        }
      } finally {
        await vmstateTarget.stop();
      }
      return [
        resultOf(evolve, samples.evolve),
        resultOf(evolveClean, samples.clean),
        resultOf(devolve, samples.devolve),
        resultOf(devolveReady, samples.ready),
        resultOf(rawSnapshotLoad, samples.raw),
        resultOf(vmstateSnapshotLoad, samples.vmstate),
      ];
    } finally {
      // Closing any stage object of a sandbox, even a consumed one, stops its machine.
      await root.close();
    }
  },
};

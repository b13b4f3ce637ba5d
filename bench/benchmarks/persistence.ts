import { execFileSync } from 'node:child_process';
import { KernelBooted, sandboxOf, type FsSnapshotStore } from '../../src/index.js';
import { standbysSettled } from '../../src/qemu/standby-machines.js';
import { resultOf, since, type BenchGroup, type Metric, type Result } from '../benchmark.js';
import { bytesOnDisk, closeAll, ms, openBenchStore, pssMiB } from './support.js';

const persist: Metric = { name: 'persist', unit: 'ms' };
const snapshotSizeRatio: Metric = { name: 'snapshot-size-ratio', unit: 'x', target: { op: '<=', value: 0.4 } };
const warmStart: Metric = { name: 'warm-start', unit: 'ms' };
const warmStartAfterPersist: Metric = { name: 'warm-start-after-persist', unit: 'ms' };
const coldBootPaired: Metric = { name: 'cold-boot-paired', unit: 'ms' };
const warmStartNoStandby: Metric = { name: 'warm-start-no-standby', unit: 'ms' };
const warmStartPooled: Metric = { name: 'warm-start-pooled', unit: 'ms' };
const fork16: Metric = { name: 'fork-16', unit: 'ms', target: { op: '<=', value: 3_000 } };
const forkPss: Metric = { name: 'fork-pss', unit: 'MiB', target: { op: '<=', value: 40 } };

const FORK_COUNT = 16;
/** Written before each persist, so that every snapshot holds a guest state that differs from the last. */
const MARKER_PATH = '/tmp/evolvm-bench-persist-marker';
/** The snapshot warm-start and fork-16 start from. */
const TEMPLATE = 'kb';

/**
 * A KernelBooted persisted to a private store, and new sandboxes started from it:
 * - `warm-start`: `KernelBooted.fromSnapshot(store, 'kb')` until it returns (agent answered, identity
 *   refreshed), the close after it not timed; in a steady state: with the template closed (as the runtime and
 *   code stages' warm starts are measured, warm-start-stages.ts), the persists' files synced, after three untimed starts;
 * - `cold-boot-paired`: `KernelBooted.boot` until it returns, one right before each `warm-start` sample (close not
 *   timed), so that the two move with the host's phase alike: warm-start-speedup is their ratio, as the runtime
 *   and code stages' ratios are of cold and warm samples that alternate;
 * - `warm-start-after-persist` (informational): the same right after `kb` is persisted, with its template still
 *   running beside it: the host is still writing the fresh snapshot back, and the first start reads it cold;
 * - `persist`: `KernelBooted.persist(store, name)` on one booted sandbox, each after a marker write;
 * - `snapshot-size-ratio`: allocated bytes of each persisted snapshot's files / guest RAM bytes;
 * - `warm-start-pooled`: `pool.take()` from `KernelBooted.pool(store, 'kb', 2)`, each after the pool is full again
 *   (QEMU already started and waiting), until it returns; close not timed;
 * - `fork-16`: `KernelBooted.fork(store, 'kb', 16)` until all 16 are ready;
 * - `fork-pss`: each clone's QEMU PSS, read right after the fork returned (16 samples per fork).
 * The template `kb` is the first persist and is not timed (it warms the store and the page cache).
 */
export const persistenceGroup: BenchGroup = {
  metrics: [persist, snapshotSizeRatio, warmStart, coldBootPaired, warmStartNoStandby, warmStartAfterPersist, warmStartPooled, fork16, forkPss],
  async run({ runs, runDir, signal, log, wants }) {
    const samples = { persist: [] as number[], size: [] as number[], warm: [] as number[], coldPaired: [] as number[], noStandby: [] as number[], afterPersist: [] as number[], pooled: [] as number[], fork: [] as number[], pss: [] as number[] };
    const bench = await openBenchStore();
    try {
      const { store } = bench;
      const booted = await KernelBooted.boot({ runDir }, { signal });
      try {
        const ratioOf = async (info: Awaited<ReturnType<typeof booted.persist>>) => {
          const ratio = (await bytesOnDisk(info)) / (info.manifest.memoryMiB * 1024 * 1024);
          samples.size.push(ratio);
          return ratio;
        };
        await booted.writeFile(MARKER_PATH, 'template\n', { signal });
        const template = await booted.persist(store, TEMPLATE, { signal });
        log(`persist: template ${TEMPLATE} written, ${((await ratioOf(template)) * 100).toFixed(1)}% of guest RAM on disk`);
        if (wants(warmStartAfterPersist.name)) {
          const n = runs(5);
          for (let i = 1; i <= n; i++) {
            signal.throwIfAborted();
            samples.afterPersist.push(await timedWarmStart(store, runDir, signal));
            log(`warm-start-after-persist ${i}/${n}: ${ms(samples.afterPersist.at(-1)!)} ms`);
          }
        }
        if (wants(persist.name) || wants(snapshotSizeRatio.name)) {
          const n = runs(5);
          for (let i = 1; i <= n; i++) {
            signal.throwIfAborted();
            await booted.writeFile(MARKER_PATH, `persist ${i} ${Date.now()}\n`, { signal });
            const start = performance.now();
            const info = await booted.persist(store, `${TEMPLATE}-${i}`, { signal });
            samples.persist.push(since(start));
            const ratio = await ratioOf(info);
            log(`persist ${i}/${n}: ${ms(samples.persist.at(-1)!)} ms, ${(ratio * 100).toFixed(1)}% of guest RAM on disk`);
          }
        }
      } finally {
        await booted.close();
      }

      if (wants(warmStart.name) || wants(coldBootPaired.name)) {
        // Steady state: the fresh snapshots written back first (the kernel would otherwise do it beside the
        // starts), and three starts untimed. After the persists and the template's close (~400 MB of files and
        // a guest freed) the first three took 128-131 ms and the rest 83-109 even after a sync and one untimed
        // start: this VM reports freed memory to its host (free page reporting), and memory handed back costs a
        // host fault on each first touch. The cold boots and the stages' warm starts run in warm memory too.
        execFileSync('sync');
        for (let i = 0; i < 3; i++) await timedWarmStart(store, runDir, signal);
        const n = runs(9);
        for (let i = 1; i <= n; i++) {
          signal.throwIfAborted();
          // Not with the standby machine the last warm start left starting beside it (it slowed cold boots by
          // ~100 ms here): cold boots are measured alone, as in the cold-boot group.
          await standbysSettled();
          const start = performance.now();
          const booted = await KernelBooted.boot({ runDir }, { signal });
          samples.coldPaired.push(since(start));
          await booted.close();
          samples.warm.push(await timedWarmStart(store, runDir, signal));
          if (wants(warmStartNoStandby.name)) {
            // The same restore with QEMU started for it, as without standby machines (the first restore of a
            // shape, or one right after another).
            await standbysSettled();
            samples.noStandby.push(await withoutStandbys(() => timedWarmStart(store, runDir, signal)));
          }
          log(
            `warm-start ${i}/${n}: cold boot ${ms(samples.coldPaired.at(-1)!)} / warm ${ms(samples.warm.at(-1)!)} ms` +
              (samples.noStandby.length > 0 ? ` (no standby ${ms(samples.noStandby.at(-1)!)} ms)` : ''),
          );
        }
      }

      if (wants(warmStartPooled.name)) {
        const n = runs(5);
        const pool = await KernelBooted.pool(store, TEMPLATE, 2, { runDir }, { signal });
        try {
          for (let i = 1; i <= n; i++) {
            signal.throwIfAborted();
            // Timed once the pool is full again: a take as a caller that does not start sandboxes back to back sees it.
            for (let wait = 0; wait < 200 && pool.ready < pool.size; wait++) await new Promise((resolve) => setTimeout(resolve, 25));
            const start = performance.now();
            const taken = await pool.take({ signal });
            try {
              samples.pooled.push(since(start));
            } finally {
              await taken.close();
            }
            log(`warm-start-pooled ${i}/${n}: ${ms(samples.pooled.at(-1)!)} ms`);
          }
        } finally {
          await pool.close();
        }
      }

      if (wants(fork16.name) || wants(forkPss.name)) {
        const n = runs(3);
        for (let i = 1; i <= n; i++) {
          signal.throwIfAborted();
          const start = performance.now();
          const clones = await KernelBooted.fork(store, TEMPLATE, FORK_COUNT, { runDir }, { signal });
          try {
            samples.fork.push(since(start));
            const pss = await Promise.all(clones.map((clone) => pssMiB(sandboxOf(clone).machine.pid)));
            samples.pss.push(...pss);
            const sorted = [...pss].sort((a, b) => a - b);
            log(`fork-16 ${i}/${n}: ${ms(samples.fork.at(-1)!)} ms; PSS per clone ${sorted[0]!.toFixed(1)}–${sorted.at(-1)!.toFixed(1)} MiB`);
          } finally {
            await closeAll(clones);
          }
        }
      }
    } finally {
      await bench.dispose();
    }
    const results: Result[] = [];
    if (samples.persist.length > 0) results.push(resultOf(persist, samples.persist));
    results.push(resultOf(snapshotSizeRatio, samples.size));
    if (samples.warm.length > 0) results.push(resultOf(warmStart, samples.warm));
    if (samples.coldPaired.length > 0) results.push(resultOf(coldBootPaired, samples.coldPaired));
    if (samples.noStandby.length > 0) results.push(resultOf(warmStartNoStandby, samples.noStandby));
    if (samples.afterPersist.length > 0) results.push(resultOf(warmStartAfterPersist, samples.afterPersist));
    if (samples.pooled.length > 0) results.push(resultOf(warmStartPooled, samples.pooled));
    if (samples.fork.length > 0) results.push(resultOf(fork16, samples.fork), resultOf(forkPss, samples.pss));
    return results;
  },
};

/** One `KernelBooted.fromSnapshot` of the template, timed until it returns; the close after it is not. */
/** Runs `work` with standby machines turned off (EVOLVM_QEMU_STANDBY=off), as they were before. */
async function withoutStandbys<T>(work: () => Promise<T>): Promise<T> {
  const before = process.env.EVOLVM_QEMU_STANDBY;
  process.env.EVOLVM_QEMU_STANDBY = 'off';
  try {
    return await work();
  } finally {
    if (before === undefined) delete process.env.EVOLVM_QEMU_STANDBY;
    else process.env.EVOLVM_QEMU_STANDBY = before;
  }
}

async function timedWarmStart(store: FsSnapshotStore, runDir: string, signal: AbortSignal): Promise<number> {
  const start = performance.now();
  const restored = await KernelBooted.fromSnapshot(store, TEMPLATE, { runDir }, { signal });
  const took = since(start);
  await restored.close();
  return took;
}

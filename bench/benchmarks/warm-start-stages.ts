import { KernelBooted, loadCode, loadRuntime, RuntimeLoaded, UserCodeLoaded, type RuntimeKind } from '../../src/index.js';
import { standbysSettled } from '../../src/qemu/standby-machines.js';
import { resultOf, since, type BenchGroup, type Metric, type Result } from '../benchmark.js';
import { ms, openBenchStore, runtimeMissing, wasmFixture } from './support.js';

const coldBootRuntime: Metric = { name: 'cold-boot-runtime', unit: 'ms' };
const warmStartRuntime: Metric = { name: 'warm-start-runtime', unit: 'ms' };
const coldBootCode: Metric = { name: 'cold-boot-code', unit: 'ms' };
const warmStartCode: Metric = { name: 'warm-start-code', unit: 'ms' };

/** The code loaded when the guest has no wasm runtime: a shell function with arith.wasm's `add`. */
const SHELL_ADD = 'add() { echo $(($1+$2)); }';

/**
 * Deeper stages built cold and started warm, in the same run:
 * - `cold-boot-runtime`: `KernelBooted.boot` + `evolve(loadRuntime({ kind: 'wasm' }))`;
 * - `cold-boot-code`: the same, then `evolve(loadCode(arith.wasm))` (both read off one cold boot's clock);
 * - `warm-start-runtime` / `warm-start-code`: `RuntimeLoaded.fromSnapshot` / `UserCodeLoaded.fromSnapshot` of
 *   those stages persisted once (untimed) from a template sandbox; the close after each is not timed.
 * Cold and warm samples alternate, so that load on the host affects both alike. When the guest has no wasm
 * runtime (`rt_start` answers UNKNOWN_OP or ENOENT) all four use the shell runtime instead, with a note.
 */
export const warmStartStagesGroup: BenchGroup = {
  metrics: [coldBootRuntime, warmStartRuntime, coldBootCode, warmStartCode],
  async run({ runs, runDir, signal, log, wants }) {
    const wantCode = wants(coldBootCode.name) || wants(warmStartCode.name);
    const wantRuntime = wants(coldBootRuntime.name) || wants(warmStartRuntime.name);
    const arith = await wasmFixture('arith.wasm');
    let kind: RuntimeKind = 'wasm';
    let note: string | undefined;
    const samples = { coldRuntime: [] as number[], warmRuntime: [] as number[], coldCode: [] as number[], warmCode: [] as number[] };
    const bench = await openBenchStore();
    try {
      const { store } = bench;

      // The template: each stage persisted once, right after its transition.
      const template = await KernelBooted.boot({ runDir }, { signal });
      try {
        let runtime: RuntimeLoaded;
        try {
          runtime = await template.evolve(loadRuntime({ kind: 'wasm' }), { signal });
        } catch (error) {
          if (!runtimeMissing(error)) throw error;
          kind = 'shell';
          note = `guest has no wasm runtime (${(error as Error).message}): shell runtime and a shell add() used instead`;
          log(`warm-start stages: ${note}`);
          runtime = await template.evolve(loadRuntime({ kind: 'shell' }), { signal });
        }
        await runtime.persist(store, 'rt', { signal });
        if (wantCode) {
          const code = await runtime.evolve(loadCode(kind === 'wasm' ? arith : SHELL_ADD), { signal });
          await code.persist(store, 'code', { signal });
          await checkAdd(code);
        }
      } finally {
        await template.close();
      }

      const transition = { runtime: loadRuntime({ kind }), code: loadCode(kind === 'wasm' ? arith : SHELL_ADD) };
      const n = runs(5);
      for (let i = 1; i <= n; i++) {
        signal.throwIfAborted();
        // Cold boots measured alone, not beside a standby machine starting (see persistence.ts).
        await standbysSettled();
        const start = performance.now();
        const booted = await KernelBooted.boot({ runDir }, { signal });
        try {
          const runtime = await booted.evolve(transition.runtime, { signal });
          samples.coldRuntime.push(since(start));
          if (wantCode) {
            await runtime.evolve(transition.code, { signal });
            samples.coldCode.push(since(start));
          }
        } finally {
          await booted.close();
        }

        if (wantRuntime) {
          const warm = performance.now();
          const restored = await RuntimeLoaded.fromSnapshot(store, 'rt', { runDir }, { signal });
          try {
            samples.warmRuntime.push(since(warm));
          } finally {
            await restored.close();
          }
        }
        if (wantCode) {
          // Like every warm start measured here, in the library's steady state: the standby machine the runtime
          // restore asked for is up (warm-start-no-standby measures a restore without one).
          await standbysSettled();
          const warm = performance.now();
          const restored = await UserCodeLoaded.fromSnapshot(store, 'code', { runDir }, { signal });
          try {
            samples.warmCode.push(since(warm));
            if (i === 1) await checkAdd(restored); // untimed: the restored code still answers
          } finally {
            await restored.close();
          }
        }
        const last = (values: number[]) => (values.length > 0 ? ms(values.at(-1)!) : '-');
        log(
          `warm-start stages ${i}/${n} (${kind}): runtime cold ${last(samples.coldRuntime)} / warm ${last(samples.warmRuntime)} ms, ` +
            `code cold ${last(samples.coldCode)} / warm ${last(samples.warmCode)} ms`,
        );
      }
    } finally {
      await bench.dispose();
    }
    const results: Result[] = [];
    if (wantRuntime) results.push(resultOf(coldBootRuntime, samples.coldRuntime, note), resultOf(warmStartRuntime, samples.warmRuntime, note));
    if (wantCode) results.push(resultOf(coldBootCode, samples.coldCode, note), resultOf(warmStartCode, samples.warmCode, note));
    return results;
  },
};

/** @throws {Error} when `add(2, 3)` does not give 5 (as a number from wasm, as text from the shell). */
async function checkAdd(code: UserCodeLoaded): Promise<void> {
  const sum = await code.call('add', 2, 3);
  if (String(sum).trim() !== '5') throw new Error(`add(2, 3) gave ${JSON.stringify(sum)}`);
}

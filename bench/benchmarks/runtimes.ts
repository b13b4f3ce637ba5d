import { z } from 'zod';
import { defineHostFunction, KernelBooted, loadCode, loadRuntime, type RuntimeLoaded, type UserCodeLoaded } from '../../src/index.js';
import { resultOf, since, type BenchContext, type BenchGroup, type Metric, type Result } from '../benchmark.js';
import { ms, rtStartFailure, wasmFixture } from './support.js';

const hotSwap: Metric = { name: 'hot-swap', unit: 'ms' };
const coldPath: Metric = { name: 'cold-path', unit: 'ms' };
const callRtt: Metric = { name: 'call-rtt', unit: 'ms', target: { op: '<=', value: 0.5 } };
const callsPerSecond: Metric = { name: 'calls-per-second', unit: '1/s', target: { op: '>=', value: 3_000 } };
const hostFnRtt: Metric = { name: 'host-fn-rtt', unit: 'ms' };
const callsPerSecondPipelined: Metric = { name: 'calls-per-second-pipelined', unit: '1/s' };
/** Calls in flight at once for calls-per-second-pipelined (a host serving concurrent requests). */
const PIPELINE_DEPTH = 8;

/** Untimed calls before each timed series, so the agent, the runtime and TCG's code cache are warm. */
const CALL_WARM_UP = 50;
const HOST_FN_WARM_UP = 20;
/** calls-per-second counts sequential calls for this long in all, split into `runs` windows (one sample each). */
const CALLS_PER_SECOND_MS = 2_000;

/** `host.double` for hostcall.wasm, whose `quadruple` calls it twice. */
const double = defineHostFunction({
  name: 'double',
  params: z.tuple([z.number().int()]),
  result: z.number().int(),
  wasm: { params: ['i32'], results: ['i32'] },
  impl: (x) => x * 2,
});

/**
 * The guest's wasm runtime, on one sandbox (booted with `host.double`) and then on cold ones:
 * - `call-rtt`: `call('noop')` on arith.wasm, after 50 untimed;
 * - `calls-per-second`: sequential `call('add', i, 1)` for ~2 s, as `runs` windows, each window's rate one sample;
 * - `calls-per-second-pipelined`: the same, with 8 calls in flight at all times (the agent queues them for the
 *   runtime, which runs one at a time): what one sandbox serves to concurrent callers;
 * - `hot-swap`: from UserCodeLoaded, `devolve()` + `evolve(loadCode(...))` + the first call, alternating
 *   counter.wasm (`increment`) and arith.wasm (`add`); one untimed cycle first;
 * - `host-fn-rtt`: hostcall.wasm's `quadruple`, which calls `host.double` twice: each call's time / 2, after 20
 *   untimed (an upper bound: it includes the `quadruple` call's own round trip);
 * - `cold-path`: `KernelBooted.boot` + `loadRuntime({ kind: 'wasm' })` + `loadCode(arith.wasm)` + `call('add')`,
 *   each on a new sandbox, run between the hot swaps (the swapping sandbox idle meanwhile).
 * When `rt_start` fails (no wasm runtime in the guest) the group says so on stderr and reports nothing.
 */
export const runtimesGroup: BenchGroup = {
  metrics: [hotSwap, coldPath, callRtt, callsPerSecond, callsPerSecondPipelined, hostFnRtt],
  async run(context) {
    const { runs, runDir, signal, log, wants } = context;
    const modules = { arith: await wasmFixture('arith.wasm'), counter: await wasmFixture('counter.wasm'), hostcall: await wasmFixture('hostcall.wasm') };
    const samples = { rtt: [] as number[], rate: [] as number[], piped: [] as number[], swap: [] as number[], hostFn: [] as number[], cold: [] as number[] };

    const booted = await KernelBooted.boot({ runDir }, { signal, hostFunctions: [double] });
    try {
      let runtime: RuntimeLoaded;
      try {
        runtime = await booted.evolve(loadRuntime({ kind: 'wasm' }), { signal });
      } catch (error) {
        const failure = rtStartFailure(error);
        if (!failure) throw error;
        log(`SKIP ${runtimesGroup.metrics.map((m) => m.name).join(', ')}: the guest's wasm runtime did not start (${failure.guestCode}: ${failure.detail})`);
        return [];
      }
      log(`wasm runtime ${runtime.runtime.version} (guest pid ${runtime.runtime.pid})`);
      let code = await runtime.evolve(loadCode(modules.arith), { signal });
      await expectResult(code.call('add', 2, 3), 5, 'arith add(2, 3)');

      if (wants(callRtt.name)) {
        const n = runs(500);
        for (let i = 0; i < CALL_WARM_UP; i++) await code.call('noop');
        for (let i = 0; i < n; i++) {
          const start = performance.now();
          await code.call('noop');
          samples.rtt.push(since(start));
        }
        log(`call-rtt: ${n} noop calls, median ${resultOf(callRtt, samples.rtt).median.toFixed(3)} ms`);
      }

      if (wants(callsPerSecond.name)) {
        const windows = runs(10);
        const windowMs = CALLS_PER_SECOND_MS / windows;
        for (let i = 0; i < CALL_WARM_UP; i++) await code.call('add', i, 1);
        let total = 0;
        for (let w = 0; w < windows; w++) {
          signal.throwIfAborted();
          let calls = 0;
          const start = performance.now();
          let elapsed = 0;
          while (elapsed < windowMs) {
            await code.call('add', calls, 1);
            calls++;
            elapsed = since(start);
          }
          samples.rate.push(calls / (elapsed / 1000));
          total += calls;
        }
        log(`calls-per-second: ${total} add calls in ${windows} windows of ${windowMs.toFixed(0)} ms, median ${resultOf(callsPerSecond, samples.rate).median.toFixed(0)}/s`);
      }

      if (wants(callsPerSecondPipelined.name)) {
        const windows = runs(10);
        const windowMs = CALLS_PER_SECOND_MS / windows;
        let total = 0;
        for (let w = 0; w < windows; w++) {
          signal.throwIfAborted();
          let calls = 0;
          const start = performance.now();
          const worker = async () => {
            while (since(start) < windowMs) {
              await code.call('add', calls, 1);
              calls++;
            }
          };
          await Promise.all(Array.from({ length: PIPELINE_DEPTH }, worker));
          samples.piped.push(calls / (since(start) / 1000));
          total += calls;
        }
        log(`calls-per-second-pipelined: ${total} add calls, ${PIPELINE_DEPTH} in flight, median ${resultOf(callsPerSecondPipelined, samples.piped).median.toFixed(0)}/s`);
      }

      if (wants(hotSwap.name)) {
        const swaps = [
          { transition: loadCode(modules.counter), call: (c: UserCodeLoaded) => expectResult(c.call('increment'), 1, 'counter increment()') },
          { transition: loadCode(modules.arith), call: (c: UserCodeLoaded) => expectResult(c.call('add', 2, 3), 5, 'arith add(2, 3)') },
        ];
        const n = runs(10);
        // The cold paths run between the swaps, so that the host's phase (which drifts by tens of % within a
        // run here) moves both sides of hot-swap-speedup alike; this sandbox waits, idle, meanwhile.
        const colds = wants(coldPath.name) ? runs(3) : 0;
        const coldAfter = new Set(Array.from({ length: colds }, (_, k) => Math.round(((k + 1) * n) / (colds + 1))));
        for (let i = 0; i <= n; i++) {
          signal.throwIfAborted();
          const swap = swaps[i % 2]!;
          const start = performance.now();
          const parent = await code.devolve({ signal });
          code = await parent.evolve(swap.transition, { signal });
          await swap.call(code);
          if (i > 0) samples.swap.push(since(start)); // the first cycle is a warm-up
          if (coldAfter.has(i)) samples.cold.push(await coldPathOnce(context, modules.arith, samples.cold.length + 1, colds));
        }
        log(`hot-swap: ${n} swaps, ${samples.swap.map(ms).join('/')} ms`);
      }

      if (wants(hostFnRtt.name)) {
        code = await (await code.devolve({ signal })).evolve(loadCode(modules.hostcall), { signal });
        const n = runs(200);
        for (let i = 0; i < HOST_FN_WARM_UP; i++) await expectResult(code.call('quadruple', i), 4 * i, `quadruple(${i})`);
        for (let i = 0; i < n; i++) {
          const start = performance.now();
          const value = await code.call('quadruple', i);
          samples.hostFn.push(since(start) / 2);
          if (value !== 4 * i) throw new Error(`quadruple(${i}) gave ${JSON.stringify(value)}`);
        }
        log(`host-fn-rtt: ${n} quadruple calls, median ${resultOf(hostFnRtt, samples.hostFn).median.toFixed(3)} ms per host call`);
      }
    } finally {
      await booted.close();
    }

    // Without hot swaps to interleave with (--only cold-path), one after another.
    if (wants(coldPath.name) && samples.cold.length === 0) {
      const n = runs(3);
      for (let i = 1; i <= n; i++) samples.cold.push(await coldPathOnce(context, modules.arith, i, n));
    }

    const results: Result[] = [];
    if (samples.swap.length > 0) results.push(resultOf(hotSwap, samples.swap));
    if (samples.cold.length > 0) results.push(resultOf(coldPath, samples.cold));
    if (samples.rtt.length > 0) results.push(resultOf(callRtt, samples.rtt));
    if (samples.rate.length > 0) results.push(resultOf(callsPerSecond, samples.rate));
    if (samples.piped.length > 0) results.push(resultOf(callsPerSecondPipelined, samples.piped));
    if (samples.hostFn.length > 0) results.push(resultOf(hostFnRtt, samples.hostFn));
    return results;
  },
};

/** Boot to first answer, on a new sandbox: boot + loadRuntime(wasm) + loadCode(arith.wasm) + `add(2, 3)`. */
async function coldPathOnce({ runDir, signal, log }: BenchContext, arith: Buffer, index: number, of: number): Promise<number> {
  signal.throwIfAborted();
  const start = performance.now();
  const booted = await KernelBooted.boot({ runDir }, { signal });
  let took: number;
  try {
    const code = await (await booted.evolve(loadRuntime({ kind: 'wasm' }), { signal })).evolve(loadCode(arith), { signal });
    await expectResult(code.call('add', 2, 3), 5, 'arith add(2, 3)');
    took = since(start);
  } finally {
    await booted.close();
  }
  log(`cold-path ${index}/${of}: ${ms(took)} ms`);
  return took;
}

/** @throws {Error} when the call's result is not `expected`. */
async function expectResult(call: Promise<unknown>, expected: number, what: string): Promise<void> {
  const value = await call;
  if (value !== expected) throw new Error(`${what} gave ${JSON.stringify(value)}, expected ${expected}`);
}

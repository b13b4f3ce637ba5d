import { Machine } from '../../src/index.js';
import { resultOf, since, type BenchGroup, type Metric } from '../benchmark.js';

const coldBoot: Metric = { name: 'cold-boot', unit: 'ms', target: { op: '<=', value: 1_500 } };

/** `Machine.boot()` as a caller sees it: run directory, scratch disk, spawn, QMP, agent hello. */
export const coldBootGroup: BenchGroup = {
  metrics: [coldBoot],
  async run({ runs, runDir, signal, log }) {
    const n = runs(5);
    const samples: number[] = [];
    for (let i = 0; i < n; i++) {
      signal.throwIfAborted();
      const start = performance.now();
      const vm = await Machine.boot({ runDir }, { signal });
      try {
        samples.push(since(start));
      } finally {
        await vm.stop();
      }
      log(`cold-boot ${i + 1}/${n}: ${samples.at(-1)!.toFixed(0)} ms`);
    }
    return [resultOf(coldBoot, samples)];
  },
};

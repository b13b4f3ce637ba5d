import { Machine } from '../../src/index.js';
import { resultOf, since, type BenchGroup, type Metric } from '../benchmark.js';

const pingRtt: Metric = { name: 'ping-rtt', unit: 'ms', target: { op: '<=', value: 0.5 } };

/** Untimed round trips first, so the guest agent's code is in TCG's cache and the socket is warm. */
const WARM_UP = 50;

/** One agent round trip (`vm.ping()`), back to back on one booted machine. */
export const pingGroup: BenchGroup = {
  metrics: [pingRtt],
  async run({ runs, runDir, signal, log }) {
    const n = runs(500);
    const vm = await Machine.boot({ runDir }, { signal });
    try {
      for (let i = 0; i < WARM_UP; i++) await vm.ping({ signal });
      const samples: number[] = [];
      for (let i = 0; i < n; i++) {
        const start = performance.now();
        await vm.ping({ signal });
        samples.push(since(start));
      }
      const result = resultOf(pingRtt, samples);
      log(`ping-rtt: ${n} round trips, median ${result.median.toFixed(3)} ms`);
      return [result];
    } finally {
      await vm.stop();
    }
  },
};

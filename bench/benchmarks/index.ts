import type { BenchGroup, Ratio } from '../benchmark.js';
import { coldBootGroup } from './cold-boot.js';
import { lineageGroup } from './lineage.js';
import { persistenceGroup } from './persistence.js';
import { pingGroup } from './ping.js';
import { runtimesGroup } from './runtimes.js';
import { warmStartStagesGroup } from './warm-start-stages.js';

/** Measured benchmarks, in the order they run and are reported. The runtimes, which need the guest's wasm runtime, come last. */
export const groups: readonly BenchGroup[] = [coldBootGroup, pingGroup, lineageGroup, persistenceGroup, warmStartStagesGroup, runtimesGroup];

/** Results computed from two measured ones in the same run. */
export const ratios: readonly Ratio[] = [
  // What the stage layer adds on top of the QMP job it wraps.
  { name: 'devolve-overhead', unit: 'x', target: { op: '<=', value: 1.1 }, numerator: 'devolve', denominator: 'raw-snapshot-load' },
  // How much faster going back to KernelBooted is than booting again (higher is better).
  { name: 'devolve-vs-cold', unit: 'x', numerator: 'cold-boot', denominator: 'devolve' },
  // How much faster starting a stage from a persisted snapshot is than building it from a cold boot: each from
  // cold and warm samples taken alternately, so that the host's phase (which drifts by tens of % within a run
  // here) moves both alike.
  { name: 'warm-start-speedup', unit: 'x', target: { op: '>=', value: 15 }, numerator: 'cold-boot-paired', denominator: 'warm-start' },
  // The same without a standby machine (QEMU started for the restore): informational.
  { name: 'warm-start-speedup-no-standby', unit: 'x', numerator: 'cold-boot-paired', denominator: 'warm-start-no-standby' },
  // The same with QEMU started ahead of need (a warm pool): informational, the target is for warm-start.
  { name: 'warm-start-speedup-pooled', unit: 'x', numerator: 'cold-boot', denominator: 'warm-start-pooled' },
  { name: 'warm-start-speedup-runtime', unit: 'x', target: { op: '>=', value: 15 }, numerator: 'cold-boot-runtime', denominator: 'warm-start-runtime' },
  { name: 'warm-start-speedup-code', unit: 'x', target: { op: '>=', value: 15 }, numerator: 'cold-boot-code', denominator: 'warm-start-code' },
  // Swapping the loaded code in place against building the same from a cold boot.
  { name: 'hot-swap-speedup', unit: 'x', target: { op: '>=', value: 25 }, numerator: 'cold-path', denominator: 'hot-swap' },
];

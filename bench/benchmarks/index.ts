import type { BenchGroup, Ratio } from '../benchmark.js';
import { coldBootGroup } from './cold-boot.js';
import { lineageGroup } from './lineage.js';
import { pingGroup } from './ping.js';

/** Measured benchmarks, in the order they run and are reported. */
export const groups: readonly BenchGroup[] = [coldBootGroup, pingGroup, lineageGroup];

/** Results computed from two measured ones in the same run. */
export const ratios: readonly Ratio[] = [
  // What the stage layer adds on top of the QMP job it wraps.
  { name: 'devolve-overhead', unit: 'x', target: { op: '<=', value: 1.1 }, numerator: 'devolve', denominator: 'raw-snapshot-load' },
  // How much faster going back to KernelBooted is than booting again (higher is better).
  { name: 'devolve-vs-cold', unit: 'x', numerator: 'cold-boot', denominator: 'devolve' },
];

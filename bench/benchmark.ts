/** What every benchmark group and the runner share. */
import { summarize } from './stats.js';

export type Unit = 'ms' | 'x';

/** A goal a result should meet: at most (`<=`) or at least (`>=`) `value`, compared with the median. */
export interface Target {
  readonly op: '<=' | '>=';
  readonly value: number;
}

/** One line of the JSON report. */
export interface Result {
  readonly name: string;
  readonly unit: Unit;
  readonly median: number;
  readonly p95: number;
  readonly runs: number;
}

/** What a result means, and its target if it has one. */
export interface Metric {
  readonly name: string;
  readonly unit: Unit;
  readonly target?: Target;
}

export interface BenchContext {
  /** The run count to use: `--runs` when given, else the benchmark's own default. */
  runs(defaultRuns: number): number;
  /** Parent folder for every machine's run directory, so leftovers are easy to find. */
  readonly runDir: string;
  /** Fires on Ctrl-C: stop measuring, clean up. */
  readonly signal: AbortSignal;
  /** Progress, to stderr. */
  log(message: string): void;
}

/** Benchmarks that share a machine: one file under `benchmarks/`, measured together. */
export interface BenchGroup {
  readonly metrics: readonly Metric[];
  run(context: BenchContext): Promise<Result[]>;
}

/** A result computed from two measured ones: `numerator / denominator`, for the median and for p95. */
export interface Ratio extends Metric {
  readonly unit: 'x';
  readonly numerator: string;
  readonly denominator: string;
}

/** Milliseconds since `start` (a `performance.now()` reading). */
export function since(start: number): number {
  return performance.now() - start;
}

/** The result of `metric` from its samples. */
export function resultOf(metric: Metric, samples: readonly number[]): Result {
  return { name: metric.name, unit: metric.unit, ...summarize(samples) };
}

/** What every benchmark group and the runner share. */
import { summarize } from './stats.js';

/** Milliseconds, a ratio, mebibytes, or a rate per second. */
export type Unit = 'ms' | 'x' | 'MiB' | '1/s';

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
  /** Set when the figure was not measured exactly as its description says (e.g. a fallback runtime). */
  readonly note?: string;
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
  /**
   * Whether this run reports `name` or a ratio built on it. A group may skip the work of metrics nobody
   * asked for (`--only`); what it measures anyway is left out of the report.
   */
  wants(name: string): boolean;
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

/** The result of `metric` from its samples, with `note` when given. */
export function resultOf(metric: Metric, samples: readonly number[], note?: string): Result {
  return { name: metric.name, unit: metric.unit, ...summarize(samples), ...(note ? { note } : {}) };
}

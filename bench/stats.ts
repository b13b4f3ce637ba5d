/** A summary of one benchmark's samples. */
export interface Summary {
  readonly median: number;
  readonly p95: number;
  readonly runs: number;
}

/**
 * Median and 95th percentile (nearest rank: the smallest sample with at least 95% of samples at or below it).
 * @throws {RangeError} when there are no samples.
 */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new RangeError('summarize needs at least one sample');
  const sorted = [...samples].sort((a, b) => a - b);
  return { median: percentile(sorted, 50), p95: percentile(sorted, 95), runs: sorted.length };
}

function percentile(sorted: readonly number[], p: number): number {
  if (p === 50) {
    const mid = sorted.length >> 1;
    return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  }
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

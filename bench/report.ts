import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Metric, Result, Target } from './benchmark.js';

/** Where the machine stood while the benchmarks ran: the figures are only comparable with the same. */
export interface RunInfo {
  readonly date: string;
  readonly host: string;
  readonly cpu: string;
  readonly cpus: number;
  readonly node: string;
  readonly qemu: string;
  readonly accel: 'kvm' | 'tcg';
  /** 1-minute load average before and after: other QEMU work on the host makes the figures noisy. */
  readonly load1m: readonly [number, number];
  readonly runsOverride: number | null;
}

/** The JSON report: `results` in the documented shape, `run` describing the machine. */
export interface Report {
  readonly results: readonly Result[];
  readonly run: RunInfo;
}

export function toJson(report: Report): string {
  return `${JSON.stringify({ results: report.results.map(rounded), run: report.run }, null, 2)}\n`;
}

/**
 * Writes the report to `<dir>/latest.json` and a copy named after its date. Each file is written under a
 * staging name and renamed into place, so a reader never sees half a report.
 */
export async function saveReport(dir: string, report: Report): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const json = toJson(report);
  const dated = `${report.run.date.replace(/[:.]/g, '-')}.json`;
  const paths = [join(dir, 'latest.json'), join(dir, dated)];
  for (const path of paths) {
    await writeFile(`${path}.tmp`, json);
    await rename(`${path}.tmp`, path);
  }
  return paths;
}

/** The human-readable table: one row per result. */
export function toTable(results: readonly Result[], metrics: ReadonlyMap<string, Metric>): string {
  const header = ['name', 'unit', 'median', 'p95', 'runs', 'target', 'met?'];
  const rows = results.map((result) => {
    const target = metrics.get(result.name)?.target;
    return [
      result.name,
      result.unit,
      format(result.median),
      format(result.p95),
      String(result.runs),
      target ? `${target.op} ${target.value}` : '-',
      target ? (meets(result.median, target) ? 'yes' : 'NO') : '-',
    ];
  });
  const widths = header.map((_, column) => Math.max(...[header, ...rows].map((row) => row[column]!.length)));
  const line = (row: string[]) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  const notes = results.flatMap((result) => (result.note ? [`note: ${result.name}: ${result.note}`] : []));
  return [line(header), line(widths.map((width) => '-'.repeat(width))), ...rows.map(line), ...notes].join('\n') + '\n';
}

export function meets(value: number, target: Target): boolean {
  return target.op === '<=' ? value <= target.value : value >= target.value;
}

function rounded(result: Result): Result {
  return { ...result, median: round(result.median), p95: round(result.p95) };
}

/** Three decimals: microsecond resolution for milliseconds, enough for ratios, MiB and rates. */
function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}

function format(value: number): string {
  return value < 10 ? value.toFixed(3) : value < 1000 ? value.toFixed(1) : value.toFixed(0);
}

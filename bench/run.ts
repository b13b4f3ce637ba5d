/**
 * evolvm's benchmarks. `npm run bench -- [--only NAME[,NAME]] [--runs N] [--json]`
 *
 * Progress goes to stderr. stdout gets the table, or with `--json` nothing but the JSON report. The JSON is
 * always written to bench/results/latest.json and a dated copy as well.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { cpus, hostname, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect, parseArgs } from 'node:util';
import { kvmUsable } from '../src/qemu/accel.js';
import { closeStandbyMachines } from '../src/qemu/standby-machines.js';
import type { BenchContext, Metric, Ratio, Result } from './benchmark.js';
import { groups, ratios } from './benchmarks/index.js';
import { saveReport, toJson, toTable, type RunInfo } from './report.js';

const RESULTS_DIR = join(import.meta.dirname, 'results');
const USAGE = `usage: npm run -s bench -- [--only NAME[,NAME]] [--runs N] [--json]
  --only   run only these benchmarks (and what their ratios need); names: ${allMetrics().map((m) => m.name).join(', ')}
  --runs   timed iterations of every benchmark, instead of each one's default
  --json   print only the JSON report to stdout (progress stays on stderr)`;

interface Options {
  readonly only: ReadonlySet<string> | undefined;
  readonly runs: number | undefined;
  readonly json: boolean;
}

function allMetrics(): Metric[] {
  return [...groups.flatMap((group) => group.metrics), ...ratios];
}

function isRatio(metric: Metric): metric is Ratio {
  return (ratios as readonly Metric[]).includes(metric);
}

/** @throws {Error} naming the option and the value it got. */
function parseOptions(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: { only: { type: 'string' }, runs: { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) return 'help';
  const known = new Set(allMetrics().map((metric) => metric.name));
  let only: Set<string> | undefined;
  if (values.only !== undefined) {
    only = new Set(values.only.split(',').map((name) => name.trim()).filter(Boolean));
    const unknown = [...only].filter((name) => !known.has(name));
    if (only.size === 0 || unknown.length > 0) throw new Error(`--only: unknown benchmark ${JSON.stringify(unknown.join(',') || values.only)}`);
  }
  let runs: number | undefined;
  if (values.runs !== undefined) {
    runs = Number(values.runs);
    if (!Number.isSafeInteger(runs) || runs < 1) throw new Error(`--runs: expected a positive integer, got ${JSON.stringify(values.runs)}`);
  }
  return { only, runs, json: values.json };
}

async function main(): Promise<number> {
  let options: Options | 'help';
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`bench: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (options === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const { only, runs } = options;
  const selected = allMetrics().filter((metric) => !only || only.has(metric.name));
  // A ratio needs both of its inputs measured in this run.
  const needed = new Set(selected.flatMap((metric) => (isRatio(metric) ? [metric.numerator, metric.denominator] : [metric.name])));

  const interrupt = new AbortController();
  const onSignal = () => {
    if (interrupt.signal.aborted) process.exit(130);
    process.stderr.write('bench: interrupted, stopping machines (again to force)\n');
    interrupt.abort(new Error('interrupted'));
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);

  const load1mBefore = loadavg()[0]!;
  const runDir = await mkdtemp(join(tmpdir(), 'evolvm-bench-'));
  const context: BenchContext = {
    runs: (defaultRuns) => runs ?? defaultRuns,
    runDir,
    signal: interrupt.signal,
    log: (message) => process.stderr.write(`[bench] ${message}\n`),
    wants: (name) => needed.has(name),
  };

  const measured = new Map<string, Result>();
  let failed = false;
  try {
    for (const group of groups) {
      if (!group.metrics.some((metric) => needed.has(metric.name))) continue;
      if (interrupt.signal.aborted) break;
      const names = group.metrics.map((metric) => metric.name).join(', ');
      context.log(`running ${names}`);
      try {
        for (const result of await group.run(context)) measured.set(result.name, result);
      } catch (error) {
        failed = true;
        // After Ctrl-C whatever was in flight fails with the abort: not worth a stack trace.
        if (!interrupt.signal.aborted) process.stderr.write(`bench: ${names} failed: ${inspect(error, { depth: 4 })}\n`);
      }
    }
  } finally {
    // The standby machines restores left waiting (src/qemu/standby-machines.ts) are the library's, not leaks.
    await closeStandbyMachines();
    if (!(await noMachineLeft(runDir))) failed = true;
  }

  // A partial run must not replace the last complete report.
  if (interrupt.signal.aborted) {
    context.log('interrupted: no report written');
    return 130;
  }
  for (const ratio of ratios) {
    const [a, b] = [measured.get(ratio.numerator), measured.get(ratio.denominator)];
    if (!a || !b) continue;
    // A ratio inherits its inputs' notes (a fallback in either changes what it compares).
    const note = [...new Set([a.note, b.note].filter((text): text is string => Boolean(text)))].join('; ');
    measured.set(ratio.name, {
      name: ratio.name,
      unit: 'x',
      median: a.median / b.median,
      p95: a.p95 / b.p95,
      runs: Math.min(a.runs, b.runs),
      ...(note ? { note } : {}),
    });
  }
  const results = selected.flatMap((metric) => measured.get(metric.name) ?? []);
  const report = { results, run: runInfo(load1mBefore, runs) };
  const written = await saveReport(RESULTS_DIR, report);
  if (options.json) {
    process.stdout.write(toJson(report));
  } else {
    process.stdout.write(toTable(results, new Map(allMetrics().map((metric) => [metric.name, metric]))));
  }
  context.log(`wrote ${written.join(' and ')}`);
  return failed ? 1 : 0;
}

/** Waits briefly for every QEMU this run started to be gone, then removes the run folder. Reports leftovers. */
async function noMachineLeft(runDir: string): Promise<boolean> {
  let left: string[] = [];
  for (let i = 0; i < 50; i++) {
    left = qemuUnder(runDir);
    if (left.length === 0 && (await readdir(runDir)).length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const files = await readdir(runDir);
  if (left.length > 0 || files.length > 0) {
    process.stderr.write(`bench: left behind under ${runDir}:\n${[...left, ...files].join('\n')}\n`);
    return false;
  }
  await rm(runDir, { recursive: true, force: true });
  return true;
}

function qemuUnder(dir: string): string[] {
  try {
    return execFileSync('pgrep', ['-a', '-f', `qemu-system.*${dir}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

function runInfo(load1mBefore: number, runs: number | undefined): RunInfo {
  let qemu = 'unknown';
  try {
    qemu = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    // reported as unknown
  }
  return {
    date: new Date().toISOString(),
    host: hostname(),
    cpu: cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    node: process.version,
    qemu,
    accel: kvmUsable() ? 'kvm' : 'tcg',
    load1m: [load1mBefore, loadavg()[0]!],
    runsOverride: runs ?? null,
  };
}

process.exitCode = await main();

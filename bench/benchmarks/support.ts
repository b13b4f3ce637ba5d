/** What the persistence and runtime benchmarks share: a private snapshot store, fixtures, guest-error checks. */
import { readFile, readdir, rm, mkdtemp, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsSnapshotStore, GuestOperationError, type SnapshotInfo, type Stage } from '../../src/index.js';

const WASM_FIXTURES = join(import.meta.dirname, '..', '..', 'test', 'fixtures', 'wasm');

/** A compiled module from test/fixtures/wasm (its .wat source lies beside it). */
export function wasmFixture(name: string): Promise<Buffer> {
  return readFile(join(WASM_FIXTURES, name));
}

/** A snapshot store in a fresh temp folder of its own, removed by `dispose`. */
export interface BenchStore extends AsyncDisposable {
  readonly store: FsSnapshotStore;
  dispose(): Promise<void>;
}

export async function openBenchStore(): Promise<BenchStore> {
  const dir = await mkdtemp(join(tmpdir(), 'evolvm-bench-store-'));
  try {
    const store = await FsSnapshotStore.open(dir);
    const dispose = () => rm(dir, { recursive: true, force: true });
    return { store, dispose, [Symbol.asyncDispose]: dispose };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** Bytes the snapshot's files take on disk (allocated blocks, so the holes of the sparse RAM image count 0). */
export async function bytesOnDisk(info: SnapshotInfo): Promise<number> {
  let total = 0;
  for (const entry of await readdir(info.dir)) total += (await stat(join(info.dir, entry))).blocks * 512;
  return total;
}

/** A process's proportional set size in MiB, from /proc/<pid>/smaps_rollup. */
export async function pssMiB(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kib = /^Pss:\s+(\d+) kB$/m.exec(text)?.[1];
  if (kib === undefined) throw new Error(`no Pss line in /proc/${pid}/smaps_rollup`);
  return Number(kib) / 1024;
}

/**
 * The `rt_start` failure inside `error` (a failed `loadRuntime` wraps it in a TransitionFailedError), if
 * that is what it is: the guest has no such runtime (`UNKNOWN_OP`: an agent without runtimes; `ENOENT`: no
 * runtime.conf) or could not start it.
 */
export function rtStartFailure(error: unknown): GuestOperationError | undefined {
  for (let e: unknown = error; e instanceof Error; e = e.cause) {
    if (e instanceof GuestOperationError && e.operation === 'rt_start') return e;
  }
  return undefined;
}

/** Whether the guest simply lacks the runtime (as opposed to a runtime that is there and broke). */
export function runtimeMissing(error: unknown): boolean {
  const failure = rtStartFailure(error);
  return failure !== undefined && (failure.guestCode === 'UNKNOWN_OP' || failure.guestCode === 'ENOENT');
}

/** Closes every stage given (each stops its sandbox's machine); the first error is thrown after all are tried. */
export async function closeAll(stages: readonly Stage[]): Promise<void> {
  const results = await Promise.allSettled(stages.map((stage) => stage.close()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Milliseconds as a short string for progress lines. */
export function ms(value: number): string {
  return value < 10 ? value.toFixed(2) : value.toFixed(0);
}

import { availableParallelism } from 'node:os';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConfigInvalidError, KernelBooted, Sandbox, type SnapshotStore } from '../../src/index.js';

// Sandbox.restore stands in for a real restore (persist.test.ts forks real clones): what is checked here is how
// fork schedules restores, which a real one makes slow and noisy to observe.
const store = {} as SnapshotStore;

/** Counts of the stand-in restores: how many started, how many ran at once at most, how many were undone. */
interface Stats {
  started: number;
  inFlight: number;
  maxInFlight: number;
  undone: number;
}

/** A stand-in restore that takes a few ms, counted in `stats`; `fails(index)` says which ones throw. */
function standIn<T>(stats: Stats, fails: (index: number) => boolean, result: (index: number) => T): () => Promise<T> {
  return async () => {
    const index = stats.started++;
    stats.inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    await new Promise((resolve) => setTimeout(resolve, 5));
    stats.inFlight--;
    if (fails(index)) throw new Error(`restore ${index} failed`);
    return result(index);
  };
}

function fakeRestores(options: { failAt?: number } = {}): Stats {
  const stats: Stats = { started: 0, inFlight: 0, maxInFlight: 0, undone: 0 };
  const clone = (index: number) => ({ index, close: async () => void stats.undone++ }) as never;
  vi.spyOn(Sandbox, 'restore').mockImplementation(standIn(stats, (index) => index === options.failAt, clone));
  return stats;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('a fork', () => {
  it('runs at most `concurrency` restores at once and returns every clone', async () => {
    const stats = fakeRestores();
    const clones = await KernelBooted.fork(store, 'template', 7, {}, { concurrency: 3 });
    expect(clones).toHaveLength(7);
    expect(stats.started).toBe(7);
    expect(stats.maxInFlight).toBe(3);
  });

  it('runs as many at once as the host has CPUs by default', async () => {
    const stats = fakeRestores();
    const count = availableParallelism() + 2;
    await KernelBooted.fork(store, 'template', count);
    expect(stats.maxInFlight).toBe(availableParallelism());
  });

  it('starts no more restores after one fails, closes the clones it made, and throws the failure', async () => {
    const stats = fakeRestores({ failAt: 2 });
    await expect(KernelBooted.fork(store, 'template', 10, {}, { concurrency: 2 })).rejects.toThrow('restore 2 failed');
    // The one that failed, and the one running beside it; nothing after.
    expect(stats.started).toBe(4);
    expect(stats.undone).toBe(3);
  });

  it('aborts the restores in progress when one fails', async () => {
    const signals: AbortSignal[] = [];
    vi.spyOn(Sandbox, 'restore').mockImplementation(async (_stage, _store, _ref, _input, options) => {
      const signal = options!.signal!;
      signals.push(signal);
      if (signals.length === 1) throw new Error('restore 0 failed');
      // The second runs until aborted (a real restore rejects with the abort reason).
      await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
      return undefined as never;
    });
    await expect(KernelBooted.fork(store, 'template', 2, {}, { concurrency: 2 })).rejects.toThrow('restore 0 failed');
    expect(signals).toHaveLength(2);
    expect(signals[1]!.aborted).toBe(true);
  });

  it('returns no clones for a count of 0', async () => {
    const stats = fakeRestores();
    await expect(KernelBooted.fork(store, 'template', 0)).resolves.toEqual([]);
    expect(stats.started).toBe(0);
  });

  it.each([
    ['count', -1, {}],
    ['count', 1.5, {}],
    ['concurrency', 2, { concurrency: 0 }],
    ['concurrency', 2, { concurrency: Number.NaN }],
  ])('refuses a bad %s with ConfigInvalidError before restoring anything', async (path, count, options) => {
    const stats = fakeRestores();
    const error = await KernelBooted.fork(store, 'template', count, {}, options).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigInvalidError);
    expect((error as ConfigInvalidError).issues[0]?.path).toBe(path);
    expect(stats.started).toBe(0);
  });
});

function fakePreparations(options: { failFrom?: number } = {}): Stats {
  const stats: Stats = { started: 0, inFlight: 0, maxInFlight: 0, undone: 0 };
  vi.spyOn(Sandbox, 'prepareRestore').mockImplementation(standIn(stats, (index) => index >= (options.failFrom ?? Infinity), () => ({}) as never));
  vi.spyOn(Sandbox, 'runPrepared').mockImplementation(async () => ({ running: { exitError: undefined, stop: async () => void stats.undone++ } }) as never);
  return stats;
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 2));
  expect(condition()).toBe(true);
}

describe('a warm pool', () => {
  it('fills with at most `concurrency` restores at a time, up to its size', async () => {
    const stats = fakePreparations();
    const pool = await KernelBooted.pool(store, 'template', 7, {}, { concurrency: 2 });
    await until(() => pool.ready === 7);
    expect(stats.started).toBe(7);
    expect(stats.maxInFlight).toBe(2);
    await pool.close();
    expect(stats.undone).toBe(7);
  });

  it('fills as many at a time as the host has CPUs by default', async () => {
    const stats = fakePreparations();
    const size = availableParallelism() + 3;
    const pool = await KernelBooted.pool(store, 'template', size);
    await until(() => pool.ready === size);
    expect(stats.maxInFlight).toBe(availableParallelism());
    await pool.close();
  });

  it('does not go on filling after a background restore fails', async () => {
    // The one open makes and the first in the background succeed; the next fails.
    const stats = fakePreparations({ failFrom: 2 });
    const pool = await KernelBooted.pool(store, 'template', 6, {}, { concurrency: 1 });
    await until(() => pool.lastError !== undefined);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(pool.ready).toBe(2);
    expect(stats.started).toBe(3);
    await pool.close();
  });

  it('refuses a bad concurrency with ConfigInvalidError before restoring anything', async () => {
    const stats = fakePreparations();
    const error = await KernelBooted.pool(store, 'template', 2, {}, { concurrency: 0 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigInvalidError);
    expect((error as ConfigInvalidError).issues[0]?.path).toBe('concurrency');
    expect(stats.started).toBe(0);
  });
});

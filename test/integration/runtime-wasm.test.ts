import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  CallTimeoutError,
  defineHostFunction,
  GuestOperationError,
  loadCode,
  RuntimeLoaded,
  sandboxOf,
  TransitionFailedError,
  UserCodeLoaded,
} from '../../src/index.js';
import { mapsReads } from '../helpers/guest-stats.js';
import { testRunDir } from '../helpers/leaks.js';
import { shareRuntime } from '../helpers/shared-runtime.js';

const runDir = testRunDir('wasm');
const wasm = (name: string) => readFileSync(join(import.meta.dirname, '..', 'fixtures', 'wasm', `${name}.wasm`));
const hostCalls: number[] = [];
const double = defineHostFunction({
  name: 'double',
  params: z.tuple([z.number().int()]),
  result: z.number().int(),
  wasm: { params: ['i32'], results: ['i32'] },
  impl: (x) => {
    hostCalls.push(x);
    if (x === 666) throw new Error('the host refuses 666');
    return x * 2;
  },
});

// One sandbox, one runtime: every test loads its module from the same RuntimeLoaded stage and devolves back.
let runtime: RuntimeLoaded;
const { withCode } = shareRuntime(runDir, 'wasm', [double], { get: () => runtime, set: (stage) => (runtime = stage) });
const withModule = <T>(name: string, body: (code: UserCodeLoaded) => Promise<T>) => withCode(wasm(name), body);

describe('the WebAssembly runtime', () => {
  it('reports the runtime and the module exports with their types', async () => {
    expect(runtime.runtime.kind).toBe('wasm');
    expect(runtime.runtime.version).toMatch(/wabt/);
    await withModule('arith', async (code) => {
      expect(code.code.exports).toEqual(
        expect.arrayContaining([{ name: 'add', params: ['i32', 'i32'], results: ['i32'] }, { name: 'mul64', params: ['i64', 'i64'], results: ['i64'] }]),
      );
    });
  });

  it('calls with i32, i64, f32 and f64 arguments and results', async () => {
    await withModule('arith', async (code) => {
      expect(await code.call('add', 2, 40)).toBe(42);
      expect(await code.call('add', 2_147_483_647, 1)).toBe(-2_147_483_648);
      expect(await code.call('mul64', 3_000_000_000n, 4_000_000_000n)).toBe(BigInt.asIntN(64, 12_000_000_000_000_000_000n));
      expect(await code.call('mul64', 6, 7)).toBe(42);
      expect(await code.call('div_f64', 1, 4)).toBe(0.25);
      expect(await code.call('half_f32', 3)).toBe(1.5);
      expect(await code.call('noop')).toBeUndefined();
    });
  });

  it('sums a 64 KiB buffer passed through linear memory', async () => {
    await withModule('memsum', async (code) => {
      const data = Buffer.alloc(64 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
      const expected = data.reduce((sum, byte) => sum + byte, 0);
      await code.writeMemory(1024, data);
      expect(Number(await code.call('sum', 1024, data.length))).toBe(expected);
      await code.call('fill', 2048, 16, 0xab);
      expect((await code.readMemory(2048, 16)).equals(Buffer.alloc(16, 0xab))).toBe(true);
    });
  });

  it('keeps instance state across calls, and a devolve resets it', async () => {
    await withModule('counter', async (code) => {
      expect(await code.call('increment')).toBe(1);
      expect(await code.call('increment')).toBe(2);
      expect(await code.call('get')).toBe(2);
    });
    await withModule('counter', async (code) => {
      expect(await code.call('get')).toBe(0);
    });
  });

  it('calls an imported host function, guest → host → guest', async () => {
    hostCalls.length = 0;
    await withModule('hostcall', async (code) => {
      expect(await code.call('quadruple', 5)).toBe(20);
      expect(hostCalls).toEqual([5, 10]);
    });
  });

  it('answers calls sent at once in order, host calls included (the agent queues them per runtime)', async () => {
    await withModule('arith', async (code) => {
      const sums = await Promise.all(Array.from({ length: 20 }, (_, i) => code.call('add', i, 1000)));
      expect(sums).toEqual(Array.from({ length: 20 }, (_, i) => i + 1000));
    });
    hostCalls.length = 0;
    await withModule('hostcall', async (code) => {
      const results = await Promise.all(Array.from({ length: 8 }, (_, i) => code.call('quadruple', i)));
      expect(results).toEqual(Array.from({ length: 8 }, (_, i) => 4 * i));
      expect(hostCalls).toHaveLength(16);
    });
  });

  it('fails a call whose host function fails, and the next call works', async () => {
    await withModule('hostcall', async (code) => {
      await expect(code.call('quadruple', 333)).rejects.toMatchObject({ guestCode: 'HOST_ERROR' });
      expect(await code.call('quadruple', 5)).toBe(20);
    });
  });

  it('turns a trap into a typed error and stays usable', async () => {
    await withModule('trap', async (code) => {
      await expect(code.call('boom')).rejects.toMatchObject({ code: 'GUEST_OPERATION_FAILED', guestCode: 'TRAP' });
      await expect(code.call('divzero', 1)).rejects.toMatchObject({ guestCode: 'TRAP' });
      expect(await code.call('ok')).toBe(1);
    });
  });

  it('refuses a missing export and wrong argument types', async () => {
    await withModule('arith', async (code) => {
      await expect(code.call('nope')).rejects.toMatchObject({ guestCode: 'NO_EXPORT' });
      await expect(code.call('add', 1)).rejects.toMatchObject({ guestCode: 'BAD_ARGS' });
      await expect(code.call('add', 'one', 2)).rejects.toMatchObject({ guestCode: 'BAD_ARGS' });
      await expect(code.call('add', 1.5, 2)).rejects.toMatchObject({ guestCode: 'BAD_ARGS' });
      expect(await code.call('add', 1, 2)).toBe(3);
    });
  });

  it('rolls back a load of invalid WASM or a trapping start function', async () => {
    for (const name of ['invalid', 'start-trap']) {
      const error = await runtime.evolve(loadCode(wasm(name))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TransitionFailedError);
      expect(error).toMatchObject({ rolledBack: true });
      expect((error as TransitionFailedError).cause).toBeInstanceOf(GuestOperationError);
      expect(runtime.status).toBe('ready');
    }
    await withModule('counter', async (code) => expect(await code.call('increment')).toBe(1));
  });

  it('moves an endless loop back to the runtime stage, which stays usable', async () => {
    const code = await runtime.evolve(loadCode(wasm('loop')));
    const error = await code.callWith({ timeoutMs: 1_500 }, 'forever').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CallTimeoutError);
    const recovered = (error as CallTimeoutError).recovered as RuntimeLoaded;
    expect(recovered).toBeInstanceOf(RuntimeLoaded);
    expect(code.status).toBe('consumed');
    runtime = recovered;
    await withModule('arith', async (next) => expect(await next.call('add', 1, 1)).toBe(2));
  });

  it('keeps the runtime resident: a load after a devolve reads nothing from the runtimes map', async () => {
    // The runtime maps its whole binary before "runtime loaded" is snapshotted; otherwise each devolve drops the
    // code pages a load touches, and every load reads them again from the squashfs (LZ4 and disk I/O).
    runtime = await (await runtime.evolve(loadCode(wasm('arith')))).devolve();
    const before = await mapsReads(runtime);
    await withModule('counter', async (code) => {
      expect(await code.call('increment')).toBe(1);
      expect(await mapsReads(code)).toBe(before);
    });
  });

  it('hot-swaps 50 modules in a row without the scratch disk growing, at a flat latency', async () => {
    const scratch = sandboxOf(runtime).machine.paths.scratchDisk;
    const { statSync } = await import('node:fs');
    const before = statSync(scratch).blocks;
    const latencies: number[] = [];
    for (let i = 0; i < 50; i++) {
      const started = performance.now();
      const code = await runtime.evolve(loadCode(wasm(i % 2 ? 'arith' : 'counter')));
      expect(await code.call(i % 2 ? 'add' : 'increment', ...(i % 2 ? [i, 1] : []))).toBe(i % 2 ? i + 1 : 1);
      runtime = await code.devolve();
      latencies.push(performance.now() - started);
    }
    expect(statSync(scratch).blocks).toBeLessThanOrEqual(before + 2048); // ≤ 1 MiB of qcow2 metadata slack
    // RAM images on tmpfs: one per live snapshot, none left by the 50 swaps.
    const ramFile = basename(sandboxOf(runtime).machine.paths.ramFile);
    const images = readdirSync('/dev/shm').filter((name) => name.startsWith(`${ramFile}.snap-`));
    expect(images).toHaveLength(sandboxOf(runtime).snapshots.tags.size);
    // Flat: the fastest of the last ten swaps is not slower than the fastest of the first ten by more than half.
    // (Fastest, not median: the other test files share the 2 cores, and contention only ever adds time.)
    expect(Math.min(...latencies.slice(-10))).toBeLessThan(Math.min(...latencies.slice(0, 10)) * 1.5 + 20);
  }, 300_000);
});

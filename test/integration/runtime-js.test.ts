import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CallTimeoutError, defineHostFunction, loadCode, RuntimeLoaded, TransitionFailedError, type UserCodeLoaded } from '../../src/index.js';
import { mapsReads } from '../helpers/guest-stats.js';
import { testRunDir } from '../helpers/leaks.js';
import { shareRuntime } from '../helpers/shared-runtime.js';

const runDir = testRunDir('js');
const js = (name: string) => readFileSync(join(import.meta.dirname, '..', 'fixtures', 'js', `${name}.js`), 'utf8');
const double = defineHostFunction({ name: 'double', params: z.tuple([z.number()]), result: z.number(), impl: (x) => x * 2 });

let runtime: RuntimeLoaded;
const { withCode } = shareRuntime(runDir, 'js', [double], { get: () => runtime, set: (stage) => (runtime = stage) });
const withScript = <T>(name: string, body: (code: UserCodeLoaded) => Promise<T>) => withCode(js(name), body);

describe('the JavaScript runtime', () => {
  it('keeps the runtime resident: a load after a devolve reads nothing from the runtimes map', async () => {
    runtime = await (await runtime.evolve(loadCode(js('arith')))).devolve();
    const before = await mapsReads(runtime);
    // A regexp literal, RegExp execution and JSON: duktape code that neither its start nor arith.js runs.
    const source = 'function probe(s) { return /^a+(b|c)$/.test(s) ? JSON.stringify({ s: s, n: [1, 2.5] }) : null; }';
    const code = await runtime.evolve(loadCode(source));
    expect(await code.call('probe', 'aab')).toBe('{"s":"aab","n":[1,2.5]}');
    expect(await mapsReads(code)).toBe(before);
    runtime = await code.devolve();
  });

  it('reports duktape and the global functions the script defines', async () => {
    expect(runtime.runtime).toMatchObject({ kind: 'js' });
    expect(runtime.runtime.version).toMatch(/duktape/i);
    await withScript('arith', async (code) => {
      expect(code.code.exports.map((e) => e.name).sort()).toEqual(['add', 'concat', 'noop', 'shape']);
    });
  });

  it('passes numbers, strings, maps, arrays and null both ways', async () => {
    await withScript('arith', async (code) => {
      expect(await code.call('add', 2, 40)).toBe(42);
      expect(await code.call('add', 0.5, 0.25)).toBe(0.75);
      expect(await code.call('concat', 'ab', 'cd')).toBe('abcd');
      expect(await code.call('shape', { n: 21, z: 'x' })).toEqual({ keys: ['n', 'z'], n: 42, list: [1, 'two', null, true] });
      expect(await code.call('noop')).toBeNull();
    });
  });

  it('passes byte buffers both ways', async () => {
    await withScript('memsum', async (code) => {
      const data = Buffer.alloc(100_000);
      for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
      expect(await code.call('sum', data)).toBe(data.reduce((s, b) => s + b, 0));
      expect(Buffer.from((await code.call('fill', 8, 7)) as Uint8Array)).toEqual(Buffer.alloc(8, 7));
    });
  });

  it('keeps global state across calls, and a devolve resets it', async () => {
    await withScript('counter', async (code) => {
      expect(await code.call('increment')).toBe(1);
      expect(await code.call('increment')).toBe(2);
    });
    await withScript('counter', async (code) => expect(await code.call('get')).toBe(0));
  });

  it('calls a host function through the global host object', async () => {
    await withScript('hostcall', async (code) => expect(await code.call('quadruple', 5)).toBe(20));
  });

  it('turns an exception into a typed error and stays usable', async () => {
    await withScript('trap', async (code) => {
      await expect(code.call('boom')).rejects.toMatchObject({ guestCode: 'TRAP', detail: expect.stringMatching(/boom from js/) });
      await expect(code.call('missing')).rejects.toMatchObject({ guestCode: 'NO_EXPORT' });
      expect(await code.call('ok')).toBe(1);
    });
  });

  it('rolls back a script that does not parse or throws at top level', async () => {
    for (const name of ['invalid', 'start-trap']) {
      const error = await runtime.evolve(loadCode(js(name))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TransitionFailedError);
      expect(error).toMatchObject({ rolledBack: true });
      expect(runtime.status).toBe('ready');
    }
  });

  it('moves an endless loop back to the runtime stage', async () => {
    const code = await runtime.evolve(loadCode(js('loop')));
    const error = await code.callWith({ timeoutMs: 1_500 }, 'forever').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CallTimeoutError);
    runtime = (error as CallTimeoutError).recovered as RuntimeLoaded;
    await withScript('loop', async (next) => expect(await next.call('ok')).toBe(7));
  });
});

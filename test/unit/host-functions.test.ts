import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AgentTimeoutError, GuestOperationError, HostFunctionsMismatchError } from '../../src/errors.js';
import { defineHostFunction, HostFunctionSet } from '../../src/host/host-functions.js';

const add = defineHostFunction({
  name: 'add',
  params: z.tuple([z.number().int(), z.number().int()]),
  result: z.number().int(),
  wasm: { params: ['i32', 'i32'], results: ['i32'] },
  impl: (a, b) => a + b,
});
const greet = defineHostFunction({ name: 'greet', params: z.tuple([z.string()]), result: z.string(), impl: (s) => `hi ${s}` });

describe('host functions', () => {
  it('validates arguments and results with their zod schemas', async () => {
    await expect(add.invoke([2, 3])).resolves.toBe(5);
    await expect(add.invoke(['2', 3])).rejects.toMatchObject({ code: 'GUEST_OPERATION_FAILED', guestCode: 'BAD_ARGS' });
    await expect(add.invoke([1])).rejects.toBeInstanceOf(GuestOperationError);
    const liar = defineHostFunction({ name: 'liar', params: z.tuple([]), result: z.number(), impl: () => 'not a number' as unknown as number });
    await expect(liar.invoke([])).rejects.toMatchObject({ guestCode: 'BAD_RESULT' });
  });

  it('bounds a host function in time', async () => {
    const slow = defineHostFunction({ name: 'slow', params: z.tuple([]), result: z.null(), timeoutMs: 50, impl: () => new Promise<null>(() => {}) });
    await expect(slow.invoke([])).rejects.toBeInstanceOf(AgentTimeoutError);
  });

  it('refuses a name that is not an identifier, and duplicates', () => {
    expect(() => defineHostFunction({ name: 'a-b', params: z.tuple([]), result: z.null(), impl: () => null })).toThrow(TypeError);
    expect(() => new HostFunctionSet([add, add])).toThrow(/twice/);
  });

  it('refuses an unknown function by name', async () => {
    await expect(new HostFunctionSet([add]).call('nope', [])).rejects.toMatchObject({ guestCode: 'NO_HOST_FUNCTION' });
  });

  it('accepts a superset with matching signatures', () => {
    expect(() => new HostFunctionSet([add, greet]).assertSupersetOf([add.signature], 'restore')).not.toThrow();
  });

  it('lists what is missing and what does not match', () => {
    const add64 = defineHostFunction({
      name: 'add',
      params: z.tuple([z.bigint(), z.bigint()]),
      result: z.bigint(),
      wasm: { params: ['i64', 'i64'], results: ['i64'] },
      impl: (a, b) => a + b,
    });
    try {
      new HostFunctionSet([add64]).assertSupersetOf([add.signature, greet.signature], 'devolve to RuntimeLoaded');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(HostFunctionsMismatchError);
      expect(error).toMatchObject({ missing: ['greet'], mismatched: ['add'] });
      expect((error as Error).message).toMatch(/devolve to RuntimeLoaded/);
    }
  });
});

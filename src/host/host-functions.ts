import { z } from 'zod';
import { AgentTimeoutError, GuestOperationError, HostFunctionsMismatchError } from '../errors.js';

export type WasmValueType = 'i32' | 'i64' | 'f32' | 'f64';

/** How a host function looks from outside: compared when a snapshot is restored (the superset rule). */
export interface HostFunctionSignature {
  readonly name: string;
  /** JSON Schema of the argument tuple. */
  readonly params: unknown;
  /** JSON Schema of the result. */
  readonly result: unknown;
  /** The function's type as a WebAssembly import, when WASM code may import it. */
  readonly wasm: { readonly params: readonly WasmValueType[]; readonly results: readonly WasmValueType[] } | null;
}

export interface HostFunctionSpec<P extends z.ZodTuple, R extends z.ZodType> {
  /** The import name: `host.<name>` in WASM and JS. */
  name: string;
  params: P;
  result: R;
  wasm?: { params: WasmValueType[]; results: WasmValueType[] };
  /** Bound on one call (default 5 s). */
  timeoutMs?: number;
  impl: (...args: z.output<P>) => z.input<R> | Promise<z.input<R>>;
}

/** A host function the guest may call, with its arguments and result checked against zod schemas. */
export interface HostFunction {
  readonly signature: HostFunctionSignature;
  /**
   * Validates the guest's arguments, runs the function within its bound, validates the result.
   * @throws {GuestOperationError} `BAD_ARGS` / `BAD_RESULT`; {@link AgentTimeoutError} past the bound.
   */
  invoke(args: unknown[]): Promise<unknown>;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/**
 * Defines a host function.
 * @example
 * ```ts
 * const log = defineHostFunction({ name: 'log', params: z.tuple([z.string()]), result: z.null(), impl: (s) => { console.log(s); return null; } });
 * ```
 * @throws {TypeError} for a name that is not an identifier.
 */
export function defineHostFunction<P extends z.ZodTuple, R extends z.ZodType>(spec: HostFunctionSpec<P, R>): HostFunction {
  if (!NAME.test(spec.name)) throw new TypeError(`host function name ${JSON.stringify(spec.name)} is not an identifier`);
  const timeoutMs = spec.timeoutMs ?? 5_000;
  const signature: HostFunctionSignature = Object.freeze({
    name: spec.name,
    params: z.toJSONSchema(spec.params, { io: 'input', unrepresentable: 'any' }),
    result: z.toJSONSchema(spec.result, { io: 'output', unrepresentable: 'any' }),
    wasm: spec.wasm ? Object.freeze({ params: [...spec.wasm.params], results: [...spec.wasm.results] }) : null,
  });
  return {
    signature,
    async invoke(args) {
      const parsed = spec.params.safeParse(args);
      if (!parsed.success) throw new GuestOperationError(`host.${spec.name}`, 'BAD_ARGS', z.prettifyError(parsed.error));
      let timer: NodeJS.Timeout | undefined;
      try {
        const value = await Promise.race([
          Promise.resolve().then(() => spec.impl(...(parsed.data as z.output<P>))),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new AgentTimeoutError(`host.${spec.name}`, timeoutMs)), timeoutMs);
          }),
        ]);
        const result = spec.result.safeParse(value);
        if (!result.success) throw new GuestOperationError(`host.${spec.name}`, 'BAD_RESULT', z.prettifyError(result.error));
        return result.data;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** The host functions a sandbox offers. */
export class HostFunctionSet {
  readonly #byName = new Map<string, HostFunction>();

  constructor(functions: readonly HostFunction[] = []) {
    for (const fn of functions) {
      if (this.#byName.has(fn.signature.name)) throw new TypeError(`host function ${fn.signature.name} defined twice`);
      this.#byName.set(fn.signature.name, fn);
    }
  }

  get signatures(): HostFunctionSignature[] {
    return [...this.#byName.values()].map((fn) => fn.signature);
  }

  /**
   * Serves one guest call.
   * @throws {GuestOperationError} `NO_HOST_FUNCTION` for an unknown name, and the function's own errors.
   */
  call(name: string, args: unknown[]): Promise<unknown> {
    const fn = this.#byName.get(name);
    if (!fn) return Promise.reject(new GuestOperationError(`host.${name}`, 'NO_HOST_FUNCTION', `the host offers no function ${name}`));
    return fn.invoke(args);
  }

  /**
   * Checks the superset rule: this set must offer every recorded function with the same signature.
   * @throws {HostFunctionsMismatchError} listing what is missing and what does not match.
   */
  assertSupersetOf(recorded: readonly HostFunctionSignature[], context: string): void {
    const missing: string[] = [];
    const mismatched: string[] = [];
    for (const signature of recorded) {
      const offered = this.#byName.get(signature.name);
      if (!offered) missing.push(signature.name);
      else if (canonicalJson(offered.signature) !== canonicalJson(signature)) mismatched.push(signature.name);
    }
    if (missing.length > 0 || mismatched.length > 0) throw new HostFunctionsMismatchError(context, missing, mismatched);
  }
}

/** JSON with object keys sorted, so that equal signatures compare equal whatever order their keys came in. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

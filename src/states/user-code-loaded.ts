import { AgentTimeoutError, CallTimeoutError, GuestOperationError, GuestProtocolViolationError } from '../errors.js';
import type { RuntimeKind } from '../transitions/runtime-kinds.js';
import { RUNTIME_CODE_PATH } from '../transitions/runtime-paths.js';
import type { RuntimeLoaded } from './runtime-loaded.js';
import { ChildStage } from './stage.js';

/** One function the loaded code exports (types are the runtime's: `i32`… for wasm, empty for js). */
export interface ExportInfo {
  readonly name: string;
  readonly params: readonly string[];
  readonly results: readonly string[];
}

/** What was loaded into a {@link UserCodeLoaded} stage. */
export interface CodeInfo {
  /** sha256 of the code. */
  readonly sha256: string;
  readonly bytes: number;
  readonly runtime: RuntimeKind;
  /** Whether the runtime serves calls on its own port (from {@link RuntimeInfo.direct}). */
  readonly direct?: boolean;
  readonly exports: readonly ExportInfo[];
}

export interface CallOptions {
  /** Bound on the call; past it the sandbox moves back to its last good stage (see {@link CallTimeoutError}). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A value user code takes or returns: numbers (i32/f32/f64), bigints (i64), strings, bytes, arrays, maps. */
export type CallValue = number | bigint | string | boolean | null | Uint8Array | CallValue[] | { [key: string]: CallValue };

/** User code is loaded into the runtime and can be called. */
export class UserCodeLoaded extends ChildStage<RuntimeLoaded, CodeInfo> {
  static readonly stageName = 'UserCodeLoaded';
  declare private readonly brand: 'UserCodeLoaded';

  /** The loaded code. */
  get code(): CodeInfo {
    return this.data;
  }

  /**
   * Calls a function the loaded code exports. One result is returned as is, none as `undefined`, several as an
   * array. For the shell runtime the arguments are strings and the result is the function's stdout.
   * @throws {GuestOperationError} `NO_EXPORT`, `BAD_ARGS`, `TRAP` (with the runtime's message), `CALL_FAILED` (shell).
   * @throws {CallTimeoutError} past the default bound; the sandbox is moved back to the parent stage.
   * @throws {StageStaleError}, {@link StagePoisonedError}.
   */
  call<T = unknown>(name: string, ...args: CallValue[]): Promise<T> {
    return this.callWith<T>({}, name, ...args);
  }

  /**
   * {@link call} with a time bound and an abort signal.
   * @throws see {@link call}.
   */
  async callWith<T = unknown>(options: CallOptions, name: string, ...args: CallValue[]): Promise<T> {
    try {
      return (this.data.runtime === 'shell' ? await this.#callShell(options, name, args) : await this.#callRuntime(options, name, args)) as T;
    } catch (error) {
      if (!(error instanceof AgentTimeoutError)) throw error;
      // The code may be stuck mid-way through changing its state: only a snapshot is known to be good.
      const recovered = await this.devolve();
      throw new CallTimeoutError(name, error.timeoutMs, recovered, { cause: error });
    }
  }

  /**
   * Reads bytes from the WebAssembly instance's linear memory.
   * @throws {GuestOperationError} `OUT_OF_BOUNDS`, or when the runtime is not wasm.
   */
  async readMemory(ptr: number, length: number): Promise<Buffer> {
    const value = (await this.#runtimeRequest('mem_read', { ptr, len: length }, {})) as { d?: unknown };
    if (!(value?.d instanceof Uint8Array)) throw new GuestProtocolViolationError('mem_read reply without bytes');
    return Buffer.from(value.d);
  }

  /**
   * Writes bytes into the WebAssembly instance's linear memory.
   * @throws {GuestOperationError} `OUT_OF_BOUNDS`, or when the runtime is not wasm.
   */
  async writeMemory(ptr: number, data: Uint8Array): Promise<void> {
    await this.#runtimeRequest('mem_write', { ptr, d: data }, {});
  }

  async #callRuntime(options: CallOptions, name: string, args: CallValue[]): Promise<unknown> {
    const value = (await this.#runtimeRequest('call', { fn: name, args }, options)) as { results?: unknown };
    if (!Array.isArray(value?.results)) throw new GuestProtocolViolationError('call reply without results');
    return value.results.length === 0 ? undefined : value.results.length === 1 ? value.results[0] : value.results;
  }

  #runtimeRequest(op: string, a: Record<string, unknown>, options: CallOptions): Promise<unknown> {
    if (this.data.runtime === 'shell') {
      return Promise.reject(new GuestOperationError(op, 'UNSUPPORTED', 'the shell runtime has no linear memory'));
    }
    return this.runtimeRequest({ kind: this.data.runtime, direct: this.data.direct }, op, a, options);
  }

  async #callShell(options: CallOptions, name: string, args: CallValue[]): Promise<string> {
    const result = await this.exec(['sh', '-c', `. ${RUNTIME_CODE_PATH} && "$@"`, 'call', name, ...args.map(String)], options);
    if (result.exitCode !== 0) {
      throw new GuestOperationError('call', 'CALL_FAILED', `${name} exited ${result.exitCode}: ${result.stderr.slice(0, 2000)}`);
    }
    return result.stdout;
  }
}

import { GuestOperationError } from '../errors.js';
import type { ExecResult } from '../qemu/agent/guest-ops.js';
import { RUNTIME_CODE_PATH } from '../transitions/runtime-paths.js';
import type { RuntimeLoaded } from './runtime-loaded.js';
import { ChildStage } from './stage.js';

/** What was loaded into a {@link UserCodeLoaded} stage. */
export interface CodeInfo {
  /** sha256 of the code. */
  readonly sha256: string;
  readonly bytes: number;
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** User code is loaded into the runtime and can be called. */
export class UserCodeLoaded extends ChildStage<RuntimeLoaded, CodeInfo> {
  static readonly stageName = 'UserCodeLoaded';
  declare private readonly brand: 'UserCodeLoaded';

  /** The loaded code. */
  get code(): CodeInfo {
    return this.data;
  }

  /**
   * Calls a function the loaded code defines, with string arguments; its stdout is the result.
   * @throws {GuestOperationError} `CALL_FAILED` when the function exits non-zero (stderr in the detail).
   * @throws {StageStaleError}, {@link StagePoisonedError}, {@link AgentTimeoutError}.
   */
  async call(name: string, ...args: string[]): Promise<string> {
    return this.callWith({}, name, ...args);
  }

  /**
   * {@link call} with a time bound and an abort signal.
   * @throws see {@link call}.
   */
  async callWith(options: CallOptions, name: string, ...args: string[]): Promise<string> {
    const result: ExecResult = await this.exec(['sh', '-c', `. ${RUNTIME_CODE_PATH} && "$@"`, 'call', name, ...args], options);
    if (result.exitCode !== 0) {
      throw new GuestOperationError('call', 'CALL_FAILED', `${name} exited ${result.exitCode}: ${result.stderr.slice(0, 2000)}`);
    }
    return result.stdout;
  }
}

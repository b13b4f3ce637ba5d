import type { RequestOptions } from '../qemu/agent/agent-session.js';
import type { RuntimeAddress } from '../qemu/agent/runtime-channel.js';
import type { ExecOptions, ExecResult, FileReadOptions, FileWriteOptions } from '../qemu/agent/guest-ops.js';

/** Guest I/O as a stage or a transition sees it. */
export interface GuestAccess {
  exec(argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  readFile(path: string, options?: FileReadOptions): Promise<Buffer>;
  writeFile(path: string, data: string | Uint8Array, options?: FileWriteOptions): Promise<void>;
  /**
   * One raw agent request (guest/PROTOCOL.md, guest/RUNTIMES.md), for runtimes and custom operations. Host
   * function calls made while it runs are served from the sandbox's host functions unless `onHostCall` is given.
   */
  request(op: string, args?: Record<string, unknown>, options?: RequestOptions): Promise<unknown>;
  /**
   * One request to a runtime started with `rt_start` (guest/RUNTIMES.md): over its direct port when it holds
   * one (`runtime.direct`), else relayed by the agent. Host function calls are served as for {@link request}.
   */
  runtimeRequest(runtime: RuntimeAddress, op: string, args?: Record<string, unknown>, options?: RequestOptions): Promise<unknown>;
}

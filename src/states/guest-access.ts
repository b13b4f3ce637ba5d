import type { RequestOptions } from '../qemu/agent/agent-session.js';
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
}

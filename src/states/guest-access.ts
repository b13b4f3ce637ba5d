import type { ExecOptions, ExecResult, FileReadOptions, FileWriteOptions } from '../qemu/agent/guest-ops.js';

/** Guest I/O as a stage or a transition sees it. */
export interface GuestAccess {
  exec(argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  readFile(path: string, options?: FileReadOptions): Promise<Buffer>;
  writeFile(path: string, data: string | Uint8Array, options?: FileWriteOptions): Promise<void>;
}

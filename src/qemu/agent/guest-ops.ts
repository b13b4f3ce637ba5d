import { randomBytes } from 'node:crypto';
import { GuestOperationError, GuestProtocolViolationError } from '../../errors.js';
import type { AgentSession, RequestOptions } from './agent-session.js';

/** Largest `file_write` payload per request (guest/PROTOCOL.md). */
export const FILE_CHUNK_BYTES = 1024 * 1024;
/** Default bound on the output one exec may accumulate on the host. */
export const DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

export interface ExecOptions {
  /** Merged over the guest's base environment. */
  env?: Record<string, string>;
  cwd?: string;
  stdin?: string | Uint8Array;
  /** Bound on the whole exec; the guest kills the process group when it expires. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Streamed output, as it arrives. */
  onStdout?: (data: Uint8Array) => void;
  onStderr?: (data: Uint8Array) => void;
  /** Bound on stdout + stderr kept on the host (default 64 MiB). */
  maxOutputBytes?: number;
}

export interface ExecResult {
  exitCode: number;
  /** The signal number that ended the process, or 0. */
  signal: number;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
}

/**
 * Runs a command in the guest and collects its output.
 * @throws {GuestOperationError} with guestCode `MAX_OUTPUT` when the output exceeds its bound.
 * @throws {AgentTimeoutError} when neither the guest's own timeout nor a reply arrives in time.
 */
export async function execInGuest(session: AgentSession, argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  if (argv.length === 0) throw new GuestOperationError('exec', 'BAD_REQUEST', 'argv must not be empty');
  const stdout: Uint8Array[] = [];
  const stderr: Uint8Array[] = [];
  let total = 0;
  const maxOutput = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const controller = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
  let overflow: GuestOperationError | undefined;
  const args: Record<string, unknown> = { argv: [...argv] };
  if (options.env) args.env = options.env;
  if (options.cwd) args.cwd = options.cwd;
  if (options.stdin !== undefined) args.stdin = typeof options.stdin === 'string' ? Buffer.from(options.stdin) : options.stdin;
  if (options.timeoutMs !== undefined) args.timeout_ms = options.timeoutMs;
  const requestOptions: RequestOptions = {
    signal,
    // The guest enforces timeout_ms itself; the host bound leaves it room to report.
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs + 5_000 } : {}),
    onChunk: (stream, data) => {
      total += data.length;
      if (total > maxOutput) {
        overflow ??= new GuestOperationError('exec', 'MAX_OUTPUT', `output exceeded ${maxOutput} bytes`);
        controller.abort(overflow);
        return;
      }
      if (stream === 'stderr') {
        stderr.push(data);
        options.onStderr?.(data);
      } else {
        stdout.push(data);
        options.onStdout?.(data);
      }
    },
  };
  let value: unknown;
  try {
    value = await session.request('exec', args, requestOptions);
  } catch (error) {
    throw overflow ?? error;
  }
  const result = value as { code?: unknown; signal?: unknown; timed_out?: unknown };
  if (typeof result?.code !== 'number') throw new GuestProtocolViolationError('exec reply without a numeric code');
  const stdoutBytes = Buffer.concat(stdout);
  const stderrBytes = Buffer.concat(stderr);
  return {
    exitCode: result.code,
    signal: typeof result.signal === 'number' ? result.signal : 0,
    timedOut: result.timed_out === true,
    stdout: stdoutBytes.toString('utf8'),
    stderr: stderrBytes.toString('utf8'),
    stdoutBytes,
    stderrBytes,
  };
}

export interface FileWriteOptions {
  /** File mode for a new file (default 0o644). */
  mode?: number;
  /** Create missing parent directories. */
  mkdirs?: boolean;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Writes a whole file in the guest, in chunks of at most 1 MiB.
 * @throws {GuestOperationError} with the guest's errno name.
 */
export async function writeGuestFile(
  session: AgentSession,
  path: string,
  data: string | Uint8Array,
  options: FileWriteOptions = {},
): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  let offset = 0;
  do {
    const chunk = bytes.subarray(offset, offset + FILE_CHUNK_BYTES);
    await session.request(
      'file_write',
      { path, d: chunk, off: offset, trunc: offset === 0, mode: options.mode ?? 0o644, mkdirs: options.mkdirs ?? false },
      { timeoutMs: options.timeoutMs, signal: options.signal },
    );
    offset += chunk.length;
  } while (offset < bytes.length);
}

export interface FileReadOptions {
  /** Bound on the file size the host accepts (default 256 MiB). */
  maxBytes?: number;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Reads a whole file from the guest.
 * @throws {GuestOperationError} with the guest's errno name (`ENOENT` for a missing file), or `MAX_OUTPUT`.
 */
export async function readGuestFile(session: AgentSession, path: string, options: FileReadOptions = {}): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let total = 0;
  const maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
  const controller = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
  let overflow: GuestOperationError | undefined;
  try {
    await session.request('file_read', { path }, {
      timeoutMs: options.timeoutMs,
      signal,
      onChunk: (_stream, data) => {
        total += data.length;
        if (total > maxBytes) {
          overflow ??= new GuestOperationError('file_read', 'MAX_OUTPUT', `file exceeds ${maxBytes} bytes`);
          controller.abort(overflow);
          return;
        }
        parts.push(data);
      },
    });
  } catch (error) {
    throw overflow ?? error;
  }
  return Buffer.concat(parts);
}

/**
 * The arguments of the agent's `refresh`: the host's wall clock (a restored guest's is the snapshot's,
 * QEMU-NOTES pitfall 9) and fresh entropy (clones and restores share RNG state, pitfall 10).
 */
export function refreshArgs(): { ns: bigint; seed: Buffer } {
  return { ns: BigInt(Date.now()) * 1_000_000n, seed: randomBytes(64) };
}

import { z } from 'zod';
import { GuestProtocolViolationError } from '../../errors.js';

/** What the guest says about itself on connect and in reply to `hello` (guest/PROTOCOL.md). */
export const GuestHelloSchema = z.object({
  v: z.number().int(),
  agent: z.string().max(256),
  kernel: z.string().max(256),
  arch: z.string().max(64),
  boot_id: z.string().max(128),
  max_frame: z.number().int().positive(),
  ops: z.array(z.string().max(64)).max(256),
  mem_kib: z.number().int().nonnegative(),
  cpus: z.number().int().positive(),
});
export type GuestHello = z.infer<typeof GuestHelloSchema>;

/** The protocol version this host speaks. */
export const PROTOCOL_VERSION = 1;

export type GuestMessage =
  | { t: 'hello'; hello: GuestHello }
  | { t: 'res'; id: number; ok: true; v: unknown }
  | { t: 'res'; id: number; ok: false; e: { code: string; msg: string } }
  | { t: 'chunk'; id: number; s: 'stdout' | 'stderr' | 'data'; d: Uint8Array }
  | { t: 'hostcall'; id: number; call: number; fn: string; args: unknown[] };

/**
 * Checks the shape of a decoded guest frame. Hand-written for `res` and `chunk` because they are the hot path.
 * @throws {GuestProtocolViolationError} for any other shape.
 */
export function parseGuestMessage(raw: Record<string, unknown>): GuestMessage {
  switch (raw.t) {
    case 'res': {
      const id = requireId(raw);
      if (raw.ok === true) return { t: 'res', id, ok: true, v: raw.v };
      if (raw.ok === false) {
        const e = raw.e as Record<string, unknown> | undefined;
        if (typeof e !== 'object' || e === null || typeof e.code !== 'string' || typeof e.msg !== 'string') {
          throw new GuestProtocolViolationError('error reply without e.code and e.msg strings');
        }
        return { t: 'res', id, ok: false, e: { code: e.code.slice(0, 64), msg: e.msg.slice(0, 4096) } };
      }
      throw new GuestProtocolViolationError('reply without a boolean ok');
    }
    case 'chunk': {
      const id = requireId(raw);
      if (raw.s !== 'stdout' && raw.s !== 'stderr' && raw.s !== 'data') {
        throw new GuestProtocolViolationError(`chunk with unknown stream ${String(raw.s).slice(0, 32)}`);
      }
      if (!(raw.d instanceof Uint8Array)) throw new GuestProtocolViolationError('chunk without binary d');
      return { t: 'chunk', id, s: raw.s, d: raw.d };
    }
    case 'hostcall': {
      const id = requireId(raw);
      if (typeof raw.call !== 'number' || !Number.isSafeInteger(raw.call) || raw.call < 0) {
        throw new GuestProtocolViolationError('hostcall without a call number');
      }
      if (typeof raw.fn !== 'string' || raw.fn.length > 256) throw new GuestProtocolViolationError('hostcall without a function name');
      if (!Array.isArray(raw.args)) throw new GuestProtocolViolationError('hostcall without an args array');
      return { t: 'hostcall', id, call: raw.call, fn: raw.fn, args: raw.args };
    }
    case 'hello': {
      const { t: _t, ...rest } = raw;
      return { t: 'hello', hello: parseHello(rest) };
    }
    default:
      throw new GuestProtocolViolationError(`unknown message type ${String(raw.t).slice(0, 32)}`);
  }
}

/**
 * Validates a hello map.
 * @throws {GuestProtocolViolationError}
 */
export function parseHello(value: unknown): GuestHello {
  const parsed = GuestHelloSchema.safeParse(value);
  if (!parsed.success) throw new GuestProtocolViolationError(`malformed hello: ${parsed.error.message}`);
  return parsed.data;
}

function requireId(raw: Record<string, unknown>): number {
  const id = raw.id;
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id <= 0) {
    throw new GuestProtocolViolationError('message without a positive integer id');
  }
  return id;
}

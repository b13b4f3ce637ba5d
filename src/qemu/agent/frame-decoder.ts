import { Unpackr } from 'msgpackr';
import { GuestProtocolViolationError } from '../../errors.js';

/** The largest frame either side may send (guest/PROTOCOL.md). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
const HEADER_BYTES = 4;

// Plain maps and binaries only (records and structured clones are msgpackr extensions the guest must not use);
// 64-bit integers stay exact: numbers when safe, bigints beyond 2^53 ('auto' works; msgpackr's types omit it).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, structuredClone: false, int64AsType: 'auto' as 'bigint' });

/**
 * Turns the agent byte stream into decoded frames: a 4-byte big-endian length, then one msgpack map.
 * It holds no socket; push bytes in and take messages out. Memory is bounded by `maxFrameBytes`, because the
 * body buffer is allocated only after the length was checked. A frame that lies whole in one pushed chunk is
 * decoded in place, so its binaries may be views of that chunk: do not reuse a chunk's memory after pushing it.
 */
export class FrameDecoder {
  readonly #maxFrameBytes: number;
  readonly #header = Buffer.alloc(HEADER_BYTES);
  #headerFill = 0;
  #body: Buffer | undefined;
  #bodyFill = 0;

  constructor(maxFrameBytes = MAX_FRAME_BYTES) {
    this.#maxFrameBytes = maxFrameBytes;
  }

  /**
   * Consumes a chunk and returns every message it completes, in order.
   * @throws {GuestProtocolViolationError} on a zero or oversized length, undecodable msgpack or a non-map value;
   * the decoder is then unusable (the stream cannot be resynchronised).
   */
  push(chunk: Uint8Array): Record<string, unknown>[] {
    const messages: Record<string, unknown>[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      // The common case (a whole frame in the chunk, between frames): no copy.
      if (this.#body === undefined && this.#headerFill === 0 && chunk.length - offset >= HEADER_BYTES) {
        const length = ((chunk[offset]! << 24) | (chunk[offset + 1]! << 16) | (chunk[offset + 2]! << 8) | chunk[offset + 3]!) >>> 0;
        this.#checkLength(length);
        if (chunk.length - offset - HEADER_BYTES >= length) {
          offset += HEADER_BYTES;
          messages.push(decodeBody(chunk.subarray(offset, offset + length)));
          offset += length;
          continue;
        }
      }
      if (this.#body === undefined) {
        const take = Math.min(HEADER_BYTES - this.#headerFill, chunk.length - offset);
        this.#header.set(chunk.subarray(offset, offset + take), this.#headerFill);
        this.#headerFill += take;
        offset += take;
        if (this.#headerFill < HEADER_BYTES) break;
        const length = this.#header.readUInt32BE(0);
        this.#checkLength(length);
        this.#body = Buffer.allocUnsafe(length);
        this.#bodyFill = 0;
        this.#headerFill = 0;
      }
      const take = Math.min(this.#body.length - this.#bodyFill, chunk.length - offset);
      this.#body.set(chunk.subarray(offset, offset + take), this.#bodyFill);
      this.#bodyFill += take;
      offset += take;
      if (this.#bodyFill === this.#body.length) {
        const body = this.#body;
        this.#body = undefined;
        this.#bodyFill = 0;
        messages.push(decodeBody(body));
      }
    }
    return messages;
  }

  #checkLength(length: number): void {
    if (length === 0 || length > this.#maxFrameBytes) {
      throw new GuestProtocolViolationError(`frame length ${length} outside 1..${this.#maxFrameBytes}`);
    }
  }

  /** Bytes held for an incomplete frame (0 between frames). */
  get buffered(): number {
    return this.#body === undefined ? this.#headerFill : HEADER_BYTES + this.#bodyFill;
  }
}

function decodeBody(body: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = unpackr.unpack(body);
  } catch (error) {
    throw new GuestProtocolViolationError('frame body is not valid msgpack', { cause: error });
  }
  // Only a plain map: msgpackr turns odd bytes (0xc1, extensions) into class instances, which are refused too.
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) {
    throw new GuestProtocolViolationError(`frame body is not a map (got ${describe(value)})`);
  }
  return value as Record<string, unknown>;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return typeof value;
}

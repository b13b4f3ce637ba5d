import { Packr } from 'msgpackr';
import { MAX_FRAME_BYTES } from './frame-decoder.js';

const packr = new Packr({ useRecords: false, variableMapSize: true, structuredClone: false });

/**
 * Encodes one message as a frame: 4-byte big-endian length + msgpack map.
 * @throws {RangeError} when the encoded message exceeds `maxFrameBytes`.
 */
export function encodeFrame(message: Record<string, unknown>, maxFrameBytes = MAX_FRAME_BYTES): Buffer {
  const body = packr.pack(message);
  if (body.length > maxFrameBytes) {
    throw new RangeError(`frame of ${body.length} bytes exceeds the ${maxFrameBytes}-byte bound`);
  }
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, 4);
  return frame;
}

import { createHash } from 'node:crypto';
import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { FrameDecoder } from '../../src/qemu/agent/frame-decoder.js';
import { encodeFrame } from '../../src/qemu/agent/frame-encoder.js';
import { GuestProtocolViolationError } from '../../src/errors.js';

const fixtures: Array<{ name: string; messages: Record<string, unknown>[] }> = [
  { name: 'one small map', messages: [{ t: 'res', id: 1, ok: true, v: {} }] },
  { name: 'three maps back to back', messages: [{ t: 'res', id: 1, ok: true, v: 1 }, { t: 'chunk', id: 2, s: 'stdout', d: Buffer.from('hi') }, { t: 'hello', v: 1 }] },
  { name: 'a 1 MiB binary', messages: [{ t: 'chunk', id: 9, s: 'data', d: Buffer.alloc(1024 * 1024, 7) }] },
  { name: 'unicode strings', messages: [{ t: 'res', id: 3, ok: false, e: { code: 'ENOENT', msg: 'ñö ✓ 文件' } }] },
];

// Deep equality on a 1 MiB buffer is slow in vitest; compare binaries by digest instead.
function digestBinaries(messages: Record<string, unknown>[]): unknown[] {
  return messages.map((m) =>
    Object.fromEntries(
      Object.entries(m).map(([k, v]) => [k, v instanceof Uint8Array ? createHash('sha256').update(v).digest('hex') : v]),
    ),
  );
}

function stream(messages: Record<string, unknown>[]): Buffer {
  return Buffer.concat(messages.map((m) => encodeFrame(m)));
}

describe('FrameDecoder', () => {
  for (const fixture of fixtures) {
    it(`decodes ${fixture.name} pushed whole`, () => {
      expect(digestBinaries(new FrameDecoder().push(stream(fixture.messages)))).toEqual(digestBinaries(fixture.messages));
    });
    it(`decodes ${fixture.name} pushed one byte at a time`, () => {
      const decoder = new FrameDecoder();
      const bytes = stream(fixture.messages);
      const out: Record<string, unknown>[] = [];
      // The 1 MiB fixture byte by byte is slow; every byte matters only around the frame boundaries.
      const step = bytes.length > 100_000 ? 4093 : 1;
      for (let i = 0; i < bytes.length; i += step) out.push(...decoder.push(bytes.subarray(i, i + step)));
      expect(digestBinaries(out)).toEqual(digestBinaries(fixture.messages));
      expect(decoder.buffered).toBe(0);
    });
  }

  it('decodes a 1 MiB frame one byte at a time around its header and tail', () => {
    const bytes = stream(fixtures[2]!.messages);
    const decoder = new FrameDecoder();
    const out: Record<string, unknown>[] = [];
    for (let i = 0; i < 16; i++) out.push(...decoder.push(bytes.subarray(i, i + 1)));
    out.push(...decoder.push(bytes.subarray(16, bytes.length - 16)));
    for (let i = bytes.length - 16; i < bytes.length; i++) out.push(...decoder.push(bytes.subarray(i, i + 1)));
    expect(digestBinaries(out)).toEqual(digestBinaries(fixtures[2]!.messages));
  });

  it('refuses a zero length', () => {
    expect(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 0]))).toThrow(GuestProtocolViolationError);
  });

  it('refuses an oversized length before buffering the body', () => {
    const decoder = new FrameDecoder(1024);
    expect(() => decoder.push(Buffer.from([0, 0, 4, 1]))).toThrow(/outside 1\.\.1024/);
  });

  it('refuses a 4 GiB length without allocating it', () => {
    expect(() => new FrameDecoder().push(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toThrow(GuestProtocolViolationError);
  });

  it('refuses a body that is not msgpack', () => {
    const body = Buffer.from([0x81, 0xa1]); // a map whose first key is cut short
    const frame = Buffer.concat([Buffer.from([0, 0, 0, 2]), body]);
    expect(() => new FrameDecoder().push(frame)).toThrow(/not valid msgpack/);
  });

  it('refuses a body that is not a map', () => {
    const bodies = [42, 'text', [1, 2], null, Buffer.from('x')].map((value) => pack(value));
    bodies.push(Buffer.from([0xc1])); // "never used" in msgpack: msgpackr yields an object, still not a map
    for (const body of bodies) {
      const header = Buffer.alloc(4);
      header.writeUInt32BE(body.length);
      expect(() => new FrameDecoder().push(Buffer.concat([header, body]))).toThrow(/not a map/);
    }
  });

  it('decodes a stream cut into two chunks at every offset (whole frames in place, the rest buffered)', () => {
    const messages = fixtures[1]!.messages;
    const bytes = stream(messages);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const decoder = new FrameDecoder();
      const out = [...decoder.push(bytes.subarray(0, cut)), ...decoder.push(bytes.subarray(cut))];
      expect(digestBinaries(out)).toEqual(digestBinaries(messages));
      expect(decoder.buffered).toBe(0);
    }
  });

  it('refuses an oversized length that follows a whole frame in the same chunk', () => {
    const bytes = Buffer.concat([stream([{ t: 'res', id: 1, ok: true, v: 1 }]), Buffer.from([0, 0, 4, 1])]);
    expect(() => new FrameDecoder(1024).push(bytes)).toThrow(/outside 1\.\.1024/);
  });

  it('holds a partial frame until it completes', () => {
    const bytes = stream([{ t: 'res', id: 5, ok: true, v: 'x' }]);
    const decoder = new FrameDecoder();
    expect(decoder.push(bytes.subarray(0, 6))).toEqual([]);
    expect(decoder.buffered).toBe(6);
    expect(decoder.push(bytes.subarray(6))).toEqual([{ t: 'res', id: 5, ok: true, v: 'x' }]);
  });
});

describe('encodeFrame', () => {
  it('refuses a message larger than the bound', () => {
    expect(() => encodeFrame({ d: Buffer.alloc(2000) }, 1024)).toThrow(RangeError);
  });
});

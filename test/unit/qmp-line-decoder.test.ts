import { describe, expect, it } from 'vitest';
import { QmpProtocolError } from '../../src/errors.js';
import { LineDecoder } from '../../src/qemu/qmp/line-decoder.js';

const FIXTURES: ReadonlyArray<{ name: string; wire: string; messages: unknown[] }> = [
  { name: 'one message', wire: '{"return": {}, "id": 1}\n', messages: [{ return: {}, id: 1 }] },
  { name: 'CRLF line ends (as QEMU sends)', wire: '{"return": {}, "id": 1}\r\n', messages: [{ return: {}, id: 1 }] },
  {
    name: 'a greeting, an event and a reply',
    wire:
      '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\r\n' +
      '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n' +
      '{"return": {"running": false, "status": "prelaunch"}, "id": 7}\r\n',
    messages: [
      { QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: '' }, capabilities: ['oob'] } },
      { timestamp: { seconds: 1, microseconds: 2 }, event: 'STOP' },
      { return: { running: false, status: 'prelaunch' }, id: 7 },
    ],
  },
  { name: 'multi-byte UTF-8', wire: '{"return": "héllo ✓ 🚀", "id": 2}\n', messages: [{ return: 'héllo ✓ 🚀', id: 2 }] },
  { name: 'blank lines skipped', wire: '\n\r\n{"id": 3, "return": 1}\n  \n', messages: [{ id: 3, return: 1 }] },
];

describe('LineDecoder', () => {
  for (const fixture of FIXTURES) {
    it(`decodes ${fixture.name} pushed whole`, () => {
      expect(new LineDecoder().push(Buffer.from(fixture.wire))).toEqual(fixture.messages);
    });

    it(`decodes ${fixture.name} pushed one byte at a time`, () => {
      const decoder = new LineDecoder();
      const bytes = Buffer.from(fixture.wire);
      const messages: unknown[] = [];
      for (let i = 0; i < bytes.length; i++) messages.push(...decoder.push(bytes.subarray(i, i + 1)));
      expect(messages).toEqual(fixture.messages);
    });
  }

  it('returns nothing until a partial line is completed', () => {
    const decoder = new LineDecoder();
    expect(decoder.push(Buffer.from('{"return": {}, '))).toEqual([]);
    expect(decoder.push(Buffer.from('"id": 1}\n{"ret'))).toEqual([{ return: {}, id: 1 }]);
    expect(decoder.push(Buffer.from('urn": 2, "id": 2}\n'))).toEqual([{ return: 2, id: 2 }]);
  });

  it('does not keep a reference to a pushed buffer', () => {
    const decoder = new LineDecoder();
    const chunk = Buffer.from('{"id": 1, ');
    decoder.push(chunk);
    chunk.fill(0x20);
    expect(decoder.push(Buffer.from('"return": 5}\n'))).toEqual([{ id: 1, return: 5 }]);
  });

  it('accepts a line of exactly maxLineBytes', () => {
    const line = `"${'x'.repeat(14)}"`;
    expect(line.length).toBe(16);
    expect(new LineDecoder({ maxLineBytes: 16 }).push(Buffer.from(`${line}\n`))).toEqual(['x'.repeat(14)]);
  });

  it('rejects a complete line longer than maxLineBytes', () => {
    const decoder = new LineDecoder({ maxLineBytes: 16 });
    expect(() => decoder.push(Buffer.from(`"${'x'.repeat(15)}"\n`))).toThrow(QmpProtocolError);
  });

  it('rejects an oversized partial line before its newline arrives', () => {
    const decoder = new LineDecoder({ maxLineBytes: 1024 });
    decoder.push(Buffer.alloc(1000, 0x20));
    expect(() => decoder.push(Buffer.alloc(100, 0x20))).toThrow(/longer than 1024 bytes/);
  });

  it('defaults to a 1 MiB bound', () => {
    const decoder = new LineDecoder();
    expect(decoder.maxLineBytes).toBe(1024 * 1024);
    expect(() => decoder.push(Buffer.alloc(1024 * 1024 + 1, 0x20))).toThrow(QmpProtocolError);
  });

  it('rejects a line that is not JSON', () => {
    expect(() => new LineDecoder().push(Buffer.from('{"return": \n'))).toThrow(/not JSON/);
  });

  it('stays failed after an error', () => {
    const decoder = new LineDecoder();
    expect(() => decoder.push(Buffer.from('nope\n'))).toThrow(QmpProtocolError);
    expect(() => decoder.push(Buffer.from('{"id": 1, "return": {}}\n'))).toThrow(QmpProtocolError);
  });
});

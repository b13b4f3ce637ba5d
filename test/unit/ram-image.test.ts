import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { restoreRamImage, saveRamImage, splitByData } from '../../src/qemu/ram-image.js';
import { ramRomRanges } from '../../src/snapshot/rom-ranges.js';

const dir = mkdtempSync(join(tmpdir(), 'evolvm-ram-image-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PAGE = 4096;
const SIZE = 20 * 1024 * 1024; // more than one 16 MiB chunk

/** A RAM-like file: zero except a few marked pages, one of them straddling the chunk boundary. */
function ramFile(name: string, marks: Record<number, number>): { path: string; bytes: Buffer } {
  const bytes = Buffer.alloc(SIZE);
  for (const [page, value] of Object.entries(marks)) bytes.fill(value, Number(page) * PAGE, Number(page) * PAGE + PAGE);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

describe('saveRamImage', () => {
  it('copies the RAM file byte for byte, keeping zero pages as holes', async () => {
    const ram = ramFile('save.ram', { 0: 1, 7: 2, 4095: 3, 4096: 4, 5119: 5 });
    const image = join(dir, 'save.image');
    await saveRamImage(ram.path, image, SIZE);
    expect(readFileSync(image).equals(ram.bytes)).toBe(true);
    // Five non-zero pages are stored; the file system may round up a little, never to the full size.
    expect(statSync(image).blocks * 512).toBeLessThan(64 * PAGE);
    expect(statSync(image).size).toBe(SIZE);
  });

  it('returns where the image holds data: the non-zero pages, runs merged across the 16 MiB chunk boundary', async () => {
    const ram = ramFile('layout.ram', { 0: 1, 1: 1, 7: 2, 4095: 3, 4096: 4, 5119: 5 });
    const layout = await saveRamImage(ram.path, join(dir, 'layout.image'), SIZE);
    expect(layout).toEqual({
      size: SIZE,
      data: [
        { offset: 0, length: 2 * PAGE },
        { offset: 7 * PAGE, length: PAGE },
        { offset: 4095 * PAGE, length: 2 * PAGE },
        { offset: 5119 * PAGE, length: PAGE },
      ],
    });
  });

  it('refuses to overwrite an existing image', async () => {
    const ram = ramFile('exists.ram', { 1: 1 });
    const image = join(dir, 'exists.image');
    writeFileSync(image, 'already here');
    await expect(saveRamImage(ram.path, image, SIZE)).rejects.toMatchObject({ code: 'EEXIST' });
    expect(readFileSync(image, 'utf8')).toBe('already here');
  });
});

describe('restoreRamImage', () => {
  it('writes the image back in place, zeroing pages that were zero when it was saved', async () => {
    const saved = ramFile('restore.ram', { 3: 9, 4097: 8 });
    const image = join(dir, 'restore.image');
    await saveRamImage(saved.path, image, SIZE);
    const inode = statSync(saved.path).ino;
    const scribbled = Buffer.alloc(SIZE, 0x55);
    writeFileSync(saved.path, scribbled);
    await restoreRamImage(image, saved.path, [{ offset: 0, length: SIZE }]);
    expect(readFileSync(saved.path).equals(saved.bytes)).toBe(true);
    expect(statSync(saved.path).ino).toBe(inode);
  });

  it('with the layout, writes zeros over the holes without reading them and gives the same bytes', async () => {
    const saved = ramFile('layout-restore.ram', { 0: 6, 3: 9, 4095: 1, 4096: 8, 5119: 2 });
    const image = join(dir, 'layout-restore.image');
    const layout = await saveRamImage(saved.path, image, SIZE);
    writeFileSync(saved.path, Buffer.alloc(SIZE, 0x55));
    await restoreRamImage(image, saved.path, [{ offset: 0, length: SIZE }], layout);
    expect(readFileSync(saved.path).equals(saved.bytes)).toBe(true);
    // Partial ranges that start and end inside data runs and holes, as the ROM ranges do.
    writeFileSync(saved.path, Buffer.alloc(SIZE, 0x55));
    await restoreRamImage(image, saved.path, [{ offset: 2 * PAGE + 100, length: 2 * PAGE }, { offset: 4095 * PAGE + 5, length: PAGE }], layout);
    const now = readFileSync(saved.path);
    expect(now.subarray(0, 2 * PAGE + 100).every((byte) => byte === 0x55)).toBe(true);
    expect(now.subarray(2 * PAGE + 100, 3 * PAGE).every((byte) => byte === 0)).toBe(true);
    expect(now.subarray(3 * PAGE, 4 * PAGE).every((byte) => byte === 9)).toBe(true);
    expect(now.subarray(4 * PAGE, 4 * PAGE + 100).every((byte) => byte === 0)).toBe(true);
    expect(now.subarray(4 * PAGE + 100, 4095 * PAGE + 5).every((byte) => byte === 0x55)).toBe(true);
    expect(now.subarray(4095 * PAGE + 5, 4096 * PAGE + 5).equals(saved.bytes.subarray(4095 * PAGE + 5, 4096 * PAGE + 5))).toBe(true);
    expect(now.subarray(4096 * PAGE + 5).every((byte) => byte === 0x55)).toBe(true);
  });

  it('splits a range into data and hole parts by the layout, reading short holes between data with it', () => {
    const MB = 256 * PAGE;
    const layout = { size: 100 * MB, data: [{ offset: 2 * MB, length: 3 * MB }, { offset: 10 * MB, length: PAGE }, { offset: 10 * MB + 2 * PAGE, length: PAGE }] };
    expect(splitByData({ offset: 0, length: 12 * MB }, layout)).toEqual([
      { offset: 0, length: 2 * MB, data: false },
      { offset: 2 * MB, length: 3 * MB, data: true },
      { offset: 5 * MB, length: 5 * MB, data: false },
      // Two runs a page apart: one read.
      { offset: 10 * MB, length: 3 * PAGE, data: true },
      { offset: 10 * MB + 3 * PAGE, length: 2 * MB - 3 * PAGE, data: false },
    ]);
    expect(splitByData({ offset: 3 * MB, length: PAGE }, layout)).toEqual([{ offset: 3 * MB, length: PAGE, data: true }]);
    expect(splitByData({ offset: 50 * MB, length: 4 }, layout)).toEqual([{ offset: 50 * MB, length: 4, data: false }]);
    expect(splitByData({ offset: 0, length: 0 }, layout)).toEqual([]);
  });

  it('writes only the ranges it is given', async () => {
    const saved = ramFile('ranges.ram', { 2: 7 });
    const image = join(dir, 'ranges.image');
    await saveRamImage(saved.path, image, SIZE);
    writeFileSync(saved.path, Buffer.alloc(SIZE, 0x55));
    await restoreRamImage(image, saved.path, [{ offset: 2 * PAGE, length: PAGE }, { offset: 10 * PAGE, length: 2 }]);
    const now = readFileSync(saved.path);
    expect(now.subarray(0, 2 * PAGE).every((byte) => byte === 0x55)).toBe(true);
    expect(now.subarray(2 * PAGE, 3 * PAGE).every((byte) => byte === 7)).toBe(true);
    expect(now.subarray(3 * PAGE, 10 * PAGE).every((byte) => byte === 0x55)).toBe(true);
    expect([...now.subarray(10 * PAGE, 10 * PAGE + 3)]).toEqual([0, 0, 0x55]);
  });
});

describe('ramRomRanges', () => {
  const infoRoms = [
    'fw=genroms/kvmvapic.bin size=0x002400 name="kvmvapic.bin"',
    'addr=0000000001000000 size=0x1826634 mem=ram name="/guest/vmlinux ELF program header segment 0"',
    'addr=0000000002a00000 size=0x61a000 mem=ram name="/guest/vmlinux ELF program header segment 1"',
    'addr=00000000ffff0000 size=0x010000 mem=rom name="qboot.rom"',
    '/rom@etc/acpi/tables size=0x200000 name="etc/acpi/tables"',
    '',
  ].join('\n');

  it('lists the ROM blobs QEMU writes into RAM on reset, and nothing else', () => {
    expect(ramRomRanges(infoRoms, 128 * 1024 * 1024)).toEqual([
      { offset: 0x1000000, length: 0x1826634 },
      { offset: 0x2a00000, length: 0x61a000 },
    ]);
  });

  it('gives up when a blob lies outside the RAM file', () => {
    expect(ramRomRanges(infoRoms, 32 * 1024 * 1024)).toBeUndefined();
  });

  it('returns no ranges when QEMU loaded no blob into RAM', () => {
    expect(ramRomRanges('fw=genroms/pvh.bin size=0x000600 name="pvh.bin"\n', 1 << 27)).toEqual([]);
  });
});

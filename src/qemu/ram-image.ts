import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';

/** A byte range of guest RAM (file offset = guest-physical address in low memory). */
export interface RamRange {
  readonly offset: number;
  readonly length: number;
}

/**
 * Where an image made by {@link saveRamImage} holds data: its non-zero runs, sorted, merged and page-aligned.
 * Everything else in it is zero (a hole).
 */
export interface RamImageLayout {
  readonly size: number;
  readonly data: readonly RamRange[];
}

const PAGE = 4096;
const CHUNK = 4 * 1024 * 1024;
// The event loop gets a turn after this many bytes copied.
const YIELD_BYTES = 16 * 1024 * 1024;
const ZERO_PAGE = Buffer.alloc(PAGE);
// Zeros written where an image has holes, instead of reading the holes. Small: a first write from it faults in
// (read-only, onto the zero page) every page it covers, which costs a page fault per 4 KiB once per process.
const ZERO_CHUNK = 1024 * 1024;
let zeroBuffer: Buffer | undefined;
// One buffer for the process: fresh memory costs a page fault per 4 KiB (~400 ms per 128 MiB on this kind of
// machine), so it is faulted in once and reused, and kept small: at 16 MiB its first use cost ~50 ms. It is
// only used inside synchronous blocks, so concurrent copies of different machines can share it.
let chunkBuffer: Buffer | undefined;

function buffer(): Buffer {
  return (chunkBuffer ??= Buffer.alloc(CHUNK));
}

/**
 * Copies the first `size` bytes of a guest RAM file into a new image file, leaving zero pages as holes (with
 * `init_on_free=1` free guest pages are zero, so the image holds little more than what the guest uses).
 * Synchronous reads and writes of tmpfs files are memory copies; the event loop gets a turn every 16 MiB.
 * Returns where the image holds data, for {@link restoreRamImage}.
 * @throws the file system's error; the image may then be partly written and the caller removes it.
 */
export async function saveRamImage(ramFile: string, imageFile: string, size: number): Promise<RamImageLayout> {
  const data: RamRange[] = [];
  const source = openSync(ramFile, 'r');
  try {
    const target = openSync(imageFile, 'wx', 0o600);
    try {
      for (let offset = 0; offset < size; offset += CHUNK) {
        const length = Math.min(CHUNK, size - offset);
        const chunk = buffer();
        readFully(source, chunk, length, offset);
        writeNonZeroRuns(target, chunk, length, offset, data);
        if ((offset + length) % YIELD_BYTES === 0) await yieldToEventLoop();
      }
      // Zero pages at the end are holes too: only the size says they are there.
      ftruncateSync(target, size);
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(source);
  }
  return { size, data };
}

/**
 * Writes `ranges` of an image made by {@link saveRamImage} back into the guest RAM file, in place: the file
 * stays the same inode, so QEMU's shared mapping of it sees the new bytes. The guest must be stopped.
 * With the image's `layout` (what saveRamImage returned for it), its holes are written as zeros without being
 * read: a guest image is mostly holes, so this skips most of the reading (~3 ms of ~28 for 128 MiB here).
 * @throws the file system's error.
 */
export async function restoreRamImage(imageFile: string, ramFile: string, ranges: readonly RamRange[], layout?: RamImageLayout): Promise<void> {
  const source = openSync(imageFile, 'r');
  try {
    const target = openSync(ramFile, 'r+');
    try {
      let sinceYield = 0;
      for (const range of ranges) {
        for (const part of layout ? splitByData(range, layout) : [{ ...range, data: true }]) {
          const end = part.offset + part.length;
          for (let offset = part.offset; offset < end; offset += CHUNK) {
            const length = Math.min(CHUNK, end - offset);
            if (part.data) {
              const chunk = buffer();
              readFully(source, chunk, length, offset);
              writeFully(target, chunk, length, offset);
            } else {
              zeroBuffer ??= Buffer.alloc(ZERO_CHUNK);
              for (let done = 0; done < length; done += ZERO_CHUNK) writeFully(target, zeroBuffer, Math.min(ZERO_CHUNK, length - done), offset + done);
            }
            sinceYield += length;
            if (sinceYield >= YIELD_BYTES) {
              sinceYield = 0;
              await yieldToEventLoop();
            }
          }
        }
      }
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(source);
  }
}

/** Holes shorter than this are read like data: a write of zeros costs a system call, as a read and write do. */
const MIN_HOLE = 256 * 1024;

/**
 * `range` cut where the layout's data runs start and end: each part is all data or all hole (holes shorter than
 * {@link MIN_HOLE} between data are counted as data, which is still right: the image reads as zero there).
 */
export function splitByData(range: RamRange, layout: RamImageLayout): Array<RamRange & { readonly data: boolean }> {
  const parts: Array<{ offset: number; length: number; data: boolean }> = [];
  const push = (offset: number, length: number, data: boolean) => {
    const last = parts.at(-1);
    if (length <= 0) return;
    if (last && last.data === data) last.length += length;
    else parts.push({ offset, length, data });
  };
  const end = range.offset + range.length;
  let at = range.offset;
  // Past the image's size the image reads as zero (readFully's rule): a hole.
  for (const run of layout.data) {
    const runEnd = run.offset + run.length;
    if (runEnd <= at) continue;
    if (run.offset >= end) break;
    const from = Math.max(at, run.offset);
    // A short hole between two data parts is read with them.
    push(at, from - at, parts.length > 0 && from - at < MIN_HOLE);
    const to = Math.min(end, runEnd);
    push(from, to - from, true);
    at = to;
  }
  push(at, end - at, false);
  return parts;
}

function readFully(fd: number, chunk: Buffer, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const read = readSync(fd, chunk, done, length - done, position + done);
    // Past the end of a sparse image (never for RAM files QEMU sized): the rest is zero.
    if (read === 0) {
      chunk.fill(0, done, length);
      return;
    }
    done += read;
  }
}

function writeFully(fd: number, chunk: Buffer, length: number, position: number, start = 0): void {
  let done = 0;
  while (done < length) done += writeSync(fd, chunk, start + done, length - done, position + done);
}

/**
 * Writes the runs of non-zero pages of `chunk`, so zero pages stay holes in the target file, and appends them to
 * `runs` (merged with the last one when they touch, as across a chunk boundary).
 */
function writeNonZeroRuns(fd: number, chunk: Buffer, length: number, position: number, runs: RamRange[]): void {
  const write = (from: number, to: number) => {
    writeFully(fd, chunk, to - from, position + from, from);
    const last = runs.at(-1);
    if (last && last.offset + last.length === position + from) runs[runs.length - 1] = { offset: last.offset, length: last.length + to - from };
    else runs.push({ offset: position + from, length: to - from });
  };
  let runStart = -1;
  for (let page = 0; page < length; page += PAGE) {
    const end = Math.min(page + PAGE, length);
    const zero = chunk.compare(ZERO_PAGE, 0, end - page, page, end) === 0;
    if (!zero && runStart < 0) runStart = page;
    if (zero && runStart >= 0) {
      write(runStart, page);
      runStart = -1;
    }
  }
  if (runStart >= 0) write(runStart, length);
}

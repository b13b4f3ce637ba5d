import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';

/** A byte range of guest RAM (file offset = guest-physical address in low memory). */
export interface RamRange {
  readonly offset: number;
  readonly length: number;
}

const PAGE = 4096;
const CHUNK = 16 * 1024 * 1024;
const ZERO_PAGE = Buffer.alloc(PAGE);
// One buffer for the process: fresh memory costs a page fault per 4 KiB (~400 ms per 128 MiB on this kind of
// machine), so it is faulted in once and reused. It is only used inside synchronous blocks, so concurrent
// copies of different machines can share it.
let chunkBuffer: Buffer | undefined;

function buffer(): Buffer {
  return (chunkBuffer ??= Buffer.alloc(CHUNK));
}

/**
 * Copies the first `size` bytes of a guest RAM file into a new image file, leaving zero pages as holes (with
 * `init_on_free=1` free guest pages are zero, so the image holds little more than what the guest uses).
 * Synchronous reads and writes of tmpfs files are memory copies; the event loop gets a turn between chunks.
 * @throws the file system's error; the image may then be partly written and the caller removes it.
 */
export async function saveRamImage(ramFile: string, imageFile: string, size: number): Promise<void> {
  const source = openSync(ramFile, 'r');
  try {
    const target = openSync(imageFile, 'wx', 0o600);
    try {
      for (let offset = 0; offset < size; offset += CHUNK) {
        const length = Math.min(CHUNK, size - offset);
        const chunk = buffer();
        readFully(source, chunk, length, offset);
        writeNonZeroRuns(target, chunk, length, offset);
        await yieldToEventLoop();
      }
      // Zero pages at the end are holes too: only the size says they are there.
      ftruncateSync(target, size);
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(source);
  }
}

/**
 * Writes `ranges` of an image made by {@link saveRamImage} back into the guest RAM file, in place: the file
 * stays the same inode, so QEMU's shared mapping of it sees the new bytes. The guest must be stopped.
 * @throws the file system's error.
 */
export async function restoreRamImage(imageFile: string, ramFile: string, ranges: readonly RamRange[]): Promise<void> {
  const source = openSync(imageFile, 'r');
  try {
    const target = openSync(ramFile, 'r+');
    try {
      for (const range of ranges) {
        const end = range.offset + range.length;
        for (let offset = range.offset; offset < end; offset += CHUNK) {
          const length = Math.min(CHUNK, end - offset);
          const chunk = buffer();
          readFully(source, chunk, length, offset);
          writeFully(target, chunk, length, offset);
          await yieldToEventLoop();
        }
      }
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(source);
  }
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

/** Writes the runs of non-zero pages of `chunk`, so zero pages stay holes in the target file. */
function writeNonZeroRuns(fd: number, chunk: Buffer, length: number, position: number): void {
  let runStart = -1;
  for (let page = 0; page < length; page += PAGE) {
    const end = Math.min(page + PAGE, length);
    const zero = chunk.compare(ZERO_PAGE, 0, end - page, page, end) === 0;
    if (!zero && runStart < 0) runStart = page;
    if (zero && runStart >= 0) {
      writeFully(fd, chunk, page - runStart, position + runStart, runStart);
      runStart = -1;
    }
  }
  if (runStart >= 0) writeFully(fd, chunk, length - runStart, position + runStart, runStart);
}

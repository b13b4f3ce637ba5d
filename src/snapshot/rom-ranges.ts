import type { RamRange } from '../qemu/ram-image.js';

// Below this guest-physical address, RAM file offsets equal addresses on every machine type we build (q35 keeps
// at least 2 GiB of RAM below its PCI hole; microvm maps RAM from 0).
const LOW_MEMORY_LIMIT = 2 * 1024 * 1024 * 1024;

/**
 * The RAM ranges QEMU rewrites from its ROM blobs on every reset (`-kernel` ELF segments, for example), read
 * from HMP `info roms` lines such as `addr=0000000001000000 size=0x1826634 mem=ram name="…"`. A `snapshot-load`
 * resets the machine before loading device state, so when RAM itself is not in the snapshot these ranges must
 * be written back afterwards. Returns `undefined` when a range cannot be placed in the RAM file: the caller
 * then keeps RAM in the snapshot instead.
 */
export function ramRomRanges(infoRoms: string, ramBytes: number): RamRange[] | undefined {
  const ranges: RamRange[] = [];
  for (const line of infoRoms.split('\n')) {
    const match = /^addr=([0-9a-f]+) size=0x([0-9a-f]+) mem=ram /i.exec(line.trim());
    if (!match) continue;
    const offset = Number.parseInt(match[1]!, 16);
    const length = Number.parseInt(match[2]!, 16);
    const end = offset + length;
    if (!Number.isSafeInteger(end) || end > Math.min(ramBytes, LOW_MEMORY_LIMIT)) return undefined;
    if (length > 0) ranges.push({ offset, length });
  }
  return ranges;
}

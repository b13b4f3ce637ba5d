import type { GuestAccess } from '../../src/index.js';

/**
 * Read requests the guest has completed on its runtimes map (the virtio disk whose serial is evolvm-maps), from
 * /sys/block/<disk>/stat. Reading it runs busybox from the initramfs, which touches no disk.
 */
export async function mapsReads(guest: Pick<GuestAccess, 'exec'>): Promise<number> {
  const script = 'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = evolvm-maps ] && cat $d/stat; done';
  const { stdout } = await guest.exec(['sh', '-c', script]);
  const reads = Number(stdout.trim().split(/\s+/)[0]);
  if (!Number.isSafeInteger(reads)) throw new Error(`no stat for the runtimes map: ${JSON.stringify(stdout)}`);
  return reads;
}

import type { Stage } from '../../src/index.js';

/** How many disk sectors hold markers: one per stage of a lineage of up to this many. */
const MARKER_SECTORS = 3;

/** Marks a stage in its RAM (a file on the guest's tmpfs) and on its disk (sector `sector` of /dev/vda). */
export async function markStage(stage: Stage, name: string, sector: number): Promise<void> {
  await stage.writeFile(`/tmp/in-ram-${name}`, name);
  await stage.exec(['sh', '-c', `echo disk-${name} | dd of=/dev/vda bs=512 seek=${sector} count=1 conv=notrunc 2>/dev/null`]);
}

/** The markers a guest holds: RAM ones sorted by name, disk ones in sector order. */
export async function stageMarkers(stage: Stage): Promise<{ ram: string[]; disk: string[] }> {
  const ram = (await stage.exec(['sh', '-c', 'ls /tmp | grep in-ram- || true'])).stdout.split('\n').filter(Boolean).sort();
  const disk: string[] = [];
  for (let sector = 0; sector < MARKER_SECTORS; sector++) {
    const text = (await stage.exec(['sh', '-c', `dd if=/dev/vda bs=512 skip=${sector} count=1 2>/dev/null | tr -d '\\000' | head -n 1`])).stdout.trim();
    if (text) disk.push(text);
  }
  return { ram, disk };
}

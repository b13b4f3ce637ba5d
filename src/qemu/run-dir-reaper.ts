import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { z } from 'zod';
import { currentOwner, livenessOf, OwnerSchema } from '../util/owner.js';

/** The prefix of every run directory (`mkdtemp`). */
export const RUN_DIR_PREFIX = 'evolvm-';
const RECORD = 'owner.json';
const MAX_RECORD_BYTES = 4096;

const RunDirRecordSchema = z.strictObject({ owner: OwnerSchema, qemuPid: z.number().int().positive() });

/**
 * Records who owns a run directory: the Node process and its QEMU. A later process uses it to remove what an
 * owner killed without cleaning up (SIGKILL, a crash) left behind.
 */
export async function writeRunDirRecord(dir: string, qemuPid: number): Promise<void> {
  const record = { owner: currentOwner(basename(dir)), qemuPid };
  await writeFile(join(dir, RECORD), JSON.stringify(record), { mode: 0o600 });
}

const reaped = new Set<string>();

/**
 * Once per process and parent folder: removes the run directories under `parent` whose owner and QEMU have
 * both exited, and their RAM files and snapshot images on tmpfs. A directory without a readable record (being
 * set up, or made by another version) or from another host is left alone. Never throws: reaping is best effort.
 * @returns the directories removed.
 */
export async function reapOrphanRunDirs(parent: string, shmDir = '/dev/shm'): Promise<string[]> {
  if (reaped.has(parent)) return [];
  reaped.add(parent);
  const removed: string[] = [];
  try {
    const names = (await readdir(parent)).filter((name) => name.startsWith(RUN_DIR_PREFIX));
    if (names.length === 0) return removed;
    const shm = await readdir(shmDir).catch(() => [] as string[]);
    for (const name of names) {
      const dir = join(parent, name);
      if (!(await orphaned(dir))) continue;
      // RAM files are named after the parent and the run directory (see run-paths.ts).
      const prefix = `${basename(parent)}.${name}.`;
      await Promise.all(shm.filter((file) => file.startsWith(prefix)).map((file) => rm(join(shmDir, file), { force: true })));
      await rm(dir, { recursive: true, force: true });
      removed.push(dir);
    }
  } catch {
    // A folder we cannot read or clean is left as it is.
  }
  return removed;
}

async function orphaned(dir: string): Promise<boolean> {
  let text: string;
  try {
    const bytes = await readFile(join(dir, RECORD));
    if (bytes.length > MAX_RECORD_BYTES) return false;
    text = bytes.toString('utf8');
  } catch {
    return false;
  }
  let record: z.output<typeof RunDirRecordSchema>;
  try {
    const parsed = RunDirRecordSchema.safeParse(JSON.parse(text));
    if (!parsed.success) return false;
    record = parsed.data;
  } catch {
    return false;
  }
  if (livenessOf(record.owner) !== 'dead') return false;
  // Without a parent-death signal QEMU may outlive its owner: then the directory is still in use.
  try {
    process.kill(record.qemuPid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

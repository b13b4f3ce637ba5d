import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { z } from 'zod';

/**
 * Who wrote a staging directory, a name claim, a lock or a machine's run directory: the pid, the host, and the process's start time
 * (Linux `/proc/<pid>/stat` field 22), so that a pid reused by an unrelated process is not taken for the
 * writer. A record from another host cannot be checked and is treated as alive.
 */
export const OwnerSchema = z.strictObject({
  pid: z.number().int().positive(),
  host: z.string().max(256),
  /** Clock ticks after boot at which the process started; null where /proc is not available. */
  startTicks: z.string().max(32).nullable(),
  /** Unique per record, so that a record can be told from a newer one at the same path. */
  nonce: z.string().max(64),
  createdAt: z.iso.datetime({ offset: true }),
});
export type Owner = z.output<typeof OwnerSchema>;

export type Liveness = 'alive' | 'dead' | 'unknown';

let selfStartTicks: string | null | undefined;

/** An owner record for this process. */
export function currentOwner(nonce: string): Owner {
  selfStartTicks ??= processStartTicks(process.pid);
  return { pid: process.pid, host: hostname(), startTicks: selfStartTicks, nonce, createdAt: new Date().toISOString() };
}

/**
 * Whether the process that wrote `owner` still runs. `unknown` for another host (a shared file system),
 * which callers treat as alive for locks and fall back to age for staging directories.
 */
export function livenessOf(owner: Pick<Owner, 'pid' | 'host' | 'startTicks'>): Liveness {
  if (owner.host !== hostname()) return 'unknown';
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    // EPERM: the pid exists but belongs to another user.
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return 'dead';
  }
  if (owner.startTicks === null) return 'alive';
  const ticks = processStartTicks(owner.pid);
  // The pid runs, but it is a different process that reused the number.
  if (ticks !== null && ticks !== owner.startTicks) return 'dead';
  return 'alive';
}

/** Field 22 of /proc/<pid>/stat, parsed after the last `)` because the command name may contain spaces. */
export function processStartTicks(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state), so field 22 is fields[19].
    const ticks = fields[19];
    return ticks && /^\d+$/.test(ticks) ? ticks : null;
  } catch {
    return null;
  }
}

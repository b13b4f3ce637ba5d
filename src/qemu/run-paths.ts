import { basename, dirname, join } from 'node:path';

/** The files of one machine's run directory, plus its RAM file (on tmpfs, so sharing it costs no disk I/O). */
export interface RunPaths {
  readonly dir: string;
  readonly qmpSocket: string;
  readonly agentSocket: string;
  /** The runtimes' direct port (guest/RUNTIMES.md). */
  readonly runtimeSocket: string;
  /** Where QEMU listens for a restore's device state, and where a persist's `migrate` sends its own. */
  readonly incomingSocket: string;
  readonly migrationSocket: string;
  readonly consoleLog: string;
  /** QEMU's stderr, when the spawn helper started it. */
  readonly stderrLog: string;
  /** qcow2 holding in-VM snapshots' vmstate; not visible to the guest. */
  readonly scratchDisk: string;
  /** qcow2 the guest sees as /dev/vda. */
  readonly dataDisk: string;
  /** The guest RAM's backing file. */
  readonly ramFile: string;
}

export function runPaths(dir: string, shmDir = '/dev/shm'): RunPaths {
  return {
    dir,
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    runtimeSocket: join(dir, 'rt.sock'),
    incomingSocket: join(dir, 'incoming.sock'),
    migrationSocket: join(dir, 'migration.sock'),
    consoleLog: join(dir, 'console.log'),
    stderrLog: join(dir, 'qemu-stderr.log'),
    scratchDisk: join(dir, 'scratch.qcow2'),
    dataDisk: join(dir, 'data.qcow2'),
    // Named after the run directory and its parent, so whoever owns the parent can find leftovers.
    ramFile: join(shmDir, `${basename(dirname(dir))}.${basename(dir)}.ram`),
  };
}

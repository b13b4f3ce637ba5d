import { join } from 'node:path';

/** The files of one machine's run directory. */
export interface RunPaths {
  readonly dir: string;
  readonly qmpSocket: string;
  readonly agentSocket: string;
  readonly consoleLog: string;
  readonly scratchDisk: string;
}

export function runPaths(dir: string): RunPaths {
  return {
    dir,
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    consoleLog: join(dir, 'console.log'),
    scratchDisk: join(dir, 'scratch.qcow2'),
  };
}

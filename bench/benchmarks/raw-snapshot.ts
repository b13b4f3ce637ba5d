import { Machine } from '../../src/index.js';
import { SCRATCH_NODE } from '../../src/qemu/argv.js';
import { runJob } from '../../src/qemu/qmp/index.js';
import { since, type BenchContext } from '../benchmark.js';

const TAG = 'bench-raw';
const JOB_TIMEOUT_MS = 60_000;
/** What `loadRuntime` runs in the guest, so that each load replaces a changed guest as a devolve does. */
const CHANGE_GUEST = 'mkdir -p /run/evolvm-bench && { sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $! > /run/evolvm-bench/pid; }';

/** A plain machine (same config as a sandbox's) on which `snapshot-load` runs straight over QMP. */
export interface RawSnapshotTarget {
  /** Changes the guest (untimed), times one `snapshot-load` job, then pings the guest (untimed) to check it survived. */
  timedLoad(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * The floor under `devolve`: the same `snapshot-load` job with `runJob`, without the stage layer, the agent
 * resync or the clock/RNG refresh that a devolve adds. Boots the machine and saves the snapshot it will load.
 */
export async function startRawSnapshotTarget({ runDir, signal }: BenchContext): Promise<RawSnapshotTarget> {
  const vm = await Machine.boot({ runDir }, { signal });
  let jobs = 0;
  const job = (command: string) =>
    runJob(vm.qmp, command, { 'job-id': `bench-${++jobs}`, tag: TAG, vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE] }, { timeoutMs: JOB_TIMEOUT_MS, signal });
  try {
    await job('snapshot-save');
  } catch (error) {
    await vm.stop();
    throw error;
  }
  return {
    async timedLoad() {
      await vm.exec(['sh', '-c', CHANGE_GUEST], { signal });
      const start = performance.now();
      await job('snapshot-load');
      const elapsed = since(start);
      await vm.ping({ signal });
      return elapsed;
    },
    stop: () => vm.stop(),
  };
}

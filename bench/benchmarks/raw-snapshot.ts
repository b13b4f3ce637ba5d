import { rm } from 'node:fs/promises';
import { Machine } from '../../src/index.js';
import { DATA_NODE, SCRATCH_NODE } from '../../src/qemu/argv.js';
import { runJob } from '../../src/qemu/qmp/index.js';
import { restoreRamImage, saveRamImage } from '../../src/qemu/ram-image.js';
import { ramRomRanges } from '../../src/snapshot/rom-ranges.js';
import { since, type BenchContext } from '../benchmark.js';

const JOB_TIMEOUT_MS = 60_000;
/** What `loadRuntime` runs in the guest, so that each load replaces a changed guest as a devolve does. */
const CHANGE_GUEST = 'mkdir -p /run/evolvm-bench && { sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $! > /run/evolvm-bench/pid; }';

/** A plain machine (same config as a sandbox's) on which snapshots are loaded straight over QMP. */
export interface RawSnapshotTarget {
  /**
   * Changes the guest (untimed), then times one load of the snapshot taken at start, then pings the guest
   * (untimed) to check it survived. `ram-file`: what a devolve does below the stage layer (RAM image written
   * back, `snapshot-load` of device state, ROM ranges rewritten, cont). `vmstate`: QEMU's own `snapshot-load`
   * with RAM in the vmstate, the mechanism evolvm replaced.
   */
  timedLoad(mode: 'ram-file' | 'vmstate'): Promise<number>;
  stop(): Promise<void>;
}

/**
 * The floor under `devolve`: its snapshot mechanics without the stage layer, the agent resync or the clock/RNG
 * refresh. Boots the machine and saves one snapshot of each kind.
 */
export async function startRawSnapshotTarget({ runDir, signal }: BenchContext): Promise<RawSnapshotTarget> {
  const vm = await Machine.boot({ runDir }, { signal });
  const image = `${vm.paths.ramFile}.bench-raw`;
  const ramBytes = vm.config.memoryMiB * 1024 * 1024;
  const bounds = { timeoutMs: JOB_TIMEOUT_MS, signal };
  let jobs = 0;
  const job = (command: string, tag: string) =>
    runJob(vm.qmp, command, { 'job-id': `bench-${++jobs}`, tag, vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, bounds);
  const ignoreShared = (state: boolean) =>
    vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state }] }, bounds);
  const stop = async () => {
    await vm.stop();
    await rm(image, { force: true });
  };
  let romRanges;
  try {
    await job('snapshot-save', 'vmstate');
    romRanges = ramRomRanges(await vm.qmp.execute<string>('human-monitor-command', { 'command-line': 'info roms' }), ramBytes);
    if (!romRanges) throw new Error('the guest kernel is not where the RAM file can rewrite it');
    await ignoreShared(true);
    await vm.qmp.execute('stop', {}, bounds);
    await saveRamImage(vm.paths.ramFile, image, ramBytes);
    await job('snapshot-save', 'ram-file');
    await vm.qmp.execute('cont', {}, bounds);
  } catch (error) {
    await stop();
    throw error;
  }
  const ranges = romRanges;
  return {
    async timedLoad(mode) {
      await vm.exec(['sh', '-c', CHANGE_GUEST], { signal });
      await ignoreShared(mode === 'ram-file');
      const start = performance.now();
      if (mode === 'vmstate') {
        await job('snapshot-load', 'vmstate');
      } else {
        await vm.qmp.execute('stop', {}, bounds);
        await restoreRamImage(image, vm.paths.ramFile, [{ offset: 0, length: ramBytes }]);
        await job('snapshot-load', 'ram-file');
        await restoreRamImage(image, vm.paths.ramFile, ranges);
        await vm.qmp.execute('cont', {}, bounds);
      }
      const elapsed = since(start);
      await vm.ping({ signal });
      return elapsed;
    },
    stop,
  };
}

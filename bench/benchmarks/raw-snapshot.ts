import { Machine, sandboxOf, type Stage } from '../../src/index.js';
import { DATA_NODE, SCRATCH_NODE } from '../../src/qemu/argv.js';
import { runJob } from '../../src/qemu/qmp/index.js';
import { restoreRamImage } from '../../src/qemu/ram-image.js';
import { ramRomRanges } from '../../src/snapshot/rom-ranges.js';
import { since, type BenchContext } from '../benchmark.js';

const JOB_TIMEOUT_MS = 60_000;
/** What `loadRuntime` runs in the guest, so that each load replaces a changed guest as a devolve does. */
const CHANGE_GUEST = 'mkdir -p /run/evolvm-bench && { sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $! > /run/evolvm-bench/pid; }';

let jobs = 0;

/**
 * The floor under `devolve`: the very snapshot a devolve to `stage` loads (its tag and RAM image, on the same
 * machine), loaded straight over QMP without the stage layer, the agent resync or the clock/RNG refresh: RAM
 * image written back, `snapshot-load` of device state, ROM ranges rewritten, cont. First changes the guest below
 * the stage layer (untimed), as a devolve replaces a changed guest; the load puts the stage's state back, so the
 * stage stays what it was. Afterwards pings the guest (untimed) to check it survived. Returns the load's ms.
 * @throws {Error} unless the sandbox holds exactly one in-VM snapshot, kept as a RAM image (the stage's).
 */
export async function timedRawLoadOf(stage: Stage, signal: AbortSignal): Promise<number> {
  const { machine, snapshots } = sandboxOf(stage);
  const tags = [...snapshots.tags];
  const image = tags.length === 1 ? snapshots.ramImageOf(tags[0]!) : undefined;
  if (!image) throw new Error(`expected one in-VM snapshot with a RAM image, found ${tags.length}`);
  const tag = tags[0]!;
  const ramBytes = machine.config.memoryMiB * 1024 * 1024;
  const bounds = { timeoutMs: JOB_TIMEOUT_MS, signal };
  const romRanges = ramRomRanges(await machine.qmp.execute<string>('human-monitor-command', { 'command-line': 'info roms' }, bounds), ramBytes);
  if (!romRanges) throw new Error('the guest kernel is not where the RAM file can rewrite it');
  await machine.exec(['sh', '-c', CHANGE_GUEST], { signal });
  const start = performance.now();
  await machine.qmp.execute('stop', {}, bounds);
  await restoreRamImage(image.path, machine.paths.ramFile, [{ offset: 0, length: ramBytes }], image.layout);
  const args = { 'job-id': `bench-raw-${++jobs}`, tag, vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] };
  await runJob(machine.qmp, 'snapshot-load', args, bounds);
  await restoreRamImage(image.path, machine.paths.ramFile, romRanges, image.layout);
  await machine.qmp.execute('cont', {}, bounds);
  const elapsed = since(start);
  await machine.ping({ signal });
  return elapsed;
}

/** A plain machine with one snapshot that keeps RAM in the vmstate, loaded by QEMU's own `snapshot-load`. */
export interface VmstateSnapshotTarget {
  /** Changes the guest (untimed), times one load of the snapshot, then pings the guest (untimed). */
  timedLoad(): Promise<number>;
  stop(): Promise<void>;
}

/** Boots the machine and saves its snapshot: the mechanism devolve used before RAM images, for comparison. */
export async function startVmstateSnapshotTarget({ runDir, signal }: BenchContext): Promise<VmstateSnapshotTarget> {
  const vm = await Machine.boot({ runDir }, { signal });
  const bounds = { timeoutMs: JOB_TIMEOUT_MS, signal };
  const job = (command: string) =>
    runJob(vm.qmp, command, { 'job-id': `bench-vmstate-${++jobs}`, tag: 'vmstate', vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, bounds);
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

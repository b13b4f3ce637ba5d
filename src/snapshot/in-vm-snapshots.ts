import { SnapshotError } from '../errors.js';
import { DATA_NODE, SCRATCH_NODE } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { runJob } from '../qemu/qmp/index.js';

export interface SnapshotCallOptions {
  signal?: AbortSignal;
}

let jobCounter = 0;

/**
 * In-VM snapshots of one machine, kept in its qcow2 scratch disk (`snapshot-save` / `snapshot-load` /
 * `snapshot-delete` QMP jobs). RAM and disks are saved together, so a load rolls back both.
 * Tags are the caller's; a tag is written once (QEMU fails a duplicate, HMP would silently overwrite).
 */
export class InVmSnapshots {
  readonly #machine: Machine;
  readonly #tags = new Set<string>();

  constructor(machine: Machine) {
    this.#machine = machine;
  }

  /** Tags saved and not yet deleted. */
  get tags(): ReadonlySet<string> {
    return this.#tags;
  }

  /**
   * Saves RAM, device state and the guest's disk under `tag`; the guest keeps running afterwards.
   * @throws {SnapshotError} with the QMP or QEMU-exit error as cause.
   * @throws {OperationNotAllowedError} when the machine is not running or paused.
   */
  async save(tag: string, options: SnapshotCallOptions = {}): Promise<void> {
    const { lifecycle } = this.#machine;
    lifecycle.send({ type: 'SAVE' });
    try {
      // No new guest I/O starts while saving; wait for what is in flight so no frame is cut by the snapshot.
      await this.#machine.agent.whenIdle(this.#machine.config.agentTimeoutMs);
      await this.#job('snapshot-save', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options);
      this.#tags.add(tag);
    } catch (error) {
      throw new SnapshotError('save', tag, { cause: this.#machine.exitError ?? error });
    } finally {
      lifecycle.trySend({ type: 'SAVE_DONE', paused: false });
    }
  }

  /**
   * Restores `tag`, then brings the guest's view of the world up to date: the agent session drops what was in
   * flight and reads a fresh hello, the clock is set and the RNG reseeded.
   * @throws {SnapshotError} with the QMP, agent or QEMU-exit error as cause.
   * @throws {OperationNotAllowedError} when the machine is not running or paused.
   */
  async load(tag: string, options: SnapshotCallOptions = {}): Promise<void> {
    const machine = this.#machine;
    machine.lifecycle.send({ type: 'RESTORE' });
    try {
      await this.#job('snapshot-load', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options);
    } catch (error) {
      machine.lifecycle.trySend({ type: 'RESTORE_DONE', paused: false });
      throw new SnapshotError('load', tag, { cause: machine.exitError ?? error });
    }
    machine.lifecycle.trySend({ type: 'RESTORE_DONE', paused: false });
    try {
      // Pipelined: resync fails what was pending and sends hello at once; clock and RNG requests follow it.
      const hello = machine.agent.resync(`restored snapshot ${tag}`, { signal: options.signal });
      await Promise.all([hello, machine.refreshIdentity({ signal: options.signal })]);
    } catch (error) {
      throw new SnapshotError('load', tag, { cause: machine.exitError ?? error });
    }
  }

  /**
   * Deletes `tag` and frees its space in the scratch disk.
   * @throws {SnapshotError}
   */
  async delete(tag: string, options: SnapshotCallOptions = {}): Promise<void> {
    this.#machine.lifecycle.assert('qmp', 'snapshot delete');
    try {
      await this.#job('snapshot-delete', tag, { devices: [SCRATCH_NODE, DATA_NODE] }, options);
      this.#tags.delete(tag);
    } catch (error) {
      throw new SnapshotError('delete', tag, { cause: this.#machine.exitError ?? error });
    }
  }

  #job(command: string, tag: string, args: Record<string, unknown>, options: SnapshotCallOptions): Promise<void> {
    return runJob(
      this.#machine.qmp,
      command,
      { 'job-id': `${command}-${++jobCounter}`, tag, ...args },
      { timeoutMs: this.#machine.config.qmpTimeoutMs, signal: options.signal },
    );
  }
}

import { rm } from 'node:fs/promises';
import { SnapshotError } from '../errors.js';
import { DATA_NODE, SCRATCH_NODE } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { runJob } from '../qemu/qmp/index.js';
import { restoreRamImage, saveRamImage, type RamImageLayout, type RamRange } from '../qemu/ram-image.js';
import { ramRomRanges } from './rom-ranges.js';
import { step } from '../util/trace.js';

export interface SnapshotCallOptions {
  signal?: AbortSignal;
}

/** A snapshot loaded into a running guest ({@link InVmSnapshots.load}). */
export interface LoadedSnapshot {
  /**
   * Settles when the restored guest has answered the fresh hello and set its clock and RNG.
   * Rejects with a {@link SnapshotError} (cause: the agent's or QEMU's error) when it did not.
   */
  readonly resynced: Promise<void>;
}

/**
 * Where a machine's snapshots keep guest RAM. `file`: a sparse copy of the shared RAM file on tmpfs, with only
 * device state in the qcow2 (x-ignore-shared), which is several times faster to save and load than QEMU parsing
 * RAM page by page. `vmstate`: RAM in the qcow2 with the device state, for machines whose RAM is not a shared
 * file (those restored from a persisted snapshot map its image privately).
 */
type RamMode = { readonly kind: 'file'; readonly romRanges: readonly RamRange[] } | { readonly kind: 'vmstate' };

let jobCounter = 0;

/** A tag's guest RAM: a sparse image file on tmpfs, and where it holds data. */
export interface RamImage {
  readonly path: string;
  readonly layout: RamImageLayout;
}

/**
 * In-VM snapshots of one machine: device state (and, for machines without a shared RAM file, RAM) in its qcow2
 * scratch disk through `snapshot-save` / `snapshot-load` / `snapshot-delete` QMP jobs, which also snapshot the
 * guest's data disk; RAM as a sparse image file beside the machine's RAM file. A load rolls back RAM, devices
 * and disk together. Tags are the caller's; a tag is written once (QEMU fails a duplicate).
 */
export class InVmSnapshots {
  readonly #machine: Machine;
  // tag → its RAM image, or undefined when RAM is in the vmstate.
  readonly #tags = new Map<string, RamImage | undefined>();
  // Every RAM image this object created and has not removed; all go when the machine stops.
  readonly #images = new Set<string>();
  #imageCount = 0;
  #mode: Promise<RamMode> | undefined;

  constructor(machine: Machine) {
    this.#machine = machine;
    machine.deferCleanup('snapshot RAM images', () => this.#removeImages());
  }

  /** Tags saved and not yet deleted. */
  get tags(): ReadonlySet<string> {
    return new Set(this.#tags.keys());
  }

  /** Where `tag` keeps guest RAM: a sparse image file on tmpfs, or undefined when RAM is in its vmstate (or no such tag). */
  ramImageOf(tag: string): RamImage | undefined {
    return this.#tags.get(tag);
  }

  /**
   * Saves RAM, device state and the guest's disk under `tag`; the guest keeps running afterwards.
   * @throws {SnapshotError} with the QMP, file system or QEMU-exit error as cause; nothing of the tag is kept.
   * @throws {OperationNotAllowedError} when the machine is not running.
   */
  async save(tag: string, options: SnapshotCallOptions = {}): Promise<void> {
    const machine = this.#machine;
    machine.lifecycle.send({ type: 'SAVE' });
    try {
      // No new guest I/O starts while saving; wait for what is in flight so no frame is cut by the snapshot.
      await machine.whenIdle(machine.config.agentTimeoutMs);
      const mode = await this.#ramMode(options);
      if (mode.kind === 'vmstate') {
        await this.#job('snapshot-save', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options);
        this.#tags.set(tag, undefined);
      } else {
        const image = `${machine.paths.ramFile}.snap-${++this.#imageCount}`;
        this.#images.add(image);
        let layout: RamImageLayout | undefined;
        try {
          await this.#paused(options, async () => {
            layout = await step('save: RAM file → image', () => saveRamImage(machine.paths.ramFile, image, this.#ramBytes));
            await step('save: snapshot-save (device state)', () =>
              this.#job('snapshot-save', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options),
            );
          });
        } catch (error) {
          await this.#removeImage(image);
          throw error;
        }
        this.#tags.set(tag, { path: image, layout: layout! });
      }
    } catch (error) {
      throw new SnapshotError('save', tag, { cause: machine.exitError ?? error });
    } finally {
      machine.lifecycle.trySend({ type: 'SAVE_DONE', paused: false });
    }
  }

  /**
   * Restores `tag` and resumes the guest, then queues the update of the guest's view of the world: the agent
   * session drops what was in flight and asks for a fresh hello, the clock is set and the RNG reseeded. Resolves
   * once the guest runs again; the update is then on its way ahead of any later request (the agent serves its
   * channel in order), and `resynced` settles when the guest has done it.
   *
   * Why not wait for it: under TCG the load empties QEMU's translation cache, so the guest's first work after it
   * runs slowly (~20–25 ms here); a caller can overlap its own next steps with that instead of waiting idle.
   * @throws {SnapshotError} with the QMP, file system or QEMU-exit error as cause.
   * @throws {OperationNotAllowedError} when the machine is not running.
   */
  async load(tag: string, options: SnapshotCallOptions = {}): Promise<LoadedSnapshot> {
    const machine = this.#machine;
    machine.lifecycle.send({ type: 'RESTORE' });
    // Before the guest stops: bytes QEMU has not read from a dropped connection are gone by the time it resumes.
    machine.runtimeChannel.beforeLoad(`restored snapshot ${tag}`);
    try {
      const image = this.#tags.get(tag);
      if (image === undefined) {
        await this.#job('snapshot-load', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options);
      } else {
        const mode = await this.#ramMode(options);
        const romRanges = mode.kind === 'file' ? mode.romRanges : [];
        await this.#paused(options, async () => {
          // RAM first: loading virtio device state checks the rings in guest RAM against it.
          await step('load: image → RAM file', () =>
            restoreRamImage(image.path, machine.paths.ramFile, [{ offset: 0, length: this.#ramBytes }], image.layout),
          );
          await step('load: snapshot-load (device state)', () =>
            this.#job('snapshot-load', tag, { vmstate: SCRATCH_NODE, devices: [SCRATCH_NODE, DATA_NODE] }, options),
          );
          // The load reset the machine, which rewrote the kernel's ELF segments from QEMU's copy.
          await step('load: ROM ranges', () => restoreRamImage(image.path, machine.paths.ramFile, romRanges, image.layout));
        });
      }
    } catch (error) {
      machine.lifecycle.trySend({ type: 'RESTORE_DONE', paused: false });
      throw new SnapshotError('load', tag, { cause: machine.exitError ?? error });
    }
    machine.lifecycle.trySend({ type: 'RESTORE_DONE', paused: false });
    // Fails what was pending and sends the request at once. Not under the caller's signal: this goes on after
    // load returns, bounded by the agent's timeout.
    const resynced = step('load: agent resync + clock + RNG (in the guest)', () => machine.resyncAfterLoad(`restored snapshot ${tag}`)).catch(
      (error: unknown) => {
        throw new SnapshotError('load', tag, { cause: machine.exitError ?? error });
      },
    );
    // Marked handled here; a caller that awaits `resynced` still gets the rejection.
    resynced.catch(() => {});
    return { resynced };
  }

  /**
   * Deletes `tag` and frees its space in the scratch disk and on tmpfs.
   * @throws {SnapshotError}
   */
  async delete(tag: string, options: SnapshotCallOptions = {}): Promise<void> {
    this.#machine.lifecycle.assert('qmp', 'snapshot delete');
    try {
      await this.#job('snapshot-delete', tag, { devices: [SCRATCH_NODE, DATA_NODE] }, options);
      const image = this.#tags.get(tag);
      this.#tags.delete(tag);
      if (image !== undefined) await this.#removeImage(image.path);
    } catch (error) {
      throw new SnapshotError('delete', tag, { cause: this.#machine.exitError ?? error });
    }
  }

  get #ramBytes(): number {
    return this.#machine.config.memoryMiB * 1024 * 1024;
  }

  /** Decided once per machine, on first use. */
  #ramMode(options: SnapshotCallOptions): Promise<RamMode> {
    if (!this.#mode) {
      const mode = this.#decideRamMode(options);
      // A failed decision (QEMU gone, say) is not remembered.
      mode.catch(() => {
        if (this.#mode === mode) this.#mode = undefined;
      });
      this.#mode = mode;
    }
    return this.#mode;
  }

  async #decideRamMode(options: SnapshotCallOptions): Promise<RamMode> {
    const { qmp, config, ramShared } = this.#machine;
    const bounds = { timeoutMs: config.qmpTimeoutMs, signal: options.signal };
    if (!ramShared) return { kind: 'vmstate' };
    const roms = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info roms' }, bounds);
    const romRanges = ramRomRanges(roms, this.#ramBytes);
    if (!romRanges) return { kind: 'vmstate' };
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, bounds);
    return { kind: 'file', romRanges };
  }

  /** Runs `work` with the guest stopped, and resumes it afterwards whatever happened. */
  async #paused(options: SnapshotCallOptions, work: () => Promise<void>): Promise<void> {
    const { qmp, config } = this.#machine;
    const bounds = { timeoutMs: config.qmpTimeoutMs, signal: options.signal };
    await step('stop', () => qmp.execute('stop', {}, bounds));
    try {
      await work();
    } finally {
      // Its own bound: the caller's signal may be what ended the work.
      await step('cont', () => qmp.execute('cont', {}, { timeoutMs: config.qmpTimeoutMs }).catch(() => {}));
    }
  }

  async #removeImage(image: string): Promise<void> {
    this.#images.delete(image);
    await rm(image, { force: true });
  }

  async #removeImages(): Promise<void> {
    this.#tags.clear();
    await Promise.all([...this.#images].map((image) => this.#removeImage(image)));
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

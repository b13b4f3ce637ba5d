import { withReferenceLineage } from './reference-lineage-default.js';
import type { RestoreConfigInput } from '../qemu/config.js';
import type { SnapshotStore } from '../snapshot/store/snapshot-store.js';
import type { MachineConfigInput } from '../qemu/config.js';
import { Sandbox, type RestoreOptions, type SandboxBootOptions } from './sandbox.js';
import { RootStage } from './stage.js';

/** A freshly booted guest: kernel up, agent answering, no runtime yet. The root of the reference lineage. */
export class KernelBooted extends RootStage {
  static readonly stageName = 'KernelBooted';
  declare private readonly brand: 'KernelBooted';

  /**
   * Starts a new sandbox in this stage from a persisted snapshot, without booting.
   * @throws {SnapshotMismatchError} for a snapshot of another stage (or QEMU, machine type, guest image).
   * @throws see {@link Sandbox.restore}.
   */
  static async fromSnapshot(store: SnapshotStore, ref: string, config?: RestoreConfigInput, options?: RestoreOptions): Promise<KernelBooted> {
    return Sandbox.restore(KernelBooted, store, ref, config, await withReferenceLineage(options));
  }

  /**
   * Starts `count` sandboxes in this stage from one persisted snapshot, sharing its memory copy-on-write.
   * @throws see {@link Sandbox.fork}.
   */
  static async fork(store: SnapshotStore, ref: string, count: number, config?: RestoreConfigInput, options?: RestoreOptions): Promise<KernelBooted[]> {
    return Sandbox.fork(KernelBooted, store, ref, count, config, await withReferenceLineage(options));
  }

  /**
   * Boots a new sandbox.
   * @example
   * ```ts
   * await using booted = await KernelBooted.boot({ memoryMiB: 128 });
   * const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
   * ```
   * @throws the errors of {@link Machine.boot}.
   */
  static boot(config: MachineConfigInput = {}, options: SandboxBootOptions = {}): Promise<KernelBooted> {
    return Sandbox.boot(KernelBooted, config, options);
  }
}

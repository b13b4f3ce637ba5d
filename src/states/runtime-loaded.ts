import { withReferenceLineage } from './reference-lineage-default.js';
import type { RestoreConfigInput } from '../qemu/config.js';
import type { SnapshotStore } from '../snapshot/store/snapshot-store.js';
import { Sandbox, type RestoreOptions } from './sandbox.js';
import type { RuntimeKind } from '../transitions/runtime-kinds.js';
import type { KernelBooted } from './kernel-booted.js';
import { ChildStage } from './stage.js';

/** Which runtime a {@link RuntimeLoaded} stage holds. */
export interface RuntimeInfo {
  readonly kind: RuntimeKind;
  /** Guest pid of the long-lived runtime process. */
  readonly pid: number;
  /** The runtime's own version string. */
  readonly version: string;
}

/** A runtime is loaded in the guest, ready for user code. */
export class RuntimeLoaded extends ChildStage<KernelBooted, RuntimeInfo> {
  static readonly stageName = 'RuntimeLoaded';
  declare private readonly brand: 'RuntimeLoaded';

  /**
   * Starts a new sandbox in this stage from a persisted snapshot, without booting.
   * @throws {SnapshotMismatchError} for a snapshot of another stage (or QEMU, machine type, guest image).
   * @throws see {@link Sandbox.restore}.
   */
  static async fromSnapshot(store: SnapshotStore, ref: string, config?: RestoreConfigInput, options?: RestoreOptions): Promise<RuntimeLoaded> {
    return Sandbox.restore(RuntimeLoaded, store, ref, config, await withReferenceLineage(options));
  }

  /**
   * Starts `count` sandboxes in this stage from one persisted snapshot, sharing its memory copy-on-write.
   * @throws see {@link Sandbox.fork}.
   */
  static async fork(store: SnapshotStore, ref: string, count: number, config?: RestoreConfigInput, options?: RestoreOptions): Promise<RuntimeLoaded[]> {
    return Sandbox.fork(RuntimeLoaded, store, ref, count, config, await withReferenceLineage(options));
  }

  /** The loaded runtime. */
  get runtime(): RuntimeInfo {
    return this.data;
  }
}

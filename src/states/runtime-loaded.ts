import type { KernelBooted } from './kernel-booted.js';
import { ChildStage } from './stage.js';

/** Which runtime a {@link RuntimeLoaded} stage holds. */
export interface RuntimeInfo {
  readonly kind: 'shell';
  /** Guest pid of the long-lived runtime process. */
  readonly pid: number;
}

/** A runtime is loaded in the guest, ready for user code. */
export class RuntimeLoaded extends ChildStage<KernelBooted, RuntimeInfo> {
  static readonly stageName = 'RuntimeLoaded';
  declare private readonly brand: 'RuntimeLoaded';

  /** The loaded runtime. */
  get runtime(): RuntimeInfo {
    return this.data;
  }
}

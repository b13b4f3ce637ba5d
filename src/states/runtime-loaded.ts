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
  /** Whether the runtime serves the host on its own port (guest/RUNTIMES.md); absent means relayed by the agent. */
  readonly direct?: boolean;
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

import type { MachineConfigInput } from '../qemu/config.js';
import { Sandbox, type SandboxBootOptions } from './sandbox.js';
import { RootStage } from './stage.js';

/** A freshly booted guest: kernel up, agent answering, no runtime yet. The root of the reference lineage. */
export class KernelBooted extends RootStage {
  static readonly stageName = 'KernelBooted';
  declare private readonly brand: 'KernelBooted';

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

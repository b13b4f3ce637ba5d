import { RootStage, Sandbox, type MachineConfigInput } from '../../src/index.js';

/** A fresh guest: the root of this lineage. */
export class Booted extends RootStage {
  static readonly stageName = 'example.Booted';
  declare private readonly brand: 'Booted';

  static boot(config: MachineConfigInput = {}): Promise<Booted> {
    return Sandbox.boot(Booted, config);
  }
}

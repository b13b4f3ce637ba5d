import { GuestOperationError } from '../errors.js';
import { KernelBooted } from '../states/kernel-booted.js';
import type { LineageRegistry } from '../states/lineage-registry.js';
import { RuntimeLoaded } from '../states/runtime-loaded.js';
import type { Stage } from '../states/stage.js';
import { UserCodeLoaded } from '../states/user-code-loaded.js';
import { loadCode } from './load-code.js';
import { loadRuntime, type RuntimeSpec } from './load-runtime.js';
import type { Transition } from './transition.js';

/** The reference lineage, for cold-boot fallbacks: KernelBooted → loadRuntime → RuntimeLoaded → loadCode → UserCodeLoaded. */
export const referenceLineage: LineageRegistry = {
  stages: [KernelBooted, RuntimeLoaded, UserCodeLoaded],
  transitions: {
    loadRuntime: (args) => loadRuntime(args as RuntimeSpec) as unknown as Transition<Stage, Stage>,
    loadCode: (args) => {
      const base64 = (args as { base64?: unknown } | null)?.base64;
      if (typeof base64 !== 'string') throw new GuestOperationError('replay', 'NOT_REPLAYABLE', 'the code was too large to be recorded');
      return loadCode(Buffer.from(base64, 'base64')) as unknown as Transition<Stage, Stage>;
    },
  },
};

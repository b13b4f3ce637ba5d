import { GuestOperationError } from '../errors.js';
import { KernelBooted } from '../states/kernel-booted.js';
import { RuntimeLoaded, type RuntimeInfo } from '../states/runtime-loaded.js';
import { RUNTIME_DIR, RUNTIME_PID_PATH } from './runtime-paths.js';
import { defineTransition, type Transition } from './transition.js';

export interface RuntimeSpec {
  /** `shell`: user code is a POSIX shell script whose functions `call` runs. */
  kind: 'shell';
}

/**
 * Loads a runtime into a booted guest: starts its long-lived guest process and records its pid.
 * @example
 * ```ts
 * const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
 * ```
 */
export function loadRuntime(spec: RuntimeSpec): Transition<KernelBooted, RuntimeLoaded> {
  return defineTransition({
    name: 'loadRuntime',
    from: KernelBooted,
    to: RuntimeLoaded,
    args: spec,
    run: async ({ guest }): Promise<RuntimeInfo> => {
      // The runtime process outlives this exec: its output goes nowhere so the exec's pipes close.
      const script = `mkdir -p ${RUNTIME_DIR} && { sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $! > ${RUNTIME_PID_PATH}; } && cat ${RUNTIME_PID_PATH}`;
      const result = await guest.exec(['sh', '-c', script]);
      const pid = Number.parseInt(result.stdout.trim(), 10);
      if (result.exitCode !== 0 || !Number.isSafeInteger(pid)) {
        throw new GuestOperationError('loadRuntime', 'RUNTIME_START_FAILED', result.stderr || `exit ${result.exitCode}`);
      }
      return { kind: spec.kind, pid };
    },
  });
}

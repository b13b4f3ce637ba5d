import { GuestOperationError } from '../errors.js';
import { KernelBooted } from '../states/kernel-booted.js';
import { RuntimeLoaded, type RuntimeInfo } from '../states/runtime-loaded.js';
import type { GuestAccess } from '../states/guest-access.js';
import type { RuntimeKind } from './runtime-kinds.js';
import { RUNTIME_DIR, RUNTIME_PID_PATH } from './runtime-paths.js';
import { defineTransition, type Transition } from './transition.js';

export interface RuntimeSpec {
  kind: RuntimeKind;
}

/**
 * Loads a runtime into a booted guest: starts its long-lived guest process.
 * @example
 * ```ts
 * const runtime = await booted.evolve(loadRuntime({ kind: 'wasm' }));
 * ```
 */
export function loadRuntime(spec: RuntimeSpec): Transition<KernelBooted, RuntimeLoaded> {
  return defineTransition({
    name: 'loadRuntime',
    from: KernelBooted,
    to: RuntimeLoaded,
    args: spec,
    run: async ({ guest }): Promise<RuntimeInfo> => (spec.kind === 'shell' ? startShellRuntime(guest) : startGuestRuntime(guest, spec.kind)),
  });
}

async function startGuestRuntime(guest: GuestAccess, kind: RuntimeKind): Promise<RuntimeInfo> {
  const started = (await guest.request('rt_start', { name: kind })) as { pid?: unknown; version?: unknown };
  if (typeof started?.pid !== 'number') throw new GuestOperationError('loadRuntime', 'RUNTIME_START_FAILED', 'rt_start gave no pid');
  return { kind, pid: started.pid, version: String(started.version ?? 'unknown') };
}

async function startShellRuntime(guest: GuestAccess): Promise<RuntimeInfo> {
  // The holder process outlives this exec: its output goes nowhere so the exec's pipes close.
  const script = `mkdir -p ${RUNTIME_DIR} && { sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $! > ${RUNTIME_PID_PATH}; } && cat ${RUNTIME_PID_PATH}`;
  const result = await guest.exec(['sh', '-c', script]);
  const pid = Number.parseInt(result.stdout.trim(), 10);
  if (result.exitCode !== 0 || !Number.isSafeInteger(pid)) {
    throw new GuestOperationError('loadRuntime', 'RUNTIME_START_FAILED', result.stderr || `exit ${result.exitCode}`);
  }
  return { kind: 'shell', pid, version: 'busybox-sh' };
}

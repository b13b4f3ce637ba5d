import { GuestOperationError } from '../errors.js';
import { KernelBooted } from '../states/kernel-booted.js';
import { RuntimeLoaded, type RuntimeInfo } from '../states/runtime-loaded.js';
import type { GuestAccess } from '../states/guest-access.js';
import type { RuntimeKind } from './runtime-kinds.js';
import { RUNTIME_DIR, RUNTIME_PID_PATH } from './runtime-paths.js';
import { defineTransition, type Transition } from './transition.js';

export interface RuntimeSpec {
  kind: RuntimeKind;
  /**
   * Serve calls over the runtimes' own virtio port, straight from the host, rather than relayed by the agent
   * (default `true`; guest/RUNTIMES.md). About twice the calls per second under TCG. One runtime at a time can
   * hold the port; ignored for `shell`.
   */
  direct?: boolean;
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
    run: async ({ guest }): Promise<RuntimeInfo> =>
      spec.kind === 'shell' ? startShellRuntime(guest) : startGuestRuntime(guest, spec.kind, spec.direct ?? true),
  });
}

async function startGuestRuntime(guest: GuestAccess, kind: RuntimeKind, direct: boolean): Promise<RuntimeInfo> {
  const started = (await guest.request('rt_start', { name: kind, direct })) as { pid?: unknown; version?: unknown; direct?: unknown };
  if (typeof started?.pid !== 'number') throw new GuestOperationError('loadRuntime', 'RUNTIME_START_FAILED', 'rt_start gave no pid');
  // The guest says whether the runtime got the port (a machine without it starts the runtime without).
  return { kind, pid: started.pid, version: String(started.version ?? 'unknown'), direct: started.direct === true };
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

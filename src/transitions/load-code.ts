import { createHash } from 'node:crypto';
import { GuestOperationError, GuestProtocolViolationError } from '../errors.js';
import type { GuestAccess } from '../states/guest-access.js';
import { RuntimeLoaded } from '../states/runtime-loaded.js';
import { sandboxOf } from '../states/stage.js';
import { UserCodeLoaded, type CodeInfo, type ExportInfo } from '../states/user-code-loaded.js';
import { RUNTIME_CODE_PATH } from './runtime-paths.js';
import { defineTransition, type Transition } from './transition.js';

/** Code up to this size is recorded with the lineage (base64 in the snapshot manifest, which is bounded to 1 MiB). */
export const REPLAYABLE_CODE_BYTES = 256 * 1024;

/**
 * Loads user code into the runtime: a WebAssembly module (bytes), JavaScript source, or a shell script. The
 * runtime compiles it and runs its start code before the stage is entered, so bad code fails the transition
 * (and rolls the sandbox back) instead of failing later calls.
 */
export function loadCode(code: string | Uint8Array): Transition<RuntimeLoaded, UserCodeLoaded> {
  const bytes = typeof code === 'string' ? Buffer.from(code) : Buffer.from(code);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  return defineTransition({
    name: 'loadCode',
    from: RuntimeLoaded,
    to: UserCodeLoaded,
    // Small code is kept in the lineage record so a cold-boot fallback can replay this transition.
    args: { sha256, bytes: bytes.length, ...(bytes.length <= REPLAYABLE_CODE_BYTES ? { base64: bytes.toString('base64') } : {}) },
    run: async ({ guest, source }): Promise<CodeInfo> => {
      const runtime = source.runtime.kind;
      const exports = runtime === 'shell' ? await loadShell(guest, bytes) : await loadIntoRuntime(guest, source, bytes);
      return { sha256, bytes: bytes.length, runtime, ...(source.runtime.direct ? { direct: true } : {}), exports };
    },
  });
}

async function loadIntoRuntime(guest: GuestAccess, source: RuntimeLoaded, code: Buffer): Promise<ExportInfo[]> {
  const imports = sandboxOf(source).hostFunctions.signatures.map((s) => ({
    name: s.name,
    params: s.wasm?.params ?? [],
    results: s.wasm?.results ?? [],
  }));
  const value = (await guest.runtimeRequest(source.runtime, 'load', { code, imports })) as { exports?: unknown };
  if (!Array.isArray(value?.exports)) throw new GuestProtocolViolationError('runtime load reply without exports');
  return value.exports.map((e: { name?: unknown; params?: unknown; results?: unknown }) => ({
    name: String(e?.name),
    params: Array.isArray(e?.params) ? e.params.map(String) : [],
    results: Array.isArray(e?.results) ? e.results.map(String) : [],
  }));
}

async function loadShell(guest: GuestAccess, code: Buffer): Promise<ExportInfo[]> {
  await guest.writeFile(RUNTIME_CODE_PATH, code, { mkdirs: true });
  const check = await guest.exec(['sh', '-n', RUNTIME_CODE_PATH]);
  if (check.exitCode !== 0) throw new GuestOperationError('loadCode', 'INVALID_CODE', check.stderr.slice(0, 2000));
  // Sourcing runs the code's top level, as a module's start function would.
  const start = await guest.exec(['sh', '-c', `. ${RUNTIME_CODE_PATH}`]);
  if (start.exitCode !== 0) throw new GuestOperationError('loadCode', 'START_TRAP', start.stderr.slice(0, 2000));
  return [];
}

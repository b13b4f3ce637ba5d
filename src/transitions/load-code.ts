import { createHash } from 'node:crypto';
import { GuestOperationError } from '../errors.js';
import { RuntimeLoaded } from '../states/runtime-loaded.js';
import { UserCodeLoaded, type CodeInfo } from '../states/user-code-loaded.js';
import { RUNTIME_CODE_PATH } from './runtime-paths.js';
import { defineTransition, type Transition } from './transition.js';

/**
 * Loads user code into the runtime. The code is checked by the runtime before the stage is entered, so bad
 * code fails the transition (and rolls the sandbox back) instead of failing later calls.
 */
export function loadCode(code: string | Uint8Array): Transition<RuntimeLoaded, UserCodeLoaded> {
  const bytes = typeof code === 'string' ? Buffer.from(code) : Buffer.from(code);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  return defineTransition({
    name: 'loadCode',
    from: RuntimeLoaded,
    to: UserCodeLoaded,
    args: { sha256, bytes: bytes.length },
    run: async ({ guest }): Promise<CodeInfo> => {
      await guest.writeFile(RUNTIME_CODE_PATH, bytes, { mkdirs: true });
      // Sourcing runs the code's top level, as a runtime's module start would.
      const check = await guest.exec(['sh', '-n', RUNTIME_CODE_PATH]);
      if (check.exitCode !== 0) throw new GuestOperationError('loadCode', 'INVALID_CODE', check.stderr.slice(0, 2000));
      const start = await guest.exec(['sh', '-c', `. ${RUNTIME_CODE_PATH}`]);
      if (start.exitCode !== 0) throw new GuestOperationError('loadCode', 'START_FAILED', start.stderr.slice(0, 2000));
      return { sha256, bytes: bytes.length };
    },
  });
}

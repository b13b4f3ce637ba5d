import { afterAll, beforeAll } from 'vitest';
import { KernelBooted, loadCode, loadRuntime, type HostFunction, type RuntimeLoaded, type UserCodeLoaded } from '../../src/index.js';
import { expectNoLeaks } from './leaks.js';

/** Where a test file keeps its shared runtime stage: tests that move the sandbox hand the new stage back. */
export interface RuntimeHolder {
  get(): RuntimeLoaded | undefined;
  set(stage: RuntimeLoaded): void;
}

/**
 * One sandbox in the runtime stage for the tests of a file: booted in `runDir` with `hostFunctions` and evolved
 * to a `kind` runtime before them, closed and checked for leftovers after them.
 * Returns `withCode`: loads `code`, runs `body` on the code stage, and devolves back to the runtime stage
 * (it throws if the body left the sandbox elsewhere without handing the new stage back).
 */
export function shareRuntime(
  runDir: string,
  kind: 'wasm' | 'js',
  hostFunctions: readonly HostFunction[],
  holder: RuntimeHolder,
): { withCode<T>(code: string | Uint8Array, body: (stage: UserCodeLoaded) => Promise<T>): Promise<T> } {
  beforeAll(async () => {
    const booted = await KernelBooted.boot({ runDir }, { hostFunctions });
    holder.set(await booted.evolve(loadRuntime({ kind })));
  });

  afterAll(async () => {
    await holder.get()?.close();
    await expectNoLeaks(runDir);
  });

  return {
    async withCode(code, body) {
      const stage = await holder.get()!.evolve(loadCode(code));
      try {
        return await body(stage);
      } finally {
        if (stage.status === 'ready') holder.set(await stage.devolve());
        else if (holder.get()!.status !== 'ready') throw new Error('the sandbox left the runtime stage');
      }
    },
  };
}

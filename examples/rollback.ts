/**
 * Rolling back to a partially loaded state: a bad load, a hang and a crash inside the guest, each undone
 * without booting again. boot → load the WASM runtime, then:
 * 1. a load of bytes that are not WebAssembly: refused, and the "runtime loaded" stage stays usable;
 * 2. a load whose start function traps: rolled back to "runtime loaded" before the error reaches you;
 * 3. a call that never returns: its bound moves the sandbox back to "runtime loaded" (`CallTimeoutError.recovered`);
 * 4. the runtime process crashes in the guest (killed): the pending call fails with `RUNTIME_EXITED` (within
 *    ~1 s: QEMU reports a port's closing at most once a second), and `devolve()` brings back the runtime as it
 *    was when it had just loaded.
 * After each, a good module loads and answers.
 *
 * Run: npx tsx examples/rollback.ts
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CallTimeoutError, GuestOperationError, KernelBooted, loadCode, loadRuntime, RuntimeLoaded, TransitionFailedError } from '../src/index.js';

const wasm = (name: string) => readFileSync(join(import.meta.dirname, 'wasm', `${name}.wasm`));

/** Runs `work`, which must fail, and prints what it failed with and how long that took. */
async function expectFailure(label: string, work: () => Promise<unknown>): Promise<unknown> {
  const started = performance.now();
  try {
    await work();
  } catch (error) {
    const took = (performance.now() - started).toFixed(1);
    const code = error instanceof GuestOperationError ? ` (${error.guestCode})` : '';
    console.log(`${label.padEnd(44)} → ${(error as Error).constructor.name}${code}, ${took} ms`);
    return error;
  }
  throw new Error(`${label} was expected to fail`);
}

/** Loads module A into `runtime` and calls it: proof that the stage is usable. */
async function proveUsable(runtime: RuntimeLoaded): Promise<RuntimeLoaded> {
  const code = await runtime.evolve(loadCode(wasm('module-a')));
  console.log(`  then module A loads: compute(6, 7) → ${await code.call<number>('compute', 6, 7)}`);
  return code.devolve();
}

const booted = await KernelBooted.boot();
try {
  let runtime = await booted.evolve(loadRuntime({ kind: 'wasm' }));
  console.log(`booted and loaded ${runtime.runtime.version}`);

  // 1. Not WebAssembly: the load fails, the source stage is left as it was.
  const invalid = await expectFailure('1. loadCode(bytes that are not wasm)', () => runtime.evolve(loadCode(Buffer.from('not wasm'))));
  console.log(`  a TransitionFailedError: ${invalid instanceof TransitionFailedError}; the runtime stage is ${runtime.status}`);
  runtime = await proveUsable(runtime);

  // 2. A start function that traps: the guest had begun the load; the snapshot taken before it is restored.
  await expectFailure('2. loadCode(start function traps)', () => runtime.evolve(loadCode(wasm('start-trap'))));
  console.log(`  the runtime stage is ${runtime.status}`);
  runtime = await proveUsable(runtime);

  // 3. A hang: the call's bound fires, and the sandbox is moved back to "runtime loaded" for you.
  const hanging = await runtime.evolve(loadCode(wasm('forever')));
  const timeout = await expectFailure('3. call forever() with a 500 ms bound', () => hanging.callWith({ timeoutMs: 500 }, 'forever'));
  runtime = (timeout as CallTimeoutError).recovered as RuntimeLoaded;
  console.log(`  recovered a ${runtime.stageName}, ${runtime.status}`);
  runtime = await proveUsable(runtime);

  // 4. A crash: the runtime process dies under a call; moving back restores it as it was.
  const crashing = await runtime.evolve(loadCode(wasm('forever')));
  const pending = crashing.callWith({ timeoutMs: 60_000 }, 'forever');
  await new Promise((resolve) => setTimeout(resolve, 200));
  await crashing.exec(['kill', '-9', String(runtime.runtime.pid)]);
  await expectFailure('4. the runtime is killed under a call', () => pending);
  const started = performance.now();
  runtime = await crashing.devolve();
  console.log(`  devolve → ${runtime.stageName} in ${(performance.now() - started).toFixed(1)} ms: the runtime runs again`);
  await proveUsable(runtime);
} finally {
  await booted.close();
}

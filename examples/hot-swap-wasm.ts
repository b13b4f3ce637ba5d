/**
 * The main demo: hot-swapping WebAssembly modules without ever booting again.
 * boot → load the WASM runtime → load module A → call → devolve to "runtime loaded" → load module B → call,
 * printing each step and how long it took. Then the same swap again, to show it stays fast.
 *
 * Run: npm run demo
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KernelBooted, loadCode, loadRuntime } from '../src/index.js';

const wasm = (name: string) => readFileSync(join(import.meta.dirname, 'wasm', `${name}.wasm`));

async function step<T>(label: string, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const result = await work();
  console.log(`${label.padEnd(48)} ${(performance.now() - started).toFixed(1).padStart(8)} ms`);
  return result;
}

const booted = await step('boot (cold)', () => KernelBooted.boot());
try {
  let runtime = await step('loadRuntime(wasm)', () => booted.evolve(loadRuntime({ kind: 'wasm' })));
  console.log(`  runtime: ${runtime.runtime.version}`);
  const a = await step('loadCode(module A: compute = x + y)', () => runtime.evolve(loadCode(wasm('module-a'))));
  console.log(`  A.compute(6, 7) → ${await step('  call', () => a.call<number>('compute', 6, 7))}`);
  runtime = await step('devolve → RuntimeLoaded (no reboot)', () => a.devolve());
  const b = await step('loadCode(module B: compute = x * y)', () => runtime.evolve(loadCode(wasm('module-b'))));
  console.log(`  B.compute(6, 7) → ${await step('  call', () => b.call<number>('compute', 6, 7))}`);
  console.log(`  B.calls() → ${await b.call<number>('calls')} (A's state is gone with A)`);
  runtime = await step('devolve → RuntimeLoaded', () => b.devolve());
  const again = await step('loadCode(module A) again', () => runtime.evolve(loadCode(wasm('module-a'))));
  console.log(`  A.compute(20, 22) → ${await step('  call', () => again.call<number>('compute', 20, 22))}`);
} finally {
  await booted.close();
}

/**
 * Hot swap without rebooting: boot → load the runtime → load code A → call → devolve to "runtime loaded" →
 * load code B → call, printing each step and how long it took.
 *
 * Run: npm run demo
 */
import { KernelBooted, loadCode, loadRuntime } from '../src/index.js';

async function step<T>(label: string, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const result = await work();
  console.log(`${label.padEnd(44)} ${(performance.now() - started).toFixed(1).padStart(8)} ms`);
  return result;
}

const booted = await step('boot (cold)', () => KernelBooted.boot());
try {
  const runtime = await step('loadRuntime(shell)', () => booted.evolve(loadRuntime({ kind: 'shell' })));
  const moduleA = await step('loadCode(A: greet in English)', () => runtime.evolve(loadCode('greet() { echo "hello, $1"; }')));
  console.log(`  A.greet("world") → ${(await step('  call', () => moduleA.call<string>('greet', 'world'))).trim()}`);
  const again = await step('devolve → RuntimeLoaded (no reboot)', () => moduleA.devolve());
  const moduleB = await step('loadCode(B: greet in French)', () => again.evolve(loadCode('greet() { echo "bonjour, $1"; }')));
  console.log(`  B.greet("monde") → ${(await step('  call', () => moduleB.call<string>('greet', 'monde'))).trim()}`);
  await step('devolve → KernelBooted', () => moduleB.devolveTo(KernelBooted));
} finally {
  await booted.close();
}

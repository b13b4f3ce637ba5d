/**
 * A child process for the owner-crash tests (bundled with esbuild and run with node):
 * - `hold RUNDIR`: boots a sandbox, prints `qemu <pid>`, and waits to be killed;
 * - `persist RUNDIR STORE`: boots a sandbox, prints `booted`, then persists it under new names forever, printing
 *   `persisted NAME` after each. The test SIGKILLs it at a random moment.
 */
import { FsSnapshotStore, KernelBooted, sandboxOf } from '../../src/index.js';

const [mode, runDir, storeDir] = process.argv.slice(2);
if (!runDir) throw new Error('usage: owner-crash-child.ts hold|persist RUNDIR [STORE]');
const booted = await KernelBooted.boot({ runDir });
if (mode === 'hold') {
  process.stdout.write(`qemu ${sandboxOf(booted).machine.pid}\n`);
  setInterval(() => {}, 1 << 30);
} else {
  const store = await FsSnapshotStore.open(storeDir!);
  process.stdout.write('booted\n');
  for (let n = 0; ; n++) {
    await booted.writeFile('/tmp/generation', String(n));
    const info = await booted.persist(store, `p-${process.pid}-${n}`);
    process.stdout.write(`persisted ${info.name}\n`);
  }
}

// Run by qemu-process.test.ts in its own Node process: starts children through a launcher, then ends.
import { QemuProcess, type QemuLauncher } from '../../src/qemu/qemu-process.js';

const [mode, stderrLog, launcherArg] = process.argv.slice(2);
const launcher = (launcherArg ?? 'helper') as QemuLauncher;
if (mode === 'prepare') {
  // Awaiting the zygote alone must not let the process end before it is ready, and must not hold it after.
  console.log(`prepared ${String(await QemuProcess.prepare('/bin/sh'))}`);
} else if (mode === 'idle') {
  // A child that has exited must not keep this process alive through the helper.
  const child = await QemuProcess.spawn('/bin/sh', ['-c', 'exit 0'], { consoleLog: '/dev/null', stderrLog: stderrLog!, killGraceMs: 500, launcher });
  await child.exited;
  console.log('done');
} else if (mode === 'background') {
  // A live child let go of the event loop (a standby machine) must not keep this process alive.
  const child = await QemuProcess.spawn('/bin/sleep', ['30'], { consoleLog: '/dev/null', stderrLog: stderrLog!, killGraceMs: 500, launcher });
  child.holdEventLoop(false);
  console.log(`pid ${child.pid}`);
} else {
  // Exiting while a child runs takes the child down.
  const child = await QemuProcess.spawn('/bin/sleep', ['30'], { consoleLog: '/dev/null', stderrLog: stderrLog!, killGraceMs: 500, launcher });
  console.log(`pid ${child.pid}`);
  process.exit(0);
}

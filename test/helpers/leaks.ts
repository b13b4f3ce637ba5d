import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { expect } from 'vitest';

/**
 * A run-directory parent private to one test file. Every machine the file starts lives under it, so leaks are
 * easy to find: after the file, the folder must be empty and no QEMU may name it on its command line.
 */
export function testRunDir(name: string): string {
  return mkdtempSync(join(tmpdir(), `evolvm-test-${name}-`));
}

/** QEMU processes whose command line mentions `dir`. */
export function qemuProcessesUnder(dir: string): string[] {
  try {
    return execFileSync('pgrep', ['-a', '-f', `qemu-system.*${dir}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

/** Asserts that nothing the file started is left: no QEMU, no run directories, no sockets. Removes `dir`. */
export async function expectNoLeaks(dir: string): Promise<void> {
  // A stopped machine's cleanup finishes asynchronously after its process exits; give it a moment.
  for (let i = 0; i < 50 && (qemuProcessesUnder(dir).length > 0 || readdirSync(dir).length > 0); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  expect(qemuProcessesUnder(dir)).toEqual([]);
  expect(readdirSync(dir)).toEqual([]);
  // Guest RAM files live on /dev/shm, named after the run directory's parent.
  expect(readdirSync('/dev/shm').filter((name) => name.startsWith(`${basename(dir)}.`))).toEqual([]);
  rmSync(dir, { recursive: true, force: true });
}

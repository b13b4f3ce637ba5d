import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsSnapshotStore, Machine } from '../../src/index.js';
import { STAGING_PREFIX } from '../../src/snapshot/store/layout.js';
import { qemuProcessesUnder, testRunDir } from '../helpers/leaks.js';

/** 20 by default, as the snapshot issue asks; EVOLVM_PERSIST_KILLS changes it. */
const KILLS = Number(process.env.EVOLVM_PERSIST_KILLS ?? 20);
const runDir = testRunDir('owner-crash');
const work = mkdtempSync(join(tmpdir(), 'evolvm-owner-crash-'));
let childEntry: string[];
let bundle: string | undefined;

beforeAll(async () => {
  // Bundled once, so each child starts in ~0.2 s rather than ~1 s under tsx. Packages stay imports, resolved
  // from node_modules beside the bundle (bundling execa's CommonJS dependencies into ESM does not work).
  const esbuild = await import('esbuild');
  const outfile = join(process.cwd(), 'node_modules', '.cache', 'evolvm-tests', `owner-crash-child-${process.pid}.mjs`);
  const entry = fileURLToPath(new URL('./owner-crash-child.ts', import.meta.url));
  await esbuild.build({ entryPoints: [entry], bundle: true, packages: 'external', platform: 'node', format: 'esm', target: 'node20', outfile, logLevel: 'silent' });
  bundle = outfile;
  childEntry = [outfile];
});

afterAll(() => {
  expect(qemuProcessesUnder(runDir)).toEqual([]);
  removeOrphans();
  rmSync(runDir, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
  if (bundle) rmSync(bundle, { force: true });
});

/** What an owner killed with SIGKILL cannot remove: its run directories and RAM files. */
function removeOrphans(): void {
  for (const name of readdirSync(runDir)) rmSync(join(runDir, name), { recursive: true, force: true });
  for (const name of readdirSync('/dev/shm')) if (name.startsWith(`${basename(runDir)}.`)) rmSync(join('/dev/shm', name), { force: true });
}

function startChild(args: string[]): { child: ChildProcess; output: () => string; line: (prefix: string) => Promise<string> } {
  const child = spawn(process.execPath, [...childEntry, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: process.cwd() });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const line = (prefix: string) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = output.split('\n').find((l) => l.startsWith(prefix));
        if (found) {
          clearInterval(timer);
          resolve(found);
        } else if (child.exitCode !== null) {
          clearInterval(timer);
          reject(new Error(`child exited (${child.exitCode}) before printing ${prefix}:\n${output}`));
        }
      };
      const timer = setInterval(check, 10);
    });
  return { child, output: () => output, line };
}

async function killHard(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

async function gone(pid: number, withinMs: number): Promise<boolean> {
  for (const end = Date.now() + withinMs; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
  }
  return false;
}

describe('the owning process dies without cleaning up', () => {
  it('SIGKILL of the owner takes its QEMU down too, and the next machine started there removes what it left', async () => {
    const { child, line } = startChild(['hold', runDir]);
    const pid = Number((await line('qemu ')).split(' ')[1]);
    expect(await gone(pid, 0)).toBe(false);
    await killHard(child);
    expect(await gone(pid, 3_000)).toBe(true);
    expect(qemuProcessesUnder(runDir)).toEqual([]);
    // The killed owner could not clean up: its run directory and RAM file are still there.
    const shmOf = () => readdirSync('/dev/shm').filter((name) => name.startsWith(`${basename(runDir)}.`));
    expect(readdirSync(runDir)).toHaveLength(1);
    expect(shmOf()).toHaveLength(1);
    const next = await Machine.boot({ runDir });
    try {
      expect(readdirSync(runDir)).toEqual([basename(next.paths.dir)]);
      expect(shmOf()).toEqual([basename(next.paths.ramFile)]);
    } finally {
      await next.stop();
    }
  }, 60_000);

  it(`survives ${KILLS} SIGKILLs of a process persisting a real sandbox: the store opens clean, every snapshot verifies`, async () => {
    const storeDir = join(work, 'store');
    let persisted = 0;
    for (let kill = 0; kill < KILLS; kill++) {
      const { child, output, line } = startChild(['persist', runDir, storeDir]);
      await line('booted');
      // A persist takes a few hundred ms: this lands before, inside (copying RAM, migrating device state,
      // converting the disk, committing) or between persists.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 1_200));
      await killHard(child);
      persisted += output().split('\n').filter((l) => l.startsWith('persisted ')).length;
      removeOrphans();
    }
    expect(qemuProcessesUnder(runDir)).toEqual([]);
    const store = await FsSnapshotStore.open(storeDir);
    const listed = await store.list();
    // Every entry is a whole snapshot: none half-written, none failing its checksums.
    for (const entry of listed) {
      expect(entry.ok).toBe(true);
      if (entry.ok) await expect(store.verify(entry.snapshot.id)).resolves.toBeDefined();
    }
    // A kill between the commit and the child's print leaves one more than it reported.
    expect(listed.length).toBeGreaterThanOrEqual(persisted);
    expect(listed.length).toBeLessThanOrEqual(persisted + KILLS);
    expect(readdirSync(storeDir).filter((name) => name.startsWith(STAGING_PREFIX))).toEqual([]);
  }, 300_000);
});

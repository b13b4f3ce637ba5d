import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { SnapshotManifestDraft } from '../../src/snapshot/store/manifest.js';
import type { SnapshotWriter } from '../../src/snapshot/store/snapshot-store.js';

/** A fresh temp directory for one test; `dispose` removes it (files inside are 0444, which rm handles). */
export async function tempDir(label: string): Promise<{ path: string; dispose: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `evolvm-store-${label}-`));
  return { path, dispose: () => rm(path, { recursive: true, force: true }) };
}

/** A valid manifest draft, as a writer would return it. */
export function draft(overrides: Partial<SnapshotManifestDraft> = {}): SnapshotManifestDraft {
  return {
    stage: {
      name: 'RuntimeLoaded',
      lineage: [
        { stage: 'KernelBooted', transition: null, args: null },
        { stage: 'RuntimeLoaded', transition: 'loadRuntime', args: { kind: 'shell' } },
      ],
    },
    parent: null,
    qemu: { version: '8.2.2', machine: 'pc-q35-8.2' },
    guest: { imageHash: 'sha256:' + 'ab'.repeat(32) },
    memoryMiB: 128,
    hostFunctions: [{ name: 'log', params: { type: 'array' }, result: { type: 'null' } }],
    ...overrides,
  };
}

/** A writer that puts the given bytes in vmstate and disk. */
export function writerOf(
  vmstate: Uint8Array | string = 'vmstate bytes',
  disk: Uint8Array | string = 'disk bytes',
  overrides: Partial<SnapshotManifestDraft> = {},
): SnapshotWriter {
  return async (_dir, { vmstatePath, diskPath }) => {
    await writeFile(vmstatePath, vmstate);
    await writeFile(diskPath, disk);
    return draft(overrides);
  };
}

/** Awaits a rejection and returns the error, for field-by-field assertions. */
export async function rejectionOf(promise: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await promise;
  } catch (error) {
    return error as Error & Record<string, unknown>;
  }
  expect.fail('expected a rejection');
}

export const CHILD_SCRIPT = fileURLToPath(new URL('./store-crash-child.ts', import.meta.url));

/**
 * Bundles the child script into one .mjs file in `dir` (esbuild, which tsx and vite already bring), so that
 * each child starts in ~0.2 s instead of ~1 s under tsx: the crash test starts twenty of them.
 * @returns the argv prefix that runs the child.
 */
export async function buildChild(dir: string): Promise<string[]> {
  try {
    const esbuild = await import('esbuild');
    const outfile = join(dir, 'store-crash-child.mjs');
    await esbuild.build({ entryPoints: [CHILD_SCRIPT], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile, logLevel: 'silent' });
    return [outfile];
  } catch {
    return ['--import', 'tsx', CHILD_SCRIPT];
  }
}

/** Runs the store child script with `args`; resolves once it has printed `readyLine`. */
export async function spawnChild(
  args: string[],
  readyLine: string,
  entry: string[] = ['--import', 'tsx', CHILD_SCRIPT],
): Promise<{ child: ChildProcess; output: () => string }> {
  const child = spawn(process.execPath, [...entry, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    const onData = (): void => {
      if (output.includes(`${readyLine}\n`)) {
        child.stdout!.off('data', onData);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code, signal) => reject(new Error(`child exited (${code ?? signal}) before ${readyLine}:\n${output}`)));
  });
  return { child, output: () => output };
}

/** SIGKILLs a child and waits until it is reaped (so its pid is really dead). */
export async function killHard(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

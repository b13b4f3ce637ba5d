import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleTrimShimPath } from '../../src/qemu/native-shims.js';

// The shim preloaded into QEMU (native/idle-malloc-trim.c), tried on a probe that frees 64 MiB of heap and calls
// malloc_trim. Needs a C compiler, as the setup does.
let dir: string;
let probe: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'evolvm-trim-'));
  probe = join(dir, 'trim-probe');
  execFileSync('cc', ['-O2', '-o', probe, join(import.meta.dirname, '..', 'fixtures', 'native', 'trim-probe.c')]);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(preload?: string, args: string[] = [], extraEnv: Record<string, string> = {}): { before: number; rightAfter: number; later: number } {
  const env = { ...process.env, LD_PRELOAD: preload ?? '', ...extraEnv };
  const [before, rightAfter, later] = execFileSync(probe, args, { env, encoding: 'utf8' }).trim().split(' ').map(Number);
  return { before: before!, rightAfter: rightAfter!, later: later! };
}

describe('the idle-trim shim', () => {
  it('leaves malloc_trim as it is without the shim (the probe frees ~64 MiB at once)', () => {
    const { before, rightAfter } = run();
    expect(before - rightAfter).toBeGreaterThan(48 * 1024);
  });

  it('puts the trim off: nothing is given back at the call, all of it once the process is quiet', () => {
    const { before, rightAfter, later } = run(idleTrimShimPath());
    expect(before - rightAfter).toBeLessThan(8 * 1024);
    expect(before - later).toBeGreaterThan(48 * 1024);
  });

  it('drops the trim while the process is a standby machine waiting (its remap socket exists), not after', () => {
    const socket = join(dir, 'remap.sock');
    writeFileSync(socket, '');
    const waiting = run(idleTrimShimPath(), [], { EVOLVM_RAM_REMAP: socket });
    expect(waiting.before - waiting.later).toBeLessThan(8 * 1024);
    rmSync(socket);
    const bound = run(idleTrimShimPath(), [], { EVOLVM_RAM_REMAP: socket });
    expect(bound.before - bound.later).toBeGreaterThan(48 * 1024);
  });

  it('still trims in a child forked after its trimmer thread started (a QEMU forked by the zygote)', () => {
    const { before, rightAfter, later } = run(idleTrimShimPath(), ['fork']);
    expect(before - rightAfter).toBeLessThan(8 * 1024);
    expect(before - later).toBeGreaterThan(48 * 1024);
  });
});

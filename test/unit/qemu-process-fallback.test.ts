import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuProcess } from '../../src/qemu/qemu-process.js';

// A perl that cannot run the spawn helper (on Debian perl-base always has POSIX; elsewhere it may be split off):
// vitest gives this file its own module instances, so the fake is what qemu-process finds first in PATH. The
// QEMU zygote, which would come first, is switched off.
const work = mkdtempSync(join(tmpdir(), 'evolvm-qemu-fallback-'));
const path = process.env.PATH;

beforeAll(() => {
  const perl = join(work, 'perl');
  writeFileSync(perl, '#!/bin/sh\necho "Can\'t locate POSIX.pm" >&2\nexit 2\n');
  chmodSync(perl, 0o755);
  process.env.PATH = `${work}:${path}`;
  process.env.EVOLVM_QEMU_ZYGOTE = 'off';
});

afterAll(() => {
  process.env.PATH = path;
  delete process.env.EVOLVM_QEMU_ZYGOTE;
  rmSync(work, { recursive: true, force: true });
});

describe('a perl that cannot run the spawn helper', () => {
  it('makes QEMU be spawned by Node instead, first time and after', async () => {
    for (const code of [5, 6]) {
      const child = await QemuProcess.spawn('/bin/sh', ['-c', `echo via-node >&2; exit ${code}`], { consoleLog: '/dev/null', stderrLog: join(work, 'none.log'), killGraceMs: 100 });
      await expect(child.exited).resolves.toEqual({ exitCode: code, signal: null });
      expect(child.diagnosticTail()).toContain('via-node');
    }
  });

  it("fails a spawn that asked for the helper with QemuStartError", async () => {
    await expect(QemuProcess.spawn('/bin/sh', ['-c', 'exit 0'], { consoleLog: '/dev/null', stderrLog: join(work, 'none.log'), killGraceMs: 100, launcher: 'helper' })).rejects.toMatchObject({ code: 'QEMU_START_FAILED' });
  });
});

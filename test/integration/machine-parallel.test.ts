import { afterAll, describe, expect, it } from 'vitest';
import { Machine } from '../../src/index.js';
import { expectNoLeaks, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('parallel');

afterAll(async () => {
  await expectNoLeaks(runDir);
});

describe('several machines at once', () => {
  it('boots 4 machines in parallel, each with its own identity and files', async () => {
    const machines = await Promise.all(Array.from({ length: 4 }, () => Machine.boot({ runDir, memoryMiB: 112, bootTimeoutMs: 120_000 })));
    try {
      expect(new Set(machines.map((m) => m.hello.boot_id)).size).toBe(4);
      await Promise.all(machines.map((m, i) => m.writeFile('/tmp/who', `machine-${i}`)));
      const names = await Promise.all(machines.map(async (m) => (await m.readFile('/tmp/who')).toString()));
      expect(names).toEqual(['machine-0', 'machine-1', 'machine-2', 'machine-3']);
      const echoes = await Promise.all(machines.map((m, i) => m.exec(['echo', String(i)])));
      expect(echoes.map((e) => e.stdout)).toEqual(['0\n', '1\n', '2\n', '3\n']);
    } finally {
      await Promise.all(machines.map((m) => m.stop()));
    }
  }, 180_000);
});

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { reapOrphanRunDirs } from '../../src/qemu/run-dir-reaper.js';
import { currentOwner } from '../../src/util/owner.js';

const root = mkdtempSync(join(tmpdir(), 'evolvm-reaper-test-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A pid that no longer runs: a child that has exited. */
function deadPid(): number {
  return spawnSync('true').pid!;
}

describe('reapOrphanRunDirs', () => {
  it('removes only run directories whose owner and QEMU both exited, with their tmpfs files, once per folder', async () => {
    const parent = join(root, 'runs');
    const shm = join(root, 'shm');
    mkdirSync(parent);
    mkdirSync(shm);
    const dead = { ...currentOwner('n'), pid: deadPid(), startTicks: null };
    const dirs: Record<string, unknown> = {
      'evolvm-orphan': { owner: dead, qemuPid: deadPid() },
      'evolvm-alive-owner': { owner: currentOwner('n'), qemuPid: deadPid() },
      'evolvm-qemu-alive': { owner: dead, qemuPid: process.pid },
      'evolvm-other-host': { owner: { ...dead, host: `${hostname()}-elsewhere` }, qemuPid: deadPid() },
      'evolvm-garbage': 'not json',
      'evolvm-no-record': undefined,
      'unrelated-dir': { owner: dead, qemuPid: deadPid() },
    };
    for (const [name, record] of Object.entries(dirs)) {
      mkdirSync(join(parent, name));
      if (record !== undefined) writeFileSync(join(parent, name, 'owner.json'), typeof record === 'string' ? record : JSON.stringify(record));
      writeFileSync(join(shm, `${basename(parent)}.${name}.ram`), '');
    }
    writeFileSync(join(shm, `${basename(parent)}.evolvm-orphan.ram.snap-1`), '');

    expect(await reapOrphanRunDirs(parent, shm)).toEqual([join(parent, 'evolvm-orphan')]);
    expect(readdirSync(parent).sort()).toEqual(Object.keys(dirs).filter((name) => name !== 'evolvm-orphan').sort());
    expect(readdirSync(shm).filter((name) => name.includes('evolvm-orphan'))).toEqual([]);
    expect(readdirSync(shm)).toHaveLength(Object.keys(dirs).length - 1);

    // Once per folder and process: a new orphan is left for the next process.
    mkdirSync(join(parent, 'evolvm-later'));
    writeFileSync(join(parent, 'evolvm-later', 'owner.json'), JSON.stringify({ owner: dead, qemuPid: deadPid() }));
    expect(await reapOrphanRunDirs(parent, shm)).toEqual([]);
    expect(readdirSync(parent)).toContain('evolvm-later');
  });

  it('does not throw for a folder that does not exist', async () => {
    await expect(reapOrphanRunDirs(join(root, 'missing'), join(root, 'missing-shm'))).resolves.toEqual([]);
  });
});

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigInvalidError, FsSnapshotStore, KernelBooted, loadRuntime, SnapshotMismatchError, type Stage } from '../../src/index.js';
import { expectNoLeaks, testRunDir } from '../helpers/leaks.js';

const runDir = testRunDir('maps');
const work = mkdtempSync(join(tmpdir(), 'evolvm-test-maps-'));
let store: FsSnapshotStore;
let booted: KernelBooted;

/** A squashfs holding `files` (name → content), made with Debian's mksquashfs. */
function squashfs(name: string, files: Record<string, string>): string {
  const dir = join(work, `${name}.d`);
  mkdirSync(dir, { recursive: true });
  for (const [file, content] of Object.entries(files)) writeFileSync(join(dir, file), content);
  const image = join(work, `${name}.sqfs`);
  execFileSync('mksquashfs', [dir, image, '-noappend', '-quiet', '-no-progress', '-all-root']);
  return image;
}

/** An ext4 image holding `files`, made with mkfs.ext4 -d (e2fsprogs, part of every Debian install): no mount, no root. */
function ext4(name: string, files: Record<string, string>): string {
  const dir = join(work, `${name}.d`);
  mkdirSync(dir, { recursive: true });
  for (const [file, content] of Object.entries(files)) writeFileSync(join(dir, file), content);
  const image = join(work, `${name}.ext4`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', dir, image, '4M']);
  return image;
}

async function read(stage: Stage, path: string): Promise<string> {
  return (await stage.readFile(path)).toString();
}

let data: string;
let tools: string;
let records: string;
beforeAll(async () => {
  data = squashfs('data', { 'hello.txt': 'hello from the host\n' });
  tools = squashfs('tools', { 'tool.sh': 'echo tool\n' });
  records = ext4('records', { 'r.csv': 'id,value\n1,42\n' });
  store = await FsSnapshotStore.open(join(work, 'store'));
  booted = await KernelBooted.boot({ runDir, maps: { data, tools, records } });
}, 120_000);

afterAll(async () => {
  await booted?.close();
  await expectNoLeaks(runDir);
  rmSync(work, { recursive: true, force: true });
});

describe('read-only maps', () => {
  it('are mounted at /maps/NAME, read-only', async () => {
    expect(await read(booted, '/maps/data/hello.txt')).toBe('hello from the host\n');
    expect(await read(booted, '/maps/tools/tool.sh')).toBe('echo tool\n');
    const write = await booted.exec(['sh', '-c', 'echo x > /maps/data/new 2>&1; echo $?']);
    expect(write.stdout.toString().trim()).not.toBe('0');
  });

  it('may be ext2/3/4 images too, mounted read-only without replaying a journal', async () => {
    expect(await read(booted, '/maps/records/r.csv')).toBe('id,value\n1,42\n');
    const mounts = (await booted.exec(['sh', '-c', 'grep " /maps/records " /proc/mounts'])).stdout.toString();
    expect(mounts).toMatch(/^\S+ \/maps\/records ext4 ro,/);
    const write = await booted.exec(['sh', '-c', 'echo x > /maps/records/new 2>&1; echo $?']);
    expect(write.stdout.toString().trim()).not.toBe('0');
  });

  it('stay mounted across evolve and devolve', async () => {
    const runtime = await booted.evolve(loadRuntime({ kind: 'shell' }));
    expect(await read(runtime, '/maps/data/hello.txt')).toBe('hello from the host\n');
    booted = await runtime.devolve();
    expect(await read(booted, '/maps/tools/tool.sh')).toBe('echo tool\n');
  });

  it('are part of a persisted snapshot: a restore needs the same images (by content), under the same names', async () => {
    await booted.persist(store, 'with-maps');
    // The same bytes at another path restore.
    const copy = join(work, 'data-copy.sqfs');
    copyFileSync(data, copy);
    const restored = await KernelBooted.fromSnapshot(store, 'with-maps', { runDir, maps: { data: copy, tools, records } });
    try {
      expect(await read(restored, '/maps/data/hello.txt')).toBe('hello from the host\n');
    } finally {
      await restored.close();
    }
    const other = squashfs('other', { 'hello.txt': 'other bytes\n' });
    for (const maps of [{}, { data, tools }, { data: other, tools, records }, { data, tools, records, extra: other }] as Array<Record<string, string>>) {
      const error = await KernelBooted.fromSnapshot(store, 'with-maps', { runDir, maps }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SnapshotMismatchError);
      expect(error).toMatchObject({ what: 'maps' });
    }
  }, 120_000);

  it('are shared by forked clones, each reading its own mount', async () => {
    const clones = await KernelBooted.fork(store, 'with-maps', 2, { runDir, maps: { data, tools, records } });
    try {
      for (const clone of clones) expect(await read(clone, '/maps/data/hello.txt')).toBe('hello from the host\n');
    } finally {
      await Promise.all(clones.map((clone) => clone.close()));
    }
  }, 120_000);

  it("work with commas in the map's path and the run directory (QEMU option lists double them)", async () => {
    const commaDir = join(runDir, 'a,b');
    const commaMap = join(work, 'da,ta.sqfs');
    copyFileSync(data, commaMap);
    const vm = await KernelBooted.boot({ runDir: commaDir, maps: { data: commaMap } });
    try {
      expect(await read(vm, '/maps/data/hello.txt')).toBe('hello from the host\n');
    } finally {
      await vm.close();
    }
    expect(readdirSync(commaDir)).toEqual([]);
    rmSync(commaDir, { recursive: true });
  }, 120_000);

  it('refuse a map that is not a file, or holds no file system the guest mounts, before starting anything, naming maps.NAME', async () => {
    const archive = join(work, 'data.tar');
    writeFileSync(archive, Buffer.alloc(4096, 'tar bytes, not a file system'));
    for (const path of [join(work, 'missing.sqfs'), work, archive]) {
      const error = await KernelBooted.boot({ runDir, maps: { gone: path } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigInvalidError);
      expect((error as ConfigInvalidError).issues[0]).toMatchObject({ path: 'maps.gone', value: path });
    }
    const error = await KernelBooted.boot({ runDir, maps: { archive } }).catch((e: unknown) => e);
    expect((error as ConfigInvalidError).issues[0]).toMatchObject({ message: 'not a squashfs or ext2/3/4 image' });
  });
});

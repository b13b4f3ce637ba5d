import { chmod, mkdir, open, readdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runSnapshotCli } from '../../src/snapshot/store/cli.js';
import { FsSnapshotStore } from '../../src/snapshot/store/snapshot-store.js';
import { tempDir, writerOf } from './store-helpers.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let root: string;
beforeEach(async () => {
  dir = await tempDir('cli');
  root = join(dir.path, 'store');
});
afterEach(async () => {
  await dir.dispose();
});

async function cli(argv: string[], options: { tty?: boolean; env?: Record<string, string> } = {}) {
  let stdout = '';
  let stderr = '';
  const code = await runSnapshotCli(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s), isTTY: options.tty ?? false },
    env: options.env ?? {},
  });
  return { code, stdout, stderr };
}

describe('evolvm snapshot CLI', () => {
  it('ls prints a table of snapshots with parent names, and --json the same as data', async () => {
    const store = await FsSnapshotStore.open(root);
    const base = await store.create('base', writerOf());
    await store.create('child', writerOf('v', 'd', { parent: base.id }));
    const table = await cli(['snapshot', 'ls', '--store', root]);
    expect(table.code).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+NAME\s+CREATED\s+STAGE\s+PARENT\s+SIZE\s+STATUS$/);
    expect(lines[1]).toContain(' base ');
    expect(lines[2]).toMatch(/ child .* base .* ok$/);
    const json = await cli(['ls', '--json', '--store', root]);
    expect((JSON.parse(json.stdout) as Array<{ name: string; ok: boolean }>).map((r) => [r.name, r.ok])).toEqual([
      ['base', true],
      ['child', true],
    ]);
  });

  it('uses $EVOLVM_STORE when --store is not given', async () => {
    await (await FsSnapshotStore.open(root)).create('from-env', writerOf());
    const result = await cli(['ls'], { env: { EVOLVM_STORE: root } });
    expect(result.stdout).toContain('from-env');
  });

  it('inspect prints the manifest and paths as JSON; an unknown ref exits 1 with the typed code', async () => {
    const snap = await (await FsSnapshotStore.open(root)).create('base', writerOf());
    const result = await cli(['inspect', 'base', '--store', root]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ id: snap.id, paths: { vmstate: snap.paths.vmstate }, manifest: { name: 'base' } });
    const missing = await cli(['inspect', 'nope', '--store', root]);
    expect(missing).toMatchObject({ code: 1, stdout: '' });
    expect(missing.stderr).toContain('[SNAPSHOT_NOT_FOUND]');
  });

  it('verify exits 0 on a sound snapshot and 1 with the typed error on a tampered one', async () => {
    const snap = await (await FsSnapshotStore.open(root)).create('base', writerOf(Buffer.alloc(1024 * 1024, 1)));
    expect(await cli(['verify', 'base', '--store', root])).toMatchObject({ code: 0, stderr: '' });
    await chmod(snap.paths.vmstate, 0o644);
    const handle = await open(snap.paths.vmstate, 'r+');
    await handle.write(Buffer.from([2]), 0, 1, 10);
    await handle.close();
    await chmod(snap.paths.vmstate, 0o444);
    const failed = await cli(['verify', 'base', '--store', root]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/\[SNAPSHOT_CORRUPT\] snapshot \S+ vmstate is corrupt \(hash\)/);
  });

  it('shows verify progress on stderr: rewritten in place on a TTY, a line per 10% with --progress, nothing otherwise', async () => {
    await (await FsSnapshotStore.open(root)).create('big', writerOf(Buffer.alloc(9 * 1024 * 1024, 1), Buffer.alloc(1024 * 1024, 2)));
    const tty = await cli(['verify', 'big', '--store', root], { tty: true });
    expect(tty.stderr).toContain('\rverifying big: 100%');
    expect(tty.stderr.endsWith('\n')).toBe(true);
    const log = await cli(['verify', 'big', '--store', root, '--progress']);
    expect(log.stderr.trim().split('\n')).toEqual(['0', '10', '20', '30', '40', '50', '60', '70', '80', '90', '100'].map((p) => `verifying big: ${p}%`));
    expect((await cli(['verify', 'big', '--store', root])).stderr).toBe('');
  });

  it('gc reports what a crashed writer left, then that nothing is left; ls leaves the debris alone', async () => {
    await FsSnapshotStore.open(root);
    const staging = join(root, '.staging-crashed');
    await mkdir(staging);
    const dead = { pid: 2 ** 22 + 1, host: hostname(), startTicks: null, nonce: 'x', createdAt: new Date().toISOString() };
    await writeFile(join(staging, '.owner'), JSON.stringify(dead));
    await writeFile(join(staging, 'vmstate'), 'partial');
    await mkdir(join(root, '.trash-abc'));
    expect((await cli(['ls', '--store', root])).code).toBe(0);
    expect((await readdir(root)).sort()).toContain('.staging-crashed');
    const first = await cli(['gc', '--store', root]);
    expect(first.code).toBe(0);
    expect(first.stdout.trim().split('\n').sort()).toEqual([`removed staging ${staging}`, `removed trash ${join(root, '.trash-abc')}`]);
    expect(await cli(['gc', '--store', root])).toMatchObject({ code: 0, stdout: 'nothing to remove\n' });
  });

  it('exits 2 with the usage for an unknown command, a missing ref, or an unknown option', async () => {
    for (const argv of [['frobnicate'], ['verify'], ['ls', 'extra'], ['ls', '--bogus'], []]) {
      const result = await cli([...argv, '--store', root]);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain('usage:');
    }
  });
});

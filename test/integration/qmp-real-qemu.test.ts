import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { QmpCommandError } from '../../src/errors.js';
import { QmpClient, runJob } from '../../src/qemu/qmp/index.js';

const QEMU = 'qemu-system-x86_64';

interface Running {
  readonly dir: string;
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly qmp: QmpClient;
}

const started: Running[] = [];

afterEach(async () => {
  for (const { dir, child, exited, qmp } of started.splice(0)) {
    await qmp.close();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
    // No leftover QEMU: signal 0 to the pid of our child fails once it has been reaped.
    expect(() => process.kill(child.pid!, 0)).toThrow();
  }
});

async function startQemu(extraArgs: (dir: string) => string[] = () => []): Promise<Running> {
  const dir = await mkdtemp(join(tmpdir(), 'evolvm-qmp-real-'));
  const args = ['-machine', 'q35', '-nodefaults', '-nographic', '-S', '-m', '64'];
  args.push('-qmp', `unix:${dir}/qmp.sock,server=on,wait=off`, '-display', 'none', ...extraArgs(dir));
  const child = spawn(QEMU, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  try {
    const qmp = await QmpClient.connect(join(dir, 'qmp.sock'), { timeoutMs: 20_000 });
    const running = { dir, child, exited, qmp };
    started.push(running);
    return running;
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
    throw new Error(`QEMU did not start a QMP session; stderr: ${stderr}`, { cause: error });
  }
}

// QEMU's presence is checked once for the whole suite by test/global-setup.ts, which fails loudly without it.
describe('QmpClient against a real QEMU', () => {
  it('queries a paused VM, then quits it and reports the connection closed', async () => {
    const { qmp, exited } = await startQemu();
    expect(qmp.greeting.version.qemu.major).toBe(7);
    await expect(qmp.execute('query-status')).resolves.toMatchObject({ running: false, status: 'prelaunch' });
    await expect(qmp.execute('query-version')).resolves.toMatchObject({ qemu: { major: 7 } });
    await expect(qmp.execute('no-such-command')).rejects.toMatchObject({ errorClass: 'CommandNotFound' });

    const shutdown = qmp.waitForEvent('SHUTDOWN', () => true, { timeoutMs: 10_000 });
    await expect(qmp.execute('quit')).resolves.toEqual({});
    await expect(shutdown).resolves.toMatchObject({ data: { reason: 'host-qmp-quit' } });
    await expect(exited).resolves.toEqual({ code: 0, signal: null });
    await expect(qmp.closed).resolves.toMatchObject({ initiator: 'peer' });
    expect(qmp.state).toBe('closed');
  });

  it('saves, loads and deletes an internal snapshot as QMP jobs; a duplicate tag fails the job', async () => {
    const { qmp } = await startQemu((dir) => {
      execFileSync('qemu-img', ['create', '-f', 'qcow2', join(dir, 's.qcow2'), '64M'], { stdio: 'ignore' });
      return [
        '-drive',
        `if=none,id=d0,node-name=disk0,file=${dir}/s.qcow2,format=qcow2,cache=unsafe`,
        '-device',
        'virtio-blk-pci,drive=d0',
      ];
    });
    const snapshot = { tag: 't1', vmstate: 'disk0', devices: ['disk0'] };
    const bounds = { timeoutMs: 30_000 };
    await runJob(qmp, 'snapshot-save', { 'job-id': 'save-t1', ...snapshot }, bounds);
    await runJob(qmp, 'snapshot-load', { 'job-id': 'load-t1', ...snapshot }, bounds);

    const duplicate = await runJob(qmp, 'snapshot-save', { 'job-id': 'save-t1-again', ...snapshot }, bounds).catch((e: unknown) => e);
    expect(duplicate).toBeInstanceOf(QmpCommandError);
    expect(duplicate).toMatchObject({ command: 'snapshot-save', errorClass: 'JobFailed' });
    expect((duplicate as QmpCommandError).description).toMatch(/t1.*already exists/);

    await runJob(qmp, 'snapshot-delete', { 'job-id': 'delete-t1', tag: 't1', devices: ['disk0'] }, bounds);
    // Every job was dismissed, the failed one included.
    await expect(qmp.execute('query-jobs')).resolves.toEqual([]);
    await expect(qmp.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
  });
});

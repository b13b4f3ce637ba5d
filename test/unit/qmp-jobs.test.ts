import { afterEach, describe, expect, it } from 'vitest';
import { AbortedError, QmpCommandError, QmpDisconnectedError } from '../../src/errors.js';
import { QmpClient, runJob, waitMigration, type QmpJobInfo } from '../../src/qemu/qmp/index.js';
import { eventMessage, FakeQmpPeer, type ReceivedCommand } from './qmp-fake-peer.js';

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function start(): Promise<{ peer: FakeQmpPeer; client: QmpClient }> {
  const peer = await FakeQmpPeer.start();
  cleanups.push(() => peer.dispose());
  const client = await QmpClient.connect(peer.path, { timeoutMs: 2_000 });
  cleanups.push(() => client.close());
  return { peer, client };
}

type JobOutcome = { error?: string } | 'never concludes';

/** Plays QEMU's job machinery for snapshot-save: created → running → pending → concluded, manual dismiss. */
function fakeJobs(peer: FakeQmpPeer, outcome: JobOutcome, options: { concludeWithReply?: boolean } = {}) {
  const jobs = new Map<string, { -readonly [K in keyof QmpJobInfo]: QmpJobInfo[K] }>();
  const dismissed: string[] = [];
  const setStatus = (id: string, status: string): string => {
    jobs.get(id)!.status = status;
    return `${JSON.stringify(eventMessage('JOB_STATUS_CHANGE', { status, id }))}\r\n`;
  };
  peer.handle('snapshot-save', (command) => {
    const id = command.arguments!['job-id'] as string;
    jobs.set(id, { id, type: 'snapshot-save', status: 'created', 'current-progress': 0, 'total-progress': 1 });
    let wire = setStatus(id, 'created') + setStatus(id, 'running') + `${JSON.stringify({ return: {}, id: command.id })}\r\n`;
    const conclude = (): string => {
      if (outcome === 'never concludes') return '';
      if (outcome.error !== undefined) jobs.get(id)!.error = outcome.error;
      return setStatus(id, outcome.error === undefined ? 'pending' : 'aborting') + setStatus(id, 'concluded');
    };
    if (options.concludeWithReply) wire += conclude();
    peer.sendRaw(wire);
    if (!options.concludeWithReply) setTimeout(() => peer.sendRaw(conclude()), 20);
  });
  peer.handle('query-jobs', (command) => peer.reply(command, [...jobs.values()]));
  peer.handle('job-dismiss', (command) => {
    const id = command.arguments!['id'] as string;
    if (jobs.get(id)?.status !== 'concluded') return peer.replyError(command, 'GenericError', `Job '${id}' not concluded`);
    jobs.delete(id);
    dismissed.push(id);
    peer.reply(command);
  });
  return { jobs, dismissed };
}

const SAVE_ARGS = { 'job-id': 'save-t1', tag: 't1', vmstate: 'disk0', devices: ['disk0'] };

function executed(peer: FakeQmpPeer): string[] {
  return peer.received.map((command: ReceivedCommand) => command.execute).filter((name) => name !== 'qmp_capabilities');
}

describe('runJob', () => {
  it('runs a job to concluded, reads query-jobs and dismisses it', async () => {
    const { peer, client } = await start();
    const { jobs, dismissed } = fakeJobs(peer, {});
    await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 });
    expect(executed(peer)).toEqual(['snapshot-save', 'query-jobs', 'job-dismiss']);
    expect(dismissed).toEqual(['save-t1']);
    expect(jobs.size).toBe(0);
  });

  it('sends query-jobs and job-dismiss together once the job concluded (one round trip)', async () => {
    const { peer, client } = await start();
    const { dismissed } = fakeJobs(peer, {});
    // query-jobs is answered only once job-dismiss has arrived as well, and with the job as it was before.
    let answerQuery: (() => void) | undefined;
    peer.handle('query-jobs', (command) => {
      const snapshot = [{ id: 'save-t1', type: 'snapshot-save', status: 'concluded', 'current-progress': 1, 'total-progress': 1 }];
      answerQuery = () => peer.reply(command, snapshot);
    });
    const run = runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 });
    for (let i = 0; i < 100 && !executed(peer).includes('job-dismiss'); i++) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(executed(peer)).toEqual(['snapshot-save', 'query-jobs', 'job-dismiss']);
    answerQuery!();
    await run;
    expect(dismissed).toEqual(['save-t1']);
  });

  it('reports a job-dismiss that QEMU refused', async () => {
    const { peer, client } = await start();
    fakeJobs(peer, {});
    peer.handle('job-dismiss', (command) => peer.replyError(command, 'GenericError', 'no such job'));
    const error = await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ command: 'job-dismiss', errorClass: 'GenericError' });
  });

  it('sees a conclusion that arrives in the same read as the command reply', async () => {
    const { peer, client } = await start();
    const { dismissed } = fakeJobs(peer, {}, { concludeWithReply: true });
    await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 });
    expect(dismissed).toEqual(['save-t1']);
  });

  it('ignores the conclusion of another job', async () => {
    const { peer, client } = await start();
    fakeJobs(peer, {});
    peer.handle('snapshot-delete', (command) => {
      peer.reply(command);
      peer.event('JOB_STATUS_CHANGE', { id: 'other', status: 'concluded' });
    });
    const run = runJob(client, 'snapshot-delete', { 'job-id': 'del-1', tag: 't1', devices: ['disk0'] }, { timeoutMs: 100 });
    await expect(run).rejects.toMatchObject({ command: 'snapshot-delete', errorClass: 'Timeout' });
  });

  it('turns a job error read from query-jobs into QmpCommandError JobFailed, and dismisses the job', async () => {
    const { peer, client } = await start();
    const { jobs, dismissed } = fakeJobs(peer, { error: "Snapshot 't1' already exists in one or more devices" });
    const error = await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({
      command: 'snapshot-save',
      errorClass: 'JobFailed',
      description: "Snapshot 't1' already exists in one or more devices",
    });
    expect(dismissed).toEqual(['save-t1']);
    expect(jobs.size).toBe(0);
  });

  it('reports a refused command as is and dismisses nothing, since no job exists', async () => {
    const { peer, client } = await start();
    peer.handle('snapshot-save', (command) => peer.replyError(command, 'GenericError', "Job ID 'save-t1' already in use"));
    const error = await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ command: 'snapshot-save', errorClass: 'GenericError' });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(executed(peer)).toEqual(['snapshot-save']);
  });

  it('times out a job that does not conclude, and leaves the running job alone', async () => {
    const { peer, client } = await start();
    const { dismissed } = fakeJobs(peer, 'never concludes');
    const error = await runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ command: 'snapshot-save', errorClass: 'Timeout' });
    expect(executed(peer)).toEqual(['snapshot-save', 'query-jobs']);
    expect(dismissed).toEqual([]);
  });

  it('stops when the signal aborts', async () => {
    const { peer, client } = await start();
    fakeJobs(peer, 'never concludes');
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 30);
    const run = runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 5_000, signal: controller.signal });
    await expect(run).rejects.toBeInstanceOf(AbortedError);
  });

  it('rejects with QmpDisconnectedError when the connection drops during the job', async () => {
    const { peer, client } = await start();
    fakeJobs(peer, 'never concludes');
    const run = runJob(client, 'snapshot-save', SAVE_ARGS, { timeoutMs: 5_000 });
    setTimeout(() => peer.dropConnection(), 30);
    await expect(run).rejects.toBeInstanceOf(QmpDisconnectedError);
  });
});

describe('waitMigration', () => {
  function fakeMigration(peer: FakeQmpPeer, replies: object[]): void {
    peer.handle('query-migrate', (command) => peer.reply(command, replies.length > 1 ? replies.shift() : replies[0]));
  }

  it('polls query-migrate until completed', async () => {
    const { peer, client } = await start();
    fakeMigration(peer, [{}, { status: 'setup' }, { status: 'active' }, { status: 'completed', 'total-time': 90 }]);
    const info = await waitMigration(client, { timeoutMs: 2_000, pollMs: 5 });
    expect(info).toEqual({ status: 'completed', 'total-time': 90 });
    expect(executed(peer)).toEqual(Array(4).fill('query-migrate'));
  });

  it('rejects a failed migration with its error-desc', async () => {
    const { peer, client } = await start();
    fakeMigration(peer, [{ status: 'active' }, { status: 'failed', 'error-desc': 'Unable to write to command: Broken pipe' }]);
    await expect(waitMigration(client, { timeoutMs: 2_000, pollMs: 5 })).rejects.toMatchObject({
      command: 'migrate',
      errorClass: 'MigrationFailed',
      description: 'Unable to write to command: Broken pipe',
    });
  });

  it('rejects a cancelled migration', async () => {
    const { peer, client } = await start();
    fakeMigration(peer, [{ status: 'cancelled' }]);
    await expect(waitMigration(client, { timeoutMs: 2_000 })).rejects.toMatchObject({ errorClass: 'MigrationCancelled' });
  });

  it('polls again at once on a MIGRATION event', async () => {
    const { peer, client } = await start();
    fakeMigration(peer, [{ status: 'active' }, { status: 'completed' }]);
    const started = Date.now();
    const waited = waitMigration(client, { timeoutMs: 5_000, pollMs: 60_000 });
    setTimeout(() => peer.event('MIGRATION', { status: 'completed' }), 30);
    await expect(waited).resolves.toEqual({ status: 'completed' });
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('times out with class Timeout', async () => {
    const { peer, client } = await start();
    fakeMigration(peer, [{ status: 'active' }]);
    await expect(waitMigration(client, { timeoutMs: 80, pollMs: 10 })).rejects.toMatchObject({
      command: 'query-migrate',
      errorClass: 'Timeout',
    });
  });
});

import { QmpCommandError } from '../../errors.js';
import type { QmpClient } from './qmp-client.js';
import { Deadline } from './wait.js';

/** The arguments of a command that starts a QMP job: it names the job by `job-id`. */
export type QmpJobArgs = { readonly 'job-id': string } & Readonly<Record<string, unknown>>;

/** One entry of `query-jobs`. */
export interface QmpJobInfo {
  readonly id: string;
  readonly type: string;
  readonly status: string;
  readonly 'current-progress': number;
  readonly 'total-progress': number;
  /** Set when the job failed. */
  readonly error?: string;
}

export interface RunJobOptions {
  /** Bounds the whole job: the command, the run, reading its outcome and dismissing it. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

// Dismissing after a failed wait gets its own short bound: the caller's may be spent.
const CLEANUP_TIMEOUT_MS = 5_000;

/**
 * Runs a command that starts a QMP job (`snapshot-save`, `snapshot-load`, `snapshot-delete`, …) to its end:
 * subscribes to `JOB_STATUS_CHANGE` for the job, executes the command, waits for status `concluded`, reads
 * the job's `error` from `query-jobs` and dismisses the job. A concluded job is dismissed whatever happened,
 * since it holds its id until then; a job still running after a timeout or abort is left to QEMU.
 * @example
 * await runJob(qmp, 'snapshot-save', { 'job-id': 'save-t1', tag: 't1', vmstate: 'disk0', devices: ['disk0'] }, { timeoutMs: 60_000 });
 * @throws {QmpCommandError} class `JobFailed` with the job's error as description; QEMU refused the command
 *   (then no job exists and nothing is dismissed); or class `Timeout`: not done within `timeoutMs`.
 * @throws {AbortedError} `signal` aborted.
 * @throws {QmpDisconnectedError} the connection dropped.
 * @throws {QmpProtocolError} QEMU broke the protocol.
 * @throws {ConfigInvalidError} `timeoutMs` is not a number >= 0.
 */
export async function runJob(client: QmpClient, command: string, args: QmpJobArgs, options: RunJobOptions): Promise<void> {
  const jobId = args['job-id'];
  const deadline = new Deadline(
    `QMP ${command}`,
    options,
    () => new QmpCommandError(command, 'Timeout', `job ${jobId} did not finish within ${options.timeoutMs} ms`),
  );
  const bounds = { timeoutMs: Infinity, signal: deadline.signal };
  try {
    // Subscribed before executing: the job may conclude in the same read as the command's reply.
    const concluded = client.waitForEvent(
      'JOB_STATUS_CHANGE',
      (event) => event.data['id'] === jobId && event.data['status'] === 'concluded',
      bounds,
    );
    await client.execute(command, args, bounds);

    const waitError: unknown = await concluded.then(
      () => undefined,
      (error: unknown) => error,
    );
    let job: QmpJobInfo | undefined;
    if (waitError === undefined) {
      // Concluded: its outcome is read and the job dismissed in one round trip (QEMU answers in order).
      const [listed, dismissed] = await Promise.allSettled([
        client.execute<QmpJobInfo[]>('query-jobs', undefined, bounds),
        client.execute('job-dismiss', { id: jobId }, bounds),
      ]);
      if (listed.status === 'rejected') throw listed.reason;
      job = listed.value.find((candidate) => candidate.id === jobId);
      if (job === undefined) throw new QmpCommandError(command, 'JobFailed', `job ${jobId} is missing from query-jobs`);
      if (dismissed.status === 'rejected') throw dismissed.reason;
    } else {
      try {
        const jobs = await client.execute<QmpJobInfo[]>('query-jobs', undefined, { timeoutMs: CLEANUP_TIMEOUT_MS });
        job = jobs.find((candidate) => candidate.id === jobId);
        if (job?.status === 'concluded') await client.execute('job-dismiss', { id: jobId }, { timeoutMs: CLEANUP_TIMEOUT_MS });
      } catch {
        // After a failed wait the wait's error is the one to report.
      }
      throw waitError;
    }
    if (job.error !== undefined) throw new QmpCommandError(command, 'JobFailed', job.error);
  } finally {
    // Also releases the JOB_STATUS_CHANGE waiter when execute threw.
    deadline.dispose();
  }
}

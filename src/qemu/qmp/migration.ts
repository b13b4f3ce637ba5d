import { QmpCommandError } from '../../errors.js';
import type { QmpClient } from './qmp-client.js';
import { bounded, Deadline, unreachableTimeout } from './wait.js';

/** `MigrationStatus` from the QAPI schema. */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

/** The reply of `query-migrate`; `status` is absent before any migration. Other members are passed through. */
export interface MigrationInfo {
  readonly status?: MigrationStatus;
  readonly 'error-desc'?: string;
  readonly [member: string]: unknown;
}

export interface WaitMigrationOptions {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Time between two `query-migrate` polls. Default 20 ms. */
  readonly pollMs?: number;
}

const DEFAULT_POLL_MS = 20;

/**
 * Waits for the outgoing or incoming migration to finish by polling `query-migrate`. With the migration
 * capability `events` on, each `MIGRATION` event triggers a poll at once instead of after `pollMs`.
 * @returns the final `query-migrate` reply, status `completed`.
 * @throws {QmpCommandError} command `migrate`, class `MigrationFailed` or `MigrationCancelled` with QEMU's
 *   `error-desc`; or command `query-migrate`, class `Timeout`: not completed within `timeoutMs`.
 * @throws {AbortedError} `signal` aborted.
 * @throws {QmpDisconnectedError} the connection dropped.
 * @throws {QmpProtocolError} QEMU broke the protocol.
 * @throws {ConfigInvalidError} `timeoutMs` is not a number >= 0.
 */
export async function waitMigration(client: QmpClient, options: WaitMigrationOptions): Promise<MigrationInfo> {
  const pollMs = options.pollMs ?? DEFAULT_POLL_MS;
  const deadline = new Deadline(
    'QMP wait for migration',
    options,
    () => new QmpCommandError('query-migrate', 'Timeout', `migration did not complete within ${options.timeoutMs} ms`),
  );
  const bounds = { timeoutMs: Infinity, signal: deadline.signal };
  let eventSeen = false;
  let wake: (() => void) | undefined;
  const stopListening = client.on('event', (event) => {
    if (event.event !== 'MIGRATION') return;
    eventSeen = true;
    wake?.();
  });
  try {
    for (;;) {
      eventSeen = false;
      const info = await client.execute<MigrationInfo>('query-migrate', undefined, bounds);
      switch (info.status) {
        case 'completed':
          return info;
        case 'failed':
          throw new QmpCommandError('migrate', 'MigrationFailed', info['error-desc'] ?? 'migration failed');
        case 'cancelled':
          throw new QmpCommandError('migrate', 'MigrationCancelled', info['error-desc'] ?? 'migration cancelled');
      }
      // An event that arrived during the query above means the status has moved on: poll again now.
      if (eventSeen) continue;
      await bounded<void>('QMP wait for migration', bounds, unreachableTimeout, (resolve) => {
        const timer = setTimeout(resolve, pollMs);
        wake = resolve;
        return () => {
          clearTimeout(timer);
          wake = undefined;
        };
      });
    }
  } finally {
    stopListening();
    deadline.dispose();
  }
}

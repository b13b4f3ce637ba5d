import { rm } from 'node:fs/promises';
import { streamFileToSocket } from './migration-stream.js';
import { waitMigration, type QmpClient } from './qmp/index.js';

/** Where a restoring QEMU's device state comes from, and how long each QMP step may take. */
export interface DeviceStateLoad {
  /** The unix socket QEMU listens on for the stream (`migrate-incoming unix:PATH`); removed afterwards. */
  readonly incomingSocket: string;
  /** The file holding the stream, from byte `offset` to its end (a persisted snapshot's vmstate). */
  readonly file: string;
  readonly offset: number;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Work that must be done before the stream goes in (a standby machine's RAM and disk, see PreparedRestore.bind). */
  readonly ready?: Promise<void>;
}

/**
 * Loads a restoring QEMU's device state (QEMU started with `-incoming defer`) and resumes the guest (the source
 * was paused when it saved, so QEMU does not resume by itself). A failed load makes QEMU exit.
 * @throws {QmpCommandError} when a command or the migration fails or times out; {@link AbortedError}.
 */
export async function loadDeviceState(qmp: QmpClient, load: DeviceStateLoad): Promise<void> {
  const bounds = { timeoutMs: load.timeoutMs, signal: load.signal };
  // The source saved with x-ignore-shared: RAM is not in the stream, it is the mapped image. The capability
  // stays on: this machine's own in-VM snapshots and persists rely on it (see InVmSnapshots).
  // Sent together (QEMU runs one monitor's commands in order), and beside `ready`.
  await Promise.all([
    qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'x-ignore-shared', state: true },
        // MIGRATION events wake waitMigration as soon as the load completes, instead of at its next poll.
        { capability: 'events', state: true },
      ],
    }, bounds),
    // QEMU listens before the command returns; the stream is fed from here (no shell forked by QEMU).
    qmp.execute('migrate-incoming', { uri: `unix:${load.incomingSocket}` }, bounds),
    load.ready,
  ]);
  const stream = streamFileToSocket(load.file, load.offset, load.incomingSocket);
  try {
    // Completed means QEMU has read and applied the whole stream. How our end of the socket closes does not
    // matter then: QEMU may close its end before ours has finished, which Node reports as "Premature close".
    // A stream that fails before that leaves the migration failed or waiting: the wait reports it (at the latest
    // at its bound).
    await waitMigration(qmp, { ...bounds, pollMs: 5 });
  } finally {
    stream.destroy();
    await rm(load.incomingSocket, { force: true });
  }
  await qmp.execute('cont', {}, bounds);
}

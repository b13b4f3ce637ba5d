import { join } from 'node:path';
import { execa } from 'execa';

import type { Machine } from '../qemu/machine.js';
import { receiveSocketToFile } from '../qemu/migration-stream.js';
import { saveRamImage } from '../qemu/ram-image.js';
import { waitMigration } from '../qemu/qmp/index.js';
import { resolveQemuImg } from '../qemu/scratch-disk.js';
import { throwIfAborted } from './store/fs-io.js';

/** The two files of a persisted machine state, as the store names them. */
export interface PersistedFiles {
  /** Guest RAM image (sparse, exactly memoryMiB MiB), then QEMU's device-state stream. */
  readonly vmstate: string;
  /** The guest disk's qcow2 layer (backed by the parent snapshot's layer when there is one). */
  readonly disk: string;
}

// Migration is capped at 128 MiB/s unless raised (QEMU-NOTES pitfall 5).
const UNLIMITED_BANDWIDTH = 107_374_182_400;

/**
 * Writes a running machine's state to files, with the guest paused only as long as it takes:
 * stop → copy the RAM file (sparse, as in-VM snapshots do) → append the device state (`migrate` with
 * x-ignore-shared, so RAM is not in the stream) → copy the disk as a qcow2 layer over `parentDisk` → cont. The
 * machine is left running as before, and its in-VM snapshots are untouched (the live disk is copied, not swapped).
 * @throws {QmpCommandError} when QEMU refuses a step or the migration fails.
 */
export async function persistMachineState(
  machine: Machine,
  files: PersistedFiles,
  options: { parentDisk?: string; signal?: AbortSignal },
): Promise<void> {
  const { qmp, config, paths } = machine;
  const bounds = { timeoutMs: config.qmpTimeoutMs, signal: options.signal };
  await qmp.execute('stop', {}, bounds);
  try {
    await saveRamImage(paths.ramFile, files.vmstate, config.memoryMiB * 1024 * 1024);
    throwIfAborted(options.signal, 'persist');
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH }, bounds);
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, bounds);
    // Left on: in-VM snapshots of this machine keep RAM in image files too (see InVmSnapshots).
    // QEMU connects to a socket served from here, which appends to the file (no shell forked by QEMU).
    const incoming = await receiveSocketToFile(paths.migrationSocket, files.vmstate);
    try {
      await qmp.execute('migrate', { uri: `unix:${paths.migrationSocket}` }, bounds);
      await waitMigration(qmp, bounds);
      await incoming.done;
    } finally {
      await incoming.close();
    }
    // The guest is stopped, and stopping flushed QEMU's caches, so the file is consistent for qemu-img.
    const args = ['convert', '-U', '-q', '-f', 'qcow2', '-O', 'qcow2'];
    if (options.parentDisk) args.push('-B', options.parentDisk, '-F', 'qcow2');
    args.push(paths.dataDisk, files.disk);
    await execa(resolveQemuImg(config.qemuBinary), args, { cancelSignal: options.signal, cwd: join(files.disk, '..') });
  } finally {
    await qmp.execute('cont', {}, bounds).catch(() => {});
  }
}


import { connect } from 'node:net';
import { QemuStartError } from '../errors.js';
import { DATA_NODE } from './argv.js';
import type { QmpClient } from './qmp/index.js';

// A standby machine is a QEMU started ahead of need for no snapshot in particular (Machine.prepareStandby): its RAM
// maps an empty placeholder and its data disk is an overlay with no backing. Binding it to a snapshot gives it
// the snapshot's RAM image and disk layer before the device state is loaded, as if it had been started for it.

/** The node name of the data disk's file node in a standby (argv's dataFileNode), named for the reopen. */
export const STANDBY_DATA_FILE_NODE = 'data0-file';
/** The node name a bound standby's disk layer (the snapshot's qcow2, read-only, with its own backing chain) gets. */
const LAYER_NODE = 'layer0';
/** A remap is a file open and one mmap; the bound only guards against a QEMU that stopped answering. */
const REMAP_TIMEOUT_MS = 5_000;

/**
 * Asks the standby's QEMU (native/ram-remap.c, listening on `socketPath`) to map `image` privately over its RAM,
 * the mapping of `placeholder`, at the same address.
 * @throws {QemuStartError} when the remap is refused or its socket does not answer in time.
 */
export function remapRam(socketPath: string, placeholder: string, image: string): Promise<void> {
  if (placeholder.includes('\t') || placeholder.includes('\n') || image.includes('\t') || image.includes('\n')) {
    return Promise.reject(new QemuStartError(`RAM remap: a path with a tab or newline (${JSON.stringify(image)})`));
  }
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let reply = '';
    const fail = (message: string, cause?: unknown) => {
      socket.destroy();
      reject(new QemuStartError(`RAM remap: ${message}`, cause === undefined ? undefined : { cause }));
    };
    const timer = setTimeout(() => fail(`no answer within ${REMAP_TIMEOUT_MS} ms`), REMAP_TIMEOUT_MS);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${placeholder}\t${image}\n`));
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (reply.length > 16_384) fail('reply too long');
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      fail(error.message, error);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (reply === 'ok\n') resolve();
      else fail(reply.startsWith('error ') ? reply.slice(6).trim() : `unexpected reply ${JSON.stringify(reply.slice(0, 200))}`);
    });
  });
}

/**
 * Gives the standby's data disk (an overlay with no backing, node DATA_NODE, still inactive: QEMU waits for a device
 * state) `layer` as its backing. The overlay's file is rewritten as a fresh overlay over `layer` (what a restore
 * creates), the layer opened read-only with its own backing chain, and the overlay node reopened over it. QEMU
 * reads nothing of an inactive image's metadata that it does not read again when the migration activates it (as
 * for shared storage, which the source may write until then), so the new header and tables are what it uses.
 * @throws {QmpCommandError} when QEMU refuses a step; the errors of `writeOverlay`.
 */
export async function attachDiskLayer(
  qmp: QmpClient,
  layer: string,
  writeOverlay: () => Promise<void>,
  bounds: { timeoutMs: number; signal?: AbortSignal },
): Promise<void> {
  // Sent together (QEMU runs them in order), beside the file's rewrite: only the activation reads it.
  await Promise.all([
    writeOverlay(),
    qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': LAYER_NODE, 'read-only': true, file: { driver: 'file', filename: layer, 'read-only': true } }, bounds),
    // Every option of the node is given again: a reopen resets those left out. These are argv's -drive options.
    qmp.execute('blockdev-reopen', {
      options: [{ driver: 'qcow2', 'node-name': DATA_NODE, file: STANDBY_DATA_FILE_NODE, backing: LAYER_NODE, discard: 'unmap', cache: { direct: false, 'no-flush': true } }],
    }, bounds),
  ]);
}

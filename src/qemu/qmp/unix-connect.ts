import { createConnection, type Socket } from 'node:net';
import { EvolvmError, QmpDisconnectedError } from '../../errors.js';
import { bounded, sleep, unreachableTimeout } from './wait.js';

// QEMU creates its socket a moment after spawn: until then connecting fails with one of these.
const NOT_YET = new Set(['ENOENT', 'ECONNREFUSED']);
// Kept small: a zygote's child creates the socket 5–18 ms after spawn and answers ~20–30 ms after it, and every
// retry that lands after the socket appeared is time lost. A refused connect costs Node ~0.05 ms.
const FIRST_RETRY_MS = 2;
const MAX_RETRY_MS = 4;

/**
 * Connects to a unix socket, retrying while it does not exist yet or refuses, until `signal` aborts.
 * @throws the abort reason of `signal` (see `abortReason`).
 * @throws {QmpDisconnectedError} any other connect error, as its `cause`.
 */
export async function connectUnixSocket(
  path: string,
  signal: AbortSignal,
  onRetry: (error: NodeJS.ErrnoException) => void = () => {},
): Promise<Socket> {
  for (let delay = FIRST_RETRY_MS; ; delay = Math.min(delay * 2, MAX_RETRY_MS)) {
    try {
      return await attempt(path, signal);
    } catch (error) {
      if (error instanceof EvolvmError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code === undefined || !NOT_YET.has(code)) throw new QmpDisconnectedError(undefined, { cause: error });
      onRetry(error as NodeJS.ErrnoException);
      await sleep(delay, signal, 'QMP connect');
    }
  }
}

function attempt(path: string, signal: AbortSignal): Promise<Socket> {
  return bounded<Socket>('QMP connect', { timeoutMs: Infinity, signal }, unreachableTimeout, (resolve, reject) => {
    let connected = false;
    const socket = createConnection({ path });
    // Stays attached after connecting, so an error before the client adds its own listener is not unhandled.
    socket.on('error', reject);
    socket.once('connect', () => {
      connected = true;
      resolve(socket);
    });
    return () => {
      if (!connected) socket.destroy();
    };
  });
}

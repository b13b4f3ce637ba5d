import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';

/**
 * Migration streams between QEMU and a file, carried over a unix socket in the run directory. Why not QEMU's
 * `exec:` URIs (`exec:cat`, `exec:tail`): QEMU forks a shell for them, and a fork of the QEMU process costs
 * ~25 ms here (its page tables), on every warm start and every persist.
 */

/** A stream of file bytes into a socket QEMU listens on (`migrate-incoming unix:PATH`). */
export interface OutgoingStream {
  /** Settles when the bytes are written and the socket closed, or with the first file or socket error. */
  readonly done: Promise<void>;
  /** Stops streaming now (the migration failed or was given up). */
  destroy(): void;
}

/** Streams `file` from byte `start` to its end into the unix socket at `socketPath`. */
export function streamFileToSocket(file: string, start: number, socketPath: string): OutgoingStream {
  const source = createReadStream(file, { start, highWaterMark: 1024 * 1024 });
  const socket = connect(socketPath);
  const done = pipeline(source, socket);
  done.catch(() => {});
  return {
    done,
    destroy: () => {
      source.destroy();
      socket.destroy();
    },
  };
}

/** A socket that QEMU's `migrate unix:PATH` connects to; what it sends is appended to a file. */
export interface IncomingFile {
  /** Settles once one connection's bytes are all in the file (flushed and closed), or with an error. */
  readonly done: Promise<void>;
  /** Stops listening and drops a connection in progress; removes the socket file. */
  close(): Promise<void>;
}

/**
 * Listens on `socketPath` for one connection and appends everything it sends to `file`.
 * @throws the listen error (the path exists, or is too long for a unix socket).
 */
export async function receiveSocketToFile(socketPath: string, file: string): Promise<IncomingFile> {
  let connection: Socket | undefined;
  let settle!: { resolve: () => void; reject: (error: unknown) => void };
  const done = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  done.catch(() => {});
  const server: Server = createServer((socket) => {
    if (connection) {
      socket.destroy();
      return;
    }
    connection = socket;
    pipeline(socket, createWriteStream(file, { flags: 'a' })).then(settle.resolve, settle.reject);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    done,
    close: async () => {
      connection?.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(socketPath, { force: true });
    },
  };
}

import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { EvolvmError } from '../../errors.js';
import { FsSnapshotStore, type SnapshotInfo, type SnapshotListEntry, type VerifyProgress } from './snapshot-store.js';

export interface SnapshotCliIo {
  stdout: { write(chunk: string): unknown };
  stderr: { write(chunk: string): unknown; isTTY?: boolean };
  /** Defaults to process.env (read for EVOLVM_STORE). */
  env?: Readonly<Record<string, string | undefined>>;
  signal?: AbortSignal;
}

export const SNAPSHOT_USAGE = `usage:
  evolvm snapshot ls [--json]                 list the snapshots and whether each passes the quick checks
  evolvm snapshot inspect ID|NAME             print a snapshot's manifest and paths (JSON)
  evolvm snapshot verify ID|NAME [--progress] re-hash every file; exit 1 when one differs
  evolvm snapshot gc                          remove what crashed writers and deleters left behind
options:
  --store DIR   the store (default $EVOLVM_STORE, else ~/.evolvm/snapshots)`;

/**
 * `evolvm snapshot ...`. `argv` is what follows `snapshot` (a leading `snapshot` is skipped too).
 * @returns the exit code: 0 ok, 1 a store error (a failed verify, a missing snapshot), 2 a usage error.
 */
export async function runSnapshotCli(argv: string[], io: SnapshotCliIo): Promise<number> {
  const args = argv[0] === 'snapshot' ? argv.slice(1) : argv;
  let parsed: ReturnType<typeof parseCli>;
  try {
    parsed = parseCli(args);
  } catch (error) {
    io.stderr.write(`evolvm snapshot: ${(error as Error).message}\n${SNAPSHOT_USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ref, ...rest] = positionals;
  if (values.help) {
    io.stdout.write(`${SNAPSHOT_USAGE}\n`);
    return 0;
  }
  const needsRef = command === 'inspect' || command === 'verify';
  const known = command === 'ls' || command === 'gc' || needsRef;
  if (!known || (needsRef ? ref === undefined || rest.length > 0 : ref !== undefined)) {
    io.stderr.write(`${SNAPSHOT_USAGE}\n`);
    return 2;
  }
  const env = io.env ?? process.env;
  const root = values.store ?? env.EVOLVM_STORE ?? join(homedir(), '.evolvm', 'snapshots');
  try {
    // No recovery on open: ls/inspect/verify leave the store as they found it, and gc reports what it removes.
    const store = await FsSnapshotStore.open(root, { signal: io.signal, recover: false });
    switch (command) {
      case 'ls':
        printList(await store.list({ signal: io.signal }), values.json === true, io);
        return 0;
      case 'inspect':
        io.stdout.write(`${JSON.stringify(describe(await store.get(ref!, { signal: io.signal })), null, 2)}\n`);
        return 0;
      case 'verify':
        return await verify(store, ref!, values.progress === true || io.stderr.isTTY === true, io);
      case 'gc': {
        const report = await store.gc({ signal: io.signal });
        for (const { kind, path } of report.removed) io.stdout.write(`removed ${kind} ${path}\n`);
        for (const name of report.restoredNames) io.stdout.write(`restored name ${name}\n`);
        if (report.removed.length === 0 && report.restoredNames.length === 0) io.stdout.write('nothing to remove\n');
        return 0;
      }
    }
  } catch (error) {
    if (!(error instanceof EvolvmError)) throw error;
    io.stderr.write(`evolvm: [${error.code}] ${error.message}\n`);
    return 1;
  }
  return 2;
}

function parseCli(args: string[]) {
  return parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      store: { type: 'string' },
      progress: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

async function verify(store: FsSnapshotStore, ref: string, showProgress: boolean, io: SnapshotCliIo): Promise<number> {
  const tty = io.stderr.isTTY === true;
  let shown = -1;
  const onProgress = ({ bytesDone, bytesTotal }: VerifyProgress): void => {
    const percent = bytesTotal === 0 ? 100 : Math.floor((bytesDone / bytesTotal) * 100);
    // A terminal gets one line rewritten in place; a log gets a line per 10%.
    const step = tty ? percent : percent - (percent % 10);
    if (step === shown) return;
    shown = step;
    io.stderr.write(tty ? `\rverifying ${ref}: ${percent}%` : `verifying ${ref}: ${step}%\n`);
  };
  try {
    const info = await store.verify(ref, { signal: io.signal, onProgress: showProgress ? onProgress : undefined });
    if (showProgress && tty) io.stderr.write('\n');
    io.stdout.write(`ok ${info.id} ${info.name} (${formatBytes(info.sizeBytes)} verified)\n`);
    return 0;
  } catch (error) {
    if (showProgress && tty && shown >= 0) io.stderr.write('\n');
    throw error;
  }
}

function printList(entries: SnapshotListEntry[], json: boolean, io: SnapshotCliIo): void {
  if (json) {
    const rows = entries.map((e) =>
      e.ok ? { ok: true, ...describe(e.snapshot) } : { ok: false, id: e.id, error: { code: e.error.code, message: e.error.message } },
    );
    io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return;
  }
  const names = new Map(entries.flatMap((e) => (e.ok ? [[e.id, e.snapshot.name] as const] : [])));
  const table = [['ID', 'NAME', 'CREATED', 'STAGE', 'PARENT', 'SIZE', 'STATUS']];
  for (const e of entries) {
    if (e.ok) {
      const m = e.snapshot.manifest;
      const parent = m.parent === null ? '-' : (names.get(m.parent) ?? m.parent);
      table.push([e.id, m.name, m.createdAt, m.stage.name, parent, formatBytes(e.snapshot.sizeBytes), 'ok']);
    } else {
      table.push([e.id, '?', '?', '?', '?', '?', String(e.error.code)]);
    }
  }
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) io.stdout.write(`${row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
}

function describe(info: SnapshotInfo) {
  return { id: info.id, name: info.name, dir: info.dir, paths: info.paths, sizeBytes: info.sizeBytes, manifest: info.manifest };
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

import { closeSync, openSync, readSync } from 'node:fs';
import { fileIdentity } from '../util/file-cache.js';
import { resolveExecutable } from './resolve-executable.js';
import { qemuZygoteShim } from './native-shims.js';
import { SpawnHelper } from './spawn-helper.js';

// The long-lived processes that fork QEMU for this Node process, started on first use (src/qemu/qemu-process.ts
// picks one per spawn).

const optionalTools = new Map<string, string | undefined>();

/** Where `name` is in PATH, looked up once per process; undefined when it is not installed. */
function optionalTool(name: string): string | undefined {
  if (!optionalTools.has(name)) {
    let path: string | undefined;
    try {
      path = resolveExecutable(name);
    } catch {
      path = undefined;
    }
    optionalTools.set(name, path);
  }
  return optionalTools.get(name);
}

/** util-linux's setpriv when it is installed (it is on Debian: util-linux is essential), else undefined. */
export function pdeathsigWrapper(): string | undefined {
  return optionalTool('setpriv');
}

/**
 * How QEMU is started:
 * - `zygote`: forked from a QEMU zygote, a QEMU process that has been loaded once and runs QEMU's main in each
 *   child it forks (native/qemu-zygote.c; default where it is built);
 * - `helper`: forked and exec'd by the shared perl spawn helper (default where perl exists);
 * - `direct`: by Node's own spawn.
 */
export type QemuLauncher = 'zygote' | 'helper' | 'direct';

let helper: SpawnHelper | undefined;
/** Set when a helper died before it started anything: this perl cannot run it (no POSIX module, say). */
let helperUnusable = false;

/** The spawn helper, started on first use and again if it died; undefined where perl is missing or cannot run it. */
export function spawnHelper(): SpawnHelper | undefined {
  const perl = optionalTool('perl');
  if (!perl || helperUnusable) return undefined;
  if (!helper?.alive) helper = SpawnHelper.start(perl, pdeathsigWrapper());
  return helper;
}

const zygotes = new Map<string, SpawnHelper>();
/** Zygotes that died before they started anything: the shim cannot take that program over (not glibc, say). */
const unusableZygotes = new Set<string>();

/**
 * Which zygote can start `executable` with `env`: the program file as it is now (a QEMU upgraded in place gets a
 * zygote of its own, so that a child never runs another version than the file on disk reports) and what the
 * dynamic loader and glibc read from the environment at start-up (`LD_*`, `GLIBC_TUNABLES`, `MALLOC_*`), fixed in
 * a zygote once it is loaded.
 */
function zygoteKey(executable: string, env: Readonly<Record<string, string>>): string {
  const loaderEntries = Object.entries(env).filter(([name]) => /^(LD_|MALLOC_|GLIBC_TUNABLES$)/.test(name)).sort(([a], [b]) => (a < b ? -1 : 1));
  return JSON.stringify([fileIdentity(executable), loaderEntries]);
}

const elfFiles = new Map<string, boolean>();

/**
 * Whether `path` is an ELF file (checked once per path). A script cannot be a zygote: its interpreter is what
 * would be loaded, and a child would run the interpreter's main with QEMU's arguments.
 */
function isElf(path: string): boolean {
  let elf = elfFiles.get(path);
  if (elf === undefined) {
    let fd: number | undefined;
    try {
      fd = openSync(path, 'r');
      const magic = Buffer.alloc(4);
      elf = readSync(fd, magic, 0, 4, 0) === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    } catch {
      elf = false;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
    elfFiles.set(path, elf);
  }
  return elf;
}

/**
 * The zygote for `executable` and `env`, started on first use and again if it died; undefined where none can run.
 * A spawn sent while it is still loading waits in its input: the first QEMU of a process costs about what an exec
 * through the perl helper does (119–123 against 115–124 ms to an answered QMP command here), and starting it
 * through the helper meanwhile was slower (161–200 ms: the two contend for the CPUs).
 */
export function zygoteFor(executable: string, env: Readonly<Record<string, string>>): SpawnHelper | undefined {
  const shim = qemuZygoteShim();
  if (!shim || !isElf(executable)) return undefined;
  let key: string;
  try {
    key = zygoteKey(executable, env);
  } catch {
    return undefined; // the file went away since it was found: the next launcher reports that
  }
  if (unusableZygotes.has(key)) return undefined;
  let zygote = zygotes.get(key);
  if (!zygote?.alive) {
    const started = SpawnHelper.startZygote(executable, shim, env);
    // One that dies before it is ready never took the program over (a static or non-glibc binary, say).
    void started.ready.then((ready) => ready || unusableZygotes.add(key));
    zygotes.set(key, started);
    zygote = started;
  }
  return zygote;
}

/**
 * Starts the zygote for `executable` and `env` if there can be one, so that it is ready when QEMU is needed.
 * @returns whether it is ready (false where none can run).
 */
export async function prepareZygote(executable: string, env: Readonly<Record<string, string>>): Promise<boolean> {
  return (await zygoteFor(executable, env)?.ready) ?? false;
}

/** Marks a launcher that died before it started anything: the next one starts `executable` from now on. */
export function markUnusable(via: 'zygote' | 'helper', executable: string, env: Readonly<Record<string, string>>): void {
  if (via === 'helper') helperUnusable = true;
  else {
    try {
      unusableZygotes.add(zygoteKey(executable, env));
    } catch {
      // the file went away: no zygote will be asked for it
    }
  }
}

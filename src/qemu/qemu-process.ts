import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { execa } from 'execa';
import { QemuNotFoundError, QemuStartError } from '../errors.js';
import { markUnusable, pdeathsigWrapper, prepareZygote, spawnHelper, zygoteFor, type QemuLauncher } from './launchers.js';
import { idleTrimShim } from './native-shims.js';
import { resolveExecutable } from './resolve-executable.js';
import type { ExitInfo } from './spawn-helper.js';

export type { ExitInfo, QemuLauncher };

const STDERR_TAIL_BYTES = 8 * 1024;

/**
 * The environment QEMU runs with, over the parent's: the C locale, glibc's malloc asked to back its heap with
 * transparent huge pages (a no-op where THP is off; a `glibc.malloc.hugetlb` the user set wins), and, when it is
 * built, the shim that puts off QEMU's `malloc_trim` calls until QEMU is idle, preloaded ahead of the user's own
 * `LD_PRELOAD`.
 * - Huge pages: QEMU's start-up touches tens of MB of fresh heap, and on 4 KiB pages the faults were a third of
 *   its CPU: 105 → 74 ms from spawn to a QMP session, warm start 265 → 225 ms (measured, bench/RESULTS.md).
 * - Idle trim (native/idle-malloc-trim.c): QEMU trims its heap after every batch of RCU callbacks and faults the
 *   pages back in at once; trimming only after 100 ms without a call took a devolve's snapshot-load job from
 *   23–26 to 10–11 ms, and an idle QEMU holds no more memory than before.
 * `preload`: the shim's path, or null for none (default: {@link idleTrimShim}).
 */
export function qemuEnvironment(parent: NodeJS.ProcessEnv = process.env, preload: string | null = idleTrimShim(parent) ?? null): Record<string, string> {
  const tunables = (parent.GLIBC_TUNABLES ?? '').split(':').filter((tunable) => tunable.length > 0);
  if (!tunables.some((tunable) => tunable.startsWith('glibc.malloc.hugetlb='))) tunables.push('glibc.malloc.hugetlb=1');
  const env: Record<string, string> = { LC_ALL: 'C', GLIBC_TUNABLES: tunables.join(':') };
  if (preload) env.LD_PRELOAD = [preload, parent.LD_PRELOAD].filter((entry) => entry !== undefined && entry.length > 0).join(':');
  return env;
}

/** The parent's environment with `env` over it, as a directly spawned child gets it. */
export function fullEnvironment(env: Readonly<Record<string, string>>): Record<string, string> {
  const full: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) full[name] = value;
  return Object.assign(full, env);
}

export interface QemuSpawnOptions {
  /** The guest's serial console file, whose tail explains an unexpected exit. */
  consoleLog: string;
  /** Where QEMU's stderr goes when a zygote or the helper starts it (Node reads a directly spawned one's from a pipe). */
  stderrLog: string;
  killGraceMs: number;
  /** Default: `zygote` where it is built and can run, else `helper` where perl can run it, else `direct`. */
  launcher?: QemuLauncher;
  /** Variables for this QEMU alone, over evolvm's and the parent's (not the zygote's own). */
  env?: Readonly<Record<string, string>>;
}

/** How one QEMU is signalled, whoever started it. */
interface Signaller {
  signal(signal: NodeJS.Signals): void;
  /** Whether the process keeps Node running (absent: it always does). */
  holdEventLoop?(hold: boolean): void;
}

/**
 * The QEMU child process: killed with SIGTERM then SIGKILL after a grace delay, and killed when the Node process
 * exits (by the kernel's parent-death signal, which the spawn helper's child, or else `setpriv`, sets before QEMU
 * runs). Its serial console goes to a file; the tails of that file and of stderr explain an unexpected exit.
 */
export class QemuProcess {
  readonly pid: number;
  /** Resolves (never rejects) when the process has exited. */
  readonly exited: Promise<ExitInfo>;
  #exitInfo: ExitInfo | undefined;
  #stderrTail = '';
  readonly #signaller: Signaller;
  readonly #options: QemuSpawnOptions;
  #forceKill: NodeJS.Timeout | undefined;

  private constructor(pid: number, exited: Promise<ExitInfo>, signaller: Signaller, options: QemuSpawnOptions) {
    this.pid = pid;
    this.#signaller = signaller;
    this.#options = options;
    this.exited = exited.then((info) => {
      this.#exitInfo = info;
      clearTimeout(this.#forceKill);
      // Read now: the run directory holding a helper-started QEMU's stderr file is removed after the exit.
      this.#stderrTail ||= readTail(options.stderrLog, STDERR_TAIL_BYTES);
      return info;
    });
  }

  /**
   * Starts the QEMU zygote for `binary` ahead of need (see {@link QemuLauncher}), so that the first QEMU does not
   * wait for it to load (~60 ms here).
   * @returns whether the zygote is ready (false where none can run: not built, turned off, a binary it cannot
   * take over).
   * @throws {QemuNotFoundError} when the binary is missing or not executable.
   */
  static prepare(binary: string): Promise<boolean> {
    return prepareZygote(resolveExecutable(binary), fullEnvironment(qemuEnvironment()));
  }

  /**
   * Spawns QEMU.
   * @throws {QemuNotFoundError} when the binary is missing or not executable.
   * @throws {QemuStartError} when the spawn itself failed (fork, exec, the stderr file).
   */
  static async spawn(binary: string, argv: readonly string[], options: QemuSpawnOptions): Promise<QemuProcess> {
    const executable = resolveExecutable(binary);
    // Exit hooks do not run when Node is SIGKILLed or crashes hard; the kernel's parent-death signal does, so a
    // QEMU never outlives the process that owns it. The spawn helper's children set it themselves before exec;
    // otherwise setpriv sets it and execs QEMU under the same pid.
    const setpriv = pdeathsigWrapper();
    const wrapped = (): [string, string[]] => (setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', executable, ...argv]] : [executable, [...argv]]);
    const env = qemuEnvironment();
    const full = fullEnvironment(env);
    const chosen = options.launcher;
    for (const via of chosen ? [chosen] : (['zygote', 'helper'] as const)) {
      if (via === 'direct') break;
      const launcher = via === 'zygote' ? zygoteFor(executable, full) : spawnHelper();
      if (!launcher) {
        if (chosen) throw new QemuStartError(via === 'zygote' ? 'no QEMU zygote can run here (native/build.sh has not built it, EVOLVM_QEMU_ZYGOTE=off, or a binary it cannot take over: a script, a static one)' : 'the spawn helper cannot run here (no perl, or one that could not run it)');
        continue;
      }
      // A zygote's child runs main in place, with no exec: it sets its parent-death signal itself.
      const command = via === 'zygote' || launcher.setsParentDeath ? [executable, ...argv] : wrapped().flat();
      try {
        const child = await launcher.spawn(command, options.env ? { ...full, ...options.env } : full, options.stderrLog);
        return new QemuProcess(child.pid, child.exited, { signal: (signal) => launcher.kill(child.pid, signal), holdEventLoop: (hold) => launcher.holdEventLoop(child.pid, hold) }, options);
      } catch (error) {
        if (chosen || launcher.alive || launcher.hasSpawned) throw new QemuStartError((error as Error).message, { cause: error });
        // It never worked here: the next launcher starts QEMU from now on.
        markUnusable(via, executable, full);
      }
    }
    const [file, args] = wrapped();
    const child = execa(file, args, { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', buffer: false, reject: false, cleanup: true, forceKillAfterDelay: false, env: { ...env, ...options.env } });
    if (child.pid === undefined) throw new QemuNotFoundError(binary);
    const exited = child.then(
      (result): ExitInfo => ({ exitCode: result.exitCode ?? null, signal: result.signal ?? null }),
      (): ExitInfo => ({ exitCode: null, signal: null }),
    );
    const process_ = new QemuProcess(child.pid, exited, { signal: (signal) => child.kill(signal) }, options);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => process_.#appendStderr(text));
    return process_;
  }

  #appendStderr(text: string): void {
    this.#stderrTail = (this.#stderrTail + text).slice(-STDERR_TAIL_BYTES);
  }

  /** The exit status once the process has exited, else undefined. */
  get exitInfo(): ExitInfo | undefined {
    return this.#exitInfo;
  }

  /** The end of the guest console and of QEMU's stderr, for error messages. */
  diagnosticTail(bytes = 4096): string {
    const console = readTail(this.#options.consoleLog, bytes);
    const stderr = (this.#stderrTail || readTail(this.#options.stderrLog, STDERR_TAIL_BYTES)).trim();
    return [console.trim() && `console:\n${console.trim()}`, stderr && `qemu stderr:\n${stderr.slice(-bytes)}`]
      .filter(Boolean)
      .join('\n');
  }

  /**
   * Whether this QEMU keeps Node's event loop alive (it does by default). Only a QEMU started by the zygote or the
   * spawn helper can be let go; for a directly spawned one this is a no-op.
   */
  holdEventLoop(hold: boolean): void {
    this.#signaller.holdEventLoop?.(hold);
  }

  /** SIGTERM, then SIGKILL after the grace delay; resolves once the process is gone. */
  async kill(): Promise<ExitInfo> {
    if (!this.#exitInfo) {
      this.#signaller.signal('SIGTERM');
      this.#forceKill ??= setTimeout(() => this.#signaller.signal('SIGKILL'), this.#options.killGraceMs);
    }
    return this.exited;
  }

  /** SIGKILL at once. */
  async killNow(): Promise<ExitInfo> {
    if (!this.#exitInfo) this.#signaller.signal('SIGKILL');
    return this.exited;
  }
}

function readTail(path: string, bytes: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    const length = Math.min(bytes, size);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, size - length);
    return buffer.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

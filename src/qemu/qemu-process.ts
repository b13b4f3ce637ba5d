import { accessSync, constants, openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { QemuNotFoundError } from '../errors.js';

export interface ExitInfo {
  readonly exitCode: number | null;
  readonly signal: string | null;
}

const STDERR_TAIL_BYTES = 8 * 1024;

let setprivPath: { path: string | undefined } | undefined;

/** util-linux's setpriv when it is installed (it is on Debian: util-linux is essential), else undefined. */
function pdeathsigWrapper(): string | undefined {
  if (!setprivPath) {
    let path: string | undefined;
    try {
      path = resolveExecutable('setpriv');
    } catch {
      path = undefined;
    }
    setprivPath = { path };
  }
  return setprivPath.path;
}

/**
 * Finds an executable the way a shell would: a path is checked as is, a bare name is looked up in PATH.
 * @throws {QemuNotFoundError} when nothing executable is found.
 */
export function resolveExecutable(binary: string, env: NodeJS.ProcessEnv = process.env): string {
  const candidates = binary.includes('/') ? [binary] : (env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, binary));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new QemuNotFoundError(binary);
}

/**
 * The environment QEMU runs with, over the parent's: the C locale, and glibc's malloc asked to back its heap with
 * transparent huge pages (a no-op where THP is off; a `glibc.malloc.hugetlb` the user set wins). QEMU's start-up
 * touches tens of MB of fresh heap, and on 4 KiB pages the faults were a third of its CPU: 105 → 74 ms from spawn
 * to a QMP session, warm start 265 → 225 ms, fork-16 3.8–4.2 → 3.5 s (measured, bench/RESULTS.md).
 */
export function qemuEnvironment(parent: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const tunables = (parent.GLIBC_TUNABLES ?? '').split(':').filter((tunable) => tunable.length > 0);
  if (!tunables.some((tunable) => tunable.startsWith('glibc.malloc.hugetlb='))) tunables.push('glibc.malloc.hugetlb=1');
  return { LC_ALL: 'C', GLIBC_TUNABLES: tunables.join(':') };
}

/**
 * The QEMU child process. Owned through execa: killed with SIGTERM then SIGKILL after a grace delay, and
 * killed when the Node process exits. Its serial console goes to a file; the tails of that file and of
 * stderr explain an unexpected exit.
 */
export class QemuProcess {
  readonly pid: number;
  /** Resolves (never rejects) when the process has exited. */
  readonly exited: Promise<ExitInfo>;
  #exitInfo: ExitInfo | undefined;
  #stderrTail = '';
  readonly #child: ResultPromise;
  readonly #consoleLog: string;

  private constructor(child: ResultPromise, consoleLog: string) {
    this.#child = child;
    this.#consoleLog = consoleLog;
    this.pid = child.pid!;
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      this.#stderrTail = (this.#stderrTail + text).slice(-STDERR_TAIL_BYTES);
    });
    this.exited = child.then(
      (result) => {
        this.#exitInfo = { exitCode: result.exitCode ?? null, signal: result.signal ?? null };
        return this.#exitInfo;
      },
      () => {
        this.#exitInfo = { exitCode: null, signal: null };
        return this.#exitInfo;
      },
    );
  }

  /**
   * Spawns QEMU.
   * @throws {QemuNotFoundError} when the binary is missing or not executable.
   */
  static spawn(binary: string, argv: readonly string[], options: { consoleLog: string; killGraceMs: number }): QemuProcess {
    const executable = resolveExecutable(binary);
    // Exit hooks do not run when Node is SIGKILLed or crashes hard; the kernel's parent-death signal does, so a
    // QEMU never outlives the process that owns it. setpriv sets it and execs QEMU under the same pid.
    const setpriv = pdeathsigWrapper();
    const [file, args] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', executable, ...argv]] : [executable, argv];
    const child = execa(file, args, {
      stdin: 'ignore',
      stdout: 'ignore',
      stderr: 'pipe',
      buffer: false,
      reject: false,
      cleanup: true,
      forceKillAfterDelay: options.killGraceMs,
      env: qemuEnvironment(),
    });
    if (child.pid === undefined) throw new QemuNotFoundError(binary);
    return new QemuProcess(child, options.consoleLog);
  }

  /** The exit status once the process has exited, else undefined. */
  get exitInfo(): ExitInfo | undefined {
    return this.#exitInfo;
  }

  /** The end of the guest console and of QEMU's stderr, for error messages. */
  diagnosticTail(bytes = 4096): string {
    const console = readTail(this.#consoleLog, bytes);
    const stderr = this.#stderrTail.trim();
    return [console.trim() && `console:\n${console.trim()}`, stderr && `qemu stderr:\n${stderr.slice(-bytes)}`]
      .filter(Boolean)
      .join('\n');
  }

  /** SIGTERM, then SIGKILL after the grace delay; resolves once the process is gone. */
  async kill(): Promise<ExitInfo> {
    if (!this.#exitInfo) this.#child.kill('SIGTERM');
    return this.exited;
  }

  /** SIGKILL at once. */
  async killNow(): Promise<ExitInfo> {
    if (!this.#exitInfo) this.#child.kill('SIGKILL');
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

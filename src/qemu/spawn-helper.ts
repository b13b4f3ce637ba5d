import { constants } from 'node:os';
import { createInterface } from 'node:readline';
import { execa, type ResultPromise } from 'execa';
import { SPAWN_HELPER_SCRIPT } from './spawn-helper-script.js';

export interface ExitInfo {
  readonly exitCode: number | null;
  readonly signal: string | null;
}

/** A child the helper started. */
export interface HelperChild {
  readonly pid: number;
  /** Resolves (never rejects) when the child has been reaped, or when the helper died (its children die with it). */
  readonly exited: Promise<ExitInfo>;
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(constants.signals).map(([name, number]) => [number, name]));

/** What a dead helper's children are reported as: they got the parent-death SIGKILL. */
const HELPER_GONE: ExitInfo = { exitCode: null, signal: 'SIGKILL' };

/** prctl's system call number by Node's `process.arch` (asm/unistd.h); the helper's children set their parent-death signal with it. */
const PRCTL_SYSCALL: Partial<Record<string, number>> = { x64: 157, arm64: 167, riscv64: 167, loong64: 167, ppc64: 171, s390x: 172, ia32: 172, arm: 172 };

const HELPER_OPTIONS = { stdin: 'pipe', stdout: 'pipe', stderr: 'inherit', buffer: false, reject: false, cleanup: true } as const;

/**
 * How much room a zygote's command line leaves for its children's: each child writes its own argv there, so that
 * ps and pgrep show what it runs. QEMU's command lines here are 2–4 KiB.
 */
const ZYGOTE_ARGV_ROOM = 16 * 1024;

function hex(text: string): string {
  return Buffer.from(text, 'utf8').toString('hex');
}

/**
 * A long-lived process that forks children for this Node process: a perl script that forks and execs (see
 * {@link SPAWN_HELPER_SCRIPT}), or a QEMU zygote that forks children which run QEMU's main without an exec (see
 * native/qemu-zygote.c); both speak the same protocol. Node's own spawn forks all of Node (page tables of
 * 100+ MB) and blocks the event loop until the child has exec'd: 10–45 ms per QEMU here, serialised, while a fork
 * of 16 clones wants the loop for their handshakes.
 */
export class SpawnHelper {
  readonly #process: ResultPromise<typeof HELPER_OPTIONS>;
  readonly #starting = new Map<number, { resolve: (child: HelperChild) => void; reject: (error: Error) => void }>();
  readonly #live = new Map<number, (info: ExitInfo) => void>();
  /** Live children that do not keep Node running (a standby machine waiting in the background). */
  readonly #background = new Set<number>();
  #nextId = 1;
  #dead = false;
  #spawnedOne = false;
  #settleReady!: (ready: boolean) => void;
  /**
   * Resolves true once the helper takes spawns, false if it exits before: a zygote says so once QEMU is loaded
   * (spawns sent before then wait in its input), the perl helper at once.
   */
  readonly ready: Promise<boolean>;
  /** Whether each child sets its own parent-death signal (prctl's number is known here), so needs no setpriv. */
  readonly setsParentDeath: boolean;

  private constructor(file: string, args: readonly string[], env: Readonly<Record<string, string>>, extendEnv: boolean, setsParentDeath: boolean, saysReady: boolean) {
    this.setsParentDeath = setsParentDeath;
    this.ready = new Promise((resolve) => (this.#settleReady = resolve));
    if (!saysReady) this.#settleReady(true);
    this.#process = execa(file, args, { ...HELPER_OPTIONS, env, extendEnv });
    const lines = createInterface({ input: this.#process.stdout });
    lines.on('line', (line) => this.#onLine(line));
    void this.#process.then(() => this.#onDeath());
    this.#process.stdin.on('error', () => this.#onDeath());
    // A zygote keeps Node running until it is ready, so that awaiting `ready` alone cannot end the program.
    this.#setRef(saysReady);
  }

  /** Starts a perl helper with `perl`, under `wrapper` (setpriv, for the parent-death signal) when given. */
  static start(perl: string, wrapper: string | undefined): SpawnHelper {
    const script = ['-e', SPAWN_HELPER_SCRIPT, String(PRCTL_SYSCALL[process.arch] ?? 0)];
    const [file, args] = wrapper ? [wrapper, ['--pdeathsig', 'KILL', '--', perl, ...script]] : [perl, script];
    return new SpawnHelper(file, args, { LC_ALL: 'C' }, true, PRCTL_SYSCALL[process.arch] !== undefined, false);
  }

  /**
   * Starts a zygote of `executable` (a glibc program): `zygote` is native/qemu-zygote.c's shim, preloaded ahead of
   * the `LD_PRELOAD` in `env`, which is the environment the program is loaded with. Its children run with the
   * environment each spawn names; only what the dynamic loader and glibc read at start-up comes from `env`.
   * A program the shim cannot take over runs its own main with the argument `-evolvm-zygote` instead, which QEMU
   * refuses at once: the helper then dies before it is {@link ready}.
   */
  static startZygote(executable: string, zygote: string, env: Readonly<Record<string, string>>): SpawnHelper {
    const preload = [zygote, env.LD_PRELOAD].filter((entry) => entry !== undefined && entry.length > 0).join(':');
    return new SpawnHelper(executable, ['-evolvm-zygote', ' '.repeat(ZYGOTE_ARGV_ROOM)], { ...env, LD_PRELOAD: preload, EVOLVM_ZYGOTE: '1' }, false, true, true);
  }

  /** False once the helper has exited; a new one must be started then. */
  get alive(): boolean {
    return !this.#dead;
  }

  /** Whether it has started a child yet: a helper that died before that likely cannot run here at all. */
  get hasSpawned(): boolean {
    return this.#spawnedOne;
  }

  /**
   * Forks and execs `argv` with exactly `env`, stdin and stdout on /dev/null, stderr appended to `stderrPath`.
   * @returns once the child has exec'd.
   * @throws Error when the fork, the stderr file or the exec failed, or the helper is gone.
   */
  spawn(argv: readonly string[], env: Readonly<Record<string, string>>, stderrPath: string): Promise<HelperChild> {
    if (this.#dead) return Promise.reject(new Error('the spawn helper has exited'));
    const id = this.#nextId++;
    const entries = Object.entries(env).map(([name, value]) => hex(`${name}=${value}`));
    const line = ['spawn', id, hex(stderrPath), entries.length, ...entries, ...argv.map(hex)].join(' ');
    return new Promise((resolve, reject) => {
      this.#starting.set(id, { resolve, reject });
      this.#setRef(true);
      this.#process.stdin.write(`${line}\n`);
    });
  }

  /** Whether a live child keeps Node running (every child does until told otherwise). */
  holdEventLoop(pid: number, hold: boolean): void {
    if (!this.#live.has(pid)) return;
    if (hold) {
      this.#background.delete(pid);
      this.#setRef(true);
    } else {
      this.#background.add(pid);
      this.#unrefWhenIdle();
    }
  }

  /** Sends `signal` to a child that has not been reaped yet (a no-op otherwise). */
  kill(pid: number, signal: NodeJS.Signals): void {
    if (this.#dead || !this.#live.has(pid)) return;
    this.#process.stdin.write(`kill ${pid} ${constants.signals[signal]}\n`);
  }

  #onLine(line: string): void {
    const [kind, a, b, c] = line.split(' ');
    if (kind === 'ready') {
      this.#settleReady(true);
      this.#unrefWhenIdle();
    } else if (kind === 'spawned' || kind === 'failed') {
      const waiter = this.#starting.get(Number(a));
      if (!waiter) return;
      this.#starting.delete(Number(a));
      if (kind === 'failed') {
        this.#unrefWhenIdle();
        waiter.reject(new Error(Buffer.from(b ?? '', 'hex').toString('utf8')));
        return;
      }
      const pid = Number(b);
      this.#spawnedOne = true;
      const exited = new Promise<ExitInfo>((resolve) => this.#live.set(pid, resolve));
      waiter.resolve({ pid, exited });
    } else if (kind === 'exit') {
      const pid = Number(a);
      const settle = this.#live.get(pid);
      if (!settle) return;
      this.#live.delete(pid);
      this.#background.delete(pid);
      const code = Number(b);
      settle(code < 0 ? { exitCode: null, signal: SIGNAL_NAMES.get(Number(c)) ?? `signal ${c}` } : { exitCode: code, signal: null });
      this.#unrefWhenIdle();
    }
  }

  #onDeath(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#settleReady(false);
    for (const waiter of this.#starting.values()) waiter.reject(new Error('the spawn helper exited'));
    this.#starting.clear();
    for (const settle of this.#live.values()) settle(HELPER_GONE);
    this.#live.clear();
  }

  #unrefWhenIdle(): void {
    if (this.#starting.size === 0 && this.#live.size === this.#background.size) this.#setRef(false);
  }

  /** The helper keeps Node running only while it has children starting or alive, as directly spawned ones did. */
  #setRef(on: boolean): void {
    const method = on ? 'ref' : 'unref';
    this.#process[method]();
    (this.#process.stdout as unknown as { [key: string]: () => void })[method]?.();
    (this.#process.stdin as unknown as { [key: string]: () => void })[method]?.();
  }
}

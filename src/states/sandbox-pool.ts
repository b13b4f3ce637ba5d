import { ConfigInvalidError, OperationNotAllowedError, QemuExitedError } from '../errors.js';
import { parseRestoreConfig, type RestoreConfigInput } from '../qemu/config.js';
import type { SnapshotStore } from '../snapshot/store/snapshot-store.js';
import { restoreConcurrency, type ForkOptions, type RestoreOptions, type RunningSandboxRestore } from './restore-steps.js';
import { Sandbox } from './sandbox.js';
import type { Stage, StageClass } from './stage.js';

/** The most sandboxes a pool keeps ready: each is a running QEMU. */
export const MAX_POOL_SIZE = 64;

/** A pool's options: a restore's, and how many restores fill it at once (`concurrency`, as for a fork). */
export type PoolOptions = ForkOptions;

/**
 * Sandboxes kept ready to start from one persisted snapshot, for callers that start many over time. Each ready
 * one is a guest already restored and running, idle, without an identity: its disk overlay made, the snapshot
 * leased (so it cannot be deleted or collected under it), and its identity requests run once with a throwaway
 * id, so that their code is translated (under TCG a restored guest starts with an empty translation cache).
 * {@link take} gives it its identity (a new sandbox id, the guest clock set, its RNG reseeded), which takes a few
 * milliseconds instead of a restore's ~200 on a 2-core TCG host. A taken sandbox is replaced in the background,
 * once it has started. What a ready sandbox costs: a running, idle QEMU with its own copy of the pages it wrote.
 * The pool fills with at most `concurrency` restores at a time (default: the host's CPU count), as a fork does.
 *
 * @example
 * ```ts
 * await using pool = await RuntimeLoaded.pool(store, 'wasm-ready', 4);
 * const sandbox = await pool.take();
 * ```
 */
export class SandboxPool<S extends Stage> implements AsyncDisposable {
  readonly #stageClass: StageClass<S>;
  readonly #store: SnapshotStore;
  readonly #ref: string;
  readonly #size: number;
  readonly #config: ReturnType<typeof parseRestoreConfig>;
  readonly #options: RestoreOptions;
  readonly #ready: RunningSandboxRestore<S>[] = [];
  readonly #filling = new Set<Promise<void>>();
  readonly #concurrency: number;
  #closed = false;
  #lastError: unknown;

  private constructor(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    size: number,
    config: ReturnType<typeof parseRestoreConfig>,
    options: RestoreOptions,
    concurrency: number,
  ) {
    this.#concurrency = concurrency;
    this.#stageClass = stageClass;
    this.#store = store;
    this.#ref = ref;
    this.#size = size;
    this.#config = config;
    this.#options = options;
  }

  /**
   * Opens a pool of `size` ready sandboxes of `stageClass` from snapshot `ref`. The first is prepared before this
   * returns, so a snapshot that cannot be started here fails now; the others are prepared in the background.
   * @throws {ConfigInvalidError} for a size outside 1..{@link MAX_POOL_SIZE}, a `concurrency` that is not a
   * positive integer, an invalid config, or a `fallback` option (a pool starts from the snapshot or not at all).
   * @throws the errors of {@link Sandbox.restore} for the first one.
   */
  static async open<S extends Stage>(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    size: number,
    input: RestoreConfigInput = {},
    options: PoolOptions = {},
  ): Promise<SandboxPool<S>> {
    if (!Number.isInteger(size) || size < 1 || size > MAX_POOL_SIZE) {
      throw new ConfigInvalidError([{ path: 'size', message: `expected an integer in 1..${MAX_POOL_SIZE}`, value: size }]);
    }
    const { concurrency: wanted, ...restoreOptions } = options;
    const concurrency = restoreConcurrency(wanted);
    if (options.fallback !== undefined) {
      throw new ConfigInvalidError([{ path: 'fallback', message: 'a pool starts from the snapshot; use fromSnapshot for a fallback', value: options.fallback }]);
    }
    const config = parseRestoreConfig(input);
    // The caller's signal bounds opening; prepared sandboxes outlive it.
    const { signal, ...kept } = restoreOptions;
    const pool = new SandboxPool(stageClass, store, ref, size, config, kept, concurrency);
    pool.#ready.push(await pool.#prepare({ ...kept, signal }));
    pool.#fill();
    return pool;
  }

  /** How many sandboxes are ready to take now. */
  get ready(): number {
    return this.#ready.length;
  }

  /** How many the pool keeps ready. */
  get size(): number {
    return this.#size;
  }

  /**
   * A new sandbox from the snapshot, with its own identity, as {@link Sandbox.restore} gives. Uses a ready one
   * when there is one (else prepares one now) and prepares its replacement in the background.
   * @throws {OperationNotAllowedError} after {@link close}.
   * @throws the errors of {@link Sandbox.restore}.
   */
  async take(options: { signal?: AbortSignal } = {}): Promise<S> {
    if (this.#closed) throw new OperationNotAllowedError(`take from the pool of ${this.#ref}`, 'closed');
    const startOptions = { ...this.#options, ...options };
    try {
      for (;;) {
        const ready = this.#ready.shift();
        if (!ready) break;
        if (ready.running.exitError) {
          // Its QEMU died while it waited (killed from outside, say).
          await ready.running.stop();
          continue;
        }
        try {
          return await Sandbox.adoptRunning(ready, startOptions);
        } catch (error) {
          // It may have died just now, unseen yet; a fresh one tells that from a failure of this take.
          if (!(error instanceof QemuExitedError) || options.signal?.aborted) throw error;
        }
      }
      return await Sandbox.adoptRunning(await this.#prepare(startOptions), startOptions);
    } finally {
      // Replacements start once this one runs: on a small host they would compete with it for CPU.
      this.#fill();
    }
  }

  /** Stops the ready sandboxes (those taken are the caller's) and releases their leases. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#filling]);
    const ready = this.#ready.splice(0);
    await Promise.all(ready.map((restored) => restored.running.stop()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The error of the latest background preparation, if it failed (the next take prepares anew). */
  get lastError(): unknown {
    return this.#lastError;
  }

  /** A restored, running, warmed-up guest without an identity. */
  async #prepare(options: RestoreOptions): Promise<RunningSandboxRestore<S>> {
    const prepared = await Sandbox.prepareRestore(this.#stageClass, this.#store, this.#ref, this.#config, options);
    return Sandbox.runPrepared(prepared, { ...options, warm: true });
  }

  /**
   * Starts background preparations, at most `concurrency` at a time, until ready + in progress reaches the size;
   * each that succeeds starts the next. A failure is kept in {@link lastError}, not retried: only {@link open},
   * {@link take} and a success fill, so a broken snapshot cannot spin.
   */
  #fill(): void {
    while (!this.#closed && this.#ready.length + this.#filling.size < this.#size && this.#filling.size < this.#concurrency) {
      let succeeded = false;
      const filling: Promise<void> = this.#prepare(this.#options).then(
        async (restored) => {
          this.#lastError = undefined;
          if (this.#closed) {
            await restored.running.stop();
            return;
          }
          this.#ready.push(restored);
          succeeded = true;
        },
        (error: unknown) => {
          this.#lastError = error;
        },
      );
      this.#filling.add(filling);
      void filling.finally(() => {
        this.#filling.delete(filling);
        if (succeeded) this.#fill();
      });
    }
  }
}

import { ConfigInvalidError, OperationNotAllowedError, QemuExitedError } from '../errors.js';
import { parseRestoreConfig, type RestoreConfigInput } from '../qemu/config.js';
import type { SnapshotStore } from '../snapshot/store/snapshot-store.js';
import { Sandbox, type PreparedSandboxRestore, type RestoreOptions } from './sandbox.js';
import type { Stage, StageClass } from './stage.js';

/** The most sandboxes a pool keeps ready: each is a running QEMU. */
export const MAX_POOL_SIZE = 64;

/**
 * Sandboxes kept ready to start from one persisted snapshot, for callers that start many over time. Each ready
 * one is a QEMU already started and waiting for its device state, with its disk overlay made, QMP connected and
 * the snapshot leased (so the snapshot cannot be deleted or collected under it). {@link take} only loads the
 * device state, runs the guest and gives it its identity, which skips QEMU's start-up (about 100–130 ms of a
 * ~270 ms warm start on a 2-core TCG host). A taken sandbox is replaced in the background.
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
  readonly #ready: PreparedSandboxRestore<S>[] = [];
  readonly #filling = new Set<Promise<void>>();
  #closed = false;
  #lastError: unknown;

  private constructor(stageClass: StageClass<S>, store: SnapshotStore, ref: string, size: number, config: ReturnType<typeof parseRestoreConfig>, options: RestoreOptions) {
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
   * @throws {ConfigInvalidError} for a size outside 1..{@link MAX_POOL_SIZE}, an invalid config, or a
   * `fallback` option (a pool starts from the snapshot or not at all).
   * @throws the errors of {@link Sandbox.restore} for the first one.
   */
  static async open<S extends Stage>(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    size: number,
    input: RestoreConfigInput = {},
    options: RestoreOptions = {},
  ): Promise<SandboxPool<S>> {
    if (!Number.isInteger(size) || size < 1 || size > MAX_POOL_SIZE) {
      throw new ConfigInvalidError([{ path: 'size', message: `expected an integer in 1..${MAX_POOL_SIZE}`, value: size }]);
    }
    if (options.fallback !== undefined) {
      throw new ConfigInvalidError([{ path: 'fallback', message: 'a pool starts from the snapshot; use fromSnapshot for a fallback', value: options.fallback }]);
    }
    const config = parseRestoreConfig(input);
    // The caller's signal bounds opening; prepared sandboxes outlive it.
    const { signal, ...kept } = options;
    const pool = new SandboxPool(stageClass, store, ref, size, config, kept);
    pool.#ready.push(await Sandbox.prepareRestore(stageClass, store, ref, config, { ...kept, signal }));
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
    let prepared = this.#ready.shift();
    // One whose QEMU died while waiting (killed from outside, say) is dropped.
    while (prepared && !prepared.machine.alive) {
      await Sandbox.discardPrepared(prepared);
      prepared = this.#ready.shift();
    }
    const startOptions = { ...this.#options, ...options };
    try {
      if (prepared) {
        try {
          return await Sandbox.startPrepared(prepared, startOptions);
        } catch (error) {
          // Its QEMU may have died while it waited, unseen yet; one fresh try tells that from a snapshot that
          // kills QEMU (which fails again).
          if (!(error instanceof QemuExitedError) || options.signal?.aborted) throw error;
        }
      }
      return await Sandbox.startPrepared(
        await Sandbox.prepareRestore(this.#stageClass, this.#store, this.#ref, this.#config, startOptions),
        startOptions,
      );
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
    await Promise.all(ready.map((prepared) => Sandbox.discardPrepared(prepared)));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The error of the latest background preparation that failed, if any (the next take prepares anew). */
  get lastError(): unknown {
    return this.#lastError;
  }

  /** Starts background preparations until ready + in progress reaches the size. A failure is kept, not retried. */
  #fill(): void {
    while (!this.#closed && this.#ready.length + this.#filling.size < this.#size) {
      const filling: Promise<void> = Sandbox.prepareRestore(this.#stageClass, this.#store, this.#ref, this.#config, this.#options).then(
        async (prepared) => {
          if (this.#closed) await Sandbox.discardPrepared(prepared);
          else this.#ready.push(prepared);
        },
        (error: unknown) => {
          this.#lastError = error;
        },
      );
      this.#filling.add(filling);
      void filling.finally(() => this.#filling.delete(filling));
      // One failed preparation ends this round of filling, so a broken snapshot does not spin.
      if (this.#lastError !== undefined) break;
    }
  }
}

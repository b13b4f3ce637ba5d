import type { RequestOptions } from '../qemu/agent/agent-session.js';
import type { RuntimeAddress } from '../qemu/agent/runtime-channel.js';
import type { ExecOptions, ExecResult, FileReadOptions, FileWriteOptions } from '../qemu/agent/guest-ops.js';
import type { Transition } from '../transitions/transition.js';
import type { GuestAccess } from './guest-access.js';
import type { SnapshotInfo, SnapshotStore } from '../snapshot/store/snapshot-store.js';
import type { RestoreConfigInput } from '../qemu/config.js';
// A cycle (sandbox.ts imports this module too) that is safe: each side uses the other only inside functions.
import type { ForkOptions, RestoreOptions } from './restore-steps.js';
import { Sandbox, type LineageNode, type PersistOptions } from './sandbox.js';
import { SandboxPool, type PoolOptions } from './sandbox-pool.js';

/** ready: the sandbox is in this stage; consumed: it was evolved or devolved; poisoned: the sandbox is gone. */
export type StageStatus = 'ready' | 'consumed' | 'poisoned';

declare const stageData: unique symbol;
declare const parentStage: unique symbol;

/** A stage class as a value: what `evolve`, `devolveTo` and transitions name. */
export interface StageClass<S extends Stage = Stage> {
  /** A stable name for errors, lineage records and persisted snapshots. */
  readonly stageName: string;
  readonly prototype: S;
}

/** The data a stage carries (what its entering transition returned). */
export type DataOf<S> = S extends { readonly [stageData]: infer D } ? D : never;
/** The stage a child stage devolves to. */
export type ParentOf<S> = S extends { readonly [parentStage]: infer P } ? P : never;
/** Every stage above `S` in its lineage (bounded depth, so a runaway type cannot hang the compiler). */
export type AncestorOf<S, Depth extends unknown[] = []> = Depth['length'] extends 16
  ? never
  : [ParentOf<S>] extends [never]
    ? never
    : ParentOf<S> | AncestorOf<ParentOf<S>, [...Depth, unknown]>;

export interface StageOperationOptions {
  signal?: AbortSignal;
}

export interface EvolveOptions extends StageOperationOptions {
  /** Bound on the transition's guest work (overrides the transition's own). */
  timeoutMs?: number;
}

/** What the framework hands a stage constructor. Only the sandbox can make one. */
export interface StageHandle {
  readonly sandbox: Sandbox;
  readonly node: LineageNode;
}

const handles = new WeakMap<Stage, StageHandle>();
const validHandles = new WeakSet<StageHandle>();

/** Registers a handle as genuine, so that a stage constructor accepts it. For the sandbox only. */
export function issueHandle(handle: StageHandle): StageHandle {
  validHandles.add(handle);
  return handle;
}

function handleOf(stage: Stage): StageHandle {
  return handles.get(stage)!;
}

/**
 * The sandbox behind a stage object (advanced use: its machine, snapshots and lifecycle). Guest I/O done
 * through it bypasses the stage's bookkeeping; prefer the stage's own methods.
 */
export function sandboxOf(stage: Stage): Sandbox {
  return handleOf(stage).sandbox;
}

/**
 * The base of every stage. A subclass is a noun (`RuntimeLoaded`) with a `static readonly stageName`; its
 * constructor stays protected, because stages come only from `boot`, `evolve` and `devolve`.
 *
 * Every operation checks at run time that this object is still the sandbox's current stage: TypeScript cannot
 * consume a value, so a stale object throws {@link StageStaleError} instead.
 */
export abstract class Stage<Data = unknown> implements AsyncDisposable, GuestAccess {
  /** Type-level only: the stage's data type. */
  declare readonly [stageData]: Data;

  protected constructor(handle: StageHandle) {
    if (!validHandles.has(handle)) throw new TypeError('stages are created by boot(), evolve() and devolve(), not by new');
    validHandles.delete(handle);
    handles.set(this, handle);
  }

  /** This stage's name (its class's `stageName`). */
  get stageName(): string {
    return (this.constructor as unknown as StageClass).stageName;
  }

  /** Whether this object may still be used. */
  get status(): StageStatus {
    return handleOf(this).sandbox.statusOf(this);
  }

  /** The stage names from the root to this stage. */
  get lineage(): readonly string[] {
    const names: string[] = [];
    for (let node: LineageNode | undefined = handleOf(this).node; node; node = node.parent) names.unshift(node.stageClass.stageName);
    return names;
  }

  /** The sandbox's id (the same for every stage of one sandbox). */
  get sandboxId(): string {
    return handleOf(this).sandbox.id;
  }

  /** The data the transition into this stage produced. */
  protected get data(): Data {
    return handleOf(this).node.data as Data;
  }

  /**
   * Runs a command in the guest.
   * @throws {StageStaleError} when this stage was evolved or devolved; {@link StagePoisonedError} when the sandbox died.
   * @throws the machine's errors ({@link AgentTimeoutError}, {@link GuestOperationError}, {@link QemuExitedError}).
   */
  exec(argv: readonly string[], options?: ExecOptions): Promise<ExecResult> {
    return handleOf(this).sandbox.guestFor(this, 'exec').exec(argv, options);
  }

  /**
   * Reads a file from the guest.
   * @throws see {@link exec}.
   */
  readFile(path: string, options?: FileReadOptions): Promise<Buffer> {
    return handleOf(this).sandbox.guestFor(this, 'readFile').readFile(path, options);
  }

  /**
   * Writes a file in the guest.
   * @throws see {@link exec}.
   */
  writeFile(path: string, data: string | Uint8Array, options?: FileWriteOptions): Promise<void> {
    return handleOf(this).sandbox.guestFor(this, 'writeFile').writeFile(path, data, options);
  }

  /**
   * One raw agent request on behalf of this stage (runtimes and custom guest operations).
   * @throws see {@link exec}.
   */
  request(op: string, args?: Record<string, unknown>, options?: RequestOptions): Promise<unknown> {
    return handleOf(this).sandbox.guestFor(this, 'request').request(op, args, options);
  }

  /**
   * One request to a runtime in the guest on behalf of this stage, over the runtime's direct port when it holds
   * one (guest/RUNTIMES.md).
   * @throws see {@link exec}.
   */
  runtimeRequest(runtime: RuntimeAddress, op: string, args?: Record<string, unknown>, options?: RequestOptions): Promise<unknown> {
    return handleOf(this).sandbox.guestFor(this, 'runtimeRequest').runtimeRequest(runtime, op, args, options);
  }

  /**
   * Moves forward: snapshots this stage (unless it is unchanged since its last snapshot), then runs the
   * transition's guest work. Only a transition whose source is exactly this stage class compiles. On failure
   * the sandbox is restored to the snapshot and this stage stays usable.
   * @returns the target stage; this object is consumed.
   * @throws {TransitionFailedError} when the guest work failed (rolled back), with the cause.
   * @throws {StageStaleError}, {@link StagePoisonedError}, {@link SnapshotError}.
   */
  evolve<S extends Stage, To extends Stage>(this: S, transition: Transition<NoInfer<S>, To>, options?: EvolveOptions): Promise<To> {
    return handleOf(this).sandbox.evolve(this, transition, options);
  }

  /**
   * Persists this stage to a snapshot store, to start new sandboxes from later (`fromSnapshot`, `fork`).
   * @throws see {@link Sandbox.persist}.
   */
  persist(store: SnapshotStore, name: string, options?: PersistOptions): Promise<SnapshotInfo> {
    return handleOf(this).sandbox.persist(this, store, name, options);
  }

  /**
   * Starts a new sandbox in this stage from a persisted snapshot, without booting. Called on a stage class:
   * `RuntimeLoaded.fromSnapshot(store, 'ready')` returns a `RuntimeLoaded`.
   * @throws {SnapshotMismatchError} for a snapshot of another stage, QEMU version, machine type or guest image.
   * @throws see {@link Sandbox.restore}.
   */
  static fromSnapshot<S extends Stage>(
    this: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    config?: RestoreConfigInput,
    options?: RestoreOptions,
  ): Promise<S> {
    return Sandbox.restore(this, store, ref, config, options);
  }

  /**
   * Starts `count` sandboxes in this stage from one persisted snapshot, sharing its memory copy-on-write, at most
   * `options.concurrency` at a time (default: the host's CPU count).
   * @throws see {@link Sandbox.fork}.
   */
  static fork<S extends Stage>(
    this: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    count: number,
    config?: RestoreConfigInput,
    options?: ForkOptions,
  ): Promise<S[]> {
    return Sandbox.fork(this, store, ref, count, config, options);
  }

  /**
   * Opens a warm pool: `size` sandboxes in this stage kept ready to start from one persisted snapshot (restored,
   * running idle, without an identity), so that each {@link SandboxPool.take} only gives one its identity.
   * @throws see {@link SandboxPool.open}.
   */
  static pool<S extends Stage>(
    this: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    size: number,
    config?: RestoreConfigInput,
    options?: PoolOptions,
  ): Promise<SandboxPool<S>> {
    return SandboxPool.open(this, store, ref, size, config, options);
  }

  /** Stops the sandbox (every stage object of it becomes poisoned with reason "closed"). Idempotent. */
  close(): Promise<void> {
    return handleOf(this).sandbox.close();
  }

  /** `await using` on any stage of a sandbox closes the whole sandbox at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A stage with no parent: the start of a lineage (entered by booting). It has no `devolve`. */
export abstract class RootStage<Data = void> extends Stage<Data> {}

/** A stage entered from `Parent`; it can devolve back to it, or to any ancestor. */
export abstract class ChildStage<Parent extends Stage, Data = void> extends Stage<Data> {
  /** Type-level only: the stage `devolve` returns. */
  declare readonly [parentStage]: Parent;

  /**
   * Moves back one level by restoring the parent's snapshot.
   * @returns a fresh object of the parent stage; this object is consumed.
   * @throws {StageStaleError}, {@link StagePoisonedError}, {@link SnapshotError}.
   */
  devolve(options?: StageOperationOptions): Promise<Parent> {
    return handleOf(this).sandbox.devolve(this, undefined, options) as Promise<Parent>;
  }

  /**
   * Moves back to the nearest ancestor of class `target`, in one restore.
   * @throws {StageStaleError}, {@link StagePoisonedError}, {@link SnapshotError}.
   */
  devolveTo<A extends AncestorOf<this>>(target: StageClass<A & Stage>, options?: StageOperationOptions): Promise<A> {
    return handleOf(this).sandbox.devolve(this, target, options) as Promise<A>;
  }
}

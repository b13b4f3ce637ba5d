import { randomUUID } from 'node:crypto';
import {
  ConfigInvalidError,
  GuestOperationError,
  SnapshotMismatchError,
  AgentTimeoutError,
  EvolvmError,
  isFatal,
  OperationNotAllowedError,
  StagePoisonedError,
  StageStaleError,
  TransitionFailedError,
} from '../errors.js';
import type { MachineConfigInput } from '../qemu/config.js';
import { Machine, type PreparedRestore } from '../qemu/machine.js';
import { refillStandbys } from '../qemu/standby-machines.js';
import { InVmSnapshots, type LoadedSnapshot } from '../snapshot/in-vm-snapshots.js';
import type { Transition } from '../transitions/transition.js';
import { withDeadline } from '../util/deadline.js';
import { step } from '../util/trace.js';
import { HostFunctionSet, type HostFunction, type HostFunctionSignature } from '../host/host-functions.js';
import type { RequestOptions } from '../qemu/agent/agent-session.js';
import { parseRestoreConfig, type RestoreConfigInput } from '../qemu/config.js';
import { machineOptions } from '../qemu/argv.js';
import { qemuVersion, userMapsFingerprint } from '../snapshot/compatibility.js';
import type { PersistedExtra } from '../snapshot/persisted-extra.js';
import { persistMachineState } from '../snapshot/persist-machine.js';
import type { SnapshotManifest, SnapshotManifestDraft } from '../snapshot/store/manifest.js';
import { replayTransition, rootByName } from './lineage-registry.js';
import type { SnapshotInfo, SnapshotStore } from '../snapshot/store/snapshot-store.js';
import type { GuestAccess } from './guest-access.js';
import {
  FallbackNeeded,
  forkRestores,
  giveIdentity,
  prepareSandboxRestore,
  runPreparedRestore,
  type ForkOptions,
  type PreparedSandboxRestore,
  type RestoreOptions,
  type RunningSandboxRestore,
} from './restore-steps.js';
import { issueHandle, sandboxOf, type EvolveOptions, type RootStage, type Stage, type StageClass, type StageOperationOptions } from './stage.js';

/** One stage the sandbox has been in: a node of its lineage tree. */
export interface LineageNode {
  readonly id: number;
  readonly stageClass: StageClass;
  readonly parent: LineageNode | undefined;
  readonly data: unknown;
  /** The transition that entered this node (absent for the root). */
  readonly transition: { readonly name: string; readonly args: unknown } | undefined;
  /** The in-VM snapshot holding this node's state, once one was taken. */
  tag: string | undefined;
  /** Whether the guest may have changed since `tag` was saved or loaded. */
  dirty: boolean;
  /** The host functions offered when this stage was entered; restoring it needs a superset. */
  readonly hostFunctions: readonly HostFunctionSignature[];
  /** Where this stage was persisted, so that a descendant persisted to the same store layers on it. */
  persisted?: { readonly store: SnapshotStore; readonly id: string };
}

export interface PersistOptions {
  signal?: AbortSignal;
}

/** How a sandbox came to be. */
export type SandboxOrigin =
  | { readonly kind: 'boot' }
  | { readonly kind: 'snapshot'; readonly snapshot: string }
  | { readonly kind: 'cold-boot-fallback'; readonly snapshot: string; readonly reason: SnapshotMismatchError };

export interface SandboxBootOptions {
  signal?: AbortSignal;
  /** Functions guest code may call (WASM imports from module "host", the JS global `host`). */
  hostFunctions?: readonly HostFunction[];
}

/**
 * The run-time behind every stage object of one VM: the machine, its lineage tree, the one stage object that
 * is current, and the in-VM snapshots that let it move back. Library authors do not use it directly; stages
 * and transitions are the building blocks.
 */
export class Sandbox {
  readonly id = randomUUID();
  readonly machine: Machine;
  readonly snapshots: InVmSnapshots;
  #current!: Stage;
  #currentNode!: LineageNode;
  #poison: { reason: string; cause: unknown } | undefined;
  #busy: string | undefined;
  // The guest's resync after a devolve, while it runs (see #awaitResync); never rejects.
  #resyncing: Promise<void> | undefined;
  // The deletion of snapshots a devolve left unreachable, while it runs (see #deleteUnreachableTags); never rejects.
  #deleting: Promise<void> | undefined;
  #nodeIds = 0;
  #tagGeneration = 0;
  readonly #tagged = new Set<LineageNode>();
  #origin: SandboxOrigin = { kind: 'boot' };
  #hostFunctions: HostFunctionSet;

  private constructor(machine: Machine, hostFunctions: HostFunctionSet) {
    this.machine = machine;
    this.#hostFunctions = hostFunctions;
    this.snapshots = new InVmSnapshots(machine);
    machine.onUnexpectedExit((error) => this.#poisonWith('QEMU exited', error));
  }

  /**
   * Boots a machine and enters the lineage's root stage.
   * @throws the errors of {@link Machine.boot}.
   */
  static async boot<R extends RootStage<unknown>>(root: StageClass<R>, config: MachineConfigInput = {}, options: SandboxBootOptions = {}): Promise<R> {
    const hostFunctions = new HostFunctionSet(options.hostFunctions ?? []); // refuse duplicates before booting
    const machine = await Machine.boot(config, options);
    const sandbox = new Sandbox(machine, hostFunctions);
    await giveIdentity(machine, sandbox.id, options);
    const node = sandbox.#newNode(root, undefined, undefined, undefined);
    return sandbox.#enter(node) as R;
  }

  /** Whether the sandbox was booted, restored from a snapshot, or rebuilt by a cold-boot fallback. */
  get origin(): SandboxOrigin {
    return this.#origin;
  }

  /** The stage the sandbox is in now. */
  get currentStage(): string {
    return this.#currentNode.stageClass.stageName;
  }

  /** The host functions offered now. */
  get hostFunctions(): HostFunctionSet {
    return this.#hostFunctions;
  }

  /**
   * Replaces the host functions offered from now on. Stages entered earlier keep their recorded set: moving
   * back to one of them is refused unless the new set is a superset with matching signatures.
   */
  setHostFunctions(functions: readonly HostFunction[]): void {
    this.#hostFunctions = new HostFunctionSet(functions);
  }

  statusOf(stage: Stage): 'ready' | 'consumed' | 'poisoned' {
    if (this.#poison) return 'poisoned';
    return stage === this.#current ? 'ready' : 'consumed';
  }

  /**
   * Guest I/O on behalf of `stage`, checked on every call; marks the stage changed since its snapshot.
   */
  guestFor(stage: Stage, operation: string): GuestAccess {
    return {
      exec: async (argv, options) => {
        await this.#ready(stage, operation);
        this.#currentNode.dirty = true;
        return this.machine.exec(argv, options);
      },
      readFile: async (path, options) => {
        await this.#ready(stage, operation);
        return this.machine.readFile(path, options);
      },
      writeFile: async (path, data, options) => {
        await this.#ready(stage, operation);
        this.#currentNode.dirty = true;
        return this.machine.writeFile(path, data, options);
      },
      request: async (op, args, options) => {
        const waiting = this.#ready(stage, operation);
        if (waiting) await waiting;
        this.#currentNode.dirty = true;
        return this.machine.request(op, args, this.#withHostCalls(options));
      },
      runtimeRequest: async (runtime, op, args, options) => {
        const waiting = this.#ready(stage, operation);
        if (waiting) await waiting;
        this.#currentNode.dirty = true;
        return this.machine.runtimeRequest(runtime, op, args, this.#withHostCalls(options));
      },
    };
  }

  async evolve<From extends Stage, To extends Stage>(stage: From, transition: Transition<From, To>, options: EvolveOptions = {}): Promise<To> {
    const source = this.#assertReady(stage, `evolve(${transition.name})`);
    if (transition.from !== source.stageClass) {
      throw new OperationNotAllowedError(`${transition.name} (a transition from ${transition.from.stageName})`, source.stageClass.stageName);
    }
    return this.#exclusive(`evolve(${transition.name})`, async () => {
      // The snapshot this save replaces is deleted while the transition runs (~10 ms of QEMU's and tmpfs work).
      const { replaced } = await this.#ensureSnapshot(source, options.signal);
      const timeoutMs = options.timeoutMs ?? transition.timeoutMs ?? this.machine.config.agentTimeoutMs;
      let data: unknown;
      try {
        data = await withDeadline(
          transition.name,
          timeoutMs,
          options.signal,
          () => new AgentTimeoutError(transition.name, timeoutMs),
          (signal) => transition.run({ guest: this.#transitionGuest(signal), source: stage, signal }),
        );
      } catch (error) {
        // The rollback's load must not run beside the delete job.
        await replaced;
        throw await this.#rollback(source, transition.name, error);
      }
      await replaced;
      const node = this.#newNode(transition.to, source, data, { name: transition.name, args: transition.args });
      return this.#enter(node) as To;
    });
  }

  async devolve(stage: Stage, target: StageClass | undefined, options: StageOperationOptions = {}): Promise<Stage> {
    const from = this.#assertReady(stage, 'devolve');
    const to = findAncestor(from, target);
    if (!to?.tag) {
      throw new OperationNotAllowedError(`devolve to ${target?.stageName ?? 'parent'}`, from.stageClass.stageName);
    }
    this.#hostFunctions.assertSupersetOf(to.hostFunctions, `devolve to ${to.stageClass.stageName}`);
    return this.#exclusive('devolve', async () => {
      let loaded: LoadedSnapshot;
      try {
        loaded = await this.snapshots.load(to.tag!, options);
      } catch (error) {
        // A failed load leaves the VM in an unknown state: nothing of it can be trusted any more.
        await this.#attributeToExit(error);
        this.#poisonWith(`devolve to ${to.stageClass.stageName} failed`, error);
        await this.machine.kill();
        throw error;
      }
      to.dirty = false;
      const entered = this.#enter(to);
      this.#awaitResync(loaded.resynced, `devolve to ${to.stageClass.stageName}`);
      this.#deleteUnreachableTags();
      return entered;
    });
  }

  /**
   * Writes the stage to a snapshot store: guest RAM image + device state, the disk as a qcow2 layer (over the
   * layer of the nearest ancestor persisted to the same store), and a manifest. The guest pauses for the copy
   * and then goes on; the stage stays current.
   * @throws {OperationNotAllowedError} for a sandbox restored with `ram: 'copy-on-write'` (the default: its RAM is
   *   a private mapping of the snapshot it came from); restore with `ram: 'copy'` to persist it.
   * @throws the store's errors ({@link SnapshotExistsError} for a taken name) and {@link QmpCommandError}.
   */
  async persist(stage: Stage, store: SnapshotStore, name: string, options: PersistOptions = {}): Promise<SnapshotInfo> {
    const node = this.#assertReady(stage, 'persist');
    if (!this.machine.ramShared) {
      throw new OperationNotAllowedError(
        'persist',
        "restored from a snapshot with ram: 'copy-on-write' (its RAM is a private mapping of that snapshot; restore with ram: 'copy' to persist)",
      );
    }
    return this.#exclusive('persist', async () => {
      const { machine } = this;
      const parent = nearestPersisted(node.parent, store);
      // Before the guest pauses: hashing a map it has not seen yet reads the whole file.
      const maps = await userMapsFingerprint(machine.userMaps);
      machine.lifecycle.send({ type: 'SAVE' });
      try {
        await machine.whenIdle(machine.config.agentTimeoutMs);
        const info = await store.create(
          name,
          async (_staging, context) => {
            await persistMachineState(machine, { vmstate: context.vmstatePath, disk: context.diskPath }, {
              parentDisk: parent ? `../${parent.id}/disk` : undefined,
              signal: options.signal,
            });
            return this.#manifestDraft(node, parent?.id ?? null, maps);
          },
          options,
        );
        node.persisted = { store, id: info.id };
        return info;
      } finally {
        machine.lifecycle.trySend({ type: 'SAVE_DONE', paused: false });
      }
    });
  }

  /**
   * Starts a new sandbox from a persisted snapshot of stage `stageClass`, with a fresh identity: its own id,
   * sockets and disk overlay, the guest clock set and its RNG reseeded.
   * @throws {SnapshotMismatchError} for a snapshot of another stage, QEMU version, machine type or guest image.
   * @throws {HostFunctionsMismatchError} when `options.hostFunctions` is not a superset of the snapshot's.
   * @throws the store's errors (not found, corrupt) and those of {@link Machine.restore}.
   */
  static async restore<S extends Stage>(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    input: RestoreConfigInput = {},
    options: RestoreOptions = {},
  ): Promise<S> {
    const config = parseRestoreConfig(input);
    if (options.ram !== undefined && options.ram !== 'copy' && options.ram !== 'copy-on-write') {
      throw new ConfigInvalidError([{ path: 'ram', message: "expected 'copy-on-write' or 'copy'", value: options.ram }]);
    }
    let prepared: PreparedSandboxRestore<S>;
    try {
      prepared = await Sandbox.prepareRestore(stageClass, store, ref, config, options);
    } catch (error) {
      if (!(error instanceof FallbackNeeded)) throw error;
      options.onFallback?.(error.reason);
      return await Sandbox.#replay(stageClass, error.manifest, ref, error.reason, error.config, options);
    }
    try {
      return await Sandbox.startPrepared(prepared, options);
    } finally {
      // The next restore of this shape finds a QEMU waiting (started now, so that it does not slow this one).
      refillStandbys();
    }
  }

  /**
   * The first half of {@link restore}: the snapshot leased and checked, QEMU started and waiting for its device
   * state. {@link startPrepared} (or {@link runPrepared} then {@link adoptRunning}) finishes it; to give it up,
   * discard its machine and release its lease.
   * With `options.fallback`, a snapshot that cannot be loaded here throws a {@link FallbackNeeded}.
   * @throws as {@link restore}.
   */
  static async prepareRestore<S extends Stage>(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    config: ReturnType<typeof parseRestoreConfig>,
    options: RestoreOptions,
  ): Promise<PreparedSandboxRestore<S>> {
    return prepareSandboxRestore(stageClass, store, ref, config, options);
  }

  /**
   * Finishes a prepared restore: the guest runs, then gets its identity (sandbox id, clock, RNG).
   * @throws those of {@link PreparedRestore.start} and of the identity requests; the prepared machine and its
   * lease are released then.
   */
  static async startPrepared<S extends Stage>(prepared: PreparedSandboxRestore<S>, options: RestoreOptions = {}): Promise<S> {
    return Sandbox.adoptRunning(await Sandbox.runPrepared(prepared, options), options);
  }

  /**
   * Runs a prepared restore's guest, without an identity yet: what a warm pool keeps ready. With `warm`, the
   * guest also runs the identity requests once (a throwaway id), so that their code is translated (under TCG a
   * restored guest starts with an empty translation cache) and {@link adoptRunning} is a few ms.
   * @throws those of {@link PreparedRestore.start}; the prepared machine and its lease are released then.
   */
  static async runPrepared<S extends Stage>(
    prepared: PreparedSandboxRestore<S>,
    options: RestoreOptions & { warm?: boolean } = {},
  ): Promise<RunningSandboxRestore<S>> {
    return runPreparedRestore(prepared, options);
  }

  /**
   * Makes a sandbox of a restored, running guest: a new sandbox id (also written to the guest), the guest clock
   * set and its RNG reseeded, the snapshot's lineage.
   * @throws the identity requests' errors; the machine is stopped then.
   */
  static async adoptRunning<S extends Stage>(restored: RunningSandboxRestore<S>, options: RestoreOptions = {}): Promise<S> {
    const { stageClass, store, id, manifest, extra, hostFunctions, running: machine } = restored;
    const sandbox = new Sandbox(machine, hostFunctions);
    sandbox.#origin = { kind: 'snapshot', snapshot: id };
    await step('identity', () => giveIdentity(machine, sandbox.id, options));
    let parent: LineageNode | undefined;
    manifest.stage.lineage.forEach((entry, index) => {
      const last = index === manifest.stage.lineage.length - 1;
      // Ancestors have no snapshot in this sandbox; their classes are needed only for their names.
      const cls: StageClass = last ? stageClass : { stageName: entry.stage, prototype: stageClass.prototype };
      const transition = entry.transition ? { name: entry.transition, args: entry.args } : undefined;
      parent = { ...sandbox.#newNode(cls, parent, extra.lineageData[index] ?? null, transition), hostFunctions: manifest.hostFunctions as unknown as HostFunctionSignature[] };
    });
    parent!.persisted = { store, id };
    return sandbox.#enter(parent!) as S;
  }

  /**
   * Starts `count` sandboxes from one persisted snapshot. They share the snapshot's RAM image copy-on-write
   * (memory is paid only for what each changes) and each has its own disk overlay and identity. At most
   * `options.concurrency` restores run at once (see {@link restoreConcurrency}). If one fails, no more are
   * started, those in progress are aborted, the clones made are closed, and the first error is thrown.
   * @throws {ConfigInvalidError} for a negative or fractional `count`, or a `concurrency` that is not a positive integer.
   * @throws see {@link restore}.
   */
  static async fork<S extends Stage>(
    stageClass: StageClass<S>,
    store: SnapshotStore,
    ref: string,
    count: number,
    input: RestoreConfigInput = {},
    options: ForkOptions = {},
  ): Promise<S[]> {
    if (!Number.isSafeInteger(count) || count < 0) throw new ConfigInvalidError([{ path: 'count', message: 'expected an integer >= 0', value: count }]);
    return forkRestores(count, options, (perClone) => Sandbox.restore(stageClass, store, ref, input, perClone));
  }

  /** The cold-boot fallback: boot the lineage's root and replay each recorded transition. */
  static async #replay<S extends Stage>(
    stageClass: StageClass<S>,
    manifest: SnapshotManifest,
    ref: string,
    reason: SnapshotMismatchError,
    config: MachineConfigInput,
    options: RestoreOptions,
  ): Promise<S> {
    // The reference lineage is the default; imported here, on demand, because it imports the stage classes.
    const registry = options.lineage ?? (await import('../transitions/reference-lineage.js')).referenceLineage;
    const [root, ...steps] = manifest.stage.lineage;
    const rootClass = root ? rootByName(registry, root.stage) : undefined;
    if (!rootClass) throw new GuestOperationError('replay', 'NOT_REPLAYABLE', `no stage class for ${root?.stage ?? 'the root'}`, { cause: reason });
    let stage: Stage = await Sandbox.boot(rootClass, config, options);
    try {
      for (const entry of steps) stage = await stage.evolve(replayTransition(registry, entry.transition ?? '', entry.args) as never);
      if (!(stage instanceof (stageClass as unknown as new () => S))) {
        throw new SnapshotMismatchError(ref, 'stage', stage.stageName, stageClass.stageName);
      }
      sandboxOf(stage).#origin = { kind: 'cold-boot-fallback', snapshot: manifest.id, reason };
      return stage as S;
    } catch (error) {
      await stage.close();
      throw error;
    }
  }

  #manifestDraft(node: LineageNode, parentId: string | null, maps: string): SnapshotManifestDraft {
    const nodes: LineageNode[] = [];
    for (let n: LineageNode | undefined = node; n; n = n.parent) nodes.unshift(n);
    const { config } = this.machine;
    const extra: PersistedExtra = {
      cpus: config.cpus,
      deviceStateOffset: config.memoryMiB * 1024 * 1024,
      lineageData: nodes.map((n) => (n.data === undefined ? null : n.data)),
      maps,
      firmware: config.firmware,
      machineOptions: machineOptions(config),
    };
    return {
      stage: {
        name: node.stageClass.stageName,
        lineage: nodes.map((n) => ({ stage: n.stageClass.stageName, transition: n.transition?.name ?? null, args: n.transition?.args ?? null })),
      },
      parent: parentId,
      qemu: { version: qemuVersion(config.qemuBinary), machine: config.machine },
      guest: { imageHash: this.machine.image.hash },
      memoryMiB: config.memoryMiB,
      hostFunctions: node.hostFunctions,
      extra,
    };
  }

  /** Stops the machine; every stage object becomes poisoned ("closed"). Idempotent. */
  async close(): Promise<void> {
    if (!this.#poison) this.#poison = { reason: 'sandbox closed', cause: undefined };
    await this.machine.stop();
  }

  #enter(node: LineageNode): Stage {
    this.#currentNode = node;
    const stage = Reflect.construct(node.stageClass as unknown as new (...args: unknown[]) => Stage, [
      issueHandle({ sandbox: this, node }),
    ]);
    this.#current = stage;
    return stage;
  }

  #newNode(stageClass: StageClass, parent: LineageNode | undefined, data: unknown, transition: LineageNode['transition']): LineageNode {
    const hostFunctions = this.#hostFunctions.signatures;
    return { id: ++this.#nodeIds, stageClass, parent, data, transition, tag: undefined, dirty: true, hostFunctions };
  }

  #assertReady(stage: Stage, operation: string): LineageNode {
    if (this.#poison) {
      throw new StagePoisonedError(stage.stageName, this.#poison.reason, { cause: this.#poison.cause });
    }
    if (stage !== this.#current) throw new StageStaleError(stage.stageName, this.currentStage, operation);
    return this.#currentNode;
  }

  /**
   * Checks `stage` is current; while a devolve's resync runs, returns a promise that checks again once it is done
   * (the hot path, a call, gets no promise to await otherwise).
   * @throws {StagePoisonedError} also when that resync failed; {@link StageStaleError}.
   */
  #ready(stage: Stage, operation: string): Promise<void> | undefined {
    this.#assertReady(stage, operation);
    const resyncing = this.#resyncing;
    if (!resyncing) return undefined;
    return resyncing.then(() => {
      this.#assertReady(stage, operation);
    });
  }

  /**
   * Resolves once the work a devolve leaves running is done: the guest's resync and the deletion of snapshots
   * no stage can return to. The sandbox's next operation waits for both anyway; this is for callers that look
   * at the machine from outside (its scratch disk, the RAM images on tmpfs). Never rejects: a failed resync
   * poisons the sandbox, which its next operation reports.
   */
  async settled(): Promise<void> {
    await this.#resyncing;
    await this.#deleting;
  }

  /**
   * Lets a devolve return while the restored guest still resyncs (fresh hello, clock, RNG: tens of ms under
   * TCG). Every later operation of this sandbox waits for it first; if it fails, the sandbox is poisoned and
   * QEMU stopped, since nothing of the guest can be trusted then.
   */
  #awaitResync(resynced: Promise<void>, operation: string): void {
    const resyncing: Promise<void> = resynced
      .catch(async (error: unknown) => {
        await this.#attributeToExit(error);
        this.#poisonWith(`${operation}: the restored guest did not resync`, error);
        await this.machine.kill();
      })
      .finally(() => {
        if (this.#resyncing === resyncing) this.#resyncing = undefined;
      });
    this.#resyncing = resyncing;
  }

  async #exclusive<T>(operation: string, work: () => Promise<T>): Promise<T> {
    if (this.#busy) throw new OperationNotAllowedError(operation, `busy with ${this.#busy}`);
    this.#busy = operation;
    try {
      if (this.#resyncing) {
        await this.#resyncing;
        this.#assertReady(this.#current, operation);
      }
      // Its snapshot jobs must not run beside the deletes a devolve left running.
      await this.#deleting;
      return await work();
    } catch (error) {
      await this.#attributeToExit(error);
      // QEMU's death explains whatever failed while it happened.
      if (this.#poison && !(error instanceof StagePoisonedError)) {
        throw new StagePoisonedError(this.#currentNode.stageClass.stageName, this.#poison.reason, { cause: error });
      }
      throw error;
    } finally {
      this.#busy = undefined;
    }
  }

  /**
   * Saves the node's state unless its snapshot already holds it (a stage just restored and unchanged).
   * @returns `replaced`: the deletion of the snapshot the save replaced, under way. It never rejects, and is not
   * under the caller's signal (QMP's timeout bounds it): a snapshot that could not be deleted (QEMU gone, which
   * poisons the sandbox anyway) only holds its scratch space and RAM image until the machine stops.
   */
  async #ensureSnapshot(node: LineageNode, signal: AbortSignal | undefined): Promise<{ replaced: Promise<void> }> {
    const none = { replaced: Promise.resolve() };
    if (node.tag && !node.dirty) return none;
    const tag = `evolvm-${this.id.slice(0, 8)}-n${node.id}-g${++this.#tagGeneration}`;
    await this.snapshots.save(tag, { signal });
    const previous = node.tag;
    node.tag = tag;
    node.dirty = false;
    this.#tagged.add(node);
    return previous ? { replaced: this.snapshots.delete(previous).catch(() => {}) } : none;
  }

  /** Restores the source's snapshot after a failed transition; returns the error to throw. */
  async #rollback(source: LineageNode, transition: string, cause: unknown): Promise<Error> {
    await this.#attributeToExit(cause);
    if (this.#poison) return new TransitionFailedError(transition, source.stageClass.stageName, false, { cause });
    try {
      // A rollback is reported as done only once the guest has resynced.
      await (await this.snapshots.load(source.tag!)).resynced;
      source.dirty = false;
      return new TransitionFailedError(transition, source.stageClass.stageName, true, { cause });
    } catch (rollbackError) {
      this.#poisonWith(`rollback of ${transition} failed`, rollbackError);
      await this.machine.kill();
      return new TransitionFailedError(transition, source.stageClass.stageName, false, { cause });
    }
  }

  /**
   * Starts deleting the snapshots of nodes that neither the current stage nor its ancestors are (~10 ms each):
   * the devolve returns meanwhile, the deletes run beside the guest's resync, and the sandbox's next operation
   * waits for them. One that fails keeps its tag and is tried again after the next devolve (QEMU gone poisons
   * the sandbox anyway); the machine's stop removes whatever is left.
   */
  #deleteUnreachableTags(): void {
    const live = new Set<LineageNode>();
    for (let node: LineageNode | undefined = this.#currentNode; node; node = node.parent) live.add(node);
    const unreachable = [...this.#tagged].filter((node) => !live.has(node) && node.tag);
    if (unreachable.length === 0) return;
    const deleting: Promise<void> = (async () => {
      await this.#deleting;
      for (const node of unreachable) {
        if (!node.tag) continue;
        try {
          await this.snapshots.delete(node.tag!);
          node.tag = undefined;
          this.#tagged.delete(node);
        } catch {
          return;
        }
      }
    })().finally(() => {
      if (this.#deleting === deleting) this.#deleting = undefined;
    });
    this.#deleting = deleting;
  }

  #transitionGuest(signal: AbortSignal): GuestAccess {
    const bound = <O extends { signal?: AbortSignal }>(options: O | undefined): O =>
      ({ ...options, signal: options?.signal ? AbortSignal.any([options.signal, signal]) : signal }) as O;
    return {
      exec: (argv, options) => this.machine.exec(argv, bound(options)),
      readFile: (path, options) => this.machine.readFile(path, bound(options)),
      writeFile: (path, data, options) => this.machine.writeFile(path, data, bound(options)),
      request: (op, args, options) => this.machine.request(op, args, this.#withHostCalls(bound(options))),
      runtimeRequest: (runtime, op, args, options) => this.machine.runtimeRequest(runtime, op, args, this.#withHostCalls(bound(options))),
    };
  }

  /** When an error looks like a lost channel, waits briefly for the QEMU exit that usually explains it. */
  async #attributeToExit(error: unknown): Promise<void> {
    if (this.#poison) return;
    for (let e: unknown = error; e instanceof Error; e = e.cause) {
      if (e instanceof EvolvmError && isFatal(e)) {
        await this.machine.settleExit();
        return;
      }
    }
  }

  #withHostCalls(options: RequestOptions | undefined): RequestOptions {
    return { ...options, onHostCall: options?.onHostCall ?? ((fn, args) => this.#hostFunctions.call(fn, args)) };
  }

  #poisonWith(reason: string, cause: unknown): void {
    this.#poison ??= { reason, cause };
  }
}

function nearestPersisted(node: LineageNode | undefined, store: SnapshotStore): LineageNode['persisted'] {
  for (let n = node; n; n = n.parent) if (n.persisted?.store === store) return n.persisted;
  return undefined;
}

function findAncestor(from: LineageNode, target: StageClass | undefined): LineageNode | undefined {
  if (!target) return from.parent;
  for (let node = from.parent; node; node = node.parent) if (node.stageClass === target) return node;
  return undefined;
}

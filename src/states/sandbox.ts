import { randomUUID } from 'node:crypto';
import {
  AgentTimeoutError,
  EvolvmError,
  isFatal,
  OperationNotAllowedError,
  StagePoisonedError,
  StageStaleError,
  TransitionFailedError,
} from '../errors.js';
import type { MachineConfigInput } from '../qemu/config.js';
import { Machine } from '../qemu/machine.js';
import { InVmSnapshots } from '../snapshot/in-vm-snapshots.js';
import type { Transition } from '../transitions/transition.js';
import { withDeadline } from '../util/deadline.js';
import { HostFunctionSet, type HostFunction, type HostFunctionSignature } from '../host/host-functions.js';
import type { RequestOptions } from '../qemu/agent/agent-session.js';
import type { GuestAccess } from './guest-access.js';
import { issueHandle, type EvolveOptions, type RootStage, type Stage, type StageClass, type StageOperationOptions } from './stage.js';

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
}

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
  #nodeIds = 0;
  #tagGeneration = 0;
  readonly #tagged = new Set<LineageNode>();
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
    const node = sandbox.#newNode(root, undefined, undefined, undefined);
    return sandbox.#enter(node) as R;
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
        this.#assertReady(stage, operation);
        this.#currentNode.dirty = true;
        return this.machine.exec(argv, options);
      },
      readFile: async (path, options) => {
        this.#assertReady(stage, operation);
        return this.machine.readFile(path, options);
      },
      writeFile: async (path, data, options) => {
        this.#assertReady(stage, operation);
        this.#currentNode.dirty = true;
        return this.machine.writeFile(path, data, options);
      },
      request: async (op, args, options) => {
        this.#assertReady(stage, operation);
        this.#currentNode.dirty = true;
        return this.machine.request(op, args, this.#withHostCalls(options));
      },
    };
  }

  async evolve<From extends Stage, To extends Stage>(stage: From, transition: Transition<From, To>, options: EvolveOptions = {}): Promise<To> {
    const source = this.#assertReady(stage, `evolve(${transition.name})`);
    if (transition.from !== source.stageClass) {
      throw new OperationNotAllowedError(`${transition.name} (a transition from ${transition.from.stageName})`, source.stageClass.stageName);
    }
    return this.#exclusive(`evolve(${transition.name})`, async () => {
      await this.#ensureSnapshot(source, options.signal);
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
        throw await this.#rollback(source, transition.name, error);
      }
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
      try {
        await this.snapshots.load(to.tag!, options);
      } catch (error) {
        // A failed load leaves the VM in an unknown state: nothing of it can be trusted any more.
        await this.#attributeToExit(error);
        this.#poisonWith(`devolve to ${to.stageClass.stageName} failed`, error);
        await this.machine.kill();
        throw error;
      }
      to.dirty = false;
      const entered = this.#enter(to);
      await this.#deleteUnreachableTags(options.signal);
      return entered;
    });
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

  async #exclusive<T>(operation: string, work: () => Promise<T>): Promise<T> {
    if (this.#busy) throw new OperationNotAllowedError(operation, `busy with ${this.#busy}`);
    this.#busy = operation;
    try {
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

  /** Saves the node's state unless its snapshot already holds it (a stage just restored and unchanged). */
  async #ensureSnapshot(node: LineageNode, signal: AbortSignal | undefined): Promise<void> {
    if (node.tag && !node.dirty) return;
    const tag = `evolvm-${this.id.slice(0, 8)}-n${node.id}-g${++this.#tagGeneration}`;
    await this.snapshots.save(tag, { signal });
    const previous = node.tag;
    node.tag = tag;
    node.dirty = false;
    this.#tagged.add(node);
    if (previous) await this.snapshots.delete(previous, { signal });
  }

  /** Restores the source's snapshot after a failed transition; returns the error to throw. */
  async #rollback(source: LineageNode, transition: string, cause: unknown): Promise<Error> {
    await this.#attributeToExit(cause);
    if (this.#poison) return new TransitionFailedError(transition, source.stageClass.stageName, false, { cause });
    try {
      await this.snapshots.load(source.tag!);
      source.dirty = false;
      return new TransitionFailedError(transition, source.stageClass.stageName, true, { cause });
    } catch (rollbackError) {
      this.#poisonWith(`rollback of ${transition} failed`, rollbackError);
      await this.machine.kill();
      return new TransitionFailedError(transition, source.stageClass.stageName, false, { cause });
    }
  }

  /** Deletes the snapshots of nodes that neither the current stage nor its ancestors are. */
  async #deleteUnreachableTags(signal: AbortSignal | undefined): Promise<void> {
    const live = new Set<LineageNode>();
    for (let node: LineageNode | undefined = this.#currentNode; node; node = node.parent) live.add(node);
    for (const node of [...this.#tagged]) {
      if (live.has(node) || !node.tag) continue;
      await this.snapshots.delete(node.tag, { signal });
      node.tag = undefined;
      this.#tagged.delete(node);
    }
  }

  #transitionGuest(signal: AbortSignal): GuestAccess {
    const bound = <O extends { signal?: AbortSignal }>(options: O | undefined): O =>
      ({ ...options, signal: options?.signal ? AbortSignal.any([options.signal, signal]) : signal }) as O;
    return {
      exec: (argv, options) => this.machine.exec(argv, bound(options)),
      readFile: (path, options) => this.machine.readFile(path, bound(options)),
      writeFile: (path, data, options) => this.machine.writeFile(path, data, bound(options)),
      request: (op, args, options) => this.machine.request(op, args, this.#withHostCalls(bound(options))),
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


function findAncestor(from: LineageNode, target: StageClass | undefined): LineageNode | undefined {
  if (!target) return from.parent;
  for (let node = from.parent; node; node = node.parent) if (node.stageClass === target) return node;
  return undefined;
}

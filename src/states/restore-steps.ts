import { availableParallelism } from 'node:os';
import { setMaxListeners } from 'node:events';
import { ConfigInvalidError, SnapshotMismatchError } from '../errors.js';
import { HostFunctionSet, type HostFunction, type HostFunctionSignature } from '../host/host-functions.js';
import type { MachineConfigInput, RestoreConfig } from '../qemu/config.js';
import { Machine, type PreparedRestore, type RestoreSource } from '../qemu/machine.js';
import { takeStandby } from '../qemu/standby-machines.js';
import { checkRestorable, type RestoreShape } from '../snapshot/compatibility.js';
import { parsePersistedExtra, type PersistedExtra } from '../snapshot/persisted-extra.js';
import type { SnapshotManifest } from '../snapshot/store/manifest.js';
import type { SnapshotStore } from '../snapshot/store/snapshot-store.js';
import { step } from '../util/trace.js';
import type { LineageRegistry } from './lineage-registry.js';
import type { Stage, StageClass } from './stage.js';

// The steps of starting sandboxes from a persisted snapshot that need nothing of a Sandbox's own state: the
// checks, the lease and QEMU (prepare), the guest running (run), and a fork's scheduling. Sandbox (sandbox.ts)
// adopts what they give into a sandbox with its lineage.

export interface RestoreOptions {
  signal?: AbortSignal;
  /** Must be a superset, with matching signatures, of the host functions the snapshot was made with. */
  hostFunctions?: readonly HostFunction[];
  /**
   * `cold-boot`: when the snapshot cannot be loaded here (another QEMU version, machine type or guest image),
   * boot and replay its recorded transitions instead, using `lineage` (default: the reference lineage).
   */
  fallback?: 'cold-boot';
  /** The stage classes and transition factories a cold-boot fallback replays with. */
  lineage?: LineageRegistry;
  /** Called when the fallback is taken, with the reason the snapshot could not be loaded. */
  onFallback?: (reason: SnapshotMismatchError) => void;
  /**
   * `copy-on-write` (default): guest RAM maps the snapshot's RAM image privately, so sandboxes started from one
   * snapshot share its pages (fork's low PSS), but such a sandbox cannot be persisted and keeps RAM inside its
   * in-VM snapshots. `copy`: the image is copied into the sandbox's own RAM file first (tens of ms, and the memory
   * is its own), which makes it like a booted sandbox: it can be persisted, for example as the next layer.
   */
  ram?: 'copy-on-write' | 'copy';
}

export interface ForkOptions extends RestoreOptions {
  /** How many restores run at once (default: the host's CPU count, `os.availableParallelism()`). */
  concurrency?: number;
}

/**
 * How many restores may run at once: `concurrency`, or the host's CPU count. Restores are CPU-bound (QEMU's
 * start-up, then the guest's first work on an empty translation cache); more at once than CPUs only contend.
 * @throws {ConfigInvalidError} when `concurrency` is not a positive integer.
 */
export function restoreConcurrency(concurrency: number | undefined): number {
  const value = concurrency ?? availableParallelism();
  if (!Number.isSafeInteger(value) || value < 1) throw new ConfigInvalidError([{ path: 'concurrency', message: 'expected a positive integer', value }]);
  return value;
}

/** A sandbox restore half done ({@link Sandbox.prepareRestore}); what a warm pool keeps ready. */
export interface PreparedSandboxRestore<S extends Stage = Stage> {
  readonly stageClass: StageClass<S>;
  readonly store: SnapshotStore;
  readonly id: string;
  readonly manifest: SnapshotManifest;
  readonly extra: PersistedExtra;
  readonly hostFunctions: HostFunctionSet;
  readonly lease: { release(): Promise<void> };
  readonly machine: PreparedRestore;
}

/** A restored guest running without an identity yet ({@link Sandbox.runPrepared}). */
export interface RunningSandboxRestore<S extends Stage = Stage> extends Omit<PreparedSandboxRestore<S>, 'machine'> {
  readonly running: Machine;
}

/**
 * Gives a guest its identity in one request: `id` as its hostname (guest code reads it at
 * `/run/evolvm/sandbox-id`, a link the guest's init makes), the clock set, the RNG reseeded.
 * @throws the request's errors; the machine is stopped then.
 */
export async function giveIdentity(machine: Machine, id: string, options: { signal?: AbortSignal }): Promise<void> {
  try {
    await machine.refreshIdentity({ signal: options.signal, name: id });
  } catch (error) {
    await machine.stop();
    throw error;
  }
}

/** Thrown by {@link Sandbox.prepareRestore} when `fallback: 'cold-boot'` applies; {@link Sandbox.restore} catches it. */
export class FallbackNeeded extends Error {
  constructor(
    readonly reason: SnapshotMismatchError,
    readonly manifest: SnapshotManifest,
    readonly config: MachineConfigInput,
  ) {
    super('cold-boot fallback', { cause: reason });
  }
}

/**
 * The first half of a restore: the snapshot checked and leased, QEMU started and waiting for its device state.
 * See {@link Sandbox.prepareRestore}.
 * @throws {FallbackNeeded} with `options.fallback` when the snapshot cannot be loaded here; as Sandbox.restore otherwise.
 */
export async function prepareSandboxRestore<S extends Stage>(
  stageClass: StageClass<S>,
  store: SnapshotStore,
  ref: string,
  config: RestoreConfig,
  options: RestoreOptions,
): Promise<PreparedSandboxRestore<S>> {
  const { manifest, paths, id } = await step('snapshot checks', () => store.get(ref, options));
  let shape: RestoreShape;
  try {
    shape = await checkRestorable(manifest, ref, stageClass.stageName, config);
  } catch (error) {
    if (options.fallback !== 'cold-boot' || !(error instanceof SnapshotMismatchError)) throw error;
    const { cpus } = parsePersistedExtra(manifest);
    throw new FallbackNeeded(error, manifest, { ...config, memoryMiB: manifest.memoryMiB, cpus });
  }
  const { extra, machineConfig } = shape;
  const hostFunctions = new HostFunctionSet(options.hostFunctions ?? []);
  hostFunctions.assertSupersetOf(manifest.hostFunctions as unknown as HostFunctionSignature[], `restore ${ref}`);
  // Leased by id (the snapshot just checked) while QEMU starts, which needs only the checked manifest; awaited
  // before QEMU is handed the snapshot's files. Saves the lease's ~3 ms on each restore.
  const leasing = step('lease', () => store.lease(id, options));
  leasing.catch(() => {}); // seen below, after QEMU's start when that fails first
  let machine: PreparedRestore | undefined;
  try {
    machine = await prepareMachine(machineConfig, { ramImage: paths.vmstate, deviceStateOffset: extra.deviceStateOffset, diskLayer: paths.disk, ram: options.ram }, options);
    const lease = await leasing;
    return { stageClass, store, id, manifest, extra, hostFunctions, lease, machine };
  } catch (error) {
    await machine?.discard();
    await leasing.then((lease) => lease.release(), () => {});
    throw error;
  }
}

/**
 * QEMU for a restore: a standby machine of the same shape bound to the snapshot where one is ready (see
 * standby-machines.ts), else one started for it. A standby that fails to bind is stopped and one is started instead.
 * @throws those of {@link Machine.prepareRestore}.
 */
async function prepareMachine(config: MachineConfigInput, source: RestoreSource, options: RestoreOptions): Promise<PreparedRestore> {
  const standby = source.ram === 'copy' ? undefined : await takeStandby(config);
  if (standby) {
    try {
      standby.bind(source, options);
      return standby;
    } catch {
      // The standby died or its run directory went while it waited: start QEMU for this restore instead.
      await standby.discard();
    }
  }
  return Machine.prepareRestore(config, source, options);
}

/**
 * Runs a prepared restore's guest, without an identity yet (with `warm`, after one throwaway identity).
 * See {@link Sandbox.runPrepared}.
 * @throws those of {@link PreparedRestore.start}; the prepared machine and its lease are released then.
 */
export async function runPreparedRestore<S extends Stage>(
  prepared: PreparedSandboxRestore<S>,
  options: RestoreOptions & { warm?: boolean } = {},
): Promise<RunningSandboxRestore<S>> {
  let machine: Machine;
  try {
    machine = await prepared.machine.start(options);
  } catch (error) {
    await prepared.lease.release();
    throw error;
  }
  machine.deferCleanup('snapshot lease', () => prepared.lease.release());
  if (options.warm) await step('identity warm-up', () => giveIdentity(machine, 'pooled', options));
  return { ...prepared, running: machine };
}

/**
 * Runs `restoreOne` `count` times, at most `options.concurrency` at once, all under one signal that follows the
 * caller's. If one fails, no more are started, those in progress are aborted, the clones made are closed, and
 * the first error is thrown. See {@link Sandbox.fork}.
 * @throws {ConfigInvalidError} for a `concurrency` that is not a positive integer; the first restore error.
 */
export async function forkRestores<S extends Stage>(
  count: number,
  options: ForkOptions,
  restoreOne: (options: RestoreOptions) => Promise<S>,
): Promise<S[]> {
  const concurrency = restoreConcurrency(options.concurrency);
  // One listener on the caller's signal rather than a few per clone (Node warns past ten on one signal).
  const forking = new AbortController();
  setMaxListeners(Infinity, forking.signal);
  const forward = () => forking.abort(options.signal?.reason);
  if (options.signal?.aborted) forward();
  options.signal?.addEventListener('abort', forward, { once: true });
  const perClone = { ...options, signal: forking.signal };
  const clones: S[] = [];
  let failure: { reason: unknown } | undefined;
  let started = 0;
  const worker = async () => {
    while (started < count && !failure) {
      started++;
      try {
        clones.push(await restoreOne(perClone));
      } catch (reason) {
        failure ??= { reason };
        // The others in progress would only be closed: stop them now.
        forking.abort(reason);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  } finally {
    options.signal?.removeEventListener('abort', forward);
  }
  if (!failure) return clones;
  await Promise.all(clones.map((clone) => clone.close()));
  throw failure.reason;
}

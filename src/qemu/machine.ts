import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, AgentDisconnectedError, AgentTimeoutError, EvolvmError, OperationNotAllowedError, QemuExitedError, QemuStartError } from '../errors.js';
import { CleanupStack } from '../util/cleanup-stack.js';
import { step } from '../util/trace.js';
import { hostTscKhz, kvmUsable, resolveAccelerators } from './accel.js';
import { AgentSession, type RequestOptions } from './agent/agent-session.js';
import { RUNTIME_PORT_ID, RuntimeChannel, type RuntimeAddress } from './agent/runtime-channel.js';
import {
  execInGuest,
  readGuestFile,
  refreshArgs,
  writeGuestFile,
  type ExecOptions,
  type ExecResult,
  type FileReadOptions,
  type FileWriteOptions,
} from './agent/guest-ops.js';
import type { GuestHello } from './agent/messages.js';
import { buildQemuArgv, type QemuLaunch } from './argv.js';
import { parseMachineConfig, type MachineConfig, type MachineConfigInput } from './config.js';
import { resolveGuestImage, type GuestImage } from './guest-image.js';
import { Lifecycle, type LifecycleState } from './lifecycle.js';
import { QemuProcess, type QemuSpawnOptions } from './qemu-process.js';
import { QmpClient } from './qmp/index.js';
import { createScratchDisk } from './scratch-disk.js';
import { attachDiskLayer, remapRam, STANDBY_DATA_FILE_NODE } from './standby-bind.js';
import { loadDeviceState } from './device-state.js';
import { saveRamImage } from './ram-image.js';
import { reapOrphanRunDirs, RUN_DIR_PREFIX, writeRunDirRecord } from './run-dir-reaper.js';
import { runPaths, type RunPaths } from './run-paths.js';
import { resolveUserMaps, type UserMap } from './user-maps.js';

/** How long the agent channel waits for the process exit that probably caused its close. */
const EXIT_ATTRIBUTION_MS = 1_500;

export interface BootOptions {
  signal?: AbortSignal;
}

/** Everything a started machine is made of; handed from the start-up steps to the {@link Machine}. */
interface MachineParts {
  readonly id: string;
  readonly config: MachineConfig;
  readonly image: GuestImage;
  readonly userMaps: readonly UserMap[];
  readonly paths: RunPaths;
  readonly ramShared: boolean;
  readonly process: QemuProcess;
  readonly qmp: QmpClient;
  readonly agent: AgentSession;
  readonly runtime: RuntimeChannel;
  readonly cleanup: CleanupStack;
  readonly lifecycle: Lifecycle;
}

/**
 * One running QEMU guest, driven over QMP and the guest agent.
 *
 * @example
 * ```ts
 * await using vm = await Machine.boot({ memoryMiB: 128 });
 * const { stdout } = await vm.exec(['uname', '-a']);
 * ```
 */
export class Machine implements AsyncDisposable {
  readonly id: string;
  readonly config: MachineConfig;
  readonly image: GuestImage;
  /** The user's read-only maps the guest mounts at /maps/NAME, by name. */
  readonly userMaps: readonly UserMap[];
  readonly paths: RunPaths;
  /** Whether guest RAM is the shared file `paths.ramFile` (a booted machine), rather than a private mapping of a snapshot's image. */
  readonly ramShared: boolean;
  /** The QMP session (advanced use: snapshots, migration). */
  readonly qmp: QmpClient;
  /** The run-time lifecycle; refuses operations the current state does not allow. */
  readonly lifecycle: Lifecycle;
  readonly #process: QemuProcess;
  readonly #cleanup: CleanupStack;
  #agent: AgentSession;
  readonly #runtime: RuntimeChannel;
  #exitError: QemuExitedError | undefined;
  readonly #exitListeners = new Set<(error: QemuExitedError) => void>();
  #stopping: Promise<void> | undefined;

  private constructor(parts: MachineParts) {
    this.id = parts.id;
    this.config = parts.config;
    this.image = parts.image;
    this.userMaps = parts.userMaps;
    this.paths = parts.paths;
    this.ramShared = parts.ramShared;
    this.qmp = parts.qmp;
    this.lifecycle = parts.lifecycle;
    this.#process = parts.process;
    this.#cleanup = parts.cleanup;
    this.#agent = parts.agent;
    this.#runtime = parts.runtime;
    // A runtime holding the direct port closes it when it exits: what was pending on it fails then.
    this.qmp.on('event', (event) => {
      if (event.event === 'VSERPORT_CHANGE' && event.data['id'] === RUNTIME_PORT_ID && event.data['open'] === false) {
        this.#runtime.peerClosed('the runtime holding the direct port closed it (it exited)');
      }
    });
    void this.#process.exited.then(() => this.#onExit());
  }

  /**
   * Boots a fresh guest: run directory → scratch disk → QEMU → QMP → agent hello. A failure at any step
   * releases what the earlier steps created, at once.
   * @throws {ConfigInvalidError} for invalid options.
   * @throws {GuestNotBuiltError} when the kernel or initramfs is missing.
   * @throws {QemuNotFoundError} when the QEMU binary is missing.
   * @throws {QemuExitedError} when QEMU exits before the guest is ready.
   * @throws {AgentTimeoutError} when the guest never says hello within `bootTimeoutMs`.
   * @throws {AbortedError} when `options.signal` fires.
   */
  static async boot(input: MachineConfigInput = {}, options: BootOptions = {}): Promise<Machine> {
    const config = parseMachineConfig(input);
    const image = resolveGuestImage(config.kernel, config.initrd);
    const userMaps = resolveUserMaps(config.maps, config.machine);
    const cleanup = new CleanupStack();
    try {
      const paths = await prepareRunDir(config, cleanup);
      const process = await spawnQemu(config, image, userMaps, paths, cleanup, {});
      await writeRunDirRecord(paths.dir, process.pid);
      const lifecycle = new Lifecycle();
      const started = await step('qemu → qmp + agent hello', () =>
        raceExit(process, 'boot', connectChannels(config, paths, process, cleanup, options.signal)),
      ).catch((error: unknown) => {
        // A guest that never says hello may have said why on its console (a kernel panic, the loader's message).
        if (!(error instanceof AgentTimeoutError) || error.consoleTail !== undefined) throw error;
        throw new AgentTimeoutError(error.operation, error.timeoutMs, { cause: error.cause, consoleTail: process.diagnosticTail() });
      });
      lifecycle.send({ type: 'BOOTED' });
      return new Machine({ id: randomUUID(), config, image, userMaps, paths, ramShared: true, process, lifecycle, cleanup, ...started });
    } catch (error) {
      await cleanup.dispose();
      throw error;
    }
  }

  /**
   * Starts a machine from a persisted snapshot instead of booting: its RAM maps the snapshot's RAM image
   * copy-on-write (the image is never written), QEMU loads the device state given by `-incoming` and runs, and
   * its disk is a fresh qcow2 overlay over the snapshot's layer. Restoring is its own list of steps:
   * {@link prepareRestore} (run directory → scratch disk + overlay → QEMU waiting for its device state → QMP),
   * then {@link PreparedRestore.start} (device state → running → agent hello).
   * The caller refreshes the guest's clock, RNG and identity.
   * @throws the errors of {@link boot}, and {@link QmpCommandError} when the migration fails.
   */
  static async restore(input: MachineConfigInput, source: RestoreSource, options: BootOptions = {}): Promise<Machine> {
    const prepared = await Machine.prepareRestore(input, source, options);
    return prepared.start(options);
  }

  /**
   * A restore started ahead of need for no snapshot in particular: QEMU waits for a device state, its RAM an
   * empty placeholder and its data disk an empty overlay with no backing, until {@link PreparedRestore.bind}
   * gives it a snapshot's RAM image and disk layer. Needs the QEMU zygote (its shim remaps the RAM).
   * @throws the errors of {@link prepareRestore}; {@link QemuStartError} where no zygote can start it.
   */
  static async prepareStandby(input: MachineConfigInput, options: BootOptions = {}): Promise<PreparedRestore> {
    return prepareIncoming(input, options, undefined, (parts) => new Machine(parts), async (config, paths, cleanup) => {
      const placeholder = paths.ramFile;
      cleanup.defer('ram placeholder', () => rm(placeholder, { force: true }));
      await writeFile(placeholder, '');
      await truncate(placeholder, config.memoryMiB * 1024 * 1024);
      const remapSocket = join(paths.dir, 'remap.sock');
      return {
        launch: { incoming: true, ram: { path: placeholder, share: false }, dataFileNode: STANDBY_DATA_FILE_NODE, env: { EVOLVM_RAM_REMAP: remapSocket }, launcher: 'zygote' },
        ramShared: false,
        standby: { placeholder, remapSocket },
      };
    });
  }

  /**
   * The first half of {@link restore}, which can run ahead of need (a warm pool): QEMU is started and waits,
   * with QMP connected, for the device state. Call {@link PreparedRestore.start} to run it, or
   * {@link PreparedRestore.discard}.
   * @throws the errors of {@link boot} (QEMU missing, exiting at start-up, an invalid config, the signal).
   */
  static async prepareRestore(input: MachineConfigInput, source: RestoreSource, options: BootOptions = {}): Promise<PreparedRestore> {
    return prepareIncoming(input, options, source.diskLayer, (parts) => new Machine(parts), async (config, paths, cleanup) => {
      const copy = source.ram === 'copy';
      if (copy) {
        cleanup.defer('ram file', () => rm(paths.ramFile, { force: true }));
        await step('RAM image → RAM file', () => saveRamImage(source.ramImage, paths.ramFile, config.memoryMiB * 1024 * 1024));
      }
      return { launch: { incoming: true, ram: copy ? { path: paths.ramFile, share: true } : { path: source.ramImage, share: false } }, ramShared: copy, source };
    });
  }

  /** The agent session (advanced use: the snapshot layer resyncs it after a restore). */
  get agent(): AgentSession {
    return this.#agent;
  }

  /** The host end of the runtimes' direct port (advanced use: the snapshot layer resets it around a load). */
  get runtimeChannel(): RuntimeChannel {
    return this.#runtime;
  }

  /** The run-time lifecycle state. */
  get state(): LifecycleState {
    return this.lifecycle.state;
  }

  /** What the guest agent reported about itself in its latest hello. */
  get hello(): GuestHello {
    return this.#agent.hello;
  }

  /** The QEMU process id. */
  get pid(): number {
    return this.#process.pid;
  }

  /** Set once QEMU has exited without being asked to. */
  get exitError(): QemuExitedError | undefined {
    return this.#exitError;
  }

  /**
   * Runs a command in the guest.
   * @throws {OperationNotAllowedError} when the machine is not running (saving, restoring, stopped).
   * @throws {QemuExitedError} when QEMU exits during the call.
   * @throws {AgentTimeoutError}, {@link GuestOperationError}, {@link AbortedError}.
   */
  async exec(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    this.assertGuestIo('exec');
    return execInGuest(this.#agent, argv, options);
  }

  /**
   * Writes a file in the guest (streamed in 1 MiB requests).
   * @throws {GuestOperationError} with the guest's errno name; see {@link exec} for the rest.
   */
  async writeFile(path: string, data: string | Uint8Array, options: FileWriteOptions = {}): Promise<void> {
    this.assertGuestIo('writeFile');
    await writeGuestFile(this.#agent, path, data, options);
  }

  /**
   * Reads a file from the guest (streamed in chunks).
   * @throws {GuestOperationError} `ENOENT` for a missing file; see {@link exec} for the rest.
   */
  async readFile(path: string, options: FileReadOptions = {}): Promise<Buffer> {
    this.assertGuestIo('readFile');
    return readGuestFile(this.#agent, path, options);
  }

  /**
   * One agent round trip.
   * @throws see {@link exec}.
   */
  async ping(options: RequestOptions = {}): Promise<void> {
    this.assertGuestIo('ping');
    await this.#agent.request('ping', {}, options);
  }

  /**
   * One raw agent request (advanced use: runtimes and custom guest operations).
   * @throws see {@link exec}.
   */
  async request(op: string, args: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<unknown> {
    this.assertGuestIo(op);
    return this.#agent.request(op, args, options);
  }

  /**
   * One request to a runtime started with `rt_start` (guest/RUNTIMES.md): over the direct port when the runtime
   * holds it, else relayed by the agent (`rt_req`). The reply's value and errors are the runtime's either way.
   * @throws see {@link exec}.
   */
  async runtimeRequest(runtime: RuntimeAddress, op: string, args: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<unknown> {
    this.assertGuestIo(op);
    if (runtime.direct) return this.#runtime.request(op, args, options);
    return this.#agent.request('rt_req', { name: runtime.kind, op, a: args }, options);
  }

  /**
   * Resolves once no request is in flight on the agent's channel or the runtimes' port, so that a snapshot taken
   * now holds no half-sent frame.
   * @throws {AgentTimeoutError} when requests are still pending after `timeoutMs`.
   */
  async whenIdle(timeoutMs: number): Promise<void> {
    await Promise.all([this.#agent.whenIdle(timeoutMs), this.#runtime.whenIdle(timeoutMs)]);
  }

  /**
   * Sets the guest clock to the host's and reseeds its RNG: what every restored guest needs. With `name`, also
   * names the guest (its hostname, which guest code reads at `/run/evolvm/sandbox-id`), in the same request.
   * @throws see {@link exec}; {@link GuestOperationError} `BAD_REQUEST` for a name that is not 1–64 bytes.
   */
  async refreshIdentity(options: RequestOptions & { name?: string } = {}): Promise<void> {
    this.assertGuestIo('refreshIdentity');
    const { name, ...requestOptions } = options;
    await this.#agent.request('refresh', { ...refreshArgs(), ...(name === undefined ? {} : { hostname: name }) }, requestOptions);
  }

  /**
   * After a snapshot load: fails the requests that were pending (their replies belong to a timeline that no
   * longer exists), then in one request sets the guest clock, reseeds its RNG and reads a fresh hello.
   * @throws {AgentTimeoutError} when the restored guest does not answer; the agent session's other errors.
   */
  async resyncAfterLoad(reason: string): Promise<void> {
    this.#runtime.afterLoad(reason);
    await this.#agent.resync(reason, { op: 'refresh', args: refreshArgs() });
  }

  /**
   * Checks that guest I/O is allowed now.
   * @throws {QemuExitedError} when QEMU has died; {@link OperationNotAllowedError} when the state forbids it.
   */
  assertGuestIo(operation: string): void {
    if (this.#exitError) throw this.#exitError;
    this.lifecycle.assert('guest-io', operation);
  }

  /**
   * Waits up to `ms` for QEMU to exit and returns its exit error if it did. A dropped socket is usually
   * noticed before the process exit; this lets a caller blame the right one.
   */
  async settleExit(ms = EXIT_ATTRIBUTION_MS): Promise<QemuExitedError | undefined> {
    if (this.#exitError || this.#stopping) return this.#exitError;
    await Promise.race([this.#process.exited, delay(ms)]);
    return this.#exitError;
  }

  /** Registers a resource to release when the machine stops (after QEMU has exited). */
  deferCleanup(name: string, run: () => unknown): void {
    this.#cleanup.defer(name, run);
  }

  /** Calls `listener` once if QEMU exits without being asked to. Returns an unsubscribe function. */
  onUnexpectedExit(listener: (error: QemuExitedError) => void): () => void {
    if (this.#exitError) {
      listener(this.#exitError);
      return () => {};
    }
    this.#exitListeners.add(listener);
    return () => this.#exitListeners.delete(listener);
  }

  /**
   * Stops QEMU (QMP `quit`, then SIGTERM/SIGKILL if it lingers) and removes the run directory. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** Kills QEMU at once with SIGKILL (for tests of crash handling and for emergencies), then cleans up. */
  async kill(): Promise<void> {
    this.lifecycle.trySend({ type: 'STOP' });
    await this.#process.killNow();
    await this.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async #stop(): Promise<void> {
    this.lifecycle.trySend({ type: 'STOP' });
    if (!this.#process.exitInfo) {
      this.#agent.close();
      this.#runtime.close();
      await this.qmp.execute('quit', {}, { timeoutMs: 2_000 }).catch(() => {});
      const exited = await Promise.race([this.#process.exited, delay(this.config.killGraceMs)]);
      if (!exited) await this.#process.kill();
    }
    await this.#cleanup.dispose();
  }

  #onExit(): void {
    const info = this.#process.exitInfo!;
    const expected = this.lifecycle.state === 'stopping' || this.lifecycle.state === 'stopped';
    this.lifecycle.trySend({ type: 'EXITED' });
    if (expected) return;
    this.#exitError = new QemuExitedError(info.exitCode, info.signal, this.#process.diagnosticTail());
    this.#agent.close(this.#exitError);
    this.#runtime.close(this.#exitError);
    for (const listener of this.#exitListeners) listener(this.#exitError);
    this.#exitListeners.clear();
    // The process is gone; release sockets and the run directory now rather than at stop().
    void this.stop();
  }
}

/** How a QEMU waiting for a device state is started: a restore's (with its source) or a standby's. */
interface IncomingPlan {
  readonly launch: SpawnChoices & { incoming: true };
  readonly ramShared: boolean;
  readonly source?: RestoreSource;
  readonly standby?: StandbyParts;
}

/**
 * The steps a restore and a standby machine share: run directory and disks, `plan` (its RAM), QEMU started to
 * wait for a device state, QMP connected. A failure at any step undoes the ones before.
 */
async function prepareIncoming(
  input: MachineConfigInput,
  options: BootOptions,
  diskLayer: string | undefined,
  make: (parts: MachineParts) => Machine,
  plan: (config: MachineConfig, paths: RunPaths, cleanup: CleanupStack) => Promise<IncomingPlan>,
): Promise<PreparedRestore> {
  const config = parseMachineConfig(input);
  const image = resolveGuestImage(config.kernel, config.initrd);
  const userMaps = resolveUserMaps(config.maps, config.machine);
  const cleanup = new CleanupStack();
  try {
    const paths = await prepareRunDir(config, cleanup, diskLayer);
    const { launch, ramShared, source, standby } = await plan(config, paths, cleanup);
    const process = await step('spawn', () => spawnQemu(config, image, userMaps, paths, cleanup, launch));
    await step('run dir record', () => writeRunDirRecord(paths.dir, process.pid));
    const qmp = await step('qemu → qmp', () =>
      raceExit(process, 'restore', QmpClient.connect(paths.qmpSocket, { timeoutMs: config.bootTimeoutMs, signal: options.signal })),
    );
    cleanup.defer('qmp', () => qmp.close());
    return new PreparedRestore({ config, image, userMaps, paths, ramShared, process, cleanup, qmp }, source, make, standby);
  } catch (error) {
    await cleanup.dispose();
    throw error;
  }
}

/** The run directory with its two disks; the data disk is an overlay over `diskLayer` when restoring. */
async function prepareRunDir(config: MachineConfig, cleanup: CleanupStack, diskLayer?: string): Promise<RunPaths> {
  const paths = await step('run directory', () => createRunDir(config, cleanup));
  await step('disks', () =>
    Promise.all([
      createScratchDisk(config.qemuBinary, paths.scratchDisk, config.scratchDiskMiB),
      createScratchDisk(config.qemuBinary, paths.dataDisk, config.dataDiskMiB, diskLayer),
    ]),
  );
  return paths;
}

async function createRunDir(config: MachineConfig, cleanup: CleanupStack): Promise<RunPaths> {
  const parent = config.runDir ?? tmpdir();
  await mkdir(parent, { recursive: true });
  await reapOrphanRunDirs(parent);
  const dir = await mkdtemp(join(parent, RUN_DIR_PREFIX));
  cleanup.defer('run directory', () => rm(dir, { recursive: true, force: true }));
  return runPaths(dir);
}

/** What differs between QEMUs started for a boot, a restore and a standby machine. */
type SpawnChoices = Pick<QemuLaunch, 'incoming' | 'ram' | 'dataFileNode'> & Pick<QemuSpawnOptions, 'env' | 'launcher'>;

async function spawnQemu(
  config: MachineConfig,
  image: GuestImage,
  userMaps: readonly UserMap[],
  paths: RunPaths,
  cleanup: CleanupStack,
  restore: SpawnChoices,
): Promise<QemuProcess> {
  const argv = buildQemuArgv({
    config,
    kernel: image.kernel,
    initrd: image.initrd,
    maps: image.maps,
    userMaps,
    accelerators: resolveAccelerators(config.accel, kvmUsable()),
    paths,
    hostTscKhz: hostTscKhz(),
    incoming: restore.incoming,
    ram: restore.ram,
    dataFileNode: restore.dataFileNode,
  });
  // QEMU creates a booted machine's RAM file; a restored one maps the snapshot's image or a copy made before.
  if (!restore.ram) cleanup.defer('ram file', () => rm(paths.ramFile, { force: true }));
  const process = await QemuProcess.spawn(config.qemuBinary, argv, { consoleLog: paths.consoleLog, stderrLog: paths.stderrLog, killGraceMs: config.killGraceMs, env: restore.env, launcher: restore.launcher });
  cleanup.defer('qemu process', () => process.kill());
  return process;
}

/**
 * A restore started ahead of need ({@link Machine.prepareRestore}): QEMU is running, waiting for its device state,
 * with QMP connected. Use it once: {@link start} it, or {@link discard} it.
 */
export class PreparedRestore {
  readonly #parts: Omit<MachineParts, 'id' | 'lifecycle' | 'agent' | 'runtime'>;
  #source: RestoreSource | undefined;
  readonly #make: (parts: MachineParts) => Machine;
  readonly #standby: StandbyParts | undefined;
  /** A bound standby's remap and disk attach, which must be done before the device state goes in. */
  #binding: Promise<void> | undefined;
  #used = false;

  /** @internal Made by {@link Machine.prepareRestore} and {@link Machine.prepareStandby}. */
  constructor(parts: Omit<MachineParts, 'id' | 'lifecycle' | 'agent' | 'runtime'>, source: RestoreSource | undefined, make: (parts: MachineParts) => Machine, standby?: StandbyParts) {
    this.#parts = parts;
    this.#source = source;
    this.#make = make;
    this.#standby = standby;
  }

  /** Whether its QMP connection keeps Node's event loop alive (see QmpClient.holdEventLoop). */
  holdEventLoop(hold: boolean): void {
    this.#parts.qmp.holdEventLoop(hold);
    this.#parts.process.holdEventLoop(hold);
  }

  /** QEMU's process id. */
  get pid(): number {
    return this.#parts.process.pid;
  }

  /** Whether QEMU is still running (a standby may have died while it waited). */
  get alive(): boolean {
    return this.#parts.process.exitInfo === undefined;
  }

  /**
   * Gives a standby ({@link Machine.prepareStandby}) the snapshot it restores: its RAM image is mapped over the
   * placeholder and its disk layer becomes the data disk's backing. The work starts now and {@link start} waits
   * for it before the device state goes in (it overlaps QEMU's own steps). Copy-on-write RAM only.
   * @throws {OperationNotAllowedError} when this is not an unbound standby, or `source` asks for copied RAM.
   * @throws {QemuStartError} when the standby's QEMU has gone (the caller starts another QEMU instead).
   * A refused remap or disk layer ({@link QemuStartError}, {@link QmpCommandError}) is thrown by {@link start}.
   */
  bind(source: RestoreSource, options: BootOptions = {}): void {
    if (!this.#standby || this.#source || this.#used) throw new OperationNotAllowedError('bind of a prepared restore', 'not an unbound standby');
    if (source.ram === 'copy') throw new OperationNotAllowedError('bind of a prepared restore', 'a standby maps RAM copy-on-write only');
    const { process, qmp, config, paths } = this.#parts;
    const standby = this.#standby;
    if (process.exitInfo || !existsSync(standby.remapSocket)) throw new QemuStartError('the standby machine has gone');
    this.#source = source;
    const binding = step('standby: RAM + disk layer', () =>
      Promise.all([
        remapRam(standby.remapSocket, standby.placeholder, source.ramImage),
        attachDiskLayer(qmp, source.diskLayer, () => createScratchDisk(config.qemuBinary, paths.dataDisk, config.dataDiskMiB, source.diskLayer), {
          timeoutMs: config.qmpTimeoutMs,
          signal: options.signal,
        }),
      ]),
    ).then(() => rm(standby.placeholder, { force: true })); // QEMU maps the placeholder no more; it is empty
    binding.catch(() => {}); // seen by start, which awaits it
    this.#binding = binding;
  }

  /**
   * Loads the device state, runs the guest and waits for the agent's hello.
   * @throws {OperationNotAllowedError} when already started or discarded.
   * @throws {QemuExitedError}, {@link QmpCommandError}, {@link AgentTimeoutError}, {@link AbortedError}; the
   * prepared machine is then gone (QEMU stopped, its files removed).
   */
  async start(options: BootOptions = {}): Promise<Machine> {
    if (!this.#source) throw new OperationNotAllowedError('start of a prepared restore', 'a standby must be bound to a snapshot first');
    this.#use('start');
    const source = this.#source;
    const { config, paths, process, cleanup, qmp } = this.#parts;
    try {
      const lifecycle = new Lifecycle();
      const started = await step('qemu → device state → agent hello', () =>
        raceExit(
          process,
          'restore',
          connectChannels(config, paths, process, cleanup, options.signal, (client) => loadDeviceState(client, { incomingSocket: paths.incomingSocket, file: source.ramImage, offset: source.deviceStateOffset, timeoutMs: config.qmpTimeoutMs, signal: options.signal, ready: this.#binding }), qmp),
        ),
      );
      lifecycle.send({ type: 'BOOTED' });
      return this.#make({ ...this.#parts, id: randomUUID(), lifecycle, ...started });
    } catch (error) {
      await cleanup.dispose();
      throw error;
    }
  }

  /** Stops QEMU and removes the machine's files. Idempotent after a discard; a no-op after a start. */
  async discard(): Promise<void> {
    if (this.#used) return;
    this.#used = true;
    await this.#parts.cleanup.dispose();
  }

  #use(operation: string): void {
    if (this.#used) throw new OperationNotAllowedError(`${operation} of a prepared restore`, 'already started or discarded');
    this.#used = true;
  }
}

/** What a standby needs to be bound: its RAM placeholder and the socket its QEMU takes the remap on. */
interface StandbyParts {
  readonly placeholder: string;
  readonly remapSocket: string;
}

/** Where a restored machine's state comes from (a persisted snapshot's files). */
export interface RestoreSource {
  /** The guest RAM image, mapped copy-on-write; the device state follows it in the same file. */
  readonly ramImage: string;
  /** Byte offset of QEMU's device-state stream in `ramImage`. */
  readonly deviceStateOffset: number;
  /** The qcow2 layer the machine's disk overlay is backed by. */
  readonly diskLayer: string;
  /**
   * `copy-on-write` (default): RAM maps `ramImage` privately, so clones share its pages and it is never written;
   * such a machine cannot be persisted. `copy`: the image is copied (sparse) into the machine's own shared RAM
   * file first, which costs the copy and the memory, and gives a machine like a booted one.
   */
  readonly ram?: 'copy-on-write' | 'copy';
}

/**
 * Connects QMP, the agent and the runtimes' port at the same time. A restore passes `restore`, which runs on the
 * QMP client as soon as it is connected (the device-state load) while the agent queues a request for a fresh
 * hello (the guest said its own before it was saved). If QMP, `restore` or the agent fails, the other waits stop
 * at once. `connected`: a QMP client connected before (a prepared restore), used instead of connecting.
 */
async function connectChannels(
  config: MachineConfig,
  paths: RunPaths,
  process: QemuProcess,
  cleanup: CleanupStack,
  signal: AbortSignal | undefined,
  restore?: (qmp: QmpClient) => Promise<void>,
  connected?: QmpClient,
): Promise<{ qmp: QmpClient; agent: AgentSession; runtime: RuntimeChannel }> {
  const failed = new AbortController();
  const agentSignal = signal ? AbortSignal.any([signal, failed.signal]) : failed.signal;
  const agentPromise = connectAgent(config, paths, process, agentSignal, restore !== undefined);
  const runtime = new RuntimeChannel({
    socketPath: paths.runtimeSocket,
    connectTimeoutMs: config.bootTimeoutMs,
    requestTimeoutMs: config.agentTimeoutMs,
    closeReason: () => exitReason(process),
  });
  cleanup.defer('runtime channel', () => runtime.close());
  // Connected alongside the agent, so that a restored runtime holding the port finds the host there at once.
  const runtimePromise = runtime.connect(agentSignal);
  // A failed agent ends the wait for the runtime port too (QEMU may be gone: its socket never appears).
  agentPromise.catch((error: unknown) => failed.abort(error));
  const qmpPromise = (async () => {
    const qmp = connected ?? (await QmpClient.connect(paths.qmpSocket, { timeoutMs: config.bootTimeoutMs, signal }));
    // Registered as soon as it exists, even if the agent fails.
    if (!connected) cleanup.defer('qmp', () => qmp.close());
    await restore?.(qmp);
    return qmp;
  })();
  qmpPromise.catch((error: unknown) => failed.abort(error));
  const [qmp, agent, runtimeConnected] = await Promise.allSettled([qmpPromise, agentPromise, runtimePromise]);
  if (agent.status === 'fulfilled') cleanup.defer('agent', () => agent.value.close());
  if (qmp.status === 'rejected') throw qmp.reason;
  if (agent.status === 'rejected') throw agent.reason;
  if (runtimeConnected.status === 'rejected') throw runtimeConnected.reason;
  return { qmp: qmp.value, agent: agent.value, runtime };
}

function connectAgent(
  config: MachineConfig,
  paths: RunPaths,
  process: QemuProcess,
  signal: AbortSignal | undefined,
  requestHello: boolean,
): Promise<AgentSession> {
  return AgentSession.connect({
    socketPath: paths.agentSocket,
    helloTimeoutMs: config.bootTimeoutMs,
    requestTimeoutMs: config.agentTimeoutMs,
    signal,
    requestHello,
    closeReason: () => exitReason(process),
  });
}

/** The error for a lost agent channel: QEMU's exit when it exited, else a plain disconnect. */
async function exitReason(process: QemuProcess): Promise<EvolvmError> {
  const info = await Promise.race([process.exited, delay(EXIT_ATTRIBUTION_MS)]);
  if (info) return new QemuExitedError(info.exitCode, info.signal, process.diagnosticTail());
  return new AgentDisconnectedError(undefined, 'agent socket closed while QEMU kept running');
}

/** Rejects with {@link QemuExitedError} if QEMU exits before `work` settles. */
async function raceExit<T>(process: QemuProcess, during: string, work: Promise<T>): Promise<T> {
  const exited = process.exited.then((info) => {
    throw new QemuExitedError(info.exitCode, info.signal, process.diagnosticTail(), { during });
  });
  exited.catch(() => {});
  try {
    return await Promise.race([work, exited]);
  } catch (error) {
    // Both may fail (the exit closes the sockets, often before the exit itself is reported); the exit is the
    // real cause, so give it a moment to arrive.
    if (!process.exitInfo && !(error instanceof AbortedError)) await Promise.race([process.exited, delay(EXIT_ATTRIBUTION_MS)]);
    if (process.exitInfo && !(error instanceof QemuExitedError) && !(error instanceof AbortedError)) {
      const info = process.exitInfo;
      throw new QemuExitedError(info.exitCode, info.signal, process.diagnosticTail(), { during, cause: error });
    }
    work.catch(() => {});
    throw error;
  }
}

function delay(ms: number): Promise<undefined> {
  return new Promise((resolve) => setTimeout(() => resolve(undefined), ms).unref());
}

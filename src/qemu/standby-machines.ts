import { fileIdentity } from '../util/file-cache.js';
import { parseMachineConfig, type MachineConfig, type MachineConfigInput } from './config.js';
import { resolveGuestImage } from './guest-image.js';
import { Machine, type PreparedRestore } from './machine.js';
import { resolveExecutable } from './resolve-executable.js';

// Standby machines: after a restore, one QEMU of the same shape is started in the background and left waiting for
// a device state, for no snapshot in particular. The next restore of that shape binds it to its snapshot
// (PreparedRestore.bind) instead of starting QEMU, which takes QEMU's start-up (spawn to an answered QMP, 20-35 ms
// here) off the restore's path. A standby is an idle QEMU (24 MB of its own memory, 32 MB PSS, measured here);
// at most MAX_SHAPES are kept, and EVOLVM_QEMU_STANDBY=off turns them off. They need the QEMU zygote.

/** Shapes (whole machine configs) with a standby at once; the oldest is stopped for a new one. */
const MAX_SHAPES = 2;
/**
 * How long after the last restore a standby starts: a standby starting beside a restore slows it (QEMU's start-up is
 * CPU-bound: 118 against 93 ms for a restore right after another, measured here), and restores often come in a row.
 */
const QUIET_MS = 200;
let quietTimer: NodeJS.Timeout | undefined;
/** Settles when the pending quiet period has passed (resolved at once when none is pending). */
let quietOver: Promise<void> = Promise.resolve();
let endQuiet: (() => void) | undefined;

const standbys = new Map<string, Promise<PreparedRestore | undefined>>();
/** The standbys whose QEMU is up and waiting (a restore does not wait for one still starting: it starts its own). */
const ready = new Map<string, PreparedRestore>();
/** Shapes a restore asked for, in the order asked: refillStandbys starts a standby for each that has none. */
const wanted = new Map<string, MachineConfig>();
/** Shapes whose standby could not start (no zygote, QEMU refused): not tried again in this process. */
const failed = new Set<string>();

function enabled(): boolean {
  return process.env.EVOLVM_QEMU_STANDBY !== 'off';
}

/**
 * A shape: the whole machine config, and the identity (path, size, mtime, inode) of every file a standby's QEMU
 * opened at its start (QEMU binary, kernel, initramfs, runtimes map, user maps). A file replaced since is another
 * shape: the standby would still read the old one, which the restore's checks (made on the paths) never saw.
 * Undefined when a file cannot be read: no standby then (the restore itself says why).
 */
function keyOf(config: MachineConfig): string | undefined {
  try {
    const image = resolveGuestImage(config.kernel, config.initrd);
    const files = [resolveExecutable(config.qemuBinary), image.kernel, image.initrd, ...(image.maps ? [image.maps] : []), ...Object.values(config.maps)];
    return JSON.stringify([config, files.map(fileIdentity)]);
  } catch {
    return undefined;
  }
}

/**
 * The standby for `input`'s shape if one is ready (it is the caller's then: bind and start it, or discard it), and
 * notes the shape as wanted for {@link refillStandbys}.
 */
export async function takeStandby(input: MachineConfigInput): Promise<PreparedRestore | undefined> {
  if (!enabled()) return undefined;
  // A restore is starting: the standbys wait until restores are quiet again (refillStandbys after it).
  clearTimeout(quietTimer);
  finishQuiet();
  const config = parseMachineConfig(input);
  const key = keyOf(config);
  if (key === undefined) return undefined;
  wanted.delete(key);
  wanted.set(key, config);
  const standby = ready.get(key);
  if (!standby) return undefined;
  ready.delete(key);
  standbys.delete(key);
  if (!standby.alive) {
    await standby.discard();
    return undefined;
  }
  standby.holdEventLoop(true);
  return standby;
}

/**
 * Starts, in the background once restores have been quiet for QUIET_MS, a standby for each wanted shape that has
 * none (the most recently wanted first, at most MAX_SHAPES kept). Call it once a restore has finished.
 */
export function refillStandbys(): void {
  if (!enabled()) return;
  clearTimeout(quietTimer);
  if (!endQuiet) quietOver = new Promise((resolve) => (endQuiet = resolve));
  quietTimer = setTimeout(startMissingStandbys, QUIET_MS).unref();
}

/**
 * Resolves once no standby is about to start or starting: for a caller that times something else and does not
 * want a standby's start (~30 ms of CPU, and page faults) inside it, as the benchmarks' cold boots.
 */
export async function standbysSettled(): Promise<void> {
  for (;;) {
    // The timer does not hold Node's event loop by itself (a program that is done must not wait for it); one that
    // waits for it here does.
    if (endQuiet) quietTimer?.ref();
    await quietOver;
    await Promise.all(standbys.values());
    if (!endQuiet) return;
  }
}

function finishQuiet(): void {
  endQuiet?.();
  endQuiet = undefined;
}

function startMissingStandbys(): void {
  finishQuiet();
  const recent = [...wanted.entries()].reverse().slice(0, MAX_SHAPES);
  for (const [key] of [...standbys.entries()].filter(([key]) => !recent.some(([wantedKey]) => wantedKey === key))) {
    void discardEntry(standbys.get(key));
    standbys.delete(key);
    ready.delete(key);
  }
  for (const [key, config] of recent) {
    if (standbys.has(key) || failed.has(key)) continue;
    const starting = Machine.prepareStandby(config).then(
      (standby) => {
        standby.holdEventLoop(false);
        if (standbys.get(key) === starting) ready.set(key, standby);
        return standby;
      },
      () => {
        failed.add(key);
        standbys.delete(key);
        return undefined;
      },
    );
    standbys.set(key, starting);
  }
}

/**
 * Stops every standby machine and forgets the wanted shapes (until the next restore). Safe to call at any time;
 * a restore under way is not affected (a standby it took is its own).
 */
export async function closeStandbyMachines(): Promise<void> {
  clearTimeout(quietTimer);
  finishQuiet();
  const entries = [...standbys.values()];
  standbys.clear();
  ready.clear();
  wanted.clear();
  await Promise.all(entries.map(discardEntry));
}

async function discardEntry(entry: Promise<PreparedRestore | undefined> | undefined): Promise<void> {
  const standby = await entry;
  await standby?.discard();
}

/** The QEMU pids of the standbys ready now (for tests and diagnostics). */
export function readyStandbyPids(): number[] {
  return [...ready.values()].map((standby) => standby.pid);
}

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from './guest-image.js';

// native/build.sh builds these shims, preloaded into QEMU (native/*.c); evolvm runs without them, only slower.

const built = new Map<string, boolean>();

/** `path` if it exists (checked once per process), else undefined. */
function ifBuilt(path: string): string | undefined {
  let exists = built.get(path);
  if (exists === undefined) {
    exists = existsSync(path);
    built.set(path, exists);
  }
  return exists ? path : undefined;
}

/** The idle-trim shim's path in this package, whether or not it is built. */
export function idleTrimShimPath(): string {
  return join(packageRoot(), 'native', 'out', 'libevolvm-idle-malloc-trim.so');
}

/**
 * The idle-trim shim to preload into QEMU: its path when `native/build.sh` has built it, undefined when it is
 * missing (QEMU then trims as usual: slower, not wrong) or when `EVOLVM_QEMU_MALLOC_TRIM=on` asks for QEMU's own
 * behaviour.
 */
export function idleTrimShim(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.EVOLVM_QEMU_MALLOC_TRIM === 'on' ? undefined : ifBuilt(idleTrimShimPath());
}

/** The QEMU zygote shim's path in this package, whether or not it is built. */
export function qemuZygoteShimPath(): string {
  return join(packageRoot(), 'native', 'out', 'libevolvm-qemu-zygote.so');
}

/**
 * The QEMU zygote shim: its path when `native/build.sh` has built it, undefined when it is missing or when
 * `EVOLVM_QEMU_ZYGOTE=off` asks for a fresh exec of QEMU every time.
 * - Why: starting QEMU is mostly the dynamic loader and QEMU's constructors (~1,900 page faults, 236k relocations
 *   here); a fork of a process that did them once skips them: spawn to an answered QMP command 73–93 → 35–46 ms.
 * - What it costs: sibling QEMUs share the zygote's address-space layout and stack-protector canary, as the
 *   children of any fork server do (README, "Security note").
 */
export function qemuZygoteShim(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.EVOLVM_QEMU_ZYGOTE === 'off' ? undefined : ifBuilt(qemuZygoteShimPath());
}

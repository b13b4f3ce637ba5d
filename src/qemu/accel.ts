import { accessSync, constants, readFileSync } from 'node:fs';
import type { MachineConfig } from './config.js';

/** Whether this host can run KVM guests: /dev/kvm exists and we may open it read-write. */
export function kvmUsable(devicePath = '/dev/kvm'): boolean {
  try {
    accessSync(devicePath, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The accelerators QEMU tries, in order. QEMU falls back through repeated `-accel` options itself, so `kvm`
 * always ends with `tcg`; `auto` only tries KVM when the device is usable, to keep QEMU's warning out of the log.
 */
export function resolveAccelerators(accel: MachineConfig['accel'], kvmAvailable: boolean): Array<'kvm' | 'tcg'> {
  switch (accel) {
    case 'tcg':
      return ['tcg'];
    case 'kvm':
      return ['kvm', 'tcg'];
    case 'auto':
      return kvmAvailable ? ['kvm', 'tcg'] : ['tcg'];
  }
}

/** The host CPU's rate in kHz from /proc/cpuinfo (an estimate of the TSC rate), or undefined. */
export function hostTscKhz(): number | undefined {
  try {
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
    return mhz ? Math.round(Number(mhz) * 1000) : undefined;
  } catch {
    return undefined;
  }
}

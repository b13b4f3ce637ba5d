import { accessSync, constants } from 'node:fs';
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

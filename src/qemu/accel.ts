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

let tscKhz: { value: number | undefined } | undefined;

/** The host's TSC rate in kHz from /proc/cpuinfo, or undefined; read once per process. */
export function hostTscKhz(): number | undefined {
  tscKhz ??= { value: readTscKhz() };
  return tscKhz.value;
}

function readTscKhz(): number | undefined {
  try {
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    // BogoMIPS comes from the kernel's TSC calibration (twice the rate in MHz); "cpu MHz" may be the current
    // frequency of a scaled core instead, so it is only the fallback.
    const bogomips = /^bogomips\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1];
    if (bogomips && Number(bogomips) > 0) return Math.round(Number(bogomips) * 500);
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1];
    return mhz ? Math.round(Number(mhz) * 1000) : undefined;
  } catch {
    return undefined;
  }
}

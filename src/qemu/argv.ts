import type { MachineConfig } from './config.js';
import type { RunPaths } from './run-paths.js';
import { RUNTIME_PORT_ID, RUNTIME_PORT_NAME } from './agent/runtime-channel.js';
import { USER_MAP_SERIAL_PREFIX, type UserMap } from './user-maps.js';

/** The virtio-serial port name the guest agent looks for (guest/PROTOCOL.md). */
export const AGENT_PORT_NAME = 'org.evolvm.agent';
/** The block node that holds in-VM snapshots (snapshot jobs name nodes, not drives: QEMU-NOTES pitfall 2). */
export const SCRATCH_NODE = 'scratch0';
/** The serial the guest's init looks for to mount the runtimes map. */
export const MAPS_SERIAL = 'evolvm-maps';
/** The guest's disk (/dev/vda): rolled back with RAM by in-VM snapshots, persisted as a qcow2 layer. */
export const DATA_NODE = 'data0';

/**
 * Initcalls a sandbox guest does not need, skipped with `initcall_blacklist=`. Under TCG every line of kernel code
 * that runs once is translated first, so each costs thousands of translation blocks or millions of instructions.
 */
const SKIPPED_INITCALLS = [
  // The SP800-108 KDF self-test (it runs despite cryptomgr.notests), built-in X.509 certificates, encrypted keys,
  // IMA and EVM: the guest checks no signatures and measures no files.
  'crypto_kdf108_init', 'load_system_certificate_list', 'init_encrypted', 'init_ima', 'init_evm',
  // The tracing files in tracefs, which also rewrite every trace event's format (~100 M guest instructions).
  'trace_eval_init', 'tracer_init_tracefs', 'init_kprobe_trace', 'init_blk_tracer',
  // /sys/kernel/slab, PS/2, the CMOS RTC driver (the host sets the clock with settimeofday), /dev/snapshot for
  // hibernation, and the ACPI processor driver (QEMU has no C- or P-states to manage).
  'slab_sysfs_init', 'i8042_init', 'cmos_init', 'add_rtc_cmos', 'snapshot_device_init', 'acpi_processor_driver_init',
];

/** How the kernel command line depends on the host. */
export interface KernelCmdlineHost {
  /** The host's TSC rate in kHz: under TCG the guest TSC ticks at it. */
  readonly hostTscKhz?: number;
  /** Whether the guest surely runs under TCG (KVM is not among the accelerators to try). */
  readonly tcg: boolean;
}

/**
 * The kernel command line evolvm always passes. `init_on_free=1` zeroes freed pages so snapshots skip them;
 * `panic=-1` with `-no-reboot` turns a guest panic into a QEMU exit the host sees.
 */
export function baseKernelCmdline(machine: MachineConfig['machine'], host: KernelCmdlineHost): string {
  // Each flag trims boot work measured under TCG with initcall_debug: crypto self-tests (~200 ms), IPv6 set-up
  // (~250 ms; the guest has no network), audit, and speculative-execution mitigations and KASLR, which guard the
  // guest kernel against guest user code — the sandbox boundary is the VM, not the guest kernel.
  const flags = [
    'console=ttyS0 quiet loglevel=1 panic=-1 init_on_free=1 cryptomgr.notests=1 ipv6.disable=1 audit=0 mitigations=off nokaslr tsc=reliable no_timer_check',
    `initcall_blacklist=${SKIPPED_INITCALLS.join(',')}`,
    // Only the capability checks: AppArmor, TOMOYO, Landlock and the BPF LSM cost boot time and a hook on every
    // syscall, and guard the guest kernel, which is not the sandbox boundary.
    'lsm=capability',
    // Probe only ttyS0 (the console) rather than four UARTs, and skip ACPI PnP enumeration (serial falls back to
    // its legacy port).
    '8250.nr_uarts=1 pnpacpi=off',
    // No soft-lockup watchdog: its threads and 4-second timer would also wake every idle guest.
    'nowatchdog',
  ];
  if (host.tcg) {
    // On one vCPU the kernel text_pokes ~9,000 LOCK prefixes away, and each poke flushes QEMU's TLB (~100 ms);
    // TCG runs LOCK-prefixed instructions of a single vCPU without host atomics anyway.
    flags.push('noreplace-smp');
    // q35 has an HPET to tick from, which saves calibrating the LAPIC timer against it (a 100 ms busy-wait).
    if (machine !== 'microvm') flags.push('noapictimer');
  }
  // microvm has no PIT/HPET to calibrate the TSC against and can hang at boot; on q35 the PIT calibration fails
  // under TCG and the HPET fallback busy-waits ~70 ms. Under TCG the guest TSC ticks at the host's rate.
  if (host.hostTscKhz && (machine === 'microvm' || host.tcg)) flags.push(`tsc_early_khz=${host.hostTscKhz}`);
  if (machine === 'microvm') flags.push('reboot=t');
  return flags.join(' ');
}

export interface QemuLaunch {
  readonly config: MachineConfig;
  readonly kernel: string;
  readonly initrd: string;
  /** A read-only squashfs the guest mounts by its serial (the runtimes). */
  readonly maps?: string;
  /** The user's read-only maps, in order (see resolveUserMaps); the guest mounts each at /maps/NAME. */
  readonly userMaps?: readonly UserMap[];
  readonly accelerators: ReadonlyArray<'kvm' | 'tcg'>;
  readonly paths: RunPaths;
  /** Restore: start waiting for `migrate-incoming` (the device state) instead of booting; run once it is in. */
  readonly incoming?: boolean;
  /** The host's TSC rate, for the kernel command line (microvm, and q35 under TCG). */
  readonly hostTscKhz?: number;
  /**
   * Guest RAM: a file mapped shared (a booted machine, so a persist can copy it) or private (a restored machine:
   * copy-on-write over a snapshot's RAM image, which is never written). Default: `paths.ramFile`, shared.
   */
  readonly ram?: { readonly path: string; readonly share: boolean; readonly prealloc?: boolean };
  /**
   * A node name for the data disk's file (protocol) node, so that QMP can name it when it reopens the disk with a
   * backing (a standby machine, see Machine.prepareStandby). Default: QEMU names it.
   */
  readonly dataFileNode?: string;
}

/**
 * The machine type and the options that shape its device model. A snapshot's device state loads only into the
 * same model, so a persisted snapshot records this string and a restore compares it.
 * q35 without the devices no evolvm guest uses (AHCI, SMBus, the VMware port) and, under qboot, without the PIT
 * (the guest ticks from the HPET and is told the TSC rate; SeaBIOS times itself with the PIT): QEMU builds and
 * resets fewer devices. Measured, interleaved in one process: cold boot medians 1349 / 1432 against 1385 / 1809 ms,
 * warm starts 116 / 121 against 133 / 139 ms.
 */
export function machineOptions(config: Pick<MachineConfig, 'machine' | 'firmware'>): string {
  if (config.machine === 'microvm') return 'microvm,ioapic2=off';
  return `q35,sata=off,smbus=off,vmport=off${config.firmware === 'qboot' ? ',pit=off' : ''}`;
}

/**
 * A value inside a QEMU option list, where a comma separates options unless doubled: every path in one (a run
 * directory or map under a folder whose name has a comma). `-serial file:` takes the rest of its argument as is.
 */
function qemuOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** Builds the qemu-system argv for one machine. Pure: no I/O, same input → same output. */
export function buildQemuArgv(launch: QemuLaunch): string[] {
  const { config, paths } = launch;
  const microvm = config.machine === 'microvm';
  // microvm has no PCI bus: its virtio devices sit on virtio-mmio.
  const bus = microvm ? 'device' : 'pci';
  const ram = launch.ram ?? { path: paths.ramFile, share: true, prealloc: true };
  const host = { hostTscKhz: launch.hostTscKhz, tcg: !launch.accelerators.includes('kvm') };
  const cmdline = [baseKernelCmdline(config.machine, host), config.cmdline].filter((part) => part.length > 0).join(' ');
  const argv = [
    '-machine', `${machineOptions(config)},memory-backend=ram0`,
    // A booted machine's RAM file is populated up front, with one madvise instead of a host page fault per 4 KiB
    // on first touch (~200–300 ms a boot here; init_on_free touches every page anyway). A restored machine maps a
    // snapshot copy-on-write, which preallocation would copy whole.
    '-object', `memory-backend-file,id=ram0,size=${config.memoryMiB}M,mem-path=${qemuOptionValue(ram.path)},share=${ram.share ? 'on' : 'off'}${ram.prealloc ? ',prealloc=on' : ''}`,
    ...(microvm || config.firmware === 'qboot' ? ['-bios', 'qboot.rom'] : []),
    ...launch.accelerators.flatMap((accel) => ['-accel', accel]),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-m', String(config.memoryMiB),
    '-smp', String(config.cpus),
    '-kernel', launch.kernel,
    '-initrd', launch.initrd,
    '-append', cmdline,
    // Legacy syntax: the whole rest is the path, commas included.
    '-serial', `file:${paths.consoleLog}`,
    '-qmp', `unix:${qemuOptionValue(paths.qmpSocket)},server=on,wait=off`,
    '-device', `virtio-serial-${bus},id=vser0`,
    '-chardev', `socket,id=agent,path=${qemuOptionValue(paths.agentSocket)},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    // A runtime may serve the host on a port of its own, skipping the agent's relay (guest/RUNTIMES.md).
    '-chardev', `socket,id=rt,path=${qemuOptionValue(paths.runtimeSocket)},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=rt,name=${RUNTIME_PORT_NAME},id=${RUNTIME_PORT_ID}`,
    '-drive', `if=none,id=data,node-name=${DATA_NODE},${launch.dataFileNode ? `file.driver=file,file.node-name=${launch.dataFileNode},file.filename=` : 'file='}${qemuOptionValue(paths.dataDisk)},format=qcow2,cache=unsafe,discard=unmap`,
    '-device', `virtio-blk-${bus},drive=data`,
    // Holds vmstate only; no guest device, so the guest cannot touch snapshots.
    '-drive', `if=none,id=scratch,node-name=${SCRATCH_NODE},file=${qemuOptionValue(paths.scratchDisk)},format=qcow2,cache=unsafe,discard=unmap`,
  ];
  if (launch.maps) {
    // Read-only, so it stays out of snapshots: the guest finds it by serial, not by device order.
    argv.push('-drive', `if=none,id=maps,file=${qemuOptionValue(launch.maps)},format=raw,readonly=on`, '-device', `virtio-blk-${bus},drive=maps,serial=${MAPS_SERIAL}`);
  }
  // After every other device, so that a machine without maps keeps its devices where they were.
  (launch.userMaps ?? []).forEach((map, index) => {
    argv.push(
      '-drive', `if=none,id=umap${index},file=${qemuOptionValue(map.path)},format=raw,readonly=on`,
      '-device', `virtio-blk-${bus},drive=umap${index},serial=${USER_MAP_SERIAL_PREFIX}${map.name}`,
    );
  });
  // Deferred: QEMU 7.2 has no command-line switch for x-ignore-shared, which must be set before the load.
  if (launch.incoming) argv.push('-incoming', 'defer');
  return argv;
}

import type { MachineConfig } from './config.js';
import type { RunPaths } from './run-paths.js';

/** The virtio-serial port name the guest agent looks for (guest/PROTOCOL.md). */
export const AGENT_PORT_NAME = 'org.evolvm.agent';
/** The block node that holds in-VM snapshots (snapshot jobs name nodes, not drives: QEMU-NOTES pitfall 2). */
export const SCRATCH_NODE = 'scratch0';
/** The serial the guest's init looks for to mount the runtimes map. */
export const MAPS_SERIAL = 'evolvm-maps';
/** The guest's disk (/dev/vda): rolled back with RAM by in-VM snapshots, persisted as a qcow2 layer. */
export const DATA_NODE = 'data0';

/**
 * The kernel command line evolvm always passes. `init_on_free=1` zeroes freed pages so snapshots skip them;
 * `panic=-1` with `-no-reboot` turns a guest panic into a QEMU exit the host sees.
 */
export function baseKernelCmdline(machine: MachineConfig['machine'], hostTscKhz?: number): string {
  // Each flag trims boot work measured under TCG with initcall_debug: crypto self-tests (~200 ms), IPv6 set-up
  // (~250 ms; the guest has no network), audit, and speculative-execution mitigations and KASLR, which guard the
  // guest kernel against guest user code — the sandbox boundary is the VM, not the guest kernel.
  const common =
    'console=ttyS0 quiet loglevel=1 panic=-1 init_on_free=1 cryptomgr.notests=1 ipv6.disable=1 audit=0 mitigations=off nokaslr tsc=reliable no_timer_check';
  if (machine !== 'microvm') return common;
  // microvm has no PIT/HPET to calibrate the TSC against and can hang at boot; under TCG the guest TSC
  // ticks at the host's rate, so tell the kernel that rate.
  return `${common} reboot=t${hostTscKhz ? ` tsc_early_khz=${hostTscKhz}` : ''}`;
}

export interface QemuLaunch {
  readonly config: MachineConfig;
  readonly kernel: string;
  readonly initrd: string;
  /** A read-only squashfs the guest mounts by its serial (the runtimes). */
  readonly maps?: string;
  readonly accelerators: ReadonlyArray<'kvm' | 'tcg'>;
  readonly paths: RunPaths;
  /** Restore: start waiting for `migrate-incoming` (the device state) instead of booting; run once it is in. */
  readonly incoming?: boolean;
  /** The host's TSC rate, for microvm's kernel command line. */
  readonly hostTscKhz?: number;
  /**
   * Guest RAM: a file mapped shared (a booted machine, so a persist can copy it) or private (a restored machine:
   * copy-on-write over a snapshot's RAM image, which is never written). Default: `paths.ramFile`, shared.
   */
  readonly ram?: { readonly path: string; readonly share: boolean };
}

/** Builds the qemu-system argv for one machine. Pure: no I/O, same input → same output. */
export function buildQemuArgv(launch: QemuLaunch): string[] {
  const { config, paths } = launch;
  const microvm = config.machine === 'microvm';
  // microvm has no PCI bus: its virtio devices sit on virtio-mmio.
  const bus = microvm ? 'device' : 'pci';
  const ram = launch.ram ?? { path: paths.ramFile, share: true };
  const cmdline = [baseKernelCmdline(config.machine, launch.hostTscKhz), config.cmdline].filter((part) => part.length > 0).join(' ');
  const argv = [
    '-machine', `${microvm ? 'microvm,ioapic2=off' : 'q35'},memory-backend=ram0`,
    '-object', `memory-backend-file,id=ram0,size=${config.memoryMiB}M,mem-path=${ram.path},share=${ram.share ? 'on' : 'off'}`,
    ...(microvm || config.firmware === 'qboot' ? ['-bios', 'qboot.rom'] : []),
    ...launch.accelerators.flatMap((accel) => ['-accel', accel]),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-m', String(config.memoryMiB),
    '-smp', String(config.cpus),
    '-kernel', launch.kernel,
    '-initrd', launch.initrd,
    '-append', cmdline,
    '-serial', `file:${paths.consoleLog}`,
    '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
    '-device', `virtio-serial-${bus},id=vser0`,
    '-chardev', `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    '-drive', `if=none,id=data,node-name=${DATA_NODE},file=${paths.dataDisk},format=qcow2,cache=unsafe,discard=unmap`,
    '-device', `virtio-blk-${bus},drive=data`,
    // Holds vmstate only; no guest device, so the guest cannot touch snapshots.
    '-drive', `if=none,id=scratch,node-name=${SCRATCH_NODE},file=${paths.scratchDisk},format=qcow2,cache=unsafe,discard=unmap`,
  ];
  if (launch.maps) {
    // Read-only, so it stays out of snapshots: the guest finds it by serial, not by device order.
    argv.push('-drive', `if=none,id=maps,file=${launch.maps},format=raw,readonly=on`, '-device', `virtio-blk-${bus},drive=maps,serial=${MAPS_SERIAL}`);
  }
  // Deferred: QEMU 7.2 has no command-line switch for x-ignore-shared, which must be set before the load.
  if (launch.incoming) argv.push('-incoming', 'defer');
  return argv;
}

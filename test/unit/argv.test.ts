import { describe, expect, it } from 'vitest';
import { resolveAccelerators } from '../../src/qemu/accel.js';
import { AGENT_PORT_NAME, buildQemuArgv, DATA_NODE, SCRATCH_NODE } from '../../src/qemu/argv.js';
import { parseMachineConfig } from '../../src/qemu/config.js';
import { runPaths } from '../../src/qemu/run-paths.js';

const paths = runPaths('/run/evolvm-x');

function argvFor(
  config: Record<string, unknown>,
  extra: { incoming?: boolean; accelerators?: Array<'kvm' | 'tcg'>; userMaps?: Array<{ name: string; path: string }>; dataFileNode?: string } = {},
): string[] {
  return buildQemuArgv({
    config: parseMachineConfig(config),
    kernel: '/g/vmlinux',
    initrd: '/g/initramfs.cpio',
    accelerators: extra.accelerators ?? ['tcg'],
    paths,
    incoming: extra.incoming,
    userMaps: extra.userMaps,
    dataFileNode: extra.dataFileNode,
  });
}

function valueAfter(argv: string[], flag: string): string[] {
  return argv.flatMap((arg, i) => (arg === flag ? [argv[i + 1]!] : []));
}

describe('buildQemuArgv', () => {
  it("names the data disk's file node only when asked (a spare machine reopens the disk over a backing by it)", () => {
    const data = (argv: string[]) => valueAfter(argv, '-drive').find((drive) => drive.includes(`node-name=${DATA_NODE},`));
    expect(data(argvFor({}))).toBe(`if=none,id=data,node-name=${DATA_NODE},file=${paths.dataDisk},format=qcow2,cache=unsafe,discard=unmap`);
    expect(data(argvFor({}, { dataFileNode: 'data0-file' }))).toBe(
      `if=none,id=data,node-name=${DATA_NODE},file.driver=file,file.node-name=data0-file,file.filename=${paths.dataDisk},format=qcow2,cache=unsafe,discard=unmap`,
    );
  });

  it('is pure: the same input gives the same argv', () => {
    expect(argvFor({})).toEqual(argvFor({}));
  });

  it('builds a q35 machine with memory, cpus, kernel and initrd', () => {
    const argv = argvFor({ memoryMiB: 256, cpus: 2 });
    expect(valueAfter(argv, '-machine')).toEqual(['q35,sata=off,smbus=off,vmport=off,pit=off,memory-backend=ram0']);
    expect(valueAfter(argv, '-m')).toEqual(['256']);
    expect(valueAfter(argv, '-smp')).toEqual(['2']);
    expect(valueAfter(argv, '-kernel')).toEqual(['/g/vmlinux']);
    expect(valueAfter(argv, '-initrd')).toEqual(['/g/initramfs.cpio']);
    expect(argv).toContain('-nodefaults');
    expect(argv).toContain('-no-reboot');
  });

  it("adds each user map as a read-only disk with serial emap-NAME, after every other device, commas in paths escaped", () => {
    const without = argvFor({});
    const argv = argvFor({}, { userMaps: [{ name: 'data', path: '/m/data.sqfs' }, { name: 'tools', path: '/m/a,b.sqfs' }] });
    expect(argv.slice(0, without.length)).toEqual(without);
    expect(argv.slice(without.length)).toEqual([
      '-drive', 'if=none,id=umap0,file=/m/data.sqfs,format=raw,readonly=on',
      '-device', 'virtio-blk-pci,drive=umap0,serial=emap-data',
      '-drive', 'if=none,id=umap1,file=/m/a,,b.sqfs,format=raw,readonly=on',
      '-device', 'virtio-blk-pci,drive=umap1,serial=emap-tools',
    ]);
  });

  it('builds q35 without AHCI, SMBus and the VMware port, and without the PIT only under qboot (SeaBIOS times itself with it)', () => {
    expect(valueAfter(argvFor({}), '-machine')[0]).toBe('q35,sata=off,smbus=off,vmport=off,pit=off,memory-backend=ram0');
    expect(valueAfter(argvFor({ firmware: 'seabios' }), '-machine')[0]).toBe('q35,sata=off,smbus=off,vmport=off,memory-backend=ram0');
    expect(valueAfter(argvFor({ machine: 'microvm' }), '-machine')[0]).toBe('microvm,ioapic2=off,memory-backend=ram0');
  });

  it('wires QMP, the console and the agent port to the run directory', () => {
    const argv = argvFor({});
    expect(valueAfter(argv, '-qmp')).toEqual([`unix:${paths.qmpSocket},server=on,wait=off`]);
    expect(valueAfter(argv, '-serial')).toEqual([`file:${paths.consoleLog}`]);
    expect(valueAfter(argv, '-chardev')[0]).toContain(`path=${paths.agentSocket}`);
    expect(valueAfter(argv, '-device')).toContain(`virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`);
  });

  it('doubles commas in every path inside an option list, and leaves the console file (legacy syntax) as is', () => {
    const comma = runPaths('/run/a,b/evolvm-x');
    const argv = buildQemuArgv({ config: parseMachineConfig({}), kernel: 'k', initrd: 'i', maps: '/g/run,times.sqfs', accelerators: ['tcg'], paths: comma });
    expect(valueAfter(argv, '-qmp')).toEqual(['unix:/run/a,,b/evolvm-x/qmp.sock,server=on,wait=off']);
    expect(valueAfter(argv, '-chardev').every((c) => c.includes('/run/a,,b/evolvm-x/'))).toBe(true);
    expect(valueAfter(argv, '-drive').filter((d) => d.includes('/run/a,,b/evolvm-x/'))).toHaveLength(2);
    expect(valueAfter(argv, '-drive')).toContain(`if=none,id=maps,file=/g/run,,times.sqfs,format=raw,readonly=on`);
    expect(valueAfter(argv, '-object')[0]).toContain(`mem-path=${comma.ramFile.replaceAll(',', ',,')},`);
    expect(valueAfter(argv, '-serial')).toEqual(['file:/run/a,b/evolvm-x/console.log']);
  });

  it('puts the scratch disk on a named node with cache=unsafe, hidden from the guest', () => {
    const drive = valueAfter(argvFor({}), '-drive').find((d) => d.includes(SCRATCH_NODE))!;
    expect(drive).toContain('cache=unsafe');
    expect(drive).toContain(`file=${paths.scratchDisk}`);
    expect(valueAfter(argvFor({}), '-device').some((d) => d.includes('drive=scratch'))).toBe(false);
  });

  it('gives the guest its data disk and file-backed RAM, shared unless restoring', () => {
    const argv = argvFor({});
    expect(valueAfter(argv, '-drive').find((d) => d.includes(DATA_NODE))).toContain(`file=${paths.dataDisk}`);
    expect(valueAfter(argv, '-machine')[0]).toBe('q35,sata=off,smbus=off,vmport=off,pit=off,memory-backend=ram0');
    expect(valueAfter(argv, '-object')).toEqual([`memory-backend-file,id=ram0,size=128M,mem-path=${paths.ramFile},share=on,prealloc=on`]);
    const restored = buildQemuArgv({ config: parseMachineConfig({}), kernel: 'k', initrd: 'i', accelerators: ['tcg'], paths, incoming: true, ram: { path: '/store/x/vmstate', share: false } });
    expect(valueAfter(restored, '-object')[0]).toContain('mem-path=/store/x/vmstate,share=off');
    expect(valueAfter(restored, '-object')[0]).not.toContain('prealloc');
  });

  it('appends the extra cmdline after the base one', () => {
    const append = valueAfter(argvFor({ cmdline: 'evolvm.agent=0' }), '-append')[0]!;
    expect(append.startsWith('console=ttyS0')).toBe(true);
    expect(append.endsWith(' evolvm.agent=0')).toBe(true);
    expect(append).toContain('init_on_free=1');
  });

  it('boots q35 through qboot by default and SeaBIOS on request', () => {
    expect(valueAfter(argvFor({}), '-bios')).toEqual(['qboot.rom']);
    expect(argvFor({ firmware: 'seabios' })).not.toContain('-bios');
  });

  it('tells a microvm kernel the host TSC rate', () => {
    const argv = buildQemuArgv({ config: parseMachineConfig({ machine: 'microvm' }), kernel: 'k', initrd: 'i', accelerators: ['tcg'], paths, hostTscKhz: 2_096_042 });
    expect(valueAfter(argv, '-append')[0]).toContain('tsc_early_khz=2096042');
  });

  it('skips initcalls and LSMs a sandbox guest does not need', () => {
    const append = valueAfter(argvFor({}), '-append')[0]!;
    expect(append).toMatch(/ initcall_blacklist=[a-z0-9_,]*\bcrypto_kdf108_init\b/);
    expect(append).toContain(' lsm=capability');
    expect(append).toContain(' nowatchdog');
  });

  it('adds the TCG boot shortcuts on q35 only when KVM is not tried', () => {
    const launch = (accelerators: Array<'kvm' | 'tcg'>) =>
      valueAfter(buildQemuArgv({ config: parseMachineConfig({}), kernel: 'k', initrd: 'i', accelerators, paths, hostTscKhz: 2_096_042 }), '-append')[0]!;
    const tcg = launch(['tcg']).split(' ');
    expect(tcg).toEqual(expect.arrayContaining(['noreplace-smp', 'noapictimer', 'tsc_early_khz=2096042']));
    const kvm = launch(['kvm', 'tcg']).split(' ');
    expect(kvm).not.toContain('noapictimer');
    expect(kvm).not.toContain('noreplace-smp');
    expect(kvm.some((flag) => flag.startsWith('tsc_early_khz='))).toBe(false);
  });

  it('does not ask microvm, which has no HPET, to tick without its LAPIC timer', () => {
    const append = valueAfter(argvFor({ machine: 'microvm' }), '-append')[0]!.split(' ');
    expect(append).not.toContain('noapictimer');
    expect(append).toContain('reboot=t');
  });

  it('uses virtio-mmio devices on microvm', () => {
    const argv = argvFor({ machine: 'microvm' });
    expect(valueAfter(argv, '-machine')[0]).toMatch(/^microvm/);
    expect(valueAfter(argv, '-device').some((d) => d.includes('-pci'))).toBe(false);
    expect(valueAfter(argv, '-device')).toContain('virtio-serial-device,id=vser0');
  });

  it('lists accelerators in fallback order', () => {
    expect(valueAfter(argvFor({}, { accelerators: ['kvm', 'tcg'] }), '-accel')).toEqual(['kvm', 'tcg']);
  });

  it('attaches the runtimes map read-only, found by its serial', () => {
    const argv = buildQemuArgv({ config: parseMachineConfig({}), kernel: 'k', initrd: 'i', maps: '/g/runtimes.squashfs', accelerators: ['tcg'], paths });
    expect(valueAfter(argv, '-drive')).toContain('if=none,id=maps,file=/g/runtimes.squashfs,format=raw,readonly=on');
    expect(valueAfter(argv, '-device')).toContain('virtio-blk-pci,drive=maps,serial=evolvm-maps');
    expect(argvFor({})).not.toContain('if=none,id=maps,file=/g/runtimes.squashfs,format=raw,readonly=on');
  });

  it('adds -incoming defer only for a restore', () => {
    expect(argvFor({})).not.toContain('-incoming');
    expect(valueAfter(argvFor({}, { incoming: true }), '-incoming')).toEqual(['defer']);
  });
});

describe('resolveAccelerators', () => {
  it('auto uses KVM only when it is usable, always falling back to TCG', () => {
    expect(resolveAccelerators('auto', true)).toEqual(['kvm', 'tcg']);
    expect(resolveAccelerators('auto', false)).toEqual(['tcg']);
  });
  it('kvm falls back to tcg; tcg never tries kvm', () => {
    expect(resolveAccelerators('kvm', false)).toEqual(['kvm', 'tcg']);
    expect(resolveAccelerators('tcg', true)).toEqual(['tcg']);
  });
});

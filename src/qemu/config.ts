import { z } from 'zod';
import { ConfigInvalidError } from '../errors.js';
import { MAP_NAME_PATTERN, MAX_MAPS } from './user-maps.js';

/** The smallest guest RAM the Debian cloud kernel boots in (it needs ~72 MiB; QEMU-NOTES pitfall 1). */
export const MIN_MEMORY_MIB = 96;

/**
 * The options of {@link Machine.boot}. Every field has a default, so `{}` boots the built guest.
 * Unknown keys are refused, so a misspelt option is an error, not a silent default.
 */
export const MachineConfigSchema = z.strictObject({
  /** Guest RAM in MiB. */
  memoryMiB: z.number().int().min(MIN_MEMORY_MIB).max(1024 * 1024).default(128),
  /** Virtual CPUs. */
  cpus: z.number().int().min(1).max(64).default(1),
  /** QEMU machine type: q35 (PCI, the default) or microvm (virtio-mmio, smaller and faster to boot). */
  machine: z.enum(['q35', 'microvm']).default('q35'),
  /**
   * Firmware for q35: `qboot` (a minimal BIOS that jumps straight to the kernel, ~0.5 s faster under TCG) or
   * QEMU's default `seabios`. microvm always uses qboot.
   */
  firmware: z.enum(['qboot', 'seabios']).default('qboot'),
  /** `auto` uses KVM when /dev/kvm is usable and TCG otherwise; `kvm` falls back to TCG too, `tcg` never tries KVM. */
  accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
  /** Guest kernel; defaults to the built guest (`guest/out/x86_64`). */
  kernel: z.string().min(1).optional(),
  /** Guest initramfs; defaults to the built guest. */
  initrd: z.string().min(1).optional(),
  /** Extra kernel command line, appended after evolvm's own. */
  cmdline: z.string().max(2048).default(''),
  /** The qemu-system binary (a name looked up in PATH, or a path). */
  qemuBinary: z.string().min(1).default('qemu-system-x86_64'),
  /** Folder in which each machine gets its own run directory (sockets, console log, scratch disk). */
  runDir: z.string().min(1).optional(),
  /** Bound on spawn → agent hello. */
  bootTimeoutMs: z.number().int().positive().max(3_600_000).default(60_000),
  /** Default bound on one agent request. */
  agentTimeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  /** Default bound on one QMP command or job. */
  qmpTimeoutMs: z.number().int().positive().max(3_600_000).default(60_000),
  /** Virtual size of the qcow2 scratch disk that holds in-VM snapshots. */
  scratchDiskMiB: z.number().int().min(16).max(1024 * 1024).default(4096),
  /** Virtual size of the guest's disk (/dev/vda), a sparse qcow2. */
  dataDiskMiB: z.number().int().min(16).max(1024 * 1024).default(1024),
  /** Delay between SIGTERM and SIGKILL when the QEMU process is stopped. */
  killGraceMs: z.number().int().min(0).max(60_000).default(2_000),
  /**
   * Read-only images the guest mounts at `/maps/NAME` (name → host path of a squashfs or ext2/3/4 image), at most 8 (5 on microvm). They are not
   * in snapshots: a persisted snapshot records each one's name, size and sha256, and a restore needs the same.
   */
  maps: z
    .record(z.string().regex(MAP_NAME_PATTERN, 'a map name is 1-15 of a-z, 0-9, - and _, starting with a letter or digit'), z.string().min(1))
    .refine((maps) => Object.keys(maps).length <= MAX_MAPS, `at most ${MAX_MAPS} maps`)
    .default({}),
});

/**
 * The options of a restore from a persisted snapshot. Memory size, CPU count and machine type are the
 * snapshot's (its device state only loads into the same shape), so they are not options here.
 */
export const RestoreConfigSchema = MachineConfigSchema.omit({ memoryMiB: true, cpus: true, machine: true });
export type RestoreConfigInput = z.input<typeof RestoreConfigSchema>;
export type RestoreConfig = Readonly<z.output<typeof RestoreConfigSchema>>;

/**
 * Validates restore options.
 * @throws {ConfigInvalidError} naming each offending option's path and value.
 */
export function parseRestoreConfig(input: unknown): RestoreConfig {
  return parseWith(RestoreConfigSchema, input);
}

/** What a caller may pass to {@link Machine.boot}. */
export type MachineConfigInput = z.input<typeof MachineConfigSchema>;
/** Options after validation and defaults. */
export type MachineConfig = Readonly<z.output<typeof MachineConfigSchema>>;

/**
 * Validates the options and fills in defaults.
 * @throws {ConfigInvalidError} naming each offending option's path and value.
 */
export function parseMachineConfig(input: unknown): MachineConfig {
  return parseWith(MachineConfigSchema, input);
}

/**
 * Parses `input` with a zod schema and maps failures to a {@link ConfigInvalidError}.
 * @throws {ConfigInvalidError}
 */
export function parseWith<S extends z.ZodType>(schema: S, input: unknown): Readonly<z.output<S>> {
  const result = schema.safeParse(input ?? {}, { reportInput: true });
  if (result.success) return result.data as Readonly<z.output<S>>;
  throw new ConfigInvalidError(
    result.error.issues.flatMap((issue) => {
      const path = issue.path.map(String);
      // One issue per unknown key, so that the path names the misspelt option itself.
      if (issue.code === 'unrecognized_keys') {
        return issue.keys.map((key) => ({ path: [...path, key].join('.'), message: 'unknown option' }));
      }
      return [{ path: path.join('.'), message: issue.message, ...('input' in issue ? { value: issue.input } : {}) }];
    }),
    { cause: result.error },
  );
}

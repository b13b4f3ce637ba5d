export * from './errors.js';
export { Machine, type BootOptions } from './qemu/machine.js';
export { MachineConfigSchema, parseMachineConfig, type MachineConfig, type MachineConfigInput } from './qemu/config.js';
export type { ExecOptions, ExecResult, FileReadOptions, FileWriteOptions } from './qemu/agent/guest-ops.js';
export type { GuestHello } from './qemu/agent/messages.js';
export type { LifecycleState } from './qemu/lifecycle.js';
export { buildQemuArgv, type QemuLaunch } from './qemu/argv.js';
export { FrameDecoder, MAX_FRAME_BYTES } from './qemu/agent/frame-decoder.js';
export { encodeFrame } from './qemu/agent/frame-encoder.js';

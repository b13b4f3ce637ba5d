import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { QemuNotFoundError } from '../errors.js';
import { resolveExecutable } from './qemu-process.js';

/** qemu-img next to a qemu-system binary given by path, else from PATH. */
export function resolveQemuImg(qemuBinary: string): string {
  if (qemuBinary.includes('/')) {
    try {
      return resolveExecutable(join(dirname(qemuBinary), 'qemu-img'));
    } catch {
      // fall through to PATH
    }
  }
  try {
    return resolveExecutable('qemu-img');
  } catch (error) {
    throw new QemuNotFoundError('qemu-img', { cause: error });
  }
}

/**
 * Creates the qcow2 scratch disk that holds in-VM snapshots (sparse: it grows with the snapshots it holds).
 * @throws {QemuNotFoundError} when qemu-img is missing.
 */
export async function createScratchDisk(qemuBinary: string, path: string, sizeMiB: number, backing?: string): Promise<void> {
  const args = ['create', '-q', '-f', 'qcow2'];
  if (backing) args.push('-b', backing, '-F', 'qcow2');
  args.push(path);
  if (!backing) args.push(`${sizeMiB}M`);
  await execa(resolveQemuImg(qemuBinary), args, { stdin: 'ignore' });
}

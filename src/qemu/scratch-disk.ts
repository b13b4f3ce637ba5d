import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { QemuNotFoundError } from '../errors.js';
import { cached, fileIdentity } from '../util/file-cache.js';
import { resolveExecutable } from './resolve-executable.js';

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

// An empty qcow2 is a few hundred KiB of header and tables with nothing unique in it, so one made by qemu-img
// is copied for every later disk of the same shape: a file write instead of a ~30 ms process spawn per disk. The
// templates are kept on disk too (keyed by qemu-img, the size and the backing file), for the next process.
const templates = new Map<string, Promise<Buffer>>();

/**
 * Creates an empty qcow2 (sparse: it grows with what is written), optionally as an overlay over `backing`.
 * @throws {QemuNotFoundError} when qemu-img is missing.
 */
export async function createScratchDisk(qemuBinary: string, path: string, sizeMiB: number, backing?: string): Promise<void> {
  const key = JSON.stringify([qemuBinary, sizeMiB, backing ?? null]);
  let template = templates.get(key);
  if (!template) {
    template = cachedTemplate(resolveQemuImg(qemuBinary), sizeMiB, backing);
    templates.set(key, template);
    template.catch(() => templates.delete(key));
  }
  await writeFile(path, await template);
}

/** A template from the file cache, or made by qemu-img (and cached). */
async function cachedTemplate(qemuImg: string, sizeMiB: number, backing: string | undefined): Promise<Buffer> {
  let key: string;
  try {
    key = [fileIdentity(qemuImg), sizeMiB, backing ? fileIdentity(backing) : ''].join('\0');
  } catch {
    // A backing file that cannot be read: qemu-img says why.
    return makeTemplate(qemuImg, sizeMiB, backing);
  }
  return cached('qcow2', key, isQcow2, () => makeTemplate(qemuImg, sizeMiB, backing));
}

/** A cached template is used only if it is a qcow2 image (its magic): a damaged entry is made again. */
function isQcow2(bytes: Buffer): boolean {
  return bytes.length >= 104 && bytes.readUInt32BE(0) === 0x514649fb;
}

async function makeTemplate(qemuImg: string, sizeMiB: number, backing: string | undefined): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'evolvm-qcow2-'));
  try {
    const file = join(dir, 'template.qcow2');
    const args = ['create', '-q', '-f', 'qcow2'];
    if (backing) args.push('-b', backing, '-F', 'qcow2');
    args.push(file);
    if (!backing) args.push(`${sizeMiB}M`);
    await execa(qemuImg, args, { stdin: 'ignore' });
    return await readFile(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

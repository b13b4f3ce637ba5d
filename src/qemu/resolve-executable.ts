import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { QemuNotFoundError } from '../errors.js';

/**
 * Finds an executable the way a shell would: a path is checked as is, a bare name is looked up in PATH.
 * @throws {QemuNotFoundError} when nothing executable is found.
 */
export function resolveExecutable(binary: string, env: NodeJS.ProcessEnv = process.env): string {
  const candidates = binary.includes('/') ? [binary] : (env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, binary));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new QemuNotFoundError(binary);
}

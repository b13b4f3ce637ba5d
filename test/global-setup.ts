import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Runs once before the suite: without QEMU or a built guest the integration tests cannot mean anything, so
 * the run fails here, loudly, with the fix, instead of skipping or passing.
 */
export default function checkPrerequisites(): void {
  const missing: string[] = [];
  for (const binary of ['qemu-system-x86_64', 'qemu-img']) {
    if (spawnSync(binary, ['--version'], { stdio: 'ignore' }).status !== 0) missing.push(`${binary} (apt-get install qemu-system-x86 qemu-utils)`);
  }
  const guest = process.env.EVOLVM_GUEST_DIR ?? join(process.cwd(), 'guest', 'out', 'x86_64');
  if (!existsSync(join(guest, 'manifest.json'))) missing.push(`the guest in ${guest} (npm run guest:build)`);
  if (missing.length > 0) throw new Error(`evolvm tests need:\n  - ${missing.join('\n  - ')}`);
}

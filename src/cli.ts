#!/usr/bin/env node
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from './qemu/guest-image.js';
import { Machine } from './qemu/machine.js';
import { EvolvmError } from './errors.js';
import { runSnapshotCli } from './snapshot/store/cli.js';

const USAGE = `usage:
  evolvm guest build [--force]     build the guest (kernel + initramfs) into guest/out/x86_64
  evolvm run [--] CMD [ARGS...]     boot a guest, run one command in it, print its output
  evolvm snapshot ls | inspect REF | verify REF [--progress] | gc [--store DIR]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'guest':
      if (rest[0] !== 'build') break;
      return spawnSync('bash', [join(packageRoot(), 'guest', 'build.sh'), ...rest.slice(1)], { stdio: 'inherit' }).status ?? 1;
    case 'snapshot':
      return runSnapshotCli(rest, { stdout: process.stdout, stderr: process.stderr });
    case 'run': {
      const args = rest[0] === '--' ? rest.slice(1) : rest;
      if (args.length === 0) break;
      await using vm = await Machine.boot();
      const result = await vm.exec(args, { onStdout: (d) => process.stdout.write(d), onStderr: (d) => process.stderr.write(d) });
      return result.exitCode;
    }
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`evolvm: ${error instanceof EvolvmError ? `[${error.code}] ` : ''}${(error as Error).message}\n`);
    process.exit(1);
  },
);

import { spawn } from 'node:child_process';
import { chmodSync, closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { QemuNotFoundError, QemuStartError } from '../../src/errors.js';
import { QemuProcess, type QemuLauncher } from '../../src/qemu/qemu-process.js';
import { SpawnHelper } from '../../src/qemu/spawn-helper.js';

// QemuProcess starts any program; /bin/sh stands in for QEMU so that exits, signals and stderr can be chosen.
const work = mkdtempSync(join(tmpdir(), 'evolvm-qemu-process-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is dead for our purposes.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

let serial = 0;
function start(launcher: QemuLauncher, script: string, killGraceMs = 500): Promise<QemuProcess> {
  const stderrLog = join(work, `stderr-${serial++}.log`);
  return QemuProcess.spawn('/bin/sh', ['-c', script], { consoleLog: join(work, 'no-console.log'), stderrLog, killGraceMs, launcher });
}

describe.each<QemuLauncher>(['zygote', 'helper', 'direct'])('a process started by the %s launcher', (launcher) => {
  it('reports its exit code, and its stderr in the diagnostic tail', async () => {
    const child = await start(launcher, 'echo boom >&2; exit 4');
    await expect(child.exited).resolves.toEqual({ exitCode: 4, signal: null });
    expect(child.exitInfo).toEqual({ exitCode: 4, signal: null });
    // Still there once the run directory (and with it a helper-started QEMU's stderr file) is gone.
    rmSync(join(work, `stderr-${serial - 1}.log`), { force: true });
    expect(child.diagnosticTail()).toContain('qemu stderr:\nboom');
  });

  it("runs with QEMU's environment over the parent's", async () => {
    const child = await start(launcher, 'echo "tunables=$GLIBC_TUNABLES lc=$LC_ALL path=${PATH:+set}" >&2');
    await child.exited;
    expect(child.diagnosticTail()).toContain('tunables=glibc.malloc.hugetlb=1 lc=C path=set');
  });

  it('kill() sends SIGTERM', async () => {
    const child = await start(launcher, 'exec sleep 30');
    await expect(child.kill()).resolves.toEqual({ exitCode: null, signal: 'SIGTERM' });
    expect(processAlive(child.pid)).toBe(false);
  });

  it('kill() escalates to SIGKILL after the grace delay when SIGTERM is ignored', async () => {
    const child = await start(launcher, "trap '' TERM; echo ignoring >&2; exec sleep 30", 200);
    // Only once the trap is set: a SIGTERM before it would end the shell.
    while (!child.diagnosticTail().includes('ignoring')) await new Promise((resolve) => setTimeout(resolve, 5));
    const begun = Date.now();
    await expect(child.kill()).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
    expect(Date.now() - begun).toBeGreaterThanOrEqual(150);
  });

  it('killNow() sends SIGKILL, and signalling an exited process is a no-op', async () => {
    const child = await start(launcher, 'exec sleep 30');
    await expect(child.killNow()).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
    await expect(child.kill()).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
  });

  it('refuses a missing binary with QemuNotFoundError', async () => {
    await expect(QemuProcess.spawn('/nonexistent/qemu', [], { consoleLog: '/dev/null', stderrLog: join(work, 'x.log'), killGraceMs: 100, launcher })).rejects.toBeInstanceOf(QemuNotFoundError);
  });
});

describe.each<QemuLauncher>(['zygote', 'helper'])('the %s launcher', (launcher) => {
  it('fails a spawn whose stderr file cannot be opened with QemuStartError, leaving no child', async () => {
    const error = await QemuProcess.spawn('/bin/sh', ['-c', 'exit 0'], { consoleLog: '/dev/null', stderrLog: join(work, 'missing', 'err.log'), killGraceMs: 100, launcher }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuStartError);
    expect((error as QemuStartError).message).toMatch(/missing\/err\.log/);
  });

  it('starts 16 children at once and tells each its own exit', async () => {
    const children = await Promise.all(Array.from({ length: 16 }, (_, i) => start(launcher, `sleep 0.$((${i} % 3)); exit ${i}`)));
    expect(new Set(children.map((child) => child.pid)).size).toBe(16);
    const exits = await Promise.all(children.map((child) => child.exited));
    expect(exits.map((info) => info.exitCode)).toEqual(Array.from({ length: 16 }, (_, i) => i));
  });

  it('reports its children killed when it dies, and a new one serves the next spawn', async () => {
    const child = await start(launcher, 'exec sleep 30');
    const helperPid = parentOf(child.pid);
    expect(readFileSync(`/proc/${helperPid}/cmdline`, 'utf8')).toMatch(launcher === 'zygote' ? /^\/bin\/sh\0-evolvm-zygote\0/ : /perl\0-e\0/);
    process.kill(helperPid, 'SIGKILL');
    await expect(child.exited).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
    const deadline = Date.now() + 5000;
    while (processAlive(child.pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(processAlive(child.pid)).toBe(false);
    const next = await start(launcher, 'exit 7');
    await expect(next.exited).resolves.toEqual({ exitCode: 7, signal: null });
  });
});

function parentOf(pid: number): number {
  return Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

/** The zygote's spares: children forked ahead of a spawn, which still show the zygote's own command line. */
function sparesOf(zygote: number): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((pid) => {
      try {
        return parentOf(pid) === zygote && readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('-evolvm-zygote');
      } catch {
        return false; // gone meanwhile
      }
    });
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** How many pages of `pid`'s writable private mappings it alone maps (pagemap bits 63 and 56): those it copied. */
function ownPages(pid: number): number {
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    let own = 0;
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const match = /^([0-9a-f]+)-([0-9a-f]+) rw-p /.exec(line);
      if (!match) continue;
      const [start, end] = [Number.parseInt(match[1]!, 16) / 4096, Number.parseInt(match[2]!, 16) / 4096];
      const entries = Buffer.alloc((end - start) * 8);
      readSync(fd, entries, 0, entries.length, start * 8);
      for (let i = 0; i < end - start; i++) if ((entries.readBigUInt64LE(i * 8) >> 56n & 0x81n) === 0x81n) own++;
    }
    return own;
  } finally {
    closeSync(fd);
  }
}

describe('the QEMU zygote', () => {
  it('is the default launcher, and its child runs main in place with the argv it was sent, which ps shows', async () => {
    expect(await QemuProcess.prepare('/bin/sh')).toBe(true);
    const child = await QemuProcess.spawn('/bin/sh', ['-c', 'sleep 0.3; exit 3', 'zygote-argv-marker'], { consoleLog: '/dev/null', stderrLog: join(work, 'argv.log'), killGraceMs: 500 });
    expect(readFileSync(`/proc/${parentOf(child.pid)}/cmdline`, 'utf8')).toMatch(/^\/bin\/sh\0-evolvm-zygote\0/);
    expect(readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').replace(/\0+$/, '')).toBe(['/bin/sh', '-c', 'sleep 0.3; exit 3', 'zygote-argv-marker'].join('\0'));
    await expect(child.exited).resolves.toEqual({ exitCode: 3, signal: null });
  });

  it('gets a zygote of its own for a program replaced on disk, so no child runs the old one', async () => {
    const program = join(work, 'replaced-sh');
    writeFileSync(program, readFileSync('/bin/sh'));
    chmodSync(program, 0o755);
    expect(await QemuProcess.prepare(program)).toBe(true);
    const first = await QemuProcess.spawn(program, ['-c', 'sleep 0.3'], { consoleLog: '/dev/null', stderrLog: join(work, 'replaced.log'), killGraceMs: 500 });
    const again = await QemuProcess.spawn(program, ['-c', 'sleep 0.3'], { consoleLog: '/dev/null', stderrLog: join(work, 'replaced.log'), killGraceMs: 500 });
    expect(parentOf(again.pid)).toBe(parentOf(first.pid));
    rmSync(program);
    writeFileSync(program, readFileSync('/bin/sh'));
    chmodSync(program, 0o755);
    expect(await QemuProcess.prepare(program)).toBe(true);
    const replaced = await QemuProcess.spawn(program, ['-c', 'sleep 0.3'], { consoleLog: '/dev/null', stderrLog: join(work, 'replaced.log'), killGraceMs: 500 });
    expect(readFileSync(`/proc/${parentOf(replaced.pid)}/cmdline`, 'utf8')).toMatch(/-evolvm-zygote/);
    expect(parentOf(replaced.pid)).not.toBe(parentOf(first.pid));
    await Promise.all([first.exited, again.exited, replaced.exited]);
  });

  it('takes a spawn sent while it is still loading, and can be started ahead of need', async () => {
    const program = join(work, 'fresh-sh');
    writeFileSync(program, readFileSync('/bin/sh'));
    chmodSync(program, 0o755);
    const first = await QemuProcess.spawn(program, ['-c', 'sleep 0.2'], { consoleLog: '/dev/null', stderrLog: join(work, 'fresh.log'), killGraceMs: 500 });
    expect(readFileSync(`/proc/${parentOf(first.pid)}/cmdline`, 'utf8')).toMatch(/-evolvm-zygote/);
    expect(await QemuProcess.prepare(program)).toBe(true);
    await first.exited;
  });

  it('keeps a spare child forked ahead, which takes the next spawn; one that died is replaced, and dies with the zygote', async () => {
    const program = join(work, 'spare-sh');
    writeFileSync(program, readFileSync('/bin/sh'));
    chmodSync(program, 0o755);
    const options = { consoleLog: '/dev/null', stderrLog: join(work, 'spare.log'), killGraceMs: 500 };
    const first = await QemuProcess.spawn(program, ['-c', 'sleep 30'], options);
    const zygote = parentOf(first.pid);
    await until(() => sparesOf(zygote).length === 1, 'a spare is forked');
    const [spare] = sparesOf(zygote);
    // Alive a while, so that its command line can be read.
    const second = await QemuProcess.spawn(program, ['-c', 'sleep 0.3; exit 5', 'spare-argv'], options);
    expect(second.pid).toBe(spare);
    expect(readFileSync(`/proc/${second.pid}/cmdline`, 'utf8').replace(/\0+$/, '')).toBe([program, '-c', 'sleep 0.3; exit 5', 'spare-argv'].join('\0'));
    await expect(second.exited).resolves.toEqual({ exitCode: 5, signal: null });
    await until(() => sparesOf(zygote).length === 1 && sparesOf(zygote)[0] !== spare, 'the next spare is forked');
    // Killed from outside: it is not reported as a child, and the next spawn is still served.
    const [killed] = sparesOf(zygote);
    process.kill(killed!, 'SIGKILL');
    await until(() => !processAlive(killed!), 'the killed spare is gone');
    const third = await QemuProcess.spawn(program, ['-c', 'exit 6'], options);
    await expect(third.exited).resolves.toEqual({ exitCode: 6, signal: null });
    await until(() => sparesOf(zygote).length === 1, 'a spare is forked again');
    const [last] = sparesOf(zygote);
    process.kill(zygote, 'SIGKILL');
    await expect(first.exited).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
    await until(() => !processAlive(last!), 'the spare dies with the zygote');
  });

  it("copies ahead, in each later spare, the zygote's pages that its first children wrote", async () => {
    // bash, not sh: dash leaves with _exit, which runs no exit handlers, and learning is one.
    const program = join(work, 'learning-bash');
    writeFileSync(program, readFileSync('/bin/bash'));
    chmodSync(program, 0o755);
    const options = { consoleLog: '/dev/null', stderrLog: join(work, 'learning.log'), killGraceMs: 500 };
    expect(await QemuProcess.prepare(program)).toBe(true);
    // Alive (and so not yet teaching anything) while the spare forked after it is looked at.
    const probe = await QemuProcess.spawn(program, ['-c', 'sleep 2'], options);
    const zygote = parentOf(probe.pid);
    await until(() => sparesOf(zygote).length === 1, 'a spare is forked');
    const untaught = ownPages(sparesOf(zygote)[0]!);
    await probe.kill();
    // Each child's exit teaches the zygote (the first four); the spare forked after that copies those pages.
    for (let i = 0; i < 4; i++) await (await QemuProcess.spawn(program, ['-c', 'x=$(echo learn); exit 0'], options)).exited;
    await until(() => sparesOf(zygote).length === 1, 'a spare is forked');
    const taught = ownPages(sparesOf(zygote)[0]!);
    expect(taught).toBeGreaterThan(untaught + 4);
  });

  it('is not used for a script: its interpreter would be the zygote, so the perl helper runs it', async () => {
    const script = join(work, 'fake-qemu.sh');
    writeFileSync(script, '#!/bin/sh\necho "script ran with $1" >&2\nsleep 0.2\nexit 4\n');
    chmodSync(script, 0o755);
    const child = await QemuProcess.spawn(script, ['first-arg'], { consoleLog: '/dev/null', stderrLog: join(work, 'script.log'), killGraceMs: 500 });
    expect(readFileSync(`/proc/${parentOf(child.pid)}/cmdline`, 'utf8')).toMatch(/perl\0-e\0/);
    await expect(child.exited).resolves.toEqual({ exitCode: 4, signal: null });
    expect(child.diagnosticTail()).toContain('script ran with first-arg');
  });

  it('falls back to the perl helper for a program the shim cannot take over (static), from then on', async () => {
    // Its zygote runs busybox's own main, which refuses the zygote's argument: it dies before it is ready.
    expect(await QemuProcess.prepare('/bin/busybox')).toBe(false);
    for (const code of [5, 6]) {
      const child = await QemuProcess.spawn('/bin/busybox', ['sh', '-c', `sleep 0.2; exit ${code}`], { consoleLog: '/dev/null', stderrLog: join(work, 'static.log'), killGraceMs: 500 });
      expect(readFileSync(`/proc/${parentOf(child.pid)}/cmdline`, 'utf8')).toMatch(/perl\0-e\0/);
      await expect(child.exited).resolves.toEqual({ exitCode: code, signal: null });
    }
    // Asked for by name, it fails instead of falling back.
    await expect(QemuProcess.spawn('/bin/busybox', ['true'], { consoleLog: '/dev/null', stderrLog: join(work, 'static.log'), killGraceMs: 500, launcher: 'zygote' })).rejects.toBeInstanceOf(QemuStartError);
  });

  it('is not used with EVOLVM_QEMU_ZYGOTE=off', async () => {
    process.env.EVOLVM_QEMU_ZYGOTE = 'off';
    try {
      expect(await QemuProcess.prepare('/bin/sh')).toBe(false);
      const child = await start('helper', 'sleep 0.2');
      const viaDefault = await QemuProcess.spawn('/bin/sh', ['-c', 'sleep 0.2'], { consoleLog: '/dev/null', stderrLog: join(work, 'off.log'), killGraceMs: 500 });
      expect(readFileSync(`/proc/${parentOf(viaDefault.pid)}/cmdline`, 'utf8')).toMatch(/perl\0-e\0/);
      await Promise.all([child.exited, viaDefault.exited]);
    } finally {
      delete process.env.EVOLVM_QEMU_ZYGOTE;
    }
  });
});

describe('the spawn helper', () => {
  it('gives each child its parent-death signal itself, before exec (no setpriv in between)', async () => {
    const spawner = SpawnHelper.start('/usr/bin/perl', undefined);
    const child = await spawner.spawn(['/bin/sleep', '30'], { PATH: '/usr/bin:/bin' }, join(work, 'bare.log'));
    const helperPid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1]);
    process.kill(helperPid, 'SIGKILL');
    await expect(child.exited).resolves.toEqual({ exitCode: null, signal: 'SIGKILL' });
    const deadline = Date.now() + 5000;
    while (processAlive(child.pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(processAlive(child.pid)).toBe(false);
    expect(spawner.alive).toBe(false);
    await expect(spawner.spawn(['/bin/true'], {}, join(work, 'bare.log'))).rejects.toThrow(/spawn helper/);
  });
});

/** Runs spawn-owner-child.ts in a Node process of its own. */
function runOwner(mode: string, launcher: QemuLauncher): Promise<{ code: number | null; output: string; ms: number }> {
  const childScript = fileURLToPath(new URL('./spawn-owner-child.ts', import.meta.url));
  const begun = Date.now();
  const owner = spawn(process.execPath, ['--import', 'tsx', childScript, mode, join(work, `owner-${launcher}-${mode}.log`), launcher], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  owner.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  owner.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return new Promise((resolve) => owner.on('exit', (code) => resolve({ code, output, ms: Date.now() - begun })));
}

it('keeps a Node process that awaits only the zygote alive until it is ready, and not after', async () => {
  const result = await runOwner('prepare', 'zygote');
  expect(result.output).toContain('prepared true');
  expect(result.code).toBe(0);
});

describe.each<QemuLauncher>(['zygote', 'helper'])('a Node process whose children the %s launcher started', (launcher) => {

  it('does not keep its Node process alive once its children have exited', async () => {
    const result = await runOwner('idle', launcher);
    expect(result.output).toContain('done');
    expect(result.code).toBe(0);
  });

  it('is not kept alive by a live child let go of the event loop (a standby machine), which dies with it', async () => {
    const result = await runOwner('background', launcher);
    expect(result.code).toBe(0);
    expect(result.ms).toBeLessThan(15_000); // the child sleeps 30 s
    const pid = Number(/pid (\d+)/.exec(result.output)?.[1]);
    expect(pid).toBeGreaterThan(0);
    const deadline = Date.now() + 5000;
    while (processAlive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(processAlive(pid)).toBe(false);
  });

  it('takes its children down when its Node process exits', async () => {
    const result = await runOwner('exit', launcher);
    const pid = Number(/pid (\d+)/.exec(result.output)?.[1]);
    expect(pid).toBeGreaterThan(0);
    const deadline = Date.now() + 5000;
    while (processAlive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(processAlive(pid)).toBe(false);
  });
});

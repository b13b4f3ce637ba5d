import { describe, expect, it } from 'vitest';
import { ConfigInvalidError } from '../../src/errors.js';
import { parseMachineConfig } from '../../src/qemu/config.js';

function issuesOf(input: unknown): Array<{ path: string; message: string; value?: unknown }> {
  try {
    parseMachineConfig(input);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError);
    expect((error as ConfigInvalidError).code).toBe('CONFIG_INVALID');
    return [...(error as ConfigInvalidError).issues];
  }
  throw new Error('expected the config to be refused');
}

describe('parseMachineConfig', () => {
  it('fills every default from an empty object', () => {
    expect(parseMachineConfig({})).toMatchObject({ memoryMiB: 128, cpus: 1, machine: 'q35', accel: 'auto', qemuBinary: 'qemu-system-x86_64' });
  });

  const invalid: Array<[string, Record<string, unknown>, unknown]> = [
    ['memoryMiB', { memoryMiB: 64 }, 64],
    ['memoryMiB', { memoryMiB: 128.5 }, 128.5],
    ['cpus', { cpus: 0 }, 0],
    ['cpus', { cpus: 'two' }, 'two'],
    ['machine', { machine: 'pc' }, 'pc'],
    ['accel', { accel: 'hvf' }, 'hvf'],
    ['kernel', { kernel: '' }, ''],
    ['initrd', { initrd: 42 }, 42],
    ['cmdline', { cmdline: 'x'.repeat(3000) }, 'x'.repeat(3000)],
    ['qemuBinary', { qemuBinary: '' }, ''],
    ['runDir', { runDir: false }, false],
    ['bootTimeoutMs', { bootTimeoutMs: -1 }, -1],
    ['agentTimeoutMs', { agentTimeoutMs: 0 }, 0],
    ['qmpTimeoutMs', { qmpTimeoutMs: 'soon' }, 'soon'],
    ['scratchDiskMiB', { scratchDiskMiB: 1 }, 1],
    ['killGraceMs', { killGraceMs: 10 ** 9 }, 10 ** 9],
    ['maps.data', { maps: { data: '' } }, ''],
  ];
  for (const [path, input, value] of invalid) {
    it(`names ${path} and its value ${JSON.stringify(value).slice(0, 20)}`, () => {
      const issues = issuesOf(input);
      expect(issues).toHaveLength(1);
      expect(issues[0]!.path).toBe(path);
      expect(issues[0]!.value).toEqual(value);
    });
  }

  it('refuses a map name the guest could not mount, and more than 8 maps, naming maps', () => {
    for (const name of ['Data', '-data', 'a-name-over-15-chars', 'a/b', '']) {
      const issues = issuesOf({ maps: { [name]: '/x.squashfs' } });
      expect(issues).toHaveLength(1);
      expect(issues[0]!.path).toMatch(/^maps/);
    }
    const nine = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`m${i}`, '/x.squashfs']));
    expect(issuesOf({ maps: nine })[0]!.path).toBe('maps');
    expect(parseMachineConfig({ maps: { data: '/x.squashfs', 'tools_2-b': '/y' } }).maps).toEqual({ data: '/x.squashfs', 'tools_2-b': '/y' });
  });

  it('refuses an unknown option by name', () => {
    expect(issuesOf({ memmory: 256 })).toEqual([{ path: 'memmory', message: 'unknown option' }]);
  });

  it('reports every invalid option at once', () => {
    expect(issuesOf({ cpus: 0, accel: 'x' }).map((i) => i.path).sort()).toEqual(['accel', 'cpus']);
  });

  it('refuses a non-object config', () => {
    expect(issuesOf('q35')[0]!.path).toBe('');
  });
});

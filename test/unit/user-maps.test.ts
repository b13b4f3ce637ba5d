import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigInvalidError } from '../../src/errors.js';
import { resolveUserMaps } from '../../src/qemu/user-maps.js';
import { userMapsFingerprint } from '../../src/snapshot/compatibility.js';

const work = mkdtempSync(join(tmpdir(), 'evolvm-user-maps-'));
process.env.EVOLVM_CACHE_DIR = join(work, 'cache');
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('user maps', () => {
  it('come in name order with absolute paths, whatever order the config gave', () => {
    writeFileSync(join(work, 'a'), 'a');
    writeFileSync(join(work, 'b'), 'b');
    expect(resolveUserMaps({ zeta: join(work, 'a'), alpha: join(work, 'b') })).toEqual([
      { name: 'alpha', path: join(work, 'b') },
      { name: 'zeta', path: join(work, 'a') },
    ]);
  });

  it('refuse a missing path and a directory, naming each map', () => {
    try {
      resolveUserMaps({ gone: join(work, 'nope'), dir: work });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigInvalidError);
      expect((error as ConfigInvalidError).issues.map((issue) => issue.path)).toEqual(['maps.dir', 'maps.gone']);
    }
  });

  it('are at most 5 on a microvm, whose virtio-mmio transports evolvm shares', () => {
    const maps = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`m${i}`, join(work, 'a')]));
    expect(resolveUserMaps(maps(5), 'microvm')).toHaveLength(5);
    expect(resolveUserMaps(maps(8), 'q35')).toHaveLength(8);
    expect(() => resolveUserMaps(maps(6), 'microvm')).toThrow(ConfigInvalidError);
  });

  it('are fingerprinted by name, size and content, and a file changed in place is hashed again', async () => {
    const path = join(work, 'map.sqfs');
    writeFileSync(path, 'first');
    const first = await userMapsFingerprint(resolveUserMaps({ data: path }));
    expect(first).toBe('data:5:a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e');
    expect(await userMapsFingerprint(resolveUserMaps({ data: path }))).toBe(first);
    writeFileSync(path, 'other');
    utimesSync(path, new Date(), new Date(Date.now() + 5000));
    expect(await userMapsFingerprint(resolveUserMaps({ data: path }))).not.toBe(first);
    expect(await userMapsFingerprint([])).toBe('');
    await expect(userMapsFingerprint([{ name: 'gone', path: join(work, 'gone') }])).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'maps.gone' }] });
  });
});

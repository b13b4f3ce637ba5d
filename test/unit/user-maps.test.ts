import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigInvalidError } from '../../src/errors.js';
import { mapFormatOf, resolveUserMaps } from '../../src/qemu/user-maps.js';
import { userMapsFingerprint } from '../../src/snapshot/compatibility.js';

const work = mkdtempSync(join(tmpdir(), 'evolvm-user-maps-'));
process.env.EVOLVM_CACHE_DIR = join(work, 'cache');
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** What the guest mounts: a squashfs starts with `hsqs`; an ext2/3/4 superblock has 0xEF53 at byte 1080. */
const squashfsHead = (rest: string) => Buffer.concat([Buffer.from('hsqs'), Buffer.from(rest)]);
function extHead(): Buffer {
  const head = Buffer.alloc(2048);
  head.writeUInt16LE(0xef53, 1080);
  return head;
}

describe('user maps', () => {
  it('come in name order with absolute paths, whatever order the config gave', () => {
    writeFileSync(join(work, 'a'), squashfsHead('a'));
    writeFileSync(join(work, 'b'), squashfsHead('b'));
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
    writeFileSync(path, squashfsHead('first'));
    const first = await userMapsFingerprint(resolveUserMaps({ data: path }));
    expect(first).toBe('data:9:1c910675c6b797ec41535116925b9a6f1d6c700b30020f6c8d287e7a26a2369d');
    expect(await userMapsFingerprint(resolveUserMaps({ data: path }))).toBe(first);
    writeFileSync(path, squashfsHead('other'));
    utimesSync(path, new Date(), new Date(Date.now() + 5000));
    expect(await userMapsFingerprint(resolveUserMaps({ data: path }))).not.toBe(first);
    expect(await userMapsFingerprint([])).toBe('');
    await expect(userMapsFingerprint([{ name: 'gone', path: join(work, 'gone') }])).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'maps.gone' }] });
  });

  it('hold squashfs or ext2/3/4, told by their first bytes; anything else is refused, naming the map', () => {
    writeFileSync(join(work, 'sq'), squashfsHead('x'));
    writeFileSync(join(work, 'ext'), extHead());
    writeFileSync(join(work, 'zip'), Buffer.from('PK\x03\x04 not a file system'));
    writeFileSync(join(work, 'empty'), '');
    expect(mapFormatOf(join(work, 'sq'))).toBe('squashfs');
    expect(mapFormatOf(join(work, 'ext'))).toBe('ext');
    expect(mapFormatOf(join(work, 'zip'))).toBeUndefined();
    expect(resolveUserMaps({ s: join(work, 'sq'), e: join(work, 'ext') }).map((map) => map.name)).toEqual(['e', 's']);
    try {
      resolveUserMaps({ zip: join(work, 'zip'), empty: join(work, 'empty'), ok: join(work, 'sq') });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigInvalidError);
      expect((error as ConfigInvalidError).issues).toEqual([
        { path: 'maps.empty', message: 'not a squashfs or ext2/3/4 image', value: join(work, 'empty') },
        { path: 'maps.zip', message: 'not a squashfs or ext2/3/4 image', value: join(work, 'zip') },
      ]);
    }
  });
});

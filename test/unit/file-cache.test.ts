import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { cached, cachedSync, fileCacheDir, fileIdentity } from '../../src/util/file-cache.js';

const dir = mkdtempSync(join(tmpdir(), 'evolvm-file-cache-'));
const saved = process.env.EVOLVM_CACHE_DIR;
afterAll(() => {
  if (saved === undefined) delete process.env.EVOLVM_CACHE_DIR;
  else process.env.EVOLVM_CACHE_DIR = saved;
  rmSync(dir, { recursive: true, force: true });
});

let cacheDir: string;
beforeEach(() => {
  cacheDir = mkdtempSync(join(dir, 'cache-'));
  process.env.EVOLVM_CACHE_DIR = cacheDir;
});

const any = () => true;

describe('the file cache', () => {
  it('lives in EVOLVM_CACHE_DIR, else XDG_CACHE_HOME/evolvm, else ~/.cache/evolvm', () => {
    expect(fileCacheDir({ EVOLVM_CACHE_DIR: '/x' })).toBe('/x');
    expect(fileCacheDir({ XDG_CACHE_HOME: '/y' })).toBe('/y/evolvm');
    expect(fileCacheDir({})).toMatch(/\/\.cache\/evolvm$/);
  });

  it('makes a value once and then reads it back, for the same key only', async () => {
    let made = 0;
    const make = async () => Buffer.from(`value ${++made}`);
    expect((await cached('t', 'k1', any, make)).toString()).toBe('value 1');
    expect((await cached('t', 'k1', any, make)).toString()).toBe('value 1');
    expect((await cached('t', 'k2', any, make)).toString()).toBe('value 2');
    expect(cachedSync('t', 'k1', any, () => Buffer.from('never')).toString()).toBe('value 1');
    // No temporary file is left behind.
    expect(readdirSync(cacheDir).filter((name) => name.endsWith('.tmp'))).toEqual([]);
  });

  it('makes the value again when the entry is refused, and replaces it', async () => {
    await cached('t', 'k', any, async () => Buffer.from('damaged'));
    const good = (bytes: Buffer) => bytes.toString() === 'good';
    expect((await cached('t', 'k', good, async () => Buffer.from('good'))).toString()).toBe('good');
    expect((await cached('t', 'k', good, async () => Buffer.from('unused'))).toString()).toBe('good');
  });

  it('still works when the cache cannot be written', async () => {
    const file = join(dir, 'a-file');
    writeFileSync(file, '');
    process.env.EVOLVM_CACHE_DIR = join(file, 'sub'); // a directory under a file cannot be made
    let made = 0;
    const make = async () => Buffer.from(String(++made));
    expect((await cached('t', 'k', any, make)).toString()).toBe('1');
    expect((await cached('t', 'k', any, make)).toString()).toBe('2');
  });

  it('keys a file by its size, mtime and inode, so a replaced file is a new key', () => {
    const file = join(dir, 'identity');
    writeFileSync(file, 'one');
    const before = fileIdentity(file);
    expect(fileIdentity(file)).toBe(before);
    rmSync(file);
    writeFileSync(file, 'three');
    expect(fileIdentity(file)).not.toBe(before);
  });
});

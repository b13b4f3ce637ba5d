import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readBounded } from '../../src/snapshot/store/fs-io.js';

const dir = mkdtempSync(join(tmpdir(), 'evolvm-fs-io-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('readBounded', () => {
  const file = (name: string, bytes: Buffer | string) => {
    writeFileSync(join(dir, name), bytes);
    return join(dir, name);
  };

  it('reads a whole file, empty or up to exactly the bound', async () => {
    const bytes = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
    expect(await readBounded(file('some', bytes), 4096)).toEqual({ ok: true, bytes });
    expect(await readBounded(file('empty', ''), 4096)).toEqual({ ok: true, bytes: Buffer.alloc(0) });
    const full = Buffer.alloc(4096, 7);
    expect(await readBounded(file('full', full), 4096)).toEqual({ ok: true, bytes: full });
  });

  it('refuses a file over the bound, and what is not a regular file', async () => {
    expect(await readBounded(file('big', Buffer.alloc(4097)), 4096)).toEqual({ ok: false, problem: 'too-large' });
    expect(await readBounded(join(dir, 'missing'), 4096)).toMatchObject({ ok: false });
    expect(await readBounded(dir, 4096)).toMatchObject({ ok: false });
  });
});

import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { idleTrimShim, idleTrimShimPath } from '../../src/qemu/native-shims.js';
import { qemuEnvironment } from '../../src/qemu/qemu-process.js';

describe('qemuEnvironment', () => {
  it('runs QEMU in the C locale with malloc on transparent huge pages', () => {
    expect(qemuEnvironment({}, null)).toEqual({ LC_ALL: 'C', GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' });
  });

  it("keeps the user's other glibc tunables", () => {
    expect(qemuEnvironment({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2::glibc.pthread.rseq=0' }, null).GLIBC_TUNABLES).toBe(
      'glibc.malloc.arena_max=2:glibc.pthread.rseq=0:glibc.malloc.hugetlb=1',
    );
  });

  it("leaves a hugetlb setting the user chose alone", () => {
    expect(qemuEnvironment({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }, null).GLIBC_TUNABLES).toBe('glibc.malloc.hugetlb=0');
  });

  it("preloads the idle-trim shim ahead of the user's own LD_PRELOAD, and nothing when there is no shim", () => {
    expect(qemuEnvironment({}, '/x/shim.so').LD_PRELOAD).toBe('/x/shim.so');
    expect(qemuEnvironment({ LD_PRELOAD: '/u/mine.so' }, '/x/shim.so').LD_PRELOAD).toBe('/x/shim.so:/u/mine.so');
    expect(qemuEnvironment({ LD_PRELOAD: '/u/mine.so' }, null)).not.toHaveProperty('LD_PRELOAD');
  });

  it('finds the shim the setup built, unless EVOLVM_QEMU_MALLOC_TRIM=on', () => {
    // The setup (scripts/setup.sh → native/build.sh) builds it; the suite runs after the setup.
    expect(existsSync(idleTrimShimPath())).toBe(true);
    expect(idleTrimShim({})).toBe(idleTrimShimPath());
    expect(idleTrimShim({ EVOLVM_QEMU_MALLOC_TRIM: 'on' })).toBeUndefined();
  });
});

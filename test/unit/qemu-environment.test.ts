import { describe, expect, it } from 'vitest';
import { qemuEnvironment } from '../../src/qemu/qemu-process.js';

describe('qemuEnvironment', () => {
  it('runs QEMU in the C locale with malloc on transparent huge pages', () => {
    expect(qemuEnvironment({})).toEqual({ LC_ALL: 'C', GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' });
  });

  it("keeps the user's other glibc tunables", () => {
    expect(qemuEnvironment({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2::glibc.pthread.rseq=0' }).GLIBC_TUNABLES).toBe(
      'glibc.malloc.arena_max=2:glibc.pthread.rseq=0:glibc.malloc.hugetlb=1',
    );
  });

  it("leaves a hugetlb setting the user chose alone", () => {
    expect(qemuEnvironment({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }).GLIBC_TUNABLES).toBe('glibc.malloc.hugetlb=0');
  });
});

/*
 * Preloaded into QEMU (LD_PRELOAD, see qemuEnvironment in src/qemu/qemu-process.ts): makes malloc_trim a no-op.
 *
 * QEMU's RCU thread calls malloc_trim() after every batch of RCU callbacks, which hands every free page of every
 * malloc arena back to the kernel (MADV_DONTNEED). The next allocations fault them in again, and with the heap on
 * transparent huge pages each trim splits huge pages first. A snapshot load or a device-state load runs many RCU
 * batches, so QEMU spends much of a devolve and a restore in page faults and TLB shootdowns (measured on a 2-core
 * TCG host: the snapshot-load job 23 -> 10 ms, devolve-ready 87 -> 66 ms; bench/RESULTS.md). The memory QEMU
 * keeps instead is what it already used; glibc still returns the top of the heap past its trim threshold.
 */
#include <stddef.h>

int malloc_trim(size_t pad)
{
	(void)pad;
	return 0;
}

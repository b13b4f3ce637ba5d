/*
 * The boot image pvh-loader reads: QEMU is given it as the initrd (-initrd), and mkblob makes it from an
 * uncompressed PVH vmlinux and the initramfs. Little-endian, as on x86:
 *   struct blob_header;                 magic, the kernel's PVH entry, the number of runs, the initramfs offset
 *   struct blob_run runs[run_count];    where each run of non-zero kernel bytes goes in guest-physical memory
 *   the runs' bytes, in the same order;
 *   zero padding to initramfs_offset (a 4 KiB multiple), then the initramfs, which the kernel is given.
 * Only non-zero pages are carried: the loader runs once, on a fresh machine whose RAM is all zero.
 */
#ifndef EVOLVM_KERNEL_BLOB_H
#define EVOLVM_KERNEL_BLOB_H

#include <stdint.h>

#define BLOB_MAGIC "EVKBLOB1"
#define BLOB_MAX_RUNS 1024
#define BLOB_ALIGN 4096u

struct blob_header {
	char magic[8];
	uint32_t entry;
	uint32_t run_count;
	uint32_t initramfs_offset;
	uint32_t reserved;
};

struct blob_run {
	uint32_t address;
	uint32_t length;
};

#endif

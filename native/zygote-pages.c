/*
 * Learns which of a QEMU zygote's own pages its children write, for spares to copy ahead (see qemu-zygote.c).
 *
 * Why: a child starts with every page of the zygote shared copy-on-write, and each page QEMU then writes costs a
 * fault, ~11 us on this host (itself a VM), a few hundred of them in each QEMU's start. MADV_POPULATE_WRITE copies
 * a run of pages in one system call (~0.8 us a page), in a spare forked before it is needed.
 *
 * How: the zygote records its writable private mappings in memory shared with its children. Each of the first
 * LEARN_FROM children, at its exit, marks the pages it alone maps there (/proc/self/pagemap: present and
 * exclusive, so copied or newly filled); the union is what each later spare copies.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "zygote-pages.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels refuse it and the spare just skips the copies */
#endif
#define MAX_RANGES 1024
#define MAX_PAGES (1 << 18)
/* How many children's exits teach the zygote which of its pages QEMU writes. */
#define LEARN_FROM 4

/*
 * Which of the zygote's own writable private pages its children write (copy on write), learnt from the first
 * children's page maps at their exit and kept in memory shared with them. A spare copies those pages ahead.
 */
struct learned_pages {
	atomic_int reports;
	int range_count;
	struct {
		uintptr_t start;
		uint32_t pages, first;
	} ranges[MAX_RANGES];
	atomic_uint_fast64_t bits[MAX_PAGES / 64];
};
static struct learned_pages *learned;
static long page_size = 4096;

/* The writable private mappings whose pages its children may copy on write. */
void zygote_pages_record(void)
{
	page_size = sysconf(_SC_PAGESIZE);
	learned = mmap(NULL, sizeof *learned, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (learned == MAP_FAILED) {
		learned = NULL;
		return;
	}
	FILE *maps = fopen("/proc/self/maps", "re");
	if (!maps)
		return;
	char line[4096];
	uint32_t total = 0;
	while (fgets(line, sizeof line, maps) && learned->range_count < MAX_RANGES) {
		unsigned long start, end;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) != 3 || strcmp(perms, "rw-p") != 0)
			continue;
		uint32_t pages = (uint32_t)((end - start) / (unsigned long)page_size);
		if (pages > MAX_PAGES - total)
			continue; /* a large reservation, not worth learning */
		learned->ranges[learned->range_count].start = start;
		learned->ranges[learned->range_count].pages = pages;
		learned->ranges[learned->range_count].first = total;
		learned->range_count++;
		total += pages;
	}
	fclose(maps);
}

/*
 * In a child, at its exit (the first LEARN_FROM children only): marks the zygote's pages this child had made its
 * own, read from /proc/self/pagemap (bit 63 present, bit 56 mapped by this process alone).
 */
static void learn_at_exit(void)
{
	if (atomic_fetch_add(&learned->reports, 1) >= LEARN_FROM)
		return;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	uint64_t entries[512];
	for (int r = 0; r < learned->range_count; r++) {
		uintptr_t start = learned->ranges[r].start;
		uint32_t pages = learned->ranges[r].pages, first = learned->ranges[r].first;
		for (uint32_t done = 0; done < pages;) {
			uint32_t count = pages - done < 512 ? pages - done : 512;
			off_t at = (off_t)((start / (uintptr_t)page_size + done) * sizeof entries[0]);
			if (pread(fd, entries, count * sizeof entries[0], at) != (ssize_t)(count * sizeof entries[0]))
				break;
			for (uint32_t i = 0; i < count; i++)
				if ((entries[i] >> 63) & (entries[i] >> 56) & 1) {
					uint32_t bit = first + done + i;
					atomic_fetch_or(&learned->bits[bit / 64], (uint_fast64_t)1 << (bit % 64));
				}
			done += count;
		}
	}
	close(fd);
}

/* Copies the pages QEMU is known to write now, so that it does not fault on each of them later (~11 us a fault here). */
void zygote_pages_populate(void)
{
	if (!learned)
		return;
	for (int r = 0; r < learned->range_count; r++) {
		uintptr_t start = learned->ranges[r].start;
		uint32_t pages = learned->ranges[r].pages, first = learned->ranges[r].first, run = 0;
		for (uint32_t i = 0; i <= pages; i++) {
			bool set = i < pages && ((atomic_load_explicit(&learned->bits[(first + i) / 64], memory_order_relaxed) >> ((first + i) % 64)) & 1);
			if (set) {
				run++;
			} else if (run) {
				/* Fails harmlessly (EINVAL on an old kernel, ENOMEM where the zygote unmapped since). */
				madvise((void *)(start + (uintptr_t)(i - run) * (uintptr_t)page_size), (size_t)run * (size_t)page_size, MADV_POPULATE_WRITE);
				run = 0;
			}
		}
	}
}

void zygote_pages_learn_at_exit(void)
{
	if (learned && atomic_load(&learned->reports) < LEARN_FROM)
		atexit(learn_at_exit);
}

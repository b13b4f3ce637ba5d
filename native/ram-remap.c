/*
 * Lets a QEMU started ahead of need (a standby machine, src/qemu/standby-machines.ts) be given a snapshot's RAM after
 * it started: with EVOLVM_RAM_REMAP=SOCKET_PATH in its environment, a thread of the QEMU process listens there for
 * one request, `PLACEHOLDER_PATH\tIMAGE_PATH\n`, maps IMAGE_PATH privately over the mapping of PLACEHOLDER_PATH
 * (guest RAM, a memory-backend-file with share=off) at the same address, and answers `ok\n` or `error TEXT\n`.
 *
 * Why in QEMU's process: no QMP command replaces a RAM block's file once the machine exists, and what a restore
 * spends starting QEMU (20-35 ms to an answered QMP here) is off its path when that QEMU was started beforehand.
 * The same address keeps every pointer QEMU holds into guest RAM valid. Safe only before the device state is
 * loaded: no vCPU has run and QEMU has written nothing to RAM (an incoming QEMU skips its ROM reset).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "quiet-thread.h"
#include "ram-remap.h"

#define REQUEST_MAX 8192

/* An error message longer than its buffer is cut there, on purpose. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/*
 * The mapping of `path` in this process (start and length): one range, which the kernel may list as several
 * adjacent entries; false when there is none or it has gaps.
 */
static bool find_mapping(const char *path, uintptr_t *start, size_t *length)
{
	FILE *maps = fopen("/proc/self/maps", "re");
	if (!maps)
		return false;
	char line[REQUEST_MAX + 256];
	unsigned long lowest = 0, highest = 0, total = 0;
	while (fgets(line, sizeof line, maps)) {
		unsigned long from, to;
		int name_at = 0;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &from, &to, &name_at) < 2 || name_at == 0)
			continue;
		char *name = line + name_at;
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, path) != 0)
			continue;
		if (total == 0 || from < lowest)
			lowest = from;
		if (to > highest)
			highest = to;
		total += to - from;
	}
	fclose(maps);
	if (total == 0 || total != highest - lowest)
		return false;
	*start = lowest;
	*length = total;
	return true;
}

/* Maps `image` over the mapping of `placeholder`; a message in `error` when it cannot. */
static bool remap(const char *placeholder, const char *image, char *error, size_t error_size)
{
	uintptr_t start;
	size_t length;
	if (!find_mapping(placeholder, &start, &length)) {
		snprintf(error, error_size, "no mapping (or one with gaps) of %s", placeholder);
		return false;
	}
	int fd = open(image, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		snprintf(error, error_size, "open %s: %s", image, strerror(errno));
		if (fd >= 0)
			close(fd);
		return false;
	}
	if ((uint64_t)st.st_size < length) {
		snprintf(error, error_size, "%s holds %lld bytes, RAM is %zu", image, (long long)st.st_size, length);
		close(fd);
		return false;
	}
	void *at = mmap((void *)start, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0);
	int saved = errno;
	close(fd);
	if (at == MAP_FAILED) {
		/* MAP_FIXED failing leaves the old mapping in place (the kernel unmaps only once the new one can be made). */
		snprintf(error, error_size, "mmap %s: %s", image, strerror(saved));
		return false;
	}
	/* What QEMU advises on every RAM block it maps (ram_block_add), which a new mapping does not inherit. */
	madvise(at, length, MADV_DONTFORK);
	madvise(at, length, MADV_HUGEPAGE);
	return true;
}

static void serve_one(int listener)
{
	int peer = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	if (peer < 0)
		return;
	char request[REQUEST_MAX + 1];
	size_t have = 0;
	char *newline = NULL;
	while (have < REQUEST_MAX && !newline) {
		ssize_t got = read(peer, request + have, REQUEST_MAX - have);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		have += (size_t)got;
		request[have] = '\0';
		newline = memchr(request, '\n', have);
	}
	char reply[REQUEST_MAX + 64] = "error malformed request\n";
	char *tab = newline ? memchr(request, '\t', (size_t)(newline - request)) : NULL;
	if (tab) {
		*tab = '\0';
		*newline = '\0';
		char error[REQUEST_MAX];
		if (remap(request, tab + 1, error, sizeof error))
			strcpy(reply, "ok\n");
		else
			snprintf(reply, sizeof reply, "error %s\n", error);
	}
	ssize_t ignored = write(peer, reply, strlen(reply));
	(void)ignored;
	close(peer);
}

static char socket_path[sizeof ((struct sockaddr_un *)0)->sun_path];

static void *listen_thread(void *arg)
{
	int listener = (int)(intptr_t)arg;
	serve_one(listener);
	close(listener);
	/* Gone: the standby is bound (idle-malloc-trim.c trims again from now on). */
	unlink(socket_path);
	return NULL;
}

void ram_remap_listen_if_asked(void)
{
	const char *path = getenv("EVOLVM_RAM_REMAP");
	if (!path || !*path)
		return;
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof address.sun_path)
		return;
	strcpy(address.sun_path, path);
	strcpy(socket_path, path);
	int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0)
		return;
	if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0) {
		close(listener);
		return;
	}
	if (!start_quiet_thread(listen_thread, (void *)(intptr_t)listener)) {
		close(listener);
		unlink(path);
	}
}

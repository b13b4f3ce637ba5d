/*
 * Preloaded into QEMU (LD_PRELOAD, see qemuEnvironment in src/qemu/qemu-process.ts): QEMU's malloc_trim calls
 * are put off until QEMU has been quiet for QUIET_MS, then done once, by a thread of this shim.
 *
 * QEMU's RCU thread calls malloc_trim() after every batch of RCU callbacks, which hands every free page of every
 * malloc arena back to the kernel (MADV_DONTNEED; with the heap on transparent huge pages it splits them first).
 * During a snapshot load or a restore that happens many times, and each time the next allocations fault the
 * pages straight back in: on a 2-core VM host, page faults and TLB shootdowns were a fifth of QEMU's main thread
 * in a devolve, and the snapshot-load job took 23 ms instead of 10 (bench/RESULTS.md). Trimming only once QEMU
 * is idle keeps what trimming is for: an idle QEMU holds no more memory than before.
 *
 * Why 100 ms: longer than the gaps between RCU batches inside one operation and between the devolves of a hot-swap
 * loop, so none of those trims; shorter than the guest work that usually separates one snapshot operation from
 * the next, so the trim lands there rather than in the middle of the next load (200 ms put it in the devolve
 * that follows an evolve: that devolve's job went 10-18 -> 25-35 ms).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "quiet-thread.h"

#define QUIET_MS 100

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static long long requested_at; /* CLOCK_MONOTONIC ms of the latest call not yet served; 0 when none */
static size_t requested_pad;
static int trimmer_started;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 + 1; /* never 0 */
}

/*
 * A standby machine (src/qemu/standby-machines.ts) waits, idle, for a snapshot: trimming then would hand back the heap
 * its start-up left free, which its restore faults straight back in (the device-state load took 16-20 ms instead of
 * 9-10 in standbys that had waited 300 ms). It waits while its remap socket (EVOLVM_RAM_REMAP, see ram-remap.c)
 * exists; the remap removes it.
 */
static int standby_waiting(void)
{
	const char *remap = getenv("EVOLVM_RAM_REMAP");
	return remap && *remap && access(remap, F_OK) == 0;
}

static void *trimmer(void *unused)
{
	(void)unused;
	int (*real_trim)(size_t) = (int (*)(size_t))dlsym(RTLD_NEXT, "malloc_trim");
	pthread_mutex_lock(&lock);
	for (;;) {
		while (requested_at == 0)
			pthread_cond_wait(&wake, &lock);
		long long wait = requested_at + QUIET_MS - now_ms();
		if (wait > 0) {
			pthread_mutex_unlock(&lock);
			struct timespec ts = { .tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000 };
			nanosleep(&ts, NULL);
			pthread_mutex_lock(&lock);
			continue;
		}
		size_t pad = requested_pad;
		requested_at = 0;
		pthread_mutex_unlock(&lock);
		/* Dropped, not put off: the restore that binds the standby asks for trims of its own. */
		if (real_trim && !standby_waiting())
			real_trim(pad);
		pthread_mutex_lock(&lock);
	}
	return NULL;
}

/*
 * A forked child has no trimmer thread, whatever its parent had: the QEMU zygote (qemu-zygote.c) forks every QEMU
 * from a process that may have started one. The lock is held across the fork, so the child's copy is consistent.
 */
static void before_fork(void)
{
	pthread_mutex_lock(&lock);
}

static void after_fork_in_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void after_fork_in_child(void)
{
	trimmer_started = 0;
	requested_at = 0;
	pthread_cond_init(&wake, NULL);
	pthread_mutex_unlock(&lock);
}

__attribute__((constructor)) static void watch_forks(void)
{
	pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

int malloc_trim(size_t pad)
{
	pthread_mutex_lock(&lock);
	requested_at = now_ms();
	requested_pad = pad;
	if (!trimmer_started) {
		/* If it cannot start, nothing is trimmed until a later call starts it: slower memory return, no harm. */
		trimmer_started = start_quiet_thread(trimmer, NULL);
	} else {
		pthread_cond_signal(&wake);
	}
	pthread_mutex_unlock(&lock);
	return 0;
}

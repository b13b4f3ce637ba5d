/* See quiet-thread.h. */
#include <pthread.h>
#include <signal.h>
#include "quiet-thread.h"

/* The helpers need little stack; the default (8 MiB of address space) is much more than they use. */
#define STACK_BYTES (256 * 1024)

bool start_quiet_thread(void *(*run)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t thread;
	pthread_attr_t attributes;
	pthread_attr_init(&attributes);
	pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attributes, STACK_BYTES);
	bool started = pthread_create(&thread, &attributes, run, arg) == 0;
	pthread_attr_destroy(&attributes);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return started;
}

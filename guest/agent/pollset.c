/* The fds polled in one loop iteration, each with the handler for its events. */
#include <errno.h>
#include <stdlib.h>
#include "agent.h"

struct handler {
	poll_fn fn;
	void *ctx;
	int tag;
};

static struct pollfd *fds;
static struct handler *hs;
static size_t n, cap;

void ps_reset(void) { n = 0; }

void ps_add(int fd, short events, poll_fn fn, void *ctx, int tag)
{
	if (n == cap) {
		cap = cap ? cap * 2 : 64;
		fds = realloc(fds, cap * sizeof *fds);
		hs = realloc(hs, cap * sizeof *hs);
		if (!fds || !hs) {
			logmsg("out of memory");
			abort();
		}
	}
	fds[n] = (struct pollfd){ .fd = fd, .events = events };
	hs[n] = (struct handler){ fn, ctx, tag };
	n++;
}

int ps_poll(int timeout_ms)
{
	int r = poll(fds, n, timeout_ms);
	if (r < 0) {
		if (errno != EINTR) {
			logmsg("poll: %m");
			abort();
		}
		for (size_t i = 0; i < n; i++)
			fds[i].revents = 0;
	}
	return r;
}

/* Handlers must not free a ctx that a later entry may still name; jobs end in their tick. */
void ps_dispatch(void)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i].revents)
			hs[i].fn(hs[i].ctx, hs[i].tag, fds[i].revents);
}

/* Console logging, the monotonic clock, and allocation that logs and aborts when memory runs out. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "agent.h"

void logmsg(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	fprintf(stderr, "evolvm-agent: %s\n", buf);
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		logmsg("out of memory (%zu bytes)", n);
		abort();
	}
	return p;
}

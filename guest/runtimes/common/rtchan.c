/* The runtime side of the agent <-> runtime channel; see rtchan.h. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <msgpuck.h>
#include "rtchan.h"

static char log_name[64] = "evolvm-rt";
static uint64_t next_call;

void rt_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	dprintf(2, "%s: %s\n", log_name, buf);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		rt_log("out of memory (%zu bytes)", n);
		abort();
	}
	return p;
}

/* Room for n more bytes, or NULL once the frame is past the bound. */
static char *reserve(struct mpb *b, size_t n)
{
	if (b->overflow)
		return NULL;
	if (b->len + n > 4 + (size_t)RT_MAX_FRAME) {
		b->overflow = true;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t ncap = b->cap ? b->cap : 4096;
		while (ncap < b->len + n)
			ncap *= 2;
		b->p = xrealloc(b->p, ncap);
		b->cap = ncap;
	}
	return b->p + b->len;
}

#define ENCODE(b, max, expr)                          \
	do {                                          \
		char *p_ = reserve((b), (max));       \
		if (p_)                               \
			(b)->len = (size_t)((expr) - (b)->p); \
	} while (0)

void mpb_frame(struct mpb *b)
{
	b->len = 0;
	b->overflow = false;
	reserve(b, 4);
	b->len = 4;
}
void mpb_map(struct mpb *b, uint32_t n) { ENCODE(b, 5, mp_encode_map(p_, n)); }
void mpb_array(struct mpb *b, uint32_t n) { ENCODE(b, 5, mp_encode_array(p_, n)); }
void mpb_strn(struct mpb *b, const char *s, uint32_t len) { ENCODE(b, 5 + (size_t)len, mp_encode_str(p_, s, len)); }
void mpb_str(struct mpb *b, const char *s) { mpb_strn(b, s, (uint32_t)strlen(s)); }
void mpb_bin(struct mpb *b, const void *d, uint32_t len) { ENCODE(b, 5 + (size_t)len, mp_encode_bin(p_, d, len)); }
void mpb_uint(struct mpb *b, uint64_t v) { ENCODE(b, 9, mp_encode_uint(p_, v)); }
void mpb_int(struct mpb *b, int64_t v) { ENCODE(b, 9, v >= 0 ? mp_encode_uint(p_, (uint64_t)v) : mp_encode_int(p_, v)); }
void mpb_float(struct mpb *b, float v) { ENCODE(b, 5, mp_encode_float(p_, v)); }
void mpb_double(struct mpb *b, double v) { ENCODE(b, 9, mp_encode_double(p_, v)); }
void mpb_bool(struct mpb *b, bool v) { ENCODE(b, 1, mp_encode_bool(p_, v)); }
void mpb_nil(struct mpb *b) { ENCODE(b, 1, mp_encode_nil(p_)); }

void mpb_raw(struct mpb *b, const char *d, size_t n)
{
	char *p = reserve(b, n);
	if (p) {
		memcpy(p, d, n);
		b->len += n;
	}
}

/* A channel the runtime is served on: the agent's (stdin/stdout), and optionally the host's direct virtio
 * port (EVOLVM_RT_DIRECT_FD, see RUNTIMES.md). Each has its own input buffer: in[in_off..in_len) read and not
 * yet taken. Reads take what is there (up to the buffer's room), so a frame usually costs one read(). */
struct chan {
	const char *what;
	int in_fd, out_fd;
	bool direct;
	char *in;
	size_t in_off, in_len, in_cap;
};
static struct chan agent_chan = { .what = "the agent", .in_fd = -1, .out_fd = -1 };
static struct chan direct_chan = { .what = "the host", .in_fd = -1, .out_fd = -1, .direct = true };
/* The channel of the request being served: replies and host calls go back on it. */
static struct chan *cur = &agent_chan;
#define IN_MIN (64u << 10)
/* How long to wait on the agent alone while the host is not connected to the direct port (it reconnects
 * after a snapshot load that may have left stale bytes in its socket). */
#define DIRECT_HUP_BACKOFF_MS 5

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(cur->out_fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (cur->direct) {
				/* The host went away mid-reply: that request is lost to it anyway. */
				rt_log("writing to the host: %s; reply dropped", strerror(errno));
				return;
			}
			rt_log("writing to the agent: %s; exiting", strerror(errno));
			_exit(1);
		}
		p += w;
		n -= (size_t)w;
	}
}

int rt_send(struct mpb *b)
{
	if (b->overflow || b->len <= 4)
		return -1;
	uint32_t n = (uint32_t)(b->len - 4);
	unsigned char *h = (unsigned char *)b->p;
	h[0] = n >> 24; h[1] = n >> 16; h[2] = n >> 8; h[3] = n;
	write_all(b->p, b->len);
	return 0;
}

static size_t buffered(const struct chan *c)
{
	return c->in_len - c->in_off;
}

/* Whether c holds a whole frame; exits on a bad length (the stream cannot be trusted after it). */
static bool has_frame(struct chan *c)
{
	if (buffered(c) < 4)
		return false;
	const unsigned char *h = (const unsigned char *)c->in + c->in_off;
	uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
	if (n == 0 || n > RT_MAX_FRAME) {
		rt_log("bad frame length %u from %s; exiting", n, c->what);
		_exit(1);
	}
	return buffered(c) >= 4 + (size_t)n;
}

/* One read into c's buffer: 1 when bytes came, 0 at EOF (or, for the direct port, while the host is not
 * connected). Exits on the agent's EOF inside a frame or a read error. */
static int fill(struct chan *c)
{
	if (c->in_off > 0) {
		memmove(c->in, c->in + c->in_off, buffered(c));
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	size_t want = IN_MIN;
	if (c->in_len >= 4) {
		const unsigned char *h = (const unsigned char *)c->in;
		want = 4 + ((size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3]);
	}
	if (c->in_cap < want || c->in_cap < IN_MIN) {
		c->in_cap = want > IN_MIN ? want : IN_MIN;
		c->in = xrealloc(c->in, c->in_cap);
	}
	for (;;) {
		ssize_t r = read(c->in_fd, c->in + c->in_len, c->in_cap - c->in_len);
		if (r > 0) {
			c->in_len += (size_t)r;
			return 1;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (c->direct)
			return 0;
		if (r == 0 && c->in_len == 0)
			return 0;
		rt_log("reading from the agent: %s; exiting", r == 0 ? "EOF inside a frame" : strerror(errno));
		_exit(1);
	}
}

/* Takes c's next frame (has_frame(c) must hold) as a malloc'd, checked msgpack map. */
static char *take(struct chan *c)
{
	const unsigned char *h = (const unsigned char *)c->in + c->in_off;
	uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
	char *f = xrealloc(NULL, n);
	memcpy(f, c->in + c->in_off + 4, n);
	c->in_off += 4 + (size_t)n;
	/* a large frame's buffer is not kept */
	if (c->in_off == c->in_len && c->in_cap > IN_MIN) {
		free(c->in);
		c->in = NULL;
		c->in_off = c->in_len = c->in_cap = 0;
	}
	const char *q = f;
	if (mp_check(&q, f + n) != 0 || q != f + n || mp_typeof(*f) != MP_MAP) {
		rt_log("a frame from %s is not one msgpack map; exiting", c->what);
		_exit(1);
	}
	return f;
}

/* Blocks until `only` (or, when NULL, either channel) has a whole frame, and takes it; NULL at the agent's
 * EOF. The channel it came from becomes the current one. */
static char *recv_from(struct chan *only)
{
	for (;;) {
		struct chan *order[2] = { &direct_chan, &agent_chan };
		for (int i = 0; i < 2; i++) {
			struct chan *c = order[i];
			if (c->in_fd >= 0 && (!only || only == c) && has_frame(c)) {
				cur = c;
				return take(c);
			}
		}
		struct pollfd p[2];
		struct chan *pc[2];
		int np = 0;
		if (!only || only == &agent_chan) {
			p[np] = (struct pollfd){ .fd = agent_chan.in_fd, .events = POLLIN };
			pc[np++] = &agent_chan;
		}
		if (direct_chan.in_fd >= 0 && (!only || only == &direct_chan)) {
			p[np] = (struct pollfd){ .fd = direct_chan.in_fd, .events = POLLIN };
			pc[np++] = &direct_chan;
		}
		if (poll(p, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			rt_log("poll: %s; exiting", strerror(errno));
			_exit(1);
		}
		bool hup = false;
		for (int i = 0; i < np; i++) {
			if (!p[i].revents)
				continue;
			if (fill(pc[i]) > 0)
				continue;
			if (!pc[i]->direct)
				return NULL; /* the agent is gone (a frame cut short exited in fill) */
			hup = true;
		}
		/* The direct port reports hang-up while the host is not connected: wait on the agent alone a
		 * little rather than spin. */
		if (hup) {
			struct pollfd a = { .fd = agent_chan.in_fd, .events = POLLIN };
			if (only != &direct_chan && poll(&a, 1, DIRECT_HUP_BACKOFF_MS) > 0 && fill(&agent_chan) == 0)
				return NULL;
			if (only == &direct_chan)
				poll(NULL, 0, DIRECT_HUP_BACKOFF_MS);
		}
	}
}

/* Requests that arrived on a channel while a host call on it waited for its answer: served next, in order.
 * The host may send several requests at once on the direct port (the agent queues its own). */
struct held {
	struct held *next;
	struct chan *chan;
	char *frame;
};
static struct held *held_head, **held_tail = &held_head;
static unsigned held_count;
#define HELD_MAX 4096

char *rt_recv(void)
{
	struct held *h = held_head;
	if (h) {
		held_head = h->next;
		if (!held_head)
			held_tail = &held_head;
		held_count--;
		char *f = h->frame;
		cur = h->chan;
		free(h);
		return f;
	}
	return recv_from(NULL);
}

/* Keeps a request for after the host call in progress; false when too many are held already. */
static bool hold(struct chan *c, char *f)
{
	if (held_count >= HELD_MAX)
		return false;
	struct held *h = xrealloc(NULL, sizeof *h);
	*h = (struct held){ .chan = c, .frame = f };
	*held_tail = h;
	held_tail = &h->next;
	held_count++;
	return true;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* Maps every page of the runtime's own file-backed mappings (its code and data) now, before the stage
 * "runtime loaded" is snapshotted. Otherwise each restore of that snapshot (a devolve, a warm start)
 * loses the pages first touched after it, and the next load reads them again from the squashfs map:
 * LZ4 and block I/O, which under TCG cost more than the load itself. Best effort: a failure only costs speed. */
static void make_resident(void)
{
	FILE *maps = fopen("/proc/self/maps", "re");
	if (!maps)
		return;
	char line[512];
	while (fgets(line, sizeof line, maps)) {
		unsigned long start, end;
		char path[256] = "";
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %255s", &start, &end, path) < 2 || path[0] != '/')
			continue;
		if (madvise((void *)start, end - start, MADV_POPULATE_READ) != 0)
			rt_log("populate %lx-%lx %s: %s", start, end, path, strerror(errno));
	}
	fclose(maps);
	/* The same for the heap: a load after a restore would otherwise grow it with brk and fault in every new
	 * page (kernel work that runs on a flushed translation cache under TCG). Keep allocations below 4 MiB on the
	 * heap, give back no less than 8 MiB at a time (so the 3 MiB made here stay), and touch 2 MiB of it now; the
	 * pages stay zero, so snapshots skip them. */
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	mallopt(M_TRIM_THRESHOLD, 8 << 20);
	mallopt(M_TOP_PAD, 1 << 20);
	/* One volatile store a page: the compiler would turn malloc + memset into calloc, which skips fresh heap. */
	volatile char *heap = malloc(2 << 20);
	for (size_t i = 0; heap && i < (2u << 20); i += 4096)
		heap[i] = 0;
	free((void *)heap);
}

void rt_init(const char *name, const char *version)
{
	snprintf(log_name, sizeof log_name, "evolvm-rt-%s", name);
	make_resident();
	/* The channel gets private fds; fd 0 becomes /dev/null and fd 1 the console, so that nothing
	 * else in the process can read or write a frame by accident. */
	agent_chan.in_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
	agent_chan.out_fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
	if (agent_chan.in_fd < 0 || agent_chan.out_fd < 0) {
		rt_log("dup: %s", strerror(errno));
		_exit(1);
	}
	const char *direct = getenv("EVOLVM_RT_DIRECT_FD");
	if (direct) {
		int fd = atoi(direct);
		if (fd > 2 && fcntl(fd, F_SETFD, FD_CLOEXEC) == 0)
			direct_chan.in_fd = direct_chan.out_fd = fd;
		else
			rt_log("EVOLVM_RT_DIRECT_FD=%s is not an open fd; serving the agent only", direct);
		unsetenv("EVOLVM_RT_DIRECT_FD");
	}
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0) {
		dup2(null, 0);
		if (null != 0)
			close(null);
	}
	dup2(2, 1);
	cur = &agent_chan;
	struct mpb b = { 0 };
	mpb_frame(&b);
	mpb_map(&b, 3);
	mpb_str(&b, "t"); mpb_str(&b, "ready");
	mpb_str(&b, "name"); mpb_str(&b, name);
	mpb_str(&b, "version"); mpb_str(&b, version);
	rt_send(&b);
	free(b.p);
}

void rt_res_begin(struct mpb *b, uint64_t id)
{
	mpb_frame(b);
	mpb_map(b, 4);
	mpb_str(b, "t"); mpb_str(b, "res");
	mpb_str(b, "id"); mpb_uint(b, id);
	mpb_str(b, "ok"); mpb_bool(b, true);
	mpb_str(b, "v");
}

void rt_res_send(struct mpb *b, uint64_t id)
{
	if (rt_send(b) < 0)
		rt_res_err(id, "TOO_LARGE", "the reply does not fit in a %u-byte frame", RT_MAX_FRAME);
}

void rt_res_err(uint64_t id, const char *code, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct mpb b = { 0 };
	mpb_frame(&b);
	mpb_map(&b, 4);
	mpb_str(&b, "t"); mpb_str(&b, "res");
	mpb_str(&b, "id"); mpb_uint(&b, id);
	mpb_str(&b, "ok"); mpb_bool(&b, false);
	mpb_str(&b, "e"); mpb_map(&b, 2);
	mpb_str(&b, "code"); mpb_str(&b, code);
	mpb_str(&b, "msg"); mpb_str(&b, msg);
	rt_send(&b);
	free(b.p);
}

uint64_t rt_hostcall_begin(struct mpb *b, uint64_t req_id, const char *fn)
{
	uint64_t call = ++next_call;
	mpb_frame(b);
	mpb_map(b, 5);
	mpb_str(b, "t"); mpb_str(b, "hostcall");
	mpb_str(b, "id"); mpb_uint(b, req_id);
	mpb_str(b, "call"); mpb_uint(b, call);
	mpb_str(b, "fn"); mpb_str(b, fn);
	mpb_str(b, "args");
	return call;
}

char *rt_hostcall_wait(struct mpb *b, uint64_t call, const char **err)
{
	if (rt_send(b) < 0) {
		*err = "the host function's arguments do not fit in a frame";
		return NULL;
	}
	/* The answer comes on the channel the request came from; the other one's frames wait in its buffer. */
	struct chan *c = cur;
	for (;;) {
		char *f = recv_from(c);
		if (!f) {
			*err = "the agent went away during a host call";
			return NULL;
		}
		uint64_t n;
		if (mp_str_eq(mp_find(f, "t"), "hostret") && mp_get_uint(mp_find(f, "call"), &n) && n == call) {
			cur = c;
			return f;
		}
		if (mp_str_eq(mp_find(f, "t"), "req") && hold(c, f))
			continue;
		rt_log("dropping an unexpected frame while waiting for host call %llu", (unsigned long long)call);
		free(f);
	}
}


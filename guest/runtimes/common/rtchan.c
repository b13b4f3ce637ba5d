/* The runtime side of the agent <-> runtime channel; see rtchan.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <msgpuck.h>
#include "rtchan.h"

static int chan_in = -1, chan_out = -1;
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

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(chan_out, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
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

/* Bytes read from the agent and not yet taken: in[in_off..in_len). Reads take what is there (up to the
 * buffer's room), so a frame usually costs one read() rather than one for its length and one for its body. */
static char *in;
static size_t in_off, in_len, in_cap;
#define IN_MIN (64u << 10)

/* Has at least n bytes buffered (n <= 4 + RT_MAX_FRAME); false at EOF before any byte of a frame, exits on
 * EOF inside one. */
static bool buffer(size_t n)
{
	if (in_len - in_off >= n)
		return true;
	if (in_off > 0) {
		memmove(in, in + in_off, in_len - in_off);
		in_len -= in_off;
		in_off = 0;
	}
	if (in_cap < n || in_cap < IN_MIN) {
		in_cap = n > IN_MIN ? n : IN_MIN;
		in = xrealloc(in, in_cap);
	}
	while (in_len < n) {
		ssize_t r = read(chan_in, in + in_len, in_cap - in_len);
		if (r > 0) {
			in_len += (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0 && in_len == 0)
			return false;
		rt_log("reading from the agent: %s; exiting", r == 0 ? "EOF inside a frame" : strerror(errno));
		_exit(1);
	}
	return true;
}

char *rt_recv(void)
{
	if (!buffer(4))
		return NULL;
	const unsigned char *h = (const unsigned char *)in + in_off;
	uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
	if (n == 0 || n > RT_MAX_FRAME) {
		rt_log("bad frame length %u from the agent; exiting", n);
		_exit(1);
	}
	buffer(4 + (size_t)n);
	char *f = xrealloc(NULL, n);
	memcpy(f, in + in_off + 4, n);
	in_off += 4 + (size_t)n;
	/* a large frame's buffer is not kept */
	if (in_off == in_len && in_cap > IN_MIN) {
		free(in);
		in = NULL;
		in_off = in_len = in_cap = 0;
	}
	const char *q = f;
	if (mp_check(&q, f + n) != 0 || q != f + n || mp_typeof(*f) != MP_MAP) {
		rt_log("a frame from the agent is not one msgpack map; exiting");
		_exit(1);
	}
	return f;
}

void rt_init(const char *name, const char *version)
{
	snprintf(log_name, sizeof log_name, "evolvm-rt-%s", name);
	/* The channel gets private fds; fd 0 becomes /dev/null and fd 1 the console, so that nothing
	 * else in the process can read or write a frame by accident. */
	chan_in = fcntl(0, F_DUPFD_CLOEXEC, 3);
	chan_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
	if (chan_in < 0 || chan_out < 0) {
		rt_log("dup: %s", strerror(errno));
		_exit(1);
	}
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0) {
		dup2(null, 0);
		if (null != 0)
			close(null);
	}
	dup2(2, 1);
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
	for (;;) {
		char *f = rt_recv();
		if (!f) {
			*err = "the agent went away during a host call";
			return NULL;
		}
		uint64_t c;
		if (mp_str_eq(mp_find(f, "t"), "hostret") && mp_get_uint(mp_find(f, "call"), &c) && c == call)
			return f;
		/* The agent sends one request at a time, so nothing else should come while a call waits. */
		rt_log("dropping an unexpected frame while waiting for host call %llu", (unsigned long long)call);
		free(f);
	}
}


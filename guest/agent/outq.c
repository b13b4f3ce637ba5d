/*
 * The output queue: frames are encoded straight into one contiguous buffer and
 * written to the (non-blocking) port as the host takes them. Frame boundaries are
 * remembered so that a frame cut off by a host disconnect can be dropped: the next
 * connection must start on a frame boundary.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

static char *buf;
static size_t head, tail, cap;  /* unsent bytes are buf[head..tail) */
static uint64_t sent;           /* stream offset of buf[head] */
static size_t frame_start;      /* offset in buf of the frame being encoded */

static uint64_t *ends;          /* stream offsets where queued frames end */
static size_t ends_head, ends_tail, ends_cap;
static uint64_t front_start;    /* stream offset where the oldest queued frame starts */

static char *reserve(size_t n)
{
	if (tail + n > cap) {
		if (head > 0) {
			/* the frame being encoded moves with the data */
			memmove(buf, buf + head, tail - head);
			frame_start -= head;
			tail -= head;
			head = 0;
		}
		if (tail + n > cap) {
			size_t ncap = cap ? cap : 65536;
			while (ncap < tail + n)
				ncap *= 2;
			buf = xrealloc(buf, ncap);
			cap = ncap;
		}
	}
	return buf + tail;
}

void oq_begin(void)
{
	reserve(4);
	frame_start = tail;
	tail += 4;
}

void oq_end(void)
{
	uint32_t n = (uint32_t)(tail - frame_start - 4);
	unsigned char *p = (unsigned char *)buf + frame_start;
	p[0] = n >> 24; p[1] = n >> 16; p[2] = n >> 8; p[3] = n;
	if (ends_tail == ends_cap) {
		if (ends_head > 0) {
			memmove(ends, ends + ends_head, (ends_tail - ends_head) * sizeof *ends);
			ends_tail -= ends_head;
			ends_head = 0;
		}
		if (ends_tail == ends_cap) {
			ends_cap = ends_cap ? ends_cap * 2 : 256;
			ends = xrealloc(ends, ends_cap * sizeof *ends);
		}
	}
	ends[ends_tail++] = sent + (tail - head);
}

/* reserve() may move buf, so it runs in its own statement before buf is read. */
void oq_map(uint32_t n) { char *p = reserve(5); tail = mp_encode_map(p, n) - buf; }
void oq_array(uint32_t n) { char *p = reserve(5); tail = mp_encode_array(p, n) - buf; }
void oq_uint(uint64_t v) { char *p = reserve(9); tail = mp_encode_uint(p, v) - buf; }
void oq_bool(bool v) { char *p = reserve(1); tail = mp_encode_bool(p, v) - buf; }
void oq_strn(const char *s, uint32_t len) { char *p = reserve(5 + (size_t)len); tail = mp_encode_str(p, s, len) - buf; }
void oq_str(const char *s) { oq_strn(s, (uint32_t)strlen(s)); }
void oq_bin(const void *d, uint32_t len) { char *p = reserve(5 + (size_t)len); tail = mp_encode_bin(p, d, len) - buf; }

void oq_raw(const void *d, size_t len)
{
	char *p = reserve(len);
	memcpy(p, d, len);
	tail += len;
}

void oq_int(int64_t v)
{
	char *p = reserve(9);
	tail = (v >= 0 ? mp_encode_uint(p, (uint64_t)v) : mp_encode_int(p, v)) - buf;
}

size_t oq_pending(void) { return tail - head; }

static void advance(size_t n)
{
	head += n;
	sent += n;
	while (ends_head < ends_tail && ends[ends_head] <= sent)
		front_start = ends[ends_head++];
	if (head == tail)
		head = tail = 0;
}

/* Writes what the port takes. Returns 0, or -1 with errno set on a real error. */
int oq_flush(int fd)
{
	while (head < tail) {
		/* virtio_console takes at most 32 KiB per write */
		ssize_t n = write(fd, buf + head, tail - head);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return -1;
		}
		advance((size_t)n);
	}
	return 0;
}

void oq_drop_partial(void)
{
	if (ends_head < ends_tail && sent > front_start)
		advance((size_t)(ends[ends_head] - sent));
}

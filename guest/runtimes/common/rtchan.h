/*
 * The runtime side of the agent <-> runtime channel (see ../../RUNTIMES.md): framed msgpack maps
 * on the runtime's stdin/stdout, a buffer to encode frames into, and helpers to read validated maps.
 * Shared by every runtime; single-threaded and blocking.
 */
#ifndef EVOLVM_RTCHAN_H
#define EVOLVM_RTCHAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/mpread.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RT_MAX_FRAME (16u << 20)
/* Nesting bound for values converted to and from msgpack. */
#define RT_MAX_DEPTH 128

/* A frame being encoded: 4 bytes for the length, then the msgpack body. Past RT_MAX_FRAME it
 * stops growing and sets overflow (rt_send then refuses it). */
struct mpb {
	char *p;
	size_t len, cap;
	bool overflow;
};

void mpb_frame(struct mpb *b); /* starts a new frame (drops what was in b) */
void mpb_map(struct mpb *b, uint32_t n);
void mpb_array(struct mpb *b, uint32_t n);
void mpb_str(struct mpb *b, const char *s);
void mpb_strn(struct mpb *b, const char *s, uint32_t len);
void mpb_bin(struct mpb *b, const void *d, uint32_t len);
void mpb_uint(struct mpb *b, uint64_t v);
void mpb_int(struct mpb *b, int64_t v); /* non-negative values go out as uint */
void mpb_float(struct mpb *b, float v);
void mpb_double(struct mpb *b, double v);
void mpb_bool(struct mpb *b, bool v);
void mpb_nil(struct mpb *b);
void mpb_raw(struct mpb *b, const char *p, size_t n);

/* Takes over stdin/stdout as the channel (stray stdout writes then go to stderr) and says ready. */
void rt_init(const char *name, const char *version);
/* Sends b's frame; -1 (nothing sent) when it is over RT_MAX_FRAME. Exits when the agent is gone. */
int rt_send(struct mpb *b);
/* Blocks for the next frame, one msgpack map (malloc'd; the caller frees it). NULL at EOF. A frame that
 * is not one map, or has a bad length, ends the runtime: the stream cannot be trusted after it. */
char *rt_recv(void);

/* Replies to request id. rt_res_begin writes {t, id, ok: true, v: }; the caller appends v and calls
 * rt_res_send, which sends TOO_LARGE instead when the reply does not fit in a frame. */
void rt_res_begin(struct mpb *b, uint64_t id);
void rt_res_send(struct mpb *b, uint64_t id);
void rt_res_err(uint64_t id, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Host functions: rt_hostcall_begin writes {t: "hostcall", id, call, fn, args: } and returns the call
 * number; the caller appends the args array and calls rt_hostcall_wait, which sends the frame and blocks
 * for the matching hostret map (malloc'd; the caller frees it). NULL when the agent went away or the call
 * did not fit in a frame (then *err is set to a static message). */
uint64_t rt_hostcall_begin(struct mpb *b, uint64_t req_id, const char *fn);
char *rt_hostcall_wait(struct mpb *b, uint64_t call, const char **err);

/* Reading a map that rt_recv validated: ../../common/mpread.h (mp_find, mp_get_uint, ...). */

void rt_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#ifdef __cplusplus
}
#endif

#endif

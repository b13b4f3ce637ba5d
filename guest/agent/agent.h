/* Shared declarations of the evolvm guest agent (see ../PROTOCOL.md). */
#ifndef EVOLVM_AGENT_H
#define EVOLVM_AGENT_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_NAME "evolvm-agent/0.1.0"
#define PROTO_VERSION 1
#define MAX_FRAME (16u << 20)
#define CHUNK_MAX (64u << 10)
/* Above this many unsent bytes, no more output chunks are produced (backpressure). */
#define OUTQ_HIGH (4u << 20)
#define DEFAULT_PORT "org.evolvm.agent"

/* log.c */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *xrealloc(void *p, size_t n); /* realloc, or log and abort */
int64_t now_ms(void);

/* outq.c: the queue of encoded frames waiting for the port. */
void oq_begin(void);
void oq_end(void);
void oq_map(uint32_t n);
void oq_array(uint32_t n);
void oq_str(const char *s);
void oq_strn(const char *s, uint32_t len);
void oq_uint(uint64_t v);
void oq_int(int64_t v);
void oq_bool(bool v);
void oq_bin(const void *p, uint32_t len);
void oq_raw(const void *p, size_t len); /* already-encoded msgpack */
size_t oq_pending(void);
int oq_flush(int fd);
void oq_drop_partial(void);
static inline bool oq_full(void) { return oq_pending() >= OUTQ_HIGH; }

/* reply.c: res and chunk frames. */
void res_ok_begin(uint64_t id, uint32_t nfields); /* caller writes nfields pairs, then oq_end() */
void res_ok_empty(uint64_t id);
void res_err(uint64_t id, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void res_errno(uint64_t id, int err, const char *what, const char *path);
void send_chunk(uint64_t id, const char *stream, const char *data, size_t len);

/* errname.c: "ENOENT" for ENOENT; NULL for a number without a name. */
const char *errno_name(int err);

/* ../common/mpread.h: reading a validated msgpack map. */
#include "../common/mpread.h"

/* pollset.c: the fds of one loop iteration and who handles each. */
typedef void (*poll_fn)(void *ctx, int tag, short revents);
void ps_reset(void);
void ps_add(int fd, short events, poll_fn fn, void *ctx, int tag);
int ps_poll(int timeout_ms);
void ps_dispatch(void);

/* Operations, one file each; args is a validated map. */
void op_ping(uint64_t id, const char *args);
void op_hello(uint64_t id, const char *args);
void op_exec(uint64_t id, const char *args);
void op_file_write(uint64_t id, const char *args);
void op_file_read(uint64_t id, const char *args);
void op_set_clock(uint64_t id, const char *args);
void op_reseed(uint64_t id, const char *args);
/* set_clock, then reseed, then answers as hello: the host's whole resync after a snapshot load, in one request. */
void op_refresh(uint64_t id, const char *args);
void op_shutdown(uint64_t id, const char *args);
void op_rt_start(uint64_t id, const char *args);
void op_rt_req(uint64_t id, const char *args);

/* hello.c */
void hello_init(void);
void send_hello(void);
void write_hello_fields(void);
extern const char *const agent_ops[];
extern const unsigned agent_nops;

/* exec.c: running processes. */
void exec_init(void);
void exec_poll_add(bool backpressured);
void exec_tick(bool backpressured);
int exec_timeout_ms(void); /* -1 when no deadline */
void exec_reap(void);
int exec_sigfd(void);

/* fileops.c: pending file_read streams. */
void fread_tick(bool backpressured);
bool fread_pending(void);

/* runtime.c: runtimes started by rt_start (see ../RUNTIMES.md). */
void rt_hostret(const char *map, uint32_t n); /* a hostret frame from the host */
void rt_reaped(pid_t pid, int status);        /* a child that is not an exec job exited */
void rt_poll_add(bool backpressured);
void rt_tick(void);
int rt_timeout_ms(void); /* -1 when no deadline */

/* shutdown.c */
extern bool shutdown_requested;
void do_shutdown(int port_fd) __attribute__((noreturn));

/* port.c */
int port_open(const char *name);
int port_try_open(const char *want);
bool port_host_connected(int fd);

#endif

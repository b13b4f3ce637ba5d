/*
 * evolvm guest agent: answers PROTOCOL.md requests on a virtio-serial port with a
 * single-threaded poll() loop. Usage: evolvm-agent [--port NAME]
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

/* A host that is not connected is checked for again this often. */
#define RECONNECT_POLL_MS 20
/* virtio_console hands a read at most one of its receive buffers, which are a page each: a shorter read
 * drained the port for now. */
#define PORT_BUF 4096

static int port = -1;
static bool connected;
static char *ib;
static size_t ib_len, ib_cap;

static const struct {
	const char *name;
	void (*fn)(uint64_t id, const char *args);
} ops[] = {
	{ "ping", op_ping },
	{ "hello", op_hello },
	{ "exec", op_exec },
	{ "file_write", op_file_write },
	{ "file_read", op_file_read },
	{ "set_clock", op_set_clock },
	{ "reseed", op_reseed },
	{ "refresh", op_refresh },
	{ "shutdown", op_shutdown },
	{ "rt_start", op_rt_start },
	{ "rt_req", op_rt_req },
};

static void disconnect(const char *why)
{
	if (connected)
		logmsg("host disconnected (%s)", why);
	connected = false;
	oq_drop_partial();
	ib_len = 0;
}

static void handle_frame(const char *p, uint32_t n)
{
	const char *q = p;
	if (mp_check(&q, p + n) != 0 || q != p + n || mp_typeof(*p) != MP_MAP) {
		logmsg("dropping a frame that is not one msgpack map (%u bytes)", n);
		return;
	}
	const char *t, *op;
	uint32_t tlen, oplen;
	uint64_t id;
	if (mp_get_str(mp_find(p, "t"), &t, &tlen) && tlen == 7 && memcmp(t, "hostret", 7) == 0) {
		rt_hostret(p, n);
		return;
	}
	if (!mp_get_str(mp_find(p, "t"), &t, &tlen) || tlen != 3 || memcmp(t, "req", 3) != 0) {
		logmsg("dropping a frame whose t is not \"req\" or \"hostret\"");
		return;
	}
	if (!mp_get_uint(mp_find(p, "id"), &id) || id == 0) {
		logmsg("dropping a request without a positive id");
		return;
	}
	if (!mp_get_str(mp_find(p, "op"), &op, &oplen)) {
		res_err(id, "BAD_REQUEST", "op must be a string");
		return;
	}
	const char *args = mp_find(p, "a");
	if (!args || mp_typeof(*args) == MP_NIL)
		args = "\x80"; /* {} */
	else if (!mp_is_map(args)) {
		res_err(id, "BAD_REQUEST", "a must be a map");
		return;
	}
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
		if (strlen(ops[i].name) == oplen && memcmp(ops[i].name, op, oplen) == 0) {
			ops[i].fn(id, args);
			return;
		}
	}
	res_err(id, "UNKNOWN_OP", "unknown op %.*s", (int)(oplen > 64 ? 64 : oplen), op);
}

static uint32_t be32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Handles every whole frame in the input buffer; false when the stream is broken. */
static bool process_input(void)
{
	size_t off = 0;
	while (ib_len - off >= 4) {
		uint32_t n = be32(ib + off);
		if (n == 0 || n > MAX_FRAME) {
			logmsg("bad frame length %u: dropping input", n);
			ib_len = 0;
			return false;
		}
		if (ib_len - off - 4 < n)
			break;
		handle_frame(ib + off + 4, n);
		off += 4 + (size_t)n;
	}
	memmove(ib, ib + off, ib_len - off);
	ib_len -= off;
	return true;
}

static void ensure_input_room(void)
{
	size_t want = 64 * 1024;
	if (ib_len >= 4) {
		uint32_t n = be32(ib);
		if (n > 0 && n <= MAX_FRAME && 4 + (size_t)n > want)
			want = 4 + (size_t)n;
	}
	if (ib_cap < want) {
		char *nb = realloc(ib, want);
		if (!nb) {
			logmsg("out of memory for a %zu-byte frame", want);
			abort();
		}
		ib = nb;
		ib_cap = want;
	}
}

static void on_port(void *ctx, int tag, short rev)
{
	(void)ctx;
	(void)tag;
	if (rev & POLLIN) {
		for (;;) {
			ensure_input_room();
			ssize_t r = read(port, ib + ib_len, ib_cap - ib_len);
			if (r > 0) {
				ib_len += (size_t)r;
				process_input();
				/* Replies made while handling it go out now rather than after the next poll(). */
				if (oq_pending() > 0 && oq_flush(port) < 0) {
					disconnect("write error");
					return;
				}
				if (r < PORT_BUF)
					break;
				continue;
			}
			if (r == 0) {
				disconnect("EOF");
				return;
			}
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN) {
				logmsg("read port: %m");
				disconnect("read error");
				return;
			}
			break;
		}
	}
	if (rev & (POLLHUP | POLLERR)) {
		disconnect("POLLHUP");
		return;
	}
	if ((rev & POLLOUT) && oq_flush(port) < 0)
		disconnect("write error");
}

static void on_signal(void *ctx, int tag, short rev)
{
	(void)ctx;
	(void)tag;
	(void)rev;
	exec_reap();
}

int main(int argc, char **argv)
{
	const char *name = DEFAULT_PORT;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
			name = argv[++i];
		else {
			logmsg("usage: evolvm-agent [--port NAME]");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	umask(022);
	if (chdir("/") < 0)
		logmsg("chdir /: %m");
	hello_init();
	exec_init();
	port = port_open(name);

	for (;;) {
		if (!connected && port_host_connected(port)) {
			connected = true;
			ib_len = 0;
			send_hello();
		}
		if (connected && oq_pending() > 0 && oq_flush(port) < 0)
			disconnect("write error");
		if (shutdown_requested)
			do_shutdown(port);

		bool bp = oq_full();
		ps_reset();
		ps_add(exec_sigfd(), POLLIN, on_signal, NULL, 0);
		if (connected)
			ps_add(port, POLLIN | (oq_pending() > 0 ? POLLOUT : 0), on_port, NULL, 0);
		exec_poll_add(bp);
		rt_poll_add(bp);
		int timeout = exec_timeout_ms(), rt_timeout = rt_timeout_ms();
		if (rt_timeout >= 0 && (timeout < 0 || rt_timeout < timeout))
			timeout = rt_timeout;
		if (!connected && (timeout < 0 || timeout > RECONNECT_POLL_MS))
			timeout = RECONNECT_POLL_MS;
		if (fread_pending() && !bp)
			timeout = 0;
		ps_poll(timeout);
		ps_dispatch();
		exec_tick(oq_full());
		fread_tick(oq_full());
		rt_tick();
	}
}

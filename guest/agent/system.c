/* set_clock, reseed and shutdown: the ops that touch the kernel's state. */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

bool shutdown_requested;

/* Sets CLOCK_REALTIME from args' ns; on failure answers request id and returns false. */
static bool set_clock(uint64_t id, const char *args)
{
	uint64_t ns;
	if (!mp_get_uint(mp_find(args, "ns"), &ns)) {
		res_err(id, "BAD_REQUEST", "ns must be an unsigned integer");
		return false;
	}
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u) };
	if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		res_errno(id, errno, "clock_settime", NULL);
		return false;
	}
	return true;
}

/* /dev/urandom, opened once rather than for every reseed (one path walk less on a guest's first work after a
 * load, which runs on a flushed translation cache under TCG). */
static int urandom_fd = -1;

/* Mixes args' seed into the kernel's pool and reseeds the CRNG from it; on failure answers id, returns false. */
static bool reseed(uint64_t id, const char *args)
{
	const char *seed;
	uint32_t len;
	if (!mp_get_bin(mp_find(args, "seed"), &seed, &len) || len < 16 || len > 4096) {
		res_err(id, "BAD_REQUEST", "seed must be 16..4096 bytes of bin");
		return false;
	}
	if (urandom_fd < 0 && (urandom_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC)) < 0) {
		res_errno(id, errno, "open", "/dev/urandom");
		return false;
	}
	/* Static, not malloc'd: musl maps and unmaps a fresh group for it, and under TCG those mm paths cost a
	 * restored guest ~2 ms of translation on every refresh. The agent is single-threaded. */
	static union {
		struct rand_pool_info info;
		char bytes[sizeof(struct rand_pool_info) + 4096];
	} pool;
	struct rand_pool_info *info = &pool.info;
	info->entropy_count = (int)len * 8;
	info->buf_size = (int)len;
	memcpy(info->buf, seed, len);
	bool ok = false;
	if (ioctl(urandom_fd, RNDADDENTROPY, info) < 0) {
		res_errno(id, errno, "ioctl RNDADDENTROPY", NULL);
	} else if (ioctl(urandom_fd, RNDRESEEDCRNG) < 0 && errno != ENODATA) {
		/* Once the CRNG is ready, added entropy only reaches it at its next scheduled reseed (up to 60 s
		 * away): clones restored from one snapshot would read the same bytes until then. ENODATA: not ready
		 * yet, and the credited entropy is what makes it ready. */
		res_errno(id, errno, "ioctl RNDRESEEDCRNG", NULL);
	} else {
		ok = true;
	}
	return ok;
}

void op_set_clock(uint64_t id, const char *args)
{
	if (set_clock(id, args))
		res_ok_empty(id);
}

void op_reseed(uint64_t id, const char *args)
{
	if (reseed(id, args))
		res_ok_empty(id);
}

/* Sets the hostname from args' optional hostname (the sandbox id); on failure answers id, returns false. */
static bool set_hostname(uint64_t id, const char *args)
{
	const char *v = mp_find(args, "hostname"), *name;
	uint32_t len;
	if (!v || mp_typeof(*v) == MP_NIL)
		return true;
	if (!mp_get_str(v, &name, &len) || len == 0 || len > 64 || memchr(name, 0, len)) {
		res_err(id, "BAD_REQUEST", "hostname must be 1..64 bytes of str");
		return false;
	}
	if (sethostname(name, len) < 0) {
		res_errno(id, errno, "sethostname", NULL);
		return false;
	}
	return true;
}

void op_refresh(uint64_t id, const char *args)
{
	if (set_clock(id, args) && reseed(id, args) && set_hostname(id, args))
		op_hello(id, args);
}

void op_shutdown(uint64_t id, const char *args)
{
	(void)args;
	res_ok_empty(id);
	shutdown_requested = true;
}

/* Gives the reply up to a second to reach the host, then syncs and powers off. */
void do_shutdown(int port_fd)
{
	int64_t deadline = now_ms() + 1000;
	while (oq_pending() > 0 && now_ms() < deadline) {
		if (oq_flush(port_fd) < 0)
			break;
		if (oq_pending() > 0) {
			struct pollfd p = { .fd = port_fd, .events = POLLOUT };
			if (poll(&p, 1, 50) > 0 && (p.revents & POLLHUP))
				break;
		}
	}
	sync();
	reboot(RB_POWER_OFF);
	logmsg("reboot(RB_POWER_OFF): %m");
	_exit(1);
}

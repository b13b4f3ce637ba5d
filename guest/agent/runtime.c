/*
 * Runtimes (../RUNTIMES.md): long-lived processes started by rt_start, each talking framed msgpack
 * on its stdin/stdout. rt_req requests are queued per runtime and sent one at a time; the runtime's
 * res and hostcall frames are relayed to the host with the host's request id, and the host's hostret
 * frames back to the runtime with the runtime's id. Both pipes are non-blocking and polled in the main
 * loop; a runtime that exits (reaped in exec.c) fails what was pending on it with RUNTIME_EXITED.
 * Slots are never freed inside a poll handler, only reset in rt_tick().
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

#define RT_MAX 8
#define RT_NAME_MAX 32
#define RT_DIR "/opt/evolvm/runtimes"
/* A runtime that has not said ready by then is killed; so is one still alive this long after closing
 * its stdout. */
#define RT_READY_TIMEOUT_MS 30000
/* The virtio port a runtime may serve the host on directly (rt_start's direct), and the fd it gets it on. */
#define RT_DIRECT_PORT "org.evolvm.rt"
#define RT_DIRECT_FD 3
#define RT_EOF_GRACE_MS 1000

extern char **environ;

struct rtreq {
	struct rtreq *next;
	uint64_t host_id, local_id;
	char *frame; /* length + msgpack, ready to write */
	size_t len;
};

struct runtime {
	bool used;
	bool ready;
	bool reaped;
	bool broken; /* killed for a protocol violation or a missed deadline */
	bool eof;    /* its stdout is closed: it should be exiting */
	bool direct; /* it holds the direct port (RUNTIMES.md) */
	char name[RT_NAME_MAX + 1];
	char version[128];
	pid_t pid;
	int status;
	uint64_t start_id; /* the rt_start waiting for ready, 0 once answered */
	int64_t deadline; /* for ready, or for exiting after eof */
	int in_fd, out_fd; /* the runtime's stdin (we write), its stdout (we read) */
	char *ib;
	size_t ib_len, ib_cap;
	char *ob;
	size_t ob_head, ob_len, ob_cap;
	struct rtreq *q_head, **q_tail;
	bool busy; /* a request was sent and its res has not come */
	uint64_t cur_host_id, cur_local_id, next_local_id;
	char why[160]; /* why the runtime is being stopped, for RUNTIME_EXITED */
};

static struct runtime rts[RT_MAX];
static const char *const base_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", NULL };
static const char *const direct_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "EVOLVM_RT_DIRECT_FD=3", NULL };

static struct runtime *find_rt(const char *name, uint32_t len)
{
	for (int i = 0; i < RT_MAX; i++)
		if (rts[i].used && strlen(rts[i].name) == len && memcmp(rts[i].name, name, len) == 0)
			return &rts[i];
	return NULL;
}

static bool valid_name(const char *s, uint32_t len)
{
	if (len == 0 || len > RT_NAME_MAX)
		return false;
	for (uint32_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Kills a runtime that cannot go on; pending requests fail once it is reaped. */
static void stop_rt(struct runtime *rt, const char *why)
{
	if (!rt->broken && !rt->reaped) {
		logmsg("runtime %s (pid %d): %s; killing it", rt->name, (int)rt->pid, why);
		snprintf(rt->why, sizeof rt->why, "%s", why);
		kill(rt->pid, SIGKILL);
	}
	rt->broken = true;
}

/* --- bytes to the runtime --------------------------------------------------------------------- */

static char *ob_reserve(struct runtime *rt, size_t n)
{
	if (rt->ob_head > 0 && rt->ob_len + n > rt->ob_cap) {
		memmove(rt->ob, rt->ob + rt->ob_head, rt->ob_len - rt->ob_head);
		rt->ob_len -= rt->ob_head;
		rt->ob_head = 0;
	}
	if (rt->ob_len + n > rt->ob_cap) {
		size_t ncap = rt->ob_cap ? rt->ob_cap : 65536;
		while (ncap < rt->ob_len + n)
			ncap *= 2;
		rt->ob = xrealloc(rt->ob, ncap);
		rt->ob_cap = ncap;
	}
	return rt->ob + rt->ob_len;
}

static void ob_put(struct runtime *rt, const void *p, size_t n)
{
	memcpy(ob_reserve(rt, n), p, n);
	rt->ob_len += n;
}

static void put_be32(char *p, uint32_t n)
{
	unsigned char *u = (unsigned char *)p;
	u[0] = n >> 24; u[1] = n >> 16; u[2] = n >> 8; u[3] = n;
}

static uint32_t be32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* The encoded size of map with its "id" value replaced by id (id_at: where the old value starts). */
static size_t relayed_size(const char *map, size_t n, uint64_t id, const char **id_at, const char **id_end)
{
	*id_at = mp_find(map, "id");
	if (!*id_at)
		return 0;
	*id_end = *id_at;
	mp_next(id_end);
	return n - (size_t)(*id_end - *id_at) + mp_sizeof_uint(id);
}

/* Writes what the runtime's stdin takes now; the rest waits for POLLOUT. */
static void write_rt(struct runtime *rt)
{
	if (rt->in_fd < 0 || rt->broken)
		return;
	while (rt->ob_head < rt->ob_len) {
		ssize_t w = write(rt->in_fd, rt->ob + rt->ob_head, rt->ob_len - rt->ob_head);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				stop_rt(rt, "cannot be written to");
			return;
		}
		rt->ob_head += (size_t)w;
	}
	rt->ob_head = rt->ob_len = 0;
}

static bool idle(const struct runtime *rt)
{
	return rt->ready && !rt->busy && !rt->broken && !rt->reaped && !rt->q_head;
}

/* Starts the next queued request when the runtime is ready and idle. */
static void pump(struct runtime *rt)
{
	if (!rt->ready || rt->busy || rt->broken || rt->reaped || !rt->q_head)
		return;
	struct rtreq *q = rt->q_head;
	rt->q_head = q->next;
	if (!rt->q_head)
		rt->q_tail = &rt->q_head;
	ob_put(rt, q->frame, q->len);
	rt->busy = true;
	rt->cur_host_id = q->host_id;
	rt->cur_local_id = q->local_id;
	free(q->frame);
	free(q);
	write_rt(rt);
}

/* --- frames from the runtime ------------------------------------------------------------------ */

/* Copies map to the host queue with its id replaced; the host gets TOO_LARGE instead when it does
 * not fit (only for res frames, whose id is known). */
static bool relay_to_host(const char *map, uint32_t n, uint64_t host_id)
{
	const char *id_at, *id_end;
	size_t size = relayed_size(map, n, host_id, &id_at, &id_end);
	if (size == 0 || size > MAX_FRAME)
		return false;
	oq_begin();
	oq_raw(map, (size_t)(id_at - map));
	oq_uint(host_id);
	oq_raw(id_end, (size_t)(map + n - id_end));
	oq_end();
	return true;
}

static void on_ready(struct runtime *rt, const char *map)
{
	if (rt->ready) {
		logmsg("runtime %s said ready twice; ignored", rt->name);
		return;
	}
	const char *v;
	uint32_t len;
	if (mp_get_str(mp_find(map, "version"), &v, &len) && len > 0 && !memchr(v, 0, len))
		snprintf(rt->version, sizeof rt->version, "%.*s", (int)len, v);
	rt->ready = true;
	if (rt->start_id) {
		res_ok_begin(rt->start_id, 4);
		oq_str("pid"); oq_uint((uint64_t)rt->pid);
		oq_str("name"); oq_str(rt->name);
		oq_str("version"); oq_str(rt->version);
		oq_str("direct"); oq_bool(rt->direct);
		oq_end();
		rt->start_id = 0;
	}
	pump(rt);
}

static void on_res(struct runtime *rt, const char *map, uint32_t n)
{
	const char *okv = mp_find(map, "ok");
	bool ok;
	if (!mp_get_bool(okv, &ok)) {
		res_err(rt->cur_host_id, "INTERNAL", "runtime %s sent a res without ok", rt->name);
	} else if (!ok) {
		const char *e = mp_find(map, "e"), *code, *msg;
		uint32_t clen, mlen;
		if (!mp_get_str(mp_find(e, "code"), &code, &clen) || !mp_get_str(mp_find(e, "msg"), &msg, &mlen))
			res_err(rt->cur_host_id, "INTERNAL", "runtime %s sent an error without code and msg", rt->name);
		else
			relay_to_host(map, n, rt->cur_host_id);
	} else if (!mp_find(map, "v")) {
		res_err(rt->cur_host_id, "INTERNAL", "runtime %s sent a res without v", rt->name);
	} else if (!relay_to_host(map, n, rt->cur_host_id)) {
		res_err(rt->cur_host_id, "TOO_LARGE", "the reply of runtime %s does not fit in a frame", rt->name);
	}
	rt->busy = false;
	pump(rt);
}

static void hostret_to_runtime(struct runtime *rt, uint64_t call, const char *code, const char *msg)
{
	char buf[512], *p = buf + 4;
	p = mp_encode_map(p, 5);
	p = mp_encode_str(p, "t", 1); p = mp_encode_str(p, "hostret", 7);
	p = mp_encode_str(p, "id", 2); p = mp_encode_uint(p, rt->cur_local_id);
	p = mp_encode_str(p, "call", 4); p = mp_encode_uint(p, call);
	p = mp_encode_str(p, "ok", 2); p = mp_encode_bool(p, false);
	p = mp_encode_str(p, "e", 1); p = mp_encode_map(p, 2);
	p = mp_encode_str(p, "code", 4); p = mp_encode_str(p, code, (uint32_t)strlen(code));
	p = mp_encode_str(p, "msg", 3); p = mp_encode_str(p, msg, (uint32_t)strlen(msg));
	put_be32(buf, (uint32_t)(p - buf - 4));
	ob_put(rt, buf, (size_t)(p - buf));
	write_rt(rt);
}

static void on_hostcall(struct runtime *rt, const char *map, uint32_t n)
{
	uint64_t call;
	const char *fn;
	uint32_t fn_len;
	if (!mp_get_uint(mp_find(map, "call"), &call) || !mp_get_str(mp_find(map, "fn"), &fn, &fn_len) ||
	    fn_len > 256 || !mp_find(map, "args") || mp_typeof(*mp_find(map, "args")) != MP_ARRAY) {
		stop_rt(rt, "sent a malformed hostcall");
		return;
	}
	if (!relay_to_host(map, n, rt->cur_host_id))
		hostret_to_runtime(rt, call, "TOO_LARGE", "the host call does not fit in a frame");
}

static void handle_rt_frame(struct runtime *rt, const char *p, uint32_t n)
{
	const char *q = p;
	if (mp_check(&q, p + n) != 0 || q != p + n || mp_typeof(*p) != MP_MAP) {
		stop_rt(rt, "sent a frame that is not one msgpack map");
		return;
	}
	const char *t;
	uint32_t tlen;
	if (!mp_get_str(mp_find(p, "t"), &t, &tlen)) {
		stop_rt(rt, "sent a frame without t");
		return;
	}
	if (tlen == 5 && memcmp(t, "ready", 5) == 0) {
		on_ready(rt, p);
		return;
	}
	uint64_t id;
	if (!rt->busy || !mp_get_uint(mp_find(p, "id"), &id) || id != rt->cur_local_id) {
		logmsg("runtime %s: dropping a %.*s frame for a request it is not serving", rt->name, (int)(tlen > 16 ? 16 : tlen), t);
		return;
	}
	if (tlen == 3 && memcmp(t, "res", 3) == 0)
		on_res(rt, p, n);
	else if (tlen == 8 && memcmp(t, "hostcall", 8) == 0)
		on_hostcall(rt, p, n);
	else
		logmsg("runtime %s: dropping a frame of unknown type %.*s", rt->name, (int)(tlen > 16 ? 16 : tlen), t);
}

static void process_rt_input(struct runtime *rt)
{
	size_t off = 0;
	while (!rt->broken && rt->ib_len - off >= 4) {
		uint32_t n = be32(rt->ib + off);
		if (n == 0 || n > MAX_FRAME) {
			stop_rt(rt, "sent a bad frame length");
			break;
		}
		if (rt->ib_len - off - 4 < n)
			break;
		handle_rt_frame(rt, rt->ib + off + 4, n);
		off += 4 + (size_t)n;
	}
	if (rt->broken)
		off = rt->ib_len;
	memmove(rt->ib, rt->ib + off, rt->ib_len - off);
	rt->ib_len -= off;
}

/* Reads what the runtime wrote: 1 when it read something, 0 when there is nothing now, -1 when its
 * stdout is closed. */
static int read_rt(struct runtime *rt)
{
	size_t want = 64 * 1024;
	if (rt->ib_len >= 4) {
		uint32_t n = be32(rt->ib);
		if (n > 0 && n <= MAX_FRAME && 4 + (size_t)n > want)
			want = 4 + (size_t)n;
	}
	if (rt->ib_cap < want || rt->ib_cap - rt->ib_len < 4096) {
		size_t ncap = rt->ib_cap > want ? rt->ib_cap : want;
		if (ncap - rt->ib_len < 4096)
			ncap = rt->ib_len + 65536;
		rt->ib = xrealloc(rt->ib, ncap);
		rt->ib_cap = ncap;
	}
	ssize_t r = read(rt->out_fd, rt->ib + rt->ib_len, rt->ib_cap - rt->ib_len);
	if (r > 0) {
		rt->ib_len += (size_t)r;
		process_rt_input(rt);
		return 1;
	}
	if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
		close(rt->out_fd);
		rt->out_fd = -1;
		return -1;
	}
	return 0;
}

static void read_stdout(struct runtime *rt)
{
	if (read_rt(rt) < 0) {
		/* usually it is exiting: wait for the reap to tell why */
		rt->eof = true;
		rt->deadline = now_ms() + RT_EOF_GRACE_MS;
	}
}

static void on_rt_fd(void *ctx, int tag, short rev)
{
	struct runtime *rt = ctx;
	if (tag == 0) { /* stdout */
		if (rt->out_fd >= 0)
			read_stdout(rt);
		return;
	}
	if (rt->in_fd < 0)
		return;
	if (rev & (POLLERR | POLLHUP)) {
		stop_rt(rt, "closed its stdin");
		return;
	}
	write_rt(rt);
}

/* Sends what is in ob now and reads the reply at once if there is one. Writing to the runtime wakes it, and it
 * usually runs until it has answered before the agent runs again; reading now saves a poll() round (each
 * costs a lot under TCG). Not while the host queue is backpressured (the reply would add to it). */
static void write_then_read(struct runtime *rt)
{
	write_rt(rt);
	if (rt->ob_len == 0 && !rt->broken && !rt->eof && rt->out_fd >= 0 && !oq_full())
		read_stdout(rt);
}

/* --- operations ------------------------------------------------------------------------------- */

/* runtime.conf's exec= and version= values. */
static int read_conf(const char *name, char *exec, size_t exec_size, char *version, size_t version_size)
{
	char path[128];
	snprintf(path, sizeof path, RT_DIR "/%s/runtime.conf", name);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	char line[512];
	*exec = 0;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (strncmp(line, "exec=", 5) == 0 && strlen(line + 5) < exec_size)
			memcpy(exec, line + 5, strlen(line + 5) + 1);
		else if (strncmp(line, "version=", 8) == 0 && strlen(line + 8) < version_size)
			memcpy(version, line + 8, strlen(line + 8) + 1);
	}
	fclose(f);
	return 0;
}

static void spawn_child(const char *exec, int in, int out, int direct)
{
	sigset_t set;
	sigemptyset(&set);
	sigprocmask(SIG_SETMASK, &set, NULL);
	signal(SIGPIPE, SIG_DFL);
	setpgid(0, 0);
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0)
		_exit(126);
	/* dup2 onto itself would keep close-on-exec */
	if (direct >= 0 && (direct == RT_DIRECT_FD ? fcntl(direct, F_SETFD, 0) : dup2(direct, RT_DIRECT_FD)) < 0)
		_exit(126);
	if (chdir("/") < 0)
		_exit(126);
	environ = (char **)(direct >= 0 ? direct_env : base_env);
	char *argv[] = { (char *)exec, NULL };
	execv(exec, argv);
	dprintf(2, "evolvm-agent: exec runtime %s: %s\n", exec, strerror(errno));
	_exit(127);
}

void op_rt_start(uint64_t id, const char *args)
{
	const char *name;
	uint32_t len;
	if (!mp_get_str(mp_find(args, "name"), &name, &len) || !valid_name(name, len)) {
		res_err(id, "BAD_REQUEST", "rt_start: name must be 1-%d characters of [a-z0-9_-]", RT_NAME_MAX);
		return;
	}
	if (find_rt(name, len)) {
		res_err(id, "EEXIST", "runtime %.*s is already running", (int)len, name);
		return;
	}
	struct runtime *rt = NULL;
	for (int i = 0; i < RT_MAX && !rt; i++)
		if (!rts[i].used)
			rt = &rts[i];
	if (!rt) {
		res_err(id, "EMFILE", "rt_start: at most %d runtimes run at once", RT_MAX);
		return;
	}
	char cname[RT_NAME_MAX + 1], exec[256], version[128] = "unknown";
	memcpy(cname, name, len);
	cname[len] = 0;
	if (read_conf(cname, exec, sizeof exec, version, sizeof version) < 0) {
		int e = errno;
		char path[128];
		snprintf(path, sizeof path, RT_DIR "/%s/runtime.conf", cname);
		res_errno(id, e, "rt_start: open", path);
		return;
	}
	if (exec[0] != '/') {
		res_err(id, "BAD_REQUEST", "rt_start: runtime.conf of %s has no absolute exec=", cname);
		return;
	}
	if (access(exec, X_OK) < 0) {
		res_errno(id, errno, "rt_start: exec", exec);
		return;
	}
	bool want_direct = false;
	const char *dv = mp_find(args, "direct");
	if (dv && mp_typeof(*dv) != MP_NIL && !mp_get_bool(dv, &want_direct)) {
		res_err(id, "BAD_REQUEST", "rt_start: direct must be a bool");
		return;
	}
	/* Only one process may hold a virtio port: a second runtime asking for it is told EBUSY. */
	if (want_direct)
		for (int i = 0; i < RT_MAX; i++)
			if (rts[i].used && rts[i].direct && !rts[i].reaped) {
				res_err(id, "EBUSY", "rt_start: runtime %s holds the direct port", rts[i].name);
				return;
			}
	int in[2], out[2];
	if (pipe2(in, O_CLOEXEC) < 0) {
		res_errno(id, errno, "rt_start: pipe", NULL);
		return;
	}
	if (pipe2(out, O_CLOEXEC) < 0) {
		res_errno(id, errno, "rt_start: pipe", NULL);
		close(in[0]);
		close(in[1]);
		return;
	}
	/* A guest without the port starts the runtime without it, and says so in the reply. The runtime reads it
	 * blocking; the flag is the open file's, which only the runtime keeps. */
	int direct = want_direct ? port_try_open(RT_DIRECT_PORT) : -1;
	if (direct >= 0)
		fcntl(direct, F_SETFL, 0);
	pid_t pid = fork();
	if (pid < 0) {
		res_errno(id, errno, "rt_start: fork", NULL);
		close(in[0]); close(in[1]); close(out[0]); close(out[1]);
		if (direct >= 0)
			close(direct);
		return;
	}
	if (pid == 0)
		spawn_child(exec, in[0], out[1], direct);
	setpgid(pid, pid);
	close(in[0]);
	close(out[1]);
	if (direct >= 0)
		close(direct);
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	fcntl(out[0], F_SETFL, O_NONBLOCK);

	*rt = (struct runtime){ .used = true, .pid = pid, .start_id = id, .in_fd = in[1], .out_fd = out[0], .direct = direct >= 0 };
	rt->q_tail = &rt->q_head;
	rt->next_local_id = 1;
	rt->deadline = now_ms() + RT_READY_TIMEOUT_MS;
	memcpy(rt->name, cname, len + 1);
	snprintf(rt->version, sizeof rt->version, "%s", version);
	logmsg("runtime %s started (pid %d)", rt->name, (int)pid);
}

void op_rt_req(uint64_t id, const char *args)
{
	const char *name, *op, *a = mp_find(args, "a");
	uint32_t len, oplen;
	if (!mp_get_str(mp_find(args, "name"), &name, &len) || !valid_name(name, len)) {
		res_err(id, "BAD_REQUEST", "rt_req: name must be a runtime name");
		return;
	}
	if (!mp_get_str(mp_find(args, "op"), &op, &oplen) || oplen == 0 || oplen > 64) {
		res_err(id, "BAD_REQUEST", "rt_req: op must be a string");
		return;
	}
	if (!a || mp_typeof(*a) == MP_NIL)
		a = "\x80"; /* {} */
	else if (!mp_is_map(a)) {
		res_err(id, "BAD_REQUEST", "rt_req: a must be a map");
		return;
	}
	struct runtime *rt = find_rt(name, len);
	if (!rt || rt->broken || rt->reaped) {
		res_err(id, rt ? "RUNTIME_EXITED" : "NOT_RUNNING", "runtime %.*s is not running", (int)len, name);
		return;
	}
	const char *a_end = a;
	mp_next(&a_end);
	size_t alen = (size_t)(a_end - a);
	uint64_t local = rt->next_local_id++;
	size_t size = mp_sizeof_map(4) + mp_sizeof_str(1) + mp_sizeof_str(3) + mp_sizeof_str(2) + mp_sizeof_uint(local) +
		      mp_sizeof_str(2) + mp_sizeof_str(oplen) + mp_sizeof_str(1) + alen;
	if (size > MAX_FRAME) {
		res_err(id, "TOO_LARGE", "rt_req: the request does not fit in a frame");
		return;
	}
	/* An idle runtime gets the frame at once, encoded straight into its output buffer; a busy (or starting)
	 * one gets it queued. */
	bool now = idle(rt);
	struct rtreq *q = NULL;
	char *f;
	if (now) {
		f = ob_reserve(rt, 4 + size);
	} else {
		q = calloc(1, sizeof *q);
		f = malloc(4 + size);
		if (!q || !f) {
			free(q);
			free(f);
			res_err(id, "INTERNAL", "rt_req: out of memory");
			return;
		}
	}
	char *p = f + 4;
	p = mp_encode_map(p, 4);
	p = mp_encode_str(p, "t", 1); p = mp_encode_str(p, "req", 3);
	p = mp_encode_str(p, "id", 2); p = mp_encode_uint(p, local);
	p = mp_encode_str(p, "op", 2); p = mp_encode_str(p, op, oplen);
	p = mp_encode_str(p, "a", 1);
	memcpy(p, a, alen);
	put_be32(f, (uint32_t)size);
	if (now) {
		rt->ob_len += 4 + size;
		rt->busy = true;
		rt->cur_host_id = id;
		rt->cur_local_id = local;
		write_then_read(rt);
		return;
	}
	q->host_id = id;
	q->local_id = local;
	q->frame = f;
	q->len = 4 + size;
	*rt->q_tail = q;
	rt->q_tail = &q->next;
	pump(rt);
}

/* A hostret from the host: relayed to the runtime serving that request, with the runtime's id. */
void rt_hostret(const char *map, uint32_t n)
{
	uint64_t id;
	if (!mp_get_uint(mp_find(map, "id"), &id) || id == 0) {
		logmsg("dropping a hostret without a positive id");
		return;
	}
	for (int i = 0; i < RT_MAX; i++) {
		struct runtime *rt = &rts[i];
		if (!rt->used || !rt->busy || rt->cur_host_id != id || rt->broken || rt->reaped)
			continue;
		const char *id_at, *id_end;
		size_t size = relayed_size(map, n, rt->cur_local_id, &id_at, &id_end);
		uint64_t call = 0;
		mp_get_uint(mp_find(map, "call"), &call);
		if (size > MAX_FRAME) {
			hostret_to_runtime(rt, call, "TOO_LARGE", "the host function's result does not fit in a frame");
			return;
		}
		char *p = ob_reserve(rt, 4 + size);
		put_be32(p, (uint32_t)size);
		p += 4;
		memcpy(p, map, (size_t)(id_at - map));
		p = mp_encode_uint(p + (id_at - map), rt->cur_local_id);
		memcpy(p, id_end, (size_t)(map + n - id_end));
		rt->ob_len += 4 + size;
		write_then_read(rt);
		return;
	}
	logmsg("dropping a hostret for request %llu, which no runtime is serving", (unsigned long long)id);
}

/* --- loop hooks ---------------------------------------------------------------------------------- */

void rt_reaped(pid_t pid, int status)
{
	for (int i = 0; i < RT_MAX; i++) {
		if (rts[i].used && rts[i].pid == pid && !rts[i].reaped) {
			rts[i].reaped = true;
			rts[i].status = status;
			return;
		}
	}
}

void rt_poll_add(bool backpressured)
{
	for (int i = 0; i < RT_MAX; i++) {
		struct runtime *rt = &rts[i];
		if (!rt->used || rt->reaped)
			continue;
		if (rt->out_fd >= 0 && !backpressured && !rt->broken)
			ps_add(rt->out_fd, POLLIN, on_rt_fd, rt, 0);
		if (rt->in_fd >= 0 && rt->ob_len > rt->ob_head && !rt->broken)
			ps_add(rt->in_fd, POLLOUT, on_rt_fd, rt, 1);
	}
}

static void fail_all(struct runtime *rt)
{
	char why[256];
	if (rt->why[0])
		snprintf(why, sizeof why, "runtime %s %s", rt->name, rt->why);
	else if (WIFSIGNALED(rt->status))
		snprintf(why, sizeof why, "runtime %s was killed by signal %d", rt->name, WTERMSIG(rt->status));
	else
		snprintf(why, sizeof why, "runtime %s exited with status %d", rt->name, WEXITSTATUS(rt->status));
	logmsg("%s", why);
	if (rt->start_id)
		res_err(rt->start_id, "RUNTIME_EXITED", "%s before it was ready", why);
	if (rt->busy)
		res_err(rt->cur_host_id, "RUNTIME_EXITED", "%s", why);
	while (rt->q_head) {
		struct rtreq *q = rt->q_head;
		rt->q_head = q->next;
		res_err(q->host_id, "RUNTIME_EXITED", "%s", why);
		free(q->frame);
		free(q);
	}
}

void rt_tick(void)
{
	int64_t now = now_ms();
	for (int i = 0; i < RT_MAX; i++) {
		struct runtime *rt = &rts[i];
		if (!rt->used)
			continue;
		if ((!rt->ready || rt->eof) && !rt->reaped && now >= rt->deadline)
			stop_rt(rt, rt->eof ? "closed its stdout" : "did not say ready in time");
		if (!rt->reaped)
			continue;
		/* It is gone: what is left in its stdout is all it wrote (a res sent just before exiting). */
		while (!rt->broken && rt->out_fd >= 0 && read_rt(rt) > 0)
			;
		fail_all(rt);
		if (rt->in_fd >= 0)
			close(rt->in_fd);
		if (rt->out_fd >= 0)
			close(rt->out_fd);
		free(rt->ib);
		free(rt->ob);
		*rt = (struct runtime){ 0 };
	}
}

int rt_timeout_ms(void)
{
	int64_t best = -1, now = now_ms();
	for (int i = 0; i < RT_MAX; i++) {
		struct runtime *rt = &rts[i];
		if (!rt->used)
			continue;
		if (rt->reaped)
			return 0;
		if ((rt->ready && !rt->eof) || rt->broken)
			continue;
		int64_t left = rt->deadline > now ? rt->deadline - now : 0;
		if (best < 0 || left < best)
			best = left;
	}
	return best > 0x7fffffff ? 0x7fffffff : (int)best;
}

/*
 * The exec op: each request is a job with its own process group, a stdin pipe fed
 * without blocking, and stdout/stderr pipes streamed as chunks. SIGCHLD arrives on a
 * signalfd. A job ends (its res is sent) once the process is reaped and both output
 * pipes are done; jobs are only freed in exec_tick(), never inside a poll handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

extern char **environ;

struct job {
	struct job *next;
	uint64_t id;
	pid_t pid;
	bool reaped, timed_out;
	int status;
	int64_t deadline; /* monotonic ms, 0 = none */
	int in_fd, out_fd, err_fd;
	char *in_buf;
	size_t in_len, in_off;
};

enum { TAG_IN, TAG_OUT, TAG_ERR };

static struct job *jobs;
static int sigfd = -1;
static const char *const base_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root" };

void exec_init(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sigfd < 0) {
		logmsg("signalfd: %m");
		abort();
	}
}

int exec_sigfd(void) { return sigfd; }

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void free_strv(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* argv from a msgpack array of strings; NULL when malformed or empty. */
static char **parse_argv(const char *v)
{
	if (!v || mp_typeof(*v) != MP_ARRAY)
		return NULL;
	uint32_t n = mp_decode_array(&v);
	if (n == 0)
		return NULL;
	char **argv = calloc((size_t)n + 1, sizeof *argv);
	if (!argv)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		if (!(argv[i] = mp_dup_cstr(v))) {
			free_strv(argv);
			return NULL;
		}
		mp_next(&v);
	}
	return argv;
}

static bool env_key_eq(const char *a, const char *b)
{
	size_t la = strcspn(a, "="), lb = strcspn(b, "=");
	return la == lb && memcmp(a, b, la) == 0;
}

/* The base environment with the request's env merged over it. */
static char **build_env(const char *v, bool *ok)
{
	*ok = true;
	uint32_t n = 0;
	if (v) {
		if (mp_typeof(*v) != MP_MAP) {
			*ok = false;
			return NULL;
		}
		const char *p = v;
		n = mp_decode_map(&p);
	}
	size_t nbase = sizeof base_env / sizeof base_env[0];
	char **env = calloc(nbase + n + 1, sizeof *env);
	if (!env) {
		*ok = false;
		return NULL;
	}
	size_t cnt = 0;
	for (size_t i = 0; i < nbase; i++)
		env[cnt++] = strdup(base_env[i]);
	if (v) {
		const char *p = v;
		mp_decode_map(&p);
		for (uint32_t i = 0; i < n; i++) {
			char *k = mp_dup_cstr(p);
			mp_next(&p);
			char *val = mp_dup_cstr(p);
			mp_next(&p);
			if (!k || !val || !*k || strchr(k, '=')) {
				free(k);
				free(val);
				free_strv(env);
				*ok = false;
				return NULL;
			}
			char *kv;
			if (asprintf(&kv, "%s=%s", k, val) < 0)
				kv = NULL;
			free(k);
			free(val);
			size_t j = 0;
			while (j < cnt && !env_key_eq(env[j], kv))
				j++;
			if (j < cnt)
				free(env[j]);
			else
				cnt++;
			env[j] = kv;
		}
	}
	env[cnt] = NULL;
	return env;
}

static void child(char **argv, char **env, const char *cwd, int in, int out, int err)
{
	sigset_t set;
	sigemptyset(&set);
	sigprocmask(SIG_SETMASK, &set, NULL);
	signal(SIGPIPE, SIG_DFL);
	setpgid(0, 0);
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(126);
	if (cwd && chdir(cwd) < 0) {
		dprintf(2, "evolvm-agent: chdir %s: %m\n", cwd);
		_exit(127);
	}
	environ = env;
	execvp(argv[0], argv);
	int e = errno;
	dprintf(2, "evolvm-agent: exec %s: %s\n", argv[0], strerror(e));
	_exit(e == ENOENT ? 127 : 126);
}

void op_exec(uint64_t id, const char *args)
{
	char **argv = parse_argv(mp_find(args, "argv"));
	if (!argv) {
		res_err(id, "BAD_REQUEST", "exec: argv must be a non-empty array of strings without NUL");
		return;
	}
	bool env_ok;
	char **env = build_env(mp_find(args, "env"), &env_ok);
	char *cwd = NULL;
	const char *cwd_v = mp_find(args, "cwd");
	const char *stdin_p = NULL;
	uint32_t stdin_len = 0;
	const char *stdin_v = mp_find(args, "stdin");
	uint64_t timeout = 0;
	const char *timeout_v = mp_find(args, "timeout_ms");
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	struct job *j = NULL;

	if (!env_ok) {
		res_err(id, "BAD_REQUEST", "exec: env must map non-empty names without '=' to strings");
		goto done;
	}
	if (cwd_v && mp_typeof(*cwd_v) != MP_NIL && !(cwd = mp_dup_cstr(cwd_v))) {
		res_err(id, "BAD_REQUEST", "exec: cwd must be a string");
		goto done;
	}
	if (stdin_v && mp_typeof(*stdin_v) != MP_NIL && !mp_get_bin(stdin_v, &stdin_p, &stdin_len)) {
		res_err(id, "BAD_REQUEST", "exec: stdin must be bin");
		goto done;
	}
	if (timeout_v && mp_typeof(*timeout_v) != MP_NIL && !mp_get_uint(timeout_v, &timeout)) {
		res_err(id, "BAD_REQUEST", "exec: timeout_ms must be an unsigned integer");
		goto done;
	}
	if (cwd) {
		struct stat st;
		if (stat(cwd, &st) < 0) {
			res_errno(id, errno, "exec: cwd", cwd);
			goto done;
		}
		if (!S_ISDIR(st.st_mode)) {
			res_errno(id, ENOTDIR, "exec: cwd", cwd);
			goto done;
		}
	}
	if (stdin_p) {
		if (pipe2(in, O_CLOEXEC) < 0)
			goto sys_error;
	} else if ((in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		goto sys_error;
	}
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		goto sys_error;

	j = calloc(1, sizeof *j);
	if (!j)
		goto sys_error;
	if (stdin_p && stdin_len) {
		if (!(j->in_buf = malloc(stdin_len)))
			goto sys_error;
		memcpy(j->in_buf, stdin_p, stdin_len);
		j->in_len = stdin_len;
	}
	pid_t pid = fork();
	if (pid < 0)
		goto sys_error;
	if (pid == 0)
		child(argv, env, cwd, in[0], out[1], err[1]);
	setpgid(pid, pid); /* also in the parent, so a timeout never misses the group */

	j->id = id;
	j->pid = pid;
	j->deadline = timeout ? now_ms() + (int64_t)timeout : 0;
	j->in_fd = in[1];
	j->out_fd = out[0];
	j->err_fd = err[0];
	close(in[0]);
	close(out[1]);
	close(err[1]);
	for (int *fd = &j->in_fd; fd <= &j->err_fd; fd++)
		if (*fd >= 0)
			fcntl(*fd, F_SETFL, O_NONBLOCK);
	if (j->in_fd >= 0 && j->in_len == 0)
		close_fd(&j->in_fd);
	j->next = jobs;
	jobs = j;
	j = NULL;
	goto done;

sys_error:
	res_errno(id, errno, "exec: setting up", NULL);
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0) close(in[i]);
		if (out[i] >= 0) close(out[i]);
		if (err[i] >= 0) close(err[i]);
	}
done:
	if (j) {
		free(j->in_buf);
		free(j);
	}
	free(cwd);
	free_strv(argv);
	free_strv(env);
}

/* Reads one chunk; closes the pipe at EOF, or at "nothing more" once the process is gone. */
static void read_pipe(struct job *j, int *fd, const char *stream)
{
	static char buf[CHUNK_MAX];
	ssize_t n = read(*fd, buf, sizeof buf);
	if (n > 0) {
		send_chunk(j->id, stream, buf, (size_t)n);
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR) || j->reaped) {
		close_fd(fd);
	}
}

static void on_job_fd(void *ctx, int tag, short rev)
{
	struct job *j = ctx;
	if (tag == TAG_IN) {
		if (j->in_fd < 0)
			return;
		if (rev & (POLLERR | POLLHUP)) {
			close_fd(&j->in_fd);
			return;
		}
		ssize_t n = write(j->in_fd, j->in_buf + j->in_off, j->in_len - j->in_off);
		if (n > 0)
			j->in_off += (size_t)n;
		if ((n < 0 && errno != EAGAIN && errno != EINTR) || j->in_off == j->in_len)
			close_fd(&j->in_fd);
		return;
	}
	int *fd = tag == TAG_OUT ? &j->out_fd : &j->err_fd;
	if (*fd >= 0)
		read_pipe(j, fd, tag == TAG_OUT ? "stdout" : "stderr");
}

void exec_poll_add(bool backpressured)
{
	for (struct job *j = jobs; j; j = j->next) {
		if (j->in_fd >= 0)
			ps_add(j->in_fd, POLLOUT, on_job_fd, j, TAG_IN);
		if (backpressured)
			continue;
		if (j->out_fd >= 0)
			ps_add(j->out_fd, POLLIN, on_job_fd, j, TAG_OUT);
		if (j->err_fd >= 0)
			ps_add(j->err_fd, POLLIN, on_job_fd, j, TAG_ERR);
	}
}

void exec_reap(void)
{
	struct signalfd_siginfo si;
	while (read(sigfd, &si, sizeof si) == sizeof si)
		;
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct job *j = jobs;
		while (j && (j->pid != pid || j->reaped))
			j = j->next;
		if (j) {
			j->reaped = true;
			j->status = status;
		} else {
			rt_reaped(pid, status);
		}
	}
}

static void finish(struct job *j)
{
	int code = -1, sig = 0;
	if (WIFEXITED(j->status))
		code = WEXITSTATUS(j->status);
	else if (WIFSIGNALED(j->status))
		sig = WTERMSIG(j->status);
	res_ok_begin(j->id, 3);
	oq_str("code"); oq_int(code);
	oq_str("signal"); oq_int(sig);
	oq_str("timed_out"); oq_bool(j->timed_out);
	oq_end();
}

void exec_tick(bool backpressured)
{
	int64_t now = now_ms();
	struct job **pp = &jobs;
	while (*pp) {
		struct job *j = *pp;
		if (!j->reaped && j->deadline && now >= j->deadline && !j->timed_out) {
			j->timed_out = true;
			kill(-j->pid, SIGKILL);
		}
		/* The process is gone: what is left in the pipes is all it wrote. */
		while (j->reaped && !backpressured && (j->out_fd >= 0 || j->err_fd >= 0)) {
			if (j->out_fd >= 0)
				read_pipe(j, &j->out_fd, "stdout");
			if (j->err_fd >= 0)
				read_pipe(j, &j->err_fd, "stderr");
			backpressured = oq_full();
		}
		if (j->reaped && j->out_fd < 0 && j->err_fd < 0) {
			close_fd(&j->in_fd);
			finish(j);
			*pp = j->next;
			free(j->in_buf);
			free(j);
			continue;
		}
		pp = &j->next;
	}
}

int exec_timeout_ms(void)
{
	int64_t best = -1, now = now_ms();
	for (struct job *j = jobs; j; j = j->next) {
		if (j->reaped || !j->deadline || j->timed_out)
			continue;
		int64_t left = j->deadline > now ? j->deadline - now : 0;
		if (best < 0 || left < best)
			best = left;
	}
	return best > 0x7fffffff ? 0x7fffffff : (int)best;
}

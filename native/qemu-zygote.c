/*
 * Preloaded into a QEMU started with EVOLVM_ZYGOTE=1 (SpawnHelper.startZygote in src/qemu/spawn-helper.ts, used by
 * src/qemu/qemu-process.ts): instead of running QEMU's main, the process serves fork requests, and each child runs
 * QEMU's main with the argv and environment it was sent.
 *
 * Why: where page faults are dear (this host is itself a VM: ~25 us each), starting QEMU is mostly the dynamic
 * loader and QEMU's constructors: `qemu-system-x86_64 --version` takes ~1,900 page faults and 40-76 ms here (236k
 * relative relocations in the PIE binary, 51 libraries). A fork of a process that has done all that already skips
 * it; the child pays only for the pages it writes. Spawn to an answered qmp_capabilities: 73-93 -> 35-46 ms.
 *
 * Spares: the zygote keeps one child forked ahead of the next request, so a spawn costs no fork. While it waits,
 * the spare copies the zygote's pages that QEMU is known to write (MADV_POPULATE_WRITE, one system call per run
 * of pages instead of a ~11 us fault each here), learnt from the page maps of the first children at their exit.
 * Measured on warm starts: spawn 6 -> 2.4 ms, then QEMU to an answered QMP 31 -> 25 ms.
 *
 * Without EVOLVM_ZYGOTE the shim only passes through to the real __libc_start_main.
 *
 * Protocol: the spawn helper's (src/qemu/spawn-helper-script.ts), one line per message, arbitrary bytes in hex:
 * - in:  `spawn ID STDERR_PATH_HEX ENV_COUNT ENV_HEX... ARGV_HEX...`
 * - in:  `kill PID SIGNAL_NUMBER` (ignored unless PID is a child not yet reaped)
 * - out: `spawned ID PID`, or `failed ID MESSAGE_HEX`
 * - out: `exit PID CODE SIGNAL_NUMBER` when a child is reaped (CODE -1 when a signal ended it)
 * End of input ends the zygote; it and its children die with their parent (PR_SET_PDEATHSIG).
 *
 * What a child shares with its siblings: the address-space layout and the stack-protector canary chosen when the
 * zygote started (as with any fork server). EVOLVM_QEMU_ZYGOTE=off starts every QEMU afresh instead.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ram-remap.h"
#include "zygote-pages.h"

#define MAX_LINE (4 * 1024 * 1024)
#define MAX_CHILDREN 4096

typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void), void (*)(void), void *);

static main_fn qemu_main;
/* The zygote's own argument area (argv[0] to the end of its last argument): /proc/PID/cmdline reads it. */
static char *args_start, *args_end;
static int wake_pipe[2] = { -1, -1 };
static pid_t live[MAX_CHILDREN];
static int live_count;

/* The spare: a child forked ahead of the next request, waiting for it on a pipe (-1 / 0 when there is none). */
static pid_t spare_pid;
static int spare_request = -1, spare_error = -1;

static void close_spare_fds(void)
{
	if (spare_request >= 0)
		close(spare_request);
	if (spare_error >= 0)
		close(spare_error);
	spare_request = spare_error = -1;
}

static void on_child(int sig)
{
	(void)sig;
	int saved = errno;
	ssize_t ignored = write(wake_pipe[1], "x", 1);
	(void)ignored;
	errno = saved;
}

static void say(const char *line)
{
	size_t length = strlen(line), done = 0;
	while (done < length) {
		ssize_t wrote = write(1, line + done, length - done);
		if (wrote < 0 && errno == EINTR)
			continue;
		if (wrote <= 0)
			_exit(1); /* the parent is gone */
		done += (size_t)wrote;
	}
}

static int unhex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes hex in place into a NUL-terminated string; NULL when it is not hex. */
static char *unhex(char *text)
{
	size_t length = strlen(text);
	if (length % 2)
		return NULL;
	for (size_t i = 0; i < length / 2; i++) {
		int high = unhex_digit(text[2 * i]), low = unhex_digit(text[2 * i + 1]);
		if (high < 0 || low < 0)
			return NULL;
		text[i] = (char)(high * 16 + low);
	}
	text[length / 2] = '\0';
	return text;
}

static void say_failed(const char *id, const char *message)
{
	static const char digits[] = "0123456789abcdef";
	size_t length = strlen(message), id_length = strlen(id);
	/* "failed " + id + " " + two hex digits per byte + "\n" + NUL */
	char *line = malloc(7 + id_length + 1 + length * 2 + 2);
	if (!line)
		_exit(1);
	char *at = line;
	memcpy(at, "failed ", 7);
	at += 7;
	memcpy(at, id, id_length);
	at += id_length;
	*at++ = ' ';
	for (size_t i = 0; i < length; i++) {
		*at++ = digits[(unsigned char)message[i] >> 4];
		*at++ = digits[(unsigned char)message[i] & 15];
	}
	memcpy(at, "\n", 2);
	say(line);
	free(line);
}

static int is_live(pid_t pid)
{
	for (int i = 0; i < live_count; i++)
		if (live[i] == pid)
			return 1;
	return 0;
}

static void reap(void)
{
	int status;
	pid_t pid;
	char line[96];
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == spare_pid) {
			/* Nobody asked for it: not reported. */
			spare_pid = 0;
			close_spare_fds();
			continue;
		}
		for (int i = 0; i < live_count; i++)
			if (live[i] == pid) {
				live[i] = live[--live_count];
				break;
			}
		if (WIFSIGNALED(status))
			snprintf(line, sizeof line, "exit %d -1 %d\n", (int)pid, WTERMSIG(status));
		else
			snprintf(line, sizeof line, "exit %d %d 0\n", (int)pid, WEXITSTATUS(status));
		say(line);
	}
}


static bool read_full(int fd, void *buffer, size_t length)
{
	for (size_t done = 0; done < length;) {
		ssize_t got = read(fd, (char *)buffer + done, length - done);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return false;
		done += (size_t)got;
	}
	return true;
}

static bool write_full(int fd, const void *buffer, size_t length)
{
	for (size_t done = 0; done < length;) {
		ssize_t wrote = write(fd, (const char *)buffer + done, length - done);
		if (wrote < 0 && errno == EINTR)
			continue;
		if (wrote <= 0)
			return false;
		done += (size_t)wrote;
	}
	return true;
}

/*
 * Writes the child's argv over the zygote's argument area, so that ps and pgrep show the command line the child
 * runs (the zygote is started with a long blank argument to make room). Arguments that do not fit are left out.
 */
static void show_argv(int argc, char **argv)
{
	char *at = args_start;
	for (int i = 0; i < argc; i++) {
		size_t length = strlen(argv[i]) + 1;
		if (at + length > args_end)
			break;
		memcpy(at, argv[i], length);
		at += length;
	}
	memset(at, 0, (size_t)(args_end - at));
}

/* In the child: stdio, signals and environment as a freshly exec'd QEMU would have them, then QEMU's main. */
static void run_child(pid_t zygote, int err_w, const char *stderr_path, char **env, int argc, char **argv)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != zygote)
		_exit(127);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	close(wake_pipe[0]);
	close(wake_pipe[1]);
	close_spare_fds();
	int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	int err_fd = open(stderr_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (null_fd < 0 || err_fd < 0) {
		char message[512];
		snprintf(message, sizeof message, "open %s: %s", null_fd < 0 ? "/dev/null" : stderr_path, strerror(errno));
		ssize_t ignored = write(err_w, message, strlen(message));
		(void)ignored;
		_exit(127);
	}
	/* dup2 clears close-on-exec on 0-2; the originals and err_w are closed before main. */
	if (dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(err_fd, 2) < 0)
		_exit(127);
	close(null_fd);
	close(err_fd);
	/* Before err_w closes, which is when the zygote says the child is spawned. */
	show_argv(argc, argv);
	close(err_w);
	environ = env;
	zygote_pages_learn_at_exit();
	ram_remap_listen_if_asked();
	exit(qemu_main(argc, argv, environ));
}


/*
 * A spare: forked ahead, it copies the pages QEMU will write (zygote-pages.c), then waits for a request: a
 * 64-bit length, then the stderr path, the environment and the arguments, each NUL-terminated, after two 32-bit
 * counts. Its pipe closing first (the zygote gone or the spare dropped) ends it.
 */
static void spare_main(pid_t zygote, int request, int err_w)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != zygote)
		_exit(127);
	/* Not the zygote's pipes to Node: a waiting spare must not hold them open. */
	int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0)
		_exit(127);
	close(null_fd);
	zygote_pages_populate();
	uint64_t length;
	uint32_t counts[2];
	if (!read_full(request, &length, sizeof length) || length < sizeof counts || length > 2 * MAX_LINE)
		_exit(0);
	char *blob = malloc(length + 1);
	if (!blob || !read_full(request, blob, length))
		_exit(0);
	close(request);
	blob[length] = '\0';
	memcpy(counts, blob, sizeof counts);
	if (counts[0] > length || counts[1] > length || counts[1] < 1)
		_exit(127);
	char **env = calloc((size_t)counts[0] + 1, sizeof *env), **argv = calloc((size_t)counts[1] + 1, sizeof *argv);
	if (!env || !argv)
		_exit(127);
	char *at = blob + sizeof counts, *end = blob + length;
	char *stderr_path = at;
	at += strlen(at) + 1;
	for (uint32_t i = 0; i < counts[0] + counts[1]; i++) {
		if (at >= end)
			_exit(127);
		if (i < counts[0])
			env[i] = at;
		else
			argv[i - counts[0]] = at;
		at += strlen(at) + 1;
	}
	run_child(zygote, err_w, stderr_path, env, (int)counts[1], argv);
}

/* Forks a spare when there is none (and room for one more child). */
static void make_spare(void)
{
	if (spare_pid > 0 || live_count >= MAX_CHILDREN - 1)
		return;
	int request[2], error[2];
	if (pipe2(request, O_CLOEXEC) != 0)
		return;
	if (pipe2(error, O_CLOEXEC) != 0) {
		close(request[0]);
		close(request[1]);
		return;
	}
	pid_t zygote = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		close(request[1]);
		close(error[0]);
		spare_main(zygote, request[0], error[1]);
	}
	close(request[0]);
	close(error[1]);
	if (pid < 0) {
		close(request[1]);
		close(error[0]);
		return;
	}
	spare_pid = pid;
	spare_request = request[1];
	spare_error = error[0];
}

/* Drops the spare (it died, or could not take a request). */
static void drop_spare(void)
{
	if (spare_pid > 0) {
		kill(spare_pid, SIGKILL);
		waitpid(spare_pid, NULL, 0);
	}
	spare_pid = 0;
	close_spare_fds();
}

/*
 * Hands a parsed request to the spare. Returns its error pipe (the zygote's end), or -1 when there is no spare or
 * it could not take the request (it is dropped then, and the caller forks as usual).
 */
static int send_to_spare(const char *stderr_path, char **env, uint32_t env_count, char **argv, uint32_t argc)
{
	if (spare_pid <= 0)
		return -1;
	size_t length = 2 * sizeof(uint32_t) + strlen(stderr_path) + 1;
	for (uint32_t i = 0; i < env_count; i++)
		length += strlen(env[i]) + 1;
	for (uint32_t i = 0; i < argc; i++)
		length += strlen(argv[i]) + 1;
	char *blob = malloc(sizeof(uint64_t) + length);
	if (!blob) {
		drop_spare();
		return -1;
	}
	uint64_t header = length;
	uint32_t counts[2] = { env_count, argc };
	char *at = blob;
	memcpy(at, &header, sizeof header);
	at += sizeof header;
	memcpy(at, counts, sizeof counts);
	at += sizeof counts;
	size_t part = strlen(stderr_path) + 1;
	memcpy(at, stderr_path, part);
	at += part;
	for (uint32_t i = 0; i < env_count + argc; i++) {
		const char *text = i < env_count ? env[i] : argv[i - env_count];
		part = strlen(text) + 1;
		memcpy(at, text, part);
		at += part;
	}
	bool sent = write_full(spare_request, blob, sizeof header + length);
	free(blob);
	if (!sent) {
		drop_spare();
		return -1;
	}
	int error = spare_error;
	close(spare_request);
	spare_request = spare_error = -1;
	spare_pid = 0;
	return error;
}

/* A request id as Node sends it: 1 to 20 decimal digits (the replies quote it, in fixed-size lines). */
static bool valid_id(const char *id)
{
	size_t length = strspn(id, "0123456789");
	return length > 0 && length <= 20 && id[length] == '\0';
}

static void spawn_child(char **fields, int count)
{
	if (count < 1 || !valid_id(fields[0]))
		return; /* no id to answer to */
	if (count < 4) {
		say_failed(fields[0], "malformed spawn request");
		return;
	}
	const char *id = fields[0];
	char *stderr_path = unhex(fields[1]);
	long env_count = strtol(fields[2], NULL, 10);
	if (!stderr_path || env_count < 0 || env_count > count - 4) {
		say_failed(id, "malformed spawn request");
		return;
	}
	char **env = calloc((size_t)env_count + 1, sizeof *env);
	int argc = count - 3 - (int)env_count;
	char **argv = calloc((size_t)argc + 1, sizeof *argv);
	if (!env || !argv) {
		say_failed(id, "out of memory");
		free(env);
		free(argv);
		return;
	}
	for (long i = 0; i < env_count; i++)
		if (!(env[i] = unhex(fields[3 + i])))
			goto malformed;
	for (int i = 0; i < argc; i++)
		if (!(argv[i] = unhex(fields[3 + env_count + i])))
			goto malformed;
	if (live_count == MAX_CHILDREN) {
		say_failed(id, "too many children");
		goto done;
	}
	pid_t pid = spare_pid;
	int err_r = send_to_spare(stderr_path, env, (uint32_t)env_count, argv, (uint32_t)argc);
	if (err_r < 0) {
		int err_pipe[2];
		if (pipe2(err_pipe, O_CLOEXEC) != 0) {
			say_failed(id, "pipe failed");
			goto done;
		}
		pid_t zygote = getpid();
		pid = fork();
		if (pid < 0) {
			close(err_pipe[0]);
			close(err_pipe[1]);
			say_failed(id, "fork failed");
			goto done;
		}
		if (pid == 0) {
			close(err_pipe[0]);
			run_child(zygote, err_pipe[1], stderr_path, env, argc, argv);
		}
		close(err_pipe[1]);
		err_r = err_pipe[0];
	}
	char message[512];
	size_t got = 0;
	for (;;) {
		ssize_t n = read(err_r, message + got, sizeof message - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == sizeof message - 1)
			break;
	}
	close(err_r);
	message[got] = '\0';
	if (got > 0) {
		waitpid(pid, NULL, 0);
		say_failed(id, message);
		goto done;
	}
	live[live_count++] = pid;
	char line[96];
	snprintf(line, sizeof line, "spawned %s %d\n", id, (int)pid);
	say(line);
	goto done;
malformed:
	say_failed(id, "malformed spawn request");
done:
	free(env);
	free(argv);
	/* The next request's child, forked now while the one just started is busy loading its guest. */
	make_spare();
}

static void handle(char *line)
{
	char **fields = NULL;
	int count = 0, capacity = 0;
	for (char *save = NULL, *field = strtok_r(line, " ", &save); field; field = strtok_r(NULL, " ", &save)) {
		if (count == capacity) {
			capacity = capacity ? capacity * 2 : 64;
			char **grown = realloc(fields, (size_t)capacity * sizeof *fields);
			if (!grown) {
				free(fields);
				return;
			}
			fields = grown;
		}
		fields[count++] = field;
	}
	if (count >= 1 && strcmp(fields[0], "spawn") == 0) {
		spawn_child(fields + 1, count - 1);
	} else if (count == 3 && strcmp(fields[0], "kill") == 0) {
		pid_t pid = (pid_t)strtol(fields[1], NULL, 10);
		if (pid > 0 && is_live(pid))
			kill(pid, (int)strtol(fields[2], NULL, 10));
	}
	free(fields);
}

/* QEMU's QAPI VersionInfo and VersionTriple (qapi/misc.json), as query-version returns them. */
struct version_triple {
	int64_t major, minor, micro;
};
struct version_info {
	struct version_triple *qemu;
	char *package;
};

/* QEMU's module_init_type values (include/qemu/module.h), unchanged from QEMU 5.1 to 7.2 at least. */
enum { MODULE_INIT_QOM = 3, MODULE_INIT_TRACE = 4 };

static void skip_class(void *klass, void *opaque)
{
	(void)klass;
	(void)opaque;
}

/*
 * Does once, here, the first steps of QEMU's main that depend on nothing but the binary: registering its trace
 * events and QOM types, and initialising every QOM class (QEMU's main does that for all of them when it looks up
 * the machine type). Each child's main then finds them done and skips them: module_call_init remembers each
 * module type, and a class is initialised only once. Measured: ~1-3 ms off spawn to a QMP session, and ~3 MiB
 * less PSS per QEMU (the classes stay shared with the zygote).
 * Only for QEMU 7, whose internals this was checked against; any other QEMU is left to do it itself.
 */
static void preinit_qemu(void)
{
	struct version_info *(*query_version)(void **) = (struct version_info *(*)(void **))dlsym(RTLD_DEFAULT, "qmp_query_version");
	void (*call_init)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "module_call_init");
	void (*class_foreach)(void (*)(void *, void *), const char *, bool, void *) =
		(void (*)(void (*)(void *, void *), const char *, bool, void *))dlsym(RTLD_DEFAULT, "object_class_foreach");
	if (!query_version || !call_init || !class_foreach)
		return;
	struct version_info *version = query_version(NULL);
	if (!version || !version->qemu || version->qemu->major != 7)
		return; /* leaked: a few bytes, once */
	call_init(MODULE_INIT_TRACE);
	call_init(MODULE_INIT_QOM);
	class_foreach(skip_class, NULL, true, NULL);
}

static int serve(int argc, char **argv, char **env)
{
	(void)env;
	args_start = argv[0];
	args_end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		return 1;
	if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
		return 1;
	struct sigaction action = { .sa_handler = on_child, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
	sigemptyset(&action.sa_mask);
	sigaction(SIGCHLD, &action, NULL);
	signal(SIGPIPE, SIG_IGN);
	char *input = malloc(MAX_LINE + 1);
	size_t have = 0;
	if (!input)
		return 1;
	preinit_qemu();
	zygote_pages_record();
	say("ready\n");
	make_spare();
	for (;;) {
		reap();
		struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = wake_pipe[0], .events = POLLIN } };
		if (poll(fds, 2, -1) < 0)
			continue;
		if (fds[1].revents) {
			char drain[64];
			while (read(wake_pipe[0], drain, sizeof drain) > 0)
				;
		}
		if (!fds[0].revents)
			continue;
		ssize_t got = read(0, input + have, MAX_LINE - have);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		have += (size_t)got;
		char *start = input, *newline;
		while ((newline = memchr(start, '\n', have - (size_t)(start - input)))) {
			*newline = '\0';
			handle(start);
			start = newline + 1;
		}
		have -= (size_t)(start - input);
		memmove(input, start, have);
		if (have == MAX_LINE)
			break; /* a line longer than any request: the parent is broken */
	}
	for (int i = 0; i < live_count; i++)
		kill(live[i], SIGKILL);
	if (spare_pid > 0)
		kill(spare_pid, SIGKILL);
	return 0;
}

int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void), void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
	start_fn real = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
	const char *zygote = getenv("EVOLVM_ZYGOTE");
	if (!zygote || strcmp(zygote, "1") != 0)
		return real(main, argc, argv, init, fini, rtld_fini, stack_end);
	unsetenv("EVOLVM_ZYGOTE");
	qemu_main = main;
	return real(serve, argc, argv, init, fini, rtld_fini, stack_end);
}

/*
 * evolvm guest init (PID 1): mounts the basic filesystems, loads the kernel modules
 * listed in /lib/modules/load-order, reads the evolvm.* kernel parameters, then
 * starts the agent and stays PID 1 to reap orphans and restart the agent if it dies.
 * Kernel parameters: evolvm.agent=0 (do not start the agent), evolvm.port=NAME.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_PATH "/sbin/evolvm-agent"
#define LOAD_ORDER "/lib/modules/load-order"

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	dprintf(2, "evolvm-init: %s\n", buf);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *opts)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, opts) < 0 && errno != EBUSY)
		say("mount %s on %s: %m", type, dst);
}

static void mount_all(void)
{
	mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
	mnt("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
}

/* The kernel opens /dev/console for PID 1; if that failed, try again now that devtmpfs is up. */
static void ensure_console(void)
{
	if (fcntl(2, F_GETFD) >= 0)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

static void load_modules(void)
{
	FILE *f = fopen(LOAD_ORDER, "re");
	if (!f) {
		say("%s: %m", LOAD_ORDER);
		return;
	}
	char line[512];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("open %s: %m", line);
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			say("finit_module %s: %m", line);
		close(fd);
	}
	fclose(f);
}

struct params {
	int agent;
	char port[128];
};

static void read_cmdline(struct params *p)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	for (char *save = NULL, *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(tok, "evolvm.agent=", 13) == 0)
			p->agent = strcmp(tok + 13, "0") != 0;
		else if (strncmp(tok, "evolvm.port=", 12) == 0 && tok[12])
			snprintf(p->port, sizeof p->port, "%s", tok + 12);
	}
}

static pid_t start_agent(const struct params *p)
{
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigprocmask(SIG_SETMASK, &set, NULL);
		setsid();
		if (p->port[0])
			execl(AGENT_PATH, AGENT_PATH, "--port", p->port, (char *)NULL);
		else
			execl(AGENT_PATH, AGENT_PATH, (char *)NULL);
		say("exec %s: %m", AGENT_PATH);
		_exit(127);
	}
	if (pid < 0)
		say("fork: %m");
	return pid;
}

int main(void)
{
	struct params p = { .agent = 1 };

	umask(022);
	mount_all();
	ensure_console();
	setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
	setenv("HOME", "/root", 1);
	if (chdir("/") < 0)
		say("chdir /: %m");
	load_modules();
	read_cmdline(&p);

	pid_t agent = p.agent ? start_agent(&p) : -1;
	if (!p.agent)
		say("evolvm.agent=0: not starting the agent");
	for (;;) {
		int status;
		pid_t pid = wait(&status);
		if (pid < 0) {
			if (errno == ECHILD) {
				if (!p.agent) {
					pause();
					continue;
				}
			} else if (errno == EINTR) {
				continue;
			}
		}
		if (p.agent && (pid == agent || agent < 0)) {
			if (pid == agent)
				say("agent exited (status 0x%x); restarting", status);
			/* no tight loop if the agent dies at once */
			struct timespec ts = { 0, 200 * 1000 * 1000 };
			nanosleep(&ts, NULL);
			agent = start_agent(&p);
		}
	}
}

/*
 * evolvm guest init (PID 1): mounts the basic filesystems, loads the kernel modules
 * listed in /lib/modules/load-order and deletes /lib/modules (rootfs is guest RAM),
 * reads the evolvm.* kernel parameters, then
 * mounts the runtimes image (the read-only virtio-blk disk whose serial is evolvm-maps,
 * a squashfs) on /opt/evolvm/runtimes and each user map (a read-only squashfs disk whose serial is
 * emap-NAME) on /maps/NAME, then starts the agent and stays PID 1 to reap
 * orphans and restart the agent if it dies.
 * Kernel parameters: evolvm.agent=0 (do not start the agent), evolvm.port=NAME.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_PATH "/sbin/evolvm-agent"
#define MODULES_DIR "/lib/modules"
#define LOAD_ORDER MODULES_DIR "/load-order"
#define MAPS_SERIAL "evolvm-maps"
#define MAPS_MOUNT "/opt/evolvm/runtimes"
/* How long to wait for the maps disk to show up (virtio-blk probes synchronously on module load,
 * so it is normally there at the first look), and how often to look meanwhile. */
#define MAPS_WAIT_MS 200
#define MAPS_POLL_MS 5
/* A user map's disk serial is USER_MAP_PREFIX + its name (virtio-blk serials hold 20 bytes). */
#define USER_MAP_PREFIX "emap-"
#define USER_MAPS_DIR "/maps"

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
	/* The host names each sandbox through the hostname (the agent's refresh); this is where guest code reads it. */
	mkdir("/run/evolvm", 0755);
	symlink("/proc/sys/kernel/hostname", "/run/evolvm/sandbox-id");
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

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	if (remove(path) < 0)
		say("remove %s: %m", path);
	return 0;
}

/* Loaded modules need their files no more; rootfs lives in guest RAM, and the kernel zeroes the pages
 * it frees (init_on_free=1), so snapshots no longer carry them. */
static void remove_modules(void)
{
	if (nftw(MODULES_DIR, remove_entry, 8, FTW_DEPTH | FTW_PHYS) < 0)
		say("removing %s: %m", MODULES_DIR);
}

static long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

/* Reads a small sysfs file into buf without its trailing newline; returns its length or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		n--;
	buf[n] = 0;
	return n;
}

/* Finds the virtio-blk disk (/sys/block/vd*) whose serial is MAPS_SERIAL; puts its name in name. */
static int find_maps_disk(char *name, size_t size)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return -1;
	int found = -1;
	struct dirent *e;
	while (found < 0 && (e = readdir(d))) {
		if (strncmp(e->d_name, "vd", 2) != 0)
			continue;
		char path[300], serial[64];
		snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
		if (read_small(path, serial, sizeof serial) >= 0 && strcmp(serial, MAPS_SERIAL) == 0) {
			snprintf(name, size, "%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

/* devtmpfs makes a disk's node before the disk appears in sysfs; makes one if it somehow did not. */
static void ensure_dev_node(const char *name, const char *dev)
{
	if (access(dev, F_OK) == 0)
		return;
	char path[300], majmin[32];
	unsigned maj, min;
	snprintf(path, sizeof path, "/sys/block/%s/dev", name);
	if (read_small(path, majmin, sizeof majmin) < 0 || sscanf(majmin, "%u:%u", &maj, &min) != 2 ||
	    mknod(dev, S_IFBLK | 0400, makedev(maj, min)) < 0)
		say("maps: no %s and cannot make it: %m", dev);
}

/* A user map's name: 1-15 of [a-z0-9_-], starting with a letter or digit (the host checks the same). */
static int valid_map_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 15 || name[0] == '-' || name[0] == '_')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return 0;
	}
	return 1;
}

/*
 * Mounts each user map (a read-only virtio-blk disk whose serial is emap-NAME, a squashfs) on /maps/NAME.
 * Called after mount_maps: virtio-blk probes every disk when its module loads, so all of them are there.
 */
/*
 * The file system on a map's disk, from its first bytes (as the host checked before attaching it,
 * src/qemu/user-maps.ts): "squashfs" (magic "hsqs" at 0) or "ext4" (0xEF53 at 1080; the ext4 driver
 * mounts ext2 and ext3 too), else NULL.
 */
static const char *map_fs_type(const char *dev)
{
	unsigned char head[1082];
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = pread(fd, head, sizeof head, 0);
	close(fd);
	if (n >= 4 && memcmp(head, "hsqs", 4) == 0)
		return "squashfs";
	if (n == (ssize_t)sizeof head && head[1080] == 0x53 && head[1081] == 0xef)
		return "ext4";
	return NULL;
}

static void mount_user_maps(void)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "vd", 2) != 0)
			continue;
		char path[300], serial[64], dir[300], dev[300];
		snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
		if (read_small(path, serial, sizeof serial) < 0 || strncmp(serial, USER_MAP_PREFIX, strlen(USER_MAP_PREFIX)) != 0)
			continue;
		const char *name = serial + strlen(USER_MAP_PREFIX);
		if (!valid_map_name(name)) {
			say("maps: disk %s has serial %s, not a valid map name; not mounted", e->d_name, serial);
			continue;
		}
		snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
		ensure_dev_node(e->d_name, dev);
		snprintf(dir, sizeof dir, USER_MAPS_DIR "/%s", name);
		mkdir(USER_MAPS_DIR, 0755);
		mkdir(dir, 0755);
		const char *type = map_fs_type(dev);
		if (!type) {
			say("maps: disk %s (serial %s) holds neither squashfs nor ext2/3/4; not mounted", dev, serial);
			continue;
		}
		/* noload: the disk is read-only, so an ext journal is not replayed (the host's view stays the truth). */
		if (mount(dev, dir, type, MS_RDONLY | MS_NOSUID | MS_NODEV, strcmp(type, "ext4") == 0 ? "noload" : NULL) < 0)
			say("maps: mount %s (serial %s, %s) on %s: %m", dev, serial, type, dir);
	}
	closedir(d);
}

/* Mounts the runtimes image on MAPS_MOUNT; without it, logs and goes on (rt_start then fails with ENOENT). */
static void mount_maps(void)
{
	long start = now_us();
	char name[256], dev[300];
	int found;
	while ((found = find_maps_disk(name, sizeof name)) < 0 && now_us() - start < MAPS_WAIT_MS * 1000L) {
		struct timespec ts = { 0, MAPS_POLL_MS * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	if (found < 0) {
		say("runtimes: no virtio-blk disk with serial %s after %d ms; %s stays empty", MAPS_SERIAL,
		    MAPS_WAIT_MS, MAPS_MOUNT);
		return;
	}
	snprintf(dev, sizeof dev, "/dev/%s", name);
	ensure_dev_node(name, dev);
	mkdir("/opt", 0755);
	mkdir("/opt/evolvm", 0755);
	mkdir(MAPS_MOUNT, 0755);
	if (mount(dev, MAPS_MOUNT, "squashfs", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0) {
		say("runtimes: mount %s (serial %s) on %s: %m", dev, MAPS_SERIAL, MAPS_MOUNT);
		return;
	}
	say("runtimes: mounted %s (serial %s, squashfs) on %s in %ld us", dev, MAPS_SERIAL, MAPS_MOUNT,
	    now_us() - start);
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
	remove_modules();
	mount_maps();
	mount_user_maps();
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

/* Finding and watching the virtio-serial port (no udev: scan sysfs by name). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "agent.h"

int port_try_open(const char *want)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	struct dirent *e;
	int fd = -1;
	while (fd < 0 && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], name[256];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		int nfd = open(path, O_RDONLY | O_CLOEXEC);
		if (nfd < 0)
			continue;
		ssize_t n = read(nfd, name, sizeof name - 1);
		close(nfd);
		if (n <= 0)
			continue;
		name[n] = 0;
		name[strcspn(name, "\n")] = 0;
		if (strcmp(name, want) != 0)
			continue;
		snprintf(path, sizeof path, "/dev/%s", e->d_name);
		fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			logmsg("open %s: %m", path);
	}
	closedir(d);
	return fd;
}

/* Waits for the port to appear (the driver announces ports asynchronously), then opens it. */
int port_open(const char *name)
{
	int64_t start = now_ms();
	bool warned = false;
	for (;;) {
		int fd = port_try_open(name);
		if (fd >= 0)
			return fd;
		if (!warned && now_ms() - start > 3000) {
			logmsg("still waiting for virtio port %s", name);
			warned = true;
		}
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* The driver reports POLLHUP (and EOF on read) while no host has the port open. */
bool port_host_connected(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP);
}

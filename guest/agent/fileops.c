/*
 * file_write (one synchronous pwrite) and file_read (a stream of data chunks,
 * produced only while the output queue has room).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <msgpuck.h>
#include "agent.h"

struct reader {
	struct reader *next;
	uint64_t id;
	int fd;
	uint64_t size;
	char *path;
};

static struct reader *readers, **readers_tail = &readers;

/* mkdir -p of the directory that will hold path. */
static int make_parents(char *path)
{
	for (char *p = path + 1; (p = strchr(p, '/')); p++) {
		*p = 0;
		int r = mkdir(path, 0755);
		int e = errno;
		*p = '/';
		if (r < 0 && e != EEXIST) {
			errno = e;
			return -1;
		}
	}
	return 0;
}

void op_file_write(uint64_t id, const char *args)
{
	char *path = mp_dup_cstr(mp_find(args, "path"));
	const char *data = NULL;
	uint32_t len = 0;
	uint64_t off = 0, mode = 0;
	bool trunc = false, mkdirs = false, has_mode = false;
	const char *v;
	int fd = -1;

	if (!path || !*path) {
		res_err(id, "BAD_REQUEST", "file_write: path must be a non-empty string");
		goto out;
	}
	if (!mp_get_bin(mp_find(args, "d"), &data, &len)) {
		res_err(id, "BAD_REQUEST", "file_write: d must be bin");
		goto out;
	}
	if ((v = mp_find(args, "off")) && !mp_get_uint(v, &off)) {
		res_err(id, "BAD_REQUEST", "file_write: off must be an unsigned integer");
		goto out;
	}
	if (off > (uint64_t)INT64_MAX - len) {
		res_err(id, "TOO_LARGE", "file_write: off + length overflows");
		goto out;
	}
	if ((v = mp_find(args, "trunc")) && !mp_get_bool(v, &trunc)) {
		res_err(id, "BAD_REQUEST", "file_write: trunc must be a bool");
		goto out;
	}
	if ((v = mp_find(args, "mkdirs")) && !mp_get_bool(v, &mkdirs)) {
		res_err(id, "BAD_REQUEST", "file_write: mkdirs must be a bool");
		goto out;
	}
	if ((v = mp_find(args, "mode")) && mp_typeof(*v) != MP_NIL) {
		if (!mp_get_uint(v, &mode) || mode > 07777) {
			res_err(id, "BAD_REQUEST", "file_write: mode must be an unsigned integer <= 0o7777");
			goto out;
		}
		has_mode = true;
	}
	if (mkdirs && make_parents(path) < 0) {
		res_errno(id, errno, "file_write: mkdir parents of", path);
		goto out;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (trunc ? O_TRUNC : 0), has_mode ? (mode_t)mode : 0644);
	if (fd < 0) {
		res_errno(id, errno, "file_write: open", path);
		goto out;
	}
	if (has_mode && fchmod(fd, (mode_t)mode) < 0) {
		res_errno(id, errno, "file_write: chmod", path);
		goto out;
	}
	for (uint32_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, data + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			res_errno(id, errno, "file_write: write", path);
			goto out;
		}
		done += (uint32_t)n;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		res_errno(id, errno, "file_write: stat", path);
		goto out;
	}
	res_ok_begin(id, 1);
	oq_str("size"); oq_uint((uint64_t)st.st_size);
	oq_end();
out:
	if (fd >= 0)
		close(fd);
	free(path);
}

void op_file_read(uint64_t id, const char *args)
{
	char *path = mp_dup_cstr(mp_find(args, "path"));
	if (!path || !*path) {
		res_err(id, "BAD_REQUEST", "file_read: path must be a non-empty string");
		free(path);
		return;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		res_errno(id, errno, "file_read: open", path);
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		res_errno(id, EISDIR, "file_read: open", path);
		goto fail;
	}
	struct reader *r = calloc(1, sizeof *r);
	if (!r) {
		res_err(id, "INTERNAL", "file_read: out of memory");
		goto fail;
	}
	r->id = id;
	r->fd = fd;
	r->path = path;
	*readers_tail = r;
	readers_tail = &r->next;
	return;
fail:
	if (fd >= 0)
		close(fd);
	free(path);
}

bool fread_pending(void) { return readers != NULL; }

/* One chunk per reader per call, oldest first, while the output queue has room. */
void fread_tick(bool backpressured)
{
	static char buf[CHUNK_MAX];
	struct reader **pp = &readers;
	while (*pp && !backpressured) {
		struct reader *r = *pp;
		ssize_t n = read(r->fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0) {
			send_chunk(r->id, "data", buf, (size_t)n);
			r->size += (uint64_t)n;
			pp = &r->next;
		} else {
			if (n == 0) {
				res_ok_begin(r->id, 1);
				oq_str("size"); oq_uint(r->size);
				oq_end();
			} else {
				res_errno(r->id, errno, "file_read: read", r->path);
			}
			close(r->fd);
			free(r->path);
			*pp = r->next;
			free(r);
		}
		backpressured = oq_full();
	}
	readers_tail = &readers;
	while (*readers_tail)
		readers_tail = &(*readers_tail)->next;
}

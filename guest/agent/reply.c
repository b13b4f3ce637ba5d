/* Building res and chunk frames. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "agent.h"

void res_ok_begin(uint64_t id, uint32_t nfields)
{
	oq_begin();
	oq_map(4);
	oq_str("t"); oq_str("res");
	oq_str("id"); oq_uint(id);
	oq_str("ok"); oq_bool(true);
	oq_str("v"); oq_map(nfields);
}

void res_ok_empty(uint64_t id)
{
	res_ok_begin(id, 0);
	oq_end();
}

static void res_err_str(uint64_t id, const char *code, const char *msg)
{
	oq_begin();
	oq_map(4);
	oq_str("t"); oq_str("res");
	oq_str("id"); oq_uint(id);
	oq_str("ok"); oq_bool(false);
	oq_str("e"); oq_map(2);
	oq_str("code"); oq_str(code);
	oq_str("msg"); oq_str(msg);
	oq_end();
}

void res_err(uint64_t id, const char *code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	res_err_str(id, code, msg);
}

void res_errno(uint64_t id, int err, const char *what, const char *path)
{
	const char *name = errno_name(err);
	char code[32];
	if (!name) {
		snprintf(code, sizeof code, "E%d", err);
		name = code;
	}
	if (path)
		res_err(id, name, "%s %s: %s", what, path, strerror(err));
	else
		res_err(id, name, "%s: %s", what, strerror(err));
}

void send_chunk(uint64_t id, const char *stream, const char *data, size_t len)
{
	oq_begin();
	oq_map(4);
	oq_str("t"); oq_str("chunk");
	oq_str("id"); oq_uint(id);
	oq_str("s"); oq_str(stream);
	oq_str("d"); oq_bin(data, (uint32_t)len);
	oq_end();
}

/*
 * evolvm-rt-js: the JavaScript runtime of the evolvm guest (see ../../RUNTIMES.md). One duktape heap;
 * `load` runs the source at global scope, its exports are the global functions it added; `call` maps
 * msgpack arguments to JS values and the result back; `host.<name>()` calls out to the host.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <msgpuck.h>
#include "duktape.h"
#include "../common/rtchan.h"

/* build.sh passes the version from duktape.h, e.g. "duktape-2.7.0". */
#ifndef RT_VERSION
#define RT_VERSION "duktape-unknown"
#endif

/* Globals that existed before the code ran, name -> value, kept in the heap stash. */
#define STASH_BEFORE "before"
#define HOST_ERROR_KEY DUK_HIDDEN_SYMBOL("evolvmHostError")

/* One request being served. */
struct req {
	uint64_t id;
	const char *a;
	void (*fn)(duk_context *, struct req *);
	const char *fail_code; /* error code when the safe call fails, default INTERNAL */
	bool replied;
};

static duk_context *ctx;
static struct mpb out, hb;
static enum { EMPTY, LOADED, DIRTY } state = EMPTY;
static char **imports;
static size_t nimports;
static uint64_t current_id;
static char *host_ret;        /* the last hostret frame, freed on the next host call */
static bool encoding_hostcall; /* hb is in use */

static void fatal(void *udata, const char *msg)
{
	(void)udata;
	rt_log("duktape fatal error: %s", msg ? msg : "(no message)");
	abort();
}

/* --- msgpack -> JS ------------------------------------------------------------------------------ */

static void push_mp(duk_context *c, const char **p, int depth)
{
	if (depth > RT_MAX_DEPTH)
		(void)duk_error(c, DUK_ERR_RANGE_ERROR, "value nested more than %d deep", RT_MAX_DEPTH);
	duk_require_stack(c, 4);
	uint32_t n, len;
	const char *s;
	switch (mp_typeof(**p)) {
	case MP_NIL: mp_decode_nil(p); duk_push_null(c); break;
	case MP_BOOL: duk_push_boolean(c, mp_decode_bool(p)); break;
	case MP_UINT: duk_push_number(c, (duk_double_t)mp_decode_uint(p)); break;
	case MP_INT: duk_push_number(c, (duk_double_t)mp_decode_int(p)); break;
	case MP_FLOAT: duk_push_number(c, mp_decode_float(p)); break;
	case MP_DOUBLE: duk_push_number(c, mp_decode_double(p)); break;
	case MP_STR: s = mp_decode_str(p, &len); duk_push_lstring(c, s, len); break;
	case MP_BIN: {
		s = mp_decode_bin(p, &len);
		void *d = duk_push_fixed_buffer(c, len);
		if (len)
			memcpy(d, s, len);
		duk_push_buffer_object(c, -1, 0, len, DUK_BUFOBJ_UINT8ARRAY);
		duk_remove(c, -2);
		break;
	}
	case MP_ARRAY:
		n = mp_decode_array(p);
		duk_push_array(c);
		for (uint32_t i = 0; i < n; i++) {
			push_mp(c, p, depth + 1);
			duk_put_prop_index(c, -2, i);
		}
		break;
	case MP_MAP:
		n = mp_decode_map(p);
		duk_push_object(c);
		for (uint32_t i = 0; i < n; i++) {
			if (mp_typeof(**p) == MP_STR) {
				s = mp_decode_str(p, &len);
				duk_push_lstring(c, s, len);
			} else {
				push_mp(c, p, depth + 1);
				duk_to_string(c, -1);
			}
			push_mp(c, p, depth + 1);
			duk_put_prop(c, -3);
		}
		break;
	default: /* MP_EXT */
		mp_next(p);
		duk_push_undefined(c);
		break;
	}
}

/* --- JS -> msgpack ------------------------------------------------------------------------------ */

/* Duktape keeps strings in CESU-8 (a surrogate pair is two 3-byte sequences): pairs become one 4-byte
 * UTF-8 sequence and lone surrogates U+FFFD, so that the host gets valid UTF-8. */
static void put_string(struct mpb *b, const char *s, size_t len)
{
	bool plain = true;
	for (size_t i = 0; i + 1 < len; i++)
		if ((unsigned char)s[i] == 0xed && ((unsigned char)s[i + 1] & 0xe0) == 0xa0)
			plain = false;
	if (plain) {
		mpb_strn(b, s, (uint32_t)len);
		return;
	}
	char *o = malloc(len + 1);
	size_t k = 0;
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		if (i + 2 < len && u[i] == 0xed && (u[i + 1] & 0xe0) == 0xa0) {
			unsigned hi = 0xd000 | (u[i + 1] & 0x3f) << 6 | (u[i + 2] & 0x3f);
			if (hi < 0xdc00 && i + 5 < len && u[i + 3] == 0xed && (u[i + 4] & 0xf0) == 0xb0) {
				unsigned lo = 0xd000 | (u[i + 4] & 0x3f) << 6 | (u[i + 5] & 0x3f);
				unsigned cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
				o[k++] = (char)(0xf0 | cp >> 18);
				o[k++] = (char)(0x80 | (cp >> 12 & 0x3f));
				o[k++] = (char)(0x80 | (cp >> 6 & 0x3f));
				o[k++] = (char)(0x80 | (cp & 0x3f));
				i += 6;
			} else {
				o[k++] = (char)0xef; o[k++] = (char)0xbf; o[k++] = (char)0xbd;
				i += 3;
			}
		} else {
			o[k++] = s[i++];
		}
	}
	mpb_strn(b, o, (uint32_t)k);
	free(o);
}

static void put_number(struct mpb *b, double d)
{
	if (d == trunc(d) && fabs(d) < 9223372036854775808.0 && !(d == 0 && signbit(d)))
		mpb_int(b, (int64_t)d);
	else
		mpb_double(b, d);
}

static void put_js(duk_context *c, struct mpb *b, duk_idx_t idx, int depth)
{
	idx = duk_normalize_index(c, idx);
	if (depth > RT_MAX_DEPTH)
		(void)duk_error(c, DUK_ERR_RANGE_ERROR, "value nested more than %d deep (or cyclic)", RT_MAX_DEPTH);
	duk_require_stack(c, 4);
	duk_size_t len;
	const char *s;
	switch (duk_get_type(c, idx)) {
	case DUK_TYPE_BOOLEAN: mpb_bool(b, duk_get_boolean(c, idx)); return;
	case DUK_TYPE_NUMBER: put_number(b, duk_get_number(c, idx)); return;
	case DUK_TYPE_STRING: s = duk_get_lstring(c, idx, &len); put_string(b, s, len); return;
	case DUK_TYPE_BUFFER:
	case DUK_TYPE_OBJECT:
		break;
	default: /* undefined, null, pointer, lightfunc */
		mpb_nil(b);
		return;
	}
	if (duk_is_buffer_data(c, idx)) {
		void *d = duk_get_buffer_data(c, idx, &len);
		if (len > RT_MAX_FRAME)
			b->overflow = true;
		else
			mpb_bin(b, d, (uint32_t)len);
		return;
	}
	if (duk_is_function(c, idx)) {
		mpb_nil(b);
		return;
	}
	if (duk_is_array(c, idx)) {
		duk_size_t n = duk_get_length(c, idx);
		if (n > RT_MAX_FRAME) {
			b->overflow = true;
			return;
		}
		mpb_array(b, (uint32_t)n);
		for (duk_size_t i = 0; i < n && !b->overflow; i++) {
			duk_get_prop_index(c, idx, (duk_uarridx_t)i);
			put_js(c, b, -1, depth + 1);
			duk_pop(c);
		}
		return;
	}
	/* A plain object: its own enumerable string keys. Getters may run, so the count is patched in after. */
	size_t at = b->len;
	mpb_raw(b, "\xdf\0\0\0\0", 5); /* map32 */
	uint32_t count = 0;
	duk_enum(c, idx, DUK_ENUM_OWN_PROPERTIES_ONLY);
	while (!b->overflow && duk_next(c, -1, 1)) {
		s = duk_get_lstring(c, -2, &len);
		put_string(b, s, len);
		put_js(c, b, -1, depth + 1);
		duk_pop_2(c);
		count++;
	}
	duk_pop(c);
	if (!b->overflow) {
		unsigned char *h = (unsigned char *)b->p + at + 1;
		h[0] = count >> 24; h[1] = count >> 16; h[2] = count >> 8; h[3] = count;
	}
}

/* --- host functions --------------------------------------------------------------------------- */

static duk_ret_t encode_args(duk_context *c, void *udata)
{
	duk_idx_t n = duk_get_top(c);
	for (duk_idx_t k = 0; k < n; k++)
		put_js(c, udata, k, 0);
	return 0;
}

static duk_ret_t host_fn(duk_context *c)
{
	int i = duk_get_current_magic(c);
	if (i < 0 || (size_t)i >= nimports)
		return duk_error(c, DUK_ERR_ERROR, "unknown host function");
	if (encoding_hostcall)
		return duk_error(c, DUK_ERR_ERROR, "host.%s called while reading the arguments of another host call", imports[i]);
	duk_idx_t n = duk_get_top(c);
	free(host_ret);
	host_ret = NULL;
	uint64_t call = rt_hostcall_begin(&hb, current_id, imports[i]);
	mpb_array(&hb, (uint32_t)n);
	/* In a safe call, so that a getter that throws cannot leave encoding_hostcall set. */
	encoding_hostcall = true;
	int rc = duk_safe_call(c, encode_args, &hb, n, 1);
	encoding_hostcall = false;
	if (rc != 0)
		return duk_throw(c);
	duk_pop(c);
	const char *err = NULL;
	host_ret = rt_hostcall_wait(&hb, call, &err);
	if (!host_ret) {
		duk_push_error_object(c, DUK_ERR_ERROR, "host.%s: %s", imports[i], err);
		goto throw_host;
	}
	const char *ok = mp_find(host_ret, "ok");
	if (ok && mp_typeof(*ok) == MP_BOOL && mp_decode_bool(&ok)) {
		const char *v = mp_find(host_ret, "v");
		if (v)
			push_mp(c, &v, 0);
		else
			duk_push_undefined(c);
		return 1;
	}
	const char *e = mp_find(host_ret, "e"), *code = "HOST_ERROR", *msg = "";
	uint32_t code_len = 10, msg_len = 0;
	mp_get_str(mp_find(e, "code"), &code, &code_len);
	mp_get_str(mp_find(e, "msg"), &msg, &msg_len);
	duk_push_error_object(c, DUK_ERR_ERROR, "host.%s failed: %.*s: %.*s", imports[i], (int)(code_len > 64 ? 64 : code_len),
			      code, (int)(msg_len > 2048 ? 2048 : msg_len), msg);
throw_host:
	duk_push_true(c);
	duk_put_prop_string(c, -2, HOST_ERROR_KEY);
	return duk_throw(c);
}

/* The global `host` object, one function per offered import. */
static void make_host_object(duk_context *c, const char *list)
{
	/* a load that did not compile may be followed by another */
	for (size_t i = 0; i < nimports; i++)
		free(imports[i]);
	free(imports);
	imports = NULL;
	nimports = 0;
	duk_push_object(c);
	if (list && mp_typeof(*list) == MP_ARRAY) {
		uint32_t n = mp_decode_array(&list);
		imports = calloc(n ? n : 1, sizeof *imports);
		if (!imports)
			(void)duk_error(c, DUK_ERR_ERROR, "out of memory");
		for (uint32_t i = 0; i < n && i < 0x7fff; i++, mp_next(&list)) {
			const char *s;
			uint32_t len;
			if (!mp_get_str(mp_find(list, "name"), &s, &len) || memchr(s, 0, len))
				continue;
			imports[nimports] = strndup(s, len);
			duk_push_c_function(c, host_fn, DUK_VARARGS);
			duk_set_magic(c, -1, (duk_int_t)nimports);
			duk_put_prop_lstring(c, -2, s, len);
			nimports++;
		}
	}
	duk_put_global_string(c, "host");
}

/* --- operations ------------------------------------------------------------------------------- */

/* The thrown value at idx as a message: its stack when it has one. */
static const char *error_text(duk_context *c, duk_idx_t idx)
{
	idx = duk_normalize_index(c, idx);
	if (duk_is_error(c, idx)) {
		duk_get_prop_string(c, idx, "stack");
		if (duk_is_string(c, -1)) {
			duk_replace(c, idx);
			return duk_get_string(c, idx);
		}
		duk_pop(c);
	}
	return duk_safe_to_string(c, idx);
}

static bool is_host_error(duk_context *c, duk_idx_t idx)
{
	if (!duk_is_object(c, idx))
		return false;
	bool r = duk_get_prop_string(c, idx, HOST_ERROR_KEY) && duk_to_boolean(c, -1);
	duk_pop(c);
	return r;
}

/* Whether the global property on the stack top (key at -2, value at -1) is a function the code added or
 * replaced. */
static bool is_user_function(duk_context *c)
{
	if (!duk_is_callable(c, -1))
		return false;
	duk_push_heap_stash(c);
	duk_get_prop_string(c, -1, STASH_BEFORE);
	duk_dup(c, -4);
	bool had = duk_get_prop(c, -2);
	bool same = had && duk_strict_equals(c, -1, -4);
	duk_pop_3(c);
	return !same;
}

static void op_load(duk_context *c, struct req *r)
{
	if (state != EMPTY) {
		rt_res_err(r->id, "ALREADY_LOADED", state == LOADED ? "code is already loaded (devolve to swap code)"
								    : "a failed load left global state behind (devolve to load again)");
		r->replied = true;
		return;
	}
	const char *src;
	uint32_t len;
	if (!mp_get_bin(mp_find(r->a, "code"), &src, &len)) {
		rt_res_err(r->id, "BAD_REQUEST", "load: code must be bin or str");
		r->replied = true;
		return;
	}
	make_host_object(c, mp_find(r->a, "imports"));

	/* Remember every global (enumerable or not) so that only what the code adds is exported. */
	duk_push_heap_stash(c);
	duk_push_object(c);
	duk_push_global_object(c);
	duk_enum(c, -1, DUK_ENUM_OWN_PROPERTIES_ONLY | DUK_ENUM_INCLUDE_NONENUMERABLE);
	while (duk_next(c, -1, 1))
		duk_put_prop(c, -5); /* before[key] = value */
	duk_pop_2(c);
	duk_put_prop_string(c, -2, STASH_BEFORE);
	duk_pop(c);

	duk_push_string(c, "code.js");
	if (duk_pcompile_lstring_filename(c, 0, src, len) != 0) {
		rt_res_err(r->id, "INVALID_CODE", "%s", duk_safe_to_string(c, -1));
		duk_pop(c);
		r->replied = true;
		return;
	}
	state = DIRTY;
	current_id = r->id;
	if (duk_pcall(c, 0) != 0) {
		rt_res_err(r->id, "START_TRAP", "%s", error_text(c, -1));
		duk_pop(c);
		r->replied = true;
		return;
	}
	duk_pop(c);
	state = LOADED;

	rt_res_begin(&out, r->id);
	mpb_map(&out, 1);
	mpb_str(&out, "exports");
	size_t at = out.len;
	mpb_raw(&out, "\xdd\0\0\0\0", 5); /* array32, count patched below */
	uint32_t count = 0;
	duk_push_global_object(c);
	duk_enum(c, -1, DUK_ENUM_OWN_PROPERTIES_ONLY | DUK_ENUM_INCLUDE_NONENUMERABLE);
	while (duk_next(c, -1, 1)) {
		if (is_user_function(c)) {
			duk_size_t klen;
			const char *k = duk_get_lstring(c, -2, &klen);
			mpb_map(&out, 3);
			mpb_str(&out, "name"); put_string(&out, k, klen);
			mpb_str(&out, "params"); mpb_array(&out, 0);
			mpb_str(&out, "results"); mpb_array(&out, 0);
			count++;
		}
		duk_pop_2(c);
	}
	duk_pop_2(c);
	if (!out.overflow) {
		unsigned char *h = (unsigned char *)out.p + at + 1;
		h[0] = count >> 24; h[1] = count >> 16; h[2] = count >> 8; h[3] = count;
	}
	rt_res_send(&out, r->id);
	r->replied = true;
}

static void op_call(duk_context *c, struct req *r)
{
	if (state != LOADED) {
		rt_res_err(r->id, "NOT_LOADED", "no code is loaded");
		r->replied = true;
		return;
	}
	const char *fn, *args = mp_find(r->a, "args");
	uint32_t fn_len, nargs = 0;
	if (!mp_get_str(mp_find(r->a, "fn"), &fn, &fn_len)) {
		rt_res_err(r->id, "BAD_REQUEST", "call: fn must be a string");
		r->replied = true;
		return;
	}
	if (args && mp_typeof(*args) == MP_ARRAY) {
		nargs = mp_decode_array(&args);
	} else if (args && mp_typeof(*args) != MP_NIL) {
		rt_res_err(r->id, "BAD_ARGS", "call: args must be an array");
		r->replied = true;
		return;
	}
	duk_push_global_object(c);
	duk_push_lstring(c, fn, fn_len);
	duk_get_prop(c, -2);
	duk_push_lstring(c, fn, fn_len);
	duk_swap_top(c, -2); /* key, value: the shape is_user_function() reads */
	if (!is_user_function(c)) {
		rt_res_err(r->id, "NO_EXPORT", "the code defines no global function %.*s", (int)(fn_len > 256 ? 256 : fn_len), fn);
		r->replied = true;
		return;
	}
	duk_remove(c, -2);
	r->fail_code = "BAD_ARGS";
	duk_require_stack(c, (duk_idx_t)(nargs > 100000 ? 100000 : nargs) + 4);
	for (uint32_t i = 0; i < nargs; i++)
		push_mp(c, &args, 0);
	r->fail_code = NULL;
	current_id = r->id;
	if (duk_pcall(c, (duk_idx_t)nargs) != 0) {
		if (is_host_error(c, -1))
			rt_res_err(r->id, "HOST_ERROR", "%s", duk_safe_to_string(c, -1));
		else
			rt_res_err(r->id, "TRAP", "%s", error_text(c, -1));
		r->replied = true;
		return;
	}
	rt_res_begin(&out, r->id);
	mpb_map(&out, 1);
	mpb_str(&out, "results");
	mpb_array(&out, 1);
	put_js(c, &out, -1, 0);
	rt_res_send(&out, r->id);
	r->replied = true;
}

static duk_ret_t serve(duk_context *c, void *udata)
{
	struct req *r = udata;
	r->fn(c, r);
	return 0;
}

int main(void)
{
	ctx = duk_create_heap(NULL, NULL, NULL, NULL, fatal);
	if (!ctx) {
		fprintf(stderr, "evolvm-rt-js: cannot create the duktape heap\n");
		return 1;
	}
	rt_init("js", RT_VERSION);
	for (char *f; (f = rt_recv()); free(f)) {
		struct req r = { 0 };
		if (!mp_str_eq(mp_find(f, "t"), "req") || !mp_get_uint(mp_find(f, "id"), &r.id)) {
			rt_log("dropping a frame that is not a request");
			continue;
		}
		r.a = mp_find(f, "a");
		if (!r.a || mp_typeof(*r.a) == MP_NIL)
			r.a = "\x80";
		if (mp_typeof(*r.a) != MP_MAP) {
			rt_res_err(r.id, "BAD_REQUEST", "a must be a map");
			continue;
		}
		const char *op = mp_find(f, "op");
		if (mp_str_eq(op, "load"))
			r.fn = op_load;
		else if (mp_str_eq(op, "call"))
			r.fn = op_call;
		else if (mp_str_eq(op, "mem_read") || mp_str_eq(op, "mem_write")) {
			rt_res_err(r.id, "UNSUPPORTED", "the js runtime has no linear memory");
			continue;
		} else {
			rt_res_err(r.id, "UNKNOWN_OP", "unknown op");
			continue;
		}
		duk_idx_t top = duk_get_top(ctx);
		encoding_hostcall = false;
		if (duk_safe_call(ctx, serve, &r, 0, 1) != 0 && !r.replied)
			rt_res_err(r.id, r.fail_code ? r.fail_code : "INTERNAL", "%s", duk_safe_to_string(ctx, -1));
		duk_set_top(ctx, top);
		free(host_ret);
		host_ret = NULL;
	}
	return 0;
}

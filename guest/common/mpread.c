/* Reading values out of a msgpack map that mp_check() already validated: shared by the agent and the runtimes,
 * which both read frames from an untrusted peer. */
#include <stdlib.h>
#include <string.h>
#include <msgpuck.h>
#include "mpread.h"

bool mp_is_map(const char *v) { return v && mp_typeof(*v) == MP_MAP; }

/* The value stored under a string key, or NULL. */
const char *mp_find(const char *map, const char *key)
{
	if (!mp_is_map(map))
		return NULL;
	const char *p = map;
	uint32_t n = mp_decode_map(&p);
	size_t klen = strlen(key);
	for (uint32_t i = 0; i < n; i++) {
		if (mp_typeof(*p) == MP_STR) {
			uint32_t len;
			const char *k = mp_decode_str(&p, &len);
			if (len == klen && memcmp(k, key, len) == 0)
				return p;
		} else {
			mp_next(&p);
		}
		mp_next(&p);
	}
	return NULL;
}

/* Also takes a signed encoding of a non-negative value (msgpackr packs a BigInt as int64). */
bool mp_get_uint(const char *v, uint64_t *out)
{
	if (!v)
		return false;
	if (mp_typeof(*v) == MP_UINT) {
		*out = mp_decode_uint(&v);
		return true;
	}
	if (mp_typeof(*v) == MP_INT) {
		int64_t i = mp_decode_int(&v);
		if (i < 0)
			return false;
		*out = (uint64_t)i;
		return true;
	}
	return false;
}

bool mp_get_bool(const char *v, bool *out)
{
	if (!v || mp_typeof(*v) != MP_BOOL)
		return false;
	*out = mp_decode_bool(&v);
	return true;
}

bool mp_get_str(const char *v, const char **s, uint32_t *len)
{
	if (!v || mp_typeof(*v) != MP_STR)
		return false;
	*s = mp_decode_str(&v, len);
	return true;
}

/* Binary data: msgpack bin, or a str (some encoders send text that way). */
bool mp_get_bin(const char *v, const char **p, uint32_t *len)
{
	if (!v)
		return false;
	if (mp_typeof(*v) == MP_BIN) {
		*p = mp_decode_bin(&v, len);
		return true;
	}
	return mp_get_str(v, p, len);
}

char *mp_dup_cstr(const char *v)
{
	const char *s;
	uint32_t len;
	if (!mp_get_str(v, &s, &len) || memchr(s, 0, len))
		return NULL;
	char *out = malloc((size_t)len + 1);
	if (!out)
		return NULL;
	memcpy(out, s, len);
	out[len] = 0;
	return out;
}

bool mp_str_eq(const char *v, const char *s)
{
	const char *x;
	uint32_t len;
	return mp_get_str(v, &x, &len) && len == strlen(s) && memcmp(x, s, len) == 0;
}

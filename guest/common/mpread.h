/* Reading a msgpack map that mp_check() validated (common/mpread.c). */
#ifndef EVOLVM_MPREAD_H
#define EVOLVM_MPREAD_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

const char *mp_find(const char *map, const char *key); /* the value under a string key, or NULL */
bool mp_is_map(const char *v);
bool mp_get_uint(const char *v, uint64_t *out); /* also a non-negative signed int (msgpackr packs BigInt as int64) */
bool mp_get_bool(const char *v, bool *out);
bool mp_get_str(const char *v, const char **s, uint32_t *len);
bool mp_get_bin(const char *v, const char **p, uint32_t *len); /* bin, or str */
char *mp_dup_cstr(const char *v);                              /* NULL if not a string or it holds a NUL byte */
bool mp_str_eq(const char *v, const char *s);

#ifdef __cplusplus
}
#endif

#endif

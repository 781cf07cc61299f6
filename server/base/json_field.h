/* json_field.h — typed readers for the fields of a JSON document (jansson), each naming the field
 * by its full path when it refuses one: `grpo.clip_low: must be a number, got a string`,
 * `vocab_size: must be positive, got -96`, `model.init.config: missing (required)`.
 *
 * The rules every reader keeps:
 * - `path` is the JSON path of the object read from ("" at the top, "grpo", "model.init",
 *   "pre_tokenizer.pretokenizers[2]"); the field's own path is path.key, or key at the top.
 * - An absent key and a JSON null both mean "left out": *out keeps what it held (put the
 *   default there first), or, with CHORD_JSON_REQUIRED, the read fails: "<field>: missing
 *   (required)".
 * - A value of another type fails: "<field>: must be <what>, got <what it is>", where numbers
 *   and booleans are shown as written and the rest by their type ("a string", "an array").
 * - Ranges are closed unless a flag opens a bound; INT64_MIN / INT64_MAX and -INFINITY /
 *   INFINITY mean "no bound". The message states the bounds that exist, then the value:
 *   "must be in [0, 1), got 1", "must be >= 0, got -2", "must be <= 64, got 65", and
 *   "must be positive, got 0" for integers from 1 and numbers above 0.
 * - Every message is set on chord_err with category CHORD_E_INVALID (err may be NULL).
 *
 * The same checks serve values in hand (array elements, a field of two types: *_value) and
 * values not read from JSON at all (defaults merged with overrides: chord_check_*_range), so a
 * document's field says one thing however it is checked.
 *
 * Not here: parsing text into JSON, building documents, schema beyond one field. */
#ifndef CHORD_BASE_JSON_FIELD_H
#define CHORD_BASE_JSON_FIELD_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

/* Room for a field's path (longer paths are cut). */
#define CHORD_JSON_PATH_MAX 256

enum {
    CHORD_JSON_REQUIRED = 1 << 0,   /* left out (absent or null) is an error */
    CHORD_JSON_WHOLE_REAL = 1 << 1, /* integers: also accept a real with an integral value up to
                                     * 2^53 (1e3, 500.0: what a JavaScript client writes) */
    CHORD_JSON_NONEMPTY = 1 << 2,   /* strings: "" is an error */
    CHORD_JSON_LO_OPEN = 1 << 3,    /* numbers: the lower bound itself is outside (x > lo) */
    CHORD_JSON_HI_OPEN = 1 << 4,    /* numbers: the upper bound itself is outside (x < hi) */
};

/* obj[key], or NULL when obj is not an object, the key is absent or its value is null. */
json_t *chord_json_field(const json_t *obj, const char *key);

/* Writes path.key (key alone when path is "" or NULL) into out. */
void chord_json_path(char out[CHORD_JSON_PATH_MAX], const char *path, const char *key);

/* Refuses the first key of obj that allowed (NULL-terminated) lacks:
 * `unknown field "grpo.clipp_low" (allowed: group_size, prompts_per_step, ...)`. */
int chord_json_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                          chord_err *err);

/* A string (never one with a NUL inside: C strings could not hold it). *out points into the
 * document and lives as long as it does. */
int chord_json_get_string(const json_t *obj, const char *path, const char *key, int flags,
                          const char **out, chord_err *err);

/* An integer in [lo, hi]. */
int chord_json_get_int(const json_t *obj, const char *path, const char *key, int flags, int64_t lo,
                       int64_t hi, int64_t *out, chord_err *err);

/* A finite number (integer or real) between lo and hi (CHORD_JSON_LO_OPEN / _HI_OPEN). */
int chord_json_get_number(const json_t *obj, const char *path, const char *key, int flags,
                          double lo, double hi, double *out, chord_err *err);

/* true or false, as 1 or 0. */
int chord_json_get_bool(const json_t *obj, const char *path, const char *key, int flags, int *out,
                        chord_err *err);

/* An object or an array; *out points into the document. */
int chord_json_get_object(const json_t *obj, const char *path, const char *key, int flags,
                          json_t **out, chord_err *err);
int chord_json_get_array(const json_t *obj, const char *path, const char *key, int flags,
                         json_t **out, chord_err *err);

/* The same checks on a value in hand, named by its own full path (v NULL or null: left out). */
int chord_json_int_value(const json_t *v, const char *path, int flags, int64_t lo, int64_t hi,
                         int64_t *out, chord_err *err);
int chord_json_number_value(const json_t *v, const char *path, int flags, double lo, double hi,
                            double *out, chord_err *err);
/* v must be an object: "<path>: must be an object, got an array" (v NULL: missing). */
int chord_json_object_value(const json_t *v, const char *path, chord_err *err);

/* Range checks with the readers' words, for values that did not come from JSON. */
int chord_check_int_range(int64_t x, const char *path, int64_t lo, int64_t hi, chord_err *err);
int chord_check_number_range(double x, const char *path, int flags, double lo, double hi,
                             chord_err *err);

/* Lenient lookups in documents that were validated when they came in (a stored request):
 * the value, or fallback when the key is absent or holds another type. */
const char *chord_json_string_or(const json_t *obj, const char *key, const char *fallback);
double chord_json_number_or(const json_t *obj, const char *key, double fallback);

/* json_dumps(v, flags) followed by a newline (files and responses end their JSON with one), in
 * memory the caller frees with free(); *len (when not NULL) gets its length. NULL when out of
 * memory. */
char *chord_json_dumps_line(const json_t *v, size_t flags, size_t *len);

/* For parse errors: the key whose value starts before byte pos of text[0..len) ("rms_norm_eps"
 * for a NaN there), cut to n - 1 bytes; "" when there is none. */
void chord_json_key_before(const char *text, size_t len, int pos, char *out, size_t n);

#endif

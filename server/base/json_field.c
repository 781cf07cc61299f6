/* json_field.c — the typed field readers of json_field.h. */
#include "server/base/json_field.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/numtext.h"

json_t *chord_json_field(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

void chord_json_path(char out[CHORD_JSON_PATH_MAX], const char *path, const char *key) {
    if (path && *path)
        snprintf(out, CHORD_JSON_PATH_MAX, "%s.%s", path, key);
    else
        snprintf(out, CHORD_JSON_PATH_MAX, "%s", key);
}

/* A real as written, with ".0" where the shortest text would look like an integer. */
static void real_text(double x, char out[CHORD_NUMBER_TEXT_MAX + 2]) {
    size_t n = chord_number_text(x, out);
    if (!strpbrk(out, ".eNI")) memcpy(out + n, ".0", 3);
}

/* What v is, for "got ...": numbers and booleans as written, the rest by type. */
static const char *describe(const json_t *v, char buf[CHORD_NUMBER_TEXT_MAX + 2]) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        snprintf(buf, CHORD_NUMBER_TEXT_MAX + 2, "%lld", (long long)json_integer_value(v));
        return buf;
    case JSON_REAL:
        real_text(json_real_value(v), buf);
        return buf;
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "null";
    }
}

static int wrong_type(const json_t *v, const char *path, const char *want, chord_err *err) {
    char buf[CHORD_NUMBER_TEXT_MAX + 2];
    return chord_err_set(err, "%s: must be %s, got %s", path, want, describe(v, buf));
}

static int missing(const char *path, chord_err *err) {
    return chord_err_set(err, "%s: missing (required)", path);
}

int chord_json_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                          chord_err *err) {
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        (void)value;
        size_t i = 0;
        while (allowed[i] && strcmp(key, allowed[i]) != 0)
            i++;
        if (allowed[i]) continue;
        char full[CHORD_JSON_PATH_MAX], list[512] = "";
        chord_json_path(full, path, key);
        size_t w = 0;
        for (i = 0; allowed[i] && w < sizeof list; i++)
            w += (size_t)snprintf(list + w, sizeof list - w, "%s%s", i ? ", " : "", allowed[i]);
        return chord_err_set(err, "unknown field \"%s\" (allowed: %s)", full, list);
    }
    return 0;
}

/* ---- ranges ---------------------------------------------------------------------------------- */

int chord_check_int_range(int64_t x, const char *path, int64_t lo, int64_t hi, chord_err *err) {
    if (x >= lo && x <= hi) return 0;
    long long l = (long long)lo, h = (long long)hi, v = (long long)x;
    if (lo > INT64_MIN && hi < INT64_MAX)
        return chord_err_set(err, "%s: must be in [%lld, %lld], got %lld", path, l, h, v);
    if (lo == 1) return chord_err_set(err, "%s: must be positive, got %lld", path, v);
    if (lo > INT64_MIN) return chord_err_set(err, "%s: must be >= %lld, got %lld", path, l, v);
    return chord_err_set(err, "%s: must be <= %lld, got %lld", path, h, v);
}

int chord_check_number_range(double x, const char *path, int flags, double lo, double hi,
                             chord_err *err) {
    int lo_open = (flags & CHORD_JSON_LO_OPEN) != 0, hi_open = (flags & CHORD_JSON_HI_OPEN) != 0;
    if (!isfinite(x)) return chord_err_set(err, "%s: must be a finite number", path);
    int below = lo_open ? !(x > lo) : !(x >= lo), above = hi_open ? !(x < hi) : !(x <= hi);
    if (!below && !above) return 0;
    char got[CHORD_NUMBER_TEXT_MAX];
    chord_number_text(x, got);
    if (!isinf(lo) && !isinf(hi))
        return chord_err_set(err, "%s: must be in %c%g, %g%c, got %s", path, lo_open ? '(' : '[',
                             lo, hi, hi_open ? ')' : ']', got);
    if (!isinf(lo) && lo == 0 && lo_open)
        return chord_err_set(err, "%s: must be positive, got %s", path, got);
    if (!isinf(lo))
        return chord_err_set(err, "%s: must be %s %g, got %s", path, lo_open ? ">" : ">=", lo, got);
    return chord_err_set(err, "%s: must be %s %g, got %s", path, hi_open ? "<" : "<=", hi, got);
}

/* ---- values in hand -------------------------------------------------------------------------- */

int chord_json_int_value(const json_t *v, const char *path, int flags, int64_t lo, int64_t hi,
                         int64_t *out, chord_err *err) {
    if (!v || json_is_null(v)) return flags & CHORD_JSON_REQUIRED ? missing(path, err) : 0;
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && (flags & CHORD_JSON_WHOLE_REAL) &&
               json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) <= 9007199254740992.0) {
        x = (int64_t)json_real_value(v);
    } else {
        return wrong_type(v, path, "an integer", err);
    }
    if (chord_check_int_range(x, path, lo, hi, err)) return -1;
    *out = x;
    return 0;
}

int chord_json_number_value(const json_t *v, const char *path, int flags, double lo, double hi,
                            double *out, chord_err *err) {
    if (!v || json_is_null(v)) return flags & CHORD_JSON_REQUIRED ? missing(path, err) : 0;
    if (!json_is_number(v)) return wrong_type(v, path, "a number", err);
    double x = json_number_value(v);
    if (chord_check_number_range(x, path, flags, lo, hi, err)) return -1;
    *out = x;
    return 0;
}

int chord_json_object_value(const json_t *v, const char *path, chord_err *err) {
    if (!v) return missing(path, err);
    return json_is_object(v) ? 0 : wrong_type(v, path, "an object", err);
}

/* ---- fields of an object --------------------------------------------------------------------- */

/* obj[key] with its full path in full; NULL when left out (an error under REQUIRED, *failed). */
static json_t *lookup(const json_t *obj, const char *path, const char *key, int flags,
                      char full[CHORD_JSON_PATH_MAX], int *failed, chord_err *err) {
    json_t *v = chord_json_field(obj, key);
    chord_json_path(full, path, key);
    *failed = !v && (flags & CHORD_JSON_REQUIRED) ? missing(full, err) : 0;
    return v;
}

int chord_json_get_string(const json_t *obj, const char *path, const char *key, int flags,
                          const char **out, chord_err *err) {
    char full[CHORD_JSON_PATH_MAX];
    int failed;
    json_t *v = lookup(obj, path, key, flags, full, &failed, err);
    if (!v) return failed;
    if (!json_is_string(v)) return wrong_type(v, full, "a string", err);
    if ((flags & CHORD_JSON_NONEMPTY) && json_string_length(v) == 0)
        return chord_err_set(err, "%s: must not be empty", full);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return chord_err_set(err, "%s: must not contain NUL characters", full);
    *out = json_string_value(v);
    return 0;
}

int chord_json_get_int(const json_t *obj, const char *path, const char *key, int flags, int64_t lo,
                       int64_t hi, int64_t *out, chord_err *err) {
    char full[CHORD_JSON_PATH_MAX];
    int failed;
    json_t *v = lookup(obj, path, key, flags, full, &failed, err);
    return v ? chord_json_int_value(v, full, flags, lo, hi, out, err) : failed;
}

int chord_json_get_number(const json_t *obj, const char *path, const char *key, int flags,
                          double lo, double hi, double *out, chord_err *err) {
    char full[CHORD_JSON_PATH_MAX];
    int failed;
    json_t *v = lookup(obj, path, key, flags, full, &failed, err);
    return v ? chord_json_number_value(v, full, flags, lo, hi, out, err) : failed;
}

int chord_json_get_bool(const json_t *obj, const char *path, const char *key, int flags, int *out,
                        chord_err *err) {
    char full[CHORD_JSON_PATH_MAX];
    int failed;
    json_t *v = lookup(obj, path, key, flags, full, &failed, err);
    if (!v) return failed;
    if (!json_is_boolean(v)) return wrong_type(v, full, "true or false", err);
    *out = json_is_true(v);
    return 0;
}

/* An object or an array (type), named `what` in its error. */
static int get_container(const json_t *obj, const char *path, const char *key, int flags,
                         json_type type, const char *what, json_t **out, chord_err *err) {
    char full[CHORD_JSON_PATH_MAX];
    int failed;
    json_t *v = lookup(obj, path, key, flags, full, &failed, err);
    if (!v) return failed;
    if (json_typeof(v) != type) return wrong_type(v, full, what, err);
    *out = v;
    return 0;
}

int chord_json_get_object(const json_t *obj, const char *path, const char *key, int flags,
                          json_t **out, chord_err *err) {
    return get_container(obj, path, key, flags, JSON_OBJECT, "an object", out, err);
}

int chord_json_get_array(const json_t *obj, const char *path, const char *key, int flags,
                         json_t **out, chord_err *err) {
    return get_container(obj, path, key, flags, JSON_ARRAY, "an array", out, err);
}

/* ---- lenient lookups and parse errors -------------------------------------------------------- */

const char *chord_json_string_or(const json_t *obj, const char *key, const char *fallback) {
    const json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : fallback;
}

double chord_json_number_or(const json_t *obj, const char *key, double fallback) {
    const json_t *v = json_object_get(obj, key);
    return json_is_number(v) ? json_number_value(v) : fallback;
}

char *chord_json_dumps_line(const json_t *v, size_t flags, size_t *len) {
    char *text = json_dumps(v, flags);
    if (!text) return NULL;
    /* copied, so the caller frees with free() whatever allocator jansson was given */
    size_t n = strlen(text);
    chord_buf line = {0};
    int bad = chord_buf_reserve(&line, n + 2) || chord_buf_append(&line, text, n) ||
              chord_buf_append(&line, "\n", 1);
    free(text);
    if (bad) {
        chord_buf_free(&line);
        return NULL;
    }
    if (len) *len = line.len;
    return chord_buf_take(&line);
}

void chord_json_key_before(const char *text, size_t len, int pos, char *out, size_t n) {
    out[0] = '\0';
    if (pos < 0 || n == 0) return;
    size_t p = (size_t)pos < len ? (size_t)pos : len;
    while (p > 0) {
        p--;
        if (text[p] != ':') continue;
        /* back over white space to the closing quote of the key */
        size_t q = p;
        while (q > 0 && (text[q - 1] == ' ' || text[q - 1] == '\t' || text[q - 1] == '\n' ||
                         text[q - 1] == '\r'))
            q--;
        if (q == 0 || text[q - 1] != '"') continue;
        size_t end = q - 1, start = end;
        while (start > 0 && text[start - 1] != '"')
            start--;
        if (start == 0) return;
        size_t k = end - start < n - 1 ? end - start : n - 1;
        memcpy(out, text + start, k);
        out[k] = '\0';
        return;
    }
}

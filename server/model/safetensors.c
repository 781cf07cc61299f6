/* safetensors.c — Hugging Face safetensors reader (mmap, single file or sharded set) and writer
 * (single file or transformers' sharded layout).
 *
 * File format: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then
 * the data buffer. Like the reference implementation, the reader accepts only a buffer that is
 * exactly covered by the tensors, in order, without holes or overlaps, so every byte it hands
 * out has been checked against the file size first.
 * Not here: integer tensors are readable but never written; big-endian hosts are unsupported. */
#include "server/model/safetensors.h"

#include "kernels/ops_math.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* ---- dtypes ------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    st_dtype dtype;
    size_t size;
} dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
    {"F64", ST_F64, 8}, {"I64", ST_I64, 8}, {"I32", ST_I32, 4},
    {"I8", ST_I8, 1},   {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

static int dtype_from_name(const char *s, st_dtype *out, size_t *size) {
    for (size_t i = 0; i < N_DTYPES; i++) {
        if (strcmp(dtypes[i].name, s) == 0) {
            *out = dtypes[i].dtype;
            *size = dtypes[i].size;
            return 0;
        }
    }
    return -1;
}

const char *st_dtype_name(st_dtype d) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == d) return dtypes[i].name;
    return "?";
}

size_t st_dtype_size(st_dtype d) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == d) return dtypes[i].size;
    return 0;
}

/* ---- half-precision conversions ---------------------------------------------------------- */

/* the one bf16 rounding the kernels use too (kernels/ops_math.h) */
float st_bf16_to_f32(uint16_t h) {
    return ops_bf16_to_f32(h);
}

uint16_t st_f32_to_bf16(float f) {
    return ops_f32_to_bf16(f);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in float32 */
        float f = ldexpf((float)mant, -24);
        memcpy(&u, &f, 4);
        u |= sign;
    } else {
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t st_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
    if (absu >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    if (absu < 0x38800000u) {
        /* Below the smallest normal (2^-14): a subnormal multiple of 2^-24, rounded to nearest
         * even by the FPU's own addition of a magic constant (0.5 = 2^-1, ulp 2^-24). */
        float a;
        memcpy(&a, &absu, 4);
        float r = a + 0.5f;
        uint32_t ru;
        memcpy(&ru, &r, 4);
        return sign | (uint16_t)(ru - 0x3f000000u);
    }
    uint32_t mant_odd = (absu >> 13) & 1u;
    absu += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round to nearest even */
    return sign | (uint16_t)(absu >> 13);
}

/* ---- reader ------------------------------------------------------------------------------ */

typedef struct st_file {
    char *path;
    void *map; /* whole file, read-only */
    size_t size;
    const uint8_t *data; /* the data buffer after the header */
    size_t data_len;
    json_t *metadata; /* __metadata__ or NULL */
} st_file;

typedef struct st_entry {
    st_tensor_info info; /* info.name owned */
    int file;
    size_t begin, end; /* within the file's data buffer */
} st_entry;

struct st_reader {
    st_file *files;
    int n_files;
    size_t files_cap;
    st_entry *entries; /* sorted by name once open */
    int n;
    size_t cap;
};

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->info.name, ((const st_entry *)b)->info.name);
}

static int add_entry(st_reader *r, chord_err *err) {
    if ((size_t)r->n < r->cap) return 0;
    st_entry *e = chord_array_grow(r->entries, &r->cap, (size_t)r->n + 1, sizeof *e);
    if (!e) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    r->entries = e;
    return 0;
}

/* Reads a non-negative JSON integer into a size_t. */
static int json_size(const json_t *v, size_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (size_t)json_integer_value(v);
    return 0;
}

typedef struct span {
    size_t begin, end;
    int entry;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parses one tensor entry of a header. */
static int parse_tensor(const char *name, const json_t *v, st_entry *e, size_t data_len,
                        chord_err *err) {
    memset(e, 0, sizeof *e);
    if (!json_is_object(v)) return chord_err_set(err, "tensor %s: entry must be an object", name);
    const json_t *jd = json_object_get(v, "dtype");
    const json_t *js = json_object_get(v, "shape");
    const json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return chord_err_set(err, "tensor %s: dtype: missing or not a string", name);
    size_t esize;
    if (dtype_from_name(json_string_value(jd), &e->info.dtype, &esize))
        return chord_err_set(err, "tensor %s: dtype: \"%s\" is not supported", name,
                             json_string_value(jd));
    if (!json_is_array(js))
        return chord_err_set(err, "tensor %s: shape: missing or not a list", name);
    if (json_array_size(js) > ST_MAX_DIMS)
        return chord_err_set(err, "tensor %s: shape: %zu dimensions, at most %d", name,
                             json_array_size(js), ST_MAX_DIMS);
    e->info.ndim = (int)json_array_size(js);
    size_t numel = 1;
    for (int d = 0; d < e->info.ndim; d++) {
        size_t dim;
        if (json_size(json_array_get(js, (size_t)d), &dim))
            return chord_err_set(err, "tensor %s: shape[%d]: must be a non-negative integer", name,
                                 d);
        if (dim != 0 && numel > SIZE_MAX / dim)
            return chord_err_set(err, "tensor %s: shape: element count overflows", name);
        numel *= dim;
        e->info.shape[d] = (int64_t)dim;
    }
    e->info.numel = numel;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        json_size(json_array_get(jo, 0), &e->begin) || json_size(json_array_get(jo, 1), &e->end))
        return chord_err_set(err, "tensor %s: data_offsets: must be [begin, end], non-negative",
                             name);
    if (e->end < e->begin)
        return chord_err_set(err, "tensor %s: data_offsets: end %zu before begin %zu", name, e->end,
                             e->begin);
    if (e->end > data_len)
        return chord_err_set(err,
                             "tensor %s: data_offsets: [%zu, %zu) past the end of the data "
                             "(%zu bytes; file truncated?)",
                             name, e->begin, e->end, data_len);
    if (numel > SIZE_MAX / esize || numel * esize != e->end - e->begin)
        return chord_err_set(err,
                             "tensor %s: shape holds %zu elements of %s (%zu bytes) but "
                             "data_offsets span %zu bytes",
                             name, numel, json_string_value(jd),
                             numel <= SIZE_MAX / esize ? numel * esize : SIZE_MAX,
                             e->end - e->begin);
    e->info.name = strdup(name);
    if (!e->info.name) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    return 0;
}

typedef struct key_span {
    const char *p;
    size_t n;
} key_span;

static int cmp_key_span(const void *a, const void *b) {
    const key_span *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* A top-level key that appears twice in a JSON object text (jansson reports only the position
 * of a duplicate, deep inside its value). Copies it into out; 0 when none is found. Sorting
 * keeps this O(n log n) on a hostile 100 MB header. */
static int duplicate_key(const char *text, size_t len, char *out, size_t n) {
    size_t cap = 0, count = 0;
    key_span *keys = NULL;
    int depth = 0, found = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            depth--;
        } else if (ch == '"') {
            size_t start = ++i;
            while (i < len && text[i] != '"')
                i += text[i] == '\\' ? 2 : 1;
            if (i >= len) break;
            size_t j = i + 1;
            while (j < len &&
                   (text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r'))
                j++;
            if (depth != 1 || j >= len || text[j] != ':') continue;
            if (count == cap) {
                key_span *nk = chord_array_grow(keys, &cap, count + 1, sizeof *keys);
                if (!nk) break;
                keys = nk;
            }
            keys[count++] = (key_span){text + start, i - start};
        }
    }
    if (count > 1) qsort(keys, count, sizeof *keys, cmp_key_span);
    for (size_t k = 1; k < count && !found; k++) {
        if (cmp_key_span(&keys[k - 1], &keys[k]) == 0) {
            size_t m = keys[k].n < n - 1 ? keys[k].n : n - 1;
            memcpy(out, keys[k].p, m);
            out[m] = '\0';
            found = 1;
        }
    }
    free(keys);
    return found;
}

/* Maps PATH and appends its tensors to r (file index r->n_files). Errors are not yet prefixed
 * with the path. */
static int open_file(st_reader *r, const char *path, chord_err *err) {
    st_file *files =
        chord_array_grow(r->files, &r->files_cap, (size_t)r->n_files + 1, sizeof *files);
    if (!files) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    r->files = files;
    st_file *f = &r->files[r->n_files];
    memset(f, 0, sizeof *f);
    int file_index = r->n_files++;
    f->path = strdup(path);
    if (!f->path) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");

    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block us */
    if (fd < 0)
        return chord_err_setc(err, errno == ENOENT ? CHORD_E_NOT_FOUND : CHORD_E_IO, "%s",
                              strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return chord_err_setc(err, CHORD_E_IO, "%s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return chord_err_set(err, "not a regular file");
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return chord_err_set(err, "file too short (%zu bytes) to hold the 8-byte header length",
                             size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return chord_err_setc(err, CHORD_E_IO, "mmap: %s", strerror(e));
    f->map = map;
    f->size = size;

    uint64_t hlen;
    memcpy(&hlen, map, 8);
    if (hlen > size - 8)
        return chord_err_set(err, "header length %llu past the end of the file (%zu bytes)",
                             (unsigned long long)hlen, size);
    if (hlen > ST_MAX_HEADER)
        return chord_err_set(err, "header length %llu above the 100 MB limit",
                             (unsigned long long)hlen);
    if (hlen < 2)
        return chord_err_set(err, "header length %llu too small", (unsigned long long)hlen);
    const char *htext = (const char *)map + 8;
    if (htext[0] != '{') return chord_err_set(err, "header does not start with '{'");
    f->data = (const uint8_t *)map + 8 + hlen;
    f->data_len = size - 8 - (size_t)hlen;

    json_error_t je;
    json_t *h = json_loadb(htext, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!h) {
        char key[256];
        if (strstr(je.text, "duplicate") && duplicate_key(htext, (size_t)hlen, key, sizeof key))
            return chord_err_set(err, "header: tensor %s listed twice", key);
        return chord_err_set(err, "header: invalid JSON at column %d: %s", je.column, je.text);
    }
    if (!json_is_object(h)) {
        json_decref(h);
        return chord_err_set(err, "header: must be a JSON object");
    }

    int rc = 0, first = r->n;
    const char *name;
    json_t *v;
    json_object_foreach(h, name, v) {
        if (strcmp(name, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) {
                rc = chord_err_set(err, "header: __metadata__: must be an object");
                break;
            }
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = chord_err_set(err, "header: __metadata__.%s: must be a string", mk);
                    break;
                }
            }
            if (rc) break;
            f->metadata = json_incref(v);
            continue;
        }
        if (add_entry(r, err)) {
            rc = -1;
            break;
        }
        if (parse_tensor(name, v, &r->entries[r->n], f->data_len, err)) {
            rc = -1;
            break;
        }
        r->entries[r->n].file = file_index;
        r->n++;
    }
    json_decref(h);
    if (rc) return -1;

    /* The data buffer must be covered exactly: sorted, no overlap, no hole, nothing after. */
    int count = r->n - first;
    span *spans = malloc((size_t)(count ? count : 1) * sizeof *spans);
    if (!spans) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    for (int i = 0; i < count; i++)
        spans[i] = (span){r->entries[first + i].begin, r->entries[first + i].end, first + i};
    qsort(spans, (size_t)count, sizeof *spans, cmp_span);
    size_t at = 0;
    const char *prev = NULL;
    for (int i = 0; i < count && rc == 0; i++) {
        const char *nm = r->entries[spans[i].entry].info.name;
        if (spans[i].begin < at)
            rc = chord_err_set(err,
                               "tensor %s: data_offsets [%zu, %zu) overlap tensor %s (ends at %zu)",
                               nm, spans[i].begin, spans[i].end, prev, at);
        else if (spans[i].begin > at)
            rc =
                chord_err_set(err, "tensor %s: data_offsets [%zu, %zu) leave a hole after byte %zu",
                              nm, spans[i].begin, spans[i].end, at);
        at = spans[i].end;
        prev = nm;
    }
    free(spans);
    if (rc) return -1;
    if (at != f->data_len)
        return chord_err_set(err,
                             "tensors cover %zu bytes but the file holds %zu data bytes after "
                             "the header",
                             at, f->data_len);
    return 0;
}

void st_close(st_reader *r) {
    if (!r) return;
    for (int i = 0; i < r->n_files; i++) {
        if (r->files[i].map) munmap(r->files[i].map, r->files[i].size);
        if (r->files[i].metadata) json_decref(r->files[i].metadata);
        free(r->files[i].path);
    }
    for (int i = 0; i < r->n; i++)
        free((char *)r->entries[i].info.name);
    free(r->files);
    free(r->entries);
    free(r);
}

static const st_entry *find_entry(const st_reader *r, const char *name) {
    if (r->n == 0) return NULL;
    st_entry key;
    key.info.name = name;
    return bsearch(&key, r->entries, (size_t)r->n, sizeof key, cmp_entry_name);
}

/* After all files are read: sort by name and refuse a name held twice (across shards). */
static int finish_index(st_reader *r, chord_err *err) {
    if (r->n > 1) qsort(r->entries, (size_t)r->n, sizeof *r->entries, cmp_entry_name);
    for (int i = 1; i < r->n; i++) {
        if (strcmp(r->entries[i].info.name, r->entries[i - 1].info.name) == 0)
            return chord_err_set(err, "tensor %s: held by both %s and %s", r->entries[i].info.name,
                                 r->files[r->entries[i - 1].file].path,
                                 r->files[r->entries[i].file].path);
    }
    return 0;
}

/* A shard name from an index must be a plain file name in the same directory. */
static int plain_file_name(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int open_index(st_reader *r, const char *dir, const char *index_path, chord_err *err) {
    char *text = NULL;
    size_t len = 0;
    if (chord_read_file(index_path, &text, &len, err)) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char key[256];
        chord_json_key_before(text, len, je.position, key, sizeof key);
        free(text);
        if (strstr(je.text, "duplicate") && key[0])
            return chord_err_set(err, "%s: weight_map: tensor %s listed twice", index_path, key);
        return chord_err_set(err, "%s: invalid JSON at line %d column %d: %s", index_path, je.line,
                             je.column, je.text);
    }
    free(text);
    int rc = 0;
    const json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        json_decref(root);
        return chord_err_set(err, "%s: weight_map: missing or not an object", index_path);
    }
    /* Open each distinct shard once, in order of first appearance. */
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)wm, name, v) {
        if (!json_is_string(v) || !plain_file_name(json_string_value(v))) {
            rc = chord_err_set(err, "%s: weight_map.%s: must be a file name in the same directory",
                               index_path, name);
            break;
        }
        const char *shard = json_string_value(v);
        int seen = 0;
        for (int i = 0; i < r->n_files && !seen; i++) {
            const char *base = strrchr(r->files[i].path, '/');
            seen = strcmp(base ? base + 1 : r->files[i].path, shard) == 0;
        }
        if (seen) continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, shard) >= (int)sizeof path) {
            rc = chord_err_set(err, "%s/%s: path too long", dir, shard);
            break;
        }
        if (open_file(r, path, err)) {
            rc = chord_err_prefix(err, "%s (shard of tensor %s in %s)", path, name, index_path);
            break;
        }
    }
    if (rc == 0) rc = finish_index(r, err);
    /* Every mapped tensor must be in its shard, and every shard tensor must be mapped. */
    if (rc == 0) {
        json_object_foreach((json_t *)wm, name, v) {
            const st_entry *e = find_entry(r, name);
            const char *want = json_string_value(v);
            const char *have = NULL;
            if (e) {
                have = strrchr(r->files[e->file].path, '/');
                have = have ? have + 1 : r->files[e->file].path;
            }
            if (!e || strcmp(have, want) != 0) {
                rc = chord_err_setc(err, CHORD_E_NOT_FOUND,
                                    "%s: weight_map.%s: shard %s does not hold this tensor",
                                    index_path, name, want);
                break;
            }
        }
    }
    if (rc == 0 && (size_t)r->n != json_object_size(wm)) {
        for (int i = 0; i < r->n; i++) {
            if (!json_object_get(wm, r->entries[i].info.name)) {
                rc = chord_err_set(err, "%s: tensor %s: in shard %s but not in the weight_map",
                                   index_path, r->entries[i].info.name,
                                   r->files[r->entries[i].file].path);
                break;
            }
        }
    }
    json_decref(root);
    return rc;
}

int st_open(const char *path, st_reader **out, chord_err *err) {
    *out = NULL;
    st_reader *r = calloc(1, sizeof *r);
    if (!r) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    int rc;
    if (chord_is_dir(path)) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", path, ST_SINGLE_NAME);
        /* transformers looks for model.safetensors before the index: do the same. */
        if (chord_is_file(p)) {
            rc = open_file(r, p, err);
            if (rc) chord_err_prefix(err, "%s", p);
        } else {
            snprintf(p, sizeof p, "%s/%s", path, ST_INDEX_NAME);
            if (chord_is_file(p)) {
                rc = open_index(r, path, p, err);
            } else {
                rc = chord_err_setc(err, CHORD_E_NOT_FOUND,
                                    "%s: neither " ST_SINGLE_NAME " nor " ST_INDEX_NAME, path);
            }
        }
    } else {
        rc = open_file(r, path, err);
        if (rc) chord_err_prefix(err, "%s", path);
    }
    if (rc == 0 && r->n_files == 1) {
        rc = finish_index(r, err);
        if (rc) chord_err_prefix(err, "%s", path);
    }
    if (rc) {
        st_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

int st_count(const st_reader *r) {
    return r->n;
}

const st_tensor_info *st_get(const st_reader *r, int i) {
    if (i < 0 || i >= r->n) return NULL;
    return &r->entries[i].info;
}

const st_tensor_info *st_find(const st_reader *r, const char *name) {
    const st_entry *e = find_entry(r, name);
    return e ? &e->info : NULL;
}

const void *st_raw(const st_reader *r, const char *name, size_t *nbytes) {
    const st_entry *e = find_entry(r, name);
    if (!e) return NULL;
    if (nbytes) *nbytes = e->end - e->begin;
    return r->files[e->file].data + e->begin;
}

const char *st_metadata(const st_reader *r, const char *key) {
    for (int i = 0; i < r->n_files; i++) {
        const json_t *v = r->files[i].metadata ? json_object_get(r->files[i].metadata, key) : NULL;
        if (v) return json_string_value(v);
    }
    return NULL;
}

static void format_shape(const int64_t *shape, int ndim, char *out, size_t n) {
    size_t at = 0;
    at += (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && at < n; d++)
        at += (size_t)snprintf(out + at, n - at, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (at < n) snprintf(out + at, n - at, "]");
}

int st_read_f32(const st_reader *r, const char *name, float *dst, const int64_t *shape, int ndim,
                chord_err *err) {
    const st_entry *e = find_entry(r, name);
    if (!e) return chord_err_setc(err, CHORD_E_NOT_FOUND, "tensor %s: not in the checkpoint", name);
    const st_tensor_info *t = &e->info;
    if (shape) {
        int same = ndim == t->ndim;
        for (int d = 0; same && d < ndim; d++)
            same = shape[d] == t->shape[d];
        if (!same) {
            char want[160], have[160];
            format_shape(shape,
                         ndim < 0             ? 0
                         : ndim > ST_MAX_DIMS ? ST_MAX_DIMS
                                              : ndim,
                         want, sizeof want);
            format_shape(t->shape, t->ndim, have, sizeof have);
            return chord_err_set(err, "tensor %s: shape %s, expected %s", name, have, want);
        }
    }
    const uint8_t *src = r->files[e->file].data + e->begin;
    size_t n = t->numel;
    /* The data may sit at any alignment: read element by element through memcpy. */
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, src, n * 4);
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = st_bf16_to_f32(h);
        }
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = st_f16_to_f32(h);
        }
        break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double x;
            memcpy(&x, src + 8 * i, 8);
            dst[i] = (float)x;
        }
        break;
    case ST_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t x;
            memcpy(&x, src + 8 * i, 8);
            dst[i] = (float)x;
        }
        break;
    case ST_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t x;
            memcpy(&x, src + 4 * i, 4);
            dst[i] = (float)x;
        }
        break;
    case ST_I8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int8_t)src[i];
        break;
    case ST_U8:
    case ST_BOOL:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)src[i];
        break;
    default:
        return chord_err_set(err, "tensor %s: dtype cannot be read as float32", name);
    }
    return 0;
}

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct st_wtensor {
    char *name;
    const float *data;
    int64_t shape[ST_MAX_DIMS];
    int ndim;
    st_dtype dtype;
    size_t numel, nbytes;
} st_wtensor;

struct st_writer {
    st_wtensor *t;
    int n;
    size_t cap;
    json_t *metadata; /* object of strings, insertion-ordered */
};

st_writer *st_writer_new(void) {
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->metadata = json_object();
    if (!w->metadata || json_object_set_new(w->metadata, "format", json_string("pt"))) {
        st_writer_free(w);
        return NULL;
    }
    return w;
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    if (w->metadata) json_decref(w->metadata);
    free(w);
}

int st_writer_add(st_writer *w, const char *name, const float *data, const int64_t *shape, int ndim,
                  st_dtype dtype, chord_err *err) {
    if (!name || !name[0]) return chord_err_set(err, "tensor name: must not be empty");
    if (strcmp(name, "__metadata__") == 0)
        return chord_err_set(err, "tensor name: __metadata__ is reserved");
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
        return chord_err_set(err, "tensor %s: dtype %s: only F32, BF16 and F16 can be written",
                             name, st_dtype_name(dtype));
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return chord_err_set(err, "tensor %s: %d dimensions, at most %d", name, ndim, ST_MAX_DIMS);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return chord_err_set(err, "tensor %s: shape[%d] is negative", name, d);
        size_t dim = (size_t)shape[d];
        if (dim != 0 && numel > SIZE_MAX / 8 / dim)
            return chord_err_set(err, "tensor %s: shape: element count overflows", name);
        numel *= dim;
    }
    if (numel > 0 && !data) return chord_err_set(err, "tensor %s: no data", name);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return chord_err_set(err, "tensor %s: added twice", name);
    if ((size_t)w->n == w->cap) {
        st_wtensor *t = chord_array_grow(w->t, &w->cap, (size_t)w->n + 1, sizeof *t);
        if (!t) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        w->t = t;
    }
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    t->data = data;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->dtype = dtype;
    t->numel = numel;
    t->nbytes = numel * st_dtype_size(dtype);
    w->n++;
    return 0;
}

int st_writer_metadata(st_writer *w, const char *key, const char *value, chord_err *err) {
    if (!key || !value) return chord_err_set(err, "__metadata__: key and value must be set");
    json_t *s = json_string(value);
    if (!s) return chord_err_set(err, "__metadata__.%s: value must be UTF-8", key);
    if (json_object_set_new(w->metadata, key, s))
        return chord_err_set(err, "__metadata__.%s: key must be UTF-8", key);
    return 0;
}

static int cmp_wtensor_ptr(const void *a, const void *b) {
    return strcmp((*(const st_wtensor *const *)a)->name, (*(const st_wtensor *const *)b)->name);
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Writes the tensors t[0..n) (pointers) to fd as one safetensors file, data in name order. */
static int write_tensors(int fd, st_wtensor **t, int n, const json_t *metadata, chord_err *err) {
    qsort(t, (size_t)n, sizeof *t, cmp_wtensor_ptr);
    json_t *h = json_object();
    if (!h) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    int bad = 0;
    if (metadata && json_object_size(metadata) > 0)
        bad |= json_object_set(h, "__metadata__", (json_t *)metadata);
    size_t at = 0;
    for (int i = 0; i < n && !bad; i++) {
        json_t *e = json_object(), *shape = json_array(), *off = json_array();
        bad |= !e || !shape || !off;
        for (int d = 0; !bad && d < t[i]->ndim; d++)
            bad |= json_array_append_new(shape, json_integer(t[i]->shape[d]));
        if (!bad) {
            bad |= json_array_append_new(off, json_integer((json_int_t)at));
            bad |= json_array_append_new(off, json_integer((json_int_t)(at + t[i]->nbytes)));
            bad |= json_object_set_new(e, "dtype", json_string(st_dtype_name(t[i]->dtype)));
            bad |= json_object_set_new(e, "shape", shape);
            bad |= json_object_set_new(e, "data_offsets", off);
            shape = off = NULL;
            bad |= json_object_set_new(h, t[i]->name, e);
            e = NULL;
        }
        if (e) json_decref(e);
        if (shape) json_decref(shape);
        if (off) json_decref(off);
        at += t[i]->nbytes;
    }
    char *text = bad ? NULL : json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!text) return chord_err_setc(err, CHORD_E_INTERNAL, "header: out of memory");
    /* The spec pads the header with spaces so the data starts 8-byte aligned. */
    size_t hlen = strlen(text), padded = (hlen + 7) & ~(size_t)7;
    char *hbuf = malloc(8 + padded);
    if (!hbuf) {
        free(text);
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    uint64_t hl = padded;
    memcpy(hbuf, &hl, 8);
    memcpy(hbuf + 8, text, hlen);
    memset(hbuf + 8 + hlen, ' ', padded - hlen);
    free(text);
    int rc = write_all(fd, hbuf, 8 + padded);
    free(hbuf);
    if (rc) return chord_err_setc(err, CHORD_E_IO, "write: %s", strerror(errno));

    enum { CHUNK = 1 << 16 };
    uint16_t *buf = malloc(CHUNK * sizeof *buf);
    if (!buf) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    for (int i = 0; i < n && rc == 0; i++) {
        if (t[i]->dtype == ST_F32) {
            if (t[i]->numel && write_all(fd, t[i]->data, t[i]->nbytes)) rc = -1;
            continue;
        }
        for (size_t s = 0; s < t[i]->numel && rc == 0; s += CHUNK) {
            size_t k = t[i]->numel - s < CHUNK ? t[i]->numel - s : CHUNK;
            const float *src = t[i]->data + s;
            if (t[i]->dtype == ST_BF16)
                for (size_t j = 0; j < k; j++)
                    buf[j] = st_f32_to_bf16(src[j]);
            else
                for (size_t j = 0; j < k; j++)
                    buf[j] = st_f32_to_f16(src[j]);
            if (write_all(fd, buf, k * 2)) rc = -1;
        }
    }
    free(buf);
    if (rc) return chord_err_setc(err, CHORD_E_IO, "write: %s", strerror(errno));
    return 0;
}

static void dir_of(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(out, n, ".");
    } else if (slash == path) {
        snprintf(out, n, "/");
    } else {
        snprintf(out, n, "%.*s", (int)(slash - path), path);
    }
}

/* Streams the tensors to PATH.tmp.<pid>, fsyncs, renames over PATH and fsyncs the directory:
 * the atomic-write protocol of server/base/fileutil.h, without holding the file in memory. */
static int save_file(st_wtensor **t, int n, const json_t *metadata, const char *path,
                     chord_err *err) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return chord_err_setc(err, CHORD_E_IO, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return chord_err_setc(err, CHORD_E_IO, "%s: %s", tmp, strerror(errno));
    int rc = write_tensors(fd, t, n, metadata, err);
    if (rc == 0 && fsync(fd) != 0)
        rc = chord_err_setc(err, CHORD_E_IO, "fsync: %s", strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = chord_err_setc(err, CHORD_E_IO, "close: %s", strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = chord_err_setc(err, CHORD_E_IO, "rename: %s", strerror(errno));
    if (rc) {
        unlink(tmp);
        return chord_err_prefix(err, "%s", path);
    }
    char dir[PATH_MAX];
    dir_of(path, dir, sizeof dir);
    return chord_fsync_dir(dir, err);
}

int st_writer_save(st_writer *w, const char *path, chord_err *err) {
    st_wtensor **t = malloc((size_t)(w->n ? w->n : 1) * sizeof *t);
    if (!t) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    for (int i = 0; i < w->n; i++)
        t[i] = &w->t[i];
    int rc = save_file(t, w->n, w->metadata, path, err);
    free(t);
    return rc;
}

/* 1 when NAME is model-NNNNN-of-NNNNN.safetensors (a shard transformers would write). */
static int is_shard_name(const char *name) {
    unsigned a, b;
    int end = 0;
    return sscanf(name, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 &&
           (size_t)end == strlen(name) &&
           strlen(name) == strlen("model-00001-of-00001.safetensors");
}

/* Removes weight files a previous save left in DIR that the new set does not use, as
 * transformers' save_pretrained does, so a stale model.safetensors never shadows new shards. */
static int remove_stale(const char *dir, int n_shards, chord_err *err) {
    DIR *d = opendir(dir);
    if (!d) return chord_err_setc(err, CHORD_E_IO, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        int stale = 0;
        if (n_shards == 0) {
            stale = is_shard_name(nm) || strcmp(nm, ST_INDEX_NAME) == 0;
        } else {
            if (strcmp(nm, ST_SINGLE_NAME) == 0) stale = 1;
            if (is_shard_name(nm)) {
                unsigned a, b;
                sscanf(nm, "model-%5u-of-%5u", &a, &b);
                stale = (int)b != n_shards || a < 1 || (int)a > n_shards;
            }
        }
        if (!stale) continue;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, nm);
        if (unlink(p) != 0 && errno != ENOENT) {
            rc = chord_err_setc(err, CHORD_E_IO, "remove stale %s: %s", p, strerror(errno));
            break;
        }
    }
    closedir(d);
    return rc;
}

int st_writer_save_dir(st_writer *w, const char *dir, size_t max_shard_bytes, chord_err *err) {
    if (chord_mkdirs(dir, err)) return -1;
    size_t total = 0;
    for (int i = 0; i < w->n; i++)
        total += w->t[i].nbytes;
    char path[PATH_MAX];
    if (max_shard_bytes == 0 || total <= max_shard_bytes) {
        snprintf(path, sizeof path, "%s/%s", dir, ST_SINGLE_NAME);
        if (st_writer_save(w, path, err)) return -1;
        return remove_stale(dir, 0, err);
    }
    /* huggingface_hub's split (split_state_dict_into_shards_factory), which save_pretrained
     * uses: walk the tensors in the order they were added; a tensor bigger than the limit gets a
     * shard of its own at once; otherwise start a new shard when the next tensor would push the
     * current one past the limit. Shards are numbered in the order they are closed. */
    int *shard_of = malloc((size_t)w->n * sizeof *shard_of);
    st_wtensor **t = malloc((size_t)w->n * sizeof *t);
    if (!shard_of || !t) {
        free(shard_of);
        free(t);
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    int n_shards = 0, first_open = -1; /* first tensor of the open shard */
    size_t cur = 0, n_params = 0;
    for (int i = 0; i < w->n; i++) {
        size_t b = w->t[i].nbytes;
        n_params += w->t[i].numel;
        shard_of[i] = -1;
        if (b > max_shard_bytes) {
            shard_of[i] = n_shards++;
            continue;
        }
        if (cur + b > max_shard_bytes) {
            for (int j = first_open; j >= 0 && j < i; j++)
                if (shard_of[j] == -2) shard_of[j] = n_shards;
            n_shards++;
            cur = 0;
            first_open = -1;
        }
        if (first_open < 0) first_open = i;
        shard_of[i] = -2; /* in the open shard */
        cur += b;
    }
    if (first_open >= 0) {
        for (int j = first_open; j < w->n; j++)
            if (shard_of[j] == -2) shard_of[j] = n_shards;
        n_shards++;
    }
    if (n_shards <= 1) {
        free(shard_of);
        free(t);
        snprintf(path, sizeof path, "%s/%s", dir, ST_SINGLE_NAME);
        if (st_writer_save(w, path, err)) return -1;
        return remove_stale(dir, 0, err);
    }
    int rc = 0;
    if (n_shards > 99999) rc = chord_err_set(err, "%s: %d shards, at most 99999", dir, n_shards);
    json_t *wm = json_object();
    for (int s = 0; s < n_shards && rc == 0; s++) {
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        int k = 0;
        for (int i = 0; i < w->n; i++) {
            if (shard_of[i] != s) continue;
            t[k++] = &w->t[i];
            if (!wm || json_object_set_new(wm, w->t[i].name, json_string(fname)))
                rc = chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        if (rc == 0) rc = save_file(t, k, w->metadata, path, err);
    }
    free(shard_of);
    free(t);
    if (rc == 0) {
        /* transformers writes the weight_map sorted by name, metadata.total_size in bytes and
         * total_parameters. */
        json_t *index =
            json_pack("{s:{s:I,s:I},s:O}", "metadata", "total_parameters", (json_int_t)n_params,
                      "total_size", (json_int_t)total, "weight_map", wm);
        size_t len = 0;
        char *text =
            index ? chord_json_dumps_line(index, JSON_INDENT(2) | JSON_SORT_KEYS, &len) : NULL;
        if (index) json_decref(index);
        if (!text) {
            rc = chord_err_setc(err, CHORD_E_INTERNAL, "index: out of memory");
        } else {
            snprintf(path, sizeof path, "%s/%s", dir, ST_INDEX_NAME);
            rc = chord_write_file_atomic(path, text, len, err);
            free(text);
        }
    }
    if (wm) json_decref(wm);
    if (rc) return -1;
    return remove_stale(dir, n_shards, err);
}

/* test_safetensors.c — the safetensors reader and writer (server/model/safetensors.c).
 *
 * Files here are built byte by byte from the format's spec (u64 header length, JSON header, data),
 * not with chord's writer, so the reader is checked against the spec; then every kind of
 * corruption (truncation at every length, lying headers, bad dtypes, overlaps, holes, bad shard
 * indexes) must give an error naming the tensor or file and never crash (run under the Sanitize
 * build). Half-precision conversions are checked against values worked out by hand from IEEE 754.
 * Files written by the safetensors / transformers libraries are checked in
 * tests/reference/io_safetensors_test.py. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "server/model/safetensors.h"

static char tmpdir[64];

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/chord_test_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* A safetensors file: 8-byte little-endian header length, header (padded with `pad` spaces),
 * data. Returns its length; *out is malloc'd. */
static size_t build(const char *header, size_t pad, const void *data, size_t data_len,
                    uint8_t **out) {
    size_t hlen = strlen(header) + pad;
    size_t len = 8 + hlen + data_len;
    uint8_t *b = malloc(len);
    assert_non_null(b);
    uint64_t h = hlen;
    memcpy(b, &h, 8);
    memcpy(b + 8, header, strlen(header));
    memset(b + 8 + strlen(header), ' ', pad);
    if (data_len) memcpy(b + 8 + hlen, data, data_len);
    *out = b;
    return len;
}

/* The reference file: a = [[1, 2], [3, 4]] F32; b = [1, -2, inf] BF16; c = 0.333251953125 F16
 * scalar (0x3555: 2^-2 * (1 + 341/1024)). */
#define GOOD_HEADER                                                                                \
    "{\"__metadata__\":{\"format\":\"pt\"},"                                                       \
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"                           \
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"                           \
    "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[22,24]}}"

static size_t good_data(uint8_t data[24]) {
    const float a[4] = {1, 2, 3, 4};
    const uint16_t b[3] = {0x3f80, 0xc000, 0x7f80}, c = 0x3555;
    memcpy(data, a, 16);
    memcpy(data + 16, b, 6);
    memcpy(data + 22, &c, 2);
    return 24;
}

static st_reader *open_ok(const char *path) {
    st_reader *r = NULL;
    chord_err err = {0};
    int rc = st_open(path, &r, &err);
    if (rc) fprintf(stderr, "unexpected error: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return r;
}

/* Opening must fail with a message holding `want` (and the path); never a crash. */
static void open_fails(const char *path, const char *want) {
    st_reader *r = NULL;
    chord_err err = {0};
    int rc = st_open(path, &r, &err);
    if (rc != -1 || !strstr(err.msg, want))
        fprintf(stderr, "%s: want \"%s\", got rc=%d \"%s\"\n", path, want, rc, err.msg);
    assert_int_equal(rc, -1);
    assert_null(r);
    assert_non_null(strstr(err.msg, want));
}

static void check_good_reader(st_reader *r) {
    assert_int_equal(st_count(r), 3);
    assert_string_equal(st_get(r, 0)->name, "a");
    assert_string_equal(st_get(r, 2)->name, "c");
    assert_null(st_get(r, 3));
    const st_tensor_info *a = st_find(r, "a"), *c = st_find(r, "c");
    assert_non_null(a);
    assert_int_equal(a->dtype, ST_F32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->numel, 4);
    assert_int_equal(c->ndim, 0);
    assert_int_equal(c->numel, 1);
    assert_null(st_find(r, "zz"));
    assert_string_equal(st_metadata(r, "format"), "pt");
    assert_null(st_metadata(r, "other"));

    float fa[4], fb[3], fc[1];
    chord_err err = {0};
    const int64_t shape_a[2] = {2, 2};
    assert_int_equal(st_read_f32(r, "a", fa, shape_a, 2, &err), 0);
    assert_true(fa[0] == 1 && fa[1] == 2 && fa[2] == 3 && fa[3] == 4);
    assert_int_equal(st_read_f32(r, "b", fb, NULL, 0, &err), 0);
    assert_true(fb[0] == 1.0f && fb[1] == -2.0f && isinf(fb[2]) && fb[2] > 0);
    assert_int_equal(st_read_f32(r, "c", fc, NULL, 0, &err), 0);
    assert_true(fc[0] == 0.333251953125f);
    size_t nbytes = 0;
    const void *raw = st_raw(r, "b", &nbytes);
    assert_non_null(raw);
    assert_int_equal(nbytes, 6);

    const int64_t wrong[1] = {4};
    assert_int_equal(st_read_f32(r, "a", fa, wrong, 1, &err), -1);
    assert_non_null(strstr(err.msg, "tensor a: shape [2, 2], expected [4]"));
    assert_int_equal(st_read_f32(r, "nope", fa, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "tensor nope"));
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
}

static void test_reads_spec_file(void **state) {
    (void)state;
    uint8_t data[24], *file;
    good_data(data);
    char path[128];
    /* data 8-byte aligned (header padded as the spec says) and deliberately unaligned */
    for (size_t pad = 0; pad < 8; pad++) {
        size_t len = build(GOOD_HEADER, pad, data, sizeof data, &file);
        path_in(path, sizeof path, "good.safetensors");
        write_bytes(path, file, len);
        free(file);
        st_reader *r = open_ok(path);
        check_good_reader(r);
        st_close(r);
    }
}

static void test_every_truncation_fails(void **state) {
    (void)state;
    uint8_t data[24], *file;
    good_data(data);
    size_t len = build(GOOD_HEADER, 3, data, sizeof data, &file);
    char path[128];
    path_in(path, sizeof path, "trunc.safetensors");
    for (size_t k = 0; k < len; k++) {
        write_bytes(path, file, k);
        st_reader *r = NULL;
        chord_err err = {0};
        assert_int_equal(st_open(path, &r, &err), -1);
        assert_null(r);
        assert_non_null(strstr(err.msg, path));
    }
    /* a truncated data buffer is reported as such, naming the tensor */
    write_bytes(path, file, len - 1);
    open_fails(path, "tensor c: data_offsets: [22, 24) past the end of the data (23 bytes");
    write_bytes(path, file, 5);
    open_fails(path, "too short");
    free(file);
}

static const struct {
    const char *header;
    size_t data_len;
    const char *want;
} bad_headers[] = {
    {"[1,2]", 0, "does not start with '{'"},
    {"{\"a\":", 0, "invalid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "invalid JSON"},
    {"{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
     "tensor a: dtype: \"F8_E4M3\" is not supported"},
    {"{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor a: dtype"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor a: dtype"},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor a: shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor a: data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16,
     "tensor a: shape holds 6 elements of F32 (24 bytes) but data_offsets span 16 bytes"},
    {"{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
     "tensor a: shape holds 4 elements of BF16 (8 bytes)"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "tensor a: shape[0]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "tensor a: shape[0]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     "tensor a: shape: 9 dimensions"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,1099511627776],"
     "\"data_offsets\":[0,4]}}",
     4, "tensor a: shape: element count overflows"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
     "tensor a: data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "tensor a: data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
     "tensor a: data_offsets: end 0 before begin 4"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
     "tensor a: data_offsets: [0, 16) past the end of the data (8 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,18446744073709551615]}}", 16,
     "too big integer"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, "tensor b: data_offsets [4, 12) overlap tensor a"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     8, "overlap"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
     16, "tensor b: data_offsets [12, 16) leave a hole after byte 8"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
     "tensors cover 8 bytes but the file holds 12 data bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "tensor a listed twice"},
    {"{\"__metadata__\":{\"format\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
     "\"data_offsets\":[0,4]}}",
     4, "__metadata__.format: must be a string"},
    {"{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "__metadata__: must be an object"},
    {"{\"a\":[1,2]}", 0, "tensor a: entry must be an object"},
};

static void test_bad_headers(void **state) {
    (void)state;
    uint8_t data[64] = {0};
    char path[128];
    path_in(path, sizeof path, "bad.safetensors");
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        uint8_t *file;
        size_t len = build(bad_headers[i].header, 0, data, bad_headers[i].data_len, &file);
        write_bytes(path, file, len);
        free(file);
        open_fails(path, bad_headers[i].want);
    }
}

static void test_header_length_lies(void **state) {
    (void)state;
    uint8_t data[24], *file;
    good_data(data);
    size_t len = build(GOOD_HEADER, 0, data, sizeof data, &file);
    char path[128];
    path_in(path, sizeof path, "hlen.safetensors");
    const uint64_t lies[] = {UINT64_MAX, (uint64_t)1 << 63, len - 7, 200000000, 0, 1};
    const char *want[] = {"past the end", "past the end", "past the end",
                          "past the end", "too small",    "too small"};
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        memcpy(file, &lies[i], 8);
        write_bytes(path, file, len);
        open_fails(path, want[i]);
    }
    /* a header length that cuts the JSON short */
    uint64_t shorter = strlen(GOOD_HEADER) - 10;
    memcpy(file, &shorter, 8);
    write_bytes(path, file, len);
    open_fails(path, "invalid JSON");
    free(file);
    /* a header above the 100 MB limit, in a file big enough to hold it */
    char big[128];
    path_in(big, sizeof big, "big.safetensors");
    FILE *f = fopen(big, "wb");
    assert_non_null(f);
    uint64_t h = 100000001;
    fwrite(&h, 8, 1, f);
    assert_int_equal(ftruncate(fileno(f), 8 + 100000001 + 8), 0);
    fclose(f);
    open_fails(big, "100 MB");
    unlink(big);
}

/* Random byte flips in the header of the good file: opening fails cleanly or succeeds and reads
 * every tensor without touching memory outside the mapping (ASan checks the latter). */
static void test_header_mutations_never_crash(void **state) {
    (void)state;
    uint8_t data[24], *file;
    good_data(data);
    size_t len = build(GOOD_HEADER, 0, data, sizeof data, &file);
    uint8_t *m = malloc(len);
    assert_non_null(m);
    char path[128];
    path_in(path, sizeof path, "mut.safetensors");
    uint64_t seed = 12345;
    const char alphabet[] = "{}[]\",:0123456789-eE.FBI ";
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(m, file, len);
        int flips = 1 + iter % 3;
        for (int k = 0; k < flips; k++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t at = 8 + (size_t)((seed >> 33) % strlen(GOOD_HEADER));
            m[at] = (uint8_t)alphabet[(seed >> 17) % (sizeof alphabet - 1)];
        }
        write_bytes(path, m, len);
        st_reader *r = NULL;
        chord_err err = {0};
        if (st_open(path, &r, &err) != 0) {
            assert_true(err.msg[0] != '\0');
            continue;
        }
        for (int i = 0; i < st_count(r); i++) {
            const st_tensor_info *t = st_get(r, i);
            float *buf = malloc((t->numel ? t->numel : 1) * sizeof *buf);
            assert_non_null(buf);
            assert_int_equal(st_read_f32(r, t->name, buf, NULL, 0, &err), 0);
            free(buf);
        }
        st_close(r);
    }
    free(m);
    free(file);
}

/* ---- sharded sets ------------------------------------------------------------------------ */

static void write_text(const char *dir, const char *name, const char *text) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_bytes(p, text, strlen(text));
}

static void write_shard(const char *dir, const char *name, const char *header, const void *data,
                        size_t n) {
    uint8_t *file;
    size_t len = build(header, 0, data, n, &file);
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_bytes(p, file, len);
    free(file);
}

#define SHARD1 "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
#define SHARD2 "{\"y\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}"
#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"

static void make_sharded(const char *dir) {
    assert_int_equal(chord_mkdirs(dir, NULL), 0);
    const float x[2] = {5, -6};
    const uint16_t y[2] = {0x4040, 0xbf00}; /* 3.0, -0.5 */
    write_shard(dir, S1, SHARD1, x, sizeof x);
    write_shard(dir, S2, SHARD2, y, sizeof y);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 12}, \"weight_map\": {\"x\": \"" S1
               "\", \"y\": \"" S2 "\"}}");
}

static void test_sharded_set(void **state) {
    (void)state;
    char dir[128];
    path_in(dir, sizeof dir, "sharded");
    make_sharded(dir);
    st_reader *r = open_ok(dir);
    assert_int_equal(st_count(r), 2);
    float v[2];
    chord_err err = {0};
    assert_int_equal(st_read_f32(r, "x", v, NULL, 0, &err), 0);
    assert_true(v[0] == 5 && v[1] == -6);
    assert_int_equal(st_read_f32(r, "y", v, NULL, 0, &err), 0);
    assert_true(v[0] == 3.0f && v[1] == -0.5f);
    st_close(r);

    /* index pointing to a missing shard */
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, S2);
    unlink(p);
    open_fails(dir, S2);
    make_sharded(dir);
    /* index naming a tensor its shard does not hold */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"" S1 "\", \"y\": \"" S2 "\", \"z\": \"" S2 "\"}}");
    open_fails(dir, "weight_map.z: shard " S2 " does not hold this tensor");
    /* index mapping a tensor to the wrong shard */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"" S2 "\", \"y\": \"" S2 "\"}}");
    open_fails(dir, "weight_map.x");
    /* a tensor of a listed shard missing from the index */
    write_shard(dir, S1,
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                "abcdefgh", 8);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"" S1 "\", \"y\": \"" S2 "\"}}");
    open_fails(dir, "tensor w: in shard");
    /* one tensor held by two shards */
    write_shard(dir, S2, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd",
                4);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"" S1 "\", \"y\": \"" S2 "\"}}");
    open_fails(dir, "tensor x: held by both");
    make_sharded(dir);
    /* shard names must stay in the directory */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"../" S1 "\", \"y\": \"" S2 "\"}}");
    open_fails(dir, "weight_map.x: must be a file name in the same directory");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": [1]}");
    open_fails(dir, "weight_map: missing or not an object");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": ");
    open_fails(dir, "invalid JSON");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"" S1 "\", \"x\": \"" S2 "\"}}");
    open_fails(dir, "tensor x listed twice");
    /* a corrupt shard is named */
    make_sharded(dir);
    write_shard(dir, S2, "{\"y\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,4]}}", "abcd",
                4);
    open_fails(dir, "tensor y: dtype");
    /* neither model.safetensors nor an index */
    char empty[128];
    path_in(empty, sizeof empty, "empty_dir");
    assert_int_equal(chord_mkdirs(empty, NULL), 0);
    open_fails(empty, "neither model.safetensors nor model.safetensors.index.json");
    path_in(p, sizeof p, "does_not_exist.safetensors");
    open_fails(p, "No such file");
}

/* ---- conversions ------------------------------------------------------------------------- */

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_half_conversions_known_values(void **state) {
    (void)state;
    /* f16 -> f32 from IEEE 754 binary16: sign, 5-bit exponent (bias 15), 10-bit mantissa */
    assert_true(st_f16_to_f32(0x3c00) == 1.0f);
    assert_true(st_f16_to_f32(0xc000) == -2.0f);
    assert_true(st_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(st_f16_to_f32(0x0400) == ldexpf(1, -14));    /* smallest normal */
    assert_true(st_f16_to_f32(0x0001) == ldexpf(1, -24));    /* smallest subnormal */
    assert_true(st_f16_to_f32(0x03ff) == ldexpf(1023, -24)); /* largest subnormal */
    assert_int_equal(bits(st_f16_to_f32(0x8000)), 0x80000000u);
    assert_true(isinf(st_f16_to_f32(0x7c00)) && st_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(st_f16_to_f32(0x7e00)));
    /* f32 -> f16, round to nearest even */
    assert_int_equal(st_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(st_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65520.0f), 0x7c00); /* halfway to 2^16: rounds to inf */
    assert_int_equal(st_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(st_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(st_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);     /* tie -> even */
    assert_int_equal(st_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02); /* tie -> even */
    assert_int_equal(st_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3c01);
    assert_int_equal(st_f32_to_f16(ldexpf(1, -24)), 0x0001);
    assert_int_equal(st_f32_to_f16(ldexpf(1, -25)), 0x0000);     /* tie -> even (0) */
    assert_int_equal(st_f32_to_f16(3 * ldexpf(1, -25)), 0x0002); /* tie -> even (2) */
    assert_int_equal(st_f32_to_f16(ldexpf(1, -26)), 0x0000);
    assert_int_equal(st_f32_to_f16(ldexpf(2047, -25)), 0x0400); /* rounds up into the normals */
    assert_int_equal(st_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(st_f32_to_f16(INFINITY), 0x7c00);
    assert_true((st_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (st_f32_to_f16(NAN) & 0x3ff) != 0);
    /* bf16: the top half of a float32 */
    assert_true(st_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(st_bf16_to_f32(0xc040) == -3.0f);
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(st_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);     /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82); /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + ldexpf(1, -8) + ldexpf(1, -20)), 0x3f81);
    assert_int_equal(st_f32_to_bf16(3.4028235e38f), 0x7f80); /* FLT_MAX rounds to inf */
    assert_int_equal(st_f32_to_bf16(-0.0f), 0x8000);
    uint16_t nan16 = st_f32_to_bf16(NAN);
    assert_true((nan16 & 0x7f80) == 0x7f80 && (nan16 & 0x7f) != 0);
    /* a NaN whose payload sits only in the low bits must stay NaN, not become inf */
    float low_nan;
    uint32_t u = 0x7f800001u;
    memcpy(&low_nan, &u, 4);
    assert_true(isnan(st_bf16_to_f32(st_f32_to_bf16(low_nan))));
}

static void test_half_conversions_round_trip_every_value(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(st_f16_to_f32(st_f32_to_f16(f))));
        } else {
            assert_int_equal(st_f32_to_f16(f), h);
        }
        float b = st_bf16_to_f32((uint16_t)h);
        if (isnan(b)) {
            assert_true(isnan(st_bf16_to_f32(st_f32_to_bf16(b))));
        } else {
            assert_int_equal(st_f32_to_bf16(b), h);
        }
    }
    /* every f16 midpoint between neighbours rounds to the even one */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float lo = st_f16_to_f32((uint16_t)h), hi = st_f16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) / 2; /* exact in float32 */
        assert_int_equal(st_f32_to_f16(mid), (h & 1) ? h + 1 : h);
    }
}

/* ---- writer ------------------------------------------------------------------------------ */

static void test_writer_errors(void **state) {
    (void)state;
    st_writer *w = st_writer_new();
    assert_non_null(w);
    chord_err err = {0};
    const float d[4] = {0};
    const int64_t s[2] = {2, 2}, neg[1] = {-1};
    assert_int_equal(st_writer_add(w, "a", d, s, 2, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "a", d, s, 2, ST_F32, &err), -1);
    assert_non_null(strstr(err.msg, "tensor a: added twice"));
    assert_int_equal(st_writer_add(w, "b", d, s, 2, ST_I64, &err), -1);
    assert_non_null(strstr(err.msg, "tensor b: dtype I64"));
    assert_int_equal(st_writer_add(w, "c", d, neg, 1, ST_F32, &err), -1);
    assert_non_null(strstr(err.msg, "tensor c: shape[0] is negative"));
    assert_int_equal(st_writer_add(w, "", d, s, 2, ST_F32, &err), -1);
    assert_int_equal(st_writer_add(w, "__metadata__", d, s, 2, ST_F32, &err), -1);
    assert_int_equal(st_writer_add(w, "e", d, s, 9, ST_F32, &err), -1);
    assert_int_equal(st_writer_add(w, "f", NULL, s, 2, ST_F32, &err), -1);
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", tmpdir);
    assert_int_equal(st_writer_save(w, path, &err), -1);
    assert_non_null(strstr(err.msg, "x.safetensors"));
    st_writer_free(w);
}

static void test_writer_file_layout(void **state) {
    (void)state;
    const float a[3] = {1.0f, 1.0f + 3 * ldexpf(1, -8), -2.5f};
    const float b[2] = {0.1f, 65520.0f};
    const float c[1] = {7.0f};
    const int64_t sa[1] = {3}, sb[2] = {1, 2};
    st_writer *w = st_writer_new();
    chord_err err = {0};
    /* added out of name order: the file is laid out by name */
    assert_int_equal(st_writer_add(w, "z.bf16", a, sa, 1, ST_BF16, &err), 0);
    assert_int_equal(st_writer_add(w, "m.f16", b, sb, 2, ST_F16, &err), 0);
    assert_int_equal(st_writer_add(w, "a.f32", c, NULL, 0, ST_F32, &err), 0);
    assert_int_equal(st_writer_metadata(w, "step", "12", &err), 0);
    char path[128];
    path_in(path, sizeof path, "written.safetensors");
    assert_int_equal(st_writer_save(w, path, &err), 0);
    st_writer_free(w);

    char *bytes = NULL;
    size_t len = 0;
    assert_int_equal(chord_read_file(path, &bytes, &len, &err), 0);
    uint64_t hlen;
    memcpy(&hlen, bytes, 8);
    assert_int_equal(hlen % 8, 0);
    /* data: a.f32 (4 bytes), m.f16 (4), z.bf16 (6) = 14 bytes after the header */
    assert_int_equal(len, 8 + hlen + 14);
    assert_non_null(strstr(bytes + 8, "\"__metadata__\":{\"format\":\"pt\",\"step\":\"12\"}"));
    assert_non_null(strstr(bytes + 8, "\"a.f32\":{\"dtype\":\"F32\",\"shape\":[],"
                                      "\"data_offsets\":[0,4]}"));
    assert_non_null(strstr(bytes + 8, "\"m.f16\":{\"dtype\":\"F16\",\"shape\":[1,2],"
                                      "\"data_offsets\":[4,8]}"));
    assert_non_null(strstr(bytes + 8, "\"z.bf16\":{\"dtype\":\"BF16\",\"shape\":[3],"
                                      "\"data_offsets\":[8,14]}"));
    const uint8_t *data = (const uint8_t *)bytes + 8 + hlen;
    uint16_t h[5];
    memcpy(h, data + 4, 10);
    assert_int_equal(h[0], 0x2e66); /* 0.1 in f16 */
    assert_int_equal(h[1], 0x7c00); /* 65520 rounds to inf */
    assert_int_equal(h[2], 0x3f80);
    assert_int_equal(h[3], 0x3f82); /* 1 + 3*2^-8: tie to even */
    assert_int_equal(h[4], 0xc020); /* -2.5 */
    for (uint64_t i = 8 + strlen(bytes + 8); i < 8 + hlen; i++)
        assert_int_equal(bytes[i], ' ');
    free(bytes);

    st_reader *r = open_ok(path);
    assert_string_equal(st_metadata(r, "step"), "12");
    float back[3];
    assert_int_equal(st_read_f32(r, "z.bf16", back, sa, 1, &err), 0);
    assert_true(back[0] == 1.0f && back[1] == 1.0f + ldexpf(1, -6) && back[2] == -2.5f);
    st_close(r);
    /* no temporary file left behind */
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_false(chord_is_file(tmp));
}

static void test_writer_sharded_dir(void **state) {
    (void)state;
    float big[40], small[4];
    for (int i = 0; i < 40; i++)
        big[i] = (float)i;
    for (int i = 0; i < 4; i++)
        small[i] = (float)-i;
    const int64_t sbig[1] = {40}, ssmall[1] = {4};
    st_writer *w = st_writer_new();
    chord_err err = {0};
    /* limit 64 bytes: s1 (16) + s2 (16) fit; big (160) is over the limit -> a shard of its own
     * numbered first (closed first), s3 + s4 continue the open shard, s5 starts another. */
    assert_int_equal(st_writer_add(w, "s1", small, ssmall, 1, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "s2", small, ssmall, 1, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "big", big, sbig, 1, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "s3", small, ssmall, 1, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "s4", small, ssmall, 1, ST_F32, &err), 0);
    assert_int_equal(st_writer_add(w, "s5", small, ssmall, 1, ST_F32, &err), 0);
    char dir[128];
    path_in(dir, sizeof dir, "out_sharded");
    assert_int_equal(st_writer_save_dir(w, dir, 64, &err), 0);
    char *index = NULL;
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    assert_int_equal(chord_read_file(p, &index, NULL, &err), 0);
    assert_non_null(strstr(index, "\"total_size\": 240"));
    assert_non_null(strstr(index, "\"total_parameters\": 60"));
    assert_non_null(strstr(index, "\"big\": \"model-00001-of-00003.safetensors\""));
    assert_non_null(strstr(index, "\"s1\": \"model-00002-of-00003.safetensors\""));
    assert_non_null(strstr(index, "\"s4\": \"model-00002-of-00003.safetensors\""));
    assert_non_null(strstr(index, "\"s5\": \"model-00003-of-00003.safetensors\""));
    free(index);
    st_reader *r = open_ok(dir);
    assert_int_equal(st_count(r), 6);
    float back[40];
    assert_int_equal(st_read_f32(r, "big", back, sbig, 1, &err), 0);
    assert_memory_equal(back, big, sizeof big);
    st_close(r);
    /* under the limit: one model.safetensors, the shards and index of before removed */
    assert_int_equal(st_writer_save_dir(w, dir, 0, &err), 0);
    assert_false(chord_is_file(p));
    snprintf(p, sizeof p, "%s/model-00001-of-00003.safetensors", dir);
    assert_false(chord_is_file(p));
    r = open_ok(dir);
    assert_int_equal(st_count(r), 6);
    st_close(r);
    st_writer_free(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_spec_file),
        cmocka_unit_test(test_every_truncation_fails),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_header_length_lies),
        cmocka_unit_test(test_header_mutations_never_crash),
        cmocka_unit_test(test_sharded_set),
        cmocka_unit_test(test_half_conversions_known_values),
        cmocka_unit_test(test_half_conversions_round_trip_every_value),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_writer_file_layout),
        cmocka_unit_test(test_writer_sharded_dir),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

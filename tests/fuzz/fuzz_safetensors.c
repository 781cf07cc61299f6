/* fuzz_safetensors.c — safetensors reading (server/model/safetensors.h: st_open on a file).
 * First byte, bit 0 clear: the rest is a .safetensors file; set: the rest is a
 * model.safetensors.index.json beside two small valid shards (a.safetensors, b.safetensors,
 * written once). Every tensor an opened file lists is read raw and, when small, as float32. */
#include <sys/stat.h>

#include "server/model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Two shards with a tensor each, for the index mode. */
static void write_shards(const char *dir) {
    static const float values[6] = {1, 2, 3, 4, 5, 6};
    const char *names[2] = {"a", "b"};
    for (int i = 0; i < 2; i++) {
        st_writer *w = st_writer_new();
        chord_err err = {0};
        int64_t shape[2] = {2, 3};
        char path[600];
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, names[i]);
        if (!w || st_writer_add(w, names[i], values, shape, 2, i ? ST_BF16 : ST_F32, &err) ||
            st_writer_save(w, path, &err))
            abort();
        st_writer_free(w);
    }
}

static void read_all(const st_reader *r) {
    int n = st_count(r);
    for (int i = 0; i < n; i++) {
        const st_tensor_info *t = st_get(r, i);
        if (!t || !t->name) abort();
        if (st_find(r, t->name) == NULL) abort();
        size_t nbytes = 0;
        const unsigned char *raw = st_raw(r, t->name, &nbytes);
        volatile unsigned char sink = 0;
        for (size_t k = 0; raw && k < nbytes; k += 61) /* every byte it claims is readable */
            sink ^= raw[k];
        if (raw && nbytes) sink ^= raw[nbytes - 1];
        (void)sink;
        if (t->numel <= 4096) {
            float *dst = malloc((t->numel ? t->numel : 1) * sizeof *dst);
            if (!dst) abort();
            chord_err err = {0};
            (void)st_read_f32(r, t->name, dst, t->shape, t->ndim, &err);
            free(dst);
        }
    }
    (void)st_metadata(r, "format");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char path[600];
    if (data[0] & 1) {
        static char dir[600];
        if (!dir[0]) {
            snprintf(dir, sizeof dir, "%s/sharded", fuzz_dir());
            if (mkdir(dir, 0700)) abort();
            write_shards(dir);
        }
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(path, "wb");
        if (!f || (size > 1 && fwrite(data + 1, 1, size - 1, f) != size - 1) || fclose(f)) abort();
        snprintf(path, sizeof path, "%s", dir);
    } else {
        fuzz_write_file("model.safetensors", data + 1, size - 1, path, sizeof path);
    }
    st_reader *r = NULL;
    chord_err err = {0};
    if (st_open(path, &r, &err) == 0) {
        read_all(r);
        st_close(r);
    }
    return 0;
}

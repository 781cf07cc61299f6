/* safetensors.h — reading and writing Hugging Face safetensors: a single file, or a sharded set
 * with model.safetensors.index.json. F32, BF16 and F16 convert to float32 on read. Every size
 * in the header is checked against the file before a byte is trusted: a truncated file, a header
 * that lies, overlapping or out-of-range offsets give an error naming the tensor, never a crash. */
#ifndef CHORD_MODEL_SAFETENSORS_H
#define CHORD_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

#define ST_MAX_DIMS 8

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I8, ST_U8, ST_BOOL } st_dtype;

typedef struct st_tensor_info {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
} st_tensor_info;

typedef struct st_reader st_reader;

/* Opens PATH: a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json (+ its shards). Files are mmap'd read-only. */
int st_open(const char *path, st_reader **out, chord_err *err);
void st_close(st_reader *r);
int st_count(const st_reader *r);
const st_tensor_info *st_get(const st_reader *r, int i);
/* NULL when absent. */
const st_tensor_info *st_find(const st_reader *r, const char *name);
/* Reads tensor NAME as float32 into dst (numel floats). When shape is not NULL the tensor must
 * have exactly that shape (ndim dims), else an error naming the tensor and both shapes. */
int st_read_f32(const st_reader *r, const char *name, float *dst, const int64_t *shape, int ndim,
                chord_err *err);
/* The tensor's bytes as stored (little-endian, dtype of st_find(name)), inside the read-only
 * mapping: valid until st_close, any alignment. NULL when absent. */
const void *st_raw(const st_reader *r, const char *name, size_t *nbytes);
/* A "__metadata__" string of the file (the first shard holding it), NULL when absent. */
const char *st_metadata(const st_reader *r, const char *key);
/* "F32", "BF16", ... and the element size in bytes. */
const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

typedef struct st_writer st_writer;

st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
/* Adds a float32 tensor, stored as dtype (ST_F32, ST_BF16 round-to-nearest-even, or ST_F16).
 * The data is referenced, not copied: keep it alive until st_writer_save returns. */
int st_writer_add(st_writer *w, const char *name, const float *data, const int64_t *shape,
                  int ndim, st_dtype dtype, chord_err *err);
/* Adds an __metadata__ string entry; "format" = "pt" is there from st_writer_new. */
int st_writer_metadata(st_writer *w, const char *key, const char *value, chord_err *err);
/* Writes one file atomically (temp file, fsync, rename, fsync of the directory). Tensors are
 * laid out in name order; the header is space-padded so the data starts 8-byte aligned. */
int st_writer_save(st_writer *w, const char *path, chord_err *err);
/* Writes DIR/model.safetensors, or, when the data exceeds max_shard_bytes (> 0),
 * DIR/model-0000k-of-0000n.safetensors + DIR/model.safetensors.index.json — transformers' layout
 * (shards filled in the order tensors were added). Weight files of an earlier save that the new
 * set does not use are removed. Each file is atomic, the directory as a whole is not: write into
 * a fresh directory and rename it when a checkpoint must appear all at once. */
int st_writer_save_dir(st_writer *w, const char *dir, size_t max_shard_bytes, chord_err *err);

/* bf16 / f16 <-> f32 conversions (round to nearest even). */
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);

#endif

/*
 * Table files for `dhps load`: the dhps binary table format and NumPy .npy arrays.
 * Private to src/tools (tests and fuzz targets include it from there).
 *
 * Both parsers are pure functions over a byte buffer (an mmap'd file, or fuzz input):
 * they validate every length against the buffer before use and return a view whose
 * pointers point into the buffer (no copy). The buffer need not be aligned: read keys
 * with tf_key()/tf_u64le(), rows with memcpy. A damaged file is rejected whole.
 *
 * dhps binary table format, version 1 (all integers little-endian):
 *
 *   offset size  field
 *   0      8     magic "DHPSTBL\0"
 *   8      4     version = 1
 *   12     4     dtype: 0 fp32, 1 fp16, 2 bytes (enum dhps_dtype, proto.h)
 *   16     8     count: number of keys/rows
 *   24     4     dim: elements per row (bytes per row for dtype bytes), 1..16383 bytes/row
 *   28     4     flags = 0 (reserved; a reader rejects unknown flags)
 *   32     32    reserved, zero
 *   64     8*count        keys (u64)
 *   ...    count*row_bytes rows, back to back (row_bytes = dim * elem size)
 *   end-8  8     checksum: XXH64 (seed 0) of every byte before it
 *
 * .npy: versions 1.0, 2.0 and 3.0 of the NumPy format (magic "\x93NUMPY", major,
 * minor, header length u16 (v1) or u32 (v2, v3), then a Python dict literal with
 * 'descr', 'fortran_order' and 'shape', padded with spaces and ended by '\n'). The
 * parser accepts any key order, either quote, trailing commas and extra spaces; it
 * needs little-endian or byte-order-free descrs ('<', '|'; '=' is taken as
 * little-endian), C order, and a data section exactly as long as the shape says.
 */
#ifndef DHPS_TOOLS_TABLEFILE_H
#define DHPS_TOOLS_TABLEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dhps/error.h"
#include "dhps/proto.h"

#define TF_BIN_MAGIC "DHPSTBL\0"
#define TF_BIN_VERSION 1u
#define TF_BIN_HDR 64u
#define TF_F64 100u /* tf_table.dtype of '<f8' .npy rows (cast to fp32 when sent) */
#define TF_MAX_ROW_BYTES 16383u /* the store's largest value (DHPS_STORE_MAX_VALUE) */

/* A parsed table: count keys and count rows of row_bytes each. */
typedef struct tf_table {
    uint32_t dtype;          /* enum dhps_dtype */
    uint32_t dim;            /* elements per row */
    uint32_t row_bytes;      /* dim * element size */
    uint64_t count;
    const uint8_t *keys;     /* count u64 little-endian keys (unaligned), NULL for npy */
    const uint8_t *rows;     /* count * row_bytes bytes */
} tf_table;

/* Element size of a dtype (4, 2, 1), 0 for an unknown dtype. */
static inline uint32_t tf_dtype_size(uint32_t dtype)
{
    return dtype == DHPS_FP32 ? 4 : dtype == DHPS_FP16 ? 2 : dtype == DHPS_BYTES ? 1
         : dtype == TF_F64 ? 8 : 0;
}

/* Read a little-endian u64 from unaligned memory. */
static inline uint64_t tf_u64le(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/*
 * Parse a dhps binary table file in buf[0..len). Returns 0 and fills *t (pointers into
 * buf, valid while buf is), or DHPS_E_CORRUPT (bad magic, short/long file, bad sizes,
 * checksum mismatch, nonzero reserved bytes), DHPS_E_VERSION (version != 1 or unknown
 * flags), -EINVAL (NULL arguments). verify_checksum false skips the XXH64 pass (the
 * sizes are still checked). Pure; thread-safe.
 */
int tf_bin_parse(const void *buf, size_t len, bool verify_checksum, tf_table *t);

/* Bytes of a binary table file with these sizes, or 0 on overflow / bad dtype. */
size_t tf_bin_size(uint32_t dtype, uint32_t dim, uint64_t count);

/*
 * Write a binary table file into out[0..cap): header, keys (count u64, host order
 * converted to little-endian), rows (count*row_bytes bytes), checksum. Returns the
 * bytes written (tf_bin_size) or -EINVAL (bad dtype/dim, cap too small). Pure.
 */
long tf_bin_write(void *out, size_t cap, uint32_t dtype, uint32_t dim, uint64_t count,
                  const uint64_t *keys, const void *rows);

/* A parsed .npy array. */
#define TF_NPY_MAX_DIMS 8
typedef struct tf_npy {
    int major, minor;                 /* format version */
    char kind;                        /* 'f' float, 'u' unsigned, 'i' signed, 'b' bool... */
    uint32_t itemsize;                /* bytes per element */
    char descr[16];                   /* the descr string, e.g. "<f4" */
    bool fortran_order;
    uint32_t ndim;
    uint64_t shape[TF_NPY_MAX_DIMS];
    uint64_t nelems;                  /* product of shape (1 for ndim 0) */
    const uint8_t *data;              /* nelems * itemsize bytes, in buf */
    size_t header_len;                /* offset of data from buf */
} tf_npy;

/*
 * Parse a .npy file in buf[0..len). Returns 0 and fills *a (data points into buf), or
 * DHPS_E_CORRUPT (bad magic, truncated, header syntax, missing keys, big-endian descr,
 * data length != shape), DHPS_E_VERSION (major not 1..3), -EINVAL (NULL arguments).
 * Pure; thread-safe.
 */
int tf_npy_parse(const void *buf, size_t len, tf_npy *a);

/*
 * View a parsed .npy array as a table of vectors: dtype '<f4' or '<f2', C order,
 * shape (N, D) with D * itemsize <= TF_MAX_ROW_BYTES (a 1-D array is N rows of dim 1).
 * Fills *t with keys NULL. Returns 0 or DHPS_E_CONFIG (wrong dtype, order or shape).
 */
int tf_npy_as_rows(const tf_npy *a, tf_table *t);

/*
 * View a parsed .npy array as keys: dtype '<u8' or '<i8' (i8 reinterpreted as u64),
 * shape (N,) or (N, 1). Sets *keys (unaligned little-endian u64s) and *n. Returns 0 or
 * DHPS_E_CONFIG.
 */
int tf_npy_as_keys(const tf_npy *a, const uint8_t **keys, uint64_t *n);

/*
 * Write a .npy header (version major 1, 2 or 3) for descr and a shape into out[0..cap),
 * padded so the data starts at a multiple of 64. Returns the header length or -EINVAL.
 * Used by tests and by `dhps load --example` style generators. Pure.
 */
long tf_npy_write_header(void *out, size_t cap, int major, const char *descr,
                         bool fortran_order, uint32_t ndim, const uint64_t *shape);

/* ---- batching ---------------------------------------------------------------------- */

/* One batch for the loader: n keys (host order) and n rows of row_bytes. */
typedef int (*tf_batch_fn)(void *arg, const uint64_t *keys, const void *rows, uint32_t n);

/*
 * Cut a table into batches of at most batch keys and call fn for each, in order. Keys
 * come from t->keys, or, when t->keys is NULL, from key_base + row index. keybuf must
 * hold batch u64s (keys are converted to host order there). progress(arg, done, total)
 * is called after each batch when non-NULL. Returns the number of rows passed to fn,
 * or the first negative value fn returned (later batches are not sent), or -EINVAL.
 */
long tf_batches(const tf_table *t, uint64_t key_base, uint32_t batch, uint64_t *keybuf,
                tf_batch_fn fn, void *arg,
                void (*progress)(void *parg, uint64_t done, uint64_t total), void *parg);

#endif

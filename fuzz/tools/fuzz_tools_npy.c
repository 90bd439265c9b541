/* Fuzz the .npy parser and its row/key views: every accepted file's data lies inside
 * the input and is exactly as long as the shape says; views stay inside it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tablefile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1); /* exact-size copy: ASan sees overreads */
    memcpy(buf, data, size);
    tf_npy a;
    if (tf_npy_parse(buf, size, &a) == 0) {
        if (a.data < buf || a.header_len > size ||
            (uint64_t)(size - a.header_len) != a.nelems * a.itemsize || a.ndim > TF_NPY_MAX_DIMS)
            abort();
        volatile uint8_t sink = 0;
        tf_table t;
        if (tf_npy_as_rows(&a, &t) == 0) {
            if (t.count * t.row_bytes != a.nelems * a.itemsize)
                abort();
            if (t.count)
                sink ^= t.rows[t.count * t.row_bytes - 1];
        }
        const uint8_t *keys;
        uint64_t n;
        if (tf_npy_as_keys(&a, &keys, &n) == 0 && n)
            sink ^= (uint8_t)tf_u64le(keys + 8 * (n - 1));
        (void)sink;
        /* re-writing the header for the parsed description parses back the same */
        uint8_t h[1024];
        long hl = tf_npy_write_header(h, sizeof h, a.major, a.descr, a.fortran_order, a.ndim,
                                      a.shape);
        if (hl > 0) {
            tf_npy b;
            if (tf_npy_parse(h, (size_t)hl, &b) == 0 &&
                (b.ndim != a.ndim || memcmp(b.shape, a.shape, sizeof a.shape) ||
                 b.itemsize != a.itemsize))
                abort();
        }
    }
    free(buf);
    return 0;
}

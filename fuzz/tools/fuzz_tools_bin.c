/* Fuzz the dhps binary table parser: an accepted file has exactly the size its header
 * says, keys and rows lie inside it, and re-writing it reproduces it byte for byte. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tablefile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    tf_table t;
    /* the last byte's low bit picks whether the checksum is verified, so the fuzzer also gets
     * past it and exercises the size checks on their own */
    bool verify = size && (buf[size - 1] & 1);
    if (tf_bin_parse(buf, size, verify, &t) == 0) {
        if (size != tf_bin_size(t.dtype, t.dim, t.count) || t.keys != buf + TF_BIN_HDR ||
            t.rows + t.count * t.row_bytes != buf + size - 8)
            abort();
        if (verify) {
            uint64_t *keys = malloc(t.count * 8 + 8);
            for (uint64_t i = 0; i < t.count; i++)
                keys[i] = tf_u64le(t.keys + 8 * i);
            uint8_t *out = malloc(size);
            if (tf_bin_write(out, size, t.dtype, t.dim, t.count, keys, t.rows) != (long)size ||
                memcmp(out, buf, size) != 0)
                abort();
            free(out);
            free(keys);
        }
    }
    free(buf);
    return 0;
}

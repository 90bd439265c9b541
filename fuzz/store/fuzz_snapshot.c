/* libFuzzer target: the snapshot loader. Any input must either load (and leave a
 * consistent store that answers lookups) or be rejected whole with the store empty. */
#include <stdint.h>
#include <stdlib.h>

#include "dhps/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = 64;
    p.segment_bytes = 64u << 10;
    p.huge_pages = false;
    p.mem_limit = 8u << 20; /* small reservation: faster iterations */
    dhps_store *s;
    if (dhps_store_create(&p, &s) != 0)
        abort();
    long rc = dhps_store_load_buffer(s, data, size);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    if (rc < 0 && st.keys != 0)
        abort(); /* a rejected snapshot must load nothing */
    if (rc >= 0) {
        dhps_store_reader *r;
        if (dhps_store_reader_open(s, &r) != 0)
            abort();
        uint64_t keys[4] = {0, 1, 2, UINT64_MAX}, found[1];
        uint8_t out[4][64];
        dhps_store_get(r, keys, 4, out, 64, NULL, found);
        dhps_store_reader_close(r);
    }
    dhps_store_destroy(s);
    return 0;
}

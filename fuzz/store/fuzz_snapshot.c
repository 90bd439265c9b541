/* libFuzzer target: the snapshot loader and the image merge (replica catch-up). Any
 * input must either load (and leave a consistent store that answers lookups) or be
 * rejected whole with the store empty; merged into a store that already holds keys,
 * it must either apply (stats adding up) or be rejected with the store unchanged
 * (same per-range digests). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/store.h"

static dhps_store *mk(void)
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
    return s;
}

static void probe(dhps_store *s)
{
    dhps_store_reader *r;
    if (dhps_store_reader_open(s, &r) != 0)
        abort();
    uint64_t keys[4] = {0, 1, 2, UINT64_MAX}, found[1];
    uint8_t out[4][64];
    dhps_store_get(r, keys, 4, out, 64, NULL, found);
    dhps_store_reader_close(r);
}

static bool skip_odd_versions(void *arg, uint64_t key, uint64_t version)
{
    (void)arg, (void)key;
    return version & 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dhps_store *s = mk();
    long rc = dhps_store_load_buffer(s, data, size);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    if (rc < 0 && st.keys != 0)
        abort(); /* a rejected snapshot must load nothing */
    if (rc >= 0)
        probe(s);
    dhps_store_destroy(s);

    /* merge into a store holding keys 0..15 at version 4 */
    s = mk();
    uint64_t keys[16];
    uint8_t vals[16][8] = {{0}};
    for (uint64_t i = 0; i < 16; i++)
        keys[i] = i;
    dhps_store_batch b = {.keys = keys, .n = 16, .values = vals, .value_stride = 8, .version = 4};
    if (dhps_store_put(s, &b, NULL) != 16)
        abort();
    enum { NR = 8 };
    uint64_t h0[NR], c0[NR], h1[NR], c1[NR];
    if (dhps_store_digest(s, NR, h0, c0) != 0)
        abort();
    dhps_store_merge_stats ms;
    long mrc = dhps_store_merge_buffer(s, data, size, skip_odd_versions, NULL, &ms);
    if (dhps_store_digest(s, NR, h1, c1) != 0)
        abort();
    if ((mrc == DHPS_E_CORRUPT || mrc == DHPS_E_VERSION) &&
        (memcmp(h0, h1, sizeof h0) || memcmp(c0, c1, sizeof c0) || ms.applied))
        abort(); /* a rejected image must change nothing */
    if (mrc >= 0 && (uint64_t)mrc != ms.applied)
        abort();
    bool load_ok = rc >= 0 || rc == DHPS_E_FULL, merge_ok = mrc >= 0 || mrc == DHPS_E_FULL;
    if (load_ok != merge_ok)
        abort(); /* load and merge verify alike */
    probe(s);
    dhps_store_destroy(s);
    return 0;
}

/* The batched lookup fast path, included once per tag-match implementation by
 * lookup.c with:
 *   LOOKUP_FN        the function's name
 *   LOOKUP_TARGET    a target attribute (or nothing)
 *   MATCH2(b1, b2, tag, m1, m2)  sets 12-bit hit masks for both candidate buckets
 *
 * Group prefetching: for a group of G keys, (1) hash and prefetch both buckets,
 * (2) match tags, note bucket versions and prefetch the first candidate record,
 * (3) verify keys, check expiry, copy values and validate versions. With G lines in
 * flight per stage, cache misses overlap instead of queueing.
 * When vals is non-NULL the call is the zero-copy variant: pointers instead of copies. */

LOOKUP_TARGET static size_t LOOKUP_FN(dhps_store *s, const index_table *t, const uint64_t *keys,
                                      size_t n, uint8_t *out, size_t stride, uint32_t *lens,
                                      uint64_t *found, const void **vals, uint32_t now_s,
                                      uint64_t *retries)
{
    enum { G = 16 };
    hkey hk[G];
    uint32_t v1[G], v2[G], m1[G], m2[G];
    size_t hits = 0;
    const unsigned lines = (unsigned)((REC_BASE_HDR + 8 + stride + 63) / 64);

    for (size_t base = 0; base < n; base += G) {
        size_t g = n - base < G ? n - base : G;
        for (size_t j = 0; j < g; j++) {
            uint64_t key = keys[base + j];
            hkey_make(&hk[j], key, store_hash(s, key), t->nb);
            __builtin_prefetch(&t->b[hk[j].b1]);
            __builtin_prefetch(&t->b[hk[j].b2]);
        }
        for (size_t j = 0; j < g; j++) {
            const bucket *b1 = &t->b[hk[j].b1], *b2 = &t->b[hk[j].b2];
            v1[j] = __atomic_load_n(&b1->version, __ATOMIC_ACQUIRE);
            v2[j] = __atomic_load_n(&b2->version, __ATOMIC_ACQUIRE);
            MATCH2(b1, b2, hk[j].tag, m1[j], m2[j]);
            uint32_t ref;
            if (m1[j])
                ref = __atomic_load_n(&b1->refs[__builtin_ctz(m1[j])], __ATOMIC_ACQUIRE);
            else if (m2[j])
                ref = __atomic_load_n(&b2->refs[__builtin_ctz(m2[j])], __ATOMIC_ACQUIRE);
            else
                continue;
            const uint8_t *rec = rec_ptr(s, ref);
            for (unsigned l = 0; l < lines && l < 4; l++)
                __builtin_prefetch(rec + 64 * l);
        }
        for (size_t j = 0; j < g; j++) {
            size_t i = base + j;
            uint8_t *row = out ? out + i * stride : NULL;
            int r = -2; /* -2: no key match yet; -3: must retry; 0 miss; 1 hit */
            if (!((v1[j] | v2[j]) & 1)) {
                const bucket *bs[2] = {&t->b[hk[j].b1], &t->b[hk[j].b2]};
                uint32_t ms[2] = {m1[j], m2[j]};
                for (int w = 0; w < 2 && r == -2; w++) {
                    while (ms[w]) {
                        int slot = __builtin_ctz(ms[w]);
                        ms[w] &= ms[w] - 1;
                        uint32_t ref = __atomic_load_n(&bs[w]->refs[slot], __ATOMIC_ACQUIRE);
                        const uint8_t *rec = rec_ptr(s, ref);
                        if (rd64(rec) != hk[j].key)
                            continue;
                        uint16_t lf = rd16(rec + 8);
                        uint32_t len = lf & REC_LEN_MASK;
                        if ((lf & REC_EXP) && rd32_sync(rec + rec_exp_off(lf)) <= now_s) {
                            r = 0;
                        } else {
                            const uint8_t *val = rec + rec_hdr_size(lf);
                            if (vals) {
                                vals[i] = val;
                            } else if (row) {
                                size_t c = len < stride ? len : stride;
                                copy_sync(row, val, c);
                                if (c < stride)
                                    memset(row + c, 0, stride - c);
                            }
                            if (lens)
                                lens[i] = len;
                            r = 1;
                        }
                        /* an in-place rewrite of this record bumps this bucket */
                        FENCE_ACQ();
                        if (__atomic_load_n(&bs[w]->version, __ATOMIC_RELAXED) != (w ? v2[j] : v1[j]))
                            r = -3;
                        break;
                    }
                }
                if (r == -2) {
                    /* a miss is only a miss if no entry moved between the buckets */
                    FENCE_ACQ();
                    if (__atomic_load_n(&bs[0]->version, __ATOMIC_RELAXED) == v1[j] &&
                        __atomic_load_n(&bs[1]->version, __ATOMIC_RELAXED) == v2[j])
                        r = 0;
                }
            }
            if (r < 0) {
                (*retries)++;
                r = lookup_one_slow(s, t, &hk[j], row, stride, lens ? &lens[i] : NULL,
                                    vals ? &vals[i] : NULL, now_s, retries);
            }
            if (r == 1) {
                found[i >> 6] |= 1ull << (i & 63);
                hits++;
            } else {
                if (row && stride)
                    memset(row, 0, stride);
                if (lens)
                    lens[i] = 0;
                if (vals)
                    vals[i] = NULL;
            }
        }
    }
    return hits;
}

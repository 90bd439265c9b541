/* The batched lookup fast path, included once per tag-match implementation by
 * store.c with:
 *   LOOKUP_FN          the function's name
 *   LOOKUP_TARGET      a target attribute (or nothing)
 *   MATCH1(b, tag, m)  sets m to the 12-bit mask of bucket b's slots holding tag
 *   PREFETCH_RECORD(rec, span)  prefetches the lines of a record
 * When vals is non-NULL the call is the zero-copy variant: pointers instead of copies.
 *
 * Each key goes through four stages:
 *   0. hash; prefetch its first bucket;
 *   1. match the first bucket's tags; on a hit prefetch the candidate record's lines,
 *      otherwise prefetch the second bucket (most keys live in their first bucket, so
 *      the second line is usually never read);
 *   2. if the first bucket had no hit, match the second and prefetch that record;
 *   3. resolve: verify the key (it sits in the record's first line), check expiry,
 *      copy the value, validate the bucket versions.
 * Schedule: keys move in groups of G = 4 and in one turn group g runs stage 0, group
 * g-1 stage 1, group g-2 stage 2 and group g-3 stage 3, so 12 keys' misses are in
 * flight ahead of the one being resolved. Measured on the dev machine (PERFORMANCE.md)
 * against a per-key pipeline (fine interleave: fast while the index fits in L3, 40 %
 * slower beyond it) and plain group prefetching (G = 16..64: flat, but 30 % slower
 * than this on small tables); this pipelined-groups schedule was best at both sizes. */

LOOKUP_TARGET static size_t LOOKUP_FN(dhps_store *s, const index_table *t, const uint64_t *keys,
                                      size_t n, uint8_t *out, size_t stride, uint32_t *lens,
                                      uint64_t *found, const void **vals, uint32_t now_s,
                                      uint64_t *retries)
{
    enum { G = LOOKUP_GROUP, R = 4 * LOOKUP_GROUP };
    static_assert((R & (R - 1)) == 0, "the ring holds four groups");
    hkey hk[R];
    uint32_t v1[R], v2[R], m1[R], m2[R];
    size_t hits = 0;
    const uintptr_t span = REC_BASE_HDR + 8 + stride; /* header (up to 22 B) and value */
    const size_t ngroups = (n + G - 1) / G;

    for (size_t turn = 0; turn < ngroups + 3; turn++) {
        if (turn < ngroups) { /* stage 0 */
            size_t e = (turn + 1) * G < n ? (turn + 1) * G : n;
            for (size_t k = turn * G; k < e; k++) {
                size_t q = k & (R - 1);
                hkey_make(&hk[q], keys[k], store_hash(s, keys[k]), t->nb);
                __builtin_prefetch(&t->b[hk[q].b1]);
            }
        }
        if (turn >= 1 && turn - 1 < ngroups) { /* stage 1 */
            size_t g = turn - 1, e = (g + 1) * G < n ? (g + 1) * G : n;
            for (size_t k = g * G; k < e; k++) {
                size_t q = k & (R - 1);
                const bucket *b1 = &t->b[hk[q].b1];
                v1[q] = __atomic_load_n(&b1->version, __ATOMIC_ACQUIRE);
                MATCH1(b1, hk[q].tag, m1[q]);
                m2[q] = UINT32_MAX; /* second bucket not read */
                if (m1[q]) {
                    uint32_t ref = __atomic_load_n(&b1->refs[__builtin_ctz(m1[q])], __ATOMIC_ACQUIRE);
                    PREFETCH_RECORD(rec_ptr(s, ref), span);
                } else {
                    __builtin_prefetch(&t->b[hk[q].b2]);
                }
            }
        }
        if (turn >= 2 && turn - 2 < ngroups) { /* stage 2 */
            size_t g = turn - 2, e = (g + 1) * G < n ? (g + 1) * G : n;
            for (size_t k = g * G; k < e; k++) {
                size_t q = k & (R - 1);
                if (m1[q])
                    continue;
                const bucket *b2 = &t->b[hk[q].b2];
                v2[q] = __atomic_load_n(&b2->version, __ATOMIC_ACQUIRE);
                MATCH1(b2, hk[q].tag, m2[q]);
                if (m2[q]) {
                    uint32_t ref = __atomic_load_n(&b2->refs[__builtin_ctz(m2[q])], __ATOMIC_ACQUIRE);
                    PREFETCH_RECORD(rec_ptr(s, ref), span);
                }
            }
        }
        if (turn < 3)
            continue;
        size_t g = turn - 3, e = (g + 1) * G < n ? (g + 1) * G : n;
        for (size_t i = g * G; i < e; i++) { /* stage 3 */
            size_t j = i & (R - 1);
            /* two: the second bucket was read (no tag hit in the first). With a tag hit in
             * the first bucket that is not the key, the full search below decides. */
            bool two = m2[j] != UINT32_MAX;
            if (!two) {
                m2[j] = 0;
                v2[j] = 0;
            }
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
                if (r == -2 && two) {
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

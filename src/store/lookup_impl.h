/* The batched lookup fast path, included once per tag-match implementation by
 * store.c with:
 *   LOOKUP_FN          the function's name
 *   LOOKUP_TARGET      a target attribute (or nothing)
 *   MATCH1(b, tag, m)  sets m to the 12-bit mask of bucket b's slots holding tag
 *   COPY_FIXED(d, s, n)  copies n bytes, n a constant (64, 128 or 256)
 * When vals is non-NULL the call is the zero-copy variant: pointers instead of copies.
 *
 * Each key goes through four stages, its state kept per chunk (lk_state):
 *   0. hash; prefetch its first bucket;
 *   1. match the first bucket's tags; on a hit prefetch the candidate record's lines,
 *      otherwise prefetch the second bucket (most keys live in their first bucket, so
 *      the second line is usually never read);
 *   2. if the first bucket had no hit, match the second and prefetch that record;
 *   3. resolve: verify the key (it sits in the record's first line), check expiry,
 *      copy the value, validate the version of the bucket that held the reference.
 * Anything unusual at stage 3 (an odd version, no tag hit that is the key, a version
 * that moved) goes to lookup_one_slow, which searches both buckets until it reads them
 * stable.
 *
 * Schedule: batch-wide stage passes over chunks of LOOKUP_CHUNK (64) keys: stage 0 for
 * the whole chunk (64 first-bucket prefetches in flight), then stage 1 for the chunk
 * (its record prefetches), stage 2, stage 3: the most misses in flight once the data
 * is beyond the caches. dhps-store-probe's lookups per reference line read for this and
 * the earlier schedules are in docs/PERFORMANCE.md.
 *
 * Per-key instructions matter as much as the schedule once the data is in cache, so
 * the body is compiled once per copy mode (values of exactly 64, 128 or 256 bytes
 * copied with constant-size moves; any other stride; zero-copy pointers): the mode's
 * branches disappear from the loop. */

#define LK_CAT2(a, b) a##b
#define LK_CAT(a, b) LK_CAT2(a, b)
#define LK(name) LK_CAT(LOOKUP_FN, name)

/* copy modes (the body's constant parameter) */
#define LK_COPY_ANY 0
#define LK_COPY_64 1
#define LK_COPY_128 2
#define LK_COPY_256 3
#define LK_PINNED 4

typedef struct LK(_ctx) {
    dhps_store *s;
    const index_table *t;
    const bucket *tb;
    uint64_t nb;
    const uint8_t *base;
    unsigned al;
    unsigned pf_mid;    /* whole lines of a record to prefetch between its first and last */
    uintptr_t pf_last;  /* offset of the last record byte a lookup reads */
    const uint64_t *keys;
    uint8_t *out;
    size_t stride;
    uint32_t *lens;
    uint64_t *found;
    const void **vals;
    uint32_t now_s;
    uint64_t *retries;
    lk_state st[LOOKUP_CHUNK];
} LK(_ctx);

/* Prefetch a record's lines: its header and value up to stride bytes (a record
 * without TTL: REC_BASE_HDR + stride bytes from rec). Prefetched addresses are at
 * most 64 bytes apart, so every line of the range is covered. */
#define LK_SPAN(stride) (REC_BASE_HDR + (stride))
#define LK_PF_MID(span) (((span) - 2) / 64)
LOOKUP_TARGET static inline __attribute__((always_inline)) void LK(_pf)(const LK(_ctx) *c,
                                                                         const uint8_t *rec,
                                                                         const int mode)
{
    const unsigned mid = mode == LK_COPY_64    ? LK_PF_MID(LK_SPAN(64))
                         : mode == LK_COPY_128 ? LK_PF_MID(LK_SPAN(128))
                         : mode == LK_COPY_256 ? LK_PF_MID(LK_SPAN(256))
                                               : c->pf_mid;
    const uintptr_t last = mode == LK_COPY_64    ? LK_SPAN(64) - 1
                           : mode == LK_COPY_128 ? LK_SPAN(128) - 1
                           : mode == LK_COPY_256 ? LK_SPAN(256) - 1
                                                 : c->pf_last;
    __builtin_prefetch(rec);
    for (unsigned l = 1; l <= mid; l++)
        __builtin_prefetch(rec + 64 * l);
    __builtin_prefetch(rec + last);
}

LOOKUP_TARGET static inline __attribute__((always_inline)) void LK(_s0)(LK(_ctx) *c, size_t k)
{
    lk_state *q = &c->st[k & (LOOKUP_CHUNK - 1)];
    uint64_t key = c->keys[k];
    uint64_t h = store_hash(c->s, key);
    const bucket *b1 = &c->tb[fastrange32((uint32_t)h, c->nb)];
    q->key = key;
    q->tag = hash_tag(h);
    q->b1 = b1;
    __builtin_prefetch(b1);
}

LOOKUP_TARGET static inline __attribute__((always_inline)) void LK(_s1)(LK(_ctx) *c, size_t k,
                                                                        const int mode)
{
    lk_state *q = &c->st[k & (LOOKUP_CHUNK - 1)];
    const bucket *b1 = q->b1;
    uint32_t m;
    uint32_t v = __atomic_load_n(&b1->version, __ATOMIC_ACQUIRE);
    MATCH1(b1, q->tag, m);
    q->m = m;
    if (__builtin_expect(m != 0, 1)) {
        uint32_t ref = __atomic_load_n(&b1->refs[__builtin_ctz(m)], __ATOMIC_ACQUIRE);
        const uint8_t *rec = c->base + ((uint64_t)ref << c->al);
        q->hb = b1;
        q->hv = v;
        q->rec = rec;
        LK(_pf)(c, rec, mode);
    } else {
        const bucket *b2 = &c->tb[alt_bucket((uint32_t)(b1 - c->tb), q->tag, c->nb)];
        q->v1 = v;
        q->hb = b2; /* to read at stage 2 */
        __builtin_prefetch(b2);
    }
}

LOOKUP_TARGET static inline __attribute__((always_inline)) void LK(_s2)(LK(_ctx) *c, size_t k,
                                                                        const int mode)
{
    lk_state *q = &c->st[k & (LOOKUP_CHUNK - 1)];
    if (__builtin_expect(q->m != 0, 1))
        return;
    const bucket *b2 = q->hb;
    uint32_t m;
    uint32_t v = __atomic_load_n(&b2->version, __ATOMIC_ACQUIRE);
    MATCH1(b2, q->tag, m);
    q->hv = v;
    if (m) {
        uint32_t ref = __atomic_load_n(&b2->refs[__builtin_ctz(m)], __ATOMIC_ACQUIRE);
        const uint8_t *rec = c->base + ((uint64_t)ref << c->al);
        q->m = m;
        q->rec = rec;
        LK(_pf)(c, rec, mode);
    } else {
        q->rec = NULL; /* no tag hit in either bucket */
    }
}

/* Stage 3 for key i. Returns 1 (hit) or 0 (miss) and fills the key's row. */
LOOKUP_TARGET static inline __attribute__((always_inline)) int LK(_s3)(LK(_ctx) *c, size_t i,
                                                                        const int mode)
{
    lk_state *q = &c->st[i & (LOOKUP_CHUNK - 1)];
    const size_t stride = mode == LK_COPY_64    ? 64
                          : mode == LK_COPY_128 ? 128
                          : mode == LK_COPY_256 ? 256
                          : mode == LK_PINNED   ? 0
                                                : c->stride;
    uint8_t *row = mode == LK_PINNED ? NULL
                   : mode == LK_COPY_ANY ? (c->out ? c->out + i * stride : NULL)
                                         : c->out + i * stride;
    const bucket *hb = q->hb;
    const uint8_t *rec = q->rec;
    uint32_t hv = q->hv;
    int r;
    bool retry = true; /* the slow path after a concurrent change counts a retry */
    if (__builtin_expect(rec != NULL && !(hv & 1), 1)) {
        if (__builtin_expect(rd64(rec) != q->key, 0)) {
            /* the first tag hit's record was prefetched; further hits (a tag shared by
             * another key of the bucket) are read here */
            uint32_t m = q->m;
            do {
                m &= m - 1;
                if (!m) {
                    retry = false; /* not in this bucket: the slow path searches both */
                    goto slow;
                }
                uint32_t ref = __atomic_load_n(&hb->refs[__builtin_ctz(m)], __ATOMIC_ACQUIRE);
                rec = c->base + ((uint64_t)ref << c->al);
            } while (rd64(rec) != q->key);
        }
        uint16_t lf = rd16_sync(rec + 8);
        uint32_t len = lf;
        const uint8_t *val = rec + REC_BASE_HDR;
        r = 1;
        if (__builtin_expect(lf & (REC_WIDE | REC_EXP), 0)) {
            len = lf & REC_LEN_MASK;
            val = rec + rec_hdr_size(lf);
            if ((lf & REC_EXP) && rd32_sync(rec + rec_exp_off(lf)) <= c->now_s)
                r = 0;
        }
        if (r) {
            if (mode == LK_PINNED) {
                c->vals[i] = val;
            } else if (mode != LK_COPY_ANY && __builtin_expect(len == stride, 1)) {
                COPY_FIXED(row, val, stride);
            } else if (row) {
                size_t n = len < stride ? len : stride;
                copy_sync(row, val, n);
                if (n < stride)
                    memset(row + n, 0, stride - n);
            }
            if (c->lens)
                c->lens[i] = len;
        }
        /* an in-place rewrite of this record bumps this bucket */
        FENCE_ACQ();
        if (__builtin_expect(__atomic_load_n(&hb->version, __ATOMIC_RELAXED) == hv, 1))
            goto done;
    } else if (rec == NULL && !((q->v1 | hv) & 1)) {
        /* a miss is only a miss if no entry moved between the buckets */
        FENCE_ACQ();
        if (__atomic_load_n(&q->b1->version, __ATOMIC_RELAXED) == q->v1 &&
            __atomic_load_n(&hb->version, __ATOMIC_RELAXED) == hv) {
            r = 0;
            goto done;
        }
    }
slow:
    *c->retries += retry;
    {
        hkey hk;
        hkey_make(&hk, q->key, store_hash(c->s, q->key), c->nb);
        r = lookup_one_slow(c->s, c->t, &hk, row, stride, c->lens ? &c->lens[i] : NULL,
                            mode == LK_PINNED ? &c->vals[i] : NULL, c->now_s, c->retries);
    }
done:
    if (__builtin_expect(!r, 0)) {
        if (stride)
            memset(row, 0, stride);
        if (c->lens)
            c->lens[i] = 0;
        if (mode == LK_PINNED)
            c->vals[i] = NULL;
    }
    return r;
}

/* The whole batch for one copy mode, in chunks of LOOKUP_CHUNK keys, each stage a pass
 * over the chunk. Returns the hits. */
LOOKUP_TARGET static inline __attribute__((always_inline)) size_t LK(_run)(LK(_ctx) *c, size_t n,
                                                                            const int mode)
{
    static_assert(LOOKUP_CHUNK <= 64 && (LOOKUP_CHUNK & (LOOKUP_CHUNK - 1)) == 0,
                  "a chunk is a power of two, at most one found word");
    for (size_t base = 0; base < n; base += LOOKUP_CHUNK) {
        size_t e = base + LOOKUP_CHUNK < n ? base + LOOKUP_CHUNK : n;
        for (size_t k = base; k < e; k++)
            LK(_s0)(c, k);
        for (size_t k = base; k < e; k++)
            LK(_s1)(c, k, mode);
        for (size_t k = base; k < e; k++)
            LK(_s2)(c, k, mode);
        uint64_t fw = c->found[base >> 6] & ((1ull << (base & 63)) - 1); /* earlier chunks' bits */
        for (size_t k = base; k < e; k++)
            fw |= (uint64_t)LK(_s3)(c, k, mode) << (k & 63);
        c->found[base >> 6] = fw;
    }
    size_t hits = 0;
    for (size_t w = 0; w < (n + 63) / 64; w++)
        hits += (size_t)__builtin_popcountll(c->found[w]);
    return hits;
}

LOOKUP_TARGET static size_t LOOKUP_FN(dhps_store *s, const index_table *t, const uint64_t *keys,
                                      size_t n, uint8_t *out, size_t stride, uint32_t *lens,
                                      uint64_t *found, const void **vals, uint32_t now_s,
                                      uint64_t *retries)
{
    if (n == 0)
        return 0;
    LK(_ctx) c;
    c.s = s;
    c.t = t;
    c.tb = t->b;
    c.nb = t->nb;
    c.base = s->base;
    c.al = s->align_log2;
    size_t span = REC_BASE_HDR + stride;
    if (span > 16 * 64) /* at most 16 lines ahead */
        span = 16 * 64;
    c.pf_last = span - 1;
    c.pf_mid = (unsigned)LK_PF_MID(span);
    c.keys = keys;
    c.out = out;
    c.stride = out ? stride : 0;
    c.lens = lens;
    c.found = found;
    c.vals = vals;
    c.now_s = now_s;
    c.retries = retries;
    if (vals)
        return LK(_run)(&c, n, LK_PINNED);
    if (out && stride == 128)
        return LK(_run)(&c, n, LK_COPY_128);
    if (out && stride == 64)
        return LK(_run)(&c, n, LK_COPY_64);
    if (out && stride == 256)
        return LK(_run)(&c, n, LK_COPY_256);
    return LK(_run)(&c, n, LK_COPY_ANY);
}

#undef LK
#undef LK_SPAN
#undef LK_PF_MID
#undef LK_CAT
#undef LK_CAT2
#undef LK_COPY_ANY
#undef LK_COPY_64
#undef LK_COPY_128
#undef LK_COPY_256
#undef LK_PINNED

/* Writer: batched upserts (in place when a value keeps its length, else appended),
 * deletes and maintenance. Writer only. */
#include <errno.h>
#include <stdlib.h>

#include "dhps/log.h"
#include "store_int.h"

/* Write barrier between marking a bucket odd and reading zc_pins (the writer's half of
 * the Dekker handshake with pinning readers; see store_membarrier in store.c). */
static inline void writer_pin_check_barrier(dhps_store *s)
{
    if (store_membarrier)
        __asm__ __volatile__("" ::: "memory"); /* the pinning reader's membarrier fences us */
    else
        FENCE_SC(s);
}

/* Copy a value of len bytes into a record (in place, readers may be copying it: the
 * bucket's seqlock tells them). Common row sizes are constant-size moves. */
static inline void copy_value(uint8_t *dst, const void *src, uint32_t len)
{
    switch (len) {
    case 64:
        copy_sync(dst, src, 64);
        break;
    case 128:
        copy_sync(dst, src, 128);
        break;
    case 256:
        copy_sync(dst, src, 256);
        break;
    default:
        copy_sync(dst, src, len);
    }
}

/* Rewrite a record in place under its bucket's seqlock: version (as a delta d from its
 * segment's base, or whole when WIDE), expiry, value. A value shorter than the old one
 * (nlf's length below olf's) takes the front of the record: its length is rewritten and
 * the bytes it frees, tail of them, become a dead filler record (a header whose key is
 * the record's own, which the index never points at), so walks over the segment step
 * over them and compaction drops them; tail is 0 or at least REC_BASE_HDR. Fails
 * (returns false) while a zero-copy pin is outstanding: pinned bytes must not change. */
static inline bool try_inplace(dhps_store *s, bucket *b, uint8_t *rec, uint16_t olf, uint16_t nlf,
                               uint64_t ver, uint32_t d, uint32_t exp, const void *val,
                               uint32_t len, uint32_t tail)
{
    uint32_t v = __atomic_load_n(&b->version, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, v + 1, __ATOMIC_RELAXED);
    writer_pin_check_barrier(s);
    if (atomic_load_explicit(&s->zc_pins, store_membarrier ? memory_order_relaxed : memory_order_seq_cst) != 0) {
        __atomic_store_n(&b->version, v + 2, __ATOMIC_RELEASE);
        return false;
    }
    if (nlf != olf)
        copy_sync(rec + 8, &nlf, 2);
    if (nlf & REC_WIDE)
        copy_sync(rec + 10, &ver, 8);
    else
        copy_sync(rec + 10, &d, 4);
    if (nlf & REC_EXP)
        copy_sync(rec + rec_exp_off(nlf), &exp, 4);
    copy_value(rec + rec_hdr_size(nlf), val, len);
    if (tail) {
        uint8_t *f = rec + rec_size_lf(s, nlf);
        uint8_t hdr[REC_BASE_HDR] = {0};
        uint16_t flf = (uint16_t)(tail - REC_BASE_HDR);
        memcpy(hdr, rec, 8); /* the key: its index entry points at rec, never at f */
        memcpy(hdr + 8, &flf, 2);
        copy_sync(f, hdr, REC_BASE_HDR);
    }
    __atomic_store_n(&b->version, v + 2, __ATOMIC_RELEASE);
    return true;
}

static void maintain_after_put(dhps_store *s, size_t appended)
{
    uint32_t now = store_now_s(s);
    if (now != s->last_sweep_s)
        store_expire(s, now);
    store_reclaim(s);
    if (appended)
        store_compact(s, 32 * appended + (s->seg_bytes >> 3));
}

/* What put_append needs of its batch; appended grows by the bytes it appends. */
typedef struct put_batch {
    uint32_t ttl, exp;
    unsigned cls;
    size_t appended;
} put_batch;

/* The key is absent, or present but not rewritable in place: append a record and
 * point the index at it (inserting, and growing the index, for a new key). exists,
 * bkt and slot describe the key's entry when present. Returns 0 or a negative error. */
static int put_append(dhps_store *s, put_batch *pb, uint64_t key, uint64_t h, uint64_t ver,
                      const uint8_t *val, uint32_t len, bool exists, uint32_t bkt, int slot)
{
    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    hkey k;
    hkey_make(&k, key, h, t->nb);
    uint16_t lf;
    uint32_t size;
    uint64_t gen = s->index_gen;
    int64_t ref = seg_append(s, pb->cls, false, len, pb->ttl != 0, ver, &lf, &size);
    if (ref < 0)
        return (int)ref;
    uint8_t *rec = rec_ptr(s, (uint32_t)ref);
    rec_write_header(s, rec, (uint32_t)ref, key, lf, ver, pb->exp);
    memcpy(rec + rec_hdr_size(lf), val, len);
    pb->appended += size;
    if (s->index_gen != gen) { /* reclamation may have dropped or moved the key */
        t = atomic_load_explicit(&s->table, memory_order_relaxed);
        hkey_make(&k, key, h, t->nb);
        exists = index_find(s, t, &k, &bkt, &slot) == 0;
    }
    if (exists) {
        uint32_t oref = t->b[bkt].refs[slot];
        __atomic_store_n(&t->b[bkt].refs[slot], (uint32_t)ref, __ATOMIC_RELEASE);
        store_unlive(s, oref, rec_ptr(s, oref));
    } else {
        if (t->used + 1 > (uint64_t)(s->p.max_fill * (double)(t->nb * SLOTS))) {
            int grc = index_grow(s, t->used + t->used / 2 + 1);
            if (grc == -ENOMEM || (grc && t->used + 1 > t->nb * SLOTS))
                return grc;
            t = atomic_load_explicit(&s->table, memory_order_relaxed);
            hkey_make(&k, key, h, t->nb);
        }
        int rc = index_insert(s, t, &k, (uint32_t)ref);
        if (rc == DHPS_E_FULL) {
            rc = index_grow(s, t->used + t->used / 2 + 1);
            if (rc == 0) {
                t = atomic_load_explicit(&s->table, memory_order_relaxed);
                hkey_make(&k, key, h, t->nb);
                rc = index_insert(s, t, &k, (uint32_t)ref);
            }
        }
        if (rc)
            return rc; /* the appended record stays as garbage */
    }
    store_live(s, (uint32_t)ref, rec);
    return 0;
}

/* One key's state in the writer's pipeline: a hint of where the key is, checked again
 * when the key is applied (earlier keys of the batch may have moved entries, grown the
 * index or written the same key). */
typedef struct put_state {
    uint64_t h;
    const index_table *t; /* the table hb belongs to */
    bucket *hb;           /* bucket holding the tag hits m; the second bucket while
                             it is still to be read (need2) */
    uint32_t m;
    bool need2;
} put_state;

#define PUT_CHUNK 64 /* keys per stage pass (a power of two) */

/* What one upsert call shares. */
typedef struct put_ctx {
    dhps_store *s;
    const dhps_store_batch *b;
    uint64_t *stale;
    uint32_t ttl, now, exp;
    unsigned cls;
    uintptr_t span; /* bytes of a record an in-place rewrite touches */
    size_t appended;
    long applied;
    bool fast; /* the fast in-place path applies: no TTL, in-place writes allowed and no
                  retired index table waiting */
    put_state st[PUT_CHUNK];
} put_ctx;

/* always_inline: gcc 12 finds a function that only loads and prefetches "const" and
 * drops calls to it (no record prefetch was left in dhps_store_put). */
static inline __attribute__((always_inline)) void put_prefetch_record(const dhps_store *s,
                                                                      const bucket *b,
                                                                      uint32_t m, uintptr_t span)
{
    const uint8_t *rec = rec_ptr(s, b->refs[__builtin_ctz(m)]);
    __builtin_prefetch(rec, 1);
    for (uintptr_t o = 64; o < span; o += 64)
        __builtin_prefetch(rec + o, 1);
    __builtin_prefetch(rec + span - 1, 1);
}

/* stage 0: hash key i, prefetch its first bucket */
static inline __attribute__((always_inline)) void put_s0(put_ctx *c, size_t i, index_table *pt)
{
    put_state *q = &c->st[i & (PUT_CHUNK - 1)];
    q->h = store_hash(c->s, c->b->keys[i]);
    q->t = pt;
    q->hb = &pt->b[fastrange32((uint32_t)q->h, pt->nb)];
    __builtin_prefetch(q->hb, 1);
}

/* stage 1: match the first bucket; prefetch the candidate record or the second bucket */
static inline __attribute__((always_inline)) void put_s1(put_ctx *c, size_t i, index_table *pt)
{
    put_state *q = &c->st[i & (PUT_CHUNK - 1)];
    if (__builtin_expect(q->t != pt, 0)) { /* the index grew: hint again */
        q->t = pt;
        q->hb = &pt->b[fastrange32((uint32_t)q->h, pt->nb)];
    }
    uint8_t tag = hash_tag(q->h);
    uint32_t m = match_tags_writer(q->hb, tag);
    q->m = m;
    q->need2 = !m;
    if (__builtin_expect(m != 0, 1)) {
        put_prefetch_record(c->s, q->hb, m, c->span);
    } else {
        q->hb = &pt->b[alt_bucket((uint32_t)(q->hb - pt->b), tag, pt->nb)];
        __builtin_prefetch(q->hb, 1);
    }
}

/* stage 2: match the second bucket if needed; prefetch its candidate record */
static inline __attribute__((always_inline)) void put_s2(put_ctx *c, size_t i, index_table *pt)
{
    put_state *q = &c->st[i & (PUT_CHUNK - 1)];
    if (__builtin_expect(!q->need2, 1) || q->t != pt)
        return;
    q->need2 = false;
    q->m = match_tags_writer(q->hb, hash_tag(q->h));
    if (q->m)
        put_prefetch_record(c->s, q->hb, q->m, c->span);
}

/* Apply key j, any case: find it (the hint first), leave it if stale, rewrite it in
 * place if it can be, else append. hb/slot/orec: where the hint found the key (orec
 * NULL: not found by the hint). Returns 0 or a negative error (the batch stops there). */
static __attribute__((noinline)) int put_key(put_ctx *c, size_t j, index_table *t,
                                             uint32_t bkt, int slot, uint8_t *orec)
{
    dhps_store *s = c->s;
    const dhps_store_batch *b = c->b;
    put_state *q = &c->st[j & (PUT_CHUNK - 1)];
    uint64_t key = b->keys[j];
    uint32_t len = b->lens ? b->lens[j] : (uint32_t)b->value_stride;
    if (b->lens && (len > b->value_stride || len > DHPS_STORE_MAX_VALUE))
        return DHPS_E_TOOBIG;
    uint64_t ver = b->versions ? b->versions[j] : b->version;
    const uint8_t *val = (const uint8_t *)b->values + j * b->value_stride;
    if (!orec) {
        hkey k;
        hkey_make(&k, key, q->h, t->nb);
        if (index_find(s, t, &k, &bkt, &slot) == 0)
            orec = rec_ptr(s, t->b[bkt].refs[slot]);
    }
    if (orec) {
        const seg_meta *om = &s->segs[seg_of_ref(s, t->b[bkt].refs[slot])];
        uint16_t olf = rd16(orec + 8);
        int64_t d = (int64_t)(ver - om->ver_base); /* the new version as a delta */
        if (!(olf & REC_EXP) || rd32(orec + rec_exp_off(olf)) > c->now) { /* not expired */
            uint64_t over = (olf & REC_WIDE) ? rd64(orec + 10)
                                             : om->ver_base + (uint64_t)(int64_t)(int32_t)rd32(orec + 10);
            if (ver < over || (b->keep_equal && ver == over)) {
                if (c->stale)
                    c->stale[j >> 6] |= 1ull << (j & 63);
                s->st.stale_updates += ver < over;
                return 0;
            }
        }
        /* In place when the value is no longer than the record's and keeps its TTL
         * layer, the version fits the record's encoding, what a shorter value frees
         * can hold a filler header (or is nothing), and no reader can hold a stale
         * view: none is pinned, and no retired index table (readers of an old table
         * validate its versions, which an in-place write here would not bump) is
         * still waiting to be freed. A shorter value rewritten in place leaves
         * garbage of the bytes it frees, where an appended one would leave the whole
         * old record. */
        uint32_t olen = olf & REC_LEN_MASK;
        uint16_t nlf = (uint16_t)((olf & ~REC_LEN_MASK) | len);
        uint32_t osz = rec_size_lf(s, olf), tail = osz - rec_size_lf(s, nlf);
        if ((olf & REC_EXP) == (c->ttl ? REC_EXP : 0) && len <= olen &&
            (tail == 0 || tail >= REC_BASE_HDR) &&
            (!c->ttl || c->exp <= om->max_exp) &&
            ((olf & REC_WIDE) || (d >= INT32_MIN && d <= INT32_MAX)) &&
            s->p.inplace_updates && !s->retired_tables &&
            try_inplace(s, &t->b[bkt], orec, olf, nlf, ver, (uint32_t)(int32_t)d, c->exp, val, len,
                        tail)) {
            if (nlf != olf) { /* the record shrank: its freed bytes are garbage */
                uint32_t ref = t->b[bkt].refs[slot];
                store_unlive_sized(s, ref, osz, olen);
                store_live_sized(s, ref, osz - tail, len);
                s->st.inplace_shrinks++;
            }
            s->st.inplace_updates++;
            c->applied++;
            return 0;
        }
    }
    put_batch pb = {.ttl = c->ttl, .exp = c->exp, .cls = c->cls};
    int rc = put_append(s, &pb, key, q->h, ver, val, len, orec != NULL, bkt, slot);
    c->appended += pb.appended;
    if (rc)
        return rc;
    c->applied++;
    return 0;
}

/* stage 3: apply key j. The training update -- an existing key, found where the hint
 * says, its record of the same length without TTL, a newer version that fits the
 * record's delta -- is rewritten in place here; everything else goes to put_key.
 * Returns 0 or a negative error (the batch stops there). */
static inline __attribute__((always_inline)) int put_s3(put_ctx *c, size_t j, index_table *t)
{
    dhps_store *s = c->s;
    const dhps_store_batch *b = c->b;
    put_state *q = &c->st[j & (PUT_CHUNK - 1)];
    uint64_t key = b->keys[j];
    uint32_t bkt = 0;
    int slot = -1;
    uint8_t *orec = NULL;
    if (__builtin_expect(q->t == t && !q->need2, 1)) { /* the hint: the stages' tag hits */
        uint8_t tag = hash_tag(q->h);
        for (uint32_t m = q->m; m; m &= m - 1) {
            int i = __builtin_ctz(m);
            if (q->hb->tags[i] != tag)
                continue;
            uint8_t *r = rec_ptr(s, q->hb->refs[i]);
            if (rd64(r) == key) {
                bkt = (uint32_t)(q->hb - t->b);
                slot = i;
                orec = r;
                break;
            }
        }
    }
    if (__builtin_expect(orec != NULL && c->fast, 1)) {
        uint32_t len = b->lens ? b->lens[j] : (uint32_t)b->value_stride;
        uint64_t ver = b->versions ? b->versions[j] : b->version;
        uint16_t olf = rd16(orec + 8);
        const seg_meta *om = &s->segs[seg_of_ref(s, q->hb->refs[slot])];
        uint64_t over = om->ver_base + (uint64_t)(int64_t)(int32_t)rd32(orec + 10);
        int64_t d = (int64_t)(ver - om->ver_base); /* the new version as a delta */
        /* olf == len: no TTL, no wide version, the same length (so len is valid) */
        if (__builtin_expect(olf == len && len <= b->value_stride && ver > over &&
                             d >= INT32_MIN && d <= INT32_MAX, 1)) {
            bucket *hb = q->hb;
            uint32_t v = __atomic_load_n(&hb->version, __ATOMIC_RELAXED);
            __atomic_store_n(&hb->version, v + 1, __ATOMIC_RELAXED);
            writer_pin_check_barrier(s);
            if (__builtin_expect(atomic_load_explicit(&s->zc_pins, store_membarrier ? memory_order_relaxed
                                                                                    : memory_order_seq_cst) == 0,
                                 1)) {
                uint32_t d32 = (uint32_t)(int32_t)d;
                copy_sync(orec + 10, &d32, 4);
                copy_value(orec + REC_BASE_HDR, (const uint8_t *)b->values + j * b->value_stride, len);
                __atomic_store_n(&hb->version, v + 2, __ATOMIC_RELEASE);
                s->st.inplace_updates++;
                c->applied++;
                return 0;
            }
            __atomic_store_n(&hb->version, v + 2, __ATOMIC_RELEASE);
        }
    }
    int rc = put_key(c, j, t, bkt, slot, orec);
    /* put_key may have grown the index or changed what in-place writes may do */
    c->fast = c->ttl == 0 && s->p.inplace_updates && !s->retired_tables;
    return rc;
}

long dhps_store_put(dhps_store *s, const dhps_store_batch *b, uint64_t *stale)
{
    if (stale)
        memset(stale, 0, ((b->n + 63) / 64) * sizeof *stale);
    if (b->n && (!b->keys || !b->values))
        return -EINVAL;
    const size_t n = b->n;
    if (n && !b->lens && b->value_stride > DHPS_STORE_MAX_VALUE)
        return DHPS_E_TOOBIG;
    put_ctx c;
    c.s = s;
    c.b = b;
    c.stale = stale;
    c.ttl = b->ttl == DHPS_TTL_DEFAULT ? s->p.default_ttl : b->ttl;
    if (c.ttl > DHPS_STORE_MAX_TTL)
        c.ttl = DHPS_STORE_MAX_TTL;
    c.now = store_now_s(s);
    c.exp = c.ttl ? c.now + c.ttl : 0;
    c.cls = ttl_class_of(c.ttl);
    c.span = REC_BASE_HDR + (c.ttl ? 4 : 0) + (b->value_stride < 16 * 64 ? b->value_stride : 16 * 64);
    c.appended = 0;
    c.applied = 0;
    c.fast = c.ttl == 0 && s->p.inplace_updates && !s->retired_tables;
    /* Stage passes over chunks of keys as for lookups (lookup_impl.h), prefetching for
     * writing: the chunk's keys are hashed and their first buckets prefetched; then
     * matched, their records (or second buckets) prefetched; then second buckets; then
     * each key is applied with its lines warm. The index may grow while keys are
     * applied, so each pass and each key reads the current table. */
    for (size_t base = 0; base < n; base += PUT_CHUNK) {
        size_t e = base + PUT_CHUNK < n ? base + PUT_CHUNK : n;
        index_table *pt = atomic_load_explicit(&s->table, memory_order_relaxed);
        for (size_t k = base; k < e; k++)
            put_s0(&c, k, pt);
        for (size_t k = base; k < e; k++)
            put_s1(&c, k, pt);
        for (size_t k = base; k < e; k++)
            put_s2(&c, k, pt);
        for (size_t k = base; k < e; k++) {
            pt = atomic_load_explicit(&s->table, memory_order_relaxed);
            int rc = put_s3(&c, k, pt);
            if (__builtin_expect(rc != 0, 0))
                return c.applied ? c.applied : rc;
        }
    }
    if (s->p.auto_maintain)
        maintain_after_put(s, c.appended);
    return c.applied;
}

size_t dhps_store_delete(dhps_store *s, const uint64_t *keys, size_t n, uint64_t version,
                         uint64_t *deleted)
{
    if (deleted)
        memset(deleted, 0, ((n + 63) / 64) * sizeof *deleted);
    size_t count = 0;
    uint32_t now = store_now_s(s);
    for (size_t i = 0; i < n; i++) {
        index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
        hkey k;
        hkey_make(&k, keys[i], store_hash(s, keys[i]), t->nb);
        uint32_t bkt;
        int slot;
        if (index_find(s, t, &k, &bkt, &slot) != 0)
            continue;
        uint32_t ref = t->b[bkt].refs[slot];
        uint8_t *rec = rec_ptr(s, ref);
        uint16_t lf = rd16(rec + 8);
        if ((lf & REC_EXP) && rd32(rec + rec_exp_off(lf)) <= now) {
            index_remove(t, bkt, slot); /* expired: already invisible, not counted */
            store_unlive(s, ref, rec);
            s->st.expired_records++;
            continue;
        }
        if (rec_version(s, rec, seg_of_ref(s, ref)) > version)
            continue;
        index_remove(t, bkt, slot);
        store_unlive(s, ref, rec);
        if (deleted)
            deleted[i >> 6] |= 1ull << (i & 63);
        count++;
    }
    if (s->p.auto_maintain && count)
        maintain_after_put(s, 0);
    return count;
}

size_t dhps_store_maintain(dhps_store *s, size_t budget_bytes)
{
    size_t freed = store_expire(s, store_now_s(s));
    (void)store_make_room(s, 0);
    store_compact(s, budget_bytes);
    freed += store_reclaim(s);
    return freed;
}

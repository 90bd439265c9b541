/* Replica catch-up and anti-entropy: in-memory export (snapshot.c's image writer over a
 * growing buffer), merge of an image into a live store (batched upserts that keep each
 * record's version and remaining TTL), and per-range digests over (key, version). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dhps/log.h"
#include "store_int.h"

/* ---- export: the image writer over a memory sink --------------------------------- */

/* Back the 2 MiB-aligned interior of a large malloc'ed buffer with huge pages: the
 * first touch of a fresh 150 MB image otherwise costs ~37 k page faults, most of the
 * export's time on a VM (measured: docs/store.md). Advice only; free() still owns it. */
static void hugepage_advise(void *p, size_t n)
{
    const uintptr_t H = 2u << 20;
    uintptr_t a = ((uintptr_t)p + H - 1) & ~(H - 1), e = ((uintptr_t)p + n) & ~(H - 1);
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
}

typedef struct mem_sink {
    uint8_t *p;
    size_t len, cap;
} mem_sink;

static int mem_write(void *arg, const void *p, size_t n)
{
    mem_sink *m = arg;
    if (n > m->cap - m->len) {
        size_t cap = m->cap ? m->cap : 1u << 16;
        while (n > cap - m->len)
            cap += cap / 2 + (1u << 16);
        uint8_t *q = realloc(m->p, cap);
        if (!q)
            return -ENOMEM;
        m->p = q;
        m->cap = cap;
        hugepage_advise(q, cap);
    }
    memcpy(m->p + m->len, p, n);
    m->len += n;
    return 0;
}

static int mem_finish(void *arg, const uint8_t *hdr)
{
    memcpy(((mem_sink *)arg)->p, hdr, SNAP_HDR);
    return 0;
}

static bool ranges_ok(uint32_t nranges) { return nranges >= 1 && nranges <= DHPS_STORE_MAX_RANGES; }

/* Share of the ranges a mask selects (1 without a mask). */
static double mask_share(const uint64_t *range_mask, uint32_t nranges)
{
    if (!range_mask)
        return 1.0;
    uint64_t sel = 0;
    for (uint32_t w = 0; w < (nranges + 63) / 64; w++) {
        uint64_t m = range_mask[w];
        if (w == nranges / 64 && (nranges & 63))
            m &= (1ull << (nranges & 63)) - 1;
        sel += (uint64_t)__builtin_popcountll(m);
    }
    return (double)sel / nranges;
}

int dhps_store_export(dhps_store *s, const uint64_t *range_mask, uint32_t nranges, void **buf,
                      size_t *len, uint64_t *records)
{
    return dhps_store_export_since(s, range_mask, nranges, 0, buf, len, records);
}

int dhps_store_export_since(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
                            uint64_t min_version, void **buf, size_t *len, uint64_t *records)
{
    *buf = NULL;
    *len = 0;
    if (range_mask && !ranges_ok(nranges))
        return -EINVAL;
    /* Size for what a full export needs (record: key+value from payload_bytes, 14 more
     * header bytes; a block's 24 per 64 KiB), scaled by the share of ranges selected. */
    double share = mask_share(range_mask, nranges);
    uint64_t body = s->payload_bytes + s->keys * (SNAP_REC_HDR - 8);
    body += body / (SNAP_BLOCK_TARGET / 32) + 64; /* block headers and hashes */
    mem_sink m = {0};
    m.cap = SNAP_HDR + SNAP_ID_BYTES + SNAP_TRAILER + (size_t)((double)body * share * 1.02) + (64u << 10);
    m.p = malloc(m.cap);
    if (!m.p)
        return -ENOMEM;
    hugepage_advise(m.p, m.cap);
    snap_sink k = {.write = mem_write, .finish = mem_finish, .arg = &m};
    int rc = snap_write(s, range_mask, nranges, min_version, &k, records);
    if (rc) {
        free(m.p);
        return rc;
    }
    if (m.cap - m.len > (1u << 20)) { /* give back a large overestimate */
        uint8_t *q = realloc(m.p, m.len);
        if (q)
            m.p = q;
    }
    *buf = m.p;
    *len = m.len;
    return 0;
}

/* ---- merge: verified image -> batched upserts ------------------------------------ */

enum { MERGE_BATCH = 256 };

typedef struct mrec {
    const uint8_t *q; /* the record in the image */
    uint32_t ttl;     /* remaining TTL to apply (0 none) */
    uint32_t len;
    uint32_t pos;     /* order in the block, to keep the sort stable */
} mrec;

static int mrec_cmp(const void *a, const void *b)
{
    const mrec *x = a, *y = b;
    if (x->ttl != y->ttl)
        return x->ttl < y->ttl ? -1 : 1;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

typedef struct merge_scratch {
    uint64_t keys[MERGE_BATCH], vers[MERGE_BATCH], stale[MERGE_BATCH / 64];
    uint8_t *vals; /* MERGE_BATCH * DHPS_STORE_MAX_VALUE is too much; sized per run */
    size_t vals_cap;
} merge_scratch;

/* Upsert recs[0..n) (equal ttl and len) in batches; counts into st. */
static long apply_run(dhps_store *s, merge_scratch *x, const mrec *recs, size_t n,
                      dhps_store_merge_stats *st)
{
    uint32_t len = recs[0].len;
    for (size_t i0 = 0; i0 < n; i0 += MERGE_BATCH) {
        size_t bn = n - i0 < MERGE_BATCH ? n - i0 : MERGE_BATCH;
        size_t need = bn * (size_t)len + 1; /* non-NULL for empty values too */
        if (need > x->vals_cap) {
            uint8_t *v = realloc(x->vals, need);
            if (!v)
                return -ENOMEM;
            x->vals = v;
            x->vals_cap = need;
        }
        for (size_t j = 0; j < bn; j++) {
            const uint8_t *q = recs[i0 + j].q;
            x->keys[j] = rd64(q);
            x->vers[j] = rd64(q + 8);
            memcpy(x->vals + j * len, q + SNAP_REC_HDR, len);
        }
        /* dhps_store_put stops at an error but reports what it applied before it; the
         * record it stopped at is the first neither applied nor stale. Retry from there
         * to learn the error (or go on, if maintenance made room meanwhile). */
        size_t done = 0;
        while (done < bn) {
            dhps_store_batch b = {.keys = x->keys + done, .n = bn - done,
                                  .values = x->vals + done * len, .value_stride = len,
                                  .versions = x->vers + done, .ttl = recs[0].ttl,
                                  .keep_equal = true};
            long w = dhps_store_put(s, &b, x->stale);
            if (w < 0)
                return w;
            uint64_t nst = 0;
            for (size_t k = 0; k < (bn - done + 63) / 64; k++)
                nst += (uint64_t)__builtin_popcountll(x->stale[k]);
            st->applied += (uint64_t)w;
            st->stale += nst;
            if ((uint64_t)w + nst == bn - done)
                break;
            if ((uint64_t)w + nst == 0)
                return DHPS_E_FULL; /* no progress (not expected: put reports errors) */
            /* the stale bits set are all before the stop point */
            done += (size_t)w + nst;
        }
    }
    return 0;
}

long snap_apply(dhps_store *s, const uint8_t *p, size_t n,
                bool (*skip)(void *arg, uint64_t key, uint64_t version), void *arg,
                dhps_store_merge_stats *stp)
{
    dhps_store_merge_stats st = {0};
    /* Time passed since the image was made (on disk, on the wire) counts against TTLs. */
    uint64_t snap_wall = rd64(p + 32), now_wall = store_wall_ms();
    uint64_t away_s = now_wall > snap_wall ? (now_wall - snap_wall) / 1000 : 0;
    merge_scratch *x = calloc(1, sizeof *x);
    mrec *recs = NULL;
    size_t recs_cap = 0;
    long rc = x ? 0 : -ENOMEM;
    size_t off = SNAP_DATA_OFF(p), end = n - SNAP_TRAILER;
    while (!rc && off < end) {
        uint32_t nrecs = rd32(p + off + 4), plen = rd32(p + off + 8);
        const uint8_t *q = p + off + BLK_HDR;
        off += BLK_HDR + plen + 8;
        if (nrecs > recs_cap) {
            mrec *r = realloc(recs, nrecs * sizeof *r);
            if (!r) {
                rc = -ENOMEM;
                break;
            }
            recs = r;
            recs_cap = nrecs;
        }
        size_t m = 0;
        bool uniform = true;
        for (uint32_t r = 0; r < nrecs; r++) {
            uint64_t key = rd64(q), ver = rd64(q + 8);
            uint32_t ttl = rd32(q + 16);
            uint16_t len = rd16(q + 20);
            const uint8_t *rq = q;
            q += SNAP_REC_HDR + len;
            if (ttl) {
                if (ttl <= away_s) {
                    st.expired++;
                    continue;
                }
                ttl -= (uint32_t)away_s;
                if (ttl > DHPS_STORE_MAX_TTL) /* never DHPS_TTL_DEFAULT */
                    ttl = DHPS_STORE_MAX_TTL;
            }
            if (skip && skip(arg, key, ver)) {
                st.skipped++;
                continue;
            }
            recs[m] = (mrec){.q = rq, .ttl = ttl, .len = len, .pos = r};
            if (m && (recs[m].ttl != recs[0].ttl || recs[m].len != recs[0].len))
                uniform = false;
            m++;
        }
        if (!uniform)
            qsort(recs, m, sizeof *recs, mrec_cmp);
        for (size_t i = 0; i < m && !rc;) {
            size_t j = i + 1;
            while (j < m && recs[j].ttl == recs[i].ttl && recs[j].len == recs[i].len)
                j++;
            rc = apply_run(s, x, recs + i, j - i, &st);
            i = j;
        }
    }
    if (x)
        free(x->vals);
    free(x);
    free(recs);
    if (stp)
        *stp = st;
    return rc < 0 ? rc : (long)st.applied;
}

long dhps_store_merge_buffer(dhps_store *s, const void *buf, size_t len,
                             bool (*skip)(void *arg, uint64_t key, uint64_t version), void *arg,
                             dhps_store_merge_stats *st)
{
    if (st)
        memset(st, 0, sizeof *st);
    long rc = snap_verify(buf, len);
    if (rc < 0) {
        DHPS_LOG(DHPS_LOG_WARN, "store", "merge: image rejected: %s", dhps_strerror((int)rc));
        return rc;
    }
    if ((rc = snap_check_identity(s, buf, len)) < 0)
        return rc;
    return snap_apply(s, buf, len, skip, arg, st);
}

/* ---- digests ---------------------------------------------------------------------- */

static inline uint64_t kv_hash(uint64_t key, uint64_t version)
{
    uint8_t b[16];
    wr64(b, key);
    wr64(b + 8, version);
    return XXH3_64bits(b, 16);
}

typedef struct digest_acc {
    uint32_t nranges;
    uint64_t *hash, *count;
} digest_acc;

static int digest_visit(void *arg, uint64_t key, uint64_t version, uint32_t ttl_left,
                        const uint8_t *val, uint32_t len)
{
    (void)ttl_left, (void)val, (void)len;
    digest_acc *d = arg;
    uint32_t r = dhps_store_key_range(key, d->nranges);
    d->hash[r] ^= kv_hash(key, version);
    d->count[r]++;
    return 0;
}

static int max_visit(void *arg, uint64_t key, uint64_t version, uint32_t ttl_left,
                     const uint8_t *val, uint32_t len)
{
    (void)key, (void)ttl_left, (void)val, (void)len;
    uint64_t *m = arg;
    if (version > *m)
        *m = version;
    return 0;
}

uint64_t dhps_store_max_version(dhps_store *s)
{
    uint64_t m = 0;
    store_walk(s, NULL, 0, false, max_visit, &m);
    return m;
}

int dhps_store_digest(dhps_store *s, uint32_t nranges, uint64_t *hash, uint64_t *count)
{
    if (!ranges_ok(nranges))
        return -EINVAL;
    memset(hash, 0, nranges * sizeof *hash);
    memset(count, 0, nranges * sizeof *count);
    digest_acc d = {.nranges = nranges, .hash = hash, .count = count};
    return store_walk(s, NULL, 0, false, digest_visit, &d);
}

typedef struct versions_acc {
    uint64_t *keys, *vers;
    size_t n, cap;
} versions_acc;

static int versions_visit(void *arg, uint64_t key, uint64_t version, uint32_t ttl_left,
                          const uint8_t *val, uint32_t len)
{
    (void)ttl_left, (void)val, (void)len;
    versions_acc *a = arg;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 1024;
        uint64_t *k = realloc(a->keys, cap * sizeof *k);
        if (!k)
            return -ENOMEM;
        a->keys = k;
        uint64_t *v = realloc(a->vers, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        a->vers = v;
        a->cap = cap;
    }
    a->keys[a->n] = key;
    a->vers[a->n] = version;
    a->n++;
    return 0;
}

int dhps_store_range_versions(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
                              uint64_t **keys, uint64_t **versions, size_t *n)
{
    *keys = NULL;
    *versions = NULL;
    *n = 0;
    if (range_mask && !ranges_ok(nranges))
        return -EINVAL;
    versions_acc a = {0};
    /* sized for the expected count (index keys may include expired ones) */
    size_t cap = (size_t)((double)s->keys * mask_share(range_mask, nranges) * 1.05) + 1024;
    a.keys = malloc(cap * sizeof *a.keys);
    a.vers = malloc(cap * sizeof *a.vers);
    if (!a.keys || !a.vers) {
        free(a.keys);
        free(a.vers);
        return -ENOMEM;
    }
    a.cap = cap;
    int rc = store_walk(s, range_mask, nranges, false, versions_visit, &a);
    if (rc || !a.n) {
        free(a.keys);
        free(a.vers);
        return rc;
    }
    *keys = a.keys;
    *versions = a.vers;
    *n = a.n;
    return 0;
}

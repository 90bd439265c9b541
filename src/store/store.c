/* Public store API: lifecycle, readers, lookups, upserts, deletes, maintenance, stats. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <linux/membarrier.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>

#include "dhps/log.h"
#include "store_int.h"
#include "util.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static uint64_t default_clock(void *arg)
{
    (void)arg;
    return dhps_mono_ns() / 1000000u; /* ms */
}

void dhps_store_params_init(dhps_store_params *p)
{
    memset(p, 0, sizeof *p);
    p->capacity_hint = 1u << 20;
    p->segment_bytes = 2u << 20;
    p->record_align_log2 = 1;
    p->max_fill = 0.95f;
    p->fragmentation_goal = 0.04f;
    p->huge_pages = true;
    p->inplace_updates = true;
    p->auto_maintain = true;
    p->max_readers = 256;
}

static void lookup_pick(void);

int dhps_store_create(const dhps_store_params *p, dhps_store **out)
{
    *out = NULL;
    lookup_pick(); /* choose the tag-match code once, before any reader exists */
    const char *bad = NULL;
    if (p->segment_bytes < (64u << 10) || p->segment_bytes > (1u << 30) ||
        (p->segment_bytes & (p->segment_bytes - 1)))
        bad = "segment_bytes must be a power of two in [64 KiB, 1 GiB]";
    else if (p->record_align_log2 < 1 || p->record_align_log2 > 4)
        bad = "record_align_log2 must be 1..4";
    else if (!(p->max_fill >= 0.5f && p->max_fill <= 0.99f))
        bad = "max_fill must be in [0.5, 0.99]";
    else if (!(p->fragmentation_goal > 0.0f && p->fragmentation_goal < 0.5f))
        bad = "fragmentation_goal must be in (0, 0.5)";
    else if (p->max_readers < 1 || p->max_readers > 65536)
        bad = "max_readers must be 1..65536";
    else if (p->capacity_hint > (1ull << 36))
        bad = "capacity_hint above 2^36";
    else if (p->mem_limit && p->mem_limit < 4ull * p->segment_bytes)
        bad = "mem_limit must allow at least 4 segments";
    if (bad) {
        DHPS_LOG(DHPS_LOG_ERROR, "store", "create: %s", bad);
        return -EINVAL;
    }
    dhps_store *s = aligned_alloc(CACHELINE, (sizeof *s + CACHELINE - 1) & ~(size_t)(CACHELINE - 1));
    if (!s)
        return -ENOMEM;
    memset(s, 0, sizeof *s);
    s->p = *p;
    s->clock = p->clock ? p->clock : default_clock;
    s->clock_arg = p->clock_arg;
    s->align_log2 = p->record_align_log2;
    s->seg_bytes = p->segment_bytes;
    s->seg_log2 = (uint32_t)__builtin_ctz(p->segment_bytes);
    atomic_init(&s->global_epoch, 1);
    if (getrandom(&s->seed, sizeof s->seed, GRND_NONBLOCK) != sizeof s->seed)
        s->seed = (uint64_t)(uintptr_t)s ^ default_clock(NULL) * 0x9E3779B97F4A7C15ull;
    s->max_readers = p->max_readers;
    s->readers = aligned_alloc(CACHELINE, sizeof(reader_slot) * p->max_readers);
    int rc = -ENOMEM;
    if (!s->readers)
        goto fail;
    memset(s->readers, 0, sizeof(reader_slot) * p->max_readers);
    if ((rc = seg_reserve(s)) != 0)
        goto fail;
    uint64_t nb = (uint64_t)((double)(p->capacity_hint ? p->capacity_hint : 1) / (SLOTS * 0.93)) + 1;
    if (p->mem_limit && nb * sizeof(bucket) > p->mem_limit / 2) {
        DHPS_LOG(DHPS_LOG_ERROR, "store", "create: index for capacity_hint exceeds half of mem_limit");
        rc = -EINVAL;
        goto fail;
    }
    index_table *t = index_create(nb, p->huge_pages);
    if (!t) {
        rc = -ENOMEM;
        goto fail;
    }
    atomic_init(&s->table, t);
    *out = s;
    return 0;
fail:
    seg_release_all(s);
    free(s->readers);
    free(s);
    return rc;
}

void dhps_store_destroy(dhps_store *s)
{
    if (!s)
        return;
    index_free(atomic_load(&s->table));
    while (s->retired_tables) {
        retired_table *rt = s->retired_tables;
        s->retired_tables = rt->next;
        index_free(rt->t);
        free(rt);
    }
    seg_release_all(s);
    free(s->readers);
    free(s);
}

/* ---- readers ----------------------------------------------------------------------- */

int dhps_store_reader_open(dhps_store *s, dhps_store_reader **out)
{
    *out = NULL;
    for (uint32_t i = 0; i < s->max_readers; i++) {
        uint32_t zero = 0;
        if (atomic_compare_exchange_strong(&s->readers[i].in_use, &zero, 1)) {
            reader_slot *r = &s->readers[i];
            r->store = s;
            r->pinned = 0;
            r->retries = 0;
            atomic_store(&r->epoch, 0);
            uint32_t hw = atomic_load(&s->reader_hw);
            while (hw < i + 1 && !atomic_compare_exchange_weak(&s->reader_hw, &hw, i + 1))
                ;
            *out = r;
            return 0;
        }
    }
    return -EMFILE;
}

void dhps_store_reader_close(dhps_store_reader *r)
{
    if (!r)
        return;
    if (r->pinned)
        dhps_store_release(r);
    atomic_fetch_add(&r->store->reader_retries, __atomic_load_n(&r->retries, __ATOMIC_RELAXED));
    atomic_store(&r->in_use, 0);
}

/* Single-key lookup that retries until it reads a stable bucket pair. Returns 1 hit,
 * 0 miss. Used when the fast path saw a concurrent change. */
static int lookup_one_slow(dhps_store *s, const index_table *t, const hkey *k, uint8_t *row,
                           size_t stride, uint32_t *lenp, const void **valp, uint32_t now_s,
                           uint64_t *retries)
{
    const bucket *bs[2] = {&t->b[k->b1], &t->b[k->b2]};
    for (unsigned spin = 0;; spin++) {
        if (spin)
            (*retries)++;
        if (spin > 64)
            sched_yield();
        uint32_t v[2];
        v[0] = __atomic_load_n(&bs[0]->version, __ATOMIC_ACQUIRE);
        v[1] = __atomic_load_n(&bs[1]->version, __ATOMIC_ACQUIRE);
        if ((v[0] | v[1]) & 1)
            continue;
        int r = 0;
        for (int w = 0; w < 2 && !r; w++) {
            for (int i = 0; i < SLOTS; i++) {
                if (__atomic_load_n(&bs[w]->tags[i], __ATOMIC_ACQUIRE) != k->tag)
                    continue;
                uint32_t ref = __atomic_load_n(&bs[w]->refs[i], __ATOMIC_ACQUIRE);
                const uint8_t *rec = rec_ptr(s, ref);
                if (rd64(rec) != k->key)
                    continue;
                uint16_t lf = rd16(rec + 8);
                uint32_t len = lf & REC_LEN_MASK;
                if ((lf & REC_EXP) && rd32_sync(rec + rec_exp_off(lf)) <= now_s) {
                    r = -1; /* present but expired: a miss, once validated */
                } else {
                    const uint8_t *val = rec + rec_hdr_size(lf);
                    if (valp)
                        *valp = val;
                    else if (row) {
                        size_t c = len < stride ? len : stride;
                        copy_sync(row, val, c);
                        if (c < stride)
                            memset(row + c, 0, stride - c);
                    }
                    if (lenp)
                        *lenp = len;
                    r = 1;
                }
                break;
            }
        }
        FENCE_ACQ();
        if (__atomic_load_n(&bs[0]->version, __ATOMIC_RELAXED) != v[0] ||
            __atomic_load_n(&bs[1]->version, __ATOMIC_RELAXED) != v[1])
            continue;
        return r == 1;
    }
}

/* ---- tag match implementations --------------------------------------------------- */

#define MATCH_SCALAR(b, tag, m)                                                            \
    do {                                                                                   \
        m = 0;                                                                             \
        for (int i_ = 0; i_ < SLOTS; i_++)                                                 \
            m |= (uint32_t)(__atomic_load_n(&(b)->tags[i_], __ATOMIC_RELAXED) == (tag)) << i_; \
    } while (0)

/* The lookup pipeline (lookup_impl.h): stage distance in keys, and the ring of key
 * states (a power of two > 3 x the distance). */
#define LOOKUP_DIST 4
#define LOOKUP_RING 16

/* Copy a value of a constant n bytes (64, 128, 256): inline moves instead of a call to
 * memcpy with a run-time length. Under TSan every value copy is copy_sync's. */
#ifdef DHPS_TSAN
#define COPY_FIXED_PLAIN(d, s_, n) copy_sync((d), (s_), (n))
#else
#define COPY_FIXED_PLAIN(d, s_, n) __builtin_memcpy((d), (s_), (n))
#endif

#define LOOKUP_FN lookup_scalar
#define LOOKUP_TARGET
#define MATCH1(b, tag, m) MATCH_SCALAR(b, tag, m)
#define COPY_FIXED(d, s_, n) COPY_FIXED_PLAIN(d, s_, n)
#include "lookup_impl.h"
#undef LOOKUP_FN
#undef LOOKUP_TARGET
#undef MATCH1
#undef COPY_FIXED

#if defined(__x86_64__) && !defined(DHPS_TSAN)
#define MATCH_SSE2(b, tag, m)                                                              \
    (m = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_load_si128((const __m128i *)(b)),  \
                                                    _mm_set1_epi8((char)(tag)))) & 0xFFFu)
#define LOOKUP_FN lookup_sse2
#define LOOKUP_TARGET
#define MATCH1(b, tag, m) MATCH_SSE2(b, tag, m)
#define COPY_FIXED(d, s_, n) COPY_FIXED_PLAIN(d, s_, n)
#include "lookup_impl.h"
#undef LOOKUP_FN
#undef LOOKUP_TARGET
#undef MATCH1
#undef COPY_FIXED

/* 32-byte moves (gcc's own expansion of a constant memcpy uses 16-byte ones) */
#define COPY_FIXED_AVX2(d, s_, n)                                                          \
    do {                                                                                   \
        for (unsigned o_ = 0; o_ < (n); o_ += 32)                                          \
            _mm256_storeu_si256((__m256i *)((uint8_t *)(d) + o_),                          \
                                _mm256_loadu_si256((const __m256i *)((const uint8_t *)(s_) + o_))); \
    } while (0)
#define LOOKUP_FN lookup_avx2
#define LOOKUP_TARGET __attribute__((target("avx2")))
#define MATCH1(b, tag, m) MATCH_SSE2(b, tag, m)
#define COPY_FIXED(d, s_, n) COPY_FIXED_AVX2(d, s_, n)
#include "lookup_impl.h"
#undef LOOKUP_FN
#undef LOOKUP_TARGET
#undef MATCH1
#undef COPY_FIXED
#endif

typedef size_t (*lookup_fn)(dhps_store *, const index_table *, const uint64_t *, size_t,
                            uint8_t *, size_t, uint32_t *, uint64_t *, const void **, uint32_t,
                            uint64_t *);
static lookup_fn g_lookup;
static const char *g_lookup_name;
static pthread_once_t g_lookup_once = PTHREAD_ONCE_INIT;

static void lookup_pick_once(void)
{
#if defined(__x86_64__) && !defined(DHPS_TSAN)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        g_lookup = lookup_avx2;
        g_lookup_name = "avx2";
    } else {
        g_lookup = lookup_sse2;
        g_lookup_name = "sse2";
    }
#else
    g_lookup = lookup_scalar;
    g_lookup_name = "scalar";
#endif
}

/* Zero-copy pins against in-place writes is a Dekker handshake: the writer marks the
 * bucket odd then reads zc_pins; a pinning reader bumps zc_pins then reads bucket
 * versions. Each side needs a store-load barrier. A full fence per in-place write
 * would drain the store buffer and serialise the writer's cache misses, so where the
 * kernel offers it the reader pays instead: membarrier(PRIVATE_EXPEDITED) makes every
 * thread of the process execute a full barrier, once per pin (a few microseconds). */
static bool g_membarrier;

#ifndef DHPS_TSAN
static void mb_register(void)
{
#ifdef SYS_membarrier
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        g_membarrier = true;
#endif
}
#endif

static void lookup_pick(void)
{
    pthread_once(&g_lookup_once, lookup_pick_once);
#ifndef DHPS_TSAN
    static pthread_once_t mb_once = PTHREAD_ONCE_INIT;
    pthread_once(&mb_once, mb_register);
#endif
}

static inline void pin_barrier(dhps_store *s)
{
#ifdef SYS_membarrier
    if (g_membarrier && syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return;
#endif
    FENCE_SC(s);
}

static inline void writer_pin_check_barrier(dhps_store *s)
{
    if (g_membarrier)
        __asm__ __volatile__("" ::: "memory"); /* the pinning reader's membarrier fences us */
    else
        FENCE_SC(s);
}

const char *dhps_store_simd_name(void)
{
    lookup_pick();
    return g_lookup_name;
}

int dhps_store_force_simd(const char *name)
{
    lookup_pick();
    if (!strcmp(name, "scalar")) {
        g_lookup = lookup_scalar;
        g_lookup_name = "scalar";
        return 0;
    }
#if defined(__x86_64__) && !defined(DHPS_TSAN)
    if (!strcmp(name, "sse2")) {
        g_lookup = lookup_sse2;
        g_lookup_name = "sse2";
        return 0;
    }
    if (!strcmp(name, "avx2") && (__builtin_cpu_init(), __builtin_cpu_supports("avx2"))) {
        g_lookup = lookup_avx2;
        g_lookup_name = "avx2";
        return 0;
    }
#endif
    return -ENOTSUP;
}

/* ---- lookups ------------------------------------------------------------------------- */

size_t dhps_store_get(dhps_store_reader *r, const uint64_t *keys, size_t n, void *out,
                      size_t out_stride, uint32_t *lens, uint64_t *found)
{
    dhps_store *s = r->store;
    if (!out)
        out_stride = 0;
    uint32_t now = store_now_s(s);
    reader_enter(s, r);
    const index_table *t = atomic_load_explicit(&s->table, memory_order_acquire);
    uint64_t retries = 0;
    size_t hits = g_lookup(s, t, keys, n, out, out_stride, lens, found, NULL, now, &retries);
    reader_exit(r);
    if (retries)
        __atomic_fetch_add(&r->retries, retries, __ATOMIC_RELAXED);
    return hits;
}

size_t dhps_store_get_pinned(dhps_store_reader *r, const uint64_t *keys, size_t n,
                             const void **vals, uint32_t *lens, uint64_t *found)
{
    dhps_store *s = r->store;
    uint32_t now = store_now_s(s);
    if (!r->pinned) {
        /* Announce the pin before reading (pairs with the writer's check in
         * try_inplace), then hold the epoch until release. */
        atomic_fetch_add_explicit(&s->zc_pins, 1, memory_order_seq_cst);
        pin_barrier(s);
        reader_enter(s, r);
        r->pinned = 1;
    }
    const index_table *t = atomic_load_explicit(&s->table, memory_order_acquire);
    uint64_t retries = 0;
    size_t hits = g_lookup(s, t, keys, n, NULL, 0, lens, found, vals, now, &retries);
    if (retries)
        __atomic_fetch_add(&r->retries, retries, __ATOMIC_RELAXED);
    return hits;
}

void dhps_store_release(dhps_store_reader *r)
{
    if (!r->pinned)
        return;
    r->pinned = 0;
    reader_exit(r);
    atomic_fetch_sub_explicit(&r->store->zc_pins, 1, memory_order_release);
}

/* ---- writer ---------------------------------------------------------------------------- */

/* Rewrite a record in place under its bucket's seqlock. Fails (returns false) while a
 * zero-copy pin is outstanding: pinned bytes must not change. */
static bool try_inplace(dhps_store *s, bucket *b, uint8_t *rec, uint16_t lf, uint64_t ver,
                        uint32_t exp, const void *val, uint32_t len)
{
    uint32_t v = __atomic_load_n(&b->version, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, v + 1, __ATOMIC_RELAXED);
    writer_pin_check_barrier(s);
    if (atomic_load_explicit(&s->zc_pins, g_membarrier ? memory_order_relaxed : memory_order_seq_cst) != 0) {
        __atomic_store_n(&b->version, v + 2, __ATOMIC_RELEASE);
        return false;
    }
    uint32_t seg = seg_of_ref(s, (uint32_t)((uint64_t)(rec - s->base) >> s->align_log2));
    if (lf & REC_WIDE) {
        copy_sync(rec + 10, &ver, 8);
    } else {
        uint32_t d = (uint32_t)(int32_t)(int64_t)(ver - s->segs[seg].ver_base);
        copy_sync(rec + 10, &d, 4);
    }
    if (lf & REC_EXP)
        copy_sync(rec + rec_exp_off(lf), &exp, 4);
    copy_sync(rec + rec_hdr_size(lf), val, len);
    __atomic_store_n(&b->version, v + 2, __ATOMIC_RELEASE);
    return true;
}

static bool version_fits(const dhps_store *s, uint16_t lf, uint32_t seg, uint64_t ver)
{
    if (lf & REC_WIDE)
        return true;
    int64_t d = (int64_t)(ver - s->segs[seg].ver_base);
    return d >= INT32_MIN && d <= INT32_MAX;
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

long dhps_store_put(dhps_store *s, const dhps_store_batch *b, uint64_t *stale)
{
    if (stale)
        memset(stale, 0, ((b->n + 63) / 64) * sizeof *stale);
    if (b->n && (!b->keys || !b->values))
        return -EINVAL;
    uint32_t ttl = b->ttl == DHPS_TTL_DEFAULT ? s->p.default_ttl : b->ttl;
    if (ttl > DHPS_STORE_MAX_TTL)
        ttl = DHPS_STORE_MAX_TTL;
    uint32_t now = store_now_s(s);
    uint32_t exp = ttl ? now + ttl : 0;
    unsigned cls = ttl_class_of(ttl);
    long applied = 0;
    size_t appended = 0;
    const uint8_t *vbase = b->values;
    /* The same pipelined-groups schedule as lookups (lookup_impl.h): in one turn group
     * g has its first buckets prefetched, group g-1 its records (for writing) or second
     * buckets, group g-2 its second-bucket records, and group g-3 is applied with its
     * lines warm. Hashes are kept; bucket numbers are recomputed if the index grows. */
    enum { WG = 4, WR = 16 };
    uint64_t hh[WR];
    uint32_t hit1[WR];
    const size_t ngroups = (b->n + WG - 1) / WG;
    for (size_t turn = 0; turn < ngroups + 3; turn++) {
        index_table *pt = atomic_load_explicit(&s->table, memory_order_relaxed);
        if (turn < ngroups) {
            size_t e = (turn + 1) * WG < b->n ? (turn + 1) * WG : b->n;
            for (size_t k = turn * WG; k < e; k++) {
                hkey ph;
                hh[k & (WR - 1)] = store_hash(s, b->keys[k]);
                hkey_make(&ph, b->keys[k], hh[k & (WR - 1)], pt->nb);
                __builtin_prefetch(&pt->b[ph.b1], 1);
            }
        }
        for (int st = 1; st <= 2; st++) {
            if (turn < (size_t)st || turn - st >= ngroups)
                continue;
            size_t g = turn - st, e = (g + 1) * WG < b->n ? (g + 1) * WG : b->n;
            for (size_t k = g * WG; k < e; k++) {
                hkey ph;
                hkey_make(&ph, b->keys[k], hh[k & (WR - 1)], pt->nb);
                const bucket *pb = &pt->b[st == 1 ? ph.b1 : ph.b2];
                if (st == 2 && hit1[k & (WR - 1)])
                    continue;
                uint32_t m = match_tags_writer(pb, ph.tag);
                if (st == 1)
                    hit1[k & (WR - 1)] = m;
                if (m) {
                    const uint8_t *rec = rec_ptr(s, pb->refs[__builtin_ctz(m)]);
                    uintptr_t a = (uintptr_t)rec & ~(uintptr_t)63, e2 = (uintptr_t)rec + 22 + b->value_stride;
                    for (unsigned l = 0; a < e2 && l < 8; a += 64, l++)
                        __builtin_prefetch((const void *)a, 1);
                } else if (st == 1) {
                    __builtin_prefetch(&pt->b[ph.b2], 1);
                }
            }
        }
        if (turn < 3)
            continue;
        size_t ag = turn - 3, ae = (ag + 1) * WG < b->n ? (ag + 1) * WG : b->n;
        for (size_t j = ag * WG; j < ae; j++) {
            uint64_t key = b->keys[j];
            uint32_t len = b->lens ? b->lens[j] : (uint32_t)b->value_stride;
            if (b->lens ? len > b->value_stride || len > DHPS_STORE_MAX_VALUE
                        : b->value_stride > DHPS_STORE_MAX_VALUE)
                return applied ? applied : DHPS_E_TOOBIG;
            uint64_t ver = b->versions ? b->versions[j] : b->version;
            const uint8_t *val = vbase + j * b->value_stride;
            index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
            hkey k;
            hkey_make(&k, key, hh[j & (WR - 1)], t->nb);
            uint32_t bkt;
            int slot;
            bool exists = index_find(s, t, &k, &bkt, &slot) == 0;
            if (exists) {
                uint32_t oref = t->b[bkt].refs[slot];
                uint8_t *orec = rec_ptr(s, oref);
                uint32_t oseg = seg_of_ref(s, oref);
                uint16_t elf = rd16(orec + 8);
                bool expired = (elf & REC_EXP) && rd32(orec + rec_exp_off(elf)) <= now;
                uint64_t over = expired ? 0 : rec_version(s, orec, oseg);
                if (!expired && (ver < over || (b->keep_equal && ver == over))) {
                    if (stale)
                        stale[j >> 6] |= 1ull << (j & 63);
                    s->st.stale_updates += ver < over;
                    continue;
                }
                uint16_t olf = rd16(orec + 8);
                if (s->p.inplace_updates && (olf & REC_LEN_MASK) == len &&
                    !!(olf & REC_EXP) == (ttl != 0) && (!ttl || exp <= s->segs[oseg].max_exp) &&
                    version_fits(s, olf, oseg, ver) &&
                    try_inplace(s, &t->b[bkt], orec, olf, ver, exp, val, len)) {
                    s->st.inplace_updates++;
                    applied++;
                    continue;
                }
            }
            uint16_t lf;
            uint32_t size;
            uint64_t gen = s->index_gen;
            int64_t ref = seg_append(s, cls, false, len, ttl != 0, ver, &lf, &size);
            if (ref < 0)
                return applied ? applied : (long)ref;
            uint8_t *rec = rec_ptr(s, (uint32_t)ref);
            rec_write_header(s, rec, (uint32_t)ref, key, lf, ver, exp);
            memcpy(rec + rec_hdr_size(lf), val, len);
            appended += size;
            if (s->index_gen != gen) { /* reclamation may have dropped or moved the key */
                t = atomic_load_explicit(&s->table, memory_order_relaxed);
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
                        return applied ? applied : grc;
                    t = atomic_load_explicit(&s->table, memory_order_relaxed);
                    hkey_make(&k, key, store_hash(s, key), t->nb);
                }
                int rc = index_insert(s, t, &k, (uint32_t)ref);
                if (rc == DHPS_E_FULL) {
                    rc = index_grow(s, t->used + t->used / 2 + 1);
                    if (rc == 0) {
                        t = atomic_load_explicit(&s->table, memory_order_relaxed);
                        hkey_make(&k, key, store_hash(s, key), t->nb);
                        rc = index_insert(s, t, &k, (uint32_t)ref);
                    }
                }
                if (rc)
                    return applied ? applied : rc; /* the appended record stays as garbage */
            }
            store_live(s, (uint32_t)ref, rec);
            applied++;
        }
    }
    if (s->p.auto_maintain)
        maintain_after_put(s, appended);
    return applied;
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

void dhps_store_get_stats(const dhps_store *s, dhps_store_stats *st)
{
    *st = s->st;
    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    st->keys = s->keys;
    st->live_bytes = s->live_bytes;
    st->payload_bytes = s->payload_bytes;
    st->segments = s->nsegs_alloc;
    st->segment_bytes = (uint64_t)(s->nsegs_alloc + s->free_resident) * s->seg_bytes;
    st->index_bytes = t->nb * sizeof(bucket);
    st->fragmentation = s->used_bytes ? 1.0 - (double)s->live_bytes / (double)s->used_bytes : 0.0;
    st->load_factor = (double)t->used / (double)(t->nb * SLOTS);
    uint64_t rr = atomic_load_explicit(&((dhps_store *)s)->reader_retries, memory_order_relaxed);
    uint32_t hw = atomic_load_explicit(&((dhps_store *)s)->reader_hw, memory_order_relaxed);
    for (uint32_t i = 0; i < hw; i++)
        if (atomic_load_explicit(&s->readers[i].in_use, memory_order_relaxed))
            rr += __atomic_load_n(&s->readers[i].retries, __ATOMIC_RELAXED);
    st->reader_retries = rr;
}

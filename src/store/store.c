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
                uint16_t lf = rd16_sync(rec + 8);
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

/* Keys per stage pass of the lookup (lookup_impl.h) */
#define LOOKUP_CHUNK 64

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
bool store_membarrier;

#ifndef DHPS_TSAN
static void mb_register(void)
{
#ifdef SYS_membarrier
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        store_membarrier = true;
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
    if (store_membarrier && syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return;
#endif
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

/* ---- lines a lookup touches (dhps_store_lookup_lines) ----------------------------- */

typedef struct line_set {
    uintptr_t l[64];
    unsigned n;
} line_set;

/* Add the lines of [a, e) to the set. */
static void lines_add(line_set *ls, uintptr_t a, uintptr_t e)
{
    for (uintptr_t l = a & ~(uintptr_t)63; l < e; l += 64) {
        unsigned i = 0;
        while (i < ls->n && ls->l[i] != l)
            i++;
        if (i == ls->n && ls->n < 64)
            ls->l[ls->n++] = l;
    }
}

/* Follow bucket b's tag hits m in slot order as the lookup does: read each record's key
 * until one is key, then that record's header and value (up to stride bytes). Returns
 * whether the key was found. */
static bool lines_search(const dhps_store *s, const bucket *b, uint32_t m, uint64_t key,
                         size_t stride, line_set *ls)
{
    for (; m; m &= m - 1) {
        const uint8_t *rec = rec_ptr(s, b->refs[__builtin_ctz(m)]);
        lines_add(ls, (uintptr_t)rec, (uintptr_t)rec + 8);
        if (rd64(rec) != key)
            continue;
        uint16_t lf = rd16(rec + 8);
        uint32_t len = lf & REC_LEN_MASK;
        uintptr_t end = (uintptr_t)rec + rec_hdr_size(lf) + (len < stride ? len : stride);
        lines_add(ls, (uintptr_t)rec, end);
        return true;
    }
    return false;
}

int dhps_store_lookup_lines(dhps_store *s, size_t out_stride, dhps_store_lines *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    const index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    /* the prefetch span of the first tag hit's record (lookup_impl.h, LK_SPAN) */
    size_t span = REC_BASE_HDR + out_stride;
    if (span > 16 * 64)
        span = 16 * 64;
    uint64_t bucket_lines = 0, record_lines = 0;
    for (uint64_t bi = 0; bi < t->nb; bi++) {
        const bucket *kb = &t->b[bi];
        for (int i = 0; i < SLOTS; i++) {
            if (!kb->tags[i])
                continue;
            uint64_t key = rd64(rec_ptr(s, kb->refs[i]));
            hkey k;
            hkey_make(&k, key, store_hash(s, key), t->nb);
            const bucket *b1 = &t->b[k.b1], *b2 = &t->b[k.b2];
            line_set ls = {.n = 0};
            unsigned buckets = 1;
            uint32_t m1 = match_tags_writer(b1, k.tag);
            bool found;
            if (m1) { /* stage 1 prefetches the first hit's record; stage 3 searches b1 */
                const uint8_t *rec = rec_ptr(s, b1->refs[__builtin_ctz(m1)]);
                lines_add(&ls, (uintptr_t)rec, (uintptr_t)rec + span);
                found = lines_search(s, b1, m1, key, out_stride, &ls);
            } else { /* stage 2 reads the second bucket and prefetches its first hit */
                uint32_t m2 = match_tags_writer(b2, k.tag);
                buckets += b2 != b1;
                if (m2) {
                    const uint8_t *rec = rec_ptr(s, b2->refs[__builtin_ctz(m2)]);
                    lines_add(&ls, (uintptr_t)rec, (uintptr_t)rec + span);
                }
                found = lines_search(s, b2, m2, key, out_stride, &ls);
            }
            if (!found) { /* the slow path searches both buckets */
                buckets = b2 != b1 ? 2 : 1;
                if (!lines_search(s, b1, m1, key, out_stride, &ls))
                    lines_search(s, b2, match_tags_writer(b2, k.tag), key, out_stride, &ls);
            }
            bucket_lines += buckets;
            record_lines += ls.n;
            out->keys++;
        }
    }
    if (out->keys) {
        out->bucket_lines = (double)bucket_lines / (double)out->keys;
        out->record_lines = (double)record_lines / (double)out->keys;
    }
    return 0;
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

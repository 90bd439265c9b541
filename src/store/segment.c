/* Segments, TTL classes, expiry, forced reclamation and compaction. Writer only. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "dhps/log.h"
#include "store_int.h"

uint64_t store_now_ms(const dhps_store *s) { return s->clock(s->clock_arg); }
uint32_t store_now_s(const dhps_store *s) { return (uint32_t)(store_now_ms(s) / 1000); }

unsigned ttl_class_of(uint32_t ttl)
{
    if (ttl == 0)
        return 0;
    if (ttl > DHPS_STORE_MAX_TTL)
        ttl = DHPS_STORE_MAX_TTL;
    if (ttl < 128)
        return ttl;
    unsigned k = 31u - (unsigned)__builtin_clz(ttl); /* 7..21 */
    unsigned sub = (ttl >> (k - 6)) & 63u;
    return 128u + (k - 7u) * 64u + sub;
}

uint64_t store_mem_used(const dhps_store *s)
{
    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    return (uint64_t)(s->nsegs_alloc + s->free_resident) * s->seg_bytes + t->nb * sizeof(bucket) +
           s->retired_table_bytes;
}

int seg_reserve(dhps_store *s)
{
    uint64_t span = 1ull << (32 + s->align_log2);
    uint64_t cap = span;
    if (s->p.mem_limit && s->p.mem_limit + 4ull * s->seg_bytes < cap)
        cap = (s->p.mem_limit + 4ull * s->seg_bytes + s->seg_bytes - 1) & ~((uint64_t)s->seg_bytes - 1);
    s->nsegs_max = (uint32_t)(cap >> s->seg_log2);
    s->reserve_bytes = (size_t)s->nsegs_max << s->seg_log2;
    /* Reserve address space only (PROT_NONE costs no memory or commit); a segment's
     * range becomes writable when it is first used. Align to 2 MiB for huge pages. */
    size_t extra = 2u << 20;
    uint8_t *p = mmap(NULL, s->reserve_bytes + extra, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    uintptr_t a = ((uintptr_t)p + extra - 1) & ~(uintptr_t)(extra - 1);
    if (a > (uintptr_t)p)
        munmap(p, a - (uintptr_t)p);
    size_t tail = (size_t)((uintptr_t)p + s->reserve_bytes + extra - (a + s->reserve_bytes));
    if (tail)
        munmap((uint8_t *)a + s->reserve_bytes, tail);
    s->base = (uint8_t *)a;
    s->segs = calloc(s->nsegs_max, sizeof *s->segs);
    if (!s->segs) {
        munmap(s->base, s->reserve_bytes);
        s->base = NULL;
        return -ENOMEM;
    }
    s->free_head = SEG_NONE;
    s->warm_head = SEG_NONE;
    s->retired_head = SEG_NONE;
    for (unsigned i = 0; i < TTL_CLASSES; i++)
        s->open_seg[i] = s->compact_seg[i] = SEG_NONE;
    return 0;
}

void seg_release_all(dhps_store *s)
{
    if (s->base)
        munmap(s->base, s->reserve_bytes);
    free(s->segs);
    s->base = NULL;
    s->segs = NULL;
}

static uint32_t seg_alloc(dhps_store *s)
{
    uint32_t id;
    if (s->warm_head != SEG_NONE) {
        id = s->warm_head;
        s->warm_head = s->segs[id].next;
        s->segs[id].resident = 0;
        s->free_resident--;
    } else if (s->free_head != SEG_NONE) {
        id = s->free_head;
        s->free_head = s->segs[id].next;
    } else if (s->nsegs_hw < s->nsegs_max) {
        id = s->nsegs_hw++;
    } else {
        return SEG_NONE;
    }
    seg_meta *m = &s->segs[id];
    if (!m->mapped) {
        uint8_t *p = s->base + ((size_t)id << s->seg_log2);
        if (mprotect(p, s->seg_bytes, PROT_READ | PROT_WRITE) != 0) {
            m->next = s->free_head;
            s->free_head = id;
            return SEG_NONE;
        }
        if (s->p.huge_pages)
            (void)madvise(p, s->seg_bytes, MADV_HUGEPAGE);
        m->mapped = 1;
    }
    uint8_t mapped = m->mapped;
    memset(m, 0, sizeof *m);
    m->mapped = mapped;
    m->next = SEG_NONE;
    s->nsegs_alloc++;
    return id;
}

static void seg_unlink_class(dhps_store *s, uint32_t id)
{
    seg_meta *m = &s->segs[id];
    if (s->open_seg[m->ttl_class] == id)
        s->open_seg[m->ttl_class] = SEG_NONE;
    if (s->compact_seg[m->ttl_class] == id)
        s->compact_seg[m->ttl_class] = SEG_NONE;
}

void seg_retire(dhps_store *s, uint32_t id)
{
    seg_meta *m = &s->segs[id];
    seg_unlink_class(s, id);
    m->state = SEG_RETIRED;
    s->retired_used += m->used;
    m->retire_epoch = epoch_retire_stamp(s);
    m->next = s->retired_head;
    s->retired_head = id;
}

/*
 * A walk over a segment's records (compaction, dropping a segment) checks each record
 * against the index: two random buckets per record, and the segment itself streaming
 * in. The walk keeps both in flight: every line of the segment up to VICTIM_STREAM_AHEAD
 * bytes past the records it has looked at, and each record's buckets WALK_AHEAD records
 * before it is checked. The keys' hashes are kept in a ring so each is made once.
 * Prefetching every segment line, where the walk once prefetched one line per record
 * (records average ~4.4 lines in the churn benchmark), took mixed-size churn at 2 M keys
 * from ~0.8 to ~1.0-1.2 M overwrites/s (docs/PERFORMANCE.md). Measured and not kept, on
 * the same benchmark: writing relocated records with non-temporal stores (slower: the
 * 8-byte MOVNTI stream of 2-byte-aligned records and its fences cost more than the reads
 * for ownership they save), fetching the second bucket only when the first holds no
 * matching tag (no better than fetching both), 512 B to 4 KiB of stream distance and 8
 * to 20 records of bucket distance (all within noise).
 */
#define WALK_AHEAD 12u
#define WALK_RING 16u /* a power of two >= WALK_AHEAD */
#define VICTIM_STREAM_AHEAD 2048u

typedef struct walk_rec {
    uint32_t off, size;
    hkey k; /* the key and its buckets in the walk's table */
} walk_rec;

typedef struct seg_walk {
    dhps_store *s;
    const uint8_t *base;
    index_table *t; /* the table the entries' buckets belong to */
    uint32_t used, pf, pfl; /* segment bytes; next record to look at; next line to fetch */
    unsigned head, n;       /* ring entries looked at and not yet returned */
    walk_rec e[WALK_RING];
} seg_walk;

static void walk_init(seg_walk *w, dhps_store *s, uint32_t id, uint32_t from)
{
    w->s = s;
    w->base = s->base + ((size_t)id << s->seg_log2);
    w->t = atomic_load_explicit(&s->table, memory_order_relaxed);
    w->used = s->segs[id].used;
    w->pf = from;
    w->pfl = from & ~63u;
    w->head = w->n = 0;
}

/* The next record, or NULL past the end; the entry stays as it is until the next call.
 * Inline: it runs once per record walked, and a call and the copies out of the ring
 * were a fifth of its instructions. */
static inline __attribute__((always_inline)) const walk_rec *walk_next(seg_walk *w)
{
    const dhps_store *s = w->s;
    while (w->n < WALK_AHEAD && w->pf < w->used) {
        uint32_t lim = w->used - w->pf > VICTIM_STREAM_AHEAD ? w->pf + VICTIM_STREAM_AHEAD : w->used;
        for (; w->pfl < lim; w->pfl += 128) { /* two lines a turn (prefetches never fault) */
            __builtin_prefetch(w->base + w->pfl);
            __builtin_prefetch(w->base + w->pfl + 64);
        }
        const uint8_t *rec = w->base + w->pf;
        walk_rec *e = &w->e[(w->head + w->n) & (WALK_RING - 1)];
        uint64_t key = rd64(rec);
        e->off = w->pf;
        hkey_make(&e->k, key, store_hash(s, key), w->t->nb);
        __builtin_prefetch(&w->t->b[e->k.b1], 1);
        __builtin_prefetch(&w->t->b[e->k.b2], 1);
        e->size = rec_size(s, rec);
        w->pf += e->size;
        w->n++;
    }
    if (!w->n)
        return NULL;
    const walk_rec *e = &w->e[w->head];
    w->head = (w->head + 1) & (WALK_RING - 1);
    w->n--;
    return e;
}

uint64_t seg_drop_records(dhps_store *s, uint32_t id)
{
    seg_meta *m = &s->segs[id];
    uint8_t *base = s->base + ((size_t)id << s->seg_log2);
    uint64_t n = 0;
    seg_walk w;
    walk_init(&w, s, id, 0);
    const walk_rec *e;
    while (m->live_recs && (e = walk_next(&w))) {
        uint8_t *rec = base + e->off;
        uint32_t ref = seg_ref(s, id, e->off);
        uint32_t bkt;
        int slot;
        if (index_find_ref_k(w.t, &e->k, ref, &bkt, &slot) == 0) {
            index_remove(w.t, bkt, slot);
            store_unlive_sized(s, ref, e->size, rd16(rec + 8) & REC_LEN_MASK);
            n++;
        }
    }
    s->index_gen++;
    return n;
}


int64_t seg_append_new(dhps_store *s, unsigned cls, bool compact, uint32_t len, bool has_exp,
                       uint64_t version, uint16_t *lf, uint32_t *size)
{
    uint16_t flags = (uint16_t)(len | (has_exp ? REC_EXP : 0));
    uint32_t *slot = compact ? &s->compact_seg[cls] : &s->open_seg[cls];
    if (*slot != SEG_NONE) { /* full (seg_append found no room in it) */
        s->segs[*slot].state = SEG_SEALED;
        *slot = SEG_NONE;
    }
    uint32_t sz = rec_size_lf(s, flags);
    int rc = store_make_room(s, s->seg_bytes);
    if (rc)
        return rc;
    uint32_t id = seg_alloc(s);
    if (id == SEG_NONE)
        return DHPS_E_FULL;
    seg_meta *m = &s->segs[id];
    m->state = SEG_OPEN;
    m->ttl_class = (uint16_t)cls;
    m->compact_target = compact;
    m->ver_base = version;
    m->created_ms = store_now_ms(s);
    m->seq = ++s->seg_seq;
    *slot = id;
    *lf = flags;
    *size = sz;
    return seg_place(s, id, sz);
}

/* ---- expiry -------------------------------------------------------------------------- */

size_t store_expire(dhps_store *s, uint32_t now_s)
{
    size_t freed = 0;
    s->last_sweep_s = now_s;
    for (uint32_t id = 0; id < s->nsegs_hw; id++) {
        seg_meta *m = &s->segs[id];
        if ((m->state != SEG_OPEN && m->state != SEG_SEALED) || m->ttl_class == 0 ||
            m->max_exp > now_s || m->used == 0)
            continue;
        uint64_t n = seg_drop_records(s, id);
        s->st.expired_records += n;
        s->st.expired_segments++;
        seg_retire(s, id);
        freed += s->seg_bytes;
    }
    return freed;
}

/* ---- forced reclamation ---------------------------------------------------------------- */

/* The segment to give up under memory pressure: nearest expiry first, then oldest. */
static uint32_t evict_victim(dhps_store *s)
{
    uint32_t best = SEG_NONE;
    uint32_t best_exp = UINT32_MAX;
    uint64_t best_age = UINT64_MAX;
    for (uint32_t id = 0; id < s->nsegs_hw; id++) {
        seg_meta *m = &s->segs[id];
        if (m->state != SEG_SEALED && m->state != SEG_OPEN)
            continue;
        uint32_t exp = m->ttl_class ? m->max_exp : UINT32_MAX;
        if (exp < best_exp || (exp == best_exp && m->seq < best_age)) {
            best = id;
            best_exp = exp;
            best_age = m->seq;
        }
    }
    return best;
}

/* Give back the memory of free segments kept resident. Returns bytes released. */
static size_t store_release_resident(dhps_store *s)
{
    size_t freed = 0;
    while (s->warm_head != SEG_NONE) {
        uint32_t id = s->warm_head;
        seg_meta *m = &s->segs[id];
        s->warm_head = m->next;
        (void)madvise(s->base + ((size_t)id << s->seg_log2), s->seg_bytes, MADV_DONTNEED);
        m->resident = 0;
        s->free_resident--;
        m->next = s->free_head;
        s->free_head = id;
        freed += s->seg_bytes;
    }
    return freed;
}

int store_make_room(dhps_store *s, uint64_t bytes)
{
    if (!s->p.mem_limit)
        return 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (store_mem_used(s) + bytes > s->p.mem_limit) {
        if (store_release_resident(s))
            continue;
        if (store_reclaim(s))
            continue;
        if (s->retired_head == SEG_NONE) {
            if (store_expire(s, store_now_s(s)))
                continue;
            uint32_t v = evict_victim(s);
            if (v == SEG_NONE)
                return DHPS_E_FULL;
            uint64_t n = seg_drop_records(s, v);
            s->st.evicted_records += n;
            s->st.evicted_segments++;
            seg_retire(s, v);
            continue;
        }
        /* Memory is waiting for readers to leave their read sections: wait a little
         * (sections last one batch), but not for a pin held indefinitely. */
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) > 20000000L) {
            DHPS_LOG(DHPS_LOG_WARN, "store", "memory limit: retired memory still in use by readers");
            return DHPS_E_FULL;
        }
        sched_yield();
    }
    return 0;
}

/* ---- compaction ------------------------------------------------------------------------ */

static double garbage_share(const dhps_store *s)
{
    uint64_t used = s->used_bytes - s->retired_used;
    return used ? 1.0 - (double)s->live_bytes / (double)used : 0.0;
}

static uint32_t compact_victim(dhps_store *s)
{
    uint32_t best = SEG_NONE, best_live = UINT32_MAX;
    for (uint32_t id = 0; id < s->nsegs_hw; id++) {
        seg_meta *m = &s->segs[id];
        if (m->state != SEG_SEALED)
            continue;
        if (m->live < best_live) {
            best = id;
            best_live = m->live;
        }
    }
    /* Not worth it when the emptiest segment is nearly all live. */
    if (best != SEG_NONE && (double)best_live > (1.0 - s->p.fragmentation_goal / 2) * s->segs[best].used)
        return SEG_NONE;
    return best;
}

/* Move one segment's live records (from its cursor) to its class's compaction segment.
 * Returns bytes copied; sets *done when the segment was emptied and retired. */
static size_t compact_segment(dhps_store *s, uint32_t id, size_t budget, bool *done)
{
    seg_meta *m = &s->segs[id];
    uint8_t *base = s->base + ((size_t)id << s->seg_log2);
    uint32_t now = store_now_s(s);
    size_t copied = 0;
    *done = false;
    seg_walk w;
    walk_init(&w, s, id, m->cursor);
    const walk_rec *e;
    while (m->live_recs && copied < budget && (e = walk_next(&w))) {
        uint8_t *rec = base + e->off;
        uint32_t sz = e->size;
        const hkey *k = &e->k;
        m->cursor = e->off + sz;
        uint32_t ref = seg_ref(s, id, e->off);
        index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
        hkey kt;
        if (t != w.t) { /* not expected (compaction does not grow the index): look again */
            w.t = t;
            hkey_make(&kt, k->key, store_hash(s, k->key), t->nb);
            k = &kt;
        }
        uint32_t bkt;
        int slot;
        if (index_find_ref_k(t, k, ref, &bkt, &slot) != 0)
            continue;
        uint16_t lf = rd16(rec + 8);
        uint32_t len = lf & REC_LEN_MASK;
        uint32_t exp = (lf & REC_EXP) ? rd32(rec + rec_exp_off(lf)) : 0;
        if ((lf & REC_EXP) && exp <= now) {
            index_remove(t, bkt, slot);
            store_unlive_sized(s, ref, sz, len);
            s->st.expired_records++;
            continue;
        }
        uint64_t ver = rec_version(s, rec, id);
        uint64_t key = k->key;
        uint16_t nlf;
        uint32_t nsz;
        uint64_t gen = s->index_gen;
        int64_t nref = seg_append(s, m->ttl_class, true, len, lf & REC_EXP, ver, &nlf, &nsz);
        if (nref < 0) { /* no room to move into: this record waits for a later call */
            m->cursor = e->off;
            return copied;
        }
        if (s->index_gen != gen || m->state != SEG_SEALED) {
            /* reclamation ran; the victim or the entry may be gone: re-check */
            if (m->state != SEG_SEALED)
                return copied;
            if (index_find_ref(s, key, ref, &bkt, &slot) != 0)
                continue; /* the space appended stays as garbage in the target */
            t = atomic_load_explicit(&s->table, memory_order_relaxed);
        }
        uint8_t *dst = rec_ptr(s, (uint32_t)nref);
        seg_meta *tm = &s->segs[seg_of_ref(s, (uint32_t)nref)];
        if (nlf == lf) { /* the same header layout: one copy, then the version's delta */
            memcpy(dst, rec, rec_hdr_size(lf) + len);
            if (!(lf & REC_WIDE))
                wr32(dst + 10, (uint32_t)(int32_t)(int64_t)(ver - tm->ver_base));
            if ((lf & REC_EXP) && exp > tm->max_exp)
                tm->max_exp = exp;
        } else {
            rec_write_header_m(tm, dst, key, nlf, ver, exp);
            memcpy(dst + rec_hdr_size(nlf), rec + rec_hdr_size(lf), len);
        }
        __atomic_store_n(&t->b[bkt].refs[slot], (uint32_t)nref, __ATOMIC_RELEASE);
        store_move_live(s, m, tm, sz, nsz);
        copied += sz;
        s->st.compaction_bytes += sz;
    }
    if (m->live_recs == 0 || m->cursor >= m->used) {
        seg_retire(s, id);
        s->st.compacted_segments++;
        *done = true;
    }
    return copied;
}

size_t store_compact(dhps_store *s, size_t budget)
{
    size_t copied = 0;
    static const size_t unlimited = SIZE_MAX;
    if (budget == 0)
        budget = unlimited;
    while (copied < budget && garbage_share(s) > s->p.fragmentation_goal) {
        uint32_t v = compact_victim(s);
        if (v == SEG_NONE)
            break;
        bool done;
        size_t c = compact_segment(s, v, budget - copied, &done);
        copied += c;
        if (!done && c == 0)
            break;
        if (done)
            store_reclaim(s);
    }
    return copied;
}

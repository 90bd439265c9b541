/* Private to the store module: layouts and helpers shared by its .c files. */
#ifndef DHPS_STORE_INT_H
#define DHPS_STORE_INT_H

#include <assert.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "dhps/store.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__SANITIZE_THREAD__)
#define DHPS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DHPS_TSAN 1
#endif
#endif

/* Fences. TSan does not model stand-alone fences (gcc warns -Wtsan), so under TSan the
 * seq_cst fence becomes a seq_cst read-modify-write of a per-store word and the
 * acquire/release fences are dropped: every access they order is itself atomic there
 * (copy_sync, __atomic loads and stores), which is what TSan checks. */
#ifdef DHPS_TSAN
#define FENCE_ACQ() ((void)0)
#define FENCE_REL() ((void)0)
#define FENCE_SC(s) ((void)atomic_fetch_add_explicit(&(s)->fence_word, 0, memory_order_seq_cst))
#else
#define FENCE_ACQ() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define FENCE_REL() __atomic_thread_fence(__ATOMIC_RELEASE)
#define FENCE_SC(s) ((void)(s), __atomic_thread_fence(__ATOMIC_SEQ_CST))
#endif

#define CACHELINE 64
#define SLOTS 12

/* One bucket is one cache line: tags, seqlock version, record references. A tag of 0
 * marks an empty slot. version is odd while the writer moves an entry out of or into
 * this bucket or rewrites a record it references in place. */
typedef struct bucket {
    uint8_t tags[SLOTS];
    uint32_t version;
    uint32_t refs[SLOTS];
} __attribute__((aligned(CACHELINE))) bucket;
static_assert(sizeof(bucket) == 64, "a bucket is one cache line");
static_assert(offsetof(bucket, version) == 12, "tags then version fill 16 bytes");
static_assert(offsetof(bucket, refs) == 16, "refs fill the last 48 bytes");

typedef struct index_table {
    bucket *b;
    uint64_t nb;        /* buckets (any count >= 2, < 2^32) */
    uint64_t used;      /* occupied slots (writer only) */
    size_t map_bytes;   /* length of the mapping */
} index_table;

/* ---- records ------------------------------------------------------------------------
 * off 0  u64 key
 * off 8  u16 lf: bits 0..13 value length, bit 14 WIDE (8-byte version), bit 15 EXP
 * off 10 i32 version delta from the segment's ver_base, or u64 version if WIDE
 * then   u32 expiry second if EXP
 * then   value
 * Records start at multiples of 2^align_log2 bytes, so reads use memcpy (unaligned).
 * A filler record (what a shorter value rewritten in place frees, put.c) is a bare
 * header: the key of the record before it, no flags, its length the freed bytes past
 * REC_BASE_HDR. No index entry points at it, so walks see it as dead like any other. */
#define REC_WIDE 0x4000u
#define REC_EXP 0x8000u
#define REC_LEN_MASK 0x3FFFu
#define REC_BASE_HDR 14u

static inline uint64_t rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void wr64(void *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void wr32(void *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr16(void *p, uint16_t v) { memcpy(p, &v, 2); }

/* Reads and writes of record bytes that an in-place update may change while readers
 * copy them (the bucket seqlock detects the overlap). Under TSan they are relaxed atomic
 * byte accesses, so the sanitizer checks the protocol instead of flagging the race. */
static inline void copy_sync(void *dst, const void *src, size_t n)
{
#ifdef DHPS_TSAN
    for (size_t i = 0; i < n; i++)
        __atomic_store_n((uint8_t *)dst + i, __atomic_load_n((const uint8_t *)src + i, __ATOMIC_RELAXED),
                         __ATOMIC_RELAXED);
#else
    memcpy(dst, src, n);
#endif
}
static inline uint32_t rd32_sync(const void *p) { uint32_t v; copy_sync(&v, p, 4); return v; }
/* A record's length-and-flags as a reader sees it (a shorter value rewritten in place
 * changes its length under the seqlock). */
static inline uint16_t rd16_sync(const void *p) { uint16_t v; copy_sync(&v, p, 2); return v; }

static inline uint32_t rec_hdr_size(uint16_t lf)
{
    static_assert(REC_WIDE == 1u << 14 && REC_EXP == 1u << 15, "flag bits 14 and 15");
    return REC_BASE_HDR + ((lf >> 12) & 4u) + ((lf >> 13) & 4u); /* +4 per flag set */
}
static inline uint32_t rec_exp_off(uint16_t lf) { return (lf & REC_WIDE) ? 18u : 14u; }

/* ---- segments ------------------------------------------------------------------------ */
enum seg_state { SEG_FREE = 0, SEG_OPEN, SEG_SEALED, SEG_RETIRED };
#define SEG_NONE UINT32_MAX
#define FREE_RESIDENT_MAX 4u /* freed segments kept resident for reuse */
#define TTL_CLASSES (128u + 15u * 64u) /* class 0: no TTL; 1..127 exact; 64 per octave */

typedef struct seg_meta {
    uint32_t used;          /* bytes appended */
    uint32_t live;          /* bytes of records the index references */
    uint32_t live_recs;
    uint32_t max_exp;       /* greatest expiry second of its records (TTL classes) */
    uint64_t ver_base;      /* version of its first record */
    uint64_t created_ms;
    uint64_t seq;           /* creation order, for oldest-first eviction */
    uint64_t retire_epoch;
    uint32_t next;          /* free-list / retired-list link */
    uint32_t cursor;        /* compaction progress */
    uint16_t ttl_class;
    uint8_t state;
    uint8_t compact_target; /* opened as a compaction destination */
    uint8_t mapped;         /* pages made writable once */
    uint8_t resident;       /* FREE but its memory kept (not MADV_DONTNEED'd) */
    uint8_t pad[2];
} seg_meta;

typedef struct dhps_store_reader reader_slot;
struct dhps_store_reader {
    _Atomic uint64_t epoch; /* 0: outside any read section */
    _Atomic uint32_t in_use;
    uint32_t pinned;        /* owner-only: holds a zero-copy pin */
    struct dhps_store *store;
    uint64_t retries;       /* owner-only, summed into stats when closed */
    char pad[CACHELINE - 32];
} __attribute__((aligned(CACHELINE)));
static_assert(sizeof(struct dhps_store_reader) == CACHELINE, "one reader per line");

typedef struct retired_table {
    index_table *t;
    uint64_t epoch;
    struct retired_table *next;
} retired_table;

struct dhps_store {
    dhps_store_identity id; /* what the store holds (writer: set, snapshot, load) */
    bool has_id;
    /* read-mostly, shared with readers */
    _Atomic(index_table *) table;
    uint8_t *base;          /* reserved record range */
    uint32_t align_log2;
    uint32_t seg_log2;
    dhps_clock_fn clock;
    void *clock_arg;
    uint64_t seed;
    reader_slot *readers;
    uint32_t max_readers;
    char pad0[CACHELINE];

    _Atomic uint64_t global_epoch;
    char pad1[CACHELINE - 8];
    _Atomic uint32_t zc_pins;       /* readers holding zero-copy pins */
    _Atomic uint32_t reader_hw;     /* highest reader slot ever used + 1 */
    _Atomic uint64_t reader_retries;/* folded in from closed readers */
    _Atomic uint64_t fence_word;    /* FENCE_SC under TSan */
    char pad2[CACHELINE - 24];

    /* writer-owned */
    dhps_store_params p;
    size_t reserve_bytes;
    uint32_t seg_bytes;
    uint32_t nsegs_max;
    uint32_t nsegs_hw;      /* segment ids below this have been used */
    uint32_t free_head;     /* FREE segments whose memory was given back (cold) */
    uint32_t warm_head;     /* FREE segments kept resident (free_resident of them): reused
                               first, so a reuse costs no page fault or zeroing */
    uint32_t retired_head;
    uint32_t nsegs_alloc;   /* OPEN + SEALED + RETIRED */
    uint32_t free_resident; /* FREE segments whose memory is kept */
    seg_meta *segs;
    uint32_t open_seg[TTL_CLASSES];
    uint32_t compact_seg[TTL_CLASSES];
    retired_table *retired_tables;
    uint64_t retired_table_bytes;
    uint64_t live_bytes, payload_bytes, keys;
    uint64_t used_bytes;    /* bytes appended in OPEN/SEALED/RETIRED segments */
    uint64_t retired_used;  /* of which in RETIRED segments */
    uint64_t seg_seq;
    uint64_t grow_refused_nb; /* table size whose growth the limit refused (logged once) */
    uint64_t index_gen;     /* bumped when maintenance removes or moves entries */
    uint64_t last_sweep_s;
    size_t pending_garbage; /* garbage bytes created since the last compaction check */
    dhps_store_stats st;    /* event counters */
};

/* ---- index (index.c) ------------------------------------------------------------------ */
typedef struct hkey {
    uint64_t key;
    uint32_t b1, b2;
    uint8_t tag;
} hkey;

/* The index hash: splitmix64's finalizer (a bijection with full avalanche: 2 multiplies,
 * 3 shift-xors) of the key xor the store's random seed. Tag and first bucket come from
 * its top byte and low 32 bits. Inline: it runs once per key of every lookup and
 * upsert. Internal to the process (never stored), so it may change freely. */
static inline uint64_t store_hash(const dhps_store *s, uint64_t key)
{
    uint64_t x = key ^ s->seed;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline uint32_t fastrange32(uint32_t x, uint64_t n) { return (uint32_t)(((uint64_t)x * n) >> 32); }
static inline uint32_t alt_bucket(uint32_t b, uint8_t tag, uint64_t nb)
{
    uint32_t f = fastrange32((uint32_t)tag * 0x9E3779B1u, nb);
    return f >= b ? f - b : (uint32_t)(f + nb - b);
}
/* A key's tag: the hash's top byte, never 0 (0 marks an empty slot). */
static inline uint8_t hash_tag(uint64_t h)
{
    uint8_t tag = (uint8_t)(h >> 56);
    return tag ? tag : 1;
}
static inline void hkey_make(hkey *k, uint64_t key, uint64_t h, uint64_t nb)
{
    k->key = key;
    k->tag = hash_tag(h);
    k->b1 = fastrange32((uint32_t)h, nb);
    k->b2 = alt_bucket(k->b1, k->tag, nb);
}

/* One key's state in the lookup pipeline (lookup_impl.h). */
typedef struct lk_state {
    uint64_t key;
    const bucket *b1;   /* first bucket */
    const bucket *hb;   /* the bucket of the candidate record; the second bucket while
                           it is still to be read */
    const uint8_t *rec; /* candidate record: the first tag hit's; NULL: no tag hit in
                           either bucket */
    uint32_t hv;        /* hb's version as read */
    uint32_t v1;        /* the first bucket's version when the second was read */
    uint32_t m;         /* tag hits in hb (0 while the second bucket is to be read) */
    uint8_t tag;
} lk_state;

static inline uint8_t *rec_ptr(const dhps_store *s, uint32_t ref)
{
    return s->base + ((uint64_t)ref << s->align_log2);
}
static inline uint32_t seg_of_ref(const dhps_store *s, uint32_t ref)
{
    return (uint32_t)(((uint64_t)ref << s->align_log2) >> s->seg_log2);
}
/* The ref of the record at byte off of segment id. */
static inline uint32_t seg_ref(const dhps_store *s, uint32_t id, uint32_t off)
{
    return (uint32_t)((((uint64_t)id << s->seg_log2) + off) >> s->align_log2);
}

/* Tag match: bit i set where bucket tag i equals tag (12 bits). The writer's (and the
 * walks'); readers use the variants compiled into lookup_impl.h. */
static inline uint32_t match_tags_writer(const bucket *b, uint8_t tag)
{
#if defined(__x86_64__) && !defined(DHPS_TSAN)
    __m128i v = _mm_load_si128((const __m128i *)b);
    return (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8((char)tag))) & 0xFFFu;
#else
    uint32_t m = 0;
    for (int i = 0; i < SLOTS; i++)
        m |= (uint32_t)(__atomic_load_n(&b->tags[i], __ATOMIC_RELAXED) == tag) << i;
    return m;
#endif
}

index_table *index_create(uint64_t nb, bool huge);
void index_free(index_table *t);
/* Find key: returns 0 and bucket/slot, or -1. Writer only. */
int index_find(dhps_store *s, index_table *t, const hkey *k, uint32_t *bkt, int *slot);
/* Insert a new key's ref; returns 0 or DHPS_E_FULL when no place within the bounded
 * search (caller grows). Writer only. */
int index_insert(dhps_store *s, index_table *t, const hkey *k, uint32_t ref);
/* Remove slot (writer). */
void index_remove(index_table *t, uint32_t bkt, int slot);
/* Grow to hold at least `want` keys. Returns 0, DHPS_E_FULL (memory limit), -ENOMEM. */
int index_grow(dhps_store *s, uint64_t want);
/* Find the slot whose ref equals ref for key (liveness check). 0, or -1 when none. */
int index_find_ref(dhps_store *s, uint64_t key, uint32_t ref, uint32_t *bkt, int *slot);

/* The slot of bucket b holding ref under tag, or -1. A removed slot keeps its ref with
 * tag 0, so both must match. Writer only (the walks run it once per record). */
static inline int bucket_find_ref(const bucket *b, uint8_t tag, uint32_t ref)
{
#if defined(__x86_64__) && !defined(DHPS_TSAN)
    __m128i r = _mm_set1_epi32((int)ref);
    const __m128i *p = (const __m128i *)b->refs;
    uint32_t m = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p), r))) |
                 (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p + 1), r))) << 4 |
                 (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p + 2), r))) << 8;
    if (!m)
        return -1;
    m &= match_tags_writer(b, tag);
    return m ? __builtin_ctz(m) : -1;
#else
    for (uint32_t m = match_tags_writer(b, tag); m; m &= m - 1)
        if (b->refs[__builtin_ctz(m)] == ref)
            return __builtin_ctz(m);
    return -1;
#endif
}

/* index_find_ref with the key's buckets and tag already made for table t. */
static inline int index_find_ref_k(const index_table *t, const hkey *k, uint32_t ref,
                                   uint32_t *bkt, int *slot)
{
    int i = bucket_find_ref(&t->b[k->b1], k->tag, ref);
    if (i >= 0) {
        *bkt = k->b1;
        *slot = i;
        return 0;
    }
    i = bucket_find_ref(&t->b[k->b2], k->tag, ref);
    if (i >= 0) {
        *bkt = k->b2;
        *slot = i;
        return 0;
    }
    return -1;
}

/* Set once before any reader exists (store.c): membarrier(PRIVATE_EXPEDITED) is
 * registered, so a pinning reader fences the writer and the writer's side of the
 * pin handshake needs no fence of its own. */
extern bool store_membarrier;

/* ---- epochs (epoch.c) ------------------------------------------------------------------ */
static inline void reader_enter(dhps_store *s, reader_slot *r)
{
    uint64_t e = atomic_load_explicit(&s->global_epoch, memory_order_acquire);
    atomic_store_explicit(&r->epoch, e, memory_order_seq_cst);
}
static inline void reader_exit(reader_slot *r)
{
    atomic_store_explicit(&r->epoch, 0, memory_order_release);
}
/* Writer: the epoch to stamp on something just unlinked; advances the global epoch. */
uint64_t epoch_retire_stamp(dhps_store *s);
/* Writer: oldest epoch any reader may still be in (UINT64_MAX if none). */
uint64_t epoch_min_active(dhps_store *s);
/* Writer: free retired segments and tables no reader can see. Returns bytes freed. */
size_t store_reclaim(dhps_store *s);

/* ---- segments (segment.c) ------------------------------------------------------------- */
unsigned ttl_class_of(uint32_t ttl);
/* Reserve space for a record (value length len, expiry if has_exp) in class cls
 * (its compaction segment if compact), sized for how `version` encodes there. Sets
 * *lf (length and flags) and *size; returns the ref, or DHPS_E_FULL. May run forced
 * reclamation (which bumps index_gen). */
int64_t seg_append_new(dhps_store *s, unsigned cls, bool compact, uint32_t len, bool has_exp,
                       uint64_t version, uint16_t *lf, uint32_t *size);
/* The bytes of a record with length-and-flags lf in its segment, padding included. */
static inline uint32_t rec_size_lf(const dhps_store *s, uint16_t lf)
{
    uint32_t a = 1u << s->align_log2;
    return (rec_hdr_size(lf) + (lf & REC_LEN_MASK) + a - 1) & ~(a - 1);
}
/* Take size bytes at the end of segment id (which has room); returns their ref. */
static inline int64_t seg_place(dhps_store *s, uint32_t id, uint32_t size)
{
    seg_meta *m = &s->segs[id];
    uint32_t off = m->used;
    m->used += size;
    s->used_bytes += size;
    return seg_ref(s, id, off);
}
static inline int64_t seg_append(dhps_store *s, unsigned cls, bool compact, uint32_t len,
                                 bool has_exp, uint64_t version, uint16_t *lf, uint32_t *size)
{
    uint32_t id = compact ? s->compact_seg[cls] : s->open_seg[cls];
    if (id != SEG_NONE) { /* the common case, inline: the class's segment has room */
        const seg_meta *m = &s->segs[id];
        int64_t d = (int64_t)(version - m->ver_base);
        uint16_t f = (uint16_t)(len | (has_exp ? REC_EXP : 0) |
                                ((d < INT32_MIN || d > INT32_MAX) ? REC_WIDE : 0));
        uint32_t sz = rec_size_lf(s, f);
        if (m->used + sz <= s->seg_bytes) {
            *lf = f;
            *size = sz;
            return seg_place(s, id, sz);
        }
    }
    return seg_append_new(s, cls, compact, len, has_exp, version, lf, size); /* seals it */
}
/* Write a record header at rec for a record placed by seg_append in segment m. */
static inline void rec_write_header_m(seg_meta *m, uint8_t *rec, uint64_t key, uint16_t lf,
                                      uint64_t version, uint32_t exp)
{
    wr64(rec, key);
    wr16(rec + 8, lf);
    if (lf & REC_WIDE)
        wr64(rec + 10, version);
    else
        wr32(rec + 10, (uint32_t)(int32_t)(int64_t)(version - m->ver_base));
    if (lf & REC_EXP) {
        wr32(rec + rec_exp_off(lf), exp);
        if (exp > m->max_exp)
            m->max_exp = exp;
    }
}
/* The same, the segment found from the record's ref. */
static inline void rec_write_header(dhps_store *s, uint8_t *rec, uint32_t ref, uint64_t key,
                                    uint16_t lf, uint64_t version, uint32_t exp)
{
    rec_write_header_m(&s->segs[seg_of_ref(s, ref)], rec, key, lf, version, exp);
}
/* The live-data accounting of a record entering the index: its padded size `size` and
 * value length len. The counters are updated one field at a time: left alone, the
 * compiler merged neighbouring updates into one 16-byte load and store in some callers
 * and not in others, and a 16-byte load of fields just written by two 8-byte stores
 * cannot be served from the store buffer (it waits for every earlier store to reach the
 * cache, among them those of a record just copied to lines not yet fetched). */
#define STORE_COUNTER_SEP() __asm__ volatile("" ::: "memory")
static inline void store_live_sized(dhps_store *s, uint32_t ref, uint32_t size, uint32_t len)
{
    seg_meta *m = &s->segs[seg_of_ref(s, ref)];
    m->live += size;
    STORE_COUNTER_SEP();
    m->live_recs++;
    STORE_COUNTER_SEP();
    s->live_bytes += size;
    STORE_COUNTER_SEP();
    s->payload_bytes += 8u + len;
    STORE_COUNTER_SEP();
    s->keys++;
}
/* The same for a record leaving the index (overwrite, delete, drop). */
static inline void store_unlive_sized(dhps_store *s, uint32_t ref, uint32_t size, uint32_t len)
{
    seg_meta *m = &s->segs[seg_of_ref(s, ref)];
    m->live -= size;
    STORE_COUNTER_SEP();
    m->live_recs--;
    STORE_COUNTER_SEP();
    s->live_bytes -= size;
    STORE_COUNTER_SEP();
    s->payload_bytes -= 8u + len;
    STORE_COUNTER_SEP();
    s->keys--;
}
/* The accounting of a record moved from segment from (size bytes) to segment to (nsize
 * bytes): the store's key and payload counts do not change. */
static inline void store_move_live(dhps_store *s, seg_meta *from, seg_meta *to, uint32_t size,
                                   uint32_t nsize)
{
    from->live -= size;
    STORE_COUNTER_SEP();
    from->live_recs--;
    STORE_COUNTER_SEP();
    to->live += nsize;
    STORE_COUNTER_SEP();
    to->live_recs++;
    STORE_COUNTER_SEP();
    s->live_bytes = s->live_bytes + nsize - size;
}
/* A record's version (its segment's base plus the delta, or the wide version). */
static inline uint64_t rec_version(const dhps_store *s, const uint8_t *rec, uint32_t seg)
{
    uint16_t lf = rd16(rec + 8);
    if (lf & REC_WIDE)
        return rd64(rec + 10);
    return s->segs[seg].ver_base + (uint64_t)(int64_t)(int32_t)rd32(rec + 10);
}
/* A record's bytes in its segment, padding included. */
static inline uint32_t rec_size(const dhps_store *s, const uint8_t *rec)
{
    return rec_size_lf(s, rd16(rec + 8));
}
static inline void store_live(dhps_store *s, uint32_t ref, const uint8_t *rec)
{
    store_live_sized(s, ref, rec_size(s, rec), rd16(rec + 8) & REC_LEN_MASK);
}
static inline void store_unlive(dhps_store *s, uint32_t ref, const uint8_t *rec)
{
    store_unlive_sized(s, ref, rec_size(s, rec), rd16(rec + 8) & REC_LEN_MASK);
}
void seg_retire(dhps_store *s, uint32_t id);
int seg_reserve(dhps_store *s);
void seg_release_all(dhps_store *s);
/* Drop from the index every record of segment id it still references; returns count. */
uint64_t seg_drop_records(dhps_store *s, uint32_t id);
uint32_t store_now_s(const dhps_store *s);
uint64_t store_now_ms(const dhps_store *s);
/* Bytes of memory under the limit: segments plus index tables. */
uint64_t store_mem_used(const dhps_store *s);
/* Free space for one more segment under the memory limit: expiry, then forced
 * reclamation. Returns 0 or DHPS_E_FULL. */
int store_make_room(dhps_store *s, uint64_t bytes);
size_t store_expire(dhps_store *s, uint32_t now_s);
size_t store_compact(dhps_store *s, size_t budget);

/* ---- snapshot images (snapshot.c, export.c) -------------------------------------------
 * Layout in snapshot.c's head comment and docs/store.md. */
#define SNAP_MAGIC "DHPSSNAP"
#define SNAP_END "DHPSEND1"
#define SNAP_BLK "BLK1"
#define SNAP_FORMAT 2u      /* written; 1 (no identity block) is still read */
#define SNAP_HDR 64u        /* the fixed header */
#define SNAP_ID_BYTES 128u  /* format 2: identity block after the header */
#define SNAP_DATA_OFF(p) (rd32((p) + 12)) /* header + identity: where blocks start (verified) */
#define SNAP_TRAILER 32u
#define BLK_HDR 16u
#define SNAP_REC_HDR 22u
#define SNAP_BLOCK_TARGET (64u << 10)

/* Called for each record of a walk; a non-zero return stops the walk and is returned. */
typedef int (*store_visit_fn)(void *arg, uint64_t key, uint64_t version, uint32_t ttl_left_s,
                              const uint8_t *val, uint32_t len);
/* Writer: visit every live, unexpired record in index order; with range_mask, only keys
 * whose dhps_store_key_range(key, nranges) bit is set. Prefetches records ahead (their
 * value lines too when values is true and no mask filters them). */
int store_walk(dhps_store *s, const uint64_t *range_mask, uint32_t nranges, bool values,
               store_visit_fn fn, void *arg);

/* Where an image goes: write appends n bytes; finish receives the final 64-byte header
 * (record count and hash set) to put at offset 0. Both return 0 or a negative error. */
typedef struct snap_sink {
    int (*write)(void *arg, const void *p, size_t n);
    int (*finish)(void *arg, const uint8_t *hdr);
    void *arg;
} snap_sink;
/* Writer: write an image of the selected records (version >= min_version) to k (one
 * writer for files and buffers). Returns 0 (and *records if non-NULL) or the first error
 * of the sink. */
int snap_write(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
               uint64_t min_version, const snap_sink *k, uint64_t *records);
/* Verify a whole image: records, or DHPS_E_CORRUPT / DHPS_E_VERSION. */
long snap_verify(const uint8_t *p, size_t n);
/* 0 when the (verified) image may be given to s: s or the image names no data, or both
 * name the same (dhps_store_identity_match); DHPS_E_MISMATCH (logged) otherwise. */
int snap_check_identity(const dhps_store *s, const uint8_t *p, size_t n);
/* Writer: upsert the records of a verified image (export.c). skip may be NULL; st may
 * be NULL. Returns records applied or a negative error (earlier batches applied). */
long snap_apply(dhps_store *s, const uint8_t *p, size_t n,
                bool (*skip)(void *arg, uint64_t key, uint64_t version), void *arg,
                dhps_store_merge_stats *st);
uint64_t store_wall_ms(void);

#endif

/*
 * Internal interface of `dhps-bench store` (not installed; shared by store_bench.c,
 * the harness, store_dhps.c, the dhps contender, and store_peers.cc, the peers; the C
 * parts' own types are in store_run.h).
 *
 * Every contender is a const ops table driven by one harness, so all of them run the
 * very same loops: the harness generates the values of a batch outside the timed
 * region, times one call per batch (upsert or lookup) with CLOCK_MONOTONIC, and
 * verifies results outside the timed region. A contender only maps keys to values.
 *
 * Each contender runs in its own forked child process, one after another, so its
 * memory is measured alone: RSS before create() and after loading, as a delta.
 */
#ifndef DHPS_BENCH_STORE_BENCH_H
#define DHPS_BENCH_STORE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BENCH_ERR_LEN 200

/* What a contender needs to know about the run. */
typedef struct bench_store_cfg {
    uint64_t keys;        /* table size N */
    uint32_t value_bytes; /* B: the value length of loads, lookups and updates */
    uint32_t batch;       /* K: keys per upsert / lookup call */
    uint32_t max_value;   /* largest value an upsert will pass (B, or 512 with churn) */
    bool huge_pages;      /* madvise(MADV_HUGEPAGE) large arrays (every contender) */
    double frag_goal;     /* dhps's fragmentation_goal (0: the store's default) */
} bench_store_cfg;

/* Structure statistics a contender may know about itself. */
typedef struct bench_kv_stats {
    bool known;             /* false: the contender has no stats op */
    uint64_t index_bytes;   /* bytes of the index table */
    uint64_t payload_bytes; /* key + value bytes of live records, by the contender */
    uint64_t segment_bytes; /* bytes of value storage allocated */
    uint64_t keys;
    double fragmentation;   /* 1 - live / allocated value storage */
    double load_factor;
    uint64_t inplace_updates, inplace_shrinks, compacted_segments, index_grows;
    uint64_t compaction_bytes; /* live record bytes compaction moved so far */
    uint64_t live_bytes;       /* bytes of live records, headers included (0: unknown) */
} bench_kv_stats;

/*
 * A contender. All functions run in the contender's child, single-threaded.
 * err receives a one-line message (BENCH_ERR_LEN bytes) whenever a call fails.
 */
typedef struct bench_contender {
    const char *id;            /* --only name */
    const char *label;         /* table label */
    const char *lookup2_label; /* label of a second lookup variant, or NULL */
    const char *describe;      /* one line for --help: how it stores values */
    bool churn;                /* supports variable lengths and TTLs (--churn) */

    /* Process-wide setup whose memory is not the structure's (e.g. DPDK's EAL); runs
     * before the RSS baseline. May be NULL. Returns 0 or -1. */
    int (*init)(const bench_store_cfg *cfg, char *err);
    /* Create an empty structure pre-sized for cfg->keys keys. Returns 0 or -1. */
    int (*create)(const bench_store_cfg *cfg, void **ctx, char *err);
    /* Insert or overwrite n keys; value i at vals + i*stride, of lens[i] bytes (lens
     * NULL: cfg->value_bytes each); version increases from call to call; ttl is
     * seconds (0: none). Returns 0 or -1. */
    int (*upsert)(void *ctx, const uint64_t *keys, size_t n, const uint8_t *vals,
                  size_t stride, const uint32_t *lens, uint32_t ttl, uint64_t version,
                  char *err);
    /* Look n keys up, copying each value to out + i*stride (at most stride bytes, the
     * rest of the row zero-filled; a miss zero-fills the row), setting bit i of found
     * ((n+63)/64 words) and lens[i] (if lens) for a hit. Returns the number found.
     * Peers support only stride == cfg->value_bytes. */
    size_t (*lookup)(void *ctx, const uint64_t *keys, size_t n, uint8_t *out,
                     size_t stride, uint32_t *lens, uint64_t *found);
    /* Second lookup variant with the same contract, or NULL. */
    size_t (*lookup2)(void *ctx, const uint64_t *keys, size_t n, uint8_t *out,
                      size_t stride, uint32_t *lens, uint64_t *found);
    /* Statistics, or NULL. */
    void (*stats)(void *ctx, bench_kv_stats *st);
    /* Cache lines a lookup (copying value_bytes) reads per present key, counted from the
     * structure's layout, not measured: *index in the index (buckets, key store), *data
     * in the value (dhps: the record, key and header included). NULL if not known. */
    void (*lines)(void *ctx, double *index, double *data);
    /* Free everything create() made; NULL allowed. */
    void (*destroy)(void *ctx);
    /* Process-wide teardown after destroy, or NULL. */
    void (*fini)(void);
} bench_contender;

/* Peers (store_peers.cc). */
const bench_contender *bench_peer_unordered_map(void);
const bench_contender *bench_peer_absl(void);
const bench_contender *bench_peer_rte_hash(void);

/*
 * Memory for large arrays (value slabs, tables): mmap'd anonymous memory, with
 * madvise(MADV_HUGEPAGE) when huge is true, so a slab gets the same transparent huge
 * pages dhps asks for its segments. Returns NULL on failure (errno set). Pages are
 * not touched: RSS grows as they are written.
 */
void *bench_map(size_t bytes, bool huge);
void bench_unmap(void *p, size_t bytes);

/* Resident set size of this process in bytes (/proc/self/statm), 0 if unreadable. */
uint64_t bench_rss_bytes(void);

/* ---- deterministic values ------------------------------------------------------ */

/* splitmix64's finalizer: a bijection on 64-bit words. */
static inline uint64_t bench_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* splitmix64: next pseudo-random word of the stream *state. */
static inline uint64_t bench_rand64(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return bench_mix64(*state);
}

/*
 * The value of `key` written by generation `gen` (0: load, then one per update
 * batch), len bytes: a Weyl sequence of 8-byte words seeded by key, gen and len, so
 * every (key, gen) pair has distinct bytes and any copy can be checked without
 * storing the values.
 */
static inline void bench_value_fill(uint8_t *dst, uint64_t key, uint64_t gen, size_t len)
{
    uint64_t w = bench_mix64(key ^ bench_mix64(gen * 0x9e3779b97f4a7c15ull + len));
    size_t j = 0;
    for (; j + 8 <= len; j += 8) {
        memcpy(dst + j, &w, 8);
        w += 0xd1b54a32d192ed03ull;
    }
    if (j < len)
        memcpy(dst + j, &w, len - j);
}

#ifdef __cplusplus
}
#endif
#endif

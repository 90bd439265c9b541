/*
 * dhps store: an in-memory embedding store (u64 key -> byte value, usually a fixed
 * dimension fp32/fp16 vector) built for batched lookups at memory speed.
 *
 * Design (measurements behind the constants are in docs/store.md and
 * docs/PERFORMANCE.md):
 *
 * Index. A 2-choice bucketized cuckoo hash. A bucket is one 64-byte cache line:
 *   12 one-byte tags | 4-byte seqlock version | 12 x 32-bit record references.
 *   A lookup loads one line per candidate bucket, compares the 12 tags with one SIMD
 *   compare (AVX2 compares both candidate buckets at once, SSE2 one each, scalar
 *   fallback) and follows only tag hits. The second bucket is derived from the first
 *   and the tag (b2 = (F(tag) - b1) mod nbuckets, an involution), so the bucket count
 *   need not be a power of two and the table can be sized to the key count: at the
 *   default 93 % fill that is 5.7 bytes of index per key. Displacement uses a bounded
 *   BFS; a table that cannot place a key grows by rebuilding beside the old one
 *   (readers keep using the old table until one pointer swing), or, when a memory limit
 *   forbids growth, the insert fails with DHPS_E_FULL.
 *
 * Records. Key-in-value: key, length, version and (for records with a TTL) expiry live
 *   beside the value, so the key check costs no extra cache miss. Records are appended
 *   to segments (default 2 MiB, huge-page backed) and referenced as 32-bit offsets into
 *   one reserved address range, in units of 2^record_align_log2 bytes (default 2:
 *   8 GiB of records per store; use more shards for more). A header is 14 bytes
 *   (u64 key, u16 length+flags, i32 version delta from the segment's base), +4 for a
 *   record with a TTL (u32 expiry second), +4 when a version does not fit the delta.
 *
 * Updates. One writer per store. An upsert whose version is lower than the stored
 *   version is ignored and reported. An overwrite by a value no longer than the stored
 *   one, in the same TTL layer, that does not extend the record's expiry is done in
 *   place under the bucket's seqlock (readers validate and retry), unless a zero-copy
 *   pin is outstanding; a shorter value leaves the bytes it frees as garbage (or appends
 *   when they are fewer than a record header). Anything else appends a new record and
 *   swings the reference, leaving the old record as garbage that compaction reclaims.
 *
 * TTL layers. Records with a TTL are appended to segments of their TTL class (exact
 *   below 128 s, then 64 classes per power of two), so a segment's records expire
 *   close together; a segment whose last record expired is freed whole. A lookup
 *   checks the record's own expiry: a record is never returned at or after its expiry
 *   second. Under a memory limit, forced reclamation frees the segments nearest expiry
 *   first, then the oldest; their live keys are removed from the index.
 *
 * Compaction. Bounded steps copy live records out of the segments with the least live
 *   data into the TTL class's compaction segment and free the source; writes trigger
 *   steps in proportion to the garbage they create, keeping fragmentation
 *   (1 - live bytes / segment bytes) under the configured goal (default 4 %).
 *
 * Concurrency. Any number of readers, each with its own dhps_store_reader handle, run
 *   lock-free beside the one writer. Memory (segments, old index tables) is freed only
 *   after every reader that could see it has left its read section (epoch-based
 *   reclamation). All dhps_store_* calls that change the store must come from one
 *   thread at a time (the writer); reader calls may run on any number of threads,
 *   one thread per reader handle at a time.
 */
#ifndef DHPS_STORE_H
#define DHPS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_store dhps_store;
typedef struct dhps_store_reader dhps_store_reader;

/* A clock in milliseconds (any epoch, monotonic non-decreasing). NULL arg allowed. */
typedef uint64_t (*dhps_clock_fn)(void *arg);

/* Largest value a record can hold, in bytes. */
#define DHPS_STORE_MAX_VALUE 16383u
/* TTL meaning "never expires". */
#define DHPS_TTL_NONE 0u
/* Largest TTL in seconds (about 48 days); larger TTLs are clamped to it. */
#define DHPS_STORE_MAX_TTL ((1u << 22) - 1)

typedef struct dhps_store_params {
    uint64_t capacity_hint;    /* keys expected; the index is sized for them (default 1 Mi) */
    uint64_t mem_limit;        /* bytes of segments + index; 0 = no limit (default 0) */
    uint32_t segment_bytes;    /* segment size, a power of two >= 64 KiB (default 2 MiB) */
    uint32_t record_align_log2;/* record alignment 2^k, k in 1..4 (default 1); the store
                                  addresses at most 2^(32+k) bytes of records */
    uint32_t default_ttl;      /* seconds, used when an upsert passes ttl 0xFFFFFFFF
                                  (DHPS_TTL_DEFAULT); 0 = never (default 0) */
    float max_fill;            /* index fill at which inserts grow the table (default 0.95) */
    float fragmentation_goal;  /* compaction keeps garbage below this share (default 0.04) */
    bool huge_pages;           /* madvise(MADV_HUGEPAGE) index and segments (default true) */
    bool inplace_updates;      /* allow in-place overwrites by values no longer than the
                                  stored one and of the same TTL layer (default true) */
    bool auto_maintain;        /* upserts run expiry/compaction steps (default true) */
    uint32_t max_readers;      /* reader handles at once (default 256) */
    dhps_clock_fn clock;       /* time source (default CLOCK_MONOTONIC in ms) */
    void *clock_arg;
} dhps_store_params;

#define DHPS_TTL_DEFAULT 0xFFFFFFFFu

/* Fill p with the defaults documented above. */
void dhps_store_params_init(dhps_store_params *p);

/* Create an empty store. Returns 0 and sets *out, or -EINVAL (bad params, message in
 * the log), -ENOMEM. The store owns all its memory; free with dhps_store_destroy. */
int dhps_store_create(const dhps_store_params *p, dhps_store **out);

/* Destroy a store; NULL is allowed. No reader may be open or in use. */
void dhps_store_destroy(dhps_store *s);

/* ---- readers ---------------------------------------------------------------------- */

/* Open a reader handle for one thread's lookups. Returns 0, or -EMFILE when max_readers
 * handles are open, -ENOMEM. Thread-safe against other reader_open/close calls. */
int dhps_store_reader_open(dhps_store *s, dhps_store_reader **out);

/* Close a reader; releases any pin it holds. NULL is allowed. */
void dhps_store_reader_close(dhps_store_reader *r);

/*
 * Batched lookup, copying values. For each i < n: if keys[i] is present and not
 * expired, copies min(len, out_stride) value bytes to out + i*out_stride, zero-fills
 * the rest of that row, sets bit i of found (found[i/64] >> (i%64) & 1) and, when lens
 * is non-NULL, lens[i] = len; otherwise zero-fills the row, clears the bit and sets
 * lens[i] = 0. found must hold (n+63)/64 words; out may be NULL when out_stride is 0
 * (presence test). Returns the number found. Lock-free; safe beside the writer;
 * one thread per reader handle. Must not be called while the handle holds a pin.
 */
size_t dhps_store_get(dhps_store_reader *r, const uint64_t *keys, size_t n, void *out,
                      size_t out_stride, uint32_t *lens, uint64_t *found);

/*
 * Batched zero-copy lookup: vals[i] points at the stored value (len lens[i]) or is
 * NULL. The pointers and the bytes they point to stay valid and unchanged until
 * dhps_store_release(r) (the reader holds a pin: memory is not reclaimed and in-place
 * updates of pinned stores fall back to appends). found as for dhps_store_get; lens may
 * be NULL. Returns the number found. A second call before release extends the pin.
 */
size_t dhps_store_get_pinned(dhps_store_reader *r, const uint64_t *keys, size_t n,
                             const void **vals, uint32_t *lens, uint64_t *found);

/* End the pin taken by dhps_store_get_pinned; pointers from it become invalid. */
void dhps_store_release(dhps_store_reader *r);

/* ---- writer ----------------------------------------------------------------------- */

typedef struct dhps_store_batch {
    const uint64_t *keys;
    size_t n;
    const void *values;       /* value i at values + i*value_stride */
    size_t value_stride;
    const uint32_t *lens;     /* NULL: every value is value_stride bytes */
    const uint64_t *versions; /* NULL: every record gets `version` */
    uint64_t version;
    uint32_t ttl;             /* seconds; DHPS_TTL_NONE, or DHPS_TTL_DEFAULT */
    bool keep_equal;          /* a key already stored at the same version is left as it
                                 is and reported in stale (replica sync: the same write
                                 arriving twice); default false: equal versions overwrite */
} dhps_store_batch;

/*
 * Upsert a batch (writer only). A key whose stored version is greater than the
 * batch's version for it is left unchanged and its bit is set in stale (if non-NULL,
 * (n+63)/64 words, cleared first). Equal versions overwrite. Returns the number of
 * records written (n minus stale), or a negative error, in which case keys before the
 * failing one were applied: DHPS_E_TOOBIG (value longer than DHPS_STORE_MAX_VALUE),
 * DHPS_E_FULL (memory limit reached even after forced reclamation), -ENOMEM.
 */
long dhps_store_put(dhps_store *s, const dhps_store_batch *b, uint64_t *stale);

/*
 * Delete keys whose stored version is <= version (pass UINT64_MAX to delete
 * unconditionally). Sets bit i of deleted (if non-NULL) for each key removed. Returns
 * the number removed. Writer only. Deletes leave no tombstone. An expired record counts
 * as absent: it is removed whatever its version, and not counted. Likewise an upsert
 * over an expired record is never stale.
 */
size_t dhps_store_delete(dhps_store *s, const uint64_t *keys, size_t n, uint64_t version,
                         uint64_t *deleted);

/*
 * Run background work (writer only): free expired segments, reclaim down to the memory
 * limit, compact, and reclaim memory whose readers have left. Copies at most
 * budget_bytes of live records (0: until the fragmentation goal is met). Returns bytes
 * of segment memory freed. auto_maintain stores also do this in dhps_store_put.
 */
size_t dhps_store_maintain(dhps_store *s, size_t budget_bytes);

/* ---- stats, snapshot ------------------------------------------------------------ */

typedef struct dhps_store_stats {
    uint64_t keys;               /* records in the index (may include expired ones) */
    uint64_t live_bytes;         /* bytes of live records (headers included) */
    uint64_t payload_bytes;      /* key + value bytes of live records */
    uint64_t segment_bytes;      /* bytes of segment memory held (in use, plus up to 4
                                    freed segments kept resident for reuse) */
    uint64_t segments;           /* segments allocated */
    uint64_t index_bytes;        /* bytes of the index table */
    double fragmentation;        /* 1 - live_bytes / segment_bytes (0 when empty) */
    double load_factor;          /* index slots used / slots */
    uint64_t expired_segments;   /* segments freed because every record expired */
    uint64_t expired_records;    /* records dropped by expiry */
    uint64_t evicted_segments;   /* segments freed by forced reclamation */
    uint64_t evicted_records;    /* live records dropped by forced reclamation */
    uint64_t compacted_segments; /* segments emptied by compaction */
    uint64_t compaction_bytes;   /* live record bytes moved by compaction */
    uint64_t inplace_updates;    /* overwrites done in place */
    uint64_t stale_updates;      /* upserts ignored for an older version */
    uint64_t index_grows;        /* times the index was rebuilt larger */
    uint64_t reader_retries;     /* lookups repeated after a concurrent change */
    uint64_t inplace_shrinks;    /* of inplace_updates: shorter values written over longer */
} dhps_store_stats;

/* Fill *st. Writer only (reads writer-owned counters without locks). */
void dhps_store_get_stats(const dhps_store *s, dhps_store_stats *st);

/* What a store holds, written into its snapshots and exports and checked when one is
 * loaded or merged, so that shard 1's file copied over shard 0's, or a file from another
 * cluster or another shard count, is refused instead of silently loaded. */
#define DHPS_STORE_ID_TABLE_MAX 47u   /* bytes, without NUL */
#define DHPS_STORE_ID_CLUSTER_MAX 55u /* bytes, without NUL */
typedef struct dhps_store_identity {
    char table[DHPS_STORE_ID_TABLE_MAX + 1];
    char cluster[DHPS_STORE_ID_CLUSTER_MAX + 1]; /* "" = not named */
    uint32_t shard;
    uint32_t nshards;
} dhps_store_identity;

/* Give the store its identity (copied). Writer only. Returns 0, or -EINVAL (NULL, a
 * table or cluster name that does not fit, nshards 0 or shard >= nshards). */
int dhps_store_set_identity(dhps_store *s, const dhps_store_identity *id);

/* Do two identities name the same data? Table, shard and nshards must be equal; the
 * cluster names too when both are non-empty (so a store named after a cluster still
 * loads the files it wrote before it had a name). Pure. */
bool dhps_store_identity_match(const dhps_store_identity *a, const dhps_store_identity *b);

/* The identity recorded in a snapshot image buf[0..len) (only its header is read; the
 * image is not verified). Returns 1 and fills *id, 0 when the image records none
 * (format 1, or written by a store without an identity), DHPS_E_CORRUPT (not a
 * snapshot header, damaged identity block), DHPS_E_VERSION (unknown format). Pure. */
int dhps_store_image_identity(const void *buf, size_t len, dhps_store_identity *id);

/* As dhps_store_image_identity for the file at path (reads its first 192 bytes); adds
 * -errno. Thread-safe (no store involved). */
int dhps_store_file_identity(const char *path, dhps_store_identity *id);

/*
 * Write every live, unexpired record to path: written to path.tmp.<pid>, fsync'd,
 * renamed over path, directory fsync'd. Format: docs/store.md (header, blocks of
 * records each with an XXH3-64 checksum, trailer with counts and a checksum). Writer only.
 * Returns 0, or a negative errno (nothing at path changes on failure).
 */
int dhps_store_snapshot(dhps_store *s, const char *path);

/*
 * Load a snapshot into an empty store (writer only). The whole file is verified before
 * anything is inserted: a truncated or damaged file returns DHPS_E_CORRUPT, an
 * unknown format DHPS_E_VERSION, a file whose recorded identity does not match the
 * store's (both set; dhps_store_identity_match) DHPS_E_MISMATCH, and the store stays
 * empty. Format-1 files (before identities) load into any store. Records whose expiry has
 * passed are skipped. Returns the number of records loaded, or a negative error
 * (-EBUSY if the store is not empty, -errno on I/O errors, DHPS_E_FULL).
 */
long dhps_store_load(dhps_store *s, const char *path);

/* As dhps_store_load, from a buffer (the fuzz target's entry point). */
long dhps_store_load_buffer(dhps_store *s, const void *buf, size_t len);

/* ---- replica catch-up and anti-entropy ----------------------------------------------
 *
 * A replica that restarts pulls a point-in-time copy of its (table, shard) from a live
 * peer (dhps_store_export on the peer, dhps_store_merge_buffer here), then compares
 * per-range digests (dhps_store_digest) and repairs only the ranges that differ
 * (dhps_store_range_versions to find the keys, export with a range mask to ship them).
 * Images are in the snapshot format, so their checksums protect them on the wire.
 * The store keeps no tombstones: the caller filters deleted keys through merge's skip.
 */

/* Largest range count for the calls below. */
#define DHPS_STORE_MAX_RANGES 65536u

/*
 * The range of a key: a pure hash of key into [0, nranges), nranges in
 * 1..DHPS_STORE_MAX_RANGES. Independent of the store's seeded bucket hash (so equal on
 * every replica) and of dhps_proto_shard_of (different mixer and constants), so the keys
 * of one shard spread evenly over the ranges. Part of the replication contract: it must
 * not change between versions that talk to each other. Thread-safe.
 */
static inline uint32_t dhps_store_key_range(uint64_t key, uint32_t nranges)
{
    /* moremur (Pelle Evensen's 64-bit mixer), seeded away from splitmix's
     * golden-ratio increment; the low 32 bits feed the range reduction, where
     * dhps_proto_shard_of uses the high 32 bits of a different mix. */
    uint64_t z = key ^ 0x6A09E667F3BCC909ull;
    z ^= z >> 27;
    z *= 0x3C79AC492BA7B653ull;
    z ^= z >> 33;
    z *= 0x1C69B3F74AC4AE35ull;
    z ^= z >> 27;
    return (uint32_t)(((z & 0xFFFFFFFFull) * (uint64_t)nranges) >> 32);
}

/*
 * Export (writer only): serialize every live, unexpired record into one malloc'ed
 * buffer in exactly the snapshot format (dhps_store_load_buffer and
 * dhps_store_merge_buffer accept it). range_mask selects keys: bit r (range_mask[r/64]
 * >> (r%64) & 1) keeps keys with dhps_store_key_range(key, nranges) == r; it must hold
 * (nranges+63)/64 words. NULL exports every key (nranges is then ignored). TTLs are
 * written as seconds left. On success returns 0, sets *buf (caller frees with free()),
 * *len and, if records is non-NULL, *records. Returns -EINVAL (nranges out of range
 * with a mask), -ENOMEM; on error *buf is NULL and *len 0.
 * Cost: one pass over the index with records prefetched ahead (docs/store.md).
 */
int dhps_store_export(dhps_store *s, const uint64_t *range_mask, uint32_t nranges, void **buf,
                      size_t *len, uint64_t *records);

/*
 * As dhps_store_export, leaving out records whose version is below min_version: "what
 * changed since", for a replica that restarts holding everything up to some version
 * (records deleted since are not in any image: tombstones are the caller's). min_version
 * 0 is dhps_store_export. Same returns. The walk still visits every record; the image
 * holds only the selected ones.
 */
int dhps_store_export_since(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
                            uint64_t min_version, void **buf, size_t *len, uint64_t *records);

/* The highest version of any live, unexpired record, 0 when there is none (writer only;
 * one pass over the index). */
uint64_t dhps_store_max_version(dhps_store *s);

typedef struct dhps_store_merge_stats {
    uint64_t applied; /* records written (newer than the stored version, or absent) */
    uint64_t stale;   /* records left out: the store holds this version or a newer one */
    uint64_t skipped; /* records the skip callback dropped */
    uint64_t expired; /* records whose TTL had run out */
} dhps_store_merge_stats;

/*
 * Merge an image (writer only) into a store that may already hold data. The whole
 * buffer is verified first exactly as dhps_store_load_buffer does: a damaged or
 * truncated buffer returns DHPS_E_CORRUPT, an unknown format DHPS_E_VERSION, and
 * nothing is applied. Then every record is upserted with its own version and its
 * remaining TTL (less the wall-clock time since the image was made, as for loads;
 * records whose TTL has run out are skipped and counted as expired). A record whose
 * version is lower than or equal to the stored one is left out (stale: the same write
 * arriving twice changes nothing, and costs no copy). skip (may be NULL) is called with arg for each unexpired record
 * before it is applied; returning true drops it (e.g. a tombstone covers it).
 * Records are applied in batches grouped by (TTL, length), not in buffer order.
 * st (may be NULL) is zeroed then filled. buf is only read, and not kept.
 * Returns records applied, or a negative error after which some records may have been
 * applied (st counts them): DHPS_E_FULL (memory limit), -ENOMEM.
 */
long dhps_store_merge_buffer(dhps_store *s, const void *buf, size_t len,
                             bool (*skip)(void *arg, uint64_t key, uint64_t version), void *arg,
                             dhps_store_merge_stats *st);

/*
 * Per-range digests (writer only). hash and count hold nranges entries (1..
 * DHPS_STORE_MAX_RANGES) and are zeroed first; then for every live, unexpired record,
 * with r = dhps_store_key_range(key, nranges): hash[r] ^= XXH3-64 of the 16 bytes
 * key || version (both little-endian u64, seed 0), count[r]++. Two stores holding the
 * same (key, version) set give identical arrays whatever their insertion order, index
 * size or segment layout; values and TTLs are not covered. Returns 0 or -EINVAL.
 */
int dhps_store_digest(dhps_store *s, uint32_t nranges, uint64_t *hash, uint64_t *count);

/*
 * The (key, version) pairs of every live, unexpired record in the selected ranges
 * (writer only; range_mask as for dhps_store_export, NULL = all), in no particular
 * order. Sets *keys and *versions to malloc'ed arrays of *n entries (caller frees both
 * with free(); both NULL when *n is 0). Returns 0, -EINVAL, -ENOMEM (outputs NULL/0).
 */
int dhps_store_range_versions(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
                              uint64_t **keys, uint64_t **versions, size_t *n);

/* Cache lines a lookup reads, counted from the layout (dhps_store_lookup_lines). */
typedef struct dhps_store_lines {
    uint64_t keys;        /* keys counted: every key in the index */
    double bucket_lines;  /* index lines per lookup: the first bucket, plus the second
                             when the first holds no tag hit (or not the key) */
    double record_lines;  /* record lines per lookup: those prefetched for the first tag
                             hit, plus those read to check other tag hits and to copy */
} dhps_store_lines;

/*
 * Mean distinct cache lines a batched lookup (dhps_store_get with out_stride bytes per
 * row; 0 for a presence test or get_pinned) reads or prefetches for a key present in s,
 * computed from the current index and record layout by the lookup path's rules, with
 * no concurrent writer. No lookup runs; for benchmarks and capacity planning. Writer
 * only; O(keys). Returns 0 and fills *out, or -EINVAL (out NULL).
 */
int dhps_store_lookup_lines(dhps_store *s, size_t out_stride, dhps_store_lines *out);

/* Which tag-match implementation lookups use: "avx2", "sse2" or "scalar". */
const char *dhps_store_simd_name(void);

/* Force a tag-match implementation ("avx2", "sse2", "scalar"); for tests and
 * benchmarks. Returns 0, or -ENOTSUP if the CPU lacks it. Not thread-safe: call before
 * any lookup. */
int dhps_store_force_simd(const char *name);

#ifdef __cplusplus
}
#endif
#endif

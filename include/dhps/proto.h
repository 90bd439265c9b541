/*
 * dhps service protocol: the messages a client and a dhps-server exchange over the rpc
 * library (include/dhps/rpc.h). Every request names a table and one virtual shard; the
 * client splits a batch by shard (dhps_proto_shard_of) and sends one message per shard.
 *
 * Encoding: little-endian, fixed headers below, then arrays. Arrays of u64 start at an
 * offset that is a multiple of 8 from the start of the message (the headers are sized
 * so), so a receiver on a little-endian machine can use them in place (zero-copy);
 * rows of values are packed back to back, value_bytes each. Every length is checked
 * against the message length before use (dhps_proto_check_* below): a malformed message
 * gets DHPS_E_MALFORMED, never a read past its end.
 *
 * Versions: a request header carries DHPS_PROTO_VERSION; a server answers a version it
 * does not speak with DHPS_E_VERSION.
 */
#ifndef DHPS_PROTO_H
#define DHPS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DHPS_PROTO_VERSION 1
#define DHPS_TABLE_NAME_MAX 48 /* bytes, NUL-padded in headers */
#define DHPS_PROTO_MAX_KEYS 65536u /* per message; larger batches: DHPS_E_TOOBIG */

/* rpc method ids */
enum dhps_method {
    DHPS_M_LOOKUP = 0x0101,
    DHPS_M_UPSERT = 0x0102,
    DHPS_M_DELETE = 0x0103,
    DHPS_M_STATS = 0x0104,    /* request: dhps_proto_hdr (table may be empty: all) */
    DHPS_M_SNAPSHOT = 0x0105, /* request: dhps_proto_hdr; response: dhps_proto_resp */
    DHPS_M_INFO = 0x0106,     /* request: dhps_proto_hdr; response: resp + JSON text */
    /* Replica sync (server to server; docs/server.md "Replicas"). A
     * node answers these once its own recovery (snapshot + update log) is done, even
     * while it is still catching up itself. */
    DHPS_M_SYNC_DIGEST = 0x0110, /* request: hdr + dhps_proto_sync_digest; response:
                                    resp (n = nranges) + nranges u64 hashes + nranges
                                    u64 counts (dhps_store_digest) */
    DHPS_M_SYNC_FETCH = 0x0111,  /* request: hdr + dhps_proto_sync_fetch [+ range mask];
                                    response: resp (n = chunk bytes) +
                                    dhps_proto_sync_chunk + the chunk */
};

/* dtype of values on the wire (and of a table) */
enum dhps_dtype { DHPS_FP32 = 0, DHPS_FP16 = 1, DHPS_BYTES = 2 };

/* Common request header: 64 bytes. */
typedef struct dhps_proto_hdr {
    uint16_t version;                  /* DHPS_PROTO_VERSION */
    uint16_t flags;                    /* per method */
    uint32_t shard;                    /* virtual shard id */
    char table[DHPS_TABLE_NAME_MAX];   /* NUL-padded */
    uint64_t map_version;              /* cluster map version the client routed with */
} dhps_proto_hdr;

/* LOOKUP request: hdr, then this, then n u64 keys. flags: DHPS_LOOKUP_FP16 asks for
 * fp16 rows (else the table's dtype widened to fp32 for fp16 tables). */
#define DHPS_LOOKUP_FP16 0x1
typedef struct dhps_proto_lookup {
    uint32_t n;
    uint32_t reserved;
} dhps_proto_lookup;

/* Common response header: 16 bytes. status is 0 or a negative dhps error; for
 * LOOKUP, n rows of value_bytes follow a found mask of (n+63)/64 u64 (missing rows
 * zero-filled); for UPSERT/DELETE, count is applied/deleted and a (n+63)/64 u64 mask
 * follows (stale keys / deleted keys); for STATS and INFO, JSON text follows. A
 * response with status < 0 may be followed by a human-readable message (UTF-8, not
 * NUL-terminated; added for dhps-server's error replies, ignorable). */
typedef struct dhps_proto_resp {
    int32_t status;
    uint32_t n;
    uint32_t value_bytes;
    uint32_t count;
} dhps_proto_resp;

/* UPSERT request: hdr, this, n u64 keys, n rows of value_bytes. flags: dtype of the
 * rows (DHPS_FP32 rows into an fp16 table are narrowed by the server). */
typedef struct dhps_proto_upsert {
    uint32_t n;
    uint32_t value_bytes;
    uint64_t version;
    uint32_t ttl;        /* seconds; 0 none; 0xFFFFFFFF table default */
    uint32_t reserved;
} dhps_proto_upsert;

/* DELETE request: hdr, this, n u64 keys. */
typedef struct dhps_proto_delete {
    uint32_t n;
    uint32_t reserved;
    uint64_t version;    /* delete keys whose stored version <= this */
} dhps_proto_delete;

/* SYNC_DIGEST request: hdr, this. nranges 1..DHPS_PROTO_SYNC_MAX_RANGES. */
#define DHPS_PROTO_SYNC_MAX_RANGES 4096u
typedef struct dhps_proto_sync_digest {
    uint32_t nranges;
    uint32_t reserved;
} dhps_proto_sync_digest;

/* SYNC_FETCH request: hdr, this, then (nranges + 63) / 64 u64 of range mask when
 * nranges > 0 (0: the whole shard). The first fetch of a session (offset 0) makes the
 * server take a point-in-time export of the shard (tombstones, then records in the
 * snapshot format, docs/server.md) and keep it under the requester's session id; later
 * fetches read it from offset, at most max_bytes per answer. The export is freed after
 * its last byte is read or after 30 s without a fetch. */
typedef struct dhps_proto_sync_fetch {
    uint64_t session;    /* non-zero, chosen by the requester */
    uint64_t offset;     /* byte offset into the export */
    uint32_t nranges;    /* 0, or 1..DHPS_PROTO_SYNC_MAX_RANGES with a mask following */
    uint32_t max_bytes;  /* chunk bytes wanted, >= 4096 */
    uint64_t min_version;/* only records and tombstones at or above this version (0: all):
                            "what changed since", for a replica that restarts */
} dhps_proto_sync_fetch;

/* SYNC_FETCH answer, after dhps_proto_resp: the export's total length and the offset
 * of the chunk that follows. */
typedef struct dhps_proto_sync_chunk {
    uint64_t total;
    uint64_t offset;
} dhps_proto_sync_chunk;

/* C11 _Static_assert, C++ static_assert: the header compiles as both (tests/common). */
#ifdef __cplusplus
#define DHPS_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define DHPS_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
DHPS_STATIC_ASSERT(sizeof(dhps_proto_sync_digest) == 8, "u64 arrays stay 8-aligned");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_sync_fetch) == 32, "u64 arrays stay 8-aligned");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_sync_chunk) == 16, "chunk stays 8-aligned");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_hdr) == 64, "request header is 64 bytes");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_resp) == 16, "response header is 16 bytes");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_lookup) == 8, "u64 keys stay 8-aligned");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_upsert) == 24, "u64 keys stay 8-aligned");
DHPS_STATIC_ASSERT(sizeof(dhps_proto_delete) == 16, "u64 keys stay 8-aligned");

/* The virtual shard of a key: a hash independent of the store's own (so shards do not
 * correlate with buckets). nshards > 0. Pure function; thread-safe. */
static inline uint32_t dhps_proto_shard_of(uint64_t key, uint32_t nshards)
{
    uint64_t z = key + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(((z >> 32) * (uint64_t)nshards) >> 32);
}

#ifdef __cplusplus
}
#endif
#endif

/* Private: decoding and validation of service-protocol requests (pure functions over a
 * buffer; the fuzz target fuzz_server_msg drives them). */
#ifndef DHPS_SERVER_MSG_H
#define DHPS_SERVER_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "dhps/proto.h"
#include "dhps/server.h"

/* A decoded request: pointers into the request buffer. */
typedef struct srv_msg {
    uint16_t method;
    uint16_t flags;
    uint32_t shard;
    uint64_t map_version;            /* hdr.map_version: the map the sender routed with */
    char table[DHPS_TABLE_NAME_MAX]; /* NUL-terminated copy */
    uint32_t n;                      /* keys (LOOKUP/UPSERT/DELETE) */
    const uint8_t *keys;             /* n * 8 bytes, maybe unaligned */
    const uint8_t *values;           /* UPSERT: n * value_bytes */
    uint32_t value_bytes;            /* UPSERT */
    uint64_t version;                /* UPSERT/DELETE */
    uint32_t ttl;                    /* UPSERT */
    uint32_t nranges;                /* SYNC_DIGEST, SYNC_FETCH (0: whole shard) */
    const uint8_t *range_mask;       /* SYNC_FETCH: (nranges + 63) / 64 u64, or NULL */
    uint64_t session, offset;        /* SYNC_FETCH */
    uint64_t min_version;            /* SYNC_FETCH */
    uint32_t max_bytes;              /* SYNC_FETCH */
} srv_msg;

/* Decode buf[0..len) as a request to method. Returns 0, or DHPS_E_MALFORMED (short
 * header, bad table name padding, lengths that do not add up to len exactly, unknown
 * method or bad flags), DHPS_E_VERSION (header version), DHPS_E_TOOBIG (n >
 * DHPS_PROTO_MAX_KEYS). On error *m holds what was decoded so far; *why gets a static
 * explanation. */
int srv_msg_decode(uint16_t method, const void *buf, size_t len, srv_msg *m,
                   const char **why);

/* Check a decoded UPSERT's rows against a table (dim, dtype): value_bytes must be
 * dim * 4 for DHPS_FP32 rows (flags) or dim * 2 for DHPS_FP16 rows. Returns 0 or
 * DHPS_E_MALFORMED. */
int srv_msg_check_rows(const srv_msg *m, uint32_t dim, const char **why);

/* Bytes of a LOOKUP response for n rows of row_bytes. */
static inline size_t srv_lookup_resp_len(uint32_t n, size_t row_bytes)
{
    return sizeof(dhps_proto_resp) + (size_t)((n + 63) / 64) * 8 + (size_t)n * row_bytes;
}

#endif

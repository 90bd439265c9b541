/* dhps server: the update log's server side (durable.c): the record encoding of one
 * write batch, the write-path hooks, replay at start, checkpoints, metrics.
 * docs/server.md "Update log" describes the behaviour; include/dhps/wal.h the log. */
#ifndef DHPS_SRV_DURABLE_H
#define DHPS_SRV_DURABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dhps/proto.h"
#include "dhps/store.h"

struct dhps_server;
struct srv_store;

/* ---- record payload (one per UPSERT/DELETE batch), little-endian -----------------
 *   0 u8 kind (1 upsert, 2 delete) | 1 u8 table name length 1..47 | 2 u16 zero
 *   4 u32 shard | 8 u64 version | 16 u64 wall-clock unix seconds at write time
 *  24 u32 ttl (seconds, resolved: never DHPS_TTL_DEFAULT; 0 = none; delete: 0)
 *  28 u32 n | 32 u32 row bytes (delete: 0) | 36 u32 zero
 *  40 table name, zero-padded to a multiple of 8
 *     n u64 keys | upsert: n rows of row bytes, exactly what the store received
 *     (after the fp16/fp32 conversion), in the table's stored dtype. */
enum { SRV_LOG_UPSERT = 1, SRV_LOG_DELETE = 2 };
#define SRV_LOG_FIXED 40u
#define SRV_LOG_HDR_MAX (SRV_LOG_FIXED + DHPS_TABLE_NAME_MAX)

typedef struct srv_log_rec {
    int kind;
    char table[DHPS_TABLE_NAME_MAX];   /* NUL-terminated */
    uint32_t shard;
    uint64_t version;
    uint64_t wall_s;
    uint32_t ttl;
    uint32_t n;
    uint32_t row_bytes;
    const uint8_t *keys;               /* n * 8 bytes, maybe unaligned */
    const uint8_t *rows;               /* n * row_bytes (NULL for a delete) */
} srv_log_rec;

/* Encode r's header and padded table name into hdr (SRV_LOG_HDR_MAX bytes); returns its
 * length (keys and rows follow it in the record). Pure. */
size_t srv_log_encode_hdr(const srv_log_rec *r, uint8_t *hdr);

/* Decode and validate a payload of len bytes: every field and length (the total must be
 * exactly header + keys + rows). 0 and *out (pointing into p), or DHPS_E_MALFORMED with
 * *why a static reason. Pure (fuzzed: fuzz_wal). */
int srv_log_decode(const void *p, size_t len, srv_log_rec *out, const char **why);

/* ---- hooks (no-ops returning 0 when the log is off) ----------------------------- */

/* start: after the snapshots are loaded, before rpc starts. Open the log with this
 * node's identity (logid.h: each segment's checked, each record's table checked against
 * the config), read the checkpoint, replay; the message names the file on error. */
int srv_durable_start(struct dhps_server *s, char *err, size_t errlen);
/* destroy: close the log (after the final snapshot). */
void srv_durable_close(struct dhps_server *s);
/* Under st's writer lock, before applying: append the batch (b->values rows of
 * b->value_stride == row bytes). *lsn = its LSN (0: no log). 0 or the append's error. */
int srv_durable_log_put(struct dhps_server *s, struct srv_store *st,
                        const dhps_store_batch *b, uint64_t *lsn);
int srv_durable_log_delete(struct dhps_server *s, struct srv_store *st,
                           const uint64_t *keys, uint32_t n, uint64_t version, uint64_t *lsn);
/* After releasing the writer lock, before replying: under fsync "always" wait until the
 * record is durable (group commit); else 0 at once. */
int srv_durable_wait(struct dhps_server *s, uint64_t lsn);
/* A full snapshot: before the first store, L = the next LSN (0: no log); after every
 * store succeeded, write the checkpoint file (temp, fsync, rename) and truncate the log
 * before L. Returns 0 or -errno of the checkpoint write. */
uint64_t srv_durable_begin(struct dhps_server *s);
int srv_durable_checkpoint(struct dhps_server *s, uint64_t lsn);
/* Has the log grown past log.max_mb? (the background thread then snapshots) */
bool srv_durable_over_limit(struct dhps_server *s);
/* Prometheus lines for /metrics. */
void srv_durable_metrics(struct dhps_server *s, FILE *f);

#endif

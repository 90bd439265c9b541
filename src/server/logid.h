/* dhps server: the update log's identity, the string in every log segment's header
 * (include/dhps/wal.h "Identity"; docs/server.md "Update log"). One line:
 *
 *   dhps-log-id 1 cluster=<c> node=<n> shards=<N> tables=<name>:<dim>:<fp32|fp16>[,...]
 *
 * c (coord.cluster, empty without one) and n (node_id) percent-encoded: every byte
 * outside [A-Za-z0-9._~-] as %XX (uppercase hex). Table names are [A-Za-z0-9_.-] (the
 * config's rule) and appear as they are, in the config's order.
 *
 * At start durable.c checks each segment's identity: node and shard count must be this
 * node's, the cluster too when both name one (as for snapshots: a node that gains a
 * cluster name still reads what it wrote before). The tables are not compared there --
 * adding a table is a legitimate change -- but every replayed record's table must be in
 * its segment's list and in the config with the same dim and dtype. Older builds wrote
 * the node id alone; a segment with exactly this node's id is accepted (no table list:
 * records are checked against the config's row size), and new segments carry this form. */
#ifndef DHPS_SRV_LOGID_H
#define DHPS_SRV_LOGID_H

#include <stddef.h>
#include <stdint.h>

#include "dhps/server.h"

#define SRV_LOGID_PREFIX "dhps-log-id "

typedef struct srv_logid_table {
    char name[DHPS_TABLE_NAME_MAX];    /* NUL-terminated */
    uint32_t dim;
    int dtype;                         /* DHPS_FP32, DHPS_FP16 */
} srv_logid_table;

typedef struct srv_logid {
    char cluster[64];                  /* "" = none */
    char node[256];
    uint32_t nshards;
    uint32_t ntables;
    srv_logid_table tables[DHPS_SERVER_MAX_TABLES];
} srv_logid;

/* The identity of config c (node_id, coord_cluster, nshards, tables) into buf (len
 * bytes, NUL-terminated). Returns its length, or -ENAMETOOLONG when it does not fit
 * (never with len > DHPS_WAL_IDENTITY_MAX for a valid config). Pure. */
int srv_logid_encode(const dhps_server_config *c, char *buf, size_t len);

/* Parse s[0..len) (need not be NUL-terminated) into *out. Returns 0, DHPS_E_VERSION (a
 * "dhps-log-id" line of another version) or DHPS_E_MALFORMED; *why is then a static
 * reason. Every field is checked (ranges, names, duplicates, the whole string used).
 * Pure (fuzzed: fuzz_wal). */
int srv_logid_parse(const char *s, size_t len, srv_logid *out, const char **why);

/* The table named name in id, or NULL. */
const srv_logid_table *srv_logid_table_find(const srv_logid *id, const char *name);

/* 'node "n1" of cluster "prod" with 8 shards' (or '..., no cluster name, ...') into buf,
 * for error messages. Pure. */
void srv_logid_describe(const srv_logid *id, char *buf, size_t len);

#endif

/*
 * How the service subcommands reach a running cluster. Private to src/tools.
 *
 * A target is either a cluster directory written by `dhps up` (DIR/cluster.json names
 * the map and the secret) or an explicit map file and secret file. Data calls (put,
 * get) go through the client library (include/dhps/client.h) which routes by the map;
 * per-node admin calls (STATS, SNAPSHOT) go straight to every node over rpc.
 */
#ifndef DHPS_TOOLS_TOOLSCLIENT_H
#define DHPS_TOOLS_TOOLSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tools_target {
    const char *cluster_dir; /* DIR of `dhps up` (default when nothing is given: see
                                tools_default_dir) */
    const char *map;         /* map file; with secret, instead of cluster_dir */
    const char *secret;      /* secret file */
} tools_target;

typedef struct tools_conn tools_conn;

/* Directory `dhps up`/`down` and the other commands use when none is given:
 * $DHPS_CLUSTER_DIR, else "dhps-cluster" in the current directory. */
const char *tools_default_dir(void);

/* Open a connection to the target's cluster. Returns 0 and sets *out, or a negative
 * error after printing the reason on stderr. Close with tools_conn_close (NULL-safe). */
int tools_conn_open(const tools_target *t, tools_conn **out);
void tools_conn_close(tools_conn *c);

/* Write n rows (row_bytes = dim * size of dtype) under keys into table. Returns 0 or a
 * negative error. */
int tools_conn_put(tools_conn *c, const char *table, uint32_t dtype, uint32_t dim,
                   const uint64_t *keys, const void *rows, uint32_t n);

#endif

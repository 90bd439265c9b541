/*
 * How the service subcommands reach a running cluster. Private to src/tools.
 *
 * A target is either a cluster directory written by `dhps up` (DIR/cluster.json names
 * the map and the secret) or an explicit map file and secret file. Data calls (put,
 * get, load) go through the client library (include/dhps/client.h), which routes by
 * the map; per-node admin calls (STATS, SNAPSHOT, INFO) go straight to every node of
 * the map over rpc.
 */
#ifndef DHPS_TOOLS_TOOLSCLIENT_H
#define DHPS_TOOLS_TOOLSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dhps_client;
struct dhps_cluster_map;

typedef struct tools_target {
    const char *cluster_dir; /* DIR of `dhps up` (default: tools_default_dir()) */
    const char *map;         /* map file; with secret, instead of cluster_dir */
    const char *secret;      /* secret file */
    const char *addr;        /* HOST:PORT of one node, with secret: no map needed (a
                                one-node map of that node is written to a temp file) */
    const char *host, *pod, *az; /* client labels (NULL: from cluster.json, if any) */
    uint32_t connect_timeout_ms; /* client connect + hello bound (0: the client's default) */
    bool spin_set;               /* spin_us given: the client's spin_us (rpc.md "Waiting") */
    uint32_t spin_us;
    uint32_t max_msg;            /* client max message (0: 4 MiB, for bulk loads); each
                                    verbs channel registers slots of this size */
    const char *etcd, *etcd_cluster; /* both or neither: the client follows the map in
                                        etcd (the map file stays its fallback); override
                                        cluster.json's "etcd" */
} tools_target;

typedef struct tools_conn {
    struct dhps_client *client;
    struct dhps_cluster_map *map;
    uint8_t secret[256];
    size_t secret_len;
    char map_path[4096];
    bool tmp_map;            /* map_path is a temp file of --addr: unlinked at close */
    char host[64], pod[64], az[64]; /* labels the client was given ("" = none) */
    uint64_t put_timeout_us;        /* deadline of tools_conn_put (set by open) */
    char etcd[256], etcd_cluster[64]; /* cluster.json "etcd" (`dhps up --etcd`): the client
                                         follows the map in etcd ("" = the map file only) */
    /* TLS to the nodes (docs/tools.md "TLS"): from $DHPS_TLS, $DHPS_TLS_CA,
     * $DHPS_TLS_CERT, $DHPS_TLS_KEY, $DHPS_TLS_SERVER_NAME, else cluster.json's "tls"
     * object (policy, ca_file, cert_file, key_file, server_name); "" = not set */
    int tls;                          /* DHPS_RPC_TLS_* */
    char tls_ca[4096], tls_cert[4096], tls_key[4096], tls_name[256];
} tools_conn;

/* Tier of a node labelled host/pod/az relative to a client labelled chost/cpod/caz, as
 * the route library ranks them: 0 same host, 1 same pod (and az), 2 same az, 3 another
 * az. An empty label is unknown and never equal to another. */
int tools_tier_of(const char *host, const char *pod, const char *az, const char *chost,
                  const char *cpod, const char *caz);
extern const char *const tools_tier_names[4]; /* "host", "pod", "az", "remote" */

/* Directory `dhps up`/`down` and the other commands use when none is given:
 * $DHPS_CLUSTER_DIR, else "dhps-cluster" in the current directory. */
const char *tools_default_dir(void);

/* Read a whole (small) file into a malloc'ed NUL-terminated buffer. Returns it (and its
 * length in *len when len is not NULL) or NULL with errno set. */
char *tools_read_file(const char *path, size_t *len);

/* Open a connection to the target's cluster. Returns 0 and sets *out, or a negative
 * error after printing the reason on stderr. Close with tools_conn_close (NULL-safe). */
int tools_conn_open(const tools_target *t, tools_conn **out);
/* The table's dim and dtype from the nodes' INFO (ops.c): 0, or DHPS_E_NOTFOUND after
 * one line on stderr naming every node and why it did not serve the table. */
int tools_table_info(tools_conn *c, const char *table, uint32_t *dim, int *dtype);
void tools_conn_close(tools_conn *c);

/* Write n rows (row_bytes = dim * size of dtype) under keys into table, acknowledged
 * by every replica, within put_timeout_us: 10 s, or twice the target's connect timeout
 * when that is longer (a batch may first have to open channels to its replicas).
 * Returns 0 or a negative error. Thread-safe. */
int tools_conn_put(tools_conn *c, const char *table, uint32_t dtype, uint32_t dim,
                   const uint64_t *keys, const void *rows, uint32_t n);

/* Per-node admin call: send method (DHPS_M_STATS / _SNAPSHOT / _INFO) with table ("" =
 * all) to every node of the map in turn; fn(arg, node, status, count, text, len) gets
 * each node's answer (status 0 or the error; text the JSON after the response header,
 * may be empty). Returns the number of nodes that failed. */
typedef void (*tools_admin_fn)(void *arg, uint32_t node, int status, uint32_t count,
                               const char *text, size_t len);
int tools_conn_admin(tools_conn *c, uint16_t method, const char *table, tools_admin_fn fn,
                     void *arg);

/* One rpc call to node id `node` of the map over TCP (a channel of its own, opened and
 * closed here; 30 s bound): req (req_len bytes, a dhps_proto_hdr first) → resp (cap
 * bytes). Returns 0 with *resp_len bytes in resp (a dhps_proto_resp first, status 0), the
 * answer's negative status (DHPS_E_*), or the channel / call error (DHPS_E_NOTFOUND for
 * a node not in the map). Thread-safe (nothing shared but the map). */
int tools_conn_call(tools_conn *c, uint32_t node, uint16_t method, const void *req,
                    size_t req_len, void *resp, size_t cap, size_t *resp_len);

#endif

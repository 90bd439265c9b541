/* Private declarations shared by the server's files:
 *   server.c    create/start/stop/destroy, snapshots, the background thread
 *   handlers.c  the rpc handlers of the service protocol (proto.h)
 *   http.c      /metrics, /health and /fault over libmicrohttpd
 *   durable.c   the update log: write-path hooks, replay, checkpoints (durable.h)
 *   hold.c      the shards held: stores added and dropped by map, reclamation (hold.h)
 *   config.c, msg.c, admin.c, fp16.c  config parsing, request decoding, /fault auth, fp16 */
#ifndef DHPS_SRV_INT_H
#define DHPS_SRV_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dhps/cluster.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "dhps/store.h"
#include "admin.h"
#include "util.h"
#include "msg.h"
#include "tomb.h"

dhps_server_config *srv_config_dup(const dhps_server_config *c);

/* Resolve c's nshards, owned shards and tcp_port from map m, as
 * dhps_server_config_resolve does from the file (config.c); with follow_etcd a node
 * that m does not list is accepted (it holds nothing). 0 or DHPS_E_CONFIG / -ENOMEM. */
int srv_config_resolve_map(dhps_server_config *c, const dhps_cluster_map *m, char *err,
                           size_t errlen);

/* printf into err[errlen] (truncated, NUL-terminated); nothing when err is NULL or errlen
 * 0. The one error-message formatter of the server's files (defined in admin.c). */
void srv_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- metrics layout ------------------------------------------------------------- */

enum { M_LOOKUP, M_UPSERT, M_DELETE, M_STATS, M_SNAPSHOT, M_INFO, M_SYNC, NMETHODS };
#define NSTATUS 10
/* latency buckets, upper bounds in microseconds (+Inf implied): 10 us .. 250 ms, at most
 * 1.5x apart from 50 us to 10 ms where lookups and upserts land */
#define NBUCKETS 24
extern const char *const method_names[NMETHODS];
extern const int status_codes[NSTATUS - 1];  /* status_names[i] for i < NSTATUS - 1 */
extern const char *const status_names[NSTATUS]; /* the last: "other" */
extern const uint32_t lat_bounds_us[NBUCKETS - 1];


typedef struct srv_table srv_table;
typedef struct srv_durable srv_durable; /* the update log's server side (durable.h) */

typedef struct srv_store srv_store;

/* One (table, shard) this node holds. Created at start for the shards of the starting
 * map, and while serving by srv_hold_apply for shards a newer map gives this node;
 * retired when a map takes the shard away and freed by srv_hold_reclaim once no thread
 * can still use it (hold.h: the rpc workers by epoch, other threads by reference). */
struct srv_store {
    pthread_mutex_t mu;          /* writer lock: upserts, deletes, stats, snapshot */
    dhps_store *st;
    srv_table *t;
    uint32_t shard;
    bool ready;                  /* atomic: serves lookups (caught up from its peers) */
    bool dropped;                /* under mu (atomic reads elsewhere): refused from now on */
    bool initial;                /* held at start (dhps_server_ready waits for these) */
    uint64_t fence;              /* under mu: map version at which the shard's holder set
                                    last changed as seen here; older writes: DHPS_E_MOVED */
    srv_tomb tomb;               /* deletes remembered for sync (under mu) */
    dhps_store_reader **readers; /* per rpc worker, opened with the store; worker w uses
                                    readers[w] only */
    uint32_t refs;               /* atomic: non-worker threads using it (hold.h) */
    /* the sync thread's per-store state (sync.c; only that thread touches it) */
    uint32_t sync_done[DHPS_CLUSTER_MAX_REPLICAS]; /* peers caught up from (node ids) */
    uint32_t sync_ndone;
    uint32_t sync_caught;        /* of those, really answered (not skipped) */
    bool sync_empty;             /* held no record when catch-up began */
    uint64_t sync_t0_ns;         /* when catch-up began (peer_wait_s counts from it) */
    /* retirement (under the server's hold_mu) */
    srv_store *next;             /* live list, then retired list */
    uint64_t retire_epoch, retire_ns;
};

struct srv_table {
    dhps_server_table_config c;
    uint32_t row_bytes;          /* stored bytes per row */
    srv_store **by_shard;        /* nshards entries, NULL = not held; atomic pointers:
                                    set and cleared under hold_mu, read by rpc workers
                                    inside their epoch (hold.h) */
    uint64_t looked_up, found;   /* atomics */
};

typedef struct srv_worker {
    uint64_t epoch;              /* atomic: global epoch when its handler began, 0 idle */
    uint64_t *keys;              /* DHPS_PROTO_MAX_KEYS, for unaligned key arrays */
    uint64_t *mask;              /* DHPS_PROTO_MAX_KEYS / 64 */
    uint8_t *rows;               /* conversion scratch, 2 * max_msg */
} __attribute__((aligned(64))) srv_worker;

/* The cluster map this node has applied, shared by reference (hold.c). */
typedef struct srv_map {
    dhps_cluster_map *m;
    uint32_t refs;               /* atomic */
} srv_map;

struct dhps_server {
    dhps_server_config *cfg;
    uint8_t *secret;
    size_t secret_len;
    srv_table *tables;
    srv_worker *workers;
    dhps_rpc_server *rpc;
    uint16_t rpc_port;
    struct MHD_Daemon *http;
    uint16_t http_port;
    struct MHD_Daemon *health;   /* metrics.health_port listener, or NULL */
    uint16_t health_port;
    int metrics_fd, health_fd;   /* cfg's sockets until the HTTP daemons take them, -1 */
    struct srv_http_guard *http_guard; /* header deadlines of both (http.c) */
    dhps_ratelimit http_log_rl;  /* refused /fault requests (the daemon's thread) */
    bool ready;                  /* atomic: local recovery done, rpc serving (the node is
                                    ready when its stores are caught up too) */
    bool started, stopped;
    pthread_t snap_thread;
    bool snap_running;
    pthread_mutex_t ctl_mu;
    pthread_cond_t ctl_cv;
    bool stopping;
    struct srv_sync *sync;       /* catch-up and anti-entropy (sync.c) */
    srv_admin_replay replay;     /* /fault: signed changes already accepted */
    /* what this node holds (hold.c, hold.h) */
    bool follow;                 /* shards.follow_etcd: the map in etcd decides */
    bool hold_init;              /* srv_hold_init ran (destroy calls srv_hold_fini) */
    pthread_mutex_t hold_mu;     /* the store set, the map, retirement */
    srv_store *live, *retired;   /* lists through srv_store.next */
    uint32_t nlive;              /* stores in live */
    uint32_t nheld;              /* atomic: shards held (stores of the first table) */
    uint32_t not_ready;          /* atomic: live stores not ready */
    uint32_t initial_pending;    /* atomic: stores held at start, not ready yet */
    uint64_t epoch;              /* atomic: reclamation epoch */
    srv_map *map;                /* under hold_mu; NULL without a cluster map */
    uint64_t map_version;        /* atomic: version of map (0: none) */
    uint64_t *dropped_at;        /* nshards, atomics: map version that took the shard away */
    bool want_checkpoint;        /* atomic: a shard was dropped, snapshot + checkpoint soon */
    uint64_t shards_added, shards_dropped, writes_moved, stores_freed; /* atomics */
    /* metrics (atomics) */
    uint64_t req[NMETHODS][NSTATUS];
    uint64_t lat[NMETHODS][NBUCKETS];
    uint64_t lat_sum_ns[NMETHODS];
    uint64_t snapshots_ok, snapshot_errors, loaded_records;
    uint64_t last_snapshot_unix;
    srv_durable *dur;            /* NULL: no update log (durable.c) */
    struct srv_member *member;   /* NULL: no "coord" in the config (member.c) */
};

static inline void add(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static inline uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

typedef struct table_agg {
    dhps_store_stats st;
    uint32_t shards;
} table_agg;

/* Sum the stats of table t's stores on this node (takes each store's writer lock). */
void srv_aggregate(dhps_server *s, const srv_table *t, table_agg *a);

/* Snapshot the stores of table t (NULL: all) held now. Returns stores written or first error;
 * -ENOENT without snapshot_dir. (server.c) */
int srv_snapshot_some(dhps_server *s, const srv_table *t);

/* Resolve m's table + shard; on failure write the error response, set *status and
 * return NULL. (handlers.c) */
srv_store *srv_find_store(dhps_server *s, const srv_msg *m, dhps_rpc_request *r, int *status);

/* Write an error response: header with status, then a human-readable message. */
void srv_resp_error(dhps_rpc_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The files a config names: the secret (dhps_secret_load's rules), snapshot.dir (a
 * writable directory), log.dir (one, or a writable parent to create it in). 0 or
 * DHPS_E_CONFIG with one line in err. (check.c; also dhps_server_config_check) */
int srv_check_files(const dhps_server_config *c, char *err, size_t errlen);
/* The sockets c names instead of ports (rpc_fd, metrics_fd, health_fd): each a bound
 * IPv4 TCP socket on the configured host and (when non-zero) port, and for a listener
 * the config has. 0 or DHPS_E_CONFIG with a message. */
int srv_check_listen_fds(const dhps_server_config *c, char *err, size_t errlen);

/* The rpc handler of every service method; arg is the server. (handlers.c) */
int srv_rpc_handler(void *arg, dhps_rpc_request *r);

/* The HTTP endpoint: start it on cfg's metrics host/port. Returns 0 or -EADDRINUSE with
 * a message in err. (http.c) */
int srv_http_start(dhps_server *s, char *err, size_t errlen);
void srv_http_stop(dhps_server *s);
/* The admin HTTP families (open connections, header timeouts) for /metrics. */
void srv_http_metrics(dhps_server *s, FILE *f);

#endif

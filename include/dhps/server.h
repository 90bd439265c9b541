/*
 * dhps server: the parameter-server node. It owns one store (include/dhps/store.h) per
 * (table, virtual shard) it serves, answers the service protocol (include/dhps/proto.h)
 * over every rpc transport (include/dhps/rpc.h), snapshots its stores (on demand,
 * periodically, at shutdown) and reloads them at start, and serves Prometheus metrics
 * and a health endpoint over HTTP. The `dhps-server` binary is a thin main() around
 * this API; tests and the local-cluster tool embed it directly.
 *
 * Threading. Lookups run on every rpc worker thread, each worker with its own store
 *   reader per store (lock-free beside the writer). Writes (UPSERT, DELETE) and
 *   writer-only calls (stats, snapshot) on one store are serialized by a per-store
 *   mutex held only for one batch or one snapshot; lookups never take it. A background
 *   thread runs store maintenance (once a second) and the periodic snapshots; the
 *   metrics HTTP server has its own thread.
 *
 * Config: a JSON document (docs/server.md has every key); dhps_server_config_parse is
 *   a pure function over a buffer (fuzzed: fuzz_server_config).
 *
 * Readiness: a store whose shard has other replicas in the cluster map starts not ready
 *   and is caught up from its peers by the sync thread (docs/server.md "Replicas");
 *   until then its lookups answer DHPS_E_NOTREADY and its writes are applied. The node
 *   is ready (dhps_server_ready, /health 200) when local recovery is done and every
 *   store held at start is caught up. After that, anti-entropy repairs divergence every
 *   sync.anti_entropy_s.
 *
 * Membership (shards.follow_etcd with coord): the map in etcd decides what the node
 *   holds, at start and while it serves. A newer map opens stores (not ready, caught up
 *   from the shard's serving replicas) for shards it gives the node as a replica or
 *   joining node, and refuses at once then frees (after every rpc handler that could
 *   see them returned) the stores of shards it takes away; writes routed with a map
 *   older than a shard's last holder change answer DHPS_E_MOVED. The registration in
 *   etcd reports the applied map version and the shards not ready (docs/server.md
 *   "Following the map in etcd").
 *
 * Snapshots: one file per (table, shard): <snapshot_dir>/<table>.<shard>.snap, written
 *   by dhps_store_snapshot (temp file, fsync, rename: a crash leaves the last complete
 *   file). At start every existing file of an owned store is loaded before the server
 *   reports ready; a damaged file makes start fail with an error naming it (the server
 *   refuses to come up empty rather than serve, then overwrite, a data set it lost).
 *
 * Update log: with snapshot.dir set, every UPSERT/DELETE batch is appended to the update
 *   log (include/dhps/wal.h) under the store's writer lock before it is applied and
 *   acknowledged; start replays the log from the last checkpoint after loading the
 *   snapshots; a full snapshot writes a checkpoint and truncates the log
 *   (docs/server.md "Update log").
 */
#ifndef DHPS_SERVER_H
#define DHPS_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/error.h"
#include "dhps/proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DHPS_SERVER_MAX_TABLES 64
#define DHPS_SERVER_MAX_DIM 4096
#define DHPS_SERVER_MAX_SHARDS 65536

typedef struct dhps_server dhps_server;

typedef struct dhps_server_table_config {
    char name[DHPS_TABLE_NAME_MAX];  /* 1..47 bytes of [A-Za-z0-9_.-] */
    uint32_t dim;                    /* 1..4096 elements */
    int dtype;                       /* DHPS_FP32 or DHPS_FP16 */
    uint32_t default_ttl;            /* seconds, 0 = never */
    uint64_t mem_limit;              /* bytes for the whole table on this node, 0 = none;
                                        split evenly over the owned shards */
    uint64_t capacity;               /* keys expected on this node (sizes the indexes) */
    bool allow_nonfinite;            /* store NaN/+-inf values; by default an UPSERT with
                                        one (or an fp32 value an fp16 table cannot hold)
                                        is refused whole, -EDOM (default false) */
} dhps_server_table_config;

/* A parsed, validated config. Strings are owned by the config (freed with it). */
typedef struct dhps_server_config {
    char *node_id;                   /* required, non-empty */
    char *label_host, *label_pod, *label_az;   /* may be NULL */
    char *listen_host;               /* numeric IPv4 (default "127.0.0.1") */
    uint16_t tcp_port;               /* 0 = ephemeral */
    bool tcp_port_set;               /* listen.tcp_port given (else, in the map form, the
                                        port of this node's addr in the map) */
    bool shm;                        /* offer shared memory (default true) */
    bool verbs;                      /* offer RDMA verbs (default false) */
    uint32_t workers;                /* rpc worker threads 1..64 (default 2) */
    uint32_t max_msg;                /* rpc max message bytes (default 4 MiB) */
    uint32_t hello_timeout_ms;       /* bound on a peer's hello, 100..60000 (default 2000) */
    uint32_t rpc_max_connections;    /* listen.*: rpc limits (dhps_rpc_server_params; 0 = */
    uint32_t rpc_max_conns_per_peer; /*   the rpc library's default) */
    uint32_t rpc_max_input_mb;
    uint32_t rpc_frame_timeout_ms;
    uint32_t rpc_idle_timeout_s;     /* 0 = idle connections are kept */
    uint32_t ntables;
    dhps_server_table_config tables[DHPS_SERVER_MAX_TABLES];
    char *snapshot_dir;              /* NULL = no snapshots */
    uint32_t snapshot_interval_s;    /* 0 = no periodic snapshots */
    bool snapshot_on_shutdown;       /* default true */
    char *secret_file;               /* required */
    bool metrics_enabled;            /* false when "metrics" is absent or port is -1 */
    char *metrics_host;              /* default "127.0.0.1" */
    uint16_t metrics_port;           /* 0 = ephemeral */
    uint32_t metrics_max_connections;/* admin HTTP connections at once (default 64) */
    uint32_t metrics_max_per_ip;     /* of them from one address (default 16) */
    uint32_t metrics_header_timeout_ms; /* a connection must send a whole request header
                                        within this of opening or of its last answer, or it
                                        is cut (default 2000) */
    int32_t metrics_health_port;     /* a second HTTP listener answering only /health*
                                        (own connection budget), -1 = none (default -1) */
    uint32_t nshards;                /* virtual shards of the cluster, 1..65536 (0 until
                                        resolved when cluster_map is set) */
    uint8_t *owned;                  /* nshards bytes, 1 = this node serves the shard
                                        (NULL until resolved when cluster_map is set) */
    char *cluster_map;               /* cluster map path (include/dhps/cluster.h), or NULL */
    uint32_t map_node;               /* this node's id in the cluster map */
    char *pid_file;                  /* NULL = none */
    char *port_file;                 /* NULL = none; see dhps_server_start */
    uint32_t startup_delay_ms;       /* test hook: wait before loading (default 0) */
    bool sync_enabled;               /* sync.enabled: catch up from peer replicas and run
                                        anti-entropy (default true; needs cluster_map) */
    uint32_t sync_peer_wait_s;       /* sync.peer_wait_s: how long catch-up of a store
                                        that recovered data retries an unreachable peer
                                        before going on without it (default 10) */
    uint32_t sync_empty_peer_wait_s; /* sync.empty_peer_wait_s: the same for a store that
                                        recovered nothing; 0 = wait until a peer answers
                                        (default 0) */
    uint32_t sync_anti_entropy_s;    /* sync.anti_entropy_s: digest repair against every
                                        peer this often, 0 = off (default 30) */
    uint32_t sync_tombstone_s;       /* sync.tombstone_s: deletes remembered this long
                                        (default 3600; >= 2 x anti_entropy_s) */
    uint32_t sync_ranges;            /* sync.ranges: digest ranges per shard (default 256) */
    uint32_t sync_version_margin_s;  /* sync.version_margin_s: a restarted store first
                                        fetches records newer than its newest version
                                        minus this (writers' clock skew; default 60) */
    bool admin_faults;               /* admin.faults: serve /fault on the metrics port
                                        (set/clear/list the rpc server's fault rules,
                                        HMAC-authenticated; default false: 403) */
    /* the update log (include/dhps/wal.h, docs/server.md "Update log") */
    bool log_enabled;                /* log.enabled (default: true when snapshot.dir is
                                        set; the log needs snapshot.dir) */
    char *log_dir;                   /* log.dir (default "<snapshot.dir>/log") */
    int log_fsync;                   /* log.fsync: enum dhps_wal_sync (default interval) */
    uint32_t log_fsync_interval_ms;  /* log.fsync_interval_ms 1..10000 (default 10) */
    uint32_t log_segment_mb;         /* log.segment_mb 1..1024 (default 64) */
    uint32_t log_max_mb;             /* log.max_mb: past it the background thread takes a
                                        full snapshot, which truncates the log (default
                                        1024, at least segment_mb) */
    /* membership in etcd (include/dhps/coord.h, docs/cluster.md) */
    char *coord_etcd;                /* coord.etcd: client URL, NULL = no registration */
    char *coord_cluster;             /* coord.cluster: cluster name (required with etcd) */
    uint32_t coord_lease_ttl_s;      /* coord.lease_ttl_s 2..300 (default 10) */
    bool follow_etcd;                /* shards.follow_etcd: hold what the map in etcd
                                        gives map_node, adopt every newer version while
                                        serving and keep cluster_map as its copy (needs
                                        cluster_map, map_node and coord; default false) */
    char *startup_gate_file;         /* test hook: after startup_delay_ms, wait until this
                                        file exists before loading (health stays 503);
                                        NULL = none. */
    /* TLS on the rpc port and on this node's connections to its peers (docs/server.md
     * "TLS"). */
    int tls_policy;                  /* tls.policy: DHPS_RPC_TLS_OFF / _CROSS_AZ / _ALWAYS
                                        (rpc.h). off: no TLS; cross_az: the port takes TLS
                                        and plain, peers in another AZ are dialled with
                                        TLS; always: the port refuses plain TCP, every
                                        peer is dialled with TLS (default off) */
    char *tls_cert_file;             /* tls.cert_file: PEM chain of this node (its server
                                        certificate, also shown to peers it dials) */
    char *tls_key_file;              /* tls.key_file: its PEM key (mode 0600) */
    char *tls_ca_file;               /* tls.ca_file: PEM CA bundle verifying peers' and
                                        (verify_clients) clients' certificates */
    int tls_verify_clients;          /* tls.verify_clients: DHPS_RPC_TLS_VERIFY_NONE /
                                        _OPTIONAL / _REQUIRED ("none", "optional",
                                        "required"; default none) */
    char *tls_server_name;           /* tls.server_name: the DNS name every node's
                                        certificate carries, checked when dialling peers;
                                        NULL = the peer's address (an IP SAN) */
    /* Sockets from a launcher that holds the ports (socket activation: dhps-server takes
     * them from LISTEN_FDS, docs/server.md; not in the JSON), -1 = none (the default).
     * Each is an IPv4 TCP socket bound (listening or not) to listen.host / metrics.host
     * and, when the config names a non-zero port, to that port; the server listens on it
     * instead of binding. dhps_server_create takes them over (closed with the server, or
     * when create fails): a config with sockets serves one dhps_server_create. Last, so
     * earlier offsets keep. */
    int rpc_fd;                      /* the rpc listener (listen.tcp_port) */
    int metrics_fd;                  /* the HTTP listener (metrics.port; needs "metrics") */
    int health_fd;                   /* the /health listener (needs metrics.health_port) */
} dhps_server_config;

/*
 * Parse and validate a JSON config from buf[0..len) (need not be NUL-terminated).
 * Pure: touches no file. Returns 0 and sets *out (free with dhps_server_config_free),
 * or DHPS_E_CONFIG with a message naming the bad key written to err (errlen bytes,
 * NUL-terminated; err may be NULL), e.g. "config tables[1].dim: must be 1..4096".
 * -ENOMEM on allocation failure. Thread-safe.
 */
int dhps_server_config_parse(const void *buf, size_t len, dhps_server_config **out,
                             char *err, size_t errlen);

/*
 * Resolve the shards a config owns from its cluster map (when cluster_map is set):
 * load the map, check map_node is in it, set nshards and owned from the map (a node
 * owning no shard is accepted with a warning) and, unless listen.tcp_port was given,
 * tcp_port from the node's addr. No effect without cluster_map. With follow_etcd the
 * file may be missing (0, nshards stays 0: the map comes from etcd at start) and a
 * map_node the map does not list is accepted (it holds nothing until a map adds it).
 * Returns 0, or DHPS_E_CONFIG with a message naming the map file in err. Reads the
 * file, never etcd; not thread-safe on one config. dhps_server_create resolves its copy
 * (from the newer of the file and etcd's map with follow_etcd).
 */
int dhps_server_config_resolve(dhps_server_config *c, char *err, size_t errlen);

/*
 * Everything `dhps-server --check-config` checks, which is everything dhps_server_create
 * would refuse the config for before serving: resolve (above), the secret file (mode,
 * strength), snapshot.dir (a writable directory), log.dir (or a writable parent), and
 * that the configured non-zero ports (listen.tcp_port, metrics.port, metrics.health_port)
 * can be bound now, or that the sockets given instead (rpc_fd, ...) are bound where the
 * config says. Returns 0 or DHPS_E_CONFIG (-errno for a socket failure) with one line in
 * err. Not thread-safe on one config.
 */
int dhps_server_config_check(dhps_server_config *c, char *err, size_t errlen);

/* Read path and parse it as dhps_server_config_parse does; a read failure is
 * DHPS_E_CONFIG with "config <path>: <strerror>". */
int dhps_server_config_load(const char *path, dhps_server_config **out, char *err,
                            size_t errlen);

/* Free a config; NULL allowed. */
void dhps_server_config_free(dhps_server_config *c);

/*
 * Create a server from cfg (copied; cfg may be freed afterwards): reads the secret
 * file, creates the stores and the rpc server (its TCP port is bound now, or the rpc_fd
 * socket taken over). Nothing runs yet. Returns 0 and sets *out, or DHPS_E_CONFIG (bad
 * secret file: missing, empty, too long, too weak, or open to its group or other users
 * (dhps_client_secret_load's rules, docs/security.md); a socket given not bound where the
 * config says; message in err), -errno (bind, ...), -ENOMEM. Free with
 * dhps_server_destroy.
 */
int dhps_server_create(const dhps_server_config *cfg, dhps_server **out, char *err,
                       size_t errlen);

/*
 * Start: metrics/health endpoint first (health answers 503), then write the pid file
 * and the port file ("<rpc port> <metrics port>\n", written to a temp file and renamed,
 * so a reader never sees half of it), load the snapshots of owned stores, start the rpc
 * threads and the snapshot thread, and turn health to 200. Returns 0, or a negative
 * error with a message in err: DHPS_E_CORRUPT / DHPS_E_VERSION / -errno naming the
 * snapshot file that failed to load, -errno from the HTTP server or threads. On error
 * the server must still be destroyed. Call once.
 */
int dhps_server_start(dhps_server *s, char *err, size_t errlen);

/* The bound rpc TCP port / metrics port (0 when metrics are off). Thread-safe. */
uint16_t dhps_server_port(const dhps_server *s);
uint16_t dhps_server_metrics_port(const dhps_server *s);

/* The bound port of the /health-only listener (metrics.health_port), 0 when none.
 * Thread-safe. */
uint16_t dhps_server_health_port(const dhps_server *s);

/* Is the node ready: start finished loading (snapshots, update log) and every store held
 * at start is caught up from its peers (health 200)? Stores a newer map adds later are
 * reported in the registration's not_ready, not here. Thread-safe. */
bool dhps_server_ready(const dhps_server *s);

/* Snapshot every owned store now (takes each store's writer lock in turn; lookups go
 * on). Returns the number of stores written, or the first negative error (the other
 * stores are still attempted). -ENOENT when no snapshot_dir is configured.
 * Thread-safe. */
int dhps_server_snapshot(dhps_server *s);

/*
 * Stop the rpc and metrics threads and the snapshot thread, then (when configured and
 * the server had started) write the final snapshot; remove the pid file. Returns 0 or
 * the final snapshot's error. Idempotent; not from an rpc handler.
 */
int dhps_server_stop(dhps_server *s);

/* Stop (if running) and free everything. NULL allowed. */
void dhps_server_destroy(dhps_server *s);

/* ---- fp16 helpers (exported for tests and the client) -------------------------- */

/* Convert n values. Use F16C when the CPU has it (runtime check), else a scalar
 * path with the same results (round to nearest even, NaN stays NaN, overflow -> inf).
 * Thread-safe. */
void dhps_fp16_from_fp32(uint16_t *dst, const float *src, size_t n);
void dhps_fp16_to_fp32(float *dst, const uint16_t *src, size_t n);
/* Force the scalar path (true) or the automatic choice (false). Tests only; not
 * thread-safe against running conversions. Returns whether F16C is available. */
bool dhps_fp16_force_scalar(bool scalar);

#ifdef __cplusplus
}
#endif
#endif

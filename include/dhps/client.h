/*
 * dhps client: batched embedding lookups and updates against a dhps cluster, for many
 * inference threads at once.
 *
 * Design (reference, semantics and test record in docs/client.md):
 *
 * Map. The client is created from a cluster map file (include/dhps/cluster.h). It keeps
 *   the parsed map behind a refcount: every call pins the current map for its whole
 *   duration, so a reload never changes routing under a request in flight. The file is
 *   re-checked (stat: mtime, size, inode) at most every reload_interval_ms, on the first
 *   call after that interval, and at once when a server answers DHPS_E_NOTFOUND ("shard
 *   not owned here", i.e. the client routed with an old map) or DHPS_E_MOVED (below); a
 *   new file replaces the map only when its version is greater. With params.etcd the
 *   map comes from etcd instead (/dhps/<cluster>/map, docs/cluster.md): read at create,
 *   then watched by a thread (include/dhps/coord.h) that installs every newer version
 *   the same way, and read at once (a get of the map key, besides the watch) when a
 *   server says the map is old - after "not owned" at most once per 100 ms; an etcd
 *   outage freezes the map, never the data path (stats coord_*, map_refreshes).
 *
 * Threads. The rpc library's client is an event loop owned by one thread (rpc.h). So
 *   each thread that calls into a dhps_client gets its own rpc client and its own
 *   channels, created lazily on its first call and kept in thread-specific storage
 *   (one pthread key per dhps_client): no lock on the data path, no loop shared between
 *   threads. A thread's state is freed when the thread exits, or by
 *   dhps_client_destroy. A channel to a node is opened on first use, with the transport
 *   left to the rpc hello (shm on the same host, verbs where both ends have a device,
 *   else TCP); a node that refused a connection is not re-dialled by that thread for
 *   redial_backoff_ms. Shared state is small: the map pointer (mutex, taken once per
 *   call), the router (lock-free), counters (relaxed atomics), the version clock (CAS).
 *
 * Lookup. Keys are bucketed by shard (dhps_proto_shard_of over the map's nshards); each
 *   shard's keys become one or more LOOKUP messages (split so a request and its response
 *   fit max_msg). Every message is sent before the first poll, so several shards bound
 *   for one node leave in one flush (the rpc library coalesces a poll turn's frames per
 *   connection). Responses are scattered straight into the caller's dense output in key
 *   order (fp32 or fp16, converting if the server sent the other width). A failed
 *   message (error, timeout of its rpc call, "not owned", "not ready") is retried on
 *   another replica of the shard, excluding those already tried, while the deadline
 *   leaves room and the router allows it. A replica that is recovering or catching up
 *   answers DHPS_E_NOTREADY (it holds writes, but its data may be incomplete): that is a
 *   failed attempt - never an answer: its keys are not "absent" - after which the node
 *   is left out of this client's lookup picks for 250 ms, then asked again; the router
 *   gets no verdict for it (no breaker opening, no isolation that grows while the node
 *   catches up), so the node has its traffic back within a hold of being ready. When the deadline passes, or no replica is left to
 *   ask, the call returns what it has: keys without an answer ("unanswered") are marked
 *   missing and get the default row, and the return code says the result is partial.
 *   Hence the contract: a lookup returning 0 marked missing only keys that a ready
 *   replica answered "absent" (the cluster invariant of the design brief, section 4: a
 *   not-ready replica answers "not ready", never "absent"). Calls still in flight when
 *   the call returns are detached: they complete later inside a poll of the same thread
 *   (any later call), touching only their own heap record, never the caller's buffers.
 *
 * Update. One version per batch from a hybrid logical clock (max(realtime ns, last+1),
 *   shared by all threads of the client), so every replica of a key stores the same
 *   version and replicas converge whatever order the messages arrive in (servers keep
 *   the higher version). Each shard's keys go to every replica; the call returns when
 *   every shard has the acknowledgements its ack policy asks for (all replicas, a
 *   majority, or one), or at the deadline; keys of shards short of it are reported in
 *   failed_mask. A replica answering that the key holds a newer version ("stale")
 *   counts as an acknowledgement: the replica already has something at least as new.
 *   A message that failed in a way that may pass (connection lost, handler error,
 *   overload) is re-sent to the same replica - same version, so idempotent - after a
 *   short backoff, up to max_attempts, while its shard still lacks acknowledgements.
 *
 * Membership (issue 10; docs/cluster.md). A shard may have joining nodes besides its R
 *   replicas: nodes catching up to take a replica's place (dhps_cluster_map_joining).
 *   A write goes to the shard's holders - replicas and joining nodes. ACK_ALL needs
 *   every replica and every joining node; QUORUM (R/2+1) and ONE count serving replicas
 *   only (joining nodes are still sent the write). Reads - first picks, retries, hedges
 *   - choose among the replicas only: a joining node is never asked. A server following
 *   the etcd map refuses a write routed with a map older than the shard's last holder
 *   change: DHPS_E_MOVED. When a chunk can no longer meet its policy and a node refused
 *   it so (or a replica answered "not owned": a flip moved the shard away), the client
 *   refreshes the map at once (etcd: a get of the map key bounded by the call's
 *   deadline; file: the re-check) and, if it is newer, re-routes the chunk to its holder
 *   set there, same version (idempotent): acknowledgements of nodes that are still
 *   holders count, refused messages are re-sent with the new map (whose version their
 *   header carries), new holders are sent the chunk, nodes no longer holders stop
 *   counting. At most 3 re-routes and 3 refreshes per call; no newer map: the chunk
 *   fails (failed_mask) with DHPS_E_MOVED. A joining node answering "not owned" has not
 *   applied the map that added it yet: re-sent to it after 5 ms, up to max_attempts.
 *
 * Routing. Reads choose replicas through a small const ops table (dhps_client_router_ops):
 *   pick(replicas, excluded) and report(pick, latency, outcome), plus optional retry
 *   and hedge budgets. Two are built in: "first healthy" (map order, skipping nodes that
 *   failed in the last second; never hedges) and an adapter to the route library (tiers
 *   from host/pod/az labels, P2C, breakers, retry and hedge budgets), the default when
 *   the client's own labels are given. Hedging: a lookup message still unanswered after
 *   the router's hedge delay (~p95 of its tier) is sent once more to another replica if
 *   the hedge budget allows; the first answer is used, the other reported cancelled.
 *   The wait loop wakes at millisecond granularity (rpc poll), so hedges fire >= 1 ms.
 *
 * Errors (error.h): -EINVAL (bad arguments), DHPS_E_CONFIG (bad map or params),
 *   DHPS_E_TOOBIG (dim too large for max_msg), DHPS_E_TIMEOUT / DHPS_E_UNREACHABLE /
 *   DHPS_E_NOTREADY / DHPS_E_HANDLER / DHPS_E_NOTFOUND / DHPS_E_MALFORMED /
 *   DHPS_E_MOVED (writes) (partial results: see the functions), -ENOMEM.
 */
#ifndef DHPS_CLIENT_H
#define DHPS_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_client dhps_client;

/* ---- routers ------------------------------------------------------------------------- */

/* One replica choice, returned by pick and handed back to report. */
typedef struct dhps_client_pick {
    uint32_t node;      /* chosen node id */
    uint8_t kind;       /* DHPS_ROUTE_PRIMARY / _RETRY (route.h values) */
    uint8_t tier;       /* router-defined (route adapter: its tier) */
    uint8_t flags;      /* router-defined */
    uint64_t start_ns;  /* router clock at the pick (router-defined) */
} dhps_client_pick;

enum dhps_client_outcome {
    DHPS_CLIENT_OK = 0,      /* answered */
    DHPS_CLIENT_ERROR = 1,   /* failed: refused, reset, handler error, not owned,
                                not ready (a replica recovering or catching up) */
    DHPS_CLIENT_TIMEOUT = 2, /* no answer before the deadline */
    DHPS_CLIENT_CANCELLED = 3, /* the other attempt of a hedged pair answered first */
};

/*
 * A replica-choice policy. All functions may be called from any number of threads at
 * once (the client shares one router between its threads).
 *   pick:    choose one of replicas[0..n) not in excluded[0..n_excluded); kind is
 *            DHPS_ROUTE_PRIMARY (0) for a first attempt, DHPS_ROUTE_HEDGE (1) for a
 *            hedge, DHPS_ROUTE_RETRY (2) for a retry. Returns 0 and fills *out, or
 *            DHPS_E_UNREACHABLE (nothing left). out->start_ns must be CLOCK_MONOTONIC.
 *   report:  outcome of a successful pick, exactly once per pick.
 *   allow_retry: may a failed attempt be retried now, given the absolute deadline
 *            (CLOCK_MONOTONIC ns)? NULL = yes.
 *   hedge_delay / hedge_acquire: after how many ns an unanswered attempt is hedged, and
 *            may a hedge be sent now (budget). Both NULL = the router does not hedge.
 *   set_nodes: the map changed (called before the new map is used; may be NULL).
 *   destroy: free self (may be NULL).
 */
typedef struct dhps_client_router_ops {
    const char *name;
    int (*pick)(void *self, const uint32_t *replicas, size_t n, const uint32_t *excluded,
                size_t n_excluded, int kind, dhps_client_pick *out);
    void (*report)(void *self, const dhps_client_pick *pick, uint64_t latency_ns, int outcome);
    bool (*allow_retry)(void *self, uint64_t deadline_ns);
    uint64_t (*hedge_delay)(void *self, const dhps_client_pick *pick);
    bool (*hedge_acquire)(void *self, uint64_t deadline_ns);
    void (*set_nodes)(void *self, const dhps_cluster_map *map);
    void (*destroy)(void *self);
} dhps_client_router_ops;

/* The built-in "first healthy" policy: replicas in map order, skipping any that failed
 * within the last second (unless all did). self: a handle from
 * dhps_client_router_first_healthy_create. */
extern const dhps_client_router_ops dhps_client_router_first_healthy;
/* Create its state (max_node_id: largest node id it will see). NULL on -ENOMEM. */
void *dhps_client_router_first_healthy_create(uint32_t max_node_id);

/* The adapter to the route library (route.h): self is a dhps_route * created for this
 * client's labels (the client makes one when labels are given and no router is). */
extern const dhps_client_router_ops dhps_client_router_route;

/* ---- client -------------------------------------------------------------------------- */

enum dhps_client_router_kind {
    DHPS_CLIENT_ROUTER_AUTO = 0,          /* route library when labels.host is set, else
                                             first healthy */
    DHPS_CLIENT_ROUTER_FIRST_HEALTHY = 1,
    DHPS_CLIENT_ROUTER_ROUTE = 2,
    DHPS_CLIENT_ROUTER_CUSTOM = 3,        /* router_ops / router_self below */
};

typedef struct dhps_client_params {
    const char *map_path;        /* cluster map file (required unless etcd is set) */
    const void *secret;          /* shared cluster secret (copied) */
    size_t secret_len;
    const char *host, *pod, *az; /* this client's labels (NULL = unknown) */
    int router;                  /* enum dhps_client_router_kind (default AUTO) */
    const dhps_client_router_ops *router_ops; /* CUSTOM: ops, and its state (owned by */
    void *router_self;                        /*   the client after create: destroy runs) */
    uint32_t max_node_id;        /* largest node id any map may use (default 4095) */
    uint32_t max_msg;            /* rpc max message (default 256 KiB) */
    uint32_t connect_timeout_ms; /* rpc connect + hello bound (default 1000) */
    uint32_t redial_backoff_ms;  /* a thread does not re-dial a refusing node for this
                                    long (default 100) */
    uint64_t default_timeout_us; /* deadline of calls passing 0 (default 100000) */
    uint32_t reload_interval_ms; /* map file check period, 0 = only on "not owned"
                                    (default 1000) */
    uint32_t max_attempts;       /* attempts per lookup sub-batch, hedges not counted
                                    (default 3) */
    bool hedge;                  /* hedge slow lookup sub-batches when the router can
                                    (route: after ~p95 of the tier, 5 % budget; default
                                    true) */
    uint32_t attempt_timeout_us; /* lookups: an attempt unanswered this long is reported
                                    to the router as timed out at once and its sub-batch
                                    re-sent to another replica (retry budget) while it
                                    may still answer; 0 = a quarter of the call's
                                    deadline, at least 1 ms; UINT32_MAX = never (attempts
                                    then only end at the deadline) (default 0) */
    const char *etcd;            /* etcd client URL ("http://127.0.0.1:2379"; copied):
                                    load the map from /dhps/<cluster>/map and watch it,
                                    applying every newer version; during an etcd outage
                                    the last map stays in use (stats coord_*). With
                                    map_path too, the file is used when etcd is down at
                                    create. NULL = the map file only (default) */
    const char *cluster;         /* cluster name in etcd (required with etcd; copied) */
    bool allow_nonfinite;        /* let updates carry NaN and +-inf in fp32/fp16 rows; by
                                    default such an update is refused whole (-EDOM), and
                                    servers refuse them again unless the table allows
                                    them (tables[].allow_nonfinite) (default false) */
    /* TLS to the nodes (docs/client.md "TLS"; rpc.h, docs/rpc.md §4). Strings copied. */
    int tls;                     /* DHPS_RPC_TLS_OFF (default), _CROSS_AZ: TLS to nodes
                                    whose az label differs from this client's az (or when
                                    either is unknown), plain TCP within the AZ; _ALWAYS:
                                    TLS to every node (dhps_rpc_tls_wanted) */
    const char *tls_ca_file;     /* PEM CA bundle verifying the nodes' certificates
                                    (required unless tls is off) */
    const char *tls_cert_file;   /* client certificate and key, for nodes that verify */
    const char *tls_key_file;    /*   clients (both or neither; default NULL) */
    const char *tls_server_name; /* DNS name every node's certificate carries; NULL
                                    (default) = the node's address, as an IP SAN */
    uint32_t spin_us;            /* a calling thread waiting for its answers spins up to
                                    this long before sleeping, 0..DHPS_RPC_SPIN_US_MAX (rpc.h
                                    dhps_rpc_client_params.spin_us; default 50, 0 =
                                    sleep at once) */
} dhps_client_params;

/* Fill p with the defaults above. */
void dhps_client_params_init(dhps_client_params *p);

/*
 * Create a client: load and validate the map, create the router. No connection is made
 * until a thread's first call. Returns 0 and sets *out, or -EINVAL (NULL, no map path,
 * tls or spin_us out of range),
 * DHPS_E_CONFIG (invalid map, a node id above max_node_id, bad params), -errno (map file
 * unreadable), -ENOMEM. DHPS_E_CONFIG also for an unusable TLS file (logged, naming it:
 * dhps_rpc_tls_check) or tls on without tls_ca_file. On failure a CUSTOM router_self is
 * destroyed too.
 * Free with dhps_client_destroy. The returned client is thread-safe (see the essay).
 */
int dhps_client_create(const dhps_client_params *p, dhps_client **out);

/*
 * Free the client, every thread's rpc client and channels (calls in flight complete
 * with DHPS_E_CANCELLED internally) and the router. NULL allowed. No call on c may be
 * running or follow, on any thread.
 */
void dhps_client_destroy(dhps_client *c);

/*
 * Read a cluster secret file the one way dhps-server and the dhps tools read it
 * (docs/security.md "The cluster secret"), for dhps_client_params.secret: mode 0600 (no
 * group or other access), then either a random secret (at least 32 bytes with 10
 * distinct values; trailing newlines stripped) used as it is, or a passphrase file
 * ("scrypt:N=<N>,r=<r>,p=<p>,salt=<hex>:<passphrase>", `dhps keygen --passphrase`) whose
 * 32-byte key is derived with scrypt here (about 0.2 s and 32 MiB at the default cost:
 * call it once). On success 0 and the key in buf[0..*len); cap =
 * DHPS_RPC_MAX_SECRET fits every accepted file. Else DHPS_E_CONFIG and one line in err
 * (errlen bytes; err may be NULL) naming the path, what is wrong and the fix, nothing in
 * buf; -EINVAL for a NULL path, buf or len. Thread-safe.
 */
int dhps_client_secret_load(const char *path, void *buf, size_t cap, size_t *len, char *err,
                            size_t errlen);

/*
 * Register the default row of table for missing keys (dim fp32 values, copied); NULL
 * vec removes it (missing rows are then zeros). Used by lookups asking for exactly this
 * dim. Returns 0, -EINVAL, -ENOMEM. Not safe concurrently with lookups on the same
 * table: register defaults before serving.
 */
int dhps_client_set_default(dhps_client *c, const char *table, const float *vec, uint32_t dim);

/* Outcome counters of one call (optional out-parameter). */
typedef struct dhps_client_result {
    size_t found;        /* keys answered with a stored value */
    size_t missing;      /* keys marked in missing_mask / failed_mask */
    size_t unanswered;   /* of those, keys no ready replica answered (partial result:
                            every replica tried was not ready, unreachable, failed or
                            timed out); missing - unanswered keys were answered
                            "absent" */
    uint32_t messages;   /* rpc messages sent (sub-batches, retries, fan-out) */
    uint32_t retries;    /* lookup: messages re-sent to another replica; update/delete:
                            messages re-sent to the same replica */
    uint32_t hedges;     /* lookup messages duplicated to another replica (hedges) */
    uint64_t version;    /* update: the version the batch was written with */
} dhps_client_result;

/*
 * Look up n keys of table. out receives n rows of dim values, row i for keys[i], each
 * dim * (4 for DHPS_FP32, 2 for DHPS_FP16) bytes, packed. missing_mask (n bits, u64
 * words, may be NULL) gets bit i set when keys[i] was not found or not answered; such
 * rows hold the table's default (dhps_client_set_default) or zeros. timeout_us: the
 * deadline from now (0 = params.default_timeout_us). A replica answering "not ready"
 * (DHPS_E_NOTREADY: recovering, catching up) is not an answer: the keys are asked of
 * another replica of the shard, and stay unanswered if none is left.
 *
 * Returns 0 when every key got an answer from a ready replica (found or not): then every
 * key marked in missing_mask was answered "absent" by a replica that was ready. Else -
 * with out and missing_mask fully written all the same, res->unanswered counting the
 * keys no ready replica answered - the error that left keys unanswered (the last reason
 * of the first such sub-batch, a deadline only when nothing else went wrong):
 * DHPS_E_TIMEOUT (deadline), DHPS_E_NOTREADY (the replicas asked were not ready),
 * DHPS_E_UNREACHABLE (no replica reachable), DHPS_E_AUTH, DHPS_E_NOTFOUND (no replica
 * owns the shard / table unknown), DHPS_E_HANDLER, DHPS_E_MALFORMED (bad response).
 * Errors that write nothing: -EINVAL (NULL args, dtype not FP32/FP16, dim 0, n 0 is
 * fine and returns 0), DHPS_E_TOOBIG (a row larger than a message), -ENOMEM.
 * Thread-safe; keys/out/missing_mask belong to the caller and are not touched after the
 * call returns. Blocks up to the deadline (plus a connect on a thread's first use).
 */
int dhps_client_lookup(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                       uint64_t timeout_us, dhps_client_result *res);

/*
 * dhps_client_lookup, and also unanswered_mask (n bits, u64 words, may be NULL): bit i
 * set when no ready replica answered for keys[i] (a subset of missing_mask; missing and
 * not unanswered = answered "absent"). For callers that report keys one by one (the
 * `dhps get` tool). Same returns, same threading.
 */
int dhps_client_lookup_masks(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                             void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                             uint64_t *unanswered_mask, uint64_t timeout_us,
                             dhps_client_result *res);

enum dhps_client_ack {
    DHPS_ACK_ALL = 0,     /* every replica and every joining node of the shard acknowledged */
    DHPS_ACK_QUORUM = 1,  /* a majority of the serving replicas: R/2 + 1 */
    DHPS_ACK_ONE = 2,     /* at least one serving replica */
};

/* ttl value meaning "the table's default TTL" (proto.h: 0xFFFFFFFF). */
#define DHPS_CLIENT_TTL_DEFAULT 0xFFFFFFFFu

/*
 * Write n rows (values: n x dim of dtype, packed) to table with one new version, to every
 * replica and every joining node of each key's shard; ttl in seconds (0 none,
 * DHPS_CLIENT_TTL_DEFAULT). Returns when every shard has the acknowledgements ack asks
 * for (joining nodes count for ACK_ALL only), or at the deadline. A shard refused as
 * routed with an old map (DHPS_E_MOVED, or "not owned" from a replica) is re-routed to
 * a newer map's holders when one can be had (essay: "Membership"). failed_mask (n bits,
 * may be NULL) gets bit i set when keys[i]'s shard fell short. Returns 0 (all keys
 * acknowledged per policy), or the first error behind a shortfall (DHPS_E_TIMEOUT,
 * DHPS_E_UNREACHABLE, DHPS_E_HANDLER, DHPS_E_NOTFOUND, DHPS_E_MOVED: refused as routed
 * with an old map and no newer one to re-route to, ...) with failed_mask written;
 * a replica that is not ready still takes writes, and should it answer DHPS_E_NOTREADY
 * anyway the message is re-sent to it like after any transient failure;
 * -EINVAL, -EDOM (a NaN or +-inf in an fp32/fp16 row without params.allow_nonfinite),
 * DHPS_E_TOOBIG, -ENOMEM write nothing. Messages to replicas beyond the policy
 * still complete in the background (later polls of this thread). Thread-safe.
 */
int dhps_client_update(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res);

/*
 * Delete n keys of table on every replica of their shards, with one new version (a
 * replica deletes a key whose stored version is <= it, so a delete never removes a newer
 * write). Acks, failed_mask, return codes and threading as dhps_client_update; a key
 * that was absent counts as deleted.
 */
int dhps_client_delete(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res);

/*
 * A table's element count per row (dim) and dtype (DHPS_FP32 / DHPS_FP16), as the nodes
 * of the current map declare it (their INFO): the nodes are asked in map order, over a
 * TCP channel of this call's own (opened and closed here, one rpc client per call: it
 * costs a connect and a hello per node asked, so call it once, not per lookup), until
 * one lists the table. timeout_us bounds the whole call (0 = params.default_timeout_us).
 * Returns 0 with *dim and *dtype set, DHPS_E_NOTFOUND (no node asked lists the table,
 * or the map has no node), else the first failure of the nodes asked (DHPS_E_TIMEOUT,
 * DHPS_E_UNREACHABLE, DHPS_E_AUTH, DHPS_E_MALFORMED, ...); -EINVAL (NULL argument,
 * table name too long), -ENOMEM. Thread-safe; does not touch the calling thread's
 * channels used by lookups.
 */
int dhps_client_table_info(dhps_client *c, const char *table, uint32_t *dim, int *dtype,
                           uint64_t timeout_us);

/* Next version of the client's hybrid logical clock (what the next update will use or
 * later). Thread-safe. */
uint64_t dhps_client_next_version(dhps_client *c);

/*
 * Check the map file now: reload when its version is greater than the current one.
 * Returns 1 (reloaded), 0 (unchanged or not newer, or no map file: a client on etcd
 * gets maps from its watch), or the load error (the old map stays). Thread-safe.
 */
int dhps_client_reload(dhps_client *c);

/* Version of the map in use. Thread-safe. */
uint64_t dhps_client_map_version(dhps_client *c);

/* Name of the router in use ("first_healthy", "route", or the custom ops' name). */
const char *dhps_client_router_name(const dhps_client *c);

typedef struct dhps_client_node_stats {
    uint64_t messages;  /* rpc messages sent to the node */
    uint64_t ok;        /* answered */
    uint64_t errors;    /* failed (incl. not owned, not ready) */
    uint64_t not_ready; /* of errors: answers DHPS_E_NOTREADY (recovering, catching up) */
    uint64_t timeouts;  /* no answer before the deadline */
    uint64_t cancelled; /* hedge losers: lookup attempts whose message the other attempt
                           had already answered, whatever became of them (answered late,
                           failed, timed out); counted in none of ok/errors/timeouts.
                           messages = ok + errors + timeouts + cancelled + in flight */
    uint64_t connects;  /* channels opened (over all threads) */
    uint64_t connect_failures;
    int last_error;     /* error of the node's latest failed attempt, one counted in errors
                           or timeouts (DHPS_E_NOTREADY, _UNREACHABLE, _TIMEOUT, _AUTH,
                           ...), 0 = none yet: tools take the reason a node failed from it */
} dhps_client_node_stats;

typedef struct dhps_client_stats {
    uint64_t lookups, updates;     /* calls (updates include deletes) */
    uint64_t keys_looked_up, keys_updated;
    uint64_t sub_batches;          /* messages sent (first attempts and fan-out) */
    uint64_t retries;              /* messages re-sent (lookups: another replica;
                                      updates: the same replica) */
    uint64_t hedges;               /* lookup messages hedged to another replica */
    uint64_t partial;              /* lookups returning with unanswered keys */
    uint64_t update_shortfalls;    /* updates returning with failed keys */
    uint64_t not_owned;            /* DHPS_E_NOTFOUND answers */
    uint64_t not_ready;            /* DHPS_E_NOTREADY answers (the nodes' not_ready summed) */
    uint64_t map_reloads;          /* maps replaced */
    uint64_t threads;              /* per-thread states created */
    uint64_t coord_outages;        /* etcd map watch: outages begun (etcd unreachable; the
                                      last map stays in use) */
    uint64_t coord_errors;         /* etcd: failed calls and invalid maps ignored */
    uint64_t coord_up;             /* 1 while the etcd map watch is connected */
    uint64_t moved;                /* write shard chunks re-routed to a newer map after a
                                      node answered DHPS_E_MOVED */
    uint64_t map_refreshes;        /* on-demand map refreshes (after DHPS_E_MOVED or "not
                                      owned"): etcd gets, or map file re-checks */
} dhps_client_stats;

/* Read the counters (relaxed loads). Thread-safe. */
void dhps_client_stats_get(dhps_client *c, dhps_client_stats *st);

/* Per-node counters; node_id <= max_node_id. Returns 0 or -EINVAL. Thread-safe. */
int dhps_client_node_stats_get(dhps_client *c, uint32_t node_id, dhps_client_node_stats *st);

struct dhps_route;
struct dhps_route_stats;
/* The route library instance behind this client's routing (the route adapter, made for
 * its labels or passed as router_self), for dhps_route_stats_get and
 * dhps_route_node_stats_get: its decisions (spills, breaker openings by reason, hedges)
 * and its tier estimates. NULL when the client routes another way (first healthy, a
 * custom router). Valid until dhps_client_destroy. Thread-safe. */
struct dhps_route *dhps_client_route(dhps_client *c);

/*
 * Open the calling thread's channels to every node of the current map now, all at once,
 * and wait until each is ready or failed (each bounded by connect_timeout_ms), so that
 * its first calls do not pay for connection set-up inside their deadlines: a thread's
 * first call otherwise starts the opens it needs (without blocking on them; its calls
 * wait for the hello inside their deadlines). Returns the number of nodes that could not
 * be reached (they are re-dialled on use, after redial_backoff_ms), -EINVAL or -ENOMEM.
 * Only the calling thread's channels.
 */
int dhps_client_connect(dhps_client *c);

/*
 * Wait up to timeout_us for the rpc calls the calling thread still has in flight to
 * complete: the losers of hedged lookups and the messages beyond an update's ack policy,
 * which otherwise complete in the thread's next call. Only the calling thread's calls
 * are waited for (each thread has its own). Returns the number still in flight (0: all
 * done; their counters are final), or -EINVAL. Use it before reading counters that must
 * cover everything sent, or before a thread goes idle for long.
 */
int dhps_client_drain(dhps_client *c, uint64_t timeout_us);

/*
 * Fault injection toward one node (tests, operators): install rpc fault rule f for the
 * node's address in the current map (dhps_rpc_fault_set(node ip, port, f)), or remove it
 * when f is NULL. The rpc rule table is process-wide, so every thread of this client
 * (and any other rpc client of the process talking to that address) sees it; a map
 * reload that moves the node does not move the rule. Read its counters with
 * dhps_rpc_fault_get_stats. Returns 0, -EINVAL, -ENOENT (no such node in the map, or f
 * NULL and no rule), or dhps_rpc_fault_set's errors. Thread-safe.
 */
int dhps_client_fault_set(dhps_client *c, uint32_t node_id, const dhps_rpc_fault *f);

#ifdef __cplusplus
}
#endif
#endif

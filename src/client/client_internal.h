/*
 * dhps client internals: the state the client's files share. Private to src/client.
 *
 *   client.c  create / destroy, params, default rows, version clock, counters, faults
 *   router.c  the built-in routers: first healthy, route library adapter
 *   map.c     the map cache (refcounted pin per call) and its reload
 *   thread.c  per-thread rpc client and channels; connect, drain
 *   call.c    one op's life, planning by shard, sending a message, classifying answers
 *   lookup.c  lookup scatter / gather, retries, hedges, attempt timeouts, trace
 *   write.c   update / delete fan-out and ack counting
 */
#ifndef DHPS_CLIENT_INTERNAL_H
#define DHPS_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "dhps/client.h"
#include "dhps/rpc.h"
#include "util.h"

struct map_ref {
    dhps_cluster_map *m;
    _Atomic uint32_t refs;
};

struct node_ctr {
    _Atomic uint64_t messages, ok, errors, timeouts, cancelled, connects, connect_failures,
        not_ready;
    _Atomic uint64_t not_ready_until_ns; /* answered "not ready": lookups go elsewhere
                                            until then (CLIENT_NOT_READY_HOLD_NS) */
    _Atomic int last_error; /* latest failed attempt's error */
};

struct tdefault {
    struct tdefault *next;
    char table[DHPS_TABLE_NAME_MAX];
    uint32_t dim;
    float *vec;
};

struct chan {
    dhps_rpc_channel *ch;
    char addr[DHPS_CLUSTER_ADDR_MAX + 1];
    uint64_t retry_at_ns; /* after a failed dial: not before this */
    uint32_t allow;       /* transports the channel was opened with (path_allow) */
    bool tls;             /* opened with TLS (client_node_tls) */
    bool broken;
    bool ended;           /* its open's end was counted (connects / connect_failures) */
};

struct tstate {
    dhps_client *c;
    dhps_rpc_client *rpc;
    uint64_t inflight;  /* rpc calls of this thread not completed yet (detached ones too) */
    struct chan *chans; /* indexed by node id */
    size_t nchans;
    struct tstate *next, *prev;
    bool listed;
};

struct dhps_client {
    dhps_client_params p;
    char *map_path;
    void *secret;
    char host[DHPS_CLUSTER_LABEL_MAX + 1], pod[DHPS_CLUSTER_LABEL_MAX + 1],
        az[DHPS_CLUSTER_LABEL_MAX + 1];

    pthread_mutex_t lock;        /* cur, threads list, defaults */
    struct map_ref *cur;
    pthread_mutex_t reload_lock; /* one reload at a time; file identity below */
    struct stat file_st;
    _Atomic uint64_t last_check_ns;
    _Atomic uint64_t last_refresh_ns; /* latest on-demand etcd get (rate limit) */

    const dhps_client_router_ops *rops;
    void *rself;

    pthread_key_t key;
    struct tstate *threads;
    struct tdefault *defaults;

    _Atomic uint64_t hlc;
    bool trace;                  /* DHPS_CLIENT_TRACE set: print failed lookups' attempts */
    struct {
        _Atomic uint64_t lookups, updates, keys_looked_up, keys_updated, sub_batches, retries,
            hedges, partial, update_shortfalls, not_owned, not_ready, map_reloads, threads,
            coord_outages, coord_errors, coord_up, moved, map_refreshes;
    } st;
    struct node_ctr *nodes; /* max_node_id + 1 */
    struct client_etcd *etcd; /* NULL: the map comes from the file only (etcd.c) */
    char *etcd_url, *cluster;
    char *tls_ca, *tls_cert, *tls_key, *tls_name; /* params.tls_* (copied) */
};

/* Is node nd dialled with TLS under the client's policy (dhps_rpc_tls_wanted)? */
static inline bool client_node_tls(const dhps_client *c, const dhps_cluster_node *nd)
{
    return dhps_rpc_tls_wanted(c->p.tls, c->az, nd->az);
}

/* The rpc client params of a calling thread's (or a call's own) rpc client: secret,
 * max_msg, connect timeout and TLS files from the client's params (thread.c). */
void client_rpc_params(const dhps_client *c, dhps_rpc_client_params *rp);

#define CTR_ADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

enum msg_state { M_IDLE, M_INFLIGHT, M_OK, M_RETRY, M_FAILED };

#define MAX_TRIED DHPS_CLUSTER_MAX_REPLICAS
/* A replica that answered "not ready" (recovering, catching up) is left out of lookup
 * picks for this long, then asked again; the router gets no verdict for it (no breaker
 * opening, no growing isolation: it is catching up, not failing, and must get its
 * traffic back as soon as it is ready). */
#define CLIENT_NOT_READY_HOLD_NS 250000000ull
/* Writes: a shard chunk answered DHPS_E_MOVED is re-routed to a newer map at most this
 * many times per call, and a call refreshes the map on demand at most this many times
 * (client_map_refresh): a map that keeps changing under a write ends it with
 * DHPS_E_MOVED rather than chasing it until the deadline. */
#define CLIENT_MAX_REROUTES 3
/* On-demand etcd gets triggered by "not owned" lookup answers: at most one per this
 * long per client (the watch delivers new maps anyway; this only shortens the wait). A
 * write answered DHPS_E_MOVED is not rate-limited: it cannot complete without a newer
 * map, and its call bounds its own refreshes (CLIENT_MAX_REROUTES). */
#define CLIENT_REFRESH_GAP_NS 100000000ull
/* A joining node answering a write "not owned" has not applied the map that added it
 * yet: the write is re-sent to it after this long (up to max_attempts). */
#define CLIENT_JOIN_RETRY_NS 5000000ull

struct op;
struct msg;

struct attempt {            /* one rpc call of a message: [0] primary/retry, [1] hedge */
    struct msg *ms;
    dhps_client_pick pick;
    bool inflight;
    bool reported;          /* the router already has this attempt's outcome (it timed
                               out at the attempt timeout; the call may still answer) */
    bool wait_open;         /* sent while its channel was still opening */
    int8_t tli;             /* trace: index of its entry in the message's log, or -1 */
};

/* Trace (DHPS_CLIENT_TRACE): what happened to each attempt of a lookup message, times
 * in microseconds from the start of the call. */
#define TL_PER_MSG 8
struct tlog {
    uint32_t node;
    uint8_t kind, flags;
    int16_t err;            /* 1 = still in flight */
    int32_t sent_us, done_us, dial_us;
};

enum slot_role { SLOT_REPLICA, SLOT_JOINING, SLOT_DROPPED };

struct msg {
    struct op *op;
    const dhps_cluster_map *m; /* the map it is routed with (its header's map_version;
                                  the node's address): op->m, or for a write re-routed
                                  after DHPS_E_MOVED its group's newer map */
    struct msg *next;       /* update: next message of its group */
    uint32_t node;          /* update: its node */
    uint8_t role;           /* update: enum slot_role of its node in its group's map
                               (SLOT_DROPPED: not a holder there any more, not counted) */
    uint32_t shard;
    uint32_t first, count;  /* range of op->order */
    uint32_t group;         /* update: index of the (shard, chunk) group */
    uint8_t state;
    uint8_t attempts;
    uint8_t ntried;
    int err;
    uint8_t ninflight;      /* attempts in flight (2 while hedged) */
    uint64_t retry_at;      /* update: a failed message may be re-sent from then */
    bool hedged;            /* a hedge was considered (at most one per message) */
    bool second;            /* att[1] was used (a hedge, or a re-send after an attempt
                               timeout): at most one per message */
    uint8_t ntl;            /* trace entries used */
    uint32_t tried[MAX_TRIED];
    struct attempt att[2];
};

struct group {              /* update: one shard chunk fanned out to its holders */
    struct msg *head;       /* its messages: one per holder (replica or joining node) of
                               m, plus dropped ones after a re-route */
    const dhps_cluster_map *m; /* map it is routed with (op->m or a newer pinned one) */
    uint32_t nrep, njoin;   /* serving replicas / joining nodes of the shard in m */
    uint32_t needed;        /* replica acknowledgements the policy asks for (of nrep) */
    bool need_join;         /* ACK_ALL: every joining node's acknowledgement too */
    int moved;              /* a message routed with m was answered DHPS_E_MOVED (or, if
                               none was, DHPS_E_NOTFOUND "not owned"): m is old */
    bool dead;              /* failed for good: no newer map to re-route to */
    uint8_t reroutes;
    int err;                /* first error of a message routed with m */
};

struct msg_block {          /* update: messages added by a re-route (freed with the op) */
    struct msg_block *next;
    struct msg ms[];
};

struct op {
    dhps_client *c;
    struct tstate *ts;
    const dhps_cluster_map *m;
    bool update;
    bool detached;
    uint32_t refs;          /* 1 (the caller) + calls in flight */
    uint64_t deadline_ns;
    char table[DHPS_TABLE_NAME_MAX];
    const uint64_t *keys;
    uint32_t *order;        /* key indices sorted by shard */
    struct msg *msgs;
    size_t nmsgs;
    struct group *groups;
    size_t ngroups;
    struct msg_block *extra; /* update: messages of re-routes */
    struct map_ref *pins[CLIENT_MAX_REROUTES]; /* update: newer maps pinned by re-routes */
    uint8_t npins, refreshes;
    /* lookup */
    uint8_t *out;
    uint32_t dim;
    int out_bytes;          /* 4 or 2 per value */
    uint64_t *found;        /* bits */
    bool want_fp16;
    /* update */
    const uint8_t *values;
    uint32_t vb;            /* bytes per row */
    int dtype;
    uint32_t ttl;
    uint64_t version;
    bool not_owned;         /* some replica said "not owned": reload */
    bool hedge;             /* lookups: the router hedges and the caller allows it */
    uint64_t attempt_ns;    /* lookups: attempt timeout */
    bool del;               /* update op carrying DELETE messages */
    uint32_t messages, retries, hedges;
    uint64_t t0;            /* start of the call */
    struct tlog *tl;        /* trace: TL_PER_MSG entries per message, or NULL */
};

/* map.c */
void client_map_unref(struct map_ref *r);
struct map_ref *client_map_pin(dhps_client *c);
int client_check_map_ids(dhps_client *c, const dhps_cluster_map *m);
int client_reload(dhps_client *c, bool force);
int client_map_install(dhps_client *c, dhps_cluster_map *m); /* reload_lock held */
/* Refresh the map on demand, because a server said the caller's map is old (a write
 * answered DHPS_E_MOVED, a lookup "not owned"): with etcd a get of the map key (bounded
 * by timeout_ms; without wait at most one per CLIENT_REFRESH_GAP_NS), else a re-check
 * of the map file. wait: block for a refresh another thread is running (then use its
 * result) instead of skipping. Returns 1 when the map in use is now newer than have
 * (installed here or by another thread meanwhile), 0 (nothing newer, or skipped), or
 * the error of the read (the map in use stays). Counts stats.map_refreshes. */
int client_map_refresh(dhps_client *c, uint64_t have, uint32_t timeout_ms, bool wait);
/* etcd.c: read the map from etcd (c->etcd_url, c->cluster) into *m (NULL when etcd is
 * down or has no map: the error is returned) and set *rev to the read's revision. */
int client_etcd_open(dhps_client *c, dhps_cluster_map **m, int64_t *rev);
/* etcd.c: the same read, on demand, bounded by timeout_ms (a coord handle of its own:
 * the watch's handle keeps its own timeouts). */
int client_etcd_fetch(dhps_client *c, uint32_t timeout_ms, dhps_cluster_map **m);
/* etcd.c: start the map watch from start_rev (0 = now). */
int client_etcd_watch(dhps_client *c, int64_t start_rev);
/* etcd.c: stop the watch, free the etcd state. NULL etcd allowed. */
void client_etcd_close(dhps_client *c);

/* thread.c */
void client_tstate_free(struct tstate *ts);
void client_tstate_exit(void *arg);
struct tstate *client_tstate_get(dhps_client *c);
int client_chan_state(dhps_client *c, struct chan *e, uint32_t id);
int client_channel_get(struct tstate *ts, const dhps_cluster_map *m, uint32_t id,
                       uint64_t deadline_ns, dhps_rpc_channel **out);

/* call.c */
void client_op_unref(struct op *op);
int client_call_outcome(dhps_client *c, struct attempt *a, int status, const void *resp,
                        size_t len, dhps_proto_resp *hdr);
void client_send_msg(struct op *op, struct msg *ms, struct attempt *a);
int client_plan(struct op *op, size_t n, uint32_t per_msg, uint32_t fanout);
void client_wait_turn(struct op *op, uint64_t wake_ns);
struct op *client_op_new(dhps_client *c, const char *table, const uint64_t *keys,
                         uint64_t timeout_us, struct map_ref **mr, int *rc);
void client_op_release(struct op *op, struct map_ref *mr);
int client_msg_budget(const dhps_client *c, uint32_t dim, uint32_t bytes_per_key,
                      uint32_t *per_msg);

/* lookup.c, write.c: rpc completion callbacks (client_send_msg passes them) */
void client_lookup_done(void *arg, int status, const void *resp, size_t len);
void client_update_done(void *arg, int status, const void *resp, size_t len);
uint64_t client_update_retry_at(dhps_client *c, int err);

/* The router's pick among rep[0..nrep) for a lookup, leaving out tried[0..ntried) and
 * the replicas held as not ready (unless that leaves none). (lookup.c) */
int client_pick(dhps_client *c, const uint32_t *rep, int nrep, const uint32_t *tried,
                int ntried, int kind, dhps_client_pick *out);

#endif

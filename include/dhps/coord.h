/*
 * dhps coord: a small etcd v3 client (membership and the cluster map, DESIGN.md section 4).
 *
 * Design.
 *
 * Transport. etcd's JSON gateway (HTTP/1.1 + JSON on the client URL, /v3/...), through
 *   libcurl and jansson; no gRPC stack. Keys and values travel base64-encoded (OpenSSL's
 *   EVP_EncodeBlock/DecodeBlock), 64-bit integers as JSON strings. Each unary call uses
 *   its own curl easy handle, so a dhps_coord is thread-safe without a lock and a slow
 *   call never blocks another. The control plane makes a few calls per second at most:
 *   a fresh connection per call (~100 us on loopback) is not worth a pool.
 *
 * Bounds. Every unary call has a total deadline (timeout_ms, default 2000) and a connect
 *   deadline (connect_timeout_ms, default 1000). A watch runs on its own thread with one
 *   long-lived streaming POST (/v3/watch); curl's write callback splits the stream into
 *   JSON objects. When the stream ends (etcd down, restarted, a proxy closed it) the
 *   thread reconnects with backoff (100 ms doubling to 2 s) from the last revision seen
 *   + 1, so no event is lost or repeated across an outage, unless etcd compacted that
 *   revision away: then the status callback gets DHPS_E_STALE with the compact revision
 *   and the watch resumes from there (the caller re-reads what it watches). An idle
 *   stream to an etcd that hangs without closing is noticed by TCP keepalive (5 s idle,
 *   probes every 2 s: ~25 s); a killed or restarted etcd closes it at once.
 *
 * Errors. etcd unreachable (refused, reset, no answer before the deadline) ->
 *   DHPS_E_UNREACHABLE (DHPS_E_TIMEOUT only for a connection that opened but did not
 *   answer in time); a failed compare in a transaction -> DHPS_E_CONFLICT; a lease etcd
 *   does not know (expired, revoked) -> DHPS_E_NOTFOUND; an answer that is not the JSON
 *   we expect -> DHPS_E_MALFORMED; any other gateway error (HTTP status != 200) -> -EIO;
 *   -ENOMEM, -EINVAL as usual.
 *
 * Key schema (docs/cluster.md):
 *     /dhps/<cluster>/nodes/<id>            registration JSON of node <id> (decimal), put
 *                                           under the node's lease: it vanishes TTL seconds
 *                                           after the node stops keeping the lease alive
 *         {"node_id": "7", "id": 7, "host": "h1", "pod": "p0", "az": "a",
 *          "addr": "10.0.0.1:7000", "metrics_port": 9100, "transports": ["tcp", "shm"],
 *          "start_time": 1796000000, "pid": 1234}
 *     /dhps/<cluster>/map                   the cluster map JSON (include/dhps/cluster.h);
 *                                           its etcd mod_revision is the map's revision, the
 *                                           value of compare-and-swap writes
 *     /dhps/<cluster>/map_history/<version> every map ever published, by its version
 *                                           (zero-padded to 20 digits: lexical = numeric)
 *   dhps_coord_key() builds these names.
 *
 * Threads. Every function below is thread-safe unless its contract says otherwise.
 */
#ifndef DHPS_COORD_H
#define DHPS_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_coord dhps_coord;
typedef struct dhps_coord_watch dhps_coord_watch;

#define DHPS_COORD_URL_MAX 255
#define DHPS_COORD_CLUSTER_MAX 63

typedef struct dhps_coord_params {
    const char *endpoint;        /* "http://127.0.0.1:2379" (required; copied) */
    uint32_t timeout_ms;         /* total bound of one unary call (default 2000) */
    uint32_t connect_timeout_ms; /* connect bound (default 1000) */
} dhps_coord_params;

/* Fill p with the defaults above (endpoint NULL). */
void dhps_coord_params_init(dhps_coord_params *p);

/* Create a client for one etcd endpoint. No connection is made here. Returns 0 and sets
 * *out, -EINVAL (NULL, empty or over-long endpoint), -ENOMEM, -EIO (libcurl init).
 * Free with dhps_coord_destroy. */
int dhps_coord_create(const dhps_coord_params *p, dhps_coord **out);

/* Free the client. NULL allowed. No call on c may be running or follow; watches
 * started from c must be stopped first. */
void dhps_coord_destroy(dhps_coord *c);

/* The endpoint the client talks to (valid while c lives). */
const char *dhps_coord_endpoint(const dhps_coord *c);

/* One key-value pair, as etcd stores it. value is NUL-terminated too (value[value_len]
 * == 0), so JSON values can be used as strings. */
typedef struct dhps_coord_kv {
    char *key;
    char *value;
    size_t value_len;
    int64_t create_revision; /* revision of the key's creation */
    int64_t mod_revision;    /* revision of its latest change */
    int64_t version;         /* number of changes since creation */
    int64_t lease;           /* lease id attached, 0 = none */
} dhps_coord_kv;

/*
 * Read one key (prefix false) or every key starting with key (prefix true; ascending).
 * Returns the number of pairs (0 = none) and sets *kvs (free with dhps_coord_kvs_free,
 * NULL when 0) and, when rev != NULL, *rev to the store's revision at the read. Errors:
 * see the essay (DHPS_E_UNREACHABLE, DHPS_E_TIMEOUT, DHPS_E_MALFORMED, -EIO, -ENOMEM,
 * -EINVAL).
 */
int dhps_coord_get(dhps_coord *c, const char *key, bool prefix, dhps_coord_kv **kvs,
                   int64_t *rev);

/* Free what dhps_coord_get returned (n pairs). NULL allowed. */
void dhps_coord_kvs_free(dhps_coord_kv *kvs, int n);

/* Write key = val[0..len) unconditionally, attached to lease (0 = none). Sets *rev (may
 * be NULL) to the revision of the write. Returns 0, DHPS_E_NOTFOUND (unknown lease) or
 * the errors above. */
int dhps_coord_put(dhps_coord *c, const char *key, const void *val, size_t len, int64_t lease,
                   int64_t *rev);

/* Delete one key or a prefix. Returns the number of keys deleted (0 = none) or an error
 * above. */
int dhps_coord_delete(dhps_coord *c, const char *key, bool prefix);

/*
 * Compare-and-swap: write key = val[0..len) (with lease, 0 = none) only if the key's
 * mod_revision is still expect_rev; expect_rev 0 means "only if the key does not exist"
 * (create_revision == 0). Sets *rev (may be NULL) to the revision of the write. Returns
 * 0, DHPS_E_CONFLICT (the key changed, or exists for expect_rev 0: nothing written), or
 * the errors above. Exactly one of several concurrent callers with the same expect_rev
 * succeeds.
 */
int dhps_coord_cas(dhps_coord *c, const char *key, const void *val, size_t len,
                   int64_t expect_rev, int64_t lease, int64_t *rev);

/* Compact etcd's history below revision rev (physical: wait until it is done). Watches
 * resuming from an older revision then get DHPS_E_STALE. Returns 0, -EIO (rev already
 * compacted or in the future) or the errors above. */
int dhps_coord_compact(dhps_coord *c, int64_t rev);

/* Grant a lease of ttl_s seconds (>= 1). Sets *id and, when ttl_out != NULL, the TTL
 * etcd granted. Returns 0 or an error above. */
int dhps_coord_lease_grant(dhps_coord *c, int64_t ttl_s, int64_t *id, int64_t *ttl_out);

/* Renew a lease once (one keepalive round trip). Sets *ttl_out (may be NULL) to the
 * renewed TTL. Returns 0, DHPS_E_NOTFOUND (the lease expired or was revoked: its keys
 * are gone; grant a new one and re-put them), or an error above. Call it every TTL/3. */
int dhps_coord_lease_keepalive(dhps_coord *c, int64_t id, int64_t *ttl_out);

/* Revoke a lease: its keys are deleted now. Returns 0, DHPS_E_NOTFOUND (already gone)
 * or an error above. */
int dhps_coord_lease_revoke(dhps_coord *c, int64_t id);

/* Remaining TTL of a lease in seconds (*ttl, -1 when expired/unknown) and its granted
 * TTL (*granted, may be NULL). Returns 0 or an error above. */
int dhps_coord_lease_ttl(dhps_coord *c, int64_t id, int64_t *ttl, int64_t *granted);

enum dhps_coord_event_type { DHPS_COORD_PUT = 0, DHPS_COORD_DELETE = 1 };

/* One change delivered by a watch. Pointers are valid during the callback only. */
typedef struct dhps_coord_event {
    int type;          /* enum dhps_coord_event_type */
    const dhps_coord_kv *kv; /* key, value (empty for DELETE), revisions */
} dhps_coord_event;

/* Called on the watch thread, in revision order, once per event. Must not stop the
 * watch it belongs to. */
typedef void (*dhps_coord_event_fn)(void *arg, const dhps_coord_event *ev);

/*
 * Called on the watch thread when the watch's connection state changes: status 0 = the
 * watch is established again after an outage reported below (rev = the revision it
 * resumed from; not called for the first connection); DHPS_E_UNREACHABLE /
 * DHPS_E_TIMEOUT / -EIO = the stream broke and reconnection started (once per outage,
 * not once per attempt); DHPS_E_STALE = the revisions from rev onwards up to the
 * compaction were compacted away: events were lost, re-read the state (rev = the
 * compact revision the watch resumes from). May be NULL.
 */
typedef void (*dhps_coord_status_fn)(void *arg, int status, int64_t rev);

/*
 * Watch one key (prefix false) or a prefix, from revision start_rev (0 = changes after
 * now; pass a get's revision + 1 to see everything after that read). Starts a thread
 * that calls on_event for every change and on_status as described above, reconnecting
 * across outages from the last delivered revision + 1. c must outlive the watch.
 * Returns 0 and sets *out, or -EINVAL, -ENOMEM, -errno (thread). The first connection
 * is made on the thread: an etcd that is down now is reported through on_status.
 */
int dhps_coord_watch_start(dhps_coord *c, const char *key, bool prefix, int64_t start_rev,
                           dhps_coord_event_fn on_event, dhps_coord_status_fn on_status,
                           void *arg, dhps_coord_watch **out);

/* Stop a watch: its thread ends within ~1 s (curl's progress tick) and is joined; no
 * callback runs after return. NULL allowed. Not from a callback of this watch. */
void dhps_coord_watch_stop(dhps_coord_watch *w);

/* Revision of the last event delivered (or start_rev - 1 before any). Thread-safe. */
int64_t dhps_coord_watch_revision(const dhps_coord_watch *w);

enum dhps_coord_key_kind {
    DHPS_COORD_KEY_NODES = 0,   /* "/dhps/<cluster>/nodes/" (prefix; arg ignored) */
    DHPS_COORD_KEY_NODE = 1,    /* "/dhps/<cluster>/nodes/<arg>" */
    DHPS_COORD_KEY_MAP = 2,     /* "/dhps/<cluster>/map" (arg ignored) */
    DHPS_COORD_KEY_HISTORY = 3, /* "/dhps/<cluster>/map_history/" (prefix) */
    DHPS_COORD_KEY_HISTORY_VERSION = 4, /* ".../map_history/<arg, 20 digits>" */
};

/* Write the key of kind for cluster into buf (cap bytes with the NUL). Returns its
 * length, or -EINVAL (bad kind, a cluster name empty, over DHPS_COORD_CLUSTER_MAX bytes
 * or containing '/') or -ENOSPC. */
int dhps_coord_key(char *buf, size_t cap, const char *cluster, int kind, uint64_t arg);

#ifdef __cplusplus
}
#endif
#endif

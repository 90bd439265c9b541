/* Private: what the files of replica sync share (sync.c: lifecycle, catch-up and
 * anti-entropy; sync_serve.c: the SYNC_DIGEST / SYNC_FETCH handlers and export
 * sessions; sync_rpc.c: calls to peers, exports fetched and merged). See sync.h. */
#ifndef DHPS_SRV_SYNC_INT_H
#define DHPS_SRV_SYNC_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dhps/cluster.h"
#include "dhps/rpc.h"
#include "srv_int.h"
#include "sync.h"

#define SYNC_MAGIC "DHPSSYN1"
#define SYNC_HDR 24u               /* magic | u64 tombstones | u64 xxh3 of them */
#define SYNC_MAX_SESSIONS 32
#define SYNC_SESSION_IDLE_NS (30ull * 1000000000ull)
#define SYNC_MAX_ROUNDS 5
#define SYNC_CALL_TIMEOUT_US (30ull * 1000000ull) /* one chunk; the first includes the export */

/* One export being read by a peer: tombstone section, then the store's export. */
typedef struct sync_session {
    uint64_t id;
    const srv_store *st;
    uint8_t *head;     /* SYNC_HDR + 16 * ntomb bytes */
    size_t head_len;
    void *recs;        /* dhps_store_export buffer */
    size_t recs_len;
    uint64_t last_ns;
} sync_session;

typedef struct sync_peer {
    dhps_rpc_channel *ch;
    char addr[DHPS_CLUSTER_ADDR_MAX + 1]; /* where ch goes (a map may move a node) */
    uint64_t retry_ns;   /* do not dial before */
    bool given_up;       /* unreachable past peer_wait_s: skipped by catch-up */
    int last_err;
} sync_peer;

struct srv_sync {
    dhps_server *s;
    srv_map *pin;          /* the pulling thread's map for this pass (a reference) */
    const dhps_cluster_map *map; /* pin->m, NULL before the first pass / without a map */
    bool has_map;          /* the server has a cluster map (peers may exist) */
    uint32_t self, nranges;
    pthread_mutex_t mu; /* sessions */
    sync_session sess[SYNC_MAX_SESSIONS];
    /* pulling thread */
    pthread_t thr;
    bool running;
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    bool stop;
    bool wake;             /* under wmu: a new map or new stores (srv_sync_wake) */
    dhps_rpc_client *rc;   /* owned by the thread */
    sync_peer *peers;      /* by node id, npeers of them (grown with the map) */
    uint32_t npeers;
    uint64_t seed;
    /* progress and counters (atomics) */
    uint64_t t_start_ns, t_ready_ns;
    uint32_t stores_sync;
    uint64_t exports, export_bytes, fetched_bytes, merged, stale, tombs_applied;
    uint64_t rounds, ranges_repaired, ae_passes, ae_records, peer_errors, peers_skipped;
    uint64_t delta_fetches;
};


/* ---- sync_serve.c ---- */
void sync_session_free(sync_session *x);

/* ---- sync_rpc.c: the pulling thread's calls ---- */
bool sync_stopping(srv_sync *y);
/* Sleep up to ms, waking at stop or srv_sync_wake. */
void sync_nap(srv_sync *y, unsigned ms);
/* A failed call to node id: counted; the channel dropped when its connection broke. */
void sync_peer_failed(srv_sync *y, uint32_t id, int rc);
/* node id's digests of st (nranges each). */
int sync_remote_digest(srv_sync *y, uint32_t id, const srv_store *st, uint64_t *hash,
                       uint64_t *count);
/* Fetch a whole export of st from node id (mask NULL = every range; records and
 * tombstones at or above min_version) into *out (malloc'ed). */
int sync_fetch_export(srv_sync *y, uint32_t id, const srv_store *st, const uint64_t *mask,
                      uint64_t min_version, uint8_t **out, size_t *out_len);
/* Apply an export to st: its tombstones, then its records (*applied: records taken). */
int sync_apply_export(srv_sync *y, srv_store *st, const uint8_t *buf, size_t len,
                      uint64_t *applied);
/* For every store in sts[0..n) of which node id is a replica: agree[i] when node id's
 * digests equal the store's own (one batched round trip). Requests carry this node's
 * applied map version (a peer that has not applied it yet answers DHPS_E_NOTREADY). */
void sync_agree_many(srv_sync *y, uint32_t id, srv_store *const *sts, size_t n, bool *agree);

#endif

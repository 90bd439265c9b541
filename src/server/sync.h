/* Private: replica catch-up and anti-entropy (docs/server.md "Replicas:
 * readiness, catch-up and anti-entropy").
 *
 * Serving side (any rpc worker): SYNC_DIGEST answers a store's per-range digests;
 * SYNC_FETCH streams a point-in-time export of a store (its tombstones, then its
 * records in the snapshot format) in chunks, kept per requester session.
 *
 * Pulling side (one thread per server, started after the rpc server): every held store
 * whose shard has other serving replicas in the cluster map starts not ready (lookups
 * answer DHPS_E_NOTREADY; writes are applied as usual), at start or when a newer map
 * adds it (hold.h). For each such store and each serving replica (never a joining
 * node) of its shard in the applied map: compare digests; when they differ, first (if
 * the store recovered data) pull what changed since its newest version, then pull the ranges that still differ
 * (tombstones first, then records newer than what the store holds and not covered by a
 * tombstone), until the digests agree, a round leaves as many ranges differing as the
 * one before, or SYNC_MAX_ROUNDS pass. Then the store is ready. A peer
 * that cannot be reached is retried until sync.peer_wait_s after the store's catch-up
 * began, then skipped (it will pull from us when it comes back; an empty store skips it
 * only once another peer answered). A peer that has not applied the map this node
 * routes with answers DHPS_E_NOTREADY and is asked again (requests carry
 * hdr.map_version when following etcd). After every store is ready the thread runs
 * the same digest repair against every peer every sync.anti_entropy_s.
 */
#ifndef DHPS_SRV_SYNC_H
#define DHPS_SRV_SYNC_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "dhps/rpc.h"
#include "msg.h"

typedef struct dhps_server dhps_server;
typedef struct srv_store srv_store;
typedef struct srv_sync srv_sync;

/* Create the sync state (after srv_hold_init: the peers of each shard come from the
 * server's applied map, taken afresh by every pass of the thread). Returns 0 or
 * -ENOMEM (err unused). */
int srv_sync_create(dhps_server *s, srv_sync **out, char *err, size_t errlen);

/* Start the pulling thread (after the rpc server started). 0 or -errno. */
int srv_sync_start(srv_sync *y);

/* Stop the thread (in-flight calls end at their deadline). Idempotent. */
void srv_sync_stop(srv_sync *y);

void srv_sync_destroy(srv_sync *y);

/* rpc handlers for DHPS_M_SYNC_DIGEST / DHPS_M_SYNC_FETCH (m decoded). Return the
 * status written into r. */
int srv_sync_handle(dhps_server *s, const srv_msg *m, dhps_rpc_request *r);

/* Remember keys[0..n) deleted at version, at wall-clock second at_s, as tombstones of st
 * (when the node has peers; caller holds st->mu). Called for every DELETE applied, and
 * for deletes replayed from the update log. */
void srv_sync_note_deletes(dhps_server *s, srv_store *st, const uint64_t *keys, uint32_t n,
                           uint64_t version, uint32_t at_s);

/* Drop tombstones older than sync.tombstone_s and export sessions idle for 30 s
 * (background thread, once a second). */
void srv_sync_maintain(srv_sync *y);

/* A newer map was applied or stores were added: the thread looks again now. NULL
 * allowed. Thread-safe. */
void srv_sync_wake(srv_sync *y);

/* st is being dropped: free the export sessions taken of it. NULL allowed. */
void srv_sync_forget(srv_sync *y, const srv_store *st);

/* Prometheus lines (HELP and TYPE included). */
void srv_sync_metrics(srv_sync *y, FILE *f);

/* Readiness as JSON for /health/ready: {"ready":b,"stores":n,"stores_ready":n,...}.
 * malloc'ed; NULL on -ENOMEM. */
char *srv_sync_status_json(srv_sync *y);

#endif

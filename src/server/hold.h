/*
 * Private: the shards a server holds, and how that set changes while it serves
 * (docs/server.md "Following the map in etcd").
 *
 * Store set. One srv_store per (table, shard) held. table->by_shard[shard] points at it
 * (an atomic pointer); server->live lists them all. Both change only under
 * server->hold_mu: srv_hold_apply adds stores for shards a newer map gives this node
 * (as a replica or a joining node) and retires the stores of shards it takes away.
 *
 * Who may still use a retired store, and how we know they stopped.
 *   - rpc workers (the hot path) find a store through by_shard inside a handler and run
 *     to completion. Each handler runs inside an epoch section: srv_hold_enter writes
 *     the global epoch into the worker's slot, then the handler reads by_shard (all
 *     seq_cst, see srv_hold_enter); srv_hold_leave writes 0. Retiring clears by_shard, then
 *     bumps the global epoch to E (the store's retire_epoch). A worker whose slot is 0
 *     or > E entered after the clear and cannot see the store; a slot <= E may. No
 *     lock, no shared write on the lookup path: one store to the worker's own line.
 *   - every other thread (background maintenance and snapshots, metrics, the sync
 *     thread, STATS on a worker) takes references: srv_hold_stores_get copies the live
 *     list under hold_mu with refs + 1 each; srv_hold_stores_put drops them. A retired
 *     store is off the list, so its count only falls.
 *   srv_hold_reclaim (background thread, once a second) frees a retired store when its
 *   refs are 0, no worker slot is in (0, E], and SRV_DROP_LINGER_MS passed since it was
 *   retired (a margin, not what makes it safe). Readers of a store are per worker, opened
 *   with the store before it is published and used by their worker only
 *   (srv_hold_reader), so stores can come and go without touching any worker's state;
 *   they are closed with the store.
 *
 * Writes against a retiring store: srv_hold_apply sets store->dropped under its writer
 * lock; UPSERT and DELETE check it (and the stale-map fence) under that lock, so no
 * write is logged or applied after the drop.
 */
#ifndef DHPS_SRV_HOLD_H
#define DHPS_SRV_HOLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dhps/cluster.h"
#include "srv_int.h"

#define SRV_DROP_LINGER_MS 1000u /* a dropped store is freed no sooner than this */

/* Create the tables' shard arrays and the stores of the shards held at start: those
 * cfg->owned lists (the explicit form), or those m gives cfg->map_node as a replica or
 * joining node (the map form; m may give none). Takes m (NULL: no map). Stores whose
 * shard has other serving replicas start not ready. Returns 0, -ENOMEM, or a store
 * creation error with a message in err. Called once by dhps_server_create. */
int srv_hold_init(dhps_server *s, dhps_cluster_map *m, char *err, size_t errlen);

/* Free every store (live and retired) and the map. No other thread may run. */
void srv_hold_fini(dhps_server *s);

/* The applied map with a reference (NULL without a map); put it back when done.
 * Thread-safe. */
srv_map *srv_hold_map_get(dhps_server *s);
void srv_hold_map_put(srv_map *m);

/* The live stores of table t (NULL: every table) with a reference each, in *out
 * (malloc'ed, free with srv_hold_stores_put). Returns the count, or 0 with *out NULL
 * on -ENOMEM or none. Thread-safe. */
size_t srv_hold_stores_get(dhps_server *s, const srv_table *t, srv_store ***out);
void srv_hold_stores_put(srv_store **v, size_t n);

/* Apply map m if it is newer than the applied one (takes m): open not-ready stores for
 * shards it newly gives this node, refuse and retire the stores of shards it takes
 * away, move the fence of shards whose holder set (replicas + joining) changed, then
 * publish its version (SYNC requests routed with it are served from then on) and write
 * it to cfg->cluster_map atomically. from names the source in logs. Returns 1 applied,
 * 0 not newer (m freed), DHPS_E_CONFIG (another nshards: refused, logged). Serialised
 * internally; thread-safe. */
int srv_hold_apply(dhps_server *s, dhps_cluster_map *m, const char *from);

/* Free retired stores that no thread can use any more (all: every retired store, at
 * destroy after the threads stopped). Background thread. */
void srv_hold_reclaim(dhps_server *s, bool all);

/* Mark st ready (sync thread): counters, and the registration is told. */
void srv_hold_set_ready(dhps_server *s, srv_store *st);

/* Shards held now that have a store not ready yet, ascending, up to cap in out;
 * returns the total. Thread-safe. */
size_t srv_hold_not_ready(dhps_server *s, uint32_t *out, size_t cap);

/* Worker w's reader of st (opened with the store; only worker w uses it). */
dhps_store_reader *srv_hold_reader(dhps_server *s, srv_store *st, uint32_t w);

/* The epoch section of an rpc handler (hold.h essay). The slot store, the handler's
 * by_shard loads, the unlink and the reclaimer's slot loads are all seq_cst: in their
 * single total order, a reclaimer that reads 0 (or a later epoch) from the slot precedes
 * the announcement, so the handler's lookups come after the unlink and miss the store. */
static inline void srv_hold_enter(dhps_server *s, srv_worker *w)
{
    __atomic_store_n(&w->epoch, __atomic_load_n(&s->epoch, __ATOMIC_SEQ_CST), __ATOMIC_SEQ_CST);
}

static inline void srv_hold_leave(srv_worker *w)
{
    __atomic_store_n(&w->epoch, 0, __ATOMIC_RELEASE);
}

/* The map to start from with shards.follow_etcd: the newer of cfg->cluster_map (may be
 * missing) and the map in etcd (may be absent or unreachable); an etcd map newer than
 * the file is written to the file. Returns 0 and *out, or DHPS_E_CONFIG naming both
 * sources when neither has a map (or the file is invalid), -ENOMEM. */
int srv_hold_initial_map(const dhps_server_config *c, dhps_cluster_map **out, char *err,
                         size_t errlen);

/* Prometheus lines: dhps_map_version, dhps_shards_held, dhps_shards_not_ready,
 * dhps_shards_added_total, dhps_shards_dropped_total, dhps_writes_moved_total,
 * dhps_stores_freed_total. */
void srv_hold_metrics(dhps_server *s, FILE *f);

#endif

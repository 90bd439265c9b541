/*
 * dhps server: membership in etcd (config "coord"; docs/cluster.md). Private to
 * src/server.
 *
 * A thread registers the node under /dhps/<cluster>/nodes/<node_id> attached to a lease
 * of coord.lease_ttl_s and renews the lease every TTL/3; when the lease is lost (etcd
 * expired it during an outage) it grants a new one and registers again. The
 * registration carries the readiness report ("map_version" applied, "not_ready"
 * shards), re-put under the same lease when it changes (at most every 100 ms). A watch
 * on /dhps/<cluster>/map hands every newer map version to the thread, which applies it
 * (srv_hold_apply) when shards.follow_etcd is set; otherwise it is only logged. etcd
 * being down is logged once when it starts and once when it ends, counted
 * (dhps_coord_up, dhps_coord_errors_total), and never touches the data path.
 */
#ifndef DHPS_SRV_MEMBER_H
#define DHPS_SRV_MEMBER_H

#include <stdio.h>

struct dhps_server;
struct srv_member;

/* Start registration and the map watch when the config has "coord"; *out stays NULL
 * otherwise. Returns 0 or -ENOMEM / -errno (thread): etcd being down is not an error. */
int srv_member_start(struct dhps_server *s, struct srv_member **out);

/* Stop the thread and the watch, revoke the lease (bounded by the coord timeout).
 * NULL allowed. Idempotent. */
void srv_member_stop(struct srv_member *m);

/* Free (after stop). NULL allowed. */
void srv_member_destroy(struct srv_member *m);

/* The registration's readiness report changed (map version applied, a store became
 * ready): re-put it, debounced to one put per 100 ms. NULL allowed. Thread-safe. */
void srv_member_poke(struct srv_member *m);

/* Prometheus lines (nothing for NULL). */
void srv_member_metrics(struct srv_member *m, FILE *f);

#endif

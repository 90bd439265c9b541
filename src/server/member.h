/*
 * dhps server: membership in etcd (config "coord"; docs/cluster.md). Private to
 * src/server.
 *
 * A thread registers the node under /dhps/<cluster>/nodes/<node_id> attached to a lease
 * of coord.lease_ttl_s and renews the lease every TTL/3; when the lease is lost (etcd
 * expired it during an outage) it grants a new one and registers again. A watch on
 * /dhps/<cluster>/map logs every newer map version (acting on it is the next step of
 * issue 10). etcd being down is logged once when it starts and once when it ends,
 * counted (dhps_coord_up, dhps_coord_errors_total), and never touches the data path.
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

/* Prometheus lines (nothing for NULL). */
void srv_member_metrics(struct srv_member *m, FILE *f);

#endif

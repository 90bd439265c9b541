/*
 * dhps traffic's parts shared by its two files: traffic.c (options, the lookup and update
 * threads, the run) and trafficout.c (the per-interval line and the summary, text and
 * JSON). Private to the dhps tool.
 */
#ifndef DHPS_TOOLS_TRAFFIC_H
#define DHPS_TOOLS_TRAFFIC_H

#include <stdbool.h>
#include <stdint.h>

#include "dhps/cluster.h"
#include "dhps/route.h"
#include "tools.h"
#include "toolsclient.h"

struct tr_opts {
    tools_target tgt;
    const char *table;
    uint32_t dim, batch, threads;
    uint64_t keys, deadline_ms, interval_ms;
    double seconds;
    bool load, check, json, have_delay, per_node;
    uint32_t tier_delay_us[4];
    uint32_t updates; /* update keys (0: no update thread) */
    int ack;          /* enum dhps_client_ack of the update thread */
};

struct tr_counts {
    uint64_t lookups, complete, incomplete, wrong, missing;
    uint64_t errors;                 /* lookups that returned an error (rc < 0) */
    uint64_t acked_missing, stale;   /* update keys: acknowledged but absent / older */
};

/* The final check (after the load stopped): every acknowledged update key, and with
 * --check every sample key, read once more through the router in batches of 256 (one
 * that does not complete is asked again, up to 5 times). lost: absent, or older than
 * acknowledged (--ack all); wrong: not the row written; unread: no answer after the
 * tries. */
struct tr_final {
    uint64_t keys, lost, wrong, unread;
};

/* The nodes whose messages are counted: those of the map at start, and with --etcd every
 * node of a later map (a node that left the map stays, its count frozen). Indexed in the
 * order seen; first/prev are the client's message counts at the start of the run and of
 * the interval (0 for a node seen after the start: all its messages are in the run). */
#define TR_MAX_NODES 256
struct tr_node {
    uint32_t id;
    int tier;
    char ip[DHPS_CLUSTER_ADDR_MAX + 1];
    uint16_t port;
    bool in_map, delayed;
    uint64_t first, prev, msgs;
};
struct tr_nodes {
    struct tr_node nd[TR_MAX_NODES];
    size_t n;
    uint64_t version; /* the client's map version these nodes were taken for */
};

/* The router's breaker decisions since the last line, when the client routes with the
 * route library: openings by reason, nodes isolated now, and the rise of latency every
 * tier shares (a loaded client; docs/route.md). */
struct tr_route {
    bool have;
    uint64_t opened_errors, opened_slow, opened_probe, closed;
    uint32_t ejected;
    double rise_us;
};

/* The update thread's counts for a line (have: --updates). */
struct tr_upd_counts {
    bool have;
    uint64_t updates, failed, acked_keys;
};

/* The router's decisions since *base, and *base moved on to now (have = false when the
 * client does not route with the route library). */
struct tr_route tr_route_since(tools_conn *conn, dhps_route_stats *base);

/* Print one line: an interval's (summary false) or the summary, text or --json, with the
 * tier shares of the nodes' messages in ns, the lookup counts n and latencies h, the
 * router's decisions rt, the update counts u and, in the summary, the final check f (NULL:
 * none). --per-node adds each node's share and the router's view. */
void tr_print(const struct tr_opts *o, tools_conn *conn, const struct tr_nodes *ns, double t,
              bool summary, const struct tr_counts *n, const tools_hist *h,
              const struct tr_route *rt, const struct tr_upd_counts *u, const struct tr_final *f);

#endif

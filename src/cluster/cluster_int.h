/*
 * Cluster map internals shared by cluster.c (parse, validate, accessors, write), place.c
 * (generate, plan) and edit.c (map edits). Not installed.
 */
#ifndef DHPS_CLUSTER_INT_H
#define DHPS_CLUSTER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "dhps/cluster.h"

struct dhps_cluster_map {
    uint64_t version;
    uint32_t nshards;
    uint32_t nreplicas;
    size_t nnodes;
    uint32_t max_id;
    dhps_cluster_node *nodes;  /* file order */
    int32_t *by_id;            /* node id -> index, -1 = none; max_id + 1 entries */
    uint32_t *shards;          /* nshards x nreplicas node ids */
    uint32_t *owned_off;       /* per node index: offset into owned (nnodes + 1) */
    uint32_t *owned;           /* shard ids, grouped by node index, ascending */
    dhps_cluster_join *joins;  /* sorted by (shard, node) */
    size_t njoins;
    uint32_t *held_off;        /* per node index: offset into held (nnodes + 1) */
    uint32_t *held;            /* shards held (replica or joining), by node index, ascending */
};

/* A list of problems, one line each, in a caller's buffer (may be NULL); count counts
 * every problem, also those that did not fit. */
struct cl_errbuf {
    char *buf;
    size_t cap, len;
    unsigned count;
};

void cl_eb_init(struct cl_errbuf *e, char *buf, size_t cap);
__attribute__((format(printf, 2, 3))) void cl_eb_add(struct cl_errbuf *e, const char *fmt, ...);

/* Add a line to e for each duplicate node id or address in nodes[0..n). */
void cl_check_nodes(const dhps_cluster_node *nodes, size_t n, struct cl_errbuf *e);

/* Build a map from parts (takes ownership of nodes, shards and joins, which may be NULL
 * when njoins is 0; on failure too) and validate placement and joins exactly as
 * dhps_cluster_map_parse does. 0 and *out, DHPS_E_CONFIG (problems added to e) or
 * -ENOMEM. */
int cl_assemble(uint64_t version, uint32_t nshards, uint32_t nrep, dhps_cluster_node *nodes,
                size_t nnodes, uint32_t *shards, dhps_cluster_join *joins, size_t njoins,
                struct cl_errbuf *e, dhps_cluster_map **out);

#endif

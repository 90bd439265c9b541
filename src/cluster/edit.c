/*
 * Cluster map edits: each returns a new map, version + 1, validated as a parsed map is.
 * Contracts in include/dhps/cluster.h ("editing").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

/* A mutable copy of m's parts, handed to cl_assemble (which takes ownership). */
struct parts {
    dhps_cluster_node *nodes;
    size_t nnodes;
    uint32_t *shards;
    dhps_cluster_join *joins;
    size_t njoins;
};

static void parts_free(struct parts *p)
{
    free(p->nodes);
    free(p->shards);
    free(p->joins);
    memset(p, 0, sizeof *p);
}

/* Copy m; extra_nodes / extra_joins of room at the end of each array. 0 or -ENOMEM. */
static int parts_copy(const dhps_cluster_map *m, size_t extra_nodes, size_t extra_joins,
                      struct parts *p)
{
    size_t slots = (size_t)m->nshards * m->nreplicas;
    p->nnodes = m->nnodes;
    p->njoins = m->njoins;
    p->nodes = malloc((m->nnodes + extra_nodes) * sizeof *p->nodes);
    p->shards = malloc(slots * sizeof *p->shards);
    p->joins = malloc((m->njoins + extra_joins + 1) * sizeof *p->joins);
    if (!p->nodes || !p->shards || !p->joins) {
        parts_free(p);
        return -ENOMEM;
    }
    memcpy(p->nodes, m->nodes, m->nnodes * sizeof *p->nodes);
    memcpy(p->shards, m->shards, slots * sizeof *p->shards);
    if (m->njoins)
        memcpy(p->joins, m->joins, m->njoins * sizeof *p->joins);
    return 0;
}

/* Assemble version + 1 from p (consumed). */
static int parts_build(const dhps_cluster_map *m, struct parts *p, struct cl_errbuf *e,
                       dhps_cluster_map **out)
{
    int rc = cl_assemble(m->version + 1, m->nshards, m->nreplicas, p->nodes, p->nnodes,
                         p->shards, p->joins, p->njoins, e, out);
    memset(p, 0, sizeof *p);
    return rc;
}

static bool has_node(const dhps_cluster_map *m, uint32_t id)
{
    return id <= m->max_id && m->by_id[id] >= 0;
}

int dhps_cluster_map_edit_add_node(const dhps_cluster_map *m, const dhps_cluster_node *nd,
                                   dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !nd || !out) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    dhps_cluster_node n = *nd;
    n.host[DHPS_CLUSTER_LABEL_MAX] = n.pod[DHPS_CLUSTER_LABEL_MAX] = '\0';
    n.az[DHPS_CLUSTER_LABEL_MAX] = n.addr[DHPS_CLUSTER_ADDR_MAX] = '\0';
    if (n.id > DHPS_CLUSTER_MAX_NODE_ID)
        cl_eb_add(&e, "node %u: id above %u", n.id, DHPS_CLUSTER_MAX_NODE_ID);
    else if (has_node(m, n.id))
        cl_eb_add(&e, "node %u: id already in the map", n.id);
    if (!n.host[0])
        cl_eb_add(&e, "node %u: empty host", n.id);
    if (dhps_cluster_addr_split(n.addr, n.ip, sizeof n.ip, &n.port) < 0)
        cl_eb_add(&e, "node %u: address \"%s\" is not a numeric IPv4 \"ip:port\"", n.id, n.addr);
    if (n.state > DHPS_NODE_DRAINING)
        cl_eb_add(&e, "node %u: state %u is neither active nor draining", n.id, n.state);
    for (size_t i = 0; i < m->nnodes; i++)
        if (!strcmp(m->nodes[i].addr, n.addr))
            cl_eb_add(&e, "node %u: address %s already used by node %u", n.id, n.addr,
                      m->nodes[i].id);
    if (m->nnodes >= DHPS_CLUSTER_MAX_NODES)
        cl_eb_add(&e, "node %u: the map already has %u nodes", n.id, DHPS_CLUSTER_MAX_NODES);
    if (e.count)
        return DHPS_E_CONFIG;
    struct parts p;
    if (parts_copy(m, 1, 0, &p) < 0)
        return -ENOMEM;
    p.nodes[p.nnodes++] = n;
    return parts_build(m, &p, &e, out);
}

int dhps_cluster_map_edit_set_state(const dhps_cluster_map *m, uint32_t node, uint8_t state,
                                    dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !out) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    if (!has_node(m, node)) {
        cl_eb_add(&e, "node %u: not in the map", node);
        return DHPS_E_NOTFOUND;
    }
    if (state > DHPS_NODE_DRAINING) {
        cl_eb_add(&e, "node %u: state %u is neither active nor draining", node, state);
        return DHPS_E_CONFIG;
    }
    struct parts p;
    if (parts_copy(m, 0, 0, &p) < 0)
        return -ENOMEM;
    p.nodes[m->by_id[node]].state = state;
    return parts_build(m, &p, &e, out);
}

int dhps_cluster_map_edit_remove_node(const dhps_cluster_map *m, uint32_t node,
                                      dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !out) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    if (!has_node(m, node)) {
        cl_eb_add(&e, "node %u: not in the map", node);
        return DHPS_E_NOTFOUND;
    }
    size_t held = dhps_cluster_map_holdings_of(m, node, NULL, 0);
    if (held) {
        cl_eb_add(&e, "node %u: still holds %zu shards (%zu as a replica, %zu joining)", node,
                  held, dhps_cluster_map_shards_of(m, node, NULL, 0),
                  held - dhps_cluster_map_shards_of(m, node, NULL, 0));
        return DHPS_E_CONFIG;
    }
    if (m->nnodes == 1) {
        cl_eb_add(&e, "node %u: the last node of the map", node);
        return DHPS_E_CONFIG;
    }
    struct parts p;
    if (parts_copy(m, 0, 0, &p) < 0)
        return -ENOMEM;
    size_t at = (size_t)m->by_id[node];
    memmove(p.nodes + at, p.nodes + at + 1, (p.nnodes - at - 1) * sizeof *p.nodes);
    p.nnodes--;
    return parts_build(m, &p, &e, out);
}

int dhps_cluster_map_edit_start_joins(const dhps_cluster_map *m, const dhps_cluster_move *moves,
                                      size_t n, dhps_cluster_map **out, char *err,
                                      size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !out || (!moves && n)) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    int rc = DHPS_E_CONFIG;
    for (size_t i = 0; i < n; i++) {
        if (moves[i].shard >= m->nshards) {
            cl_eb_add(&e, "move %zu: shard %u out of range (nshards %u)", i, moves[i].shard,
                      m->nshards);
        } else if (!has_node(m, moves[i].to)) {
            cl_eb_add(&e, "shard %u: joining node %u is not in the map", moves[i].shard,
                      moves[i].to);
            rc = DHPS_E_NOTFOUND;
        }
    }
    if (e.count)
        return rc;
    if (n > (size_t)m->nshards * m->nreplicas) {
        cl_eb_add(&e, "%zu moves, more than nshards x replicas", n);
        return DHPS_E_CONFIG;
    }
    struct parts p;
    if (parts_copy(m, 0, n, &p) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        p.joins[p.njoins++] = (dhps_cluster_join){moves[i].shard, moves[i].to, moves[i].from,
                                                  m->version + 1};
    return parts_build(m, &p, &e, out);
}

/* Index in p->joins of the entry of move mv, or -1 (and a line in e). */
static long find_join(const struct parts *p, const dhps_cluster_move *mv, struct cl_errbuf *e)
{
    for (size_t k = 0; k < p->njoins; k++)
        if (p->joins[k].shard == mv->shard && p->joins[k].node == mv->to &&
            p->joins[k].replaces == mv->from)
            return (long)k;
    cl_eb_add(e, "shard %u: no joining entry for node %u replacing %u", mv->shard, mv->to,
              mv->from);
    return -1;
}

/* complete (flip = true) or cancel the joining entries of moves[0..n). */
static int end_joins(const dhps_cluster_map *m, const dhps_cluster_move *moves, size_t n,
                     bool flip, dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !out || (!moves && n)) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    struct parts p;
    if (parts_copy(m, 0, 0, &p) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        long k = find_join(&p, &moves[i], &e);
        if (k < 0)
            continue;
        if (flip) {
            uint32_t *r = p.shards + (size_t)moves[i].shard * m->nreplicas;
            for (uint32_t a = 0; a < m->nreplicas; a++)
                if (r[a] == moves[i].from)
                    r[a] = moves[i].to;
        }
        p.joins[k] = p.joins[--p.njoins]; /* order restored by cl_assemble's sort */
    }
    if (e.count) {
        parts_free(&p);
        return DHPS_E_NOTFOUND;
    }
    return parts_build(m, &p, &e, out);
}

int dhps_cluster_map_edit_complete_joins(const dhps_cluster_map *m,
                                         const dhps_cluster_move *moves, size_t n,
                                         dhps_cluster_map **out, char *err, size_t errlen)
{
    return end_joins(m, moves, n, true, out, err, errlen);
}

int dhps_cluster_map_edit_cancel_joins(const dhps_cluster_map *m, const dhps_cluster_move *moves,
                                       size_t n, dhps_cluster_map **out, char *err,
                                       size_t errlen)
{
    return end_joins(m, moves, n, false, out, err, errlen);
}

int dhps_cluster_map_edit_balance_first(const dhps_cluster_map *m, dhps_cluster_map **out,
                                        size_t *changed, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !out) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    const uint32_t S = m->nshards, R = m->nreplicas;
    struct parts p;
    if (parts_copy(m, 0, 0, &p) < 0)
        return -ENOMEM;
    uint32_t *first = calloc(m->nnodes, sizeof *first); /* per node index */
    if (!first) {
        parts_free(&p);
        return -ENOMEM;
    }
    for (uint32_t s = 0; s < S; s++)
        first[m->by_id[p.shards[(size_t)s * R]]]++;
    for (bool again = true; again;) {
        again = false;
        for (uint32_t s = 0; s < S; s++) {
            uint32_t *r = p.shards + (size_t)s * R;
            int32_t fi = m->by_id[r[0]];
            bool f_active = m->nodes[fi].state == DHPS_NODE_ACTIVE;
            uint32_t best = 0;
            for (uint32_t a = 1; a < R; a++) {
                int32_t ai = m->by_id[r[a]];
                if (m->nodes[ai].state != DHPS_NODE_ACTIVE)
                    continue;
                if (!best || first[ai] < first[m->by_id[r[best]]])
                    best = a;
            }
            if (!best)
                continue;
            int32_t bi = m->by_id[r[best]];
            if (f_active && first[bi] + 1 >= first[fi])
                continue;
            first[fi]--;
            first[bi]++;
            uint32_t t = r[0];
            r[0] = r[best];
            r[best] = t;
            again = true;
        }
    }
    size_t nch = 0;
    for (uint32_t s = 0; s < S; s++)
        nch += memcmp(p.shards + (size_t)s * R, m->shards + (size_t)s * R,
                      R * sizeof *p.shards) != 0;
    if (changed)
        *changed = nch;
    free(first);
    return parts_build(m, &p, &e, out);
}

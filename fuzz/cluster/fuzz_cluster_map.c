/* Fuzz the cluster map parser: any input is rejected with an error or yields a map whose
 * accessors agree with each other (replicas, joining entries and their rules, holdings)
 * and survives a JSON round trip. Small maps are also planned (dhps_cluster_plan, every
 * third node dead): the moves must start together and complete as valid maps (hosts
 * distinct, joining rules), leave nothing on dead or draining nodes unless counted
 * unplaced, and the plan must be deterministic. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/cluster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dhps_cluster_map *m = NULL;
    char err[256];
    int rc = dhps_cluster_map_parse(data, size, &m, err, sizeof err);
    if (rc != 0) {
        if (m || strlen(err) >= sizeof err)
            abort();
        return 0;
    }
    uint32_t S = dhps_cluster_map_nshards(m);
    size_t total = 0;
    for (size_t i = 0; i < dhps_cluster_map_nnodes(m); i++) {
        const dhps_cluster_node *n = dhps_cluster_map_node_at(m, i);
        if (dhps_cluster_map_node(m, n->id) != n)
            abort();
        total += dhps_cluster_map_shards_of(m, n->id, NULL, 0);
    }
    if (total != (size_t)S * dhps_cluster_map_nreplicas(m))
        abort();
    size_t held = 0;
    for (size_t i = 0; i < dhps_cluster_map_nnodes(m); i++) {
        uint32_t id = dhps_cluster_map_node_at(m, i)->id, prev = 0;
        size_t cnt = dhps_cluster_map_holdings_of(m, id, NULL, 0);
        uint32_t *sh = malloc((cnt + 1) * sizeof *sh);
        if (!sh || dhps_cluster_map_holdings_of(m, id, sh, cnt) != cnt)
            abort();
        for (size_t k = 0; k < cnt; k++) {
            if ((k && sh[k] <= prev) || !dhps_cluster_map_holds(m, id, sh[k]))
                abort();
            prev = sh[k];
        }
        free(sh);
        held += cnt;
    }
    size_t nj = dhps_cluster_map_njoining(m);
    if (held != total + nj)
        abort();
    for (size_t k = 0; k < nj; k++) {
        const dhps_cluster_join *j = dhps_cluster_map_join_at(m, k), *first = NULL;
        if (!j || j->shard >= S || j->since > dhps_cluster_map_version(m) ||
            dhps_cluster_map_owns(m, j->node, j->shard) ||
            !dhps_cluster_map_owns(m, j->replaces, j->shard) ||
            !dhps_cluster_map_holds(m, j->node, j->shard))
            abort();
        int c = dhps_cluster_map_joining(m, j->shard, &first);
        if (c < 1 || (uint32_t)c > dhps_cluster_map_nreplicas(m) || j < first || j >= first + c)
            abort();
        if (k && (j[-1].shard > j->shard || (j[-1].shard == j->shard && j[-1].node >= j->node)))
            abort();
    }
    for (uint32_t s = 0; s < S; s++) {
        const uint32_t *ids;
        int r = dhps_cluster_map_replicas(m, s, &ids);
        for (int a = 0; a < r; a++)
            if (!dhps_cluster_map_owns(m, ids[a], s) || !dhps_cluster_map_node(m, ids[a]))
                abort();
    }
    if ((size_t)S * dhps_cluster_map_nreplicas(m) <= 2048 && dhps_cluster_map_nnodes(m) <= 64) {
        uint32_t dead[64];
        size_t nd = 0;
        for (size_t i = 2; i < dhps_cluster_map_nnodes(m); i += 3)
            dead[nd++] = dhps_cluster_map_node_at(m, i)->id;
        dhps_cluster_plan_params pp;
        dhps_cluster_plan_params_init(&pp);
        pp.dead = dead;
        pp.ndead = nd;
        dhps_cluster_move *mv = NULL, *mv2 = NULL;
        size_t n = 0, n2 = 0;
        dhps_cluster_plan_stats st;
        int prc = dhps_cluster_plan(m, &pp, &mv, &n, &st, NULL, 0);
        if (prc == 0) {
            /* below the bound only when the plan could not finish (hosts, frozen shards) */
            if (n < st.min_moves && st.unplaced == 0 && st.short_left == 0)
                abort();
            if (dhps_cluster_plan(m, &pp, &mv2, &n2, NULL, NULL, 0) != 0 || n2 != n ||
                (n && memcmp(mv, mv2, n * sizeof *mv)))
                abort();
            dhps_cluster_map *a = NULL, *b = NULL;
            if (dhps_cluster_map_edit_start_joins(m, mv, n, &a, NULL, 0) != 0 ||
                dhps_cluster_map_edit_complete_joins(a, mv, n, &b, NULL, 0) != 0)
                abort();
            if (st.unplaced == 0) {
                for (size_t i = 0; i < dhps_cluster_map_nnodes(b); i++) {
                    const dhps_cluster_node *nb = dhps_cluster_map_node_at(b, i);
                    bool gone = nb->state != DHPS_NODE_ACTIVE;
                    for (size_t k = 0; k < nd; k++)
                        gone |= dead[k] == nb->id;
                    /* only shards frozen by a join in flight may keep them */
                    uint32_t sh[1];
                    if (gone && dhps_cluster_map_shards_of(b, nb->id, sh, 1) > 0) {
                        const dhps_cluster_join *f;
                        if (dhps_cluster_map_joining(m, sh[0], &f) == 0)
                            abort();
                    }
                }
            }
            dhps_cluster_map_destroy(a);
            dhps_cluster_map_destroy(b);
        } else if (prc != DHPS_E_CONFIG) {
            abort();
        }
        free(mv);
        free(mv2);
    }
    char *j = dhps_cluster_map_to_json(m);
    dhps_cluster_map *m2 = NULL;
    if (!j || dhps_cluster_map_parse(j, strlen(j), &m2, NULL, 0) != 0)
        abort();
    char *j2 = dhps_cluster_map_to_json(m2);
    if (!j2 || strcmp(j, j2))
        abort();
    free(j);
    free(j2);
    dhps_cluster_map_destroy(m2);
    dhps_cluster_map_destroy(m);
    return 0;
}

/* Fuzz the cluster map parser: any input is rejected with an error or yields a map whose
 * accessors agree with each other (replicas, joining entries and their rules, holdings)
 * and survives a JSON round trip. */
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

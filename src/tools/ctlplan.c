/*
 * The driver's planner over the cluster library's placement (dhps_cluster_plan,
 * include/dhps/cluster.h "Placement"): dead and draining nodes' replicas first, then
 * balance, each (shard, replaced replica) once, shards with a join in flight left alone.
 */
#include <errno.h>
#include <stdlib.h>

#include "ctl.h"

int ctl_plan_placement(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap)
{
    (void)arg;
    dhps_cluster_plan_params p;
    dhps_cluster_plan_params_init(&p);
    dhps_cluster_move *mv = NULL;
    size_t n = 0;
    int rc = dhps_cluster_plan(m, &p, &mv, &n, NULL, NULL, 0);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = (ctl_move){mv[i].shard, mv[i].from, mv[i].to};
    free(mv);
    return n > (size_t)INT32_MAX ? -EOVERFLOW : (int)n;
}

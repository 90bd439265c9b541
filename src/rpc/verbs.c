/* RDMA verbs: device probe only. The verbs data path is not implemented yet (see
 * docs/rpc.md "not done"); channels negotiate shm or TCP instead. */
#include "internal.h"

#include <infiniband/verbs.h>

bool dhps_rpc_verbs_available(void)
{
    int n = 0;
    bool ok = false;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list)
        return false;
    for (int i = 0; i < n && !ok; i++) {
        struct ibv_context *ctx = ibv_open_device(list[i]);
        if (!ctx)
            continue;
        struct ibv_device_attr da;
        if (ibv_query_device(ctx, &da) == 0) {
            for (uint8_t port = 1; port <= da.phys_port_cnt && !ok; port++) {
                struct ibv_port_attr pa;
                if (ibv_query_port(ctx, port, &pa) == 0 && pa.state == IBV_PORT_ACTIVE)
                    ok = true;
            }
        }
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    return ok;
}

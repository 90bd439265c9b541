/*
 * dhps client: the two built-in routers (dhps_client_router_ops): "first healthy" and the
 * adapter to the route library. Design in include/dhps/client.h ("Routing").
 */
#include "dhps/client.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/route.h"
#include "util.h"

struct first_healthy {
    uint32_t max_id;
    _Atomic uint64_t *fail_until; /* per node id: monotonic ns */
};

void *dhps_client_router_first_healthy_create(uint32_t max_node_id)
{
    struct first_healthy *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->max_id = max_node_id;
    f->fail_until = calloc((size_t)max_node_id + 1, sizeof *f->fail_until);
    if (!f->fail_until) {
        free(f);
        return NULL;
    }
    return f;
}

static bool excluded(const uint32_t *ex, size_t nex, uint32_t id)
{
    for (size_t i = 0; i < nex; i++)
        if (ex[i] == id)
            return true;
    return false;
}

static int fh_pick(void *self, const uint32_t *rep, size_t n, const uint32_t *ex, size_t nex,
                   int kind, dhps_client_pick *out)
{
    struct first_healthy *f = self;
    uint64_t now = dhps_mono_ns();
    size_t fallback = n;
    for (size_t i = 0; i < n; i++) {
        if (rep[i] > f->max_id || excluded(ex, nex, rep[i]))
            continue;
        if (atomic_load_explicit(&f->fail_until[rep[i]], memory_order_relaxed) <= now) {
            fallback = i;
            break;
        }
        if (fallback == n)
            fallback = i;
    }
    if (fallback == n)
        return DHPS_E_UNREACHABLE;
    memset(out, 0, sizeof *out);
    out->node = rep[fallback];
    out->kind = (uint8_t)kind;
    out->start_ns = now;
    return 0;
}

static void fh_report(void *self, const dhps_client_pick *p, uint64_t lat, int outcome)
{
    struct first_healthy *f = self;
    if (p->node > f->max_id)
        return;
    if (outcome == DHPS_CLIENT_CANCELLED)
        return;
    uint64_t v = outcome == DHPS_CLIENT_OK ? 0 : dhps_mono_ns() + 1000000000ull;
    atomic_store_explicit(&f->fail_until[p->node], v, memory_order_relaxed);
}

static void fh_destroy(void *self)
{
    struct first_healthy *f = self;
    if (f)
        free(f->fail_until);
    free(f);
}

const dhps_client_router_ops dhps_client_router_first_healthy = {
    .name = "first_healthy", .pick = fh_pick, .report = fh_report, .allow_retry = NULL,
    .set_nodes = NULL, .destroy = fh_destroy,
};

static int rt_pick(void *self, const uint32_t *rep, size_t n, const uint32_t *ex, size_t nex,
                   int kind, dhps_client_pick *out)
{
    dhps_route_choice ch;
    int rc = dhps_route_pick(self, rep, n, ex, nex, kind, &ch);
    if (rc < 0)
        return rc == DHPS_E_UNREACHABLE ? rc : DHPS_E_UNREACHABLE;
    out->node = ch.node;
    out->kind = ch.kind;
    out->tier = ch.tier;
    out->flags = ch.flags;
    out->start_ns = ch.start_ns;
    return 0;
}

static void rt_report(void *self, const dhps_client_pick *p, uint64_t lat, int outcome)
{
    dhps_route_choice ch = {.node = p->node, .tier = p->tier, .kind = p->kind,
                            .flags = p->flags, .start_ns = p->start_ns};
    int o = outcome == DHPS_CLIENT_OK          ? DHPS_ROUTE_OK
            : outcome == DHPS_CLIENT_TIMEOUT   ? DHPS_ROUTE_TIMEOUT
            : outcome == DHPS_CLIENT_CANCELLED ? DHPS_ROUTE_CANCELLED
                                               : DHPS_ROUTE_ERROR;
    dhps_route_report(self, &ch, lat, o);
}

static bool rt_allow_retry(void *self, uint64_t deadline_ns)
{
    return dhps_route_retry_acquire(self, deadline_ns) == 0;
}

static uint64_t rt_hedge_delay(void *self, const dhps_client_pick *p)
{
    dhps_route_choice ch = {.node = p->node, .tier = p->tier, .kind = p->kind,
                            .flags = p->flags, .start_ns = p->start_ns};
    return dhps_route_hedge_delay(self, &ch);
}

static bool rt_hedge_acquire(void *self, uint64_t deadline_ns)
{
    return dhps_route_hedge_acquire(self, deadline_ns) == 0;
}

static void rt_set_nodes(void *self, const dhps_cluster_map *m)
{
    for (size_t i = 0; i < dhps_cluster_map_nnodes(m); i++) {
        const dhps_cluster_node *n = dhps_cluster_map_node_at(m, i);
        dhps_route_labels l = {.host = n->host, .pod = n->pod, .az = n->az};
        dhps_route_node_set(self, n->id, &l);
    }
}

static void rt_destroy(void *self) { dhps_route_destroy(self); }

const dhps_client_router_ops dhps_client_router_route = {
    .name = "route", .pick = rt_pick, .report = rt_report, .allow_retry = rt_allow_retry,
    .hedge_delay = rt_hedge_delay, .hedge_acquire = rt_hedge_acquire,
    .set_nodes = rt_set_nodes, .destroy = rt_destroy,
};

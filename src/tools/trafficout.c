/*
 * dhps traffic's output (traffic.h): one line per interval and the summary, as text
 * (key=value fields, which the topology test reads) or as one JSON object per line. The
 * fields are described in docs/tools.md ("dhps traffic").
 */
#include <stdio.h>

#include "dhps/client.h"
#include "traffic.h"

struct tr_route tr_route_since(tools_conn *conn, dhps_route_stats *base)
{
    struct tr_route d = {0};
    dhps_route *r = dhps_client_route(conn->client);
    dhps_route_stats now;
    if (!r || dhps_route_stats_get(r, &now))
        return d;
    d.have = true;
    d.opened_errors = now.opened_errors - base->opened_errors;
    d.opened_slow = now.opened_slow - base->opened_slow;
    d.opened_probe = now.opened_probe - base->opened_probe;
    d.closed = now.breaker_closed - base->breaker_closed;
    d.ejected = now.ejected;
    d.rise_us = now.common_rise_ns / 1e3;
    *base = now;
    return d;
}

/* --per-node: the router's view behind the shares, for telling why a tier lost traffic
 * (docs/route.md): each node's dynamic weight (w<ID>=) and smooth latency (lat<ID>_us=),
 * each tier's baseline B and smooth latency (base_<tier>_us=, lat_<tier>_us=; 0 =
 * unknown). Nothing when the client does not route with the route library. */
static void tr_print_router(tools_conn *conn, const struct tr_nodes *ns, bool json)
{
    dhps_route *r = dhps_client_route(conn->client);
    dhps_route_stats rs;
    if (!r || dhps_route_stats_get(r, &rs))
        return;
    /* each node's state read once: the text prints it per node, JSON as two objects */
    struct node_view {
        uint32_t id;
        double weight, lat_us;
    } nv[TR_MAX_NODES];
    size_t nn = 0;
    for (size_t i = 0; i < ns->n; i++) {
        dhps_route_node_stats st;
        if (!dhps_route_node_stats_get(r, ns->nd[i].id, &st))
            nv[nn++] = (struct node_view){ns->nd[i].id, st.weight, st.latency_ns / 1e3};
    }
    if (!json) {
        for (size_t i = 0; i < nn; i++)
            printf(" w%u=%.2f lat%u_us=%.0f", nv[i].id, nv[i].weight, nv[i].id, nv[i].lat_us);
        for (int t = 1; t < 4; t++)
            printf(" base_%s_us=%.0f lat_%s_us=%.0f", tools_tier_names[t],
                   rs.tier[t].baseline_ns / 1e3, tools_tier_names[t],
                   rs.tier[t].latency_ns / 1e3);
        return;
    }
    printf(",\"node_weight\":{");
    for (size_t i = 0; i < nn; i++)
        printf("%s\"%u\":%.3f", i ? "," : "", nv[i].id, nv[i].weight);
    printf("},\"node_latency_us\":{");
    for (size_t i = 0; i < nn; i++)
        printf("%s\"%u\":%.1f", i ? "," : "", nv[i].id, nv[i].lat_us);
    printf("},\"tier_baseline_us\":{");
    for (int t = 0; t < 4; t++)
        printf("%s\"%s\":%.1f", t ? "," : "", tools_tier_names[t], rs.tier[t].baseline_ns / 1e3);
    printf("},\"tier_latency_us\":{");
    for (int t = 0; t < 4; t++)
        printf("%s\"%s\":%.1f", t ? "," : "", tools_tier_names[t], rs.tier[t].latency_ns / 1e3);
    printf("}");
}

void tr_print(const struct tr_opts *o, tools_conn *conn, const struct tr_nodes *ns, double t,
              bool summary, const struct tr_counts *n, const tools_hist *h,
              const struct tr_route *rt, const struct tr_upd_counts *u, const struct tr_final *f)
{
    uint64_t tier[4] = {0}, total = 0;
    for (size_t i = 0; i < ns->n; i++) {
        tier[ns->nd[i].tier] += ns->nd[i].msgs;
        total += ns->nd[i].msgs;
    }
    double share[4];
    for (int k = 0; k < 4; k++)
        share[k] = total ? (double)tier[k] / (double)total : 0;
    double avail = n->lookups ? (double)n->complete / (double)n->lookups : 1;
    unsigned long long p50 = tools_hist_quantile(h, 0.5) / 1000,
                       p99 = tools_hist_quantile(h, 0.99) / 1000;
    unsigned long long mapv = (unsigned long long)dhps_client_map_version(conn->client);
    if (o->json) {
        printf("{%s\"t\":%.3f,\"lookups\":%llu,\"complete\":%llu,\"incomplete\":%llu,"
               "\"availability\":%.6f,\"wrong\":%llu,\"missing\":%llu,\"errors\":%llu,"
               "\"p50_us\":%llu,\"p99_us\":%llu,\"map_version\":%llu,\"messages\":%llu,"
               "\"tier_share\":{",
               summary ? "\"summary\":true," : "", t, (unsigned long long)n->lookups,
               (unsigned long long)n->complete, (unsigned long long)n->incomplete, avail,
               (unsigned long long)n->wrong, (unsigned long long)n->missing,
               (unsigned long long)n->errors, p50, p99, mapv, (unsigned long long)total);
        for (int k = 0; k < 4; k++)
            printf("%s\"%s\":%.4f", k ? "," : "", tools_tier_names[k], share[k]);
        printf("},\"node_messages\":{");
        for (size_t i = 0; i < ns->n; i++)
            printf("%s\"%u\":%llu", i ? "," : "", ns->nd[i].id,
                   (unsigned long long)ns->nd[i].msgs);
        printf("}");
        if (o->per_node)
            tr_print_router(conn, ns, true);
        if (rt->have)
            printf(",\"breaker\":{\"opened_errors\":%llu,\"opened_slow\":%llu,"
                   "\"opened_probe\":%llu,\"closed\":%llu,\"ejected\":%u},"
                   "\"common_rise_us\":%.1f",
                   (unsigned long long)rt->opened_errors, (unsigned long long)rt->opened_slow,
                   (unsigned long long)rt->opened_probe, (unsigned long long)rt->closed,
                   rt->ejected, rt->rise_us);
        if (u->have)
            printf(",\"updates\":%llu,\"update_failed\":%llu,\"acked_keys\":%llu,"
                   "\"acked_missing\":%llu,\"stale\":%llu",
                   (unsigned long long)u->updates, (unsigned long long)u->failed,
                   (unsigned long long)u->acked_keys, (unsigned long long)n->acked_missing,
                   (unsigned long long)n->stale);
        if (f)
            printf(",\"final_keys\":%llu,\"final_lost\":%llu,\"final_wrong\":%llu,"
                   "\"final_unread\":%llu",
                   (unsigned long long)f->keys, (unsigned long long)f->lost,
                   (unsigned long long)f->wrong, (unsigned long long)f->unread);
        printf("}\n");
    } else {
        printf("%s t=%.2f lookups=%llu complete=%llu incomplete=%llu wrong=%llu missing=%llu "
               "p50_us=%llu p99_us=%llu msgs=%llu",
               summary ? "summary" : "interval", t, (unsigned long long)n->lookups,
               (unsigned long long)n->complete, (unsigned long long)n->incomplete,
               (unsigned long long)n->wrong, (unsigned long long)n->missing, p50, p99,
               (unsigned long long)total);
        for (int k = 0; k < 4; k++)
            printf(" %s=%.3f", tools_tier_names[k], share[k]);
        if (rt->have)
            printf(" opened_err=%llu opened_slow=%llu opened_probe=%llu closed=%llu "
                   "ejected=%u rise_us=%.0f",
                   (unsigned long long)rt->opened_errors, (unsigned long long)rt->opened_slow,
                   (unsigned long long)rt->opened_probe, (unsigned long long)rt->closed,
                   rt->ejected, rt->rise_us);
        if (conn->etcd[0] || o->per_node || u->have)
            printf(" errors=%llu map=%llu", (unsigned long long)n->errors, mapv);
        if (u->have)
            printf(" updates=%llu update_failed=%llu acked_keys=%llu acked_missing=%llu "
                   "stale=%llu",
                   (unsigned long long)u->updates, (unsigned long long)u->failed,
                   (unsigned long long)u->acked_keys, (unsigned long long)n->acked_missing,
                   (unsigned long long)n->stale);
        if (o->per_node) {
            for (size_t i = 0; i < ns->n; i++)
                printf(" n%u=%.3f", ns->nd[i].id,
                       total ? (double)ns->nd[i].msgs / (double)total : 0.0);
            tr_print_router(conn, ns, false);
        }
        if (summary)
            printf(" availability=%.6f", avail);
        if (f)
            printf(" final_keys=%llu final_lost=%llu final_wrong=%llu final_unread=%llu",
                   (unsigned long long)f->keys, (unsigned long long)f->lost,
                   (unsigned long long)f->wrong, (unsigned long long)f->unread);
        printf("\n");
    }
    fflush(stdout);
}


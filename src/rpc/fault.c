/* rpc fault injection: per-peer rule tables (see dhps/rpc.h). One process-wide table
 * for the client side (dhps_rpc_fault_*), one per server for the server side
 * (dhps_rpc_server_fault_*, applied in server.c). */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

rpc_fault_table rpc_client_faults = {.mu = PTHREAD_MUTEX_INITIALIZER};

void dhps_rpc_fault_init(dhps_rpc_fault *f)
{
    memset(f, 0, sizeof *f);
    f->delay_percent = 100;
}

void rpc_fault_table_init(rpc_fault_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
}

void rpc_fault_table_fini(rpc_fault_table *t)
{
    pthread_mutex_destroy(&t->mu);
}

static bool host_ok(const char *host)
{
    return host && host[0] && strlen(host) < RPC_FAULT_HOST_MAX;
}

/* Exact match; with exact false, a port-0 rule of the host also matches. */
static rpc_fault_rule *find(rpc_fault_table *t, const char *host, uint16_t port, bool exact)
{
    rpc_fault_rule *any = NULL;
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++) {
        rpc_fault_rule *r = &t->rules[i];
        if (!r->used || strcmp(r->host, host) != 0)
            continue;
        if (r->port == port)
            return r;
        if (!exact && r->port == 0)
            any = r;
    }
    return any;
}

static bool rule_ok(const dhps_rpc_fault *f)
{
    return f && f->drop_percent <= 100 && f->delay_percent <= 100 &&
           f->delay_us <= DHPS_RPC_FAULT_MAX_DELAY_US;
}

int rpc_fault_table_set(rpc_fault_table *t, const char *host, uint16_t port,
                        const dhps_rpc_fault *f)
{
    if (!host_ok(host) || !rule_ok(f))
        return -EINVAL;
    pthread_mutex_lock(&t->mu);
    rpc_fault_rule *r = find(t, host, port, true);
    if (!r) {
        for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES && !r; i++)
            if (!t->rules[i].used)
                r = &t->rules[i];
        if (!r) {
            pthread_mutex_unlock(&t->mu);
            return -ENOSPC;
        }
        memset(r, 0, sizeof *r);
        r->used = true;
        snprintf(r->host, sizeof r->host, "%s", host);
        r->port = port;
        atomic_fetch_add_explicit(&t->nrules, 1, memory_order_relaxed);
    }
    r->f = *f;
    r->rng = f->seed ? f->seed : 0x9e3779b97f4a7c15ull;
    memset(&r->st, 0, sizeof r->st);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int rpc_fault_table_clear(rpc_fault_table *t, const char *host, uint16_t port)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++) {
        rpc_fault_rule *r = &t->rules[i];
        if (r->used && (!host || (strcmp(r->host, host) == 0 && r->port == port))) {
            r->used = false;
            atomic_fetch_sub_explicit(&t->nrules, 1, memory_order_relaxed);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int rpc_fault_table_get(rpc_fault_table *t, const char *host, uint16_t port,
                        dhps_rpc_fault_stats *st)
{
    if (!host_ok(host) || !st)
        return -ENOENT;
    pthread_mutex_lock(&t->mu);
    rpc_fault_rule *r = find(t, host, port, true);
    if (r)
        *st = r->st;
    pthread_mutex_unlock(&t->mu);
    return r ? 0 : -ENOENT;
}

size_t rpc_fault_table_list(rpc_fault_table *t, dhps_rpc_fault_entry *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++) {
        const rpc_fault_rule *r = &t->rules[i];
        if (!r->used)
            continue;
        if (out && n < cap) {
            dhps_rpc_fault_entry *e = &out[n];
            memset(e, 0, sizeof *e);
            snprintf(e->host, sizeof e->host, "%s", r->host);
            e->port = r->port;
            e->f = r->f;
            e->st = r->st;
        }
        n++;
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* xorshift64*, draw in [0, 100). */
static uint32_t pct(rpc_fault_rule *r)
{
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return (uint32_t)(((x * 0x2545f4914f6cdd1dull) >> 32) % 100u);
}

int rpc_fault_table_decide(rpc_fault_table *t, const char *host, uint16_t port,
                           bool any_peer, uint64_t *delay_ns)
{
    int out = RPC_FAULT_NONE;
    *delay_ns = 0;
    pthread_mutex_lock(&t->mu);
    rpc_fault_rule *r = find(t, host, port, false);
    if (!r && any_peer)
        r = find(t, DHPS_RPC_FAULT_ANY_PEER, 0, true);
    if (r) {
        r->st.calls++;
        if (r->f.partition) {
            r->st.partitioned++;
            out = RPC_FAULT_FAIL;
        } else if (r->f.drop_percent && pct(r) < r->f.drop_percent) {
            r->st.dropped++;
            out = r->f.drop_timeout ? RPC_FAULT_HOLD : RPC_FAULT_FAIL;
        } else if (r->f.delay_us && r->f.delay_percent && pct(r) < r->f.delay_percent) {
            r->st.delayed++;
            *delay_ns = (uint64_t)r->f.delay_us * 1000ull;
            out = RPC_FAULT_DELAY;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return out;
}

/* ---- client side: the process-wide table ---------------------------------------------- */

int dhps_rpc_fault_set(const char *host, uint16_t port, const dhps_rpc_fault *f)
{
    return rpc_fault_table_set(&rpc_client_faults, host, port, f);
}

int dhps_rpc_fault_clear(const char *host, uint16_t port)
{
    return rpc_fault_table_clear(&rpc_client_faults, host, port);
}

int dhps_rpc_fault_get_stats(const char *host, uint16_t port, dhps_rpc_fault_stats *st)
{
    return rpc_fault_table_get(&rpc_client_faults, host, port, st);
}

int rpc_fault_decide(const char *host, uint16_t port, uint64_t *delay_ns)
{
    return rpc_fault_table_decide(&rpc_client_faults, host, port, false, delay_ns);
}

/* ---- server side: argument checks (the table lives in the server) -------------------- */

/* A server rule's peer: a numeric IPv4 address (written back in canonical form) or
 * DHPS_RPC_FAULT_ANY_PEER with port 0. */
int rpc_fault_server_peer(const char *peer, uint16_t port, char out[RPC_FAULT_HOST_MAX])
{
    if (!peer)
        return -EINVAL;
    if (strcmp(peer, DHPS_RPC_FAULT_ANY_PEER) == 0) {
        if (port)
            return -EINVAL;
        snprintf(out, RPC_FAULT_HOST_MAX, "%s", DHPS_RPC_FAULT_ANY_PEER);
        return 0;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, peer, &a) != 1)
        return -EINVAL;
    if (!inet_ntop(AF_INET, &a, out, RPC_FAULT_HOST_MAX))
        return -EINVAL;
    return 0;
}

/* rpc fault injection: the process-wide per-peer rule table (see dhps/rpc.h). */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct rule {
    bool used;
    char host[64];
    uint16_t port;
    dhps_rpc_fault f;
    uint64_t rng;
    dhps_rpc_fault_stats st;
} rule;

_Atomic uint32_t rpc_fault_nrules;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static rule rules[DHPS_RPC_FAULT_MAX_RULES];

void dhps_rpc_fault_init(dhps_rpc_fault *f)
{
    memset(f, 0, sizeof *f);
    f->delay_percent = 100;
}

static bool host_ok(const char *host)
{
    return host && host[0] && strlen(host) < sizeof rules[0].host;
}

/* Exact match; with exact false, port 0 rules also match. */
static rule *find(const char *host, uint16_t port, bool exact)
{
    rule *any = NULL;
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++) {
        rule *r = &rules[i];
        if (!r->used || strcmp(r->host, host) != 0)
            continue;
        if (r->port == port)
            return r;
        if (!exact && r->port == 0)
            any = r;
    }
    return any;
}

int dhps_rpc_fault_set(const char *host, uint16_t port, const dhps_rpc_fault *f)
{
    if (!host_ok(host) || !f || f->drop_percent > 100 || f->delay_percent > 100 ||
        f->delay_us > 60000000u)
        return -EINVAL;
    pthread_mutex_lock(&mu);
    rule *r = find(host, port, true);
    if (!r) {
        for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES && !r; i++)
            if (!rules[i].used)
                r = &rules[i];
        if (!r) {
            pthread_mutex_unlock(&mu);
            return -ENOSPC;
        }
        memset(r, 0, sizeof *r);
        r->used = true;
        snprintf(r->host, sizeof r->host, "%s", host);
        r->port = port;
        atomic_fetch_add_explicit(&rpc_fault_nrules, 1, memory_order_relaxed);
    }
    r->f = *f;
    r->rng = f->seed ? f->seed : 0x9e3779b97f4a7c15ull;
    memset(&r->st, 0, sizeof r->st);
    pthread_mutex_unlock(&mu);
    return 0;
}

int dhps_rpc_fault_clear(const char *host, uint16_t port)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&mu);
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++) {
        rule *r = &rules[i];
        if (r->used && (!host || (strcmp(r->host, host) == 0 && r->port == port))) {
            r->used = false;
            atomic_fetch_sub_explicit(&rpc_fault_nrules, 1, memory_order_relaxed);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

int dhps_rpc_fault_get_stats(const char *host, uint16_t port, dhps_rpc_fault_stats *st)
{
    if (!host_ok(host) || !st)
        return -ENOENT;
    pthread_mutex_lock(&mu);
    rule *r = find(host, port, true);
    if (r)
        *st = r->st;
    pthread_mutex_unlock(&mu);
    return r ? 0 : -ENOENT;
}

/* xorshift64*, draw in [0, 100). */
static uint32_t pct(rule *r)
{
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return (uint32_t)(((x * 0x2545f4914f6cdd1dull) >> 32) % 100u);
}

int rpc_fault_decide(const char *host, uint16_t port, uint64_t *delay_ns)
{
    int out = RPC_FAULT_NONE;
    *delay_ns = 0;
    pthread_mutex_lock(&mu);
    rule *r = find(host, port, false);
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
    pthread_mutex_unlock(&mu);
    return out;
}

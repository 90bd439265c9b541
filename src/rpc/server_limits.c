/* rpc server: connection caps per server and per peer address, and the rate-limited
 * refusal log (docs/rpc.md §4 "Limits"). Accepts and closes are not the hot path: one
 * mutex over a small chained table of the addresses with open connections. */
#include "server_internal.h"

#define PEER_BUCKETS 1024u

typedef struct peer_ent {
    struct peer_ent *next;
    uint32_t ip; /* network order */
    uint32_t n;
} peer_ent;

struct rpc_peers {
    pthread_mutex_t mu;
    uint32_t total;
    peer_ent *b[PEER_BUCKETS];
};

static uint32_t bucket(uint32_t ip)
{
    return (uint32_t)(((uint64_t)ip * 0x9E3779B97F4A7C15ull) >> 40) % PEER_BUCKETS;
}

int rpc_peers_create(struct rpc_peers **out)
{
    struct rpc_peers *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return 0;
}

void rpc_peers_destroy(struct rpc_peers *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < PEER_BUCKETS; i++)
        for (peer_ent *e = t->b[i], *nx; e; e = nx) {
            nx = e->next;
            free(e);
        }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int rpc_peer_acquire(dhps_rpc_server *s, uint32_t ip, uint32_t *held)
{
    struct rpc_peers *t = s->peers;
    uint32_t maxc = s->p.max_connections, maxp = s->p.max_conns_per_peer;
    pthread_mutex_lock(&t->mu);
    peer_ent **pp = &t->b[bucket(ip)], *e = *pp;
    while (e && e->ip != ip)
        e = e->next;
    int rc = 0;
    if (maxc && t->total >= maxc) {
        *held = t->total;
        rc = -EMFILE;
    } else if (maxp && e && e->n >= maxp) {
        *held = e->n;
        rc = DHPS_E_BUSY;
    } else if (!e && !(e = calloc(1, sizeof *e))) {
        rc = -ENOMEM;
    } else {
        if (!e->n) { /* new entry */
            e->ip = ip;
            e->next = *pp;
            *pp = e;
        }
        e->n++;
        t->total++;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

void rpc_peer_release(dhps_rpc_server *s, uint32_t ip)
{
    struct rpc_peers *t = s->peers;
    pthread_mutex_lock(&t->mu);
    for (peer_ent **pp = &t->b[bucket(ip)]; *pp; pp = &(*pp)->next) {
        peer_ent *e = *pp;
        if (e->ip != ip)
            continue;
        t->total--;
        if (--e->n == 0) {
            *pp = e->next;
            free(e);
        }
        break;
    }
    pthread_mutex_unlock(&t->mu);
}

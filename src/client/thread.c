/*
 * dhps client: per-thread state (one rpc client per calling thread, in thread-specific
 * storage) and its channels to the nodes; dhps_client_connect and dhps_client_drain.
 * Design in include/dhps/client.h ("Threads").
 */
#include "client_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void client_tstate_free(struct tstate *ts)
{
    if (!ts)
        return;
    for (size_t i = 0; i < ts->nchans; i++)
        dhps_rpc_channel_close(ts->chans[i].ch);
    dhps_rpc_client_destroy(ts->rpc); /* detached calls complete (cancelled) here */
    free(ts->chans);
    free(ts);
}

void client_tstate_exit(void *arg)
{
    struct tstate *ts = arg;
    dhps_client *c = ts->c;
    pthread_mutex_lock(&c->lock);
    bool mine = ts->listed;
    if (mine) {
        ts->listed = false;
        if (ts->prev)
            ts->prev->next = ts->next;
        else
            c->threads = ts->next;
        if (ts->next)
            ts->next->prev = ts->prev;
    }
    pthread_mutex_unlock(&c->lock);
    if (mine)
        client_tstate_free(ts);
}

void client_rpc_params(const dhps_client *c, dhps_rpc_client_params *rp)
{
    dhps_rpc_client_params_init(rp);
    rp->secret = c->secret;
    rp->secret_len = c->p.secret_len;
    rp->max_msg = c->p.max_msg;
    rp->connect_timeout_ms = c->p.connect_timeout_ms;
    rp->spin_us = c->p.spin_us;
    rp->tls_ca_file = c->p.tls_ca_file; /* NULL when tls is off */
    rp->tls_cert_file = c->p.tls_cert_file;
    rp->tls_key_file = c->p.tls_key_file;
    rp->tls_server_name = c->p.tls_server_name;
}

struct tstate *client_tstate_get(dhps_client *c)
{
    struct tstate *ts = pthread_getspecific(c->key);
    if (ts)
        return ts;
    ts = calloc(1, sizeof *ts);
    if (!ts)
        return NULL;
    ts->c = c;
    dhps_rpc_client_params rp;
    client_rpc_params(c, &rp);
    uint8_t host_id[DHPS_RPC_HOST_ID_LEN];
    dhps_rpc_host_id(c->host, host_id); /* shm only with servers of our host label */
    rp.host_id = host_id;
    if (dhps_rpc_client_create(&rp, &ts->rpc) < 0 || pthread_setspecific(c->key, ts) != 0) {
        dhps_rpc_client_destroy(ts->rpc);
        free(ts);
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    ts->next = c->threads;
    if (c->threads)
        c->threads->prev = ts;
    c->threads = ts;
    ts->listed = true;
    pthread_mutex_unlock(&c->lock);
    CTR_ADD(c->st.threads, 1);
    return ts;
}

/* Transports toward node nd, from the tiers of the design: the same host may use shared
 * memory (the rpc hello decides, by host id), the same AZ RDMA verbs when both ends have a
 * device, another AZ TCP only. Without labels on either side every transport is allowed. */
static uint32_t path_allow(const dhps_client *c, const dhps_cluster_node *nd)
{
    if (!c->host[0] || !nd->host[0] || !strcmp(c->host, nd->host))
        return DHPS_RPC_ALL;
    if (!c->az[0] || !nd->az[0] || !strcmp(c->az, nd->az))
        return DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_VERBS);
    return DHPS_RPC_MASK(DHPS_RPC_TCP);
}

/* Look at an open in progress: count its end, and after a failure keep the node from
 * being dialled again before redial_backoff_ms. Returns the channel's status. */
int client_chan_state(dhps_client *c, struct chan *e, uint32_t id)
{
    int st = dhps_rpc_channel_status(e->ch);
    if (st == -EINPROGRESS)
        return st;
    if (!e->ended) { /* once per open: the backoff runs from the failure's first sight */
        e->ended = true;
        if (st == 0) {
            CTR_ADD(c->nodes[id].connects, 1);
        } else {
            e->retry_at_ns = dhps_mono_ns() + (uint64_t)c->p.redial_backoff_ms * 1000000ull;
            CTR_ADD(c->nodes[id].connect_failures, 1);
        }
    }
    if (st < 0)
        e->broken = true;
    return st;
}

/* The thread's channel to node id of map m, opened on demand without blocking: a new
 * channel is returned while its connect and hello run (calls sent on it wait for them,
 * inside their own deadlines, and fail with the open's error), so a node that is slow to
 * accept (stopped, loading, setting up RDMA) holds up only the calls routed to it; the
 * attempt timeout and hedges move those elsewhere. A call with a deadline (deadline_ns
 * != 0) also bounds the TCP connect by what is left of it. */
int client_channel_get(struct tstate *ts, const dhps_cluster_map *m, uint32_t id,
                       uint64_t deadline_ns, dhps_rpc_channel **out)
{
    dhps_client *c = ts->c;
    const dhps_cluster_node *nd = dhps_cluster_map_node(m, id);
    if (!nd || id > c->p.max_node_id)
        return DHPS_E_UNREACHABLE;
    if (id >= ts->nchans) {
        size_t nn = (size_t)dhps_cluster_map_max_node_id(m) + 1;
        struct chan *v = realloc(ts->chans, nn * sizeof *v);
        if (!v)
            return -ENOMEM;
        memset(v + ts->nchans, 0, (nn - ts->nchans) * sizeof *v);
        ts->chans = v;
        ts->nchans = nn;
    }
    struct chan *e = &ts->chans[id];
    uint32_t allow = path_allow(c, nd);
    bool tls = client_node_tls(c, nd); /* labels may change with the map */
    if (e->ch)
        (void)client_chan_state(c, e, id);
    if (e->ch && (e->broken || strcmp(e->addr, nd->addr) || e->allow != allow || e->tls != tls)) {
        dhps_rpc_channel_close(e->ch); /* in-flight calls complete (cancelled) */
        e->ch = NULL;
        e->broken = false;
    }
    if (e->ch) {
        *out = e->ch;
        return 0;
    }
    uint64_t now = dhps_mono_ns();
    if (now < e->retry_at_ns && !strcmp(e->addr, nd->addr))
        return DHPS_E_UNREACHABLE;
    dhps_rpc_channel_params cp;
    dhps_rpc_channel_params_init(&cp);
    cp.host = nd->ip;
    cp.port = nd->port;
    cp.allow = allow;
    cp.tls = tls;
    if (deadline_ns) {
        uint64_t left_us = deadline_ns > now ? (deadline_ns - now) / 1000 : 0;
        cp.tcp_connect_timeout_us =
            left_us < 1000 ? 1000 : left_us > UINT32_MAX ? UINT32_MAX : (uint32_t)left_us;
    }
    strcpy(e->addr, nd->addr);
    e->allow = allow;
    e->tls = tls;
    e->ended = false;
    int rc = dhps_rpc_channel_open_async(ts->rpc, &cp, &e->ch);
    if (rc < 0) {
        e->ch = NULL;
        e->retry_at_ns = dhps_mono_ns() + (uint64_t)c->p.redial_backoff_ms * 1000000ull;
        CTR_ADD(c->nodes[id].connect_failures, 1);
        return rc;
    }
    rc = client_chan_state(c, e, id);
    if (rc < 0 && rc != -EINPROGRESS)
        return rc; /* refused at once: closed on the next use, after the backoff */
    *out = e->ch;
    return 0;
}

int dhps_client_connect(dhps_client *c)
{
    if (!c)
        return -EINVAL;
    struct tstate *ts = client_tstate_get(c);
    if (!ts)
        return -ENOMEM;
    struct map_ref *mr = client_map_pin(c);
    size_t nn = dhps_cluster_map_nnodes(mr->m);
    /* every open runs at once: the wait is the slowest node's, not the sum */
    for (size_t i = 0; i < nn; i++) {
        dhps_rpc_channel *ch;
        (void)client_channel_get(ts, mr->m, dhps_cluster_map_node_at(mr->m, i)->id, 0, &ch);
    }
    int failed;
    for (;;) { /* each open ends by itself: connect_timeout_ms bounds it */
        bool opening = false;
        failed = 0;
        for (size_t i = 0; i < nn; i++) {
            uint32_t id = dhps_cluster_map_node_at(mr->m, i)->id;
            struct chan *e = id < ts->nchans ? &ts->chans[id] : NULL;
            int st = e && e->ch ? client_chan_state(c, e, id) : DHPS_E_UNREACHABLE;
            opening |= st == -EINPROGRESS;
            failed += st < 0 && st != -EINPROGRESS;
        }
        if (!opening)
            break;
        dhps_rpc_client_poll(ts->rpc, 10);
    }
    client_map_unref(mr);
    return failed;
}

int dhps_client_drain(dhps_client *c, uint64_t timeout_us)
{
    if (!c)
        return -EINVAL;
    struct tstate *ts = pthread_getspecific(c->key);
    if (!ts)
        return 0;
    uint64_t end = dhps_mono_ns() + timeout_us * 1000ull;
    for (;;) {
        dhps_rpc_client_poll(ts->rpc, 0);
        uint64_t now = dhps_mono_ns();
        if (!ts->inflight || now >= end)
            break;
        uint64_t left_ms = (end - now + 999999) / 1000000;
        dhps_rpc_client_poll(ts->rpc, left_ms > 10 ? 10 : (int)left_ms);
    }
    return ts->inflight > INT32_MAX ? INT32_MAX : (int)ts->inflight;
}

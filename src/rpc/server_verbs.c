#define _GNU_SOURCE
/* rpc server: the verbs path of a worker (server_internal.h). */
#include "server_internal.h"

char verbs_wake_tag; /* epoll data for completion-channel fds: drain them all */

/* Create a verbs endpoint for a client described by r and connect it. */
/* The worker's shared receive queue, created on first use (by an acceptor or the
 * worker itself: a slow path, under srq_lock); its completion channel joins the
 * worker's epoll set. */
static vsrq *worker_srq(dhps_rpc_server *s, worker *w)
{
    pthread_mutex_lock(&s->srq_lock);
    vsrq *q = w->srq;
    if (!q && vsrq_create(s->dev, s->p.verbs_srq_slots, s->p.max_msg, &q) == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &verbs_wake_tag};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, vsrq_event_fd(q), &ev) != 0)
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "epoll add cq channel: %s", strerror(errno));
        __atomic_store_n(&w->srq, q, __ATOMIC_RELEASE); /* the worker reads it lock-free */
    }
    pthread_mutex_unlock(&s->srq_lock);
    return q;
}

/* Create a verbs endpoint on worker w's shared receive queue for a client described
 * by r and connect it. The client may keep r->slots requests in flight; more than
 * the queue holds at once wait in the NIC (RNR retry), they are not lost. */
int verbs_setup(dhps_rpc_server *s, worker *w, sconn *sc, const rpc_verbs_info *r,
                       rpc_verbs_info *mine)
{
    if (!s->dev || __atomic_load_n(&s->dev->fatal, __ATOMIC_RELAXED) || r->slots == 0 ||
        r->slots > 1024)
        return -ENODEV;
    int rc = dd_alloc(sc, r->inflight_log2);
    if (rc)
        return rc;
    vsrq *q = worker_srq(s, w);
    if (!q)
        return -ENOMEM;
    vep *v = NULL;
    if ((rc = vep_create(s->dev, 2 * r->slots, 0, sc->c.max_msg, q, &v)))
        return rc;
    if ((rc = vep_connect(v, r))) {
        vep_destroy(v);
        return rc;
    }
    vep_info(v, mine);
    mine->slots = r->slots;
    sc->c.v = v;
    return 0;
}

void verbs_down(worker *w, sconn *sc)
{
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "worker %u: verbs path down, serving on tcp", w->idx);
    vep_destroy(sc->c.v);
    sc->c.v = NULL;
    sc->c.verbs_dirty = false;
    sc->c.transport = DHPS_RPC_TCP;
    w->nverbs--;
    bump(&w->st.verbs_down);
}

/* Serve one request that arrived over sc's QP. */
static void serve_vreq(worker *w, sconn *sc, const uint8_t *data, uint32_t len)
{
    rpc_frame f;
    long m = rpc_frame_parse(data, len, sc->c.max_msg, false, &f);
    int r = DHPS_E_MALFORMED;
    if (m > 0 && (uint32_t)m == len && f.type == RPC_F_REQ)
        r = serve_frame(w, &sc->c, DHPS_RPC_VERBS, &f, data + RPC_FRAME_HDR);
    if (r != 0) {
        if (r == DHPS_E_MALFORMED)
            bump(&w->st.malformed);
        verbs_down(w, sc);
    }
}

static sconn *sconn_by_qp(worker *w, uint32_t qp_num)
{
    sconn *sc = w->last_sc;
    if (!sc || !sc->c.v || sc->c.v->qp->qp_num != qp_num) {
        for (sc = w->conns; sc; sc = sc->next)
            if (sc->c.v && sc->c.v->qp->qp_num == qp_num)
                break;
        w->last_sc = sc;
    }
    return sc;
}

/* Serve, in arrival order, the requests that waited for sc's adoption. */
void orphans_serve(worker *w, sconn *sc)
{
    orphan **pp = &w->orph, *prev = NULL;
    while (*pp) {
        orphan *o = *pp;
        if (!sc->c.v || o->qp_num != sc->c.v->qp->qp_num) {
            prev = o;
            pp = &o->next;
            continue;
        }
        *pp = o->next;
        if (w->orph_tail == o)
            w->orph_tail = prev;
        w->norph--;
        serve_vreq(w, sc, o->data, o->len); /* the loop's test: sc still has its QP */
        free(o);
    }
}

/* Drop the requests whose connection never came (older than hello_timeout_ms). */
void orphans_expire(worker *w, uint64_t now)
{
    uint64_t max_age = (uint64_t)w->s->p.hello_timeout_ms * 1000000ull;
    while (w->orph && now - w->orph->at > max_age) {
        orphan *o = w->orph;
        w->orph = o->next;
        if (!w->orph)
            w->orph_tail = NULL;
        w->norph--;
        free(o);
    }
}

/* One request from the worker's shared receive queue: find its connection by QP. */
static int srq_frame(void *arg, uint32_t qp_num, bool ok, const uint8_t *data, uint32_t len)
{
    worker *w = arg;
    sconn *sc = sconn_by_qp(w, qp_num);
    if (!sc) { /* not handed over yet? take what the acceptors have queued */
        adopt(w);
        sc = sconn_by_qp(w, qp_num);
    }
    if (!sc) {
        orphan *o = ok && w->norph < ORPHANS_MAX ? malloc(sizeof *o + len) : NULL;
        if (o) { /* keep it for the hand-off; a gone connection's client re-sends on TCP */
            *o = (orphan){.at = dhps_mono_ns(), .qp_num = qp_num, .len = len};
            memcpy(o->data, data, len);
            if (w->orph_tail)
                w->orph_tail->next = o;
            else
                w->orph = o;
            w->orph_tail = o;
            w->norph++;
        }
        return 0;
    }
    if (!ok) {
        verbs_down(w, sc);
        return 0;
    }
    serve_vreq(w, sc, data, len);
    return 0;
}

/* Poll this worker's verbs once: send completions, then requests, then flush. */
int serve_verbs(worker *w)
{
    int work = 0;
    for (sconn *sc = w->conns; sc; sc = sc->next)
        if (sc->c.v && vep_poll_send(sc->c.v))
            verbs_down(w, sc);
    vsrq *q = __atomic_load_n(&w->srq, __ATOMIC_ACQUIRE);
    if (q) {
        int r = vsrq_rx(q, srq_frame, w);
        if (r > 0)
            work += r;
        if (r < 0) { /* the queue itself broke: every verbs path of this worker */
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "worker %u: shared receive queue failed", w->idx);
            for (sconn *sc = w->conns; sc; sc = sc->next)
                if (sc->c.v)
                    verbs_down(w, sc);
        }
    }
    for (sconn *sc = w->conns, *nx; sc; sc = nx) {
        nx = sc->next;
        if (!sc->c.verbs_dirty && !(sc->c.v && sc->c.tcp_dirty))
            continue;
        int r = sconn_flush(w, sc);
        if (r < 0)
            sconn_close(w, sc, r);
    }
    return work;
}

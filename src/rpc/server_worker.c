#define _GNU_SOURCE
/* rpc server: the worker threads (server_internal.h). */
#include "server_internal.h"

/* ---- worker ----------------------------------------------------------------------- */

/* Held-back responses: a binary min-heap on `at` per worker (only the worker touches it). */
static void heap_down(worker *w, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < w->nheap && w->heap[l]->at < w->heap[m]->at)
            m = l;
        if (r < w->nheap && w->heap[r]->at < w->heap[m]->at)
            m = r;
        if (m == i)
            return;
        dresp *t = w->heap[i];
        w->heap[i] = w->heap[m];
        w->heap[m] = t;
        i = m;
    }
}

static int heap_push(worker *w, dresp *d)
{
    if (w->nheap == w->capheap) {
        uint32_t nc = w->capheap ? 2 * w->capheap : 64;
        dresp **nh = realloc(w->heap, (size_t)nc * sizeof *nh);
        if (!nh)
            return -ENOMEM;
        w->heap = nh;
        w->capheap = nc;
    }
    uint32_t i = w->nheap++;
    w->heap[i] = d;
    while (i && w->heap[(i - 1) / 2]->at > w->heap[i]->at) {
        dresp *t = w->heap[i];
        w->heap[i] = w->heap[(i - 1) / 2];
        w->heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 0;
}

static void heap_pop(worker *w)
{
    w->heap[0] = w->heap[--w->nheap];
    if (w->nheap)
        heap_down(w, 0);
}

/* Free a held-back entry (taken off the heap). */
static void dresp_free(worker *w, dresp *d)
{
    w->held_bytes -= sizeof(dresp) + d->f.len;
    free(d);
}

/* Drop the held-back responses of a connection being closed. */
static void heap_purge(worker *w, sconn *sc)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < w->nheap; i++) {
        if (w->heap[i]->sc == sc)
            dresp_free(w, w->heap[i]);
        else
            w->heap[k++] = w->heap[i];
    }
    w->nheap = k;
    for (uint32_t i = k / 2; i-- > 0;)
        heap_down(w, i);
}

void sconn_close(worker *w, sconn *sc, int why)
{
    /* a peer hanging up (every CLI call ends so) or our shutdown is routine: debug */
    if (why == DHPS_E_UNREACHABLE || why == DHPS_E_CANCELLED)
        DHPS_LOG(DHPS_LOG_DEBUG, RPC_LOG, "worker %u: connection closed: %s", w->idx,
                 why == DHPS_E_UNREACHABLE ? "peer hung up" : "shutting down");
    else
        DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "worker %u: closing connection: %s", w->idx,
                 dhps_strerror(why));
    if (why == DHPS_E_MALFORMED)
        bump(&w->st.malformed);
    if (why == DHPS_E_BUSY || why == DHPS_E_TIMEOUT) { /* a limit: counted, and named */
        bump(why == DHPS_E_BUSY ? &w->st.closed_budget : &w->st.closed_timeout);
        char more[64];
        if (dhps_ratelimit_allow(&w->log_rl, RPC_LOG_PER_S, more, sizeof more)) {
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "closed the connection of %s:%u: %s%s", sc->peer,
                     sc->peer_port,
                     why == DHPS_E_BUSY ? "a frame past the input budget (max_input_bytes)"
                                        : "too slow (frame_timeout_ms) or idle "
                                          "(idle_timeout_ms)", more);
        }
    }
    rpc_peer_release(w->s, sc->peer_ip);
    epoll_ctl(w->ep, EPOLL_CTL_DEL, sc->c.fd, NULL);
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        w->conns = sc->next;
    if (sc->next)
        sc->next->prev = sc->prev;
    if (sc->c.shm_base)
        w->nshm--;
    if (sc->c.v)
        w->nverbs--;
    if (w->last_sc == sc)
        w->last_sc = NULL;
    if (w->nheap)
        heap_purge(w, sc);
    if (sc->c.tls)
        atomic_store_explicit(&w->st.open_tls,
                              atomic_load_explicit(&w->st.open_tls, memory_order_relaxed) - 1,
                              memory_order_relaxed);
    conn_fini(&sc->c);
    if (sc->dd)
        for (uint32_t i = 0; i <= sc->dd_mask; i++)
            free(sc->dd[i].buf);
    free(sc->dd);
    free(sc);
    atomic_store_explicit(&w->st.open, atomic_load_explicit(&w->st.open, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

int dd_alloc(sconn *sc, uint32_t log2)
{
    if (sc->dd)
        return 0;
    if (log2 > 16)
        return -EINVAL;
    sc->dd = calloc((size_t)1 << log2, sizeof *sc->dd);
    if (!sc->dd)
        return -ENOMEM;
    sc->dd_mask = (1u << log2) - 1;
    return 0;
}

/* Re-promotion request from a client whose verbs path failed earlier. */
static int serve_ctrl(worker *w, sconn *sc, const uint8_t *payload, uint32_t len)
{
    uint32_t op;
    rpc_verbs_info r, mine;
    memset(&mine, 0, sizeof mine);
    if (rpc_ctrl_parse(payload, len, &op, &r) || op != RPC_CTRL_PROMOTE)
        return DHPS_E_MALFORMED;
    if (sc->c.v)
        verbs_down(w, sc);
    int rc = verbs_setup(w->s, w, sc, &r, &mine);
    if (rc == 0) {
        sc->c.transport = DHPS_RPC_VERBS;
        w->nverbs++;
    }
    uint8_t *p = rpc_tcp_ops.reserve(&sc->c, RPC_CTRL_BYTES);
    if (!p)
        return -ENOMEM;
    rpc_ctrl_encode(rc == 0 ? RPC_CTRL_PROMOTE_OK : RPC_CTRL_PROMOTE_NO, &mine, p);
    rpc_frame f = {.type = RPC_F_CTRL, .len = RPC_CTRL_BYTES};
    rpc_tcp_ops.commit(&sc->c, &f);
    return 0;
}

int sconn_flush(worker *w, sconn *sc);

/* Hold back a response (frame r, payload data) for delay_ns: it is sent on `via` by
 * fault_release. Returns 0, or -ENOMEM (the caller sends it now instead). */
static int defer_resp(worker *w, sconn *sc, int via, const rpc_frame *r, const uint8_t *data,
                      uint64_t delay_ns)
{
    size_t bytes = sizeof(dresp) + r->len;
    if (w->held_bytes + bytes > w->s->p.fault_hold_bytes)
        return -ENOBUFS;
    dresp *d = malloc(bytes);
    if (!d)
        return -ENOMEM;
    d->at = dhps_mono_ns() + delay_ns;
    d->sc = sc;
    d->via = via;
    d->f = *r;
    if (r->len)
        memcpy(d->data, data, r->len);
    if (heap_push(w, d)) {
        free(d);
        return -ENOMEM;
    }
    w->held_bytes += bytes;
    return 0;
}


/* Queue a copy of a response on `via` now. 0, 1 (no room: shm/verbs, response lost,
 * the caller times out) or -ENOMEM (TCP: close). */
static int send_copy(conn *c, int via, const rpc_frame *r, const uint8_t *data)
{
    uint8_t *p = rpc_transports[via]->reserve(c, r->len);
    if (!p)
        return via == DHPS_RPC_TCP ? -ENOMEM : 1;
    if (r->len)
        memcpy(p, data, r->len);
    rpc_transports[via]->commit(c, r);
    return 0;
}

/* Send the held-back responses whose time came (in due order). A response whose verbs
 * path is gone is dropped (the client re-sends on TCP and the de-duplication cache
 * answers); one that finds no room stays first and is retried next turn. Returns the
 * number sent. */
static int fault_release(worker *w, uint64_t now)
{
    int sent = 0;
    w->heap_stuck = false;
    while (w->nheap && w->heap[0]->at <= now) {
        dresp *d = w->heap[0];
        conn *c = &d->sc->c;
        if (d->via == DHPS_RPC_VERBS && (!c->v || c->v->failed)) {
            heap_pop(w);
            dresp_free(w, d);
            continue;
        }
        uint8_t *p = rpc_transports[d->via]->reserve(c, d->f.len);
        if (!p) {
            w->heap_stuck = true;
            break;
        }
        if (d->f.len)
            memcpy(p, d->data, d->f.len);
        rpc_transports[d->via]->commit(c, &d->f);
        d->sc->fault_flush = true;
        heap_pop(w);
        dresp_free(w, d);
        sent++;
    }
    if (sent)
        for (sconn *sc = w->conns, *nx; sc; sc = nx) {
            nx = sc->next;
            if (!sc->fault_flush)
                continue;
            sc->fault_flush = false;
            int r = sconn_flush(w, sc);
            if (r < 0)
                sconn_close(w, sc, r);
        }
    return sent;
}

/* Milliseconds the worker may sleep before its next held-back response is due (-1:
 * none held back). */
static int fault_timeout_ms(const worker *w, uint64_t now)
{
    if (!w->nheap)
        return -1;
    if (w->heap_stuck)
        return 1;
    uint64_t at = w->heap[0]->at;
    if (at <= now)
        return 0;
    uint64_t ms = (at - now + 999999ull) / 1000000ull;
    return ms > 60000 ? 60000 : (int)ms;
}

/* Serve one request received on transport `via`; the response goes back on `via`. */
int serve_frame(void *arg, conn *c, int via, const rpc_frame *f, const uint8_t *payload)
{
    worker *w = arg;
    sconn *sc = (sconn *)c;
    if (f->type == RPC_F_DOORBELL)
        return 0;
    if (f->type == RPC_F_CTRL && via == DHPS_RPC_TCP)
        return serve_ctrl(w, sc, payload, f->len);
    if (f->type != RPC_F_REQ)
        return DHPS_E_MALFORMED;
    /* fault rules: one relaxed load while the server has none */
    uint64_t delay_ns = 0;
    if (atomic_load_explicit(&w->s->faults.nrules, memory_order_relaxed) != 0) {
        int k = rpc_fault_table_decide(&w->s->faults, sc->peer, sc->peer_port, true,
                                       &delay_ns);
        if (k == RPC_FAULT_FAIL || k == RPC_FAULT_HOLD)
            return 0; /* partition or drop: consumed, no handler, no response */
    }
    dd_entry *dd = sc->dd ? &sc->dd[f->id & sc->dd_mask] : NULL;
    if (dd && dd->id == f->id) {
        /* seen before: a TCP retry of a verbs request (answer from the cache), or the
         * verbs original arriving after its retry was served (drop) */
        bump(&w->st.dup);
        if (via != DHPS_RPC_TCP || !dd->have)
            return 0;
        rpc_frame r = {.type = RPC_F_RESP, .id = f->id, .method = f->method,
                       .status = dd->status, .len = dd->len};
        if (delay_ns) {
            if (defer_resp(w, sc, DHPS_RPC_TCP, &r, dd->buf, delay_ns) == 0)
                return 0;
            bump(&w->st.fault_overflow);
        }
        return send_copy(c, DHPS_RPC_TCP, &r, dd->buf);
    }
    const rpc_ops *ops = rpc_transports[via];
    uint8_t *resp = NULL;
    if (delay_ns) { /* the handler writes into scratch; the response is copied out */
        if (!w->fscratch)
            w->fscratch = malloc(w->s->p.max_msg);
        resp = w->fscratch;
        if (!resp)
            delay_ns = 0;
    }
    if (!resp && !(resp = ops->reserve(c, c->max_msg))) {
        if (via == DHPS_RPC_TCP)
            return -ENOMEM;
        sc->tx_full = true; /* response ring full: leave the request, retry later */
        return 1;
    }
    rpc_frame r = {.type = RPC_F_RESP, .id = f->id, .method = f->method};
    const handler *h = &w->s->handlers[f->method];
    if (!h->fn) {
        bump(&w->st.unknown_method);
        r.status = DHPS_E_NOTFOUND;
    } else {
        dhps_rpc_request q = {.method = f->method, .worker = w->idx, .id = f->id,
                              .req = payload, .req_len = f->len, .resp = resp,
                              .resp_cap = c->max_msg, .peer = sc->peer,
                              .peer_port = sc->peer_port};
        int hr = h->fn(h->arg, &q);
        if (hr < 0 || q.resp_len > q.resp_cap) {
            bump(&w->st.handler_errors);
            r.status = DHPS_E_HANDLER;
        } else {
            r.len = (uint32_t)q.resp_len;
        }
        bump(&w->st.handled[via]);
    }
    if (dd) {
        dd->id = f->id;
        dd->have = false;
        if (via == DHPS_RPC_VERBS) { /* keep a copy in case the path dies */
            if (dd->cap < r.len) {
                uint8_t *nb = realloc(dd->buf, r.len);
                if (!nb)
                    return -ENOMEM;
                dd->buf = nb;
                dd->cap = r.len;
            }
            if (r.len)
                memcpy(dd->buf, resp, r.len);
            dd->len = r.len;
            dd->status = r.status;
            dd->have = true;
        }
    }
    if (delay_ns) {
        if (defer_resp(w, sc, via, &r, resp, delay_ns) == 0)
            return 0;
        bump(&w->st.fault_overflow); /* over fault_hold_bytes (or no memory): send now */
        int sr = send_copy(c, via, &r, resp);
        return sr < 0 ? sr : 0;
    }
    ops->commit(c, &r);
    return 0;
}

static void arm(worker *w, sconn *sc, bool in, bool out)
{
    if (sc->reading == in && sc->want_out == out)
        return;
    sc->reading = in;
    sc->want_out = out;
    struct epoll_event ev = {.events = (in ? EPOLLIN : 0) | (out ? EPOLLOUT : 0),
                             .data.ptr = sc};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, sc->c.fd, &ev);
}

/* Flush a connection's queued responses; apply TCP back-pressure (a TLS session that
 * waits for the other direction - a write for bytes from the peer, a read for room in
 * the socket - keeps that direction armed too). 0 or < 0 (close). */
int sconn_flush(worker *w, sconn *sc)
{
    conn *c = &sc->c;
    int r = 0;
    if (c->shm_dirty)
        r = rpc_shm_ops.flush(c);
    if (!r && c->verbs_dirty && rpc_verbs_ops.flush(c))
        verbs_down(w, sc); /* the responses are cached: the client re-sends on TCP */
    if (!r && c->tcp_dirty)
        r = rpc_tcp_ops.flush(c);
    if (r)
        return r;
    size_t pending = c->out.tail - c->out.head;
    bool tin = c->tls && c->tls->want_read, tout = c->tls && c->tls->want_write;
    arm(w, sc, pending < (4u << 20) || tin, pending > 0 || tout);
    return 0;
}

static void adopt_from(worker *w, struct inbox *q)
{
    uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    while (h != t) {
        sconn *sc = q->slot[h % INBOX];
        h++;
        sc->next = w->conns;
        sc->prev = NULL;
        if (w->conns)
            w->conns->prev = sc;
        w->conns = sc;
        if (sc->c.shm_base)
            w->nshm++;
        if (sc->c.v)
            w->nverbs++;
        atomic_store_explicit(&w->st.open, atomic_load_explicit(&w->st.open, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        if (sc->c.tls)
            atomic_store_explicit(&w->st.open_tls,
                                  atomic_load_explicit(&w->st.open_tls, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
        sc->reading = true;
        sc->c.last_rx_ns = dhps_mono_ns();
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = sc};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, sc->c.fd, &ev) != 0) {
            sconn_close(w, sc, -errno);
            continue;
        }
        if (w->norph && sc->c.v)
            orphans_serve(w, sc);
        if (sc->c.tls && rpc_tls_pending(sc->c.tls)) {
            /* bytes a peer sent right behind its proof were read ahead with it: no socket
             * event will announce them */
            int r = rpc_tcp_ops.rx(&sc->c, serve_frame, w);
            if (r >= 0)
                r = sconn_flush(w, sc);
            if (r < 0)
                sconn_close(w, sc, r);
        }
    }
    atomic_store_explicit(&q->head, h, memory_order_release);
}

void adopt(worker *w)
{
    for (uint32_t a = 0; a < w->s->p.acceptors; a++)
        adopt_from(w, &w->in[a]);
}

/* Close the connections past frame_timeout_ms (a partial TCP frame) or idle_timeout_ms
 * (no request), and give back grown input buffers: a pass over the connections at most
 * every 100 ms. */
static void sweep_timeouts(worker *w, uint64_t now)
{
    const dhps_rpc_server_params *p = &w->s->p;
    if (now - w->swept_ns < 100000000ull)
        return;
    w->swept_ns = now;
    uint64_t frame_ns = (uint64_t)p->frame_timeout_ms * 1000000ull;
    uint64_t idle_ns = (uint64_t)p->idle_timeout_ms * 1000000ull;
    for (sconn *sc = w->conns, *nx; sc; sc = nx) {
        nx = sc->next;
        bool slow = frame_ns && sc->c.in_since_ns && now - sc->c.in_since_ns > frame_ns;
        bool idle = idle_ns && now - sc->c.last_rx_ns > idle_ns && !sc->c.shm_base && !sc->c.v;
        if (slow || idle)
            sconn_close(w, sc, DHPS_E_TIMEOUT);
        else
            conn_in_shrink(&sc->c, now);
    }
}

/* Before sleeping: must a sweep come within 100 ms (a partial frame waits, or idle
 * connections are bounded)? */
static bool sweep_due(const worker *w)
{
    const dhps_rpc_server_params *p = &w->s->p;
    if (p->idle_timeout_ms && w->conns)
        return true;
    for (const sconn *sc = w->conns; sc; sc = sc->next)
        if ((p->frame_timeout_ms && sc->c.in_since_ns) || sc->c.in.cap > sc->c.in_base)
            return true;
    return false;
}

void *worker_main(void *arg)
{
    worker *w = arg;
    dhps_rpc_server *s = w->s;
    struct epoll_event evs[64];
    uint32_t idle = 0;
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        int work = 0;
        /* 0. responses held back by a delay rule whose time came */
        if (w->nheap)
            work += fault_release(w, dhps_mono_ns());
        /* 1. shared-memory rings: poll every turn */
        if (w->nshm) {
            for (sconn *sc = w->conns, *nx; sc; sc = nx) {
                nx = sc->next;
                if (!sc->c.shm_base)
                    continue;
                int r = rpc_shm_ops.rx(&sc->c, serve_frame, w);
                if (r > 0)
                    work += r;
                if (r >= 0 && (sc->c.shm_dirty || sc->c.tcp_dirty))
                    r = sconn_flush(w, sc);
                if (r < 0)
                    sconn_close(w, sc, r);
            }
        }
        /* 1b. verbs completion queues: poll every turn */
        if (w->nverbs) {
            uint64_t t = dhps_mono_ns();
            if (t - w->dev_checked > 50000000ull) { /* device health every 50 ms */
                w->dev_checked = t;
                if (rpc_dev_check(s->dev, true))
                    for (sconn *sc = w->conns; sc; sc = sc->next)
                        if (sc->c.v)
                            verbs_down(w, sc);
            }
        }
        if (w->nverbs)
            work += serve_verbs(w);
        if (w->norph)
            orphans_expire(w, dhps_mono_ns());
        /* 2. sockets; block only when idle, every shm consumer flag is set and every
         * verbs receive CQ is armed (and re-polled after arming) */
        int timeout = 0;
        bool slept = false;
        if (!work && ++idle > s->p.spin_turns) {
            timeout = -1;
            vsrq *q = __atomic_load_n(&w->srq, __ATOMIC_ACQUIRE);
            if (w->nverbs && q) {
                vsrq_arm(q);
                if ((work = serve_verbs(w)) > 0)
                    timeout = 0;
            }
            for (sconn *sc = w->conns; sc; sc = sc->next) {
                if (!sc->c.shm_base || shm_prepare_sleep(&sc->c))
                    continue;
                /* requests pending: at once, unless they wait for the client to drain
                 * our response ring (nap 1 ms instead of spinning) */
                if (!sc->tx_full)
                    timeout = 0;
                else if (timeout < 0)
                    timeout = 1;
                sc->tx_full = false;
            }
            slept = true;
        }
        if (timeout != 0 && w->nheap) { /* wake for the next held-back response */
            int ft = fault_timeout_ms(w, dhps_mono_ns());
            if (timeout < 0 || ft < timeout)
                timeout = ft;
        }
        if (w->conns) {
            sweep_timeouts(w, dhps_mono_ns());
            if ((timeout < 0 || timeout > 100) && sweep_due(w))
                timeout = 100;
        }
        int n = epoll_wait(w->ep, evs, 64, timeout);
        if (slept)
            for (sconn *sc = w->conns; sc; sc = sc->next)
                if (sc->c.shm_base)
                    shm_end_sleep(&sc->c);
        if (work)
            idle = 0;
        for (int i = 0; i < n; i++) {
            sconn *sc = evs[i].data.ptr;
            idle = 0;
            if (sc == (void *)&verbs_wake_tag) {
                vsrq *q = __atomic_load_n(&w->srq, __ATOMIC_ACQUIRE);
                if (q)
                    vsrq_drain_events(q);
                continue;
            }
            if (!sc) {
                uint64_t v;
                if (read(w->evfd, &v, sizeof v) < 0 && errno != EAGAIN)
                    DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "eventfd read: %s", strerror(errno));
                adopt(w);
                continue;
            }
            int r = 0;
            /* TLS: any readiness may be the one a session waits for (a read may need the
             * socket writable) */
            if ((evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) || sc->c.tls)
                r = rpc_tcp_ops.rx(&sc->c, serve_frame, w);
            if (r >= 0)
                r = sconn_flush(w, sc);
            if (r < 0)
                sconn_close(w, sc, r);
        }
    }
    while (w->conns)
        sconn_close(w, w->conns, DHPS_E_CANCELLED);
    adopt(w); /* anything handed over during shutdown */
    while (w->conns)
        sconn_close(w, w->conns, DHPS_E_CANCELLED);
    return NULL;
}

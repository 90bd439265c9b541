#define _GNU_SOURCE
/* rpc server: an acceptor thread (accept + authenticated hello) hands connections to
 * run-to-completion worker threads through SPSC pointer rings (atomics + eventfd). */
#include "internal.h"
#include "verbs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dhps/log.h"

#define INBOX 256u
#define MAX_ACCEPTORS 8u
static char verbs_wake_tag; /* epoll data for completion-channel fds: drain them all */
#define MAX_WORKERS 64u

typedef struct handler {
    dhps_rpc_handler_fn fn;
    void *arg;
} handler;

/* Verbs connections keep, per client call slot, the last request id seen and (for
 * requests that arrived over verbs) a copy of the response, so a request re-sent on
 * TCP after a verbs failure is answered from here and its handler runs once. */
typedef struct dd_entry {
    uint64_t id;
    int32_t status;
    uint32_t len, cap;
    bool have; /* response cached */
    uint8_t *buf;
} dd_entry;

typedef struct sconn {
    conn c;
    dd_entry *dd;
    uint32_t dd_mask;
    struct sconn *prev, *next;
    char peer[16];      /* caller's IPv4 address (numeric), for the fault rules */
    uint16_t peer_port; /* caller's TCP port */
    bool fault_flush;   /* a held-back response was committed this turn */
    bool reading; /* EPOLLIN armed */
    bool tx_full; /* shm: a request waits for room in the response ring */
    bool want_out;
} sconn;

typedef struct wstats {
    _Atomic uint64_t handled[DHPS_RPC_NTRANSPORTS];
    _Atomic uint64_t handler_errors, unknown_method, malformed, open, dup, verbs_down;
    _Atomic uint64_t fault_overflow;
} wstats;

typedef struct worker {
    struct dhps_rpc_server *s;
    uint32_t idx;
    pthread_t th;
    bool started;
    int ep, evfd;
    struct inbox { /* one single-producer/single-consumer ring per acceptor */
        _Alignas(64) _Atomic uint32_t head; /* consumer (this worker) */
        _Alignas(64) _Atomic uint32_t tail; /* producer (that acceptor) */
        sconn *slot[INBOX];
    } in[MAX_ACCEPTORS];
    sconn *conns; /* list owned by this worker only */
    uint32_t nshm, nverbs;
    uint64_t dev_checked;
    vsrq *srq;       /* shared receive queue of this worker's verbs connections (set
                        once, under srq_lock, with a release store) */
    sconn *last_sc;  /* last connection a shared-queue completion mapped to */
    struct dresp **heap; /* responses held back by a fault rule: min-heap on `at` */
    uint32_t nheap, capheap;
    uint64_t held_bytes; /* bytes of the held-back entries (bounded by fault_hold_bytes) */
    bool heap_stuck;     /* the due response could not be reserved: retry soon */
    uint8_t *fscratch;   /* handler output of delayed requests (max_msg), lazily */
    struct orphan *orph, *orph_tail; /* requests from QPs not adopted yet (FIFO) */
    uint32_t norph;
    wstats st;
} worker;

/* A request that came through the worker's shared receive queue from a QP whose
 * connection the worker does not hold yet: the acceptor connects the QP and answers
 * ACCEPT before it hands the connection over, so a fast client's first requests can
 * overtake the hand-off. Kept (copied) until the connection is adopted, then served in
 * order; dropped after hello_timeout_ms (its connection is gone: the client re-sends on
 * TCP). */
typedef struct orphan {
    struct orphan *next;
    uint64_t at;
    uint32_t qp_num, len;
    uint8_t data[];
} orphan;
#define ORPHANS_MAX 4096u

struct dhps_rpc_server {
    dhps_rpc_server_params p;
    uint8_t secret[DHPS_RPC_MAX_SECRET];
    uint8_t host_id[RPC_HOST_ID];
    int lfd;
    uint16_t port;
    bool started;
    _Atomic bool stop;
    struct acceptor {
        struct dhps_rpc_server *s;
        uint32_t idx, next_worker;
        pthread_t th;
        bool started;
        int ep;               /* the listening socket + hellos in progress */
        struct pend **pend;   /* hellos in progress (PEND_MAX slots) */
        uint32_t npend;
    } acc[MAX_ACCEPTORS];
    handler *handlers; /* 65536 entries, read-only after start */
    rpc_dev *dev;      /* verbs device (thread-safe verbs calls), or NULL */
    pthread_mutex_t srq_lock; /* lazy creation of the workers' shared receive queues */
    worker *w;
    _Atomic uint64_t accepted, rejected_auth, rejected_hello;
    rpc_fault_table faults; /* server-side fault rules (dhps_rpc_server_fault_*) */
};

/* A response held back by a delay rule: sent on `via` at `at` (dhps_mono_ns clock). */
typedef struct dresp {
    uint64_t at;
    sconn *sc;
    int via;
    rpc_frame f;
    uint8_t data[];
} dresp;

void dhps_rpc_server_params_init(dhps_rpc_server_params *p)
{
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->workers = 1;
    p->max_msg = 256u << 10;
    p->allow = DHPS_RPC_ALL;
    p->hello_timeout_ms = 2000;
    p->spin_turns = 64;
    p->acceptors = 2;
    p->verbs_srq_slots = 64;
    p->fault_hold_bytes = 256ull << 20;
}

const char *dhps_rpc_transport_name(int t)
{
    switch (t) {
    case DHPS_RPC_TCP: return "tcp";
    case DHPS_RPC_SHM: return "shm";
    case DHPS_RPC_VERBS: return "verbs";
    default: return "?";
    }
}

int dhps_rpc_server_create(const dhps_rpc_server_params *p, dhps_rpc_server **out)
{
    int rc = -EINVAL;
    dhps_rpc_server *s = NULL;
    *out = NULL;
    if (!p || !p->host || p->workers < 1 || p->workers > MAX_WORKERS || p->max_msg == 0 ||
        p->acceptors < 1 || p->acceptors > MAX_ACCEPTORS || p->verbs_srq_slots < 1 ||
        p->verbs_srq_slots > 16384 ||
        p->max_msg > DHPS_RPC_MAX_MSG_LIMIT || p->secret_len > DHPS_RPC_MAX_SECRET ||
        (p->secret_len && !p->secret) || !(p->allow & DHPS_RPC_MASK(DHPS_RPC_TCP))) {
        DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "server: invalid params");
        return -EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->lfd = -1;
    for (uint32_t a = 0; a < MAX_ACCEPTORS; a++)
        s->acc[a].ep = -1; /* destroy closes only what start created */
    pthread_mutex_init(&s->srq_lock, NULL);
    rpc_fault_table_init(&s->faults);
    s->p = *p;
    s->p.secret = NULL;
    if (p->secret_len)
        memcpy(s->secret, p->secret, p->secret_len);
    rpc_host_id(p->host_id, s->host_id);
    s->p.host_id = NULL;
    s->handlers = calloc(65536, sizeof *s->handlers);
    s->w = calloc(p->workers, sizeof *s->w);
    if (!s->handlers || !s->w) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < p->workers; i++) { /* destroy may run from here on */
        s->w[i].s = s;
        s->w[i].idx = i;
        s->w[i].ep = s->w[i].evfd = -1;
    }
    if (p->allow & DHPS_RPC_MASK(DHPS_RPC_VERBS)) {
        int r = rpc_dev_open(&s->dev);
        if (r)
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "server: no verbs device (%s)", dhps_strerror(r));
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->port)};
    if (inet_pton(AF_INET, p->host, &a.sin_addr) != 1)
        goto fail;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0) {
        rc = -errno;
        goto fail;
    }
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* bound now (the port is known and held), listening only from start: a peer that
     * dials while the owner is still loading is refused at once instead of waiting in
     * the backlog for a hello nobody runs yet */
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0) {
        rc = -errno;
        goto fail;
    }
    socklen_t al = sizeof a;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    for (uint32_t i = 0; i < p->workers; i++) {
        worker *w = &s->w[i];
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->ep < 0 || w->evfd < 0) {
            rc = -errno;
            goto fail;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->evfd, &ev) != 0) {
            rc = -errno;
            goto fail;
        }
    }
    *out = s;
    return 0;
fail:
    dhps_rpc_server_destroy(s);
    return rc;
}

int dhps_rpc_server_register(dhps_rpc_server *s, uint16_t method, dhps_rpc_handler_fn fn,
                             void *arg)
{
    if (!fn)
        return -EINVAL;
    if (s->started)
        return -EBUSY;
    if (s->handlers[method].fn)
        return -EEXIST;
    s->handlers[method] = (handler){fn, arg};
    return 0;
}

uint16_t dhps_rpc_server_port(const dhps_rpc_server *s) { return s->port; }

void dhps_rpc_server_get_stats(const dhps_rpc_server *s, dhps_rpc_server_stats *st)
{
    memset(st, 0, sizeof *st);
    st->accepted = atomic_load_explicit(&s->accepted, memory_order_relaxed);
    st->rejected_auth = atomic_load_explicit(&s->rejected_auth, memory_order_relaxed);
    st->rejected_malformed = atomic_load_explicit(&s->rejected_hello, memory_order_relaxed);
    for (uint32_t i = 0; i < s->p.workers; i++) {
        const wstats *w = &s->w[i].st;
        for (int t = 0; t < DHPS_RPC_NTRANSPORTS; t++)
            st->handled[t] += atomic_load_explicit(&w->handled[t], memory_order_relaxed);
        st->handler_errors += atomic_load_explicit(&w->handler_errors, memory_order_relaxed);
        st->unknown_method += atomic_load_explicit(&w->unknown_method, memory_order_relaxed);
        st->rejected_malformed += atomic_load_explicit(&w->malformed, memory_order_relaxed);
        st->open_conns += atomic_load_explicit(&w->open, memory_order_relaxed);
        st->duplicates += atomic_load_explicit(&w->dup, memory_order_relaxed);
        st->verbs_failures += atomic_load_explicit(&w->verbs_down, memory_order_relaxed);
        st->fault_overflow += atomic_load_explicit(&w->fault_overflow, memory_order_relaxed);
    }
}

static inline void bump(_Atomic uint64_t *a)
{
    /* single writer: a relaxed load + store is enough and avoids a locked add */
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

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

static void sconn_close(worker *w, sconn *sc, int why)
{
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "worker %u: closing connection: %s", w->idx,
             dhps_strerror(why));
    if (why == DHPS_E_MALFORMED)
        bump(&w->st.malformed);
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
    conn_fini(&sc->c);
    if (sc->dd)
        for (uint32_t i = 0; i <= sc->dd_mask; i++)
            free(sc->dd[i].buf);
    free(sc->dd);
    free(sc);
    atomic_store_explicit(&w->st.open, atomic_load_explicit(&w->st.open, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

static int dd_alloc(sconn *sc, uint32_t log2)
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
static int verbs_setup(dhps_rpc_server *s, worker *w, sconn *sc, const rpc_verbs_info *r,
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

static void verbs_down(worker *w, sconn *sc)
{
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "worker %u: verbs path down, serving on tcp", w->idx);
    vep_destroy(sc->c.v);
    sc->c.v = NULL;
    sc->c.verbs_dirty = false;
    sc->c.transport = DHPS_RPC_TCP;
    w->nverbs--;
    bump(&w->st.verbs_down);
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

static int sconn_flush(worker *w, sconn *sc);

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
static int serve_frame(void *arg, conn *c, int via, const rpc_frame *f, const uint8_t *payload)
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

/* Flush a connection's queued responses; apply TCP back-pressure. 0 or < 0 (close). */
static int sconn_flush(worker *w, sconn *sc)
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
    arm(w, sc, pending < (4u << 20), pending > 0);
    return 0;
}

static void orphans_serve(worker *w, sconn *sc);

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
        sc->reading = true;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = sc};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, sc->c.fd, &ev) != 0)
            sconn_close(w, sc, -errno);
        else if (w->norph && sc->c.v)
            orphans_serve(w, sc);
    }
    atomic_store_explicit(&q->head, h, memory_order_release);
}

static void adopt(worker *w)
{
    for (uint32_t a = 0; a < w->s->p.acceptors; a++)
        adopt_from(w, &w->in[a]);
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
static void orphans_serve(worker *w, sconn *sc)
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
static void orphans_expire(worker *w, uint64_t now)
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
static int serve_verbs(worker *w)
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

static void *worker_main(void *arg)
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
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
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

/* ---- acceptor: the hello ---------------------------------------------------------- */

static int open_client_region(dhps_rpc_server *s, const rpc_hello *pr, uint32_t max_msg, conn *c)
{
    if (pr->shm_name[0] == 0 || pr->shm_bytes < SHM_HDR_BYTES || pr->shm_bytes > (1ull << 32))
        return DHPS_E_MALFORMED;
    uint64_t ring = (pr->shm_bytes - SHM_HDR_BYTES) / 2;
    if ((ring & (ring - 1)) || ring < 2 * align8(RPC_FRAME_HDR + (size_t)max_msg) + 4096 ||
        SHM_HDR_BYTES + 2 * ring != pr->shm_bytes)
        return DHPS_E_CONFIG;
    int fd = shm_open(pr->shm_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != pr->shm_bytes || st.st_uid != geteuid())
        rc = DHPS_E_MALFORMED;
    else
        rc = shm_attach(c, fd, pr->shm_bytes, pr->shm_cookie, false);
    close(fd);
    (void)s;
    return rc;
}

/* ---- acceptors: hellos as state machines on an event loop ----------------------------- */

/*
 * Each acceptor runs the hellos of many peers at once: its epoll set holds the listening
 * socket and every connection whose hello is in progress. A peer that connects and then
 * stalls (never sends, sends one byte a second, never reads) costs a slot until its
 * hello_timeout_ms, not the acceptor thread. At most PEND_MAX hellos per acceptor are in
 * progress; a new connection beyond that evicts the one nearest its deadline.
 */
#define PEND_MAX 256u

enum { P_HELLO = 1, P_PROOF };

typedef struct pend {
    int fd;
    int state;
    bool want_out;
    uint64_t deadline;
    rpc_hello ch, sh;
    rpc_hio io;
} pend;

/* The proof checked out: set up the connection and its path, answer ACCEPT and hand it
 * to a worker. The ACCEPT is one small message into an empty socket buffer (the peer
 * has read everything we sent): sent at once or the connection is dropped. */
static void finish(struct acceptor *acc, pend *p, const rpc_hello *pr)
{
    dhps_rpc_server *s = acc->s;
    const rpc_hello *ch = &p->ch, *sh = &p->sh;
    int fd = p->fd;
    uint32_t max_msg = ch->max_msg < s->p.max_msg ? ch->max_msg : s->p.max_msg;
    if (max_msg > DHPS_RPC_MAX_MSG_LIMIT)
        max_msg = DHPS_RPC_MAX_MSG_LIMIT;
    sconn *sc = calloc(1, sizeof *sc);
    if (!sc || conn_init(&sc->c, fd, max_msg, true)) { /* conn_init closes fd on failure */
        if (!sc)
            close(fd);
        free(sc);
        goto bad;
    }
    struct sockaddr_in pa;
    socklen_t pal = sizeof pa;
    if (getpeername(fd, (struct sockaddr *)&pa, &pal) == 0 && pa.sin_family == AF_INET) {
        inet_ntop(AF_INET, &pa.sin_addr, sc->peer, sizeof sc->peer);
        sc->peer_port = ntohs(pa.sin_port);
    }
    rpc_hello ac;
    memset(&ac, 0, sizeof ac);
    ac.version = sh->version;
    ac.kind = RPC_H_ACCEPT;
    ac.transport = DHPS_RPC_TCP;
    /* the worker that will own it (its shared receive queue takes the QP) */
    worker *w = &s->w[(acc->next_worker++ + acc->idx) % s->p.workers];
    if (pr->want == DHPS_RPC_VERBS && (sh->caps & DHPS_RPC_MASK(DHPS_RPC_VERBS))) {
        int r = verbs_setup(s, w, sc, &pr->verbs, &ac.verbs);
        if (r == 0)
            ac.transport = DHPS_RPC_VERBS;
        else
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "hello: verbs refused (%s), using tcp",
                     dhps_strerror(r));
    } else if (pr->want == DHPS_RPC_SHM && (sh->caps & DHPS_RPC_MASK(DHPS_RPC_SHM)) &&
               memcmp(ch->host_id, s->host_id, RPC_HOST_ID) == 0) {
        int r = open_client_region(s, pr, max_msg, &sc->c);
        if (r == 0)
            ac.transport = DHPS_RPC_SHM;
        else
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "hello: shm refused (%s), using tcp",
                     dhps_strerror(r));
    }
    sc->c.transport = (int)ac.transport;
    if (rpc_hio_put(&p->io, &ac) || rpc_hio_flush(&p->io, fd) != 1)
        goto bad_sc;
    rpc_tune_socket(fd, s->p.busy_poll_us);
    if (s->p.handoff_delay_us) /* test hook: let the client's first requests overtake */
        usleep(s->p.handoff_delay_us);
    /* before the worker can serve it: stats readers see it first */
    atomic_fetch_add_explicit(&s->accepted, 1, memory_order_relaxed);
    /* hand over to a worker: our own SPSC ring in it, we are its only producer */
    struct inbox *q = &w->in[acc->idx];
    for (;;) {
        uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
        uint32_t h = atomic_load_explicit(&q->head, memory_order_acquire);
        if (t - h < INBOX) {
            q->slot[t % INBOX] = sc;
            atomic_store_explicit(&q->tail, t + 1, memory_order_release);
            break;
        }
        if (atomic_load_explicit(&s->stop, memory_order_acquire)) {
            atomic_fetch_sub_explicit(&s->accepted, 1, memory_order_relaxed);
            goto bad_sc;
        }
        sched_yield();
    }
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof one) < 0)
        DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "eventfd write: %s", strerror(errno));
    return;
bad_sc:
    conn_fini(&sc->c); /* closes fd */
    free(sc);
bad:
    atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
}

/* Move one hello on. Returns 0 while it goes on, 1 when it ended (handed to a worker,
 * or refused: the fd is then closed or owned by the worker). */
static int pend_step(struct acceptor *acc, pend *p)
{
    dhps_rpc_server *s = acc->s;
    int r;
    for (;;) {
        if ((r = rpc_hio_flush(&p->io, p->fd)) <= 0)
            break;
        if (p->state == P_HELLO) {
            if ((r = rpc_hio_read(&p->io, p->fd, &p->ch)) <= 0)
                break;
            if (p->ch.kind != RPC_H_CLIENT_HELLO) {
                r = DHPS_E_MALFORMED;
                break;
            }
            rpc_hello *sh = &p->sh;
            memset(sh, 0, sizeof *sh);
            sh->kind = RPC_H_SERVER_HELLO;
            sh->version = p->ch.version; /* min(ours, theirs): parse clamps to ours */
            sh->caps = s->p.allow &
                       (DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_SHM) |
                        (s->dev && !rpc_dev_check(s->dev, true) ? DHPS_RPC_MASK(DHPS_RPC_VERBS)
                                                                 : 0));
            if (sh->version < 2)
                sh->caps = DHPS_RPC_MASK(DHPS_RPC_TCP);
            sh->max_msg = s->p.max_msg;
            memcpy(sh->host_id, s->host_id, RPC_HOST_ID);
            if ((r = rpc_random(sh->nonce, RPC_NONCE)))
                break;
            rpc_proof(s->secret, s->p.secret_len, 's', &p->ch, sh, NULL, sh->proof);
            if ((r = rpc_hio_put(&p->io, sh)))
                break;
            p->state = P_PROOF;
            continue;
        }
        rpc_hello pr;
        if ((r = rpc_hio_read(&p->io, p->fd, &pr)) <= 0)
            break;
        if (pr.kind != RPC_H_CLIENT_PROOF) {
            r = DHPS_E_MALFORMED;
            break;
        }
        uint8_t want[RPC_MAC];
        rpc_proof(s->secret, s->p.secret_len, 'c', &p->ch, &p->sh, &pr, want);
        if (!rpc_mac_equal(want, pr.proof)) {
            /* no region opened, no connection registered: just say no and close */
            rpc_hello rj = {.version = p->sh.version, .kind = RPC_H_REJECT,
                            .status = DHPS_E_AUTH};
            if (rpc_hio_put(&p->io, &rj) == 0)
                (void)rpc_hio_flush(&p->io, p->fd);
            atomic_fetch_add_explicit(&s->rejected_auth, 1, memory_order_relaxed);
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "hello: bad client proof, connection refused");
            close(p->fd);
            return 1;
        }
        epoll_ctl(acc->ep, EPOLL_CTL_DEL, p->fd, NULL);
        finish(acc, p, &pr);
        return 1;
    }
    if (r < 0) {
        atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
        close(p->fd);
        return 1;
    }
    bool want_out = rpc_hio_pending_out(&p->io);
    if (want_out != p->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = p};
        epoll_ctl(acc->ep, EPOLL_CTL_MOD, p->fd, &ev);
        p->want_out = want_out;
    }
    return 0;
}

static void pend_drop(struct acceptor *acc, uint32_t i)
{
    free(acc->pend[i]);
    acc->pend[i] = acc->pend[--acc->npend];
}

/* Take every connection waiting in the backlog (the listening socket is non-blocking:
 * several acceptors share it). */
static void take_new(struct acceptor *acc)
{
    dhps_rpc_server *s = acc->s;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "accept: %s", strerror(errno));
            return; /* EAGAIN, out of descriptors (retried at the next turn), shutdown */
        }
        if (acc->npend == PEND_MAX) { /* evict the hello nearest its deadline */
            uint32_t old = 0;
            for (uint32_t i = 1; i < acc->npend; i++)
                if (acc->pend[i]->deadline < acc->pend[old]->deadline)
                    old = i;
            close(acc->pend[old]->fd); /* also leaves the epoll set */
            pend_drop(acc, old);
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
        }
        pend *p = calloc(1, sizeof *p);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
        if (!p || epoll_ctl(acc->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(p);
            close(fd);
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
            continue;
        }
        p->fd = fd;
        p->state = P_HELLO;
        p->deadline = dhps_mono_ns() + (uint64_t)s->p.hello_timeout_ms * 1000000ull;
        acc->pend[acc->npend++] = p;
        if (pend_step(acc, p)) /* the hello may be here already */
            pend_drop(acc, acc->npend - 1);
    }
}

static void *acceptor_main(void *arg)
{
    struct acceptor *acc = arg;
    dhps_rpc_server *s = acc->s;
    static char listen_tag;
    struct epoll_event lev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listen_tag};
    if (epoll_ctl(acc->ep, EPOLL_CTL_ADD, s->lfd, &lev) != 0) {
        DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "acceptor: epoll: %s", strerror(errno));
        return NULL;
    }
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        uint64_t now = dhps_mono_ns(), next = now + 100000000ull; /* stop checked 10x/s */
        for (uint32_t i = 0; i < acc->npend; i++)
            if (acc->pend[i]->deadline < next)
                next = acc->pend[i]->deadline;
        struct epoll_event evs[64];
        int ms = next > now ? (int)((next - now + 999999) / 1000000) : 0;
        int n = epoll_wait(acc->ep, evs, 64, ms);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listen_tag) {
                take_new(acc);
                continue;
            }
            pend *p = evs[i].data.ptr;
            if (pend_step(acc, p)) {
                for (uint32_t k = 0; k < acc->npend; k++)
                    if (acc->pend[k] == p) {
                        pend_drop(acc, k);
                        break;
                    }
            }
        }
        now = dhps_mono_ns();
        for (uint32_t i = 0; i < acc->npend;) {
            if (acc->pend[i]->deadline > now) {
                i++;
                continue;
            }
            close(acc->pend[i]->fd);
            pend_drop(acc, i);
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
        }
    }
    for (uint32_t i = 0; i < acc->npend; i++)
        close(acc->pend[i]->fd);
    while (acc->npend)
        pend_drop(acc, acc->npend - 1);
    return NULL;
}

int dhps_rpc_server_start(dhps_rpc_server *s)
{
    if (s->started)
        return -EBUSY;
    if (listen(s->lfd, 128) != 0)
        return -errno;
    s->started = true;
    for (uint32_t i = 0; i < s->p.workers; i++) {
        int r = pthread_create(&s->w[i].th, NULL, worker_main, &s->w[i]);
        if (r)
            return -r;
        s->w[i].started = true;
    }
    int fl = fcntl(s->lfd, F_GETFL);
    if (fl < 0 || fcntl(s->lfd, F_SETFL, fl | O_NONBLOCK) != 0) /* acceptors share it */
        return -errno;
    for (uint32_t a = 0; a < s->p.acceptors; a++) {
        s->acc[a] = (struct acceptor){.s = s, .idx = a, .ep = -1};
        s->acc[a].ep = epoll_create1(EPOLL_CLOEXEC);
        s->acc[a].pend = calloc(PEND_MAX, sizeof *s->acc[a].pend);
        if (s->acc[a].ep < 0 || !s->acc[a].pend)
            return -ENOMEM;
        int r = pthread_create(&s->acc[a].th, NULL, acceptor_main, &s->acc[a]);
        if (r)
            return -r;
        s->acc[a].started = true;
    }
    return 0;
}

void dhps_rpc_server_destroy(dhps_rpc_server *s)
{
    if (!s)
        return;
    atomic_store_explicit(&s->stop, true, memory_order_release);
    if (s->lfd >= 0)
        shutdown(s->lfd, SHUT_RDWR);
    for (uint32_t a = 0; a < MAX_ACCEPTORS; a++) {
        if (s->acc[a].started)
            pthread_join(s->acc[a].th, NULL);
        if (s->acc[a].ep >= 0)
            close(s->acc[a].ep);
        free(s->acc[a].pend);
    }
    if (s->w) {
        for (uint32_t i = 0; i < s->p.workers; i++) {
            worker *w = &s->w[i];
            if (w->started) {
                uint64_t one = 1;
                if (write(w->evfd, &one, sizeof one) < 0)
                    DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "eventfd write: %s", strerror(errno));
                pthread_join(w->th, NULL);
            } else {
                adopt(w);
                while (w->conns)
                    sconn_close(w, w->conns, DHPS_E_CANCELLED);
            }
            vsrq_destroy(w->srq); /* its QPs are gone with the connections */
            free(w->heap); /* empty: closing a connection drops its held-back responses */
            while (w->orph) {
                orphan *o = w->orph;
                w->orph = o->next;
                free(o);
            }
            free(w->fscratch);
            if (w->ep >= 0)
                close(w->ep);
            if (w->evfd >= 0)
                close(w->evfd);
        }
    }
    if (s->lfd >= 0)
        close(s->lfd);
    rpc_dev_close(s->dev);
    pthread_mutex_destroy(&s->srq_lock);
    rpc_fault_table_fini(&s->faults);
    free(s->w);
    free(s->handlers);
    free(s);
}

/* ---- fault rules (server side) -------------------------------------------------------- */

int dhps_rpc_server_fault_set(dhps_rpc_server *s, const char *peer, uint16_t port,
                              const dhps_rpc_fault *f)
{
    char h[RPC_FAULT_HOST_MAX];
    if (!s || !f || rpc_fault_server_peer(peer, port, h))
        return -EINVAL;
    return rpc_fault_table_set(&s->faults, h, port, f);
}

int dhps_rpc_server_fault_clear(dhps_rpc_server *s, const char *peer, uint16_t port)
{
    char h[RPC_FAULT_HOST_MAX];
    if (!s || (peer && rpc_fault_server_peer(peer, port, h)))
        return -EINVAL;
    return rpc_fault_table_clear(&s->faults, peer ? h : NULL, port);
}

int dhps_rpc_server_fault_get_stats(dhps_rpc_server *s, const char *peer, uint16_t port,
                                    dhps_rpc_fault_stats *st)
{
    char h[RPC_FAULT_HOST_MAX];
    if (!s || !st || rpc_fault_server_peer(peer, port, h))
        return -EINVAL;
    return rpc_fault_table_get(&s->faults, h, port, st);
}

size_t dhps_rpc_server_fault_list(dhps_rpc_server *s, dhps_rpc_fault_entry *out, size_t cap)
{
    return s ? rpc_fault_table_list(&s->faults, out, cap) : 0;
}

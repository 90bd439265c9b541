#define _GNU_SOURCE
/* rpc server: the acceptor threads and the hello (server_internal.h). */
#include "server_internal.h"

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

enum { P_HELLO = 1, P_PROOF };

typedef struct pend {
    int fd;
    uint32_t ip;      /* peer, network order: counted in s->peers until released */
    bool counted;     /* released by pend_drop, unless handed to a worker */
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
    /* TCP input beyond 64 KiB a frame counts against the server's budget */
    sc->c.in_used = &s->input_used;
    sc->c.in_limit = s->p.max_input_bytes;
    sc->c.last_rx_ns = dhps_mono_ns();
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
    /* the server proves itself only now, to a client that has proved itself */
    rpc_proof(s->secret, s->p.secret_len, 'a', ch, sh, &ac, ac.proof);
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
    /* the worker's connection now: it releases the peer count when it closes it */
    sc->peer_ip = p->ip;
    p->counted = false;
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
            if (p->ch.version < RPC_HELLO_MIN_VERSION) {
                /* an older peer would expect our proof before its own: refuse, no MAC */
                rpc_hello rj = {.version = p->ch.version, .kind = RPC_H_REJECT,
                                .status = DHPS_E_VERSION};
                if (rpc_hio_put(&p->io, &rj) == 0)
                    (void)rpc_hio_flush(&p->io, p->fd);
                atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
                close(p->fd);
                return 1;
            }
            rpc_hello *sh = &p->sh;
            memset(sh, 0, sizeof *sh);
            sh->kind = RPC_H_SERVER_HELLO;
            sh->version = p->ch.version; /* min(ours, theirs): parse clamps to ours */
            sh->caps = s->p.allow &
                       (DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_SHM) |
                        (s->dev && !rpc_dev_check(s->dev, true) ? DHPS_RPC_MASK(DHPS_RPC_VERBS)
                                                                 : 0));
            sh->max_msg = s->p.max_msg;
            memcpy(sh->host_id, s->host_id, RPC_HOST_ID);
            if ((r = rpc_random(sh->nonce, RPC_NONCE)))
                break;
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
            char more[64];
            if (dhps_ratelimit_allow(&acc->log_rl, RPC_LOG_PER_S, more, sizeof more)) {
                char ip[INET_ADDRSTRLEN] = "?";
                inet_ntop(AF_INET, &p->ip, ip, sizeof ip);
                DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "hello from %s: bad client proof (wrong "
                         "cluster secret?), connection refused%s", ip, more);
            }
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
    if (acc->pend[i]->counted)
        rpc_peer_release(acc->s, acc->pend[i]->ip);
    free(acc->pend[i]);
    acc->pend[i] = acc->pend[--acc->npend];
}

/* Take every connection waiting in the backlog (the listening socket is non-blocking:
 * several acceptors share it). */
static void take_new(struct acceptor *acc)
{
    dhps_rpc_server *s = acc->s;
    for (;;) {
        struct sockaddr_in pa = {0};
        socklen_t pal = sizeof pa;
        int fd = accept4(s->lfd, (struct sockaddr *)&pa, &pal, SOCK_CLOEXEC | SOCK_NONBLOCK);
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
        uint32_t held = 0;
        int lim = rpc_peer_acquire(s, pa.sin_addr.s_addr, &held);
        if (lim) {
            close(fd);
            atomic_fetch_add_explicit(&s->rejected_limit, 1, memory_order_relaxed);
            char ip[INET_ADDRSTRLEN] = "?", more[64];
            if (dhps_ratelimit_allow(&acc->log_rl, RPC_LOG_PER_S, more, sizeof more)) {
                inet_ntop(AF_INET, &pa.sin_addr, ip, sizeof ip);
                DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "refused a connection from %s:%u: %s "
                         "(%u open)%s", ip, ntohs(pa.sin_port),
                         lim == -EMFILE ? "server at max_connections"
                         : lim == DHPS_E_BUSY ? "address at max_conns_per_peer"
                                              : "out of memory", held, more);
            }
            continue;
        }
        pend *p = calloc(1, sizeof *p);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
        if (!p || epoll_ctl(acc->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(p);
            close(fd);
            rpc_peer_release(s, pa.sin_addr.s_addr);
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
            continue;
        }
        p->ip = pa.sin_addr.s_addr;
        p->counted = true;
        p->fd = fd;
        p->state = P_HELLO;
        p->deadline = dhps_mono_ns() + (uint64_t)s->p.hello_timeout_ms * 1000000ull;
        acc->pend[acc->npend++] = p;
        if (pend_step(acc, p)) /* the hello may be here already */
            pend_drop(acc, acc->npend - 1);
    }
}

void *acceptor_main(void *arg)
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

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
 *
 * With TLS configured a connection starts in P_PEEK: its first byte (peeked, not read)
 * says TLS (a handshake record, 0x16: P_TLS, then the hello inside the session) or plain
 * (the hello's magic: P_HELLO, or P_REFUSE under tls_require: the client hello is read
 * and answered with a REJECT carrying DHPS_E_TLS). The TLS handshake runs on the same
 * event loop, within the same hello_timeout_ms.
 */

enum { P_PEEK = 1, P_TLS, P_HELLO, P_PROOF, P_REFUSE, P_LINGER };

/* After a failed TLS handshake the socket lingers this long (at most) in P_LINGER: our
 * alert went out and the write side is shut, and what the peer still sends is read and
 * dropped, so that the close does not reset the connection before the peer read the
 * alert (a TLS 1.3 client sends its first record right behind its certificate: closing
 * with it unread would answer with a RST, and the client would see "connection reset"
 * instead of "certificate refused"). */
#define LINGER_NS 500000000ull

typedef struct pend {
    int fd;
    uint32_t ip;      /* peer, network order: counted in s->peers until released */
    uint16_t port;    /* peer's port (host order), for log lines */
    bool counted;     /* released by pend_drop, unless handed to a worker */
    int state;
    bool want_out;
    uint64_t deadline;
    rpc_tls *tls;     /* the TLS session (from P_TLS on), or NULL */
    uint8_t bind[RPC_BIND]; /* its keying material, bound into both proofs */
    rpc_hello ch, sh;
    rpc_hio io;
} pend;

/* Close a hello's connection: the TLS session first (it may still write close_notify
 * on the socket), then the socket. */
static void pend_close(pend *p)
{
    rpc_tls_free(p->tls);
    p->tls = NULL;
    close(p->fd);
}

static const uint8_t *pend_bind(const pend *p) { return p->tls ? p->bind : NULL; }

/* One rate-limited warning line about the peer of p (counted by the caller). */
static void pend_warn(struct acceptor *acc, const pend *p, const char *what, const char *why)
{
    char more[64];
    if (!dhps_ratelimit_allow(&acc->log_rl, RPC_LOG_PER_S, more, sizeof more))
        return;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &p->ip, ip, sizeof ip);
    DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "%s %s:%u: %s%s", what, ip, p->port, why, more);
}

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
    if (!sc) {
        pend_close(p);
        goto bad;
    }
    rpc_tls *tls = p->tls;
    p->tls = NULL;
    if (conn_init(&sc->c, fd, tls, max_msg, true)) { /* frees tls, closes fd on failure */
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
    rpc_proof_tls(s->secret, s->p.secret_len, 'a', ch, sh, &ac, tls ? p->bind : NULL, ac.proof);
    if (rpc_hio_put(&p->io, &ac) || rpc_hio_flush(&p->io, fd, tls) != 1)
        goto bad_sc;
    rpc_tune_socket(fd, s->p.busy_poll_us);
    if (s->p.handoff_delay_us) /* test hook: let the client's first requests overtake */
        usleep(s->p.handoff_delay_us);
    /* before the worker can serve it: stats readers see it first */
    atomic_fetch_add_explicit(&s->accepted, 1, memory_order_relaxed);
    if (tls)
        atomic_fetch_add_explicit(&s->accepted_tls, 1, memory_order_relaxed);
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
            if (tls)
                atomic_fetch_sub_explicit(&s->accepted_tls, 1, memory_order_relaxed);
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
    /* counted before the peer can see the close (as every refusal here: a test or an
     * operator reading the stats after its failed open finds it there) */
    atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
    conn_fini(&sc->c); /* frees tls, closes fd */
    free(sc);
    return;
bad:
    atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
}

/* P_PEEK: TLS or plain? 1 decided (state set), 0 nothing yet, < 0 close. */
static int pend_peek(struct acceptor *acc, pend *p)
{
    dhps_rpc_server *s = acc->s;
    uint8_t b;
    ssize_t r = recv(p->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (r <= 0)
        return DHPS_E_UNREACHABLE;
    if (b == RPC_TLS_HANDSHAKE) {
        int rc = rpc_tls_new(s->tls_ctx, p->fd, true, NULL, NULL, &p->tls);
        if (rc)
            return rc;
        p->state = P_TLS;
    } else if (s->p.tls_require) {
        atomic_fetch_add_explicit(&s->rejected_plain, 1, memory_order_relaxed);
        pend_warn(acc, p, "refused a plain TCP connection from",
                  "this server requires TLS (tls_require)");
        p->state = P_REFUSE;
    } else {
        p->state = P_HELLO;
    }
    return 1;
}

/* P_TLS: one handshake step. 1 done (bound, state P_HELLO), 0 waiting (also when it
 * failed: counted, logged, P_LINGER). */
static int pend_tls(struct acceptor *acc, pend *p)
{
    int r = rpc_tls_handshake(p->tls);
    if (r == 1 && (r = rpc_tls_binding(p->tls, p->bind)) == 0) {
        p->state = P_HELLO;
        return 1;
    }
    if (r < 0) {
        atomic_fetch_add_explicit(&acc->s->tls_failures, 1, memory_order_relaxed);
        pend_warn(acc, p, "tls handshake failed with", p->tls->err);
        rpc_tls_free(p->tls); /* its alert is written; no close_notify after a failure */
        p->tls = NULL;
        shutdown(p->fd, SHUT_WR);
        p->state = P_LINGER;
        uint64_t until = dhps_mono_ns() + LINGER_NS;
        if (until < p->deadline)
            p->deadline = until;
    }
    return 0;
}

/* P_LINGER: drop what the peer sends. 0 while it sends, < 0 at its EOF or an error. */
static int pend_linger(pend *p)
{
    uint8_t junk[4096];
    for (;;) {
        ssize_t r = recv(p->fd, junk, sizeof junk, MSG_DONTWAIT);
        if (r > 0)
            continue;
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : DHPS_E_UNREACHABLE;
    }
}

/* P_REFUSE: read the plain client hello, answer REJECT(DHPS_E_TLS). 1 when done (the
 * caller closes), 0 waiting, < 0 close. */
static int pend_refuse(pend *p)
{
    rpc_hello m;
    int r = rpc_hio_read(&p->io, p->fd, NULL, &m);
    if (r <= 0)
        return r;
    rpc_hello rj = {.version = m.version, .kind = RPC_H_REJECT, .status = DHPS_E_TLS};
    if (rpc_hio_put(&p->io, &rj) == 0)
        (void)rpc_hio_flush(&p->io, p->fd, NULL);
    return 1;
}

/* Move one hello on. Returns 0 while it goes on, 1 when it ended (handed to a worker,
 * or refused: the fd is then closed or owned by the worker). */
static int pend_step(struct acceptor *acc, pend *p)
{
    dhps_rpc_server *s = acc->s;
    int r;
    for (;;) {
        if (p->state == P_PEEK) {
            if ((r = pend_peek(acc, p)) <= 0)
                break;
            continue;
        }
        if (p->state == P_TLS) {
            if ((r = pend_tls(acc, p)) == 0)
                break;
            continue;
        }
        if (p->state == P_LINGER) {
            if ((r = pend_linger(p)) == 0)
                break;
            pend_close(p); /* counted when the handshake failed */
            return 1;
        }
        if ((r = rpc_hio_flush(&p->io, p->fd, p->tls)) <= 0)
            break;
        if (p->state == P_REFUSE) {
            if ((r = pend_refuse(p)) == 0)
                break;
            pend_close(p);
            return 1;
        }
        if (p->state == P_HELLO) {
            if ((r = rpc_hio_read(&p->io, p->fd, p->tls, &p->ch)) <= 0)
                break;
            if (p->ch.kind != RPC_H_CLIENT_HELLO) {
                r = DHPS_E_MALFORMED;
                break;
            }
            if (p->ch.version < RPC_HELLO_MIN_VERSION) {
                /* an older peer would expect our proof before its own: refuse, no MAC */
                rpc_hello rj = {.version = p->ch.version, .kind = RPC_H_REJECT,
                                .status = DHPS_E_VERSION};
                /* counted before the peer can see the refusal: a test (or an operator)
                 * that reads the stats after its failed open finds it there */
                atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
                if (rpc_hio_put(&p->io, &rj) == 0)
                    (void)rpc_hio_flush(&p->io, p->fd, p->tls);
                pend_close(p);
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
        if ((r = rpc_hio_read(&p->io, p->fd, p->tls, &pr)) <= 0)
            break;
        if (pr.kind != RPC_H_CLIENT_PROOF) {
            r = DHPS_E_MALFORMED;
            break;
        }
        uint8_t want[RPC_MAC];
        rpc_proof_tls(s->secret, s->p.secret_len, 'c', &p->ch, &p->sh, &pr, pend_bind(p), want);
        if (!rpc_mac_equal(want, pr.proof)) {
            /* no region opened, no connection registered: just say no and close */
            rpc_hello rj = {.version = p->sh.version, .kind = RPC_H_REJECT,
                            .status = DHPS_E_AUTH};
            atomic_fetch_add_explicit(&s->rejected_auth, 1, memory_order_relaxed); /* first */
            if (rpc_hio_put(&p->io, &rj) == 0)
                (void)rpc_hio_flush(&p->io, p->fd, p->tls);
            char more[64];
            if (dhps_ratelimit_allow(&acc->log_rl, RPC_LOG_PER_S, more, sizeof more)) {
                char ip[INET_ADDRSTRLEN] = "?";
                inet_ntop(AF_INET, &p->ip, ip, sizeof ip);
                DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "hello from %s: bad client proof (wrong "
                         "cluster secret%s?), connection refused%s", ip,
                         p->tls ? ", or a relay between two TLS sessions" : "", more);
            }
            pend_close(p);
            return 1;
        }
        epoll_ctl(acc->ep, EPOLL_CTL_DEL, p->fd, NULL);
        finish(acc, p, &pr);
        return 1;
    }
    if (r < 0) {
        atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
        pend_close(p);
        return 1;
    }
    bool want_out = rpc_hio_pending_out(&p->io) || (p->tls && p->tls->want_write);
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
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
            pend_close(acc->pend[old]); /* also leaves the epoll set */
            pend_drop(acc, old);
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
            atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
            free(p);
            close(fd);
            rpc_peer_release(s, pa.sin_addr.s_addr);
            continue;
        }
        p->ip = pa.sin_addr.s_addr;
        p->port = ntohs(pa.sin_port);
        p->counted = true;
        p->fd = fd;
        p->state = s->tls_ctx ? P_PEEK : P_HELLO;
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
            if (acc->pend[i]->state != P_LINGER) /* else counted as a TLS failure */
                atomic_fetch_add_explicit(&s->rejected_hello, 1, memory_order_relaxed);
            pend_close(acc->pend[i]);
            pend_drop(acc, i);
        }
    }
    for (uint32_t i = 0; i < acc->npend; i++)
        pend_close(acc->pend[i]);
    while (acc->npend)
        pend_drop(acc, acc->npend - 1);
    return NULL;
}

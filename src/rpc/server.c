#define _GNU_SOURCE
/* rpc server: the public lifecycle (params, create, register, start, destroy, stats,
 * fault rules); the threads are in server_accept.c and server_worker.c. */
#include "server_internal.h"

void dhps_rpc_server_params_init(dhps_rpc_server_params *p)
{
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->listen_fd = -1;
    p->workers = 1;
    p->max_msg = 256u << 10;
    p->allow = DHPS_RPC_ALL;
    p->hello_timeout_ms = 2000;
    p->spin_turns = 64;
    p->acceptors = 2;
    p->verbs_srq_slots = 64;
    p->fault_hold_bytes = 256ull << 20;
    p->max_connections = 4096;
    p->max_conns_per_peer = 256;
    p->max_input_bytes = 256ull << 20;
    p->frame_timeout_ms = 30000;
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

/* The port of a bound IPv4 TCP socket, or -ENOTSOCK. */
static int bound_port(int fd)
{
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockname(fd, (struct sockaddr *)&a, &al) != 0 || al != sizeof a ||
        a.sin_family != AF_INET || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 ||
        type != SOCK_STREAM || a.sin_port == 0)
        return -ENOTSOCK;
    return ntohs(a.sin_port);
}

int dhps_rpc_server_create(const dhps_rpc_server_params *p, dhps_rpc_server **out)
{
    int rc = -EINVAL;
    dhps_rpc_server *s = NULL;
    *out = NULL;
    int given = p ? p->listen_fd : -1; /* ours from here on */
    if (given >= 0 && (rc = bound_port(given)) < 0) {
        close(given);
        DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "server: listen_fd %d is not a bound TCP socket",
                 given);
        return rc;
    }
    rc = -EINVAL;
    if (!p || !p->host || p->workers < 1 || p->workers > MAX_WORKERS || p->max_msg == 0 ||
        p->acceptors < 1 || p->acceptors > MAX_ACCEPTORS || p->verbs_srq_slots < 1 ||
        p->verbs_srq_slots > 16384 ||
        p->max_msg > DHPS_RPC_MAX_MSG_LIMIT || p->secret_len > DHPS_RPC_MAX_SECRET ||
        (p->secret_len && !p->secret) || !(p->allow & DHPS_RPC_MASK(DHPS_RPC_TCP)) ||
        !p->tls_cert_file != !p->tls_key_file || (p->tls_require && !p->tls_cert_file) ||
        p->tls_verify_client < DHPS_RPC_TLS_VERIFY_NONE ||
        p->tls_verify_client > DHPS_RPC_TLS_VERIFY_REQUIRED ||
        (p->tls_verify_client && (!p->tls_cert_file || !p->tls_ca_file))) {
        DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "server: invalid params");
        if (given >= 0)
            close(given);
        return -EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        if (given >= 0)
            close(given);
        return -ENOMEM;
    }
    s->lfd = given; /* closed by destroy */
    for (uint32_t a = 0; a < MAX_ACCEPTORS; a++)
        s->acc[a].ep = -1; /* destroy closes only what start created */
    pthread_mutex_init(&s->srq_lock, NULL);
    rpc_fault_table_init(&s->faults);
    s->p = *p;
    s->p.secret = NULL;
    s->p.tls_cert_file = s->p.tls_key_file = s->p.tls_ca_file = NULL; /* read below only */
    if (p->secret_len)
        memcpy(s->secret, p->secret, p->secret_len);
    rpc_host_id(p->host_id, s->host_id);
    s->p.host_id = NULL;
    if (p->tls_cert_file) {
        char err[600];
        rc = rpc_tls_ctx_server(p->tls_cert_file, p->tls_key_file, p->tls_ca_file,
                                p->tls_verify_client, &s->tls_ctx, err, sizeof err);
        if (rc) {
            if (rc == DHPS_E_CONFIG)
                DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "server: %s", err);
            goto fail;
        }
    }
    s->handlers = calloc(65536, sizeof *s->handlers);
    s->w = calloc(p->workers, sizeof *s->w);
    if (!s->handlers || !s->w || rpc_peers_create(&s->peers)) {
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
    if (given >= 0) {
        s->port = (uint16_t)bound_port(given);
        fcntl(given, F_SETFD, FD_CLOEXEC); /* as our own sockets */
    } else {
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
    }
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
    st->rejected_limit = atomic_load_explicit(&s->rejected_limit, memory_order_relaxed);
    st->input_bytes = atomic_load_explicit(&s->input_used, memory_order_relaxed);
    st->accepted_tls = atomic_load_explicit(&s->accepted_tls, memory_order_relaxed);
    st->tls_handshake_failures = atomic_load_explicit(&s->tls_failures, memory_order_relaxed);
    st->rejected_plain = atomic_load_explicit(&s->rejected_plain, memory_order_relaxed);
    for (uint32_t i = 0; i < s->p.workers; i++) {
        const wstats *w = &s->w[i].st;
        for (int t = 0; t < DHPS_RPC_NTRANSPORTS; t++)
            st->handled[t] += atomic_load_explicit(&w->handled[t], memory_order_relaxed);
        st->handler_errors += atomic_load_explicit(&w->handler_errors, memory_order_relaxed);
        st->unknown_method += atomic_load_explicit(&w->unknown_method, memory_order_relaxed);
        st->rejected_malformed += atomic_load_explicit(&w->malformed, memory_order_relaxed);
        st->open_conns += atomic_load_explicit(&w->open, memory_order_relaxed);
        st->open_tls += atomic_load_explicit(&w->open_tls, memory_order_relaxed);
        st->duplicates += atomic_load_explicit(&w->dup, memory_order_relaxed);
        st->verbs_failures += atomic_load_explicit(&w->verbs_down, memory_order_relaxed);
        st->fault_overflow += atomic_load_explicit(&w->fault_overflow, memory_order_relaxed);
        st->closed_budget += atomic_load_explicit(&w->closed_budget, memory_order_relaxed);
        st->closed_timeout += atomic_load_explicit(&w->closed_timeout, memory_order_relaxed);
    }
}

int dhps_rpc_server_start(dhps_rpc_server *s)
{
    if (s->started)
        return -EBUSY;
    /* a listen_fd's holder bound it without SO_REUSEADDR, so that nobody could share the
     * port meanwhile. It is listened on as it is (with SO_REUSEADDR only when that fails:
     * the port's TIME_WAIT connections of an earlier server), and SO_REUSEADDR is set
     * once it listens, so that the connections it accepts leave TIME_WAIT a restart can
     * bind over. Set before listen(), it would open a window in which another
     * SO_REUSEADDR socket could bind the port and listen first. */
    int one = 1;
    if (listen(s->lfd, 128) != 0 &&
        (errno != EADDRINUSE ||
         setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
         listen(s->lfd, 128) != 0))
        return -errno;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
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
    SSL_CTX_free(s->tls_ctx);
    pthread_mutex_destroy(&s->srq_lock);
    rpc_fault_table_fini(&s->faults);
    free(s->w);
    free(s->handlers);
    rpc_peers_destroy(s->peers);
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

/* rpc client: opening a channel (connect, authenticated hello, transport negotiation)
 * without blocking the client's loop. See client_int.h and docs/rpc.md §3. */
#include "client_int.h"

static int hs_fd(const session *c) { return c->hs->fd >= 0 ? c->hs->fd : c->c.fd; }
/* The open's TLS session (NULL: plain), wherever it lives now. */
static rpc_tls *hs_tls(const session *c) { return c->hs->tls ? c->hs->tls : c->c.tls; }
static const uint8_t *hs_bind(const session *c) { return c->tls ? c->hs->bind : NULL; }

uint64_t hs_deadline(const session *c)
{
    return c->hs->state == HS_CONNECT ? c->hs->connect_deadline : c->hs->deadline;
}

/* Create this channel's shared region; its name and cookie go into the proof. */
static int make_region(dhps_rpc_client *cl, rpc_hello *pr, int *shmfd)
{
    uint8_t rnd[16];
    if (rpc_random(rnd, sizeof rnd) || rpc_random(&pr->shm_cookie, sizeof pr->shm_cookie))
        return -EIO;
    int k = snprintf(pr->shm_name, RPC_SHM_NAME, "/dhps-rpc-%d-", (int)getpid());
    for (int i = 0; i < 8 && k + 2 < (int)RPC_SHM_NAME; i++)
        k += snprintf(pr->shm_name + k, RPC_SHM_NAME - (size_t)k, "%02x", rnd[i]);
    pr->shm_bytes = SHM_HDR_BYTES + 2ull * cl->p.shm_ring_bytes;
    int fd = shm_open(pr->shm_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)pr->shm_bytes) != 0) {
        int e = -errno;
        close(fd);
        shm_unlink(pr->shm_name);
        return e;
    }
    *shmfd = fd;
    return 0;
}

/* The server's hello arrived: check its proof, pick the path, set it up on our side
 * and queue our proof (with the offer). */
static int hs_server_hello(session *c)
{
    dhps_rpc_client *cl = c->cl;
    struct hs *h = c->hs;
    rpc_hello *ch = &h->ch, *sh = &h->sh, *pr = &h->pr;
    if (sh->kind == RPC_H_REJECT) {
        if (sh->status == DHPS_E_TLS)
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "hello: %s:%u requires TLS (open the channel "
                     "with tls)", c->host, c->port);
        return sh->status == DHPS_E_AUTH || sh->status == DHPS_E_TLS ? sh->status
                                                                    : DHPS_E_VERSION;
    }
    if (sh->kind != RPC_H_SERVER_HELLO || sh->version > ch->version)
        return DHPS_E_MALFORMED;
    if (sh->version < RPC_HELLO_MIN_VERSION)
        return DHPS_E_VERSION; /* it would prove itself before we do: not spoken any more */
    /* the server proves itself in its ACCEPT, after our proof (hs_accept) */
    /* pick the best path both sides and the policy allow */
    uint32_t common = ch->caps & sh->caps & c->allow;
    bool same_host = memcmp(sh->host_id, cl->host_id, RPC_HOST_ID) == 0;
    memset(pr, 0, sizeof *pr);
    pr->kind = RPC_H_CLIENT_PROOF;
    pr->version = sh->version;
    pr->want = DHPS_RPC_TCP;
    uint32_t max_msg = ch->max_msg < sh->max_msg ? ch->max_msg : sh->max_msg;
    bool try_verbs = (common & DHPS_RPC_MASK(DHPS_RPC_VERBS)) &&
                     cl->p.max_inflight <= (1u << 16) &&
                     (c->require == DHPS_RPC_VERBS ||
                      !(same_host && (common & DHPS_RPC_MASK(DHPS_RPC_SHM))));
    if (try_verbs && !cl->dev && rpc_dev_open(&cl->dev) != 0)
        try_verbs = false;
    if (try_verbs) {
        int r = vep_create(cl->dev, cl->p.verbs_slots, cl->p.verbs_slots, max_msg, NULL, &h->v);
        if (r == 0) {
            pr->want = DHPS_RPC_VERBS;
            vep_info(h->v, &pr->verbs);
            while ((1u << pr->verbs.inflight_log2) < cl->p.max_inflight)
                pr->verbs.inflight_log2++;
        } else {
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs endpoint: %s; not offered", dhps_strerror(r));
        }
    } else if ((common & DHPS_RPC_MASK(DHPS_RPC_SHM)) && same_host) {
        int r = make_region(cl, pr, &h->shmfd);
        if (r == 0) {
            h->unlink_name = true;
            pr->want = DHPS_RPC_SHM;
        } else {
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "shm region: %s; using tcp", dhps_strerror(r));
            memset(pr->shm_name, 0, sizeof pr->shm_name);
        }
    }
    if (c->require >= 0 && (int)pr->want != c->require)
        return DHPS_E_CONFIG;
    int rc = conn_init(&c->c, h->fd, h->tls, max_msg, false);
    h->fd = -1; /* owned by c->c now (closed by it on failure), and the session */
    h->tls = NULL;
    if (rc)
        return rc;
    if (pr->want == DHPS_RPC_SHM &&
        (rc = shm_attach(&c->c, h->shmfd, pr->shm_bytes, pr->shm_cookie, true)))
        return rc;
    rpc_proof_tls(cl->secret, cl->p.secret_len, 'c', ch, sh, pr, hs_bind(c), pr->proof);
    h->state = HS_ACCEPT;
    return rpc_hio_put(&h->io, pr);
}

/* The server accepted (or rejected) our offer: finish the path. */
static int hs_accept(session *c, rpc_hello *ac)
{
    dhps_rpc_client *cl = c->cl;
    struct hs *h = c->hs;
    if (ac->kind == RPC_H_REJECT)
        return ac->status == DHPS_E_AUTH ? DHPS_E_AUTH : DHPS_E_CONFIG;
    if (ac->kind != RPC_H_ACCEPT ||
        (ac->transport != DHPS_RPC_TCP && ac->transport != h->pr.want))
        return DHPS_E_MALFORMED;
    uint8_t want[RPC_MAC];
    rpc_proof_tls(cl->secret, cl->p.secret_len, 'a', &h->ch, &h->sh, ac, hs_bind(c), want);
    if (!rpc_mac_equal(want, ac->proof)) {
        DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "hello: server proof wrong (secret mismatch?)");
        return DHPS_E_AUTH;
    }
    if (ac->transport != DHPS_RPC_SHM && c->c.shm_base) {
        munmap(c->c.shm_base, c->c.shm_len);
        c->c.shm_base = NULL;
    }
    if (ac->transport == DHPS_RPC_VERBS) {
        c->verbs_wanted = true;
        if (h->v && vep_connect(h->v, &ac->verbs) == 0 && ac->verbs.slots > 0) {
            c->c.v = h->v;
            h->v = NULL;
            c->remote_slots = ac->verbs.slots;
        } else { /* the server is ready but we are not: serve on TCP, re-try later */
            ac->transport = DHPS_RPC_TCP;
            c->st.fallbacks++;
        }
    }
    c->c.transport = (int)ac->transport;
    if (c->require >= 0 && c->c.transport != c->require)
        return DHPS_E_CONFIG;
    rpc_tune_socket(c->c.fd, cl->p.busy_poll_us);
    return 1;
}

/* Release what the open still holds (not the connection: c->c). */
static void hs_free(session *c)
{
    struct hs *h = c->hs;
    if (!h)
        return;
    if (h->unlink_name)
        shm_unlink(h->pr.shm_name);
    if (h->shmfd >= 0)
        close(h->shmfd);
    rpc_tls_free(h->tls); /* before its socket closes */
    if (h->fd >= 0)
        close(h->fd);
    vep_destroy(h->v);
    free(h);
    c->hs = NULL;
    c->cl->nopening--;
}

/* Calls queued while the channel opened may go now (or fail with its error). */
static void release_waiting(session *c)
{
    uint64_t now = dhps_mono_ns();
    for (deferred *q = c->cl->dq; q; q = q->next)
        if (q->s == c && q->wait_open)
            q->at = now;
}

/* The open failed (or the channel closes while opening). */
void hs_fail(session *c, int why)
{
    rpc_tls *t = hs_tls(c);
    if (why == DHPS_E_TLS && t && t->err[0]) /* certificates: say which and why */
        DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "open %s:%u: tls: %s", c->host, c->port, t->err);
    epoll_ctl(c->cl->ep, EPOLL_CTL_DEL, hs_fd(c), NULL);
    hs_free(c);
    conn_fini(&c->c);
    c->broken = why;
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "open %s:%u failed: %s", c->host, c->port,
             dhps_strerror(why));
    release_waiting(c);
}

/* The hello is done: the session serves calls from now on. */
static void hs_done(session *c)
{
    dhps_rpc_client *cl = c->cl;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(cl->ep, EPOLL_CTL_MOD, c->c.fd, &ev);
    c->out_armed = false;
    hs_free(c);
    if (c->c.shm_base)
        cl->nshm++;
    if (c->c.v) {
        cl->nverbs++;
        cl_watch_vep(cl, c->c.v);
    }
    if (c->verbs_wanted && !c->c.v)
        cl_schedule_promote(c);
    c->ready_ns = dhps_mono_ns();
    release_waiting(c);
}

/* Move the open as far as the socket allows. 1: ready, 0: waiting, < 0: failed (the
 * session is then broken with that error). */
int hs_drive(session *c)
{
    struct hs *h = c->hs;
    int r = 0;
    if (h->state == HS_CONNECT) {
        struct pollfd pf = {.fd = h->fd, .events = POLLOUT};
        if (poll(&pf, 1, 0) == 0)
            return 0;
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0 || err) {
            r = DHPS_E_UNREACHABLE;
            goto out;
        }
        if (c->tls) {
            if ((r = rpc_tls_new(c->cl->tls_ctx, h->fd, false, c->cl->tls_name, c->host,
                                 &h->tls)))
                goto out;
            h->state = HS_TLS;
        } else {
            h->state = HS_SERVER_HELLO;
            if ((r = rpc_hio_put(&h->io, &h->ch)))
                goto out;
        }
    }
    if (h->state == HS_TLS) {
        if ((r = rpc_tls_handshake(h->tls)) == 1 && !(r = rpc_tls_binding(h->tls, h->bind))) {
            h->state = HS_SERVER_HELLO;
            r = rpc_hio_put(&h->io, &h->ch);
        }
        if (r)
            goto out;
    }
    for (;;) {
        if (h->state == HS_TLS)
            break;
        if ((r = rpc_hio_flush(&h->io, hs_fd(c), hs_tls(c))) <= 0)
            break;
        if (h->state == HS_SERVER_HELLO) {
            if ((r = rpc_hio_read(&h->io, hs_fd(c), hs_tls(c), &h->sh)) <= 0)
                break;
            if ((r = hs_server_hello(c)))
                break;
            continue; /* send the proof */
        }
        rpc_hello ac;
        if ((r = rpc_hio_read(&h->io, hs_fd(c), hs_tls(c), &ac)) <= 0)
            break;
        r = hs_accept(c, &ac);
        break;
    }
out:
    if (r < 0) {
        hs_fail(c, r);
        return r;
    }
    if (r == 1) {
        hs_done(c);
        return 1;
    }
    rpc_tls *t = hs_tls(c);
    bool want_out = h->state == HS_CONNECT || rpc_hio_pending_out(&h->io) ||
                    (t && t->want_write);
    if (want_out != h->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
        epoll_ctl(c->cl->ep, EPOLL_CTL_MOD, hs_fd(c), &ev);
        h->want_out = want_out;
    }
    return 0;
}

/* Drive the open to its end here, polling only its socket (dhps_rpc_channel_open).
 * Returns 0 or the open's error. */
int hs_block(session *c)
{
    for (;;) {
        int r = hs_drive(c);
        if (r)
            return r < 0 ? r : 0;
        uint64_t now = dhps_mono_ns(), d = hs_deadline(c);
        if (now >= d) {
            hs_fail(c, DHPS_E_TIMEOUT);
            return DHPS_E_TIMEOUT;
        }
        struct pollfd pf = {.fd = hs_fd(c), .events = (short)(c->hs->want_out ? POLLOUT : POLLIN)};
        uint64_t ms = (d - now + 999999) / 1000000;
        (void)poll(&pf, 1, ms > 1000 ? 1000 : (int)ms);
    }
}

/* Fail every open whose time is up. */
void hs_expire(dhps_rpc_client *cl, uint64_t now)
{
    for (session *c = cl->chans; c; c = c->next)
        if (c->hs && now >= hs_deadline(c))
            hs_fail(c, DHPS_E_TIMEOUT);
}

/* Start opening a session: validate, connect without blocking, queue the client hello.
 * The session is linked and registered with epoll; hs_drive moves it on. Returns 0,
 * DHPS_E_CONFIG, DHPS_E_UNREACHABLE (refused at once), -ENOMEM, -errno. */
int s_begin(dhps_rpc_client *cl, const dhps_rpc_channel_params *p, session **out)
{
    *out = NULL;
    if (!p || !p->host || p->port == 0 || !(p->allow & DHPS_RPC_MASK(DHPS_RPC_TCP)) ||
        p->require < -1 || p->require >= DHPS_RPC_NTRANSPORTS)
        return DHPS_E_CONFIG;
    if (p->require >= 0 && !(p->allow & DHPS_RPC_MASK(p->require)))
        return DHPS_E_CONFIG;
    if (p->tls && !cl->tls_ctx) {
        DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "open %s:%u: tls asked for, but the client has no "
                 "tls_ca_file to verify servers with", p->host, p->port);
        return DHPS_E_CONFIG;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->port)};
    if (inet_pton(AF_INET, p->host, &a.sin_addr) != 1)
        return DHPS_E_CONFIG;
    session *c = calloc(1, sizeof *c);
    struct hs *h = calloc(1, sizeof *h);
    uint32_t n = cl->p.max_inflight;
    if (c) {
        c->slots = calloc(n, sizeof *c->slots);
        c->free_stack = malloc(n * sizeof *c->free_stack);
    }
    int rc = -ENOMEM;
    if (!c || !h || !c->slots || !c->free_stack)
        goto fail;
    c->c.fd = -1;
    h->fd = h->shmfd = -1;
    c->hs = h;
    for (uint32_t i = 0; i < n; i++)
        c->free_stack[i] = n - 1 - i;
    c->nfree = n;
    c->mask = n - 1;
    while ((1u << c->log2) < n)
        c->log2++;
    c->min_deadline = UINT64_MAX;
    c->cl = cl;
    c->backoff_ms = cl->p.promote_backoff_ms;
    c->mixed = p->mixed;
    c->refs = 1;
    c->port = p->port;
    c->allow = p->allow;
    c->require = p->require;
    c->tls = p->tls;
    c->exclusive = p->exclusive || strlen(p->host) >= sizeof c->host;
    snprintf(c->host, sizeof c->host, "%s", p->host);
    uint64_t now = dhps_mono_ns();
    h->deadline = now + (uint64_t)cl->p.connect_timeout_ms * 1000000ull;
    h->connect_deadline = h->deadline;
    if (p->tcp_connect_timeout_us) {
        uint64_t d = now + (uint64_t)p->tcp_connect_timeout_us * 1000ull;
        if (d < h->connect_deadline)
            h->connect_deadline = d;
    }
    h->ch.kind = RPC_H_CLIENT_HELLO;
    h->ch.version = cl->p.hello_version > RPC_HELLO_VERSION ? RPC_HELLO_VERSION
                                                           : cl->p.hello_version;
    h->ch.caps = p->allow & DHPS_RPC_ALL;
    h->ch.max_msg = cl->p.max_msg;
    memcpy(h->ch.host_id, cl->host_id, RPC_HOST_ID);
    if ((rc = rpc_random(h->ch.nonce, RPC_NONCE)))
        goto fail;
    h->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->fd < 0) {
        rc = -errno;
        goto fail;
    }
    if (connect(h->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        rc = DHPS_E_UNREACHABLE;
        goto fail;
    }
    h->state = HS_CONNECT;
    h->want_out = true;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, h->fd, &ev) != 0) {
        rc = -errno;
        goto fail;
    }
    c->next = cl->chans;
    if (cl->chans)
        cl->chans->prev = c;
    cl->chans = c;
    cl->nopening++;
    *out = c;
    return 0;
fail:
    if (h && h->fd >= 0)
        close(h->fd);
    free(h);
    if (c) {
        free(c->slots);
        free(c->free_stack);
    }
    free(c);
    return rc;
}

/* rpc client: one event loop per dhps_rpc_client, owned by one thread at a time. Opening
 * a channel is in client_open.c, the channel handles (the public channel and call
 * functions) in client_chan.c; shared state in client_int.h. */
#include "client_int.h"
#include <sched.h>

char cl_verbs_wake_tag;

/* Watch a verbs endpoint's completion channel from the client's epoll set. */
void cl_watch_vep(dhps_rpc_client *cl, vep *v)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cl_verbs_wake_tag};
    if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, vep_event_fd(v), &ev) != 0)
        DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "epoll add cq channel: %s", strerror(errno));
}

void dhps_rpc_client_params_init(dhps_rpc_client_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_msg = 256u << 10;
    p->max_inflight = 1024;
    p->connect_timeout_ms = 2000;
    p->hello_version = RPC_HELLO_VERSION;
    p->verbs_slots = 32;
    p->promote_backoff_ms = 20;
    p->spin_us = 50;
}

void dhps_rpc_channel_params_init(dhps_rpc_channel_params *p)
{
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->allow = DHPS_RPC_ALL;
    p->require = -1;
}

int dhps_rpc_client_create(const dhps_rpc_client_params *p, dhps_rpc_client **out)
{
    *out = NULL;
    if (!p || p->max_msg == 0 || p->max_msg > DHPS_RPC_MAX_MSG_LIMIT ||
        p->max_inflight == 0 || (p->max_inflight & (p->max_inflight - 1)) ||
        p->max_inflight > (1u << 20) || p->secret_len > DHPS_RPC_MAX_SECRET ||
        (p->secret_len && !p->secret) || p->hello_version < 1 ||
        (p->shm_ring_bytes && (p->shm_ring_bytes & (p->shm_ring_bytes - 1))) ||
        p->verbs_slots < 1 || p->verbs_slots > 1024 || p->spin_us > DHPS_RPC_SPIN_US_MAX ||
        (!p->tls_ca_file && (p->tls_cert_file || p->tls_key_file)))
        return -EINVAL;
    dhps_rpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->p = *p;
    c->spin_ns = (uint64_t)p->spin_us * 1000;
    c->p.secret = NULL;
    c->p.tls_ca_file = c->p.tls_cert_file = c->p.tls_key_file = c->p.tls_server_name = NULL;
    if (p->tls_ca_file) {
        char err[600];
        int rc = rpc_tls_ctx_client(p->tls_ca_file, p->tls_cert_file, p->tls_key_file,
                                    &c->tls_ctx, err, sizeof err);
        if (!rc && p->tls_server_name && *p->tls_server_name &&
            !(c->tls_name = strdup(p->tls_server_name)))
            rc = -ENOMEM;
        if (rc) {
            if (rc == DHPS_E_CONFIG)
                DHPS_LOG(DHPS_LOG_ERROR, RPC_LOG, "client: %s", err);
            SSL_CTX_free(c->tls_ctx);
            free(c);
            return rc;
        }
    }
    if (p->secret_len)
        memcpy(c->secret, p->secret, p->secret_len);
    rpc_host_id(p->host_id, c->host_id);
    c->p.host_id = NULL;
    if (c->p.shm_ring_bytes == 0) {
        uint64_t need = 4ull * p->max_msg + 4096, r = 1u << 20;
        while (r < need)
            r <<= 1;
        c->p.shm_ring_bytes = (uint32_t)r;
    }
    if ((uint64_t)c->p.shm_ring_bytes < 4ull * p->max_msg + 4096) {
        SSL_CTX_free(c->tls_ctx);
        free(c->tls_name);
        free(c);
        return -EINVAL;
    }
    c->ep = epoll_create1(EPOLL_CLOEXEC);
    if (c->ep < 0) {
        int e = -errno;
        SSL_CTX_free(c->tls_ctx);
        free(c->tls_name);
        free(c);
        return e;
    }
    *out = c;
    return 0;
}

void dhps_rpc_client_destroy(dhps_rpc_client *c)
{
    if (!c)
        return;
    cancel_deferred(c, NULL);
    while (c->chans)
        s_close(c->chans);
    while (c->handles) {
        struct dhps_rpc_channel *h = c->handles;
        c->handles = h->next;
        free(h);
    }
    rpc_dev_close(c->dev);
    close(c->ep);
    SSL_CTX_free(c->tls_ctx);
    free(c->tls_name);
    free(c);
}

/* ---- completion ------------------------------------------------------------------- */

void complete(session *ch, uint32_t idx, int status, const void *resp, size_t len)
{
    slot *s = &ch->slots[idx];
    dhps_rpc_done_fn done = s->done;
    void *arg = s->arg;
    if (s->transport == DHPS_RPC_VERBS && ch->c.v) {
        ch->c.v->ss[s->vslot].held = false;
        ch->v_inflight--;
    }
    s->id = 0;
    ch->free_stack[ch->nfree++] = idx;
    ch->inflight--;
    if (status == 0)
        ch->st.completed++;
    else
        ch->st.failed++;
    if (status == DHPS_E_TIMEOUT)
        ch->st.timeouts++;
    done(arg, status, status ? NULL : resp, status ? 0 : len);
}

static int fail_all(session *ch, int why)
{
    int n = 0;
    for (uint32_t i = 0; i <= ch->mask && ch->inflight; i++)
        if (ch->slots[i].id) {
            complete(ch, i, why, NULL, 0);
            n++;
        }
    return n;
}

/* The channel's connection is gone: every call in flight fails with `why`. */
static int channel_break(session *ch, int why)
{
    if (ch->broken)
        return 0;
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "channel broken: %s", dhps_strerror(why));
    ch->broken = why == DHPS_E_MALFORMED ? DHPS_E_MALFORMED : DHPS_E_UNREACHABLE;
    epoll_ctl(ch->cl->ep, EPOLL_CTL_DEL, ch->c.fd, NULL);
    if (ch->c.shm_base)
        ch->cl->nshm--;
    rpc_tls_free(ch->c.tls); /* before its socket closes */
    ch->c.tls = NULL;
    int fd = ch->c.fd;
    ch->c.fd = -1;
    close(fd);
    if (ch->c.shm_base) {
        munmap(ch->c.shm_base, ch->c.shm_len);
        ch->c.shm_base = NULL;
    }
    int n = fail_all(ch, ch->broken);
    if (ch->c.v) {
        ch->cl->nverbs--;
        vep_destroy(ch->c.v);
        ch->c.v = NULL;
    }
    vep_destroy(ch->pending);
    ch->pending = NULL;
    ch->verbs_wanted = false;
    return n;
}

void cl_schedule_promote(session *ch)
{
    ch->retry_at = dhps_mono_ns() + (uint64_t)ch->backoff_ms * 1000000ull;
    if (ch->backoff_ms < ch->cl->p.promote_backoff_ms * 64)
        ch->backoff_ms *= 2;
}

/* The server answered a PROMOTE. */
static int on_ctrl(session *ch, const uint8_t *payload, uint32_t len)
{
    uint32_t op;
    rpc_verbs_info r;
    if (rpc_ctrl_parse(payload, len, &op, &r) || op == RPC_CTRL_PROMOTE || !ch->pending)
        return DHPS_E_MALFORMED;
    vep *v = ch->pending;
    ch->pending = NULL;
    if (op == RPC_CTRL_PROMOTE_OK && r.slots > 0 && !ch->c.v && vep_connect(v, &r) == 0) {
        ch->c.v = v;
        cl_watch_vep(ch->cl, v);
        ch->c.transport = DHPS_RPC_VERBS;
        ch->remote_slots = r.slots;
        ch->v_inflight = 0;
        ch->cl->nverbs++;
        ch->st.repromotions++;
        ch->backoff_ms = ch->cl->p.promote_backoff_ms;
        DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs path re-promoted");
        return 0;
    }
    vep_destroy(v);
    cl_schedule_promote(ch);
    return 0;
}

static int on_response(void *arg, conn *c, int via, const rpc_frame *f, const uint8_t *payload)
{
    session *ch = arg;
    if (f->type == RPC_F_DOORBELL)
        return 0;
    if (f->type == RPC_F_CTRL && via == DHPS_RPC_TCP)
        return on_ctrl(ch, payload, f->len);
    if (f->type != RPC_F_RESP)
        return DHPS_E_MALFORMED;
    uint32_t idx = (uint32_t)(f->id & ch->mask);
    if (ch->slots[idx].id != f->id)
        return 0; /* late answer to a call that already timed out: drop */
    int st = f->status;
    if (st != 0 && st != DHPS_E_HANDLER && st != DHPS_E_NOTFOUND)
        st = DHPS_E_MALFORMED; /* the server may only send these codes */
    complete(ch, idx, st, payload, f->len);
    return 0;
}

void s_close(session *ch)
{
    if (!ch)
        return;
    dhps_rpc_client *cl = ch->cl;
    fail_all(ch, DHPS_E_CANCELLED);
    if (ch->hs)
        hs_fail(ch, DHPS_E_CANCELLED);
    free(ch->stage);
    if (!ch->broken) {
        epoll_ctl(cl->ep, EPOLL_CTL_DEL, ch->c.fd, NULL);
        if (ch->c.shm_base)
            cl->nshm--;
        if (ch->c.v)
            cl->nverbs--;
    }
    vep_destroy(ch->pending);
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        cl->chans = ch->next;
    if (ch->next)
        ch->next->prev = ch->prev;
    conn_fini(&ch->c);
    free(ch->slots);
    free(ch->free_stack);
    free(ch);
}

/* ---- calls ------------------------------------------------------------------------ */

int s_call_start(session *ch, uint16_t method, size_t max_len, void **buf)
{
    if (ch->lent)
        return -EINVAL;
    if (ch->broken)
        return ch->broken;
    if (ch->hs) { /* opening: the request waits in a copy until the channel is ready */
        if (max_len > ch->cl->p.max_msg)
            return DHPS_E_TOOBIG;
        deferred *q = malloc(sizeof *q + max_len);
        if (!q)
            return -ENOMEM;
        ch->stage = q;
        ch->lent = true;
        ch->lent_method = method;
        ch->lent_max = max_len;
        ch->lent_transport = -1;
        ch->lent_buf = q->req;
        *buf = q->req;
        return 0;
    }
    if (max_len > ch->c.max_msg)
        return DHPS_E_TOOBIG;
    if (ch->nfree == 0)
        return DHPS_E_BUSY;
    int t = ch->c.transport;
    uint8_t *p = NULL;
    if (t == DHPS_RPC_VERBS) {
        vep *v = ch->c.v;
        if (v && !v->failed && ch->v_inflight < ch->remote_slots)
            p = rpc_verbs_ops.reserve(&ch->c, max_len);
        if (!p) {
            if (!ch->mixed && v && !v->failed)
                return DHPS_E_BUSY;
            t = DHPS_RPC_TCP; /* mixed mode, or the path just failed: use TCP */
        }
    }
    if (!p)
        p = rpc_transports[t]->reserve(&ch->c, max_len);
    if (!p)
        return t == DHPS_RPC_TCP ? -ENOMEM : DHPS_E_BUSY;
    ch->lent = true;
    ch->lent_method = method;
    ch->lent_max = max_len;
    ch->lent_transport = t;
    ch->lent_buf = p;
    *buf = p;
    return 0;
}

void s_call_abort(session *ch)
{
    ch->lent = false;
    free(ch->stage);
    ch->stage = NULL;
    if (ch->c.v)
        ch->c.v->cur = -1;
}

/* ---- verbs failure, fallback, re-promotion ------------------------------------------ */

/* The verbs path failed: move every call in flight on it to TCP (same id, RETRY flag;
 * the server answers a request it already ran from its cache), drop the endpoint and
 * schedule a re-promotion. */
static int verbs_fallback(session *ch)
{
    vep *v = ch->c.v;
    DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs path failed: %u calls re-sent on tcp",
             ch->v_inflight);
    for (uint32_t i = 0; i <= ch->mask; i++) {
        slot *s = &ch->slots[i];
        if (!s->id || s->transport != DHPS_RPC_VERBS)
            continue;
        const uint8_t *fr = v->mem + (size_t)s->vslot * v->slot_bytes;
        rpc_frame f;
        if (rpc_frame_parse(fr, v->ss[s->vslot].len, ch->c.max_msg, false, &f) <= 0)
            return DHPS_E_MALFORMED; /* our own frame: cannot happen */
        uint8_t *p = rpc_tcp_ops.reserve(&ch->c, f.len);
        if (!p)
            return -ENOMEM;
        memcpy(p, fr + RPC_FRAME_HDR, f.len); /* the retry path's one copy */
        f.flags = RPC_FLAG_RETRY;
        rpc_tcp_ops.commit(&ch->c, &f);
        s->transport = DHPS_RPC_TCP;
        ch->st.retries++;
        ch->st.calls[DHPS_RPC_TCP]++;
    }
    vep_destroy(v);
    ch->c.v = NULL;
    ch->c.verbs_dirty = false;
    ch->c.transport = DHPS_RPC_TCP;
    ch->v_inflight = 0;
    ch->cl->nverbs--;
    ch->st.fallbacks++;
    cl_schedule_promote(ch);
    return 0;
}

static void try_promote(session *ch, uint64_t now)
{
    dhps_rpc_client *cl = ch->cl;
    if (ch->c.v || ch->pending || now < ch->retry_at || ch->broken)
        return;
    if (!cl->dev && rpc_dev_open(&cl->dev) != 0) {
        cl_schedule_promote(ch);
        return;
    }
    vep *v = NULL;
    uint8_t *p = NULL;
    if (vep_create(cl->dev, cl->p.verbs_slots, cl->p.verbs_slots, ch->c.max_msg, NULL, &v) ||
        !(p = rpc_tcp_ops.reserve(&ch->c, RPC_CTRL_BYTES))) {
        vep_destroy(v);
        cl_schedule_promote(ch);
        return;
    }
    rpc_verbs_info me;
    vep_info(v, &me);
    while ((1u << me.inflight_log2) < cl->p.max_inflight)
        me.inflight_log2++;
    rpc_ctrl_encode(RPC_CTRL_PROMOTE, &me, p);
    rpc_frame f = {.type = RPC_F_CTRL, .len = RPC_CTRL_BYTES};
    rpc_tcp_ops.commit(&ch->c, &f);
    ch->pending = v;
    ch->retry_at = UINT64_MAX;
}

/* A fatal device event: tear down every verbs object so the device can go away. */
static void device_gone(dhps_rpc_client *cl)
{
    for (session *ch = cl->chans; ch; ch = ch->next) {
        if (ch->hs && ch->hs->v) { /* an accepted offer then serves on TCP */
            vep_destroy(ch->hs->v);
            ch->hs->v = NULL;
        }
        if (ch->c.v)
            verbs_fallback(ch);
        if (ch->pending) {
            vep_destroy(ch->pending);
            ch->pending = NULL;
            cl_schedule_promote(ch);
        }
    }
    rpc_dev_close(cl->dev);
    cl->dev = NULL;
}

int s_inject(session *ch, int fault)
{
    if (fault != DHPS_RPC_FAULT_QP_ERROR)
        return -EINVAL;
    if (!ch->c.v)
        return -ENOTCONN;
    return vep_break(ch->c.v);
}

static int s_call_send(session *ch, const void *owner, size_t len, uint64_t timeout_us,
                       dhps_rpc_done_fn done, void *arg)
{
    if (!ch->lent || len > ch->lent_max || !done)
        return -EINVAL;
    ch->lent = false;
    uint32_t idx = ch->free_stack[--ch->nfree];
    slot *s = &ch->slots[idx];
    s->id = (++ch->seq << ch->log2) | idx;
    s->deadline = timeout_us ? dhps_mono_ns() + timeout_us * 1000ull : UINT64_MAX;
    if (s->deadline < ch->min_deadline)
        ch->min_deadline = s->deadline;
    s->done = done;
    s->arg = arg;
    s->owner = owner;
    s->transport = (uint8_t)ch->lent_transport;
    if (s->transport == DHPS_RPC_VERBS) {
        s->vslot = (int16_t)ch->c.v->cur;
        ch->c.v->ss[s->vslot].held = true;
        ch->v_inflight++;
    }
    ch->inflight++;
    rpc_frame f = {.type = RPC_F_REQ, .method = ch->lent_method, .len = (uint32_t)len,
                   .id = s->id};
    rpc_transports[ch->lent_transport]->commit(&ch->c, &f);
    ch->st.calls[ch->lent_transport]++;
    return 0;
}

/* ---- fault rules: calls held back or failed without being sent ---------------------- */

static void deferred_fail(session *s, deferred *q, int status)
{
    s->st.failed++;
    if (status == DHPS_E_TIMEOUT)
        s->st.timeouts++;
    q->done(q->arg, status, NULL, 0);
}

/* dhps_rpc_call_send with the fault rules applied (one relaxed load when none is set). */
int s_send(session *ch, const void *owner, size_t len, uint64_t timeout_us,
           dhps_rpc_done_fn done, void *arg)
{
    if (ch->stage) { /* started while opening: wait for the hello (or its failure) */
        if (!ch->lent || len > ch->lent_max || !done)
            return -EINVAL;
        deferred *q = ch->stage;
        uint64_t now = dhps_mono_ns();
        q->s = ch;
        q->owner = owner;
        q->method = ch->lent_method;
        q->status = 0;
        q->wait_open = true;
        q->at = ch->hs ? UINT64_MAX : now;
        q->deadline = timeout_us ? now + timeout_us * 1000ull : UINT64_MAX;
        q->done = done;
        q->arg = arg;
        q->len = len;
        ch->stage = NULL;
        ch->lent = false;
        q->next = ch->cl->dq;
        ch->cl->dq = q;
        return 0;
    }
    if (atomic_load_explicit(&rpc_fault_nrules, memory_order_relaxed) == 0)
        return s_call_send(ch, owner, len, timeout_us, done, arg);
    if (!ch->lent || len > ch->lent_max || !done)
        return -EINVAL;
    uint64_t delay;
    int k = rpc_fault_decide(ch->host, ch->port, &delay);
    if (k == RPC_FAULT_NONE)
        return s_call_send(ch, owner, len, timeout_us, done, arg);
    deferred *q = malloc(sizeof *q + (k == RPC_FAULT_DELAY ? len : 0));
    if (!q) /* no memory to hold it back: send it unharmed */
        return s_call_send(ch, owner, len, timeout_us, done, arg);
    uint64_t now = dhps_mono_ns();
    *q = (deferred){.s = ch, .owner = owner, .method = ch->lent_method, .done = done,
                    .arg = arg, .len = len,
                    .deadline = timeout_us ? now + timeout_us * 1000ull : UINT64_MAX};
    if (k == RPC_FAULT_FAIL) {
        q->status = DHPS_E_UNREACHABLE;
        q->at = now;
    } else if (k == RPC_FAULT_HOLD) {
        q->status = DHPS_E_TIMEOUT;
        q->at = q->deadline == UINT64_MAX ? now : q->deadline;
    } else {
        q->status = 0;
        q->at = now + delay;
        if (len)
            memcpy(q->req, ch->lent_buf, len);
    }
    s_call_abort(ch);
    q->next = ch->cl->dq;
    ch->cl->dq = q;
    return 0;
}

/* Fail or send every held-back call whose time came. Returns callbacks run. */
static int run_deferred(dhps_rpc_client *cl, uint64_t now)
{
    int ran = 0;
    deferred *list = cl->dq, *keep = NULL;
    cl->dq = NULL; /* callbacks may hold back new calls: they wait for the next turn */
    while (list) {
        deferred *q = list;
        list = q->next;
        int st = q->status;
        if (q->at > now) {
            if (q->deadline > now) {
                q->next = keep;
                keep = q;
                continue;
            }
            st = DHPS_E_TIMEOUT; /* deadline passed while delayed */
        }
        if (st == 0) {
            void *buf;
            int rc = q->s->lent ? DHPS_E_BUSY : s_call_start(q->s, q->method, q->len, &buf);
            if (rc == DHPS_E_BUSY) {
                q->next = keep;
                keep = q;
                continue;
            }
            if (rc == 0) {
                if (q->len)
                    memcpy(buf, q->req, q->len);
                uint64_t left = q->deadline == UINT64_MAX ? 0 : (q->deadline - now) / 1000;
                if (q->deadline != UINT64_MAX && left == 0)
                    left = 1;
                q->s->lent_owner = q->owner;
                if (q->wait_open)
                    (void)s_send(q->s, q->owner, q->len, left, q->done, q->arg);
                else
                    (void)s_call_send(q->s, q->owner, q->len, left, q->done, q->arg);
                free(q);
                continue;
            }
            st = rc;
        }
        deferred_fail(q->s, q, st);
        free(q);
        ran++;
    }
    while (keep) {
        deferred *q = keep;
        keep = q->next;
        q->next = cl->dq;
        cl->dq = q;
    }
    return ran;
}

/* Cancel held-back calls of one channel handle (owner NULL: all). */
void cancel_deferred(dhps_rpc_client *cl, const void *owner)
{
    deferred **pp = &cl->dq;
    while (*pp) {
        deferred *q = *pp;
        if (owner && q->owner != owner) {
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        deferred_fail(q->s, q, DHPS_E_CANCELLED);
        free(q);
    }
}

static int expire(session *ch, uint64_t now)
{
    if (now < ch->min_deadline)
        return 0;
    int n = 0;
    uint64_t next = UINT64_MAX;
    for (uint32_t i = 0; i <= ch->mask; i++) {
        slot *s = &ch->slots[i];
        if (!s->id)
            continue;
        if (s->deadline <= now) {
            complete(ch, i, DHPS_E_TIMEOUT, NULL, 0);
            n++;
        } else if (s->deadline < next) {
            next = s->deadline;
        }
    }
    ch->min_deadline = next;
    return n;
}

/* Arm EPOLLOUT on a ready session while its output waits for room in the socket (or its
 * TLS session waits to write), so the loop wakes to send the rest. */
static void s_arm(session *ch)
{
    bool out = ch->c.tcp_dirty || (ch->c.tls && ch->c.tls->want_write);
    if (out == ch->out_armed)
        return;
    ch->out_armed = out;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0u), .data.ptr = ch};
    epoll_ctl(ch->cl->ep, EPOLL_CTL_MOD, ch->c.fd, &ev);
}

static int flush_all(dhps_rpc_client *cl)
{
    int ran = 0;
    for (session *ch = cl->chans; ch; ch = ch->next) {
        if (ch->broken || ch->hs)
            continue;
        int r = 0;
        if (ch->c.shm_dirty)
            r = rpc_shm_ops.flush(&ch->c);
        if (ch->c.verbs_dirty)
            (void)rpc_verbs_ops.flush(&ch->c); /* failure: handled in the next turn */
        if (!r && ch->c.tcp_dirty)
            r = rpc_tcp_ops.flush(&ch->c);
        if (r)
            ran += channel_break(ch, r);
        else
            s_arm(ch);
    }
    return ran;
}

/* Poll every verbs session once: send completions, responses, failures. */
static int poll_verbs(dhps_rpc_client *cl)
{
    int ran = 0;
    for (session *ch = cl->chans; ch; ch = ch->next) {
        if (ch->broken || !ch->c.v)
            continue;
        int r = vep_poll_send(ch->c.v);
        if (r == 0)
            r = rpc_verbs_ops.rx(&ch->c, on_response, ch);
        if (r > 0)
            ran += r;
        if (ch->c.v && ch->c.v->failed) {
            if ((r = verbs_fallback(ch)) < 0)
                ran += channel_break(ch, r);
        }
    }
    return ran;
}

/* epoll_wait with a nanosecond bound (wait_ns < 0: forever): epoll_pwait2 where the
 * kernel has it (5.11+), so held-back calls (fault delays), hedges and deadlines fire on
 * time instead of on the next whole millisecond; else epoll_wait rounded up to 1 ms. */
static int wait_events(int ep, struct epoll_event *evs, int max, int64_t wait_ns)
{
    static _Atomic int no_pwait2;
    if (wait_ns > 0 && !atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        struct timespec ts = {.tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000};
        int n = epoll_pwait2(ep, evs, max, &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        atomic_store_explicit(&no_pwait2, 1, memory_order_relaxed);
    }
    int ms = wait_ns < 0 ? -1 : (int)((wait_ns + 999999) / 1000000);
    return epoll_wait(ep, evs, max, ms);
}

/* One pass over every channel, sleeping at most wait_ns (< 0: until an event; the
 * verbs device check caps it at 50 ms) when nothing ran. Returns callbacks run. */
static int turn(dhps_rpc_client *cl, int64_t wait_ns)
{
    int ran = flush_all(cl);
    if (cl->nshm) {
        for (session *ch = cl->chans; ch; ch = ch->next) {
            if (ch->broken || ch->hs || !ch->c.shm_base)
                continue;
            int r = rpc_shm_ops.rx(&ch->c, on_response, ch);
            if (r > 0)
                ran += r;
            else if (r < 0)
                ran += channel_break(ch, r);
        }
    }
    if (cl->dev) {
        uint64_t t = dhps_mono_ns();
        bool sys = t - cl->dev_checked > 50000000ull; /* sysfs look every 50 ms */
        if (sys)
            cl->dev_checked = t;
        if (rpc_dev_check(cl->dev, sys))
            device_gone(cl);
    }
    if (cl->nverbs) {
        ran += poll_verbs(cl);
        if (!ran && wait_ns != 0) {
            /* about to sleep: arm every receive CQ, then look once more (a completion
             * that landed before arming raises no event) */
            for (session *ch = cl->chans; ch; ch = ch->next)
                if (!ch->broken && ch->c.v)
                    vep_arm(ch->c.v);
            ran += poll_verbs(cl);
        }
        if (wait_ns < 0 || wait_ns > 50000000)
            wait_ns = 50000000; /* device health is looked at every 50 ms */
    }
    bool slept = false;
    if (ran || wait_ns == 0) {
        wait_ns = 0;
    } else if (cl->nshm) {
        for (session *ch = cl->chans; ch; ch = ch->next)
            if (!ch->broken && !ch->hs && ch->c.shm_base && !shm_prepare_sleep(&ch->c))
                wait_ns = 0;
        slept = true;
    }
    struct epoll_event evs[32];
    cl->st.turns++;
    if (wait_ns != 0)
        cl->st.sleeps++;
    int n = wait_events(cl->ep, evs, 32, wait_ns);
    if (slept)
        for (session *ch = cl->chans; ch; ch = ch->next)
            if (!ch->broken && !ch->hs && ch->c.shm_base)
                shm_end_sleep(&ch->c);
    if (n < 0)
        return errno == EINTR ? ran : -errno;
    for (int i = 0; i < n; i++) {
        session *ch = evs[i].data.ptr;
        if (ch == (void *)&cl_verbs_wake_tag) {
            for (session *x = cl->chans; x; x = x->next)
                if (x->c.v)
                    vep_drain_events(x->c.v);
            continue;
        }
        if (ch->broken)
            continue;
        if (ch->hs) {
            (void)hs_drive(ch);
            continue;
        }
        int r = rpc_tcp_ops.rx(&ch->c, on_response, ch);
        if (r > 0)
            ran += r;
        else if (r < 0)
            ran += channel_break(ch, r);
    }
    uint64_t now = dhps_mono_ns();
    if (cl->nopening)
        hs_expire(cl, now);
    for (session *ch = cl->chans; ch; ch = ch->next) {
        if (ch->inflight)
            ran += expire(ch, now);
        if (ch->verbs_wanted && !ch->c.v)
            try_promote(ch, now);
    }
    if (cl->dq)
        ran += run_deferred(cl, now);
    ran += flush_all(cl); /* callbacks may have queued new calls */
    return ran;
}

static uint64_t next_deadline(dhps_rpc_client *cl)
{
    uint64_t d = UINT64_MAX;
    for (session *ch = cl->chans; ch; ch = ch->next) {
        if (ch->inflight && ch->min_deadline < d)
            d = ch->min_deadline;
        if (ch->hs && hs_deadline(ch) < d)
            d = hs_deadline(ch);
    }
    for (const deferred *q = cl->dq; q; q = q->next) {
        if (q->at < d)
            d = q->at;
        if (q->deadline < d)
            d = q->deadline;
    }
    return d;
}

int dhps_rpc_client_poll(dhps_rpc_client *cl, int timeout_ms)
{
    return dhps_rpc_client_poll_ns(cl, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000);
}

/* Should a wait that found nothing ready spin before sleeping? Only with calls in flight
 * (an idle client sleeps at once) and not in the waits that follow a spin that ran out. */
static bool spin_allowed(dhps_rpc_client *cl)
{
    if (!cl->spin_ns)
        return false;
    const session *ch = cl->chans;
    while (ch && (!ch->inflight || ch->broken))
        ch = ch->next;
    if (!ch)
        return false;
    if (cl->spin_skip) {
        cl->spin_skip--;
        return false;
    }
    return true;
}

/* A spinning wait gives its CPU to any other thread ready to run on it at least this
 * often: a thread sharing the CPU waits a few microseconds, not the whole spin, and a
 * thread alone on its CPU pays one cheap system call per interval, not one per turn. */
#define SPIN_YIELD_NS 4000

int dhps_rpc_client_poll_ns(dhps_rpc_client *cl, int64_t timeout_ns)
{
    for (session *ch = cl->chans; ch; ch = ch->next)
        if (ch->lent)
            return -EINVAL;
    uint64_t end = timeout_ns < 0 ? UINT64_MAX : dhps_mono_ns() + (uint64_t)timeout_ns;
    uint32_t spins = 0;
    enum { UNDECIDED, SPINNING, SLEEPING } mode = UNDECIDED;
    uint64_t spin_end = 0, yielded = 0;
    for (;;) {
        int64_t wait = 0;
        uint64_t now = dhps_mono_ns();
        /* shm: 64 cheap turns before anything else (sleeping there costs a handshake
         * with the server); then spin_us with calls in flight; then sleep */
        if (timeout_ns != 0 && (!cl->nshm || ++spins > 64)) {
            if (mode == UNDECIDED) {
                mode = spin_allowed(cl) ? SPINNING : SLEEPING;
                spin_end = now + cl->spin_ns;
                yielded = now;
            }
            if (mode == SPINNING && now >= spin_end) {
                mode = SLEEPING;
                cl->st.spin_misses++;
                cl->spin_skip = 16;
            }
            if (mode == SPINNING) {
                cl->st.spin_turns++;
            } else {
                uint64_t nd = next_deadline(cl), until = end < nd ? end : nd;
                if (until == UINT64_MAX)
                    wait = -1;
                else if (until > now)
                    wait = (int64_t)(until - now);
            }
        }
        int r = turn(cl, wait);
        if (r != 0 || timeout_ns == 0) {
            if (r > 0 && mode == SPINNING)
                cl->st.spin_hits++;
            return r;
        }
        if (mode == SPINNING && now - yielded >= SPIN_YIELD_NS) {
            sched_yield(); /* a thread ready to run on this CPU runs now, not after the spin */
            yielded = now;
        }
        if (dhps_mono_ns() >= end)
            return 0;
    }
}

void dhps_rpc_client_get_stats(const dhps_rpc_client *cl, dhps_rpc_client_stats *st)
{
    *st = cl->st;
}

/* rpc client: channel handles onto shared sessions, and the public channel and call
 * functions over them (the event loop is client.c, opening client_open.c; client_int.h). */
#include "client_int.h"

static int s_transport(const session *ch) { return ch->c.transport; }

static void s_get_stats(const session *ch, dhps_rpc_channel_stats *st)
{
    *st = ch->st;
    st->channels = ch->refs;
    st->doorbells = ch->c.doorbells;
    st->flushes = ch->c.flushes;
}

typedef struct sync_call {
    bool done;
    int status;
    void *resp;
    size_t cap, len;
} sync_call;

static void sync_done(void *arg, int status, const void *resp, size_t len)
{
    sync_call *s = arg;
    s->done = true;
    s->status = status;
    s->len = len;
    if (status == 0) {
        if (len > s->cap) {
            s->status = DHPS_E_TOOBIG;
            len = s->cap;
        }
        if (len)
            memcpy(s->resp, resp, len);
    }
}

static int s_call(session *ch, const void *owner, uint16_t method, const void *req,
                  size_t req_len, void *resp, size_t resp_cap, size_t *resp_len,
                  uint64_t timeout_us)
{
    void *buf;
    int rc;
    uint64_t end = timeout_us ? dhps_mono_ns() + timeout_us * 1000ull : UINT64_MAX;
    while ((rc = s_call_start(ch, method, req_len, &buf)) == DHPS_E_BUSY) {
        if (dhps_mono_ns() >= end)
            return DHPS_E_TIMEOUT;
        dhps_rpc_client_poll(ch->cl, 1);
    }
    if (rc)
        return rc;
    if (req_len)
        memcpy(buf, req, req_len);
    sync_call s = {.resp = resp, .cap = resp_cap};
    uint64_t now = dhps_mono_ns();
    uint64_t left = end == UINT64_MAX ? 0 : (end > now ? (end - now) / 1000 : 1);
    if (left == 0 && end != UINT64_MAX)
        left = 1;
    rc = s_send(ch, owner, req_len, left, sync_done, &s);
    if (rc)
        return rc;
    while (!s.done) {
        /* s lives on this stack: never return before its callback ran (the call
         * carries a deadline when timeout_us > 0, so this ends) */
        (void)dhps_rpc_client_poll(ch->cl, -1);
    }
    if (resp_len)
        *resp_len = s.len;
    return s.status;
}

/* ---- channel handles: sessions shared by channels with the same peer and policy ---- */

static bool shareable(const session *s, const dhps_rpc_channel_params *p)
{
    return !s->broken && !s->exclusive && !p->exclusive && s->port == p->port &&
           s->allow == p->allow && s->require == p->require && s->mixed == p->mixed &&
           s->tls == p->tls && strcmp(s->host, p->host) == 0;
}

/* A handle on a session to the peer: a shared one (ready or opening), else a new one
 * whose open has started. */
static int open_handle(dhps_rpc_client *cl, const dhps_rpc_channel_params *p,
                       dhps_rpc_channel **out)
{
    *out = NULL;
    if (!p || !p->host)
        return DHPS_E_CONFIG;
    dhps_rpc_channel *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    session *s = cl->chans;
    while (s && !shareable(s, p))
        s = s->next;
    if (s) {
        s->refs++;
    } else {
        int rc = s_begin(cl, p, &s);
        if (rc) {
            free(h);
            return rc;
        }
        (void)hs_drive(s); /* a loopback connect may be done already */
    }
    h->s = s;
    h->next = cl->handles;
    if (cl->handles)
        cl->handles->prev = h;
    cl->handles = h;
    *out = h;
    return 0;
}

int dhps_rpc_channel_open(dhps_rpc_client *cl, const dhps_rpc_channel_params *p,
                          dhps_rpc_channel **out)
{
    int rc = open_handle(cl, p, out);
    if (rc)
        return rc;
    session *s = (*out)->s;
    if (s->hs)
        rc = hs_block(s);
    else if (s->broken) /* refused at once */
        rc = s->broken;
    if (rc) {
        dhps_rpc_channel_close(*out);
        *out = NULL;
    }
    return rc;
}

int dhps_rpc_channel_open_async(dhps_rpc_client *cl, const dhps_rpc_channel_params *p,
                                dhps_rpc_channel **out)
{
    return open_handle(cl, p, out);
}

int dhps_rpc_channel_status(const dhps_rpc_channel *h)
{
    return h->s->hs ? -EINPROGRESS : h->s->broken;
}

uint64_t dhps_rpc_channel_ready_ns(const dhps_rpc_channel *h) { return h->s->ready_ns; }

void dhps_rpc_channel_close(dhps_rpc_channel *h)
{
    if (!h)
        return;
    session *s = h->s;
    dhps_rpc_client *cl = s->cl;
    if (s->lent && s->lent_owner == h)
        s_call_abort(s);
    for (uint32_t i = 0; i <= s->mask && s->inflight; i++) /* this channel's calls only */
        if (s->slots[i].id && s->slots[i].owner == h)
            complete(s, i, DHPS_E_CANCELLED, NULL, 0);
    if (cl->dq)
        cancel_deferred(cl, h);
    if (h->prev)
        h->prev->next = h->next;
    else
        cl->handles = h->next;
    if (h->next)
        h->next->prev = h->prev;
    free(h);
    if (--s->refs == 0)
        s_close(s);
}

int dhps_rpc_channel_transport(const dhps_rpc_channel *h) { return s_transport(h->s); }

bool dhps_rpc_channel_tls(const dhps_rpc_channel *h) { return h->s->tls; }

void dhps_rpc_channel_get_stats(const dhps_rpc_channel *h, dhps_rpc_channel_stats *st)
{
    s_get_stats(h->s, st);
}

int dhps_rpc_channel_inject(dhps_rpc_channel *h, int fault) { return s_inject(h->s, fault); }

int dhps_rpc_call_start(dhps_rpc_channel *h, uint16_t method, size_t max_len, void **buf)
{
    int rc = s_call_start(h->s, method, max_len, buf);
    if (rc == 0)
        h->s->lent_owner = h;
    return rc;
}

void dhps_rpc_call_abort(dhps_rpc_channel *h)
{
    if (h->s->lent && h->s->lent_owner == h)
        s_call_abort(h->s);
}

int dhps_rpc_call_send(dhps_rpc_channel *h, size_t len, uint64_t timeout_us,
                       dhps_rpc_done_fn done, void *arg)
{
    if (h->s->lent && h->s->lent_owner != h)
        return -EINVAL;
    return s_send(h->s, h, len, timeout_us, done, arg);
}

int dhps_rpc_call(dhps_rpc_channel *h, uint16_t method, const void *req, size_t req_len,
                  void *resp, size_t resp_cap, size_t *resp_len, uint64_t timeout_us)
{
    return s_call(h->s, h, method, req, req_len, resp, resp_cap, resp_len, timeout_us);
}

/*
 * dhps client: what lookups, updates and deletes share - an op's life (client_op_new pins the
 * map, client_op_release detaches it), planning a batch into per-shard messages, sending one
 * message as one rpc call, classifying and counting its outcome, waiting a poll turn.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static void op_free(struct op *op)
{
    free(op->tl);
    free(op->order);
    free(op->msgs);
    free(op->groups);
    free(op->found);
    while (op->extra) {
        struct msg_block *b = op->extra;
        op->extra = b->next;
        free(b);
    }
    free(op);
}

void client_op_unref(struct op *op)
{
    if (--op->refs == 0)
        op_free(op);
}

/* Outcome of one rpc call: classify, report to the router, count. */
int client_call_outcome(dhps_client *c, struct attempt *a, int status, const void *resp,
                        size_t len, dhps_proto_resp *hdr)
{
    struct msg *ms = a->ms;
    int err = status;
    if (err == 0) {
        if (len < sizeof(dhps_proto_resp)) {
            err = DHPS_E_MALFORMED;
        } else {
            memcpy(hdr, resp, sizeof *hdr); /* responses need not be aligned */
            err = hdr->status;
            if (err > 0)
                err = DHPS_E_MALFORMED;
        }
    }
    uint64_t now = dhps_mono_ns(), from = a->pick.start_ns;
    if (a->wait_open && ms->op->ts && a->pick.node < ms->op->ts->nchans &&
        ms->op->ts->chans[a->pick.node].ch) {
        struct chan *e = &ms->op->ts->chans[a->pick.node];
        /* the open this call waited for has ended: note it now, so a failure's redial
         * backoff runs from the failure, not from the node's next use (a breaker probe
         * seconds later would otherwise find itself inside the backoff and never dial) */
        (void)client_chan_state(c, e, a->pick.node);
        uint64_t ready = dhps_rpc_channel_ready_ns(e->ch);
        if (ready > from && ready <= now)
            from = ready;
    }
    uint64_t lat = now - from;
    if (ms->op->tl && a->tli >= 0) {
        struct tlog *t = &ms->op->tl[(size_t)(ms - ms->op->msgs) * TL_PER_MSG + (size_t)a->tli];
        t->done_us = (int32_t)((dhps_mono_ns() - ms->op->t0) / 1000);
        t->err = (int16_t)err;
    }
    int outcome = err == 0 ? DHPS_CLIENT_OK
                  : err == DHPS_E_TIMEOUT ? DHPS_CLIENT_TIMEOUT : DHPS_CLIENT_ERROR;
    /* "stale" on an update means the replica holds something newer: it answered */
    if (err == DHPS_E_STALE)
        outcome = DHPS_CLIENT_OK;
    struct node_ctr *nc = &c->nodes[a->pick.node];
    /* the other attempt of a hedged pair already answered: this one lost, whatever
     * became of it (answered late, timed out, or cancelled when its call was dropped) */
    int rout = ms->state == M_OK && !ms->op->update ? DHPS_CLIENT_CANCELLED : outcome;
    if (err == DHPS_E_NOTREADY && rout != DHPS_CLIENT_CANCELLED)
        atomic_store_explicit(&nc->not_ready_until_ns, now + CLIENT_NOT_READY_HOLD_NS,
                              memory_order_relaxed);
    /* not ready: no verdict for the router (client_pick holds the node back instead) */
    if (!ms->op->update && !a->reported)
        c->rops->report(c->rself, &a->pick, lat,
                        err == DHPS_E_NOTREADY ? DHPS_CLIENT_CANCELLED : rout);
    a->reported = false;
    if (rout == DHPS_CLIENT_CANCELLED)
        CTR_ADD(nc->cancelled, 1);
    else if (outcome == DHPS_CLIENT_OK)
        CTR_ADD(nc->ok, 1);
    else if (outcome == DHPS_CLIENT_TIMEOUT)
        CTR_ADD(nc->timeouts, 1);
    else
        CTR_ADD(nc->errors, 1);
    if (rout != DHPS_CLIENT_CANCELLED && outcome != DHPS_CLIENT_OK)
        atomic_store_explicit(&nc->last_error, err, memory_order_relaxed);
    /* recovering or catching up: an error, never "absent" (a hedge loser's answer is
     * counted cancelled, as any other loser's: not_ready stays a part of errors) */
    if (err == DHPS_E_NOTREADY && rout != DHPS_CLIENT_CANCELLED) {
        CTR_ADD(nc->not_ready, 1);
        CTR_ADD(c->st.not_ready, 1);
    }
    if (err == DHPS_E_NOTFOUND) {
        CTR_ADD(c->st.not_owned, 1);
        /* a joining node saying so has not applied its map yet: ours is not old */
        if (!ms->op->update || ms->role != SLOT_JOINING)
            ms->op->not_owned = true;
    }
    if (err == DHPS_E_UNREACHABLE && ms->op->ts && a->pick.node < ms->op->ts->nchans)
        ms->op->ts->chans[a->pick.node].broken = true;
    return err;
}

/* Ask for a lent buffer, polling while the ring is busy (bounded by the deadline). */
static int start_call(struct op *op, dhps_rpc_channel *ch, uint16_t method, size_t len, void **buf)
{
    for (;;) {
        int rc = dhps_rpc_call_start(ch, method, len, buf);
        if (rc != DHPS_E_BUSY)
            return rc;
        if (dhps_mono_ns() >= op->deadline_ns)
            return DHPS_E_TIMEOUT;
        dhps_rpc_client_poll(op->ts->rpc, 0);
    }
}

static void fill_hdr(struct op *op, const struct msg *ms, dhps_proto_hdr *h, uint16_t flags)
{
    memset(h, 0, sizeof *h);
    h->version = DHPS_PROTO_VERSION;
    h->flags = flags;
    h->shard = ms->shard;
    memcpy(h->table, op->table, sizeof h->table);
    h->map_version = dhps_cluster_map_version(ms->m); /* servers fence older writes */
}

/* Send message ms as attempt a (node already chosen in a->pick). On a local failure the
 * message is left in M_RETRY (lookup, unless another attempt is in flight) or M_FAILED
 * (update) with err set. */
void client_send_msg(struct op *op, struct msg *ms, struct attempt *a)
{
    dhps_client *c = op->c;
    uint32_t node = a->pick.node;
    dhps_rpc_channel *ch = NULL;
    void *buf = NULL;
    uint64_t now = dhps_mono_ns();
    int rc = now >= op->deadline_ns
                 ? DHPS_E_TIMEOUT
                 : client_channel_get(op->ts, ms->m, node, op->deadline_ns, &ch);
    uint64_t t1 = dhps_mono_ns();
    /* the time spent opening a connection is not the node's answer time: the router's
     * latency sample (and a half-open breaker's probe verdict) starts after it (here
     * for a slow local step, in client_call_outcome for a wait on the hello) */
    if (t1 - now > 100000)
        a->pick.start_ns += t1 - now;
    a->wait_open = rc == 0 && dhps_rpc_channel_status(ch) == -EINPROGRESS;
    struct tlog *tl = NULL;
    a->tli = -1;
    if (op->tl && ms->ntl < TL_PER_MSG) {
        a->tli = (int8_t)ms->ntl;
        tl = &op->tl[(size_t)(ms - op->msgs) * TL_PER_MSG + ms->ntl++];
        tl->node = node;
        tl->kind = a->pick.kind;
        tl->flags = a->pick.flags;
        tl->err = 1;
        tl->sent_us = (int32_t)((now - op->t0) / 1000);
        tl->dial_us = (int32_t)((t1 - now) / 1000);
        tl->done_us = -1;
    }
    if (rc == 0) {
        size_t len;
        if (!op->update) {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_lookup) + 8ull * ms->count;
            rc = start_call(op, ch, DHPS_M_LOOKUP, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, ms, (dhps_proto_hdr *)b, op->want_fp16 ? DHPS_LOOKUP_FP16 : 0);
                dhps_proto_lookup lk = {.n = ms->count};
                memcpy(b + sizeof(dhps_proto_hdr), &lk, sizeof lk);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof lk;
                for (uint32_t j = 0; j < ms->count; j++)
                    memcpy(kp + 8 * j, &op->keys[op->order[ms->first + j]], 8);
            }
        } else if (op->del) {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_delete) + 8ull * ms->count;
            rc = start_call(op, ch, DHPS_M_DELETE, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, ms, (dhps_proto_hdr *)b, 0);
                dhps_proto_delete dl = {.n = ms->count, .version = op->version};
                memcpy(b + sizeof(dhps_proto_hdr), &dl, sizeof dl);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof dl;
                for (uint32_t j = 0; j < ms->count; j++)
                    memcpy(kp + 8 * j, &op->keys[op->order[ms->first + j]], 8);
            }
        } else {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_upsert) +
                  (8ull + op->vb) * ms->count;
            rc = start_call(op, ch, DHPS_M_UPSERT, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, ms, (dhps_proto_hdr *)b, (uint16_t)op->dtype);
                dhps_proto_upsert up = {.n = ms->count, .value_bytes = op->vb,
                                        .version = op->version, .ttl = op->ttl};
                memcpy(b + sizeof(dhps_proto_hdr), &up, sizeof up);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof up;
                uint8_t *vp = kp + 8ull * ms->count;
                for (uint32_t j = 0; j < ms->count; j++) {
                    uint32_t k = op->order[ms->first + j];
                    memcpy(kp + 8 * j, &op->keys[k], 8);
                    memcpy(vp + (size_t)j * op->vb, op->values + (size_t)k * op->vb, op->vb);
                }
            }
        }
        if (rc == 0) {
            uint64_t left_us = (op->deadline_ns - dhps_mono_ns()) / 1000;
            if ((int64_t)(op->deadline_ns - dhps_mono_ns()) <= 0)
                left_us = 1;
            rc = dhps_rpc_call_send(ch, len, left_us ? left_us : 1,
                                    op->update ? client_update_done : client_lookup_done, a);
            if (rc < 0)
                dhps_rpc_call_abort(ch);
        }
        if (rc == DHPS_E_UNREACHABLE && node < op->ts->nchans)
            op->ts->chans[node].broken = true;
    }
    CTR_ADD(c->nodes[node].messages, 1);
    op->messages++;
    if (rc == 0) {
        /* the loop polled while waiting for a send buffer (start_call) or closing a broken
         * channel: the message's other attempt may have answered meanwhile */
        if (ms->state != M_OK)
            ms->state = M_INFLIGHT;
        a->inflight = true;
        ms->ninflight++;
        op->ts->inflight++;
        op->refs++;
        return;
    }
    /* failed before reaching the wire */
    if (tl) {
        tl->err = (int16_t)rc;
        tl->done_us = (int32_t)((dhps_mono_ns() - op->t0) / 1000);
    }
    int outcome = rc == DHPS_E_TIMEOUT ? DHPS_CLIENT_TIMEOUT : DHPS_CLIENT_ERROR;
    if (!op->update && ms->state == M_OK) { /* answered meanwhile: lost before it left */
        CTR_ADD(c->nodes[node].cancelled, 1);
        c->rops->report(c->rself, &a->pick, dhps_mono_ns() - a->pick.start_ns,
                        DHPS_CLIENT_CANCELLED);
        return;
    }
    CTR_ADD(c->nodes[node].errors, 1);
    atomic_store_explicit(&c->nodes[node].last_error, rc, memory_order_relaxed);
    ms->err = rc;
    if (!op->update) {
        c->rops->report(c->rself, &a->pick, dhps_mono_ns() - a->pick.start_ns, outcome);
        if (ms->ninflight == 0)
            ms->state = M_RETRY;
    } else {
        struct group *g = &op->groups[ms->group];
        if (!g->err && ms->role != SLOT_DROPPED)
            g->err = rc;
        ms->state = M_FAILED;
        ms->retry_at = client_update_retry_at(c, rc);
    }
}


/* Sort key indices by shard (counting sort) and cut each shard's run into messages of at
 * most per_msg keys. Fills op->order, op->msgs (count x fanout each) and op->groups. */
int client_plan(struct op *op, size_t n, uint32_t per_msg, uint32_t fanout)
{
    uint32_t S = dhps_cluster_map_nshards(op->m);
    int rc = -ENOMEM;
    uint32_t *cnt = calloc((size_t)S + 1, sizeof *cnt);
    uint32_t *shard_of = malloc((n ? n : 1) * sizeof *shard_of);
    op->order = malloc((n ? n : 1) * sizeof *op->order);
    if (!cnt || !shard_of || !op->order)
        goto out;
    for (size_t i = 0; i < n; i++) {
        shard_of[i] = dhps_cluster_map_shard_of(op->m, op->keys[i]);
        cnt[shard_of[i] + 1]++;
    }
    size_t nchunks = 0;
    for (uint32_t s = 0; s < S; s++)
        nchunks += (cnt[s + 1] + per_msg - 1) / per_msg;
    for (uint32_t s = 0; s < S; s++)
        cnt[s + 1] += cnt[s];
    op->msgs = calloc(nchunks * fanout + 1, sizeof *op->msgs);
    op->groups = calloc(nchunks + 1, sizeof *op->groups);
    if (!op->msgs || !op->groups)
        goto out;
    uint32_t *pos = malloc(((size_t)S + 1) * sizeof *pos);
    if (!pos)
        goto out;
    memcpy(pos, cnt, ((size_t)S + 1) * sizeof *pos);
    for (size_t i = 0; i < n; i++)
        op->order[pos[shard_of[i]]++] = (uint32_t)i;
    free(pos);
    size_t g = 0, mi = 0;
    for (uint32_t s = 0; s < S; s++) {
        for (uint32_t f = cnt[s]; f < cnt[s + 1]; f += per_msg) {
            uint32_t k = cnt[s + 1] - f < per_msg ? cnt[s + 1] - f : per_msg;
            for (uint32_t r = 0; r < fanout; r++) {
                struct msg *ms = &op->msgs[mi++];
                ms->op = op;
                ms->m = op->m;
                ms->shard = s;
                ms->first = f;
                ms->count = k;
                ms->group = (uint32_t)g;
                ms->state = M_IDLE;
            }
            g++;
        }
    }
    op->nmsgs = mi;
    op->ngroups = g;
    rc = 0;
out:
    free(cnt);
    free(shard_of);
    return rc;
}

/* Poll the thread's loop once, waiting at most until the deadline. */
void client_wait_turn(struct op *op, uint64_t wake_ns)
{
    uint64_t until = wake_ns && wake_ns < op->deadline_ns ? wake_ns : op->deadline_ns;
    int64_t left = (int64_t)(until - dhps_mono_ns());
    if (left < 0)
        left = 0;
    if (left > 100000000)
        left = 100000000;
    dhps_rpc_client_poll_ns(op->ts->rpc, left); /* to the ns: a hedge due in 300 us is
                                                   sent then, not at the next ms */
}

/* A new op for one call, with the current map pinned for it (*mr; client_op_release unpins).
 * NULL with *rc (-EINVAL, -ENOMEM) on failure, nothing pinned then. */
struct op *client_op_new(dhps_client *c, const char *table, const uint64_t *keys,
                         uint64_t timeout_us, struct map_ref **mr, int *rc)
{
    if (!c || !table || strlen(table) >= DHPS_TABLE_NAME_MAX) {
        *rc = -EINVAL;
        return NULL;
    }
    struct op *op = calloc(1, sizeof *op);
    struct tstate *ts = op ? client_tstate_get(c) : NULL;
    if (!ts) {
        free(op);
        *rc = -ENOMEM;
        return NULL;
    }
    /* calls detached by an earlier request of this thread may have completed */
    dhps_rpc_client_poll(ts->rpc, 0);
    client_reload(c, false);
    op->c = c;
    op->ts = ts;
    op->refs = 1;
    op->keys = keys;
    strncpy(op->table, table, sizeof op->table - 1);
    op->t0 = dhps_mono_ns();
    op->deadline_ns = op->t0 + (timeout_us ? timeout_us : c->p.default_timeout_us) * 1000ull;
    *mr = client_map_pin(c);
    op->m = (*mr)->m;
    return op;
}

/* The caller is done with op: free it, or leave it to its calls still in flight. */
void client_op_release(struct op *op, struct map_ref *mr)
{
    if (op->not_owned) {
        /* a server said our map is old: look now (with etcd, a get of the map key,
         * rate-limited; the watch would bring the new map too, a little later). The
         * get is bounded by what is left of the call's deadline, within [10, 100] ms. */
        int64_t left_ms = ((int64_t)op->deadline_ns - (int64_t)dhps_mono_ns()) / 1000000;
        uint32_t t = left_ms < 10 ? 10 : left_ms > 100 ? 100 : (uint32_t)left_ms;
        client_map_refresh(op->c, dhps_cluster_map_version(mr->m), t, false);
    }
    op->detached = true;
    for (uint8_t i = 0; i < op->npins; i++)
        client_map_unref(op->pins[i]);
    op->npins = 0;
    client_op_unref(op);
    client_map_unref(mr);
}

/* Keys per message when each costs bytes_per_key of a message (lookups: the response
 * row and a mask bit; writes: key and row). DHPS_E_TOOBIG when not even one fits. */
int client_msg_budget(const dhps_client *c, uint32_t dim, uint32_t bytes_per_key, uint32_t *per_msg)
{
    *per_msg = c ? (c->p.max_msg - 128) / bytes_per_key : 0;
    if (*per_msg > DHPS_PROTO_MAX_KEYS)
        *per_msg = DHPS_PROTO_MAX_KEYS;
    if (c && (dim > (1u << 24) || *per_msg == 0))
        return DHPS_E_TOOBIG;
    return 0;
}

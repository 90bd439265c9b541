/*
 * dhps client: lookups - scatter a batch over shards and replicas, retries, hedges and
 * attempt timeouts, gather rows (fp16/fp32) and the missing mask. Design in
 * include/dhps/client.h ("Lookup").
 */
#include "client_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/route.h"

/* ---- time, fp16 ---------------------------------------------------------------------- */

static float h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
    if (exp == 0) {
        if (man == 0) {
            f = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            f = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        f = sign | 0x7f800000u | (man << 13);
    } else {
        f = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float r;
    memcpy(&r, &f, 4);
    return r;
}

static uint16_t f2h(float v)
{
    uint32_t f;
    memcpy(&f, &v, 4);
    uint32_t sign = (f >> 16) & 0x8000;
    int32_t exp = (int32_t)((f >> 23) & 0xff) - 127 + 15;
    uint32_t man = f & 0x7fffff;
    if (((f >> 23) & 0xff) == 0xff) /* inf / nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) { /* subnormal or zero, round to nearest even */
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, up to inf: correct */
    return (uint16_t)(sign | h);
}

/* Copy one row of dim values from src (src_bytes per value) to dst (dst_bytes). */
static void convert_row(void *dst, int dst_bytes, const void *src, int src_bytes, uint32_t dim)
{
    if (dst_bytes == src_bytes) {
        memcpy(dst, src, (size_t)dim * (size_t)dst_bytes);
    } else if (dst_bytes == 4) {
        const uint8_t *s = src;
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            float f = h2f(h);
            memcpy((uint8_t *)dst + 4 * i, &f, 4);
        }
    } else {
        const uint8_t *s = src;
        for (uint32_t i = 0; i < dim; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            uint16_t h = f2h(f);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
    }
}

void client_lookup_done(void *arg, int status, const void *resp, size_t len)
{
    struct attempt *a = arg;
    struct msg *ms = a->ms;
    struct op *op = ms->op;
    dhps_proto_resp hb, *h = &hb;
    a->inflight = false;
    ms->ninflight--;
    op->ts->inflight--;
    int err = client_call_outcome(op->c, a, status, resp, len, h);
    if (op->detached || ms->state == M_OK) { /* abandoned, or the other attempt won */
        client_op_unref(op);
        return;
    }
    if (err == 0) {
        size_t words = ((size_t)ms->count + 63) / 64;
        uint32_t vb = h->value_bytes;
        int src_bytes = vb == op->dim * 4u ? 4 : vb == op->dim * 2u ? 2 : 0;
        if (h->n != ms->count || !src_bytes ||
            len < sizeof *h + words * 8 + (size_t)ms->count * vb) {
            err = DHPS_E_MALFORMED;
        } else {
            const uint8_t *mask = (const uint8_t *)resp + sizeof *h;
            const uint8_t *rows = mask + words * 8;
            size_t rb = (size_t)op->dim * (size_t)op->out_bytes;
            for (uint32_t j = 0; j < ms->count; j++) {
                uint64_t w;
                memcpy(&w, mask + (j / 64) * 8, 8);
                if (!((w >> (j % 64)) & 1))
                    continue;
                uint32_t k = op->order[ms->first + j];
                convert_row(op->out + (size_t)k * rb, op->out_bytes, rows + (size_t)j * vb,
                            src_bytes, op->dim);
                op->found[k / 64] |= 1ull << (k % 64);
            }
        }
    }
    if (err == 0) {
        ms->state = M_OK;
    } else {
        ms->err = err;
        if (ms->ninflight == 0) /* else the other attempt may still answer */
            ms->state = M_RETRY;
    }
    client_op_unref(op);
}

int client_pick(dhps_client *c, const uint32_t *rep, int nrep, const uint32_t *tried,
                int ntried, int kind, dhps_client_pick *out)
{
    uint32_t ex[2 * MAX_TRIED];
    int nex = 0;
    for (int i = 0; i < ntried && nex < (int)(2 * MAX_TRIED); i++)
        ex[nex++] = tried[i];
    uint64_t now = dhps_mono_ns();
    int held = 0;
    for (int i = 0; i < nrep && nex < (int)(2 * MAX_TRIED); i++)
        if (rep[i] <= c->p.max_node_id &&
            atomic_load_explicit(&c->nodes[rep[i]].not_ready_until_ns, memory_order_relaxed) >
                now) {
            ex[nex++] = rep[i];
            held++;
        }
    int rc = c->rops->pick(c->rself, rep, (size_t)nrep, ex, (size_t)nex, kind, out);
    if (rc < 0 && held) /* only held replicas left: ask one, it may be ready by now */
        rc = c->rops->pick(c->rself, rep, (size_t)nrep, tried, (size_t)ntried, kind, out);
    return rc;
}

/* Lookup: pick a replica for ms (first attempt or retry) and send; or give up. */
static void lookup_attempt(struct op *op, struct msg *ms)
{
    dhps_client *c = op->c;
    const uint32_t *rep;
    int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
    int kind = ms->attempts == 0 ? DHPS_ROUTE_PRIMARY : DHPS_ROUTE_RETRY;
    if (ms->attempts > 0) {
        /* The retry budget guards servers against multiplied load; an attempt that
         * never reached a server (no connection, peer gone) cost it nothing, and a "not
         * ready" answer next to nothing - and its keys must be asked elsewhere, or they
         * go unanswered however healthy the other replicas are. */
        bool free_retry = ms->err == DHPS_E_UNREACHABLE || ms->err == DHPS_E_AUTH ||
                          ms->err == DHPS_E_CANCELLED || ms->err == DHPS_E_NOTREADY;
        if (ms->attempts >= c->p.max_attempts || dhps_mono_ns() >= op->deadline_ns ||
            (!free_retry && c->rops->allow_retry &&
             !c->rops->allow_retry(c->rself, op->deadline_ns))) {
            ms->state = M_FAILED;
            return;
        }
    }
    struct attempt *a = &ms->att[0];
    a->ms = ms;
    int rc = client_pick(c, rep, nrep, ms->tried, ms->ntried, kind, &a->pick);
    if (rc < 0 && ms->ntried > 0 && kind == DHPS_ROUTE_RETRY) {
        /* every replica tried once: start over (a transient failure may have passed) */
        ms->ntried = 0;
        rc = client_pick(c, rep, nrep, NULL, 0, kind, &a->pick);
    }
    if (rc < 0) {
        ms->state = M_FAILED;
        if (!ms->err)
            ms->err = DHPS_E_UNREACHABLE;
        return;
    }
    if (ms->ntried < MAX_TRIED)
        ms->tried[ms->ntried++] = a->pick.node;
    if (ms->attempts++ > 0) {
        op->retries++;
        CTR_ADD(c->st.retries, 1);
    } else {
        CTR_ADD(c->st.sub_batches, 1);
    }
    client_send_msg(op, ms, a);
}

/* Lookup: if ms's only attempt has been out longer than the router's hedge delay, send
 * a hedge to another replica (once per message, within the hedge budget). Returns the
 * time the hedge falls due when it is not due yet, else 0. */
static uint64_t maybe_hedge(struct op *op, struct msg *ms, uint64_t now)
{
    dhps_client *c = op->c;
    struct attempt *a = &ms->att[0];
    if (!op->hedge || ms->hedged || ms->state != M_INFLIGHT || ms->ninflight != 1 ||
        !a->inflight)
        return 0;
    /* a probe of a half-open breaker is hedged at once: the node was failing a moment
     * ago, and the probe must not cost the caller its answer */
    uint64_t due = (a->pick.flags & DHPS_ROUTE_PROBE) && c->rops == &dhps_client_router_route
                       ? a->pick.start_ns
                       : a->pick.start_ns + c->rops->hedge_delay(c->rself, &a->pick);
    if (now < due)
        return due;
    ms->hedged = true;
    if (!c->rops->hedge_acquire(c->rself, op->deadline_ns))
        return 0;
    const uint32_t *rep;
    int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
    struct attempt *h = &ms->att[1];
    h->ms = ms;
    if (client_pick(c, rep, nrep, ms->tried, ms->ntried, DHPS_ROUTE_HEDGE, &h->pick) < 0)
        return 0;
    if (ms->ntried < MAX_TRIED)
        ms->tried[ms->ntried++] = h->pick.node;
    ms->second = true;
    op->hedges++;
    CTR_ADD(c->st.hedges, 1);
    client_send_msg(op, ms, h);
    return 0;
}

/* Lookup: an attempt unanswered for the attempt timeout is reported to the router as
 * timed out now (its breaker and weights learn of a stalled node within a fraction of the
 * deadline, not at its end), and unless the message already has a second attempt it is
 * re-sent to another replica, under the retry budget; the first attempt stays in flight
 * and may still answer first. Returns when the next attempt timeout falls due, or 0. */
static uint64_t attempt_timeouts(struct op *op, struct msg *ms, uint64_t now)
{
    dhps_client *c = op->c;
    if (ms->state != M_INFLIGHT || !op->attempt_ns)
        return 0;
    uint64_t next = 0;
    for (int k = 0; k < 2; k++) {
        struct attempt *a = &ms->att[k];
        if (!a->inflight || a->reported)
            continue;
        uint64_t due = a->pick.start_ns + op->attempt_ns;
        if (now < due) {
            if (!next || due < next)
                next = due;
            continue;
        }
        a->reported = true;
        c->rops->report(c->rself, &a->pick, now - a->pick.start_ns, DHPS_CLIENT_TIMEOUT);
        if (ms->second || ms->ninflight != 1 || ms->attempts >= c->p.max_attempts ||
            now >= op->deadline_ns ||
            (c->rops->allow_retry && !c->rops->allow_retry(c->rself, op->deadline_ns)))
            continue;
        ms->hedged = ms->second = true; /* the second slot is taken */
        const uint32_t *rep;
        int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
        struct attempt *h = &ms->att[1];
        h->ms = ms;
        h->reported = false;
        if (client_pick(c, rep, nrep, ms->tried, ms->ntried, DHPS_ROUTE_RETRY, &h->pick) < 0)
            continue;
        if (ms->ntried < MAX_TRIED)
            ms->tried[ms->ntried++] = h->pick.node;
        ms->attempts++;
        op->retries++;
        CTR_ADD(c->st.retries, 1);
        client_send_msg(op, ms, h);
    }
    return next;
}

static void trace_print(struct op *op, int rc)
{
    dhps_client *c = op->c;
    uint64_t now = dhps_mono_ns();
    fprintf(stderr, "dhps client trace: lookup rc %d (%s), %zu messages, returned after %llu us\n",
            rc, dhps_strerror(rc), op->nmsgs, (unsigned long long)((now - op->t0) / 1000));
    if (c->rops == &dhps_client_router_route) {
        dhps_route_stats rs;
        dhps_route_stats_get(c->rself, &rs);
        fprintf(stderr, "  router: hedges sent %llu, budget exhausted %llu, deadline %llu; "
                "retries %llu, budget exhausted %llu; ejected %u, panics %llu\n",
                (unsigned long long)rs.hedge_sent, (unsigned long long)rs.hedge_budget_exhausted,
                (unsigned long long)rs.hedge_deadline, (unsigned long long)rs.retries,
                (unsigned long long)rs.retry_budget_exhausted, rs.ejected,
                (unsigned long long)rs.panics);
        for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
            if (rs.tier[t].picks)
                fprintf(stderr, "  tier %d: p50 %llu us p95 %llu us\n", t,
                        (unsigned long long)rs.tier[t].p50_ns / 1000,
                        (unsigned long long)rs.tier[t].p95_ns / 1000);
    }
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        bool slow_dial = false;
        for (uint8_t j = 0; j < ms->ntl; j++)
            slow_dial |= op->tl[i * TL_PER_MSG + j].dial_us > 1000;
        if (ms->state == M_OK && !slow_dial)
            continue;
        fprintf(stderr, "  shard %u (%u keys) state %d err %d attempts %u:", ms->shard, ms->count,
                ms->state, ms->err, ms->attempts);
        for (uint8_t j = 0; j < ms->ntl; j++) {
            const struct tlog *t = &op->tl[i * TL_PER_MSG + j];
            fprintf(stderr, " [n%u %s%s sent %d dial %d done %d err %d]", t->node,
                    t->kind == DHPS_ROUTE_HEDGE ? "hedge" : t->kind == DHPS_ROUTE_RETRY ? "retry" : "primary",
                    t->flags & DHPS_ROUTE_PROBE ? "+probe" : "", t->sent_us, t->dial_us,
                    t->done_us, t->err);
        }
        fprintf(stderr, "\n");
        if (c->rops == &dhps_client_router_route) {
            const uint32_t *rep;
            int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
            for (int r = 0; r < nrep; r++) {
                dhps_route_node_stats ns;
                if (dhps_route_node_stats_get(c->rself, rep[r], &ns) == 0)
                    fprintf(stderr, "    n%u: breaker %d in_flight %u peak %.0f us succ %.2f "
                            "weight %.2f picks %llu errors %llu timeouts %llu\n", rep[r],
                            ns.breaker, ns.in_flight, ns.peak_ewma_ns / 1000, ns.success,
                            ns.weight, (unsigned long long)ns.picks,
                            (unsigned long long)ns.errors, (unsigned long long)ns.timeouts);
            }
        }
    }
}

static const float *find_default(dhps_client *c, const char *table, uint32_t dim)
{
    const float *v = NULL;
    pthread_mutex_lock(&c->lock);
    for (struct tdefault *d = c->defaults; d; d = d->next)
        if (!strcmp(d->table, table) && d->dim == dim)
            v = d->vec;
    pthread_mutex_unlock(&c->lock);
    return v;
}

int dhps_client_lookup(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                       uint64_t timeout_us, dhps_client_result *res)
{
    return dhps_client_lookup_masks(c, table, keys, n, out, dim, dtype, missing_mask, NULL,
                                    timeout_us, res);
}

int dhps_client_lookup_masks(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                             void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                             uint64_t *unanswered_mask, uint64_t timeout_us,
                             dhps_client_result *res)
{
    if (res)
        memset(res, 0, sizeof *res);
    if ((dtype != DHPS_FP32 && dtype != DHPS_FP16) || dim == 0 || (n && (!keys || !out)) ||
        n > (1u << 30))
        return -EINVAL;
    uint32_t per_msg;
    int rc = client_msg_budget(c, dim, dim * 4u + 1, &per_msg);
    if (rc)
        return rc;
    struct map_ref *mr;
    struct op *op = client_op_new(c, table, keys, timeout_us, &mr, &rc);
    if (!op)
        return rc;
    CTR_ADD(c->st.lookups, 1);
    CTR_ADD(c->st.keys_looked_up, n);
    op->out = out;
    op->dim = dim;
    op->out_bytes = dtype == DHPS_FP16 ? 2 : 4;
    op->want_fp16 = dtype == DHPS_FP16;
    op->hedge = c->p.hedge && c->rops->hedge_delay && c->rops->hedge_acquire;
    if (c->p.attempt_timeout_us != UINT32_MAX) {
        uint64_t t = c->p.attempt_timeout_us ? (uint64_t)c->p.attempt_timeout_us * 1000ull
                                             : (op->deadline_ns - op->t0) / 4;
        op->attempt_ns = t < 1000000ull ? 1000000ull : t;
    }
    op->found = calloc((n + 63) / 64 + 1, sizeof *op->found);
    if (!op->found || client_plan(op, n, per_msg, 1) < 0) {
        client_op_release(op, mr);
        return -ENOMEM;
    }
    if (c->trace)
        op->tl = calloc(op->nmsgs * TL_PER_MSG + 1, sizeof *op->tl);
    /* send every sub-batch, then poll: a node's messages leave in one flush */
    for (size_t i = 0; i < op->nmsgs; i++)
        lookup_attempt(op, &op->msgs[i]);
    for (;;) {
        bool pending = false;
        uint64_t now = dhps_mono_ns(), wake = 0;
        for (size_t i = 0; i < op->nmsgs; i++) {
            struct msg *ms = &op->msgs[i];
            if (ms->state == M_RETRY)
                lookup_attempt(op, ms); /* another replica, or give up */
            uint64_t due = maybe_hedge(op, ms, now);
            if (due && (!wake || due < wake))
                wake = due;
            due = attempt_timeouts(op, ms, now);
            if (due && (!wake || due < wake))
                wake = due;
            pending |= ms->state == M_INFLIGHT || ms->state == M_RETRY;
        }
        if (!pending || dhps_mono_ns() >= op->deadline_ns)
            break;
        client_wait_turn(op, wake);
    }
    /* gather: defaults for keys not found, masks, counts. Only a message in M_OK was
     * answered, by a replica that was ready (a "not ready" answer is an error and leaves
     * the message to a retry): its keys without a found bit are "absent"; every key of
     * any other message is unanswered, whatever its last attempt met. */
    int first_err = 0;
    size_t unanswered = 0, found = 0;
    if (unanswered_mask)
        memset(unanswered_mask, 0, (n + 63) / 64 * sizeof *unanswered_mask);
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        if (ms->state != M_OK) {
            unanswered += ms->count;
            int e = ms->state == M_INFLIGHT || (ms->err == 0) ? DHPS_E_TIMEOUT : ms->err;
            if (!first_err || (first_err == DHPS_E_TIMEOUT && e != DHPS_E_TIMEOUT))
                first_err = e;
            for (uint32_t j = 0; unanswered_mask && j < ms->count; j++) {
                uint32_t k = op->order[ms->first + j];
                unanswered_mask[k / 64] |= 1ull << (k % 64);
            }
        }
    }
    const float *def = find_default(c, table, dim);
    size_t rb = (size_t)dim * (size_t)op->out_bytes;
    if (missing_mask)
        memset(missing_mask, 0, (n + 63) / 64 * sizeof *missing_mask);
    for (size_t k = 0; k < n; k++) {
        if ((op->found[k / 64] >> (k % 64)) & 1) {
            found++;
            continue;
        }
        if (missing_mask)
            missing_mask[k / 64] |= 1ull << (k % 64);
        uint8_t *row = (uint8_t *)out + k * rb;
        if (def)
            convert_row(row, op->out_bytes, def, 4, dim);
        else
            memset(row, 0, rb);
    }
    rc = unanswered ? first_err : 0;
    if (unanswered)
        CTR_ADD(c->st.partial, 1);
    if (op->tl && (unanswered || dhps_mono_ns() > op->deadline_ns))
        trace_print(op, rc);
    if (res) {
        res->found = found;
        res->missing = n - found;
        res->unanswered = unanswered;
        res->messages = op->messages;
        res->retries = op->retries;
        res->hedges = op->hedges;
    }
    client_op_release(op, mr);
    return rc;
}

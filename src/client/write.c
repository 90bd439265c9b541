/*
 * dhps client: updates and deletes - fan each shard chunk out to every replica, count
 * acknowledgements against the ack policy, re-send after transient failures. Design in
 * include/dhps/client.h ("Update").
 */
#include "client_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>


/* Update messages are re-sent to the same replica (same version: idempotent) after
 * errors that may pass: a dropped connection (after the redial backoff), a handler
 * error, overload, "not ready" (a catching-up replica takes writes, so it should not
 * say so; if it does, it may not a moment later). Not after "not owned", auth, malformed
 * answers or the deadline. */
static bool update_retryable(int err)
{
    return err == DHPS_E_UNREACHABLE || err == DHPS_E_HANDLER || err == DHPS_E_BUSY ||
           err == DHPS_E_CANCELLED || err == DHPS_E_NOTREADY;
}

uint64_t client_update_retry_at(dhps_client *c, int err)
{
    uint64_t backoff = err == DHPS_E_UNREACHABLE ? (uint64_t)c->p.redial_backoff_ms * 1000000ull
                                                 : 1000000ull;
    return dhps_mono_ns() + backoff;
}

void client_update_done(void *arg, int status, const void *resp, size_t len)
{
    struct attempt *a = arg;
    struct msg *ms = a->ms;
    struct op *op = ms->op;
    dhps_proto_resp h;
    a->inflight = false;
    ms->ninflight--;
    op->ts->inflight--;
    int err = client_call_outcome(op->c, a, status, resp, len, &h);
    if (!op->detached) {
        struct group *g = &op->groups[ms->group];
        if (err == 0 || err == DHPS_E_STALE) {
            g->acks++;
            ms->state = M_OK;
        } else {
            g->fails++;
            if (!g->err)
                g->err = err;
            ms->state = M_FAILED;
            ms->err = err;
            ms->retry_at = client_update_retry_at(op->c, err);
        }
    }
    client_op_unref(op);
}

/* Updates and deletes: fan each (shard, chunk) out to every replica, count acks. */
static int write_batch(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res, bool del)
{
    if (res)
        memset(res, 0, sizeof *res);
    if ((dtype != DHPS_FP32 && dtype != DHPS_FP16 && dtype != DHPS_BYTES) ||
        (dim == 0 && !del) || (n && (!keys || (!values && !del))) || n > (1u << 30) ||
        ack < DHPS_ACK_ALL || ack > DHPS_ACK_ONE)
        return -EINVAL;
    uint32_t vb = del ? 0 : dim * (dtype == DHPS_FP32 ? 4u : dtype == DHPS_FP16 ? 2u : 1u);
    uint32_t per_msg;
    int rc = client_msg_budget(c, dim, 8u + vb, &per_msg);
    if (rc)
        return rc;
    struct map_ref *mr;
    struct op *op = client_op_new(c, table, keys, timeout_us, &mr, &rc);
    if (!op)
        return rc;
    CTR_ADD(c->st.updates, 1);
    CTR_ADD(c->st.keys_updated, n);
    op->update = true;
    op->del = del;
    op->values = values;
    op->vb = vb;
    op->dtype = dtype;
    op->ttl = ttl;
    op->version = dhps_client_next_version(c);
    uint32_t R = dhps_cluster_map_nreplicas(op->m);
    if (client_plan(op, n, per_msg, R) < 0) {
        client_op_release(op, mr);
        return -ENOMEM;
    }
    uint32_t needed = ack == DHPS_ACK_ALL ? R : ack == DHPS_ACK_QUORUM ? R / 2 + 1 : 1;
    for (size_t g = 0; g < op->ngroups; g++) {
        op->groups[g].needed = needed;
        op->groups[g].nrep = R;
    }
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        const uint32_t *rep;
        dhps_cluster_map_replicas(op->m, ms->shard, &rep);
        struct attempt *a = &ms->att[0];
        memset(a, 0, sizeof *a);
        a->ms = ms;
        a->pick.node = rep[i % R];
        a->pick.start_ns = dhps_mono_ns();
        ms->attempts = 1;
        CTR_ADD(c->st.sub_batches, 1);
        client_send_msg(op, ms, a);
    }
    for (;;) {
        bool pending = false;
        uint64_t now = dhps_mono_ns(), wake = 0;
        for (size_t i = 0; i < op->nmsgs; i++) {
            struct msg *ms = &op->msgs[i];
            struct group *gr = &op->groups[ms->group];
            if (ms->state != M_FAILED || gr->acks >= gr->needed || now >= op->deadline_ns ||
                ms->attempts >= c->p.max_attempts || !update_retryable(ms->err))
                continue;
            if (now < ms->retry_at) {
                pending = true; /* this group may still get there */
                if (!wake || ms->retry_at < wake)
                    wake = ms->retry_at;
                continue;
            }
            gr->fails--;
            ms->attempts++;
            ms->att[0].pick.start_ns = now;
            op->retries++;
            CTR_ADD(c->st.retries, 1);
            client_send_msg(op, ms, &ms->att[0]);
        }
        for (size_t g = 0; g < op->ngroups; g++) {
            struct group *gr = &op->groups[g];
            if (gr->acks < gr->needed && gr->acks + (gr->nrep - gr->acks - gr->fails) >= gr->needed)
                pending = true;
        }
        if (!pending || dhps_mono_ns() >= op->deadline_ns)
            break;
        client_wait_turn(op, wake);
    }
    int first_err = 0;
    size_t failed = 0;
    if (failed_mask)
        memset(failed_mask, 0, (n + 63) / 64 * sizeof *failed_mask);
    for (size_t i = 0; i < op->nmsgs; i += R) {
        struct group *gr = &op->groups[op->msgs[i].group];
        if (gr->acks >= gr->needed)
            continue;
        int e = gr->err ? gr->err : DHPS_E_TIMEOUT;
        if (!first_err || (first_err == DHPS_E_TIMEOUT && e != DHPS_E_TIMEOUT))
            first_err = e;
        struct msg *ms = &op->msgs[i];
        failed += ms->count;
        if (failed_mask)
            for (uint32_t j = 0; j < ms->count; j++) {
                uint32_t k = op->order[ms->first + j];
                failed_mask[k / 64] |= 1ull << (k % 64);
            }
    }
    if (failed)
        CTR_ADD(c->st.update_shortfalls, 1);
    if (res) {
        res->missing = failed;
        res->unanswered = failed;
        res->found = n - failed;
        res->messages = op->messages;
        res->retries = op->retries;
        res->version = op->version;
    }
    rc = failed ? first_err : 0;
    client_op_release(op, mr);
    return rc;
}

int dhps_client_update(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res)
{
    return write_batch(c, table, keys, values, n, dim, dtype, ttl, ack, timeout_us, failed_mask,
                       res, false);
}

int dhps_client_delete(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res)
{
    return write_batch(c, table, keys, NULL, n, 0, DHPS_FP32, 0, ack, timeout_us, failed_mask,
                       res, true);
}

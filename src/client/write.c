/*
 * dhps client: updates and deletes - fan each shard chunk out to its holders (serving
 * replicas and joining nodes), count acknowledgements against the ack policy, re-send
 * after transient failures, re-route to a newer map after DHPS_E_MOVED. Design in
 * include/dhps/client.h ("Update", "Membership").
 */
#include "client_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Update messages are re-sent to the same node (same version: idempotent) after errors
 * that may pass: a dropped connection (after the redial backoff), a handler error,
 * overload, "not ready" (a catching-up replica takes writes, so it should not say so;
 * if it does, it may not a moment later), and "not owned" from a joining node (it has
 * not applied the map that added it yet: it follows the same etcd key, a moment
 * behind). Not after "not owned" from a replica, auth, malformed answers or the
 * deadline. DHPS_E_MOVED is handled apart (write_step): the message is re-sent with a
 * newer map, never with the one the node refused. */
static bool update_retryable(int err, uint8_t role)
{
    return err == DHPS_E_UNREACHABLE || err == DHPS_E_HANDLER || err == DHPS_E_BUSY ||
           err == DHPS_E_CANCELLED || err == DHPS_E_NOTREADY ||
           (err == DHPS_E_NOTFOUND && role == SLOT_JOINING);
}

uint64_t client_update_retry_at(dhps_client *c, int err)
{
    uint64_t backoff = err == DHPS_E_UNREACHABLE ? (uint64_t)c->p.redial_backoff_ms * 1000000ull
                       : err == DHPS_E_NOTFOUND  ? CLIENT_JOIN_RETRY_NS
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
            ms->state = M_OK;
        } else {
            ms->state = M_FAILED;
            ms->err = err;
            ms->retry_at = client_update_retry_at(op->c, err);
            /* only a refusal of the group's own map says that map is old; a message
             * sent with an older one (before a re-route) is simply re-sent. "Not
             * owned" says so too (the node no longer holds the shard: a flip), unless
             * the table is unknown - the refresh then finds nothing newer. */
            if (ms->role != SLOT_DROPPED && ms->m == g->m) {
                if (err == DHPS_E_MOVED ||
                    (err == DHPS_E_NOTFOUND && !g->moved && ms->role != SLOT_JOINING))
                    g->moved = err;
                if (!g->err)
                    g->err = err;
            }
        }
    }
    client_op_unref(op);
}

/* The holders of shard s in m: its serving replicas, then its joining nodes (catching
 * up to replace a replica: they take every write, serve no lookup). Fills
 * nodes[] / roles[] (capacity 2 * DHPS_CLUSTER_MAX_REPLICAS) and returns the count;
 * *nrep, *njoin get the two parts. */
static uint32_t holders(const dhps_cluster_map *m, uint32_t s, uint32_t *nodes, uint8_t *roles,
                        uint32_t *nrep, uint32_t *njoin)
{
    const uint32_t *rep;
    int r = dhps_cluster_map_replicas(m, s, &rep);
    uint32_t n = 0;
    for (int i = 0; i < r; i++) {
        nodes[n] = rep[i];
        roles[n++] = SLOT_REPLICA;
    }
    *nrep = n;
    const dhps_cluster_join *j;
    int nj = dhps_cluster_map_joining(m, s, &j);
    for (int i = 0; i < nj && n < 2 * DHPS_CLUSTER_MAX_REPLICAS; i++) {
        nodes[n] = j[i].node;
        roles[n++] = SLOT_JOINING;
    }
    *njoin = n - *nrep;
    return n;
}

/* Replica acknowledgements the policy asks for out of R serving replicas. */
static uint32_t policy_needed(int ack, uint32_t R)
{
    return ack == DHPS_ACK_ALL ? R : ack == DHPS_ACK_QUORUM ? R / 2 + 1 : 1;
}

/* A failed message that is re-sent with the group's map: refused as routed with an older
 * map (a re-route happened since it left). */
static bool stale_moved(const struct group *g, const struct msg *ms)
{
    return ms->state == M_FAILED && ms->err == DHPS_E_MOVED && ms->m != g->m;
}

/* Send (or re-send) ms to its node with its group's map. */
static void write_send(struct op *op, struct msg *ms, uint64_t now)
{
    ms->m = op->groups[ms->group].m;
    struct attempt *a = &ms->att[0];
    memset(a, 0, sizeof *a);
    a->ms = ms;
    a->pick.node = ms->node;
    a->pick.start_ns = now;
    client_send_msg(op, ms, a);
}

struct tally {
    uint32_t acks[2], alive[2]; /* [SLOT_REPLICA], [SLOT_JOINING]: acknowledged; and
                                   acknowledged or still able to (in flight, due a
                                   re-send) */
};

static void tally(const struct op *op, const struct group *g, uint64_t now, struct tally *t)
{
    memset(t, 0, sizeof *t);
    for (const struct msg *ms = g->head; ms; ms = ms->next) {
        if (ms->role == SLOT_DROPPED)
            continue;
        bool alive = ms->state != M_FAILED || stale_moved(g, ms) ||
                     (update_retryable(ms->err, ms->role) && ms->attempts < op->c->p.max_attempts &&
                      now < op->deadline_ns);
        t->acks[ms->role] += ms->state == M_OK;
        t->alive[ms->role] += alive;
    }
}

static bool satisfied(const struct group *g, const struct tally *t)
{
    return t->acks[SLOT_REPLICA] >= g->needed &&
           (!g->need_join || t->acks[SLOT_JOINING] >= g->njoin);
}

static bool reachable(const struct group *g, const struct tally *t)
{
    return t->alive[SLOT_REPLICA] >= g->needed &&
           (!g->need_join || t->alive[SLOT_JOINING] >= g->njoin);
}

/* Route group g with map m2 (newer): its messages to nodes that still hold the shard
 * keep their state (an acknowledgement counts, one in flight may still give one, a
 * failed one is re-sent now with m2), the others are dropped (no longer counted), and
 * nodes new to the holder set get a message. Returns 0 or -ENOMEM. */
static int reroute(struct op *op, struct group *g, const dhps_cluster_map *m2, int ack,
                   uint64_t now)
{
    uint32_t nodes[2 * DHPS_CLUSTER_MAX_REPLICAS];
    uint8_t roles[2 * DHPS_CLUSTER_MAX_REPLICAS];
    bool have[2 * DHPS_CLUSTER_MAX_REPLICAS] = {false};
    uint32_t nrep, njoin;
    uint32_t n = holders(m2, g->head->shard, nodes, roles, &nrep, &njoin);
    struct msg *tail = NULL;
    for (struct msg *ms = g->head; ms; ms = ms->next) {
        tail = ms;
        ms->role = SLOT_DROPPED;
        for (uint32_t i = 0; i < n; i++)
            if (nodes[i] == ms->node) {
                ms->role = roles[i];
                have[i] = true;
            }
    }
    uint32_t add = 0;
    for (uint32_t i = 0; i < n; i++)
        add += !have[i];
    struct msg_block *b = NULL;
    if (add) {
        b = calloc(1, sizeof *b + add * sizeof(struct msg));
        if (!b)
            return -ENOMEM;
        b->next = op->extra;
        op->extra = b;
    }
    g->m = m2;
    g->nrep = nrep;
    g->njoin = njoin;
    g->needed = policy_needed(ack, nrep);
    g->need_join = ack == DHPS_ACK_ALL;
    g->moved = 0;
    g->err = 0;
    g->reroutes++;
    CTR_ADD(op->c->st.moved, 1);
    for (struct msg *ms = g->head; ms; ms = ms->next)
        if (ms->role != SLOT_DROPPED && ms->state == M_FAILED) {
            ms->attempts = 1;
            write_send(op, ms, now);
        }
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (have[i])
            continue;
        struct msg *ms = &b->ms[k++];
        *ms = *g->head; /* shard, keys, group */
        ms->next = NULL;
        ms->node = nodes[i];
        ms->role = roles[i];
        ms->state = M_IDLE;
        ms->err = 0;
        ms->attempts = 1;
        ms->ninflight = 0;
        tail->next = ms;
        tail = ms;
        CTR_ADD(op->c->st.sub_batches, 1);
        write_send(op, ms, now);
    }
    return 0;
}

/* The newest map this op routes with: the last one pinned by a re-route, else its own. */
static const dhps_cluster_map *op_newest(const struct op *op)
{
    return op->npins ? op->pins[op->npins - 1]->m : op->m;
}

/* Group g can no longer be satisfied with its map, and a message of it was refused
 * DHPS_E_MOVED or "not owned": find a newer map (one this op already pinned, else
 * refresh now - at most once per wait turn (*refreshed), CLIENT_MAX_REROUTES times per
 * call; after "not owned" alone without waiting for another thread's refresh and, with
 * etcd, rate-limited: it is also the answer for an unknown table) and re-route g to
 * it. Returns true when g was re-routed. */
static bool try_reroute(struct op *op, struct group *g, int ack, bool *refreshed, uint64_t now)
{
    dhps_client *c = op->c;
    if (g->reroutes >= CLIENT_MAX_REROUTES || now >= op->deadline_ns)
        return false;
    const dhps_cluster_map *m2 = op_newest(op);
    if (dhps_cluster_map_version(m2) <= dhps_cluster_map_version(g->m) && !*refreshed &&
        op->refreshes < CLIENT_MAX_REROUTES && op->npins < CLIENT_MAX_REROUTES) {
        *refreshed = true;
        op->refreshes++;
        uint64_t left_ms = (op->deadline_ns - now) / 1000000;
        uint32_t t = left_ms < 1 ? 1 : left_ms > 1000 ? 1000 : (uint32_t)left_ms;
        bool wait = g->moved == DHPS_E_MOVED;
        if (client_map_refresh(c, dhps_cluster_map_version(m2), t, wait) == 1) {
            struct map_ref *r = client_map_pin(c);
            if (dhps_cluster_map_version(r->m) > dhps_cluster_map_version(m2)) {
                op->pins[op->npins++] = r;
                m2 = r->m;
            } else {
                client_map_unref(r);
            }
        }
    }
    /* a chunk's keys stay in one shard only while the shard count does */
    if (dhps_cluster_map_version(m2) <= dhps_cluster_map_version(g->m) ||
        dhps_cluster_map_nshards(m2) != dhps_cluster_map_nshards(op->m))
        return false;
    return reroute(op, g, m2, ack, now) == 0;
}

/* One pass over the groups: re-send what may be re-sent, re-route what was refused as
 * routed with an old map. Returns whether any group may still get its acknowledgements;
 * *wake: the earliest backoff end (0 = none). */
static bool write_step(struct op *op, int ack, uint64_t *wake)
{
    dhps_client *c = op->c;
    bool pending = false, refreshed = false;
    uint64_t now = dhps_mono_ns();
    for (size_t gi = 0; gi < op->ngroups; gi++) {
        struct group *g = &op->groups[gi];
        struct tally t;
        if (g->dead)
            continue;
        tally(op, g, now, &t);
        if (satisfied(g, &t))
            continue;
        for (struct msg *ms = g->head; ms; ms = ms->next) {
            if (ms->role == SLOT_DROPPED || ms->state != M_FAILED || now >= op->deadline_ns)
                continue;
            if (stale_moved(g, ms)) { /* refused under the old map: send with g's */
                ms->attempts = 1;
                write_send(op, ms, now);
                continue;
            }
            if (ms->attempts >= c->p.max_attempts || !update_retryable(ms->err, ms->role))
                continue;
            if (now < ms->retry_at) {
                if (!*wake || ms->retry_at < *wake)
                    *wake = ms->retry_at;
                continue;
            }
            ms->attempts++;
            op->retries++;
            CTR_ADD(c->st.retries, 1);
            write_send(op, ms, now);
        }
        tally(op, g, now, &t);
        if (satisfied(g, &t))
            continue;
        if (reachable(g, &t)) {
            pending = true;
            continue;
        }
        if (!g->moved)
            continue; /* short for good: its error stands */
        if (try_reroute(op, g, ack, &refreshed, now)) {
            pending = true;
        } else {
            g->dead = true;
            g->err = g->moved;
        }
    }
    return pending;
}

/* Are all n*dim values of dtype finite? DHPS_BYTES rows are opaque. */
static bool rows_finite(const void *values, size_t n, uint32_t dim, int dtype)
{
    return dtype == DHPS_FP32   ? dhps_f32_all_finite(values, n * dim)
           : dtype == DHPS_FP16 ? dhps_f16_all_finite(values, n * dim)
                                : true;
}

/* Updates and deletes: fan each (shard, chunk) out to its holders, count acks. */
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
    if (!del && !c->p.allow_nonfinite && !rows_finite(values, n, dim, dtype))
        return -EDOM;
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
    /* room for the most holders any shard has: R replicas + its joining nodes (the
     * joining list is sorted by shard: count its longest run, O(moves in flight)) */
    uint32_t nodes[2 * DHPS_CLUSTER_MAX_REPLICAS];
    uint8_t roles[2 * DHPS_CLUSTER_MAX_REPLICAS];
    uint32_t nrep, njoin, maxj = 0, run = 0;
    for (size_t i = 0; i < dhps_cluster_map_njoining(op->m); i++) {
        const dhps_cluster_join *j = dhps_cluster_map_join_at(op->m, i);
        run = i && j->shard == dhps_cluster_map_join_at(op->m, i - 1)->shard ? run + 1 : 1;
        maxj = run > maxj ? run : maxj;
    }
    uint32_t F = dhps_cluster_map_nreplicas(op->m) + maxj;
    if (client_plan(op, n, per_msg, F) < 0) {
        client_op_release(op, mr);
        return -ENOMEM;
    }
    uint64_t now = dhps_mono_ns();
    for (size_t gi = 0; gi < op->ngroups; gi++) {
        struct group *g = &op->groups[gi];
        struct msg *slots = &op->msgs[gi * F];
        uint32_t h = holders(op->m, slots[0].shard, nodes, roles, &nrep, &njoin);
        if (h > F) /* cannot happen: every shard lists R replicas (map validation) */
            h = F;
        g->m = op->m;
        g->nrep = nrep;
        g->njoin = njoin;
        g->needed = policy_needed(ack, nrep);
        g->need_join = ack == DHPS_ACK_ALL;
        g->head = &slots[0];
        for (uint32_t i = 0; i < h; i++) {
            struct msg *ms = &slots[i];
            ms->next = i + 1 < h ? &slots[i + 1] : NULL;
            ms->node = nodes[i];
            ms->role = roles[i];
            ms->attempts = 1;
            CTR_ADD(c->st.sub_batches, 1);
            write_send(op, ms, now);
        }
    }
    for (;;) {
        uint64_t wake = 0;
        bool pending = write_step(op, ack, &wake);
        if (!pending || dhps_mono_ns() >= op->deadline_ns)
            break;
        client_wait_turn(op, wake);
    }
    int first_err = 0;
    size_t failed = 0;
    if (failed_mask)
        memset(failed_mask, 0, (n + 63) / 64 * sizeof *failed_mask);
    now = dhps_mono_ns();
    for (size_t gi = 0; gi < op->ngroups; gi++) {
        struct group *g = &op->groups[gi];
        struct tally t;
        tally(op, g, now, &t);
        if (satisfied(g, &t))
            continue;
        int e = g->err ? g->err : DHPS_E_TIMEOUT;
        if (!first_err || (first_err == DHPS_E_TIMEOUT && e != DHPS_E_TIMEOUT))
            first_err = e;
        struct msg *ms = g->head;
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

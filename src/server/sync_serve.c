/* Replica sync, serving side: SYNC_DIGEST answers a store's digests, SYNC_FETCH streams
 * a point-in-time export kept per requester session. See sync.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dhps/log.h"
#include "sync_int.h"
#include "util.h"

#define LOGM "sync"

/* ---- serving side ------------------------------------------------------------------ */

void sync_session_free(sync_session *x)
{
    free(x->head);
    free(x->recs);
    memset(x, 0, sizeof *x);
}

static bool in_mask(const uint64_t *mask, uint32_t nranges, uint64_t key)
{
    if (!mask)
        return true;
    uint32_t r = dhps_store_key_range(key, nranges);
    return (mask[r / 64] >> (r % 64)) & 1;
}

typedef struct tomb_collect {
    const uint64_t *mask;
    uint32_t nranges;
    uint64_t min_version;
    uint64_t *out; /* pairs */
    size_t n, cap;
    bool oom;
} tomb_collect;

static void collect_one(void *arg, uint64_t key, uint64_t version)
{
    tomb_collect *t = arg;
    if (t->oom || version < t->min_version || !in_mask(t->mask, t->nranges, key))
        return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        uint64_t *o = realloc(t->out, cap * 16);
        if (!o) {
            t->oom = true;
            return;
        }
        t->out = o;
        t->cap = cap;
    }
    t->out[2 * t->n] = key;
    t->out[2 * t->n + 1] = version;
    t->n++;
}

/* Take a point-in-time export of st (selected ranges, versions >= min_version):
 * tombstones and records under one hold of the writer lock. */
static int build_export(dhps_server *s, srv_store *st, const uint64_t *mask, uint32_t nranges,
                        uint64_t min_version, sync_session *x)
{
    tomb_collect tc = {.mask = mask, .nranges = nranges, .min_version = min_version};
    uint64_t recs = 0;
    pthread_mutex_lock(&st->mu);
    srv_tomb_each(&st->tomb, collect_one, &tc);
    int rc = tc.oom ? -ENOMEM
                    : dhps_store_export_since(st->st, mask, nranges, min_version, &x->recs,
                                              &x->recs_len, &recs);
    pthread_mutex_unlock(&st->mu);
    if (rc == 0) {
        x->head_len = SYNC_HDR + tc.n * 16;
        if (!(x->head = malloc(x->head_len))) {
            rc = -ENOMEM;
        } else {
            memcpy(x->head, SYNC_MAGIC, 8);
            uint64_t n = tc.n, h = XXH3_64bits(tc.out, tc.n * 16);
            memcpy(x->head + 8, &n, 8);
            memcpy(x->head + 16, &h, 8);
            if (tc.n)
                memcpy(x->head + SYNC_HDR, tc.out, tc.n * 16);
        }
    }
    free(tc.out);
    if (rc) {
        sync_session_free(x);
        return rc;
    }
    x->st = st;
    add(&s->sync->exports, 1);
    add(&s->sync->export_bytes, x->head_len + x->recs_len);
    return 0;
}

static int handle_digest(dhps_server *s, srv_store *st, const srv_msg *m, dhps_rpc_request *r)
{
    size_t need = sizeof(dhps_proto_resp) + (size_t)m->nranges * 16;
    if (need > r->resp_cap) {
        srv_resp_error(r, DHPS_E_TOOBIG, "digest of %u ranges exceeds the max message",
                       m->nranges);
        return DHPS_E_TOOBIG;
    }
    /* the digest is computed in aligned memory and copied out: the response sits in
     * the transport's send buffer at whatever offset the frames before it left */
    uint64_t *hash = malloc((size_t)m->nranges * 16 + 8);
    if (!hash) {
        srv_resp_error(r, -ENOMEM, "digest of %u ranges: out of memory", m->nranges);
        return -ENOMEM;
    }
    pthread_mutex_lock(&st->mu);
    int rc = dhps_store_digest(st->st, m->nranges, hash, hash + m->nranges);
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        free(hash);
        srv_resp_error(r, rc, "digest: %s", dhps_strerror(rc));
        return rc;
    }
    memcpy((uint8_t *)r->resp + sizeof(dhps_proto_resp), hash, (size_t)m->nranges * 16);
    free(hash);
    dhps_proto_resp h = {.status = 0, .n = m->nranges};
    memcpy(r->resp, &h, sizeof h);
    r->resp_len = need;
    (void)s;
    return 0;
}

/* Copy [off, off + n) of the session's two pieces to dst. */
static void session_read(const sync_session *x, uint64_t off, uint8_t *dst, size_t n)
{
    if (off < x->head_len) {
        size_t k = x->head_len - off < n ? (size_t)(x->head_len - off) : n;
        memcpy(dst, x->head + off, k);
        dst += k;
        n -= k;
        off += k;
    }
    if (n)
        memcpy(dst, (const uint8_t *)x->recs + (off - x->head_len), n);
}

static int handle_fetch(dhps_server *s, srv_store *st, const srv_msg *m, dhps_rpc_request *r)
{
    srv_sync *y = s->sync;
    const size_t hdr = sizeof(dhps_proto_resp) + sizeof(dhps_proto_sync_chunk);
    if (r->resp_cap < hdr + 4096) {
        srv_resp_error(r, DHPS_E_TOOBIG, "max message too small for sync chunks");
        return DHPS_E_TOOBIG;
    }
    uint64_t mask_copy[DHPS_PROTO_SYNC_MAX_RANGES / 64];
    const uint64_t *mask = NULL;
    if (m->range_mask) {
        memcpy(mask_copy, m->range_mask, (size_t)(m->nranges + 63) / 64 * 8);
        mask = mask_copy;
    }
    sync_session fresh = {0};
    if (m->offset == 0) { /* a new export, taken outside the sessions lock */
        int rc = build_export(s, st, mask, m->nranges, m->min_version, &fresh);
        if (rc) {
            srv_resp_error(r, rc, "sync export of table %s shard %u: %s", st->t->c.name,
                           st->shard, dhps_strerror(rc));
            return rc;
        }
        fresh.id = m->session;
    }
    uint64_t now = dhps_mono_ns();
    pthread_mutex_lock(&y->mu);
    sync_session *x = NULL, *oldest = &y->sess[0];
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++) {
        sync_session *c = &y->sess[i];
        if (c->id == m->session && c->st == st)
            x = c;
        if (!c->id || (oldest->id && c->last_ns < oldest->last_ns))
            oldest = c;
    }
    if (m->offset == 0) {
        if (!x) {
            x = oldest;
            if (x->id)
                DHPS_LOG(DHPS_LOG_WARN, LOGM, "more than %d sync exports at once: dropping the "
                         "least recently read", SYNC_MAX_SESSIONS);
        }
        sync_session_free(x);
        *x = fresh;
    }
    if (!x) {
        pthread_mutex_unlock(&y->mu);
        srv_resp_error(r, DHPS_E_NOTFOUND, "sync session %llx unknown or expired; start again "
                       "at offset 0", (unsigned long long)m->session);
        return DHPS_E_NOTFOUND;
    }
    uint64_t total = x->head_len + x->recs_len;
    if (m->offset > total) {
        pthread_mutex_unlock(&y->mu);
        srv_resp_error(r, DHPS_E_MALFORMED, "sync offset %llu past the export's %llu bytes",
                       (unsigned long long)m->offset, (unsigned long long)total);
        return DHPS_E_MALFORMED;
    }
    size_t room = r->resp_cap - hdr;
    if (room > m->max_bytes)
        room = m->max_bytes;
    size_t n = total - m->offset < room ? (size_t)(total - m->offset) : room;
    uint8_t *o = (uint8_t *)r->resp;
    session_read(x, m->offset, o + hdr, n);
    x->last_ns = now;
    if (m->offset + n == total)
        sync_session_free(x);
    pthread_mutex_unlock(&y->mu);
    dhps_proto_resp h = {.status = 0, .n = (uint32_t)n};
    dhps_proto_sync_chunk ck = {.total = total, .offset = m->offset};
    memcpy(o, &h, sizeof h);
    memcpy(o + sizeof h, &ck, sizeof ck);
    r->resp_len = hdr + n;
    return 0;
}

int srv_sync_handle(dhps_server *s, const srv_msg *m, dhps_rpc_request *r)
{
    int status;
    uint64_t applied = __atomic_load_n(&s->map_version, __ATOMIC_ACQUIRE);
    if (m->map_version > applied) {
        /* the requester routes with a map we have not applied: our fence may not cover
         * it yet, so an export now could miss writes sent to us only (spec: retry) */
        srv_resp_error(r, DHPS_E_NOTREADY, "node %s has applied map version %llu, the sync "
                       "request was routed with %llu; retry shortly", s->cfg->node_id,
                       (unsigned long long)applied, (unsigned long long)m->map_version);
        return DHPS_E_NOTREADY;
    }
    srv_store *st = srv_find_store(s, m, r, &status);
    if (!st)
        return status;
    if (!s->sync) {
        srv_resp_error(r, DHPS_E_NOTFOUND, "sync is not set up on node %s", s->cfg->node_id);
        return DHPS_E_NOTFOUND;
    }
    return m->method == DHPS_M_SYNC_DIGEST ? handle_digest(s, st, m, r)
                                           : handle_fetch(s, st, m, r);
}

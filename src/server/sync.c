/* Replica catch-up and anti-entropy: see sync.h and docs/server.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dhps/cluster.h"
#include "dhps/log.h"
#include "srv_int.h"
#include "sync.h"
#include "util.h"

#define LOGM "sync"
#define SYNC_MAGIC "DHPSSYN1"
#define SYNC_HDR 24u               /* magic | u64 tombstones | u64 xxh3 of them */
#define SYNC_MAX_SESSIONS 32
#define SYNC_SESSION_IDLE_NS (30ull * 1000000000ull)
#define SYNC_MAX_ROUNDS 5
#define SYNC_CALL_TIMEOUT_US (30ull * 1000000ull) /* one chunk; the first includes the export */

/* One export being read by a peer: tombstone section, then the store's export. */
typedef struct sync_session {
    uint64_t id;
    const srv_store *st;
    uint8_t *head;     /* SYNC_HDR + 16 * ntomb bytes */
    size_t head_len;
    void *recs;        /* dhps_store_export buffer */
    size_t recs_len;
    uint64_t last_ns;
} sync_session;

typedef struct sync_peer {
    dhps_rpc_channel *ch;
    uint64_t retry_ns;   /* do not dial before */
    bool given_up;       /* unreachable past peer_wait_s: skipped by catch-up */
    int last_err;
} sync_peer;

struct srv_sync {
    dhps_server *s;
    dhps_cluster_map *map;
    uint32_t self, nranges;
    pthread_mutex_t mu; /* sessions */
    sync_session sess[SYNC_MAX_SESSIONS];
    /* pulling thread */
    pthread_t thr;
    bool running;
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    bool stop;
    dhps_rpc_client *rc;   /* owned by the thread */
    sync_peer *peers;      /* by node id, max_node_id + 1 */
    uint32_t *done;        /* per store: bit j = replica j of its shard caught up */
    uint64_t seed;
    /* progress and counters (atomics) */
    uint64_t t_start_ns, t_ready_ns;
    uint32_t stores_sync, pending;
    uint64_t exports, export_bytes, fetched_bytes, merged, stale, tombs_applied;
    uint64_t rounds, ranges_repaired, ae_passes, ae_records, peer_errors, peers_skipped;
};

static void st_set_ready(srv_store *st)
{
    __atomic_store_n(&st->ready, true, __ATOMIC_RELEASE);
}

int srv_sync_create(dhps_server *s, srv_sync **out, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    *out = NULL;
    srv_sync *y = calloc(1, sizeof *y);
    if (!y)
        return -ENOMEM;
    y->s = s;
    y->self = c->map_node;
    y->nranges = c->sync_ranges ? c->sync_ranges : 256;
    pthread_mutex_init(&y->mu, NULL);
    pthread_mutex_init(&y->wmu, NULL);
    pthread_cond_init(&y->wcv, NULL);
    if (getrandom(&y->seed, sizeof y->seed, 0) != (ssize_t)sizeof y->seed)
        y->seed = dhps_mono_ns() ^ (uint64_t)(uintptr_t)y;
    y->done = calloc(s->nstores ? s->nstores : 1, sizeof *y->done);
    if (!y->done) {
        srv_sync_destroy(y);
        return -ENOMEM;
    }
    if (c->cluster_map && c->sync_enabled) {
        int rc = dhps_cluster_map_load(c->cluster_map, &y->map, err, errlen);
        if (rc) {
            srv_sync_destroy(y);
            return rc;
        }
        y->peers = calloc(dhps_cluster_map_max_node_id(y->map) + 1, sizeof *y->peers);
        if (!y->peers) {
            srv_sync_destroy(y);
            return -ENOMEM;
        }
    }
    for (uint32_t i = 0; i < s->nstores; i++) {
        srv_store *st = &s->stores[i];
        const uint32_t *ids;
        int nr = y->map ? dhps_cluster_map_replicas(y->map, st->shard, &ids) : 0;
        bool peers = false;
        for (int j = 0; j < nr; j++)
            peers |= ids[j] != y->self;
        if (peers)
            y->stores_sync++;
        else
            st_set_ready(st);
    }
    y->pending = y->stores_sync;
    *out = y;
    return 0;
}

/* ---- serving side ------------------------------------------------------------------ */

static void session_free(sync_session *x)
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
    uint64_t *out; /* pairs */
    size_t n, cap;
    bool oom;
} tomb_collect;

static void collect_one(void *arg, uint64_t key, uint64_t version)
{
    tomb_collect *t = arg;
    if (t->oom || !in_mask(t->mask, t->nranges, key))
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

/* Take a point-in-time export of st (selected ranges): tombstones and records under
 * one hold of the writer lock. */
static int build_export(dhps_server *s, srv_store *st, const uint64_t *mask, uint32_t nranges,
                        sync_session *x)
{
    tomb_collect tc = {.mask = mask, .nranges = nranges};
    uint64_t recs = 0;
    pthread_mutex_lock(&st->mu);
    srv_tomb_each(&st->tomb, collect_one, &tc);
    int rc = tc.oom ? -ENOMEM
                    : dhps_store_export(st->st, mask, nranges, &x->recs, &x->recs_len, &recs);
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
        session_free(x);
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
    uint64_t *hash = (uint64_t *)(void *)((uint8_t *)r->resp + sizeof(dhps_proto_resp));
    uint64_t *count = hash + m->nranges;
    pthread_mutex_lock(&st->mu);
    int rc = dhps_store_digest(st->st, m->nranges, hash, count);
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        srv_resp_error(r, rc, "digest: %s", dhps_strerror(rc));
        return rc;
    }
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
        int rc = build_export(s, st, mask, m->nranges, &fresh);
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
        session_free(x);
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
        session_free(x);
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

/* ---- pulling side ------------------------------------------------------------------- */

static bool stopping(srv_sync *y)
{
    return __atomic_load_n(&y->stop, __ATOMIC_ACQUIRE);
}

/* Sleep up to ms, waking at stop. */
static void nap(srv_sync *y, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)ms * 1000000ull;
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    pthread_mutex_lock(&y->wmu);
    while (!y->stop)
        if (pthread_cond_timedwait(&y->wcv, &y->wmu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&y->wmu);
}

/* The channel to node id, opened on demand. 0, or the open's error (the peer is then
 * not dialled again for 500 ms). */
static int peer_channel(srv_sync *y, uint32_t id, dhps_rpc_channel **out)
{
    sync_peer *p = &y->peers[id];
    if (p->ch && dhps_rpc_channel_status(p->ch) == 0) {
        *out = p->ch;
        return 0;
    }
    if (p->ch) {
        dhps_rpc_channel_close(p->ch);
        p->ch = NULL;
    }
    uint64_t now = dhps_mono_ns();
    if (now < p->retry_ns)
        return p->last_err ? p->last_err : DHPS_E_UNREACHABLE;
    const dhps_cluster_node *nd = dhps_cluster_map_node(y->map, id);
    if (!nd)
        return DHPS_E_NOTFOUND;
    dhps_rpc_channel_params cp;
    dhps_rpc_channel_params_init(&cp);
    cp.host = nd->ip;
    cp.port = nd->port;
    int rc = dhps_rpc_channel_open(y->rc, &cp, &p->ch);
    if (rc) {
        p->ch = NULL;
        p->last_err = rc;
        p->retry_ns = now + 500000000ull;
        return rc;
    }
    p->last_err = 0;
    *out = p->ch;
    return 0;
}

/* Failed call on a peer's channel: drop the channel when the connection broke. */
static void peer_failed(srv_sync *y, uint32_t id, int rc)
{
    sync_peer *p = &y->peers[id];
    add(&y->peer_errors, 1);
    p->last_err = rc;
    if (p->ch && dhps_rpc_channel_status(p->ch) != 0) {
        dhps_rpc_channel_close(p->ch);
        p->ch = NULL;
    }
}

typedef struct call_wait {
    bool done;
    int status;
    uint8_t *resp;
    size_t cap, len;
} call_wait;

static void call_done(void *arg, int status, const void *resp, size_t len)
{
    call_wait *w = arg;
    w->done = true;
    w->status = status;
    w->len = len;
    if (!status && len > w->cap)
        w->status = DHPS_E_TOOBIG;
    else if (!status)
        memcpy(w->resp, resp, len);
}

/* A blocking call to node id that gives way to stop: the channel is closed then (its
 * call completes as cancelled inside the close). Returns as dhps_rpc_call. */
static int sync_call(srv_sync *y, uint32_t id, uint16_t method, const void *req,
                     size_t req_len, void *resp, size_t cap, size_t *len)
{
    dhps_rpc_channel *ch;
    int rc = peer_channel(y, id, &ch);
    if (rc)
        return rc;
    void *buf;
    while ((rc = dhps_rpc_call_start(ch, method, req_len, &buf)) == DHPS_E_BUSY)
        dhps_rpc_client_poll(y->rc, 1);
    if (rc)
        return rc;
    memcpy(buf, req, req_len);
    call_wait w = {.resp = resp, .cap = cap};
    if ((rc = dhps_rpc_call_send(ch, req_len, SYNC_CALL_TIMEOUT_US, call_done, &w)))
        return rc;
    while (!w.done) {
        if (stopping(y)) {
            dhps_rpc_channel_close(ch);
            y->peers[id].ch = NULL;
            break;
        }
        dhps_rpc_client_poll(y->rc, 50);
    }
    *len = w.len;
    return w.done ? w.status : DHPS_E_CANCELLED;
}

static void fill_hdr(dhps_proto_hdr *h, const srv_store *st)
{
    memset(h, 0, sizeof *h);
    h->version = DHPS_PROTO_VERSION;
    h->shard = st->shard;
    memcpy(h->table, st->t->c.name, strnlen(st->t->c.name, DHPS_TABLE_NAME_MAX - 1));
}

/* Resp status of an answer, or DHPS_E_MALFORMED when too short. */
static int resp_status(const uint8_t *resp, size_t len, dhps_proto_resp *h)
{
    if (len < sizeof *h)
        return DHPS_E_MALFORMED;
    memcpy(h, resp, sizeof *h);
    return h->status;
}

static int remote_digest(srv_sync *y, uint32_t id, const srv_store *st, uint64_t *hash,
                         uint64_t *count)
{
    uint8_t req[sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_digest)];
    dhps_proto_hdr h;
    fill_hdr(&h, st);
    dhps_proto_sync_digest d = {.nranges = y->nranges};
    memcpy(req, &h, sizeof h);
    memcpy(req + sizeof h, &d, sizeof d);
    size_t cap = sizeof(dhps_proto_resp) + (size_t)y->nranges * 16, len = 0;
    uint8_t *resp = malloc(cap);
    if (!resp)
        return -ENOMEM;
    int rc = sync_call(y, id, DHPS_M_SYNC_DIGEST, req, sizeof req, resp, cap, &len);
    dhps_proto_resp rh;
    if (!rc && !(rc = resp_status(resp, len, &rh))) {
        if (rh.n != y->nranges || len != cap)
            rc = DHPS_E_MALFORMED;
        else {
            memcpy(hash, resp + sizeof rh, (size_t)y->nranges * 8);
            memcpy(count, resp + sizeof rh + (size_t)y->nranges * 8, (size_t)y->nranges * 8);
        }
    }
    free(resp);
    return rc;
}

/* Fetch a whole export (mask: the ranges, NULL = all) into *out (malloc'ed). */
static int fetch_export(srv_sync *y, uint32_t id, const srv_store *st, const uint64_t *mask,
                        uint8_t **out, size_t *out_len)
{
    size_t mask_bytes = mask ? (size_t)(y->nranges + 63) / 64 * 8 : 0;
    size_t req_len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_fetch) + mask_bytes;
    uint8_t req[sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_fetch) +
                DHPS_PROTO_SYNC_MAX_RANGES / 8];
    dhps_proto_hdr h;
    fill_hdr(&h, st);
    uint32_t max_msg = y->s->cfg->max_msg;
    dhps_proto_sync_fetch f = {.session = dhps_splitmix64(&y->seed) | 1,
                               .nranges = mask ? y->nranges : 0,
                               .max_bytes = max_msg - 4096};
    memcpy(req, &h, sizeof h);
    if (mask)
        memcpy(req + sizeof h + sizeof f, mask, mask_bytes);
    size_t cap = max_msg, len = 0;
    uint8_t *resp = malloc(cap), *buf = NULL;
    if (!resp)
        return -ENOMEM;
    uint64_t total = UINT64_MAX, off = 0;
    int rc = 0;
    while (off < total && !stopping(y)) {
        f.offset = off;
        memcpy(req + sizeof h, &f, sizeof f);
        if ((rc = sync_call(y, id, DHPS_M_SYNC_FETCH, req, req_len, resp, cap, &len)))
            break;
        dhps_proto_resp rh;
        if ((rc = resp_status(resp, len, &rh)))
            break;
        dhps_proto_sync_chunk ck;
        if (len < sizeof rh + sizeof ck || len - sizeof rh - sizeof ck != rh.n) {
            rc = DHPS_E_MALFORMED;
            break;
        }
        memcpy(&ck, resp + sizeof rh, sizeof ck);
        if (ck.offset != off || (total != UINT64_MAX && ck.total != total) ||
            ck.total < SYNC_HDR || off + rh.n > ck.total || (rh.n == 0 && off < ck.total)) {
            rc = DHPS_E_MALFORMED;
            break;
        }
        if (!buf) {
            total = ck.total;
            if (!(buf = malloc(total))) {
                rc = -ENOMEM;
                break;
            }
        }
        memcpy(buf + off, resp + sizeof rh + sizeof ck, rh.n);
        off += rh.n;
    }
    free(resp);
    if (!rc && stopping(y))
        rc = DHPS_E_CANCELLED;
    if (rc) {
        free(buf);
        return rc;
    }
    add(&y->fetched_bytes, total);
    *out = buf;
    *out_len = total;
    return 0;
}

static bool skip_tombstoned(void *arg, uint64_t key, uint64_t version)
{
    uint64_t tv;
    return srv_tomb_get(arg, key, &tv) && version <= tv;
}

/* Apply an export to st: its tombstones, then its records. *applied: records taken
 * (newer than what st held). */
static int apply_export(srv_sync *y, srv_store *st, const uint8_t *buf, size_t len,
                        uint64_t *applied)
{
    uint64_t ntomb, h;
    if (len < SYNC_HDR || memcmp(buf, SYNC_MAGIC, 8))
        return DHPS_E_CORRUPT;
    memcpy(&ntomb, buf + 8, 8);
    memcpy(&h, buf + 16, 8);
    if (ntomb > (len - SYNC_HDR) / 16 || XXH3_64bits(buf + SYNC_HDR, ntomb * 16) != h)
        return DHPS_E_CORRUPT;
    uint32_t now_s = (uint32_t)time(NULL);
    const uint8_t *tp = buf + SYNC_HDR, *recs = tp + ntomb * 16;
    size_t recs_len = len - SYNC_HDR - ntomb * 16;
    dhps_store_merge_stats ms;
    memset(&ms, 0, sizeof ms);
    pthread_mutex_lock(&st->mu);
    int rc = 0;
    for (uint64_t i = 0; i < ntomb && !rc; i++) {
        uint64_t key, ver;
        memcpy(&key, tp + i * 16, 8);
        memcpy(&ver, tp + i * 16 + 8, 8);
        rc = srv_tomb_put(&st->tomb, key, ver, now_s);
        dhps_store_delete(st->st, &key, 1, ver, NULL);
    }
    long n = rc ? rc : dhps_store_merge_buffer(st->st, recs, recs_len, skip_tombstoned,
                                               &st->tomb, &ms);
    pthread_mutex_unlock(&st->mu);
    if (n < 0)
        return (int)n;
    add(&y->tombs_applied, ntomb);
    add(&y->merged, (uint64_t)n);
    add(&y->stale, ms.stale);
    *applied = (uint64_t)n;
    return 0;
}

/* One repair round of st against node id: compare digests, fetch and merge the ranges
 * that differ. *applied: records taken; *ranges: ranges that differed. */
static int repair_round(srv_sync *y, srv_store *st, uint32_t id, uint64_t *applied,
                        uint32_t *ranges)
{
    *applied = 0;
    *ranges = 0;
    int rc;
    size_t nr = y->nranges;
    uint64_t *mem = malloc(nr * 8 * 4 + (nr + 63) / 64 * 8);
    if (!mem)
        return -ENOMEM;
    uint64_t *rh = mem, *rcnt = mem + nr, *lh = mem + 2 * nr, *lcnt = mem + 3 * nr,
             *mask = mem + 4 * nr;
    if ((rc = remote_digest(y, id, st, rh, rcnt))) {
        peer_failed(y, id, rc);
        free(mem);
        return rc;
    }
    pthread_mutex_lock(&st->mu);
    rc = dhps_store_digest(st->st, (uint32_t)nr, lh, lcnt);
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        free(mem);
        return rc;
    }
    memset(mask, 0, (nr + 63) / 64 * 8);
    for (size_t r = 0; r < nr; r++)
        if (rh[r] != lh[r] || rcnt[r] != lcnt[r]) {
            mask[r / 64] |= 1ull << (r % 64);
            (*ranges)++;
        }
    add(&y->rounds, 1);
    if (*ranges) {
        uint8_t *buf;
        size_t len;
        rc = fetch_export(y, id, st, *ranges == nr ? NULL : mask, &buf, &len);
        if (rc) {
            peer_failed(y, id, rc);
        } else {
            rc = apply_export(y, st, buf, len, applied);
            free(buf);
            if (rc)
                DHPS_LOG(DHPS_LOG_ERROR, LOGM, "table %s shard %u: export from node %u: %s",
                         st->t->c.name, st->shard, id, dhps_strerror(rc));
        }
        add(&y->ranges_repaired, *ranges);
    }
    free(mem);
    return rc;
}

/* Bring st up to date with node id: repair rounds until the digests agree, or a round
 * leaves as many ranges differing as the one before (what still differs is this node's
 * own newer writes, or writes in flight to both), or SYNC_MAX_ROUNDS pass. */
static int catch_up(srv_sync *y, srv_store *st, uint32_t id)
{
    uint32_t prev = UINT32_MAX;
    for (int round = 0; round < SYNC_MAX_ROUNDS && !stopping(y); round++) {
        uint64_t applied;
        uint32_t ranges;
        int rc = repair_round(y, st, id, &applied, &ranges);
        if (rc)
            return rc;
        if (!ranges || ranges >= prev)
            return 0;
        prev = ranges;
    }
    return 0; /* writes keep racing the copy; anti-entropy takes the rest */
}

static bool transient(int rc)
{
    return rc == DHPS_E_UNREACHABLE || rc == DHPS_E_TIMEOUT || rc == DHPS_E_BUSY ||
           rc == DHPS_E_CANCELLED || rc == -ENOMEM;
}

/* One pass over the stores that are not ready. Returns stores made ready. */
static uint32_t catch_up_pass(srv_sync *y)
{
    dhps_server *s = y->s;
    uint64_t wait_ns = (uint64_t)s->cfg->sync_peer_wait_s * 1000000000ull;
    uint32_t made = 0;
    for (uint32_t i = 0; i < s->nstores && !stopping(y); i++) {
        srv_store *st = &s->stores[i];
        if (__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE))
            continue;
        const uint32_t *ids;
        int nr = dhps_cluster_map_replicas(y->map, st->shard, &ids);
        bool all = true;
        for (int j = 0; j < nr && j < 32; j++) {
            uint32_t id = ids[j];
            if (id == y->self || (y->done[i] >> j & 1))
                continue;
            sync_peer *p = &y->peers[id];
            if (p->given_up) {
                y->done[i] |= 1u << j;
                continue;
            }
            int rc = catch_up(y, st, id);
            if (rc == 0) {
                y->done[i] |= 1u << j;
            } else if (transient(rc) && dhps_mono_ns() - y->t_start_ns < wait_ns) {
                all = false;
            } else {
                if (transient(rc) && !p->given_up) {
                    p->given_up = true;
                    add(&y->peers_skipped, 1);
                    DHPS_LOG(DHPS_LOG_WARN, LOGM, "peer node %u: %s for %u s; catching up "
                             "without it (it pulls from us when it returns)", id,
                             dhps_strerror(rc), s->cfg->sync_peer_wait_s);
                } else if (!transient(rc)) {
                    DHPS_LOG(DHPS_LOG_WARN, LOGM, "table %s shard %u from node %u: %s; "
                             "skipping that peer", st->t->c.name, st->shard, id,
                             dhps_strerror(rc));
                }
                y->done[i] |= 1u << j;
            }
        }
        if (all && !stopping(y)) {
            st_set_ready(st);
            __atomic_fetch_sub(&y->pending, 1, __ATOMIC_ACQ_REL);
            made++;
        }
    }
    return made;
}

/* Anti-entropy: one repair round of every store against every reachable peer. */
static void anti_entropy_pass(srv_sync *y)
{
    dhps_server *s = y->s;
    uint64_t before = get(&y->merged);
    for (uint32_t i = 0; i < s->nstores && !stopping(y); i++) {
        srv_store *st = &s->stores[i];
        const uint32_t *ids;
        int nr = dhps_cluster_map_replicas(y->map, st->shard, &ids);
        for (int j = 0; j < nr && !stopping(y); j++) {
            if (ids[j] == y->self)
                continue;
            uint64_t applied;
            uint32_t ranges;
            if (repair_round(y, st, ids[j], &applied, &ranges) == 0)
                y->peers[ids[j]].given_up = false;
        }
    }
    uint64_t got = get(&y->merged) - before;
    add(&y->ae_passes, 1);
    add(&y->ae_records, got);
    if (got)
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "anti-entropy: %llu newer records taken from peers",
                 (unsigned long long)got);
}

static void *sync_main(void *arg)
{
    srv_sync *y = arg;
    dhps_server *s = y->s;
    __atomic_store_n(&y->t_start_ns, dhps_mono_ns(), __ATOMIC_RELEASE); /* read by /status (catchup_seconds) */
    while (!stopping(y) && __atomic_load_n(&y->pending, __ATOMIC_ACQUIRE)) {
        if (!catch_up_pass(y) && __atomic_load_n(&y->pending, __ATOMIC_ACQUIRE))
            nap(y, 100);
    }
    if (!stopping(y)) {
        __atomic_store_n(&y->t_ready_ns, dhps_mono_ns(), __ATOMIC_RELEASE);
        if (y->stores_sync)
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "node %s caught up: %u stores, %llu records taken "
                     "from peers in %.2f s", s->cfg->node_id, y->stores_sync,
                     (unsigned long long)get(&y->merged),
                     (double)(y->t_ready_ns - y->t_start_ns) / 1e9);
    }
    uint32_t every = s->cfg->sync_anti_entropy_s;
    while (!stopping(y) && every && y->map) {
        nap(y, every * 1000u);
        if (!stopping(y))
            anti_entropy_pass(y);
    }
    return NULL;
}

int srv_sync_start(srv_sync *y)
{
    if (!y->map || (!y->stores_sync && !y->s->cfg->sync_anti_entropy_s))
        return 0;
    dhps_rpc_client_params p;
    dhps_rpc_client_params_init(&p);
    p.secret = y->s->secret;
    p.secret_len = y->s->secret_len;
    p.max_msg = y->s->cfg->max_msg;
    p.connect_timeout_ms = 1000;
    int rc = dhps_rpc_client_create(&p, &y->rc);
    if (rc)
        return rc;
    if ((rc = pthread_create(&y->thr, NULL, sync_main, y)))
        return -rc;
    y->running = true;
    return 0;
}

void srv_sync_stop(srv_sync *y)
{
    if (!y)
        return;
    pthread_mutex_lock(&y->wmu);
    __atomic_store_n(&y->stop, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&y->wcv);
    pthread_mutex_unlock(&y->wmu);
    if (y->running) {
        pthread_join(y->thr, NULL);
        y->running = false;
    }
}

void srv_sync_destroy(srv_sync *y)
{
    if (!y)
        return;
    srv_sync_stop(y);
    if (y->peers) {
        for (uint32_t i = 0; i <= dhps_cluster_map_max_node_id(y->map); i++)
            dhps_rpc_channel_close(y->peers[i].ch);
        free(y->peers);
    }
    dhps_rpc_client_destroy(y->rc);
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++)
        session_free(&y->sess[i]);
    dhps_cluster_map_destroy(y->map);
    free(y->done);
    pthread_cond_destroy(&y->wcv);
    pthread_mutex_destroy(&y->wmu);
    pthread_mutex_destroy(&y->mu);
    free(y);
}

void srv_sync_maintain(srv_sync *y)
{
    dhps_server *s = y->s;
    uint64_t now = dhps_mono_ns();
    pthread_mutex_lock(&y->mu);
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++)
        if (y->sess[i].id && now - y->sess[i].last_ns > SYNC_SESSION_IDLE_NS)
            session_free(&y->sess[i]);
    pthread_mutex_unlock(&y->mu);
    uint32_t keep = s->cfg->sync_tombstone_s, now_s = (uint32_t)time(NULL);
    if (now_s <= keep)
        return;
    for (uint32_t i = 0; i < s->nstores; i++) {
        srv_store *st = &s->stores[i];
        pthread_mutex_lock(&st->mu);
        srv_tomb_expire(&st->tomb, now_s - keep);
        pthread_mutex_unlock(&st->mu);
    }
}

bool srv_sync_ready(const srv_sync *y)
{
    return !y || __atomic_load_n(&y->pending, __ATOMIC_ACQUIRE) == 0;
}

static double catchup_seconds(const srv_sync *y)
{
    uint64_t t1 = __atomic_load_n(&y->t_ready_ns, __ATOMIC_ACQUIRE);
    uint64_t t0 = __atomic_load_n(&y->t_start_ns, __ATOMIC_ACQUIRE);
    if (!t0)
        return 0;
    return (double)((t1 ? t1 : dhps_mono_ns()) - t0) / 1e9;
}

void srv_sync_metrics(srv_sync *y, FILE *f)
{
    dhps_server *s = y->s;
    uint64_t tombs = 0;
    for (uint32_t i = 0; i < s->nstores; i++) {
        pthread_mutex_lock(&s->stores[i].mu);
        tombs += s->stores[i].tomb.n;
        pthread_mutex_unlock(&s->stores[i].mu);
    }
    struct {
        const char *name, *type, *help;
        double v;
    } rows[] = {
        {"dhps_sync_stores_pending", "gauge", "Stores not ready yet (catching up from peers).",
         (double)__atomic_load_n(&y->pending, __ATOMIC_RELAXED)},
        {"dhps_sync_catchup_seconds", "gauge",
         "Seconds from the start of catch-up to ready (running while catching up).",
         catchup_seconds(y)},
        {"dhps_sync_records_merged_total", "counter",
         "Records taken from peers (newer than what this node held).", (double)get(&y->merged)},
        {"dhps_sync_records_stale_total", "counter",
         "Records received from peers that this node already held at that version or newer.",
         (double)get(&y->stale)},
        {"dhps_sync_tombstones_applied_total", "counter",
         "Tombstones received from peers and applied.", (double)get(&y->tombs_applied)},
        {"dhps_sync_fetched_bytes_total", "counter", "Bytes of exports pulled from peers.",
         (double)get(&y->fetched_bytes)},
        {"dhps_sync_exports_total", "counter", "Exports taken for peers.",
         (double)get(&y->exports)},
        {"dhps_sync_export_bytes_total", "counter", "Bytes of exports taken for peers.",
         (double)get(&y->export_bytes)},
        {"dhps_sync_rounds_total", "counter", "Digest comparisons with a peer.",
         (double)get(&y->rounds)},
        {"dhps_sync_ranges_repaired_total", "counter",
         "Key ranges whose digests differed and were pulled from a peer.",
         (double)get(&y->ranges_repaired)},
        {"dhps_sync_antientropy_passes_total", "counter", "Anti-entropy passes completed.",
         (double)get(&y->ae_passes)},
        {"dhps_sync_antientropy_records_total", "counter",
         "Records repaired by anti-entropy (after catch-up).", (double)get(&y->ae_records)},
        {"dhps_sync_peer_errors_total", "counter", "Failed sync calls to peers.",
         (double)get(&y->peer_errors)},
        {"dhps_sync_peers_skipped_total", "counter",
         "Peers given up on during catch-up (unreachable for sync.peer_wait_s).",
         (double)get(&y->peers_skipped)},
        {"dhps_tombstones", "gauge", "Deleted keys remembered for sync (sync.tombstone_s).",
         (double)tombs},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", rows[i].name, rows[i].help,
                rows[i].name, rows[i].type, rows[i].name, rows[i].v);
}

char *srv_sync_status_json(srv_sync *y)
{
    dhps_server *s = y->s;
    uint32_t pending = __atomic_load_n(&y->pending, __ATOMIC_ACQUIRE);
    bool ready = dhps_server_ready(s);
    bool recovered = __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE);
    char *out = NULL;
    if (asprintf(&out,
                 "{\"ready\":%s,\"state\":\"%s\",\"stores\":%u,\"stores_ready\":%u,"
                 "\"catching_up\":%u,\"records_merged\":%llu,\"bytes_fetched\":%llu,"
                 "\"catchup_seconds\":%.3f,\"peers_skipped\":%llu}\n",
                 ready ? "true" : "false",
                 ready ? "ready" : !recovered ? "recovering" : "catching_up", s->nstores,
                 s->nstores - pending, pending, (unsigned long long)get(&y->merged),
                 (unsigned long long)get(&y->fetched_bytes), catchup_seconds(y),
                 (unsigned long long)get(&y->peers_skipped)) < 0)
        return NULL;
    return out;
}

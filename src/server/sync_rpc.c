/* Replica sync, the pulling thread's calls to peers: channels, blocking and batched
 * calls, exports fetched and merged. See sync.h. */
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

/* ---- pulling side ------------------------------------------------------------------- */

bool sync_stopping(srv_sync *y)
{
    return __atomic_load_n(&y->stop, __ATOMIC_ACQUIRE);
}

/* Sleep up to ms, waking at stop or srv_sync_wake. */
void sync_nap(srv_sync *y, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)ms * 1000000ull;
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    pthread_mutex_lock(&y->wmu);
    while (!y->stop && !y->wake)
        if (pthread_cond_timedwait(&y->wcv, &y->wmu, &ts) == ETIMEDOUT)
            break;
    y->wake = false;
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
    snprintf(p->addr, sizeof p->addr, "%s", nd->addr);
    dhps_rpc_channel_params cp;
    dhps_rpc_channel_params_init(&cp);
    cp.host = nd->ip;
    cp.port = nd->port;
    /* bulk copies between servers: TCP (or shm on one host); verbs set-up buys nothing
     * for a few large calls and can take seconds (Soft-RoCE under emulation) */
    cp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_SHM);
    cp.tls = dhps_rpc_tls_wanted(y->s->cfg->tls_policy, y->s->cfg->label_az, nd->az);
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
void sync_peer_failed(srv_sync *y, uint32_t id, int rc)
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
        if (sync_stopping(y)) {
            dhps_rpc_channel_close(ch);
            y->peers[id].ch = NULL;
            break;
        }
        dhps_rpc_client_poll(y->rc, 50);
    }
    *len = w.len;
    return w.done ? w.status : DHPS_E_CANCELLED;
}

static void fill_hdr(srv_sync *y, dhps_proto_hdr *h, const srv_store *st)
{
    memset(h, 0, sizeof *h);
    h->version = DHPS_PROTO_VERSION;
    h->shard = st->shard;
    /* following etcd: only copy from peers that route new writes to us already */
    if (y->s->follow)
        h->map_version = __atomic_load_n(&y->s->map_version, __ATOMIC_ACQUIRE);
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

int sync_remote_digest(srv_sync *y, uint32_t id, const srv_store *st, uint64_t *hash,
                       uint64_t *count)
{
    uint8_t req[sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_digest)];
    dhps_proto_hdr h;
    fill_hdr(y, &h, st);
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

/* One store's digest request in a batch (digest_many). */
typedef struct dg_call {
    srv_sync *y;
    uint64_t *hash, *count; /* nranges each */
    int status;             /* 1 while in flight */
    uint32_t *left;
} dg_call;

static void dg_done(void *arg, int status, const void *resp, size_t len)
{
    dg_call *c = arg;
    dhps_proto_resp rh;
    size_t nr = c->y->nranges, want = sizeof rh + nr * 16;
    if (!status && !(status = resp_status(resp, len, &rh))) {
        if (rh.n != nr || len != want) {
            status = DHPS_E_MALFORMED;
        } else {
            memcpy(c->hash, (const uint8_t *)resp + sizeof rh, nr * 8);
            memcpy(c->count, (const uint8_t *)resp + sizeof rh + nr * 8, nr * 8);
        }
    }
    c->status = status;
    (*c->left)--;
}

/* The digests of n stores from node id, all requests in flight at once (one round trip
 * for the lot, not one per store): calls[i] gets store sts[i]'s, status 0 or an error.
 * Returns 0, or the channel's error (then no call was sent). */
static int digest_many(srv_sync *y, uint32_t id, srv_store *const *sts, size_t n,
                       dg_call *calls)
{
    dhps_rpc_channel *ch;
    int rc = peer_channel(y, id, &ch);
    if (rc)
        return rc;
    uint32_t left = 0;
    uint8_t req[sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_digest)];
    dhps_proto_sync_digest d = {.nranges = y->nranges};
    for (size_t i = 0; i < n; i++) {
        calls[i].y = y;
        calls[i].left = &left;
        calls[i].status = 1;
        dhps_proto_hdr h;
        fill_hdr(y, &h, sts[i]);
        memcpy(req, &h, sizeof h);
        memcpy(req + sizeof h, &d, sizeof d);
        void *buf;
        while ((rc = dhps_rpc_call_start(ch, DHPS_M_SYNC_DIGEST, sizeof req, &buf)) ==
                   DHPS_E_BUSY &&
               !sync_stopping(y))
            dhps_rpc_client_poll(y->rc, 1);
        if (rc) {
            calls[i].status = rc;
            continue;
        }
        memcpy(buf, req, sizeof req);
        if ((rc = dhps_rpc_call_send(ch, sizeof req, SYNC_CALL_TIMEOUT_US, dg_done,
                                     &calls[i]))) {
            calls[i].status = rc;
            continue;
        }
        left++;
    }
    while (left) {
        if (sync_stopping(y)) { /* the close completes the calls (cancelled) */
            dhps_rpc_channel_close(ch);
            y->peers[id].ch = NULL;
            break;
        }
        dhps_rpc_client_poll(y->rc, 50);
    }
    for (size_t i = 0; i < n; i++)
        if (calls[i].status && calls[i].status != 1) {
            sync_peer_failed(y, id, calls[i].status);
            break;
        } else if (calls[i].status == 0) {
            y->peers[id].given_up = false; /* it answers (again) */
        }
    add(&y->rounds, n);
    return 0;
}

/* Does st's own digest equal hash/count (nranges each)? */
static bool digest_matches(srv_sync *y, srv_store *st, const uint64_t *hash,
                           const uint64_t *count, uint64_t *scratch)
{
    size_t nr = y->nranges;
    pthread_mutex_lock(&st->mu);
    int rc = dhps_store_digest(st->st, (uint32_t)nr, scratch, scratch + nr);
    pthread_mutex_unlock(&st->mu);
    return rc == 0 && !memcmp(scratch, hash, nr * 8) && !memcmp(scratch + nr, count, nr * 8);
}

/* For every store in sts[0..n) of which node id is a replica: ask the peer for all their
 * digests at once and set agree[i] where they equal the store's own. Stores whose
 * digests differ, or whose call failed, are left for the per-store path. */
void sync_agree_many(srv_sync *y, uint32_t id, srv_store *const *sts, size_t n, bool *agree)
{
    size_t nr = y->nranges;
    dg_call *calls = calloc(n ? n : 1, sizeof *calls);
    uint64_t *mem = malloc((n * 2 + 2) * nr * 8);
    for (size_t i = 0; calls && mem && i < n; i++) {
        calls[i].hash = mem + (2 * i) * nr;
        calls[i].count = mem + (2 * i + 1) * nr;
    }
    if (calls && mem && digest_many(y, id, sts, n, calls) == 0)
        for (size_t i = 0; i < n && !sync_stopping(y); i++)
            agree[i] = calls[i].status == 0 &&
                       digest_matches(y, sts[i], calls[i].hash, calls[i].count,
                                      mem + 2 * n * nr);
    free(calls);
    free(mem);
}

/* Fetch a whole export (mask: the ranges, NULL = all; records and tombstones at or above
 * min_version) into *out (malloc'ed). */
int sync_fetch_export(srv_sync *y, uint32_t id, const srv_store *st, const uint64_t *mask,
                      uint64_t min_version, uint8_t **out, size_t *out_len)
{
    size_t mask_bytes = mask ? (size_t)(y->nranges + 63) / 64 * 8 : 0;
    size_t req_len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_fetch) + mask_bytes;
    uint8_t req[sizeof(dhps_proto_hdr) + sizeof(dhps_proto_sync_fetch) +
                DHPS_PROTO_SYNC_MAX_RANGES / 8];
    dhps_proto_hdr h;
    fill_hdr(y, &h, st);
    uint32_t max_msg = y->s->cfg->max_msg;
    dhps_proto_sync_fetch f = {.session = dhps_splitmix64(&y->seed) | 1,
                               .nranges = mask ? y->nranges : 0,
                               .max_bytes = max_msg - 4096,
                               .min_version = min_version};
    memcpy(req, &h, sizeof h);
    if (mask)
        memcpy(req + sizeof h + sizeof f, mask, mask_bytes);
    size_t cap = max_msg, len = 0;
    uint8_t *resp = malloc(cap), *buf = NULL;
    if (!resp)
        return -ENOMEM;
    uint64_t total = UINT64_MAX, off = 0;
    int rc = 0;
    while (off < total && !sync_stopping(y)) {
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
    if (!rc && sync_stopping(y))
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
int sync_apply_export(srv_sync *y, srv_store *st, const uint8_t *buf, size_t len,
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

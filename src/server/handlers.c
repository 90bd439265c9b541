/* dhps server: the rpc handlers of the service protocol (include/dhps/proto.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "dhps/log.h"
#include "durable.h"
#include "hold.h"
#include "msg.h"
#include "srv_int.h"
#include "sync.h"
#include "util.h"

#define LOGM "server"

const char *const method_names[NMETHODS] = {"lookup", "upsert",   "delete", "stats",
                                            "snapshot", "info", "sync"};
const int status_codes[NSTATUS - 1] = {0,
                                       DHPS_E_MALFORMED,
                                       DHPS_E_NOTFOUND,
                                       DHPS_E_TOOBIG,
                                       DHPS_E_VERSION,
                                       DHPS_E_FULL,
                                       DHPS_E_CONFIG,
                                       DHPS_E_NOTREADY,
                                       DHPS_E_MOVED};
const char *const status_names[NSTATUS] = {"ok",      "malformed", "notfound",
                                           "toobig",  "version",   "full",
                                           "config",  "notready",  "moved", "other"};
/* latency buckets, upper bounds in microseconds (+Inf implied) */
const uint32_t lat_bounds_us[NBUCKETS - 1] = {
    10,   25,   50,   75,   100,  150,  200,  300,   400,   500,   750,   1000,
    1500, 2000, 3000, 4000, 5000, 7500, 10000, 25000, 50000, 100000, 250000};

/* ---- rpc handlers ----------------------------------------------------------------- */

/* Write an error response: header with status, then a human-readable message. */
void srv_resp_error(dhps_rpc_request *r, int status, const char *fmt, ...)
{
    if (r->resp_cap < sizeof(dhps_proto_resp)) {
        r->resp_len = 0;
        return;
    }
    dhps_proto_resp h = {.status = status};
    size_t room = r->resp_cap - sizeof h, k = 0;
    if (room > 1) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        k = m < 0 ? 0 : (size_t)m >= sizeof msg ? sizeof msg - 1 : (size_t)m;
        if (k > room)
            k = room;
        memcpy((uint8_t *)r->resp + sizeof h, msg, k);
    }
    memcpy(r->resp, &h, sizeof h);
    r->resp_len = sizeof h + k;
}

static srv_table *find_table(dhps_server *s, const char *name)
{
    for (uint32_t i = 0; i < s->cfg->ntables; i++)
        if (!strcmp(s->tables[i].c.name, name))
            return &s->tables[i];
    return NULL;
}

srv_store *srv_find_store(dhps_server *s, const srv_msg *m, dhps_rpc_request *r,
                             int *status)
{
    srv_table *t = find_table(s, m->table);
    if (!t) {
        *status = DHPS_E_NOTFOUND;
        srv_resp_error(r, *status, "unknown table \"%s\" on node %s", m->table, s->cfg->node_id);
        return NULL;
    }
    srv_store *st = m->shard < s->cfg->nshards
                        ? __atomic_load_n(&t->by_shard[m->shard], __ATOMIC_SEQ_CST)
                        : NULL;
    if (!st) {
        bool write = m->method == DHPS_M_UPSERT || m->method == DHPS_M_DELETE;
        bool follow = __atomic_load_n(&s->follow, __ATOMIC_RELAXED); /* set at create */
        uint64_t applied = __atomic_load_n(&s->map_version, __ATOMIC_ACQUIRE);
        uint64_t gone = m->shard < s->cfg->nshards
                            ? __atomic_load_n(&s->dropped_at[m->shard], __ATOMIC_RELAXED)
                            : 0;
        if (follow && write && m->map_version && m->map_version < gone) {
            /* routed before this node gave the shard up: the sender reloads the map */
            *status = DHPS_E_MOVED;
            add(&s->writes_moved, 1);
            srv_resp_error(r, *status, "shard %u left node %s at map version %llu; the "
                           "request was routed with version %llu", m->shard, s->cfg->node_id,
                           (unsigned long long)gone, (unsigned long long)m->map_version);
        } else if (follow && m->map_version > applied) {
            /* routed with a map this node has not applied yet: it may hold it shortly */
            *status = DHPS_E_NOTREADY;
            srv_resp_error(r, *status, "node %s has applied map version %llu, the request was "
                           "routed with %llu; retry shortly", s->cfg->node_id,
                           (unsigned long long)applied, (unsigned long long)m->map_version);
        } else {
            *status = DHPS_E_NOTFOUND;
            srv_resp_error(r, *status, "shard %u of table %s is not owned by node %s "
                           "(nshards %u)", m->shard, t->c.name, s->cfg->node_id,
                           s->cfg->nshards);
        }
        return NULL;
    }
    return st;
}

/* Under st->mu, before a write is logged and applied: refuse it when the store was
 * dropped (NOTFOUND, as a shard not held) or when it was routed with a map older than
 * the shard's last holder change (DHPS_E_MOVED; map_version 0 is never fenced). Returns
 * 0 or the status written into r. */
static int write_fence(dhps_server *s, srv_store *st, const srv_msg *m, dhps_rpc_request *r)
{
    if (st->dropped) {
        srv_resp_error(r, DHPS_E_NOTFOUND, "shard %u of table %s is not owned by node %s "
                       "(dropped)", st->shard, st->t->c.name, s->cfg->node_id);
        return DHPS_E_NOTFOUND;
    }
    if (__atomic_load_n(&s->follow, __ATOMIC_RELAXED) && m->map_version &&
        m->map_version < st->fence) {
        add(&s->writes_moved, 1);
        srv_resp_error(r, DHPS_E_MOVED, "shard %u changed holders at map version %llu; the "
                       "write was routed with version %llu", st->shard,
                       (unsigned long long)st->fence, (unsigned long long)m->map_version);
        return DHPS_E_MOVED;
    }
    return 0;
}

static const uint64_t *aligned_keys(srv_worker *w, const srv_msg *m)
{
    if (((uintptr_t)m->keys & 7u) == 0)
        return (const uint64_t *)(const void *)m->keys;
    memcpy(w->keys, m->keys, (size_t)m->n * 8);
    return w->keys;
}

static int do_lookup(dhps_server *s, srv_worker *w, const srv_msg *m, dhps_rpc_request *r)
{
    int status;
    srv_store *st = srv_find_store(s, m, r, &status);
    if (!st)
        return status;
    srv_table *t = st->t;
    if (!__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE)) {
        /* holding writes, still catching up: another replica must answer, never
         * "absent" from here (docs/server.md "Readiness") */
        srv_resp_error(r, DHPS_E_NOTREADY, "table %s shard %u on node %s is catching up from "
                       "its peers", t->c.name, st->shard, s->cfg->node_id);
        return DHPS_E_NOTREADY;
    }
    bool want16 = (m->flags & DHPS_LOOKUP_FP16) != 0;
    size_t out_row = (size_t)t->c.dim * (want16 ? 2 : 4);
    size_t need = srv_lookup_resp_len(m->n, out_row);
    if (need > r->resp_cap) {
        srv_resp_error(r, DHPS_E_TOOBIG,
                   "lookup response of %zu bytes exceeds the max message of %zu; split "
                   "the batch", need, r->resp_cap);
        return DHPS_E_TOOBIG;
    }
    const uint64_t *keys = aligned_keys(w, m);
    size_t mask_bytes = (size_t)((m->n + 63) / 64) * 8;
    uint8_t *rows = (uint8_t *)r->resp + sizeof(dhps_proto_resp) + mask_bytes;
    dhps_store_reader *rd = srv_hold_reader(s, st, (uint32_t)(w - s->workers));
    size_t found;
    bool same = (t->c.dtype == DHPS_FP16) == want16;
    if (same) {
        /* zero copy: rows land straight in the lent response buffer */
        found = dhps_store_get(rd, keys, m->n, rows, out_row, NULL, w->mask);
    } else {
        found = dhps_store_get(rd, keys, m->n, w->rows, t->row_bytes, NULL, w->mask);
        size_t nv = (size_t)m->n * t->c.dim;
        if (want16)
            dhps_fp16_from_fp32((uint16_t *)(void *)rows, (const float *)(void *)w->rows, nv);
        else
            dhps_fp16_to_fp32((float *)(void *)rows, (const uint16_t *)(void *)w->rows, nv);
    }
    memcpy((uint8_t *)r->resp + sizeof(dhps_proto_resp), w->mask, mask_bytes);
    dhps_proto_resp h = {.status = 0, .n = m->n, .value_bytes = (uint32_t)out_row,
                         .count = (uint32_t)found};
    memcpy(r->resp, &h, sizeof h);
    r->resp_len = need;
    add(&t->looked_up, m->n);
    add(&t->found, found);
    return 0;
}

/* UPSERT and DELETE answer with a header and a mask of n bits. Whether that fits the
 * lent response buffer (if not, the error reply is already written): */
static bool mask_resp_fits(dhps_rpc_request *r, uint32_t n)
{
    if (sizeof(dhps_proto_resp) + (size_t)((n + 63) / 64) * 8 > r->resp_cap) {
        srv_resp_error(r, DHPS_E_TOOBIG, "response does not fit the max message");
        return false;
    }
    return true;
}

/* Write that answer: status 0, count, then the mask. */
static void mask_resp_finish(dhps_rpc_request *r, const uint64_t *mask, uint32_t n, uint32_t count)
{
    size_t mask_bytes = (size_t)((n + 63) / 64) * 8;
    memcpy((uint8_t *)r->resp + sizeof(dhps_proto_resp), mask, mask_bytes);
    dhps_proto_resp h = {.status = 0, .n = n, .value_bytes = 0, .count = count};
    memcpy(r->resp, &h, sizeof h);
    r->resp_len = sizeof h + mask_bytes;
}

static int do_upsert(dhps_server *s, srv_worker *w, const srv_msg *m, dhps_rpc_request *r)
{
    int status;
    srv_store *st = srv_find_store(s, m, r, &status);
    if (!st)
        return status;
    srv_table *t = st->t;
    const char *why;
    if (srv_msg_check_rows(m, t->c.dim, &why)) {
        srv_resp_error(r, DHPS_E_MALFORMED, "table %s (dim %u): %s", t->c.name, t->c.dim, why);
        return DHPS_E_MALFORMED;
    }
    if (!mask_resp_fits(r, m->n))
        return DHPS_E_TOOBIG;
    const uint64_t *keys = aligned_keys(w, m);
    const void *vals = m->values;
    bool rows16 = m->flags == DHPS_FP16;
    if (rows16 != (t->c.dtype == DHPS_FP16)) {
        size_t nv = (size_t)m->n * t->c.dim;
        if (rows16)
            dhps_fp16_to_fp32((float *)(void *)w->rows, (const uint16_t *)(const void *)vals, nv);
        else
            dhps_fp16_from_fp32((uint16_t *)(void *)w->rows, (const float *)(const void *)vals, nv);
        vals = w->rows;
    }
    /* rows as they would be stored: a NaN/inf, or an fp32 value past fp16's range in an
     * fp16 table, is refused whole unless the table allows them */
    size_t nv = (size_t)m->n * t->c.dim;
    if (!t->c.allow_nonfinite && !(t->c.dtype == DHPS_FP16 ? dhps_f16_all_finite(vals, nv)
                                                           : dhps_f32_all_finite(vals, nv))) {
        srv_resp_error(r, -EDOM, "upsert into table %s: a NaN or infinite value%s (refused "
                       "whole; tables[].allow_nonfinite stores them)", t->c.name,
                       t->c.dtype == DHPS_FP16 && !rows16 ? ", or one past fp16's range" : "");
        return -EDOM;
    }
    dhps_store_batch b = {.keys = keys, .n = m->n, .values = vals,
                          .value_stride = t->row_bytes, .version = m->version,
                          .ttl = m->ttl};
    uint64_t lsn;
    pthread_mutex_lock(&st->mu);
    int frc = write_fence(s, st, m, r);
    int lrc = frc ? 0 : srv_durable_log_put(s, st, &b, &lsn); /* logged before applied */
    long n = frc || lrc ? lrc : dhps_store_put(st->st, &b, w->mask);
    pthread_mutex_unlock(&st->mu);
    if (frc)
        return frc;
    if (lrc) {
        srv_resp_error(r, lrc, "upsert into table %s shard %u: update log: %s (nothing applied)",
                   t->c.name, st->shard, dhps_strerror(lrc));
        return lrc;
    }
    if (n < 0) {
        srv_resp_error(r, (int)n, "upsert into table %s shard %u: %s (keys before the failing "
                   "one were applied)", t->c.name, st->shard, dhps_strerror((int)n));
        return (int)n;
    }
    if ((lrc = srv_durable_wait(s, lsn))) {
        srv_resp_error(r, lrc, "upsert into table %s shard %u: applied, but the update log's "
                   "fdatasync failed: %s", t->c.name, st->shard, dhps_strerror(lrc));
        return lrc;
    }
    mask_resp_finish(r, w->mask, m->n, (uint32_t)n);
    return 0;
}

static int do_delete(dhps_server *s, srv_worker *w, const srv_msg *m, dhps_rpc_request *r)
{
    int status;
    srv_store *st = srv_find_store(s, m, r, &status);
    if (!st)
        return status;
    if (!mask_resp_fits(r, m->n))
        return DHPS_E_TOOBIG;
    const uint64_t *keys = aligned_keys(w, m);
    uint64_t lsn;
    pthread_mutex_lock(&st->mu);
    int frc = write_fence(s, st, m, r);
    int lrc = frc ? 0 : srv_durable_log_delete(s, st, keys, m->n, m->version, &lsn);
    size_t n = frc || lrc ? 0 : dhps_store_delete(st->st, keys, m->n, m->version, w->mask);
    if (!frc && !lrc)
        srv_sync_note_deletes(s, st, keys, m->n, m->version, (uint32_t)time(NULL));
    pthread_mutex_unlock(&st->mu);
    if (frc)
        return frc;
    if (!lrc)
        lrc = srv_durable_wait(s, lsn);
    if (lrc) {
        srv_resp_error(r, lrc, "delete in table %s shard %u: update log: %s", st->t->c.name,
                   st->shard, dhps_strerror(lrc));
        return lrc;
    }
    mask_resp_finish(r, w->mask, m->n, (uint32_t)n);
    return 0;
}

void srv_aggregate(dhps_server *s, const srv_table *t, table_agg *a)
{
    memset(a, 0, sizeof *a);
    srv_store **v;
    size_t k = srv_hold_stores_get(s, t, &v);
    for (size_t i = 0; i < k; i++) {
        srv_store *st = v[i];
        dhps_store_stats x;
        pthread_mutex_lock(&st->mu);
        dhps_store_get_stats(st->st, &x);
        pthread_mutex_unlock(&st->mu);
        a->shards++;
        a->st.keys += x.keys;
        a->st.live_bytes += x.live_bytes;
        a->st.payload_bytes += x.payload_bytes;
        a->st.segment_bytes += x.segment_bytes;
        a->st.index_bytes += x.index_bytes;
        a->st.expired_records += x.expired_records;
        a->st.evicted_records += x.evicted_records;
        a->st.stale_updates += x.stale_updates;
        a->st.compaction_bytes += x.compaction_bytes;
        a->st.inplace_updates += x.inplace_updates;
    }
    srv_hold_stores_put(v, k);
    a->st.fragmentation =
        a->st.segment_bytes ? 1.0 - (double)a->st.live_bytes / (double)a->st.segment_bytes : 0;
}

/* Dump a JSON object after a status-0 header. */
static int resp_json(dhps_rpc_request *r, json_t *o, uint32_t count)
{
    int rc = 0;
    if (!o) {
        srv_resp_error(r, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    size_t room = r->resp_cap > sizeof(dhps_proto_resp) ? r->resp_cap - sizeof(dhps_proto_resp) : 0;
    size_t k = json_dumpb(o, (char *)r->resp + sizeof(dhps_proto_resp), room, JSON_COMPACT);
    if (k == 0 || k > room) {
        srv_resp_error(r, DHPS_E_TOOBIG, "reply of %zu bytes exceeds the max message", k);
        rc = DHPS_E_TOOBIG;
    } else {
        dhps_proto_resp h = {.status = 0, .n = 0, .value_bytes = 0, .count = count};
        memcpy(r->resp, &h, sizeof h);
        r->resp_len = sizeof h + k;
    }
    json_decref(o);
    return rc;
}

static int do_stats(dhps_server *s, const srv_msg *m, dhps_rpc_request *r)
{
    srv_table *only = NULL;
    if (m->table[0] && !(only = find_table(s, m->table))) {
        srv_resp_error(r, DHPS_E_NOTFOUND, "unknown table \"%s\" on node %s", m->table,
                   s->cfg->node_id);
        return DHPS_E_NOTFOUND;
    }
    json_t *arr = json_array();
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->cfg->ntables && arr; i++) {
        srv_table *t = &s->tables[i];
        if (only && t != only)
            continue;
        table_agg a;
        srv_aggregate(s, t, &a);
        json_array_append_new(
            arr, json_pack("{s:s,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:I,s:i}", "name",
                           t->c.name, "keys", (json_int_t)a.st.keys, "live_bytes",
                           (json_int_t)a.st.live_bytes, "segment_bytes",
                           (json_int_t)a.st.segment_bytes, "index_bytes",
                           (json_int_t)a.st.index_bytes, "fragmentation", a.st.fragmentation,
                           "expired_records", (json_int_t)a.st.expired_records,
                           "evicted_records", (json_int_t)a.st.evicted_records,
                           "stale_updates", (json_int_t)a.st.stale_updates, "looked_up",
                           (json_int_t)get(&t->looked_up), "found",
                           (json_int_t)get(&t->found), "shards", (int)a.shards));
        n++;
    }
    json_t *o = arr ? json_pack("{s:s,s:o}", "node_id", s->cfg->node_id, "tables", arr) : NULL;
    return resp_json(r, o, n);
}

static int do_info(dhps_server *s, dhps_rpc_request *r)
{
    json_t *tabs = json_array(), *own = json_array();
    for (uint32_t i = 0; tabs && i < s->cfg->ntables; i++) {
        srv_table *t = &s->tables[i];
        json_array_append_new(tabs, json_pack("{s:s,s:i,s:s,s:i,s:i}", "name", t->c.name,
                                              "dim", (int)t->c.dim, "dtype",
                                              t->c.dtype == DHPS_FP16 ? "fp16" : "fp32",
                                              "row_bytes", (int)t->row_bytes, "default_ttl",
                                              (int)t->c.default_ttl));
    }
    for (uint32_t i = 0; own && i < s->cfg->nshards; i++) /* held now */
        if (__atomic_load_n(&s->tables[0].by_shard[i], __ATOMIC_ACQUIRE))
            json_array_append_new(own, json_integer(i));
    json_t *o = NULL;
    if (tabs && own)
        o = json_pack("{s:s,s:{s:s?,s:s?,s:s?},s:i,s:i,s:i,s:i,s:o,s:o,s:b,s:i}", "node_id",
                      s->cfg->node_id, "labels", "host", s->cfg->label_host, "pod",
                      s->cfg->label_pod, "az", s->cfg->label_az, "proto_version",
                      DHPS_PROTO_VERSION, "tcp_port", (int)s->rpc_port, "metrics_port",
                      (int)s->http_port, "nshards", (int)s->cfg->nshards, "shards", own,
                      "tables", tabs, "ready", dhps_server_ready(s), "max_keys",
                      (int)DHPS_PROTO_MAX_KEYS);
    else {
        json_decref(tabs);
        json_decref(own);
    }
    return resp_json(r, o, s->cfg->ntables);
}

static int do_snapshot(dhps_server *s, const srv_msg *m, dhps_rpc_request *r)
{
    srv_table *only = NULL;
    if (m->table[0] && !(only = find_table(s, m->table))) {
        srv_resp_error(r, DHPS_E_NOTFOUND, "unknown table \"%s\" on node %s", m->table,
                   s->cfg->node_id);
        return DHPS_E_NOTFOUND;
    }
    if (!s->cfg->snapshot_dir) {
        srv_resp_error(r, DHPS_E_CONFIG, "node %s has no snapshot.dir configured", s->cfg->node_id);
        return DHPS_E_CONFIG;
    }
    int rc = srv_snapshot_some(s, only);
    if (rc < 0) {
        srv_resp_error(r, rc, "snapshot failed: %s (see the server log)", dhps_strerror(rc));
        return rc;
    }
    dhps_proto_resp h = {.status = 0, .count = (uint32_t)rc};
    memcpy(r->resp, &h, sizeof h);
    r->resp_len = sizeof h;
    return 0;
}

static int method_index(uint16_t m)
{
    switch (m) {
    case DHPS_M_LOOKUP: return M_LOOKUP;
    case DHPS_M_UPSERT: return M_UPSERT;
    case DHPS_M_DELETE: return M_DELETE;
    case DHPS_M_STATS: return M_STATS;
    case DHPS_M_SNAPSHOT: return M_SNAPSHOT;
    case DHPS_M_SYNC_DIGEST:
    case DHPS_M_SYNC_FETCH: return M_SYNC;
    default: return M_INFO;
    }
}

int srv_rpc_handler(void *arg, dhps_rpc_request *r)
{
    dhps_server *s = arg;
    uint64_t t0 = dhps_mono_ns();
    srv_worker *w = &s->workers[r->worker % s->cfg->workers];
    if (r->resp_cap < sizeof(dhps_proto_resp))
        return -ENOSPC;
    srv_msg m;
    const char *why;
    srv_hold_enter(s, w); /* the stores it finds stay allocated until leave (hold.h) */
    int status = srv_msg_decode(r->method, r->req, r->req_len, &m, &why);
    if (status) {
        srv_resp_error(r, status, "%s request: %s", method_names[method_index(r->method)], why);
    } else {
        switch (r->method) {
        case DHPS_M_LOOKUP: status = do_lookup(s, w, &m, r); break;
        case DHPS_M_UPSERT: status = do_upsert(s, w, &m, r); break;
        case DHPS_M_DELETE: status = do_delete(s, w, &m, r); break;
        case DHPS_M_STATS: status = do_stats(s, &m, r); break;
        case DHPS_M_SNAPSHOT: status = do_snapshot(s, &m, r); break;
        case DHPS_M_SYNC_DIGEST:
        case DHPS_M_SYNC_FETCH: status = srv_sync_handle(s, &m, r); break;
        default: status = do_info(s, r); break;
        }
    }
    srv_hold_leave(w);
    int mi = method_index(r->method), si = NSTATUS - 1;
    for (int i = 0; i < (int)(sizeof status_codes / sizeof status_codes[0]); i++)
        if (status_codes[i] == status)
            si = i;
    add(&s->req[mi][si], 1);
    uint64_t dt = dhps_mono_ns() - t0, us = dt / 1000;
    size_t b = 0;
    while (b < NBUCKETS - 1 && us > lat_bounds_us[b])
        b++;
    add(&s->lat[mi][b], 1);
    add(&s->lat_sum_ns[mi], dt);
    return 0;
}

/* dhps server: stores per (table, shard), rpc handlers, snapshots, metrics. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/stat.h>
#include <jansson.h>
#include <microhttpd.h>

#include "dhps/log.h"
#include "dhps/rpc.h"
#include "dhps/store.h"
#include "admin.h"
#include "msg.h"
#include "srv_int.h"
#include "util.h"

#define LOGM "server"

/* ---- metrics layout ------------------------------------------------------------- */

enum { M_LOOKUP, M_UPSERT, M_DELETE, M_STATS, M_SNAPSHOT, M_INFO, NMETHODS };
static const char *const method_names[NMETHODS] = {"lookup", "upsert", "delete",
                                                   "stats",  "snapshot", "info"};
static const int status_codes[] = {0,
                                   DHPS_E_MALFORMED,
                                   DHPS_E_NOTFOUND,
                                   DHPS_E_TOOBIG,
                                   DHPS_E_VERSION,
                                   DHPS_E_FULL,
                                   DHPS_E_CONFIG};
static const char *const status_names[] = {"ok",     "malformed", "notfound", "toobig",
                                           "version", "full",     "config",   "other"};
#define NSTATUS 8
/* latency buckets, upper bounds in microseconds (+Inf implied) */
static const uint32_t lat_bounds_us[] = {10,   25,   50,    100,   250,   500,
                                         1000, 2500, 10000, 50000, 250000};
#define NBUCKETS (sizeof lat_bounds_us / sizeof lat_bounds_us[0] + 1)

typedef struct srv_table srv_table;

typedef struct srv_store {
    pthread_mutex_t mu;          /* writer lock: upserts, deletes, stats, snapshot */
    dhps_store *st;
    srv_table *t;
    uint32_t shard;
    uint32_t idx;                /* index in dhps_server.stores / worker readers */
} srv_store;

struct srv_table {
    dhps_server_table_config c;
    uint32_t row_bytes;          /* stored bytes per row */
    srv_store **by_shard;        /* nshards entries, NULL = not owned */
    uint64_t looked_up, found;   /* atomics */
};

typedef struct srv_worker {
    dhps_store_reader **readers; /* one per store */
    uint64_t *keys;              /* DHPS_PROTO_MAX_KEYS, for unaligned key arrays */
    uint64_t *mask;              /* DHPS_PROTO_MAX_KEYS / 64 */
    uint8_t *rows;               /* conversion scratch, 2 * max_msg */
} srv_worker;

struct dhps_server {
    dhps_server_config *cfg;
    uint8_t *secret;
    size_t secret_len;
    srv_table *tables;
    srv_store *stores;
    uint32_t nstores;
    srv_worker *workers;
    dhps_rpc_server *rpc;
    uint16_t rpc_port;
    struct MHD_Daemon *http;
    uint16_t http_port;
    bool ready;                  /* atomic */
    bool started, stopped;
    pthread_t snap_thread;
    bool snap_running;
    pthread_mutex_t ctl_mu;
    pthread_cond_t ctl_cv;
    bool stopping;
    srv_admin_replay replay;     /* /fault: signed changes already accepted */
    /* metrics (atomics) */
    uint64_t req[NMETHODS][NSTATUS];
    uint64_t lat[NMETHODS][NBUCKETS];
    uint64_t lat_sum_ns[NMETHODS];
    uint64_t snapshots_ok, snapshot_errors, loaded_records;
    uint64_t last_snapshot_unix;
};

static void add(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* ---- setup ------------------------------------------------------------------------ */

static int read_secret(dhps_server *s, char *err, size_t errlen)
{
    const char *path = s->cfg->secret_file;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        srv_errf(err, errlen, "secret_file %s: %s", path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    int rc = 0;
    struct stat sb;
    if (fstat(fd, &sb) == 0 && (sb.st_mode & S_IROTH))
        DHPS_LOG(DHPS_LOG_WARN, LOGM,
                 "secret_file %s is world-readable; chmod o-r it (the cluster secret "
                 "authenticates every peer)", path);
    uint8_t buf[DHPS_RPC_MAX_SECRET + 2];
    size_t len = 0;
    for (;;) {
        ssize_t k = read(fd, buf + len, sizeof buf - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            srv_errf(err, errlen, "secret_file %s: %s", path, strerror(errno));
            rc = DHPS_E_CONFIG;
            goto out;
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len == sizeof buf)
            break;
    }
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0) {
        srv_errf(err, errlen, "secret_file %s: empty (the cluster secret must not be empty)",
                 path);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    if (len > DHPS_RPC_MAX_SECRET) {
        srv_errf(err, errlen, "secret_file %s: longer than %u bytes", path,
                 DHPS_RPC_MAX_SECRET);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    if (!(s->secret = malloc(len))) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(s->secret, buf, len);
    s->secret_len = len;
out:
    memset(buf, 0, sizeof buf);
    close(fd);
    return rc;
}

static int rpc_handler(void *arg, dhps_rpc_request *r);

int dhps_server_create(const dhps_server_config *cfg, dhps_server **out, char *err,
                       size_t errlen)
{
    int rc;
    *out = NULL;
    srv_errf(err, errlen, "%s", "");
    dhps_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->ctl_mu, NULL);
    pthread_cond_init(&s->ctl_cv, NULL);
    srv_admin_replay_init(&s->replay);
    if (!(s->cfg = srv_config_dup(cfg))) {
        rc = -ENOMEM;
        goto fail;
    }
    cfg = s->cfg;
    if ((rc = dhps_server_config_resolve(s->cfg, err, errlen)))
        goto fail;
    if ((rc = read_secret(s, err, errlen)))
        goto fail;
    if (cfg->snapshot_dir) {
        struct stat sd;
        int sr = stat(cfg->snapshot_dir, &sd);
        if (sr || !S_ISDIR(sd.st_mode)) {
            srv_errf(err, errlen, "snapshot.dir %s: %s", cfg->snapshot_dir,
                     sr ? strerror(errno) : "not a directory");
            rc = DHPS_E_CONFIG;
            goto fail;
        }
    }

    uint32_t nowned = 0;
    for (uint32_t i = 0; i < cfg->nshards; i++)
        nowned += cfg->owned[i] ? 1 : 0;
    s->nstores = nowned * cfg->ntables;
    s->tables = calloc(cfg->ntables, sizeof *s->tables);
    s->stores = calloc(s->nstores ? s->nstores : 1, sizeof *s->stores);
    if (!s->tables || !s->stores) {
        rc = -ENOMEM;
        goto fail;
    }
    uint32_t k = 0;
    for (uint32_t t = 0; t < cfg->ntables; t++) {
        srv_table *tb = &s->tables[t];
        tb->c = cfg->tables[t];
        tb->row_bytes = tb->c.dim * (tb->c.dtype == DHPS_FP16 ? 2u : 4u);
        if (!(tb->by_shard = calloc(cfg->nshards, sizeof *tb->by_shard))) {
            rc = -ENOMEM;
            goto fail;
        }
        for (uint32_t sh = 0; sh < cfg->nshards; sh++) {
            if (!cfg->owned[sh])
                continue;
            srv_store *st = &s->stores[k];
            dhps_store_params p;
            dhps_store_params_init(&p);
            p.capacity_hint = tb->c.capacity / nowned < 1024 ? 1024 : tb->c.capacity / nowned;
            /* Segments sized to the shard: about 1/8 of its expected records, between
             * 64 KiB and 2 MiB, so hundreds of small shards per node do not each pin
             * a 2 MiB segment (docs/server.md). */
            uint64_t want = p.capacity_hint * (uint64_t)(tb->row_bytes + 24) / 8;
            p.segment_bytes = 64u << 10;
            while (p.segment_bytes < want && p.segment_bytes < (2u << 20))
                p.segment_bytes <<= 1;
            p.mem_limit = tb->c.mem_limit / nowned;
            if (p.mem_limit && p.mem_limit < 4ull * p.segment_bytes) /* the store's floor */
                p.mem_limit = 4ull * p.segment_bytes;
            p.default_ttl = tb->c.default_ttl;
            p.max_readers = cfg->workers + 4;
            if ((rc = dhps_store_create(&p, &st->st))) {
                srv_errf(err, errlen, "table %s shard %u: cannot create store: %s",
                         tb->c.name, sh, dhps_strerror(rc));
                goto fail;
            }
            pthread_mutex_init(&st->mu, NULL);
            st->t = tb;
            st->shard = sh;
            st->idx = k++;
            tb->by_shard[sh] = st;
        }
    }

    s->workers = calloc(cfg->workers, sizeof *s->workers);
    if (!s->workers) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t w = 0; w < cfg->workers; w++) {
        srv_worker *wk = &s->workers[w];
        wk->readers = calloc(s->nstores ? s->nstores : 1, sizeof *wk->readers);
        wk->keys = malloc(DHPS_PROTO_MAX_KEYS * sizeof(uint64_t));
        wk->mask = malloc(DHPS_PROTO_MAX_KEYS / 64 * sizeof(uint64_t) + 8);
        wk->rows = malloc(2 * (size_t)cfg->max_msg);
        if (!wk->readers || !wk->keys || !wk->mask || !wk->rows) {
            rc = -ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < s->nstores; i++)
            if ((rc = dhps_store_reader_open(s->stores[i].st, &wk->readers[i])))
                goto fail;
    }

    dhps_rpc_server_params rp;
    dhps_rpc_server_params_init(&rp);
    rp.host = cfg->listen_host;
    rp.port = cfg->tcp_port;
    rp.workers = cfg->workers;
    rp.secret = s->secret;
    rp.secret_len = s->secret_len;
    rp.max_msg = cfg->max_msg;
    if (cfg->hello_timeout_ms)
        rp.hello_timeout_ms = cfg->hello_timeout_ms;
    rp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | (cfg->shm ? DHPS_RPC_MASK(DHPS_RPC_SHM) : 0) |
               (cfg->verbs ? DHPS_RPC_MASK(DHPS_RPC_VERBS) : 0);
    uint8_t host_id[DHPS_RPC_HOST_ID_LEN];
    dhps_rpc_host_id(cfg->label_host, host_id); /* shm only with clients of our host label */
    rp.host_id = host_id;
    if ((rc = dhps_rpc_server_create(&rp, &s->rpc))) {
        srv_errf(err, errlen, "listen %s:%u: %s", cfg->listen_host, cfg->tcp_port,
                 dhps_strerror(rc));
        goto fail;
    }
    static const uint16_t methods[] = {DHPS_M_LOOKUP, DHPS_M_UPSERT,   DHPS_M_DELETE,
                                       DHPS_M_STATS,  DHPS_M_SNAPSHOT, DHPS_M_INFO};
    for (size_t i = 0; i < NMETHODS; i++)
        if ((rc = dhps_rpc_server_register(s->rpc, methods[i], rpc_handler, s)))
            goto fail;
    s->rpc_port = dhps_rpc_server_port(s->rpc);
    *out = s;
    return 0;
fail:
    dhps_server_destroy(s);
    return rc;
}

/* ---- snapshots -------------------------------------------------------------------- */

static void store_path(const dhps_server *s, const srv_store *st, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s.%u.snap", s->cfg->snapshot_dir, st->t->c.name, st->shard);
}

static int snapshot_store(dhps_server *s, srv_store *st)
{
    char path[4200];
    store_path(s, st, path, sizeof path);
    pthread_mutex_lock(&st->mu);
    int rc = dhps_store_snapshot(st->st, path);
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        add(&s->snapshot_errors, 1);
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "snapshot %s: %s", path, dhps_strerror(rc));
    } else {
        add(&s->snapshots_ok, 1);
        __atomic_store_n(&s->last_snapshot_unix, (uint64_t)time(NULL), __ATOMIC_RELAXED);
    }
    return rc;
}

/* Snapshot the stores of table t (NULL: all). Returns stores written or first error. */
static int snapshot_some(dhps_server *s, const srv_table *t)
{
    if (!s->cfg->snapshot_dir)
        return -ENOENT;
    int first = 0, n = 0;
    for (uint32_t i = 0; i < s->nstores; i++) {
        if (t && s->stores[i].t != t)
            continue;
        int rc = snapshot_store(s, &s->stores[i]);
        if (rc && !first)
            first = rc;
        else if (!rc)
            n++;
    }
    return first ? first : n;
}

int dhps_server_snapshot(dhps_server *s)
{
    return snapshot_some(s, NULL);
}

/* Background thread: once a second, a bounded maintenance step per store (expiry,
 * compaction, reclamation for stores that get no writes); every snapshot_interval_s, a
 * snapshot of every store. Each step holds one store's writer lock only. */
static void *bg_main(void *arg)
{
    dhps_server *s = arg;
    uint64_t last_snap = dhps_mono_ns();
    pthread_mutex_lock(&s->ctl_mu);
    while (!s->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        while (!s->stopping) {
            if (pthread_cond_timedwait(&s->ctl_cv, &s->ctl_mu, &ts) == ETIMEDOUT)
                break;
        }
        if (s->stopping)
            break;
        pthread_mutex_unlock(&s->ctl_mu);
        for (uint32_t i = 0; i < s->nstores; i++) {
            pthread_mutex_lock(&s->stores[i].mu);
            dhps_store_maintain(s->stores[i].st, 4u << 20);
            pthread_mutex_unlock(&s->stores[i].mu);
        }
        uint32_t iv = s->cfg->snapshot_interval_s;
        if (s->cfg->snapshot_dir && iv &&
            dhps_mono_ns() - last_snap >= (uint64_t)iv * 1000000000ull) {
            last_snap = dhps_mono_ns();
            int rc = snapshot_some(s, NULL);
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "periodic snapshot: %s",
                     rc < 0 ? dhps_strerror(rc) : "ok");
        }
        pthread_mutex_lock(&s->ctl_mu);
    }
    pthread_mutex_unlock(&s->ctl_mu);
    return NULL;
}

static int load_snapshots(dhps_server *s, char *err, size_t errlen)
{
    if (!s->cfg->snapshot_dir)
        return 0;
    for (uint32_t i = 0; i < s->nstores; i++) {
        srv_store *st = &s->stores[i];
        char path[4200];
        store_path(s, st, path, sizeof path);
        if (access(path, F_OK) != 0 && errno == ENOENT)
            continue;
        pthread_mutex_lock(&st->mu);
        long n = dhps_store_load(st->st, path);
        pthread_mutex_unlock(&st->mu);
        if (n < 0) {
            srv_errf(err, errlen,
                     "snapshot %s: %s; refusing to start (move the file aside to start this "
                     "shard empty)", path, dhps_strerror((int)n));
            return (int)n;
        }
        add(&s->loaded_records, (uint64_t)n);
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "loaded %ld records from %s", n, path);
    }
    return 0;
}

/* ---- rpc handlers ----------------------------------------------------------------- */

/* Write an error response: header with status, then a human-readable message. */
static void resp_error(dhps_rpc_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void resp_error(dhps_rpc_request *r, int status, const char *fmt, ...)
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

/* Resolve table + shard; on failure writes the error response and returns NULL. */
static srv_store *find_store(dhps_server *s, const srv_msg *m, dhps_rpc_request *r,
                             int *status)
{
    srv_table *t = find_table(s, m->table);
    if (!t) {
        *status = DHPS_E_NOTFOUND;
        resp_error(r, *status, "unknown table \"%s\" on node %s", m->table, s->cfg->node_id);
        return NULL;
    }
    if (m->shard >= s->cfg->nshards || !t->by_shard[m->shard]) {
        *status = DHPS_E_NOTFOUND;
        resp_error(r, *status, "shard %u of table %s is not owned by node %s (nshards %u)",
                   m->shard, t->c.name, s->cfg->node_id, s->cfg->nshards);
        return NULL;
    }
    return t->by_shard[m->shard];
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
    srv_store *st = find_store(s, m, r, &status);
    if (!st)
        return status;
    srv_table *t = st->t;
    bool want16 = (m->flags & DHPS_LOOKUP_FP16) != 0;
    size_t out_row = (size_t)t->c.dim * (want16 ? 2 : 4);
    size_t need = srv_lookup_resp_len(m->n, out_row);
    if (need > r->resp_cap) {
        resp_error(r, DHPS_E_TOOBIG,
                   "lookup response of %zu bytes exceeds the max message of %zu; split "
                   "the batch", need, r->resp_cap);
        return DHPS_E_TOOBIG;
    }
    const uint64_t *keys = aligned_keys(w, m);
    size_t mask_bytes = (size_t)((m->n + 63) / 64) * 8;
    uint8_t *rows = (uint8_t *)r->resp + sizeof(dhps_proto_resp) + mask_bytes;
    dhps_store_reader *rd = w->readers[st->idx];
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
        resp_error(r, DHPS_E_TOOBIG, "response does not fit the max message");
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
    srv_store *st = find_store(s, m, r, &status);
    if (!st)
        return status;
    srv_table *t = st->t;
    const char *why;
    if (srv_msg_check_rows(m, t->c.dim, &why)) {
        resp_error(r, DHPS_E_MALFORMED, "table %s (dim %u): %s", t->c.name, t->c.dim, why);
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
    dhps_store_batch b = {.keys = keys, .n = m->n, .values = vals,
                          .value_stride = t->row_bytes, .version = m->version,
                          .ttl = m->ttl};
    pthread_mutex_lock(&st->mu);
    long n = dhps_store_put(st->st, &b, w->mask);
    pthread_mutex_unlock(&st->mu);
    if (n < 0) {
        resp_error(r, (int)n, "upsert into table %s shard %u: %s (keys before the failing "
                   "one were applied)", t->c.name, st->shard, dhps_strerror((int)n));
        return (int)n;
    }
    mask_resp_finish(r, w->mask, m->n, (uint32_t)n);
    return 0;
}

static int do_delete(dhps_server *s, srv_worker *w, const srv_msg *m, dhps_rpc_request *r)
{
    int status;
    srv_store *st = find_store(s, m, r, &status);
    if (!st)
        return status;
    if (!mask_resp_fits(r, m->n))
        return DHPS_E_TOOBIG;
    const uint64_t *keys = aligned_keys(w, m);
    pthread_mutex_lock(&st->mu);
    size_t n = dhps_store_delete(st->st, keys, m->n, m->version, w->mask);
    pthread_mutex_unlock(&st->mu);
    mask_resp_finish(r, w->mask, m->n, (uint32_t)n);
    return 0;
}

typedef struct table_agg {
    dhps_store_stats st;
    uint32_t shards;
} table_agg;

static void aggregate(dhps_server *s, const srv_table *t, table_agg *a)
{
    memset(a, 0, sizeof *a);
    for (uint32_t i = 0; i < s->nstores; i++) {
        srv_store *st = &s->stores[i];
        if (st->t != t)
            continue;
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
    }
    a->st.fragmentation =
        a->st.segment_bytes ? 1.0 - (double)a->st.live_bytes / (double)a->st.segment_bytes : 0;
}

/* Dump a JSON object after a status-0 header. */
static int resp_json(dhps_rpc_request *r, json_t *o, uint32_t count)
{
    int rc = 0;
    if (!o) {
        resp_error(r, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    size_t room = r->resp_cap > sizeof(dhps_proto_resp) ? r->resp_cap - sizeof(dhps_proto_resp) : 0;
    size_t k = json_dumpb(o, (char *)r->resp + sizeof(dhps_proto_resp), room, JSON_COMPACT);
    if (k == 0 || k > room) {
        resp_error(r, DHPS_E_TOOBIG, "reply of %zu bytes exceeds the max message", k);
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
        resp_error(r, DHPS_E_NOTFOUND, "unknown table \"%s\" on node %s", m->table,
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
        aggregate(s, t, &a);
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
    for (uint32_t i = 0; own && i < s->cfg->nshards; i++)
        if (s->cfg->owned[i])
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
        resp_error(r, DHPS_E_NOTFOUND, "unknown table \"%s\" on node %s", m->table,
                   s->cfg->node_id);
        return DHPS_E_NOTFOUND;
    }
    if (!s->cfg->snapshot_dir) {
        resp_error(r, DHPS_E_CONFIG, "node %s has no snapshot.dir configured", s->cfg->node_id);
        return DHPS_E_CONFIG;
    }
    int rc = snapshot_some(s, only);
    if (rc < 0) {
        resp_error(r, rc, "snapshot failed: %s (see the server log)", dhps_strerror(rc));
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
    default: return M_INFO;
    }
}

static int rpc_handler(void *arg, dhps_rpc_request *r)
{
    dhps_server *s = arg;
    uint64_t t0 = dhps_mono_ns();
    srv_worker *w = &s->workers[r->worker % s->cfg->workers];
    if (r->resp_cap < sizeof(dhps_proto_resp))
        return -ENOSPC;
    srv_msg m;
    const char *why;
    int status = srv_msg_decode(r->method, r->req, r->req_len, &m, &why);
    if (status) {
        resp_error(r, status, "%s request: %s", method_names[method_index(r->method)], why);
    } else {
        switch (r->method) {
        case DHPS_M_LOOKUP: status = do_lookup(s, w, &m, r); break;
        case DHPS_M_UPSERT: status = do_upsert(s, w, &m, r); break;
        case DHPS_M_DELETE: status = do_delete(s, w, &m, r); break;
        case DHPS_M_STATS: status = do_stats(s, &m, r); break;
        case DHPS_M_SNAPSHOT: status = do_snapshot(s, &m, r); break;
        default: status = do_info(s, r); break;
        }
    }
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

/* ---- metrics over HTTP ------------------------------------------------------------ */

static void write_metrics(dhps_server *s, FILE *f)
{
    fprintf(f, "# HELP dhps_requests_total Requests by method and status.\n"
               "# TYPE dhps_requests_total counter\n");
    for (int m = 0; m < NMETHODS; m++)
        for (int k = 0; k < NSTATUS; k++)
            fprintf(f, "dhps_requests_total{method=\"%s\",status=\"%s\"} %llu\n",
                    method_names[m], status_names[k], (unsigned long long)get(&s->req[m][k]));
    fprintf(f, "# HELP dhps_request_seconds Handler latency by method.\n"
               "# TYPE dhps_request_seconds histogram\n");
    for (int m = 0; m < NMETHODS; m++) {
        uint64_t cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += get(&s->lat[m][b]);
            if (b < NBUCKETS - 1)
                fprintf(f, "dhps_request_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
                        method_names[m], lat_bounds_us[b] / 1e6, (unsigned long long)cum);
            else
                fprintf(f, "dhps_request_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
                        method_names[m], (unsigned long long)cum);
        }
        fprintf(f, "dhps_request_seconds_sum{method=\"%s\"} %.9f\n", method_names[m],
                get(&s->lat_sum_ns[m]) / 1e9);
        fprintf(f, "dhps_request_seconds_count{method=\"%s\"} %llu\n", method_names[m],
                (unsigned long long)cum);
    }
    fprintf(f, "# TYPE dhps_keys_looked_up_total counter\n# TYPE dhps_keys_found_total counter\n"
               "# TYPE dhps_table_keys gauge\n# TYPE dhps_table_live_bytes gauge\n"
               "# TYPE dhps_table_segment_bytes gauge\n# TYPE dhps_table_index_bytes gauge\n"
               "# TYPE dhps_table_fragmentation gauge\n"
               "# TYPE dhps_table_expired_records_total counter\n"
               "# TYPE dhps_table_evicted_records_total counter\n"
               "# TYPE dhps_table_stale_updates_total counter\n");
    for (uint32_t i = 0; i < s->cfg->ntables; i++) {
        srv_table *t = &s->tables[i];
        table_agg a;
        aggregate(s, t, &a);
        const char *n = t->c.name;
        fprintf(f, "dhps_keys_looked_up_total{table=\"%s\"} %llu\n", n,
                (unsigned long long)get(&t->looked_up));
        fprintf(f, "dhps_keys_found_total{table=\"%s\"} %llu\n", n,
                (unsigned long long)get(&t->found));
        fprintf(f, "dhps_table_keys{table=\"%s\"} %llu\n", n, (unsigned long long)a.st.keys);
        fprintf(f, "dhps_table_live_bytes{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.live_bytes);
        fprintf(f, "dhps_table_segment_bytes{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.segment_bytes);
        fprintf(f, "dhps_table_index_bytes{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.index_bytes);
        fprintf(f, "dhps_table_fragmentation{table=\"%s\"} %.6f\n", n, a.st.fragmentation);
        fprintf(f, "dhps_table_expired_records_total{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.expired_records);
        fprintf(f, "dhps_table_evicted_records_total{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.evicted_records);
        fprintf(f, "dhps_table_stale_updates_total{table=\"%s\"} %llu\n", n,
                (unsigned long long)a.st.stale_updates);
    }
    dhps_rpc_server_stats rs;
    memset(&rs, 0, sizeof rs);
    if (s->rpc)
        dhps_rpc_server_get_stats(s->rpc, &rs);
    fprintf(f, "# TYPE dhps_rpc_handled_total counter\n");
    for (int t = 0; t < DHPS_RPC_NTRANSPORTS; t++)
        fprintf(f, "dhps_rpc_handled_total{transport=\"%s\"} %llu\n",
                dhps_rpc_transport_name(t), (unsigned long long)rs.handled[t]);
    fprintf(f, "# TYPE dhps_rpc_accepted_total counter\ndhps_rpc_accepted_total %llu\n",
            (unsigned long long)rs.accepted);
    fprintf(f, "# TYPE dhps_rpc_rejected_auth_total counter\ndhps_rpc_rejected_auth_total %llu\n",
            (unsigned long long)rs.rejected_auth);
    fprintf(f, "# TYPE dhps_rpc_rejected_malformed_total counter\n"
               "dhps_rpc_rejected_malformed_total %llu\n",
            (unsigned long long)rs.rejected_malformed);
    fprintf(f, "# TYPE dhps_rpc_handler_errors_total counter\ndhps_rpc_handler_errors_total %llu\n",
            (unsigned long long)rs.handler_errors);
    fprintf(f, "# TYPE dhps_rpc_unknown_method_total counter\ndhps_rpc_unknown_method_total %llu\n",
            (unsigned long long)rs.unknown_method);
    fprintf(f, "# TYPE dhps_rpc_open_connections gauge\ndhps_rpc_open_connections %llu\n",
            (unsigned long long)rs.open_conns);
    fprintf(f, "# TYPE dhps_rpc_duplicates_total counter\ndhps_rpc_duplicates_total %llu\n",
            (unsigned long long)rs.duplicates);
    fprintf(f, "# TYPE dhps_rpc_verbs_failures_total counter\ndhps_rpc_verbs_failures_total %llu\n",
            (unsigned long long)rs.verbs_failures);
    fprintf(f, "# HELP dhps_fault_overflow_total Responses a delay fault rule should have held "
               "back, sent at once (hold bound reached).\n"
               "# TYPE dhps_fault_overflow_total counter\ndhps_fault_overflow_total %llu\n",
            (unsigned long long)rs.fault_overflow);
    fprintf(f, "# TYPE dhps_snapshots_total counter\ndhps_snapshots_total %llu\n",
            (unsigned long long)get(&s->snapshots_ok));
    fprintf(f, "# TYPE dhps_snapshot_errors_total counter\ndhps_snapshot_errors_total %llu\n",
            (unsigned long long)get(&s->snapshot_errors));
    fprintf(f, "# TYPE dhps_last_snapshot_timestamp_seconds gauge\n"
               "dhps_last_snapshot_timestamp_seconds %llu\n",
            (unsigned long long)get(&s->last_snapshot_unix));
    fprintf(f, "# TYPE dhps_loaded_records gauge\ndhps_loaded_records %llu\n",
            (unsigned long long)get(&s->loaded_records));
    fprintf(f, "# TYPE dhps_ready gauge\ndhps_ready %d\n", dhps_server_ready(s) ? 1 : 0);
    srv_fault_metrics(s->rpc, f);
}

/* ---- /fault: the rpc server's fault rules, set at run time (admin.faults) ---------- */

typedef struct http_req { /* one request's body, gathered across handler calls */
    size_t len;
    bool too_big;
    char body[SRV_ADMIN_MAX_BODY];
} http_req;

static void http_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

/* Queue body[0..len) (malloc'ed, taken over; NULL = out of memory) with code. */
static enum MHD_Result reply_len(struct MHD_Connection *conn, unsigned code,
                                 const char *ctype, char *body, size_t len)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body,
                                                                MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* reply_len of a NUL-terminated body. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *ctype,
                             char *body)
{
    return reply_len(conn, code, ctype, body, body ? strlen(body) : 0);
}

__attribute__((format(printf, 3, 4))) static enum MHD_Result
reply_text(struct MHD_Connection *conn, unsigned code, const char *fmt, ...)
{
    char *t = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&t, fmt, ap) < 0)
        t = NULL;
    va_end(ap);
    return reply(conn, code, "text/plain; charset=utf-8", t);
}

static enum MHD_Result http_fault(dhps_server *s, struct MHD_Connection *conn,
                                  const char *method, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    http_req *q = *con_cls;
    if (!q) { /* first call: headers only */
        if (!(q = calloc(1, sizeof *q)))
            return MHD_NO;
        *con_cls = q;
        return MHD_YES;
    }
    if (*upload_size) {
        if (q->len + *upload_size > SRV_ADMIN_MAX_BODY) {
            q->too_big = true;
        } else {
            memcpy(q->body + q->len, upload_data, *upload_size);
            q->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!s->cfg->admin_faults)
        return reply_text(conn, MHD_HTTP_FORBIDDEN,
                          "fault admin is disabled on this node: set \"admin\": {\"faults\": "
                          "true} in its config\n");
    if (!strcmp(method, "GET") || !strcmp(method, "HEAD"))
        return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
    bool set = !strcmp(method, "PUT") || !strcmp(method, "POST");
    if (!set && strcmp(method, "DELETE"))
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "fault: method %s not allowed (GET, PUT, POST, DELETE)\n", method);
    if (q->too_big)
        return reply_text(conn, 413 /* content too large */,
                          "fault body: longer than %u bytes\n", SRV_ADMIN_MAX_BODY);
    const char *peer = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "peer");
    const char *port = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "port");
    const char *all = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "all");
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, SRV_ADMIN_AUTH_HEADER);
    char err[512];
    if (srv_admin_auth(s->secret, s->secret_len, auth, method, "/fault", peer ? peer : "",
                       port ? port : "", all ? all : "", q->body, q->len, time(NULL), err,
                       sizeof err)) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "/fault %s refused: %s", method, err);
        return reply_text(conn, MHD_HTTP_UNAUTHORIZED, "%s\n", err);
    }
    int rp = srv_admin_replay_note(&s->replay, auth, time(NULL), err, sizeof err);
    if (rp) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "/fault %s refused: %s", method, err);
        return reply_text(conn, rp == -EBUSY ? 429 /* too many requests */
                                             : MHD_HTTP_UNAUTHORIZED, "%s\n", err);
    }
    if (!s->rpc)
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "fault: rpc server stopped\n");
    if (set) {
        srv_fault_req fr;
        if (srv_fault_parse(q->body, q->len, &fr, err, sizeof err))
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "%s\n", err);
        int rc = dhps_rpc_server_fault_set(s->rpc, fr.peer, fr.port, &fr.f);
        if (rc == -ENOSPC)
            return reply_text(conn, MHD_HTTP_CONFLICT, "fault: %u rules already set; delete "
                              "one first\n", DHPS_RPC_FAULT_MAX_RULES);
        if (rc)
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault: %s\n", dhps_strerror(rc));
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rule set: peer %s port %u: delay %u us (%u %%), "
                 "drop %u %%, partition %s", fr.peer, fr.port, fr.f.delay_us,
                 fr.f.delay_percent, fr.f.drop_percent, fr.f.partition ? "yes" : "no");
        return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
    }
    /* DELETE ?peer=IP|*[&port=P] or ?all=true */
    if (all && !strcmp(all, "true")) {
        int rc = dhps_rpc_server_fault_clear(s->rpc, NULL, 0);
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rules cleared (all)");
        return reply(conn, MHD_HTTP_OK, "application/json",
                     strdup(rc == 0 ? "{\"deleted\":\"all\"}" : "{\"deleted\":\"none\"}"));
    }
    if (all)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault all: must be true\n");
    if (!peer || !*peer)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST,
                          "fault peer: required (?peer=IP or ?peer=*, optional &port=P; or "
                          "?all=true)\n");
    unsigned long pv = 0;
    if (port) {
        char *end = NULL;
        errno = 0;
        pv = strtoul(port, &end, 10);
        if (!*port || *end || errno || pv > 65535 || port[0] == '-' || port[0] == '+')
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault port: must be 0..65535\n");
    }
    int rc = dhps_rpc_server_fault_clear(s->rpc, peer, (uint16_t)pv);
    if (rc == -EINVAL)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST,
                          "fault peer: must be a numeric IPv4 address or \"*\" (with port 0)\n");
    if (rc == -ENOENT)
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "fault peer: no rule for %s port %lu\n",
                          peer, pv);
    DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rule cleared: peer %s port %lu", peer, pv);
    return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_size,
                                    void **con_cls)
{
    dhps_server *s = cls;
    if (!strcmp(url, "/fault"))
        return http_fault(s, conn, method, upload_data, upload_size, con_cls);
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return MHD_NO;
    char *body = NULL;
    size_t len = 0;
    unsigned code = MHD_HTTP_OK;
    const char *ctype = "text/plain; charset=utf-8";
    if (!strcmp(url, "/metrics")) {
        FILE *f = open_memstream(&body, &len);
        if (!f)
            return MHD_NO;
        write_metrics(s, f);
        fclose(f);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    } else if (!strcmp(url, "/health")) {
        bool ok = dhps_server_ready(s);
        code = ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
        body = strdup(ok ? "ok\n" : "loading\n");
        len = body ? strlen(body) : 0;
    } else {
        code = MHD_HTTP_NOT_FOUND;
        body = strdup("not found: try /metrics, /health or /fault\n");
        len = body ? strlen(body) : 0;
    }
    return reply_len(conn, code, ctype, body, len);
}

/* ---- lifecycle -------------------------------------------------------------------- */

static int write_file_atomic(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -errno;
    int rc = fputs(text, f) < 0 ? -EIO : 0;
    if (fclose(f) && !rc)
        rc = -errno;
    if (!rc && rename(tmp, path))
        rc = -errno;
    if (rc)
        unlink(tmp);
    return rc;
}

int dhps_server_start(dhps_server *s, char *err, size_t errlen)
{
    int rc;
    srv_errf(err, errlen, "%s", "");
    if (s->started)
        return -EBUSY;
    s->started = true;
    const dhps_server_config *c = s->cfg;
    if (c->metrics_enabled) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(c->metrics_port)};
        inet_pton(AF_INET, c->metrics_host, &sin.sin_addr);
        s->http = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, c->metrics_port, NULL,
                                   NULL, http_handler, s, MHD_OPTION_SOCK_ADDR, &sin,
                                   MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                   MHD_OPTION_NOTIFY_COMPLETED, http_done, NULL,
                                   MHD_OPTION_END);
        if (!s->http) {
            srv_errf(err, errlen, "metrics %s:%u: cannot start the HTTP server (port in use?)",
                     c->metrics_host, c->metrics_port);
            return -EADDRINUSE;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->http, MHD_DAEMON_INFO_BIND_PORT);
        s->http_port = di ? di->port : c->metrics_port;
    }
    char line[64];
    if (c->pid_file) {
        snprintf(line, sizeof line, "%d\n", (int)getpid());
        if ((rc = write_file_atomic(c->pid_file, line))) {
            srv_errf(err, errlen, "pid_file %s: %s", c->pid_file, strerror(-rc));
            return rc;
        }
    }
    if (c->port_file) {
        snprintf(line, sizeof line, "%u %u\n", s->rpc_port, s->http_port);
        if ((rc = write_file_atomic(c->port_file, line))) {
            srv_errf(err, errlen, "port_file %s: %s", c->port_file, strerror(-rc));
            return rc;
        }
    }
    if (c->startup_delay_ms)
        usleep(c->startup_delay_ms * 1000u);
    if ((rc = load_snapshots(s, err, errlen)))
        return rc;
    if ((rc = dhps_rpc_server_start(s->rpc))) {
        srv_errf(err, errlen, "rpc start: %s", dhps_strerror(rc));
        return rc;
    }
    if ((rc = pthread_create(&s->snap_thread, NULL, bg_main, s))) {
        srv_errf(err, errlen, "background thread: %s", strerror(rc));
        return -rc;
    }
    s->snap_running = true;
    __atomic_store_n(&s->ready, true, __ATOMIC_RELEASE);
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "node %s ready: rpc port %u, metrics port %u, %u stores",
             c->node_id, s->rpc_port, s->http_port, s->nstores);
    return 0;
}

uint16_t dhps_server_port(const dhps_server *s)
{
    return s->rpc_port;
}

uint16_t dhps_server_metrics_port(const dhps_server *s)
{
    return s->http_port;
}

bool dhps_server_ready(const dhps_server *s)
{
    return __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE);
}

int dhps_server_stop(dhps_server *s)
{
    if (!s || s->stopped)
        return 0;
    s->stopped = true;
    int rc = 0;
    bool was_ready = dhps_server_ready(s);
    pthread_mutex_lock(&s->ctl_mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->ctl_cv);
    pthread_mutex_unlock(&s->ctl_mu);
    if (s->snap_running) {
        pthread_join(s->snap_thread, NULL);
        s->snap_running = false;
    }
    if (s->http) { /* first: its thread reads the rpc server's counters */
        MHD_stop_daemon(s->http);
        s->http = NULL;
    }
    dhps_rpc_server_destroy(s->rpc); /* no more writes after this */
    s->rpc = NULL;
    if (was_ready && s->cfg->snapshot_dir && s->cfg->snapshot_on_shutdown) {
        int n = snapshot_some(s, NULL);
        rc = n < 0 ? n : 0;
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "final snapshot: %s", n < 0 ? dhps_strerror(n) : "ok");
    }
    if (s->started && s->cfg->pid_file)
        unlink(s->cfg->pid_file);
    return rc;
}

void dhps_server_destroy(dhps_server *s)
{
    if (!s)
        return;
    dhps_server_stop(s);
    if (s->workers) {
        for (uint32_t w = 0; w < s->cfg->workers; w++) {
            srv_worker *wk = &s->workers[w];
            for (uint32_t i = 0; wk->readers && i < s->nstores; i++)
                dhps_store_reader_close(wk->readers[i]);
            free(wk->readers);
            free(wk->keys);
            free(wk->mask);
            free(wk->rows);
        }
        free(s->workers);
    }
    for (uint32_t i = 0; s->stores && i < s->nstores; i++) {
        if (s->stores[i].st) {
            dhps_store_destroy(s->stores[i].st);
            pthread_mutex_destroy(&s->stores[i].mu);
        }
    }
    free(s->stores);
    for (uint32_t t = 0; s->tables && t < s->cfg->ntables; t++)
        free(s->tables[t].by_shard);
    free(s->tables);
    if (s->secret) {
        memset(s->secret, 0, s->secret_len);
        free(s->secret);
    }
    dhps_server_config_free(s->cfg);
    srv_admin_replay_fini(&s->replay);
    pthread_cond_destroy(&s->ctl_cv);
    pthread_mutex_destroy(&s->ctl_mu);
    free(s);
}

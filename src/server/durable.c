/* dhps server: the update log's server side. See durable.h and docs/server.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dhps/log.h"
#include "dhps/wal.h"
#include "durable.h"
#include "logid.h"
#include "srv_int.h"
#include "sync.h"
#include "util.h"

#define LOGM "server"

struct srv_durable {
    dhps_wal *wal;
    pthread_mutex_t ckpt_mu;     /* checkpoint writes */
    uint64_t ckpt_lsn;           /* last checkpoint written or read */
    uint64_t *keys;              /* replay scratch: aligned keys (DHPS_PROTO_MAX_KEYS) */
    /* metrics (atomics where written after start) */
    uint64_t replayed, skipped, expired, replay_errors;
    uint64_t torn_bytes;
    uint64_t append_errors;
    uint64_t checkpoints;
};

/* ---- encoding --------------------------------------------------------------------- */

static inline uint64_t pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

size_t srv_log_encode_hdr(const srv_log_rec *r, uint8_t *hdr)
{
    size_t nl = strnlen(r->table, DHPS_TABLE_NAME_MAX - 1);
    memset(hdr, 0, SRV_LOG_FIXED + pad8(nl));
    hdr[0] = (uint8_t)r->kind;
    hdr[1] = (uint8_t)nl;
    memcpy(hdr + 4, &r->shard, 4);
    memcpy(hdr + 8, &r->version, 8);
    memcpy(hdr + 16, &r->wall_s, 8);
    memcpy(hdr + 24, &r->ttl, 4);
    memcpy(hdr + 28, &r->n, 4);
    memcpy(hdr + 32, &r->row_bytes, 4);
    memcpy(hdr + SRV_LOG_FIXED, r->table, nl);
    return SRV_LOG_FIXED + pad8(nl);
}

int srv_log_decode(const void *p, size_t len, srv_log_rec *out, const char **why)
{
    const uint8_t *b = p;
    memset(out, 0, sizeof *out);
    *why = NULL;
    if (len < SRV_LOG_FIXED) {
        *why = "shorter than the record header";
        return DHPS_E_MALFORMED;
    }
    uint16_t z16;
    uint32_t z32;
    memcpy(&z16, b + 2, 2);
    memcpy(&z32, b + 36, 4);
    out->kind = b[0];
    size_t nl = b[1];
    memcpy(&out->shard, b + 4, 4);
    memcpy(&out->version, b + 8, 8);
    memcpy(&out->wall_s, b + 16, 8);
    memcpy(&out->ttl, b + 24, 4);
    memcpy(&out->n, b + 28, 4);
    memcpy(&out->row_bytes, b + 32, 4);
    if (out->kind != SRV_LOG_UPSERT && out->kind != SRV_LOG_DELETE)
        *why = "unknown record kind";
    else if (z16 || z32)
        *why = "reserved fields not zero";
    else if (nl < 1 || nl >= DHPS_TABLE_NAME_MAX)
        *why = "table name length not 1..47";
    else if (out->n > DHPS_PROTO_MAX_KEYS)
        *why = "more keys than a request may carry";
    else if (out->ttl == DHPS_TTL_DEFAULT)
        *why = "unresolved default ttl";
    else if (out->kind == SRV_LOG_UPSERT &&
             (out->row_bytes < 1 || out->row_bytes > DHPS_STORE_MAX_VALUE))
        *why = "row bytes not 1..16383";
    else if (out->kind == SRV_LOG_DELETE && (out->row_bytes || out->ttl))
        *why = "a delete with rows or a ttl";
    if (*why)
        return DHPS_E_MALFORMED;
    uint64_t hl = SRV_LOG_FIXED + pad8(nl);
    uint64_t need = hl + (uint64_t)out->n * 8 + (uint64_t)out->n * out->row_bytes;
    if (len != need) {
        *why = len < need ? "shorter than its keys and rows" : "bytes after its rows";
        return DHPS_E_MALFORMED;
    }
    if (memchr(b + SRV_LOG_FIXED, 0, nl)) {
        *why = "NUL in the table name";
        return DHPS_E_MALFORMED;
    }
    for (uint64_t i = SRV_LOG_FIXED + nl; i < hl; i++)
        if (b[i]) {
            *why = "table name padding not zero";
            return DHPS_E_MALFORMED;
        }
    memcpy(out->table, b + SRV_LOG_FIXED, nl);
    out->table[nl] = 0;
    out->keys = b + hl;
    out->rows = out->kind == SRV_LOG_UPSERT ? b + hl + (uint64_t)out->n * 8 : NULL;
    return 0;
}

/* ---- write path ------------------------------------------------------------------- */

static int log_append(dhps_server *s, const srv_log_rec *r, const void *rows, size_t rows_len,
                      uint64_t *lsn)
{
    uint8_t hdr[SRV_LOG_HDR_MAX];
    size_t hl = srv_log_encode_hdr(r, hdr);
    struct iovec iov[3] = {{hdr, hl},
                           {(void *)r->keys, (size_t)r->n * 8},
                           {(void *)rows, rows_len}};
    int rc = dhps_wal_append(s->dur->wal, iov, rows_len ? 3 : 2, lsn);
    if (rc) {
        add(&s->dur->append_errors, 1);
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "update log append (table %s shard %u): %s",
                 r->table, r->shard, dhps_strerror(rc));
    }
    return rc;
}

int srv_durable_log_put(dhps_server *s, srv_store *st, const dhps_store_batch *b,
                        uint64_t *lsn)
{
    *lsn = 0;
    if (!s->dur)
        return 0;
    srv_log_rec r = {.kind = SRV_LOG_UPSERT, .shard = st->shard, .version = b->version,
                     .wall_s = (uint64_t)time(NULL), .ttl = b->ttl, .n = (uint32_t)b->n,
                     .row_bytes = st->t->row_bytes, .keys = (const uint8_t *)b->keys};
    if (r.ttl == DHPS_TTL_DEFAULT)
        r.ttl = st->t->c.default_ttl;
    memcpy(r.table, st->t->c.name, sizeof r.table);
    return log_append(s, &r, b->values, b->n * (size_t)st->t->row_bytes, lsn);
}

int srv_durable_log_delete(dhps_server *s, srv_store *st, const uint64_t *keys, uint32_t n,
                           uint64_t version, uint64_t *lsn)
{
    *lsn = 0;
    if (!s->dur)
        return 0;
    srv_log_rec r = {.kind = SRV_LOG_DELETE, .shard = st->shard, .version = version,
                     .wall_s = (uint64_t)time(NULL), .n = n,
                     .keys = (const uint8_t *)keys};
    memcpy(r.table, st->t->c.name, sizeof r.table);
    return log_append(s, &r, NULL, 0, lsn);
}

int srv_durable_wait(dhps_server *s, uint64_t lsn)
{
    if (!s->dur || !lsn || s->cfg->log_fsync != DHPS_WAL_SYNC_ALWAYS)
        return 0;
    return dhps_wal_wait(s->dur->wal, lsn);
}

/* ---- checkpoints ------------------------------------------------------------------ */

static void ckpt_path(const dhps_server *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s/checkpoint", s->cfg->log_dir);
}

/* The checkpoint file: "dhps-log-checkpoint 1 <lsn>\n". Missing: 0 (replay from the
 * oldest segment). Unreadable garbage: 0 too, with a warning (replaying more is safe). */
static uint64_t read_checkpoint(const dhps_server *s)
{
    char path[4200], buf[128] = "";
    ckpt_path(s, path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    unsigned long long v = 0;
    int ver = 0;
    if (sscanf(buf, "dhps-log-checkpoint %d %llu", &ver, &v) != 2 || ver != 1) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "%s: unreadable checkpoint; replaying the whole log",
                 path);
        return 0;
    }
    return v;
}

uint64_t srv_durable_begin(dhps_server *s)
{
    return s->dur ? dhps_wal_next_lsn(s->dur->wal) : 0;
}

int srv_durable_checkpoint(dhps_server *s, uint64_t lsn)
{
    if (!s->dur || !lsn)
        return 0;
    srv_durable *d = s->dur;
    int rc = 0;
    pthread_mutex_lock(&d->ckpt_mu);
    if (lsn <= d->ckpt_lsn) /* a later checkpoint is already written */
        goto out;
    char path[4200], tmp[4300], text[64];
    ckpt_path(s, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int k = snprintf(text, sizeof text, "dhps-log-checkpoint 1 %" PRIu64 "\n", lsn);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, text, (size_t)k) != k || fsync(fd))
        rc = errno ? -errno : -EIO;
    if (fd >= 0 && close(fd) && !rc)
        rc = -errno;
    if (!rc && rename(tmp, path))
        rc = -errno;
    if (!rc) {
        int dfd = open(s->cfg->log_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    if (rc) {
        unlink(tmp);
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "checkpoint %s: %s", path, strerror(-rc));
        goto out;
    }
    __atomic_store_n(&d->ckpt_lsn, lsn, __ATOMIC_RELAXED);
    add(&d->checkpoints, 1);
    int n = dhps_wal_truncate_before(d->wal, lsn);
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "checkpoint at LSN %" PRIu64 ": %d log segment(s) deleted",
             lsn, n < 0 ? 0 : n);
    if (n < 0)
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "log truncation: %s (retried at the next checkpoint)",
                 dhps_strerror(n));
out:
    pthread_mutex_unlock(&d->ckpt_mu);
    return rc;
}

bool srv_durable_over_limit(dhps_server *s)
{
    if (!s->dur)
        return false;
    dhps_wal_stats st;
    dhps_wal_get_stats(s->dur->wal, &st);
    return st.disk_bytes > (uint64_t)s->cfg->log_max_mb << 20;
}

/* ---- start: replay ------------------------------------------------------------------ */

static srv_table *find_table(dhps_server *s, const char *table)
{
    for (uint32_t i = 0; i < s->cfg->ntables; i++)
        if (!strcmp(s->tables[i].c.name, table))
            return &s->tables[i];
    return NULL;
}

/* The identities of the log's segments, in LSN order, one entry per run of segments
 * with the same identity string (logid.h). */
typedef struct id_run {
    uint64_t first_lsn;
    char *raw;                   /* the identity string */
    srv_logid *id;               /* NULL: the older form (the node id alone) */
} id_run;

typedef struct replay_ctx {
    dhps_server *s;
    srv_durable *d;
    char ident[DHPS_WAL_IDENTITY_MAX + 1]; /* this node's identity string */
    srv_logid mine;                        /* ... parsed */
    char mine_desc[400];
    id_run *runs;
    size_t nruns, cap, at;       /* at: the run of the record being replayed */
    bool legacy_noted;
    char why[1024];              /* a refused record: the reason ("" otherwise) */
} replay_ctx;

static const char *dtype_name(int dtype)
{
    return dtype == DHPS_FP16 ? "fp16" : "fp32";
}

/* dhps_wal_params.check: one segment's identity (logid.h). Accept this node's, of its
 * cluster and shard count, in the current form or the older one (the node id alone);
 * refuse any other, naming both. Keep it for the replay of the segment's records. */
static int check_segment(void *arg, const char *segment, uint64_t first_lsn,
                         const char *found, size_t len, char *err, size_t errlen)
{
    replay_ctx *x = arg;
    const char *node = x->s->cfg->node_id;
    srv_logid *id = NULL;
    if (x->nruns && strlen(x->runs[x->nruns - 1].raw) == len &&
        !memcmp(x->runs[x->nruns - 1].raw, found, len))
        return 0; /* as the segment before it */
    bool legacy = strlen(node) == len && !memcmp(found, node, len);
    if (!legacy) {
        const char *why;
        if (!(id = malloc(sizeof *id)))
            return -ENOMEM;
        int rc = srv_logid_parse(found, len, id, &why);
        if (rc) {
            size_t pl = strlen(SRV_LOGID_PREFIX);
            bool ours = len >= pl && !memcmp(found, SRV_LOGID_PREFIX, pl);
            free(id);
            if (!ours) { /* an older build's identity: another node's id */
                snprintf(err, errlen, "written by node \"%.*s\" (an older build's identity: "
                         "the node id alone), not by %s: another node's log",
                         (int)(len > 255 ? 255 : len), found, x->mine_desc);
                return DHPS_E_MISMATCH;
            }
            snprintf(err, errlen, "unreadable identity in the segment header: %s", why);
            return rc == DHPS_E_VERSION ? DHPS_E_VERSION : DHPS_E_CORRUPT;
        }
        bool cluster_differs = id->cluster[0] && x->mine.cluster[0] &&
                               strcmp(id->cluster, x->mine.cluster);
        bool node_differs = strcmp(id->node, x->mine.node) != 0;
        if (node_differs || cluster_differs || id->nshards != x->mine.nshards) {
            char theirs[400];
            srv_logid_describe(id, theirs, sizeof theirs);
            snprintf(err, errlen, "written by %s, not by %s: %s", theirs,
                     x->mine_desc,
                     node_differs || cluster_differs
                         ? "another node's or another cluster's log"
                         : "a log of another shard count (a cluster's shard count cannot "
                           "change)");
            free(id);
            return DHPS_E_MISMATCH;
        }
    } else if (!x->legacy_noted) {
        x->legacy_noted = true;
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "update log %s: written with the older identity (the "
                 "node id \"%s\" alone): accepted; new segments carry the full one",
                 segment, node);
    }
    if (x->nruns == x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 4;
        id_run *nr = realloc(x->runs, nc * sizeof *nr);
        if (!nr) {
            free(id);
            return -ENOMEM;
        }
        x->runs = nr;
        x->cap = nc;
    }
    char *raw = malloc(len + 1);
    if (!raw) {
        free(id);
        return -ENOMEM;
    }
    memcpy(raw, found, len + 1);
    x->runs[x->nruns++] = (id_run){first_lsn, raw, id};
    return 0;
}

static void free_runs(replay_ctx *x)
{
    for (size_t i = 0; i < x->nruns; i++) {
        free(x->runs[i].raw);
        free(x->runs[i].id);
    }
    free(x->runs);
    x->runs = NULL;
    x->nruns = x->cap = 0;
}

/* May record r (LSN lsn) be replayed into this node's tables? 0 and *tb, or an error
 * with the reason in x->why: its table must be listed by its segment's identity (the
 * current form) and be in the config with the same dim and dtype (the same row size,
 * for the older form), its shard below the shard count. */
static int record_fits(replay_ctx *x, uint64_t lsn, const srv_log_rec *r, srv_table **tb)
{
    while (x->at + 1 < x->nruns && x->runs[x->at + 1].first_lsn <= lsn)
        x->at++;
    const srv_logid *id = x->nruns ? x->runs[x->at].id : NULL;
    const srv_logid_table *lt = id ? srv_logid_table_find(id, r->table) : NULL;
    static const char drop[] = "or move the log aside to drop every update in it";
    *tb = find_table(x->s, r->table);
    if (id && !lt) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " updates table %s, which the identity "
                 "of its segment does not list", lsn, r->table);
        return DHPS_E_CORRUPT;
    }
    if (lt && r->kind == SRV_LOG_UPSERT &&
        r->row_bytes != lt->dim * (lt->dtype == DHPS_FP16 ? 2u : 4u)) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " holds %u-byte rows of table %s, "
                 "which its segment lists as dim %u %s", lsn, r->row_bytes, r->table, lt->dim,
                 dtype_name(lt->dtype));
        return DHPS_E_CORRUPT;
    }
    if (!*tb) {
        char was[64] = "";
        if (lt)
            snprintf(was, sizeof was, " (dim %u %s)", lt->dim, dtype_name(lt->dtype));
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " updates table %s%s, which the config "
                 "does not have: put the table back to replay its updates (a clean shutdown "
                 "then snapshots them and empties the log), %s", lsn, r->table, was, drop);
        return DHPS_E_MISMATCH;
    }
    const dhps_server_table_config *tc = &(*tb)->c;
    if (lt && (lt->dim != tc->dim || lt->dtype != tc->dtype)) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " updates table %s as it was written: "
                 "dim %u %s; the config says dim %u %s: restore the table's dim and dtype to "
                 "replay its updates, %s", lsn, r->table, lt->dim, dtype_name(lt->dtype),
                 tc->dim, dtype_name(tc->dtype), drop);
        return DHPS_E_MISMATCH;
    }
    if (!lt && r->kind == SRV_LOG_UPSERT && r->row_bytes != (*tb)->row_bytes) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " holds %u-byte rows of table %s; the "
                 "config's rows are %u bytes (dim %u %s): restore the table's dim and dtype "
                 "to replay its updates, %s", lsn, r->row_bytes, r->table, (*tb)->row_bytes,
                 tc->dim, dtype_name(tc->dtype), drop);
        return DHPS_E_MISMATCH;
    }
    if (r->shard >= x->s->cfg->nshards) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 " updates table %s shard %u, but the "
                 "cluster has %u shards: a log of another shard count", lsn, r->table,
                 r->shard, x->s->cfg->nshards);
        return DHPS_E_MISMATCH;
    }
    return 0;
}

static int replay_one(void *arg, uint64_t lsn, const void *p, size_t len)
{
    replay_ctx *x = arg;
    dhps_server *s = x->s;
    srv_durable *d = x->d;
    srv_log_rec r;
    const char *why;
    if (srv_log_decode(p, len, &r, &why)) {
        snprintf(x->why, sizeof x->why, "LSN %" PRIu64 ": undecodable record: %s", lsn, why);
        return DHPS_E_CORRUPT;
    }
    srv_table *tb;
    int rc = record_fits(x, lsn, &r, &tb);
    if (rc)
        return rc;
    srv_store *st = tb->by_shard[r.shard];
    if (!st) {
        if (d->skipped++ < 10)
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "update log LSN %" PRIu64 ": table %s shard %u is not "
                     "held by this node; skipped", lsn, r.table, r.shard);
        return 0;
    }
    memcpy(d->keys, r.keys, (size_t)r.n * 8);
    pthread_mutex_lock(&st->mu);
    if (r.kind == SRV_LOG_DELETE) {
        dhps_store_delete(st->st, d->keys, r.n, r.version, NULL);
        srv_sync_note_deletes(s, st, d->keys, r.n, r.version, (uint32_t)r.wall_s);
    } else {
        uint32_t ttl = r.ttl;
        if (ttl) {
            uint64_t now = (uint64_t)time(NULL);
            uint64_t age = now > r.wall_s ? now - r.wall_s : 0;
            ttl = age >= ttl ? 0 : ttl - (uint32_t)age;
        }
        if (r.ttl && !ttl) {
            d->expired++;
        } else {
            dhps_store_batch b = {.keys = d->keys, .n = r.n, .values = r.rows,
                                  .value_stride = r.row_bytes, .version = r.version,
                                  .ttl = ttl};
            long n = dhps_store_put(st->st, &b, NULL);
            if (n < 0 && d->replay_errors++ < 10)
                DHPS_LOG(DHPS_LOG_WARN, LOGM, "update log LSN %" PRIu64 ": table %s shard %u: "
                         "%s (as when it was first applied, if memory was as short)", lsn,
                         r.table, r.shard, dhps_strerror((int)n));
        }
    }
    pthread_mutex_unlock(&st->mu);
    d->replayed++;
    return 0;
}

int srv_durable_start(dhps_server *s, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    if (!c->log_enabled || !c->log_dir)
        return 0;
    srv_durable *d = calloc(1, sizeof *d);
    if (!d || !(d->keys = malloc(DHPS_PROTO_MAX_KEYS * sizeof(uint64_t)))) {
        free(d);
        return -ENOMEM;
    }
    pthread_mutex_init(&d->ckpt_mu, NULL);
    d->ckpt_lsn = read_checkpoint(s);
    /* this node's identity (logid.h): written into new segments, checked against each
     * existing one, and what each segment names checked against its records */
    replay_ctx *x = calloc(1, sizeof *x);
    const char *why = "out of memory";
    int rc = x ? srv_logid_encode(c, x->ident, sizeof x->ident) : -ENOMEM;
    if (rc == -ENAMETOOLONG)
        why = "too long"; /* cannot happen for a validated config: logid.h */
    else if (rc >= 0 && srv_logid_parse(x->ident, (size_t)rc, &x->mine, &why))
        rc = -EINVAL;     /* nor this */
    if (rc < 0) {
        srv_errf(err, errlen, "update log: this node's identity: %s", why);
        goto fail;
    }
    x->s = s;
    x->d = d;
    srv_logid_describe(&x->mine, x->mine_desc, sizeof x->mine_desc);
    dhps_wal_params p;
    dhps_wal_params_init(&p);
    p.dir = c->log_dir;
    p.identity = x->ident;
    p.check = check_segment;
    p.check_arg = x;
    p.sync = c->log_fsync;
    p.interval_ms = c->log_fsync_interval_ms;
    p.segment_bytes = (uint64_t)c->log_segment_mb << 20;
    dhps_wal_report rep;
    char werr[1024] = "";
    uint64_t t0 = dhps_mono_ns();
    rc = dhps_wal_open(&p, d->ckpt_lsn, replay_one, x, &rep, &d->wal, werr, sizeof werr);
    if (rc) {
        char *cut = x->why[0] ? strstr(werr, ": replay of LSN") : NULL;
        if (cut) /* "wal <file>: replay of LSN n: <strerror>": the reason says more */
            *cut = 0;
        srv_errf(err, errlen, "update log: %s%s%s; refusing to start (the log holds "
                 "acknowledged updates: repair or move %s aside to start without them)",
                 werr[0] ? werr : dhps_strerror(rc), x->why[0] ? ": " : "", x->why,
                 c->log_dir);
        goto fail;
    }
    free_runs(x);
    free(x);
    /* published after replay: the metrics thread (up since before the load) reads it */
    __atomic_store_n(&s->dur, d, __ATOMIC_RELEASE);
    d->torn_bytes = rep.torn_bytes;
    if (rep.torn_bytes)
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "update log: torn tail of %s cut: %" PRIu64 " bytes at "
                 "offset %" PRIu64 " dropped, replayed through LSN %" PRIu64, rep.torn_segment,
                 rep.torn_bytes, rep.torn_offset, rep.torn_lsn);
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "update log %s: %" PRIu64 " segment(s), checkpoint LSN %"
             PRIu64 ", %" PRIu64 " record(s) replayed (%" PRIu64 " skipped, %" PRIu64
             " expired) in %.3f s; next LSN %" PRIu64, c->log_dir, rep.segments, d->ckpt_lsn,
             d->replayed, d->skipped, d->expired, (double)(dhps_mono_ns() - t0) / 1e9,
             rep.next_lsn);
    return 0;
fail:
    if (x)
        free_runs(x);
    free(x);
    pthread_mutex_destroy(&d->ckpt_mu);
    free(d->keys);
    free(d);
    return rc;
}

void srv_durable_close(dhps_server *s)
{
    srv_durable *d = s->dur;
    if (!d)
        return;
    s->dur = NULL;
    dhps_wal_close(d->wal);
    pthread_mutex_destroy(&d->ckpt_mu);
    free(d->keys);
    free(d);
}

/* ---- metrics -------------------------------------------------------------------- */

void srv_durable_metrics(dhps_server *s, FILE *f)
{
    srv_durable *d = __atomic_load_n(&s->dur, __ATOMIC_ACQUIRE);
    if (!d)
        return;
    dhps_wal_stats st;
    dhps_wal_get_stats(d->wal, &st);
    fprintf(f,
            "# HELP dhps_log_bytes Bytes of update log segment files on disk.\n"
            "# TYPE dhps_log_bytes gauge\ndhps_log_bytes %" PRIu64 "\n"
            "# HELP dhps_log_segments Update log segment files.\n"
            "# TYPE dhps_log_segments gauge\ndhps_log_segments %" PRIu64 "\n"
            "# HELP dhps_log_records_total Records appended to the update log since start.\n"
            "# TYPE dhps_log_records_total counter\ndhps_log_records_total %" PRIu64 "\n"
            "# HELP dhps_log_append_errors_total Update log appends that failed (the write "
            "was refused).\n"
            "# TYPE dhps_log_append_errors_total counter\ndhps_log_append_errors_total %" PRIu64
            "\n"
            "# HELP dhps_log_fsyncs_total fdatasync calls on the update log.\n"
            "# TYPE dhps_log_fsyncs_total counter\ndhps_log_fsyncs_total %" PRIu64 "\n"
            "# HELP dhps_log_fsync_seconds_total Time spent in those fdatasync calls.\n"
            "# TYPE dhps_log_fsync_seconds_total counter\ndhps_log_fsync_seconds_total %.6f\n"
            "# HELP dhps_log_next_lsn LSN the next update log record gets.\n"
            "# TYPE dhps_log_next_lsn gauge\ndhps_log_next_lsn %" PRIu64 "\n"
            "# HELP dhps_log_checkpoint_lsn LSN of the last checkpoint (records below it are "
            "in the snapshots).\n"
            "# TYPE dhps_log_checkpoint_lsn gauge\ndhps_log_checkpoint_lsn %" PRIu64 "\n"
            "# HELP dhps_log_checkpoints_total Checkpoints written since start.\n"
            "# TYPE dhps_log_checkpoints_total counter\ndhps_log_checkpoints_total %" PRIu64 "\n"
            "# HELP dhps_log_replayed_records Update log records replayed at start.\n"
            "# TYPE dhps_log_replayed_records gauge\ndhps_log_replayed_records %" PRIu64 "\n"
            "# HELP dhps_log_replay_skipped_records Records skipped at start (table or shard "
            "not served here).\n"
            "# TYPE dhps_log_replay_skipped_records gauge\ndhps_log_replay_skipped_records %"
            PRIu64 "\n"
            "# HELP dhps_log_torn_bytes Bytes of a torn update log tail cut at start.\n"
            "# TYPE dhps_log_torn_bytes gauge\ndhps_log_torn_bytes %" PRIu64 "\n",
            st.disk_bytes, st.segments, st.appended, get(&d->append_errors), st.fsyncs,
            (double)st.fsync_ns / 1e9, st.next_lsn,
            __atomic_load_n(&d->ckpt_lsn, __ATOMIC_RELAXED), get(&d->checkpoints),
            d->replayed, d->skipped, d->torn_bytes);
}

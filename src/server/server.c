/* dhps server: create/start/stop/destroy, stores per (table, shard), snapshots, the
 * background thread. Handlers in handlers.c, HTTP in http.c. */
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
#include <sys/stat.h>

#include "dhps/log.h"
#include "dhps/rpc.h"
#include "dhps/store.h"
#include "admin.h"
#include "durable.h"
#include "hold.h"
#include "srv_int.h"
#include "member.h"
#include "sync.h"
#include "secret.h"
#include "util.h"

#define LOGM "server"

/* ---- setup ------------------------------------------------------------------------ */

static int read_secret(dhps_server *s, char *err, size_t errlen)
{
    const char *path = s->cfg->secret_file;
    uint8_t buf[DHPS_RPC_MAX_SECRET];
    size_t len = 0;
    char e[4400];
    int rc = dhps_secret_load(path, buf, sizeof buf, &len, e, sizeof e);
    if (rc) {
        srv_errf(err, errlen, "config secret_file: %s", e);
        return rc;
    }
    if (!(s->secret = malloc(len)))
        rc = -ENOMEM;
    else {
        memcpy(s->secret, buf, len);
        s->secret_len = len;
    }
    memset(buf, 0, sizeof buf);
    return rc;
}

int dhps_server_create(const dhps_server_config *cfg, dhps_server **out, char *err,
                       size_t errlen)
{
    int rc;
    *out = NULL;
    srv_errf(err, errlen, "%s", "");
    dhps_cluster_map *m0 = NULL; /* the map to start from (NULL: explicit shards) */
    int rpc_fd = cfg->rpc_fd;     /* the given sockets are ours: rpc_fd until the rpc */
    dhps_server *s = calloc(1, sizeof *s); /* server takes it, the others in s */
    if (!s) {
        const int fds[] = {cfg->rpc_fd, cfg->metrics_fd, cfg->health_fd};
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        return -ENOMEM;
    }
    s->metrics_fd = cfg->metrics_fd;
    s->health_fd = cfg->health_fd;
    pthread_mutex_init(&s->ctl_mu, NULL);
    pthread_cond_init(&s->ctl_cv, NULL);
    srv_admin_replay_init(&s->replay);
    if (!(s->cfg = srv_config_dup(cfg))) {
        rc = -ENOMEM;
        goto fail;
    }
    cfg = s->cfg;
    if ((rc = read_secret(s, err, errlen)))
        goto fail;
    if ((rc = srv_check_files(cfg, err, errlen))) /* the same checks as --check-config */
        goto fail;

    if (cfg->follow_etcd) {
        if ((rc = srv_hold_initial_map(cfg, &m0, err, errlen)) ||
            (rc = srv_config_resolve_map(s->cfg, m0, err, errlen)))
            goto fail;
    } else if (cfg->cluster_map) {
        if ((rc = dhps_server_config_resolve(s->cfg, err, errlen)))
            goto fail;
        if ((rc = dhps_cluster_map_load(cfg->cluster_map, &m0, err, errlen)))
            goto fail; /* the applied map: sync peers, dhps_map_version, registration */
    }
    if ((rc = srv_check_listen_fds(cfg, err, errlen))) /* with tcp_port resolved */
        goto fail;
    s->follow = cfg->follow_etcd;
    s->tables = calloc(cfg->ntables, sizeof *s->tables);
    if (!s->tables) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t t = 0; t < cfg->ntables; t++) {
        srv_table *tb = &s->tables[t];
        tb->c = cfg->tables[t];
        tb->row_bytes = tb->c.dim * (tb->c.dtype == DHPS_FP16 ? 2u : 4u);
    }
    s->workers = aligned_alloc(64, cfg->workers * sizeof *s->workers);
    if (s->workers)
        memset(s->workers, 0, cfg->workers * sizeof *s->workers);
    if (!s->workers) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t w = 0; w < cfg->workers; w++) {
        srv_worker *wk = &s->workers[w];
        wk->keys = malloc(DHPS_PROTO_MAX_KEYS * sizeof(uint64_t));
        wk->mask = malloc(DHPS_PROTO_MAX_KEYS / 64 * sizeof(uint64_t) + 8);
        wk->rows = malloc(2 * (size_t)cfg->max_msg);
        if (!wk->keys || !wk->mask || !wk->rows) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    s->hold_init = true;
    rc = srv_hold_init(s, m0, err, errlen); /* takes m0 */
    m0 = NULL;
    if (rc)
        goto fail;

    dhps_rpc_server_params rp;
    dhps_rpc_server_params_init(&rp);
    rp.host = cfg->listen_host;
    rp.port = cfg->tcp_port;
    rp.listen_fd = rpc_fd; /* taken over, also when the create fails */
    rpc_fd = -1;
    rp.workers = cfg->workers;
    rp.secret = s->secret;
    rp.secret_len = s->secret_len;
    rp.max_msg = cfg->max_msg;
    if (cfg->hello_timeout_ms)
        rp.hello_timeout_ms = cfg->hello_timeout_ms;
    if (cfg->rpc_max_connections)
        rp.max_connections = cfg->rpc_max_connections;
    if (cfg->rpc_max_conns_per_peer)
        rp.max_conns_per_peer = cfg->rpc_max_conns_per_peer;
    if (cfg->rpc_max_input_mb)
        rp.max_input_bytes = (uint64_t)cfg->rpc_max_input_mb << 20;
    if (cfg->rpc_frame_timeout_ms)
        rp.frame_timeout_ms = cfg->rpc_frame_timeout_ms;
    rp.idle_timeout_ms = cfg->rpc_idle_timeout_s * 1000u;
    rp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | (cfg->shm ? DHPS_RPC_MASK(DHPS_RPC_SHM) : 0) |
               (cfg->verbs ? DHPS_RPC_MASK(DHPS_RPC_VERBS) : 0);
    uint8_t host_id[DHPS_RPC_HOST_ID_LEN];
    dhps_rpc_host_id(cfg->label_host, host_id); /* shm only with clients of our host label */
    rp.host_id = host_id;
    if (cfg->tls_policy != DHPS_RPC_TLS_OFF) { /* files checked by srv_check_files */
        rp.tls_cert_file = cfg->tls_cert_file;
        rp.tls_key_file = cfg->tls_key_file;
        rp.tls_ca_file = cfg->tls_ca_file;
        rp.tls_verify_client = cfg->tls_verify_clients;
        rp.tls_require = cfg->tls_policy == DHPS_RPC_TLS_ALWAYS;
    }
    if ((rc = dhps_rpc_server_create(&rp, &s->rpc))) {
        srv_errf(err, errlen, "listen %s:%u: %s", cfg->listen_host, cfg->tcp_port,
                 dhps_strerror(rc));
        goto fail;
    }
    static const uint16_t methods[] = {DHPS_M_LOOKUP,   DHPS_M_UPSERT,      DHPS_M_DELETE,
                                       DHPS_M_STATS,    DHPS_M_SNAPSHOT,    DHPS_M_INFO,
                                       DHPS_M_SYNC_DIGEST, DHPS_M_SYNC_FETCH};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if ((rc = dhps_rpc_server_register(s->rpc, methods[i], srv_rpc_handler, s)))
            goto fail;
    s->rpc_port = dhps_rpc_server_port(s->rpc);
    if ((rc = srv_sync_create(s, &s->sync, err, errlen)))
        goto fail;
    *out = s;
    return 0;
fail:
    if (rpc_fd >= 0)
        close(rpc_fd);
    dhps_cluster_map_destroy(m0);
    dhps_server_destroy(s);
    return rc;
}

/* ---- snapshots -------------------------------------------------------------------- */

static void store_path(const dhps_server *s, const srv_store *st, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s.%u.snap", s->cfg->snapshot_dir, st->t->c.name, st->shard);
}

/* Snapshot one store; a dropped one is skipped (its file was deleted at the drop). */
static int snapshot_store(dhps_server *s, srv_store *st)
{
    char path[4200];
    store_path(s, st, path, sizeof path);
    pthread_mutex_lock(&st->mu);
    bool dropped = st->dropped;
    int rc = dropped ? 0 : dhps_store_snapshot(st->st, path);
    pthread_mutex_unlock(&st->mu);
    if (dropped)
        return 0;
    if (rc) {
        add(&s->snapshot_errors, 1);
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "snapshot %s: %s", path, dhps_strerror(rc));
    } else {
        add(&s->snapshots_ok, 1);
        __atomic_store_n(&s->last_snapshot_unix, (uint64_t)time(NULL), __ATOMIC_RELAXED);
    }
    return rc;
}

int srv_snapshot_some(dhps_server *s, const srv_table *t)
{
    if (!s->cfg->snapshot_dir)
        return -ENOENT;
    int first = 0, n = 0;
    uint64_t ckpt = t ? 0 : srv_durable_begin(s); /* a full snapshot checkpoints the log */
    srv_store **v;
    size_t k = srv_hold_stores_get(s, t, &v); /* after L: a store added later logs >= L */
    for (size_t i = 0; i < k; i++) {
        int rc = snapshot_store(s, v[i]);
        if (rc && !first)
            first = rc;
        else if (!rc)
            n++;
    }
    srv_hold_stores_put(v, k);
    if (!first && ckpt)
        first = srv_durable_checkpoint(s, ckpt);
    return first ? first : n;
}

int dhps_server_snapshot(dhps_server *s)
{
    return srv_snapshot_some(s, NULL);
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
        srv_store **v;
        size_t k = srv_hold_stores_get(s, NULL, &v);
        for (size_t i = 0; i < k; i++) {
            pthread_mutex_lock(&v[i]->mu);
            dhps_store_maintain(v[i]->st, 4u << 20);
            pthread_mutex_unlock(&v[i]->mu);
        }
        srv_hold_stores_put(v, k);
        srv_hold_reclaim(s, false);
        if (s->sync)
            srv_sync_maintain(s->sync);
        uint32_t iv = s->cfg->snapshot_interval_s;
        if (s->cfg->snapshot_dir && __atomic_exchange_n(&s->want_checkpoint, false,
                                                        __ATOMIC_ACQ_REL)) {
            /* a shard was dropped: a checkpoint takes its records out of the update log,
             * so a restart never replays them into a store this node holds again */
            last_snap = dhps_mono_ns();
            int rc = srv_snapshot_some(s, NULL);
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "snapshot after dropping shards: %s",
                     rc < 0 ? dhps_strerror(rc) : "ok");
            if (rc < 0)
                __atomic_store_n(&s->want_checkpoint, true, __ATOMIC_RELEASE);
        } else if (s->cfg->snapshot_dir && iv &&
            dhps_mono_ns() - last_snap >= (uint64_t)iv * 1000000000ull) {
            last_snap = dhps_mono_ns();
            int rc = srv_snapshot_some(s, NULL);
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "periodic snapshot: %s",
                     rc < 0 ? dhps_strerror(rc) : "ok");
        } else if (srv_durable_over_limit(s)) { /* log.max_mb: a checkpoint truncates it */
            last_snap = dhps_mono_ns();
            int rc = srv_snapshot_some(s, NULL);
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "snapshot for the update log size: %s",
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
    for (srv_store *st = s->live; st; st = st->next) { /* before any other thread runs */
        char path[4200];
        store_path(s, st, path, sizeof path);
        if (access(path, F_OK) != 0 && errno == ENOENT)
            continue;
        pthread_mutex_lock(&st->mu);
        long n = dhps_store_load(st->st, path);
        pthread_mutex_unlock(&st->mu);
        if (n == DHPS_E_MISMATCH) {
            dhps_store_identity id;
            memset(&id, 0, sizeof id);
            (void)dhps_store_file_identity(path, &id);
            srv_errf(err, errlen,
                     "snapshot %s holds table %s shard %u of %u%s%s, not table %s shard %u of %u: "
                     "refusing to start (a file copied or restored to the wrong name? move it "
                     "aside to start this shard empty)", path, id.table, id.shard, id.nshards,
                     id.cluster[0] ? " of cluster " : "", id.cluster, st->t->c.name, st->shard,
                     s->cfg->nshards);
            return (int)n;
        }
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
    if (c->metrics_enabled && (rc = srv_http_start(s, err, errlen)))
        return rc;
    char line[64];
    if (c->pid_file) {
        snprintf(line, sizeof line, "%d\n", (int)getpid());
        if ((rc = write_file_atomic(c->pid_file, line))) {
            srv_errf(err, errlen, "pid_file %s: %s", c->pid_file, strerror(-rc));
            return rc;
        }
    }
    if (c->port_file) {
        snprintf(line, sizeof line, "%u %u %u\n", s->rpc_port, s->http_port, s->health_port);
        if ((rc = write_file_atomic(c->port_file, line))) {
            srv_errf(err, errlen, "port_file %s: %s", c->port_file, strerror(-rc));
            return rc;
        }
    }
    if (c->startup_delay_ms)
        usleep(c->startup_delay_ms * 1000u);
    if (c->startup_gate_file) { /* test hook: the test decides when loading may begin */
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "waiting for %s before loading", c->startup_gate_file);
        while (access(c->startup_gate_file, F_OK) != 0)
            usleep(10000);
    }
    if ((rc = load_snapshots(s, err, errlen)))
        return rc;
    if ((rc = srv_durable_start(s, err, errlen))) /* replay the update log */
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
    if ((rc = srv_sync_start(s->sync))) {
        srv_errf(err, errlen, "sync thread: %s", dhps_strerror(rc));
        return rc;
    }
    struct srv_member *mb = NULL;
    if ((rc = srv_member_start(s, &mb))) { /* etcd down is not an error here */
        srv_errf(err, errlen, "coord: %s", dhps_strerror(rc));
        return rc;
    }
    __atomic_store_n(&s->member, mb, __ATOMIC_RELEASE); /* the metrics thread reads it */
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "node %s serving: rpc port %u, metrics port %u, %u stores "
             "(%s)", c->node_id, s->rpc_port, s->http_port,
             __atomic_load_n(&s->nlive, __ATOMIC_RELAXED),
             dhps_server_ready(s) ? "ready" : "catching up from peers");
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

uint16_t dhps_server_health_port(const dhps_server *s)
{
    return s->health_port;
}

bool dhps_server_ready(const dhps_server *s)
{
    return __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE) &&
           __atomic_load_n(&s->initial_pending, __ATOMIC_ACQUIRE) == 0;
}

int dhps_server_stop(dhps_server *s)
{
    if (!s || s->stopped)
        return 0;
    s->stopped = true;
    int rc = 0;
    bool was_ready = __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE); /* recovered */
    pthread_mutex_lock(&s->ctl_mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->ctl_cv);
    pthread_mutex_unlock(&s->ctl_mu);
    srv_member_stop(s->member); /* deregister first: clients stop being told about us */
    if (s->snap_running) {
        pthread_join(s->snap_thread, NULL);
        s->snap_running = false;
    }
    srv_http_stop(s); /* first: its thread reads the rpc server's counters */
    srv_sync_stop(s->sync); /* its calls go to peers; exports are served by rpc */
    dhps_rpc_server_destroy(s->rpc); /* no more writes after this */
    s->rpc = NULL;
    if (was_ready && s->cfg->snapshot_dir && s->cfg->snapshot_on_shutdown) {
        int n = srv_snapshot_some(s, NULL);
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
    srv_durable_close(s);
    srv_sync_destroy(s->sync);
    srv_member_destroy(s->member);
    if (s->hold_init)
        srv_hold_fini(s);
    if (s->workers) {
        for (uint32_t w = 0; w < s->cfg->workers; w++) {
            srv_worker *wk = &s->workers[w];
            free(wk->keys);
            free(wk->mask);
            free(wk->rows);
        }
        free(s->workers);
    }
    free(s->tables);
    if (s->secret) {
        memset(s->secret, 0, s->secret_len);
        free(s->secret);
    }
    dhps_server_config_free(s->cfg);
    if (s->metrics_fd >= 0) /* given, never handed to a daemon */
        close(s->metrics_fd);
    if (s->health_fd >= 0)
        close(s->health_fd);
    srv_admin_replay_fini(&s->replay);
    pthread_cond_destroy(&s->ctl_cv);
    pthread_mutex_destroy(&s->ctl_mu);
    free(s);
}

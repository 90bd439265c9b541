/* Replica catch-up and anti-entropy: lifecycle, the pulling thread's passes, metrics.
 * See sync.h and docs/server.md. */
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
#include "hold.h"
#include "sync_int.h"
#include "util.h"

#define LOGM "sync"

int srv_sync_create(dhps_server *s, srv_sync **out, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    (void)err;
    (void)errlen;
    *out = NULL;
    srv_sync *y = calloc(1, sizeof *y);
    if (!y)
        return -ENOMEM;
    y->s = s;
    y->self = c->map_node;
    y->nranges = c->sync_ranges ? c->sync_ranges : 256;
    y->has_map = s->map && c->sync_enabled;
    pthread_mutex_init(&y->mu, NULL);
    pthread_mutex_init(&y->wmu, NULL);
    pthread_cond_init(&y->wcv, NULL);
    if (getrandom(&y->seed, sizeof y->seed, 0) != (ssize_t)sizeof y->seed)
        y->seed = dhps_mono_ns() ^ (uint64_t)(uintptr_t)y;
    y->stores_sync = __atomic_load_n(&s->not_ready, __ATOMIC_RELAXED);
    *out = y;
    return 0;
}

/* Take the server's current map for this pass: grow the peer table to its node ids and
 * close channels to nodes it moved or removed. */
static void pin_map(srv_sync *y)
{
    srv_map *m = srv_hold_map_get(y->s);
    if (m == y->pin) {
        srv_hold_map_put(m);
        return;
    }
    uint32_t need = m ? dhps_cluster_map_max_node_id(m->m) + 1 : 0;
    if (need > y->npeers) {
        sync_peer *np = realloc(y->peers, need * sizeof *np);
        if (!np) {
            srv_hold_map_put(m); /* keep the old map; retried next pass */
            return;
        }
        memset(np + y->npeers, 0, (need - y->npeers) * sizeof *np);
        y->peers = np;
        y->npeers = need;
    }
    for (uint32_t id = 0; id < y->npeers; id++) {
        sync_peer *p = &y->peers[id];
        const dhps_cluster_node *nd = m ? dhps_cluster_map_node(m->m, id) : NULL;
        if (p->ch && (!nd || strcmp(nd->addr, p->addr))) {
            dhps_rpc_channel_close(p->ch);
            p->ch = NULL;
        }
    }
    srv_hold_map_put(y->pin);
    y->pin = m;
    y->map = m ? m->m : NULL;
}

static bool done_has(const srv_store *st, uint32_t id)
{
    for (uint32_t i = 0; i < st->sync_ndone; i++)
        if (st->sync_done[i] == id)
            return true;
    return false;
}

static void done_add(srv_store *st, uint32_t id)
{
    if (!done_has(st, id) && st->sync_ndone < DHPS_CLUSTER_MAX_REPLICAS)
        st->sync_done[st->sync_ndone++] = id;
}

/* Compare st's digests with node id's: mask (nranges bits) gets the ranges that
 * differ, *ranges how many. */
static int compare(srv_sync *y, srv_store *st, uint32_t id, uint64_t *mask, uint32_t *ranges)
{
    size_t nr = y->nranges;
    uint64_t *mem = malloc(nr * 8 * 4);
    if (!mem)
        return -ENOMEM;
    uint64_t *rh = mem, *rcnt = mem + nr, *lh = mem + 2 * nr, *lcnt = mem + 3 * nr;
    int rc = sync_remote_digest(y, id, st, rh, rcnt);
    if (rc) {
        sync_peer_failed(y, id, rc);
    } else {
        pthread_mutex_lock(&st->mu);
        rc = dhps_store_digest(st->st, (uint32_t)nr, lh, lcnt);
        pthread_mutex_unlock(&st->mu);
    }
    *ranges = 0;
    memset(mask, 0, (nr + 63) / 64 * 8);
    for (size_t r = 0; !rc && r < nr; r++)
        if (rh[r] != lh[r] || rcnt[r] != lcnt[r]) {
            mask[r / 64] |= 1ull << (r % 64);
            (*ranges)++;
        }
    add(&y->rounds, 1);
    free(mem);
    return rc;
}

/* Fetch an export of st from node id (mask NULL = every range; records and tombstones
 * at or above min_version) and merge it. */
static int pull(srv_sync *y, srv_store *st, uint32_t id, const uint64_t *mask,
                uint64_t min_version)
{
    uint8_t *buf;
    size_t len;
    uint64_t applied;
    int rc = sync_fetch_export(y, id, st, mask, min_version, &buf, &len);
    if (rc) {
        sync_peer_failed(y, id, rc);
        return rc;
    }
    rc = sync_apply_export(y, st, buf, len, &applied);
    free(buf);
    if (rc)
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "table %s shard %u: export from node %u: %s",
                 st->t->c.name, st->shard, id, dhps_strerror(rc));
    return rc;
}

/* One repair round of st against node id (anti-entropy): compare digests, pull the
 * ranges that differ. */
static int repair_round(srv_sync *y, srv_store *st, uint32_t id)
{
    uint64_t mask[DHPS_PROTO_SYNC_MAX_RANGES / 64];
    uint32_t ranges;
    int rc = compare(y, st, id, mask, &ranges);
    if (rc || !ranges)
        return rc;
    add(&y->ranges_repaired, ranges);
    return pull(y, st, id, ranges == y->nranges ? NULL : mask, 0);
}

/* Bring st up to date with node id. Digests first: when they agree (a restart that
 * missed nothing) that is one round trip. When they differ and the store recovered
 * data, it first takes what changed since its newest version (less
 * sync.version_margin_s, for writers whose clocks run behind), so a restart costs what
 * it missed. Then rounds pull the ranges that still differ, until the digests agree, a
 * round leaves as many ranges differing as the one before (what still differs is this
 * node's own newer writes, or writes in flight to both), or SYNC_MAX_ROUNDS pass. */
static int catch_up(srv_sync *y, srv_store *st, uint32_t id)
{
    uint64_t mask[DHPS_PROTO_SYNC_MAX_RANGES / 64];
    uint64_t margin = (uint64_t)y->s->cfg->sync_version_margin_s * 1000000000ull;
    uint32_t prev = UINT32_MAX, ranges;
    bool delta = true;
    for (int round = 0; round < SYNC_MAX_ROUNDS && !sync_stopping(y); round++) {
        int rc = compare(y, st, id, mask, &ranges);
        if (rc)
            return rc;
        if (!ranges || ranges >= prev)
            return 0;
        if (delta) {
            delta = false;
            pthread_mutex_lock(&st->mu);
            uint64_t newest = dhps_store_max_version(st->st);
            pthread_mutex_unlock(&st->mu);
            if (newest > margin) {
                if ((rc = pull(y, st, id, NULL, newest - margin)))
                    return rc;
                add(&y->delta_fetches, 1);
                continue; /* compare again: prev stays, this was not a range round */
            }
        }
        add(&y->ranges_repaired, ranges);
        if ((rc = pull(y, st, id, ranges == y->nranges ? NULL : mask, 0)))
            return rc;
        prev = ranges;
    }
    return 0; /* writes keep racing the copy; anti-entropy takes the rest */
}

static bool transient(int rc)
{
    return rc == DHPS_E_UNREACHABLE || rc == DHPS_E_TIMEOUT || rc == DHPS_E_BUSY ||
           rc == DHPS_E_CANCELLED || rc == -ENOMEM;
}

/* Is node id a serving replica of st's shard in the pass's map? (joining nodes are
 * never sources) */
static bool is_replica(srv_sync *y, const srv_store *st, uint32_t id)
{
    const uint32_t *ids;
    int nr = dhps_cluster_map_replicas(y->map, st->shard, &ids);
    for (int j = 0; j < nr; j++)
        if (ids[j] == id)
            return true;
    return false;
}

/* For each peer node: the stores of v[0..nv) (not ready ones only when pending_only)
 * that have it as a replica and are not done with it; agree_many on them; fn(y, st,
 * id, agree) per store. */
static void each_peer_batch(srv_sync *y, srv_store **v, size_t nv, bool pending_only,
                            void (*fn)(srv_sync *y, srv_store *st, uint32_t id, bool agree))
{
    srv_store **sts = calloc(nv ? nv : 1, sizeof *sts);
    bool *agree = calloc(nv ? nv : 1, sizeof *agree);
    size_t nn = dhps_cluster_map_nnodes(y->map);
    for (size_t k = 0; sts && agree && k < nn && !sync_stopping(y); k++) {
        uint32_t id = dhps_cluster_map_node_at(y->map, k)->id;
        if (id == y->self)
            continue;
        size_t n = 0;
        for (size_t i = 0; i < nv; i++) {
            srv_store *st = v[i];
            if (__atomic_load_n(&st->dropped, __ATOMIC_ACQUIRE) || !is_replica(y, st, id))
                continue;
            if (pending_only &&
                (__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE) || done_has(st, id)))
                continue;
            sts[n++] = st;
        }
        if (!n)
            continue;
        memset(agree, 0, n * sizeof *agree);
        sync_agree_many(y, id, sts, n, agree);
        for (size_t m = 0; m < n && !sync_stopping(y); m++)
            fn(y, sts[m], id, agree[m]);
    }
    free(sts);
    free(agree);
}

/* catch-up: a peer whose digests agree with the store's needs nothing more */
static void mark_agreeing(srv_sync *y, srv_store *st, uint32_t id, bool agree)
{
    (void)y;
    if (agree) {
        done_add(st, id);
        st->sync_caught++;
    }
}

/* anti-entropy: repair the stores whose digests differ from the peer's */
static void repair_differing(srv_sync *y, srv_store *st, uint32_t id, bool agree)
{
    if (!agree)
        repair_round(y, st, id);
}

/* One pass over the stores that are not ready. Returns stores made ready. */
static uint32_t catch_up_pass(srv_sync *y)
{
    dhps_server *s = y->s;
    uint64_t now = dhps_mono_ns();
    uint64_t wait_ns = (uint64_t)s->cfg->sync_peer_wait_s * 1000000000ull;
    uint64_t empty_ns = (uint64_t)s->cfg->sync_empty_peer_wait_s * 1000000000ull;
    uint32_t made = 0;
    srv_store **v;
    size_t nv = srv_hold_stores_get(s, NULL, &v);
    for (size_t i = 0; i < nv; i++) {
        srv_store *st = v[i];
        if (st->sync_t0_ns || __atomic_load_n(&st->ready, __ATOMIC_ACQUIRE))
            continue;
        /* first seen: after the snapshots and the log (or just opened by a map) */
        dhps_store_stats x;
        pthread_mutex_lock(&st->mu);
        dhps_store_get_stats(st->st, &x);
        pthread_mutex_unlock(&st->mu);
        st->sync_empty = x.keys == 0;
        st->sync_t0_ns = now;
    }
    each_peer_batch(y, v, nv, true, mark_agreeing); /* most stores: one round trip */
    for (size_t i = 0; i < nv && !sync_stopping(y); i++) {
        srv_store *st = v[i];
        if (__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&st->dropped, __ATOMIC_ACQUIRE))
            continue;
        /* A store that recovered data may go on without unreachable peers after
         * peer_wait_s: what it holds is its own acknowledged writes, the others repair
         * from it later. An empty one only once another peer answered (it then holds
         * what that peer held), or after empty_peer_wait_s when that is set: serving it
         * before would answer "absent" for keys its peers hold. */
        uint64_t elapsed = dhps_mono_ns() - st->sync_t0_ns;
        bool may_skip = st->sync_empty ? (st->sync_caught && elapsed >= wait_ns) ||
                                             (empty_ns && elapsed >= empty_ns)
                                       : elapsed >= wait_ns;
        const uint32_t *ids;
        int nr = dhps_cluster_map_replicas(y->map, st->shard, &ids);
        bool all = true;
        for (int j = 0; j < nr; j++) {
            uint32_t id = ids[j];
            if (id == y->self || done_has(st, id))
                continue;
            sync_peer *p = &y->peers[id];
            if (p->given_up && may_skip) {
                done_add(st, id);
                continue;
            }
            int rc = catch_up(y, st, id);
            if (rc == 0) {
                done_add(st, id);
                st->sync_caught++;
            } else if (rc == DHPS_E_NOTREADY || (s->follow && rc == DHPS_E_NOTFOUND)) {
                all = false; /* the peer has not applied our map yet (or is ahead of it) */
            } else if (transient(rc) && !may_skip) {
                all = false;
            } else {
                if (transient(rc) && !p->given_up) {
                    p->given_up = true;
                    add(&y->peers_skipped, 1);
                    DHPS_LOG(DHPS_LOG_WARN, LOGM, "peer node %u: %s for %.0f s; catching up "
                             "without it (it pulls from us when it returns)", id,
                             dhps_strerror(rc), (double)elapsed / 1e9);
                } else if (!transient(rc)) {
                    DHPS_LOG(DHPS_LOG_WARN, LOGM, "table %s shard %u from node %u: %s; "
                             "skipping that peer", st->t->c.name, st->shard, id,
                             dhps_strerror(rc));
                }
                done_add(st, id);
            }
        }
        if (all && !sync_stopping(y)) {
            if (!st->sync_caught && !st->sync_ndone) /* e.g. flipped in before it was ready */
                DHPS_LOG(DHPS_LOG_WARN, LOGM, "table %s shard %u: no other serving replica "
                         "in map version %llu to catch up from; serving what it holds",
                         st->t->c.name, st->shard,
                         (unsigned long long)dhps_cluster_map_version(y->map));
            srv_hold_set_ready(s, st);
            made++;
        }
    }
    srv_hold_stores_put(v, nv);
    return made;
}

/* Anti-entropy: every store's digests against every peer's (batched per peer), and a
 * repair round where they differ. */
static void anti_entropy_pass(srv_sync *y)
{
    uint64_t before = get(&y->merged);
    srv_store **v;
    size_t nv = srv_hold_stores_get(y->s, NULL, &v);
    each_peer_batch(y, v, nv, false, repair_differing);
    srv_hold_stores_put(v, nv);
    uint64_t got = get(&y->merged) - before;
    add(&y->ae_passes, 1);
    add(&y->ae_records, got);
    if (got)
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "anti-entropy: %llu newer records taken from peers",
                 (unsigned long long)got);
}

static double catchup_seconds(const srv_sync *y)
{
    uint64_t t1 = __atomic_load_n(&y->t_ready_ns, __ATOMIC_ACQUIRE);
    uint64_t t0 = __atomic_load_n(&y->t_start_ns, __ATOMIC_ACQUIRE);
    if (!t0)
        return 0;
    return (double)((t1 ? t1 : dhps_mono_ns()) - t0) / 1e9;
}

static void *sync_main(void *arg)
{
    srv_sync *y = arg;
    dhps_server *s = y->s;
    __atomic_store_n(&y->t_start_ns, dhps_mono_ns(), __ATOMIC_RELEASE);
    uint64_t every_ns = (uint64_t)s->cfg->sync_anti_entropy_s * 1000000000ull;
    uint64_t next_ae = 0;
    while (!sync_stopping(y)) {
        pin_map(y);
        if (y->map && __atomic_load_n(&s->not_ready, __ATOMIC_ACQUIRE)) {
            uint32_t made = catch_up_pass(y);
            if (!made && __atomic_load_n(&s->not_ready, __ATOMIC_ACQUIRE))
                sync_nap(y, 100);
            continue;
        }
        if (!__atomic_load_n(&y->t_ready_ns, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&y->t_ready_ns, dhps_mono_ns(), __ATOMIC_RELEASE);
            next_ae = dhps_mono_ns() + every_ns;
            if (y->stores_sync)
                DHPS_LOG(DHPS_LOG_INFO, LOGM, "node %s caught up: %u stores, %llu records "
                         "taken from peers in %.2f s", s->cfg->node_id, y->stores_sync,
                         (unsigned long long)get(&y->merged), catchup_seconds(y));
        }
        uint64_t now = dhps_mono_ns();
        if (every_ns && y->map && now >= next_ae) {
            anti_entropy_pass(y);
            next_ae = dhps_mono_ns() + every_ns;
            continue;
        }
        uint64_t wait_ms = every_ns ? (next_ae - now) / 1000000ull + 1 : 60000;
        sync_nap(y, wait_ms > 60000 ? 60000 : (unsigned)wait_ms); /* a new map wakes it */
    }
    srv_hold_map_put(y->pin);
    y->pin = NULL;
    y->map = NULL;
    return NULL;
}

int srv_sync_start(srv_sync *y)
{
    if (!y->has_map ||
        (!y->s->follow && !y->stores_sync && !y->s->cfg->sync_anti_entropy_s))
        return 0;
    dhps_rpc_client_params p;
    dhps_rpc_client_params_init(&p);
    p.secret = y->s->secret;
    p.secret_len = y->s->secret_len;
    p.max_msg = y->s->cfg->max_msg;
    p.connect_timeout_ms = y->s->cfg->hello_timeout_ms > 1000 ? y->s->cfg->hello_timeout_ms
                                                              : 1000;
    const dhps_server_config *cfg = y->s->cfg;
    if (cfg->tls_policy != DHPS_RPC_TLS_OFF) { /* peers: our certificate as the client's */
        p.tls_ca_file = cfg->tls_ca_file;
        p.tls_cert_file = cfg->tls_cert_file;
        p.tls_key_file = cfg->tls_key_file;
        p.tls_server_name = cfg->tls_server_name;
    }
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
    for (uint32_t i = 0; i < y->npeers; i++)
        dhps_rpc_channel_close(y->peers[i].ch);
    free(y->peers);
    srv_hold_map_put(y->pin);
    dhps_rpc_client_destroy(y->rc);
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++)
        sync_session_free(&y->sess[i]);
    pthread_cond_destroy(&y->wcv);
    pthread_mutex_destroy(&y->wmu);
    pthread_mutex_destroy(&y->mu);
    free(y);
}

void srv_sync_note_deletes(dhps_server *s, srv_store *st, const uint64_t *keys, uint32_t n,
                           uint64_t version, uint32_t at_s)
{
    srv_sync *y = s->sync;
    uint32_t now_s = (uint32_t)time(NULL);
    if (!y || !y->has_map || at_s + s->cfg->sync_tombstone_s < now_s)
        return;
    for (uint32_t i = 0; i < n; i++)
        if (srv_tomb_put(&st->tomb, keys[i], version, at_s)) {
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "tombstones of table %s shard %u: out of memory; "
                     "a peer's older copy of these deleted keys may come back",
                     st->t->c.name, st->shard);
            return;
        }
}

void srv_sync_maintain(srv_sync *y)
{
    dhps_server *s = y->s;
    uint64_t now = dhps_mono_ns();
    pthread_mutex_lock(&y->mu);
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++)
        if (y->sess[i].id && now - y->sess[i].last_ns > SYNC_SESSION_IDLE_NS)
            sync_session_free(&y->sess[i]);
    pthread_mutex_unlock(&y->mu);
    uint32_t keep = s->cfg->sync_tombstone_s, now_s = (uint32_t)time(NULL);
    if (now_s <= keep)
        return;
    srv_store **v;
    size_t nv = srv_hold_stores_get(s, NULL, &v);
    for (size_t i = 0; i < nv; i++) {
        pthread_mutex_lock(&v[i]->mu);
        srv_tomb_expire(&v[i]->tomb, now_s - keep);
        pthread_mutex_unlock(&v[i]->mu);
    }
    srv_hold_stores_put(v, nv);
}

void srv_sync_wake(srv_sync *y)
{
    if (!y)
        return;
    pthread_mutex_lock(&y->wmu);
    y->wake = true;
    pthread_cond_broadcast(&y->wcv);
    pthread_mutex_unlock(&y->wmu);
}

void srv_sync_forget(srv_sync *y, const srv_store *st)
{
    if (!y)
        return;
    pthread_mutex_lock(&y->mu);
    for (int i = 0; i < SYNC_MAX_SESSIONS; i++)
        if (y->sess[i].id && y->sess[i].st == st)
            sync_session_free(&y->sess[i]);
    pthread_mutex_unlock(&y->mu);
}


void srv_sync_metrics(srv_sync *y, FILE *f)
{
    dhps_server *s = y->s;
    uint64_t tombs = 0;
    srv_store **v;
    size_t nv = srv_hold_stores_get(s, NULL, &v);
    for (size_t i = 0; i < nv; i++) {
        pthread_mutex_lock(&v[i]->mu);
        tombs += v[i]->tomb.n;
        pthread_mutex_unlock(&v[i]->mu);
    }
    srv_hold_stores_put(v, nv);
    struct {
        const char *name, *type, *help;
        double v;
    } rows[] = {
        {"dhps_sync_stores_pending", "gauge", "Stores not ready yet (catching up from peers).",
         (double)__atomic_load_n(&s->not_ready, __ATOMIC_RELAXED)},
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
        {"dhps_sync_delta_fetches_total", "counter",
         "Catch-up fetches of what changed since the store's newest version.",
         (double)get(&y->delta_fetches)},
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
    uint32_t pending = __atomic_load_n(&s->not_ready, __ATOMIC_ACQUIRE);
    uint32_t nstores = __atomic_load_n(&s->nlive, __ATOMIC_ACQUIRE);
    bool ready = dhps_server_ready(s);
    bool recovered = __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE);
    char *out = NULL;
    if (asprintf(&out,
                 "{\"ready\":%s,\"state\":\"%s\",\"stores\":%u,\"stores_ready\":%u,"
                 "\"catching_up\":%u,\"records_merged\":%llu,\"bytes_fetched\":%llu,"
                 "\"catchup_seconds\":%.3f,\"peers_skipped\":%llu}\n",
                 ready ? "true" : "false",
                 ready ? "ready" : !recovered ? "recovering" : "catching_up", nstores,
                 nstores > pending ? nstores - pending : 0, pending,
                 (unsigned long long)get(&y->merged),
                 (unsigned long long)get(&y->fetched_bytes), catchup_seconds(y),
                 (unsigned long long)get(&y->peers_skipped)) < 0)
        return NULL;
    return out;
}

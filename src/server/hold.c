/* dhps server: the shards held -- stores added and dropped by map while serving, the
 * stale-map fence, reclamation of dropped stores. See hold.h and docs/server.md. */
#define _GNU_SOURCE
#include "hold.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dhps/coord.h"
#include "dhps/log.h"
#include "member.h"
#include "sync.h"
#include "util.h"

#define LOGM "server"

/* ---- stores --------------------------------------------------------------------- */

static void store_path(const dhps_server *s, const srv_store *st, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s.%u.snap", s->cfg->snapshot_dir, st->t->c.name, st->shard);
}

static void store_free(dhps_server *s, srv_store *st)
{
    for (uint32_t w = 0; st->readers && w < s->cfg->workers; w++)
        dhps_store_reader_close(st->readers[w]);
    free(st->readers);
    srv_tomb_free(&st->tomb);
    dhps_store_destroy(st->st);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* A new store for (tb, shard), sized for nheld shards on this node. */
static int store_new(dhps_server *s, srv_table *tb, uint32_t shard, uint32_t nheld,
                     uint64_t fence, srv_store **out, char *err, size_t errlen)
{
    srv_store *st = calloc(1, sizeof *st);
    if (!st || !(st->readers = calloc(s->cfg->workers, sizeof *st->readers))) {
        free(st);
        return -ENOMEM;
    }
    if (!nheld)
        nheld = 1;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = tb->c.capacity / nheld < 1024 ? 1024 : tb->c.capacity / nheld;
    /* Segments sized to the shard: about 1/8 of its expected records, between 64 KiB
     * and 2 MiB, so hundreds of small shards per node do not each pin a 2 MiB segment
     * (docs/server.md). */
    uint64_t want = p.capacity_hint * (uint64_t)(tb->row_bytes + 24) / 8;
    p.segment_bytes = 64u << 10;
    while (p.segment_bytes < want && p.segment_bytes < (2u << 20))
        p.segment_bytes <<= 1;
    p.mem_limit = tb->c.mem_limit / nheld;
    if (p.mem_limit && p.mem_limit < 4ull * p.segment_bytes) /* the store's floor */
        p.mem_limit = 4ull * p.segment_bytes;
    p.default_ttl = tb->c.default_ttl;
    p.max_readers = s->cfg->workers + 4;
    int rc = dhps_store_create(&p, &st->st);
    if (rc) {
        srv_errf(err, errlen, "table %s shard %u: cannot create store: %s", tb->c.name, shard,
                 dhps_strerror(rc));
        free(st->readers);
        free(st);
        return rc;
    }
    /* what it holds, written into its snapshots and catch-up images and checked when one
     * is loaded or merged (shard 1's file copied over shard 0's is refused) */
    dhps_store_identity id;
    memset(&id, 0, sizeof id);
    snprintf(id.table, sizeof id.table, "%s", tb->c.name);
    if (s->cfg->coord_cluster)
        snprintf(id.cluster, sizeof id.cluster, "%s", s->cfg->coord_cluster);
    id.shard = shard;
    id.nshards = s->cfg->nshards;
    (void)dhps_store_set_identity(st->st, &id); /* valid by construction: shard < nshards */
    /* one reader per rpc worker, opened now: before the store is published no other
     * thread can race the opens (the store's stats read the reader slots) */
    for (uint32_t w = 0; w < s->cfg->workers; w++)
        if ((rc = dhps_store_reader_open(st->st, &st->readers[w]))) {
            srv_errf(err, errlen, "table %s shard %u: store reader: %s", tb->c.name, shard,
                     dhps_strerror(rc));
            for (uint32_t k = 0; k < w; k++)
                dhps_store_reader_close(st->readers[k]);
            dhps_store_destroy(st->st);
            free(st->readers);
            free(st);
            return rc;
        }
    pthread_mutex_init(&st->mu, NULL);
    st->t = tb;
    st->shard = shard;
    st->fence = fence;
    *out = st;
    return 0;
}

/* Does shard have serving replicas other than self in m? */
static bool has_peers(const dhps_cluster_map *m, uint32_t self, uint32_t shard)
{
    const uint32_t *ids;
    int nr = m ? dhps_cluster_map_replicas(m, shard, &ids) : 0;
    for (int j = 0; j < nr; j++)
        if (ids[j] != self)
            return true;
    return false;
}

/* Link st in (hold_mu held): the live list, by_shard, the readiness counters. */
static void store_link(dhps_server *s, srv_store *st, bool ready)
{
    st->ready = ready;
    st->next = s->live;
    s->live = st;
    __atomic_fetch_add(&s->nlive, 1, __ATOMIC_RELAXED);
    if (!ready)
        __atomic_fetch_add(&s->not_ready, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&st->t->by_shard[st->shard], st, __ATOMIC_RELEASE);
}

int srv_hold_init(dhps_server *s, dhps_cluster_map *m, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    int rc = 0;
    pthread_mutex_init(&s->hold_mu, NULL);
    s->epoch = 1; /* a worker slot of 0 means idle: the epoch a handler announces never is */
    if (m) {
        if (!(s->map = calloc(1, sizeof *s->map))) {
            dhps_cluster_map_destroy(m);
            return -ENOMEM;
        }
        s->map->m = m;
        s->map->refs = 1;
        s->map_version = dhps_cluster_map_version(m);
    }
    if (!(s->dropped_at = calloc(c->nshards ? c->nshards : 1, sizeof *s->dropped_at)))
        return -ENOMEM;
    uint32_t nheld = 0;
    for (uint32_t i = 0; i < c->nshards; i++)
        nheld += c->owned[i] ? 1 : 0;
    for (uint32_t t = 0; t < c->ntables; t++)
        if (!(s->tables[t].by_shard = calloc(c->nshards ? c->nshards : 1, sizeof(srv_store *))))
            return -ENOMEM;
    for (uint32_t t = 0; t < c->ntables; t++) {
        srv_table *tb = &s->tables[t];
        for (uint32_t sh = 0; sh < c->nshards; sh++) {
            if (!c->owned[sh])
                continue;
            srv_store *st;
            if ((rc = store_new(s, tb, sh, nheld, s->map_version, &st, err, errlen)))
                return rc;
            st->initial = true;
            /* without sync (or peers) there is nobody to catch up from */
            bool ready = !c->sync_enabled || !has_peers(m, c->map_node, sh);
            store_link(s, st, ready);
            if (!ready)
                s->initial_pending++;
        }
    }
    s->nheld = nheld;
    return 0;
}

void srv_hold_fini(dhps_server *s)
{
    srv_hold_reclaim(s, true);
    for (srv_store *st = s->live, *nx; st; st = nx) {
        nx = st->next;
        store_free(s, st);
    }
    s->live = NULL;
    for (uint32_t t = 0; s->tables && t < s->cfg->ntables; t++)
        free(s->tables[t].by_shard);
    free(s->dropped_at);
    if (s->map)
        srv_hold_map_put(s->map);
    s->map = NULL;
    pthread_mutex_destroy(&s->hold_mu);
}

/* ---- references ------------------------------------------------------------------ */

srv_map *srv_hold_map_get(dhps_server *s)
{
    pthread_mutex_lock(&s->hold_mu);
    srv_map *m = s->map;
    if (m)
        __atomic_fetch_add(&m->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->hold_mu);
    return m;
}

void srv_hold_map_put(srv_map *m)
{
    if (m && __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        dhps_cluster_map_destroy(m->m);
        free(m);
    }
}

size_t srv_hold_stores_get(dhps_server *s, const srv_table *t, srv_store ***out)
{
    *out = NULL;
    pthread_mutex_lock(&s->hold_mu);
    srv_store **v = malloc((s->nlive ? s->nlive : 1) * sizeof *v);
    size_t n = 0;
    for (srv_store *st = s->live; v && st; st = st->next)
        if (!t || st->t == t) {
            __atomic_fetch_add(&st->refs, 1, __ATOMIC_RELAXED);
            v[n++] = st;
        }
    pthread_mutex_unlock(&s->hold_mu);
    if (!n) {
        free(v);
        return 0;
    }
    *out = v;
    return n;
}

void srv_hold_stores_put(srv_store **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_fetch_sub(&v[i]->refs, 1, __ATOMIC_RELEASE);
    free(v);
}

dhps_store_reader *srv_hold_reader(dhps_server *s, srv_store *st, uint32_t w)
{
    (void)s;
    return st->readers[w];
}

/* ---- readiness ------------------------------------------------------------------- */

void srv_hold_set_ready(dhps_server *s, srv_store *st)
{
    pthread_mutex_lock(&s->hold_mu);
    bool was = st->ready;
    __atomic_store_n(&st->ready, true, __ATOMIC_RELEASE);
    if (!was && !st->dropped) {
        __atomic_fetch_sub(&s->not_ready, 1, __ATOMIC_RELAXED);
        if (st->initial)
            __atomic_fetch_sub(&s->initial_pending, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&s->hold_mu);
    if (!was)
        srv_member_poke(__atomic_load_n(&s->member, __ATOMIC_ACQUIRE));
}

size_t srv_hold_not_ready(dhps_server *s, uint32_t *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&s->hold_mu);
    for (uint32_t sh = 0; sh < s->cfg->nshards; sh++) {
        bool nr = false;
        for (uint32_t t = 0; t < s->cfg->ntables && !nr; t++) {
            srv_store *st = s->tables[t].by_shard[sh];
            nr = st && !__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE);
        }
        if (nr) {
            if (n < cap)
                out[n] = sh;
            n++;
        }
    }
    pthread_mutex_unlock(&s->hold_mu);
    return n;
}

/* ---- applying a map -------------------------------------------------------------- */

/* The holders of shard in m (replicas and joining nodes), sorted; returns the count. */
static size_t holders(const dhps_cluster_map *m, uint32_t shard, uint32_t *out)
{
    const uint32_t *ids;
    int nr = dhps_cluster_map_replicas(m, shard, &ids);
    size_t n = 0;
    for (int j = 0; j < nr; j++)
        out[n++] = ids[j];
    const dhps_cluster_join *jn;
    int nj = dhps_cluster_map_joining(m, shard, &jn);
    for (int j = 0; j < nj; j++)
        out[n++] = jn[j].node;
    for (size_t i = 1; i < n; i++) /* insertion sort: n <= 2R */
        for (size_t k = i; k > 0 && out[k - 1] > out[k]; k--) {
            uint32_t x = out[k];
            out[k] = out[k - 1];
            out[k - 1] = x;
        }
    return n;
}

static bool same_holders(const dhps_cluster_map *a, const dhps_cluster_map *b, uint32_t shard)
{
    uint32_t x[2 * DHPS_CLUSTER_MAX_REPLICAS], y[2 * DHPS_CLUSTER_MAX_REPLICAS];
    size_t nx = holders(a, shard, x), ny = holders(b, shard, y);
    return nx == ny && !memcmp(x, y, nx * sizeof *x);
}

/* Retire st (hold_mu held): refuse it from now on, unlink it, delete its snapshot. */
static void store_retire(dhps_server *s, srv_store *st)
{
    pthread_mutex_lock(&st->mu);
    __atomic_store_n(&st->dropped, true, __ATOMIC_RELEASE);
    if (s->cfg->snapshot_dir) { /* a restart must not resurrect what others moved on from */
        char path[4200];
        store_path(s, st, path, sizeof path);
        if (unlink(path) && errno != ENOENT)
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "dropping %s: %s", path, strerror(errno));
    }
    pthread_mutex_unlock(&st->mu);
    /* seq_cst: ordered before the epoch scans (hold.h) */
    __atomic_store_n(&st->t->by_shard[st->shard], NULL, __ATOMIC_SEQ_CST);
    for (srv_store **pp = &s->live; *pp; pp = &(*pp)->next)
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    __atomic_fetch_sub(&s->nlive, 1, __ATOMIC_RELAXED);
    if (!st->ready) {
        __atomic_fetch_sub(&s->not_ready, 1, __ATOMIC_RELAXED);
        if (st->initial)
            __atomic_fetch_sub(&s->initial_pending, 1, __ATOMIC_RELEASE);
    }
    st->retire_epoch = __atomic_add_fetch(&s->epoch, 1, __ATOMIC_SEQ_CST);
    st->retire_ns = dhps_mono_ns();
    st->next = s->retired;
    s->retired = st;
}

int srv_hold_apply(dhps_server *s, dhps_cluster_map *m, const char *from)
{
    const dhps_server_config *c = s->cfg;
    uint32_t self = c->map_node;
    uint64_t v = dhps_cluster_map_version(m);
    srv_map *nm = calloc(1, sizeof *nm);
    if (!nm) {
        dhps_cluster_map_destroy(m);
        return -ENOMEM;
    }
    nm->m = m;
    nm->refs = 1;
    pthread_mutex_lock(&s->hold_mu);
    const dhps_cluster_map *old = s->map ? s->map->m : NULL;
    if (old && v <= dhps_cluster_map_version(old)) {
        pthread_mutex_unlock(&s->hold_mu);
        srv_hold_map_put(nm);
        return 0;
    }
    if (dhps_cluster_map_nshards(m) != c->nshards) {
        pthread_mutex_unlock(&s->hold_mu);
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "cluster map version %" PRIu64 " from %s has %u shards, "
                 "this node serves %u: ignored (the shard count of a cluster cannot change)",
                 v, from, dhps_cluster_map_nshards(m), c->nshards);
        srv_hold_map_put(nm);
        return DHPS_E_CONFIG;
    }
    uint32_t nheld = (uint32_t)dhps_cluster_map_holdings_of(m, self, NULL, 0);
    uint32_t added = 0, dropped = 0, fenced = 0, failed = 0;
    for (uint32_t sh = 0; sh < c->nshards; sh++) {
        bool was = s->tables[0].by_shard[sh] != NULL;
        bool now = dhps_cluster_map_holds(m, self, sh);
        if (now && !was) {
            bool ready = !c->sync_enabled || !has_peers(m, self, sh);
            for (uint32_t t = 0; t < c->ntables; t++) {
                srv_store *st;
                char err[256];
                if (store_new(s, &s->tables[t], sh, nheld, v, &st, err, sizeof err)) {
                    DHPS_LOG(DHPS_LOG_ERROR, LOGM, "map version %" PRIu64 ": %s", v, err);
                    failed++;
                    continue;
                }
                if (c->snapshot_dir) { /* start empty: a file left from before is stale */
                    char path[4200];
                    store_path(s, st, path, sizeof path);
                    unlink(path);
                }
                store_link(s, st, ready);
            }
            __atomic_store_n(&s->dropped_at[sh], 0, __ATOMIC_RELAXED);
            added++;
        } else if (!now && was) {
            for (uint32_t t = 0; t < c->ntables; t++) {
                srv_store *st = s->tables[t].by_shard[sh];
                if (st) {
                    srv_sync_forget(s->sync, st);
                    store_retire(s, st);
                }
            }
            __atomic_store_n(&s->dropped_at[sh], v, __ATOMIC_RELAXED);
            dropped++;
        } else if (now && old && !same_holders(old, m, sh)) {
            for (uint32_t t = 0; t < c->ntables; t++) {
                srv_store *st = s->tables[t].by_shard[sh];
                if (!st)
                    continue;
                pthread_mutex_lock(&st->mu); /* no write passes the fence unseen */
                st->fence = v;
                pthread_mutex_unlock(&st->mu);
            }
            fenced++;
        }
    }
    srv_map *prev = s->map;
    s->map = nm;
    __atomic_store_n(&s->nheld, nheld, __ATOMIC_RELAXED);
    /* last: SYNC requests routed with v are answered from now on, after the fences */
    __atomic_store_n(&s->map_version, v, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->hold_mu);
    if (prev)
        srv_hold_map_put(prev);
    add(&s->shards_added, added);
    add(&s->shards_dropped, dropped);
    if (dropped)
        __atomic_store_n(&s->want_checkpoint, true, __ATOMIC_RELEASE);
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "cluster map version %" PRIu64 " from %s applied: node %u "
             "holds %u shards (+%u, -%u, %u with a new holder set%s)", v, from, self, nheld,
             added, dropped, fenced, failed ? "; some stores could not be created" : "");
    if (c->cluster_map) {
        int rc = dhps_cluster_map_write(m, c->cluster_map);
        if (rc)
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "writing map version %" PRIu64 " to %s: %s (a restart "
                     "without etcd starts from the older file)", v, c->cluster_map,
                     dhps_strerror(rc));
    }
    srv_sync_wake(s->sync);
    srv_member_poke(__atomic_load_n(&s->member, __ATOMIC_ACQUIRE));
    return 1;
}

/* ---- reclamation ----------------------------------------------------------------- */

/* Can a worker still see a store retired at epoch e? (seq_cst loads: see hold.h) */
static bool worker_may_see(dhps_server *s, uint64_t e)
{
    for (uint32_t w = 0; w < s->cfg->workers; w++) {
        uint64_t we = __atomic_load_n(&s->workers[w].epoch, __ATOMIC_SEQ_CST);
        if (we && we <= e)
            return true;
    }
    return false;
}

void srv_hold_reclaim(dhps_server *s, bool all)
{
    uint64_t now = dhps_mono_ns();
    srv_store *victims = NULL;
    pthread_mutex_lock(&s->hold_mu);
    for (srv_store **pp = &s->retired; *pp;) {
        srv_store *st = *pp;
        bool go = all || (now - st->retire_ns >= SRV_DROP_LINGER_MS * 1000000ull &&
                          __atomic_load_n(&st->refs, __ATOMIC_ACQUIRE) == 0 &&
                          !worker_may_see(s, st->retire_epoch));
        if (go) {
            *pp = st->next;
            st->next = victims;
            victims = st;
        } else {
            pp = &st->next;
        }
    }
    pthread_mutex_unlock(&s->hold_mu);
    uint32_t n = 0;
    for (srv_store *st = victims, *nx; st; st = nx) {
        nx = st->next;
        store_free(s, st);
        n++;
    }
    if (n) {
        add(&s->stores_freed, n);
        malloc_trim(0); /* give the segments back to the system now */
        if (!all)
            DHPS_LOG(DHPS_LOG_INFO, LOGM, "%u dropped store(s) freed", n);
    }
}

/* ---- the starting map (follow_etcd) ------------------------------------------------- */

int srv_hold_initial_map(const dhps_server_config *c, dhps_cluster_map **out, char *err,
                         size_t errlen)
{
    *out = NULL;
    dhps_cluster_map *fm = NULL, *em = NULL;
    char ferr[512] = "", eerr[512] = "";
    int frc = dhps_cluster_map_load(c->cluster_map, &fm, ferr, sizeof ferr);
    if (frc && frc != -ENOENT) {
        char *nl = strchr(ferr, '\n');
        if (nl)
            *nl = 0;
        srv_errf(err, errlen, "config shards.cluster_map %s: %s", c->cluster_map,
                 ferr[0] ? ferr : dhps_strerror(frc));
        return DHPS_E_CONFIG;
    }
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = c->coord_etcd;
    dhps_coord *co = NULL;
    char key[160];
    int erc = dhps_coord_create(&p, &co);
    if (!erc && dhps_coord_key(key, sizeof key, c->coord_cluster, DHPS_COORD_KEY_MAP, 0) < 0)
        erc = -EINVAL;
    if (!erc) {
        dhps_coord_kv *kv = NULL;
        int n = dhps_coord_get(co, key, false, &kv, NULL);
        if (n > 0)
            erc = dhps_cluster_map_parse(kv[0].value, kv[0].value_len, &em, eerr, sizeof eerr);
        else
            erc = n < 0 ? n : DHPS_E_NOTFOUND;
        dhps_coord_kvs_free(kv, n);
    }
    dhps_coord_destroy(co);
    if (erc && !fm) {
        srv_errf(err, errlen, "config shards.cluster_map %s: missing, and etcd %s has no usable "
                 "map at %s (%s%s%s)", c->cluster_map, c->coord_etcd, key, dhps_strerror(erc),
                 eerr[0] ? ": " : "", eerr);
        return DHPS_E_CONFIG;
    }
    if (erc)
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "no map from etcd %s (%s): starting from %s, version "
                 "%" PRIu64 "; the watch takes newer ones", c->coord_etcd, dhps_strerror(erc),
                 c->cluster_map, dhps_cluster_map_version(fm));
    if (em && (!fm || dhps_cluster_map_version(em) > dhps_cluster_map_version(fm))) {
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "starting from etcd's map version %" PRIu64 " (%s: %s)",
                 dhps_cluster_map_version(em), c->cluster_map,
                 fm ? "older" : "missing");
        int wrc = dhps_cluster_map_write(em, c->cluster_map);
        if (wrc)
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "writing the map to %s: %s", c->cluster_map,
                     dhps_strerror(wrc));
        dhps_cluster_map_destroy(fm);
        *out = em;
    } else {
        dhps_cluster_map_destroy(em);
        *out = fm;
    }
    return 0;
}

/* ---- metrics ---------------------------------------------------------------------- */

void srv_hold_metrics(dhps_server *s, FILE *f)
{
    struct {
        const char *name, *type, *help;
        uint64_t v;
    } rows[] = {
        {"dhps_map_version", "gauge", "Version of the cluster map this node has applied.",
         __atomic_load_n(&s->map_version, __ATOMIC_RELAXED)},
        {"dhps_shards_held", "gauge", "Shards this node holds (replica or joining).",
         __atomic_load_n(&s->nheld, __ATOMIC_RELAXED)},
        {"dhps_shards_not_ready", "gauge",
         "Shards held with a store still catching up (the registration's not_ready).",
         srv_hold_not_ready(s, NULL, 0)},
        {"dhps_shards_added_total", "counter", "Shards a newer map gave this node.",
         get(&s->shards_added)},
        {"dhps_shards_dropped_total", "counter", "Shards a newer map took from this node.",
         get(&s->shards_dropped)},
        {"dhps_writes_moved_total", "counter",
         "Writes refused with DHPS_E_MOVED (routed with a map older than the shard's "
         "holder set).", get(&s->writes_moved)},
        {"dhps_stores_freed_total", "counter", "Stores of dropped shards freed.",
         get(&s->stores_freed)},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", rows[i].name, rows[i].help,
                rows[i].name, rows[i].type, rows[i].name, (unsigned long long)rows[i].v);
}

/*
 * dhps server: membership in etcd. Design in member.h and docs/cluster.md.
 */
#include "member.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dhps/cluster.h"
#include "dhps/coord.h"
#include "dhps/log.h"
#include "hold.h"
#include "srv_int.h"
#include "util.h"

#define LOGM "coord"

struct srv_member {
    dhps_server *s;
    dhps_coord *c;
    dhps_coord_watch *w;
    char key[320], map_key[128];
    int64_t lease;
    uint32_t ttl_s;
    pthread_t th;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool down;            /* an outage is in progress (logged) */
    dhps_cluster_map *pending; /* under mu: newest map from the watch, not applied yet */
    uint64_t gen, put_gen;     /* under mu: readiness changes / the one last registered */
    uint64_t put_after_ns;     /* the thread's: no re-put before (100 ms debounce after a
                                  put, 1 s after a failed one) */
    uint64_t up, errors, map_version, map_revision, registrations, reputs;
};

static char *registration_json(dhps_server *s);

#define REG_DEBOUNCE_NS 100000000ull /* at most one re-put of the registration per 100 ms */

/* Put the registration under the current lease (it changed: map version, readiness).
 * Returns 0 or the put's error. */
static int put_registration(struct srv_member *m, int64_t lease)
{
    pthread_mutex_lock(&m->mu);
    uint64_t gen = m->gen;
    pthread_mutex_unlock(&m->mu);
    char *reg = registration_json(m->s);
    if (!reg)
        return -ENOMEM;
    int rc = dhps_coord_put(m->c, m->key, reg, strlen(reg), lease, NULL);
    free(reg);
    m->put_after_ns = dhps_mono_ns() + (rc == 0 ? REG_DEBOUNCE_NS : 1000000000ull);
    if (rc == 0) {
        pthread_mutex_lock(&m->mu);
        m->put_gen = gen;
        pthread_mutex_unlock(&m->mu);
    }
    return rc;
}

static void set_down(struct srv_member *m, const char *what, int rc)
{
    add(&m->errors, 1);
    if (!m->down) {
        m->down = true;
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s unreachable (%s: %s): serving goes on with "
                 "the current map; registration retried", dhps_coord_endpoint(m->c), what,
                 dhps_strerror(rc));
    }
    __atomic_store_n(&m->up, 0, __ATOMIC_RELAXED);
}

static void set_up(struct srv_member *m)
{
    if (m->down)
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s reachable again", dhps_coord_endpoint(m->c));
    m->down = false;
    __atomic_store_n(&m->up, 1, __ATOMIC_RELAXED);
}

/* One step: register (new lease) or renew. Returns the seconds to wait. */
static uint32_t member_step(struct srv_member *m)
{
    int rc;
    if (m->lease) {
        rc = dhps_coord_lease_keepalive(m->c, m->lease, NULL);
        if (rc == 0) {
            set_up(m);
            return m->ttl_s / 3 ? m->ttl_s / 3 : 1;
        }
        if (rc != DHPS_E_NOTFOUND) {
            set_down(m, "lease keepalive", rc);
            return 1;
        }
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "lease %" PRIx64 " expired (etcd unreachable longer "
                 "than %u s?): registering again", (uint64_t)m->lease, m->ttl_s);
        m->lease = 0;
    }
    int64_t id = 0;
    if ((rc = dhps_coord_lease_grant(m->c, m->ttl_s, &id, NULL)) < 0) {
        set_down(m, "lease grant", rc);
        return 1;
    }
    if ((rc = put_registration(m, id)) < 0) {
        set_down(m, "register", rc);
        dhps_coord_lease_revoke(m->c, id);
        return 1;
    }
    m->lease = id;
    add(&m->registrations, 1);
    set_up(m);
    DHPS_LOG(DHPS_LOG_INFO, LOGM, "registered %s (lease %" PRIx64 ", ttl %u s)", m->key,
             (uint64_t)id, m->ttl_s);
    return m->ttl_s / 3 ? m->ttl_s / 3 : 1;
}

static void apply_pending(struct srv_member *m)
{
    pthread_mutex_lock(&m->mu);
    dhps_cluster_map *pm = m->pending;
    m->pending = NULL;
    pthread_mutex_unlock(&m->mu);
    if (pm)
        srv_hold_apply(m->s, pm, "etcd"); /* pokes us when it changed anything */
}

/* The thread: applies maps from the watch (following etcd), registers and renews the
 * lease, and re-puts the registration when the map version or readiness changed. */
static void *member_main(void *arg)
{
    struct srv_member *m = arg;
    uint64_t next_step = 0;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        pthread_mutex_unlock(&m->mu);
        apply_pending(m);
        uint64_t now = dhps_mono_ns();
        if (now >= next_step)
            next_step = now + (uint64_t)member_step(m) * 1000000000ull;
        pthread_mutex_lock(&m->mu);
        bool dirty = m->gen != m->put_gen;
        pthread_mutex_unlock(&m->mu);
        now = dhps_mono_ns();
        if (dirty && m->lease && now >= m->put_after_ns) {
            int rc = put_registration(m, m->lease);
            if (rc == 0)
                add(&m->reputs, 1);
            else if (rc == DHPS_E_NOTFOUND) /* the lease is gone: register anew */
                next_step = 0;
            else
                set_down(m, "registration update", rc);
        }
        pthread_mutex_lock(&m->mu);
        dirty = m->gen != m->put_gen;
        uint64_t until = next_step;
        if (dirty && m->lease && m->put_after_ns < until)
            until = m->put_after_ns;
        now = dhps_mono_ns();
        if (until > now && !m->pending && !m->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t ns = (uint64_t)ts.tv_nsec + (until - now);
            ts.tv_sec += (time_t)(ns / 1000000000ull);
            ts.tv_nsec = (long)(ns % 1000000000ull);
            uint64_t g = m->gen;
            while (!m->stop && !m->pending && m->gen == g &&
                   pthread_cond_timedwait(&m->cv, &m->mu, &ts) != ETIMEDOUT)
                ;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

void srv_member_poke(struct srv_member *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    m->gen++;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void map_seen(struct srv_member *m, const char *val, size_t len, int64_t rev)
{
    dhps_cluster_map *map = NULL;
    char err[256];
    if (dhps_cluster_map_parse(val, len, &map, err, sizeof err) < 0) {
        char *nl = strchr(err, '\n');
        if (nl)
            *nl = 0;
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "%s revision %" PRId64 ": invalid map ignored (%s)",
                 m->map_key, rev, err);
        return;
    }
    uint64_t v = dhps_cluster_map_version(map);
    bool newest = v > get(&m->map_version);
    if (newest) {
        __atomic_store_n(&m->map_version, v, __ATOMIC_RELAXED);
        __atomic_store_n(&m->map_revision, (uint64_t)rev, __ATOMIC_RELAXED);
    }
    if (m->s->follow && newest &&
        v > __atomic_load_n(&m->s->map_version, __ATOMIC_ACQUIRE)) {
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "cluster map in etcd: version %" PRIu64 " (revision %"
                 PRId64 "): applying", v, rev);
        pthread_mutex_lock(&m->mu); /* the member thread applies it */
        dhps_cluster_map_destroy(m->pending);
        m->pending = map;
        pthread_cond_broadcast(&m->cv);
        pthread_mutex_unlock(&m->mu);
        return;
    }
    if (!m->s->follow && newest) {
        bool owns = dhps_cluster_map_node(map, m->s->cfg->map_node) != NULL;
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "cluster map in etcd: version %" PRIu64 " (revision %"
                 PRId64 ", %u shards, node %u %s): noted; this node keeps serving its "
                 "configured shards (shards.follow_etcd makes it follow the map)",
                 v, rev, dhps_cluster_map_nshards(map), m->s->cfg->map_node,
                 owns ? "in it" : "not in it");
    }
    dhps_cluster_map_destroy(map);
}

static void on_map_event(void *arg, const dhps_coord_event *ev)
{
    if (ev->type == DHPS_COORD_PUT)
        map_seen(arg, ev->kv->value, ev->kv->value_len, ev->kv->mod_revision);
}

static void on_map_status(void *arg, int status, int64_t rev)
{
    struct srv_member *m = arg;
    if (status == DHPS_E_STALE) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "map watch: history compacted at revision %" PRId64
                 "; reading the map again", rev);
        dhps_coord_kv *kv = NULL; /* a change inside the compacted range is not replayed */
        int got = dhps_coord_get(m->c, m->map_key, false, &kv, NULL);
        if (got > 0)
            map_seen(m, kv[0].value, kv[0].value_len, kv[0].mod_revision);
        dhps_coord_kvs_free(kv, got);
    }
    else if (status < 0)
        add(&m->errors, 1);
}

static char *registration_json(dhps_server *s)
{
    const dhps_server_config *c = s->cfg;
    char addr[96];
    snprintf(addr, sizeof addr, "%s:%u", c->listen_host, s->rpc_port);
    json_t *tr = json_pack("[s]", "tcp");
    if (tr && c->shm)
        json_array_append_new(tr, json_string("shm"));
    if (tr && c->verbs)
        json_array_append_new(tr, json_string("verbs"));
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:o, s:I, s:i}", "node_id",
                          c->node_id, "host", c->label_host ? c->label_host : "", "pod",
                          c->label_pod ? c->label_pod : "", "az",
                          c->label_az ? c->label_az : "", "addr", addr, "metrics_port",
                          (int)s->http_port, "transports", tr, "start_time",
                          (json_int_t)time(NULL), "pid", (int)getpid());
    if (j && c->cluster_map)
        json_object_set_new(j, "id", json_integer(c->map_node));
    if (j && s->map) { /* the readiness report (docs/cluster.md) */
        uint32_t *nr = malloc((c->nshards ? c->nshards : 1) * sizeof *nr);
        json_t *a = json_array();
        size_t n = nr ? srv_hold_not_ready(s, nr, c->nshards) : 0;
        for (size_t i = 0; a && i < n && i < c->nshards; i++)
            json_array_append_new(a, json_integer(nr[i]));
        free(nr);
        json_object_set_new(j, "map_version",
                            json_integer((json_int_t)__atomic_load_n(&s->map_version,
                                                                     __ATOMIC_ACQUIRE)));
        json_object_set_new(j, "not_ready", a ? a : json_array());
    }
    char *out = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return out;
}

int srv_member_start(dhps_server *s, struct srv_member **out)
{
    *out = NULL;
    const dhps_server_config *c = s->cfg;
    if (!c->coord_etcd)
        return 0;
    struct srv_member *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->s = s;
    m->ttl_s = c->coord_lease_ttl_s ? c->coord_lease_ttl_s : 10;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = c->coord_etcd;
    int rc = dhps_coord_create(&p, &m->c);
    int n = snprintf(m->key, sizeof m->key, "/dhps/%s/nodes/%s", c->coord_cluster, c->node_id);
    if (rc < 0 || n >= (int)sizeof m->key || strchr(m->key + strlen("/dhps//nodes/") +
                                                     strlen(c->coord_cluster), '/') ||
        dhps_coord_key(m->map_key, sizeof m->map_key, c->coord_cluster, DHPS_COORD_KEY_MAP,
                       0) < 0) {
        rc = rc < 0 ? rc : -EINVAL;
        goto fail;
    }
    /* the map now (if etcd answers), then every change after it */
    dhps_coord_kv *kv = NULL;
    int64_t rev = 0;
    int got = dhps_coord_get(m->c, m->map_key, false, &kv, &rev);
    if (got > 0)
        map_seen(m, kv[0].value, kv[0].value_len, kv[0].mod_revision);
    dhps_coord_kvs_free(kv, got);
    if ((rc = dhps_coord_watch_start(m->c, m->map_key, false, got >= 0 ? rev + 1 : 0,
                                     on_map_event, on_map_status, m, &m->w)) < 0)
        goto fail;
    if ((rc = pthread_create(&m->th, NULL, member_main, m))) {
        rc = -rc;
        goto fail;
    }
    m->running = true;
    *out = m;
    return 0;
fail:
    DHPS_LOG(DHPS_LOG_ERROR, LOGM, "coord: %s", dhps_strerror(rc));
    srv_member_destroy(m);
    return rc;
}

void srv_member_stop(struct srv_member *m)
{
    if (!m)
        return;
    if (m->running) {
        pthread_mutex_lock(&m->mu);
        m->stop = true;
        pthread_cond_broadcast(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->th, NULL);
        m->running = false;
    }
    dhps_coord_watch_stop(m->w);
    m->w = NULL;
    if (m->lease) {
        int rc = dhps_coord_lease_revoke(m->c, m->lease);
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "deregistered %s: %s", m->key,
                 rc == 0 ? "lease revoked" : dhps_strerror(rc));
        m->lease = 0;
    }
}

void srv_member_destroy(struct srv_member *m)
{
    if (!m)
        return;
    srv_member_stop(m);
    dhps_coord_destroy(m->c);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    dhps_cluster_map_destroy(m->pending);
    free(m);
}

void srv_member_metrics(struct srv_member *m, FILE *f)
{
    if (!m)
        return;
    fprintf(f, "# HELP dhps_coord_up 1 when the last etcd call (registration, keepalive) "
               "succeeded.\n# TYPE dhps_coord_up gauge\ndhps_coord_up %llu\n",
            (unsigned long long)__atomic_load_n(&m->up, __ATOMIC_RELAXED));
    fprintf(f, "# TYPE dhps_coord_errors_total counter\ndhps_coord_errors_total %llu\n",
            (unsigned long long)get(&m->errors));
    fprintf(f, "# TYPE dhps_coord_registrations_total counter\n"
               "dhps_coord_registrations_total %llu\n",
            (unsigned long long)get(&m->registrations));
    fprintf(f, "# HELP dhps_coord_registration_updates_total Registration re-puts under the "
               "same lease (map version or readiness changed).\n"
               "# TYPE dhps_coord_registration_updates_total counter\n"
               "dhps_coord_registration_updates_total %llu\n",
            (unsigned long long)get(&m->reputs));
    fprintf(f, "# HELP dhps_coord_map_version Newest map version seen in etcd.\n"
               "# TYPE dhps_coord_map_version gauge\ndhps_coord_map_version %llu\n",
            (unsigned long long)get(&m->map_version));
}

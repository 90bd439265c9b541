/*
 * dhps client: the cluster map from etcd (params.etcd / .cluster): read at create,
 * watched by a coord thread that installs every newer version. Design in
 * include/dhps/client.h ("Map") and docs/cluster.md.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "dhps/coord.h"
#include "dhps/log.h"

#define LOGM "client"

struct client_etcd {
    dhps_coord *coord;
    dhps_coord_watch *w;
    char key[128];
};

static int etcd_state(dhps_client *c)
{
    if (c->etcd)
        return 0;
    struct client_etcd *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = c->etcd_url;
    int rc = dhps_coord_create(&p, &e->coord);
    if (rc == 0 && dhps_coord_key(e->key, sizeof e->key, c->cluster, DHPS_COORD_KEY_MAP, 0) < 0)
        rc = -EINVAL;
    if (rc < 0) {
        dhps_coord_destroy(e->coord);
        free(e);
        return rc;
    }
    c->etcd = e;
    return 0;
}

/* Read the map key through coord into *m. */
static int etcd_read(dhps_client *c, dhps_coord *coord, dhps_cluster_map **m, int64_t *rev)
{
    dhps_coord_kv *kv = NULL;
    int n = dhps_coord_get(coord, c->etcd->key, false, &kv, rev);
    if (n < 0) {
        CTR_ADD(c->st.coord_errors, 1);
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s: %s", c->etcd_url, dhps_strerror(n));
        return n;
    }
    if (n == 0) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s: no map at %s", c->etcd_url, c->etcd->key);
        return DHPS_E_NOTFOUND;
    }
    char err[512];
    int rc = dhps_cluster_map_parse(kv[0].value, kv[0].value_len, m, err, sizeof err);
    if (rc < 0)
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s: %s: invalid map: %s", c->etcd_url,
                 c->etcd->key, err);
    dhps_coord_kvs_free(kv, n);
    atomic_store_explicit(&c->st.coord_up, 1, memory_order_relaxed);
    return rc;
}

int client_etcd_open(dhps_client *c, dhps_cluster_map **m, int64_t *rev)
{
    *m = NULL;
    int rc = etcd_state(c);
    if (rc < 0)
        return rc;
    return etcd_read(c, c->etcd->coord, m, rev);
}

int client_etcd_fetch(dhps_client *c, uint32_t timeout_ms, dhps_cluster_map **m)
{
    *m = NULL;
    if (!c->etcd)
        return -EINVAL;
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = c->etcd_url;
    p.timeout_ms = timeout_ms ? timeout_ms : 1;
    p.connect_timeout_ms = p.timeout_ms;
    dhps_coord *coord = NULL;
    int rc = dhps_coord_create(&p, &coord);
    if (rc == 0)
        rc = etcd_read(c, coord, m, NULL);
    dhps_coord_destroy(coord);
    return rc;
}

static void on_event(void *arg, const dhps_coord_event *ev)
{
    dhps_client *c = arg;
    if (ev->type != DHPS_COORD_PUT)
        return;
    dhps_cluster_map *m = NULL;
    if (dhps_cluster_map_parse(ev->kv->value, ev->kv->value_len, &m, NULL, 0) < 0) {
        CTR_ADD(c->st.coord_errors, 1);
        return;
    }
    uint64_t v = dhps_cluster_map_version(m);
    pthread_mutex_lock(&c->reload_lock);
    int rc = client_map_install(c, m);
    pthread_mutex_unlock(&c->reload_lock);
    if (rc == 1)
        DHPS_LOG(DHPS_LOG_INFO, LOGM, "map version %llu from etcd (revision %lld)",
                 (unsigned long long)v, (long long)ev->kv->mod_revision);
    else if (rc < 0)
        CTR_ADD(c->st.coord_errors, 1);
}

static void on_status(void *arg, int status, int64_t rev)
{
    dhps_client *c = arg;
    if (status == 0) {
        atomic_store_explicit(&c->st.coord_up, 1, memory_order_relaxed);
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s reachable again: map watch resumed",
                 c->etcd_url);
    } else if (status == DHPS_E_STALE) {
        /* events lost to compaction: re-read the map (the watch resumes after it) */
        dhps_cluster_map *m = NULL;
        int64_t r;
        if (client_etcd_open(c, &m, &r) == 0) {
            pthread_mutex_lock(&c->reload_lock);
            client_map_install(c, m);
            pthread_mutex_unlock(&c->reload_lock);
        }
    } else {
        atomic_store_explicit(&c->st.coord_up, 0, memory_order_relaxed);
        CTR_ADD(c->st.coord_outages, 1);
        CTR_ADD(c->st.coord_errors, 1);
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "etcd %s unreachable (%s): keeping map version %llu",
                 c->etcd_url, dhps_strerror(status),
                 (unsigned long long)dhps_client_map_version(c));
    }
}

int client_etcd_watch(dhps_client *c, int64_t start_rev)
{
    int rc = etcd_state(c);
    if (rc < 0)
        return rc;
    return dhps_coord_watch_start(c->etcd->coord, c->etcd->key, false, start_rev, on_event,
                                  on_status, c, &c->etcd->w);
}

void client_etcd_close(dhps_client *c)
{
    if (!c->etcd)
        return;
    dhps_coord_watch_stop(c->etcd->w);
    dhps_coord_destroy(c->etcd->coord);
    free(c->etcd);
    c->etcd = NULL;
}

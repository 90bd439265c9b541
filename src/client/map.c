/*
 * dhps client: the cluster map cache (pinned per call by a refcount) and its reload from
 * the map file. Design in include/dhps/client.h ("Map").
 */
#include "client_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>

void client_map_unref(struct map_ref *r)
{
    if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
        dhps_cluster_map_destroy(r->m);
        free(r);
    }
}

struct map_ref *client_map_pin(dhps_client *c)
{
    pthread_mutex_lock(&c->lock);
    struct map_ref *r = c->cur;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&c->lock);
    return r;
}

int client_check_map_ids(dhps_client *c, const dhps_cluster_map *m)
{
    return dhps_cluster_map_max_node_id(m) > c->p.max_node_id ? DHPS_E_CONFIG : 0;
}

/* Replace the map with m (consumed) when its version is greater. Caller holds
 * reload_lock. Returns 1 (replaced), 0 (not newer), DHPS_E_CONFIG, -ENOMEM. */
int client_map_install(dhps_client *c, dhps_cluster_map *m)
{
    uint64_t curv = dhps_cluster_map_version(c->cur->m); /* cur only changes under reload_lock */
    if (dhps_cluster_map_version(m) <= curv || client_check_map_ids(c, m) < 0) {
        int rc = dhps_cluster_map_version(m) <= curv ? 0 : DHPS_E_CONFIG;
        dhps_cluster_map_destroy(m);
        return rc;
    }
    struct map_ref *r = malloc(sizeof *r);
    if (!r) {
        dhps_cluster_map_destroy(m);
        return -ENOMEM;
    }
    r->m = m;
    atomic_init(&r->refs, 1);
    if (c->rops->set_nodes)
        c->rops->set_nodes(c->rself, m);
    pthread_mutex_lock(&c->lock);
    struct map_ref *old = c->cur;
    c->cur = r;
    pthread_mutex_unlock(&c->lock);
    client_map_unref(old);
    CTR_ADD(c->st.map_reloads, 1);
    return 1;
}

/* Re-check the map file (stat identity), load and install it when it changed. Caller
 * holds reload_lock. Returns client_map_install's codes or the load error. */
static int reload_file_locked(dhps_client *c)
{
    atomic_store_explicit(&c->last_check_ns, dhps_mono_ns(), memory_order_relaxed);
    struct stat st;
    if (stat(c->map_path, &st) < 0)
        return -errno;
    if (st.st_ino == c->file_st.st_ino && st.st_dev == c->file_st.st_dev &&
        st.st_size == c->file_st.st_size && st.st_mtim.tv_sec == c->file_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == c->file_st.st_mtim.tv_nsec)
        return 0;
    dhps_cluster_map *m = NULL;
    int rc = dhps_cluster_map_load(c->map_path, &m, NULL, 0);
    if (rc < 0)
        return rc;
    c->file_st = st;
    return client_map_install(c, m);
}

/* Reload when the file changed (or force) and its version is newer. Without a map file
 * (the map comes from etcd) there is nothing to check: the etcd watch installs maps. */
int client_reload(dhps_client *c, bool force)
{
    if (!c->map_path)
        return 0;
    uint64_t now = dhps_mono_ns();
    if (!force) {
        uint64_t last = atomic_load_explicit(&c->last_check_ns, memory_order_relaxed);
        if (c->p.reload_interval_ms == 0 ||
            now - last < (uint64_t)c->p.reload_interval_ms * 1000000ull)
            return 0;
    }
    if (pthread_mutex_trylock(&c->reload_lock) != 0)
        return 0; /* another thread is at it */
    int rc = reload_file_locked(c);
    pthread_mutex_unlock(&c->reload_lock);
    return rc;
}

int client_map_refresh(dhps_client *c, uint64_t have, uint32_t timeout_ms, bool wait)
{
    if (wait)
        pthread_mutex_lock(&c->reload_lock);
    else if (pthread_mutex_trylock(&c->reload_lock) != 0)
        return 0; /* another thread is refreshing: its map serves us too */
    int rc = 0;
    /* cur only changes under reload_lock: a refresh that ran while we waited counts */
    if (dhps_cluster_map_version(c->cur->m) > have) {
        rc = 1;
        goto out;
    }
    if (c->etcd) {
        uint64_t now = dhps_mono_ns();
        uint64_t last = atomic_load_explicit(&c->last_refresh_ns, memory_order_relaxed);
        if (!wait && last && now - last < CLIENT_REFRESH_GAP_NS)
            goto out;
        atomic_store_explicit(&c->last_refresh_ns, now, memory_order_relaxed);
        CTR_ADD(c->st.map_refreshes, 1);
        dhps_cluster_map *m = NULL;
        rc = client_etcd_fetch(c, timeout_ms, &m);
        if (rc == 0)
            rc = client_map_install(c, m);
    } else if (c->map_path) {
        CTR_ADD(c->st.map_refreshes, 1);
        rc = reload_file_locked(c);
    }
    if (rc >= 0)
        rc = dhps_cluster_map_version(c->cur->m) > have;
out:
    pthread_mutex_unlock(&c->reload_lock);
    return rc;
}

int dhps_client_reload(dhps_client *c)
{
    if (!c)
        return -EINVAL;
    /* an explicit reload waits for a concurrent one rather than skipping */
    pthread_mutex_lock(&c->reload_lock);
    pthread_mutex_unlock(&c->reload_lock);
    return client_reload(c, true);
}

uint64_t dhps_client_map_version(dhps_client *c)
{
    struct map_ref *r = client_map_pin(c);
    uint64_t v = dhps_cluster_map_version(r->m);
    client_map_unref(r);
    return v;
}

/*
 * dhps client: create / destroy, parameters, default rows, the version clock, counters and
 * fault rules. The rest of the client lives beside it (client_internal.h names the files).
 * Design in include/dhps/client.h; reference in docs/client.md.
 */
#include "client_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dhps/log.h"
#include "dhps/route.h"
#include "secret.h"

void dhps_client_params_init(dhps_client_params *p)
{
    memset(p, 0, sizeof *p);
    p->router = DHPS_CLIENT_ROUTER_AUTO;
    p->max_node_id = 4095;
    p->max_msg = 256u << 10;
    p->connect_timeout_ms = 1000;
    p->redial_backoff_ms = 100;
    p->default_timeout_us = 100000;
    p->reload_interval_ms = 1000;
    p->max_attempts = 3;
    p->hedge = true;
    p->spin_us = 50;
}

const char *dhps_client_router_name(const dhps_client *c) { return c->rops->name; }

static void free_tls(dhps_client *c)
{
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_name);
}

/* Copy and check the TLS params (the files are read now, so a bad one fails create
 * rather than every thread's first call). 0, DHPS_E_CONFIG (logged), -ENOMEM. */
static int tls_params(dhps_client *c, const dhps_client_params *p)
{
    c->p.tls_ca_file = c->p.tls_cert_file = c->p.tls_key_file = c->p.tls_server_name = NULL;
    if (p->tls == DHPS_RPC_TLS_OFF)
        return 0; /* the files are not used */
    if (!p->tls_ca_file) {
        DHPS_LOG(DHPS_LOG_ERROR, "client", "tls %s needs tls_ca_file (the CA the nodes' "
                 "certificates are checked against)", dhps_rpc_tls_policy_name(p->tls));
        return DHPS_E_CONFIG;
    }
    char err[600];
    int rc = dhps_rpc_tls_check(p->tls_cert_file, p->tls_key_file, p->tls_ca_file, err,
                                sizeof err);
    if (rc) {
        DHPS_LOG(DHPS_LOG_ERROR, "client", "%s", err);
        return rc;
    }
    const char *src[4] = {p->tls_ca_file, p->tls_cert_file, p->tls_key_file,
                          p->tls_server_name};
    char **dst[4] = {&c->tls_ca, &c->tls_cert, &c->tls_key, &c->tls_name};
    for (int i = 0; i < 4; i++)
        if (src[i] && !(*dst[i] = strdup(src[i])))
            return -ENOMEM;
    c->p.tls_ca_file = c->tls_ca;
    c->p.tls_cert_file = c->tls_cert;
    c->p.tls_key_file = c->tls_key;
    c->p.tls_server_name = c->tls_name;
    return 0;
}

int dhps_client_fault_set(dhps_client *c, uint32_t node_id, const dhps_rpc_fault *f)
{
    if (!c)
        return -EINVAL;
    struct map_ref *r = client_map_pin(c);
    const dhps_cluster_node *nd = dhps_cluster_map_node(r->m, node_id);
    int rc = -ENOENT;
    if (nd)
        rc = f ? dhps_rpc_fault_set(nd->ip, nd->port, f) : dhps_rpc_fault_clear(nd->ip, nd->port);
    client_map_unref(r);
    return rc;
}

/* ---- create / destroy ---------------------------------------------------------------- */

static void copy_label(char *dst, const char *src)
{
    if (!src)
        src = "";
    size_t l = strnlen(src, DHPS_CLUSTER_LABEL_MAX);
    memcpy(dst, src, l);
    dst[l] = '\0';
}

int dhps_client_secret_load(const char *path, void *buf, size_t cap, size_t *len, char *err,
                            size_t errlen)
{
    if (!path || !buf || !len) {
        if (err && errlen)
            snprintf(err, errlen, "secret file: no path or buffer");
        return -EINVAL;
    }
    char e[4400];
    int rc = dhps_secret_load(path, buf, cap, len, e, sizeof e);
    if (rc && err && errlen)
        snprintf(err, errlen, "%s", e);
    return rc;
}

int dhps_client_create(const dhps_client_params *p, dhps_client **out)
{
    if (!p || !out || (!p->map_path && !p->etcd) || (p->etcd && !p->cluster) ||
        (p->secret_len && !p->secret) ||
        p->secret_len > DHPS_RPC_MAX_SECRET || p->tls < DHPS_RPC_TLS_OFF ||
        p->tls > DHPS_RPC_TLS_ALWAYS || p->spin_us > DHPS_RPC_SPIN_US_MAX) {
        if (p && p->router == DHPS_CLIENT_ROUTER_CUSTOM && p->router_ops &&
            p->router_ops->destroy)
            p->router_ops->destroy(p->router_self);
        return -EINVAL;
    }
    *out = NULL;
    int rc = -ENOMEM;
    bool key_made = false;
    dhps_client *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->p = *p;
    if (c->p.max_attempts == 0)
        c->p.max_attempts = 1;
    if (c->p.default_timeout_us == 0)
        c->p.default_timeout_us = 100000;
    if (p->router == DHPS_CLIENT_ROUTER_CUSTOM) {
        c->rops = p->router_ops;
        c->rself = p->router_self;
        if (!c->rops || !c->rops->pick || !c->rops->report) {
            rc = -EINVAL;
            goto fail;
        }
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->reload_lock, NULL);
    copy_label(c->host, p->host);
    copy_label(c->pod, p->pod);
    copy_label(c->az, p->az);
    c->p.host = c->host;
    c->p.pod = c->pod;
    c->p.az = c->az;
    c->map_path = p->map_path ? strdup(p->map_path) : NULL;
    c->etcd_url = p->etcd ? strdup(p->etcd) : NULL;
    c->cluster = p->cluster ? strdup(p->cluster) : NULL;
    c->secret = malloc(p->secret_len ? p->secret_len : 1);
    c->nodes = calloc((size_t)p->max_node_id + 1, sizeof *c->nodes);
    if ((p->map_path && !c->map_path) || (p->etcd && (!c->etcd_url || !c->cluster)) ||
        !c->secret || !c->nodes)
        goto fail;
    c->p.etcd = c->etcd_url;
    c->p.cluster = c->cluster;
    if (p->secret_len)
        memcpy(c->secret, p->secret, p->secret_len);
    c->p.map_path = c->map_path;
    c->p.secret = c->secret;
    if ((rc = tls_params(c, p)))
        goto fail;
    if (pthread_key_create(&c->key, client_tstate_exit) != 0)
        goto fail;
    key_made = true;

    dhps_cluster_map *m = NULL;
    int64_t etcd_rev = 0;
    if (c->etcd_url) {
        /* the map from etcd; with a map file too, the file when etcd cannot give one */
        rc = client_etcd_open(c, &m, &etcd_rev);
        if (rc < 0 && !c->map_path)
            goto fail;
    }
    if (!m) {
        if (stat(c->map_path, &c->file_st) < 0) {
            rc = -errno;
            goto fail;
        }
        rc = dhps_cluster_map_load(c->map_path, &m, NULL, 0);
        if (rc < 0)
            goto fail;
    }
    rc = client_check_map_ids(c, m);
    if (rc < 0 || !(c->cur = malloc(sizeof *c->cur))) {
        dhps_cluster_map_destroy(m);
        rc = rc < 0 ? rc : -ENOMEM;
        goto fail;
    }
    c->cur->m = m;
    atomic_init(&c->cur->refs, 1);
    atomic_store(&c->last_check_ns, dhps_mono_ns());

    int kind = p->router;
    if (kind == DHPS_CLIENT_ROUTER_AUTO)
        kind = c->host[0] ? DHPS_CLIENT_ROUTER_ROUTE : DHPS_CLIENT_ROUTER_FIRST_HEALTHY;
    rc = -ENOMEM;
    if (kind == DHPS_CLIENT_ROUTER_ROUTE) {
        dhps_route_params rp;
        dhps_route_params_init(&rp);
        rp.max_nodes = p->max_node_id + 1;
        dhps_route_labels l = {.host = c->host, .pod = c->pod, .az = c->az};
        dhps_route *r = NULL;
        rc = dhps_route_create(&rp, &l, &r);
        if (rc < 0)
            goto fail;
        c->rops = &dhps_client_router_route;
        c->rself = r;
    } else if (kind == DHPS_CLIENT_ROUTER_FIRST_HEALTHY) {
        c->rself = dhps_client_router_first_healthy_create(p->max_node_id);
        if (!c->rself)
            goto fail;
        c->rops = &dhps_client_router_first_healthy;
    } else if (kind != DHPS_CLIENT_ROUTER_CUSTOM) {
        rc = -EINVAL;
        goto fail;
    }
    if (c->rops->set_nodes)
        c->rops->set_nodes(c->rself, m);
    c->trace = getenv("DHPS_CLIENT_TRACE") && getenv("DHPS_CLIENT_TRACE")[0] &&
               strcmp(getenv("DHPS_CLIENT_TRACE"), "0");
    if (c->etcd_url && (rc = client_etcd_watch(c, etcd_rev ? etcd_rev + 1 : 0)) < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    if (c) {
        client_etcd_close(c);
        free(c->etcd_url);
        free(c->cluster);
        if (c->rops && c->rops->destroy)
            c->rops->destroy(c->rself);
        if (key_made)
            pthread_key_delete(c->key);
        if (c->cur)
            client_map_unref(c->cur);
        free(c->map_path);
        free(c->secret);
        free(c->nodes);
        free_tls(c);
        free(c);
    } else if (p->router == DHPS_CLIENT_ROUTER_CUSTOM && p->router_ops &&
               p->router_ops->destroy) {
        p->router_ops->destroy(p->router_self);
    }
    return rc;
}

void dhps_client_destroy(dhps_client *c)
{
    if (!c)
        return;
    client_etcd_close(c); /* no map installs after this */
    for (;;) {
        pthread_mutex_lock(&c->lock);
        struct tstate *ts = c->threads;
        if (ts) {
            c->threads = ts->next;
            if (ts->next)
                ts->next->prev = NULL;
            ts->listed = false;
        }
        pthread_mutex_unlock(&c->lock);
        if (!ts)
            break;
        client_tstate_free(ts);
    }
    pthread_key_delete(c->key);
    if (c->rops->destroy)
        c->rops->destroy(c->rself);
    client_map_unref(c->cur);
    while (c->defaults) {
        struct tdefault *d = c->defaults;
        c->defaults = d->next;
        free(d->vec);
        free(d);
    }
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->reload_lock);
    free(c->map_path);
    free(c->etcd_url);
    free(c->cluster);
    free(c->secret);
    free(c->nodes);
    free_tls(c);
    free(c);
}

int dhps_client_set_default(dhps_client *c, const char *table, const float *vec, uint32_t dim)
{
    if (!c || !table || strlen(table) >= DHPS_TABLE_NAME_MAX || (vec && dim == 0))
        return -EINVAL;
    float *copy = NULL;
    if (vec) {
        copy = malloc((size_t)dim * sizeof *copy);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, vec, (size_t)dim * sizeof *copy);
    }
    pthread_mutex_lock(&c->lock);
    struct tdefault **pp = &c->defaults;
    while (*pp && strcmp((*pp)->table, table))
        pp = &(*pp)->next;
    struct tdefault *d = *pp;
    if (!d && copy) {
        d = calloc(1, sizeof *d);
        if (!d) {
            pthread_mutex_unlock(&c->lock);
            free(copy);
            return -ENOMEM;
        }
        strcpy(d->table, table);
        *pp = d;
    }
    if (d && !copy) {
        *pp = d->next;
        free(d->vec);
        free(d);
    } else if (d) {
        free(d->vec);
        d->vec = copy;
        d->dim = dim;
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

uint64_t dhps_client_next_version(dhps_client *c)
{
    uint64_t now = dhps_clock_ns(CLOCK_REALTIME);
    uint64_t last = atomic_load_explicit(&c->hlc, memory_order_relaxed), v;
    do {
        v = now > last ? now : last + 1;
    } while (!atomic_compare_exchange_weak_explicit(&c->hlc, &last, v, memory_order_relaxed,
                                                    memory_order_relaxed));
    return v;
}

/* ---- stats --------------------------------------------------------------------------- */

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void dhps_client_stats_get(dhps_client *c, dhps_client_stats *s)
{
    s->lookups = LD(c->st.lookups);
    s->updates = LD(c->st.updates);
    s->keys_looked_up = LD(c->st.keys_looked_up);
    s->keys_updated = LD(c->st.keys_updated);
    s->sub_batches = LD(c->st.sub_batches);
    s->retries = LD(c->st.retries);
    s->hedges = LD(c->st.hedges);
    s->partial = LD(c->st.partial);
    s->update_shortfalls = LD(c->st.update_shortfalls);
    s->not_owned = LD(c->st.not_owned);
    s->not_ready = LD(c->st.not_ready);
    s->map_reloads = LD(c->st.map_reloads);
    s->threads = LD(c->st.threads);
    s->coord_outages = LD(c->st.coord_outages);
    s->coord_errors = LD(c->st.coord_errors);
    s->coord_up = LD(c->st.coord_up);
    s->moved = LD(c->st.moved);
    s->map_refreshes = LD(c->st.map_refreshes);
}

struct dhps_route *dhps_client_route(dhps_client *c)
{
    return c && c->rops == &dhps_client_router_route ? (struct dhps_route *)c->rself : NULL;
}

int dhps_client_node_stats_get(dhps_client *c, uint32_t id, dhps_client_node_stats *s)
{
    if (!c || !s || id > c->p.max_node_id)
        return -EINVAL;
    struct node_ctr *n = &c->nodes[id];
    s->messages = LD(n->messages);
    s->ok = LD(n->ok);
    s->errors = LD(n->errors);
    s->not_ready = LD(n->not_ready);
    s->timeouts = LD(n->timeouts);
    s->cancelled = LD(n->cancelled);
    s->connects = LD(n->connects);
    s->connect_failures = LD(n->connect_failures);
    s->last_error = atomic_load_explicit(&n->last_error, memory_order_relaxed);
    return 0;
}

/*
 * dhps client: map cache, per-thread rpc state, lookup scatter/gather, update fan-out.
 * Design in include/dhps/client.h; reference in docs/client.md.
 */
#include "dhps/client.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dhps/route.h"
#include "dhps/rpc.h"
#include "util.h"

/* ---- time, fp16 ---------------------------------------------------------------------- */

static float h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
    if (exp == 0) {
        if (man == 0) {
            f = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            f = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        f = sign | 0x7f800000u | (man << 13);
    } else {
        f = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float r;
    memcpy(&r, &f, 4);
    return r;
}

static uint16_t f2h(float v)
{
    uint32_t f;
    memcpy(&f, &v, 4);
    uint32_t sign = (f >> 16) & 0x8000;
    int32_t exp = (int32_t)((f >> 23) & 0xff) - 127 + 15;
    uint32_t man = f & 0x7fffff;
    if (((f >> 23) & 0xff) == 0xff) /* inf / nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) { /* subnormal or zero, round to nearest even */
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, up to inf: correct */
    return (uint16_t)(sign | h);
}

/* Copy one row of dim values from src (src_bytes per value) to dst (dst_bytes). */
static void convert_row(void *dst, int dst_bytes, const void *src, int src_bytes, uint32_t dim)
{
    if (dst_bytes == src_bytes) {
        memcpy(dst, src, (size_t)dim * (size_t)dst_bytes);
    } else if (dst_bytes == 4) {
        const uint8_t *s = src;
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            float f = h2f(h);
            memcpy((uint8_t *)dst + 4 * i, &f, 4);
        }
    } else {
        const uint8_t *s = src;
        for (uint32_t i = 0; i < dim; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            uint16_t h = f2h(f);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
    }
}

/* ---- routers ------------------------------------------------------------------------- */

struct first_healthy {
    uint32_t max_id;
    _Atomic uint64_t *fail_until; /* per node id: monotonic ns */
};

void *dhps_client_router_first_healthy_create(uint32_t max_node_id)
{
    struct first_healthy *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->max_id = max_node_id;
    f->fail_until = calloc((size_t)max_node_id + 1, sizeof *f->fail_until);
    if (!f->fail_until) {
        free(f);
        return NULL;
    }
    return f;
}

static bool excluded(const uint32_t *ex, size_t nex, uint32_t id)
{
    for (size_t i = 0; i < nex; i++)
        if (ex[i] == id)
            return true;
    return false;
}

static int fh_pick(void *self, const uint32_t *rep, size_t n, const uint32_t *ex, size_t nex,
                   int kind, dhps_client_pick *out)
{
    struct first_healthy *f = self;
    uint64_t now = dhps_mono_ns();
    size_t fallback = n;
    for (size_t i = 0; i < n; i++) {
        if (rep[i] > f->max_id || excluded(ex, nex, rep[i]))
            continue;
        if (atomic_load_explicit(&f->fail_until[rep[i]], memory_order_relaxed) <= now) {
            fallback = i;
            break;
        }
        if (fallback == n)
            fallback = i;
    }
    if (fallback == n)
        return DHPS_E_UNREACHABLE;
    memset(out, 0, sizeof *out);
    out->node = rep[fallback];
    out->kind = (uint8_t)kind;
    out->start_ns = now;
    return 0;
}

static void fh_report(void *self, const dhps_client_pick *p, uint64_t lat, int outcome)
{
    struct first_healthy *f = self;
    if (p->node > f->max_id)
        return;
    if (outcome == DHPS_CLIENT_CANCELLED)
        return;
    uint64_t v = outcome == DHPS_CLIENT_OK ? 0 : dhps_mono_ns() + 1000000000ull;
    atomic_store_explicit(&f->fail_until[p->node], v, memory_order_relaxed);
}

static void fh_destroy(void *self)
{
    struct first_healthy *f = self;
    if (f)
        free(f->fail_until);
    free(f);
}

const dhps_client_router_ops dhps_client_router_first_healthy = {
    .name = "first_healthy", .pick = fh_pick, .report = fh_report, .allow_retry = NULL,
    .set_nodes = NULL, .destroy = fh_destroy,
};

static int rt_pick(void *self, const uint32_t *rep, size_t n, const uint32_t *ex, size_t nex,
                   int kind, dhps_client_pick *out)
{
    dhps_route_choice ch;
    int rc = dhps_route_pick(self, rep, n, ex, nex, kind, &ch);
    if (rc < 0)
        return rc == DHPS_E_UNREACHABLE ? rc : DHPS_E_UNREACHABLE;
    out->node = ch.node;
    out->kind = ch.kind;
    out->tier = ch.tier;
    out->flags = ch.flags;
    out->start_ns = ch.start_ns;
    return 0;
}

static void rt_report(void *self, const dhps_client_pick *p, uint64_t lat, int outcome)
{
    dhps_route_choice ch = {.node = p->node, .tier = p->tier, .kind = p->kind,
                            .flags = p->flags, .start_ns = p->start_ns};
    int o = outcome == DHPS_CLIENT_OK          ? DHPS_ROUTE_OK
            : outcome == DHPS_CLIENT_TIMEOUT   ? DHPS_ROUTE_TIMEOUT
            : outcome == DHPS_CLIENT_CANCELLED ? DHPS_ROUTE_CANCELLED
                                               : DHPS_ROUTE_ERROR;
    dhps_route_report(self, &ch, lat, o);
}

static bool rt_allow_retry(void *self, uint64_t deadline_ns)
{
    return dhps_route_retry_acquire(self, deadline_ns) == 0;
}

static uint64_t rt_hedge_delay(void *self, const dhps_client_pick *p)
{
    dhps_route_choice ch = {.node = p->node, .tier = p->tier, .kind = p->kind,
                            .flags = p->flags, .start_ns = p->start_ns};
    return dhps_route_hedge_delay(self, &ch);
}

static bool rt_hedge_acquire(void *self, uint64_t deadline_ns)
{
    return dhps_route_hedge_acquire(self, deadline_ns) == 0;
}

static void rt_set_nodes(void *self, const dhps_cluster_map *m)
{
    for (size_t i = 0; i < dhps_cluster_map_nnodes(m); i++) {
        const dhps_cluster_node *n = dhps_cluster_map_node_at(m, i);
        dhps_route_labels l = {.host = n->host, .pod = n->pod, .az = n->az};
        dhps_route_node_set(self, n->id, &l);
    }
}

static void rt_destroy(void *self) { dhps_route_destroy(self); }

const dhps_client_router_ops dhps_client_router_route = {
    .name = "route", .pick = rt_pick, .report = rt_report, .allow_retry = rt_allow_retry,
    .hedge_delay = rt_hedge_delay, .hedge_acquire = rt_hedge_acquire,
    .set_nodes = rt_set_nodes, .destroy = rt_destroy,
};

/* ---- client state -------------------------------------------------------------------- */

struct map_ref {
    dhps_cluster_map *m;
    _Atomic uint32_t refs;
};

struct node_ctr {
    _Atomic uint64_t messages, ok, errors, timeouts, cancelled, connects, connect_failures;
};

struct tdefault {
    struct tdefault *next;
    char table[DHPS_TABLE_NAME_MAX];
    uint32_t dim;
    float *vec;
};

struct chan {
    dhps_rpc_channel *ch;
    char addr[DHPS_CLUSTER_ADDR_MAX + 1];
    uint64_t retry_at_ns; /* after a failed dial: not before this */
    uint32_t allow;       /* transports the channel was opened with (path_allow) */
    bool broken;
    bool ended;           /* its open's end was counted (connects / connect_failures) */
};

struct tstate {
    dhps_client *c;
    dhps_rpc_client *rpc;
    uint64_t inflight;  /* rpc calls of this thread not completed yet (detached ones too) */
    struct chan *chans; /* indexed by node id */
    size_t nchans;
    struct tstate *next, *prev;
    bool listed;
};

struct dhps_client {
    dhps_client_params p;
    char *map_path;
    void *secret;
    char host[DHPS_CLUSTER_LABEL_MAX + 1], pod[DHPS_CLUSTER_LABEL_MAX + 1],
        az[DHPS_CLUSTER_LABEL_MAX + 1];

    pthread_mutex_t lock;        /* cur, threads list, defaults */
    struct map_ref *cur;
    pthread_mutex_t reload_lock; /* one reload at a time; file identity below */
    struct stat file_st;
    _Atomic uint64_t last_check_ns;

    const dhps_client_router_ops *rops;
    void *rself;

    pthread_key_t key;
    struct tstate *threads;
    struct tdefault *defaults;

    _Atomic uint64_t hlc;
    bool trace;                  /* DHPS_CLIENT_TRACE set: print failed lookups' attempts */
    struct {
        _Atomic uint64_t lookups, updates, keys_looked_up, keys_updated, sub_batches, retries, hedges,
            partial, update_shortfalls, not_owned, map_reloads, threads;
    } st;
    struct node_ctr *nodes; /* max_node_id + 1 */
};

#define CTR_ADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

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
}

static void map_unref(struct map_ref *r)
{
    if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
        dhps_cluster_map_destroy(r->m);
        free(r);
    }
}

static struct map_ref *map_pin(dhps_client *c)
{
    pthread_mutex_lock(&c->lock);
    struct map_ref *r = c->cur;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&c->lock);
    return r;
}

static int check_map_ids(dhps_client *c, const dhps_cluster_map *m)
{
    return dhps_cluster_map_max_node_id(m) > c->p.max_node_id ? DHPS_E_CONFIG : 0;
}

/* Reload when the file changed (or force) and its version is newer. */
static int reload(dhps_client *c, bool force)
{
    uint64_t now = dhps_mono_ns();
    if (!force) {
        uint64_t last = atomic_load_explicit(&c->last_check_ns, memory_order_relaxed);
        if (c->p.reload_interval_ms == 0 ||
            now - last < (uint64_t)c->p.reload_interval_ms * 1000000ull)
            return 0;
    }
    if (pthread_mutex_trylock(&c->reload_lock) != 0)
        return 0; /* another thread is at it */
    atomic_store_explicit(&c->last_check_ns, now, memory_order_relaxed);
    int rc = 0;
    struct stat st;
    if (stat(c->map_path, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (st.st_ino == c->file_st.st_ino && st.st_dev == c->file_st.st_dev &&
        st.st_size == c->file_st.st_size && st.st_mtim.tv_sec == c->file_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == c->file_st.st_mtim.tv_nsec)
        goto out;
    dhps_cluster_map *m = NULL;
    rc = dhps_cluster_map_load(c->map_path, &m, NULL, 0);
    if (rc < 0)
        goto out;
    c->file_st = st;
    uint64_t curv = dhps_cluster_map_version(c->cur->m); /* cur only changes under reload_lock */
    if (dhps_cluster_map_version(m) <= curv || check_map_ids(c, m) < 0) {
        rc = dhps_cluster_map_version(m) <= curv ? 0 : DHPS_E_CONFIG;
        dhps_cluster_map_destroy(m);
        goto out;
    }
    struct map_ref *r = malloc(sizeof *r);
    if (!r) {
        dhps_cluster_map_destroy(m);
        rc = -ENOMEM;
        goto out;
    }
    r->m = m;
    atomic_init(&r->refs, 1);
    if (c->rops->set_nodes)
        c->rops->set_nodes(c->rself, m);
    pthread_mutex_lock(&c->lock);
    struct map_ref *old = c->cur;
    c->cur = r;
    pthread_mutex_unlock(&c->lock);
    map_unref(old);
    CTR_ADD(c->st.map_reloads, 1);
    rc = 1;
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
    return reload(c, true);
}

uint64_t dhps_client_map_version(dhps_client *c)
{
    struct map_ref *r = map_pin(c);
    uint64_t v = dhps_cluster_map_version(r->m);
    map_unref(r);
    return v;
}

const char *dhps_client_router_name(const dhps_client *c) { return c->rops->name; }

int dhps_client_fault_set(dhps_client *c, uint32_t node_id, const dhps_rpc_fault *f)
{
    if (!c)
        return -EINVAL;
    struct map_ref *r = map_pin(c);
    const dhps_cluster_node *nd = dhps_cluster_map_node(r->m, node_id);
    int rc = -ENOENT;
    if (nd)
        rc = f ? dhps_rpc_fault_set(nd->ip, nd->port, f) : dhps_rpc_fault_clear(nd->ip, nd->port);
    map_unref(r);
    return rc;
}

static void tstate_free(struct tstate *ts)
{
    if (!ts)
        return;
    for (size_t i = 0; i < ts->nchans; i++)
        dhps_rpc_channel_close(ts->chans[i].ch);
    dhps_rpc_client_destroy(ts->rpc); /* detached calls complete (cancelled) here */
    free(ts->chans);
    free(ts);
}

static void tstate_exit(void *arg)
{
    struct tstate *ts = arg;
    dhps_client *c = ts->c;
    pthread_mutex_lock(&c->lock);
    bool mine = ts->listed;
    if (mine) {
        ts->listed = false;
        if (ts->prev)
            ts->prev->next = ts->next;
        else
            c->threads = ts->next;
        if (ts->next)
            ts->next->prev = ts->prev;
    }
    pthread_mutex_unlock(&c->lock);
    if (mine)
        tstate_free(ts);
}

static struct tstate *tstate_get(dhps_client *c)
{
    struct tstate *ts = pthread_getspecific(c->key);
    if (ts)
        return ts;
    ts = calloc(1, sizeof *ts);
    if (!ts)
        return NULL;
    ts->c = c;
    dhps_rpc_client_params rp;
    dhps_rpc_client_params_init(&rp);
    rp.secret = c->secret;
    rp.secret_len = c->p.secret_len;
    rp.max_msg = c->p.max_msg;
    rp.connect_timeout_ms = c->p.connect_timeout_ms;
    uint8_t host_id[DHPS_RPC_HOST_ID_LEN];
    dhps_rpc_host_id(c->host, host_id); /* shm only with servers of our host label */
    rp.host_id = host_id;
    if (dhps_rpc_client_create(&rp, &ts->rpc) < 0 || pthread_setspecific(c->key, ts) != 0) {
        dhps_rpc_client_destroy(ts->rpc);
        free(ts);
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    ts->next = c->threads;
    if (c->threads)
        c->threads->prev = ts;
    c->threads = ts;
    ts->listed = true;
    pthread_mutex_unlock(&c->lock);
    CTR_ADD(c->st.threads, 1);
    return ts;
}

/* Transports toward node nd, from the tiers of the design: the same host may use shared
 * memory (the rpc hello decides, by host id), the same AZ RDMA verbs when both ends have a
 * device, another AZ TCP only. Without labels on either side every transport is allowed. */
static uint32_t path_allow(const dhps_client *c, const dhps_cluster_node *nd)
{
    if (!c->host[0] || !nd->host[0] || !strcmp(c->host, nd->host))
        return DHPS_RPC_ALL;
    if (!c->az[0] || !nd->az[0] || !strcmp(c->az, nd->az))
        return DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_VERBS);
    return DHPS_RPC_MASK(DHPS_RPC_TCP);
}

/* Look at an open in progress: count its end, and after a failure keep the node from
 * being dialled again before redial_backoff_ms. Returns the channel's status. */
static int chan_state(dhps_client *c, struct chan *e, uint32_t id)
{
    int st = dhps_rpc_channel_status(e->ch);
    if (st == -EINPROGRESS)
        return st;
    if (!e->ended) { /* once per open: the backoff runs from the failure's first sight */
        e->ended = true;
        if (st == 0) {
            CTR_ADD(c->nodes[id].connects, 1);
        } else {
            e->retry_at_ns = dhps_mono_ns() + (uint64_t)c->p.redial_backoff_ms * 1000000ull;
            CTR_ADD(c->nodes[id].connect_failures, 1);
        }
    }
    if (st < 0)
        e->broken = true;
    return st;
}

/* The thread's channel to node id of map m, opened on demand without blocking: a new
 * channel is returned while its connect and hello run (calls sent on it wait for them,
 * inside their own deadlines, and fail with the open's error), so a node that is slow to
 * accept (stopped, loading, setting up RDMA) holds up only the calls routed to it; the
 * attempt timeout and hedges move those elsewhere. A call with a deadline (deadline_ns
 * != 0) also bounds the TCP connect by what is left of it. */
static int channel_get(struct tstate *ts, const dhps_cluster_map *m, uint32_t id,
                       uint64_t deadline_ns, dhps_rpc_channel **out)
{
    dhps_client *c = ts->c;
    const dhps_cluster_node *nd = dhps_cluster_map_node(m, id);
    if (!nd || id > c->p.max_node_id)
        return DHPS_E_UNREACHABLE;
    if (id >= ts->nchans) {
        size_t nn = (size_t)dhps_cluster_map_max_node_id(m) + 1;
        struct chan *v = realloc(ts->chans, nn * sizeof *v);
        if (!v)
            return -ENOMEM;
        memset(v + ts->nchans, 0, (nn - ts->nchans) * sizeof *v);
        ts->chans = v;
        ts->nchans = nn;
    }
    struct chan *e = &ts->chans[id];
    uint32_t allow = path_allow(c, nd);
    if (e->ch)
        (void)chan_state(c, e, id);
    if (e->ch && (e->broken || strcmp(e->addr, nd->addr) || e->allow != allow)) {
        dhps_rpc_channel_close(e->ch); /* in-flight calls complete (cancelled) */
        e->ch = NULL;
        e->broken = false;
    }
    if (e->ch) {
        *out = e->ch;
        return 0;
    }
    uint64_t now = dhps_mono_ns();
    if (now < e->retry_at_ns && !strcmp(e->addr, nd->addr))
        return DHPS_E_UNREACHABLE;
    dhps_rpc_channel_params cp;
    dhps_rpc_channel_params_init(&cp);
    cp.host = nd->ip;
    cp.port = nd->port;
    cp.allow = allow;
    if (deadline_ns) {
        uint64_t left_us = deadline_ns > now ? (deadline_ns - now) / 1000 : 0;
        cp.tcp_connect_timeout_us =
            left_us < 1000 ? 1000 : left_us > UINT32_MAX ? UINT32_MAX : (uint32_t)left_us;
    }
    strcpy(e->addr, nd->addr);
    e->allow = allow;
    e->ended = false;
    int rc = dhps_rpc_channel_open_async(ts->rpc, &cp, &e->ch);
    if (rc < 0) {
        e->ch = NULL;
        e->retry_at_ns = dhps_mono_ns() + (uint64_t)c->p.redial_backoff_ms * 1000000ull;
        CTR_ADD(c->nodes[id].connect_failures, 1);
        return rc;
    }
    rc = chan_state(c, e, id);
    if (rc < 0 && rc != -EINPROGRESS)
        return rc; /* refused at once: closed on the next use, after the backoff */
    *out = e->ch;
    return 0;
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

int dhps_client_create(const dhps_client_params *p, dhps_client **out)
{
    if (!p || !out || !p->map_path || (p->secret_len && !p->secret) ||
        p->secret_len > DHPS_RPC_MAX_SECRET) {
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
    c->map_path = strdup(p->map_path);
    c->secret = malloc(p->secret_len ? p->secret_len : 1);
    c->nodes = calloc((size_t)p->max_node_id + 1, sizeof *c->nodes);
    if (!c->map_path || !c->secret || !c->nodes)
        goto fail;
    if (p->secret_len)
        memcpy(c->secret, p->secret, p->secret_len);
    c->p.map_path = c->map_path;
    c->p.secret = c->secret;
    if (pthread_key_create(&c->key, tstate_exit) != 0)
        goto fail;
    key_made = true;

    dhps_cluster_map *m = NULL;
    if (stat(c->map_path, &c->file_st) < 0) {
        rc = -errno;
        goto fail;
    }
    rc = dhps_cluster_map_load(c->map_path, &m, NULL, 0);
    if (rc < 0)
        goto fail;
    rc = check_map_ids(c, m);
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
    *out = c;
    return 0;
fail:
    if (c) {
        if (c->rops && c->rops->destroy)
            c->rops->destroy(c->rself);
        if (key_made)
            pthread_key_delete(c->key);
        if (c->cur)
            map_unref(c->cur);
        free(c->map_path);
        free(c->secret);
        free(c->nodes);
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
        tstate_free(ts);
    }
    pthread_key_delete(c->key);
    if (c->rops->destroy)
        c->rops->destroy(c->rself);
    map_unref(c->cur);
    while (c->defaults) {
        struct tdefault *d = c->defaults;
        c->defaults = d->next;
        free(d->vec);
        free(d);
    }
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->reload_lock);
    free(c->map_path);
    free(c->secret);
    free(c->nodes);
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

/* ---- operations ---------------------------------------------------------------------- */

enum msg_state { M_IDLE, M_INFLIGHT, M_OK, M_RETRY, M_FAILED };

#define MAX_TRIED DHPS_CLUSTER_MAX_REPLICAS

struct op;
struct msg;

struct attempt {            /* one rpc call of a message: [0] primary/retry, [1] hedge */
    struct msg *ms;
    dhps_client_pick pick;
    bool inflight;
    bool reported;          /* the router already has this attempt's outcome (it timed
                               out at the attempt timeout; the call may still answer) */
    bool wait_open;         /* sent while its channel was still opening */
    int8_t tli;             /* trace: index of its entry in the message's log, or -1 */
};

/* Trace (DHPS_CLIENT_TRACE): what happened to each attempt of a lookup message, times
 * in microseconds from the start of the call. */
#define TL_PER_MSG 8
struct tlog {
    uint32_t node;
    uint8_t kind, flags;
    int16_t err;            /* 1 = still in flight */
    int32_t sent_us, done_us, dial_us;
};

struct msg {
    struct op *op;
    uint32_t shard;
    uint32_t first, count;  /* range of op->order */
    uint32_t group;         /* update: index of the (shard, chunk) group */
    uint8_t state;
    uint8_t attempts;
    uint8_t ntried;
    int err;
    uint8_t ninflight;      /* attempts in flight (2 while hedged) */
    uint64_t retry_at;      /* update: a failed message may be re-sent from then */
    bool hedged;            /* a hedge was considered (at most one per message) */
    bool second;            /* att[1] was used (a hedge, or a re-send after an attempt
                               timeout): at most one per message */
    uint8_t ntl;            /* trace entries used */
    uint32_t tried[MAX_TRIED];
    struct attempt att[2];
};

struct group {              /* update: one shard chunk fanned out to R replicas */
    uint32_t acks, fails, needed, nrep;
    int err;
};

struct op {
    dhps_client *c;
    struct tstate *ts;
    const dhps_cluster_map *m;
    bool update;
    bool detached;
    uint32_t refs;          /* 1 (the caller) + calls in flight */
    uint64_t deadline_ns;
    char table[DHPS_TABLE_NAME_MAX];
    const uint64_t *keys;
    uint32_t *order;        /* key indices sorted by shard */
    struct msg *msgs;
    size_t nmsgs;
    struct group *groups;
    size_t ngroups;
    /* lookup */
    uint8_t *out;
    uint32_t dim;
    int out_bytes;          /* 4 or 2 per value */
    uint64_t *found;        /* bits */
    bool want_fp16;
    /* update */
    const uint8_t *values;
    uint32_t vb;            /* bytes per row */
    int dtype;
    uint32_t ttl;
    uint64_t version;
    bool not_owned;         /* some replica said "not owned": reload */
    bool hedge;             /* lookups: the router hedges and the caller allows it */
    uint64_t attempt_ns;    /* lookups: attempt timeout */
    bool del;               /* update op carrying DELETE messages */
    uint32_t messages, retries, hedges;
    uint64_t t0;            /* start of the call */
    struct tlog *tl;        /* trace: TL_PER_MSG entries per message, or NULL */
};

static void op_free(struct op *op)
{
    free(op->tl);
    free(op->order);
    free(op->msgs);
    free(op->groups);
    free(op->found);
    free(op);
}

static void op_unref(struct op *op)
{
    if (--op->refs == 0)
        op_free(op);
}

/* Outcome of one rpc call: classify, report to the router, count. */
static int call_outcome(dhps_client *c, struct attempt *a, int status, const void *resp,
                        size_t len, dhps_proto_resp *hdr)
{
    struct msg *ms = a->ms;
    int err = status;
    if (err == 0) {
        if (len < sizeof(dhps_proto_resp)) {
            err = DHPS_E_MALFORMED;
        } else {
            memcpy(hdr, resp, sizeof *hdr); /* responses need not be aligned */
            err = hdr->status;
            if (err > 0)
                err = DHPS_E_MALFORMED;
        }
    }
    uint64_t now = dhps_mono_ns(), from = a->pick.start_ns;
    if (a->wait_open && ms->op->ts && a->pick.node < ms->op->ts->nchans &&
        ms->op->ts->chans[a->pick.node].ch) {
        struct chan *e = &ms->op->ts->chans[a->pick.node];
        /* the open this call waited for has ended: note it now, so a failure's redial
         * backoff runs from the failure, not from the node's next use (a breaker probe
         * seconds later would otherwise find itself inside the backoff and never dial) */
        (void)chan_state(c, e, a->pick.node);
        uint64_t ready = dhps_rpc_channel_ready_ns(e->ch);
        if (ready > from && ready <= now)
            from = ready;
    }
    uint64_t lat = now - from;
    if (ms->op->tl && a->tli >= 0) {
        struct tlog *t = &ms->op->tl[(size_t)(ms - ms->op->msgs) * TL_PER_MSG + (size_t)a->tli];
        t->done_us = (int32_t)((dhps_mono_ns() - ms->op->t0) / 1000);
        t->err = (int16_t)err;
    }
    int outcome = err == 0 ? DHPS_CLIENT_OK
                  : err == DHPS_E_TIMEOUT ? DHPS_CLIENT_TIMEOUT : DHPS_CLIENT_ERROR;
    /* "stale" on an update means the replica holds something newer: it answered */
    if (err == DHPS_E_STALE)
        outcome = DHPS_CLIENT_OK;
    struct node_ctr *nc = &c->nodes[a->pick.node];
    /* the other attempt of a hedged pair already answered: this one lost, whatever
     * became of it (answered late, timed out, or cancelled when its call was dropped) */
    int rout = ms->state == M_OK && !ms->op->update ? DHPS_CLIENT_CANCELLED : outcome;
    if (!ms->op->update && !a->reported)
        c->rops->report(c->rself, &a->pick, lat, rout);
    a->reported = false;
    if (rout == DHPS_CLIENT_CANCELLED)
        CTR_ADD(nc->cancelled, 1);
    else if (outcome == DHPS_CLIENT_OK)
        CTR_ADD(nc->ok, 1);
    else if (outcome == DHPS_CLIENT_TIMEOUT)
        CTR_ADD(nc->timeouts, 1);
    else
        CTR_ADD(nc->errors, 1);
    if (err == DHPS_E_NOTFOUND) {
        CTR_ADD(c->st.not_owned, 1);
        ms->op->not_owned = true;
    }
    if (err == DHPS_E_UNREACHABLE && ms->op->ts && a->pick.node < ms->op->ts->nchans)
        ms->op->ts->chans[a->pick.node].broken = true;
    return err;
}

static void lookup_done(void *arg, int status, const void *resp, size_t len)
{
    struct attempt *a = arg;
    struct msg *ms = a->ms;
    struct op *op = ms->op;
    dhps_proto_resp hb, *h = &hb;
    a->inflight = false;
    ms->ninflight--;
    op->ts->inflight--;
    int err = call_outcome(op->c, a, status, resp, len, h);
    if (op->detached || ms->state == M_OK) { /* abandoned, or the other attempt won */
        op_unref(op);
        return;
    }
    if (err == 0) {
        size_t words = ((size_t)ms->count + 63) / 64;
        uint32_t vb = h->value_bytes;
        int src_bytes = vb == op->dim * 4u ? 4 : vb == op->dim * 2u ? 2 : 0;
        if (h->n != ms->count || !src_bytes ||
            len < sizeof *h + words * 8 + (size_t)ms->count * vb) {
            err = DHPS_E_MALFORMED;
        } else {
            const uint8_t *mask = (const uint8_t *)resp + sizeof *h;
            const uint8_t *rows = mask + words * 8;
            size_t rb = (size_t)op->dim * (size_t)op->out_bytes;
            for (uint32_t j = 0; j < ms->count; j++) {
                uint64_t w;
                memcpy(&w, mask + (j / 64) * 8, 8);
                if (!((w >> (j % 64)) & 1))
                    continue;
                uint32_t k = op->order[ms->first + j];
                convert_row(op->out + (size_t)k * rb, op->out_bytes, rows + (size_t)j * vb,
                            src_bytes, op->dim);
                op->found[k / 64] |= 1ull << (k % 64);
            }
        }
    }
    if (err == 0) {
        ms->state = M_OK;
    } else {
        ms->err = err;
        if (ms->ninflight == 0) /* else the other attempt may still answer */
            ms->state = M_RETRY;
    }
    op_unref(op);
}

/* Update messages are re-sent to the same replica (same version: idempotent) after
 * errors that may pass: a dropped connection (after the redial backoff), a handler
 * error, overload. Not after "not owned", auth, malformed answers or the deadline. */
static bool update_retryable(int err)
{
    return err == DHPS_E_UNREACHABLE || err == DHPS_E_HANDLER || err == DHPS_E_BUSY ||
           err == DHPS_E_CANCELLED;
}

static uint64_t update_retry_at(dhps_client *c, int err)
{
    uint64_t backoff = err == DHPS_E_UNREACHABLE ? (uint64_t)c->p.redial_backoff_ms * 1000000ull
                                                 : 1000000ull;
    return dhps_mono_ns() + backoff;
}

static void update_done(void *arg, int status, const void *resp, size_t len)
{
    struct attempt *a = arg;
    struct msg *ms = a->ms;
    struct op *op = ms->op;
    dhps_proto_resp h;
    a->inflight = false;
    ms->ninflight--;
    op->ts->inflight--;
    int err = call_outcome(op->c, a, status, resp, len, &h);
    if (!op->detached) {
        struct group *g = &op->groups[ms->group];
        if (err == 0 || err == DHPS_E_STALE) {
            g->acks++;
            ms->state = M_OK;
        } else {
            g->fails++;
            if (!g->err)
                g->err = err;
            ms->state = M_FAILED;
            ms->err = err;
            ms->retry_at = update_retry_at(op->c, err);
        }
    }
    op_unref(op);
}

/* Ask for a lent buffer, polling while the ring is busy (bounded by the deadline). */
static int start_call(struct op *op, dhps_rpc_channel *ch, uint16_t method, size_t len, void **buf)
{
    for (;;) {
        int rc = dhps_rpc_call_start(ch, method, len, buf);
        if (rc != DHPS_E_BUSY)
            return rc;
        if (dhps_mono_ns() >= op->deadline_ns)
            return DHPS_E_TIMEOUT;
        dhps_rpc_client_poll(op->ts->rpc, 0);
    }
}

static void fill_hdr(struct op *op, dhps_proto_hdr *h, uint32_t shard, uint16_t flags)
{
    memset(h, 0, sizeof *h);
    h->version = DHPS_PROTO_VERSION;
    h->flags = flags;
    h->shard = shard;
    memcpy(h->table, op->table, sizeof h->table);
    h->map_version = dhps_cluster_map_version(op->m);
}

/* Send message ms as attempt a (node already chosen in a->pick). On a local failure the
 * message is left in M_RETRY (lookup, unless another attempt is in flight) or M_FAILED
 * (update) with err set. */
static void send_msg(struct op *op, struct msg *ms, struct attempt *a)
{
    dhps_client *c = op->c;
    uint32_t node = a->pick.node;
    dhps_rpc_channel *ch = NULL;
    void *buf = NULL;
    uint64_t now = dhps_mono_ns();
    int rc = now >= op->deadline_ns ? DHPS_E_TIMEOUT
                                     : channel_get(op->ts, op->m, node, op->deadline_ns, &ch);
    uint64_t t1 = dhps_mono_ns();
    /* the time spent opening a connection is not the node's answer time: the router's
     * latency sample (and a half-open breaker's probe verdict) starts after it (here
     * for a slow local step, in call_outcome for a wait on the hello) */
    if (t1 - now > 100000)
        a->pick.start_ns += t1 - now;
    a->wait_open = rc == 0 && dhps_rpc_channel_status(ch) == -EINPROGRESS;
    struct tlog *tl = NULL;
    a->tli = -1;
    if (op->tl && ms->ntl < TL_PER_MSG) {
        a->tli = (int8_t)ms->ntl;
        tl = &op->tl[(size_t)(ms - op->msgs) * TL_PER_MSG + ms->ntl++];
        tl->node = node;
        tl->kind = a->pick.kind;
        tl->flags = a->pick.flags;
        tl->err = 1;
        tl->sent_us = (int32_t)((now - op->t0) / 1000);
        tl->dial_us = (int32_t)((t1 - now) / 1000);
        tl->done_us = -1;
    }
    if (rc == 0) {
        size_t len;
        if (!op->update) {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_lookup) + 8ull * ms->count;
            rc = start_call(op, ch, DHPS_M_LOOKUP, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, (dhps_proto_hdr *)b, ms->shard, op->want_fp16 ? DHPS_LOOKUP_FP16 : 0);
                dhps_proto_lookup lk = {.n = ms->count};
                memcpy(b + sizeof(dhps_proto_hdr), &lk, sizeof lk);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof lk;
                for (uint32_t j = 0; j < ms->count; j++)
                    memcpy(kp + 8 * j, &op->keys[op->order[ms->first + j]], 8);
            }
        } else if (op->del) {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_delete) + 8ull * ms->count;
            rc = start_call(op, ch, DHPS_M_DELETE, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, (dhps_proto_hdr *)b, ms->shard, 0);
                dhps_proto_delete dl = {.n = ms->count, .version = op->version};
                memcpy(b + sizeof(dhps_proto_hdr), &dl, sizeof dl);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof dl;
                for (uint32_t j = 0; j < ms->count; j++)
                    memcpy(kp + 8 * j, &op->keys[op->order[ms->first + j]], 8);
            }
        } else {
            len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_upsert) +
                  (8ull + op->vb) * ms->count;
            rc = start_call(op, ch, DHPS_M_UPSERT, len, &buf);
            if (rc == 0) {
                uint8_t *b = buf;
                fill_hdr(op, (dhps_proto_hdr *)b, ms->shard, (uint16_t)op->dtype);
                dhps_proto_upsert up = {.n = ms->count, .value_bytes = op->vb,
                                        .version = op->version, .ttl = op->ttl};
                memcpy(b + sizeof(dhps_proto_hdr), &up, sizeof up);
                uint8_t *kp = b + sizeof(dhps_proto_hdr) + sizeof up;
                uint8_t *vp = kp + 8ull * ms->count;
                for (uint32_t j = 0; j < ms->count; j++) {
                    uint32_t k = op->order[ms->first + j];
                    memcpy(kp + 8 * j, &op->keys[k], 8);
                    memcpy(vp + (size_t)j * op->vb, op->values + (size_t)k * op->vb, op->vb);
                }
            }
        }
        if (rc == 0) {
            uint64_t left_us = (op->deadline_ns - dhps_mono_ns()) / 1000;
            if ((int64_t)(op->deadline_ns - dhps_mono_ns()) <= 0)
                left_us = 1;
            rc = dhps_rpc_call_send(ch, len, left_us ? left_us : 1,
                                    op->update ? update_done : lookup_done, a);
            if (rc < 0)
                dhps_rpc_call_abort(ch);
        }
        if (rc == DHPS_E_UNREACHABLE && node < op->ts->nchans)
            op->ts->chans[node].broken = true;
    }
    CTR_ADD(c->nodes[node].messages, 1);
    op->messages++;
    if (rc == 0) {
        /* the loop polled while waiting for a send buffer (start_call) or closing a broken
         * channel: the message's other attempt may have answered meanwhile */
        if (ms->state != M_OK)
            ms->state = M_INFLIGHT;
        a->inflight = true;
        ms->ninflight++;
        op->ts->inflight++;
        op->refs++;
        return;
    }
    /* failed before reaching the wire */
    if (tl) {
        tl->err = (int16_t)rc;
        tl->done_us = (int32_t)((dhps_mono_ns() - op->t0) / 1000);
    }
    int outcome = rc == DHPS_E_TIMEOUT ? DHPS_CLIENT_TIMEOUT : DHPS_CLIENT_ERROR;
    if (!op->update && ms->state == M_OK) { /* answered meanwhile: lost before it left */
        CTR_ADD(c->nodes[node].cancelled, 1);
        c->rops->report(c->rself, &a->pick, dhps_mono_ns() - a->pick.start_ns,
                        DHPS_CLIENT_CANCELLED);
        return;
    }
    CTR_ADD(c->nodes[node].errors, 1);
    ms->err = rc;
    if (!op->update) {
        c->rops->report(c->rself, &a->pick, dhps_mono_ns() - a->pick.start_ns, outcome);
        if (ms->ninflight == 0)
            ms->state = M_RETRY;
    } else {
        struct group *g = &op->groups[ms->group];
        g->fails++;
        if (!g->err)
            g->err = rc;
        ms->state = M_FAILED;
        ms->retry_at = update_retry_at(c, rc);
    }
}

/* Lookup: pick a replica for ms (first attempt or retry) and send; or give up. */
static void lookup_attempt(struct op *op, struct msg *ms)
{
    dhps_client *c = op->c;
    const uint32_t *rep;
    int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
    int kind = ms->attempts == 0 ? DHPS_ROUTE_PRIMARY : DHPS_ROUTE_RETRY;
    if (ms->attempts > 0) {
        /* The retry budget guards servers against multiplied load; an attempt that
         * never reached a server (no connection, peer gone) cost it nothing. */
        bool free_retry = ms->err == DHPS_E_UNREACHABLE || ms->err == DHPS_E_AUTH ||
                          ms->err == DHPS_E_CANCELLED;
        if (ms->attempts >= c->p.max_attempts || dhps_mono_ns() >= op->deadline_ns ||
            (!free_retry && c->rops->allow_retry &&
             !c->rops->allow_retry(c->rself, op->deadline_ns))) {
            ms->state = M_FAILED;
            return;
        }
    }
    struct attempt *a = &ms->att[0];
    a->ms = ms;
    int rc = c->rops->pick(c->rself, rep, (size_t)nrep, ms->tried, ms->ntried, kind, &a->pick);
    if (rc < 0 && ms->ntried > 0 && kind == DHPS_ROUTE_RETRY) {
        /* every replica tried once: start over (a transient failure may have passed) */
        ms->ntried = 0;
        rc = c->rops->pick(c->rself, rep, (size_t)nrep, NULL, 0, kind, &a->pick);
    }
    if (rc < 0) {
        ms->state = M_FAILED;
        if (!ms->err)
            ms->err = DHPS_E_UNREACHABLE;
        return;
    }
    if (ms->ntried < MAX_TRIED)
        ms->tried[ms->ntried++] = a->pick.node;
    if (ms->attempts++ > 0) {
        op->retries++;
        CTR_ADD(c->st.retries, 1);
    } else {
        CTR_ADD(c->st.sub_batches, 1);
    }
    send_msg(op, ms, a);
}

/* Lookup: if ms's only attempt has been out longer than the router's hedge delay, send
 * a hedge to another replica (once per message, within the hedge budget). Returns the
 * time the hedge falls due when it is not due yet, else 0. */
static uint64_t maybe_hedge(struct op *op, struct msg *ms, uint64_t now)
{
    dhps_client *c = op->c;
    struct attempt *a = &ms->att[0];
    if (!op->hedge || ms->hedged || ms->state != M_INFLIGHT || ms->ninflight != 1 ||
        !a->inflight)
        return 0;
    /* a probe of a half-open breaker is hedged at once: the node was failing a moment
     * ago, and the probe must not cost the caller its answer */
    uint64_t due = (a->pick.flags & DHPS_ROUTE_PROBE) && c->rops == &dhps_client_router_route
                       ? a->pick.start_ns
                       : a->pick.start_ns + c->rops->hedge_delay(c->rself, &a->pick);
    if (now < due)
        return due;
    ms->hedged = true;
    if (!c->rops->hedge_acquire(c->rself, op->deadline_ns))
        return 0;
    const uint32_t *rep;
    int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
    struct attempt *h = &ms->att[1];
    h->ms = ms;
    if (c->rops->pick(c->rself, rep, (size_t)nrep, ms->tried, ms->ntried, DHPS_ROUTE_HEDGE,
                      &h->pick) < 0)
        return 0;
    if (ms->ntried < MAX_TRIED)
        ms->tried[ms->ntried++] = h->pick.node;
    ms->second = true;
    op->hedges++;
    CTR_ADD(c->st.hedges, 1);
    send_msg(op, ms, h);
    return 0;
}

/* Lookup: an attempt unanswered for the attempt timeout is reported to the router as
 * timed out now (its breaker and weights learn of a stalled node within a fraction of the
 * deadline, not at its end), and unless the message already has a second attempt it is
 * re-sent to another replica, under the retry budget; the first attempt stays in flight
 * and may still answer first. Returns when the next attempt timeout falls due, or 0. */
static uint64_t attempt_timeouts(struct op *op, struct msg *ms, uint64_t now)
{
    dhps_client *c = op->c;
    if (ms->state != M_INFLIGHT || !op->attempt_ns)
        return 0;
    uint64_t next = 0;
    for (int k = 0; k < 2; k++) {
        struct attempt *a = &ms->att[k];
        if (!a->inflight || a->reported)
            continue;
        uint64_t due = a->pick.start_ns + op->attempt_ns;
        if (now < due) {
            if (!next || due < next)
                next = due;
            continue;
        }
        a->reported = true;
        c->rops->report(c->rself, &a->pick, now - a->pick.start_ns, DHPS_CLIENT_TIMEOUT);
        if (ms->second || ms->ninflight != 1 || ms->attempts >= c->p.max_attempts ||
            now >= op->deadline_ns ||
            (c->rops->allow_retry && !c->rops->allow_retry(c->rself, op->deadline_ns)))
            continue;
        ms->hedged = ms->second = true; /* the second slot is taken */
        const uint32_t *rep;
        int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
        struct attempt *h = &ms->att[1];
        h->ms = ms;
        h->reported = false;
        if (c->rops->pick(c->rself, rep, (size_t)nrep, ms->tried, ms->ntried, DHPS_ROUTE_RETRY,
                          &h->pick) < 0)
            continue;
        if (ms->ntried < MAX_TRIED)
            ms->tried[ms->ntried++] = h->pick.node;
        ms->attempts++;
        op->retries++;
        CTR_ADD(c->st.retries, 1);
        send_msg(op, ms, h);
    }
    return next;
}

/* Sort key indices by shard (counting sort) and cut each shard's run into messages of at
 * most per_msg keys. Fills op->order, op->msgs (count x fanout each) and op->groups. */
static int plan(struct op *op, size_t n, uint32_t per_msg, uint32_t fanout)
{
    uint32_t S = dhps_cluster_map_nshards(op->m);
    int rc = -ENOMEM;
    uint32_t *cnt = calloc((size_t)S + 1, sizeof *cnt);
    uint32_t *shard_of = malloc((n ? n : 1) * sizeof *shard_of);
    op->order = malloc((n ? n : 1) * sizeof *op->order);
    if (!cnt || !shard_of || !op->order)
        goto out;
    for (size_t i = 0; i < n; i++) {
        shard_of[i] = dhps_cluster_map_shard_of(op->m, op->keys[i]);
        cnt[shard_of[i] + 1]++;
    }
    size_t nchunks = 0;
    for (uint32_t s = 0; s < S; s++)
        nchunks += (cnt[s + 1] + per_msg - 1) / per_msg;
    for (uint32_t s = 0; s < S; s++)
        cnt[s + 1] += cnt[s];
    op->msgs = calloc(nchunks * fanout + 1, sizeof *op->msgs);
    op->groups = calloc(nchunks + 1, sizeof *op->groups);
    if (!op->msgs || !op->groups)
        goto out;
    uint32_t *pos = malloc(((size_t)S + 1) * sizeof *pos);
    if (!pos)
        goto out;
    memcpy(pos, cnt, ((size_t)S + 1) * sizeof *pos);
    for (size_t i = 0; i < n; i++)
        op->order[pos[shard_of[i]]++] = (uint32_t)i;
    free(pos);
    size_t g = 0, mi = 0;
    for (uint32_t s = 0; s < S; s++) {
        for (uint32_t f = cnt[s]; f < cnt[s + 1]; f += per_msg) {
            uint32_t k = cnt[s + 1] - f < per_msg ? cnt[s + 1] - f : per_msg;
            for (uint32_t r = 0; r < fanout; r++) {
                struct msg *ms = &op->msgs[mi++];
                ms->op = op;
                ms->shard = s;
                ms->first = f;
                ms->count = k;
                ms->group = (uint32_t)g;
                ms->state = M_IDLE;
            }
            g++;
        }
    }
    op->nmsgs = mi;
    op->ngroups = g;
    rc = 0;
out:
    free(cnt);
    free(shard_of);
    return rc;
}

/* Poll the thread's loop once, waiting at most until the deadline. */
static void wait_turn(struct op *op, uint64_t wake_ns)
{
    uint64_t until = wake_ns && wake_ns < op->deadline_ns ? wake_ns : op->deadline_ns;
    int64_t left = (int64_t)(until - dhps_mono_ns());
    if (left < 0)
        left = 0;
    if (left > 100000000)
        left = 100000000;
    dhps_rpc_client_poll_ns(op->ts->rpc, left); /* to the ns: a hedge due in 300 us is
                                                   sent then, not at the next ms */
}

static void trace_print(struct op *op, int rc)
{
    dhps_client *c = op->c;
    uint64_t now = dhps_mono_ns();
    fprintf(stderr, "dhps client trace: lookup rc %d (%s), %zu messages, returned after %llu us\n",
            rc, dhps_strerror(rc), op->nmsgs, (unsigned long long)((now - op->t0) / 1000));
    if (c->rops == &dhps_client_router_route) {
        dhps_route_stats rs;
        dhps_route_stats_get(c->rself, &rs);
        fprintf(stderr, "  router: hedges sent %llu, budget exhausted %llu, deadline %llu; "
                "retries %llu, budget exhausted %llu; ejected %u, panics %llu\n",
                (unsigned long long)rs.hedge_sent, (unsigned long long)rs.hedge_budget_exhausted,
                (unsigned long long)rs.hedge_deadline, (unsigned long long)rs.retries,
                (unsigned long long)rs.retry_budget_exhausted, rs.ejected,
                (unsigned long long)rs.panics);
        for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
            if (rs.tier[t].picks)
                fprintf(stderr, "  tier %d: p50 %llu us p95 %llu us\n", t,
                        (unsigned long long)rs.tier[t].p50_ns / 1000,
                        (unsigned long long)rs.tier[t].p95_ns / 1000);
    }
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        bool slow_dial = false;
        for (uint8_t j = 0; j < ms->ntl; j++)
            slow_dial |= op->tl[i * TL_PER_MSG + j].dial_us > 1000;
        if (ms->state == M_OK && !slow_dial)
            continue;
        fprintf(stderr, "  shard %u (%u keys) state %d err %d attempts %u:", ms->shard, ms->count,
                ms->state, ms->err, ms->attempts);
        for (uint8_t j = 0; j < ms->ntl; j++) {
            const struct tlog *t = &op->tl[i * TL_PER_MSG + j];
            fprintf(stderr, " [n%u %s%s sent %d dial %d done %d err %d]", t->node,
                    t->kind == DHPS_ROUTE_HEDGE ? "hedge" : t->kind == DHPS_ROUTE_RETRY ? "retry" : "primary",
                    t->flags & DHPS_ROUTE_PROBE ? "+probe" : "", t->sent_us, t->dial_us,
                    t->done_us, t->err);
        }
        fprintf(stderr, "\n");
        if (c->rops == &dhps_client_router_route) {
            const uint32_t *rep;
            int nrep = dhps_cluster_map_replicas(op->m, ms->shard, &rep);
            for (int r = 0; r < nrep; r++) {
                dhps_route_node_stats ns;
                if (dhps_route_node_stats_get(c->rself, rep[r], &ns) == 0)
                    fprintf(stderr, "    n%u: breaker %d in_flight %u peak %.0f us succ %.2f "
                            "weight %.2f picks %llu errors %llu timeouts %llu\n", rep[r],
                            ns.breaker, ns.in_flight, ns.peak_ewma_ns / 1000, ns.success,
                            ns.weight, (unsigned long long)ns.picks,
                            (unsigned long long)ns.errors, (unsigned long long)ns.timeouts);
            }
        }
    }
}

static const float *find_default(dhps_client *c, const char *table, uint32_t dim)
{
    const float *v = NULL;
    pthread_mutex_lock(&c->lock);
    for (struct tdefault *d = c->defaults; d; d = d->next)
        if (!strcmp(d->table, table) && d->dim == dim)
            v = d->vec;
    pthread_mutex_unlock(&c->lock);
    return v;
}

/* A new op for one call, with the current map pinned for it (*mr; op_release unpins).
 * NULL with *rc (-EINVAL, -ENOMEM) on failure, nothing pinned then. */
static struct op *op_new(dhps_client *c, const char *table, const uint64_t *keys,
                         uint64_t timeout_us, struct map_ref **mr, int *rc)
{
    if (!c || !table || strlen(table) >= DHPS_TABLE_NAME_MAX) {
        *rc = -EINVAL;
        return NULL;
    }
    struct op *op = calloc(1, sizeof *op);
    struct tstate *ts = op ? tstate_get(c) : NULL;
    if (!ts) {
        free(op);
        *rc = -ENOMEM;
        return NULL;
    }
    /* calls detached by an earlier request of this thread may have completed */
    dhps_rpc_client_poll(ts->rpc, 0);
    reload(c, false);
    op->c = c;
    op->ts = ts;
    op->refs = 1;
    op->keys = keys;
    strncpy(op->table, table, sizeof op->table - 1);
    op->t0 = dhps_mono_ns();
    op->deadline_ns = op->t0 + (timeout_us ? timeout_us : c->p.default_timeout_us) * 1000ull;
    *mr = map_pin(c);
    op->m = (*mr)->m;
    return op;
}

/* The caller is done with op: free it, or leave it to its calls still in flight. */
static void op_release(struct op *op, struct map_ref *mr)
{
    if (op->not_owned)
        reload(op->c, true);
    op->detached = true;
    op_unref(op);
    map_unref(mr);
}

/* Keys per message when each costs bytes_per_key of a message (lookups: the response
 * row and a mask bit; writes: key and row). DHPS_E_TOOBIG when not even one fits. */
static int msg_budget(const dhps_client *c, uint32_t dim, uint32_t bytes_per_key, uint32_t *per_msg)
{
    *per_msg = c ? (c->p.max_msg - 128) / bytes_per_key : 0;
    if (*per_msg > DHPS_PROTO_MAX_KEYS)
        *per_msg = DHPS_PROTO_MAX_KEYS;
    if (c && (dim > (1u << 24) || *per_msg == 0))
        return DHPS_E_TOOBIG;
    return 0;
}

int dhps_client_lookup(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                       uint64_t timeout_us, dhps_client_result *res)
{
    if (res)
        memset(res, 0, sizeof *res);
    if ((dtype != DHPS_FP32 && dtype != DHPS_FP16) || dim == 0 || (n && (!keys || !out)) ||
        n > (1u << 30))
        return -EINVAL;
    uint32_t per_msg;
    int rc = msg_budget(c, dim, dim * 4u + 1, &per_msg);
    if (rc)
        return rc;
    struct map_ref *mr;
    struct op *op = op_new(c, table, keys, timeout_us, &mr, &rc);
    if (!op)
        return rc;
    CTR_ADD(c->st.lookups, 1);
    CTR_ADD(c->st.keys_looked_up, n);
    op->out = out;
    op->dim = dim;
    op->out_bytes = dtype == DHPS_FP16 ? 2 : 4;
    op->want_fp16 = dtype == DHPS_FP16;
    op->hedge = c->p.hedge && c->rops->hedge_delay && c->rops->hedge_acquire;
    if (c->p.attempt_timeout_us != UINT32_MAX) {
        uint64_t t = c->p.attempt_timeout_us ? (uint64_t)c->p.attempt_timeout_us * 1000ull
                                             : (op->deadline_ns - op->t0) / 4;
        op->attempt_ns = t < 1000000ull ? 1000000ull : t;
    }
    op->found = calloc((n + 63) / 64 + 1, sizeof *op->found);
    if (!op->found || plan(op, n, per_msg, 1) < 0) {
        op_release(op, mr);
        return -ENOMEM;
    }
    if (c->trace)
        op->tl = calloc(op->nmsgs * TL_PER_MSG + 1, sizeof *op->tl);
    /* send every sub-batch, then poll: a node's messages leave in one flush */
    for (size_t i = 0; i < op->nmsgs; i++)
        lookup_attempt(op, &op->msgs[i]);
    for (;;) {
        bool pending = false;
        uint64_t now = dhps_mono_ns(), wake = 0;
        for (size_t i = 0; i < op->nmsgs; i++) {
            struct msg *ms = &op->msgs[i];
            if (ms->state == M_RETRY)
                lookup_attempt(op, ms); /* another replica, or give up */
            uint64_t due = maybe_hedge(op, ms, now);
            if (due && (!wake || due < wake))
                wake = due;
            due = attempt_timeouts(op, ms, now);
            if (due && (!wake || due < wake))
                wake = due;
            pending |= ms->state == M_INFLIGHT || ms->state == M_RETRY;
        }
        if (!pending || dhps_mono_ns() >= op->deadline_ns)
            break;
        wait_turn(op, wake);
    }
    /* gather: defaults for keys not found, masks, counts */
    int first_err = 0;
    size_t unanswered = 0, found = 0;
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        if (ms->state != M_OK) {
            unanswered += ms->count;
            int e = ms->state == M_INFLIGHT || (ms->err == 0) ? DHPS_E_TIMEOUT : ms->err;
            if (!first_err || (first_err == DHPS_E_TIMEOUT && e != DHPS_E_TIMEOUT))
                first_err = e;
        }
    }
    const float *def = find_default(c, table, dim);
    size_t rb = (size_t)dim * (size_t)op->out_bytes;
    if (missing_mask)
        memset(missing_mask, 0, (n + 63) / 64 * sizeof *missing_mask);
    for (size_t k = 0; k < n; k++) {
        if ((op->found[k / 64] >> (k % 64)) & 1) {
            found++;
            continue;
        }
        if (missing_mask)
            missing_mask[k / 64] |= 1ull << (k % 64);
        uint8_t *row = (uint8_t *)out + k * rb;
        if (def)
            convert_row(row, op->out_bytes, def, 4, dim);
        else
            memset(row, 0, rb);
    }
    rc = unanswered ? first_err : 0;
    if (unanswered)
        CTR_ADD(c->st.partial, 1);
    if (op->tl && (unanswered || dhps_mono_ns() > op->deadline_ns))
        trace_print(op, rc);
    if (res) {
        res->found = found;
        res->missing = n - found;
        res->unanswered = unanswered;
        res->messages = op->messages;
        res->retries = op->retries;
        res->hedges = op->hedges;
    }
    op_release(op, mr);
    return rc;
}

/* Updates and deletes: fan each (shard, chunk) out to every replica, count acks. */
static int write_batch(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res, bool del)
{
    if (res)
        memset(res, 0, sizeof *res);
    if ((dtype != DHPS_FP32 && dtype != DHPS_FP16 && dtype != DHPS_BYTES) ||
        (dim == 0 && !del) || (n && (!keys || (!values && !del))) || n > (1u << 30) ||
        ack < DHPS_ACK_ALL || ack > DHPS_ACK_ONE)
        return -EINVAL;
    uint32_t vb = del ? 0 : dim * (dtype == DHPS_FP32 ? 4u : dtype == DHPS_FP16 ? 2u : 1u);
    uint32_t per_msg;
    int rc = msg_budget(c, dim, 8u + vb, &per_msg);
    if (rc)
        return rc;
    struct map_ref *mr;
    struct op *op = op_new(c, table, keys, timeout_us, &mr, &rc);
    if (!op)
        return rc;
    CTR_ADD(c->st.updates, 1);
    CTR_ADD(c->st.keys_updated, n);
    op->update = true;
    op->del = del;
    op->values = values;
    op->vb = vb;
    op->dtype = dtype;
    op->ttl = ttl;
    op->version = dhps_client_next_version(c);
    uint32_t R = dhps_cluster_map_nreplicas(op->m);
    if (plan(op, n, per_msg, R) < 0) {
        op_release(op, mr);
        return -ENOMEM;
    }
    uint32_t needed = ack == DHPS_ACK_ALL ? R : ack == DHPS_ACK_QUORUM ? R / 2 + 1 : 1;
    for (size_t g = 0; g < op->ngroups; g++) {
        op->groups[g].needed = needed;
        op->groups[g].nrep = R;
    }
    for (size_t i = 0; i < op->nmsgs; i++) {
        struct msg *ms = &op->msgs[i];
        const uint32_t *rep;
        dhps_cluster_map_replicas(op->m, ms->shard, &rep);
        struct attempt *a = &ms->att[0];
        memset(a, 0, sizeof *a);
        a->ms = ms;
        a->pick.node = rep[i % R];
        a->pick.start_ns = dhps_mono_ns();
        ms->attempts = 1;
        CTR_ADD(c->st.sub_batches, 1);
        send_msg(op, ms, a);
    }
    for (;;) {
        bool pending = false;
        uint64_t now = dhps_mono_ns(), wake = 0;
        for (size_t i = 0; i < op->nmsgs; i++) {
            struct msg *ms = &op->msgs[i];
            struct group *gr = &op->groups[ms->group];
            if (ms->state != M_FAILED || gr->acks >= gr->needed || now >= op->deadline_ns ||
                ms->attempts >= c->p.max_attempts || !update_retryable(ms->err))
                continue;
            if (now < ms->retry_at) {
                pending = true; /* this group may still get there */
                if (!wake || ms->retry_at < wake)
                    wake = ms->retry_at;
                continue;
            }
            gr->fails--;
            ms->attempts++;
            ms->att[0].pick.start_ns = now;
            op->retries++;
            CTR_ADD(c->st.retries, 1);
            send_msg(op, ms, &ms->att[0]);
        }
        for (size_t g = 0; g < op->ngroups; g++) {
            struct group *gr = &op->groups[g];
            if (gr->acks < gr->needed && gr->acks + (gr->nrep - gr->acks - gr->fails) >= gr->needed)
                pending = true;
        }
        if (!pending || dhps_mono_ns() >= op->deadline_ns)
            break;
        wait_turn(op, wake);
    }
    int first_err = 0;
    size_t failed = 0;
    if (failed_mask)
        memset(failed_mask, 0, (n + 63) / 64 * sizeof *failed_mask);
    for (size_t i = 0; i < op->nmsgs; i += R) {
        struct group *gr = &op->groups[op->msgs[i].group];
        if (gr->acks >= gr->needed)
            continue;
        int e = gr->err ? gr->err : DHPS_E_TIMEOUT;
        if (!first_err || (first_err == DHPS_E_TIMEOUT && e != DHPS_E_TIMEOUT))
            first_err = e;
        struct msg *ms = &op->msgs[i];
        failed += ms->count;
        if (failed_mask)
            for (uint32_t j = 0; j < ms->count; j++) {
                uint32_t k = op->order[ms->first + j];
                failed_mask[k / 64] |= 1ull << (k % 64);
            }
    }
    if (failed)
        CTR_ADD(c->st.update_shortfalls, 1);
    if (res) {
        res->missing = failed;
        res->unanswered = failed;
        res->found = n - failed;
        res->messages = op->messages;
        res->retries = op->retries;
        res->version = op->version;
    }
    rc = failed ? first_err : 0;
    op_release(op, mr);
    return rc;
}

int dhps_client_update(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res)
{
    return write_batch(c, table, keys, values, n, dim, dtype, ttl, ack, timeout_us, failed_mask,
                       res, false);
}

int dhps_client_delete(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res)
{
    return write_batch(c, table, keys, NULL, n, 0, DHPS_FP32, 0, ack, timeout_us, failed_mask,
                       res, true);
}

int dhps_client_connect(dhps_client *c)
{
    if (!c)
        return -EINVAL;
    struct tstate *ts = tstate_get(c);
    if (!ts)
        return -ENOMEM;
    struct map_ref *mr = map_pin(c);
    size_t nn = dhps_cluster_map_nnodes(mr->m);
    /* every open runs at once: the wait is the slowest node's, not the sum */
    for (size_t i = 0; i < nn; i++) {
        dhps_rpc_channel *ch;
        (void)channel_get(ts, mr->m, dhps_cluster_map_node_at(mr->m, i)->id, 0, &ch);
    }
    int failed;
    for (;;) { /* each open ends by itself: connect_timeout_ms bounds it */
        bool opening = false;
        failed = 0;
        for (size_t i = 0; i < nn; i++) {
            uint32_t id = dhps_cluster_map_node_at(mr->m, i)->id;
            struct chan *e = id < ts->nchans ? &ts->chans[id] : NULL;
            int st = e && e->ch ? chan_state(c, e, id) : DHPS_E_UNREACHABLE;
            opening |= st == -EINPROGRESS;
            failed += st < 0 && st != -EINPROGRESS;
        }
        if (!opening)
            break;
        dhps_rpc_client_poll(ts->rpc, 10);
    }
    map_unref(mr);
    return failed;
}

int dhps_client_drain(dhps_client *c, uint64_t timeout_us)
{
    if (!c)
        return -EINVAL;
    struct tstate *ts = pthread_getspecific(c->key);
    if (!ts)
        return 0;
    uint64_t end = dhps_mono_ns() + timeout_us * 1000ull;
    for (;;) {
        dhps_rpc_client_poll(ts->rpc, 0);
        uint64_t now = dhps_mono_ns();
        if (!ts->inflight || now >= end)
            break;
        uint64_t left_ms = (end - now + 999999) / 1000000;
        dhps_rpc_client_poll(ts->rpc, left_ms > 10 ? 10 : (int)left_ms);
    }
    return ts->inflight > INT32_MAX ? INT32_MAX : (int)ts->inflight;
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
    s->map_reloads = LD(c->st.map_reloads);
    s->threads = LD(c->st.threads);
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
    s->timeouts = LD(n->timeouts);
    s->cancelled = LD(n->cancelled);
    s->connects = LD(n->connects);
    s->connect_failures = LD(n->connect_failures);
    return 0;
}

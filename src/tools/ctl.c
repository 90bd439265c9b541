/*
 * The membership controller, first half: the map and registrations in etcd, map edits,
 * the election (ctl.h). The driver is in ctldrive.c.
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

/* ---- the map in etcd ------------------------------------------------------------------ */

int ctl_map_publish(dhps_coord *c, const char *cluster, const char *json, uint64_t ver,
                    int64_t expect_rev, int64_t *rev)
{
    char key[256], hkey[256];
    if (dhps_coord_key(key, sizeof key, cluster, DHPS_COORD_KEY_MAP, 0) < 0 ||
        dhps_coord_key(hkey, sizeof hkey, cluster, DHPS_COORD_KEY_HISTORY_VERSION, ver) < 0)
        return -EINVAL;
    int rc = dhps_coord_cas(c, key, json, strlen(json), expect_rev, 0, rev);
    if (rc < 0)
        return rc;
    /* the history entry follows the winning write */
    int hrc = dhps_coord_put(c, hkey, json, strlen(json), 0, NULL);
    if (hrc < 0)
        fprintf(stderr, "warning: %s: %s\n", hkey, dhps_strerror(hrc));
    return 0;
}

static int cmp_reg(const void *a, const void *b)
{
    const ctl_reg *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void copy_str(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "");
}

/* Fill r from a registration value; false when it has no usable "id". */
static bool parse_reg(const dhps_coord_kv *kv, ctl_reg *r)
{
    memset(r, 0, sizeof *r);
    json_t *j = json_loadb(kv->value, kv->value_len, 0, NULL);
    json_t *id = json_object_get(j, "id");
    bool ok = json_is_integer(id) && json_integer_value(id) >= 0 &&
              json_integer_value(id) <= DHPS_CLUSTER_MAX_NODE_ID;
    if (ok) {
        r->id = (uint32_t)json_integer_value(id);
        r->lease = kv->lease;
        json_t *mv = json_object_get(j, "map_version");
        r->map_version = json_is_integer(mv) && json_integer_value(mv) > 0
                             ? (uint64_t)json_integer_value(mv)
                             : 0;
        json_t *nr = json_object_get(j, "not_ready"), *x;
        size_t n = json_array_size(nr), i;
        if (n && (r->not_ready = malloc(n * sizeof *r->not_ready))) {
            json_array_foreach(nr, i, x)
                if (json_is_integer(x) && json_integer_value(x) >= 0)
                    r->not_ready[r->n_not_ready++] = (uint32_t)json_integer_value(x);
            qsort(r->not_ready, r->n_not_ready, sizeof *r->not_ready, cmp_u32);
        } else if (n) {
            /* no memory for the list: the node counts as not ready for every shard */
            r->map_version = 0;
        }
        dhps_cluster_node *nd = &r->node;
        nd->id = r->id;
        copy_str(nd->host, sizeof nd->host, json_string_value(json_object_get(j, "host")));
        copy_str(nd->pod, sizeof nd->pod, json_string_value(json_object_get(j, "pod")));
        copy_str(nd->az, sizeof nd->az, json_string_value(json_object_get(j, "az")));
        copy_str(nd->addr, sizeof nd->addr, json_string_value(json_object_get(j, "addr")));
        json_int_t mp = json_integer_value(json_object_get(j, "metrics_port"));
        nd->metrics_port = mp > 0 && mp < 65536 ? (uint16_t)mp : 0;
    }
    json_decref(j);
    return ok;
}

int ctl_state_read(dhps_coord *c, const char *cluster, ctl_state *st)
{
    char key[256], nkey[256];
    memset(st, 0, sizeof *st);
    if (dhps_coord_key(key, sizeof key, cluster, DHPS_COORD_KEY_MAP, 0) < 0 ||
        dhps_coord_key(nkey, sizeof nkey, cluster, DHPS_COORD_KEY_NODES, 0) < 0)
        return -EINVAL;
    dhps_coord_kv *kv = NULL, *nkv = NULL;
    int n = dhps_coord_get(c, key, false, &kv, NULL);
    if (n < 0)
        return n;
    int rc = 0, nn = 0;
    if (n > 0) {
        st->rev = kv[0].mod_revision;
        if (!(st->json = strdup(kv[0].value))) {
            rc = -ENOMEM;
            goto out;
        }
        if (dhps_cluster_map_parse(kv[0].value, kv[0].value_len, &st->map, NULL, 0) < 0)
            st->bad_map = true;
    }
    nn = dhps_coord_get(c, nkey, true, &nkv, NULL);
    if (nn < 0) {
        rc = nn;
        nn = 0;
        goto out;
    }
    if (nn > 0 && !(st->regs = calloc((size_t)nn, sizeof *st->regs))) {
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < nn; i++)
        if (parse_reg(&nkv[i], &st->regs[st->nregs]))
            st->nregs++;
    qsort(st->regs, st->nregs, sizeof *st->regs, cmp_reg);
out:
    dhps_coord_kvs_free(kv, n);
    dhps_coord_kvs_free(nkv, nn);
    if (rc < 0)
        ctl_state_free(st);
    return rc;
}

void ctl_state_free(ctl_state *st)
{
    dhps_cluster_map_destroy(st->map);
    free(st->json);
    for (size_t i = 0; i < st->nregs; i++)
        free(st->regs[i].not_ready);
    free(st->regs);
    memset(st, 0, sizeof *st);
}

const ctl_reg *ctl_state_reg(const ctl_state *st, uint32_t id)
{
    ctl_reg k = {.id = id};
    return st->nregs ? bsearch(&k, st->regs, st->nregs, sizeof k, cmp_reg) : NULL;
}

bool ctl_join_ready(const ctl_state *st, const dhps_cluster_join *j)
{
    const ctl_reg *r = ctl_state_reg(st, j->node);
    if (!r || r->map_version < j->since)
        return false;
    return !bsearch(&j->shard, r->not_ready, r->n_not_ready, sizeof(uint32_t), cmp_u32);
}

/* ---- map edits ------------------------------------------------------------------------ */

struct ctl_edit {
    json_t *root;       /* the map object */
    uint64_t base;      /* version edited */
    unsigned edits;
};

int ctl_edit_begin(const char *json, size_t len, ctl_edit **out)
{
    *out = NULL;
    ctl_edit *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->root = json_loadb(json, len, 0, NULL);
    json_t *v = json_object_get(e->root, "version");
    if (!json_is_object(e->root) || !json_is_integer(v) || json_integer_value(v) < 0 ||
        !json_is_array(json_object_get(e->root, "nodes")) ||
        !json_is_array(json_object_get(e->root, "shards"))) {
        ctl_edit_free(e);
        return DHPS_E_MALFORMED;
    }
    e->base = (uint64_t)json_integer_value(v);
    /* the next version from the start: joins added carry since = it, and the checks of
     * add_join parse the map as it will be published */
    if (json_object_set_new(e->root, "version", json_integer((json_int_t)(e->base + 1))) < 0) {
        ctl_edit_free(e);
        return -ENOMEM;
    }
    *out = e;
    return 0;
}

void ctl_edit_free(ctl_edit *e)
{
    if (!e)
        return;
    json_decref(e->root);
    free(e);
}

unsigned ctl_edit_count(const ctl_edit *e) { return e->edits; }

static uint32_t jint(json_t *o, const char *k)
{
    return (uint32_t)json_integer_value(json_object_get(o, k));
}

/* The node object of id and its index, or NULL. */
static json_t *node_obj(ctl_edit *e, uint32_t id, size_t *at)
{
    json_t *nodes = json_object_get(e->root, "nodes"), *x;
    size_t i;
    json_array_foreach(nodes, i, x)
        if (json_is_integer(json_object_get(x, "id")) && jint(x, "id") == id) {
            if (at)
                *at = i;
            return x;
        }
    return NULL;
}

/* The replica array of shard, or NULL. */
static json_t *shard_arr(ctl_edit *e, uint32_t shard)
{
    return json_array_get(json_object_get(e->root, "shards"), shard);
}

/* Position of node in the replica array, or -1. */
static long pos_in(json_t *reps, uint32_t node)
{
    json_t *x;
    size_t i;
    json_array_foreach(reps, i, x)
        if (json_is_integer(x) && (uint32_t)json_integer_value(x) == node)
            return (long)i;
    return -1;
}

/* The "joining" array (created when create). */
static json_t *joins(ctl_edit *e, bool create)
{
    json_t *j = json_object_get(e->root, "joining");
    if (!j && create) {
        j = json_array();
        if (!j || json_object_set_new(e->root, "joining", j) < 0)
            return NULL;
    }
    return j;
}

/* Index of the join (shard, node) — or, with by_replaces, (shard, replaces = node) —
 * or -1. */
static long join_at(ctl_edit *e, uint32_t shard, uint32_t node, bool by_replaces)
{
    json_t *js = joins(e, false), *x;
    size_t i;
    json_array_foreach(js, i, x)
        if (jint(x, "shard") == shard && jint(x, by_replaces ? "replaces" : "node") == node)
            return (long)i;
    return -1;
}

/* Remove the join at index i. */
static void join_remove(ctl_edit *e, long i)
{
    json_t *js = joins(e, false);
    json_array_remove(js, (size_t)i);
    if (!json_array_size(js))
        json_object_del(e->root, "joining");
}

int ctl_edit_add_join(ctl_edit *e, uint32_t shard, uint32_t node, uint32_t replaces)
{
    json_t *reps = shard_arr(e, shard);
    if (!reps || !node_obj(e, node, NULL) || pos_in(reps, replaces) < 0)
        return -ENOENT;
    if (pos_in(reps, node) >= 0 || join_at(e, shard, node, false) >= 0 ||
        join_at(e, shard, replaces, true) >= 0)
        return -EEXIST;
    json_t *js = joins(e, true);
    json_t *o = json_pack("{s:I,s:I,s:I,s:I}", "shard", (json_int_t)shard, "node",
                          (json_int_t)node, "replaces", (json_int_t)replaces, "since",
                          (json_int_t)(e->base + 1));
    if (!js || !o || json_array_append_new(js, o) < 0)
        return -ENOMEM;
    /* the whole map must stay valid (hosts distinct with the join, ...): a parse of a
     * 1024-shard map takes well under a millisecond, so one bad move is refused here
     * instead of failing the whole edit at finish */
    char *text = json_dumps(e->root, JSON_COMPACT);
    dhps_cluster_map *m = NULL;
    int rc = text ? dhps_cluster_map_parse(text, strlen(text), &m, NULL, 0) : -ENOMEM;
    free(text);
    dhps_cluster_map_destroy(m);
    if (rc < 0) {
        join_remove(e, (long)json_array_size(js) - 1);
        return rc == -ENOMEM ? rc : DHPS_E_CONFIG;
    }
    e->edits++;
    return 0;
}

int ctl_edit_flip(ctl_edit *e, uint32_t shard, uint32_t node)
{
    long i = join_at(e, shard, node, false);
    json_t *reps = shard_arr(e, shard);
    if (i < 0 || !reps)
        return -ENOENT;
    uint32_t repl = jint(json_array_get(joins(e, false), (size_t)i), "replaces");
    long p = pos_in(reps, repl);
    if (p < 0)
        return -ENOENT;
    if (json_array_set_new(reps, (size_t)p, json_integer(node)) < 0)
        return -ENOMEM;
    join_remove(e, i);
    e->edits++;
    return 0;
}

int ctl_edit_cancel(ctl_edit *e, uint32_t shard, uint32_t node)
{
    long i = join_at(e, shard, node, false);
    if (i < 0)
        return -ENOENT;
    join_remove(e, i);
    e->edits++;
    return 0;
}

int ctl_edit_set_state(ctl_edit *e, uint32_t node, int state)
{
    json_t *o = node_obj(e, node, NULL);
    if (!o)
        return -ENOENT;
    const char *cur = json_string_value(json_object_get(o, "state"));
    bool draining = cur && !strcmp(cur, "draining");
    if ((state == DHPS_NODE_DRAINING) == draining)
        return -EEXIST;
    if (state == DHPS_NODE_DRAINING) {
        if (json_object_set_new(o, "state", json_string("draining")) < 0)
            return -ENOMEM;
    } else {
        json_object_del(o, "state");
    }
    e->edits++;
    return 0;
}

int ctl_edit_add_node(ctl_edit *e, const dhps_cluster_node *n)
{
    if (node_obj(e, n->id, NULL))
        return -EEXIST;
    json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s}", "id", (json_int_t)n->id, "host", n->host,
                          "pod", n->pod, "az", n->az, "addr", n->addr);
    if (o && n->metrics_port)
        json_object_set_new(o, "metrics_port", json_integer(n->metrics_port));
    if (!o || json_array_append_new(json_object_get(e->root, "nodes"), o) < 0)
        return -ENOMEM;
    e->edits++;
    return 0;
}

int ctl_edit_remove_node(ctl_edit *e, uint32_t node)
{
    size_t at;
    if (!node_obj(e, node, &at))
        return -ENOENT;
    json_t *sh = json_object_get(e->root, "shards"), *x;
    size_t i;
    json_array_foreach(sh, i, x)
        if (pos_in(x, node) >= 0)
            return -EBUSY;
    json_array_foreach(joins(e, false), i, x)
        if (jint(x, "node") == node)
            return -EBUSY;
    json_array_remove(json_object_get(e->root, "nodes"), at);
    e->edits++;
    return 0;
}

int ctl_edit_finish(ctl_edit *e, dhps_cluster_map **map, char **json, char *err,
                    size_t errlen)
{
    *map = NULL;
    *json = NULL;
    char *text = json_dumps(e->root, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    int rc = dhps_cluster_map_parse(text, strlen(text), map, err, errlen);
    free(text);
    if (rc < 0)
        return rc == -ENOMEM ? rc : DHPS_E_CONFIG;
    if (!(*json = dhps_cluster_map_to_json(*map))) {
        dhps_cluster_map_destroy(*map);
        *map = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* ---- the election --------------------------------------------------------------------- */

struct ctl_election {
    dhps_coord *c;
    int64_t lease, ttl_s;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, lost;
};

static void *keepalive_thread(void *arg)
{
    ctl_election *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stop && !e->lost) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ms = e->ttl_s * 1000 / 3;
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        if (e->stop)
            break;
        pthread_mutex_unlock(&e->mu);
        int rc = dhps_coord_lease_keepalive(e->c, e->lease, NULL);
        pthread_mutex_lock(&e->mu);
        if (rc == DHPS_E_NOTFOUND)
            e->lost = true; /* expired: the key went with it */
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int ctl_election_acquire(dhps_coord *c, const char *cluster, const char *holder,
                         int64_t ttl_s, ctl_election **out, char *held_by, size_t cap)
{
    char key[256];
    *out = NULL;
    if (held_by && cap)
        held_by[0] = 0;
    if (dhps_coord_key(key, sizeof key, cluster, DHPS_COORD_KEY_MAP, 0) < 0 || ttl_s < 1)
        return -EINVAL;
    snprintf(key, sizeof key, "/dhps/%s/controller", cluster);
    ctl_election *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->c = c;
    e->ttl_s = ttl_s;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    int rc = dhps_coord_lease_grant(c, ttl_s, &e->lease, NULL);
    if (rc < 0)
        goto fail;
    json_t *v = json_pack("{s:s,s:i,s:I}", "holder", holder, "pid", (int)getpid(), "since",
                          (json_int_t)time(NULL));
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!text) {
        rc = -ENOMEM;
        goto revoke;
    }
    rc = dhps_coord_cas(c, key, text, strlen(text), 0, e->lease, NULL);
    free(text);
    if (rc == DHPS_E_CONFLICT && held_by && cap) {
        dhps_coord_kv *kv = NULL;
        int n = dhps_coord_get(c, key, false, &kv, NULL);
        if (n > 0)
            snprintf(held_by, cap, "%s", kv[0].value);
        dhps_coord_kvs_free(kv, n);
    }
    if (rc < 0)
        goto revoke;
    if ((rc = -pthread_create(&e->th, NULL, keepalive_thread, e)) < 0)
        goto revoke;
    *out = e;
    return 0;
revoke:
    dhps_coord_lease_revoke(c, e->lease);
fail:
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
    return rc;
}

bool ctl_election_held(const ctl_election *e)
{
    ctl_election *m = (ctl_election *)e;
    pthread_mutex_lock(&m->mu);
    bool held = !m->lost;
    pthread_mutex_unlock(&m->mu);
    return held;
}

void ctl_election_release(ctl_election *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->th, NULL);
    dhps_coord_lease_revoke(e->c, e->lease);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

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
        if (dhps_cluster_addr_split(nd->addr, nd->ip, sizeof nd->ip, &nd->port) < 0) {
            nd->ip[0] = '\0'; /* no usable address: port 0 tells */
            nd->port = 0;
        }
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
    if (st->nregs)
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
    return !r->n_not_ready ||
           !bsearch(&j->shard, r->not_ready, r->n_not_ready, sizeof(uint32_t), cmp_u32);
}

/* ---- map edits ------------------------------------------------------------------------ */

/* Edits go through the cluster library's editing API (include/dhps/cluster.h "editing":
 * each call gives a new map, version + 1, validated as a whole). Flips and cancels are
 * queued and applied as one call each before the next edit of another kind; joins are
 * queued (each checked against the map with every queued join) and started by one call
 * in ctl_edit_finish, so their since is the version published. A step's version thus
 * grows by the number of kinds of change it made (typically 1-3), not per move. */
struct ctl_edit {
    dhps_cluster_map *cur;  /* the map with every applied edit */
    dhps_cluster_move *flips, *cancels, *joins;
    size_t nflips, ncancels, njoins, cap;
    unsigned edits;
};

int ctl_edit_begin(const char *json, size_t len, ctl_edit **out)
{
    *out = NULL;
    ctl_edit *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    int rc = dhps_cluster_map_parse(json, len, &e->cur, NULL, 0);
    if (rc < 0) {
        free(e);
        return rc == -ENOMEM ? rc : DHPS_E_MALFORMED;
    }
    *out = e;
    return 0;
}

void ctl_edit_free(ctl_edit *e)
{
    if (!e)
        return;
    dhps_cluster_map_destroy(e->cur);
    free(e->flips);
    free(e->cancels);
    free(e->joins);
    free(e);
}

unsigned ctl_edit_count(const ctl_edit *e) { return e->edits; }

/* Append mv to one of the queues (each holds at most one entry per shard and replica,
 * so nshards x R bounds them all). */
static int queue(ctl_edit *e, dhps_cluster_move **q, size_t *n, dhps_cluster_move mv)
{
    if (!e->cap) {
        e->cap = (size_t)dhps_cluster_map_nshards(e->cur) * dhps_cluster_map_nreplicas(e->cur);
        e->flips = calloc(e->cap, sizeof *e->flips);
        e->cancels = calloc(e->cap, sizeof *e->cancels);
        e->joins = calloc(e->cap, sizeof *e->joins);
        if (!e->flips || !e->cancels || !e->joins) {
            e->cap = 0;
            return -ENOMEM;
        }
    }
    if (*n >= e->cap)
        return -ENOSPC;
    (*q)[(*n)++] = mv;
    return 0;
}

static void replace_cur(ctl_edit *e, dhps_cluster_map *m)
{
    dhps_cluster_map_destroy(e->cur);
    e->cur = m;
}

static int api_rc(int rc)
{
    return rc == DHPS_E_NOTFOUND ? -ENOENT : rc;
}

/* Apply the queued flips and cancels. */
static int flush(ctl_edit *e)
{
    dhps_cluster_map *m = NULL;
    int rc;
    if (e->nflips) {
        if ((rc = dhps_cluster_map_edit_complete_joins(e->cur, e->flips, e->nflips, &m, NULL,
                                                       0)) < 0)
            return api_rc(rc);
        replace_cur(e, m);
        e->nflips = 0;
    }
    if (e->ncancels) {
        if ((rc = dhps_cluster_map_edit_cancel_joins(e->cur, e->cancels, e->ncancels, &m, NULL,
                                                     0)) < 0)
            return api_rc(rc);
        replace_cur(e, m);
        e->ncancels = 0;
    }
    return 0;
}

/* Index of the queued join (shard, node) — or (shard, replaces = node) — or -1. */
static long queued_join(const ctl_edit *e, uint32_t shard, uint32_t node, bool by_replaces)
{
    for (size_t i = 0; i < e->njoins; i++)
        if (e->joins[i].shard == shard && (by_replaces ? e->joins[i].from : e->joins[i].to) == node)
            return (long)i;
    return -1;
}

/* The join (shard, node) of the current map, or NULL. */
static const dhps_cluster_join *map_join(const ctl_edit *e, uint32_t shard, uint32_t node,
                                         bool by_replaces)
{
    const dhps_cluster_join *j;
    int n = dhps_cluster_map_joining(e->cur, shard, &j);
    for (int i = 0; i < n; i++)
        if ((by_replaces ? j[i].replaces : j[i].node) == node)
            return &j[i];
    return NULL;
}

int ctl_edit_add_join(ctl_edit *e, uint32_t shard, uint32_t node, uint32_t replaces)
{
    int rc = flush(e);
    if (rc < 0)
        return rc;
    if (shard >= dhps_cluster_map_nshards(e->cur) || !dhps_cluster_map_node(e->cur, node) ||
        !dhps_cluster_map_owns(e->cur, replaces, shard))
        return -ENOENT;
    if (dhps_cluster_map_holds(e->cur, node, shard) || map_join(e, shard, replaces, true) ||
        queued_join(e, shard, node, false) >= 0 || queued_join(e, shard, replaces, true) >= 0)
        return -EEXIST;
    if ((rc = queue(e, &e->joins, &e->njoins, (dhps_cluster_move){shard, replaces, node})) < 0)
        return rc;
    /* the map with every queued join must be valid: one bad move is refused here alone */
    dhps_cluster_map *m = NULL;
    rc = dhps_cluster_map_edit_start_joins(e->cur, e->joins, e->njoins, &m, NULL, 0);
    dhps_cluster_map_destroy(m);
    if (rc < 0) {
        e->njoins--;
        return rc == -ENOMEM ? rc : DHPS_E_CONFIG;
    }
    e->edits++;
    return 0;
}

/* Queue a flip (complete) or a cancel of the join (shard, node). */
static int end_join(ctl_edit *e, uint32_t shard, uint32_t node, bool complete)
{
    long q = queued_join(e, shard, node, false);
    if (q >= 0) { /* started in this edit, never published */
        if (complete)
            return -ENOENT;
        e->joins[q] = e->joins[--e->njoins];
        e->edits++;
        return 0;
    }
    const dhps_cluster_join *j = map_join(e, shard, node, false);
    if (!j)
        return -ENOENT;
    dhps_cluster_move mv = {shard, j->replaces, node};
    for (size_t i = 0; i < e->nflips; i++)
        if (e->flips[i].shard == shard && e->flips[i].to == node)
            return -EEXIST;
    for (size_t i = 0; i < e->ncancels; i++)
        if (e->cancels[i].shard == shard && e->cancels[i].to == node)
            return -EEXIST;
    int rc = complete ? queue(e, &e->flips, &e->nflips, mv)
                      : queue(e, &e->cancels, &e->ncancels, mv);
    if (rc == 0)
        e->edits++;
    return rc;
}

int ctl_edit_flip(ctl_edit *e, uint32_t shard, uint32_t node)
{
    return end_join(e, shard, node, true);
}

int ctl_edit_cancel(ctl_edit *e, uint32_t shard, uint32_t node)
{
    return end_join(e, shard, node, false);
}

int ctl_edit_set_state(ctl_edit *e, uint32_t node, int state)
{
    int rc = flush(e);
    const dhps_cluster_node *n = rc < 0 ? NULL : dhps_cluster_map_node(e->cur, node);
    if (rc < 0)
        return rc;
    if (!n)
        return -ENOENT;
    if (n->state == state)
        return -EEXIST;
    dhps_cluster_map *m = NULL;
    if ((rc = dhps_cluster_map_edit_set_state(e->cur, node, (uint8_t)state, &m, NULL, 0)) < 0)
        return api_rc(rc);
    replace_cur(e, m);
    e->edits++;
    return 0;
}

int ctl_edit_add_node(ctl_edit *e, const dhps_cluster_node *n)
{
    int rc = flush(e);
    if (rc < 0)
        return rc;
    if (dhps_cluster_map_node(e->cur, n->id))
        return -EEXIST;
    dhps_cluster_map *m = NULL;
    if ((rc = dhps_cluster_map_edit_add_node(e->cur, n, &m, NULL, 0)) < 0)
        return api_rc(rc);
    replace_cur(e, m);
    e->edits++;
    return 0;
}

int ctl_edit_remove_node(ctl_edit *e, uint32_t node)
{
    int rc = flush(e);
    if (rc < 0)
        return rc;
    if (!dhps_cluster_map_node(e->cur, node))
        return -ENOENT;
    for (size_t i = 0; i < e->njoins; i++)
        if (e->joins[i].to == node || e->joins[i].from == node)
            return -EBUSY;
    if (dhps_cluster_map_holdings_of(e->cur, node, NULL, 0))
        return -EBUSY;
    dhps_cluster_map *m = NULL;
    if ((rc = dhps_cluster_map_edit_remove_node(e->cur, node, &m, NULL, 0)) < 0)
        return api_rc(rc);
    replace_cur(e, m);
    e->edits++;
    return 0;
}

int ctl_edit_balance_first(ctl_edit *e, size_t *changed)
{
    *changed = 0;
    int rc = flush(e);
    if (rc < 0)
        return rc;
    dhps_cluster_map *m = NULL;
    if ((rc = dhps_cluster_map_edit_balance_first(e->cur, &m, changed, NULL, 0)) < 0)
        return api_rc(rc);
    if (*changed) {
        replace_cur(e, m);
        e->edits++;
    } else {
        dhps_cluster_map_destroy(m);
    }
    return 0;
}

int ctl_edit_finish(ctl_edit *e, dhps_cluster_map **map, char **json, char *err,
                    size_t errlen)
{
    *map = NULL;
    *json = NULL;
    int rc = flush(e);
    if (rc == 0 && e->njoins) {
        dhps_cluster_map *m = NULL;
        rc = dhps_cluster_map_edit_start_joins(e->cur, e->joins, e->njoins, &m, err, errlen);
        if (rc == 0) {
            replace_cur(e, m);
            e->njoins = 0;
        }
    }
    if (rc < 0)
        return rc == -ENOMEM ? rc : DHPS_E_CONFIG;
    if (!(*json = dhps_cluster_map_to_json(e->cur)))
        return -ENOMEM;
    if ((rc = dhps_cluster_map_parse(*json, strlen(*json), map, err, errlen)) < 0) {
        free(*json);
        *json = NULL;
        return rc == -ENOMEM ? rc : DHPS_E_CONFIG;
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

/*
 * The move driver (src/tools/ctl.h) against a real etcd, with registrations put here by
 * hand under leases (what a server with "coord" + "follow_etcd" reports: "map_version",
 * "not_ready"): joins start, wait for readiness, flip; at most --parallel in flight; a
 * driver destroyed mid-move and a new one resume; a concurrent map write makes the CAS
 * fail and the driver re-read; a joining node whose registration is gone past the grace
 * is rolled back, marked dead and removed; a dead replica's shards are re-replicated and
 * the node removed; map edits refuse invalid maps; the election admits one holder and
 * notices a lost lease.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>

#include "ctl.h"
#include "etcd_fixture.h"

static struct etcd_fx fx;
static dhps_coord *C;

/* ---- helpers -------------------------------------------------------------------------- */

static void fill_node(dhps_cluster_node *n, uint32_t id, const char *host)
{
    memset(n, 0, sizeof *n);
    n->id = id;
    snprintf(n->host, sizeof n->host, "%s", host);
    snprintf(n->pod, sizeof n->pod, "p%u", id % 2);
    snprintf(n->az, sizeof n->az, "a");
    snprintf(n->addr, sizeof n->addr, "127.0.0.1:%u", 7000 + id);
    n->metrics_port = (uint16_t)(9000 + id);
}

/* Publish version 1: nodes 0..n-1 on hosts h0.., nshards x 2 replicas. */
static void publish_map(const char *cl, uint32_t n, uint32_t nshards)
{
    dhps_cluster_node nodes[16];
    char host[8];
    for (uint32_t i = 0; i < n; i++) {
        snprintf(host, sizeof host, "h%u", i);
        fill_node(&nodes[i], i, host);
    }
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = nshards;
    gp.replicas = 2;
    dhps_cluster_map *m = NULL;
    assert_int_equal(dhps_cluster_map_generate(&gp, nodes, n, &m, NULL, 0), 0);
    char *json = dhps_cluster_map_to_json(m);
    assert_int_equal(ctl_map_publish(C, cl, json, 1, 0, NULL), 0);
    free(json);
    dhps_cluster_map_destroy(m);
}

static dhps_cluster_map *read_map(const char *cl, int64_t *rev)
{
    ctl_state st;
    assert_int_equal(ctl_state_read(C, cl, &st), 0);
    assert_non_null(st.map);
    dhps_cluster_map *m = st.map;
    if (rev)
        *rev = st.rev;
    st.map = NULL;
    ctl_state_free(&st);
    return m;
}

/* A server's registration: node id on host, having applied map_version, with not_ready. */
static void reg_put(const char *cl, uint32_t id, const char *host, int64_t lease,
                    uint64_t map_version, const uint32_t *nr, size_t nnr)
{
    char key[128], val[1024], list[512] = "";
    size_t l = 0;
    for (size_t i = 0; i < nnr; i++)
        l += (size_t)snprintf(list + l, sizeof list - l, "%s%u", i ? "," : "", nr[i]);
    snprintf(key, sizeof key, "/dhps/%s/nodes/n%u", cl, id);
    snprintf(val, sizeof val,
             "{\"node_id\": \"n%u\", \"id\": %u, \"host\": \"%s\", \"pod\": \"p%u\", \"az\": "
             "\"a\", \"addr\": \"127.0.0.1:%u\", \"metrics_port\": %u, \"map_version\": %" PRIu64
             ", \"not_ready\": [%s]}",
             id, id, host, id % 2, 7000 + id, 9000 + id, map_version, list);
    assert_int_equal(dhps_coord_put(C, key, val, strlen(val), lease, NULL), 0);
}

static int64_t lease(void)
{
    int64_t id;
    assert_int_equal(dhps_coord_lease_grant(C, 60, &id, NULL), 0);
    return id;
}

/* Add registered node id on host to the map (one new version). */
static void add_node(const char *cl, uint32_t id, const char *host)
{
    ctl_state st;
    assert_int_equal(ctl_state_read(C, cl, &st), 0);
    ctl_edit *e;
    assert_int_equal(ctl_edit_begin(st.json, strlen(st.json), &e), 0);
    dhps_cluster_node n;
    fill_node(&n, id, host);
    assert_int_equal(ctl_edit_add_node(e, &n), 0);
    dhps_cluster_map *m;
    char *json;
    assert_int_equal(ctl_edit_finish(e, &m, &json, NULL, 0), 0);
    assert_int_equal(ctl_map_publish(C, cl, json, dhps_cluster_map_version(m), st.rev, NULL), 0);
    free(json);
    dhps_cluster_map_destroy(m);
    ctl_edit_free(e);
    ctl_state_free(&st);
}

/* A planner with a fixed list: the moves whose `from` is still a replica and whose `to`
 * is an active node of the map that holds nothing of the shard yet. */
struct fixed {
    ctl_move mv[64];
    int n;
    int calls;
    void (*hook)(struct fixed *); /* run on the first call (between read and publish) */
    const char *cl;
};

static int plan_fixed(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap)
{
    struct fixed *f = arg;
    if (f->calls++ == 0 && f->hook)
        f->hook(f);
    int k = 0;
    for (int i = 0; i < f->n; i++) {
        const ctl_move *v = &f->mv[i];
        const dhps_cluster_node *to = dhps_cluster_map_node(m, v->to);
        if (!dhps_cluster_map_owns(m, v->from, v->shard) ||
            dhps_cluster_map_holds(m, v->to, v->shard) || !to || to->state != DHPS_NODE_ACTIVE)
            continue;
        if (k < (int)cap)
            out[k] = *v;
        k++;
    }
    return k;
}

/* A planner that moves every shard of a draining node to the first active node (by id)
 * that does not hold it and is not on a host of the shard's other replica. */
static int plan_drain(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap)
{
    (void)arg;
    int k = 0;
    size_t nn = dhps_cluster_map_nnodes(m);
    for (uint32_t s = 0; s < dhps_cluster_map_nshards(m); s++) {
        const uint32_t *ids;
        int r = dhps_cluster_map_replicas(m, s, &ids);
        for (int j = 0; j < r; j++) {
            if (dhps_cluster_map_node(m, ids[j])->state != DHPS_NODE_DRAINING)
                continue;
            for (size_t i = 0; i < nn; i++) {
                const dhps_cluster_node *t = dhps_cluster_map_node_at(m, i);
                bool ok = t->state == DHPS_NODE_ACTIVE && !dhps_cluster_map_holds(m, t->id, s);
                for (int q = 0; q < r && ok; q++)
                    ok = q == j || strcmp(dhps_cluster_map_node(m, ids[q])->host, t->host);
                if (ok) {
                    if (k < (int)cap)
                        out[k] = (ctl_move){s, ids[j], t->id};
                    k++;
                    break;
                }
            }
        }
    }
    return k;
}

static ctl_driver *driver(const char *cl, ctl_plan_fn plan, void *arg, uint32_t parallel,
                          double grace_s)
{
    ctl_params p;
    ctl_params_init(&p);
    p.coord = C;
    p.cluster = cl;
    p.plan = plan;
    p.plan_arg = arg;
    p.parallel = parallel;
    p.grace_s = grace_s;
    p.log = stderr;
    ctl_driver *d = NULL;
    assert_int_equal(ctl_driver_create(&p, &d), 0);
    return d;
}

static void regs_all(const char *cl, uint32_t n, int64_t *leases, uint64_t ver)
{
    char host[8];
    for (uint32_t i = 0; i < n; i++) {
        snprintf(host, sizeof host, "h%u", i);
        reg_put(cl, i, host, leases[i], ver, NULL, 0);
    }
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_join_flip_when_ready(void **unused)
{
    (void)unused;
    const char *cl = "flip";
    publish_map(cl, 4, 8);
    int64_t ls[5];
    for (int i = 0; i < 5; i++)
        ls[i] = lease();
    regs_all(cl, 5, ls, 1);
    add_node(cl, 4, "h4"); /* version 2 */
    dhps_cluster_map *m = read_map(cl, NULL);
    struct fixed f = {.n = 3};
    for (uint32_t s = 0; s < 3; s++) {
        const uint32_t *ids;
        dhps_cluster_map_replicas(m, s, &ids);
        f.mv[s] = (ctl_move){s, ids[0], 4};
    }
    dhps_cluster_map_destroy(m);
    ctl_driver *d = driver(cl, plan_fixed, &f, 16, 30);
    bool done = true;
    assert_int_equal(ctl_step(d, &done), 0);
    assert_false(done);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_version(m), 3);
    assert_int_equal(dhps_cluster_map_njoining(m), 3);
    for (size_t i = 0; i < 3; i++) {
        const dhps_cluster_join *j = dhps_cluster_map_join_at(m, i);
        assert_int_equal(j->shard, i);
        assert_int_equal(j->node, 4);
        assert_int_equal(j->replaces, f.mv[i].from);
        assert_int_equal(j->since, 3);
        assert_true(dhps_cluster_map_owns(m, f.mv[i].from, (uint32_t)i)); /* not yet */
    }
    dhps_cluster_map_destroy(m);
    /* node 4 has applied version 2 only: nothing flips */
    reg_put(cl, 4, "h4", ls[4], 2, NULL, 0);
    assert_int_equal(ctl_step(d, &done), 0);
    assert_false(done);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_version(m), 3);
    dhps_cluster_map_destroy(m);
    /* version 3 applied, shard 1 still catching up: 0 and 2 flip */
    uint32_t nr[] = {1};
    reg_put(cl, 4, "h4", ls[4], 3, nr, 1);
    assert_int_equal(ctl_step(d, &done), 0);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_version(m), 4);
    assert_int_equal(dhps_cluster_map_njoining(m), 1);
    assert_true(dhps_cluster_map_owns(m, 4, 0));
    assert_true(dhps_cluster_map_owns(m, 4, 2));
    assert_false(dhps_cluster_map_owns(m, f.mv[0].from, 0));
    assert_false(dhps_cluster_map_owns(m, 4, 1));
    const uint32_t *ids;
    dhps_cluster_map_replicas(m, 0, &ids);
    assert_int_equal(ids[0], 4); /* the replaced replica's position */
    dhps_cluster_map_destroy(m);
    reg_put(cl, 4, "h4", ls[4], 4, NULL, 0);
    assert_int_equal(ctl_step(d, &done), 0); /* the last flip: version 5 */
    assert_false(done);
    /* nothing left to move: at most one more version, with first replicas evened out
     * (the flips kept the replaced replicas' positions), then done */
    uint64_t pubs = ctl_driver_stats(d)->publishes;
    assert_int_equal(ctl_step(d, &done), 0);
    if (!done)
        assert_int_equal(ctl_step(d, &done), 0);
    assert_true(done);
    uint64_t reorders = ctl_driver_stats(d)->publishes - pubs;
    assert_true(reorders <= 1);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_version(m), 5 + reorders);
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    assert_int_equal(dhps_cluster_map_shards_of(m, 4, NULL, 0), 3);
    uint32_t first[5] = {0}, lo = UINT32_MAX, hi = 0;
    for (uint32_t sh = 0; sh < 8; sh++) {
        const uint32_t *r;
        dhps_cluster_map_replicas(m, sh, &r);
        first[r[0]]++;
    }
    for (int i = 0; i < 5; i++) {
        lo = first[i] < lo ? first[i] : lo;
        hi = first[i] > hi ? first[i] : hi;
    }
    assert_true(hi - lo <= 1); /* 8 first replicas over 5 nodes */
    dhps_cluster_map_destroy(m);
    const ctl_stats *s = ctl_driver_stats(d);
    assert_int_equal(s->joins, 3);
    assert_int_equal(s->flips, 3);
    assert_int_equal(s->publishes, 3 + reorders);
    /* every version in the history */
    char hk[128];
    dhps_coord_key(hk, sizeof hk, cl, DHPS_COORD_KEY_HISTORY, 0);
    dhps_coord_kv *kv;
    int n = dhps_coord_get(C, hk, true, &kv, NULL);
    assert_int_equal(n, 5 + (int)reorders);
    dhps_coord_kvs_free(kv, n);
    ctl_driver_destroy(d);
}

static void test_parallel_bound_and_resume(void **unused)
{
    (void)unused;
    const char *cl = "par";
    publish_map(cl, 4, 16);
    int64_t ls[5];
    for (int i = 0; i < 5; i++)
        ls[i] = lease();
    regs_all(cl, 5, ls, 1);
    add_node(cl, 4, "h4");
    dhps_cluster_map *m = read_map(cl, NULL);
    struct fixed f = {.n = 0};
    for (uint32_t s = 0; s < 16 && f.n < 6; s++) {
        const uint32_t *ids;
        dhps_cluster_map_replicas(m, s, &ids);
        f.mv[f.n++] = (ctl_move){s, ids[1], 4};
    }
    dhps_cluster_map_destroy(m);
    ctl_driver *d = driver(cl, plan_fixed, &f, 2, 30);
    bool done;
    assert_int_equal(ctl_step(d, &done), 0);
    assert_int_equal(ctl_step(d, &done), 0);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_njoining(m), 2); /* bounded */
    uint64_t v = dhps_cluster_map_version(m);
    dhps_cluster_map_destroy(m);
    /* the driver is killed mid-move; node 4 catches up meanwhile; a new driver resumes */
    ctl_driver_destroy(d);
    reg_put(cl, 4, "h4", ls[4], v, NULL, 0);
    d = driver(cl, plan_fixed, &f, 2, 30);
    assert_int_equal(ctl_step(d, &done), 0);
    m = read_map(cl, NULL);
    assert_int_equal(ctl_driver_stats(d)->flips, 2);
    assert_int_equal(ctl_driver_stats(d)->joins, 2); /* the next two, in the same version */
    assert_int_equal(dhps_cluster_map_njoining(m), 2);
    assert_int_equal(dhps_cluster_map_shards_of(m, 4, NULL, 0), 2);
    dhps_cluster_map_destroy(m);
    /* the rest, with node 4 always ready for the newest version */
    for (int i = 0; i < 20; i++) {
        m = read_map(cl, NULL);
        reg_put(cl, 4, "h4", ls[4], dhps_cluster_map_version(m), NULL, 0);
        dhps_cluster_map_destroy(m);
        assert_int_equal(ctl_step(d, &done), 0);
        if (done)
            break;
    }
    assert_true(done);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_shards_of(m, 4, NULL, 0), 6);
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    dhps_cluster_map_destroy(m);
    ctl_driver_destroy(d);
}

/* Another operator writes the map between the driver's read and its CAS. */
static void competing_write(struct fixed *f)
{
    add_node(f->cl, 5, "h5");
}

static void test_conflict_rereads(void **unused)
{
    (void)unused;
    const char *cl = "conflict";
    publish_map(cl, 4, 8);
    int64_t ls[6];
    for (int i = 0; i < 6; i++)
        ls[i] = lease();
    regs_all(cl, 6, ls, 1);
    add_node(cl, 4, "h4");
    dhps_cluster_map *m = read_map(cl, NULL);
    const uint32_t *ids;
    dhps_cluster_map_replicas(m, 0, &ids);
    struct fixed f = {.n = 1, .hook = competing_write, .cl = cl};
    f.mv[0] = (ctl_move){0, ids[0], 4};
    dhps_cluster_map_destroy(m);
    ctl_driver *d = driver(cl, plan_fixed, &f, 16, 30);
    bool done;
    assert_int_equal(ctl_step(d, &done), 0);
    assert_int_equal(ctl_driver_stats(d)->conflicts, 1);
    assert_int_equal(ctl_driver_stats(d)->publishes, 0);
    m = read_map(cl, NULL);
    assert_non_null(dhps_cluster_map_node(m, 5)); /* the other write stands */
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    assert_int_equal(dhps_cluster_map_version(m), 3);
    dhps_cluster_map_destroy(m);
    assert_int_equal(ctl_step(d, &done), 0); /* re-read: the join starts on top of it */
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_version(m), 4);
    assert_int_equal(dhps_cluster_map_njoining(m), 1);
    assert_non_null(dhps_cluster_map_node(m, 5));
    dhps_cluster_map_destroy(m);
    ctl_driver_destroy(d);
}

static void test_dead_joiner_rolled_back(void **unused)
{
    (void)unused;
    const char *cl = "deadjoin";
    publish_map(cl, 4, 8);
    int64_t ls[5];
    for (int i = 0; i < 5; i++)
        ls[i] = lease();
    regs_all(cl, 5, ls, 1);
    add_node(cl, 4, "h4");
    dhps_cluster_map *m = read_map(cl, NULL);
    const uint32_t *ids;
    dhps_cluster_map_replicas(m, 3, &ids);
    struct fixed f = {.n = 1};
    f.mv[0] = (ctl_move){3, ids[1], 4};
    dhps_cluster_map_destroy(m);
    ctl_driver *d = driver(cl, plan_fixed, &f, 16, 0.5);
    bool done;
    assert_int_equal(ctl_step(d, &done), 0);
    assert_int_equal(ctl_driver_stats(d)->joins, 1);
    /* node 4 dies: its lease is revoked, its registration goes */
    assert_int_equal(dhps_coord_lease_revoke(C, ls[4]), 0);
    assert_int_equal(ctl_step(d, &done), 0); /* absence starts: within the grace */
    assert_int_equal(ctl_driver_stats(d)->cancels, 0);
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_njoining(m), 1);
    dhps_cluster_map_destroy(m);
    usleep(600000);
    assert_int_equal(ctl_step(d, &done), 0);
    const ctl_stats *s = ctl_driver_stats(d);
    assert_int_equal(s->cancels, 1);
    assert_int_equal(s->marked_dead, 1);
    assert_int_equal(s->removed, 1); /* it held nothing once the join was rolled back */
    m = read_map(cl, NULL);
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    assert_null(dhps_cluster_map_node(m, 4));
    assert_true(dhps_cluster_map_owns(m, f.mv[0].from, 3)); /* the replica never left */
    dhps_cluster_map_destroy(m);
    assert_int_equal(ctl_step(d, &done), 0);
    assert_true(done); /* the move's target is gone: nothing left to do */
    ctl_driver_destroy(d);
}

static void test_dead_replica_rereplicated(void **unused)
{
    (void)unused;
    const char *cl = "deadrep";
    publish_map(cl, 5, 16);
    int64_t ls[5];
    for (int i = 0; i < 5; i++)
        ls[i] = lease();
    regs_all(cl, 5, ls, 1);
    dhps_cluster_map *m = read_map(cl, NULL);
    size_t held = dhps_cluster_map_shards_of(m, 3, NULL, 0);
    assert_true(held > 0);
    dhps_cluster_map_destroy(m);
    ctl_driver *d = driver(cl, plan_drain, NULL, 4, 0.3);
    bool done = false;
    for (int i = 0; i < 3 && !done; i++) /* balanced (first replicas perhaps reordered) */
        assert_int_equal(ctl_step(d, &done), 0);
    assert_true(done);
    assert_int_equal(dhps_coord_lease_revoke(C, ls[3]), 0); /* kill -9 of node 3 */
    assert_int_equal(ctl_step(d, &done), 0);
    assert_true(done); /* absent, but within the grace: nothing to do yet */
    usleep(400000);
    done = false;
    for (int i = 0; i < 40 && !done; i++) {
        assert_int_equal(ctl_step(d, &done), 0);
        m = read_map(cl, NULL);
        uint64_t v = dhps_cluster_map_version(m);
        dhps_cluster_map_destroy(m);
        for (uint32_t id = 0; id < 5; id++) /* the survivors catch up at once */
            if (id != 3) {
                char host[8];
                snprintf(host, sizeof host, "h%u", id);
                reg_put(cl, id, host, ls[id], v, NULL, 0);
            }
    }
    assert_true(done);
    const ctl_stats *s = ctl_driver_stats(d);
    assert_int_equal(s->marked_dead, 1);
    assert_int_equal(s->flips, held);
    assert_int_equal(s->removed, 1);
    m = read_map(cl, NULL);
    assert_null(dhps_cluster_map_node(m, 3));
    for (uint32_t sh = 0; sh < 16; sh++) {
        const uint32_t *ids;
        assert_int_equal(dhps_cluster_map_replicas(m, sh, &ids), 2);
        assert_true(ids[0] != 3 && ids[1] != 3 && ids[0] != ids[1]);
    }
    dhps_cluster_map_destroy(m);
    ctl_driver_destroy(d);
}

static void test_edits_refuse_invalid(void **unused)
{
    (void)unused;
    const char *cl = "edits";
    publish_map(cl, 4, 8);
    ctl_state st;
    assert_int_equal(ctl_state_read(C, cl, &st), 0);
    ctl_edit *e;
    assert_int_equal(ctl_edit_begin(st.json, strlen(st.json), &e), 0);
    dhps_cluster_node n;
    fill_node(&n, 4, "h0"); /* shares node 0's host */
    assert_int_equal(ctl_edit_add_node(e, &n), 0);
    assert_int_equal(ctl_edit_add_node(e, &n), -EEXIST);
    unsigned count = ctl_edit_count(e);
    /* a shard with node 0 as a replica: node 4 may replace node 0 there, not the other */
    uint32_t s = 0;
    const uint32_t *ids;
    while (!dhps_cluster_map_owns(st.map, 0, s))
        s++;
    dhps_cluster_map_replicas(st.map, s, &ids);
    uint32_t other = ids[0] == 0 ? ids[1] : ids[0];
    assert_int_equal(ctl_edit_add_join(e, s, 4, other), DHPS_E_CONFIG);
    assert_int_equal(ctl_edit_count(e), count); /* nothing changed */
    assert_int_equal(ctl_edit_add_join(e, s, 4, 0), 0);
    assert_int_equal(ctl_edit_add_join(e, s, 4, 0), -EEXIST);
    assert_int_equal(ctl_edit_add_join(e, s, 0, other), -EEXIST); /* already a replica */
    assert_int_equal(ctl_edit_flip(e, s, 1 == other ? 2 : 1), -ENOENT);
    assert_int_equal(ctl_edit_remove_node(e, 4), -EBUSY); /* joining */
    assert_int_equal(ctl_edit_remove_node(e, other), -EBUSY); /* a replica */
    assert_int_equal(ctl_edit_remove_node(e, 9), -ENOENT);
    assert_int_equal(ctl_edit_set_state(e, 1, DHPS_NODE_DRAINING), 0);
    assert_int_equal(ctl_edit_set_state(e, 1, DHPS_NODE_DRAINING), -EEXIST);
    dhps_cluster_map *m;
    char *json;
    assert_int_equal(ctl_edit_finish(e, &m, &json, NULL, 0), 0);
    /* one library call per kind of edit: add_node, set_state, then the queued join */
    assert_int_equal(dhps_cluster_map_version(m), 4);
    assert_int_equal(dhps_cluster_map_njoining(m), 1);
    assert_int_equal(dhps_cluster_map_join_at(m, 0)->since, 4);
    assert_int_equal(dhps_cluster_map_node(m, 1)->state, DHPS_NODE_DRAINING);
    free(json);
    dhps_cluster_map_destroy(m);
    /* flip, and the map then has node 4 where node 0 was */
    assert_int_equal(ctl_edit_flip(e, s, 4), 0);
    assert_int_equal(ctl_edit_finish(e, &m, &json, NULL, 0), 0);
    assert_true(dhps_cluster_map_owns(m, 4, s));
    assert_false(dhps_cluster_map_owns(m, 0, s));
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    free(json);
    dhps_cluster_map_destroy(m);
    ctl_edit_free(e);
    ctl_state_free(&st);
    /* no map at all */
    ctl_driver *d = driver("nomap", plan_drain, NULL, 4, 30);
    assert_int_equal(ctl_step(d, NULL), DHPS_E_NOTFOUND);
    ctl_driver_destroy(d);
}

static void test_election(void **unused)
{
    (void)unused;
    ctl_election *a = NULL, *b = NULL;
    char held[256];
    assert_int_equal(ctl_election_acquire(C, "el", "A", 3, &a, held, sizeof held), 0);
    assert_int_equal(ctl_election_acquire(C, "el", "B", 3, &b, held, sizeof held),
                     DHPS_E_CONFLICT);
    assert_null(b);
    assert_non_null(strstr(held, "\"holder\":\"A\""));
    usleep(1500000); /* past ttl/3: kept alive */
    assert_true(ctl_election_held(a));
    /* A's lease is revoked behind its back (as if it expired): A notices, B wins */
    dhps_coord_kv *kv;
    assert_int_equal(dhps_coord_get(C, "/dhps/el/controller", false, &kv, NULL), 1);
    assert_int_equal(dhps_coord_lease_revoke(C, kv[0].lease), 0);
    dhps_coord_kvs_free(kv, 1);
    assert_true(DHPS_TEST_WAIT_FOR(!ctl_election_held(a), 4000)); /* an event, scaled */
    assert_int_equal(ctl_election_acquire(C, "el", "B", 3, &b, held, sizeof held), 0);
    ctl_election_release(a);
    ctl_election_release(b);
    assert_int_equal(dhps_coord_get(C, "/dhps/el/controller", false, &kv, NULL), 0);
}

int main(void)
{
    int rc = etcd_start(&fx);
    if (rc == 77)
        return 77;
    if (rc != 0) {
        fprintf(stderr, "etcd did not start (log %s.log)\n", fx.dir);
        etcd_cleanup(&fx);
        return 1;
    }
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = fx.url;
    dhps_coord_create(&p, &C);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_flip_when_ready),
        cmocka_unit_test(test_parallel_bound_and_resume),
        cmocka_unit_test(test_conflict_rereads),
        cmocka_unit_test(test_dead_joiner_rolled_back),
        cmocka_unit_test(test_dead_replica_rereplicated),
        cmocka_unit_test(test_edits_refuse_invalid),
        cmocka_unit_test(test_election),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    dhps_coord_destroy(C);
    etcd_cleanup(&fx);
    return rc;
}

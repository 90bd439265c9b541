/*
 * Stores added and dropped while serving (src/server/hold.c), white box: an embedded
 * server in the map form, maps applied directly with srv_hold_apply (what the etcd
 * watch does in a follow_etcd server; test_coord_follow covers that path end to end)
 * while client threads hammer the shard being moved with upserts and lookups over real
 * rpc and another thread scrapes /metrics. Under ASan a store freed while a worker still
 * read it is a use-after-free report; under TSan the epoch/reference hand-offs are
 * checked. Also: the stale-map fence on a held shard, MOVED for a dropped one, and a map
 * with another shard count refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_test.h"
#include "dhps/cluster.h"
#include "hold.h"
#include "srv_int.h"

#define NSH 4
#define D 8
#define NKEY 64
#define ROUNDS 30

static char *dir;
static dhps_server *S;
static uint64_t K0[NKEY]; /* keys of shard 0 */
static uint64_t K1[1];    /* a key of shard 1 */

/* Map version v: node 1 holds every shard, except shard 0 on odd versions (node 2);
 * join: shard 0 on node 1 with node 2 joining in its place. */
static dhps_cluster_map *map_jv(uint64_t v, uint32_t nshards, bool join)
{
    char text[1024];
    int n = snprintf(text, sizeof text,
                     "{\"version\":%llu,\"nshards\":%u,\"replicas\":1,\"nodes\":["
                     "{\"id\":1,\"host\":\"h1\",\"addr\":\"127.0.0.1:1\"},"
                     "{\"id\":2,\"host\":\"h2\",\"addr\":\"127.0.0.1:2\"}],\"shards\":[[%d]",
                     (unsigned long long)v, nshards, v % 2 && !join ? 2 : 1);
    for (uint32_t i = 1; i < nshards; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, ",[1]");
    if (join)
        n += snprintf(text + n, sizeof text - (size_t)n,
                      "],\"joining\":[{\"shard\":0,\"node\":2,\"replaces\":1,"
                      "\"since\":%llu}", (unsigned long long)v);
    snprintf(text + n, sizeof text - (size_t)n, "]}");
    dhps_cluster_map *m = NULL;
    char err[256];
    if (dhps_cluster_map_parse(text, strlen(text), &m, err, sizeof err))
        fail_msg("map: %s", err);
    return m;
}

static dhps_cluster_map *map_v(uint64_t v, uint32_t nshards)
{
    return map_jv(v, nshards, false);
}

typedef struct worker_arg {
    uint64_t ok, notfound, moved, other;
    int last_other;
    uint64_t rounds; /* __atomic: upsert + lookup pairs done (the test waits on it) */
} worker_arg;

static bool stop;

static void *hammer(void *p)
{
    worker_arg *a = p;
    t_conn tc;
    if (t_connect(&tc, dhps_server_port(S), T_SECRET)) {
        a->other++;
        return NULL;
    }
    float rows[NKEY * D];
    for (int i = 0; i < NKEY * D; i++)
        rows[i] = (float)i;
    uint64_t found[1];
    uint64_t ver = 1;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        int rc = t_upsert(&tc, "emb", 0, K0, NKEY, rows, D * 4, 0, ver++, NULL);
        int rl = t_lookup(&tc, "emb", 0, K0, NKEY, 0, rows, found, NULL);
        int both[2] = {rc, rl};
        for (int j = 0; j < 2; j++) {
            if (both[j] == 0)
                a->ok++;
            else if (both[j] == DHPS_E_NOTFOUND)
                a->notfound++;
            else {
                a->other++;
                a->last_other = both[j];
            }
        }
        __atomic_add_fetch(&a->rounds, 1, __ATOMIC_RELEASE);
    }
    t_close(&tc);
    return NULL;
}

static void *scrape(void *p)
{
    (void)p;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        char *body = NULL;
        t_http_get(dhps_server_metrics_port(S), "/metrics", &body);
        free(body);
        t_sleep_ms(5);
    }
    return NULL;
}

static double metric(const char *series)
{
    char *body = NULL;
    int code = t_http_get(dhps_server_metrics_port(S), "/metrics", &body);
    double v = code == 200 ? t_metric(body, series) : -1;
    free(body);
    return v;
}

static void test_move_under_load(void **state)
{
    (void)state;
    worker_arg wa[2] = {{0}};
    pthread_t th[3];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer, &wa[i]);
    pthread_create(&th[2], NULL, scrape, NULL);
    /* each map change happens under traffic: the clients are running before the first,
     * and each change waits until both have done two rounds under the previous map (events,
     * scaled; were 50 ms and 30 ms sleeps: a slow start left a client without one answer) */
#define ROUNDS_OF(i) __atomic_load_n(&wa[i].rounds, __ATOMIC_ACQUIRE)
    assert_true(DHPS_TEST_WAIT_FOR(ROUNDS_OF(0) >= 1 && ROUNDS_OF(1) >= 1, 10000));
    uint64_t v = 3; /* the server started from version 2 */
    for (int r = 0; r < ROUNDS; r++, v++) {
        assert_int_equal(srv_hold_apply(S, map_v(v, NSH), "test"), 1);
        uint64_t r0 = ROUNDS_OF(0), r1 = ROUNDS_OF(1);
        assert_true(DHPS_TEST_WAIT_FOR(ROUNDS_OF(0) >= r0 + 2 && ROUNDS_OF(1) >= r1 + 2,
                                       10000));
    }
#undef ROUNDS_OF
    __atomic_store_n(&stop, true, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        if (wa[i].other)
            fail_msg("client %d: %llu unexpected statuses (last %d)", i,
                     (unsigned long long)wa[i].other, wa[i].last_other);
        assert_true(wa[i].ok > 0);
    }
    fprintf(stderr, "clients: %llu ok, %llu not found over %d map changes\n",
            (unsigned long long)(wa[0].ok + wa[1].ok),
            (unsigned long long)(wa[0].notfound + wa[1].notfound), ROUNDS);
    assert_true(wa[0].notfound + wa[1].notfound > 0); /* it was dropped under them */
    assert_int_equal(metric("dhps_shards_dropped_total"), ROUNDS / 2);
    assert_int_equal(metric("dhps_shards_added_total"), ROUNDS / 2);
    /* every dropped store is freed after the linger (the background thread) */
    uint64_t end = t_now_ms() + dhps_test_ms(10000);
    while (metric("dhps_stores_freed_total") < ROUNDS / 2 && t_now_ms() < end)
        t_sleep_ms(100);
    assert_int_equal(metric("dhps_stores_freed_total"), ROUNDS / 2);
    assert_int_equal(metric("dhps_map_version"), v - 1);
    /* not newer: ignored; another shard count: refused */
    assert_int_equal(srv_hold_apply(S, map_v(v - 1, NSH), "test"), 0);
    assert_int_equal(srv_hold_apply(S, map_v(v, NSH * 2), "test"), DHPS_E_CONFIG);
    assert_int_equal(metric("dhps_map_version"), v - 1);
}

/* The fence, white box: follow on, a held shard whose holders change, a dropped one. */
static void test_fence(void **state)
{
    (void)state;
    __atomic_store_n(&S->follow, true, __ATOMIC_RELAXED); /* as with shards.follow_etcd */
    uint64_t v = (uint64_t)metric("dhps_map_version") + 1;
    /* node 2 joins shard 0: the holder set changes at v, node 1 keeps the shard */
    assert_int_equal(srv_hold_apply(S, map_jv(v, NSH, true), "test"), 1);
    assert_int_equal(metric("dhps_shards_held"), NSH);
    t_conn tc;
    assert_int_equal(t_connect(&tc, dhps_server_port(S), T_SECRET), 0);
    float rows[D] = {1};
    tc.map_version = v;
    assert_int_equal(t_upsert(&tc, "emb", 0, K0, 1, rows, D * 4, 0, 1000000, NULL), 0);
    tc.map_version = 0; /* a tool addressing the node: not fenced */
    assert_int_equal(t_upsert(&tc, "emb", 0, K0, 1, rows, D * 4, 0, 1000000, NULL), 0);
    tc.map_version = v - 1;
    assert_int_equal(t_upsert(&tc, "emb", 0, K0, 1, rows, D * 4, 0, 1000001, NULL),
                     DHPS_E_MOVED);
    assert_int_equal(t_delete(&tc, "emb", 0, K0, 1, 1000001), DHPS_E_MOVED);
    assert_int_equal(t_upsert(&tc, "emb", 1, K1, 1, rows, D * 4, 0, 1000001, NULL), 0);
    assert_int_equal(t_lookup(&tc, "emb", 0, K0, 1, 0, NULL, NULL, NULL), 0); /* reads: no */
    /* drop shard 0 at v + 2: older routes get MOVED, current ones NOTFOUND */
    assert_int_equal(srv_hold_apply(S, map_v(v + 2, NSH), "test"), 1);
    tc.map_version = v + 1;
    assert_int_equal(t_upsert(&tc, "emb", 0, K0, 1, rows, D * 4, 0, 1000002, NULL),
                     DHPS_E_MOVED);
    tc.map_version = v + 2;
    assert_int_equal(t_upsert(&tc, "emb", 0, K0, 1, rows, D * 4, 0, 1000002, NULL),
                     DHPS_E_NOTFOUND);
    assert_int_equal(t_lookup(&tc, "emb", 0, K0, 1, 0, NULL, NULL, NULL), DHPS_E_NOTFOUND);
    tc.map_version = v + 9; /* routed with a map this node does not have yet */
    assert_int_equal(t_lookup(&tc, "emb", 0, K0, 1, 0, NULL, NULL, NULL), DHPS_E_NOTREADY);
    t_close(&tc);
    assert_int_equal(metric("dhps_writes_moved_total"), 3);
    __atomic_store_n(&S->follow, false, __ATOMIC_RELAXED);
}

int main(void)
{
    dir = t_mkdtemp();
    char mapp[600], text[2048], err[600];
    snprintf(mapp, sizeof mapp, "%s/map.json", dir);
    dhps_cluster_map *m = map_v(2, NSH); /* shard 0 on node 1 */
    if (dhps_cluster_map_write(m, mapp))
        return 1;
    dhps_cluster_map_destroy(m);
    snprintf(text, sizeof text,
             "{\"node_id\":\"n1\",\"listen\":{\"tcp_port\":0,\"workers\":2},"
             "\"tables\":[{\"name\":\"emb\",\"dim\":%d,\"capacity\":4096}],"
             "\"secret_file\":\"%s/secret\",\"metrics\":{\"port\":0},"
             "\"snapshot\":{\"dir\":\"%s/snap\"},\"sync\":{\"enabled\":false},"
             "\"shards\":{\"cluster_map\":\"%s\",\"map_node\":1}}",
             D, dir, dir, mapp);
    if (t_server_start(text, &S, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (uint64_t k = 1, n = 0; n < NKEY; k++)
        if (dhps_proto_shard_of(k, NSH) == 0)
            K0[n++] = k;
    for (uint64_t k = 1; !K1[0]; k++)
        if (dhps_proto_shard_of(k, NSH) == 1)
            K1[0] = k;
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_move_under_load),
                                       cmocka_unit_test(test_fence)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dhps_server_destroy(S);
    t_rmdir(dir);
    return rc;
}

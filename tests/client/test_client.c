/* Client against in-process fake nodes (fake_server.h): scatter/gather, defaults, fp16,
 * retries, deadlines and partial results, ack policies, "not owned" map reloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <float.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "dhps/client.h"
#include "dhps/route.h"
#include "fake_server.h"
#include "test_scale.h"

#define NNODES 4
#define NSHARDS 64
#define DIM 8

struct fx {
    struct fake_node nodes[NNODES];
    char dir[64], path[96];
    dhps_cluster_map *map;
    dhps_client *c;
};

static dhps_client *mkclient(struct fx *x, int router, uint32_t reload_ms)
{
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    p.map_path = x->path;
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.router = router;
    p.reload_interval_ms = reload_ms;
    /* not under test: generous and scaled (a 40,000-key ACK_QUORUM write took over 2 s
     * under TSan at load 8; test_scale.h) */
    p.default_timeout_us = dhps_test_us(2000000);
    if (router == DHPS_CLIENT_ROUTER_ROUTE) {
        p.host = "h0";
        p.pod = "p0";
        p.az = "az0";
    }
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    return c;
}

static int setup(void **state)
{
    struct fx *x = calloc(1, sizeof *x);
    strcpy(x->dir, "/tmp/dhps_client_XXXXXX");
    assert_non_null(mkdtemp(x->dir));
    snprintf(x->path, sizeof x->path, "%s/map.json", x->dir);
    for (uint32_t i = 0; i < NNODES; i++)
        assert_int_equal(fake_start(&x->nodes[i], i, 0), 0);
    assert_int_equal(fake_write_map(x->nodes, NNODES, NSHARDS, 3, 1, false, x->path, &x->map), 0);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY, 1000);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    struct fx *x = *state;
    dhps_client_destroy(x->c);
    for (uint32_t i = 0; i < NNODES; i++)
        fake_free(&x->nodes[i]);
    dhps_cluster_map_destroy(x->map);
    unlink(x->path);
    rmdir(x->dir);
    free(x);
    return 0;
}

static void row_of(uint64_t key, float *row)
{
    for (int d = 0; d < DIM; d++)
        row[d] = (float)((key % 1000) + d) * 0.5f; /* exact in fp16 */
}

static void put_keys(dhps_client *c, uint64_t first, size_t n, int ack)
{
    uint64_t *keys = malloc(n * 8);
    float *vals = malloc(n * DIM * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        keys[i] = first + i;
        row_of(keys[i], vals + i * DIM);
    }
    uint64_t failed[(n + 63) / 64];
    dhps_client_result res;
    assert_int_equal(dhps_client_update(c, "emb", keys, vals, n, DIM, DHPS_FP32,
                                        DHPS_CLIENT_TTL_DEFAULT, ack, 0, failed, &res), 0);
    assert_int_equal(res.found, n);
    for (size_t w = 0; w < (n + 63) / 64; w++)
        assert_int_equal(failed[w], 0);
    free(keys);
    free(vals);
}

/* Look up [first, first+n) plus n never-written keys; check rows, masks, counts. */
static void check_keys(dhps_client *c, uint64_t first, size_t n, int expect_rc)
{
    size_t tot = 2 * n;
    uint64_t *keys = malloc(tot * 8);
    for (size_t i = 0; i < n; i++) {
        keys[2 * i] = first + i;
        keys[2 * i + 1] = (1ull << 40) + first + i; /* never written */
    }
    float *out = malloc(tot * DIM * sizeof(float));
    uint64_t mask[(tot + 63) / 64];
    dhps_client_result res;
    int rc = dhps_client_lookup(c, "emb", keys, tot, out, DIM, DHPS_FP32, mask, 0, &res);
    assert_int_equal(rc, expect_rc);
    assert_int_equal(res.found, n);
    assert_int_equal(res.missing, n);
    assert_int_equal(res.unanswered, 0);
    for (size_t i = 0; i < tot; i++) {
        bool miss = (mask[i / 64] >> (i % 64)) & 1;
        assert_int_equal(miss, i % 2);
        float want[DIM] = {0};
        if (!miss)
            row_of(keys[i], want);
        assert_memory_equal(out + i * DIM, want, sizeof want);
    }
    free(keys);
    free(out);
}

static void test_update_lookup(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 2000, DHPS_ACK_ALL);
    /* every replica, and only the replicas, hold each key, with one version per batch */
    uint64_t v0 = 0;
    for (uint64_t k = 1; k <= 2000; k++) {
        uint32_t s = dhps_cluster_map_shard_of(x->map, k);
        for (uint32_t i = 0; i < NNODES; i++) {
            uint64_t v = 0;
            bool has = fake_get(&x->nodes[i], k, &v, NULL);
            assert_int_equal(has, dhps_cluster_map_owns(x->map, i, s));
            if (has) {
                if (!v0)
                    v0 = v;
                assert_int_equal(v, v0);
            }
        }
    }
    check_keys(x->c, 1, 2000, 0);
    /* one message per shard touched */
    uint64_t keys[3] = {5, 5, 5};
    float out[3 * DIM];
    dhps_client_result res;
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 3, out, DIM, DHPS_FP32, NULL, 0, &res), 0);
    assert_int_equal(res.messages, 1);
    assert_int_equal(res.found, 3);
    /* empty batch */
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 0, out, DIM, DHPS_FP32, NULL, 0, &res), 0);
    /* bad arguments */
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 3, out, DIM, 7, NULL, 0, &res), -EINVAL);
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 3, out, 0, DHPS_FP32, NULL, 0, &res), -EINVAL);
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 3, out, 1u << 20, DHPS_FP32, NULL, 0, &res),
                     DHPS_E_TOOBIG);
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_true(st.lookups >= 3);
    assert_int_equal(st.updates, 1);
    assert_int_equal(st.partial, 0);
    assert_int_equal(st.threads, 1);
    dhps_client_node_stats ns;
    uint64_t msgs = 0;
    for (uint32_t i = 0; i < NNODES; i++) {
        assert_int_equal(dhps_client_node_stats_get(x->c, i, &ns), 0);
        msgs += ns.messages;
        assert_int_equal(ns.connects, 1);
    }
    assert_true(msgs >= st.sub_batches);
    /* versions of later batches are larger */
    uint64_t v1 = dhps_client_next_version(x->c), v2 = dhps_client_next_version(x->c);
    assert_true(v2 > v1 && v1 > v0);
}

static void test_delete(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 400, DHPS_ACK_ALL);
    uint64_t del[200];
    for (int i = 0; i < 200; i++)
        del[i] = (uint64_t)(2 * i + 1); /* odd keys */
    uint64_t failed[4];
    dhps_client_result res;
    assert_int_equal(dhps_client_delete(x->c, "emb", del, 200, DHPS_ACK_ALL, 0, failed, &res), 0);
    assert_int_equal(res.found, 200);
    uint64_t keys[400];
    float out[400 * DIM];
    uint64_t mask[7];
    for (int i = 0; i < 400; i++)
        keys[i] = (uint64_t)i + 1;
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 400, out, DIM, DHPS_FP32, mask, 0, &res), 0);
    assert_int_equal(res.found, 200);
    for (int i = 0; i < 400; i++) {
        bool miss = (mask[i / 64] >> (i % 64)) & 1;
        assert_int_equal(miss, keys[i] % 2);
    }
    /* a write after the delete wins (newer version) */
    put_keys(x->c, 1, 400, DHPS_ACK_ALL);
    check_keys(x->c, 1, 400, 0);
    assert_int_equal(dhps_client_delete(x->c, "emb", del, 0, DHPS_ACK_ALL, 0, failed, &res), 0);
    assert_int_equal(dhps_client_delete(x->c, "emb", NULL, 3, DHPS_ACK_ALL, 0, failed, &res), -EINVAL);
}

static void test_update_retry(void **state)
{
    struct fx *x = *state;
    /* node 0 fails its next 2 requests: ACK_ALL still succeeds, by re-sending */
    atomic_store(&x->nodes[0].fail_next, 2);
    uint64_t keys[300];
    float vals[300 * DIM];
    for (int i = 0; i < 300; i++) {
        keys[i] = (uint64_t)i + 1;
        row_of(keys[i], vals + i * DIM);
    }
    uint64_t failed[5];
    dhps_client_result res;
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, 300, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ALL, 0, failed, &res), 0);
    assert_int_equal(res.retries, 2);
    for (uint64_t k = 1; k <= 300; k++)
        assert_int_equal(fake_get(&x->nodes[0], k, NULL, NULL),
                         dhps_cluster_map_owns(x->map, 0, dhps_cluster_map_shard_of(x->map, k)));
    /* always failing: bounded by max_attempts, reported per key */
    atomic_store(&x->nodes[0].fail, 1);
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, 300, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ALL, 0, failed, &res), DHPS_E_HANDLER);
    assert_true(res.missing > 0);
    atomic_store(&x->nodes[0].fail, 0);
}

static void test_big_batch_split(void **state)
{
    struct fx *x = *state;
    /* 40000 keys over 64 shards: ~625 per shard; messages still one per shard */
    put_keys(x->c, 100000, 40000, DHPS_ACK_QUORUM);
    /* QUORUM returned once a majority acknowledged; the messages to the other replica
     * are still in flight (on a slow TSan run, long enough for the lookup below to pick
     * that replica and find a third of the keys absent). Read after they landed: this
     * test is about splitting, not about reading a replica a write has not reached. */
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(10000000)), 0);
    check_keys(x->c, 100000, 40000, 0);
}

static void test_fp16_and_defaults(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 100, DHPS_ACK_ALL);
    float def[DIM];
    for (int d = 0; d < DIM; d++)
        def[d] = -1.5f;
    assert_int_equal(dhps_client_set_default(x->c, "emb", def, DIM), 0);
    uint64_t keys[4] = {1, 1ull << 41, 50, 2ull << 41};
    uint16_t out[4 * DIM];
    uint64_t mask[1];
    dhps_client_result res;
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 4, out, DIM, DHPS_FP16, mask, 0, &res), 0);
    assert_int_equal(mask[0], 0xa);
    for (int i = 0; i < 4; i++) {
        float want[DIM];
        if (i % 2)
            memcpy(want, def, sizeof want);
        else
            row_of(keys[i], want);
        for (int d = 0; d < DIM; d++)
            assert_int_equal(out[i * DIM + d], fake_f2h(want[d]));
    }
    float out32[4 * DIM];
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 4, out32, DIM, DHPS_FP32, mask, 0, &res), 0);
    assert_memory_equal(out32 + DIM, def, sizeof def);
    assert_int_equal(dhps_client_set_default(x->c, "emb", NULL, 0), 0);
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 4, out32, DIM, DHPS_FP32, mask, 0, &res), 0);
    assert_float_equal(out32[DIM], 0.0f, 0);
}

static void test_retry_on_failure(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 500, DHPS_ACK_ALL);
    atomic_store(&x->nodes[0].fail, 1);
    atomic_store(&x->nodes[1].fail, 1);
    check_keys(x->c, 1, 500, 0); /* every shard has a third replica on node 2 or 3 */
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_true(st.retries > 0);
    /* first healthy now avoids the failed nodes: no more retries */
    uint64_t r0 = st.retries;
    check_keys(x->c, 1, 500, 0);
    dhps_client_stats_get(x->c, &st);
    assert_int_equal(st.retries, r0);
    /* every replica failing: all keys unanswered, the error says why */
    atomic_store(&x->nodes[2].fail, 1);
    atomic_store(&x->nodes[3].fail, 1);
    uint64_t keys[2] = {1, 2};
    float out[2 * DIM];
    uint64_t mask[1];
    dhps_client_result res;
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 2, out, DIM, DHPS_FP32, mask, 0, &res),
                     DHPS_E_HANDLER);
    assert_int_equal(res.unanswered, 2);
    assert_int_equal(mask[0], 3);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].fail, 0);
}

static void test_node_down(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 1000, DHPS_ACK_ALL);
    fake_stop(&x->nodes[1]);
    check_keys(x->c, 1, 1000, 0); /* retried on the other replicas */
    /* updates: ALL falls short exactly on shards node 1 holds; QUORUM and ONE do not */
    size_t n = 1000;
    uint64_t keys[1000];
    float vals[1000 * DIM];
    for (size_t i = 0; i < n; i++) {
        keys[i] = 5000 + i;
        row_of(keys[i], vals + i * DIM);
    }
    uint64_t failed[16];
    dhps_client_result res;
    int rc = dhps_client_update(x->c, "emb", keys, vals, n, DIM, DHPS_FP32, 0, DHPS_ACK_ALL, 0,
                                failed, &res);
    assert_int_equal(rc, DHPS_E_UNREACHABLE);
    size_t nfail = 0;
    for (size_t i = 0; i < n; i++) {
        bool f = (failed[i / 64] >> (i % 64)) & 1;
        assert_int_equal(f, dhps_cluster_map_owns(x->map, 1, dhps_cluster_map_shard_of(x->map, keys[i])));
        nfail += f;
    }
    assert_int_equal(res.missing, nfail);
    assert_true(nfail > 0 && nfail < n);
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, n, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_QUORUM, 0, failed, &res), 0);
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, n, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ONE, 0, failed, &res), 0);
    check_keys(x->c, 5000, 1000, 0);
    dhps_client_node_stats ns;
    dhps_client_node_stats_get(x->c, 1, &ns);
    assert_true(ns.errors > 0);
}

static void test_deadline_partial(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 200, DHPS_ACK_ALL);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].delay_ms, 5000);
    uint64_t keys[200];
    for (int i = 0; i < 200; i++)
        keys[i] = (uint64_t)i + 1;
    float out[200 * DIM];
    uint64_t mask[4];
    dhps_client_result res;
    uint64_t t0 = fake_now_ms();
    int rc = dhps_client_lookup(x->c, "emb", keys, 200, out, DIM, DHPS_FP32, mask, 50000, &res);
    uint64_t took = fake_now_ms() - t0;
    assert_int_equal(rc, DHPS_E_TIMEOUT);
    assert_int_equal(res.unanswered, 200);
    assert_int_equal(res.found, 0);
    /* returned at the deadline, not after the servers' 5 s delay: the margin over the
     * 50 ms deadline is scaled, and capped below the delay it must tell apart */
    uint64_t bound = 50 + dhps_test_ms(950);
    if (bound > 4500)
        bound = 4500;
    assert_true(took < bound);
    for (int w = 0; w < 3; w++)
        assert_int_equal(mask[w], ~0ull);
    for (int i = 0; i < 200 * DIM; i++)
        assert_float_equal(out[i], 0.0f, 0);
    /* partial: two nodes slow, two fast; keys with a fast replica come back */
    atomic_store(&x->nodes[2].delay_ms, 0);
    atomic_store(&x->nodes[3].delay_ms, 0);
    /* the fast nodes' handlers still held by the delay have woken (an event, scaled) */
    assert_true(DHPS_TEST_WAIT_FOR(atomic_load(&x->nodes[2].sleeping) == 0 &&
                                   atomic_load(&x->nodes[3].sleeping) == 0, 5000));
    uint64_t part_us = dhps_test_us(300000); /* long enough for the fast nodes to answer */
    if (part_us > 4000000)
        part_us = 4000000; /* and shorter than the slow ones' delay */
    rc = dhps_client_lookup(x->c, "emb", keys, 200, out, DIM, DHPS_FP32, mask, part_us, &res);
    assert_true(rc == 0 || rc == DHPS_E_TIMEOUT);
    assert_true(res.found > 0);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].delay_ms, 0);
    for (int i = 0; i < NNODES; i++)
        assert_true(DHPS_TEST_WAIT_FOR(atomic_load(&x->nodes[i].sleeping) == 0, 5000));
    /* detached calls complete harmlessly; the next calls are whole again */
    check_keys(x->c, 1, 200, 0);
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_true(st.partial >= 1);
}

static void test_not_owned_reload(void **state)
{
    struct fx *x = *state;
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY, 0); /* reload only when told */
    put_keys(x->c, 1, 300, DHPS_ACK_ALL);
    /* a new map moves shards; nodes enforce it and hold every key */
    dhps_cluster_map *m2 = NULL;
    char p2[128];
    snprintf(p2, sizeof p2, "%s/map2.json", x->dir);
    assert_int_equal(fake_write_map(x->nodes, NNODES, NSHARDS, 3, 2, true, p2, &m2), 0);
    size_t moved = 0;
    for (uint32_t s = 0; s < NSHARDS; s++)
        for (uint32_t i = 0; i < NNODES; i++)
            moved += dhps_cluster_map_owns(m2, i, s) != dhps_cluster_map_owns(x->map, i, s);
    assert_true(moved > 0);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].owner_map, m2);
    put_keys(x->c, 1, 1, DHPS_ACK_ONE); /* warm every channel */
    uint64_t keys[300];
    for (int i = 0; i < 300; i++)
        keys[i] = (uint64_t)i + 1;
    float out[300 * DIM];
    uint64_t mask[5];
    dhps_client_result res;
    /* everything still answered: a "not owned" replica is retried on another one */
    assert_int_equal(rename(p2, x->path), 0);
    int rc = dhps_client_lookup(x->c, "emb", keys, 300, out, DIM, DHPS_FP32, mask, 0, &res);
    (void)rc;
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_true(st.not_owned > 0);
    assert_int_equal(st.map_reloads, 1);
    assert_int_equal(dhps_client_map_version(x->c), 2);
    /* with the new map: no more refusals */
    uint64_t no0 = st.not_owned;
    for (int i = 0; i < NNODES; i++) /* the new owners must hold the keys */
        atomic_store(&x->nodes[i].owner_map, NULL);
    dhps_cluster_map_destroy(x->map);
    x->map = m2;
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].owner_map, m2);
    put_keys(x->c, 1, 300, DHPS_ACK_ALL);
    check_keys(x->c, 1, 300, 0);
    dhps_client_stats_get(x->c, &st);
    assert_int_equal(st.not_owned, no0);
    /* an explicit reload of an unchanged or older file changes nothing */
    assert_int_equal(dhps_client_reload(x->c), 0);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].owner_map, NULL);
}

static void test_reload_timer(void **state)
{
    struct fx *x = *state;
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY, 1);
    assert_int_equal(dhps_client_map_version(x->c), 1);
    dhps_cluster_map *m = NULL;
    assert_int_equal(fake_write_map(x->nodes, NNODES, NSHARDS, 3, 7, false, x->path, &m), 0);
    dhps_cluster_map_destroy(m);
    usleep(5000);
    put_keys(x->c, 1, 10, DHPS_ACK_ALL); /* any call notices the file after the interval */
    assert_int_equal(dhps_client_map_version(x->c), 7);
    /* an older version is ignored */
    assert_int_equal(fake_write_map(x->nodes, NNODES, NSHARDS, 3, 3, false, x->path, &m), 0);
    dhps_cluster_map_destroy(m);
    assert_int_equal(dhps_client_reload(x->c), 0);
    assert_int_equal(dhps_client_map_version(x->c), 7);
    /* a broken file is reported and ignored */
    FILE *f = fopen(x->path, "w");
    fputs("{\"version\": 9", f);
    fclose(f);
    assert_int_equal(dhps_client_reload(x->c), DHPS_E_MALFORMED);
    assert_int_equal(dhps_client_map_version(x->c), 7);
    check_keys(x->c, 1, 10, 0);
}

static void test_route_router(void **state)
{
    struct fx *x = *state;
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_AUTO, 1000);
    assert_string_equal(dhps_client_router_name(x->c), "first_healthy"); /* no labels */
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_ROUTE, 1000);
    assert_string_equal(dhps_client_router_name(x->c), "route");
    put_keys(x->c, 1, 1000, DHPS_ACK_ALL);
    check_keys(x->c, 1, 1000, 0);
    /* a failing node: the route library's retry budget (10 % of picks + a burst of 20)
     * may leave the first lookups partial, until its breaker isolates the node; then
     * lookups are whole again without retries */
    atomic_store(&x->nodes[0].fail, 1);
    uint64_t keys[1000];
    float out[1000 * DIM];
    for (int i = 0; i < 1000; i++)
        keys[i] = (uint64_t)i + 1;
    int whole = 0;
    dhps_client_result res;
    for (int i = 0; i < 20 && whole < 3; i++) {
        int rc = dhps_client_lookup(x->c, "emb", keys, 1000, out, DIM, DHPS_FP32, NULL, 0, &res);
        if (rc == 0 && res.found == 1000)
            whole++;
        else
            assert_int_equal(rc, DHPS_E_HANDLER);
    }
    assert_int_equal(whole, 3);
    assert_int_equal(res.retries, 0);
    atomic_store(&x->nodes[0].fail, 0);
}

static void test_hedging(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 1000, DHPS_ACK_ALL);
    check_keys(x->c, 1, 1000, 0);
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_int_equal(st.hedges, 0); /* first_healthy does not hedge */
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_ROUTE, 1000);
    /* one slow node: sub-batches sent to it are hedged to another replica; the answers
     * (first of each pair) are whole and correct, the late ones are dropped */
    atomic_store(&x->nodes[0].delay_ms, 20);
    uint64_t keys[1000];
    float out[1000 * DIM];
    uint64_t mask[16];
    for (int i = 0; i < 1000; i++)
        keys[i] = (uint64_t)i + 1;
    dhps_client_result res;
    uint32_t hedges = 0;
    for (int r = 0; r < 3; r++) {
        assert_int_equal(dhps_client_lookup(x->c, "emb", keys, 1000, out, DIM, DHPS_FP32, mask,
                                            dhps_test_us(5000000), &res), 0);
        assert_int_equal(res.found, 1000);
        for (int i = 0; i < 1000; i++) {
            float want[DIM];
            row_of(keys[i], want);
            assert_memory_equal(out + i * DIM, want, sizeof want);
        }
        hedges += res.hedges;
    }
    assert_true(hedges > 0);
    dhps_client_stats_get(x->c, &st);
    assert_int_equal(st.hedges, hedges);
    atomic_store(&x->nodes[0].delay_ms, 0);
    check_keys(x->c, 1, 1000, 0);
}

/* Node stats through the public API: a hedge loser is counted as cancelled, never as an
 * error or an ok answer, even when its late answer is a failure; after a drain every
 * message sent is accounted for. */
static void test_hedge_loser_counters(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 1000, DHPS_ACK_ALL);
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_ROUTE, 1000);
    /* node 0 answers every request 20 ms late, and with a handler error */
    atomic_store(&x->nodes[0].delay_ms, 20);
    atomic_store(&x->nodes[0].fail, 1);
    uint64_t keys[1000];
    float out[1000 * DIM];
    for (int i = 0; i < 1000; i++)
        keys[i] = (uint64_t)i + 1;
    dhps_client_result res;
    uint32_t hedges = 0;
    for (int r = 0; r < 3; r++) {
        /* an unhedged message that node 0 failed needs a retry token; the budget may run
         * out while it fails everything, which is not what is checked here */
        int rc = dhps_client_lookup(x->c, "emb", keys, 1000, out, DIM, DHPS_FP32, NULL,
                                    dhps_test_us(5000000), &res);
        assert_true(rc == 0 || rc == DHPS_E_HANDLER);
        hedges += res.hedges;
    }
    assert_true(hedges > 0);
    /* the losers still in flight complete; then every message is accounted for */
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(10000000)), 0);
    dhps_client_stats st;
    dhps_client_stats_get(x->c, &st);
    assert_int_equal(st.hedges, hedges);
    uint64_t cancelled = 0;
    dhps_client_node_stats ns[NNODES];
    for (uint32_t i = 0; i < NNODES; i++) {
        assert_int_equal(dhps_client_node_stats_get(x->c, i, &ns[i]), 0);
        assert_int_equal(ns[i].messages,
                         ns[i].ok + ns[i].errors + ns[i].timeouts + ns[i].cancelled);
        cancelled += ns[i].cancelled;
    }
    /* every hedged pair had one fast replica: exactly one loser each */
    assert_int_equal(cancelled, hedges);
    /* node 0 answered nothing usable: its attempts are errors (not hedged, so they failed
     * the message and it was retried) or cancelled (hedged, the other replica won) */
    assert_int_equal(ns[0].ok, 0);
    assert_true(ns[0].cancelled > 0);
    assert_int_equal(ns[0].errors + ns[0].cancelled, ns[0].messages);
    assert_int_equal(ns[0].timeouts, 0);
    assert_int_equal(dhps_client_drain(NULL, 0), -EINVAL);
    atomic_store(&x->nodes[0].fail, 0);
    atomic_store(&x->nodes[0].delay_ms, 0);
}

/* dhps_client_connect opens the calling thread's channels to every node once. */
static void test_connect(void **state)
{
    struct fx *x = *state;
    assert_int_equal(dhps_client_connect(x->c), 0);
    assert_int_equal(dhps_client_connect(x->c), 0); /* already open: nothing dialled */
    for (uint32_t i = 0; i < NNODES; i++) {
        dhps_client_node_stats ns;
        assert_int_equal(dhps_client_node_stats_get(x->c, i, &ns), 0);
        assert_int_equal(ns.connects, 1);
        assert_int_equal(ns.messages, 0);
    }
    assert_int_equal(dhps_client_connect(NULL), -EINVAL);
    /* a node that is gone is counted, the others stay connected */
    fake_stop(&x->nodes[3]);
    dhps_client_destroy(x->c);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY, 1000);
    assert_int_equal(dhps_client_connect(x->c), 1);
    put_keys(x->c, 1, 100, DHPS_ACK_ONE);
    /* back on its port: once redial_backoff_ms has passed since the failure, the next use
     * dials again (the backoff runs from the failure, not from each later look at it) */
    uint16_t port = x->nodes[3].port;
    fake_free(&x->nodes[3]);
    assert_int_equal(fake_start(&x->nodes[3], 3, port), 0);
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 150 * 1000000L};
    nanosleep(&pause, NULL);
    assert_int_equal(dhps_client_connect(x->c), 0);
    dhps_client_node_stats ns;
    assert_int_equal(dhps_client_node_stats_get(x->c, 3, &ns), 0);
    assert_int_equal(ns.connects, 1);
    assert_int_equal(ns.connect_failures, 1);
}

/* A node that accepts connections but never answers the hello (stopped, loading, slow
 * RDMA set-up) costs a lookup only its attempt timeout: the open runs without blocking
 * the thread, the calls waiting on it are re-sent to other replicas. A blocking open
 * would hold the thread for connect_timeout_ms (3 s) against a 400 ms deadline. Both are
 * scaled together (test_scale.h): the deadline is under test only relative to the
 * connect timeout, which stays at least 3 times longer (7.5 times natively). */
static void test_stalled_hello(void **state)
{
    struct fx *x = *state;
    put_keys(x->c, 1, 500, DHPS_ACK_ALL);
    uint16_t port = x->nodes[0].port;
    fake_stop(&x->nodes[0]);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 64), 0); /* connects complete; nobody answers */
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.map_path = x->path;
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.router = DHPS_CLIENT_ROUTER_FIRST_HEALTHY; /* node 0 first wherever it is listed */
    uint64_t deadline_us = dhps_test_us(400000);
    p.connect_timeout_ms = (uint32_t)(deadline_us * 3 / 1000);
    if (p.connect_timeout_ms < 3000)
        p.connect_timeout_ms = 3000;
    p.default_timeout_us = deadline_us;
    p.max_attempts = 3;
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    uint64_t keys[500];
    float out[500 * DIM];
    uint64_t mask[8];
    for (int i = 0; i < 500; i++)
        keys[i] = 1 + (uint64_t)i;
    dhps_client_result res;
    uint64_t t0 = dhps_mono_ns();
    int rc = dhps_client_lookup(c, "emb", keys, 500, out, DIM, DHPS_FP32, mask, 0, &res);
    double ms = (double)(dhps_mono_ns() - t0) / 1e6;
    dhps_client_node_stats ns;
    assert_int_equal(dhps_client_node_stats_get(c, 0, &ns), 0);
    print_message("  lookup beside a stalled hello: %.1f ms, rc %d, %zu unanswered; "
                  "node 0: %llu messages, %llu timeouts\n", ms, rc, res.unanswered,
                  (unsigned long long)ns.messages, (unsigned long long)ns.timeouts);
    assert_int_equal(rc, 0); /* within the (scaled) 400 ms deadline, every key answered */
    assert_int_equal(res.unanswered, 0);
    assert_true(ns.messages > 0); /* node 0 was tried: the re-sends were needed */
    for (int i = 0; i < 500; i++) {
        float want[DIM];
        row_of(keys[i], want);
        assert_memory_equal(out + (size_t)i * DIM, want, sizeof want);
    }
    /* the open ends at connect_timeout_ms and counts as a failed dial */
    t0 = dhps_mono_ns();
    while (ns.connect_failures == 0 && dhps_mono_ns() - t0 < 20000000000ull + (uint64_t)p.connect_timeout_ms * 1000000ull) {
        assert_int_equal(dhps_client_lookup(c, "emb", keys, 50, out, DIM, DHPS_FP32, mask, 0,
                                            &res), 0);
        assert_int_equal(dhps_client_node_stats_get(c, 0, &ns), 0);
    }
    assert_int_equal(ns.connect_failures, 1);
    assert_int_equal(ns.connects, 0);
    dhps_client_destroy(c);
    close(lfd);
}

/* ---- replicas that are not ready (recovering, catching up) ----------------------------- */

/* Replace the fixture's client by one of router over a 2-replica map of nodes 0 and 1. */
static void two_replicas(struct fx *x, int router)
{
    dhps_client_destroy(x->c);
    assert_int_equal(fake_write_map(x->nodes, 2, 16, 2, 2, false, x->path, NULL), 0);
    x->c = mkclient(x, router, 0);
}

static uint64_t node_not_ready(dhps_client *c, uint32_t id)
{
    dhps_client_node_stats ns;
    assert_int_equal(dhps_client_node_stats_get(c, id, &ns), 0);
    return ns.not_ready;
}

/* One replica of two not ready: writes still reach it, every lookup is answered by the
 * other one - all written keys found, the never-written ones "absent", return 0. */
static void test_not_ready_one_replica(void **state)
{
    struct fx *x = *state;
    int routers[2] = {DHPS_CLIENT_ROUTER_FIRST_HEALTHY, DHPS_CLIENT_ROUTER_ROUTE};
    for (int r = 0; r < 2; r++) {
        two_replicas(x, routers[r]);
        atomic_store(&x->nodes[0].not_ready, 1);
        uint64_t first = 1 + (uint64_t)r * 10000;
        put_keys(x->c, first, 300, DHPS_ACK_ALL);
        assert_true(fake_get(&x->nodes[0], first, NULL, NULL)); /* it took the write */
        for (int i = 0; i < 5; i++)
            check_keys(x->c, first, 300, 0); /* rc 0, 300 found, 300 missing, 0 unanswered */
        assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
        dhps_client_stats st;
        dhps_client_stats_get(x->c, &st);
        assert_int_equal(st.partial, 0);
        /* every NOTREADY answer the node gave is counted, on it and in the total (but a
         * hedge loser's, counted cancelled: the route router hedges) */
        if (routers[r] == DHPS_CLIENT_ROUTER_FIRST_HEALTHY)
            assert_int_equal(node_not_ready(x->c, 0),
                             atomic_load(&x->nodes[0].not_ready_answers));
        else
            assert_true(node_not_ready(x->c, 0) <= atomic_load(&x->nodes[0].not_ready_answers));
        assert_int_equal(node_not_ready(x->c, 1), 0);
        assert_int_equal(st.not_ready, node_not_ready(x->c, 0));
        if (routers[r] == DHPS_CLIENT_ROUTER_FIRST_HEALTHY) {
            /* node 0 is listed first for half the shards: it was asked, and said so */
            assert_true(st.not_ready > 0);
            dhps_client_node_stats ns;
            dhps_client_node_stats_get(x->c, 0, &ns);
            assert_int_equal(ns.last_error, DHPS_E_NOTREADY);
            assert_true(ns.errors >= ns.not_ready);
        }
        atomic_store(&x->nodes[0].not_ready, 0);
        atomic_store(&x->nodes[0].not_ready_answers, 0);
    }
}

/* Both replicas not ready: nothing is "absent" - every key unanswered, DHPS_E_NOTREADY,
 * default rows - whatever the router does (breakers, panic, all replicas excluded). */
static void test_not_ready_all(void **state)
{
    struct fx *x = *state;
    int routers[2] = {DHPS_CLIENT_ROUTER_FIRST_HEALTHY, DHPS_CLIENT_ROUTER_ROUTE};
    enum { N = 200 };
    for (int r = 0; r < 2; r++) {
        two_replicas(x, routers[r]);
        float def[DIM] = {9, 9, 9, 9, 9, 9, 9, 9};
        assert_int_equal(dhps_client_set_default(x->c, "emb", def, DIM), 0);
        atomic_store(&x->nodes[0].not_ready, 1);
        atomic_store(&x->nodes[1].not_ready, 1);
        put_keys(x->c, 1, N / 2, DHPS_ACK_ALL); /* not-ready replicas take writes */
        uint64_t keys[N];
        for (int i = 0; i < N; i++)
            keys[i] = i % 2 ? (1ull << 40) + (uint64_t)i : 1 + (uint64_t)i / 2;
        float out[N * DIM];
        uint64_t miss[(N + 63) / 64], unans[(N + 63) / 64];
        for (int round = 0; round < 12; round++) { /* past the breakers' openings */
            dhps_client_result res;
            memset(miss, 0, sizeof miss);
            memset(unans, 0, sizeof unans);
            int rc = dhps_client_lookup_masks(x->c, "emb", keys, N, out, DIM, DHPS_FP32, miss,
                                              unans, 0, &res);
            assert_int_equal(rc, DHPS_E_NOTREADY);
            assert_int_equal(res.found, 0);
            assert_int_equal(res.missing, N);
            assert_int_equal(res.unanswered, N); /* none "found-absent" */
            for (int i = 0; i < N; i++) {
                assert_true((miss[i / 64] >> (i % 64)) & 1);
                assert_true((unans[i / 64] >> (i % 64)) & 1);
                assert_memory_equal(out + i * DIM, def, sizeof def);
            }
            /* the plain call says the same */
            rc = dhps_client_lookup(x->c, "emb", keys, N, out, DIM, DHPS_FP32, miss, 0, &res);
            assert_int_equal(rc, DHPS_E_NOTREADY);
            assert_int_equal(res.unanswered, N);
        }
        dhps_client_stats st;
        dhps_client_stats_get(x->c, &st);
        assert_int_equal(st.partial, 24);
        assert_true(st.not_ready > 0);
        /* ready again: every key answered, the never-written ones "absent" */
        atomic_store(&x->nodes[0].not_ready, 0);
        atomic_store(&x->nodes[1].not_ready, 0);
        for (int i = 0; i < 50; i++) {
            dhps_client_result res;
            int rc = dhps_client_lookup_masks(x->c, "emb", keys, N, out, DIM, DHPS_FP32, miss,
                                              unans, 0, &res);
            if (rc == 0) {
                assert_int_equal(res.found, N / 2);
                assert_int_equal(res.unanswered, 0);
                for (int w = 0; w < (N + 63) / 64; w++)
                    assert_int_equal(unans[w], 0);
                break;
            }
            /* the route router may still hold both nodes isolated for a moment */
            assert_true(rc == DHPS_E_NOTREADY || rc == DHPS_E_UNREACHABLE);
            assert_true(res.unanswered > 0);
            usleep(dhps_test_us(100000));
            assert_true(i < 49);
        }
        assert_int_equal(dhps_client_set_default(x->c, "emb", NULL, 0), 0);
    }
}

/* A not-ready node is held back, not failed: lookups stay whole (the other replica
 * answers), its breaker never opens (no isolation that grows while it catches up), it is
 * asked again every CLIENT_NOT_READY_HOLD_NS (250 ms), and once ready it has its traffic
 * back within a few holds. */
static void test_not_ready_recovers(void **state)
{
    struct fx *x = *state;
    two_replicas(x, DHPS_CLIENT_ROUTER_ROUTE);
    put_keys(x->c, 1, 200, DHPS_ACK_ALL);
    atomic_store(&x->nodes[0].not_ready, 1);
    dhps_route *rt = dhps_client_route(x->c);
    assert_non_null(rt);
    dhps_route_node_stats rs;
    uint64_t t0 = fake_now_ms();
    int lookups = 0;
    /* a second, and at least 40 lookups, against it: more than the 5 consecutive errors
     * and the error share that would open a breaker */
    while ((fake_now_ms() - t0 < 1000 || lookups < 40) &&
           fake_now_ms() - t0 < dhps_test_ms(20000)) {
        check_keys(x->c, 1, 100, 0); /* rc 0: the other replica answered */
        lookups++;
        assert_int_equal(dhps_route_node_stats_get(rt, 0, &rs), 0);
        assert_int_equal(rs.breaker, DHPS_ROUTE_CLOSED);
    }
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
    assert_true(node_not_ready(x->c, 0) > 0); /* it was asked, and said so */
    /* ready again: answers come back from node 0 within a couple of holds */
    atomic_store(&x->nodes[0].not_ready, 0);
    dhps_client_node_stats ns0;
    dhps_client_node_stats_get(x->c, 0, &ns0);
    uint64_t ok0 = ns0.ok;
    t0 = fake_now_ms();
    bool back = false;
    while (fake_now_ms() - t0 < dhps_test_ms(5000) && !back) {
        check_keys(x->c, 1, 100, 0);
        dhps_client_node_stats_get(x->c, 0, &ns0);
        back = ns0.ok > ok0 + 5;
    }
    assert_true(back); /* within 5 s: a breaker isolation would have grown to 8 s+ */
    assert_int_equal(dhps_route_node_stats_get(rt, 0, &rs), 0);
    assert_int_equal(rs.breaker, DHPS_ROUTE_CLOSED);
}

/* A write answered "not ready" (a server should not, a catching-up replica takes writes)
 * is re-sent to the same replica like after any transient failure. */
static void test_not_ready_write(void **state)
{
    struct fx *x = *state;
    two_replicas(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    atomic_store(&x->nodes[0].not_ready_writes, 2);
    uint64_t key = 77;
    float row[DIM];
    row_of(key, row);
    dhps_client_result res;
    assert_int_equal(dhps_client_update(x->c, "emb", &key, row, 1, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ALL, 0, NULL, &res), 0);
    assert_int_equal(res.retries, 2);
    assert_int_equal(node_not_ready(x->c, 0), 2);
    assert_true(fake_get(&x->nodes[0], key, NULL, NULL));
    assert_true(fake_get(&x->nodes[1], key, NULL, NULL));
}

/* NaN and +-inf are refused whole before anything is sent (-EDOM), fp32 and fp16;
 * params.allow_nonfinite lets them through. */
static void test_nonfinite_refused(void **state)
{
    struct fx *x = *state;
    uint64_t keys[3] = {11, 12, 13};
    float rows[3 * DIM];
    for (int i = 0; i < 3; i++)
        row_of(keys[i], rows + i * DIM);
    dhps_client_stats st0, st1;
    dhps_client_stats_get(x->c, &st0);
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++) {
        float r2[3 * DIM];
        memcpy(r2, rows, sizeof r2);
        r2[2 * DIM + 1] = bad[b];
        assert_int_equal(dhps_client_update(x->c, "emb", keys, r2, 3, DIM, DHPS_FP32,
                                            DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 0, NULL, NULL),
                         -EDOM);
    }
    uint16_t h[3 * DIM] = {0};
    h[DIM] = 0x7e00; /* fp16 NaN */
    assert_int_equal(dhps_client_update(x->c, "emb", keys, h, 3, DIM, DHPS_FP16,
                                        DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 0, NULL, NULL),
                     -EDOM);
    h[DIM] = 0x7c00; /* fp16 +inf */
    assert_int_equal(dhps_client_update(x->c, "emb", keys, h, 3, DIM, DHPS_FP16,
                                        DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 0, NULL, NULL),
                     -EDOM);
    dhps_client_stats_get(x->c, &st1);
    assert_int_equal(st1.keys_updated, st0.keys_updated); /* nothing went out */
    /* the largest finite values pass */
    rows[0] = FLT_MAX;
    rows[1] = -FLT_MAX;
    assert_int_equal(dhps_client_update(x->c, "emb", keys, rows, 3, DIM, DHPS_FP32,
                                        DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 0, NULL, NULL),
                     0);
    /* allowed by the client's params */
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    p.map_path = x->path;
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.default_timeout_us = dhps_test_us(2000000);
    p.allow_nonfinite = true;
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    rows[DIM] = NAN;
    assert_int_equal(dhps_client_update(c, "emb", keys, rows, 3, DIM, DHPS_FP32,
                                        DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 0, NULL, NULL),
                     0);
    dhps_client_destroy(c);
}

static void test_create_errors(void **state)
{
    struct fx *x = *state;
    dhps_client_params p;
    dhps_client_params_init(&p);
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), -EINVAL);
    p.map_path = "/nonexistent/map.json";
    assert_int_equal(dhps_client_create(&p, &c), -ENOENT);
    p.map_path = x->path;
    p.max_node_id = 2; /* the map uses id 3 */
    assert_int_equal(dhps_client_create(&p, &c), DHPS_E_CONFIG);
    assert_null(c);
    dhps_client_destroy(NULL);
    /* a wrong secret: calls fail (auth), reported as unanswered keys */
    p.max_node_id = 4095;
    p.secret = "wrong";
    p.secret_len = 5;
    p.default_timeout_us = dhps_test_us(300000);
    assert_int_equal(dhps_client_create(&p, &c), 0);
    uint64_t k = 1;
    float out[DIM];
    dhps_client_result res;
    int rc = dhps_client_lookup(c, "emb", &k, 1, out, DIM, DHPS_FP32, NULL, 0, &res);
    assert_true(rc == DHPS_E_AUTH || rc == DHPS_E_UNREACHABLE);
    assert_int_equal(res.unanswered, 1);
    dhps_client_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_update_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_batch_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fp16_and_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_on_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_owned_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_router, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedge_loser_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stalled_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_one_replica, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonfinite_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

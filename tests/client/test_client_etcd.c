/* A client taking its map from a real etcd (tests/coord/etcd_fixture.h; skips, exit 77,
 * without the etcd binary) against in-process fake nodes (fake_server.h): the map is
 * refreshed on demand with a get of the map key - after a write refused DHPS_E_MOVED
 * (not rate-limited: the write cannot complete without it) and after a lookup answered
 * "not owned" (at most one get per 100 ms) - besides the watch; with etcd down the
 * refusal ends the write with DHPS_E_MOVED within its deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "dhps/client.h"
#include "dhps/coord.h"
#include "etcd_fixture.h"
#include "fake_server.h"
#include "test_scale.h"

#define NNODES 3
#define DIM 8
#define NK 50

static struct etcd_fx efx;
static struct fake_node nodes[NNODES];
static char map_key[128];
static dhps_cluster_map *owner_map_keep;

/* The map over the fakes, version v, one shard held by shards ("[[0, 1]]"). */
static int put_map(uint64_t v, const char *shards)
{
    char buf[2048];
    int len = snprintf(buf, sizeof buf, "{\"version\": %llu, \"nshards\": 1, \"replicas\": 2, "
                       "\"nodes\": [", (unsigned long long)v);
    for (int i = 0; i < NNODES; i++)
        len += snprintf(buf + len, sizeof buf - (size_t)len,
                        "%s{\"id\": %d, \"host\": \"h%d\", \"addr\": \"127.0.0.1:%u\"}",
                        i ? ", " : "", i, i, nodes[i].port);
    len += snprintf(buf + len, sizeof buf - (size_t)len, "], \"shards\": %s}", shards);
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = efx.url;
    dhps_coord *c = NULL;
    int rc = dhps_coord_create(&p, &c);
    if (rc == 0)
        rc = dhps_coord_put(c, map_key, buf, (size_t)len, 0, NULL);
    dhps_coord_destroy(c);
    return rc;
}

/* on_moved hook (a server thread): publish map 2 = {1, 2} in etcd, once. */
static _Atomic int published;
static void publish_v2(struct fake_node *f, void *arg)
{
    (void)f;
    (void)arg;
    if (atomic_exchange(&published, 1) == 0 && put_map(2, "[[1, 2]]") != 0)
        fprintf(stderr, "publish_v2: put failed\n");
}

static int put_keys(dhps_client *c, int ack, uint64_t timeout_us, dhps_client_result *res)
{
    uint64_t keys[NK];
    float vals[NK * DIM];
    for (int i = 0; i < NK; i++) {
        keys[i] = 1 + (uint64_t)i;
        for (int d = 0; d < DIM; d++)
            vals[i * DIM + d] = (float)i + (float)d / 8;
    }
    return dhps_client_update(c, "emb", keys, vals, NK, DIM, DHPS_FP32, 0, ack, timeout_us,
                              NULL, res);
}

static void test_etcd_refresh_on_demand(void **state)
{
    (void)state;
    assert_int_equal(put_map(1, "[[0, 1]]"), 0);
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    p.etcd = efx.url;
    p.cluster = "t";
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.router = DHPS_CLIENT_ROUTER_FIRST_HEALTHY;
    p.default_timeout_us = dhps_test_us(2000000);
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    assert_int_equal(dhps_client_map_version(c), 1);
    dhps_client_result res;
    dhps_client_stats st;

    /* lookups answered "not owned" by both replicas (nothing else to ask: the keys are
     * unanswered, DHPS_E_NOTFOUND): the client asks etcd at once - nothing newer there
     * - but not again within 100 ms */
    dhps_cluster_map *none = NULL; /* a map in which nodes 0 and 1 own nothing */
    char js[512];
    snprintf(js, sizeof js, "{\"version\": 9, \"nshards\": 1, \"replicas\": 1, \"nodes\": ["
             "{\"id\": 2, \"host\": \"h2\", \"addr\": \"127.0.0.1:%u\"}], \"shards\": [[2]]}",
             nodes[2].port);
    assert_int_equal(dhps_cluster_map_parse(js, strlen(js), &none, NULL, 0), 0);
    atomic_store(&nodes[0].owner_map, none);
    atomic_store(&nodes[1].owner_map, none);
    uint64_t keys[NK];
    float out[NK * DIM];
    for (int i = 0; i < NK; i++)
        keys[i] = 1 + (uint64_t)i;
    assert_int_equal(dhps_client_lookup(c, "emb", keys, NK, out, DIM, DHPS_FP32, NULL, 0, &res),
                     DHPS_E_NOTFOUND);
    dhps_client_stats_get(c, &st);
    assert_true(st.not_owned >= 2);
    assert_int_equal(st.map_refreshes, 1);
    uint64_t t0 = dhps_mono_ns();
    assert_int_equal(dhps_client_lookup(c, "emb", keys, NK, out, DIM, DHPS_FP32, NULL, 0, &res),
                     DHPS_E_NOTFOUND);
    dhps_client_stats_get(c, &st);
    if (dhps_mono_ns() - t0 < 80000000ull) /* well inside the 100 ms gap */
        assert_int_equal(st.map_refreshes, 1);
    usleep(150000);
    assert_int_equal(dhps_client_lookup(c, "emb", keys, NK, out, DIM, DHPS_FP32, NULL, 0, &res),
                     DHPS_E_NOTFOUND);
    dhps_client_stats_get(c, &st);
    assert_int_equal(st.map_refreshes, 2);
    atomic_store(&nodes[0].owner_map, NULL);
    atomic_store(&nodes[1].owner_map, NULL);

    /* a write refused DHPS_E_MOVED with nothing newer in etcd: a get (not rate-limited:
     * the last one was just now) finds nothing, the write fails with DHPS_E_MOVED */
    atomic_store(&nodes[0].fence, 2);
    uint64_t r0 = st.map_refreshes;
    assert_int_equal(put_keys(c, DHPS_ACK_ALL, 0, &res), DHPS_E_MOVED);
    dhps_client_stats_get(c, &st);
    assert_int_equal(st.map_refreshes, r0 + 1);
    assert_int_equal(st.moved, 0);

    /* map 2 is published at the moment node 0 refuses: the client's get finds it (the
     * watch would too, a little later) and the write lands on {1, 2} */
    fake_on_moved(&nodes[0], publish_v2, NULL);
    r0 = st.map_refreshes;
    assert_int_equal(put_keys(c, DHPS_ACK_ALL, 0, &res), 0);
    dhps_client_stats_get(c, &st);
    /* a get is counted only when the map in use was not newer yet: 0 here means the
     * watch, racing the get, installed map 2 first (both are fine) */
    print_message("  refusal -> re-route with map 2 from %s\n",
                  st.map_refreshes > r0 ? "the client's get" : "the watch");
    assert_true(st.map_refreshes <= r0 + 1);
    assert_int_equal(st.moved, 1);
    assert_int_equal(dhps_client_map_version(c), 2);
    for (uint64_t k = 1; k <= NK; k++) {
        assert_true(fake_get(&nodes[1], k, NULL, NULL));
        assert_true(fake_get(&nodes[2], k, NULL, NULL));
    }
    fake_on_moved(&nodes[0], NULL, NULL);

    /* etcd down: a refused write fails with DHPS_E_MOVED, within its deadline */
    etcd_kill(&efx);
    atomic_store(&nodes[1].fence, 3);
    uint64_t deadline_us = dhps_test_us(500000);
    t0 = dhps_mono_ns();
    assert_int_equal(put_keys(c, DHPS_ACK_ALL, deadline_us, &res), DHPS_E_MOVED);
    uint64_t took_us = (dhps_mono_ns() - t0) / 1000;
    print_message("  etcd down: the refused write returned after %llu us\n",
                  (unsigned long long)took_us);
    assert_true(took_us < deadline_us + dhps_test_us(100000));
    assert_int_equal(dhps_client_map_version(c), 2);
    dhps_client_destroy(c);
    owner_map_keep = none; /* freed after the fakes stop: a worker may still read it */
}

int main(void)
{
    int rc = etcd_start(&efx);
    if (rc == 77)
        return 77;
    if (rc != 0)
        return 1;
    if (dhps_coord_key(map_key, sizeof map_key, "t", DHPS_COORD_KEY_MAP, 0) < 0)
        return 1;
    for (uint32_t i = 0; i < NNODES; i++)
        if (fake_start(&nodes[i], i, 0) != 0)
            return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_etcd_refresh_on_demand),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (uint32_t i = 0; i < NNODES; i++)
        fake_free(&nodes[i]);
    dhps_cluster_map_destroy(owner_map_keep);
    etcd_cleanup(&efx);
    return rc;
}

/* Many inference threads on one client: per-thread rpc state, shared map/router/clock.
 * Each thread writes its own key range and reads it back (and others' ranges) while a
 * map reload happens underneath, and while one node flips between "not ready" (lookups
 * answered DHPS_E_NOTREADY, writes taken) and ready: with 2 replicas every lookup must
 * still be whole. Run under TSan in CI (label concurrency). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "dhps/client.h"
#include "fake_server.h"
#include "test_scale.h"

#define NNODES 3
#define NTHREADS 6
#define ROUNDS 40
#define BATCH 128
#define DIM 4

static dhps_client *g_client;
static _Atomic int g_errors;
static _Atomic int g_stop;       /* set once the map swap and the flips are done */
static _Atomic long g_rounds;    /* rounds done by all threads */
static _Atomic long g_updates;   /* updates sent by all threads */

static void row_of(uint64_t key, float *row)
{
    for (int d = 0; d < DIM; d++)
        row[d] = (float)(key % 4096) + (float)d;
}

static void *worker(void *arg)
{
    uint64_t base = (uint64_t)(uintptr_t)arg * 1000000 + 1;
    uint64_t keys[BATCH];
    float vals[BATCH * DIM], out[BATCH * DIM];
    uint64_t mask[BATCH / 64];
    /* at least ROUNDS rounds, and on until the main thread is done changing things under
     * the calls (its changes wait for rounds, not for time) */
    for (int r = 0; r < ROUNDS || !atomic_load(&g_stop); r++) {
        for (int i = 0; i < BATCH; i++) {
            keys[i] = base + (uint64_t)r * BATCH + (uint64_t)i;
            row_of(keys[i], vals + i * DIM);
        }
        dhps_client_result res;
        if (dhps_client_update(g_client, "t", keys, vals, BATCH, DIM, DHPS_FP32, 0,
                               r % 2 ? DHPS_ACK_QUORUM : DHPS_ACK_ALL, 0, NULL, &res) != 0)
            atomic_fetch_add(&g_errors, 1);
        atomic_fetch_add(&g_updates, 1);
        /* a quorum write may still be reaching the last replica: read with ALL-written
         * keys only (even rounds), and every round's keys after an ALL round */
        if (r % 2) {
            atomic_fetch_add(&g_rounds, 1);
            continue;
        }
        if (dhps_client_lookup(g_client, "t", keys, BATCH, out, DIM, DHPS_FP32, mask, 0,
                               &res) != 0 || res.found != BATCH)
            atomic_fetch_add(&g_errors, 1);
        for (int i = 0; i < BATCH; i++) {
            float want[DIM];
            row_of(keys[i], want);
            if (memcmp(want, out + i * DIM, sizeof want))
                atomic_fetch_add(&g_errors, 1);
        }
        atomic_fetch_add(&g_rounds, 1);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct fake_node nodes[NNODES];
    char dir[] = "/tmp/dhps_clthr_XXXXXX", path[96];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/map.json", dir);
    for (uint32_t i = 0; i < NNODES; i++)
        assert_int_equal(fake_start(&nodes[i], i, 0), 0);
    assert_int_equal(fake_write_map(nodes, NNODES, 128, 2, 1, false, path, NULL), 0);
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.map_path = path;
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.reload_interval_ms = 1;
    p.default_timeout_us = dhps_test_us(10000000); /* not under test: scaled */
    p.host = "h0"; /* route router */
    assert_int_equal(dhps_client_create(&p, &g_client), 0);
    pthread_t th[NTHREADS];
    for (uintptr_t t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, worker, (void *)t), 0);
    /* same placement, newer version: the threads swap maps under their calls; node 1
     * goes in and out of "not ready" meanwhile */
    /* each change waits for rounds done under the previous state (events, scaled) */
    atomic_store(&nodes[1].not_ready, 1);
    long r0 = atomic_load(&g_rounds);
    assert_true(DHPS_TEST_WAIT_FOR(atomic_load(&g_rounds) >= r0 + NTHREADS, 10000));
    assert_int_equal(fake_write_map(nodes, NNODES, 128, 2, 2, false, path, NULL), 0);
    for (int i = 0; i < 30; i++) {
        atomic_store(&nodes[1].not_ready, i % 2 == 0);
        r0 = atomic_load(&g_rounds);
        assert_true(DHPS_TEST_WAIT_FOR(atomic_load(&g_rounds) >= r0 + 2, 10000));
    }
    atomic_store(&nodes[1].not_ready, 0);
    atomic_store(&g_stop, 1);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    assert_int_equal(atomic_load(&g_errors), 0);
    dhps_client_stats st;
    dhps_client_stats_get(g_client, &st);
    assert_int_equal(st.threads, NTHREADS);
    assert_true(atomic_load(&g_updates) >= NTHREADS * ROUNDS);
    assert_int_equal(st.updates, atomic_load(&g_updates));
    assert_int_equal(st.partial, 0);
    dhps_client_node_stats ns;
    assert_int_equal(dhps_client_node_stats_get(g_client, 1, &ns), 0);
    printf("  node 1 answered \"not ready\" %llu times (client: %llu)\n",
           (unsigned long long)atomic_load(&nodes[1].not_ready_answers),
           (unsigned long long)ns.not_ready);
    assert_int_equal(dhps_client_map_version(g_client), 2);
    dhps_client_destroy(g_client);
    for (uint32_t i = 0; i < NNODES; i++)
        fake_free(&nodes[i]);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_threads)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

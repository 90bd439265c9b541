/* Concurrency: many threads pick, report, hedge and retry on one router at once. Counters
 * and state machines must stay exact (runs under TSan in CI). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>

#include "dhps/route.h"

#define THREADS 4
#define ITERS 20000
#define NODES 16

static uint64_t g_now = 1000000000ull;
static uint64_t tick_clock(void *arg)
{
    (void)arg;
    return __atomic_add_fetch(&g_now, 200, __ATOMIC_RELAXED); /* 200 ns per call */
}

struct worker {
    dhps_route *r;
    uint64_t seed, picks, hedges, retries;
    uint32_t slow_nodes; /* nodes 2 .. 2+slow_nodes-1 answer 10x late */
    int fail_from;       /* nodes 0 and 1 fail from this iteration on */
};

static void *work(void *arg)
{
    struct worker *w = arg;
    uint64_t x = w->seed;
    for (int i = 0; i < ITERS; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t set[3] = {(uint32_t)(x >> 20) % NODES, (uint32_t)(x >> 30) % NODES,
                           (uint32_t)(x >> 40) % NODES};
        dhps_route_choice c, h;
        if (dhps_route_pick(w->r, set, 3, NULL, 0, DHPS_ROUTE_PRIMARY, &c) != 0)
            continue;
        w->picks++;
        /* nodes 0 and 1 fail, every tier answers in its own time */
        bool failing = i >= w->fail_from;
        int out = c.node < 2 && failing ? DHPS_ROUTE_ERROR : DHPS_ROUTE_OK;
        uint64_t lat = 20000 + (x >> 58) * 1000;
        if (c.node >= 2 && c.node < 2 + w->slow_nodes)
            lat *= 10;
        if ((x & 15) == 0 && dhps_route_hedge_acquire(w->r, 0) == 0 &&
            dhps_route_pick(w->r, set, 3, &c.node, 1, DHPS_ROUTE_HEDGE, &h) == 0) {
            w->hedges++;
            w->picks++;
            dhps_route_report(w->r, &h, lat, DHPS_ROUTE_OK);
            dhps_route_report(w->r, &c, lat, DHPS_ROUTE_CANCELLED);
            continue;
        }
        dhps_route_report(w->r, &c, lat, out);
        if (out != DHPS_ROUTE_OK && dhps_route_retry_acquire(w->r, 0) == 0 &&
            dhps_route_pick(w->r, set, 3, &c.node, 1, DHPS_ROUTE_RETRY, &h) == 0) {
            w->retries++;
            w->picks++;
            dhps_route_report(w->r, &h, lat,
                              h.node < 2 && failing ? DHPS_ROUTE_ERROR : DHPS_ROUTE_OK);
        }
        if (i % 1000 == 0) { /* flap node 15 administratively */
            dhps_route_node_set_up(w->r, 15, (i / 1000) % 2);
            dhps_route_stats s;
            dhps_route_stats_get(w->r, &s);
        }
    }
    return NULL;
}

/* Runs THREADS workers on a 16-node router with max_ejection_share `share`; nodes 0 and
 * 1 fail from iteration `fail_from` on, `slow_nodes` more answer 10x late. Checks that every counter adds up and that
 * the breakers' states agree with the ejected count, which never passes the cap. */
static void run_threads(double share, uint32_t slow_nodes, int fail_from,
                        dhps_route_stats *out)
{
    dhps_route_params p;
    dhps_route_params_init(&p);
    p.clock_ns = tick_clock;
    p.max_nodes = NODES;
    p.max_ejection_share = share;
    dhps_route_labels local = {"h0", "p0", "a0"};
    dhps_route *r;
    assert_int_equal(dhps_route_create(&p, &local, &r), 0);
    for (uint32_t i = 0; i < NODES; i++) {
        char host[16], pod[16], az[16];
        snprintf(host, sizeof host, "h%u", i);
        snprintf(pod, sizeof pod, "p%u", i % 4);
        snprintf(az, sizeof az, "a%u", i % 2);
        dhps_route_labels l = {host, pod, az};
        assert_int_equal(dhps_route_node_set(r, i, &l), 0);
    }
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){.r = r, .seed = 1000u + (uint64_t)t, .slow_nodes = slow_nodes,
                              .fail_from = fail_from};
        assert_int_equal(pthread_create(&th[t], NULL, work, &w[t]), 0);
    }
    uint64_t picks = 0, hedges = 0, retries = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        picks += w[t].picks;
        hedges += w[t].hedges;
        retries += w[t].retries;
    }
    dhps_route_node_set_up(r, 15, true);
    dhps_route_stats s;
    assert_int_equal(dhps_route_stats_get(r, &s), 0);
    assert_int_equal(s.picks, picks);
    assert_int_equal(s.hedge_picks, hedges);
    assert_int_equal(s.retry_picks, retries);
    assert_int_equal(s.reports_ok + s.reports_error + s.reports_timeout + s.reports_cancelled,
                     picks);
    assert_int_equal(s.down, 0);
    uint64_t node_picks = 0;
    uint32_t not_closed = 0;
    for (uint32_t i = 0; i < NODES; i++) {
        dhps_route_node_stats ns;
        assert_int_equal(dhps_route_node_stats_get(r, i, &ns), 0);
        assert_int_equal(ns.in_flight, 0);
        node_picks += ns.picks;
        not_closed += ns.breaker != DHPS_ROUTE_CLOSED;
    }
    assert_int_equal(node_picks, picks);
    assert_int_equal(not_closed, s.ejected);
    uint32_t cap = (uint32_t)(share * NODES);
    assert_true(s.ejected <= (cap < 1 ? 1 : cap));
    assert_true(s.breaker_opened > 0);
    assert_true(hedges <= (uint64_t)(0.05 * (double)s.primary) + 10 + 1);
    print_message("  share %.3f, %u slow: opened %llu (errors %llu, slow %llu, probe %llu), "
                  "capped %llu, displaced %llu\n", share, slow_nodes,
                  (unsigned long long)s.breaker_opened, (unsigned long long)s.opened_errors,
                  (unsigned long long)s.opened_slow, (unsigned long long)s.opened_probe,
                  (unsigned long long)s.ejection_capped, (unsigned long long)s.displaced);
    *out = s;
    dhps_route_destroy(r);
}

static void threads_keep_counters_exact(void **state)
{
    (void)state;
    dhps_route_stats s;
    run_threads(0.5, 0, 0, &s);
}

/* Slow nodes fill a cap of two, then two nodes start failing and take their places:
 * displacements (a failing node closing a slow one's breaker) racing with openings and
 * probes never leave the ejected count off or past the cap. */
static void threads_displace_under_cap(void **state)
{
    (void)state;
    dhps_route_stats s;
    run_threads(0.125, 4, ITERS / 2, &s);
    assert_true(s.opened_slow > 0);
    assert_true(s.displaced > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(threads_keep_counters_exact),
                                       cmocka_unit_test(threads_displace_under_cap)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Tests of the route library through its public API, on a simulated clock with fixed
 * seeds: tiers and labels, spill and panic, P2C, hedging, retries, counters. The dynamic
 * weights are in test_route_weights.c, the circuit breakers in test_route_breaker.c. */
#include "route_test.h"

static void labels_to_tiers(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    add(r, 0, DHPS_ROUTE_HOST);
    add(r, 1, DHPS_ROUTE_POD);
    add(r, 2, DHPS_ROUTE_AZ);
    add(r, 3, DHPS_ROUTE_REMOTE);
    dhps_route_labels same_pod_name_other_az = {"x", "p1", "a9"};
    assert_int_equal(dhps_route_node_set(r, 4, &same_pod_name_other_az), 0);
    assert_int_equal(dhps_route_node_tier(r, 4), DHPS_ROUTE_REMOTE);
    dhps_route_labels unknown = {NULL, NULL, NULL};
    assert_int_equal(dhps_route_node_set(r, 5, &unknown), 0);
    assert_int_equal(dhps_route_node_tier(r, 5), DHPS_ROUTE_REMOTE);
    /* relabel keeps the node */
    add(r, 5, DHPS_ROUTE_POD);
    assert_int_equal(dhps_route_node_tier(r, 99), DHPS_E_NOTFOUND);
    assert_int_equal(dhps_route_node_tier(r, 1u << 30), -EINVAL);
    assert_string_equal(dhps_route_tier_name(DHPS_ROUTE_AZ), "az");
    dhps_route_destroy(r);
}

static void bad_arguments(void **state)
{
    (void)state;
    dhps_route_params p;
    dhps_route_params_init(&p);
    dhps_route *r = NULL;
    p.overprovision = 0.9;
    assert_int_equal(dhps_route_create(&p, &LOCAL, &r), -EINVAL);
    dhps_route_params_init(&p);
    p.panic_threshold = 1.5;
    assert_int_equal(dhps_route_create(&p, &LOCAL, &r), -EINVAL);
    dhps_route_params_init(&p);
    char big[100];
    memset(big, 'x', sizeof big - 1);
    big[99] = 0;
    dhps_route_labels l = {big, "p", "a"};
    assert_int_equal(dhps_route_create(&p, &l, &r), DHPS_E_TOOBIG);
    assert_null(r);
    assert_int_equal(dhps_route_create(NULL, &LOCAL, &r), -EINVAL);

    r = make(NULL);
    assert_int_equal(dhps_route_node_set(r, 0, &l), DHPS_E_TOOBIG);
    assert_int_equal(dhps_route_node_set(r, 4096, &LOCAL), -EINVAL);
    uint32_t reps[2] = {7, 8};
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, 0, NULL, 0, 0, &c), -EINVAL);
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 7, &c), -EINVAL);
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), DHPS_E_UNREACHABLE);
    uint32_t many[DHPS_ROUTE_MAX_REPLICAS + 1] = {0};
    assert_int_equal(dhps_route_pick(r, many, DHPS_ROUTE_MAX_REPLICAS + 1, NULL, 0, 0, &c),
                     DHPS_E_TOOBIG);
    add(r, 7, DHPS_ROUTE_POD);
    assert_int_equal(dhps_route_pick(r, reps, 2, reps, 1, 0, &c), DHPS_E_UNREACHABLE);
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
    assert_int_equal(c.node, 7);
    assert_int_equal(dhps_route_report(r, &c, 10, 9), -EINVAL);
    assert_int_equal(dhps_route_node_remove(r, 7), 0);
    assert_int_equal(dhps_route_node_remove(r, 7), DHPS_E_NOTFOUND);
    assert_int_equal(dhps_route_report(r, &c, 10, DHPS_ROUTE_OK), DHPS_E_NOTFOUND);
    dhps_route_stats s;
    assert_int_equal(dhps_route_stats_get(r, &s), 0);
    assert_int_equal(s.unreachable, 2);
    assert_int_equal(s.nodes, 0);
    dhps_route_destroy(r);
    dhps_route_destroy(NULL);
}

static void prefers_best_tier(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    for (uint32_t i = 0; i < 4; i++)
        add(r, i, (int)i);
    uint32_t reps[4] = {3, 2, 1, 0};
    for (int i = 0; i < 2000; i++) {
        g_now += 10 * US;
        dhps_route_choice c = pick_ok(r, reps, 4, 0);
        assert_int_equal(c.tier, DHPS_ROUTE_HOST);
        assert_int_equal(c.flags, 0);
    }
    /* excluding the host replica (already tried): the next tier, not a spill */
    uint32_t ex[2] = {0, 1};
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, 4, ex, 1, DHPS_ROUTE_RETRY, &c), 0);
    assert_int_equal(c.tier, DHPS_ROUTE_POD);
    assert_int_equal(c.flags, 0);
    assert_int_equal(dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK), 0);
    assert_int_equal(dhps_route_pick(r, reps, 4, ex, 2, DHPS_ROUTE_RETRY, &c), 0);
    assert_int_equal(c.tier, DHPS_ROUTE_AZ);
    assert_int_equal(dhps_route_report(r, &c, 60 * US, DHPS_ROUTE_OK), 0);
    /* host down: all traffic to the pod, flagged as spill */
    assert_int_equal(dhps_route_node_set_up(r, 0, false), 0);
    for (int i = 0; i < 100; i++) {
        g_now += 10 * US;
        c = pick_ok(r, reps, 4, 0);
        assert_int_equal(c.tier, DHPS_ROUTE_POD);
        assert_true(c.flags & DHPS_ROUTE_SPILL);
    }
    dhps_route_destroy(r);
}

/* 10 replicas in the pod, 10 in the az; k pod replicas down. */
static double spill_share(int down)
{
    dhps_route *r = make(NULL);
    uint32_t reps[20];
    for (uint32_t i = 0; i < 20; i++) {
        add(r, i, i < 10 ? DHPS_ROUTE_POD : DHPS_ROUTE_AZ);
        reps[i] = i;
    }
    for (int i = 0; i < down; i++)
        assert_int_equal(dhps_route_node_set_up(r, (uint32_t)i, false), 0);
    int n = 20000, spills = 0;
    for (int i = 0; i < n; i++) {
        g_now += 10 * US;
        dhps_route_choice c = pick_ok(r, reps, 20, 0);
        assert_false(c.flags & DHPS_ROUTE_PANIC);
        if (c.tier == DHPS_ROUTE_AZ) {
            assert_true(c.flags & DHPS_ROUTE_SPILL);
            spills++;
        } else {
            assert_true(c.node >= (uint32_t)down);
        }
    }
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.spills, spills);
    assert_int_equal(s.tier[DHPS_ROUTE_AZ].spills, spills);
    dhps_route_destroy(r);
    return (double)spills / n;
}

static void spill_follows_overprovision(void **state)
{
    (void)state;
    /* healthy share h carries min(1, 1.4 h) */
    assert_true(spill_share(0) == 0.0);
    assert_true(spill_share(2) == 0.0);                /* h 0.8: 1.12 -> no spill */
    assert_true(fabs(spill_share(3) - 0.02) < 0.01);   /* h 0.7: 0.98 */
    assert_true(fabs(spill_share(5) - 0.30) < 0.02);   /* h 0.5: 0.70 */
    assert_true(fabs(spill_share(8) - 0.72) < 0.02);   /* h 0.2: 0.28 */
    assert_true(spill_share(10) == 1.0);
}

static void panic_spreads_over_all(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[10];
    for (uint32_t i = 0; i < 10; i++) {
        add(r, i, DHPS_ROUTE_POD);
        reps[i] = i;
    }
    for (uint32_t i = 0; i < 4; i++)
        dhps_route_node_set_up(r, i, false);
    int hits[10] = {0};
    for (int i = 0; i < 2000; i++) {
        dhps_route_choice c;
        assert_int_equal(dhps_route_pick(r, reps, 10, NULL, 0, 0, &c), 0);
        assert_int_equal(c.flags, 0);
        hits[c.node]++;
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(hits[i], 0);
    /* 6 of 10 down: healthy share 0.4 < 0.5 -> panic, every replica used */
    for (uint32_t i = 4; i < 6; i++)
        dhps_route_node_set_up(r, i, false);
    memset(hits, 0, sizeof hits);
    for (int i = 0; i < 5000; i++) {
        dhps_route_choice c;
        assert_int_equal(dhps_route_pick(r, reps, 10, NULL, 0, 0, &c), 0);
        assert_true(c.flags & DHPS_ROUTE_PANIC);
        hits[c.node]++;
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
    }
    for (int i = 0; i < 10; i++)
        assert_true(hits[i] > 250);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.panics, 5000);
    assert_int_equal(s.down, 6);
    /* no panic overall but a shard whose replicas are all down: no_healthy */
    for (uint32_t i = 0; i < 6; i++)
        dhps_route_node_set_up(r, i, true);
    dhps_route_node_set_up(r, 0, false);
    dhps_route_node_set_up(r, 1, false);
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
    assert_int_equal(c.flags, DHPS_ROUTE_NO_HEALTHY);
    dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.no_healthy, 1);
    dhps_route_destroy(r);
}

static void p2c_avoids_slow_and_loaded(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[3] = {0, 1, 2};
    for (uint32_t i = 0; i < 3; i++)
        add(r, i, DHPS_ROUTE_POD);
    int hits[3] = {0};
    for (int i = 0; i < 30000; i++) {
        g_now += 5 * US;
        dhps_route_choice c;
        assert_int_equal(dhps_route_pick(r, reps, 3, NULL, 0, 0, &c), 0);
        hits[c.node]++;
        uint64_t lat = (c.node == 0 ? 200 : 20) * US + (uint64_t)(i % 7) * US;
        dhps_route_report(r, &c, lat, DHPS_ROUTE_OK);
    }
    /* the 10x slower node gets well under its fair third; under 10 % of picks */
    assert_true(hits[0] < 3000);
    /* idle, its cost decays (tau 1 s): after a few seconds it is tried again */
    g_now += 3 * SEC;
    int again = 0;
    for (int i = 0; i < 10; i++)
        again += pick_ok(r, reps, 3, 20 * US).node == 0;
    assert_true(again > 0);
    dhps_route_node_stats ns;
    dhps_route_destroy(r);

    /* equal latency, one node with 20 requests outstanding: it is avoided */
    r = make(NULL);
    for (uint32_t i = 0; i < 2; i++)
        add(r, i, DHPS_ROUTE_POD);
    for (int i = 0; i < 100; i++)
        pick_ok(r, reps, 2, 20 * US);
    dhps_route_choice held[20];
    int nh = 0;
    while (nh < 20) {
        dhps_route_choice c;
        assert_int_equal(dhps_route_pick(r, reps, 1, NULL, 0, 0, &c), 0);
        held[nh++] = c;
    }
    int to_loaded = 0;
    for (int i = 0; i < 1000; i++) {
        g_now += 1 * US;
        dhps_route_choice c = pick_ok(r, reps, 2, 20 * US);
        to_loaded += c.node == 0;
    }
    assert_true(to_loaded < 50);
    for (int i = 0; i < nh; i++)
        dhps_route_report(r, &held[i], 20 * US, DHPS_ROUTE_OK);
    assert_int_equal(dhps_route_node_stats_get(r, 0, &ns), 0);
    assert_int_equal(ns.in_flight, 0);
    dhps_route_destroy(r);
}

static void hedge_delay_tracks_p95(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[2] = {0, 1};
    add(r, 0, DHPS_ROUTE_POD);
    add(r, 1, DHPS_ROUTE_POD);
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
    assert_int_equal(dhps_route_hedge_delay(r, &c), 1 * MS); /* no samples: default */
    dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_CANCELLED);
    uint64_t x = 7;
    for (int i = 0; i < 900; i++) { /* uniform 10..110 us: p95 = 105 us */
        g_now += 1 * US;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        pick_ok(r, reps, 2, 10 * US + (x >> 33) % (100 * US));
    }
    assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
    double d = (double)dhps_route_hedge_delay(r, &c);
    assert_true(fabs(d - 105e3) < 0.1 * 105e3);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_true(fabs((double)s.tier[DHPS_ROUTE_POD].p50_ns - 60e3) < 0.15 * 60e3);
    /* latencies shift to 1 ms: after the histogram decays the delay follows */
    for (int i = 0; i < 5000; i++) {
        g_now += 1 * MS;
        pick_ok(r, reps, 2, 1 * MS);
    }
    d = (double)dhps_route_hedge_delay(r, &c);
    assert_true(fabs(d - 1e6) < 0.2e6);
    dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
    dhps_route_destroy(r);
}

static void hedge_budget(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[2] = {0, 1};
    add(r, 0, DHPS_ROUTE_POD);
    add(r, 1, DHPS_ROUTE_POD);
    int n = 20000, granted = 0, won = 0;
    for (int i = 0; i < n; i++) {
        g_now += 1 * US; /* 20 ms in all: the 1/s floor adds nothing */
        dhps_route_choice c, h;
        assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
        if (dhps_route_hedge_acquire(r, g_now + 1 * MS) == 0) {
            granted++;
            uint32_t ex = c.node;
            assert_int_equal(dhps_route_pick(r, reps, 2, &ex, 1, DHPS_ROUTE_HEDGE, &h), 0);
            assert_int_not_equal(h.node, c.node);
            /* every other hedge answers first */
            bool hedge_first = granted % 2;
            dhps_route_report(r, &h, 20 * US, hedge_first ? DHPS_ROUTE_OK : DHPS_ROUTE_CANCELLED);
            dhps_route_report(r, &c, 30 * US, hedge_first ? DHPS_ROUTE_CANCELLED : DHPS_ROUTE_OK);
            won += hedge_first;
        } else {
            dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
        }
    }
    /* <= 5 % of requests + the burst of 10 */
    assert_true(granted <= n / 20 + 10);
    assert_true(granted >= n / 20);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.hedge_sent, granted);
    assert_int_equal(s.hedge_picks, granted);
    assert_int_equal(s.hedge_budget_exhausted, n - granted);
    assert_int_equal(s.hedge_won, won);
    assert_int_equal(s.hedge_lost, granted - won);
    assert_int_equal(s.reports_cancelled, granted);
    assert_int_equal(dhps_route_hedge_acquire(r, g_now), DHPS_E_TIMEOUT);
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.hedge_deadline, 1);
    /* the floor refills with time: 1 token per second */
    g_now += 3 * SEC;
    int more = 0;
    while (dhps_route_hedge_acquire(r, 0) == 0)
        more++;
    assert_int_equal(more, 3);
    dhps_route_destroy(r);
}

static void retry_budget_and_deadline(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[3] = {0, 1, 2};
    for (uint32_t i = 0; i < 3; i++)
        add(r, i, DHPS_ROUTE_POD);
    int n = 10000, retried = 0;
    for (int i = 0; i < n; i++) {
        g_now += 1 * US; /* 10 ms: the 10/s floor adds 0.1 token */
        dhps_route_choice c, t;
        assert_int_equal(dhps_route_pick(r, reps, 3, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 20 * US, i % 2 ? DHPS_ROUTE_OK : DHPS_ROUTE_ERROR);
        if (i % 2 == 0 && dhps_route_retry_acquire(r, g_now + 1 * MS) == 0) {
            retried++;
            assert_int_equal(dhps_route_pick(r, reps, 3, &c.node, 1, DHPS_ROUTE_RETRY, &t), 0);
            assert_int_not_equal(t.node, c.node);
            dhps_route_report(r, &t, 20 * US, DHPS_ROUTE_OK);
        }
    }
    /* <= 10 % of requests + burst 20 (+ the floor's 0.1) */
    assert_true(retried <= n / 10 + 20);
    assert_true(retried >= n / 10);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.retries, retried);
    assert_int_equal(s.retry_picks, retried);
    assert_int_equal(s.retry_budget_exhausted, n / 2 - retried);
    /* deadline: a retry needs at least the fastest tier's median (~20 us) of room */
    g_now += 1 * SEC; /* refill 10 tokens */
    assert_int_equal(dhps_route_retry_acquire(r, g_now - 1), DHPS_E_TIMEOUT);
    assert_int_equal(dhps_route_retry_acquire(r, g_now + 5 * US), DHPS_E_TIMEOUT);
    assert_int_equal(dhps_route_retry_acquire(r, g_now + 100 * US), 0);
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.retry_deadline, 2);
    dhps_route_destroy(r);
}

static void counters_match_decisions(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[12];
    for (uint32_t i = 0; i < 12; i++) {
        add(r, i, (int)(i % 4));
        reps[i] = i;
    }
    uint64_t picks = 0, spills = 0, panics = 0, probes = 0, ok = 0, err = 0, tmo = 0;
    uint64_t tier_picks[4] = {0}, node_picks[12] = {0}, kinds[3] = {0};
    uint64_t x = 99;
    for (int i = 0; i < 20000; i++) {
        g_now += 200 * US; /* 4 s: node 5's breaker opens, probes, re-opens */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t nrep = 1 + (x >> 40) % 12;
        uint32_t off = (uint32_t)((x >> 20) % 12);
        uint32_t set[12];
        for (size_t k = 0; k < nrep; k++)
            set[k] = reps[(off + k) % 12];
        int kind = (int)((x >> 50) % 3);
        dhps_route_choice c;
        int rc = dhps_route_pick(r, set, nrep, NULL, 0, kind, &c);
        assert_int_equal(rc, 0);
        picks++;
        kinds[kind]++;
        tier_picks[c.tier]++;
        node_picks[c.node]++;
        spills += !!(c.flags & DHPS_ROUTE_SPILL);
        panics += !!(c.flags & DHPS_ROUTE_PANIC);
        probes += !!(c.flags & DHPS_ROUTE_PROBE);
        /* node 5 fails, node 6 times out sometimes */
        int out = c.node == 5 ? DHPS_ROUTE_ERROR
                  : (c.node == 6 && (x & 3) == 0) ? DHPS_ROUTE_TIMEOUT : DHPS_ROUTE_OK;
        ok += out == DHPS_ROUTE_OK;
        err += out == DHPS_ROUTE_ERROR;
        tmo += out == DHPS_ROUTE_TIMEOUT;
        dhps_route_report(r, &c, TIER_LAT[c.tier], out);
    }
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.picks, picks);
    assert_int_equal(s.primary, kinds[0]);
    assert_int_equal(s.hedge_picks, kinds[1]);
    assert_int_equal(s.retry_picks, kinds[2]);
    assert_int_equal(s.spills, spills);
    assert_int_equal(s.panics, panics);
    assert_int_equal(s.probes, probes);
    assert_true(probes > 0);
    assert_true(spills > 0);
    assert_int_equal(s.reports_ok, ok);
    assert_int_equal(s.reports_error, err);
    assert_int_equal(s.reports_timeout, tmo);
    uint64_t tsp = 0;
    for (int t = 0; t < 4; t++) {
        assert_int_equal(s.tier[t].picks, tier_picks[t]);
        tsp += s.tier[t].spills;
    }
    assert_int_equal(tsp, spills);
    for (uint32_t i = 0; i < 12; i++) {
        dhps_route_node_stats ns;
        dhps_route_node_stats_get(r, i, &ns);
        assert_int_equal(ns.picks, node_picks[i]);
        assert_int_equal(ns.in_flight, 0);
        assert_int_equal(ns.ok + ns.errors + ns.timeouts, node_picks[i]);
    }
    assert_true(s.breaker_opened >= 1);
    dhps_route_destroy(r);
}

static void deterministic_for_a_seed(void **state)
{
    (void)state;
    uint32_t seq[2][500];
    for (int run = 0; run < 2; run++) {
        dhps_route *r = make(NULL);
        uint32_t reps[6];
        for (uint32_t i = 0; i < 6; i++) {
            add(r, i, DHPS_ROUTE_AZ);
            reps[i] = i;
        }
        for (int i = 0; i < 500; i++) {
            g_now += 3 * US;
            seq[run][i] = pick_ok(r, reps, 6, (20 + (uint64_t)(i % 13)) * US).node;
        }
        dhps_route_destroy(r);
    }
    assert_memory_equal(seq[0], seq[1], sizeof seq[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(labels_to_tiers),
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(prefers_best_tier),
        cmocka_unit_test(spill_follows_overprovision),
        cmocka_unit_test(panic_spreads_over_all),
        cmocka_unit_test(p2c_avoids_slow_and_loaded),
        cmocka_unit_test(hedge_delay_tracks_p95),
        cmocka_unit_test(hedge_budget),
        cmocka_unit_test(retry_budget_and_deadline),
        cmocka_unit_test(counters_match_decisions),
        cmocka_unit_test(deterministic_for_a_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

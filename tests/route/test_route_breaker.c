/* The route's per-node circuit breakers through its public API, on a simulated clock:
 * backoff and probes, ejection of slow nodes (not while faster than the next tier), the
 * ejection cap, and errors displacing slow ejections under the cap. */
#include "route_test.h"

static void breaker_backoff_and_probes(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[2] = {0, 1};
    add(r, 0, DHPS_ROUTE_POD);
    add(r, 1, DHPS_ROUTE_POD);
    add(r, 2, DHPS_ROUTE_AZ); /* a third node so one ejection stays under the cap */
    add(r, 3, DHPS_ROUTE_AZ);
    dhps_route_choice c;
    /* node 0 fails 5 times in a row -> open for 1 s */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(dhps_route_pick(r, reps, 1, NULL, 0, 0, &c), 0);
        assert_int_equal(c.node, 0);
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_ERROR);
    }
    dhps_route_node_stats ns;
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    assert_int_equal(ns.open_until_ns, g_now + 1 * SEC);
    for (int i = 0; i < 100; i++) {
        g_now += 1 * MS;
        c = pick_ok(r, reps, 2, 20 * US);
        assert_int_equal(c.node, 1);
    }
    uint64_t expect_backoff = 2 * SEC;
    for (int round = 0; round < 2; round++) {
        /* isolation ends -> half-open: one probe, it fails -> open, backoff doubled */
        g_now = ns.open_until_ns;
        assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
        assert_int_equal(c.node, 0);
        assert_true(c.flags & DHPS_ROUTE_PROBE);
        dhps_route_choice other;
        assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &other), 0);
        assert_int_equal(other.node, 1); /* one probe at a time */
        dhps_route_report(r, &other, 20 * US, DHPS_ROUTE_OK);
        dhps_route_report(r, &c, 1 * MS, DHPS_ROUTE_TIMEOUT);
        dhps_route_node_stats_get(r, 0, &ns);
        assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
        assert_int_equal(ns.open_until_ns, g_now + expect_backoff);
        g_now += expect_backoff - 1;
        assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
        assert_int_equal(c.node, 1);
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
        expect_backoff *= 2;
    }
    /* after 4 s: three ok probes close it */
    g_now = ns.open_until_ns;
    for (int i = 0; i < 3; i++) {
        g_now += 1 * US;
        assert_int_equal(dhps_route_pick(r, reps, 2, NULL, 0, 0, &c), 0);
        assert_int_equal(c.node, 0);
        assert_true(c.flags & DHPS_ROUTE_PROBE);
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_OK);
    }
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    assert_int_equal(ns.ejections, 3);
    assert_int_equal(ns.backoff_ns, 8 * SEC); /* remembered until backoff_reset */
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.breaker_opened, 3);
    assert_int_equal(s.opened_errors, 1); /* 5 in a row */
    assert_int_equal(s.opened_probe, 2);  /* two failed probes */
    assert_int_equal(s.opened_slow, 0);
    assert_int_equal(s.breaker_half_opened, 3);
    assert_int_equal(s.breaker_closed, 1);
    assert_int_equal(s.probes, 5);
    assert_int_equal(s.ejected, 0);
    /* window rule: 50 % errors over >= 20 requests opens it, without 5 in a row */
    for (int i = 0; i < 40; i++) {
        g_now += 1 * MS;
        assert_int_equal(dhps_route_pick(r, reps, 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 20 * US, i % 2 ? DHPS_ROUTE_ERROR : DHPS_ROUTE_OK);
    }
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.opened_errors, 2);
    /* after backoff_reset (5 min closed) the backoff starts again from 1 s: checked via
     * node stats of a node that never opened */
    dhps_route_node_stats_get(r, 1, &ns);
    assert_int_equal(ns.backoff_ns, 1 * SEC);
    dhps_route_destroy(r);
}

/* Four POD nodes 0..3 that learned a 20 us baseline, then, in a fresh breaker window,
 * node 0 alone answering 30 calls in 200 us (10x slow). */
static dhps_route *pod_node0_slowed(dhps_route_params *p)
{
    dhps_route *r = make(p);
    const uint32_t reps[4] = {0, 1, 2, 3};
    for (uint32_t i = 0; i < 4; i++)
        add(r, i, DHPS_ROUTE_POD);
    for (int i = 0; i < 4000; i++) { /* learn the 20 us baseline */
        g_now += 10 * US;
        pick_ok(r, reps, 4, 20 * US);
    }
    g_now += 1 * SEC; /* a fresh breaker window */
    dhps_route_choice c;
    for (int i = 0; i < 30; i++) {
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, reps, 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
    }
    return r;
}

static void slow_node_is_ejected(void **state)
{
    (void)state;
    dhps_route *r = pod_node0_slowed(NULL);
    dhps_route_node_stats ns;
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.opened_slow, 1); /* told apart from errors */
    assert_int_equal(s.opened_errors, 0);
    dhps_route_destroy(r);
}

/* A node answering faster than the next tier answers now is not "slow" to the breaker,
 * whatever its baseline says: isolating it would move its traffic to something slower.
 * Here the AZ was always slow (so no rise to take out), the POD learned a 20 us
 * baseline, then answers in 200 us (10x): kept while the AZ answers in 400 us, ejected
 * once the AZ answers in 100 us. */
static void not_slow_while_faster_than_next(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t pod[2] = {0, 1}, az[2] = {2, 3}, n0[1] = {0};
    add(r, 0, DHPS_ROUTE_POD);
    add(r, 1, DHPS_ROUTE_POD);
    add(r, 2, DHPS_ROUTE_AZ);
    add(r, 3, DHPS_ROUTE_AZ);
    for (int i = 0; i < 2000; i++) { /* the POD learns 20 us; the AZ answers in 400 us */
        g_now += 100 * US;
        pick_ok(r, pod, 2, 20 * US);
        if (i % 10 == 0)
            pick_ok(r, az, 2, 400 * US);
    }
    g_now += 1 * SEC; /* a fresh breaker window */
    for (int i = 0; i < 30; i++) {
        g_now += 1 * MS;
        pick_ok(r, n0, 1, 200 * US);
        pick_ok(r, az, 2, 400 * US);
    }
    dhps_route_node_stats ns;
    dhps_route_stats s;
    dhps_route_node_stats_get(r, 0, &ns);
    dhps_route_stats_get(r, &s);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    assert_int_equal(s.opened_slow, 0);
    for (int i = 0; i < 1000; i++) { /* the AZ speeds up to 100 us */
        g_now += 10 * MS;
        pick_ok(r, az, 2, 100 * US);
        if (i % 10 == 0)
            pick_ok(r, pod, 2, 20 * US);
    }
    g_now += 1 * SEC;
    for (int i = 0; i < 30; i++) {
        g_now += 1 * MS;
        dhps_route_choice c;
        if (dhps_route_pick(r, n0, 1, NULL, 0, 0, &c) == 0)
            dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
        pick_ok(r, az, 2, 100 * US);
    }
    dhps_route_node_stats_get(r, 0, &ns);
    dhps_route_stats_get(r, &s);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    assert_int_equal(s.opened_slow, 1);
    dhps_route_destroy(r);
}

static void ejection_cap(void **state)
{
    (void)state;
    dhps_route_params p;
    dhps_route_params_init(&p);
    p.max_ejection_share = 0.3;
    dhps_route *r = make(&p);
    uint32_t reps[10];
    for (uint32_t i = 0; i < 10; i++) {
        add(r, i, DHPS_ROUTE_POD);
        reps[i] = i;
    }
    for (uint32_t i = 0; i < 10; i++)
        for (int k = 0; k < 5; k++) {
            dhps_route_choice c;
            assert_int_equal(dhps_route_pick(r, &reps[i], 1, NULL, 0, 0, &c), 0);
            dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_ERROR);
        }
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.ejected, 3);
    assert_int_equal(s.breaker_opened, 3);
    assert_int_equal(s.ejection_capped, 7);
    int open = 0;
    for (uint32_t i = 0; i < 10; i++) {
        dhps_route_node_stats ns;
        dhps_route_node_stats_get(r, i, &ns);
        open += ns.breaker == DHPS_ROUTE_OPEN;
    }
    assert_int_equal(open, 3);
    dhps_route_destroy(r);
}

/* Errors outrank slowness under the ejection cap: with the cap full of a node isolated
 * for slow answers (here through a probe that answered late, so the reason survives
 * half-open), a node that fails every call takes its place (counted as `displaced`, the
 * slow node closed), while a failing node never displaces one isolated for errors and a
 * slow node never displaces anything. */
static void errors_displace_slow_under_cap(void **state)
{
    (void)state;
    dhps_route_params p;
    dhps_route_params_init(&p);
    p.max_ejection_share = 0.25; /* 4 nodes: one ejection */
    dhps_route *r = pod_node0_slowed(&p); /* node 0 isolated for slowness */
    const uint32_t reps[4] = {0, 1, 2, 3};
    dhps_route_choice c;
    dhps_route_node_stats ns;
    dhps_route_stats s;
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    g_now = ns.open_until_ns; /* half-open: the probe answers, late -> open again */
    assert_int_equal(dhps_route_pick(r, &reps[0], 1, NULL, 0, 0, &c), 0);
    assert_true(c.flags & DHPS_ROUTE_PROBE);
    dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.opened_slow, 1);
    assert_int_equal(s.opened_probe, 1);
    assert_int_equal(s.ejected, 1);
    /* node 1 fails 5 in a row: the cap is full, node 0 (slow) makes room */
    for (int i = 0; i < 5; i++) {
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, &reps[1], 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_ERROR);
    }
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.displaced, 1);
    assert_int_equal(s.ejection_capped, 0);
    assert_int_equal(s.opened_errors, 1);
    assert_int_equal(s.ejected, 1);
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    dhps_route_node_stats_get(r, 1, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    /* node 2 fails too: node 1 was isolated for errors, so the cap holds */
    for (int i = 0; i < 5; i++) {
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, &reps[2], 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 20 * US, DHPS_ROUTE_ERROR);
    }
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.displaced, 1);
    assert_int_equal(s.ejection_capped, 1);
    dhps_route_node_stats_get(r, 2, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    /* node 0 still slow: a slow opening is capped and displaces nothing */
    g_now += 1 * SEC;
    for (int i = 0; i < 30; i++) {
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, &reps[0], 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
    }
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.displaced, 1);
    assert_true(s.ejection_capped >= 2);
    assert_int_equal(s.opened_slow, 1);
    assert_int_equal(s.ejected, 1);
    dhps_route_node_stats_get(r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    dhps_route_node_stats_get(r, 1, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    dhps_route_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(breaker_backoff_and_probes),
        cmocka_unit_test(slow_node_is_ejected),
        cmocka_unit_test(not_slow_while_faster_than_next),
        cmocka_unit_test(ejection_cap),
        cmocka_unit_test(errors_displace_slow_under_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

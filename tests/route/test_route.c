/* Tests of the route library through its public API, on a simulated clock with fixed
 * seeds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/route.h"

#define US 1000ull
#define MS 1000000ull
#define SEC 1000000000ull

static uint64_t g_now;
static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return g_now;
}

static const dhps_route_labels LOCAL = {"h1", "p1", "a1"};

static dhps_route *make(dhps_route_params *p)
{
    dhps_route_params d;
    if (!p) {
        dhps_route_params_init(&d);
        p = &d;
    }
    p->clock_ns = fake_clock;
    p->clock_arg = NULL;
    g_now = 1 * SEC;
    dhps_route *r = NULL;
    assert_int_equal(dhps_route_create(p, &LOCAL, &r), 0);
    return r;
}

/* Add a node in a tier: tier 0 host h1, 1 pod p1, 2 az a1/p2, 3 az a2. */
static void add(dhps_route *r, uint32_t id, int tier)
{
    char host[32];
    snprintf(host, sizeof host, "n%u", id);
    dhps_route_labels l = {host, "p1", "a1"};
    if (tier == DHPS_ROUTE_HOST)
        l.host = "h1";
    else if (tier == DHPS_ROUTE_AZ)
        l.pod = "p2";
    else if (tier == DHPS_ROUTE_REMOTE)
        l.az = "a2";
    assert_int_equal(dhps_route_node_set(r, id, &l), 0);
    assert_int_equal(dhps_route_node_tier(r, id), tier);
}

static const uint64_t TIER_LAT[4] = {5 * US, 20 * US, 60 * US, 500 * US};

/* One pick + immediate OK report with the tier's latency; returns the choice. */
static dhps_route_choice pick_ok(dhps_route *r, const uint32_t *reps, size_t n, uint64_t lat)
{
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, n, NULL, 0, DHPS_ROUTE_PRIMARY, &c), 0);
    assert_int_equal(dhps_route_report(r, &c, lat ? lat : TIER_LAT[c.tier], DHPS_ROUTE_OK),
                     0);
    return c;
}

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

/* Share of picks that stay in the pod during [t, t+window), pod latency `pod_lat`. */
static double run_window(dhps_route *r, const uint32_t *reps, uint64_t window,
                         uint64_t pod_lat, uint64_t *seq)
{
    int n = 0, pod = 0;
    for (uint64_t end = g_now + window; g_now < end; g_now += 50 * US) {
        dhps_route_choice c;
        assert_int_equal(dhps_route_pick(r, reps, 8, NULL, 0, 0, &c), 0);
        uint64_t jitter = (*seq = *seq * 6364136223846793005ull + 1) >> 61; /* 0..7 us */
        uint64_t lat = (c.tier == DHPS_ROUTE_POD ? pod_lat : 60 * US) + jitter * US;
        dhps_route_report(r, &c, lat, DHPS_ROUTE_OK);
        n++;
        pod += c.tier == DHPS_ROUTE_POD;
        /* keep the az measured, as other shards' traffic would */
        if (n % 20 == 0) {
            dhps_route_choice a;
            assert_int_equal(dhps_route_pick(r, reps, 8, reps, 4, DHPS_ROUTE_RETRY, &a), 0);
            dhps_route_report(r, &a, 60 * US + jitter * US, DHPS_ROUTE_OK);
        }
    }
    return (double)pod / n;
}

static void slow_pod_sheds_smoothly(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[8];
    for (uint32_t i = 0; i < 8; i++) {
        add(r, i, i < 4 ? DHPS_ROUTE_POD : DHPS_ROUTE_AZ);
        reps[i] = i;
    }
    uint64_t seq = 42;
    double share = 0;
    for (int w = 0; w < 8; w++) /* 2 s warm-up */
        share = run_window(r, reps, 250 * MS, 20 * US, &seq);
    assert_true(share > 0.99);
    /* the pod becomes 2x slower (40 us; the az is 60 us) */
    double shares[40];
    for (int w = 0; w < 40; w++) /* 10 s */
        shares[w] = run_window(r, reps, 250 * MS, 40 * US, &seq);
    if (getenv("ROUTE_TEST_VERBOSE")) {
        dhps_route_stats st;
        dhps_route_stats_get(r, &st);
        for (int w = 0; w < 40; w++)
            fprintf(stderr, "%.3f ", shares[w]);
        fprintf(stderr, "\nbase pod %.0f az %.0f, long pod %.0f az %.0f, rise %.0f\n",
                st.tier[1].baseline_ns, st.tier[2].baseline_ns, st.tier[1].latency_long_ns,
                st.tier[2].latency_long_ns, st.common_rise_ns);
    }
    /* smooth: no window-to-window jump over 0.2, and no flapping (direction reversals of
     * moves larger than 0.05) */
    int reversals = 0, last_dir = 0;
    for (int w = 1; w < 40; w++) {
        double d = shares[w] - shares[w - 1];
        assert_true(fabs(d) < 0.2);
        if (fabs(d) > 0.05) {
            int dir = d > 0 ? 1 : -1;
            if (last_dir && dir != last_dir)
                reversals++;
            last_dir = dir;
        }
    }
    assert_true(reversals <= 1);
    /* it sheds part of its load, not all: weight ~0.5 -> the pod carries ~0.7 */
    double end = shares[39];
    assert_true(end > 0.5 && end < 0.9);
    assert_true(shares[0] > end);
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    assert_int_equal(s.breaker_opened, 0);
    assert_true(s.tier[DHPS_ROUTE_AZ].spills > 0);
    /* recovery: back to 20 us, the pod wins its traffic back */
    for (int w = 0; w < 40; w++)
        share = run_window(r, reps, 250 * MS, 20 * US, &seq);
    assert_true(share > 0.95);
    dhps_route_destroy(r);
}

/* The client's own host gets loaded: every tier's latency rises by the same absolute amount
 * (CPU wait on the client), so the tiers keep their order. Tier latencies in us, calm. */
#define CALM_POD 300
#define CALM_AZ 1000
#define CLIENT_LOAD 1700

struct load_run {
    dhps_route *r;
    uint64_t seq;
    bool pod_dead;       /* the pod's nodes refuse (killed) */
    uint64_t load_us;    /* added to every answer */
    uint64_t pod_factor; /* the pod's own latency x this (1 = calm) */
    uint64_t slow_node0; /* node 0's own extra factor (1 = none) */
};

/* One pick and its report; retry: a retry with the pod replicas excluded. */
static dhps_route_choice load_call(struct load_run *lr, bool retry)
{
    static const uint32_t reps[6] = {0, 1, 2, 3, 4, 5};
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(lr->r, reps, 6, reps, retry ? 2 : 0,
                                     retry ? DHPS_ROUTE_RETRY : DHPS_ROUTE_PRIMARY, &c),
                     0);
    lr->seq = lr->seq * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t own = c.tier == DHPS_ROUTE_POD ? CALM_POD * lr->pod_factor : CALM_AZ;
    if (c.node == 0)
        own *= lr->slow_node0;
    /* +-10 % jitter on the tier's own latency and on the client's wait */
    double j = 0.9 + 0.2 * (double)(lr->seq >> 11) * 0x1.0p-53;
    uint64_t lat = (uint64_t)((double)(own + lr->load_us) * j * US);
    if (lr->pod_dead && c.tier == DHPS_ROUTE_POD)
        assert_int_equal(dhps_route_report(lr->r, &c, 50 * US, DHPS_ROUTE_ERROR), 0);
    else
        assert_int_equal(dhps_route_report(lr->r, &c, lat, DHPS_ROUTE_OK), 0);
    return c;
}

/* 1 pick per ms for `window` among 2 pod replicas (ids 0, 1) and 4 az replicas; every
 * 20th ms a retry also keeps the az measured, as other shards' traffic would. Returns
 * the pod's share of the picks. */
static double load_window(struct load_run *lr, uint64_t window)
{
    int n = 0, pod = 0;
    for (uint64_t end = g_now + window; g_now < end; g_now += 1 * MS) {
        pod += load_call(lr, false).tier == DHPS_ROUTE_POD;
        if (++n % 20 == 0)
            load_call(lr, true);
    }
    return (double)pod / n;
}

/* Two POD and four AZ nodes after a calm past: 5 minutes, pod 0.3 ms, az 1 ms. */
static struct load_run calm_past(uint64_t seq)
{
    struct load_run lr = {.r = make(NULL), .seq = seq, .pod_factor = 1, .slow_node0 = 1};
    for (uint32_t i = 0; i < 6; i++)
        add(lr.r, i, i < 2 ? DHPS_ROUTE_POD : DHPS_ROUTE_AZ);
    assert_true(load_window(&lr, 300 * SEC) > 0.95);
    return lr;
}

static void restarted_pod_under_client_load(void **state)
{
    (void)state;
    struct load_run lr = calm_past(7);
    double share;
    /* the pod is killed; 5 s later the client's host becomes loaded (+1.7 ms on every
     * answer); 5 s later still the pod is back: 2.0 ms, against 2.7 ms in the az */
    lr.pod_dead = true;
    share = load_window(&lr, 5 * SEC);
    assert_true(share < 0.3);
    lr.load_us = CLIENT_LOAD;
    load_window(&lr, 5 * SEC);
    lr.pod_dead = false;
    dhps_route_stats s;
    dhps_route_stats_get(lr.r, &s);
    uint64_t opened = s.breaker_opened;
    double shares[6];
    for (int w = 0; w < 6; w++)
        shares[w] = load_window(&lr, 5 * SEC);
    dhps_route_stats_get(lr.r, &s);
    if (getenv("ROUTE_TEST_VERBOSE")) {
        for (int w = 0; w < 6; w++)
            fprintf(stderr, "%.3f ", shares[w]);
        fprintf(stderr, "\nopened %llu -> %llu; base pod %.0f az %.0f, long pod %.0f az %.0f,"
                " rise %.0f\n", (unsigned long long)opened,
                (unsigned long long)s.breaker_opened, s.tier[1].baseline_ns,
                s.tier[2].baseline_ns, s.tier[1].latency_long_ns, s.tier[2].latency_long_ns,
                s.common_rise_ns);
    }
    /* the pod is still the fastest tier: it wins back most traffic, and its nodes are
     * not ejected as slow once they answer */
    assert_true(shares[4] > 0.8 && shares[5] > 0.8);
    assert_int_equal(s.breaker_opened, opened);
    for (uint32_t i = 0; i < 2; i++) {
        dhps_route_node_stats ns;
        dhps_route_node_stats_get(lr.r, i, &ns);
        assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
        assert_true(ns.weight > 0.72); /* x 1.4: the pod carries all that reaches it */
    }
    /* still under load, a genuinely 10x slow pod node (3 ms + the client's 1.7): P2C and
     * its weight avoid it (the pod, half degraded, keeps ~1.4 x 0.525 of the traffic),
     * and where it is the only replica (30 calls) the breaker isolates it */
    lr.slow_node0 = 10;
    share = load_window(&lr, 2 * SEC);
    assert_true(share > 0.6);
    dhps_route_node_stats ns;
    dhps_route_node_stats_get(lr.r, 0, &ns);
    assert_true(ns.weight < 0.1);
    const uint32_t only0 = 0;
    for (int i = 0; i < 30; i++) {
        g_now += 1 * MS;
        pick_ok(lr.r, &only0, 1, (10 * CALM_POD + CLIENT_LOAD) * US);
    }
    dhps_route_node_stats_get(lr.r, 0, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_OPEN);
    dhps_route_node_stats_get(lr.r, 1, &ns);
    assert_int_equal(ns.breaker, DHPS_ROUTE_CLOSED);
    dhps_route_destroy(lr.r);
}

/* The same load arrives while the pod is up, and goes again: the pod keeps its traffic,
 * yet a pod genuinely slower than its calm self by most of its lead over the az still
 * sheds under the load. At the step itself the pod's answers look slow until the az has
 * answered once under the load (here every 20 ms, while each pod node answers every
 * 2 ms): if a pod node's breaker window fills in that moment it is isolated for its
 * first 1 s (one node was in 4 of 100 jitter sequences tried; none is with this one). */
static void client_load_onset_keeps_pod(void **state)
{
    (void)state;
    struct load_run lr = calm_past(11);
    double share;
    bool verbose = getenv("ROUTE_TEST_VERBOSE") != NULL;
    lr.load_us = CLIENT_LOAD; /* a step: +1.7 ms on every answer from now on */
    for (int w = 0; w < 20; w++) {
        share = load_window(&lr, 500 * MS);
        if (verbose)
            fprintf(stderr, "%.3f ", share);
        assert_true(share > (w < 3 ? 0.5 : 0.8)); /* at worst one node out for 1 s */
    }
    dhps_route_stats s;
    dhps_route_stats_get(lr.r, &s);
    uint64_t opened = s.breaker_opened;
    assert_true(opened <= 2);
    /* the pod's own part triples (0.9 ms + 1.7, the az 1 ms + 1.7): it sheds */
    lr.pod_factor = 3;
    for (int w = 0; w < 10; w++)
        share = load_window(&lr, 1 * SEC);
    if (verbose)
        fprintf(stderr, "| slow pod %.3f ", share);
    assert_true(share < 0.6);
    lr.pod_factor = 1;
    for (int w = 0; w < 10; w++)
        share = load_window(&lr, 1 * SEC);
    if (verbose)
        fprintf(stderr, "| back %.3f |", share);
    assert_true(share > 0.8);
    lr.load_us = 0; /* the load goes */
    for (int w = 0; w < 10; w++) {
        share = load_window(&lr, 500 * MS);
        if (verbose)
            fprintf(stderr, " %.3f", share);
        assert_true(share > 0.8);
    }
    dhps_route_stats_get(lr.r, &s);
    if (verbose)
        fprintf(stderr, "\nopened %llu, then %llu\n", (unsigned long long)opened,
                (unsigned long long)s.breaker_opened);
    assert_int_equal(s.breaker_opened, opened);
    dhps_route_destroy(lr.r);
}

/* Pod, az and remote replicas (ids 0-1, 2-5, 6-7) at the given own latencies (us, +-10 %
 * jitter): 1 pick per ms; every 20th ms a retry without the pod keeps the az measured,
 * every 50th one without pod and az the remote, as other shards' traffic would. Returns
 * the pod's share of the first picks. */
static double tiers_window(dhps_route *r, uint64_t *seq, uint64_t window, const uint64_t us[3])
{
    static const uint32_t reps[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int n = 0, pod = 0;
    for (uint64_t end = g_now + window; g_now < end; g_now += 1 * MS) {
        n++;
        for (int k = 0; k < 3; k++) {
            if ((k == 1 && n % 20) || (k == 2 && n % 50))
                continue;
            dhps_route_choice c;
            assert_int_equal(dhps_route_pick(r, reps, 8, reps, k == 0 ? 0 : k == 1 ? 2 : 6,
                                             k ? DHPS_ROUTE_RETRY : DHPS_ROUTE_PRIMARY, &c),
                             0);
            *seq = *seq * 6364136223846793005ull + 1442695040888963407ull;
            double j = 0.9 + 0.2 * (double)(*seq >> 11) * 0x1.0p-53;
            unsigned t = c.tier == DHPS_ROUTE_POD ? 0 : c.tier == DHPS_ROUTE_AZ ? 1 : 2;
            assert_int_equal(
                dhps_route_report(r, &c, (uint64_t)((double)us[t] * j * US), DHPS_ROUTE_OK), 0);
            pod += k == 0 && c.tier == DHPS_ROUTE_POD;
        }
    }
    return (double)pod / n;
}

/* A loaded machine from the start: the remote tier, unchanged, keeps the common rise at 0,
 * and the az's baseline is the minimum it showed while it carried little; since then the
 * az has become much slower than that, slower than the pod. Judged against that old
 * minimum the pod (itself slower than its own baseline) looked as slow as the az and gave
 * its traffic to the az, which answered in twice its time: the topology test's node
 * replacement once ended so (POD a1 at 2.7 ms kept 5 % of the traffic; the az answered in
 * 5 ms against its baseline of 2.6). The pod is judged against what the az answers in
 * now, and still sheds when it becomes slower than that. */
static void pod_keeps_traffic_when_next_tier_slowed(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    for (uint32_t i = 0; i < 8; i++)
        add(r, i, i < 2 ? DHPS_ROUTE_POD : i < 6 ? DHPS_ROUTE_AZ : DHPS_ROUTE_REMOTE);
    bool verbose = getenv("ROUTE_TEST_VERBOSE") != NULL;
    uint64_t seq = 3, us[3] = {1600, 2600, 9000};
    assert_true(tiers_window(r, &seq, 60 * SEC, us) > 0.95);
    /* both slow down; the az, loaded by others, to twice the pod's time */
    us[0] = 2700;
    us[1] = 5000;
    double share = 0;
    for (int w = 0; w < 20; w++) {
        share = tiers_window(r, &seq, 1 * SEC, us);
        if (verbose)
            fprintf(stderr, "%.3f ", share);
        if (w >= 5)
            assert_true(share > 0.8);
    }
    dhps_route_stats s;
    dhps_route_stats_get(r, &s);
    if (verbose)
        fprintf(stderr, "\nbase pod %.0f az %.0f, lat pod %.0f az %.0f, rise %.0f\n",
                s.tier[1].baseline_ns, s.tier[2].baseline_ns, s.tier[1].latency_ns,
                s.tier[2].latency_ns, s.common_rise_ns);
    assert_true(s.tier[DHPS_ROUTE_AZ].baseline_ns < 3000 * US); /* the old minimum */
    assert_true(s.common_rise_ns < 100 * US);
    /* the pod becomes slower than the az is now: it sheds */
    us[0] = 6000;
    for (int w = 0; w < 10; w++)
        share = tiers_window(r, &seq, 1 * SEC, us);
    if (verbose)
        fprintf(stderr, "| slower than the az: %.3f\n", share);
    assert_true(share < 0.5);
    dhps_route_destroy(r);
}

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

static void slow_node_is_ejected(void **state)
{
    (void)state;
    dhps_route *r = make(NULL);
    uint32_t reps[4] = {0, 1, 2, 3};
    for (uint32_t i = 0; i < 4; i++)
        add(r, i, DHPS_ROUTE_POD);
    for (int i = 0; i < 4000; i++) { /* learn the 20 us baseline */
        g_now += 10 * US;
        pick_ok(r, reps, 4, 20 * US);
    }
    g_now += 1 * SEC; /* a fresh breaker window */
    dhps_route_choice c;
    for (int i = 0; i < 30; i++) { /* node 0 turns 10x slow */
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, reps, 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
    }
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
    dhps_route *r = make(&p);
    uint32_t reps[4] = {0, 1, 2, 3};
    for (uint32_t i = 0; i < 4; i++)
        add(r, i, DHPS_ROUTE_POD);
    for (int i = 0; i < 4000; i++) { /* learn the 20 us baseline */
        g_now += 10 * US;
        pick_ok(r, reps, 4, 20 * US);
    }
    g_now += 1 * SEC; /* a fresh breaker window */
    dhps_route_choice c;
    for (int i = 0; i < 30; i++) { /* node 0 turns 10x slow: isolated for it */
        g_now += 10 * US;
        assert_int_equal(dhps_route_pick(r, &reps[0], 1, NULL, 0, 0, &c), 0);
        dhps_route_report(r, &c, 200 * US, DHPS_ROUTE_OK);
    }
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
        cmocka_unit_test(slow_pod_sheds_smoothly),
        cmocka_unit_test(restarted_pod_under_client_load),
        cmocka_unit_test(client_load_onset_keeps_pod),
        cmocka_unit_test(pod_keeps_traffic_when_next_tier_slowed),
        cmocka_unit_test(breaker_backoff_and_probes),
        cmocka_unit_test(slow_node_is_ejected),
        cmocka_unit_test(not_slow_while_faster_than_next),
        cmocka_unit_test(ejection_cap),
        cmocka_unit_test(errors_displace_slow_under_cap),
        cmocka_unit_test(hedge_delay_tracks_p95),
        cmocka_unit_test(hedge_budget),
        cmocka_unit_test(retry_budget_and_deadline),
        cmocka_unit_test(counters_match_decisions),
        cmocka_unit_test(deterministic_for_a_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

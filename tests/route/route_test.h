/* The route tests' shared fixture: a route on a simulated clock (g_now), the local
 * labels h1/p1/a1, nodes added by tier, and one pick with its OK report. Each test file
 * is its own executable, so each gets its own clock. */
#ifndef DHPS_TEST_ROUTE_H
#define DHPS_TEST_ROUTE_H
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
static inline uint64_t fake_clock(void *arg)
{
    (void)arg;
    return g_now;
}

__attribute__((unused)) static const dhps_route_labels LOCAL = {"h1", "p1", "a1"};

static inline dhps_route *make(dhps_route_params *p)
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
static inline void add(dhps_route *r, uint32_t id, int tier)
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

__attribute__((unused)) static const uint64_t TIER_LAT[4] = {5 * US, 20 * US, 60 * US, 500 * US};

/* One pick + immediate OK report with the tier's latency; returns the choice. */
static inline dhps_route_choice pick_ok(dhps_route *r, const uint32_t *reps, size_t n, uint64_t lat)
{
    dhps_route_choice c;
    assert_int_equal(dhps_route_pick(r, reps, n, NULL, 0, DHPS_ROUTE_PRIMARY, &c), 0);
    assert_int_equal(dhps_route_report(r, &c, lat ? lat : TIER_LAT[c.tier], DHPS_ROUTE_OK),
                     0);
    return c;
}

#endif

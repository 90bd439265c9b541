/* Runs `dhps sim` small and checks its JSON: fields present, availability sane with and
 * without faults, deterministic for a seed. The route library is the one under test; the
 * simulator drives it over 1,024 simulated nodes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef DHPS_BIN
#error "DHPS_BIN must name the dhps binary"
#endif

static char g_out[8192];

static const char *sim(const char *args)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' sim --json --requests 20000 %s", DHPS_BIN, args);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(g_out, 1, sizeof g_out - 1, f);
    g_out[n] = 0;
    assert_int_equal(pclose(f), 0);
    return g_out;
}

static double field(const char *json, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(json, key);
    if (!p) {
        fprintf(stderr, "missing field %s in %s\n", name, json);
        fail();
    }
    return strtod(p + strlen(key), NULL);
}

static void json_fields_and_no_faults(void **state)
{
    (void)state;
    const char *j = sim("");
    assert_true(j[0] == '{' && strchr(j, '}'));
    assert_true(field(j, "nodes") == 1024);
    assert_true(field(j, "requests") == 20000);
    assert_true(field(j, "p99_us") > 0);
    assert_true(field(j, "availability") >= 0.999);
    const char *ts = strstr(j, "\"tier_share\":{");
    assert_non_null(ts);
    double total = 0;
    const char *tiers[] = {"host", "pod", "az", "remote"};
    for (int t = 0; t < 4; t++) {
        char key[32];
        snprintf(key, sizeof key, "\"%s\":{", tiers[t]);
        const char *p = strstr(ts, key);
        assert_non_null(p);
        total += field(p, "share");
    }
    assert_true(total > 0.999 && total < 1.001);
    /* the best tier that holds a replica is used: cross-AZ only where it must be */
    assert_true(field(strstr(ts, "\"remote\":{"), "share") < 0.35);
}

static void failures_are_absorbed(void **state)
{
    (void)state;
    const char *j = sim("--fail-rate 0.05");
    assert_true(field(j, "nodes_died") > 0);
    assert_true(field(j, "availability") >= 0.999);
    double protected_avail = field(j, "availability");
    j = sim("--fail-rate 0.05 --no-hedge --no-retry");
    assert_true(field(j, "availability") < protected_avail);
    assert_true(field(j, "availability") > 0.8);
}

static void partitions_are_absorbed(void **state)
{
    (void)state;
    assert_true(field(sim("--partition az"), "availability") >= 0.999);
    assert_true(field(sim("--partition pod"), "availability") >= 0.999);
    const char *j = sim("--slow-share 0.05 --seed 2");
    assert_true(field(j, "availability") >= 0.999);
    assert_true(field(j, "breaker_opened") > 0);
}

static void slow_pod_sheds_and_recovers(void **state)
{
    (void)state;
    const char *j = sim("--slow-pod 3 --rate 2000"); /* 10 s simulated: 3 s slow */
    assert_true(field(j, "availability") >= 0.999);
    const char *p = strstr(j, "\"pod0_local_share_by_tenth\":[");
    assert_non_null(p);
    p = strchr(p, '[') + 1;
    double v[10];
    for (int i = 0; i < 10; i++) {
        char *end;
        v[i] = strtod(p, &end);
        assert_true(end != p);
        p = end + 1;
    }
    /* POD 0 is as slow as its AZ during tenths 3-5: its clients move most traffic out,
     * then win it back */
    assert_true(v[1] > 0.05);
    assert_true(v[5] < 0.6 * v[1]);
    assert_true(v[9] > 0.5 * v[1]);
}

static void deterministic_for_a_seed(void **state)
{
    (void)state;
    char first[sizeof g_out];
    strcpy(first, sim("--fail-rate 0.02 --slow-share 0.02 --partition pod --seed 7"));
    assert_string_equal(first, sim("--fail-rate 0.02 --slow-share 0.02 --partition pod --seed 7"));
    assert_string_not_equal(first, sim("--fail-rate 0.02 --slow-share 0.02 --partition pod --seed 8"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_fields_and_no_faults),
        cmocka_unit_test(failures_are_absorbed),
        cmocka_unit_test(partitions_are_absorbed),
        cmocka_unit_test(slow_pod_sheds_and_recovers),
        cmocka_unit_test(deterministic_for_a_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

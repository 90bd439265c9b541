/*
 * dhps traffic through the built binary, against a 4-node `dhps up` cluster: --load and
 * --check (every row right), per-interval lines and the summary in text and --json form
 * (tier shares add up to 1, every node listed; --per-node: the router's node weights and
 * latencies, tier baselines and latencies), SIGTERM ends a --seconds 0 run with the
 * summary, and bad options are usage errors. Routing behaviour under faults is the
 * topology test's (tests/topology/topology.sh).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_scale.h"
#include "capture.h"
#include "server_bin.h"

static char g_dir[64];

static double field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    if (!p)
        fail_msg("no %s in %s", key, line);
    return atof(p + strlen(key));
}

static void json_and_check(void **state)
{
    (void)state;
    char cmd[1024];
    /* every node must get lookups: 1 s natively, scaled (under ASan at load 8 one second
     * of traffic once left a node without a message) */
    unsigned secs = dhps_test_ms(1000) / 1000;
    if (secs < 1)
        secs = 1;
    snprintf(cmd, sizeof cmd,
             DHPS_BIN " traffic --cluster %s --table emb --dim 8 --keys 2000 --batch 50 "
             "--load --check --seconds %u --interval-ms 200 --deadline-ms 2000 --json --per-node",
             g_dir, secs);
    int st;
    char *out = capture(cmd, &st);
    if (st != 0)
        fail_msg("%s: status %d: %s", cmd, st, out);
    int intervals = 0;
    char *summary = NULL;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        assert_int_equal(line[0], '{');
        if (strstr(line, "\"summary\":true"))
            summary = line;
        else
            intervals++;
    }
    assert_true(intervals >= 3);
    assert_non_null(summary);
    assert_true(field(summary, "\"lookups\":") > 0);
    assert_int_equal((int)field(summary, "\"wrong\":"), 0);
    assert_int_equal((int)field(summary, "\"missing\":"), 0);
    double sum = field(summary, "\"host\":") + field(summary, "\"pod\":") +
                 field(summary, "\"az\":") + field(summary, "\"remote\":");
    assert_true(sum > 0.99 && sum < 1.01);
    for (int n = 0; n < 4; n++) {
        char key[16];
        snprintf(key, sizeof key, "\"%d\":", n);
        assert_true(field(strstr(summary, "\"node_messages\""), key) > 0);
    }
    /* the router's decisions: a healthy cluster, no breaker opened on errors */
    char *brk = strstr(summary, "\"breaker\":{");
    if (!brk)
        fail_msg("no router decisions in the summary: %s", summary);
    assert_int_equal((int)field(brk, "\"opened_errors\":"), 0);
    assert_non_null(strstr(brk, "\"opened_slow\":"));
    assert_non_null(strstr(brk, "\"ejected\":"));
    assert_non_null(strstr(summary, "\"common_rise_us\":"));
    /* --per-node: the router's view, a weight in [floor 0.05, 1] and a latency for every
     * node (0 for one that answered no lookup: its messages may all be --load's writes,
     * which the router does not time), tier baselines and latencies (lookups were
     * answered, so some node and some tier have a latency) */
    char *w = strstr(summary, "\"node_weight\":{");
    char *nl = strstr(summary, "\"node_latency_us\":{");
    if (!w || !nl)
        fail_msg("no node weights or latencies in the summary: %s", summary);
    double lat_sum = 0;
    for (int n = 0; n < 4; n++) {
        char key[16];
        snprintf(key, sizeof key, "\"%d\":", n);
        double wt = field(w, key), lat = field(nl, key);
        assert_true(wt >= 0.05 && wt <= 1.0);
        assert_true(lat >= 0);
        lat_sum += lat;
    }
    assert_true(lat_sum > 0);
    char *tl = strstr(summary, "\"tier_latency_us\":{");
    assert_non_null(strstr(summary, "\"tier_baseline_us\":{"));
    assert_non_null(tl);
    assert_true(field(tl, "\"host\":") + field(tl, "\"pod\":") + field(tl, "\"az\":") +
                    field(tl, "\"remote\":") > 0);
    free(out);
}

static void text_until_sigterm(void **state)
{
    (void)state;
    /* --seconds 0 runs until a signal; the summary is printed all the same. The signal
     * comes once an interval line counts lookups (an event, polled up to a scaled bound;
     * was a fixed 1 s, which a loaded machine can spend before the first lookup) */
    int rc = shellf("(" DHPS_BIN " traffic --cluster %s --table emb --dim 8 --keys 2000 "
                "--seconds 0 --interval-ms 100 --tier-delay-us 0,0,200,2000 --per-node > %s/t.out "
                "2>&1 & p=$!; n=0; "
                "until grep -q 'interval t=[0-9.]* lookups=[1-9]' %s/t.out || [ $n -ge %u ]; "
                "do sleep 0.05; n=$((n+1)); done; kill -TERM $p; wait $p)",
                g_dir, g_dir, g_dir, dhps_test_ms(30000) / 50);
    assert_int_equal(rc, 0);
    char path[128];
    snprintf(path, sizeof path, "cat %s/t.out", g_dir);
    int st;
    char *out = capture(path, &st);
    assert_non_null(strstr(out, "interval t="));
    char *s = strstr(out, "summary t=");
    if (!s)
        fail_msg("no summary line: %s", out);
    assert_true(field(s, " lookups=") > 0);
    assert_non_null(strstr(s, " remote="));
    assert_non_null(strstr(s, " opened_err="));
    assert_non_null(strstr(s, " ejected="));
    assert_non_null(strstr(s, " rise_us="));
    assert_non_null(strstr(s, " availability="));
    assert_non_null(strstr(s, " n0="));
    assert_non_null(strstr(s, " w0="));
    assert_non_null(strstr(s, " lat0_us="));
    assert_non_null(strstr(s, " base_pod_us="));
    assert_non_null(strstr(s, " lat_remote_us="));
    free(out);
}

static void bad_options(void **state)
{
    (void)state;
    static const char *const bad[] = {"--tier-delay-us 1,2,3", "--tier-delay-us 1,2,3,x",
                                      "--deadline-ms 0", "--interval-ms 5", "--seconds -1",
                                      "--batch 0", "extra"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = shellf(DHPS_BIN " traffic --cluster %s %s > /dev/null 2>&1", g_dir, bad[i]);
        if (st != 2)
            fail_msg("dhps traffic %s: exit %d, want 2", bad[i], st);
    }
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/dhps-test-traffic-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    return shellf(DHPS_BIN " up --dir %s --nodes 4 --shards 16 --dim 8 --no-load --quiet "
              "> %s/up.out 2>&1", g_dir, g_dir) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    shellf(DHPS_BIN " down --dir %s --timeout 10 > /dev/null 2>&1", g_dir);
    shellf("rm -rf %s", g_dir);
    return 0;
}

int main(void)
{
    if (use_built_server())
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_and_check),
        cmocka_unit_test(text_until_sigterm),
        cmocka_unit_test(bad_options),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

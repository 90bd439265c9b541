/*
 * dhps membership: `dhps membership --json` (grow 4 -> 6, shrink with etcd killed and
 * restarted mid-move, replace a node, kill -9 a node re-replicated by the controller,
 * kill -9 a node while shards join it, with lookups and ACK_ALL updates throughout) through real dhps-server processes and a
 * real etcd. Must hold exactly: every step finished (exit 0), shards and bytes moved,
 * etcd went down while joins were in flight, and at the end (settled) no acknowledged
 * update lost on any holder, no sample key missing while held, no stale router read, no
 * replica divergence. Availability is printed, not asserted (a noisy 2-core machine).
 * Skips (77) without dhps-server or the etcd binary.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture.h"
#include "server_bin.h"

static char g_dir[64];


static void membership(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, DHPS_BIN " membership --cluster %s/m --json 2>%s/log", g_dir,
             g_dir);
    int st;
    char *out = capture(cmd, &st);
    print_message("  %s", out);
    if (st != 0) {
        /* the directory goes with the test: show what the servers said (a sanitizer
         * report, a refusal) along with the tool's own log */
        char t[768];
        snprintf(t, sizeof t,
                 "tail -60 %s/log >&2; tail -40 %s/m/steps.log >&2; "
                 "for f in %s/m/node*/server.log; do echo \"--- $f\" >&2; "
                 "grep -m3 -A12 'Sanitizer' \"$f\" >&2; tail -15 \"$f\" >&2; done",
                 g_dir, g_dir, g_dir);
        if (system(t) != 0)
            fprintf(stderr, "(no log)\n");
        fail_msg("%s: status %d, output: %s", cmd, st, out);
    }
    assert_int_equal(out[0], '{');
    long long req = field_in(out, NULL, "lookups");
    long long ok = field_in(out, NULL, "answered_in_deadline");
    assert_true(req > 0 && ok <= req);
    assert_non_null(strstr(out, "\"settled\": true"));
    assert_true(field_in(out, NULL, "acked_keys_checked") > 0);
    assert_int_equal(field_in(out, NULL, "acked_updates_lost"), 0);
    assert_int_equal(field_in(out, NULL, "missing_while_held"), 0);
    assert_int_equal(field_in(out, NULL, "stale_router_reads"), 0);
    assert_int_equal(field_in(out, NULL, "sample_keys_bad"), 0);
    assert_int_equal(field_in(out, NULL, "keys_unread"), 0);
    assert_int_equal(field_in(out, "replica_divergence", "shards_differing"), 0);
    assert_int_equal(field_in(out, "replica_divergence", "digest_errors"), 0);
    assert_int_equal(field_in(out, "replica_divergence", "keys_differing"), 0);
    assert_true(field_in(out, NULL, "shards_moved") > 0);
    assert_true(field_in(out, NULL, "bytes_moved") > 0);
    assert_non_null(strstr(out, "\"mid_move\": true"));
    assert_non_null(strstr(out, "\"driver_killed_mid_move\": true"));
    /* five steps, each finished; the first four moved shards, the last started joins to
     * the node it killed */
    const char *s = strstr(out, "\"steps\": [");
    assert_non_null(s);
    int steps = 0;
    for (const char *p = strstr(s, "{\"name\""); p; p = strstr(p + 1, "{\"name\"")) {
        assert_int_equal(field_in(p, NULL, "exit"), 0);
        if (steps < 4)
            assert_true(field_in(p, NULL, "shards_moved") > 0);
        else
            assert_true(field_in(p, NULL, "joins_started") > 0);
        steps++;
    }
    assert_int_equal(steps, 5);
    free(out);
    snprintf(cmd, sizeof cmd, "test ! -e %s/m/cluster.json", g_dir); /* all stopped */
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (use_built_server())
        return 77;
    if (access("/usr/bin/etcd", X_OK) != 0 && access("/usr/local/bin/etcd", X_OK) != 0) {
        fprintf(stderr, "SKIP: no etcd binary (apt-get install etcd-server)\n");
        return 77;
    }
    strcpy(g_dir, "/tmp/dhps_memb_XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    const struct CMUnitTest tests[] = {cmocka_unit_test(membership)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        return rc ? rc : 1;
    return rc;
}

/*
 * dhps chaos smoke: `dhps chaos --seconds 10 --json` on its own small local cluster
 * (a kill -9 + restart, a SIGSTOP and an injected slowdown), JSON fields present, no
 * acknowledged update lost, every node stopped. The availability figure is printed, not
 * asserted (a noisy 2-core machine misses 100 ms deadlines now and then). Skips (77)
 * when dhps-server is not built.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capture.h"
#include "server_bin.h"

static char g_dir[64];


static long long field(const char *out, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *s = strstr(out, key);
    if (!s)
        fail_msg("no %s in %s", name, out);
    return atoll(s + strlen(key));
}

static void chaos_json(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, DHPS_BIN " chaos --seconds 10 --dir %s/c --json 2>%s/log",
             g_dir, g_dir);
    int st;
    char *out = capture(cmd, &st);
    if (st != 0) {
        char t[256];
        snprintf(t, sizeof t, "tail -30 %s/log >&2", g_dir);
        if (system(t) != 0)
            fprintf(stderr, "(no log)\n");
        fail_msg("%s: status %d, output: %s", cmd, st, out);
    }
    assert_int_equal(out[0], '{');
    long long req = field(out, "requests"), ok = field(out, "answered_in_deadline");
    assert_non_null(strstr(out, "\"availability\": "));
    assert_true(req > 0 && ok <= req);
    assert_true(field(out, "acked_updates") > 0);
    assert_int_equal(field(out, "acked_updates_lost"), 0);
    assert_int_equal(field(out, "kills"), 1);
    assert_int_equal(field(out, "restart_failures"), 0);
    print_message("  %s", out);
    free(out);
    /* every node stopped */
    snprintf(cmd, sizeof cmd, "test ! -e %s/c/cluster.json", g_dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (use_built_server())
        return 77;
    strcpy(g_dir, "/tmp/dhps_chaos_XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    const struct CMUnitTest tests[] = {cmocka_unit_test(chaos_json)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        return rc ? rc : 1;
    return rc;
}

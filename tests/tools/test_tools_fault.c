/*
 * dhps fault through the built binaries: two dhps-server processes (node 0 with
 * "admin": {"faults": true}, node 1 without), a cluster.json naming them, and the
 * set / list / clear actions, their errors (bad options: exit 2; a node that refuses or
 * a rule that is not there: exit 1 with the server's message), and a wrong secret.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "test_scale.h"

static char dir[64];
static pid_t pids[2];
static unsigned mports[2];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The metrics port from a node's port file ("RPC METRICS ..."); false until it is there. */
static bool port_file_read(const char *path, unsigned *mport)
{
    FILE *f = fopen(path, "r");
    unsigned rpc = 0, m = 0;
    bool ok = f && fscanf(f, "%u %u", &rpc, &m) == 2 && m > 0;
    if (f)
        fclose(f);
    if (ok)
        *mport = m;
    return ok;
}

static int start_nodes(void **st)
{
    (void)st;
    snprintf(dir, sizeof dir, "/tmp/dhps-faulttest-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char p[256], text[2048];
    snprintf(p, sizeof p, "%s/secret", dir);
    write_file(p, "fault-tool-secret-0123456789abcdef\n");
    chmod(p, 0600);
    snprintf(p, sizeof p, "%s/other-secret", dir);
    write_file(p, "not-the-secret-0123456789abcdefghij\n");
    chmod(p, 0600);
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/n%d.json", dir, i);
        snprintf(text, sizeof text,
                 "{\"node_id\":\"f%d\",\"listen\":{\"tcp_port\":0,\"workers\":1},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":4}],\"secret_file\":\"%s/secret\","
                 "\"metrics\":{\"port\":0},\"shards\":{\"nshards\":1,\"own\":\"all\"},"
                 "\"port_file\":\"%s/ports%d\"%s}",
                 i, dir, dir, i, i == 0 ? ",\"admin\":{\"faults\":true}" : "");
        write_file(p, text);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            char log[256];
            snprintf(log, sizeof log, "%s/n%d.log", dir, i);
            if (!freopen(log, "w", stderr))
                _exit(127);
            execl(DHPS_SERVER_BIN, "dhps-server", "--config", p, (char *)NULL);
            _exit(127);
        }
        pids[i] = pid;
    }
    for (int i = 0; i < 2; i++) { /* the port file appears once both ports are bound */
        snprintf(p, sizeof p, "%s/ports%d", dir, i);
        /* an event, scaled (test_scale.h); a node that exited ends the wait */
        bool exited = false;
        DHPS_TEST_WAIT_FOR(port_file_read(p, &mports[i]) ||
                           (exited = waitpid(pids[i], NULL, WNOHANG) == pids[i]), 30000);
        if (exited)
            pids[i] = 0;
        if (!mports[i])
            fail_msg("node %d: no port file %s (%s; log %s/n%d.log)", i, p,
                     exited ? "it exited" : "timed out", dir, i);
    }
    snprintf(p, sizeof p, "%s/cluster.json", dir);
    snprintf(text, sizeof text,
             "{\"version\":1,\"secret\":\"%s/secret\",\"nodes\":["
             "{\"id\":0,\"metrics_port\":%u,\"config\":\"%s/n0.json\"},"
             "{\"id\":1,\"metrics_port\":%u,\"config\":\"%s/n1.json\"}]}",
             dir, mports[0], dir, mports[1], dir);
    write_file(p, text);
    return 0;
}

static int stop_nodes(void **st)
{
    (void)st;
    for (int i = 0; i < 2; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGTERM);
            int status;
            waitpid(pids[i], &status, 0);
        }
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}

/* Run `dhps fault ARGS --cluster DIR` (stderr too); returns the exit code. */
static int run(char **out, const char *fmt, ...)
{
    char args[1024], cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s fault %s 2>&1", DHPS_BIN, args);
    int status;
    *out = capture(cmd, &status);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void expect(int code, int want, char **out, const char *needle)
{
    if (code != want || !strstr(*out, needle))
        fail_msg("exit %d, output '%s'; want exit %d with '%s'", code, *out, want, needle);
    free(*out);
    *out = NULL;
}

static void set_list_clear(void **st)
{
    (void)st;
    char *o;
    expect(run(&o, "set --node 0 --cluster %s --delay-us 500 --peer 127.0.0.1", dir), 0, &o,
           "node 0: rule set: peer 127.0.0.1 port 0: delay 500 us");
    expect(run(&o, "set --node 0 --cluster %s --drop-percent 20 --peer 10.0.0.1 --port 7000 "
               "--seed 9", dir), 0, &o, "drop 20%");
    expect(run(&o, "list --node 0 --cluster %s", dir), 0, &o, "node 0 (127.0.0.1:");
    expect(run(&o, "list --node 0 --cluster %s", dir), 0, &o, "2 rules");
    expect(run(&o, "list --node 0 --cluster %s --json", dir), 0, &o,
           "\"peer\":\"127.0.0.1\",\"port\":0,\"delay_us\":500");
    expect(run(&o, "list --node 0 --cluster %s --json", dir), 0, &o,
           "\"peer\":\"10.0.0.1\",\"port\":7000,\"delay_us\":0,\"delay_percent\":100,"
           "\"drop_percent\":20");
    expect(run(&o, "clear --node 0 --cluster %s --peer 127.0.0.1", dir), 0, &o,
           "node 0: rule cleared");
    expect(run(&o, "list --node 0 --cluster %s", dir), 0, &o, "1 rule\n");
    expect(run(&o, "clear --node 0 --cluster %s --peer 127.0.0.1", dir), 1, &o,
           "HTTP 404: fault peer: no rule for 127.0.0.1 port 0");
    /* the every-peer rule (no --peer), then everything cleared */
    expect(run(&o, "set --node 0 --cluster %s --partition", dir), 0, &o,
           "peer * port 0: delay 0 us (100%), drop 0%, partition yes");
    expect(run(&o, "clear --node 0 --cluster %s --all", dir), 0, &o, "every rule cleared");
    expect(run(&o, "list --node 0 --cluster %s", dir), 0, &o, "0 rules");
    /* the direct form: a node's metrics address and the secret file */
    expect(run(&o, "set --node 0 --addr 127.0.0.1:%u --secret %s/secret --delay-us 1000",
               mports[0], dir), 0, &o, "node 0: rule set");
    expect(run(&o, "clear --node 0 --addr 127.0.0.1:%u --secret %s/secret --peer '*'",
               mports[0], dir), 0, &o, "rule cleared");
}

static void refusals_and_errors(void **st)
{
    (void)st;
    char *o;
    /* node 1 has no admin.faults */
    expect(run(&o, "set --node 1 --cluster %s --partition", dir), 1, &o,
           "node 1: HTTP 403: fault admin is disabled");
    /* all nodes: node 0 answers, node 1 refuses: exit 1 */
    expect(run(&o, "list --node all --cluster %s", dir), 1, &o, "node 0 (127.0.0.1:");
    /* wrong secret */
    expect(run(&o, "set --node 0 --addr 127.0.0.1:%u --secret %s/other-secret --partition",
               mports[0], dir), 1, &o, "HTTP 401: fault auth: MAC does not match");
    expect(run(&o, "list --node 0 --cluster %s", dir), 0, &o, "0 rules");
    /* bad options: exit 2 before any request */
    expect(run(&o, "set --cluster %s --partition", dir), 2, &o, "--node N|all is required");
    expect(run(&o, "set --node 0 --cluster %s --peer example.com", dir), 2, &o,
           "not a numeric IPv4 address");
    expect(run(&o, "set --node 0 --cluster %s --drop-percent 101", dir), 2, &o,
           "--drop-percent: bad value '101' (0..100)");
    expect(run(&o, "set --node 0 --cluster %s --delay-us 60000001", dir), 2, &o,
           "(0..60000000)");
    expect(run(&o, "set --node 0 --cluster %s --port 80", dir), 2, &o, "--port needs a --peer");
    expect(run(&o, "clear --node 0 --cluster %s", dir), 2, &o, "--peer IP|* [--port P], or --all");
    expect(run(&o, "list --node 0 --cluster %s --partition", dir), 2, &o,
           "unknown option '--partition'");
    expect(run(&o, "frob --node 0", dir), 2, &o, "unknown action 'frob'");
    expect(run(&o, "list --node 5 --cluster %s", dir), 1, &o, "no node 5");
    expect(run(&o, "list --node 0 --cluster %s/nope", dir), 1, &o, "no cluster at");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(set_list_clear),
        cmocka_unit_test(refusals_and_errors),
    };
    return cmocka_run_group_tests(tests, start_nodes, stop_nodes);
}

/*
 * A live node's /metrics against Prometheus conventions, and the tools' shared pieces
 * that need a running cluster: `promtool check metrics` on every node of a 2-node
 * `dhps up` cluster (after lookups, updates and a snapshot, so every family has rows)
 * must report nothing; every family has HELP and TYPE; the renamed families and the
 * fine latency buckets are there. Then --version on dhps and dhps-server, and the one
 * secret loader: a secret file ending in a newline works for the CLI as for the server,
 * an empty one is refused naming the file; dhps info/delete, per-node error text,
 * --help on every subcommand, and dhps load's formats and checks. Skips (77) without the built dhps-server;
 * the promtool case skips without promtool (scripts/deps.sh installs it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture.h"
#include "server_bin.h"

static char g_dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/dhps_test_metrics_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    int rc = shellf(DHPS_BIN " up --dir %s/c --nodes 2 --replicas 2 --shards 16 --keys 2000 "
                 "--dim 4 --seconds 1 --threads 1 --batch 100 --quiet > %s/up.out 2>&1",
                 g_dir, g_dir);
    if (rc)
        shellf("cat %s/up.out; tail -20 %s/c/node*/server.log", g_dir, g_dir);
    assert_int_equal(rc, 0);
    assert_int_equal(shellf(DHPS_BIN " snapshot --cluster %s/c > /dev/null", g_dir), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    shellf(DHPS_BIN " down --dir %s/c > /dev/null 2>&1", g_dir);
    kill_cluster_leftovers(g_dir);
    shellf("rm -rf %s", g_dir);
    return 0;
}

/* Every "# TYPE name" has a "# HELP name" right before it, and every sample's family
 * has a TYPE line. */
static void check_help_type(const char *body)
{
    char prev_help[256] = "";
    for (const char *l = body; *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), l);
        char name[256];
        if (sscanf(line, "# HELP %255s", name) == 1)
            snprintf(prev_help, sizeof prev_help, "%s", name);
        else if (sscanf(line, "# TYPE %255s", name) == 1) {
            if (strcmp(prev_help, name))
                fail_msg("family %s: TYPE without HELP before it", name);
        }
        l = e ? e + 1 : l + n;
    }
}

static void promtool_clean_on_every_node(void **state)
{
    (void)state;
    /* some traffic first: gets, a put */
    assert_int_equal(shellf(DHPS_BIN " get 1 2 3 --cluster %s/c > /dev/null", g_dir), 0);
    assert_int_equal(shellf(DHPS_BIN " put 7 1,2,3,4 --cluster %s/c > /dev/null", g_dir), 0);
    char *ports = capturef(NULL, "grep -o '\"metrics_port\": [0-9]*' %s/c/cluster.json | cut -d' ' -f2",
                          g_dir);
    int nodes = 0;
    bool have_promtool = shellf("command -v promtool > /dev/null") == 0;
    if (!have_promtool)
        fprintf(stderr, "promtool not installed (scripts/deps.sh): skipping its check\n");
    for (char *s = strtok(ports, "\n"); s; s = strtok(NULL, "\n")) {
        int port = atoi(s);
        assert_true(port > 0);
        nodes++;
        char path[400];
        snprintf(path, sizeof path, "%s/metrics.%d", g_dir, port);
        assert_int_equal(shellf("curl -sf http://127.0.0.1:%d/metrics > %s", port, path), 0);
        char *body = capturef(NULL, "cat %s", path);
        check_help_type(body);
        assert_non_null(strstr(body, "dhps_build_info{version=\""));
        assert_non_null(strstr(body, "\nprocess_cpu_seconds_total "));
        assert_non_null(strstr(body, "\nprocess_resident_memory_bytes "));
        assert_non_null(strstr(body, "\nprocess_start_time_seconds "));
        assert_non_null(strstr(body, "\nprocess_open_fds "));
        assert_non_null(strstr(body, "dhps_table_fragmentation_ratio{table=\"emb\"}"));
        assert_null(strstr(body, "dhps_table_fragmentation{"));
        assert_non_null(strstr(body, "\ndhps_snapshot_files_total "));
        /* buckets fine enough for 100 us .. 10 ms work */
        static const char *const les[] = {"0.0001", "0.00015", "0.0002", "0.0003", "0.0005",
                                          "0.00075", "0.001", "0.0015", "0.002", "0.003",
                                          "0.005", "0.0075", "0.01"};
        for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
            char want[128];
            snprintf(want, sizeof want, "dhps_request_seconds_bucket{method=\"lookup\",le=\"%s\"}",
                     les[i]);
            if (!strstr(body, want))
                fail_msg("no bucket %s", want);
        }
        free(body);
        if (have_promtool) {
            char *out = capturef(NULL, "promtool check metrics < %s 2>&1; echo rc=$?", path);
            if (!strstr(out, "rc=0") || strchr(out, '\n') != strrchr(out, '\n'))
                fail_msg("promtool check metrics on node port %d:\n%s", port, out);
            free(out);
        }
    }
    free(ports);
    assert_int_equal(nodes, 2);
}

static void version_flags(void **state)
{
    (void)state;
    char *v = capturef(NULL, DHPS_BIN " --version");
    assert_non_null(strstr(v, "dhps "));
    free(v);
    v = capturef(NULL, DHPS_BIN " get --version");
    assert_non_null(strstr(v, "dhps "));
    free(v);
    v = capturef(NULL, DHPS_SERVER_BIN " --version");
    assert_non_null(strstr(v, "dhps-server "));
    free(v);
}

/* One secret loader: a trailing newline is stripped by the CLI as by the server; an
 * empty, weak, or group/world-accessible file is refused with the path and the reason;
 * `dhps keygen` writes one that loads (0600) and never silently replaces one. */
static void secret_file_newline_and_empty(void **state)
{
    (void)state;
    assert_int_equal(shellf("(cat %s/c/secret; printf '\\n') > %s/secret.nl && chmod 600 %s/secret.nl",
                         g_dir, g_dir, g_dir),
                     0);
    assert_int_equal(shellf(DHPS_BIN " get 1 --map %s/c/map.json --secret %s/secret.nl > /dev/null",
                         g_dir, g_dir),
                     0);
    assert_int_equal(shellf(": > %s/secret.empty && chmod 600 %s/secret.empty", g_dir, g_dir), 0);
    char *err = capturef(NULL, DHPS_BIN " get 1 --map %s/c/map.json --secret %s/secret.empty 2>&1",
                        g_dir, g_dir);
    assert_non_null(strstr(err, "secret.empty: empty"));
    free(err);
    err = capturef(NULL, DHPS_BIN " get 1 --map %s/c/map.json --secret %s/nonexistent 2>&1", g_dir,
                  g_dir);
    assert_non_null(strstr(err, "nonexistent: No such file or directory"));
    free(err);
    /* the right secret, but readable by the group: refused, and the fix named */
    assert_int_equal(shellf("cp %s/c/secret %s/secret.grp && chmod 640 %s/secret.grp", g_dir, g_dir,
                         g_dir), 0);
    err = capturef(NULL, DHPS_BIN " get 1 --map %s/c/map.json --secret %s/secret.grp 2>&1; echo rc=$?",
                  g_dir, g_dir);
    assert_non_null(strstr(err, "secret.grp: mode 0640 lets its group read or change it"));
    assert_non_null(strstr(err, "chmod 600"));
    assert_null(strstr(err, "rc=0"));
    free(err);
    /* weak: short, or long but with few distinct bytes */
    const char *weak[] = {"dog", "passwordpasswordpasswordpassword"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(shellf("printf '%%s\\n' %s > %s/secret.weak && chmod 600 %s/secret.weak",
                             weak[i], g_dir, g_dir), 0);
        err = capturef(NULL, DHPS_BIN " get 1 --map %s/c/map.json --secret %s/secret.weak 2>&1", g_dir,
                      g_dir);
        assert_non_null(strstr(err, "secret.weak: too weak"));
        assert_non_null(strstr(err, "dhps keygen"));
        free(err);
    }
    /* keygen: 0600, 64 hex digits, refuses to overwrite, --force replaces */
    assert_int_equal(shellf(DHPS_BIN " keygen %s/secret.new", g_dir), 0);
    err = capturef(NULL, "stat -c %%a %s/secret.new; wc -c < %s/secret.new", g_dir, g_dir);
    assert_string_equal(err, "600\n64\n");
    free(err);
    err = capturef(NULL, "cat %s/secret.new", g_dir);
    assert_true(strlen(err) == 64 && strspn(err, "0123456789abcdef") == 64);
    char *again = capturef(NULL, DHPS_BIN " keygen %s/secret.new 2>&1; echo rc=$?", g_dir);
    assert_non_null(strstr(again, "exists; --force replaces it"));
    assert_non_null(strstr(again, "rc=1"));
    free(again);
    assert_int_equal(shellf(DHPS_BIN " keygen %s/secret.new --force", g_dir), 0);
    again = capturef(NULL, "cat %s/secret.new", g_dir);
    assert_true(strncmp(again, err, 64) != 0);
    free(again);
    free(err);
}

/* dhps info / delete, and the error text naming each node and why */
static void info_delete_and_node_errors(void **state)
{
    (void)state;
    char *out = capturef(NULL, DHPS_BIN " info emb --cluster %s/c", g_dir);
    assert_non_null(strstr(out, "table emb: dim 4, fp32, 16 shards, served by 2 of 2 nodes (2 ready)"));
    assert_non_null(strstr(out, "serves it"));
    free(out);
    out = capturef(NULL, DHPS_BIN " info emb --dir %s/c --json", g_dir);
    assert_non_null(strstr(out, "\"nodes_ready\":2"));
    free(out);
    out = capturef(NULL, DHPS_BIN " info nope --cluster %s/c 2>&1; echo rc=$?", g_dir);
    assert_non_null(strstr(out, "has no table 'nope' (tables: emb)"));
    assert_non_null(strstr(out, "rc=1"));
    free(out);
    /* careless values are refused with the value named, nothing written */
    const char *bad[] = {"1,nan,3,4", "1,2,inf,4", "1,2,3,1e39", "1,2,3,4,"};
    const char *why[] = {"value 2 (nan) is not a finite", "value 3 (inf) is not a finite",
                         "value 4 (1e39) is not a finite", "a trailing comma after value 4"};
    for (int i = 0; i < 4; i++) {
        char *e = capturef(NULL, DHPS_BIN " put 9 %s --cluster %s/c 2>&1; echo rc=$?", bad[i], g_dir);
        assert_non_null(strstr(e, why[i]));
        assert_non_null(strstr(e, "rc=2"));
        free(e);
    }
    assert_int_equal(shellf(DHPS_BIN " put 9 1,2,3,4 --cluster %s/c > /dev/null", g_dir), 0);
    out = capturef(NULL, DHPS_BIN " delete 9 --cluster %s/c", g_dir);
    assert_non_null(strstr(out, "deleted 1 keys from emb"));
    free(out);
    out = capturef(NULL, DHPS_BIN " get 9 --cluster %s/c", g_dir);
    assert_non_null(strstr(out, "9 missing"));
    free(out);
    /* a wrong secret: every node named, "auth failed" */
    assert_int_equal(shellf(DHPS_BIN " keygen %s/secret.wrong --force", g_dir), 0);
    out = capturef(NULL, DHPS_BIN " get 1 --map %s/c/map.json --secret %s/secret.wrong 2>&1", g_dir,
                  g_dir);
    assert_non_null(strstr(out, "no node serves table 'emb': node 0 ("));
    assert_non_null(strstr(out, "auth failed (wrong cluster secret?); node 1 ("));
    free(out);
}

static void write_file(const char *name, const void *data, size_t len)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* a (rows, 4) .npy of descr with rows of 1..8 (as double, float or half via raw bytes) */
static void write_npy(const char *name, const char *descr, const char *shape,
                      const void *data, size_t len)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     descr, shape);
    int pad = 64 - (10 + n + 1) % 64;
    memset(hdr + n, ' ', (size_t)pad);
    hdr[n + pad] = '\n';
    uint16_t hl = (uint16_t)(n + pad + 1);
    uint8_t buf[1024];
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    memcpy(buf + 8, &hl, 2);
    memcpy(buf + 10, hdr, hl);
    memcpy(buf + 10 + hl, data, len);
    write_file(name, buf, 10 + hl + len);
}

/* dhps load: CSV, TSV, '<f8' .npy with a keys .npy, raw float32 with --dim; a dim that
 * differs from the table's is refused before anything is sent (also in --dry-run); a
 * --key-base that would wrap is refused; an unknown format says "unsupported";
 * --resume-from skips rows. */
static void load_formats(void **state)
{
    (void)state;
    const char *csv = "101,1,2,3,4\n102,5,6,7,8\n", *tsv = "# keys\n201\t1,2,3,4\n202\t5\t6\t7\t8\n";
    write_file("a.csv", csv, strlen(csv));
    write_file("a.tsv", tsv, strlen(tsv));
    write_file("d3.csv", "1,1,2,3\n", 8);
    write_file("junk.bin", "\x01\x02junk", 6);
    double d[8] = {1, 2, 3, 4, 5, 6, 7, 8.25};
    uint64_t k[2] = {301, 302};
    float f[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    write_npy("f8.npy", "<f8", "(2, 4)", d, sizeof d);
    write_npy("k.npy", "<u8", "(2,)", k, sizeof k);
    write_file("raw.f32", f, sizeof f);
#define LOAD DHPS_BIN " load --cluster %s/c --table emb %s/"
    assert_int_equal(shellf(LOAD "a.csv > /dev/null", g_dir, g_dir), 0);
    assert_int_equal(shellf(LOAD "a.tsv > /dev/null", g_dir, g_dir), 0);
    assert_int_equal(shellf(LOAD "f8.npy --keys %s/k.npy > /dev/null", g_dir, g_dir, g_dir), 0);
    assert_int_equal(shellf(LOAD "raw.f32 --format raw --dim 4 --keys-from-row-index "
                         "--key-base 500 > /dev/null", g_dir, g_dir), 0);
    char *out = capturef(NULL, DHPS_BIN " get 102 201 302 501 --cluster %s/c", g_dir);
    assert_non_null(strstr(out, "102 5,6,7,8\n"));
    assert_non_null(strstr(out, "201 1,2,3,4\n"));
    assert_non_null(strstr(out, "302 5,6,7,8.25\n"));
    assert_non_null(strstr(out, "501 5,6,7,8\n"));
    free(out);
    out = capturef(NULL, LOAD "d3.csv 2>&1; echo rc=$?", g_dir, g_dir);
    assert_non_null(strstr(out, "has dim 3 but table emb has dim 4 on the nodes; nothing sent"));
    assert_non_null(strstr(out, "rc=1"));
    free(out);
    out = capturef(NULL, LOAD "d3.csv --dry-run 2>&1; echo rc=$?", g_dir, g_dir);
    assert_non_null(strstr(out, "has dim 3 but table emb has dim 4"));
    free(out);
    out = capturef(NULL, LOAD "f8.npy --keys-from-row-index --key-base 18446744073709551615 2>&1; "
                  "echo rc=$?", g_dir, g_dir);
    assert_non_null(strstr(out, "overflows the 64-bit key range"));
    assert_non_null(strstr(out, "rc=2"));
    free(out);
    out = capturef(NULL, LOAD "junk.bin 2>&1; echo rc=$?", g_dir, g_dir);
    assert_non_null(strstr(out, "unsupported file format"));
    free(out);
    out = capturef(NULL, LOAD "a.csv --format xml 2>&1; echo rc=$?", g_dir, g_dir);
    assert_non_null(strstr(out, "unsupported format 'xml'"));
    free(out);
    assert_int_equal(shellf(LOAD "f8.npy --keys-from-row-index --key-base 60000 --resume-from 1 "
                         "> /dev/null", g_dir, g_dir), 0);
    out = capturef(NULL, DHPS_BIN " get 60000 60001 --cluster %s/c", g_dir);
    assert_non_null(strstr(out, "60000 missing\n"));
    assert_non_null(strstr(out, "60001 5,6,7,8.25\n"));
    free(out);
#undef LOAD
}

/* dhps get --addr HOST:PORT --secret FILE: one node, no map */
static void get_by_addr(void **state)
{
    (void)state;
    char *ports = capturef(NULL, "grep -o '\"port\": [0-9]*' %s/c/cluster.json | head -1 | cut -d' ' -f2",
                          g_dir);
    int port = atoi(ports);
    free(ports);
    assert_true(port > 0);
    assert_int_equal(shellf(DHPS_BIN " put 77 1,2,3,4 --cluster %s/c > /dev/null", g_dir), 0);
    char *out = capturef(NULL, DHPS_BIN " get 77 --addr 127.0.0.1:%d --secret %s/c/secret 2>&1", port,
                        g_dir);
    assert_non_null(strstr(out, "77 1,2,3,4\n"));
    free(out);
    out = capturef(NULL, DHPS_BIN " get 77 --addr nonsense --secret %s/c/secret 2>&1; echo rc=$?", g_dir);
    assert_non_null(strstr(out, "want HOST:PORT"));
    assert_non_null(strstr(out, "rc=1"));
    free(out);
}

/* --help on every subcommand: exit 0, a usage line naming its flags */
static void help_on_every_subcommand(void **state)
{
    (void)state;
    static const char *const cmds[] = {"sim",  "map",    "load",  "up",     "down",
                                       "start", "stop",  "restart", "get",  "put",
                                       "delete", "info", "stats", "snapshot", "bench",
                                       "chaos", "fault", "traffic"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *out = capturef(NULL, DHPS_BIN " %s --help 2>&1; echo rc=$?", cmds[i]);
        if (!strstr(out, "usage: dhps ") || !strstr(out, "rc=0") || !strstr(out, " --"))
            fail_msg("dhps %s --help:\n%s", cmds[i], out);
        free(out);
    }
}

int main(void)
{
    int skip = use_built_server();
    if (skip)
        return skip;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_flags),
        cmocka_unit_test(promtool_clean_on_every_node),
        cmocka_unit_test(secret_file_newline_and_empty),
        cmocka_unit_test(info_delete_and_node_errors),
        cmocka_unit_test(help_on_every_subcommand),
        cmocka_unit_test(load_formats),
        cmocka_unit_test(get_by_addr),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * Data files against careless hands (issue 12, docs/security.md), with real dhps-server
 * processes:
 * - snapshots: a server owning shards 0 and 1 writes its snapshots at SIGTERM (mode
 *   0600); shard 1's file is then copied over shard 0's -- it used to load silently
 *   (shard 0's keys gone, health 200, and the next snapshot made it permanent). Now the
 *   server refuses to start, naming both identities, and nothing is lost: with the right
 *   file back it serves every key.
 * - the update log (killed with -9, so every update is in the log alone): a log started
 *   under another node id, cluster name or shard count refuses the start naming both
 *   identities; a log of an older build (format-1 segments, the node id alone as the
 *   identity) is read, and new segments carry the full identity; a table added is fine,
 *   a table removed or with another dim refuses the start naming the table; with the
 *   right config back every key is served.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_proc.h"
#include "wal_test.h"

enum { NSH = 2, DIM = 4, N = 64 };

static void put_all(uint16_t port, uint64_t *keys0, uint32_t *n0)
{
    t_conn tc;
    assert_int_equal(t_connect(&tc, port, T_SECRET), 0);
    *n0 = 0;
    for (uint64_t k = 1; k <= N; k++) {
        uint32_t sh = dhps_proto_shard_of(k, NSH);
        float row[DIM] = {(float)k, 1, 2, 3};
        assert_int_equal(t_upsert(&tc, "emb", sh, &k, 1, row, sizeof row, 0, 5, NULL), 0);
        if (sh == 0)
            keys0[(*n0)++] = k;
    }
    t_close(&tc);
}

static uint64_t found0(uint16_t port, const uint64_t *keys0, uint32_t n0)
{
    t_conn tc;
    assert_int_equal(t_connect(&tc, port, T_SECRET), 0);
    uint64_t mask[2] = {0, 0}, cnt = 0;
    float rows[N * DIM];
    assert_int_equal(t_lookup(&tc, "emb", 0, keys0, n0, 0, rows, mask, NULL), 0);
    for (uint32_t i = 0; i < n0; i++)
        cnt += (mask[i / 64] >> (i % 64)) & 1;
    t_close(&tc);
    return cnt;
}

static void copied_snapshot_is_refused(void **st)
{
    (void)st;
    char *dir = t_mkdtemp();
    char cfg[600], text[2048];
    snprintf(cfg, sizeof cfg, "%s/node.json", dir);
    snprintf(text, sizeof text,
             "{\"node_id\":\"f\",\"listen\":{\"tcp_port\":0},\"tables\":[{\"name\":\"emb\","
             "\"dim\":%d}],\"secret_file\":\"%s/secret\",\"snapshot\":{\"dir\":\"%s/snap\"},"
             "\"metrics\":{\"port\":0},\"shards\":{\"nshards\":%d,\"own\":\"all\"},"
             "\"port_file\":\"%s/ports\"}", DIM, dir, dir, NSH, dir);
    t_write(cfg, text, 0600);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    uint64_t keys0[N];
    uint32_t n0;
    put_all(p.port, keys0, &n0);
    assert_true(n0 > 0);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    char s0[600], s1[600], keep[600];
    snprintf(s0, sizeof s0, "%s/snap/emb.0.snap", dir);
    snprintf(s1, sizeof s1, "%s/snap/emb.1.snap", dir);
    snprintf(keep, sizeof keep, "%s/emb.0.snap.keep", dir);
    struct stat sb;
    assert_int_equal(stat(s0, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600); /* the data: its owner only */
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "cp -p %s %s && cp -p %s %s", s0, keep, s1, s0);
    assert_int_equal(system(cmd), 0);
    /* refused, both identities named */
    pid_t pid = p_spawn(dir, "--config", cfg);
    assert_int_not_equal(p_wait_exit(pid, 20000), 0);
    char lp[600];
    snprintf(lp, sizeof lp, "%s/stderr.log", dir);
    char *log = p_slurp(lp);
    assert_non_null(strstr(log, "holds table emb shard 1 of 2, not table emb shard 0 of 2"));
    free(log);
    /* the right file back: every key of shard 0 is there */
    snprintf(cmd, sizeof cmd, "cp -p %s %s", keep, s0);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(found0(p.port, keys0, n0), n0);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    t_rmdir(dir);
}

/* ---- the update log ------------------------------------------------------------- */

/* dir/node.json: node id, coord.cluster (NULL: no coord; etcd is never reachable, which
 * the server tolerates), shard count, the "tables" array's body. */
static void log_cfg(const char *dir, const char *node, const char *cluster, int nshards,
                    const char *tables, char *cfg, size_t len)
{
    char text[4096], coord[200] = "";
    if (cluster)
        snprintf(coord, sizeof coord, ",\"coord\":{\"etcd\":\"http://127.0.0.1:1\","
                 "\"cluster\":\"%s\"}", cluster);
    snprintf(cfg, len, "%s/node.json", dir);
    snprintf(text, sizeof text,
             "{\"node_id\":\"%s\",\"listen\":{\"tcp_port\":0},\"tables\":[%s],"
             "\"secret_file\":\"%s/secret\",\"snapshot\":{\"dir\":\"%s/snap\"},"
             "\"metrics\":{\"port\":0},\"shards\":{\"nshards\":%d,\"own\":\"all\"},"
             "\"port_file\":\"%s/ports\"%s}", node, tables, dir, dir, nshards, dir, coord);
    t_write(cfg, text, 0600);
}

#define EMB4 "{\"name\":\"emb\",\"dim\":4}"
#define EXTRA8 "{\"name\":\"extra\",\"dim\":8}"

/* Upsert keys from..to-1 into emb (dim 4) of a server with NSH shards. */
static void put_range(uint16_t port, uint64_t from, uint64_t to)
{
    t_conn tc;
    assert_int_equal(t_connect(&tc, port, T_SECRET), 0);
    for (uint64_t k = from; k < to; k++) {
        float row[DIM] = {(float)k, 1, 2, 3};
        assert_int_equal(t_upsert(&tc, "emb", dhps_proto_shard_of(k, NSH), &k, 1, row,
                                  sizeof row, 0, 5, NULL), 0);
    }
    t_close(&tc);
}

/* How many of keys 1..to-1 the server finds in emb, with the value they were put with. */
static uint64_t found_range(uint16_t port, uint64_t to)
{
    t_conn tc;
    assert_int_equal(t_connect(&tc, port, T_SECRET), 0);
    uint64_t cnt = 0;
    for (uint64_t k = 1; k < to; k++) {
        uint64_t mask = 0;
        float row[DIM];
        assert_int_equal(t_lookup(&tc, "emb", dhps_proto_shard_of(k, NSH), &k, 1, 0, row,
                                  &mask, NULL), 0);
        cnt += (mask & 1) && row[0] == (float)k;
    }
    t_close(&tc);
    return cnt;
}

/* Start cfg; it must exit non-zero with want in its stderr. */
static void refused(const char *dir, const char *cfg, const char *want)
{
    p_stderr_clear(dir);
    pid_t pid = p_spawn(dir, "--config", cfg);
    int rc = p_wait_exit(pid, 20000);
    char *log = p_stderr(dir);
    if (rc <= 0 || !strstr(log, want))
        fail_msg("start exited %d; stderr lacks \"%s\":\n%s", rc, want, log);
    free(log);
}

static void kill9(proc *p)
{
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
}

/* A log written by node f of cluster blue (2 shards), started under another cluster
 * name, node id or shard count: refused naming both identities, and untouched -- the
 * right config then replays every key. */
static void copied_log_is_refused(void **st)
{
    (void)st;
    char *dir = t_mkdtemp(), cfg[600];
    log_cfg(dir, "f", "blue", NSH, EMB4, cfg, sizeof cfg);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    put_range(p.port, 1, N + 1);
    kill9(&p); /* no snapshot: the keys are in the log alone */
    log_cfg(dir, "f", "green", NSH, EMB4, cfg, sizeof cfg);
    refused(dir, cfg, "written by node \"f\" of cluster \"blue\" with 2 shards, not by node "
                      "\"f\" of cluster \"green\" with 2 shards: another node's or another "
                      "cluster's log; refusing to start");
    log_cfg(dir, "g", "blue", NSH, EMB4, cfg, sizeof cfg);
    refused(dir, cfg, "written by node \"f\" of cluster \"blue\" with 2 shards, not by node "
                      "\"g\" of cluster \"blue\" with 2 shards");
    log_cfg(dir, "f", "blue", 2 * NSH, EMB4, cfg, sizeof cfg);
    refused(dir, cfg, "not by node \"f\" of cluster \"blue\" with 4 shards: a log of "
                      "another shard count");
    /* the log of the cluster-less node f in node f of cluster blue: accepted (a node that
     * gains a cluster name reads what it wrote before, as for snapshots) */
    log_cfg(dir, "f", "blue", NSH, EMB4, cfg, sizeof cfg);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(found_range(p.port, N + 1), N);
    kill9(&p);
    t_rmdir(dir);
}

/* A log of an older build (format-1 segments, identity = the node id alone): another
 * node's is refused; this node's replays, and new segments carry the full identity. */
static void old_log_identity_accepted(void **st)
{
    (void)st;
    char *dir = t_mkdtemp(), cfg[600], logdir[600], last[1000];
    snprintf(logdir, sizeof logdir, "%s/snap/log", dir);
    log_cfg(dir, "f", NULL, NSH, EMB4, cfg, sizeof cfg);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    put_range(p.port, 1, N + 1);
    kill9(&p);
    assert_int_equal(w_dir_to_format1(logdir, "other"), 1);
    refused(dir, cfg, "written by node \"other\" (an older build's identity: the node id "
                      "alone), not by node \"f\" (no cluster name) with 2 shards");
    assert_int_equal(w_dir_to_format1(logdir, "f"), 1);
    p_stderr_clear(dir);
    p_server_log = "info";
    if (p_start(dir, cfg, &p, true)) {
        char *e = p_stderr(dir);
        fail_msg("the older identity of this node was refused:\n%s", e);
    }
    p_server_log = NULL;
    assert_int_equal(found_range(p.port, N + 1), N);
    char *log = p_stderr(dir);
    assert_non_null(strstr(log, "written with the older identity (the node id \"f\" alone): "
                                "accepted"));
    free(log);
    assert_int_equal(w_segments(logdir, last, sizeof last), 2);
    char *id = w_seg_ident(last);
    assert_non_null(id);
    assert_string_equal(id, "dhps-log-id 1 cluster= node=f shards=2 tables=emb:4:fp32");
    free(id);
    put_range(p.port, N + 1, 2 * N + 1);
    kill9(&p);
    /* the old segment and the new one together */
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(found_range(p.port, 2 * N + 1), 2 * N);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    t_rmdir(dir);
}

/* Adding a table is accepted; removing one, or changing its dim or dtype, while the log
 * holds its updates refuses the start naming the table; the config back, every key. */
static void log_tables_checked(void **st)
{
    (void)st;
    char *dir = t_mkdtemp(), cfg[600];
    log_cfg(dir, "f", NULL, NSH, EMB4, cfg, sizeof cfg);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    put_range(p.port, 1, N + 1);
    kill9(&p);
    log_cfg(dir, "f", NULL, NSH, EMB4 "," EXTRA8, cfg, sizeof cfg);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(found_range(p.port, N + 1), N);
    put_range(p.port, N + 1, 2 * N + 1);
    kill9(&p);
    log_cfg(dir, "f", NULL, NSH, "{\"name\":\"emb\",\"dim\":8}," EXTRA8, cfg, sizeof cfg);
    refused(dir, cfg, "updates table emb as it was written: dim 4 fp32; the config says "
                      "dim 8 fp32");
    log_cfg(dir, "f", NULL, NSH, "{\"name\":\"emb\",\"dim\":2,\"dtype\":\"fp16\"}," EXTRA8,
            cfg, sizeof cfg); /* the same row size, another table */
    refused(dir, cfg, "the config says dim 2 fp16");
    log_cfg(dir, "f", NULL, NSH, EXTRA8, cfg, sizeof cfg);
    refused(dir, cfg, "updates table emb (dim 4 fp32), which the config does not have");
    log_cfg(dir, "f", NULL, NSH, EXTRA8 "," EMB4, cfg, sizeof cfg); /* order is free */
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(found_range(p.port, 2 * N + 1), 2 * N);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    /* a clean shutdown snapshots and empties the log: now emb may go */
    log_cfg(dir, "f", NULL, NSH, EXTRA8, cfg, sizeof cfg);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    t_rmdir(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(copied_snapshot_is_refused),
        cmocka_unit_test(copied_log_is_refused),
        cmocka_unit_test(old_log_identity_accepted),
        cmocka_unit_test(log_tables_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

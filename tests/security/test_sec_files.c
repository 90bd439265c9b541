/*
 * Data files against careless hands (issue 12, docs/security.md): a real dhps-server
 * owning shards 0 and 1 writes its snapshots at SIGTERM (mode 0600); shard 1's file is
 * then copied over shard 0's -- it used to load silently (shard 0's keys gone, health
 * 200, and the next snapshot made it permanent). Now the server refuses to start, naming
 * both identities, and nothing is lost: with the right file back it serves every key.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_proc.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(copied_snapshot_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

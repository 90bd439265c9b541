/* Replica catch-up, readiness and anti-entropy between two real dhps-server processes
 * (nodes 1 and 2 of one cluster map, both replicas of every shard), driven with raw
 * rpc + proto.h so that each replica can be written and read alone:
 *   - a replica killed with -9 and restarted takes, before it is ready, every update and
 *     delete its peer acknowledged while it was down;
 *   - a replica whose peer does not answer stays not ready: lookups get
 *     DHPS_E_NOTREADY (never "absent"), /health/ready 503 with its progress,
 *     /health/live 200; writes are taken meanwhile and kept;
 *   - a replica that recovered nothing waits for a peer past sync.peer_wait_s;
 *   - anti-entropy repairs updates and deletes that reached one replica only, and the
 *     replicas' digests end equal. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_proc.h"

#define NSH 4
#define D 8

typedef struct cluster {
    char *dir;
    char node_dir[2][600], cfg[2][700];
    proc p[2];
} cluster;

/* A map of nodes 1 and 2 on free ports, both replicas of all NSH shards, and a config
 * per node (sync settings in sync_json). */
static void cluster_init(cluster *c, const char *sync_json)
{
    memset(c, 0, sizeof *c);
    c->dir = t_mkdtemp();
    char path[700], text[4096];
    uint16_t port[2];
    for (int i = 0; i < 2; i++) {
        port[i] = p_free_port();
        assert_true(port[i] != 0);
    }
    snprintf(path, sizeof path, "%s/map.json", c->dir);
    snprintf(text, sizeof text,
             "{\"version\":1,\"nshards\":%d,\"replicas\":2,\"nodes\":["
             "{\"id\":1,\"host\":\"ha\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"},"
             "{\"id\":2,\"host\":\"hb\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"}],"
             "\"shards\":[[1,2],[2,1],[1,2],[2,1]]}",
             NSH, port[0], port[1]);
    t_write(path, text, 0600);
    snprintf(text, sizeof text, "%s/secret", c->dir);
    t_write(text, T_SECRET, 0600);
    for (int i = 0; i < 2; i++) {
        snprintf(c->node_dir[i], sizeof c->node_dir[i], "%s/n%d", c->dir, i + 1);
        mkdir(c->node_dir[i], 0700);
        char snap[700];
        snprintf(snap, sizeof snap, "%s/snap", c->node_dir[i]);
        mkdir(snap, 0700);
        snprintf(text, sizeof text,
                 "{\"node_id\":\"n%d\",\"labels\":{\"host\":\"h%c\",\"az\":\"a\"},"
                 "\"listen\":{\"workers\":2},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":%d,\"capacity\":8192}],"
                 "\"secret_file\":\"%s/secret\",\"metrics\":{\"port\":0},"
                 "\"snapshot\":{\"dir\":\"%s\",\"on_shutdown\":false},"
                 "\"port_file\":\"%s/ports\","
                 "\"shards\":{\"cluster_map\":\"%s\",\"map_node\":%d},\"sync\":%s}",
                 i + 1, 'a' + i, D, c->dir, snap, c->node_dir[i], path, i + 1, sync_json);
        snprintf(c->cfg[i], sizeof c->cfg[i], "%s/server.json", c->node_dir[i]);
        t_write(c->cfg[i], text, 0600);
    }
}

static void cluster_stop(cluster *c)
{
    for (int i = 0; i < 2; i++)
        if (c->p[i].pid > 0) {
            kill(c->p[i].pid, SIGCONT);
            kill(c->p[i].pid, SIGKILL);
            p_wait_exit(c->p[i].pid, 10000);
            c->p[i].pid = 0;
        }
    t_rmdir(c->dir);
}

static void fill_row(float *row, uint64_t key, uint64_t ver)
{
    for (int j = 0; j < D; j++)
        row[j] = (float)(key % 4096) + (float)j * 0.5f + (float)ver;
}

/* Keys [k0, k1) of shard sh, into keys; returns how many. */
static uint32_t keys_of(uint64_t k0, uint64_t k1, uint32_t sh, uint64_t *keys)
{
    uint32_t m = 0;
    for (uint64_t k = k0; k < k1; k++)
        if (dhps_proto_shard_of(k, NSH) == sh)
            keys[m++] = k;
    return m;
}

static void put_range(t_conn *tc, uint64_t k0, uint64_t k1, uint64_t ver)
{
    uint64_t *keys = malloc((k1 - k0) * 8);
    float *rows = malloc((k1 - k0) * D * 4);
    for (uint32_t sh = 0; sh < NSH; sh++) {
        uint32_t m = keys_of(k0, k1, sh, keys);
        for (uint32_t i = 0; i < m; i++)
            fill_row(rows + (size_t)i * D, keys[i], ver);
        if (m)
            assert_int_equal(t_upsert(tc, "emb", sh, keys, m, rows, D * 4, 0, ver, NULL), 0);
    }
    free(keys);
    free(rows);
}

static void del_range(t_conn *tc, uint64_t k0, uint64_t k1, uint64_t ver)
{
    uint64_t *keys = malloc((k1 - k0) * 8);
    for (uint32_t sh = 0; sh < NSH; sh++) {
        uint32_t m = keys_of(k0, k1, sh, keys);
        if (m)
            assert_int_equal(t_delete(tc, "emb", sh, keys, m, ver), 0);
    }
    free(keys);
}

/* Keys of [k0, k1) that are present with version ver's rows (want_present) or absent
 * (!want_present); returns how many do not match. status: the first non-zero lookup
 * status, else 0. */
static uint32_t mismatches(t_conn *tc, uint64_t k0, uint64_t k1, uint64_t ver,
                           bool want_present, int *status)
{
    uint64_t *keys = malloc((k1 - k0) * 8), *found = calloc((k1 - k0 + 63) / 64, 8);
    float *rows = malloc((k1 - k0) * D * 4), want[D];
    uint32_t bad = 0;
    *status = 0;
    for (uint32_t sh = 0; sh < NSH; sh++) {
        uint32_t m = keys_of(k0, k1, sh, keys);
        if (!m)
            continue;
        int rc = t_lookup(tc, "emb", sh, keys, m, 0, rows, found, NULL);
        if (rc) {
            if (!*status)
                *status = rc;
            bad += m;
            continue;
        }
        for (uint32_t i = 0; i < m; i++) {
            bool has = found[i / 64] >> (i % 64) & 1;
            fill_row(want, keys[i], ver);
            if (has != want_present ||
                (has && memcmp(rows + (size_t)i * D, want, sizeof want)))
                bad++;
        }
    }
    free(keys);
    free(found);
    free(rows);
    return bad;
}

static void expect_present(t_conn *tc, uint64_t k0, uint64_t k1, uint64_t ver)
{
    int st;
    uint32_t bad = mismatches(tc, k0, k1, ver, true, &st);
    if (bad)
        fail_msg("keys [%llu, %llu) version %llu: %u missing or wrong (status %d)",
                 (unsigned long long)k0, (unsigned long long)k1, (unsigned long long)ver, bad,
                 st);
}

static void expect_absent(t_conn *tc, uint64_t k0, uint64_t k1)
{
    int st;
    uint32_t bad = mismatches(tc, k0, k1, 0, false, &st);
    if (bad)
        fail_msg("keys [%llu, %llu): %u present though deleted (status %d)",
                 (unsigned long long)k0, (unsigned long long)k1, bad, st);
}

/* SYNC_DIGEST of (emb, sh) with 256 ranges into out[512]. Returns status. */
static int digest(t_conn *tc, uint32_t sh, uint64_t *out)
{
    uint8_t req[64 + sizeof(dhps_proto_sync_digest)], *resp = malloc(T_RESP_CAP);
    t_hdr(req, "emb", sh, 0);
    dhps_proto_sync_digest d = {.nranges = 256};
    memcpy(req + 64, &d, sizeof d);
    size_t rl = 0;
    int rc = t_call(tc, DHPS_M_SYNC_DIGEST, req, sizeof req, resp, &rl);
    rc = t_status(rc, resp, rl);
    if (!rc) {
        assert_int_equal(rl, 16 + 256 * 16);
        memcpy(out, resp + 16, 256 * 16);
    }
    free(resp);
    return rc;
}

/* Shards whose replicas' digests differ. */
static int divergent_shards(t_conn *a, t_conn *b)
{
    uint64_t da[512] = {0}, db[512] = {0};
    int n = 0;
    for (uint32_t sh = 0; sh < NSH; sh++) {
        assert_int_equal(digest(a, sh, da), 0);
        assert_int_equal(digest(b, sh, db), 0);
        n += memcmp(da, db, sizeof da) != 0;
    }
    return n;
}

static double metric(const proc *p, const char *series)
{
    char *body = NULL;
    double v = -1;
    if (t_http_get(p->mport, "/metrics", &body) == 200)
        v = t_metric(body, series);
    free(body);
    return v;
}

/* Wait until node i's /health/ready says state "catching_up": recovery done, the rpc
 * server listening (before that, /health/live is 200 already but connections to the rpc
 * port are refused). 0 or -1. */
static int wait_catching_up(const proc *p, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    while (t_now_ms() < end) {
        char *body = NULL;
        int code = t_http_get(p->mport, "/health/ready", &body);
        bool ok = code == 503 && body && strstr(body, "\"state\":\"catching_up\"");
        free(body);
        if (ok)
            return 0;
        t_sleep_ms(10);
    }
    return -1;
}

static void start_node(cluster *c, int i, bool wait_ready)
{
    if (p_start(c->node_dir[i], c->cfg[i], &c->p[i], wait_ready)) {
        char log[700];
        snprintf(log, sizeof log, "%s/stderr.log", c->node_dir[i]);
        char *t = p_slurp(log);
        fail_msg("node %d did not start%s; its log:\n%s", i + 1,
                 wait_ready ? " and become ready" : "", t);
    }
}

/* kill -9 of a replica; updates and deletes acknowledged by its peer meanwhile are on it
 * when it is ready again. */
static void test_catch_up_after_kill9(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, "{\"peer_wait_s\":20,\"anti_entropy_s\":0}");
    start_node(&c, 0, false);
    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[0], "/health/ready", 200, 30000), 0);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 30000), 0);
    t_conn a, b;
    assert_int_equal(t_connect(&a, c.p[0].port, T_SECRET), 0);
    assert_int_equal(t_connect(&b, c.p[1].port, T_SECRET), 0);
    put_range(&a, 1, 3001, 1); /* both replicas, as a client's fan-out */
    put_range(&b, 1, 3001, 1);
    t_close(&b);
    kill(c.p[1].pid, SIGKILL);
    assert_int_equal(p_wait_exit(c.p[1].pid, 10000), 128 + SIGKILL);

    /* while node 2 is down, node 1 alone acknowledges: */
    put_range(&a, 1, 501, 2);     /* overwrites */
    put_range(&a, 3001, 4001, 1); /* new keys */
    del_range(&a, 1501, 1601, 3); /* deletes */

    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 60000), 0);
    assert_int_equal(t_connect(&b, c.p[1].port, T_SECRET), 0);
    expect_present(&b, 1, 501, 2);
    expect_present(&b, 501, 1501, 1);
    expect_absent(&b, 1501, 1601);
    expect_present(&b, 1601, 4001, 1);
    assert_true(metric(&c.p[1], "dhps_sync_records_merged_total") >= 1000);
    assert_int_equal(metric(&c.p[1], "dhps_sync_stores_pending"), 0);
    assert_int_equal(divergent_shards(&a, &b), 0);
    t_close(&a);
    t_close(&b);
    cluster_stop(&c);
}

/* A replica whose only peer does not answer: not ready, lookups NOTREADY, writes kept;
 * ready once the peer answers, with both its own writes and the peer's data. */
static void test_not_ready_until_caught_up(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, "{\"peer_wait_s\":600,\"anti_entropy_s\":0}");
    start_node(&c, 0, false);
    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[0], "/health/ready", 200, 30000), 0);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 30000), 0);
    t_conn a, b;
    assert_int_equal(t_connect(&a, c.p[0].port, T_SECRET), 0);
    put_range(&a, 1, 2001, 1);
    kill(c.p[1].pid, SIGKILL);
    p_wait_exit(c.p[1].pid, 10000);
    kill(c.p[0].pid, SIGSTOP); /* its kernel still accepts connections; it answers none */

    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[1], "/health/live", 200, 30000), 0);
    assert_int_equal(wait_catching_up(&c.p[1], 30000), 0);
    char *body = NULL;
    assert_int_equal(t_http_get(c.p[1].mport, "/health/ready", &body), 503);
    assert_non_null(strstr(body, "\"ready\":false"));
    free(body);
    assert_int_equal(t_connect(&b, c.p[1].port, T_SECRET), 0);
    int st;
    assert_int_equal(mismatches(&b, 1, 2001, 1, true, &st), 2000);
    assert_int_equal(st, DHPS_E_NOTREADY); /* never "absent" */
    put_range(&b, 5001, 5501, 7);          /* writes are taken while catching up */
    assert_int_equal(t_http_get(c.p[1].mport, "/health/ready", &body), 503);
    free(body);

    kill(c.p[0].pid, SIGCONT);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 60000), 0);
    expect_present(&b, 1, 2001, 1);
    expect_present(&b, 5001, 5501, 7);
    t_close(&a);
    t_close(&b);
    cluster_stop(&c);
}

/* A replica whose disk was wiped (it recovers nothing) does not give up on a peer that
 * does not answer after sync.peer_wait_s: served empty it would answer "absent" for
 * every key. It is ready once the peer answers, with the peer's data. */
static void test_empty_replica_waits_for_a_peer(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, "{\"peer_wait_s\":1,\"anti_entropy_s\":0}");
    start_node(&c, 0, false);
    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[0], "/health/ready", 200, 30000), 0);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 30000), 0);
    t_conn a, b;
    assert_int_equal(t_connect(&a, c.p[0].port, T_SECRET), 0);
    put_range(&a, 1, 1001, 1);
    kill(c.p[1].pid, SIGKILL);
    p_wait_exit(c.p[1].pid, 10000);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/snap' && mkdir '%s/snap'", c.node_dir[1],
             c.node_dir[1]);
    assert_int_equal(system(cmd), 0);
    kill(c.p[0].pid, SIGSTOP);
    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[1], "/health/live", 200, 30000), 0);
    uint64_t until = t_now_ms() + 3000; /* three times peer_wait_s */
    while (t_now_ms() < until) {
        char *body = NULL;
        assert_int_equal(t_http_get(c.p[1].mport, "/health/ready", &body), 503);
        free(body);
        t_sleep_ms(100);
    }
    assert_int_equal(wait_catching_up(&c.p[1], 30000), 0);
    assert_int_equal(t_connect(&b, c.p[1].port, T_SECRET), 0);
    int st;
    assert_int_equal(mismatches(&b, 1, 1001, 1, true, &st), 1000);
    assert_int_equal(st, DHPS_E_NOTREADY);
    kill(c.p[0].pid, SIGCONT);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 60000), 0);
    expect_present(&b, 1, 1001, 1);
    t_close(&a);
    t_close(&b);
    cluster_stop(&c);
}

/* Updates and deletes that reached one replica only are repaired by anti-entropy. */
static void test_anti_entropy_repairs(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, "{\"peer_wait_s\":20,\"anti_entropy_s\":1,\"tombstone_s\":60}");
    start_node(&c, 0, false);
    start_node(&c, 1, false);
    assert_int_equal(p_wait_http(&c.p[0], "/health/ready", 200, 30000), 0);
    assert_int_equal(p_wait_http(&c.p[1], "/health/ready", 200, 30000), 0);
    t_conn a, b;
    assert_int_equal(t_connect(&a, c.p[0].port, T_SECRET), 0);
    assert_int_equal(t_connect(&b, c.p[1].port, T_SECRET), 0);
    put_range(&a, 1, 1001, 1);
    put_range(&b, 1, 1001, 1);
    put_range(&a, 1001, 1501, 4); /* on node 1 only (an ONE ack) */
    put_range(&b, 1, 101, 5);     /* newer, on node 2 only */
    del_range(&a, 501, 601, 6);   /* deleted on node 1 only */
    uint64_t end = t_now_ms() + dhps_test_ms(60000); /* a bound on an event, scaled */
    int st;
    while (t_now_ms() < end &&
           (mismatches(&b, 1001, 1501, 4, true, &st) || mismatches(&b, 501, 601, 0, false, &st) ||
            mismatches(&a, 1, 101, 5, true, &st)))
        t_sleep_ms(100);
    expect_present(&b, 1001, 1501, 4);
    expect_absent(&b, 501, 601);
    expect_present(&a, 1, 101, 5);
    expect_absent(&a, 501, 601);
    while (t_now_ms() < end && divergent_shards(&a, &b))
        t_sleep_ms(100);
    assert_int_equal(divergent_shards(&a, &b), 0);
    assert_true(metric(&c.p[1], "dhps_sync_antientropy_passes_total") >= 1);
    t_close(&a);
    t_close(&b);
    cluster_stop(&c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catch_up_after_kill9),
        cmocka_unit_test(test_not_ready_until_caught_up),
        cmocka_unit_test(test_empty_replica_waits_for_a_peer),
        cmocka_unit_test(test_anti_entropy_repairs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

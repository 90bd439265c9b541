/* Integration: 3 real dhps-server processes on 127.0.0.1 serving a generated map; the
 * client writes keys across every shard and reads them back (fp32 and fp16), then with
 * one server stopped reads them from the surviving replicas. Exit 77 (skip) when the
 * dhps-server binary was not built. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/route.h"
#include "test_scale.h"

#ifndef DHPS_SERVER_BIN
#define DHPS_SERVER_BIN ""
#endif

#define N 3
#define NSHARDS 64
#define DIM 16
#define NKEYS 5000

static char g_dir[64];
static pid_t g_pid[N];

static dhps_cluster_map *gen_map(const uint16_t *ports, bool reversed, uint64_t version)
{
    dhps_cluster_node nodes[N];
    memset(nodes, 0, sizeof nodes);
    for (int k = 0; k < N; k++) {
        int i = reversed ? N - 1 - k : k;
        nodes[k].id = (uint32_t)i;
        snprintf(nodes[k].host, sizeof nodes[k].host, "local-%d", i);
        snprintf(nodes[k].az, sizeof nodes[k].az, "az0");
        snprintf(nodes[k].addr, sizeof nodes[k].addr, "127.0.0.1:%u", ports ? ports[i] : 1000 + i);
    }
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = NSHARDS;
    gp.replicas = 2;
    gp.version = version;
    dhps_cluster_map *m = NULL;
    assert_int_equal(dhps_cluster_map_generate(&gp, nodes, N, &m, NULL, 0), 0);
    return m;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void stop(int i)
{
    if (g_pid[i] > 0) {
        kill(g_pid[i], SIGTERM);
        int st;
        waitpid(g_pid[i], &st, 0);
        g_pid[i] = 0;
    }
}

static void test_three_servers(void **state)
{
    (void)state;
    char path[256], secret_path[256];
    snprintf(secret_path, sizeof secret_path, "%s/secret", g_dir);
    write_text(secret_path, "integration-secret-0123456789abcdef\n", 0600);
    dhps_cluster_map *m0 = gen_map(NULL, false, 1);
    uint16_t ports[N];
    for (int i = 0; i < N; i++) {
        uint32_t own[NSHARDS];
        size_t k = dhps_cluster_map_shards_of(m0, (uint32_t)i, own, NSHARDS);
        char list[1024] = "", *p = list;
        for (size_t j = 0; j < k; j++)
            p += sprintf(p, "%s%u", j ? "," : "", own[j]);
        char cfg[4096];
        snprintf(cfg, sizeof cfg,
                 "{\"node_id\": \"n%d\", \"labels\": {\"host\": \"local-%d\", \"az\": \"az0\"},"
                 " \"listen\": {\"host\": \"127.0.0.1\", \"tcp_port\": 0, \"workers\": 1},"
                 " \"tables\": [{\"name\": \"emb\", \"dim\": %d, \"dtype\": \"fp32\"}],"
                 " \"secret_file\": \"%s\", \"metrics\": {\"port\": -1},"
                 " \"shards\": {\"nshards\": %d, \"own\": [%s]},"
                 " \"port_file\": \"%s/port%d\"}",
                 i, i, DIM, secret_path, NSHARDS, list, g_dir, i);
        snprintf(path, sizeof path, "%s/node%d.json", g_dir, i);
        write_text(path, cfg, 0644);
        g_pid[i] = fork();
        assert_true(g_pid[i] >= 0);
        if (g_pid[i] == 0) {
            execl(DHPS_SERVER_BIN, DHPS_SERVER_BIN, "--config", path, (char *)NULL);
            _exit(127);
        }
    }
    for (int i = 0; i < N; i++) { /* wait for each port file */
        snprintf(path, sizeof path, "%s/port%d", g_dir, i);
        unsigned rpc = 0, http = 0;
        for (uint32_t t = 0; t < dhps_test_ms(10000) / 10; t++) { /* scaled bound */
            FILE *f = fopen(path, "r");
            if (f) {
                int got = fscanf(f, "%u %u", &rpc, &http);
                fclose(f);
                if (got >= 1 && rpc)
                    break;
            }
            int st;
            if (waitpid(g_pid[i], &st, WNOHANG) == g_pid[i])
                fail_msg("dhps-server %d exited (status %d)", i, st);
            usleep(10000);
        }
        assert_true(rpc > 0);
        ports[i] = (uint16_t)rpc;
    }
    /* the same node list gives the same placement, now with the real ports */
    dhps_cluster_map *m = gen_map(ports, false, 2);
    for (uint32_t s = 0; s < NSHARDS; s++) {
        const uint32_t *a, *b;
        dhps_cluster_map_replicas(m0, s, &a);
        dhps_cluster_map_replicas(m, s, &b);
        assert_memory_equal(a, b, 2 * sizeof *a);
    }
    /* the client starts from a stale map (version 1, other placement); the servers
     * refuse shards they do not own, which makes the client reload the file (version 2)
     * and re-route the write's refused chunks with it */
    dhps_cluster_map *stale = gen_map(ports, true, 1);
    size_t moved = 0;
    for (uint32_t s = 0; s < NSHARDS; s++)
        for (uint32_t i = 0; i < N; i++)
            moved += dhps_cluster_map_owns(stale, i, s) != dhps_cluster_map_owns(m, i, s);
    assert_true(moved > 0);
    char map_path[256];
    snprintf(map_path, sizeof map_path, "%s/map.json", g_dir);
    assert_int_equal(dhps_cluster_map_write(stale, map_path), 0);

    dhps_client_params p;
    dhps_client_params_init(&p);
    p.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    p.map_path = map_path;
    p.secret = "integration-secret-0123456789abcdef";
    p.secret_len = strlen(p.secret);
    p.host = "local-0";
    p.az = "az0";
    p.default_timeout_us = dhps_test_us(5000000); /* not under test: scaled */
    p.reload_interval_ms = 0; /* only on "not owned" */
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    assert_int_equal(dhps_client_map_version(c), 1);
    assert_int_equal(dhps_cluster_map_write(m, map_path), 0);

    static uint64_t keys[NKEYS];
    static float vals[NKEYS * DIM], out[NKEYS * DIM];
    static uint16_t out16[NKEYS * DIM];
    uint64_t mask[(NKEYS + 63) / 64];
    for (int i = 0; i < NKEYS; i++) {
        keys[i] = 0x1000000ull + (uint64_t)i * 7919;
        for (int d = 0; d < DIM; d++)
            vals[i * DIM + d] = (float)(i % 512) + (float)d * 0.25f;
    }
    dhps_client_result res;
    int rc = dhps_client_update(c, "emb", keys, vals, NKEYS, DIM, DHPS_FP32, 0, DHPS_ACK_ALL, 0,
                                mask, &res);
    /* routed with the stale map: refused "not owned", re-routed with version 2 */
    assert_int_equal(rc, 0);
    dhps_client_stats st;
    dhps_client_stats_get(c, &st);
    assert_true(st.not_owned > 0);
    assert_true(st.moved > 0);
    assert_int_equal(st.map_reloads, 1);
    assert_int_equal(dhps_client_map_version(c), 2);
    rc = dhps_client_update(c, "emb", keys, vals, NKEYS, DIM, DHPS_FP32, 0, DHPS_ACK_ALL, 0,
                            mask, &res);
    assert_int_equal(rc, 0);
    rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
    assert_int_equal(rc, 0);
    assert_int_equal(res.found, NKEYS);
    assert_memory_equal(out, vals, sizeof vals);
    /* keys never written are missing */
    uint64_t other[2] = {1, 2};
    float o2[2 * DIM];
    uint64_t m2[1];
    assert_int_equal(dhps_client_lookup(c, "emb", other, 2, o2, DIM, DHPS_FP32, m2, 0, &res), 0);
    assert_int_equal(m2[0], 3);
    /* fp16 output */
    rc = dhps_client_lookup(c, "emb", keys, NKEYS, out16, DIM, DHPS_FP16, mask, 0, &res);
    assert_int_equal(rc, 0);
    assert_int_equal(res.found, NKEYS);
    /* delete the first 100 keys on every replica; they read as missing, the rest stay */
    assert_int_equal(dhps_client_delete(c, "emb", keys, 100, DHPS_ACK_ALL, 0, mask, &res), 0);
    rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
    assert_int_equal(rc, 0);
    assert_int_equal(res.found, NKEYS - 100);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal((mask[i / 64] >> (i % 64)) & 1, i < 100);
    rc = dhps_client_update(c, "emb", keys, vals, 100, DIM, DHPS_FP32, 0, DHPS_ACK_ALL, 0, mask,
                            &res);
    assert_int_equal(rc, 0);
    /* the client partitioned from node 2 (rpc fault rule): lookups stay complete
     * (retries to the other replica), and the router moves traffic off node 2 */
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.partition = true;
    assert_int_equal(dhps_client_fault_set(c, 9, &f), -ENOENT);
    dhps_client_node_stats nb, n0, n1, n2a, n2b, n2c;
    const int rounds = 40;
    dhps_client_node_stats_get(c, 2, &nb);
    for (int r = 0; r < rounds; r++) { /* baseline: node 2's share without the fault */
        rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
        assert_int_equal(rc, 0);
    }
    assert_int_equal(dhps_client_fault_set(c, 2, &f), 0);
    /* every call sent before the rule has completed (lookups return with hedge losers
     * still in flight; one of them to node 2 could otherwise be answered inside the
     * window): from here on, node 2 can answer only what is sent under the rule */
    assert_int_equal(dhps_client_drain(c, dhps_test_us(5000000)), 0);
    dhps_client_node_stats_get(c, 2, &n0);
    dhps_rpc_fault_stats fs;
    char addr2[32];
    snprintf(addr2, sizeof addr2, "127.0.0.1");
    /* lookups stay whole; go on until the router has run into the partition (it may
     * avoid node 2 for a while when its cost is already above its peers') */
    int found_rounds = 0;
    uint64_t part_end = dhps_test_now_ms() + dhps_test_ms(4000); /* an event, scaled */
    do {
        rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
        assert_int_equal(rc, 0);
        assert_int_equal(res.found, NKEYS);
        assert_int_equal(dhps_rpc_fault_get_stats(addr2, ports[2], &fs), 0);
        if (fs.partitioned == 0)
            usleep(2000);
    } while (++found_rounds < rounds || (fs.partitioned == 0 && dhps_test_now_ms() < part_end));
    assert_memory_equal(out, vals, sizeof vals);
    assert_true(fs.partitioned > 0);
    /* then another 40 lookups: the router knows node 2 fails now */
    dhps_client_node_stats_get(c, 2, &n1);
    struct dhps_route *rt = dhps_client_route(c);
    assert_non_null(rt);
    dhps_route_stats rs0, rs1;
    dhps_route_node_stats other0[2], other1[2];
    assert_int_equal(dhps_route_stats_get(rt, &rs0), 0);
    for (uint32_t i = 0; i < 2; i++)
        assert_int_equal(dhps_route_node_stats_get(rt, i, &other0[i]), 0);
    for (int r = 0; r < rounds; r++) {
        rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
        assert_int_equal(rc, 0);
        assert_int_equal(res.found, NKEYS);
    }
    assert_memory_equal(out, vals, sizeof vals);
    assert_int_equal(dhps_client_drain(c, dhps_test_us(5000000)), 0);
    dhps_client_node_stats_get(c, 2, &n2a);
    assert_int_equal(dhps_rpc_fault_get_stats(addr2, ports[2], &fs), 0);
    assert_int_equal(n2a.ok, n0.ok); /* nothing answered by node 2 */
    /* every message to node 2 in the window failed at the partition: an error, or
     * cancelled when it was a hedge (or a hedged primary) whose pair the other replica
     * had already answered */
    assert_int_equal(n2a.messages - n0.messages, fs.partitioned);
    assert_int_equal((n2a.errors - n0.errors) + (n2a.cancelled - n0.cancelled), fs.partitioned);
    assert_int_equal(n2a.timeouts, n0.timeouts);
    /* traffic moved: once the router has seen node 2 fail it sends it at most a couple
     * of messages per lookup (breaker probes; the weight floor's ~7 % of a tier's share
     * while the ejection cap keeps the breaker closed: 0..35 in 40 lookups seen, 89 once
     * under heavy load; the bound is 3 per lookup), where a
     * router ignoring the failures sends it its share of every lookup's 64 shards (the
     * baseline varies a lot between runs, 0..850 in 40 lookups seen, as the router
     * spreads over tiers) */
    uint64_t before = n0.messages - nb.messages, after = n2a.messages - n1.messages;
    print_message("  partition node 2: messages to node 2 in %d lookups: %llu before; "
                  "%llu partitioned in the %d lookups until the first and %d more; "
                  "%llu in those last %d\n", rounds, (unsigned long long)before,
                  (unsigned long long)(n2a.messages - n0.messages), found_rounds, rounds,
                  (unsigned long long)after, rounds);
    assert_int_equal(dhps_route_stats_get(rt, &rs1), 0);
    bool other_open = false;
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(dhps_route_node_stats_get(rt, i, &other1[i]), 0);
        other_open |= other1[i].ejections != other0[i].ejections ||
                      other1[i].breaker != DHPS_ROUTE_CLOSED;
    }
    if (other_open) {
        /* A healthy node's breaker opened in the window too (timeouts or slow answers
         * under a loaded sanitizer run: ASan repeat 7 of 10, 2026-12-05, sent node 2 843
         * messages here). Isolated for slowness, node 2's errors displace it (route.md,
         * "errors outrank slowness") and the bound below holds. Isolated for errors or
         * timeouts, the ejection cap (max_ejection_share 0.5 of 3 nodes: one) keeps node
         * 2's breaker closed, and the shards whose other replica is the ejected node have
         * node 2 as their only eligible replica: by design, not a router ignoring the
         * failures. What must show then: the router tried to eject node 2 and the cap
         * stopped it (the lookups above stayed complete through retries). */
        print_message("  another node's breaker opened in the window (node 0: %llu -> %llu "
                      "ejections, node 1: %llu -> %llu); ejection_capped %llu -> %llu, "
                      "displaced %llu -> %llu\n",
                      (unsigned long long)other0[0].ejections,
                      (unsigned long long)other1[0].ejections,
                      (unsigned long long)other0[1].ejections,
                      (unsigned long long)other1[1].ejections,
                      (unsigned long long)rs0.ejection_capped,
                      (unsigned long long)rs1.ejection_capped,
                      (unsigned long long)rs0.displaced, (unsigned long long)rs1.displaced);
        assert_true(rs1.ejection_capped > rs0.ejection_capped || after <= 3 * (uint64_t)rounds);
    } else {
        assert_true(after <= 3 * (uint64_t)rounds); /* 89 seen once on a loaded machine */
    }
    /* cleared: node 2 answers again */
    assert_int_equal(dhps_client_fault_set(c, 2, NULL), 0);
    assert_int_equal(dhps_client_fault_set(c, 2, NULL), -ENOENT);
    /* until node 2 has answered once. Its breaker's isolation is time-based and doubles
     * with each opening during the partition (1 s up to 60 s, route.h), so the 2 s this
     * loop once allowed ran out when a slow (ASan, loaded) partition phase had opened it
     * three times: the bound covers the longest isolation plus a scaled margin; it is a
     * wait on an event and costs nothing when node 2 answers at once */
    uint64_t clear_end = dhps_test_now_ms() + 60000 + dhps_test_ms(2000);
    do {
        rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
        assert_int_equal(rc, 0);
        dhps_client_node_stats_get(c, 2, &n2b);
        if (n2b.ok > n2a.ok)
            break;
        usleep(10000);
    } while (dhps_test_now_ms() < clear_end);
    dhps_client_node_stats_get(c, 2, &n2c);
    assert_true(n2c.ok > n2a.ok);
    /* table info from the nodes' INFO */
    uint32_t tdim = 0;
    int tdtype = -1;
    assert_int_equal(dhps_client_table_info(c, "emb", &tdim, &tdtype, 0), 0);
    assert_int_equal(tdim, DIM);
    assert_int_equal(tdtype, DHPS_FP32);
    assert_int_equal(dhps_client_table_info(c, "nope", &tdim, &tdtype, 0), DHPS_E_NOTFOUND);
    assert_int_equal(dhps_client_table_info(c, NULL, &tdim, &tdtype, 0), -EINVAL);
    assert_int_equal(dhps_client_table_info(c, "emb", NULL, &tdtype, 0), -EINVAL);
    /* one server down: every shard keeps a replica */
    stop(1);
    rc = dhps_client_lookup(c, "emb", keys, NKEYS, out, DIM, DHPS_FP32, mask, 0, &res);
    assert_int_equal(rc, 0);
    assert_int_equal(res.found, NKEYS);
    assert_memory_equal(out, vals, sizeof vals);
    /* a node down (connection refused) is skipped: the others still answer INFO */
    tdim = 0;
    assert_int_equal(dhps_client_table_info(c, "emb", &tdim, &tdtype, 2000000), 0);
    assert_int_equal(tdim, DIM);
    dhps_client_destroy(c);
    dhps_cluster_map_destroy(m);
    dhps_cluster_map_destroy(m0);
    dhps_cluster_map_destroy(stale);
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N; i++)
        stop(i);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        return 0;
    return 0;
}

int main(void)
{
    if (!DHPS_SERVER_BIN[0] || access(DHPS_SERVER_BIN, X_OK) != 0) {
        fprintf(stderr, "dhps-server not built: skipping\n");
        return 77;
    }
    strcpy(g_dir, "/tmp/dhps_clint_XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_three_servers, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * dhps-server following the cluster map in etcd (shards.follow_etcd), end to end with a
 * real etcd and three real dhps-server processes (docs/server.md "Following the map in
 * etcd"):
 *   - map v1 (nodes 1, 2) published before the servers start; their map files are
 *     missing: they start from etcd's map and write it to the file. Node 3 is not in
 *     the map: it starts holding nothing, registers (map_version 1, not_ready []) and
 *     waits.
 *   - a client loads NK keys at ACK_ALL.
 *   - v2 adds node 3 joining shard 0 in place of node 1. With both sources stopped
 *     (SIGSTOP) node 3 opens the store and reports it not ready in its registration;
 *     resumed, it catches up: every key of shard 0 is on node 3 when read from it
 *     directly; a client on v2 then writes at ACK_ALL and node 3 (joining) has every
 *     new value. Node 1 fences shard 0: a write routed with v1 gets DHPS_E_MOVED; a SYNC
 *     request routed with a map newer than node 1's gets DHPS_E_NOTREADY.
 *   - v3 flips node 3 in: node 1 answers NOTFOUND for shard 0 (MOVED for a write routed
 *     with v2), its snapshot of shard 0 is deleted, dhps_shards_held drops 4 -> 3 and the
 *     store's memory is freed (segment bytes down, dhps_stores_freed_total 1).
 *   - etcd killed, node 3 restarted: it starts from its map file (v3) and holds shard 0
 *     with every key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/coord.h"
#include "coord_proc.h"

#define NSH 4
#define D 32
#define NK 20000
#define NN 3

static struct etcd_fx fx;
static dhps_coord *C;
static char *dir;
static char nd[NN][128], cfg[NN][160];
static uint16_t port[NN];
static int hold[NN] = {-1, -1, -1}; /* the map's ports, held until the end (p_hold_port) */
static proc P[NN];
static uint64_t keys[NK];
static float vals[NK * D];

static char *node_json(int i)
{
    static char b[NN][256];
    snprintf(b[i], sizeof b[i],
             "{\"id\":%d,\"host\":\"h%d\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"}",
             i + 1, i + 1, port[i]);
    return b[i];
}

/* Publish a map of version v over CAS; shards and joining are JSON text. */
static int publish(int v, int nnodes, const char *shards, const char *joining)
{
    char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"version\":%d,\"nshards\":%d,\"replicas\":2,\"nodes\":[%s,%s%s%s],"
             "\"shards\":%s%s%s}",
             v, NSH, node_json(0), node_json(1), nnodes > 2 ? "," : "",
             nnodes > 2 ? node_json(2) : "", shards, joining ? ",\"joining\":" : "",
             joining ? joining : "");
    int64_t rev = cp_key_rev(C, "/dhps/f/map");
    return dhps_coord_cas(C, "/dhps/f/map", buf, strlen(buf), rev, 0, NULL);
}

/* node i's registration, malloc'ed (NULL: none) */
static char *registration(int i)
{
    char key[64];
    snprintf(key, sizeof key, "/dhps/f/nodes/n%d", i + 1);
    return cp_get_value(C, key);
}

/* Wait until node i's registration contains every needle (NULL-terminated). 0 or -1. */
static int wait_registration(int i, unsigned ms, const char *n1, const char *n2)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    while (t_now_ms() < end) {
        char *r = registration(i);
        bool ok = r && strstr(r, n1) && (!n2 || strstr(r, n2));
        free(r);
        if (ok)
            return 0;
        t_sleep_ms(20);
    }
    char *r = registration(i);
    fprintf(stderr, "registration of n%d: %s (wanted %s %s)\n", i + 1, r ? r : "(none)", n1,
            n2 ? n2 : "");
    free(r);
    return -1;
}

static size_t shard_keys(uint32_t shard, uint64_t *out, uint32_t *idx)
{
    size_t n = 0;
    for (uint32_t i = 0; i < NK; i++)
        if (dhps_proto_shard_of(keys[i], NSH) == shard) {
            idx[n] = i;
            out[n++] = keys[i];
        }
    return n;
}

/* Read shard's keys from node i directly (map_version 0): status, and how many came
 * back with the value written. */
static int read_direct(int i, uint32_t shard, size_t *good, size_t *total)
{
    static uint64_t k[NK];
    static uint32_t idx[NK];
    static float rows[NK * D];
    uint64_t found[NK / 64 + 1];
    size_t n = shard_keys(shard, k, idx);
    t_conn tc;
    if (t_connect(&tc, P[i].port, T_SECRET))
        return -1;
    int rc = t_lookup(&tc, "emb", shard, k, (uint32_t)n, 0, rows, found, NULL);
    t_close(&tc);
    *good = 0;
    *total = n;
    for (size_t j = 0; rc == 0 && j < n; j++)
        if ((found[j / 64] >> (j % 64) & 1) && rows[j * D] == vals[idx[j] * D])
            (*good)++;
    return rc;
}

/* Upsert one key of shard to node i, routed with map_version mv. Returns the status. */
static int write_routed(int i, uint32_t shard, uint64_t mv)
{
    uint64_t k[NK];
    uint32_t idx[NK];
    shard_keys(shard, k, idx);
    float row[D];
    for (int j = 0; j < D; j++)
        row[j] = vals[idx[0] * D + j];
    t_conn tc;
    if (t_connect(&tc, P[i].port, T_SECRET))
        return -1;
    tc.map_version = mv;
    int rc = t_upsert(&tc, "emb", shard, k, 1, row, D * 4, 0, 7, NULL);
    t_close(&tc);
    return rc;
}

/* A SYNC_DIGEST of shard to node i routed with map_version mv. Returns the status. */
static int sync_routed(int i, uint32_t shard, uint64_t mv)
{
    uint8_t req[64 + sizeof(dhps_proto_sync_digest)];
    t_hdr(req, "emb", shard, 0);
    memcpy(req + offsetof(dhps_proto_hdr, map_version), &mv, 8);
    dhps_proto_sync_digest d = {.nranges = 16};
    memcpy(req + 64, &d, sizeof d);
    t_conn tc;
    if (t_connect(&tc, P[i].port, T_SECRET))
        return -1;
    size_t rl = 0;
    int rc = t_call(&tc, DHPS_M_SYNC_DIGEST, req, sizeof req, tc.resp, &rl);
    rc = t_status(rc, tc.resp, rl);
    t_close(&tc);
    return rc;
}

/* Start node i; with wait, until /health is 200 (its stores caught up). */
static int start_node(int i, bool wait)
{
    int rc = p_start(nd[i], cfg[i], &P[i], wait);
    if (rc)
        fprintf(stderr, "server n%d did not start (%s/stderr.log)\n", i + 1, nd[i]);
    return rc;
}

static uint64_t file_version(int i)
{
    char path[700];
    snprintf(path, sizeof path, "%s/map.json", nd[i]);
    dhps_cluster_map *m = NULL;
    uint64_t v = dhps_cluster_map_load(path, &m, NULL, 0) ? 0 : dhps_cluster_map_version(m);
    dhps_cluster_map_destroy(m);
    return v;
}

static void test_follow(void **state)
{
    (void)state;
    /* v1 (nodes 1 and 2) before anyone starts; the map files are missing */
    assert_int_equal(publish(1, 2, "[[1,2],[2,1],[1,2],[2,1]]", NULL), 0);
    for (int i = 0; i < NN; i++) /* all at once: nodes 1 and 2 catch up from each other */
        assert_int_equal(start_node(i, false), 0);
    for (int i = 0; i < NN; i++)
        assert_int_equal(p_wait_http(&P[i], "/health", 200, 20000), 0);
    assert_int_equal(cp_wait_keys(C, "/dhps/f/nodes/", NN, 10000), NN);
    for (int i = 0; i < NN; i++) {
        assert_int_equal(cp_metric(&P[i], "dhps_map_version"), 1);
        assert_int_equal(file_version(i), 1); /* etcd's map written to the file */
    }
    assert_int_equal(cp_metric(&P[0], "dhps_shards_held"), 4);
    /* node 3 is not in the map: it holds nothing, registers and waits */
    assert_int_equal(cp_metric(&P[2], "dhps_shards_held"), 0);
    assert_int_equal(wait_registration(2, 5000, "\"map_version\":1", "\"not_ready\":[]"), 0);
    char *r = registration(2);
    assert_non_null(strstr(r, "\"id\":3"));
    free(r);
    size_t good, total;
    uint64_t k1[1] = {keys[0]};
    t_conn tc;
    assert_int_equal(t_connect(&tc, P[2].port, T_SECRET), 0);
    assert_int_equal(t_lookup(&tc, "emb", dhps_proto_shard_of(keys[0], NSH), k1, 1, 0, NULL,
                              NULL, NULL),
                     DHPS_E_NOTFOUND);
    t_close(&tc);

    /* load at ACK_ALL through a client that takes the map from etcd */
    dhps_client_params cp;
    dhps_client_params_init(&cp);
    cp.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    cp.etcd = fx.url;
    cp.cluster = "f";
    cp.secret = T_SECRET;
    cp.secret_len = strlen(T_SECRET);
    cp.reload_interval_ms = 0;
    dhps_client *cl = NULL;
    assert_int_equal(dhps_client_create(&cp, &cl), 0);
    uint64_t failed[NK / 64 + 1] = {0};
    assert_true(dhps_client_update(cl, "emb", keys, vals, NK, D, DHPS_FP32, 0, DHPS_ACK_ALL,
                                   dhps_test_us(5000000), failed, NULL) >= 0);
    for (int i = 0; i < NK / 64 + 1; i++)
        assert_int_equal(failed[i], 0);
    assert_int_equal(read_direct(0, 0, &good, &total), 0);
    assert_int_equal(good, total);
    assert_true(total > 100);

    /* v2: node 3 joins shard 0 in place of node 1. With the sources stopped, node 3
     * applies it and reports shard 0 not ready. */
    kill(P[0].pid, SIGSTOP);
    kill(P[1].pid, SIGSTOP);
    assert_int_equal(publish(2, 3, "[[1,2],[2,1],[1,2],[2,1]]",
                             "[{\"shard\":0,\"node\":3,\"replaces\":1,\"since\":2}]"),
                     0);
    assert_int_equal(wait_registration(2, 5000, "\"map_version\":2", "\"not_ready\":[0]"), 0);
    assert_int_equal(cp_metric(&P[2], "dhps_shards_held"), 1);
    assert_int_equal(cp_metric(&P[2], "dhps_shards_not_ready"), 1);
    assert_int_equal(cp_metric(&P[2], "dhps_shards_added_total"), 1);
    assert_int_equal(read_direct(2, 0, &good, &total), DHPS_E_NOTREADY);
    kill(P[0].pid, SIGCONT);
    kill(P[1].pid, SIGCONT);
    /* resumed: the sources apply v2, node 3 catches up and says so */
    assert_int_equal(wait_registration(2, 20000, "\"map_version\":2", "\"not_ready\":[]"), 0);
    assert_int_equal(read_direct(2, 0, &good, &total), 0);
    assert_int_equal(good, total); /* every key of shard 0, read from node 3 */
    assert_int_equal(cp_metric(&P[2], "dhps_shards_not_ready"), 0);
    assert_true(cp_metric(&P[2], "dhps_sync_records_merged_total") >= (double)total);

    /* the fence on node 1: shard 0's holders changed at v2 */
    assert_int_equal(cp_wait_metric(&P[0], "dhps_map_version", 2, 10000), 0);
    assert_int_equal(write_routed(0, 0, 1), DHPS_E_MOVED);
    assert_int_equal(cp_metric(&P[0], "dhps_writes_moved_total"), 1);
    assert_int_equal(write_routed(0, 0, 2), 0);
    assert_int_equal(write_routed(0, 0, 0), 0); /* unfenced: a tool addressing the node */
    assert_int_equal(write_routed(0, 1, 1), 0); /* shard 1's holders did not change */
    /* SYNC rule: a requester ahead of node 1's map waits */
    assert_int_equal(sync_routed(0, 0, 3), DHPS_E_NOTREADY);
    assert_int_equal(sync_routed(0, 0, 2), 0);

    /* a client on v2 writes shard 0 to its replicas and the joining node 3 (ACK_ALL
     * counts it too): node 3 has every new value */
    assert_int_equal(cp_wait_metric(&P[1], "dhps_map_version", 2, 10000), 0);
    uint64_t end = t_now_ms() + dhps_test_ms(10000);
    while (dhps_client_map_version(cl) < 2 && t_now_ms() < end)
        t_sleep_ms(20);
    assert_int_equal(dhps_client_map_version(cl), 2);
    for (int i = 0; i < NK * D; i++)
        vals[i] += 1000.0f;
    memset(failed, 0, sizeof failed);
    assert_true(dhps_client_update(cl, "emb", keys, vals, NK, D, DHPS_FP32, 0, DHPS_ACK_ALL,
                                   dhps_test_us(5000000), failed, NULL) >= 0);
    for (int i = 0; i < NK / 64 + 1; i++)
        assert_int_equal(failed[i], 0);
    assert_int_equal(read_direct(2, 0, &good, &total), 0);
    assert_int_equal(good, total);

    /* v3 flips node 3 in: node 1 drops shard 0 and frees it */
    assert_int_equal(t_connect(&tc, P[0].port, T_SECRET), 0);
    uint32_t nsnap = 0;
    char out[4096];
    assert_int_equal(t_simple(&tc, DHPS_M_SNAPSHOT, "", out, sizeof out, &nsnap), 0);
    t_close(&tc);
    char snap0[700];
    snprintf(snap0, sizeof snap0, "%s/snap/emb.0.snap", nd[0]);
    assert_int_equal(access(snap0, F_OK), 0);
    double seg_before = cp_metric(&P[0], "dhps_table_segment_bytes{table=\"emb\"}");
    double rss_before = cp_metric(&P[0], "process_resident_memory_bytes");
    assert_int_equal(publish(3, 3, "[[3,2],[2,1],[1,2],[2,1]]", NULL), 0);
    assert_int_equal(cp_wait_metric(&P[0], "dhps_map_version", 3, 10000), 0);
    assert_int_equal(cp_metric(&P[0], "dhps_shards_held"), 3);
    assert_int_equal(cp_metric(&P[0], "dhps_shards_dropped_total"), 1);
    assert_int_equal(read_direct(0, 0, &good, &total), DHPS_E_NOTFOUND);
    assert_int_equal(write_routed(0, 0, 2), DHPS_E_MOVED); /* routed before the drop */
    assert_int_equal(write_routed(0, 0, 0), DHPS_E_NOTFOUND);
    assert_int_equal(write_routed(0, 0, 3), DHPS_E_NOTFOUND);
    assert_int_equal(access(snap0, F_OK), -1); /* a restart must not bring it back */
    assert_int_equal(cp_wait_metric(&P[0], "dhps_stores_freed_total", 1, 10000), 0);
    double seg_after = cp_metric(&P[0], "dhps_table_segment_bytes{table=\"emb\"}");
    double rss_after = cp_metric(&P[0], "process_resident_memory_bytes");
    fprintf(stderr, "node 1 after dropping shard 0: segment bytes %.0f -> %.0f, rss %.0f -> "
            "%.0f\n", seg_before, seg_after, rss_before, rss_after);
    assert_true(seg_after < seg_before);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* the segments go back to the system (sanitizers keep freed memory quarantined) */
    assert_true(rss_after < rss_before - (seg_before - seg_after) / 2);
#endif
    /* node 3 serves shard 0 now; writes routed with v2 are fenced there too */
    assert_int_equal(cp_wait_metric(&P[2], "dhps_map_version", 3, 10000), 0);
    assert_int_equal(write_routed(2, 0, 2), DHPS_E_MOVED);
    assert_int_equal(write_routed(2, 0, 3), 0);
    assert_int_equal(cp_wait_metric(&P[1], "dhps_map_version", 3, 10000), 0);
    /* the client on v3 finds every key */
    end = t_now_ms() + dhps_test_ms(10000);
    while (dhps_client_map_version(cl) < 3 && t_now_ms() < end)
        t_sleep_ms(20);
    assert_int_equal(dhps_client_map_version(cl), 3);
    static float got[NK * D];
    uint64_t missing[NK / 64 + 1] = {0};
    assert_true(dhps_client_lookup(cl, "emb", keys, NK, got, D, DHPS_FP32, missing,
                                   dhps_test_us(5000000), NULL) >= 0);
    for (int i = 0; i < NK; i++) {
        assert_false(missing[i / 64] >> (i % 64) & 1);
        assert_true(got[i * D] == vals[i * D]);
    }
    dhps_client_destroy(cl);

    /* no etcd: a restarted node 3 starts from its map file (v3) */
    kill(P[2].pid, SIGTERM);
    int ex = p_wait_exit(P[2].pid, 10000);
    P[2].pid = 0; /* reaped */
    assert_int_equal(ex, 0);
    assert_int_equal(file_version(2), 3);
    etcd_kill(&fx);
    assert_int_equal(start_node(2, true), 0);
    assert_int_equal(cp_metric(&P[2], "dhps_map_version"), 3);
    assert_int_equal(cp_metric(&P[2], "dhps_shards_held"), 1);
    assert_int_equal(read_direct(2, 0, &good, &total), 0);
    assert_int_equal(good, total);
    char log[700];
    snprintf(log, sizeof log, "%s/stderr.log", nd[2]);
    assert_true(cp_count_in_file(log, "no map from etcd") >= 1);
    /* clean stops: exit 0 (under TSan a race report in any server makes it 66) */
    for (int i = 0; i < NN; i++) {
        kill(P[i].pid, SIGTERM);
        int code = p_wait_exit(P[i].pid, 15000);
        P[i].pid = 0;
        assert_int_equal(code, 0);
    }
}

int main(void)
{
    int rc = etcd_start(&fx);
    if (rc == 77)
        return 77;
    if (rc != 0)
        return 1;
    setenv("DHPS_LOG", "info", 1);
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = fx.url;
    dhps_coord_create(&p, &C);
    dir = t_mkdtemp();
    for (int i = 0; i < NK; i++) {
        keys[i] = 5000 + (uint64_t)i * 7;
        for (int j = 0; j < D; j++)
            vals[i * D + j] = (float)i + 0.25f * (float)j;
    }
    for (int i = 0; i < NN; i++)
        if (!(port[i] = p_hold_port(&hold[i])))
            return 1;
    for (int i = 0; i < NN; i++) {
        char text[4096];
        if (snprintf(nd[i], sizeof nd[i], "%s/n%d", dir, i + 1) >= (int)sizeof nd[i])
            return 1;
        mkdir(nd[i], 0700);
        snprintf(text, sizeof text, "%s/snap", nd[i]);
        mkdir(text, 0700);
        snprintf(text, sizeof text,
                 "{\"node_id\":\"n%d\",\"labels\":{\"host\":\"h%d\",\"az\":\"a\"},"
                 "\"listen\":{\"workers\":2,\"tcp_port\":%u},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":%d,\"capacity\":80000}],"
                 "\"secret_file\":\"%s/secret\",\"metrics\":{\"port\":0},"
                 "\"port_file\":\"%s/ports\",\"snapshot\":{\"dir\":\"%s/snap\"},"
                 "\"sync\":{\"peer_wait_s\":2},"
                 "\"coord\":{\"etcd\":\"%s\",\"cluster\":\"f\",\"lease_ttl_s\":5},"
                 "\"shards\":{\"cluster_map\":\"%s/map.json\",\"map_node\":%d,"
                 "\"follow_etcd\":true}}",
                 i + 1, i + 1, port[i], D, dir, nd[i], nd[i], fx.url, nd[i], i + 1);
        if (snprintf(cfg[i], sizeof cfg[i], "%s/server.json", nd[i]) >= (int)sizeof cfg[i])
            return 1;
        t_write(cfg[i], text, 0600);
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_follow)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < NN; i++)
        if (P[i].pid > 0) {
            kill(P[i].pid, SIGCONT);
            kill(P[i].pid, SIGKILL);
            p_wait_exit(P[i].pid, 5000);
        }
    if (rc) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "tail -n 25 %s/stderr.log %s/stderr.log %s/stderr.log >&2",
                 nd[0], nd[1], nd[2]);
        if (system(cmd) != 0)
            fprintf(stderr, "no logs\n");
    }
    for (int i = 0; i < NN; i++)
        if (hold[i] >= 0)
            close(hold[i]);
    dhps_coord_destroy(C);
    etcd_cleanup(&fx);
    t_rmdir(dir);
    return rc;
}

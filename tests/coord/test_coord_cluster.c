/*
 * Membership and the map in etcd, end to end: a real etcd and two dhps-server
 * processes with "coord". Servers register under leases; a client takes the map from
 * etcd, serves lookups and updates, picks up a newer version; etcd killed mid-run:
 * the data path goes on with the last map and both sides say so (stats, metrics, logs,
 * once); etcd back: the watch resumes; kill -9 of a server: its key expires with the
 * lease; SIGTERM: the key goes at once (revoke).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "dhps/client.h"
#include "dhps/coord.h"
#include "coord_proc.h"

#define NSH 4
#define D 8
#define NK 200

static struct etcd_fx fx;
static dhps_coord *C;
static char *dir;
static char map_text[2][2048]; /* printf formats: %d = version */
static char cfg[2][800];
static proc P[2];

static int count_nodes(void)
{
    return cp_count_keys(C, "/dhps/t/nodes/");
}

/* The waits below are on events, up to a scaled ms (test_scale.h): none is under test. */
static int wait_nodes(int want, unsigned ms)
{
    return cp_wait_keys(C, "/dhps/t/nodes/", want, ms);
}

static int publish(int version, int64_t expect)
{
    char buf[2048];
    snprintf(buf, sizeof buf, map_text[0], version);
    return dhps_coord_cas(C, "/dhps/t/map", buf, strlen(buf), expect, 0, NULL);
}

static int64_t map_rev(void)
{
    return cp_key_rev(C, "/dhps/t/map");
}

static double metric(int i, const char *series)
{
    return cp_metric(&P[i], series);
}

static int wait_metric(int i, const char *series, double want, unsigned ms)
{
    return cp_wait_metric(&P[i], series, want, ms);
}

static int count_in_log(int i, const char *needle)
{
    char path[800];
    snprintf(path, sizeof path, "%s/n%d/stderr.log", dir, i + 1);
    return cp_count_in_file(path, needle);
}

/* Write keys [0, NK) with value key+base and read them back; 0 when every key came back
 * with its value. */
static int roundtrip(dhps_client *cl, float base)
{
    uint64_t keys[NK];
    static float vals[NK * D], out[NK * D];
    for (int i = 0; i < NK; i++) {
        keys[i] = 1000 + i;
        for (int j = 0; j < D; j++)
            vals[i * D + j] = base + i;
    }
    uint64_t failed[(NK + 63) / 64] = {0}, missing[(NK + 63) / 64] = {0};
    int rc = dhps_client_update(cl, "emb", keys, vals, NK, D, DHPS_FP32, 0, 0,
                                dhps_test_us(1000000) /* not under test: scaled */, failed,
                                NULL);
    if (rc < 0)
        return rc;
    rc = dhps_client_lookup(cl, "emb", keys, NK, out, D, DHPS_FP32, missing,
                            dhps_test_us(1000000), NULL);
    if (rc < 0)
        return rc;
    for (int i = 0; i < NK; i++)
        if ((missing[i / 64] >> (i % 64)) & 1 || out[i * D] != base + i)
            return -1;
    return 0;
}

static uint64_t wait_version(dhps_client *cl, uint64_t v, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    while (dhps_client_map_version(cl) < v && t_now_ms() < end)
        t_sleep_ms(20);
    return dhps_client_map_version(cl);
}

static void test_cluster(void **st)
{
    /* registration */
    assert_int_equal(wait_nodes(2, 10000), 2);
    dhps_coord_kv *kv;
    int n = dhps_coord_get(C, "/dhps/t/nodes/n1", false, &kv, NULL);
    assert_int_equal(n, 1);
    assert_non_null(strstr(kv[0].value, "\"node_id\":\"n1\""));
    assert_non_null(strstr(kv[0].value, "\"addr\":\"127.0.0.1:"));
    assert_non_null(strstr(kv[0].value, "\"az\":\"a\""));
    assert_true(kv[0].lease != 0);
    dhps_coord_kvs_free(kv, n);
    assert_int_equal(metric(0, "dhps_coord_up"), 1);
#ifdef DHPS_BIN
    {   /* dhps nodes lists both, with their leases */
        char cmd[512], out[4096] = "";
        snprintf(cmd, sizeof cmd, "%s nodes --etcd %s --cluster t", DHPS_BIN, fx.url);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        size_t got = fread(out, 1, sizeof out - 1, f);
        out[got] = 0;
        assert_int_equal(pclose(f), 0);
        assert_non_null(strstr(out, "n1 "));
        assert_non_null(strstr(out, "n2 "));
        assert_non_null(strstr(out, "127.0.0.1:"));
        snprintf(cmd, sizeof cmd, "%s nodes --etcd %s --cluster t --json", DHPS_BIN, fx.url);
        f = popen(cmd, "r");
        got = fread(out, 1, sizeof out - 1, f);
        out[got] = 0;
        assert_int_equal(pclose(f), 0);
        assert_non_null(strstr(out, "\"lease_ttl_s\": "));
    }
#endif

    /* the map from etcd */
    assert_int_equal(publish(1, 0), 0);
    assert_int_equal(publish(1, 0), DHPS_E_CONFLICT);
    dhps_client_params cp;
    dhps_client_params_init(&cp);
    cp.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    cp.etcd = fx.url;
    cp.cluster = "t";
    cp.secret = T_SECRET;
    cp.secret_len = strlen(T_SECRET);
    cp.reload_interval_ms = 0;
    dhps_client *cl = NULL;
    assert_int_equal(dhps_client_create(&cp, &cl), 0);
    assert_int_equal(dhps_client_map_version(cl), 1);
    assert_int_equal(roundtrip(cl, 1.0f), 0);

    /* a newer version is applied without a restart */
    assert_int_equal(publish(2, map_rev()), 0);
    assert_int_equal(wait_version(cl, 2, 5000), 2);
    assert_int_equal(roundtrip(cl, 2.0f), 0);
    assert_int_equal(wait_metric(1, "dhps_coord_map_version", 2, 5000), 0);
    /* the server sets the metric, then logs: wait for the line (an event), then once */
    DHPS_TEST_WAIT_FOR(count_in_log(1, "cluster map in etcd: version 2") >= 1, 5000);
    assert_int_equal(count_in_log(1, "cluster map in etcd: version 2"), 1);

    /* etcd down: the data path goes on with the last map */
    etcd_kill(&fx);
    uint64_t end = t_now_ms() + 4000;
    int rounds = 0;
    while (t_now_ms() < end) {
        assert_int_equal(roundtrip(cl, 3.0f + rounds), 0);
        rounds++;
    }
    assert_true(rounds > 0);
    assert_int_equal(dhps_client_map_version(cl), 2);
    /* the client's watch notices the outage on its own time: an event (the 4 s above
     * were assumed to be enough) */
    dhps_client_stats cs;
    assert_true(DHPS_TEST_WAIT_FOR((dhps_client_stats_get(cl, &cs), cs.coord_up == 0), 10000));
    assert_int_equal(cs.coord_outages, 1);
    assert_int_equal(wait_metric(0, "dhps_coord_up", 0, 5000), 0);
    assert_true(metric(0, "dhps_coord_errors_total") >= 1);
    assert_int_equal(count_in_log(0, "unreachable ("), 1); /* once per outage */

    /* etcd back: registration renewed, the watch resumes, the next version arrives */
    assert_int_equal(etcd_start(&fx), 0);
    assert_int_equal(wait_metric(0, "dhps_coord_up", 1, 10000), 0);
    assert_int_equal(wait_metric(1, "dhps_coord_up", 1, 10000), 0);
    assert_int_equal(count_in_log(0, "reachable again"), 1);
    assert_int_equal(wait_nodes(2, 10000), 2);
    assert_int_equal(publish(3, map_rev()), 0);
    assert_int_equal(wait_version(cl, 3, 10000), 3);
    dhps_client_stats_get(cl, &cs);
    assert_int_equal(cs.coord_up, 1);
    assert_int_equal(roundtrip(cl, 9.0f), 0);
    dhps_client_destroy(cl);

    /* kill -9: the key goes when the lease (3 s) expires; SIGTERM: at once */
    kill(P[0].pid, SIGKILL);
    p_wait_exit(P[0].pid, 5000);
    P[0].pid = 0;
    uint64_t t0 = t_now_ms();
    assert_int_equal(wait_nodes(1, 10000), 1);
    assert_true(t_now_ms() - t0 >= 1000); /* not before the lease ran out */
    assert_int_equal(dhps_coord_get(C, "/dhps/t/nodes/n2", false, &kv, NULL), 1);
    dhps_coord_kvs_free(kv, 1);
    kill(P[1].pid, SIGTERM);
    assert_int_equal(p_wait_exit(P[1].pid, 10000), 0);
    P[1].pid = 0;
    assert_int_equal(count_nodes(), 0);
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
    p.timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    p.connect_timeout_ms = dhps_test_ms(1000);
    dhps_coord_create(&p, &C);
    dir = t_mkdtemp();
    char path[700], text[4096];
    int hold[2]; /* the map's ports, held until the end (p_hold_port) */
    uint16_t port[2] = {p_hold_port(&hold[0]), p_hold_port(&hold[1])};
    snprintf(map_text[0], sizeof map_text[0],
             "{\"version\":%%d,\"nshards\":%d,\"replicas\":2,\"nodes\":["
             "{\"id\":1,\"host\":\"ha\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"},"
             "{\"id\":2,\"host\":\"hb\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"}],"
             "\"shards\":[[1,2],[2,1],[1,2],[2,1]]}",
             NSH, port[0], port[1]);
    snprintf(path, sizeof path, "%s/map.json", dir);
    snprintf(text, sizeof text, map_text[0], 1);
    t_write(path, text, 0600);
    snprintf(text, sizeof text, "%s/secret", dir);
    t_write(text, T_SECRET, 0600);
    for (int i = 0; i < 2; i++) {
        char nd[500];
        snprintf(nd, sizeof nd, "%s/n%d", dir, i + 1);
        mkdir(nd, 0700);
        snprintf(text, sizeof text,
                 "{\"node_id\":\"n%d\",\"labels\":{\"host\":\"h%c\",\"az\":\"a\"},"
                 "\"listen\":{\"workers\":1},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":%d,\"capacity\":4096}],"
                 "\"secret_file\":\"%s/secret\",\"metrics\":{\"port\":0},"
                 "\"port_file\":\"%s/ports\",\"sync\":{\"enabled\":false},"
                 "\"coord\":{\"etcd\":\"%s\",\"cluster\":\"t\",\"lease_ttl_s\":3},"
                 "\"shards\":{\"cluster_map\":\"%s\",\"map_node\":%d}}",
                 i + 1, 'a' + i, D, dir, nd, fx.url, path, i + 1);
        snprintf(cfg[i], sizeof cfg[i], "%s/server.json", nd);
        t_write(cfg[i], text, 0600);
        if (p_start(nd, cfg[i], &P[i], true) < 0) {
            fprintf(stderr, "server %d did not start (%s/stderr.log)\n", i + 1, nd);
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_cluster)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < 2; i++)
        if (P[i].pid > 0) {
            kill(P[i].pid, SIGKILL);
            p_wait_exit(P[i].pid, 5000);
        }
    if (rc) {
        char cmd[900];
        snprintf(cmd, sizeof cmd, "tail -n 20 %s/n1/stderr.log %s/n2/stderr.log >&2", dir, dir);
        if (system(cmd) != 0)
            fprintf(stderr, "no logs\n");
    }
    close(hold[0]);
    close(hold[1]);
    dhps_coord_destroy(C);
    etcd_cleanup(&fx);
    t_rmdir(dir);
    return rc;
}

/* Cluster map: parsing, every validation error, generation balance/placement, write/load. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dhps/cluster.h"
#include "dhps/proto.h"

static const char *NODES3 =
    "[{\"id\": 0, \"host\": \"h0\", \"pod\": \"p0\", \"az\": \"a\", \"addr\": \"127.0.0.1:7000\"},"
    " {\"id\": 1, \"host\": \"h1\", \"pod\": \"p1\", \"az\": \"a\", \"addr\": \"127.0.0.1:7001\","
    "  \"metrics_port\": 9101},"
    " {\"id\": 5, \"host\": \"h2\", \"pod\": \"p0\", \"az\": \"b\", \"addr\": \"127.0.0.1:7002\"}]";

static char *mkmap(const char *nodes, const char *extra_top, uint32_t nshards, const char *shards)
{
    char *b = malloc(8192);
    snprintf(b, 8192, "{\"version\": 3, \"nshards\": %u, \"replicas\": 2, %s \"nodes\": %s, "
             "\"shards\": %s}", nshards, extra_top ? extra_top : "", nodes, shards);
    return b;
}

static void test_parse_ok(void **state)
{
    (void)state;
    char *j = mkmap(NODES3, NULL, 4, "[[0,1],[1,5],[5,0],[0,5]]");
    dhps_cluster_map *m = NULL;
    char err[512];
    assert_int_equal(dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err), 0);
    assert_non_null(m);
    assert_int_equal(dhps_cluster_map_version(m), 3);
    assert_int_equal(dhps_cluster_map_nshards(m), 4);
    assert_int_equal(dhps_cluster_map_nreplicas(m), 2);
    assert_int_equal(dhps_cluster_map_nnodes(m), 3);
    assert_int_equal(dhps_cluster_map_max_node_id(m), 5);
    const dhps_cluster_node *n = dhps_cluster_map_node(m, 1);
    assert_non_null(n);
    assert_string_equal(n->host, "h1");
    assert_string_equal(n->ip, "127.0.0.1");
    assert_int_equal(n->port, 7001);
    assert_int_equal(n->metrics_port, 9101);
    assert_null(dhps_cluster_map_node(m, 2));
    assert_null(dhps_cluster_map_node(m, 99));
    const uint32_t *ids;
    assert_int_equal(dhps_cluster_map_replicas(m, 2, &ids), 2);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 0);
    assert_int_equal(dhps_cluster_map_replicas(m, 4, &ids), -EINVAL);
    uint32_t sh[8];
    assert_int_equal(dhps_cluster_map_shards_of(m, 0, sh, 8), 3);
    assert_int_equal(sh[0], 0);
    assert_int_equal(sh[1], 2);
    assert_int_equal(sh[2], 3);
    assert_int_equal(dhps_cluster_map_shards_of(m, 5, NULL, 0), 3);
    assert_int_equal(dhps_cluster_map_shards_of(m, 7, NULL, 0), 0);
    assert_true(dhps_cluster_map_owns(m, 5, 1));
    assert_false(dhps_cluster_map_owns(m, 0, 1));
    assert_int_equal(dhps_cluster_map_shard_of(m, 12345), dhps_proto_shard_of(12345, 4));
    dhps_cluster_map_destroy(m);
    free(j);
}

/* Parse must fail with rc and an error line containing `needle`. */
static void expect_err(const char *j, int rc, const char *needle)
{
    dhps_cluster_map *m = (dhps_cluster_map *)1;
    char err[1024];
    int r = dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err);
    if (r != rc || !strstr(err, needle))
        fail_msg("rc %d (want %d), err \"%s\" lacks \"%s\"", r, rc, err, needle);
    assert_null(m);
}

static void test_parse_errors(void **state)
{
    (void)state;
    char *j;
    expect_err("{\"version\": 1, ", DHPS_E_MALFORMED, "JSON error");
    expect_err("[1,2]", DHPS_E_CONFIG, "not an object");
    expect_err("{\"nshards\": 1, \"replicas\": 1, \"nodes\": [], \"shards\": []}", DHPS_E_CONFIG,
               "\"version\"");
    j = mkmap(NODES3, NULL, 4, "[[0,1],[1,5],[5,0]]");
    expect_err(j, DHPS_E_CONFIG, "3 entries but nshards is 4");
    free(j);
    j = mkmap(NODES3, NULL, 2, "[[0,1],[]]");
    expect_err(j, DHPS_E_CONFIG, "shard 1: no replicas");
    free(j);
    j = mkmap(NODES3, NULL, 2, "[[0,1],[0]]");
    expect_err(j, DHPS_E_CONFIG, "shard 1: 1 replicas, expected 2");
    free(j);
    j = mkmap(NODES3, NULL, 2, "[[0,1],[0,9]]");
    expect_err(j, DHPS_E_CONFIG, "shard 1: unknown node id 9");
    free(j);
    j = mkmap(NODES3, NULL, 2, "[[0,0],[0,1]]");
    expect_err(j, DHPS_E_CONFIG, "shard 0: node 0 listed twice");
    free(j);
    j = mkmap(NODES3, NULL, 2, "[[0,1],[\"x\",1]]");
    expect_err(j, DHPS_E_CONFIG, "shard 1: replica 0 is not a node id");
    free(j);
    const char *samehost =
        "[{\"id\": 0, \"host\": \"h0\", \"addr\": \"127.0.0.1:7000\"},"
        " {\"id\": 1, \"host\": \"h0\", \"addr\": \"127.0.0.1:7001\"}]";
    j = mkmap(samehost, NULL, 1, "[[0,1]]");
    expect_err(j, DHPS_E_CONFIG, "shard 0: replicas 0 and 1 share host h0");
    free(j);
    const char *dupid =
        "[{\"id\": 0, \"host\": \"h0\", \"addr\": \"127.0.0.1:7000\"},"
        " {\"id\": 0, \"host\": \"h1\", \"addr\": \"127.0.0.1:7001\"}]";
    j = mkmap(dupid, NULL, 1, "[[0,1]]");
    expect_err(j, DHPS_E_CONFIG, "duplicate node id 0");
    free(j);
    const char *dupaddr =
        "[{\"id\": 0, \"host\": \"h0\", \"addr\": \"127.0.0.1:7000\"},"
        " {\"id\": 1, \"host\": \"h1\", \"addr\": \"127.0.0.1:7000\"}]";
    j = mkmap(dupaddr, NULL, 1, "[[0,1]]");
    expect_err(j, DHPS_E_CONFIG, "duplicate address 127.0.0.1:7000");
    free(j);
    const char *badaddr =
        "[{\"id\": 0, \"host\": \"h0\", \"addr\": \"localhost:7000\"},"
        " {\"id\": 1, \"host\": \"h1\", \"addr\": \"127.0.0.1:70000\"}]";
    j = mkmap(badaddr, NULL, 1, "[[0,1]]");
    expect_err(j, DHPS_E_CONFIG, "node 0: key \"addr\"");
    expect_err(j, DHPS_E_CONFIG, "node 1: key \"addr\"");
    free(j);
    const char *nohost = "[{\"id\": 0, \"addr\": \"127.0.0.1:7000\"}]";
    j = mkmap(nohost, NULL, 1, "[[0,0]]");
    expect_err(j, DHPS_E_CONFIG, "node 0: key \"host\"");
    free(j);
    /* duplicate keys are rejected by the JSON layer */
    expect_err("{\"version\": 1, \"version\": 2}", DHPS_E_MALFORMED, "duplicate");
    /* several problems are all listed */
    j = mkmap(NODES3, NULL, 3, "[[0,9],[],[1,1]]");
    dhps_cluster_map *m = NULL;
    char err[1024];
    assert_int_equal(dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "shard 1: no replicas"));
    free(j);
    /* a tiny error buffer is truncated, still NUL-terminated */
    char tiny[8];
    j = mkmap(NODES3, NULL, 2, "[[0,1],[]]");
    assert_int_equal(dhps_cluster_map_parse(j, strlen(j), &m, tiny, sizeof tiny), DHPS_E_CONFIG);
    assert_true(strlen(tiny) < sizeof tiny);
    free(j);
    assert_int_equal(dhps_cluster_map_load("/nonexistent/map.json", &m, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/map.json"));
}

static dhps_cluster_node *mknodes(size_t n, uint32_t hosts, uint32_t pods, uint32_t azs)
{
    dhps_cluster_node *v = calloc(n, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        v[i].id = (uint32_t)(i * 3 + 1);
        snprintf(v[i].host, sizeof v[i].host, "host%u", (unsigned)(i % hosts));
        snprintf(v[i].az, sizeof v[i].az, "az%u", (unsigned)(i % azs));
        snprintf(v[i].pod, sizeof v[i].pod, "pod%u", (unsigned)((i / azs) % pods));
        snprintf(v[i].addr, sizeof v[i].addr, "10.0.%u.%u:7000", (unsigned)(i / 250),
                 (unsigned)(i % 250 + 1));
    }
    return v;
}

/* Every node within +-1 of the mean; hosts distinct; AZs distinct when possible. */
static void check_balanced(const dhps_cluster_map *m, uint32_t azs)
{
    size_t n = dhps_cluster_map_nnodes(m);
    uint32_t S = dhps_cluster_map_nshards(m), R = dhps_cluster_map_nreplicas(m);
    size_t lo = SIZE_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = dhps_cluster_map_shards_of(m, dhps_cluster_map_node_at(m, i)->id, NULL, 0);
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    if (hi - lo > 1)
        fail_msg("unbalanced: %zu..%zu over %zu nodes", lo, hi, n);
    size_t az_spread = 0;
    for (uint32_t s = 0; s < S; s++) {
        const uint32_t *ids;
        assert_int_equal(dhps_cluster_map_replicas(m, s, &ids), (int)R);
        uint32_t distinct_az = 0;
        for (uint32_t a = 0; a < R; a++) {
            const dhps_cluster_node *na = dhps_cluster_map_node(m, ids[a]);
            bool seen = false;
            for (uint32_t b = 0; b < a; b++) {
                const dhps_cluster_node *nb = dhps_cluster_map_node(m, ids[b]);
                assert_string_not_equal(na->host, nb->host);
                seen |= !strcmp(na->az, nb->az);
            }
            distinct_az += !seen;
        }
        if (distinct_az == (R < azs ? R : azs))
            az_spread++;
    }
    /* spread over AZs for (nearly) every shard when the AZs are of equal size (otherwise
     * the +-1 balance wins over the spread, by design) */
    if (n % azs == 0 && az_spread * 100 < (size_t)S * 95)
        fail_msg("only %zu of %u shards spread over min(R, azs) AZs", az_spread, S);
}

static void test_generate(void **state)
{
    (void)state;
    struct { size_t n; uint32_t hosts, pods, azs, S, R; } cases[] = {
        {3, 3, 1, 1, 1024, 3}, {7, 7, 2, 3, 1024, 3}, {12, 12, 2, 3, 1000, 3},
        {10, 5, 1, 1, 257, 2}, {64, 64, 4, 4, 4096, 3}, {5, 5, 1, 5, 64, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        dhps_cluster_node *v = mknodes(cases[c].n, cases[c].hosts, cases[c].pods, cases[c].azs);
        dhps_cluster_gen_params p;
        dhps_cluster_gen_params_init(&p);
        p.nshards = cases[c].S;
        p.replicas = cases[c].R;
        p.version = 42;
        dhps_cluster_map *m = NULL;
        char err[512];
        int rc = dhps_cluster_map_generate(&p, v, cases[c].n, &m, err, sizeof err);
        if (rc)
            fail_msg("case %zu: %d %s", c, rc, err);
        assert_int_equal(dhps_cluster_map_version(m), 42);
        check_balanced(m, cases[c].azs);
        /* deterministic, and it survives a JSON round trip */
        char *j = dhps_cluster_map_to_json(m);
        dhps_cluster_map *m2 = NULL;
        assert_int_equal(dhps_cluster_map_parse(j, strlen(j), &m2, err, sizeof err), 0);
        char *j2 = dhps_cluster_map_to_json(m2);
        assert_string_equal(j, j2);
        dhps_cluster_map *m3 = NULL;
        assert_int_equal(dhps_cluster_map_generate(&p, v, cases[c].n, &m3, NULL, 0), 0);
        char *j3 = dhps_cluster_map_to_json(m3);
        assert_string_equal(j, j3);
        free(j);
        free(j2);
        free(j3);
        dhps_cluster_map_destroy(m);
        dhps_cluster_map_destroy(m2);
        dhps_cluster_map_destroy(m3);
        free(v);
    }
}

static void test_generate_errors(void **state)
{
    (void)state;
    dhps_cluster_node *v = mknodes(4, 2, 1, 1);
    dhps_cluster_gen_params p;
    dhps_cluster_gen_params_init(&p);
    dhps_cluster_map *m = NULL;
    char err[512];
    assert_int_equal(dhps_cluster_map_generate(&p, v, 4, &m, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "distinct hosts"));
    assert_null(m);
    v[1].id = v[0].id;
    p.replicas = 2;
    assert_int_equal(dhps_cluster_map_generate(&p, v, 4, &m, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "duplicate node id"));
    p.nshards = 0;
    assert_int_equal(dhps_cluster_map_generate(&p, v, 4, &m, err, sizeof err), DHPS_E_CONFIG);
    free(v);
}

static void test_nodes_parse(void **state)
{
    (void)state;
    dhps_cluster_node *v = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(dhps_cluster_nodes_parse(NODES3, strlen(NODES3), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(v[2].id, 5);
    free(v);
    char wrapped[2048];
    snprintf(wrapped, sizeof wrapped, "{\"nodes\": %s}", NODES3);
    assert_int_equal(dhps_cluster_nodes_parse(wrapped, strlen(wrapped), &v, &n, err, sizeof err), 0);
    free(v);
    assert_int_equal(dhps_cluster_nodes_parse("{}", 2, &v, &n, err, sizeof err), DHPS_E_CONFIG);
}

static void test_write_load(void **state)
{
    (void)state;
    char dir[] = "/tmp/dhps_cluster_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/map.json", dir);
    dhps_cluster_node *v = mknodes(6, 6, 2, 3);
    dhps_cluster_gen_params p;
    dhps_cluster_gen_params_init(&p);
    p.nshards = 128;
    dhps_cluster_map *m = NULL, *l = NULL;
    assert_int_equal(dhps_cluster_map_generate(&p, v, 6, &m, NULL, 0), 0);
    assert_int_equal(dhps_cluster_map_write(m, path), 0);
    char err[256];
    assert_int_equal(dhps_cluster_map_load(path, &l, err, sizeof err), 0);
    assert_int_equal(dhps_cluster_map_version(l), 1);
    for (uint32_t s = 0; s < 128; s++) {
        const uint32_t *a, *b;
        assert_int_equal(dhps_cluster_map_replicas(m, s, &a), 3);
        assert_int_equal(dhps_cluster_map_replicas(l, s, &b), 3);
        assert_memory_equal(a, b, 3 * sizeof *a);
    }
    dhps_cluster_map_destroy(l);
    /* a new version replaces the file atomically */
    dhps_cluster_map_destroy(m);
    p.version = 2;
    assert_int_equal(dhps_cluster_map_generate(&p, v, 6, &m, NULL, 0), 0);
    assert_int_equal(dhps_cluster_map_write(m, path), 0);
    assert_int_equal(dhps_cluster_map_load(path, &l, err, sizeof err), 0);
    assert_int_equal(dhps_cluster_map_version(l), 2);
    dhps_cluster_map_destroy(l);
    dhps_cluster_map_destroy(m);
    unlink(path);
    rmdir(dir);
    free(v);
}

/* dhps_cluster_addr_split: what a map's "addr" accepts, and nothing else */
static void test_addr_split(void **state)
{
    (void)state;
    char ip[16];
    uint16_t port = 0;
    assert_int_equal(dhps_cluster_addr_split("198.51.100.7:7000", ip, sizeof ip, &port), 0);
    assert_string_equal(ip, "198.51.100.7");
    assert_int_equal(port, 7000);
    assert_int_equal(dhps_cluster_addr_split("255.255.255.255:65535", ip, sizeof ip, &port), 0);
    assert_int_equal(port, 65535);
    static const char *const bad[] = {"",          "198.51.100.7",    ":7000",
                                      "198.51.100.7:", "198.51.100.7:0", "198.51.100.7:65536",
                                      "198.51.100.7:70a", "host:7000",   "198.51.100:7000",
                                      "::1:7000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (dhps_cluster_addr_split(bad[i], ip, sizeof ip, &port) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
    /* an ip that does not fit the caller's buffer */
    char small[8];
    assert_int_equal(dhps_cluster_addr_split("198.51.100.7:7000", small, sizeof small, &port), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),       cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_addr_split),
        cmocka_unit_test(test_generate),       cmocka_unit_test(test_generate_errors),
        cmocka_unit_test(test_nodes_parse),    cmocka_unit_test(test_write_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

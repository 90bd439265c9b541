/* Cluster map membership additions (issue 10): node "state", the "joining" list, its
 * validation rules (each refused with an error line naming the shard and node), the
 * accessors njoining/join_at/joining/holds/holdings_of, and the JSON round trip. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dhps/cluster.h"

/* hosts: 5 shares h0 with 0, 6 shares h3 with 3; node 4 is draining */
static const char *NODES =
    "[{\"id\": 0, \"host\": \"h0\", \"addr\": \"127.0.0.1:7000\"},"
    " {\"id\": 1, \"host\": \"h1\", \"addr\": \"127.0.0.1:7001\"},"
    " {\"id\": 2, \"host\": \"h2\", \"addr\": \"127.0.0.1:7002\"},"
    " {\"id\": 3, \"host\": \"h3\", \"addr\": \"127.0.0.1:7003\"},"
    " {\"id\": 4, \"host\": \"h4\", \"addr\": \"127.0.0.1:7004\", \"state\": \"draining\"},"
    " {\"id\": 5, \"host\": \"h0\", \"addr\": \"127.0.0.1:7005\"},"
    " {\"id\": 6, \"host\": \"h3\", \"addr\": \"127.0.0.1:7006\", \"state\": \"active\"}]";
static const char *SHARDS = "[[0, 1], [1, 2], [2, 3], [3, 0]]";

/* A version-12 map over NODES/SHARDS with the given "joining" value (NULL = no key). */
static char *mk(const char *joining)
{
    char *b = malloc(8192);
    snprintf(b, 8192, "{\"version\": 12, \"nshards\": 4, \"replicas\": 2, \"nodes\": %s, "
             "%s%s%s \"shards\": %s}", NODES, joining ? "\"joining\": " : "",
             joining ? joining : "", joining ? "," : "", SHARDS);
    return b;
}

static dhps_cluster_map *parse_ok(const char *j)
{
    dhps_cluster_map *m = NULL;
    char err[1024];
    int rc = dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err);
    if (rc != 0)
        fail_msg("parse failed %d: %s", rc, err);
    return m;
}

/* The map with this "joining" value must be refused (DHPS_E_CONFIG) with an error line
 * containing needle. */
static void refused(const char *joining, const char *needle)
{
    char *j = mk(joining);
    dhps_cluster_map *m = (dhps_cluster_map *)1;
    char err[1024];
    int rc = dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err);
    if (rc != DHPS_E_CONFIG || !strstr(err, needle))
        fail_msg("joining %s: rc %d, err \"%s\" lacks \"%s\"", joining, rc, err, needle);
    assert_null(m);
    free(j);
}

static void test_state(void **state)
{
    (void)state;
    char *j = mk(NULL);
    dhps_cluster_map *m = parse_ok(j);
    assert_int_equal(dhps_cluster_map_node(m, 4)->state, DHPS_NODE_DRAINING);
    assert_int_equal(dhps_cluster_map_node(m, 6)->state, DHPS_NODE_ACTIVE);
    assert_int_equal(dhps_cluster_map_node(m, 0)->state, DHPS_NODE_ACTIVE);
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    assert_null(dhps_cluster_map_join_at(m, 0));
    /* "state" only for draining nodes, no "joining" key when empty */
    char *out = dhps_cluster_map_to_json(m);
    const char *p = strstr(out, "\"state\": \"draining\"");
    assert_non_null(p);
    assert_null(strstr(p + 1, "\"state\""));
    assert_null(strstr(out, "joining"));
    free(out);
    dhps_cluster_map_destroy(m);
    free(j);
    /* a bad state names the node */
    const char *bad = "{\"version\": 1, \"nshards\": 1, \"replicas\": 1, \"nodes\": "
                      "[{\"id\": 7, \"host\": \"h\", \"addr\": \"127.0.0.1:1\", \"state\": "
                      "\"gone\"}], \"shards\": [[7]]}";
    char err[512];
    m = (dhps_cluster_map *)1;
    assert_int_equal(dhps_cluster_map_parse(bad, strlen(bad), &m, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "node 7: key \"state\" must be \"active\" or \"draining\""));
    assert_null(m);
    /* generate copies the state, refuses an unknown one */
    dhps_cluster_node nv[3];
    memset(nv, 0, sizeof nv);
    for (int i = 0; i < 3; i++) {
        nv[i].id = (uint32_t)i;
        snprintf(nv[i].host, sizeof nv[i].host, "g%d", i);
        snprintf(nv[i].addr, sizeof nv[i].addr, "10.0.0.%d:7000", i + 1);
    }
    nv[2].state = DHPS_NODE_DRAINING;
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = 16;
    gp.replicas = 2;
    assert_int_equal(dhps_cluster_map_generate(&gp, nv, 3, &m, err, sizeof err), 0);
    assert_int_equal(dhps_cluster_map_node(m, 2)->state, DHPS_NODE_DRAINING);
    dhps_cluster_map_destroy(m);
    nv[1].state = 9;
    assert_int_equal(dhps_cluster_map_generate(&gp, nv, 3, &m, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "node 1: state 9"));
}

static void test_joining_accessors(void **state)
{
    (void)state;
    /* file order differs from the (shard, node) order */
    char *j = mk("[{\"shard\": 2, \"node\": 4, \"replaces\": 2, \"since\": 5},"
                 " {\"shard\": 0, \"node\": 3, \"replaces\": 0, \"since\": 11},"
                 " {\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 12}]");
    dhps_cluster_map *m = parse_ok(j);
    assert_int_equal(dhps_cluster_map_njoining(m), 3);
    const dhps_cluster_join *a = dhps_cluster_map_join_at(m, 0);
    const dhps_cluster_join *b = dhps_cluster_map_join_at(m, 1);
    const dhps_cluster_join *c = dhps_cluster_map_join_at(m, 2);
    assert_true(a->shard == 0 && a->node == 2 && a->replaces == 1 && a->since == 12);
    assert_true(b->shard == 0 && b->node == 3 && b->replaces == 0 && b->since == 11);
    assert_true(c->shard == 2 && c->node == 4 && c->replaces == 2 && c->since == 5);
    assert_null(dhps_cluster_map_join_at(m, 3));
    const dhps_cluster_join *f = NULL;
    assert_int_equal(dhps_cluster_map_joining(m, 0, &f), 2);
    assert_ptr_equal(f, a);
    assert_int_equal(dhps_cluster_map_joining(m, 1, &f), 0);
    assert_null(f);
    assert_int_equal(dhps_cluster_map_joining(m, 2, &f), 1);
    assert_ptr_equal(f, c);
    assert_int_equal(dhps_cluster_map_joining(m, 3, &f), 0);
    assert_int_equal(dhps_cluster_map_joining(m, 4, &f), -EINVAL);
    assert_int_equal(dhps_cluster_map_joining(NULL, 0, &f), -EINVAL);
    /* holds = replica or joining; owns = replica only */
    assert_true(dhps_cluster_map_holds(m, 2, 0));
    assert_false(dhps_cluster_map_owns(m, 2, 0));
    assert_true(dhps_cluster_map_holds(m, 0, 0)); /* replaced, but a replica until the flip */
    assert_true(dhps_cluster_map_holds(m, 4, 2));
    assert_false(dhps_cluster_map_holds(m, 4, 1));
    assert_false(dhps_cluster_map_holds(m, 9, 0));
    assert_false(dhps_cluster_map_holds(m, 2, 4));
    uint32_t out[8];
    assert_int_equal(dhps_cluster_map_holdings_of(m, 2, out, 8), 3);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 2);
    assert_int_equal(dhps_cluster_map_holdings_of(m, 3, out, 8), 3);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[2], 3);
    assert_int_equal(dhps_cluster_map_holdings_of(m, 4, out, 1), 1);
    assert_int_equal(out[0], 2);
    assert_int_equal(dhps_cluster_map_holdings_of(m, 4, NULL, 0), 1);
    assert_int_equal(dhps_cluster_map_holdings_of(m, 5, out, 8), 0);
    assert_int_equal(dhps_cluster_map_holdings_of(m, 99, out, 8), 0);
    assert_int_equal(dhps_cluster_map_shards_of(m, 2, NULL, 0), 2); /* replicas only */
    /* round trip: sorted "joining", byte-identical on the second pass */
    char *out1 = dhps_cluster_map_to_json(m);
    const char *p = strstr(out1, "\"joining\": [");
    assert_non_null(p);
    const char *e0 = strstr(p, "{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 12}");
    const char *e1 = strstr(p, "{\"shard\": 0, \"node\": 3, \"replaces\": 0, \"since\": 11}");
    const char *e2 = strstr(p, "{\"shard\": 2, \"node\": 4, \"replaces\": 2, \"since\": 5}");
    assert_true(e0 && e1 && e2 && e0 < e1 && e1 < e2);
    dhps_cluster_map *m2 = parse_ok(out1);
    assert_int_equal(dhps_cluster_map_njoining(m2), 3);
    assert_memory_equal(dhps_cluster_map_join_at(m2, 0), a, sizeof *a);
    assert_int_equal(dhps_cluster_map_node(m2, 4)->state, DHPS_NODE_DRAINING);
    char *out2 = dhps_cluster_map_to_json(m2);
    assert_string_equal(out1, out2);
    free(out1);
    free(out2);
    dhps_cluster_map_destroy(m2);
    dhps_cluster_map_destroy(m);
    free(j);
    /* the replaced replica's host is free for its replacement: 5 (h0) replaces 0 (h0) */
    j = mk("[{\"shard\": 0, \"node\": 5, \"replaces\": 0, \"since\": 0}]");
    m = parse_ok(j);
    assert_true(dhps_cluster_map_holds(m, 5, 0));
    dhps_cluster_map_destroy(m);
    free(j);
    /* an empty list is fine and not written back */
    j = mk("[]");
    m = parse_ok(j);
    assert_int_equal(dhps_cluster_map_njoining(m), 0);
    out1 = dhps_cluster_map_to_json(m);
    assert_null(strstr(out1, "joining"));
    free(out1);
    dhps_cluster_map_destroy(m);
    free(j);
}

static void test_joining_rules(void **state)
{
    (void)state;
    refused("[{\"shard\": 0, \"node\": 9, \"replaces\": 1, \"since\": 1}]",
            "shard 0: joining node 9 is not in \"nodes\"");
    refused("[{\"shard\": 0, \"node\": 1, \"replaces\": 0, \"since\": 1}]",
            "shard 0: joining node 1 is already a replica");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 3, \"since\": 1}]",
            "shard 0: joining node 2 replaces 3, which is not a replica");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 9, \"since\": 1}]",
            "shard 0: joining node 2 replaces 9, which is not a replica");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 1},"
            " {\"shard\": 0, \"node\": 2, \"replaces\": 0, \"since\": 1}]",
            "shard 0: node 2 joining twice");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 1},"
            " {\"shard\": 0, \"node\": 3, \"replaces\": 1, \"since\": 1}]",
            "shard 0: replica 1 replaced twice (by nodes 2 and 3)");
    refused("[{\"shard\": 0, \"node\": 5, \"replaces\": 1, \"since\": 1}]",
            "shard 0: joining node 5 shares host h0 with replica 0");
    refused("[{\"shard\": 1, \"node\": 6, \"replaces\": 2, \"since\": 1},"
            " {\"shard\": 1, \"node\": 3, \"replaces\": 1, \"since\": 1}]",
            "shard 1: joining nodes 3 and 6 share host h3");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 13}]",
            "shard 0: joining node 2: since 13 is newer than the map version 12");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 1},"
            " {\"shard\": 0, \"node\": 3, \"replaces\": 0, \"since\": 1},"
            " {\"shard\": 0, \"node\": 4, \"replaces\": 0, \"since\": 1}]",
            "shard 0: 3 joining entries, more than its 2 replicas");
    refused("[{\"shard\": 4, \"node\": 2, \"replaces\": 1, \"since\": 1}]",
            "joining[0]: key \"shard\" missing or not an integer in 0..3");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1, \"since\": 1},"
            " {\"shard\": 1, \"node\": -1, \"replaces\": 1, \"since\": 1}]",
            "joining[1]: key \"node\"");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": \"1\", \"since\": 1}]",
            "joining[0]: key \"replaces\"");
    refused("[{\"shard\": 0, \"node\": 2, \"replaces\": 1}]", "joining[0]: key \"since\"");
    refused("[7]", "joining[0]: not an object");
    refused("{}", "key \"joining\": not an array");
    /* several problems, every one listed */
    char *j = mk("[{\"shard\": 0, \"node\": 9, \"replaces\": 1, \"since\": 1},"
                 " {\"shard\": 2, \"node\": 1, \"replaces\": 0, \"since\": 1}]");
    dhps_cluster_map *m = NULL;
    char err[1024];
    assert_int_equal(dhps_cluster_map_parse(j, strlen(j), &m, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "shard 0: joining node 9 is not in"));
    assert_non_null(strstr(err, "shard 2: joining node 1 replaces 0, which is not a replica"));
    free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state),
        cmocka_unit_test(test_joining_accessors),
        cmocka_unit_test(test_joining_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

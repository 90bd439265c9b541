/* Fast unit tests: fp16 conversion paths, config validation, request decoding. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>
#include <cmocka.h>

#include "dhps/rpc.h"
#include "dhps/server.h"
#include "admin.h"
#include "msg.h"

/* ---- fp16 ---- */

static uint32_t bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static void test_fp16_paths_agree(void **st)
{
    if (!dhps_fp16_force_scalar(false)) {
        dhps_fp16_force_scalar(false);
        skip(); /* no F16C: only the scalar path exists */
    }
    static uint16_t h[65536];
    static float a[65536], b[65536];
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    dhps_fp16_force_scalar(true);
    dhps_fp16_to_fp32(a, h, 65536);
    dhps_fp16_force_scalar(false);
    dhps_fp16_to_fp32(b, h, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            assert_true(isnan(a[i]) && isnan(b[i]));
        else if (bits(a[i]) != bits(b[i]))
            fail_msg("half %#x: scalar %g F16C %g", i, a[i], b[i]);
    }
    /* narrowing: every half's value, midpoints between neighbours (ties), random floats,
     * overflow, tiny subnormals */
    enum { N = 65536 * 3 };
    float *f = malloc(N * sizeof *f);
    uint16_t *x = malloc(N * 2), *y = malloc(N * 2);
    uint64_t s = 88172645463325252ull;
    for (uint32_t i = 0; i < 65536; i++) {
        f[i] = a[i];
        f[65536 + i] = i + 1 < 65536 && !isnan(a[i]) && !isnan(a[i + 1]) ? (a[i] + a[i + 1]) / 2
                                                                          : 1.0f;
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint32_t r = (uint32_t)s;
        memcpy(&f[2 * 65536 + i], &r, 4);
    }
    f[0] = 1e30f, f[1] = -70000.f, f[2] = 65520.f, f[3] = 1e-9f, f[4] = -3e-8f;
    dhps_fp16_force_scalar(true);
    dhps_fp16_from_fp32(x, f, N);
    dhps_fp16_force_scalar(false);
    dhps_fp16_from_fp32(y, f, N);
    for (uint32_t i = 0; i < N; i++) {
        bool nx = (x[i] & 0x7C00) == 0x7C00 && (x[i] & 0x3FF);
        bool ny = (y[i] & 0x7C00) == 0x7C00 && (y[i] & 0x3FF);
        if (nx || ny)
            assert_true(nx && ny);
        else if (x[i] != y[i])
            fail_msg("float %#x (%g): scalar %#x F16C %#x", bits(f[i]), f[i], x[i], y[i]);
    }
    free(f), free(x), free(y);
}

static void test_fp16_round_trip(void **st)
{
    for (int path = 0; path < 2; path++) {
        dhps_fp16_force_scalar(path == 1);
        float in[37], out[37];
        uint16_t h[37];
        for (int i = 0; i < 37; i++)
            in[i] = (float)(i - 18) * 0.37f + 0.001f * (float)i;
        dhps_fp16_from_fp32(h, in, 37);
        dhps_fp16_to_fp32(out, h, 37);
        for (int i = 0; i < 37; i++)
            assert_true(fabsf(out[i] - in[i]) <= fabsf(in[i]) * (1.0f / 1024) + 1e-7f);
    }
    dhps_fp16_force_scalar(false);
}

/* ---- config ---- */

static const char *GOOD =
    "{\"node_id\":\"n1\",\"labels\":{\"host\":\"h\",\"pod\":\"p\",\"az\":\"a\"},"
    "\"listen\":{\"host\":\"127.0.0.1\",\"tcp_port\":7000,\"shm\":false,\"verbs\":true,"
    "\"workers\":3,\"max_msg\":65536,\"hello_timeout_ms\":9000},"
    "\"tables\":[{\"name\":\"t0\",\"dim\":16},{\"name\":\"t1\",\"dim\":4096,\"dtype\":\"fp16\","
    "\"default_ttl\":60,\"mem_limit\":1000000,\"capacity\":10}],"
    "\"snapshot\":{\"dir\":\"/tmp/x\",\"interval_s\":30,\"on_shutdown\":false},"
    "\"secret_file\":\"/etc/dhps/secret\",\"metrics\":{\"host\":\"0.0.0.0\",\"port\":9100},"
    "\"shards\":{\"nshards\":8,\"own\":[1,3,5]},\"pid_file\":\"/tmp/p\",\"port_file\":\"/tmp/q\","
    "\"startup_gate_file\":\"/tmp/g\"}";

static void test_config_good(void **st)
{
    dhps_server_config *c = NULL;
    char err[256];
    assert_int_equal(dhps_server_config_parse(GOOD, strlen(GOOD), &c, err, sizeof err), 0);
    assert_string_equal(c->node_id, "n1");
    assert_string_equal(c->label_az, "a");
    assert_int_equal(c->tcp_port, 7000);
    assert_false(c->shm);
    assert_true(c->verbs);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->hello_timeout_ms, 9000);
    assert_int_equal(c->ntables, 2);
    assert_int_equal(c->tables[1].dim, 4096);
    assert_int_equal(c->tables[1].dtype, DHPS_FP16);
    assert_int_equal(c->tables[1].default_ttl, 60);
    assert_int_equal(c->tables[0].dtype, DHPS_FP32);
    assert_int_equal(c->snapshot_interval_s, 30);
    assert_false(c->snapshot_on_shutdown);
    assert_int_equal(c->metrics_port, 9100);
    assert_true(c->metrics_enabled);
    assert_int_equal(c->nshards, 8);
    assert_int_equal(c->owned[1] + c->owned[3] + c->owned[5], 3);
    assert_int_equal(c->owned[0] + c->owned[2], 0);
    assert_string_equal(c->startup_gate_file, "/tmp/g");
    dhps_server_config_free(c);
}

static void expect_bad(const char *json, const char *want)
{
    dhps_server_config *c = (void *)1;
    char err[256];
    int rc = dhps_server_config_parse(json, strlen(json), &c, err, sizeof err);
    if (rc != DHPS_E_CONFIG || !strstr(err, want))
        fail_msg("config %s: rc %d err \"%s\", wanted \"%s\"", json, rc, err, want);
    assert_null(c);
}

#define BASE_T "\"tables\":[{\"name\":\"a\",\"dim\":4}]"
#define BASE_S "\"secret_file\":\"/s\",\"shards\":{\"nshards\":4,\"own\":\"all\"}"

static void test_config_bad(void **st)
{
    expect_bad("{", "config line 1");
    expect_bad("{\"node_id\":\"n\"," BASE_T "," BASE_S ",\"startup_gate_file\":7}",
               "startup_gate_file: must be a string");
    expect_bad("[]", "top level: must be an object");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"name\":\"a\",\"dim\":4},{\"name\":\"b\","
               "\"dim\":5000}]," BASE_S "}", "config tables[1].dim: must be 1..4096");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"name\":\"a\",\"dim\":0}]," BASE_S "}",
               "tables[0].dim: must be 1..4096");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"name\":\"a\",\"dim\":4,\"dtype\":\"int8\"}],"
               BASE_S "}", "tables[0].dtype: must be \"fp32\" or \"fp16\"");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"name\":\"a\",\"dim\":4},{\"name\":\"a\","
               "\"dim\":4}]," BASE_S "}", "tables[1].name: \"a\" already used");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"name\":\"a b\",\"dim\":4}]," BASE_S "}",
               "tables[0].name: only letters");
    expect_bad("{\"node_id\":\"n\",\"tables\":[{\"dim\":4}]," BASE_S "}",
               "tables[0].name: required");
    expect_bad("{\"tables\":[{\"name\":\"a\",\"dim\":4}]," BASE_S "}", "node_id: required");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"bogus\":1," BASE_S "}", "bogus: unknown key");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"listen\":{\"tcp_port\":70000}," BASE_S "}",
               "listen.tcp_port: must be 0..65535");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"listen\":{\"host\":\"localhost\"}," BASE_S "}",
               "listen.host: must be a numeric IPv4");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"listen\":{\"shm\":1}," BASE_S "}",
               "listen.shm: must be true or false");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"listen\":{\"hello_timeout_ms\":50}," BASE_S "}",
               "listen.hello_timeout_ms: must be 100..60000");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"shards\":{\"nshards\":4,\"own\":[1,9]},"
               "\"secret_file\":\"/s\"}", "shards.own[1]: must be 0..3");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"shards\":{\"nshards\":4,\"own\":[1,1]},"
               "\"secret_file\":\"/s\"}", "shards.own[1]: shard 1 listed twice");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"shards\":{\"own\":\"all\"},"
               "\"secret_file\":\"/s\"}", "shards.nshards: required");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"shards\":{\"nshards\":4,\"own\":\"all\"}}",
               "secret_file: required");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"snapshot\":{\"interval_s\":5}," BASE_S "}",
               "snapshot.dir: required");
    expect_bad("{\"node_id\":\"n\",\"tables\":[]," BASE_S "}", "tables: must be a list");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"metrics\":{\"port\":\"x\"}," BASE_S "}",
               "metrics.port");
    expect_bad("{\"node_id\":\"n\",\"node_id\":\"m\"," BASE_T "," BASE_S "}", "duplicate");
    /* following etcd: needs coord, the map form, a boolean */
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"secret_file\":\"/s\",\"shards\":"
               "{\"cluster_map\":\"/m\",\"map_node\":1,\"follow_etcd\":true}}",
               "shards.follow_etcd: needs \"coord\"");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"secret_file\":\"/s\","
               "\"coord\":{\"etcd\":\"http://127.0.0.1:1\",\"cluster\":\"c\"},\"shards\":"
               "{\"nshards\":4,\"own\":\"all\",\"follow_etcd\":true}}",
               "shards.follow_etcd: only with cluster_map + map_node");
    expect_bad("{\"node_id\":\"n\"," BASE_T ",\"secret_file\":\"/s\","
               "\"coord\":{\"etcd\":\"http://127.0.0.1:1\",\"cluster\":\"c\"},\"shards\":"
               "{\"cluster_map\":\"/m\",\"map_node\":1,\"follow_etcd\":1}}",
               "shards.follow_etcd: must be true or false");
}

/* tls: the policy and its files, each mistake named by key (files are checked by
 * --check-config / create, test_sec_config and test_rpc_tls). */
static void test_config_tls(void **st)
{
    (void)st;
    const char *good = "{\"node_id\":\"n\"," BASE_T "," BASE_S ",\"tls\":{\"policy\":"
                       "\"cross_az\",\"cert_file\":\"/c.pem\",\"key_file\":\"/k.pem\","
                       "\"ca_file\":\"/ca.pem\",\"verify_clients\":\"optional\","
                       "\"server_name\":\"dhps.example\"}}";
    dhps_server_config *c = NULL;
    char err[256];
    assert_int_equal(dhps_server_config_parse(good, strlen(good), &c, err, sizeof err), 0);
    assert_int_equal(c->tls_policy, DHPS_RPC_TLS_CROSS_AZ);
    assert_string_equal(c->tls_cert_file, "/c.pem");
    assert_string_equal(c->tls_key_file, "/k.pem");
    assert_string_equal(c->tls_ca_file, "/ca.pem");
    assert_string_equal(c->tls_server_name, "dhps.example");
    assert_int_equal(c->tls_verify_clients, DHPS_RPC_TLS_VERIFY_OPTIONAL);
    dhps_server_config_free(c);
    const char *off = "{\"node_id\":\"n\"," BASE_T "," BASE_S ",\"tls\":{\"policy\":\"off\"}}";
    assert_int_equal(dhps_server_config_parse(off, strlen(off), &c, err, sizeof err), 0);
    assert_int_equal(c->tls_policy, DHPS_RPC_TLS_OFF);
    dhps_server_config_free(c);
#define TLS_CFG(x) "{\"node_id\":\"n\"," BASE_T "," BASE_S ",\"tls\":" x "}"
#define FILES "\"cert_file\":\"/c\",\"key_file\":\"/k\",\"ca_file\":\"/a\""
    expect_bad(TLS_CFG("true"), "tls: must be an object");
    expect_bad(TLS_CFG("{}"), "tls.policy: required");
    expect_bad(TLS_CFG("{\"policy\":\"sometimes\"}"),
               "tls.policy: must be \"off\", \"cross_az\" or \"always\"");
    expect_bad(TLS_CFG("{\"policy\":\"always\"}"), "tls.cert_file: required with tls.policy");
    expect_bad(TLS_CFG("{\"policy\":\"always\",\"cert_file\":\"/c\",\"key_file\":\"/k\"}"),
               "tls.ca_file: required with tls.policy \"always\"");
    expect_bad(TLS_CFG("{\"policy\":\"off\",\"cert_file\":\"/c\"}"),
               "tls.cert_file: set, but tls.policy is \"off\"");
    expect_bad(TLS_CFG("{\"policy\":\"always\"," FILES ",\"verify_clients\":\"yes\"}"),
               "tls.verify_clients: must be \"none\", \"optional\" or \"required\"");
    expect_bad(TLS_CFG("{\"policy\":\"always\"," FILES ",\"server_name\":\"a b\"}"),
               "tls.server_name: must be a DNS name");
    expect_bad(TLS_CFG("{\"policy\":\"always\"," FILES ",\"cipher\":\"x\"}"),
               "tls.cipher: unknown key");
    expect_bad(TLS_CFG("{\"policy\":\"always\",\"cert_file\":7}"),
               "tls.cert_file: must be a string");
#undef TLS_CFG
#undef FILES
}

/* follow_etcd: a missing map file is fine for --check-config (etcd has it at start),
 * a map that does not list map_node too; without follow_etcd both are errors. */
static void test_config_follow(void **st)
{
    (void)st;
    char text[1024], err[512];
    dhps_server_config *c = NULL;
    const char *fmt = "{\"node_id\":\"n\"," BASE_T ",\"secret_file\":\"/s\","
                      "\"coord\":{\"etcd\":\"http://127.0.0.1:1\",\"cluster\":\"c\"},"
                      "\"shards\":{\"cluster_map\":\"%s\",\"map_node\":7%s}}";
    snprintf(text, sizeof text, fmt, "/nonexistent/map.json", ",\"follow_etcd\":true");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_true(c->follow_etcd);
    assert_int_equal(dhps_server_config_resolve(c, err, sizeof err), 0);
    assert_int_equal(c->nshards, 0);
    dhps_server_config_free(c);
    snprintf(text, sizeof text, fmt, "/nonexistent/map.json", "");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_false(c->follow_etcd);
    assert_int_equal(dhps_server_config_resolve(c, err, sizeof err), DHPS_E_CONFIG);
    dhps_server_config_free(c);
    char path[] = "/tmp/dhps-unit-map-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *map = "{\"version\":3,\"nshards\":2,\"replicas\":1,\"nodes\":[{\"id\":1,"
                      "\"host\":\"h\",\"addr\":\"127.0.0.1:7000\"}],\"shards\":[[1],[1]]}";
    assert_int_equal(write(fd, map, strlen(map)), (ssize_t)strlen(map));
    close(fd);
    snprintf(text, sizeof text, fmt, path, ",\"follow_etcd\":true");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_int_equal(dhps_server_config_resolve(c, err, sizeof err), 0); /* node 7: none */
    assert_int_equal(c->nshards, 2);
    assert_int_equal(c->owned[0] + c->owned[1], 0);
    dhps_server_config_free(c);
    snprintf(text, sizeof text, fmt, path, "");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_int_equal(dhps_server_config_resolve(c, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "node 7 is not in the cluster map"));
    dhps_server_config_free(c);
    unlink(path);
}

static void test_config_file(void **st)
{
    dhps_server_config *c = NULL;
    char err[256];
    assert_int_equal(dhps_server_config_load("/nonexistent/dhps.json", &c, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/dhps.json"));
}

/* ---- request decoding ---- */

static size_t mk(uint8_t *buf, uint16_t version, const char *table)
{
    dhps_proto_hdr h;
    memset(&h, 0, sizeof h);
    h.version = version;
    strcpy(h.table, table);
    memcpy(buf, &h, sizeof h);
    return sizeof h;
}

static void test_msg_decode(void **st)
{
    static uint8_t buf[1 << 16];
    srv_msg m;
    const char *why;
    size_t o = mk(buf, 1, "emb");
    dhps_proto_lookup l = {.n = 3};
    memcpy(buf + o, &l, sizeof l);
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, o + 8 + 24, &m, &why), 0);
    assert_int_equal(m.n, 3);
    assert_string_equal(m.table, "emb");
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, o + 8 + 23, &m, &why), DHPS_E_MALFORMED);
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, o + 8 + 32, &m, &why), DHPS_E_MALFORMED);
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, 10, &m, &why), DHPS_E_MALFORMED);
    l.n = DHPS_PROTO_MAX_KEYS + 1;
    memcpy(buf + o, &l, sizeof l);
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, o + 8, &m, &why), DHPS_E_TOOBIG);
    l.n = 0xFFFFFFFFu;
    memcpy(buf + o, &l, sizeof l);
    assert_int_equal(srv_msg_decode(DHPS_M_LOOKUP, buf, o + 8, &m, &why), DHPS_E_TOOBIG);
    /* version */
    mk(buf, 2, "emb");
    assert_int_equal(srv_msg_decode(DHPS_M_INFO, buf, 64, &m, &why), DHPS_E_VERSION);
    /* table name without NUL / with garbage after NUL */
    mk(buf, 1, "emb");
    memset(buf + 8, 'x', DHPS_TABLE_NAME_MAX);
    assert_int_equal(srv_msg_decode(DHPS_M_INFO, buf, 64, &m, &why), DHPS_E_MALFORMED);
    mk(buf, 1, "emb");
    buf[8 + 10] = 'z';
    assert_int_equal(srv_msg_decode(DHPS_M_INFO, buf, 64, &m, &why), DHPS_E_MALFORMED);
    /* upsert */
    o = mk(buf, 1, "emb");
    dhps_proto_upsert u = {.n = 2, .value_bytes = 32, .version = 7};
    memcpy(buf + o, &u, sizeof u);
    size_t ul = o + sizeof u + 2 * 8 + 2 * 32;
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul, &m, &why), 0);
    assert_int_equal(m.version, 7);
    assert_int_equal(srv_msg_check_rows(&m, 8, &why), 0);
    assert_int_equal(srv_msg_check_rows(&m, 9, &why), DHPS_E_MALFORMED);
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul - 1, &m, &why), DHPS_E_MALFORMED);
    u.value_bytes = 0;
    memcpy(buf + o, &u, sizeof u);
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul, &m, &why), DHPS_E_MALFORMED);
    u.value_bytes = 0x80000000u; /* n * value_bytes must not wrap */
    u.n = 0x20000u;
    memcpy(buf + o, &u, sizeof u);
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul, &m, &why), DHPS_E_TOOBIG);
    u.n = 2;
    memcpy(buf + o, &u, sizeof u);
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul, &m, &why), DHPS_E_MALFORMED);
    ((dhps_proto_hdr *)(void *)buf)->flags = 7;
    assert_int_equal(srv_msg_decode(DHPS_M_UPSERT, buf, ul, &m, &why), DHPS_E_MALFORMED);
    /* delete, header-only methods, unknown method */
    o = mk(buf, 1, "emb");
    dhps_proto_delete d = {.n = 1, .version = 3};
    memcpy(buf + o, &d, sizeof d);
    assert_int_equal(srv_msg_decode(DHPS_M_DELETE, buf, o + 16 + 8, &m, &why), 0);
    assert_int_equal(srv_msg_decode(DHPS_M_DELETE, buf, o + 16 + 9, &m, &why), DHPS_E_MALFORMED);
    assert_int_equal(srv_msg_decode(DHPS_M_STATS, buf, 64, &m, &why), 0);
    assert_int_equal(srv_msg_decode(DHPS_M_SNAPSHOT, buf, 65, &m, &why), DHPS_E_MALFORMED);
    assert_int_equal(srv_msg_decode(0x7777, buf, 64, &m, &why), DHPS_E_MALFORMED);
}

/* The replay guard remembers each accepted signed change until its timestamp leaves
 * the window; it refuses rather than forgets when every slot is live. */
static void test_admin_replay_window(void **st)
{
    (void)st;
    srv_admin_replay *r = malloc(sizeof *r);
    assert_non_null(r);
    srv_admin_replay_init(r);
    char err[256], h[160];
    const time_t now = 1700000000;
    for (unsigned i = 0; i < SRV_ADMIN_REPLAY_SLOTS; i++) {
        snprintf(h, sizeof h, "%lld.%x %064x", (long long)now, i, i);
        assert_int_equal(srv_admin_replay_note(r, h, now, err, sizeof err), 0);
    }
    snprintf(h, sizeof h, "%lld.%x %064x", (long long)now, 7u, 7u);
    assert_int_equal(srv_admin_replay_note(r, h, now, err, sizeof err), -EALREADY);
    assert_non_null(strstr(err, "replayed"));
    snprintf(h, sizeof h, "%lld %064x", (long long)now, 0x12345u);
    assert_int_equal(srv_admin_replay_note(r, h, now + 10, err, sizeof err), -EBUSY);
    assert_non_null(strstr(err, "try again"));
    /* past timestamp + skew they are stale anyway: their slots are reused */
    assert_int_equal(srv_admin_replay_note(r, h, now + SRV_ADMIN_SKEW_S + 1, err, sizeof err), 0);
    assert_int_equal(srv_admin_replay_note(r, "12 zz", now, err, sizeof err), -EINVAL);
    srv_admin_replay_fini(r);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_paths_agree), cmocka_unit_test(test_fp16_round_trip),
        cmocka_unit_test(test_config_good),      cmocka_unit_test(test_config_tls),
        cmocka_unit_test(test_config_bad),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_config_follow),      cmocka_unit_test(test_msg_decode),
        cmocka_unit_test(test_admin_replay_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

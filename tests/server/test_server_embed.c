/* An embedded server (dhps_server_create/start in this process) driven over real rpc
 * with raw proto.h messages: lookups across shards, fp16, errors, metrics, health. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <math.h>
#include <cmocka.h>

#include "srv_test.h"
#include "dhps/server.h"

#define NSH 4

typedef struct fx {
    char *dir;
    dhps_server *s;
    t_conn tc;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    f->dir = t_mkdtemp();
    char cfgtext[2048], err[600];
    t_config(f->dir, cfgtext, sizeof cfgtext, NSH, "[0,1,2]", "");
    if (t_server_start(cfgtext, &f->s, err, sizeof err))
        fail_msg("%s", err);
    assert_true(dhps_server_ready(f->s));
    assert_int_equal(t_connect(&f->tc, dhps_server_port(f->s), T_SECRET), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    t_close(&f->tc);
    dhps_server_destroy(f->s);
    t_rmdir(f->dir);
    free(f);
    return 0;
}

static float val(uint64_t key, uint32_t j)
{
    return (float)(key % 1000) * 0.5f + (float)j * 0.25f - 3.0f;
}

/* Write keys 1..n split by shard (owned ones only), read them back. */
static void test_lookup_across_shards(void **state)
{
    fx *f = *state;
    enum { N = 600, D = 8 };
    uint64_t keys[NSH][N];
    uint32_t cnt[NSH] = {0};
    for (uint64_t k = 1; k <= N; k++) {
        uint32_t sh = dhps_proto_shard_of(k, NSH);
        keys[sh][cnt[sh]++] = k;
    }
    static float rows[N * D], back[N * D] = {0};
    for (uint32_t sh = 0; sh < 3; sh++) {
        for (uint32_t i = 0; i < cnt[sh]; i++)
            for (uint32_t j = 0; j < D; j++)
                rows[i * D + j] = val(keys[sh][i], j);
        uint32_t applied = 0;
        assert_int_equal(t_upsert(&f->tc, "emb", sh, keys[sh], cnt[sh], rows, D * 4, 0, 1,
                                  &applied), 0);
        assert_int_equal(applied, cnt[sh]);
    }
    for (uint32_t sh = 0; sh < 3; sh++) {
        uint64_t q[N + 1];
        memcpy(q, keys[sh], cnt[sh] * 8);
        q[cnt[sh]] = 999999; /* absent */
        uint64_t found[(N + 64) / 64] = {0};
        uint32_t vb = 0;
        assert_int_equal(t_lookup(&f->tc, "emb", sh, q, cnt[sh] + 1, 0, back, found, &vb), 0);
        assert_int_equal(vb, D * 4);
        for (uint32_t i = 0; i < cnt[sh]; i++) {
            assert_true(found[i / 64] >> (i % 64) & 1);
            for (uint32_t j = 0; j < D; j++)
                assert_true(back[i * D + j] == val(q[i], j));
        }
        assert_false(found[cnt[sh] / 64] >> (cnt[sh] % 64) & 1);
        for (uint32_t j = 0; j < D; j++)
            assert_true(back[cnt[sh] * D + j] == 0.0f);
    }
    /* shard 3 is not owned: NOTFOUND with a message, and the server goes on */
    char text[512];
    uint8_t req[64 + 8 + 8];
    t_hdr(req, "emb", 3, 0);
    dhps_proto_lookup l = {.n = 1};
    memcpy(req + 64, &l, 8);
    memcpy(req + 72, &keys[3][0], 8);
    uint8_t *resp = malloc(T_RESP_CAP);
    size_t rl = 0;
    assert_int_equal(t_call(&f->tc, DHPS_M_LOOKUP, req, sizeof req, resp, &rl), 0);
    assert_int_equal(t_status(0, resp, rl), DHPS_E_NOTFOUND);
    snprintf(text, sizeof text, "%.*s", (int)(rl - 16), (char *)resp + 16);
    assert_non_null(strstr(text, "shard 3 of table emb is not owned by node t1"));
    /* delete one key, it is gone */
    uint8_t dreq[64 + 16 + 8];
    t_hdr(dreq, "emb", 0, 0);
    dhps_proto_delete d = {.n = 1, .version = UINT64_MAX};
    memcpy(dreq + 64, &d, 16);
    memcpy(dreq + 80, &keys[0][0], 8);
    assert_int_equal(t_call(&f->tc, DHPS_M_DELETE, dreq, sizeof dreq, resp, &rl), 0);
    assert_int_equal(t_status(0, resp, rl), 0);
    assert_int_equal(((dhps_proto_resp *)(void *)resp)->count, 1);
    uint64_t found1 = 0;
    assert_int_equal(t_lookup(&f->tc, "emb", 0, keys[0], 1, 0, NULL, &found1, NULL), 0);
    assert_int_equal(found1, 0);
    free(resp);
}

static void test_fp16_table(void **state)
{
    fx *f = *state;
    enum { N = 50, D = 6 };
    uint64_t keys[N];
    uint32_t n = 0;
    for (uint64_t k = 1000; n < N; k++)
        if (dhps_proto_shard_of(k, NSH) == 1)
            keys[n++] = k;
    float rows[N * D], back[N * D] = {0};
    for (uint32_t i = 0; i < N * D; i++)
        rows[i] = (float)i * 0.013f - 1.7f;
    /* fp32 rows into the fp16 table: narrowed by the server */
    assert_int_equal(t_upsert(&f->tc, "half", 1, keys, N, rows, D * 4, 0, 1, NULL), 0);
    uint64_t found[1] = {0};
    uint32_t vb;
    assert_int_equal(t_lookup(&f->tc, "half", 1, keys, N, 0, back, found, &vb), 0);
    assert_int_equal(vb, D * 4);
    for (uint32_t i = 0; i < N * D; i++)
        assert_true(fabsf(back[i] - rows[i]) <= fabsf(rows[i]) / 1024.0f + 1e-6f);
    /* fp16 on the wire both ways */
    uint16_t h[N * D], hb[N * D];
    dhps_fp16_from_fp32(h, rows, N * D);
    assert_int_equal(t_lookup(&f->tc, "half", 1, keys, N, DHPS_LOOKUP_FP16, hb, found, &vb), 0);
    assert_int_equal(vb, D * 2);
    assert_memory_equal(h, hb, sizeof h);
    for (uint32_t i = 0; i < N * D; i++)
        h[i] ^= 1; /* perturb the last mantissa bit, write as fp16 rows */
    assert_int_equal(t_upsert(&f->tc, "half", 1, keys, N, h, D * 2, 1, 2, NULL), 0);
    assert_int_equal(t_lookup(&f->tc, "half", 1, keys, N, DHPS_LOOKUP_FP16, hb, found, &vb), 0);
    assert_memory_equal(h, hb, sizeof h);
    /* fp16 rows into the fp32 table, read back as fp16 */
    uint16_t h8[N * 8];
    memset(h8, 0, sizeof h8);
    assert_int_equal(t_upsert(&f->tc, "emb", 1, keys, N, h8, 6 * 2, 1, 1, NULL),
                     DHPS_E_MALFORMED); /* dim 8 table, rows of 6: wrong size */
    for (uint32_t i = 0; i < N * 8; i++)
        h8[i] = h[i % (N * D)];
    assert_int_equal(t_upsert(&f->tc, "emb", 1, keys, N, h8, 8 * 2, 1, 1, NULL), 0);
    uint16_t hb8[N * 8];
    assert_int_equal(t_lookup(&f->tc, "emb", 1, keys, N, DHPS_LOOKUP_FP16, hb8, found, &vb), 0);
    assert_memory_equal(h8, hb8, sizeof h8);
}

static void test_errors_take_nothing_down(void **state)
{
    fx *f = *state;
    uint64_t k = 5;
    float row[8] = {1};
    assert_int_equal(t_upsert(&f->tc, "nosuch", 0, &k, 1, row, 32, 0, 1, NULL), DHPS_E_NOTFOUND);
    assert_int_equal(t_lookup(&f->tc, "nosuch", 0, &k, 1, 0, NULL, NULL, NULL), DHPS_E_NOTFOUND);
    assert_int_equal(t_lookup(&f->tc, "emb", 99, &k, 1, 0, NULL, NULL, NULL), DHPS_E_NOTFOUND);
    /* oversized batch: n above DHPS_PROTO_MAX_KEYS */
    uint32_t n = DHPS_PROTO_MAX_KEYS + 1;
    uint64_t *many = calloc(n, 8);
    assert_int_equal(t_lookup(&f->tc, "emb", 0, many, n, 0, NULL, NULL, NULL), DHPS_E_TOOBIG);
    /* a batch whose response exceeds the max message (4 MiB): 65536 * 32 fits; use the
     * n field alone lying about its keys: malformed */
    free(many);
    uint8_t *resp = malloc(T_RESP_CAP);
    size_t rl;
    uint8_t req[200];
    memset(req, 0, sizeof req);
    t_hdr(req, "emb", 0, 0);
    dhps_proto_lookup l = {.n = 10}; /* claims 10 keys, carries 2 */
    memcpy(req + 64, &l, 8);
    assert_int_equal(t_call(&f->tc, DHPS_M_LOOKUP, req, 64 + 8 + 16, resp, &rl), 0);
    assert_int_equal(t_status(0, resp, rl), DHPS_E_MALFORMED);
    assert_true(rl > 16); /* carries a message */
    assert_int_equal(t_call(&f->tc, DHPS_M_LOOKUP, req, 20, resp, &rl), 0);
    assert_int_equal(t_status(0, resp, rl), DHPS_E_MALFORMED);
    ((dhps_proto_hdr *)(void *)req)->version = 9;
    assert_int_equal(t_call(&f->tc, DHPS_M_INFO, req, 64, resp, &rl), 0);
    assert_int_equal(t_status(0, resp, rl), DHPS_E_VERSION);
    /* upsert with a wrong value size */
    assert_int_equal(t_upsert(&f->tc, "emb", 0, &k, 1, row, 28, 0, 1, NULL), DHPS_E_MALFORMED);
    /* unknown method: the rpc layer answers NOTFOUND */
    assert_int_equal(t_call(&f->tc, 0x0199, req, 64, resp, &rl), DHPS_E_NOTFOUND);
    /* stale version reported in the mask */
    assert_int_equal(t_upsert(&f->tc, "emb", dhps_proto_shard_of(k, NSH) % 3, &k, 1, row, 32,
                              0, 10, NULL), 0);
    uint32_t applied = 9;
    assert_int_equal(t_upsert(&f->tc, "emb", dhps_proto_shard_of(k, NSH) % 3, &k, 1, row, 32,
                              0, 5, &applied), 0);
    assert_int_equal(applied, 0);
    /* still serving */
    char info[4096];
    assert_int_equal(t_simple(&f->tc, DHPS_M_INFO, "", info, sizeof info, NULL), 0);
    assert_non_null(strstr(info, "\"node_id\":\"t1\""));
    assert_non_null(strstr(info, "\"tcp_port\""));
    free(resp);
}

static void test_stats_snapshot_metrics(void **state)
{
    fx *f = *state;
    uint64_t keys[3] = {11, 12, 13};
    float rows[3 * 8] = {0};
    int owned = 0;
    for (int i = 0; i < 3; i++)
        if (dhps_proto_shard_of(keys[i], NSH) < 3) { /* then a newer row, written in place */
            for (uint64_t ver = 1; ver <= 2; ver++)
                assert_int_equal(t_upsert(&f->tc, "emb", dhps_proto_shard_of(keys[i], NSH),
                                          &keys[i], 1, rows, 32, 0, ver, NULL), 0);
            owned++;
        }
    assert_true(owned > 0);
    char text[8192];
    assert_int_equal(t_simple(&f->tc, DHPS_M_STATS, "emb", text, sizeof text, NULL), 0);
    assert_non_null(strstr(text, "\"name\":\"emb\""));
    assert_non_null(strstr(text, "\"shards\":3"));
    assert_int_equal(t_simple(&f->tc, DHPS_M_STATS, "zzz", text, sizeof text, NULL),
                     DHPS_E_NOTFOUND);
    uint32_t count = 0;
    assert_int_equal(t_simple(&f->tc, DHPS_M_SNAPSHOT, "", text, sizeof text, &count), 0);
    assert_int_equal(count, 6); /* 2 tables x 3 owned shards */
    char path[600];
    snprintf(path, sizeof path, "%s/snap/emb.2.snap", f->dir);
    assert_int_equal(access(path, R_OK), 0);
    assert_int_equal(dhps_server_snapshot(f->s), 6);

    uint64_t q = 11;
    t_lookup(&f->tc, "emb", dhps_proto_shard_of(q, NSH), &q, 1, 0, NULL, NULL, NULL);
    char *body = NULL;
    assert_int_equal(t_http_get(dhps_server_metrics_port(f->s), "/metrics", &body), 200);
    /* every sample line parses as "name{labels} number" */
    for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        char *sp = strrchr(line, ' ');
        assert_non_null(sp);
        char *end;
        strtod(sp + 1, &end);
        if (*end)
            fail_msg("unparseable metric line: %s", line);
        assert_true(!strncmp(line, "dhps_", 5) || !strncmp(line, "process_", 8));
        *sp = ' ';
    }
    free(body);
    assert_int_equal(t_http_get(dhps_server_metrics_port(f->s), "/metrics", &body), 200);
    assert_true(t_metric(body, "dhps_requests_total{method=\"lookup\",status=\"ok\"}") >= 1);
    assert_true(t_metric(body, "dhps_requests_total{method=\"upsert\",status=\"ok\"}") >= 1);
    assert_true(t_metric(body, "dhps_requests_total{method=\"stats\",status=\"notfound\"}") >= 1);
    assert_true(t_metric(body, "dhps_keys_looked_up_total{table=\"emb\"}") >= 1);
    assert_true(t_metric(body, "dhps_keys_found_total{table=\"emb\"}") >= 1);
    assert_true(t_metric(body, "dhps_request_seconds_bucket{method=\"lookup\",le=\"+Inf\"}") >= 1);
    assert_true(t_metric(body, "dhps_table_keys{table=\"emb\"}") >= 1);
    assert_true(t_metric(body, "dhps_table_fragmentation_ratio{table=\"half\"}") >= 0);
    assert_true(t_metric(body, "dhps_table_inplace_updates_total{table=\"emb\"}") >= 1);
    assert_true(t_metric(body, "dhps_table_compaction_bytes_total{table=\"emb\"}") >= 0);
    assert_true(t_metric(body, "dhps_rpc_handled_total{transport=\"tcp\"}") >= 1);
    assert_true(t_metric(body, "dhps_snapshot_files_total") >= 12);
    assert_true(t_metric(body, "dhps_ready") == 1);
    free(body);
    assert_int_equal(t_http_get(dhps_server_metrics_port(f->s), "/health", &body), 200);
    free(body);
    assert_int_equal(t_http_get(dhps_server_metrics_port(f->s), "/nope", &body), 404);
    free(body);
}

/* Lookups from several client threads beside writers: nothing torn (each row's
 * elements all carry the same version number). */
typedef struct thr_arg {
    fx *f;
    int writer;
    int errors;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    t_conn tc;
    if (t_connect(&tc, dhps_server_port(a->f->s), T_SECRET)) {
        a->errors++;
        return NULL;
    }
    uint64_t keys[32];
    for (int i = 0; i < 32; i++)
        keys[i] = 5000 + (uint64_t)i * 4; /* all on one shard? no: route per key below */
    for (int it = 0; it < 150; it++) {
        for (int i = 0; i < 32; i++) {
            uint32_t sh = dhps_proto_shard_of(keys[i], NSH);
            if (sh >= 3)
                continue;
            float row[8] = {0};
            if (a->writer) {
                for (int j = 0; j < 8; j++)
                    row[j] = (float)it;
                if (t_upsert(&tc, "emb", sh, &keys[i], 1, row, 32, 0, (uint64_t)it + 1, NULL))
                    a->errors++;
            } else {
                uint64_t found = 0;
                if (t_lookup(&tc, "emb", sh, &keys[i], 1, 0, row, &found, NULL))
                    a->errors++;
                for (int j = 1; j < 8; j++)
                    if (row[j] != row[0])
                        a->errors++;
            }
        }
    }
    t_close(&tc);
    return NULL;
}

static void test_concurrent_clients(void **state)
{
    fx *f = *state;
    pthread_t th[3];
    thr_arg args[3] = {{f, 1, 0}, {f, 0, 0}, {f, 0, 0}};
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, thr_main, &args[i]);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].errors, 0);
    }
}

/* NaN/inf refused whole by default (-EDOM, nothing stored), as is an fp32 value an fp16
 * table cannot hold; a table with allow_nonfinite stores them. */
static void test_nonfinite_refused(void **state)
{
    fx *f = *state;
    uint64_t keys[2];
    uint32_t nk = 0;
    for (uint64_t k = 1; nk < 2; k++)
        if (dhps_proto_shard_of(k, NSH) == 0)
            keys[nk++] = k;
    float rows[2 * 8];
    for (int i = 0; i < 16; i++)
        rows[i] = (float)i;
    rows[11] = NAN;
    assert_int_equal(t_upsert(&f->tc, "emb", 0, keys, 2, rows, 32, 0, 10, NULL), -EDOM);
    rows[11] = -INFINITY;
    assert_int_equal(t_upsert(&f->tc, "emb", 0, keys, 2, rows, 32, 0, 10, NULL), -EDOM);
    float out[16];
    uint64_t found = 0;
    assert_int_equal(t_lookup(&f->tc, "emb", 0, keys, 2, 0, out, &found, NULL), 0);
    assert_int_equal(found, 0); /* nothing stored */
    /* fp16 table: 1e6 (finite fp32) does not fit fp16 */
    float r6[2 * 6];
    for (int i = 0; i < 12; i++)
        r6[i] = 1.0f;
    r6[7] = 1e6f;
    assert_int_equal(t_upsert(&f->tc, "half", 0, keys, 2, r6, 24, 0, 10, NULL), -EDOM);
    r6[7] = 65504.0f; /* the largest fp16: fine */
    assert_int_equal(t_upsert(&f->tc, "half", 0, keys, 2, r6, 24, 0, 10, NULL), 0);
    /* a table that allows them */
    char cfgtext[2048], err[600];
    char *dir = t_mkdtemp();
    snprintf(cfgtext, sizeof cfgtext,
             "{\"node_id\":\"nf\",\"listen\":{\"tcp_port\":0},\"tables\":[{\"name\":\"emb\","
             "\"dim\":8,\"allow_nonfinite\":true}],\"secret_file\":\"%s/secret\","
             "\"shards\":{\"nshards\":%d,\"own\":\"all\"}}", dir, NSH);
    dhps_server *s2 = NULL;
    if (t_server_start(cfgtext, &s2, err, sizeof err))
        fail_msg("%s", err);
    t_conn tc;
    assert_int_equal(t_connect(&tc, dhps_server_port(s2), T_SECRET), 0);
    rows[11] = NAN;
    assert_int_equal(t_upsert(&tc, "emb", 0, keys, 2, rows, 32, 0, 10, NULL), 0);
    assert_int_equal(t_lookup(&tc, "emb", 0, keys, 2, 0, out, &found, NULL), 0);
    assert_int_equal(found, 3); /* both keys: mask bits 0 and 1 */
    assert_true(isnan(out[11]));
    t_close(&tc);
    dhps_server_destroy(s2);
    t_rmdir(dir);
}

static void test_bad_secret_file(void **state)
{
    char *dir = t_mkdtemp();
    char cfgtext[2048], err[512], p[600];
    t_config(dir, cfgtext, sizeof cfgtext, 2, "\"all\"", "");
    dhps_server_config *c = NULL;
    assert_int_equal(dhps_server_config_parse(cfgtext, strlen(cfgtext), &c, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/secret", dir);
    t_write(p, "\n", 0600);
    dhps_server *s = NULL;
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "empty"));
    assert_non_null(strstr(err, p));
    unlink(p);
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "No such file"));
    t_write(p, T_SECRET, 0644); /* world-readable: refused, naming the fix */
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "mode 0644 lets any user read or change it"));
    t_write(p, T_SECRET, 0640); /* group-readable: refused too */
    chmod(p, 0640);
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "mode 0640 lets its group"));
    chmod(p, 0600);
    t_write(p, "dog", 0600); /* a guessable secret */
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "too weak (3 bytes"));
    t_write(p, T_SECRET, 0600);
    char snapd[600];
    snprintf(snapd, sizeof snapd, "%s/snap", dir);
    rmdir(snapd); /* a missing snapshot dir is a config error */
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "snapshot.dir"));
    assert_non_null(strstr(err, "No such file"));
    mkdir(snapd, 0700);
    assert_int_equal(dhps_server_create(c, &s, err, sizeof err), 0);
    dhps_server_destroy(s);
    dhps_server_config_free(c);
    t_rmdir(dir);
}

/* The same requests over shared memory (the server offers shm by default). */
static void test_shm_transport(void **state)
{
    fx *f = *state;
    t_conn tc;
    int rc = t_connect_ex(&tc, dhps_server_port(f->s), T_SECRET,
                          DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_SHM), DHPS_RPC_SHM);
    if (rc)
        fail_msg("shm channel: %s", dhps_strerror(rc));
    assert_int_equal(dhps_rpc_channel_transport(tc.ch), DHPS_RPC_SHM);
    uint64_t keys[40];
    uint32_t n = 0;
    for (uint64_t k = 77; n < 40; k++)
        if (dhps_proto_shard_of(k, NSH) == 2)
            keys[n++] = k;
    float rows[40 * 8], back[40 * 8] = {0};
    for (int i = 0; i < 40 * 8; i++)
        rows[i] = (float)i;
    assert_int_equal(t_upsert(&tc, "emb", 2, keys, n, rows, 32, 0, 1, NULL), 0);
    uint64_t found = 0;
    assert_int_equal(t_lookup(&tc, "emb", 2, keys, n, 0, back, &found, NULL), 0);
    assert_int_equal(found, (1ull << 40) - 1);
    assert_memory_equal(rows, back, sizeof rows);
    t_close(&tc);
    char *body = NULL;
    assert_int_equal(t_http_get(dhps_server_metrics_port(f->s), "/metrics", &body), 200);
    assert_true(t_metric(body, "dhps_rpc_handled_total{transport=\"shm\"}") >= 2);
    free(body);
}

/* Ownership from a cluster map: node 1 serves shards 1 and 3 of 4. */
static void test_cluster_map_form(void **state)
{
    char *dir = t_mkdtemp();
    char mapp[600], cfgtext[2048], err[512], info[4096];
    snprintf(mapp, sizeof mapp, "%s/map.json", dir);
    t_write(mapp,
            "{\"version\":3,\"nshards\":4,\"replicas\":1,\"nodes\":["
            "{\"id\":0,\"host\":\"h0\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:7000\"},"
            "{\"id\":1,\"host\":\"h1\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:7001\"}],"
            "\"shards\":[[0],[1],[0],[1]]}", 0600);
    for (int bad = 0; bad < 2; bad++) {
        snprintf(cfgtext, sizeof cfgtext,
                 "{\"node_id\":\"n1\",\"tables\":[{\"name\":\"emb\",\"dim\":8}],"
                 "\"listen\":{\"tcp_port\":0},"
                 "\"secret_file\":\"%s/secret\",\"shards\":{\"cluster_map\":\"%s\","
                 "\"map_node\":%d}}", dir, mapp, bad ? 9 : 1);
        dhps_server_config *c = NULL;
        assert_int_equal(dhps_server_config_parse(cfgtext, strlen(cfgtext), &c, err, sizeof err),
                         0);
        dhps_server *s = NULL;
        int rc = dhps_server_create(c, &s, err, sizeof err);
        dhps_server_config_free(c);
        if (bad) {
            assert_int_equal(rc, DHPS_E_CONFIG);
            assert_non_null(strstr(err, "shards.map_node: node 9 is not in the cluster map"));
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(dhps_server_start(s, err, sizeof err), 0);
        t_conn tc;
        assert_int_equal(t_connect(&tc, dhps_server_port(s), T_SECRET), 0);
        assert_int_equal(t_simple(&tc, DHPS_M_INFO, "", info, sizeof info, NULL), 0);
        assert_non_null(strstr(info, "\"nshards\":4"));
        assert_non_null(strstr(info, "\"shards\":[1,3]"));
        uint64_t k = 1;
        while (dhps_proto_shard_of(k, 4) != 0)
            k++;
        assert_int_equal(t_lookup(&tc, "emb", 0, &k, 1, 0, NULL, NULL, NULL), DHPS_E_NOTFOUND);
        t_close(&tc);
        dhps_server_destroy(s);
    }
    /* without listen.tcp_port the node's port comes from its addr in the map */
    snprintf(cfgtext, sizeof cfgtext,
             "{\"node_id\":\"n1\",\"tables\":[{\"name\":\"emb\",\"dim\":8}],"
             "\"secret_file\":\"/s\",\"shards\":{\"cluster_map\":\"%s\",\"map_node\":1}}",
             mapp);
    dhps_server_config *pc = NULL;
    assert_int_equal(dhps_server_config_parse(cfgtext, strlen(cfgtext), &pc, err, sizeof err), 0);
    assert_int_equal(dhps_server_config_resolve(pc, err, sizeof err), 0);
    assert_int_equal(pc->tcp_port, 7001);
    assert_int_equal(pc->nshards, 4);
    assert_int_equal(pc->owned[1] + pc->owned[3], 2);
    assert_int_equal(pc->owned[0] + pc->owned[2], 0);
    dhps_server_config_free(pc);
    /* the two forms do not mix */
    snprintf(cfgtext, sizeof cfgtext,
             "{\"node_id\":\"n1\",\"tables\":[{\"name\":\"emb\",\"dim\":8}],"
             "\"secret_file\":\"/s\",\"shards\":{\"cluster_map\":\"%s\",\"map_node\":1,"
             "\"nshards\":4}}", mapp);
    dhps_server_config *c = NULL;
    assert_int_equal(dhps_server_config_parse(cfgtext, strlen(cfgtext), &c, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "either cluster_map + map_node, or nshards + own"));
    t_rmdir(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lookup_across_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fp16_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_take_nothing_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_snapshot_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shm_transport, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonfinite_refused, setup, teardown),
        cmocka_unit_test(test_bad_secret_file),
        cmocka_unit_test(test_cluster_map_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

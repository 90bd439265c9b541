/* The update log through real dhps-server processes: kill -9 without a snapshot keeps
 * every acknowledged upsert and delete (fsync interval and always), TTLs replay as what
 * remains of them, a snapshot truncates the log, a torn tail is cut and reported
 * (stderr, /metrics) and the server serves, a corrupt middle refuses to start naming the
 * file; and the log.* config keys. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <dirent.h>
#include <cmocka.h>

#include "srv_proc.h"

#define NSH 4
#define D 8

static void cfg_file(const char *dir, const char *extra, char *path, size_t len)
{
    char text[2048];
    t_config(dir, text, sizeof text, NSH, "\"all\"", extra);
    snprintf(path, len, "%s/server.json", dir);
    t_write(path, text, 0600);
}

static void kill9(proc *p)
{
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
}

static double metric(const proc *p, const char *series)
{
    char *body;
    assert_int_equal(t_http_get(p->mport, "/metrics", &body), 200);
    double v = t_metric(body, series);
    free(body);
    return v;
}

/* UPSERT with a ttl (t_upsert sends ttl 0). */
static int upsert_ttl(t_conn *tc, uint32_t shard, const uint64_t *keys, uint32_t n,
                      const float *rows, uint64_t version, uint32_t ttl)
{
    size_t len = 64 + sizeof(dhps_proto_upsert) + (size_t)n * 8 + (size_t)n * D * 4;
    uint8_t *req = malloc(len), *resp = malloc(T_RESP_CAP);
    t_hdr(req, "emb", shard, DHPS_FP32);
    dhps_proto_upsert u = {.n = n, .value_bytes = D * 4, .version = version, .ttl = ttl};
    memcpy(req + 64, &u, sizeof u);
    memcpy(req + 64 + sizeof u, keys, (size_t)n * 8);
    memcpy(req + 64 + sizeof u + (size_t)n * 8, rows, (size_t)n * D * 4);
    size_t rl = 0;
    int rc0 = t_call(tc, DHPS_M_UPSERT, req, len, resp, &rl);
    int rc = t_status(rc0, resp, rl);
    if (rc)
        print_message("upsert: rpc %d, %zu bytes, status %d\n", rc0, rl, rc);
    free(req);
    free(resp);
    return rc;
}

static int delete_keys(t_conn *tc, uint32_t shard, const uint64_t *keys, uint32_t n,
                       uint64_t version)
{
    size_t len = 64 + sizeof(dhps_proto_delete) + (size_t)n * 8;
    uint8_t *req = malloc(len), *resp = malloc(T_RESP_CAP);
    t_hdr(req, "emb", shard, 0);
    dhps_proto_delete dl = {.n = n, .version = version};
    memcpy(req + 64, &dl, sizeof dl);
    memcpy(req + 64 + sizeof dl, keys, (size_t)n * 8);
    size_t rl = 0;
    int rc0 = t_call(tc, DHPS_M_DELETE, req, len, resp, &rl);
    int rc = t_status(rc0, resp, rl);
    if (rc)
        print_message("delete: rpc %d, %zu bytes, status %d\n", rc0, rl, rc);
    free(req);
    free(resp);
    return rc;
}

/* Apply op to keys [k0, k1) shard by shard: 'p' upsert version ver, 'd' delete <= ver,
 * 't' upsert with ttl. */
static int range_op(t_conn *tc, char op, uint64_t k0, uint64_t k1, uint64_t ver, uint32_t ttl)
{
    uint32_t n = (uint32_t)(k1 - k0);
    uint64_t *keys = malloc(n * 8);
    float *rows = malloc((size_t)n * D * 4);
    int rc = 0;
    for (uint32_t sh = 0; sh < NSH && !rc; sh++) {
        uint32_t m = 0;
        for (uint64_t k = k0; k < k1; k++)
            if (dhps_proto_shard_of(k, NSH) == sh) {
                keys[m] = k;
                t_fill_row(rows + (size_t)m * D, D, k, ver);
                m++;
            }
        if (!m)
            continue;
        if (op == 'd')
            rc = delete_keys(tc, sh, keys, m, ver);
        else
            rc = upsert_ttl(tc, sh, keys, m, rows, ver, op == 't' ? ttl : 0);
    }
    free(keys);
    free(rows);
    return rc;
}

/* fp16 table "half" (dim 6): fp32 rows in, narrowed by the server; the log holds the
 * narrowed rows. Returns the fp16 rows read back for keys [1, 65) of shard 0. */
static void half_roundtrip(t_conn *tc, bool write, uint16_t *out, uint32_t *n)
{
    uint64_t keys[64];
    uint32_t m = 0;
    for (uint64_t k = 1; k < 200 && m < 64; k++)
        if (dhps_proto_shard_of(k, NSH) == 0)
            keys[m++] = k;
    if (write) {
        float rows[64 * 6];
        for (uint32_t i = 0; i < m * 6; i++)
            rows[i] = 0.1f * (float)i - 3.3f;
        assert_int_equal(t_upsert(tc, "half", 0, keys, m, rows, 6 * 4, 0, 3, NULL), 0);
    }
    uint64_t found[1];
    assert_int_equal(t_lookup(tc, "half", 0, keys, m, DHPS_LOOKUP_FP16, out, found, NULL), 0);
    assert_int_equal(__builtin_popcountll(found[0]), m);
    *n = m;
}

static int count_segments(const char *dir, bool *has_first)
{
    char p[600];
    snprintf(p, sizeof p, "%s/snap/log", dir);
    DIR *d = opendir(p);
    int n = 0;
    *has_first = false;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strncmp(e->d_name, "wal.", 4))
            n++;
        if (!strcmp(e->d_name, "wal.0000000000000001.log"))
            *has_first = true;
    }
    if (d)
        closedir(d);
    return n;
}

static void kill9_replays(const char *fsync)
{
    char *dir = t_mkdtemp(), cfg[600], extra[300];
    snprintf(extra, sizeof extra,
             "\"log\":{\"fsync\":\"%s\",\"segment_mb\":1,\"max_mb\":64}", fsync);
    cfg_file(dir, extra, cfg, sizeof cfg);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    t_conn tc;
    assert_int_equal(t_connect(&tc, p.port, T_SECRET), 0);
    assert_int_equal(range_op(&tc, 'p', 1, 40001, 1, 0), 0);    /* > 1 MiB: rotations */
    assert_int_equal(range_op(&tc, 'p', 1, 1001, 2, 0), 0);     /* overwrite */
    assert_int_equal(range_op(&tc, 'd', 2001, 2501, 5, 0), 0);  /* delete */
    assert_int_equal(range_op(&tc, 'd', 3001, 3101, 0, 0), 0);  /* stale delete: no-op */
    assert_int_equal(range_op(&tc, 't', 50001, 50011, 1, 1), 0);  /* expires in 1 s */
    assert_int_equal(range_op(&tc, 't', 50011, 50021, 1, 3600), 0);
    uint16_t half0[64 * 6], half1[64 * 6];
    uint32_t hn;
    half_roundtrip(&tc, true, half0, &hn);
    t_close(&tc);
    assert_true(metric(&p, "dhps_log_records_total") > 10);
    if (!strcmp(fsync, "always"))
        assert_true(metric(&p, "dhps_log_fsyncs_total") > 0);
    kill9(&p);
    bool first;
    assert_true(count_segments(dir, &first) > 1);
    assert_true(first);
    t_sleep_ms(1100); /* the 1 s TTL runs out while the node is down */

    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(t_connect(&tc, p.port, T_SECRET), 0);
    t_check_range(&tc, "emb", NSH, D, 1, 1001, 2);
    t_check_range(&tc, "emb", NSH, D, 1001, 2001, 1);
    t_check_range(&tc, "emb", NSH, D, 2001, 2501, 0);
    t_check_range(&tc, "emb", NSH, D, 2501, 40001, 1);
    t_check_range(&tc, "emb", NSH, D, 50001, 50011, 0);
    t_check_range(&tc, "emb", NSH, D, 50011, 50021, 1);
    half_roundtrip(&tc, false, half1, &hn);
    assert_memory_equal(half0, half1, (size_t)hn * 6 * 2);
    assert_true(metric(&p, "dhps_log_replayed_records") > 10);
    assert_int_equal(metric(&p, "dhps_log_torn_bytes"), 0);

    /* a snapshot checkpoints and truncates the log */
    uint32_t count = 0;
    assert_int_equal(t_simple(&tc, DHPS_M_SNAPSHOT, "", NULL, 0, &count), 0);
    assert_int_equal(count, 2 * NSH);
    assert_int_equal(count_segments(dir, &first), 1);
    assert_false(first);
    assert_true(metric(&p, "dhps_log_bytes") < 4096);
    assert_true(metric(&p, "dhps_log_checkpoint_lsn") > 10);
    assert_int_equal(range_op(&tc, 'p', 60001, 60101, 7, 0), 0); /* after the checkpoint */
    t_close(&tc);
    kill9(&p);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    assert_int_equal(t_connect(&tc, p.port, T_SECRET), 0);
    t_check_range(&tc, "emb", NSH, D, 1, 1001, 2);
    t_check_range(&tc, "emb", NSH, D, 2001, 2501, 0);
    t_check_range(&tc, "emb", NSH, D, 2501, 40001, 1);
    t_check_range(&tc, "emb", NSH, D, 60001, 60101, 7);
    assert_int_equal(metric(&p, "dhps_log_replayed_records"), NSH); /* one batch per shard */
    t_close(&tc);
    kill(p.pid, SIGTERM);
    assert_int_equal(p_wait_exit(p.pid, 20000), 0);
    t_rmdir(dir);
}

static void test_kill9_interval(void **st)
{
    kill9_replays("interval");
}

static void test_kill9_always(void **st)
{
    kill9_replays("always");
}

static void newest_segment(const char *dir, char *out, size_t len)
{
    char p[600], best[256] = "";
    snprintf(p, sizeof p, "%s/snap/log", dir);
    DIR *d = opendir(p);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, "wal.", 4) && strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    if (d)
        closedir(d);
    snprintf(out, len, "%s/%s", p, best);
}

static void test_torn_tail_and_corrupt_middle(void **st)
{
    char *dir = t_mkdtemp(), cfg[600];
    cfg_file(dir, "", cfg, sizeof cfg);
    proc p;
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    t_conn tc;
    assert_int_equal(t_connect(&tc, p.port, T_SECRET), 0);
    for (uint64_t b = 0; b < 10; b++)
        assert_int_equal(range_op(&tc, 'p', 1 + b * 100, 101 + b * 100, 1, 0), 0);
    t_close(&tc);
    kill9(&p);
    /* a torn tail: the last record loses a few bytes (as if the power went) */
    char seg[700];
    newest_segment(dir, seg, sizeof seg);
    struct stat sb;
    assert_int_equal(stat(seg, &sb), 0);
    assert_int_equal(truncate(seg, sb.st_size - 5), 0);
    assert_int_equal(p_start(dir, cfg, &p, true), 0);
    char *log = p_stderr(dir);
    if (!strstr(log, "torn tail"))
        fail_msg("no torn tail reported: %s", log);
    free(log);
    assert_true(metric(&p, "dhps_log_torn_bytes") > 0);
    assert_int_equal(t_connect(&tc, p.port, T_SECRET), 0);
    t_check_range(&tc, "emb", NSH, D, 1, 901, 1); /* every earlier batch; the torn one lost keys of a shard */
    assert_int_equal(range_op(&tc, 'p', 5001, 5101, 2, 0), 0); /* serves and logs on */
    t_close(&tc);
    kill9(&p);

    /* corrupt the middle: refuses to start, names the file */
    assert_int_equal(stat(seg, &sb), 0);
    int fd = open(seg, O_RDWR);
    assert_true(fd >= 0);
    char junk[4] = {0x5a, 0x5a, 0x5a, 0x5a};
    assert_int_equal(pwrite(fd, junk, sizeof junk, sb.st_size / 2), 4);
    close(fd);
    p_stderr_clear(dir); /* this run's lines only: earlier runs named the segment too */
    p.pid = p_spawn(dir, "--config", cfg);
    assert_int_equal(p_wait_exit(p.pid, 20000), 1);
    log = p_stderr(dir);
    if (!strstr(log, strrchr(seg, '/') + 1) || !strstr(log, "refusing to start"))
        fail_msg("stderr does not name the corrupt log segment: %s", log);
    free(log);
    t_rmdir(dir);
}

static void test_log_config(void **st)
{
    static const struct {
        const char *json, *err; /* err NULL: accepted */
    } cases[] = {
        {"\"log\":{\"fsync\":\"sometimes\"}", "log.fsync"},
        {"\"log\":{\"fsync_interval_ms\":0}", "log.fsync_interval_ms"},
        {"\"log\":{\"fsync_interval_ms\":10001}", "log.fsync_interval_ms"},
        {"\"log\":{\"segment_mb\":0}", "log.segment_mb"},
        {"\"log\":{\"segment_mb\":64,\"max_mb\":32}", "log.max_mb"},
        {"\"log\":{\"nope\":1}", "log.nope"},
        {"\"log\":[]", "log"},
        {"\"log\":{\"dir\":\"/tmp/x\",\"fsync\":\"always\",\"fsync_interval_ms\":5,"
         "\"segment_mb\":8,\"max_mb\":16}", NULL},
        {"\"log\":{\"enabled\":false}", NULL},
    };
    char text[2048], err[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t_config("/tmp/d", text, sizeof text, NSH, "\"all\"", cases[i].json);
        dhps_server_config *c = NULL;
        int rc = dhps_server_config_parse(text, strlen(text), &c, err, sizeof err);
        if (!cases[i].err) {
            if (rc)
                fail_msg("case %zu refused: %s", i, err);
            dhps_server_config_free(c);
            continue;
        }
        assert_int_equal(rc, DHPS_E_CONFIG);
        if (!strstr(err, cases[i].err))
            fail_msg("case %zu: \"%s\" does not name %s", i, err, cases[i].err);
    }
    /* defaults */
    t_config("/tmp/d", text, sizeof text, NSH, "\"all\"", "");
    dhps_server_config *c = NULL;
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_true(c->log_enabled);
    assert_string_equal(c->log_dir, "/tmp/d/snap/log");
    assert_int_equal(c->log_fsync, 1 /* DHPS_WAL_SYNC_INTERVAL */);
    assert_int_equal(c->log_fsync_interval_ms, 10);
    assert_int_equal(c->log_segment_mb, 64);
    assert_int_equal(c->log_max_mb, 1024);
    dhps_server_config_free(c);
    /* no snapshot.dir: no log by default; asking for one is an error naming the key */
    const char *nosnap = "{\"node_id\":\"n\",\"tables\":[{\"name\":\"e\",\"dim\":4}],"
                         "\"secret_file\":\"/x\",\"shards\":{\"nshards\":1,\"own\":\"all\"}%s}";
    snprintf(text, sizeof text, nosnap, "");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err), 0);
    assert_false(c->log_enabled);
    assert_null(c->log_dir);
    dhps_server_config_free(c);
    snprintf(text, sizeof text, nosnap, ",\"log\":{\"fsync\":\"always\"}");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "snapshot.dir"));
    snprintf(text, sizeof text, nosnap, ",\"log\":{\"enabled\":true}");
    assert_int_equal(dhps_server_config_parse(text, strlen(text), &c, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "log.enabled"));
    /* --check-config validates the keys too */
    char *dir = t_mkdtemp(), cfg[600];
    cfg_file(dir, "\"log\":{\"fsync\":\"sometimes\"}", cfg, sizeof cfg);
    pid_t pid = p_spawn(dir, "--check-config", cfg);
    assert_int_equal(p_wait_exit(pid, 10000), 2);
    char *log = p_stderr(dir);
    assert_non_null(strstr(log, "log.fsync"));
    free(log);
    cfg_file(dir, "\"log\":{\"fsync\":\"never\"}", cfg, sizeof cfg);
    pid = p_spawn(dir, "--check-config", cfg);
    assert_int_equal(p_wait_exit(pid, 10000), 0);
    t_rmdir(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    p_server_log = "info"; /* the servers' replay and torn-tail lines */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_config),
        cmocka_unit_test(test_kill9_interval),
        cmocka_unit_test(test_kill9_always),
        cmocka_unit_test(test_torn_tail_and_corrupt_middle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

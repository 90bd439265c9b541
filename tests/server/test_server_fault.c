/*
 * The /fault admin endpoint of dhps-server (embedded server, real HTTP and rpc over
 * 127.0.0.1): off by default (403); with "admin": {"faults": true} rules are set,
 * listed and deleted over HTTP with the HMAC header, take effect on rpc calls, and show
 * in /metrics; bad bodies get 400 naming the field, bad or missing auth 401. The MAC is
 * computed here with OpenSSL from the format documented in docs/server.md, not with the
 * server's own code.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dhps/server.h"
#include "srv_test.h"

typedef struct fx {
    char *dir;
    dhps_server *s;
    t_conn tc;
    uint16_t mport;
} fx;

static fx *start(const char *extra)
{
    fx *f = calloc(1, sizeof *f);
    f->dir = t_mkdtemp();
    char cfgtext[2048], err[600];
    t_config(f->dir, cfgtext, sizeof cfgtext, 4, "\"all\"", extra);
    if (t_server_start(cfgtext, &f->s, err, sizeof err))
        fail_msg("%s", err);
    f->mport = dhps_server_metrics_port(f->s);
    assert_int_equal(t_connect(&f->tc, dhps_server_port(f->s), T_SECRET), 0);
    return f;
}

static void stop(fx *f)
{
    t_close(&f->tc);
    dhps_server_destroy(f->s);
    t_rmdir(f->dir);
    free(f);
}

/* X-Dhps-Auth for a request, per docs/server.md, with the timestamp token ts. */
static void sign_ts(const char *secret, const char *method, const char *peer,
                    const char *port, const char *all, const char *body, const char *ts,
                    char out[128])
{
    char msg[8192];
    int n = snprintf(msg, sizeof msg,
                     "dhps-admin-v1\n%s\n/fault\npeer=%s\nport=%s\nall=%s\n%s\n%s", method,
                     peer, port, all, ts, body);
    uint8_t mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)msg, (size_t)n, mac, &ml);
    assert_int_equal(ml, 32);
    int k = snprintf(out, 128, "%s ", ts);
    for (int i = 0; i < 32; i++)
        k += snprintf(out + k, (size_t)(128 - k), "%02x", mac[i]);
}

/* The same with "<now + ts_shift>.<a fresh nonce>": every request signed anew. */
static void sign(const char *secret, const char *method, const char *peer, const char *port,
                 const char *all, const char *body, long ts_shift, char out[128])
{
    static unsigned nonce;
    char ts[48];
    snprintf(ts, sizeof ts, "%lld.%x", (long long)time(NULL) + ts_shift, ++nonce);
    sign_ts(secret, method, peer, port, all, body, ts, out);
}

/* One HTTP/1.0 request; returns the status code and sets *resp (malloc'ed body). */
static int http(uint16_t port, const char *method, const char *target, const char *auth,
                const char *body, char **resp)
{
    *resp = NULL;
    int fd = t_http_connect(port);
    if (fd < 0)
        return -1;
    size_t blen = body ? strlen(body) : 0;
    char *req = malloc(blen + 1024);
    int k = snprintf(req, 1024, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n", method, target);
    if (auth)
        k += snprintf(req + k, (size_t)(1024 - k), "X-Dhps-Auth: %s\r\n", auth);
    if (body)
        k += snprintf(req + k, (size_t)(1024 - k),
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    k += snprintf(req + k, (size_t)(1024 - k), "\r\n");
    if (blen)
        memcpy(req + k, body, blen);
    size_t total = (size_t)k + blen, off = 0;
    while (off < total) {
        ssize_t w = write(fd, req + off, total - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    free(req);
    return t_http_reply(fd, resp);
}

static int put_rule(fx *f, const char *body, char **resp)
{
    char auth[128];
    sign(T_SECRET, "PUT", "", "", "", body, 0, auth);
    return http(f->mport, "PUT", "/fault", auth, body, resp);
}

static int del_rule(fx *f, const char *peer, const char *port, const char *all, char **resp)
{
    char auth[128], target[256];
    sign(T_SECRET, "DELETE", peer ? peer : "", port ? port : "", all ? all : "", "", 0, auth);
    int k = snprintf(target, sizeof target, "/fault");
    const char *sep = "?";
    if (peer) {
        k += snprintf(target + k, sizeof target - (size_t)k, "%speer=%s", sep, peer);
        sep = "&";
    }
    if (port) {
        k += snprintf(target + k, sizeof target - (size_t)k, "%sport=%s", sep, port);
        sep = "&";
    }
    if (all)
        snprintf(target + k, sizeof target - (size_t)k, "%sall=%s", sep, all);
    return http(f->mport, "DELETE", target, auth, NULL, resp);
}

static int info_call(fx *f, uint64_t timeout_us)
{
    uint8_t req[sizeof(dhps_proto_hdr)];
    t_hdr(req, "", 0, 0);
    static uint8_t resp[1 << 16];
    size_t n = 0;
    return dhps_rpc_call(f->tc.ch, DHPS_M_INFO, req, sizeof req, resp, sizeof resp, &n,
                         timeout_us);
}

static void disabled_by_default(void **st)
{
    (void)st;
    fx *f = start("");
    char *b;
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 403);
    assert_non_null(strstr(b, "\"admin\": {\"faults\": true}"));
    free(b);
    /* even a correctly signed request */
    const char *body = "{\"peer\":\"127.0.0.1\",\"partition\":true}";
    assert_int_equal(put_rule(f, body, &b), 403);
    free(b);
    assert_int_equal(del_rule(f, NULL, NULL, "true", &b), 403);
    free(b);
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0); /* nothing was set */
    assert_int_equal(http(f->mport, "GET", "/metrics", NULL, NULL, &b), 200);
    assert_true(t_metric(b, "dhps_fault_rules") == 0);
    assert_true(t_metric(b, "dhps_fault_overflow_total") == 0);
    free(b);
    stop(f);
}

static void set_list_delete(void **st)
{
    (void)st;
    fx *f = start("\"admin\":{\"faults\":true}");
    char *b;
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 200);
    assert_string_equal(b, "{\"rules\":[]}");
    free(b);
    /* partition this client's address: calls time out, no rpc handler runs */
    assert_int_equal(put_rule(f, "{\"peer\":\"127.0.0.1\",\"partition\":true}", &b), 200);
    assert_non_null(strstr(b, "\"peer\":\"127.0.0.1\""));
    assert_non_null(strstr(b, "\"partition\":true"));
    free(b);
    assert_int_equal(info_call(f, 100000), DHPS_E_TIMEOUT);
    assert_int_equal(info_call(f, 100000), DHPS_E_TIMEOUT);
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 200);
    assert_non_null(strstr(b, "\"matched\":2"));
    assert_non_null(strstr(b, "\"partitioned\":2"));
    free(b);
    assert_int_equal(http(f->mport, "GET", "/metrics", NULL, NULL, &b), 200);
    assert_true(t_metric(b, "dhps_fault_rules") == 1);
    assert_true(t_metric(b, "dhps_fault_matched_total{peer=\"127.0.0.1\",port=\"0\"}") == 2);
    assert_true(t_metric(b, "dhps_fault_partitioned_total{peer=\"127.0.0.1\",port=\"0\"}") == 2);
    assert_true(t_metric(b, "dhps_fault_dropped_total{peer=\"127.0.0.1\",port=\"0\"}") == 0);
    free(b);
    /* delete it: served again */
    assert_int_equal(del_rule(f, "127.0.0.1", NULL, NULL, &b), 200);
    free(b);
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0);
    assert_int_equal(del_rule(f, "127.0.0.1", "0", NULL, &b), 404);
    assert_non_null(strstr(b, "no rule for 127.0.0.1"));
    free(b);
    /* every peer slowed down (POST works too), then a delay shows in the counters */
    const char *slow = "{\"peer\":\"*\",\"delay_us\":20000,\"seed\":7}";
    char auth[128];
    sign(T_SECRET, "POST", "", "", "", slow, 0, auth);
    assert_int_equal(http(f->mport, "POST", "/fault", auth, slow, &b), 200);
    free(b);
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0);
    assert_int_equal(http(f->mport, "GET", "/metrics", NULL, NULL, &b), 200);
    assert_true(t_metric(b, "dhps_fault_delayed_total{peer=\"*\",port=\"0\"}") == 1);
    free(b);
    /* a drop rule on one port beside it, then all cleared */
    assert_int_equal(put_rule(f, "{\"peer\":\"10.1.2.3\",\"port\":4000,\"drop_percent\":25}",
                              &b), 200);
    assert_non_null(strstr(b, "\"drop_percent\":25"));
    assert_non_null(strstr(b, "\"port\":4000"));
    free(b);
    assert_int_equal(del_rule(f, NULL, NULL, "true", &b), 200);
    free(b);
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 200);
    assert_string_equal(b, "{\"rules\":[]}");
    free(b);
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0);
    stop(f);
}

/* b is read after the call that sets it: pass its address */
static void expect(int code, int want, char **bp, const char *needle)
{
    char *b = *bp;
    if (code != want || !strstr(b, needle))
        fail_msg("got %d '%s', want %d with '%s'", code, b, want, needle);
    free(b);
    *bp = NULL;
}

static void bad_requests(void **st)
{
    (void)st;
    fx *f = start("\"admin\":{\"faults\":true}");
    char *b;
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"peer\":", "fault body: not valid JSON"},
        {"[1,2]", "fault body: must be a JSON object"},
        {"{\"peer\":\"1.2.3.4\",\"delay\":5}", "fault delay: unknown key"},
        {"{\"delay_us\":5}", "fault peer: required"},
        {"{\"peer\":\"example.com\"}", "fault peer: must be a numeric IPv4"},
        {"{\"peer\":7}", "fault peer: must be a numeric IPv4"},
        {"{\"peer\":\"*\",\"port\":80}", "fault port: must be 0"},
        {"{\"peer\":\"1.2.3.4\",\"port\":70000}", "fault port: must be an integer 0..65535"},
        {"{\"peer\":\"1.2.3.4\",\"drop_percent\":101}", "fault drop_percent: must be"},
        {"{\"peer\":\"1.2.3.4\",\"delay_percent\":-1}", "fault delay_percent: must be"},
        {"{\"peer\":\"1.2.3.4\",\"delay_us\":60000001}", "fault delay_us: must be an integer 0..60000000"},
        {"{\"peer\":\"1.2.3.4\",\"delay_us\":\"5\"}", "fault delay_us: must be"},
        {"{\"peer\":\"1.2.3.4\",\"partition\":1}", "fault partition: must be true or false"},
        {"{\"peer\":\"1.2.3.4\",\"seed\":-3}", "fault seed: must be"},
        {"{\"peer\":\"1.2.3.4\",\"peer\":\"1.2.3.5\"}", "fault body: not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect(put_rule(f, cases[i].body, &b), 400, &b, cases[i].msg);
    const char *body = "{\"peer\":\"127.0.0.1\",\"partition\":true}";
    char auth[128];
    /* auth: missing, wrong secret, stale, malformed, signed for another body */
    expect(http(f->mport, "PUT", "/fault", NULL, body, &b), 401, &b, "missing X-Dhps-Auth");
    sign("not-the-secret", "PUT", "", "", "", body, 0, auth);
    expect(http(f->mport, "PUT", "/fault", auth, body, &b), 401, &b, "MAC does not match");
    sign(T_SECRET, "PUT", "", "", "", body, -600, auth);
    expect(http(f->mport, "PUT", "/fault", auth, body, &b), 401, &b, "timestamp");
    expect(http(f->mport, "PUT", "/fault", "12 zz", body, &b), 401, &b, "must be");
    sign(T_SECRET, "PUT", "", "", "", "{\"peer\":\"127.0.0.2\"}", 0, auth);
    expect(http(f->mport, "PUT", "/fault", auth, body, &b), 401, &b, "MAC does not match");
    sign(T_SECRET, "DELETE", "127.0.0.1", "", "", "", 0, auth); /* signed for another peer */
    expect(http(f->mport, "DELETE", "/fault?peer=127.0.0.2", auth, NULL, &b), 401, &b,
           "MAC does not match");
    /* nothing above took effect */
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0);
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 200);
    assert_string_equal(b, "{\"rules\":[]}");
    free(b);
    /* DELETE arguments, other methods, an oversized body */
    expect(del_rule(f, NULL, NULL, NULL, &b), 400, &b, "fault peer: required");
    expect(del_rule(f, "1.2.3.4", "x", NULL, &b), 400, &b, "fault port: must be 0..65535");
    expect(del_rule(f, "nothost", NULL, NULL, &b), 400, &b, "fault peer: must be");
    expect(del_rule(f, NULL, NULL, "yes", &b), 400, &b, "fault all: must be true");
    expect(http(f->mport, "PATCH", "/fault", NULL, NULL, &b), 405, &b, "not allowed");
    char *big = malloc(10000);
    memset(big, ' ', 9999);
    big[9999] = 0;
    big[0] = '{';
    big[9998] = '}';
    sign(T_SECRET, "PUT", "", "", "", big, 0, auth);
    expect(http(f->mport, "PUT", "/fault", auth, big, &b), 413, &b, "longer than 4096");
    free(big);
    stop(f);
}

/* A signed change is accepted once: a request seen on the (plaintext) metrics port
 * cannot be replayed, e.g. to re-impose a partition the operator has just lifted. */
static void replay_refused(void **st)
{
    (void)st;
    fx *f = start("\"admin\":{\"faults\":true}");
    char *b, a[128], auth[128];
    const char *body = "{\"peer\":\"127.0.0.1\",\"partition\":true}";
    sign(T_SECRET, "PUT", "", "", "", body, 0, a);
    assert_int_equal(http(f->mport, "PUT", "/fault", a, body, &b), 200);
    free(b);
    expect(http(f->mport, "PUT", "/fault", a, body, &b), 401, &b, "replayed request");
    assert_int_equal(del_rule(f, "127.0.0.1", NULL, NULL, &b), 200);
    free(b);
    expect(http(f->mport, "PUT", "/fault", a, body, &b), 401, &b, "replayed request");
    assert_int_equal(info_call(f, dhps_test_us(5000000)), 0); /* the partition stayed lifted */
    assert_int_equal(http(f->mport, "GET", "/fault", NULL, NULL, &b), 200);
    assert_string_equal(b, "{\"rules\":[]}");
    free(b);
    /* a timestamp without a nonce still signs (older tools): once */
    char ts[32];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    sign_ts(T_SECRET, "DELETE", "", "", "true", "", ts, auth);
    assert_int_equal(http(f->mport, "DELETE", "/fault?all=true", auth, NULL, &b), 200);
    free(b);
    expect(http(f->mport, "DELETE", "/fault?all=true", auth, NULL, &b), 401, &b,
           "replayed request");
    /* nonce syntax: hex digits, 1..32 of them */
    snprintf(ts, sizeof ts, "%lld.xyz", (long long)time(NULL));
    sign_ts(T_SECRET, "DELETE", "", "", "true", "", ts, auth);
    expect(http(f->mport, "DELETE", "/fault?all=true", auth, NULL, &b), 401, &b, "must be");
    snprintf(ts, sizeof ts, "%lld.", (long long)time(NULL));
    sign_ts(T_SECRET, "DELETE", "", "", "true", "", ts, auth);
    expect(http(f->mport, "DELETE", "/fault?all=true", auth, NULL, &b), 401, &b, "must be");
    stop(f);
}

static void config_keys(void **st)
{
    (void)st;
    char *dir = t_mkdtemp();
    char cfg[2048], err[512];
    dhps_server_config *c = NULL;
    t_config(dir, cfg, sizeof cfg, 4, "\"all\"", "\"admin\":{\"faults\":true}");
    assert_int_equal(dhps_server_config_parse(cfg, strlen(cfg), &c, err, sizeof err), 0);
    assert_true(c->admin_faults);
    dhps_server_config_free(c);
    t_config(dir, cfg, sizeof cfg, 4, "\"all\"", "");
    assert_int_equal(dhps_server_config_parse(cfg, strlen(cfg), &c, err, sizeof err), 0);
    assert_false(c->admin_faults);
    dhps_server_config_free(c);
    static const struct {
        const char *extra, *msg;
    } bad[] = {
        {"\"admin\":{\"faults\":1}", "config admin.faults: must be true or false"},
        {"\"admin\":{\"fault\":true}", "config admin.fault: unknown key"},
        {"\"admin\":true", "config admin: must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t_config(dir, cfg, sizeof cfg, 4, "\"all\"", bad[i].extra);
        assert_int_equal(dhps_server_config_parse(cfg, strlen(cfg), &c, err, sizeof err),
                         DHPS_E_CONFIG);
        if (!strstr(err, bad[i].msg))
            fail_msg("'%s' -> '%s', want '%s'", bad[i].extra, err, bad[i].msg);
    }
    /* faults without the metrics endpoint: refused */
    snprintf(cfg, sizeof cfg,
             "{\"node_id\":\"t1\",\"tables\":[{\"name\":\"emb\",\"dim\":8}],"
             "\"secret_file\":\"%s/secret\",\"shards\":{\"nshards\":1,\"own\":\"all\"},"
             "\"admin\":{\"faults\":true}}", dir);
    assert_int_equal(dhps_server_config_parse(cfg, strlen(cfg), &c, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "config admin.faults: needs the metrics HTTP endpoint"));
    t_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_keys),
        cmocka_unit_test(disabled_by_default),
        cmocka_unit_test(set_list_delete),
        cmocka_unit_test(bad_requests),
        cmocka_unit_test(replay_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

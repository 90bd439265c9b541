/*
 * TLS on the rpc library's TCP connections, through the public API (docs/rpc.md §4
 * "TLS"). Certificates are made at run time (tests/common/test_certs.h): a CA, a server
 * certificate for IP 127.0.0.1 and DNS dhps.test, a DNS-only one, a client certificate,
 * an expired one, and a certificate from another CA. Attacks against a real dhps-server
 * are in tests/security/test_sec_tls.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dhps/rpc.h"
#include "test_certs.h"
#include "test_scale.h"
#include "util.h"

enum { M_ECHO = 1, M_BIG = 2 };
static const char SECRET[] = "cluster-secret-for-tls-tests";
static char g_dir[64];
static _Atomic long handled;

static const char *P(const char *name)
{   /* a path in the certificate dir; a few buffers per thread, reused round-robin */
    static _Thread_local char buf[8][128];
    static _Thread_local int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", g_dir, name);
    return b;
}

static int h_echo(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    handled++;
    if (r->req_len > r->resp_cap)
        return -1;
    memcpy(r->resp, r->req, r->req_len);
    r->resp_len = r->req_len;
    return 0;
}

static int h_big(void *arg, dhps_rpc_request *r)
{   /* a response of the size the request names, a pattern seeded by the request */
    (void)arg;
    handled++;
    uint32_t n, seed;
    if (r->req_len < 8)
        return -1;
    memcpy(&n, r->req, 4);
    memcpy(&seed, (const uint8_t *)r->req + 4, 4);
    if (n > r->resp_cap)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        ((uint8_t *)r->resp)[i] = (uint8_t)(seed + i * 13);
    r->resp_len = n;
    return 0;
}

typedef struct srv_opts {
    const char *cert, *key, *ca; /* names in g_dir; NULL cert = no TLS */
    int verify;
    bool require;
    uint32_t workers, max_msg;
    bool shm;
} srv_opts;

static dhps_rpc_server *server_start(const srv_opts *o)
{
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.workers = o->workers ? o->workers : 1;
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.max_msg = o->max_msg ? o->max_msg : 64u << 10;
    sp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | (o->shm ? DHPS_RPC_MASK(DHPS_RPC_SHM) : 0);
    sp.tls_cert_file = o->cert ? P(o->cert) : NULL;
    sp.tls_key_file = o->key ? P(o->key) : NULL;
    sp.tls_ca_file = o->ca ? P(o->ca) : NULL;
    sp.tls_verify_client = o->verify;
    sp.tls_require = o->require;
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_BIG, h_big, NULL), 0);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    return s;
}

static const srv_opts TLS_SRV = {.cert = "server.pem", .key = "server.key"};

typedef struct cli_opts {
    const char *secret;
    const char *ca, *cert, *key, *name; /* names in g_dir (name: the server name) */
    uint32_t max_msg, max_inflight;
} cli_opts;

static dhps_rpc_client *client_new(const cli_opts *o)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    const char *sec = o && o->secret ? o->secret : SECRET;
    cp.secret = sec;
    cp.secret_len = strlen(sec);
    cp.max_msg = o && o->max_msg ? o->max_msg : 64u << 10;
    cp.max_inflight = o && o->max_inflight ? o->max_inflight : 256;
    cp.connect_timeout_ms = (uint32_t)dhps_test_ms(5000);
    cp.tls_ca_file = !o || !o->ca ? P("ca.pem") : *o->ca ? P(o->ca) : NULL;
    cp.tls_cert_file = o && o->cert ? P(o->cert) : NULL;
    cp.tls_key_file = o && o->key ? P(o->key) : NULL;
    cp.tls_server_name = o ? o->name : NULL;
    dhps_rpc_client *c = NULL;
    assert_int_equal(dhps_rpc_client_create(&cp, &c), 0);
    return c;
}

/* Open a channel (tls or plain, TCP only unless allow says otherwise); the open's code. */
static int chan_open(dhps_rpc_client *c, uint16_t port, bool tls, uint32_t allow,
                     dhps_rpc_channel **out)
{
    dhps_rpc_channel_params p;
    dhps_rpc_channel_params_init(&p);
    p.port = port;
    p.tls = tls;
    p.allow = allow ? allow : DHPS_RPC_MASK(DHPS_RPC_TCP);
    *out = NULL;
    return dhps_rpc_channel_open(c, &p, out);
}

static int echo(dhps_rpc_channel *ch, uint64_t v)
{
    uint64_t out = 0;
    size_t n = 0;
    int rc = dhps_rpc_call(ch, M_ECHO, &v, 8, &out, 8, &n, (uint64_t)dhps_test_ms(5000) * 1000);
    if (rc == 0 && (n != 8 || out != v))
        return -1;
    return rc;
}

/* Open (tls or plain), call once, close: 0 or the first error. */
static int open_and_call(dhps_rpc_client *c, uint16_t port, bool tls)
{
    dhps_rpc_channel *ch = NULL;
    int rc = chan_open(c, port, tls, 0, &ch);
    if (rc == 0)
        rc = echo(ch, 42);
    dhps_rpc_channel_close(ch);
    return rc;
}

static int setup(void **st)
{
    (void)st;
    signal(SIGPIPE, SIG_IGN); /* the raw peers below write to closed sockets */
    snprintf(g_dir, sizeof g_dir, "/tmp/dhps-tls-XXXXXX");
    if (!mkdtemp(g_dir) || test_certs_make(g_dir))
        return -1;
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests --------------------------------------------------------------------------- */

/* A TLS channel and a plain one to the same port: both served, counted apart. */
static void tls_round_trip(void **st)
{
    (void)st;
    dhps_rpc_server *s = server_start(&TLS_SRV);
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = client_new(NULL);
    dhps_rpc_channel *t = NULL, *p = NULL;
    assert_int_equal(chan_open(c, port, true, 0, &t), 0);
    assert_int_equal(chan_open(c, port, false, 0, &p), 0); /* not shared with t */
    assert_true(dhps_rpc_channel_tls(t));
    assert_false(dhps_rpc_channel_tls(p));
    for (uint64_t i = 0; i < 100; i++) {
        assert_int_equal(echo(t, i), 0);
        assert_int_equal(echo(p, i + 1000), 0);
    }
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.accepted, 2);
    assert_int_equal(ss.accepted_tls, 1);
    assert_int_equal(ss.open_tls, 1);
    assert_int_equal(ss.open_conns, 2);
    assert_int_equal(ss.tls_handshake_failures, 0);
    assert_int_equal(ss.handled[DHPS_RPC_TCP], 200);
    /* a second TLS channel of the same client shares the TLS connection */
    dhps_rpc_channel *t2 = NULL;
    assert_int_equal(chan_open(c, port, true, 0, &t2), 0);
    dhps_rpc_channel_stats cs;
    dhps_rpc_channel_get_stats(t2, &cs);
    assert_int_equal(cs.channels, 2);
    assert_int_equal(echo(t2, 7), 0);
    dhps_rpc_channel_close(t2);
    dhps_rpc_channel_close(t);
    dhps_rpc_channel_close(p);
    dhps_rpc_client_destroy(c);
    uint64_t end = dhps_mono_ns() + (uint64_t)dhps_test_ms(5000) * 1000000u;
    do
        dhps_rpc_server_get_stats(s, &ss);
    while ((ss.open_tls || ss.open_conns) && dhps_mono_ns() < end);
    assert_int_equal(ss.open_tls, 0);
    dhps_rpc_server_destroy(s);
}

/* Server without TLS / TLS or plain / TLS only, times a plain and a TLS channel; and
 * the policy rule the client library and dhps-server use. */
static void tls_policy_matrix(void **st)
{
    (void)st;
    const struct {
        srv_opts o;
        int plain, tls; /* expected open-and-call results */
    } row[] = {
        {{0}, 0, DHPS_E_TLS},                       /* no TLS at the server */
        {TLS_SRV, 0, 0},                            /* TLS configured: both */
        {{.cert = "server.pem", .key = "server.key", .require = true}, DHPS_E_TLS, 0},
    };
    dhps_rpc_client *c = client_new(NULL);
    for (size_t i = 0; i < sizeof row / sizeof row[0]; i++) {
        dhps_rpc_server *s = server_start(&row[i].o);
        uint16_t port = dhps_rpc_server_port(s);
        assert_int_equal(open_and_call(c, port, false), row[i].plain);
        assert_int_equal(open_and_call(c, port, true), row[i].tls);
        dhps_rpc_server_stats ss;
        dhps_rpc_server_get_stats(s, &ss);
        assert_int_equal(ss.rejected_plain, row[i].o.require ? 1 : 0);
        assert_int_equal(ss.accepted_tls, row[i].o.cert ? 1 : 0);
        dhps_rpc_server_destroy(s);
    }
    dhps_rpc_client_destroy(c);
    /* a client without a CA cannot open TLS channels */
    cli_opts none = {.ca = ""};
    c = client_new(&none);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(chan_open(c, 1, true, 0, &ch), DHPS_E_CONFIG);
    dhps_rpc_client_destroy(c);

    assert_string_equal(dhps_rpc_tls_policy_name(DHPS_RPC_TLS_CROSS_AZ), "cross_az");
    assert_int_equal(dhps_rpc_tls_policy_parse("always"), DHPS_RPC_TLS_ALWAYS);
    assert_int_equal(dhps_rpc_tls_policy_parse("off"), DHPS_RPC_TLS_OFF);
    assert_int_equal(dhps_rpc_tls_policy_parse("yes"), -EINVAL);
    assert_int_equal(dhps_rpc_tls_policy_parse(NULL), -EINVAL);
    const struct {
        int policy;
        const char *a, *b;
        bool tls;
    } w[] = {
        {DHPS_RPC_TLS_OFF, "a", "b", false},      {DHPS_RPC_TLS_OFF, NULL, NULL, false},
        {DHPS_RPC_TLS_ALWAYS, "a", "a", true},    {DHPS_RPC_TLS_CROSS_AZ, "a", "a", false},
        {DHPS_RPC_TLS_CROSS_AZ, "a", "b", true},  {DHPS_RPC_TLS_CROSS_AZ, "", "", true},
        {DHPS_RPC_TLS_CROSS_AZ, NULL, "a", true}, {DHPS_RPC_TLS_CROSS_AZ, "a", NULL, true},
    };
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        assert_int_equal(dhps_rpc_tls_wanted(w[i].policy, w[i].a, w[i].b), w[i].tls);
}

/* The client checks whom it talks to: a certificate of another CA, or for another name,
 * is refused with DHPS_E_TLS before any byte of the hello; the same certificates pass
 * with the right trust anchor and name. */
static void tls_server_identity(void **st)
{
    (void)st;
    srv_opts other = {.cert = "other.pem", .key = "other.key"};
    srv_opts dns = {.cert = "dns.pem", .key = "dns.key"};
    dhps_rpc_server *so = server_start(&other), *sd = server_start(&dns),
                    *ss = server_start(&TLS_SRV);
    long h0 = handled;
    dhps_rpc_client *c = client_new(NULL);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(so), true), DHPS_E_TLS);
    /* dns.pem carries no IP: dialled by address it does not match */
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(sd), true), DHPS_E_TLS);
    dhps_rpc_client_destroy(c);
    assert_int_equal(handled, h0); /* nothing reached a handler */
    dhps_rpc_server_stats st1;
    dhps_rpc_server_get_stats(so, &st1);
    assert_int_equal(st1.accepted, 0);
    uint64_t end = dhps_mono_ns() + (uint64_t)dhps_test_ms(5000) * 1000000u;
    while (st1.tls_handshake_failures < 1 && dhps_mono_ns() < end)
        dhps_rpc_server_get_stats(so, &st1); /* the client's alert ends the handshake */
    assert_int_equal(st1.tls_handshake_failures, 1);
    /* by name: dhps.test matches both certificates; another name matches neither */
    cli_opts byname = {.name = "dhps.test"}, wrongname = {.name = "other.test"};
    c = client_new(&byname);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(sd), true), 0);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(ss), true), 0);
    dhps_rpc_client_destroy(c);
    c = client_new(&wrongname);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(ss), true), DHPS_E_TLS);
    dhps_rpc_client_destroy(c);
    /* trusting the other CA: its server passes, ours does not */
    cli_opts trust_other = {.ca = "other-ca.pem"};
    c = client_new(&trust_other);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(so), true), 0);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(ss), true), DHPS_E_TLS);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(so);
    dhps_rpc_server_destroy(sd);
    dhps_rpc_server_destroy(ss);
}

/* Client certificates: none asked; optional (a bad one refused, none fine); required
 * (none refused, a bad one refused, ours fine). */
static void tls_client_certificates(void **st)
{
    (void)st;
    cli_opts none = {0}, ours = {.cert = "client.pem", .key = "client.key"},
             theirs = {.cert = "other.pem", .key = "other.key"};
    const struct {
        int verify;
        int none, ours, theirs;
    } row[] = {
        {DHPS_RPC_TLS_VERIFY_NONE, 0, 0, 0},
        {DHPS_RPC_TLS_VERIFY_OPTIONAL, 0, 0, DHPS_E_TLS},
        {DHPS_RPC_TLS_VERIFY_REQUIRED, DHPS_E_TLS, 0, DHPS_E_TLS},
    };
    for (size_t i = 0; i < sizeof row / sizeof row[0]; i++) {
        srv_opts o = TLS_SRV;
        o.ca = "ca.pem";
        o.verify = row[i].verify;
        dhps_rpc_server *s = server_start(&o);
        uint16_t port = dhps_rpc_server_port(s);
        const cli_opts *co[3] = {&none, &ours, &theirs};
        int want[3] = {row[i].none, row[i].ours, row[i].theirs};
        for (int k = 0; k < 3; k++) {
            dhps_rpc_client *c = client_new(co[k]);
            assert_int_equal(open_and_call(c, port, true), want[k]);
            dhps_rpc_client_destroy(c);
        }
        dhps_rpc_server_destroy(s);
    }
    /* verifying clients needs a CA */
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.tls_cert_file = P("server.pem");
    sp.tls_key_file = P("server.key");
    sp.tls_verify_client = DHPS_RPC_TLS_VERIFY_REQUIRED;
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), -EINVAL);
}

/* Inside TLS the hello still authenticates the cluster: a wrong secret is refused. */
static void tls_wrong_secret_refused(void **st)
{
    (void)st;
    dhps_rpc_server *s = server_start(&TLS_SRV);
    long h0 = handled;
    cli_opts wrong = {.secret = "another-cluster-secret-0123456789"};
    dhps_rpc_client *c = client_new(&wrong);
    assert_int_equal(open_and_call(c, dhps_rpc_server_port(s), true), DHPS_E_AUTH);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.rejected_auth, 1);
    assert_int_equal(ss.accepted, 0);
    assert_int_equal(handled, h0);
    dhps_rpc_server_destroy(s);
}

typedef struct big_ctx {
    int done, bad;
} big_ctx;

static void big_done(void *arg, int status, const void *resp, size_t len)
{
    big_ctx *b = arg;
    b->done++;
    if (status != 0 || len != 256u << 10) {
        b->bad++;
        return;
    }
    const uint8_t *p = resp;
    uint8_t seed = p[0];
    for (size_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)(seed + i * 13)) {
            b->bad++;
            return;
        }
}

/* Messages of MiB cross many 16 KiB records both ways; pipelined ones too. */
static void tls_large_frames(void **st)
{
    (void)st;
    enum { BIG = 6u << 20 };
    srv_opts o = TLS_SRV;
    o.max_msg = 8u << 20;
    dhps_rpc_server *s = server_start(&o);
    cli_opts co = {.max_msg = 8u << 20};
    dhps_rpc_client *c = client_new(&co);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(chan_open(c, dhps_rpc_server_port(s), true, 0, &ch), 0);
    uint8_t *req = malloc(BIG), *resp = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        req[i] = (uint8_t)(i * 31 + 7);
    size_t n = 0;
    /* a 6 MiB request echoed back */
    assert_int_equal(dhps_rpc_call(ch, M_ECHO, req, BIG, resp, BIG, &n,
                                   (uint64_t)dhps_test_ms(20000) * 1000), 0);
    assert_int_equal(n, BIG);
    assert_memory_equal(req, resp, BIG);
    /* a small request with a 5 MiB response */
    uint32_t q[2] = {5u << 20, 99};
    assert_int_equal(dhps_rpc_call(ch, M_BIG, q, sizeof q, resp, BIG, &n,
                                   (uint64_t)dhps_test_ms(20000) * 1000), 0);
    assert_int_equal(n, 5u << 20);
    for (size_t i = 0; i < n; i++)
        if (resp[i] != (uint8_t)(99 + i * 13))
            fail_msg("byte %zu of the response", i);
    /* 64 calls of 256 KiB responses in flight at once */
    big_ctx b = {0};
    for (uint32_t i = 0; i < 64; i++) {
        void *buf;
        assert_int_equal(dhps_rpc_call_start(ch, M_BIG, 8, &buf), 0);
        uint32_t r[2] = {256u << 10, i};
        memcpy(buf, r, 8);
        assert_int_equal(dhps_rpc_call_send(ch, 8, (uint64_t)dhps_test_ms(20000) * 1000,
                                            big_done, &b), 0);
    }
    while (b.done < 64)
        assert_true(dhps_rpc_client_poll(c, 100) >= 0);
    assert_int_equal(b.bad, 0);
    free(req);
    free(resp);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

typedef struct thr {
    uint16_t port;
    int calls, errors;
} thr;

static void thr_done(void *arg, int status, const void *resp, size_t len)
{
    (void)resp;
    int *v = arg;
    v[0]++;
    if (status != 0 || len != 64)
        v[1]++;
}

static void *thr_main(void *arg)
{
    thr *t = arg;
    dhps_rpc_client *c = client_new(NULL);
    dhps_rpc_channel *ch = NULL;
    if (chan_open(c, t->port, true, 0, &ch)) {
        t->errors = -1;
        dhps_rpc_client_destroy(c);
        return NULL;
    }
    enum { N = 2000, DEPTH = 32 };
    int v[2] = {0, 0}, sent = 0;
    uint64_t end = dhps_mono_ns() + (uint64_t)dhps_test_ms(60000) * 1000000u;
    while (v[0] < N && dhps_mono_ns() < end) {
        while (sent < N && sent - v[0] < DEPTH) {
            void *buf;
            if (dhps_rpc_call_start(ch, M_ECHO, 64, &buf))
                break;
            memset(buf, sent & 0xff, 64);
            if (dhps_rpc_call_send(ch, 64, (uint64_t)dhps_test_ms(20000) * 1000, thr_done, v))
                break;
            sent++;
        }
        dhps_rpc_client_poll(c, 10);
    }
    t->calls = v[0];
    t->errors += v[1] + (v[0] < N);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    return NULL;
}

/* 4 client threads x 2000 pipelined calls over TLS to 2 workers (run under TSan). */
static void tls_many_concurrent_calls(void **st)
{
    (void)st;
    srv_opts o = TLS_SRV;
    o.workers = 2;
    dhps_rpc_server *s = server_start(&o);
    enum { NT = 4 };
    pthread_t th[NT];
    thr t[NT];
    long h0 = handled;
    for (int i = 0; i < NT; i++) {
        t[i] = (thr){.port = dhps_rpc_server_port(s)};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
    }
    long calls = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].errors, 0);
        calls += t[i].calls;
    }
    assert_int_equal(calls, NT * 2000);
    assert_int_equal(handled - h0, calls);
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.accepted_tls, NT);
    dhps_rpc_server_destroy(s);
}

typedef struct burst {
    int done, bad;
    uint64_t sum;
} burst;

static void burst_done(void *arg, int status, const void *resp, size_t len)
{
    burst *b = arg;
    b->done++;
    uint64_t v = 0;
    if (status != 0 || len != 8) {
        b->bad++;
        return;
    }
    memcpy(&v, resp, 8);
    b->sum += v;
}

/* 4000 small calls queued before the first flush: each side reads more frames at once
 * than one loop turn handles (256), with records read ahead into the session; every
 * call is answered, none waits for a socket event that would not come. */
static void tls_pipelined_burst(void **st)
{
    (void)st;
    dhps_rpc_server *s = server_start(&TLS_SRV);
    cli_opts co = {.max_inflight = 4096};
    dhps_rpc_client *c = client_new(&co);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(chan_open(c, dhps_rpc_server_port(s), true, 0, &ch), 0);
    for (int round = 0; round < 3; round++) {
        burst b = {0};
        uint64_t want = 0;
        for (uint64_t i = 0; i < 4000; i++) {
            void *buf;
            assert_int_equal(dhps_rpc_call_start(ch, M_ECHO, 8, &buf), 0);
            memcpy(buf, &i, 8);
            want += i;
            assert_int_equal(dhps_rpc_call_send(ch, 8, (uint64_t)dhps_test_ms(20000) * 1000,
                                                burst_done, &b), 0);
        }
        while (b.done < 4000)
            assert_true(dhps_rpc_client_poll(c, 100) >= 0);
        assert_int_equal(b.bad, 0);
        assert_int_equal(b.sum, want);
    }
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

/* A server that goes away breaks its TLS channels (DHPS_E_UNREACHABLE); a new one on
 * the same port is reached by a new channel. */
static void tls_server_restart(void **st)
{
    (void)st;
    dhps_rpc_server *s = server_start(&TLS_SRV);
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = client_new(NULL);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(chan_open(c, port, true, 0, &ch), 0);
    assert_int_equal(echo(ch, 1), 0);
    dhps_rpc_server_destroy(s);
    int rc = echo(ch, 2);
    assert_true(rc == DHPS_E_UNREACHABLE || rc == DHPS_E_MALFORMED);
    assert_int_equal(dhps_rpc_channel_status(ch), DHPS_E_UNREACHABLE);
    dhps_rpc_channel_close(ch);
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.port = port;
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.tls_cert_file = P("server.pem");
    sp.tls_key_file = P("server.key");
    s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    assert_int_equal(open_and_call(c, port, true), 0);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

/* Shared memory negotiated inside a TLS hello: calls go through the rings (not
 * encrypted), the doorbells that wake a sleeping consumer through TLS. */
static void tls_hello_negotiates_shm(void **st)
{
    (void)st;
    srv_opts o = TLS_SRV;
    o.shm = true;
    dhps_rpc_server *s = server_start(&o);
    dhps_rpc_client *c = client_new(NULL);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(chan_open(c, dhps_rpc_server_port(s), true,
                               DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_SHM), &ch),
                     0);
    assert_int_equal(dhps_rpc_channel_transport(ch), DHPS_RPC_SHM);
    assert_true(dhps_rpc_channel_tls(ch));
    for (uint64_t i = 0; i < 20; i++) {
        assert_int_equal(echo(ch, i), 0);
        usleep(2000); /* both ends fall asleep between calls: doorbells on the TLS socket */
    }
    dhps_rpc_channel_stats cs;
    dhps_rpc_channel_get_stats(ch, &cs);
    assert_int_equal(cs.calls[DHPS_RPC_SHM], 20);
    assert_true(cs.doorbells > 0);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

/* Unusable TLS files are refused at create, naming the file and why. */
static void tls_files_checked(void **st)
{
    (void)st;
    char err[600], cmd[400];
    assert_int_equal(dhps_rpc_tls_check(P("server.pem"), P("server.key"), P("ca.pem"), err,
                                        sizeof err), 0);
    snprintf(cmd, sizeof cmd, "cp %s %s && chmod 600 %s", P("server.pem"), P("cert-as.key"),
             P("cert-as.key"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(dhps_rpc_tls_check(NULL, NULL, P("ca.pem"), err, sizeof err), 0);
    const struct {
        const char *cert, *key, *ca, *msg;
    } bad[] = {
        {"server.pem", "client.key", NULL, "does not match the certificate"},
        {"missing.pem", "server.key", NULL, "missing.pem: No such file"},
        {"server.pem", "missing.key", NULL, "missing.key: No such file"},
        {"server.key", "server.key", NULL, "not a PEM certificate"},
        {"server.pem", "cert-as.key", NULL, "not an unencrypted PEM private key"},
        {"expired.pem", "expired.key", NULL, "has expired"},
        {NULL, NULL, "server.key", "no PEM certificate in it"},
        {"server.pem", NULL, NULL, "needs its key file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = dhps_rpc_tls_check(bad[i].cert ? P(bad[i].cert) : NULL,
                                    bad[i].key ? P(bad[i].key) : NULL,
                                    bad[i].ca ? P(bad[i].ca) : NULL, err, sizeof err);
        if (rc != DHPS_E_CONFIG || !strstr(err, bad[i].msg))
            fail_msg("case %zu: rc %d, \"%s\" (wanted \"%s\")", i, rc, err, bad[i].msg);
    }
    /* a key readable by others, as secret files: refused, naming chmod 600 */
    snprintf(cmd, sizeof cmd, "cp %s %s && chmod 644 %s", P("server.key"), P("loose.key"),
             P("loose.key"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(dhps_rpc_tls_check(P("server.pem"), P("loose.key"), NULL, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "mode 0644 lets any user read or change it"));
    assert_non_null(strstr(err, "chmod 600"));
    /* create refuses what the check refuses */
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.tls_cert_file = P("server.pem");
    sp.tls_key_file = P("loose.key");
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), DHPS_E_CONFIG);
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.tls_ca_file = P("missing-ca.pem");
    dhps_rpc_client *c = NULL;
    assert_int_equal(dhps_rpc_client_create(&cp, &c), DHPS_E_CONFIG);
    cp.tls_ca_file = NULL;
    cp.tls_cert_file = P("client.pem");
    assert_int_equal(dhps_rpc_client_create(&cp, &c), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tls_round_trip),
        cmocka_unit_test(tls_policy_matrix),
        cmocka_unit_test(tls_server_identity),
        cmocka_unit_test(tls_client_certificates),
        cmocka_unit_test(tls_wrong_secret_refused),
        cmocka_unit_test(tls_large_frames),
        cmocka_unit_test(tls_many_concurrent_calls),
        cmocka_unit_test(tls_pipelined_burst),
        cmocka_unit_test(tls_server_restart),
        cmocka_unit_test(tls_hello_negotiates_shm),
        cmocka_unit_test(tls_files_checked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

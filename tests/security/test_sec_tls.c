/*
 * TLS on the rpc port under attack (issue 12, docs/security.md), against real dhps-server
 * processes. Certificates are made at run time (tests/common/test_certs.h). The main
 * server runs tls.policy "always" with hello_timeout_ms 1000, frame_timeout_ms 2000,
 * max_conns_per_peer 32:
 *   plain:     a plain client is refused with DHPS_E_TLS; 300 plain hellos each get a
 *              REJECT(DHPS_E_TLS), counted, logged naming the peer, rate-limited;
 *   secret:    inside TLS a wrong cluster secret is still refused by the hello;
 *   relay:     a relay that terminates the client's TLS (holding a certificate the client
 *              trusts) and opens its own to the server cannot pass the hello on: the
 *              proofs are bound to the TLS session; a transparent relay works;
 *   garbage:   junk after a 0x16 byte, a truncated record before the handshake ends
 *              (cut at hello_timeout_ms), junk records and a truncated record after an
 *              authenticated hello (closed; cut at frame_timeout_ms);
 *   slowloris: 40 connections dripping a ClientHello a byte at a time: at most 32 held,
 *              each cut at hello_timeout_ms, a client served meanwhile;
 *   tools:     `dhps stats --addr` reaches the node with DHPS_TLS/DHPS_TLS_CA, and says
 *              why not without them.
 * And a two-node cluster across AZs a and b with tls.policy "cross_az": a client in AZ a
 * reaches node a plain and node b over TLS; node b, killed and restarted, catches up
 * from node a over TLS and serves the client again.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <poll.h>
#include <sys/resource.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "dhps/client.h"
#include "srv_proc.h"
#include "test_certs.h"
#include "wire.h"

enum { NSH = 4, DIM = 8 };
static const char WRONG_SECRET[] = "a-wrong-secret-of-enough-length-0123456789";

static char *g_dir;
static proc g_p;
static dhps_client *g_cl;   /* tls always, the right secret */
static SSL_CTX *g_cctx;     /* raw TLS peers: trusts ca.pem */
static char g_map[600];

static const char *path(const char *name)
{
    static _Thread_local char buf[8][640]; /* a few per thread, reused round-robin */
    static _Thread_local int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", g_dir, name);
    return b;
}

static dhps_client *make_client(const char *map, const char *az, int tls, const char *secret)
{
    dhps_client_params cp;
    dhps_client_params_init(&cp);
    cp.map_path = map;
    cp.secret = secret;
    cp.secret_len = strlen(secret);
    cp.az = az;
    cp.tls = tls;
    cp.tls_ca_file = path("ca.pem");
    cp.connect_timeout_ms = (uint32_t)dhps_test_ms(2000);
    dhps_client *c = NULL;
    return dhps_client_create(&cp, &c) ? NULL : c;
}

static int setup(void **st)
{
    (void)st;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
    setrlimit(RLIMIT_NOFILE, &rl);
    g_dir = t_mkdtemp();
    if (test_certs_make(g_dir))
        return -1;
    char cfg[600], text[4096];
    snprintf(cfg, sizeof cfg, "%s/node.json", g_dir);
    snprintf(text, sizeof text,
             "{\"node_id\":\"sec\",\"labels\":{\"host\":\"h\",\"az\":\"a\"},"
             "\"listen\":{\"tcp_port\":0,\"workers\":1,\"shm\":false,\"hello_timeout_ms\":1000,"
             "\"frame_timeout_ms\":2000,\"max_conns_per_peer\":32,\"max_connections\":64},"
             "\"tables\":[{\"name\":\"emb\",\"dim\":%d}],\"secret_file\":\"%s/secret\","
             "\"metrics\":{\"port\":0},\"shards\":{\"nshards\":%d,\"own\":\"all\"},"
             "\"port_file\":\"%s/ports\",\"tls\":{\"policy\":\"always\",\"cert_file\":\"%s\","
             "\"key_file\":\"%s\",\"ca_file\":\"%s\"}}",
             DIM, g_dir, NSH, g_dir, path("server.pem"), path("server.key"), path("ca.pem"));
    t_write(cfg, text, 0600);
    if (p_start(g_dir, cfg, &g_p, true))
        return -1;
    snprintf(g_map, sizeof g_map, "%s/map.json", g_dir);
    snprintf(text, sizeof text,
             "{\"version\":1,\"nshards\":%d,\"replicas\":1,\"nodes\":[{\"id\":0,\"host\":\"h\","
             "\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"}],"
             "\"shards\":[[0],[0],[0],[0]]}", NSH, g_p.port);
    t_write(g_map, text, 0600);
    g_cl = make_client(g_map, "a", DHPS_RPC_TLS_ALWAYS, T_SECRET);
    g_cctx = SSL_CTX_new(TLS_client_method());
    if (!g_cl || !g_cctx || SSL_CTX_load_verify_locations(g_cctx, path("ca.pem"), NULL) != 1)
        return -1;
    SSL_CTX_set_verify(g_cctx, SSL_VERIFY_PEER, NULL);
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    dhps_client_destroy(g_cl);
    SSL_CTX_free(g_cctx);
    if (g_p.pid > 0) {
        kill(g_p.pid, SIGTERM);
        p_wait_exit(g_p.pid, 10000);
    }
    t_rmdir(g_dir);
    return 0;
}

static double metric_of(const proc *p, const char *series)
{
    char *body = NULL;
    int code = t_http_get(p->mport, "/metrics", &body);
    double v = code == 200 ? t_metric(body, series) : -1;
    free(body);
    return v;
}

static double metric(const char *series) { return metric_of(&g_p, series); }

/* Lines of the server's stderr containing needle. */
static int log_lines(const char *needle)
{
    char *log = p_stderr(g_dir);
    int lines = 0;
    for (char *q = log; (q = strstr(q, needle)); q++)
        lines++;
    free(log);
    return lines;
}

/* 16 keys updated then looked up through client c, inside a deadline. 0 or the error. */
static int client_round_on(dhps_client *c, uint64_t base)
{
    uint64_t keys[16];
    float rows[16 * DIM], out[16 * DIM];
    for (int i = 0; i < 16; i++) {
        keys[i] = base + (uint64_t)i;
        for (int d = 0; d < DIM; d++)
            rows[i * DIM + d] = (float)(base + (uint64_t)i) + (float)d;
    }
    uint64_t deadline_us = (uint64_t)dhps_test_ms(2000) * 1000u;
    int rc = dhps_client_update(c, "emb", keys, rows, 16, DIM, DHPS_FP32, 0, DHPS_ACK_ALL,
                                deadline_us, NULL, NULL);
    if (rc)
        return rc;
    uint64_t missing[1] = {0};
    rc = dhps_client_lookup(c, "emb", keys, 16, out, DIM, DHPS_FP32, missing, deadline_us, NULL);
    if (rc)
        return rc;
    return missing[0] || memcmp(out, rows, sizeof rows) ? -1 : 0;
}

static int client_round(uint64_t base) { return client_round_on(g_cl, base); }

static int tcp_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Did the server close fd within ms (EOF or reset, nothing else pending)? */
static bool closed_within(int fd, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = t_now_ms();
        if (now >= end)
            return false;
        if (poll(&p, 1, (int)(end - now)) <= 0)
            continue;
        char b[512];
        ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return true;
    }
}

/* ---- raw hellos, plain and inside TLS --------------------------------------------------- */

typedef struct rawio {
    int fd;
    SSL *ssl; /* NULL: plain */
} rawio;

static int raw_write(rawio *io, const void *b, size_t n)
{
    if (io->ssl)
        return SSL_write(io->ssl, b, (int)n) == (int)n ? 0 : -1;
    return send(io->fd, b, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static int raw_read_exact(rawio *io, uint8_t *b, size_t n)
{
    for (size_t got = 0; got < n;) {
        int r = io->ssl ? SSL_read(io->ssl, b + got, (int)(n - got))
                        : (int)recv(io->fd, b + got, n - got, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int raw_read_hello(rawio *io, rpc_hello *m)
{
    uint8_t buf[RPC_HELLO_HDR + RPC_HELLO_MAX_BODY];
    if (raw_read_exact(io, buf, RPC_HELLO_HDR))
        return -1;
    uint32_t body = (uint32_t)buf[8] | (uint32_t)buf[9] << 8 | (uint32_t)buf[10] << 16 |
                    (uint32_t)buf[11] << 24;
    if (body > RPC_HELLO_MAX_BODY || raw_read_exact(io, buf + RPC_HELLO_HDR, body))
        return -1;
    return rpc_hello_parse(buf, RPC_HELLO_HDR + body, m) > 0 ? 0 : -1;
}

/* A raw hello proving secret (bound to io's TLS session when there is one). Returns the
 * server's last answer kind (RPC_H_ACCEPT, RPC_H_REJECT with *status) or -1. */
static int raw_hello(rawio *io, const char *secret, int *status)
{
    rpc_hello ch = {.kind = RPC_H_CLIENT_HELLO, .version = RPC_HELLO_VERSION, .caps = 1,
                    .max_msg = 1u << 20};
    for (int i = 0; i < (int)RPC_NONCE; i++)
        ch.nonce[i] = (uint8_t)rand();
    uint8_t buf[2048], bind[RPC_BIND];
    uint8_t *b = NULL;
    if (io->ssl) {
        static const char label[] = "EXPORTER-dhps-rpc-hello";
        if (SSL_export_keying_material(io->ssl, bind, sizeof bind, label, sizeof label - 1,
                                       NULL, 0, 0) != 1)
            return -1;
        b = bind;
    }
    long n = rpc_hello_encode(&ch, buf, sizeof buf);
    rpc_hello sh, ac;
    if (raw_write(io, buf, (size_t)n) || raw_read_hello(io, &sh))
        return -1;
    *status = sh.status;
    if (sh.kind != RPC_H_SERVER_HELLO)
        return sh.kind;
    rpc_hello pr = {.kind = RPC_H_CLIENT_PROOF, .version = sh.version, .want = DHPS_RPC_TCP};
    rpc_proof_tls(secret, strlen(secret), 'c', &ch, &sh, &pr, b, pr.proof);
    n = rpc_hello_encode(&pr, buf, sizeof buf);
    if (raw_write(io, buf, (size_t)n) || raw_read_hello(io, &ac))
        return -1;
    *status = ac.status;
    return ac.kind;
}

/* A TLS session to port as a client trusting ca.pem (blocking). 0 or -1. */
static int raw_tls(uint16_t port, rawio *io)
{
    io->fd = tcp_connect(port);
    io->ssl = io->fd >= 0 ? SSL_new(g_cctx) : NULL;
    if (!io->ssl)
        return -1;
    SSL_set_fd(io->ssl, io->fd);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(io->ssl), "127.0.0.1");
    if (SSL_connect(io->ssl) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

static void raw_close(rawio *io)
{
    SSL_free(io->ssl);
    io->ssl = NULL;
    if (io->fd >= 0)
        close(io->fd);
    io->fd = -1;
}

/* ---- attacks ------------------------------------------------------------------------- */

/* tls.policy always: a plain client gets DHPS_E_TLS; plain hellos are refused, counted,
 * logged with the peer at a bounded rate; TLS clients are served throughout. */
static void plain_refused_by_always_server(void **st)
{
    (void)st;
    assert_int_equal(client_round(100), 0);
    dhps_client *plain = make_client(g_map, "a", DHPS_RPC_TLS_OFF, T_SECRET);
    assert_non_null(plain);
    assert_int_equal(client_round_on(plain, 200), DHPS_E_TLS);
    dhps_client_destroy(plain);
    t_sleep_ms(1100); /* a fresh second of log lines */
    const char *needle = "refused a plain TCP connection from 127.0.0.1:";
    int before = log_lines(needle);
    double refused0 = metric("dhps_rpc_rejected_plain_total");
    for (int i = 0; i < 300; i++) {
        rawio io = {.fd = tcp_connect(g_p.port)};
        assert_true(io.fd >= 0);
        int status = 0;
        assert_int_equal(raw_hello(&io, T_SECRET, &status), RPC_H_REJECT);
        assert_int_equal(status, DHPS_E_TLS);
        raw_close(&io);
    }
    int lines = log_lines(needle) - before;
    double refused = metric("dhps_rpc_rejected_plain_total") - refused0;
    print_message("  300 plain hellos: %.0f refused (counted), %d log lines\n", refused, lines);
    assert_true(refused >= 300);
    assert_true(lines >= 1 && lines <= 40);
    assert_int_equal(metric("dhps_rpc_accepted_total"), metric("dhps_rpc_accepted_tls_total"));
    assert_int_equal(client_round(300), 0);
}

/* Inside TLS the cluster secret still decides: a wrong one gets REJECT(DHPS_E_AUTH). */
static void wrong_secret_over_tls_refused(void **st)
{
    (void)st;
    double auth0 = metric("dhps_rpc_rejected_auth_total");
    dhps_client *wrong = make_client(g_map, "a", DHPS_RPC_TLS_ALWAYS, WRONG_SECRET);
    assert_non_null(wrong);
    assert_int_equal(client_round_on(wrong, 400), DHPS_E_AUTH);
    dhps_client_destroy(wrong);
    rawio io;
    assert_int_equal(raw_tls(g_p.port, &io), 0);
    int status = 0;
    assert_int_equal(raw_hello(&io, WRONG_SECRET, &status), RPC_H_REJECT);
    assert_int_equal(status, DHPS_E_AUTH);
    raw_close(&io);
    /* the right secret over the same kind of raw session is accepted */
    assert_int_equal(raw_tls(g_p.port, &io), 0);
    assert_int_equal(raw_hello(&io, T_SECRET, &status), RPC_H_ACCEPT);
    raw_close(&io);
    assert_true(metric("dhps_rpc_rejected_auth_total") - auth0 >= 2);
    assert_int_equal(client_round(500), 0);
}

/* A relay on 127.0.0.1: accepts one connection and passes bytes to port `to`, either
 * untouched, or terminating the client's TLS with the server's own certificate (one the
 * client trusts: a stolen certificate, a TLS-inspecting middlebox) and opening its own
 * TLS session to the server. */
typedef struct relay {
    int lfd;
    uint16_t port, to;
    bool terminate;
    SSL_CTX *sctx;
    pthread_t th;
} relay;

static int relay_read(SSL *s, int fd, char *b, size_t n)
{
    return s ? SSL_read(s, b, (int)n) : (int)recv(fd, b, n, 0);
}

static int relay_write(SSL *s, int fd, const char *b, int n)
{
    return s ? SSL_write(s, b, n) : (int)send(fd, b, (size_t)n, MSG_NOSIGNAL);
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    struct pollfd lp = {.fd = r->lfd, .events = POLLIN};
    if (poll(&lp, 1, dhps_test_ms(10000)) <= 0)
        return NULL;
    int a = accept(r->lfd, NULL, NULL), b = tcp_connect(r->to);
    SSL *sa = NULL, *sb = NULL;
    if (a < 0 || b < 0)
        goto out;
    if (r->terminate) {
        sa = SSL_new(r->sctx);
        sb = SSL_new(g_cctx);
        SSL_set_fd(sa, a);
        SSL_set_fd(sb, b);
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(sb), "127.0.0.1");
        if (SSL_accept(sa) != 1 || SSL_connect(sb) != 1)
            goto out;
    }
    char buf[16384];
    for (;;) {
        struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
        bool pa = sa && SSL_pending(sa) > 0, pb = sb && SSL_pending(sb) > 0;
        if (!pa && !pb && poll(p, 2, dhps_test_ms(10000)) <= 0)
            break;
        if (pa || p[0].revents) {
            int n = relay_read(sa, a, buf, sizeof buf);
            if (n <= 0 || relay_write(sb, b, buf, n) != n)
                break;
        }
        if (pb || p[1].revents) {
            int n = relay_read(sb, b, buf, sizeof buf);
            if (n <= 0 || relay_write(sa, a, buf, n) != n)
                break;
        }
    }
out:
    ERR_clear_error();
    SSL_free(sa);
    SSL_free(sb);
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    return NULL;
}

static void relay_start(relay *r, uint16_t to, bool terminate)
{
    memset(r, 0, sizeof *r);
    r->to = to;
    r->terminate = terminate;
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->lfd, 4), 0);
    getsockname(r->lfd, (struct sockaddr *)&a, &al);
    r->port = ntohs(a.sin_port);
    if (terminate) {
        r->sctx = SSL_CTX_new(TLS_server_method());
        assert_int_equal(SSL_CTX_use_certificate_chain_file(r->sctx, path("server.pem")), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(r->sctx, path("server.key"),
                                                     SSL_FILETYPE_PEM), 1);
    }
    assert_int_equal(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_stop(relay *r)
{
    pthread_join(r->th, NULL);
    close(r->lfd);
    SSL_CTX_free(r->sctx);
}

/* Open a TLS channel to port with the right secret and call INFO: 0 or the error. */
static int rpc_tls_open_call(uint16_t port)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = T_SECRET;
    cp.secret_len = strlen(T_SECRET);
    cp.tls_ca_file = path("ca.pem");
    cp.connect_timeout_ms = (uint32_t)dhps_test_ms(5000);
    dhps_rpc_client *c = NULL;
    assert_int_equal(dhps_rpc_client_create(&cp, &c), 0);
    dhps_rpc_channel_params p;
    dhps_rpc_channel_params_init(&p);
    p.port = port;
    p.tls = true;
    p.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    dhps_rpc_channel *ch = NULL;
    int rc = dhps_rpc_channel_open(c, &p, &ch);
    if (!rc) {
        dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION};
        uint8_t resp[4096];
        size_t n = 0;
        rc = dhps_rpc_call(ch, DHPS_M_INFO, &h, sizeof h, resp, sizeof resp, &n,
                           (uint64_t)dhps_test_ms(5000) * 1000);
    }
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    return rc;
}

static void tls_relay_cannot_pass_the_hello(void **st)
{
    (void)st;
    relay r;
    relay_start(&r, g_p.port, false); /* the relay itself works */
    assert_int_equal(rpc_tls_open_call(r.port), 0);
    relay_stop(&r);
    t_sleep_ms(1100); /* a fresh second of log lines */
    double auth0 = metric("dhps_rpc_rejected_auth_total");
    relay_start(&r, g_p.port, true);
    assert_int_equal(rpc_tls_open_call(r.port), DHPS_E_AUTH);
    relay_stop(&r);
    assert_true(metric("dhps_rpc_rejected_auth_total") - auth0 >= 1);
    assert_true(log_lines("or a relay between two TLS sessions") >= 1);
    assert_int_equal(client_round(600), 0);
}

/* Junk where TLS records should be, before and after the hello. */
static void garbage_and_truncated_tls_records(void **st)
{
    (void)st;
    double fail0 = metric("dhps_rpc_tls_handshake_failures_total");
    double mal0 = metric("dhps_rpc_rejected_malformed_total");
    double slow0 = metric("dhps_rpc_closed_timeout_total");
    /* a handshake byte followed by junk: the handshake fails, the socket closes */
    int fd = tcp_connect(g_p.port);
    uint8_t junk[200];
    junk[0] = 0x16;
    for (size_t i = 1; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    assert_int_equal(send(fd, junk, sizeof junk, MSG_NOSIGNAL), (ssize_t)sizeof junk);
    assert_true(closed_within(fd, 3000));
    close(fd);
    assert_true(metric("dhps_rpc_tls_handshake_failures_total") - fail0 >= 1);
    /* a record header promising 512 bytes, 20 sent: cut at hello_timeout_ms (1 s) */
    fd = tcp_connect(g_p.port);
    uint8_t part[25] = {0x16, 0x03, 0x01, 0x02, 0x00};
    assert_int_equal(send(fd, part, sizeof part, MSG_NOSIGNAL), (ssize_t)sizeof part);
    uint64_t t0 = t_now_ms();
    assert_int_equal(client_round(700), 0); /* others served meanwhile */
    assert_true(closed_within(fd, 5000));
    uint64_t cut = t_now_ms() - t0;
    close(fd);
    print_message("  truncated record before the handshake: cut after %llu ms\n",
                  (unsigned long long)cut);
    assert_true(cut >= 900);
    assert_true(metric("dhps_rpc_rejected_malformed_total") - mal0 >= 1);
    /* an authenticated TLS peer writing junk under its session: closed */
    rawio io;
    int status = 0;
    assert_int_equal(raw_tls(g_p.port, &io), 0);
    assert_int_equal(raw_hello(&io, T_SECRET, &status), RPC_H_ACCEPT);
    uint8_t rec[64] = {0x17, 0x03, 0x03, 0x00, 59};
    for (size_t i = 5; i < sizeof rec; i++)
        rec[i] = (uint8_t)i;
    assert_int_equal(send(io.fd, rec, sizeof rec, MSG_NOSIGNAL), (ssize_t)sizeof rec);
    assert_true(closed_within(io.fd, 3000));
    raw_close(&io);
    assert_true(metric("dhps_rpc_rejected_malformed_total") - mal0 >= 2);
    /* ... or half a record, then nothing: cut at frame_timeout_ms (2 s) */
    assert_int_equal(raw_tls(g_p.port, &io), 0);
    assert_int_equal(raw_hello(&io, T_SECRET, &status), RPC_H_ACCEPT);
    uint8_t half[40] = {0x17, 0x03, 0x03, 0x04, 0x00};
    assert_int_equal(send(io.fd, half, sizeof half, MSG_NOSIGNAL), (ssize_t)sizeof half);
    t0 = t_now_ms();
    assert_true(closed_within(io.fd, 10000));
    cut = t_now_ms() - t0;
    raw_close(&io);
    print_message("  truncated record after the hello: cut after %llu ms\n",
                  (unsigned long long)cut);
    assert_true(cut >= 1900);
    assert_true(metric("dhps_rpc_closed_timeout_total") - slow0 >= 1);
    assert_int_equal(client_round(800), 0);
    assert_int_equal(waitpid(g_p.pid, NULL, WNOHANG), 0);
}

/* The first flight of a TLS client (its ClientHello record), from a memory pair. */
static size_t client_hello_bytes(uint8_t *out, size_t cap)
{
    SSL *s = SSL_new(g_cctx);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    SSL_set_bio(s, r, w);
    SSL_set_connect_state(s);
    (void)SSL_do_handshake(s);
    int n = BIO_read(w, out, (int)cap);
    SSL_free(s);
    ERR_clear_error();
    return n > 0 ? (size_t)n : 0;
}

/* 40 connections each sending a ClientHello one byte every 50 ms: cut at hello_timeout_ms,
 * at most max_conns_per_peer held, a client served meanwhile. */
static void slowloris_tls_handshake(void **st)
{
    (void)st;
    enum { NS = 40 };
    uint8_t hello[2048];
    size_t hl = client_hello_bytes(hello, sizeof hello);
    assert_true(hl > 100);
    int fd[NS];
    size_t sent[NS];
    bool closed[NS];
    for (int i = 0; i < NS; i++) {
        fd[i] = tcp_connect(g_p.port);
        assert_true(fd[i] >= 0);
        sent[i] = 0;
        closed[i] = false;
    }
    uint64_t t0 = t_now_ms(), end = t0 + dhps_test_ms(10000);
    int nclosed = 0, max_open = 0;
    bool served = false;
    while (nclosed < NS && t_now_ms() < end) {
        int open = 0;
        for (int i = 0; i < NS; i++) {
            if (closed[i])
                continue;
            char b[64];
            ssize_t r = recv(fd[i], b, sizeof b, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
                (sent[i] < hl && send(fd[i], hello + sent[i], 1, MSG_NOSIGNAL) != 1)) {
                closed[i] = true;
                nclosed++;
                continue;
            }
            sent[i]++;
            open++;
        }
        if (open > max_open && t_now_ms() - t0 > 200)
            max_open = open;
        if (!served && t_now_ms() - t0 > 300) { /* while they drip */
            assert_int_equal(client_round(900), 0);
            served = true;
        }
        t_sleep_ms(50);
    }
    uint64_t took = t_now_ms() - t0;
    size_t most = 0;
    for (int i = 0; i < NS; i++) {
        most = sent[i] > most ? sent[i] : most;
        close(fd[i]);
    }
    print_message("  %d dripping handshakes: all cut after %llu ms, at most %d held, "
                  "at most %zu of %zu ClientHello bytes sent\n", NS,
                  (unsigned long long)took, max_open, most, hl);
    assert_int_equal(nclosed, NS);
    assert_true(served);
    assert_true(max_open <= 32);
    assert_true(most < hl); /* none got its ClientHello through: cut while dripping */
    assert_int_equal(client_round(1000), 0);
}

/* Run the dhps tool with env assignments before it; its exit code, output in *out. */
static int run_tool(const char *env, const char *args, char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "env %s %s %s 2>&1", env, DHPS_TOOL_BIN, args);
    FILE *f = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0, r;
    char *buf = malloc(cap);
    while (f && (r = fread(buf + len, 1, cap - len - 1, f)) > 0)
        len += r;
    buf[len] = 0;
    int st = f ? pclose(f) : -1;
    *out = buf;
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The command-line tools reach a tls.policy always node with DHPS_TLS / DHPS_TLS_CA, and
 * say why when they are not given. */
static void tools_reach_tls_nodes(void **st)
{
    (void)st;
    char args[1024], env[2048], *out = NULL;
    snprintf(args, sizeof args, "stats --addr 127.0.0.1:%u --secret %s", g_p.port,
             path("secret"));
    assert_true(run_tool("DHPS_TLS=", args, &out) != 0);
    if (!strstr(out, "TLS failed"))
        fail_msg("plain dhps stats at a TLS-only node: %s", out);
    free(out);
    snprintf(env, sizeof env, "DHPS_TLS=always DHPS_TLS_CA=%s", path("ca.pem"));
    int rc = run_tool(env, args, &out);
    if (rc != 0 || !strstr(out, "node 0") || !strstr(out, "keys"))
        fail_msg("dhps stats over TLS: exit %d: %s", rc, out);
    free(out);
    assert_true(run_tool("DHPS_TLS=sometimes", args, &out) != 0);
    assert_non_null(strstr(out, "want off, cross_az or always"));
    free(out);
    assert_true(run_tool("DHPS_TLS=always", args, &out) != 0); /* no CA */
    assert_non_null(strstr(out, "DHPS_TLS_CA"));
    free(out);
}

/* ---- two AZs, tls.policy cross_az ------------------------------------------------------ */

typedef struct az_node {
    char dir[640], cfg[1024];
    proc p;
    int hold;
} az_node;

static void az_cluster_write(az_node *n, const char *map)
{
    for (int i = 0; i < 2; i++) {
        char text[8192], snap[1024];
        snprintf(snap, sizeof snap, "%.600s/snap", n[i].dir);
        mkdir(n[i].dir, 0700);
        mkdir(snap, 0700);
        snprintf(text, sizeof text,
                 "{\"node_id\":\"n%d\",\"labels\":{\"host\":\"h%d\",\"az\":\"%c\"},"
                 "\"listen\":{\"workers\":1,\"shm\":false},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":%d}],\"secret_file\":\"%s\","
                 "\"metrics\":{\"port\":0},\"snapshot\":{\"dir\":\"%s\",\"on_shutdown\":false},"
                 "\"port_file\":\"%s/ports\",\"shards\":{\"cluster_map\":\"%s\",\"map_node\":%d},"
                 "\"sync\":{\"peer_wait_s\":20,\"anti_entropy_s\":0},"
                 "\"tls\":{\"policy\":\"cross_az\",\"cert_file\":\"%s\",\"key_file\":\"%s\","
                 "\"ca_file\":\"%s\"}}",
                 i, i, 'a' + i, DIM, path("secret"), snap, n[i].dir, map, i,
                 path("server.pem"), path("server.key"), path("ca.pem"));
        snprintf(n[i].cfg, sizeof n[i].cfg, "%.600s/server.json", n[i].dir);
        t_write(n[i].cfg, text, 0600);
    }
}

static void cross_az_cluster_over_tls(void **st)
{
    (void)st;
    static az_node n[2];
    char map[640], text[2048];
    snprintf(map, sizeof map, "%s/az-map.json", g_dir);
    uint16_t port[2];
    for (int i = 0; i < 2; i++) {
        snprintf(n[i].dir, sizeof n[i].dir, "%s/az%d", g_dir, i);
        port[i] = p_hold_port(&n[i].hold);
        assert_true(port[i] != 0);
    }
    snprintf(text, sizeof text,
             "{\"version\":1,\"nshards\":%d,\"replicas\":2,\"nodes\":["
             "{\"id\":0,\"host\":\"h0\",\"pod\":\"p0\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"},"
             "{\"id\":1,\"host\":\"h1\",\"pod\":\"p1\",\"az\":\"b\",\"addr\":\"127.0.0.1:%u\"}],"
             "\"shards\":[[0,1],[1,0],[0,1],[1,0]]}", NSH, port[0], port[1]);
    t_write(map, text, 0600);
    az_cluster_write(n, map);
    for (int i = 0; i < 2; i++)
        assert_int_equal(p_start(n[i].dir, n[i].cfg, &n[i].p, false), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(p_wait_http(&n[i].p, "/health/ready", 200, 30000), 0);
    /* both caught up from each other at start: the peers dialled each other over TLS */
    assert_true(metric_of(&n[0].p, "dhps_rpc_accepted_tls_total") >= 1);
    assert_true(metric_of(&n[1].p, "dhps_rpc_accepted_tls_total") >= 1);
    double a0 = metric_of(&n[0].p, "dhps_rpc_accepted_total");
    double at0 = metric_of(&n[0].p, "dhps_rpc_accepted_tls_total");
    double b0 = metric_of(&n[1].p, "dhps_rpc_accepted_total");
    double bt0 = metric_of(&n[1].p, "dhps_rpc_accepted_tls_total");
    dhps_client *c = make_client(map, "a", DHPS_RPC_TLS_CROSS_AZ, T_SECRET);
    assert_non_null(c);
    assert_int_equal(client_round_on(c, 5000), 0); /* ACK_ALL: both nodes written */
    /* the client in AZ a: node a plain, node b over TLS */
    assert_int_equal(metric_of(&n[0].p, "dhps_rpc_accepted_total") - a0, 1);
    assert_int_equal(metric_of(&n[0].p, "dhps_rpc_accepted_tls_total") - at0, 0);
    assert_int_equal(metric_of(&n[1].p, "dhps_rpc_accepted_total") - b0, 1);
    assert_int_equal(metric_of(&n[1].p, "dhps_rpc_accepted_tls_total") - bt0, 1);
    /* node b killed; writes acknowledged by node a alone meanwhile */
    kill(n[1].p.pid, SIGKILL);
    assert_int_equal(p_wait_exit(n[1].p.pid, 10000), 128 + SIGKILL);
    uint64_t keys[64];
    float rows[64 * DIM];
    for (int i = 0; i < 64; i++) {
        keys[i] = 7000 + (uint64_t)i;
        for (int d = 0; d < DIM; d++)
            rows[i * DIM + d] = (float)i + (float)d * 0.25f;
    }
    assert_int_equal(dhps_client_update(c, "emb", keys, rows, 64, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ONE, (uint64_t)dhps_test_ms(3000) * 1000, NULL,
                                        NULL), 0);
    at0 = metric_of(&n[0].p, "dhps_rpc_accepted_tls_total");
    assert_int_equal(p_start(n[1].dir, n[1].cfg, &n[1].p, false), 0);
    assert_int_equal(p_wait_http(&n[1].p, "/health/ready", 200, 30000), 0);
    /* it caught up from node a over TLS, and has what node a took alone */
    assert_true(metric_of(&n[0].p, "dhps_rpc_accepted_tls_total") - at0 >= 1);
    t_conn b;
    assert_int_equal(t_connect(&b, n[1].p.port, T_SECRET), 0); /* plain: cross_az takes it */
    for (uint32_t sh = 0; sh < NSH; sh++) {
        uint64_t k[64], found[1] = {0};
        float out[64 * DIM];
        uint32_t m = 0;
        for (int i = 0; i < 64; i++)
            if (dhps_proto_shard_of(keys[i], NSH) == sh)
                k[m++] = keys[i];
        if (!m)
            continue;
        assert_int_equal(t_lookup(&b, "emb", sh, k, m, 0, out, found, NULL), 0);
        assert_int_equal(found[0], m == 64 ? ~0ull : (1ull << m) - 1);
    }
    t_close(&b);
    /* and the client reaches the restarted node again (a new TLS connection) */
    int rc = -1;
    uint64_t end = t_now_ms() + dhps_test_ms(5000);
    while (t_now_ms() < end && (rc = client_round_on(c, 9000)) != 0)
        t_sleep_ms(100);
    assert_int_equal(rc, 0);
    dhps_client_destroy(c);
    for (int i = 0; i < 2; i++) {
        kill(n[i].p.pid, SIGTERM);
        p_wait_exit(n[i].p.pid, 10000);
        close(n[i].hold);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_refused_by_always_server),
        cmocka_unit_test(wrong_secret_over_tls_refused),
        cmocka_unit_test(tls_relay_cannot_pass_the_hello),
        cmocka_unit_test(garbage_and_truncated_tls_records),
        cmocka_unit_test(slowloris_tls_handshake),
        cmocka_unit_test(tools_reach_tls_nodes),
        cmocka_unit_test(cross_az_cluster_over_tls),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

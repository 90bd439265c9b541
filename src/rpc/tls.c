/* rpc TLS layer (tls.h): contexts, a socket BIO without SIGPIPE, non-blocking handshake,
 * read and write with WANT_READ / WANT_WRITE made explicit, the hello binding. */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "dhps/error.h"
#include "dhps/rpc.h"
#include "secret.h" /* dhps_private_file_check_fd */
#include "util.h"
#include "wire.h"

_Static_assert(RPC_TLS_BIND == RPC_BIND, "the hello binds what the session exports");

/* ---- a socket BIO: MSG_NOSIGNAL | MSG_DONTWAIT, records sent in one send() ---------- *
 *
 * OpenSSL writes a session's output record by record (16 KiB each). The BIO gathers them
 * in a buffer (allocated while it holds bytes, at most SB_OUT bytes) and sends them with
 * one send() when the writer is done (rpc_tls_write, a handshake flight's BIO_flush) or
 * the buffer is full: a 64 KiB response costs one system call, not five. Reads are the
 * session's own read-ahead (SSL_CTX_set_read_ahead, a RPC_TLS_READ_BUF buffer): one recv()
 * takes every record the socket has. `hold` stops reads from the socket, so that the
 * receive path can finish what the session has buffered without taking more (tcp_rx's
 * per-turn bound). */

#define SB_OUT (128u << 10)

typedef struct sbio {
    int fd;
    bool hold;        /* serve reads from the session's buffer only */
    uint8_t *out;     /* gathered records [off, len), NULL while empty */
    size_t off, len;
} sbio;

static BIO_METHOD *sock_meth;
static pthread_once_t sock_once = PTHREAD_ONCE_INIT;

/* Send what is gathered: 0 all sent, -EAGAIN some left (the socket is full), or
 * DHPS_E_UNREACHABLE. */
static int sb_push(sbio *sb)
{
    while (sb->off < sb->len) {
        ssize_t w = send(sb->fd, sb->out + sb->off, sb->len - sb->off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            sb->off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return -EAGAIN;
        return DHPS_E_UNREACHABLE;
    }
    free(sb->out); /* an idle connection holds no buffer */
    sb->out = NULL;
    sb->off = sb->len = 0;
    return 0;
}

static int sb_write(BIO *b, const char *buf, size_t n, size_t *done)
{
    sbio *sb = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (sb->len + n > SB_OUT) { /* make room: send what is gathered first */
        int r = sb_push(sb);
        if (r == DHPS_E_UNREACHABLE)
            return 0;
        if (r == -EAGAIN && sb->off) { /* compact behind the sent part */
            memmove(sb->out, sb->out + sb->off, sb->len - sb->off);
            sb->len -= sb->off;
            sb->off = 0;
        }
        if (sb->len + n > SB_OUT) {
            if (sb->len) { /* still full: wait for the socket */
                BIO_set_retry_write(b);
                return 0;
            }
            n = SB_OUT; /* a write larger than the buffer: take a part */
        }
    }
    if (!sb->out && !(sb->out = malloc(SB_OUT)))
        return 0;
    memcpy(sb->out + sb->len, buf, n);
    sb->len += n;
    *done = n;
    return 1;
}

static int sb_read(BIO *b, char *buf, size_t n, size_t *done)
{
    sbio *sb = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (sb->hold) {
        BIO_set_retry_read(b);
        return 0;
    }
    for (;;) {
        ssize_t r = recv(sb->fd, buf, n, MSG_DONTWAIT);
        if (r > 0) {
            *done = (size_t)r;
            return 1;
        }
        if (r == 0) {
            BIO_set_flags(b, BIO_FLAGS_IN_EOF);
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(b);
        return 0;
    }
}

static long sb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    sbio *sb = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: {
        BIO_clear_retry_flags(b);
        int r = sb_push(sb);
        if (r == -EAGAIN)
            BIO_set_retry_write(b);
        return r == 0;
    }
    case BIO_CTRL_WPENDING:
        return (long)(sb->len - sb->off);
    case BIO_CTRL_EOF:
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0;
    }
}

static int sb_create(BIO *b)
{
    sbio *sb = calloc(1, sizeof *sb);
    if (!sb)
        return 0;
    sb->fd = -1;
    BIO_set_data(b, sb);
    BIO_set_init(b, 1);
    return 1;
}

static int sb_destroy(BIO *b)
{
    sbio *sb = BIO_get_data(b);
    if (sb)
        free(sb->out);
    free(sb);
    BIO_set_data(b, NULL);
    return 1;
}

static void sock_meth_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "dhps socket");
    if (m && BIO_meth_set_write_ex(m, sb_write) && BIO_meth_set_read_ex(m, sb_read) &&
        BIO_meth_set_ctrl(m, sb_ctrl) && BIO_meth_set_create(m, sb_create) &&
        BIO_meth_set_destroy(m, sb_destroy)) {
        sock_meth = m;
        return;
    }
    BIO_meth_free(m);
}

/* ---- errors ------------------------------------------------------------------------ */

/* The reason of the newest OpenSSL error, or fallback. */
static const char *ssl_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* Describe a failed call (SSL_get_error code e) in t->err and classify it. */
static int fail(rpc_tls *t, int e, bool handshake)
{
    unsigned long last = ERR_peek_last_error();
    int reason = last ? ERR_GET_REASON(last) : 0;
    long vr = SSL_get_verify_result(t->ssl);
    int rc;
    if (handshake && vr != X509_V_OK && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        snprintf(t->err, sizeof t->err, "%s certificate refused: %s",
                 t->server ? "the client's" : "the server's", X509_verify_cert_error_string(vr));
        rc = DHPS_E_TLS;
    } else if (e == SSL_ERROR_SSL && ERR_GET_LIB(last) == ERR_LIB_SSL &&
               reason >= SSL_AD_REASON_OFFSET) {
        /* the peer sent an alert: it refused our certificate, our name, the handshake */
        snprintf(t->err, sizeof t->err, "the peer refused the session: %s",
                 ssl_reason("alert"));
        rc = DHPS_E_TLS;
    } else if (e == SSL_ERROR_SSL) {
        snprintf(t->err, sizeof t->err, "%s", ssl_reason("protocol error"));
        rc = handshake ? DHPS_E_TLS : DHPS_E_MALFORMED;
    } else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !last)) {
        snprintf(t->err, sizeof t->err, "%s",
                 handshake ? "the peer closed the connection during the TLS handshake (does "
                             "it speak TLS?)"
                           : "the peer closed the connection");
        rc = handshake ? DHPS_E_TLS : DHPS_E_UNREACHABLE;
    } else {
        snprintf(t->err, sizeof t->err, "%s", errno ? strerror(errno) : ssl_reason("I/O error"));
        rc = handshake ? DHPS_E_TLS : DHPS_E_UNREACHABLE;
    }
    ERR_clear_error();
    return rc;
}

/* ---- contexts ---------------------------------------------------------------------- */

static int cfail(char *err, size_t errlen, int rc, const char *fmt, const char *a,
                 const char *b)
{
    snprintf(err, errlen, fmt, a, b ? b : ssl_reason("?"));
    ERR_clear_error();
    return rc;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1; /* encrypted keys are refused, never prompted for */
}

static SSL_CTX *ctx_new(bool server)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx)
        return NULL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                       "TLS_CHACHA20_POLY1305_SHA256")) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1); /* one recv() takes every record the socket has */
    SSL_CTX_set_default_read_buffer_len(ctx, RPC_TLS_READ_BUF);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    return ctx;
}

/* Can path be opened for reading? 0, or DHPS_E_CONFIG naming it. */
static int readable(const char *what, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    close(fd);
    return 0;
}

/* Certificate chain and private key into ctx: the key file private (mode), unencrypted,
 * matching the certificate, the certificate not expired. */
static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
    int rc = readable("tls cert file", cert, err, errlen);
    if (rc)
        return rc;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        return cfail(err, errlen, DHPS_E_CONFIG, "tls cert file %s: not a PEM certificate "
                     "chain (%s)", cert, NULL);
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        return cfail(err, errlen, DHPS_E_CONFIG, "tls cert file %s: the certificate has "
                     "expired%s", cert, "");
    if (x && X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
        return cfail(err, errlen, DHPS_E_CONFIG, "tls cert file %s: the certificate is not "
                     "valid yet%s", cert, "");
    int fd = open(key, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "tls key file %s: %s", key, strerror(errno));
        return DHPS_E_CONFIG;
    }
    if ((rc = dhps_private_file_check_fd(fd, key, "tls key file",
                                         "the private key proves this peer's identity", err,
                                         errlen))) {
        close(fd);
        return rc;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
    fclose(f);
    if (!k)
        return cfail(err, errlen, DHPS_E_CONFIG, "tls key file %s: not an unencrypted PEM "
                     "private key (%s)", key, NULL);
    int ok = SSL_CTX_use_PrivateKey(ctx, k) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(k);
    if (!ok) {
        snprintf(err, errlen, "tls key file %s: does not match the certificate in %s", key,
                 cert);
        ERR_clear_error();
        return DHPS_E_CONFIG;
    }
    return 0;
}

static int load_ca(SSL_CTX *ctx, const char *ca, char *err, size_t errlen)
{
    int rc = readable("tls ca file", ca, err, errlen);
    if (rc)
        return rc;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return cfail(err, errlen, DHPS_E_CONFIG, "tls ca file %s: no PEM certificate in it "
                     "(%s)", ca, NULL);
    return 0;
}

int rpc_tls_ctx_server(const char *cert, const char *key, const char *ca, int verify,
                       SSL_CTX **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!cert || !key || (verify != DHPS_RPC_TLS_VERIFY_NONE && !ca) ||
        verify < DHPS_RPC_TLS_VERIFY_NONE || verify > DHPS_RPC_TLS_VERIFY_REQUIRED) {
        snprintf(err, errlen, "tls: a server needs a cert and a key file, and a ca file to "
                 "verify clients");
        return DHPS_E_CONFIG;
    }
    SSL_CTX *ctx = ctx_new(true);
    if (!ctx)
        return -ENOMEM;
    int rc = load_pair(ctx, cert, key, err, errlen);
    if (!rc && ca)
        rc = load_ca(ctx, ca, err, errlen);
    if (!rc && verify != DHPS_RPC_TLS_VERIFY_NONE) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names); /* owned by ctx */
        ERR_clear_error();
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (verify == DHPS_RPC_TLS_VERIFY_REQUIRED
                                                       ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                       : 0), NULL);
    }
    if (rc) {
        SSL_CTX_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int rpc_tls_ctx_client(const char *ca, const char *cert, const char *key, SSL_CTX **out,
                       char *err, size_t errlen)
{
    *out = NULL;
    if (!ca || !cert != !key) {
        snprintf(err, errlen, "tls: a client needs a ca file, and a cert with its key or "
                 "neither");
        return DHPS_E_CONFIG;
    }
    SSL_CTX *ctx = ctx_new(false);
    if (!ctx)
        return -ENOMEM;
    int rc = load_ca(ctx, ca, err, errlen);
    if (!rc && cert)
        rc = load_pair(ctx, cert, key, err, errlen);
    if (rc) {
        SSL_CTX_free(ctx);
        return rc;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    *out = ctx;
    return 0;
}

int dhps_rpc_tls_check(const char *cert_file, const char *key_file, const char *ca_file,
                       char *err, size_t errlen)
{
    SSL_CTX *ctx = NULL;
    int rc;
    if (!cert_file != !key_file) {
        snprintf(err, errlen, "tls: a cert file needs its key file and a key file its cert");
        return DHPS_E_CONFIG;
    }
    if (cert_file)
        rc = rpc_tls_ctx_server(cert_file, key_file, ca_file,
                                ca_file ? DHPS_RPC_TLS_VERIFY_OPTIONAL : DHPS_RPC_TLS_VERIFY_NONE,
                                &ctx, err, errlen);
    else if (ca_file)
        rc = rpc_tls_ctx_client(ca_file, NULL, NULL, &ctx, err, errlen);
    else
        rc = 0;
    SSL_CTX_free(ctx);
    return rc;
}

/* ---- connections ------------------------------------------------------------------- */

int rpc_tls_new_bio(SSL_CTX *ctx, BIO *rbio, BIO *wbio, bool server, const char *name,
                    const char *ip, rpc_tls **out)
{
    *out = NULL;
    rpc_tls *t = calloc(1, sizeof *t);
    SSL *ssl = t ? SSL_new(ctx) : NULL;
    if (!ssl) {
        free(t);
        BIO_free(rbio);
        if (wbio != rbio)
            BIO_free(wbio);
        return -ENOMEM;
    }
    SSL_set_bio(ssl, rbio, wbio);
    t->ssl = ssl;
    t->server = server;
    if (server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = 1;
        if (name && *name)
            ok = SSL_set1_host(ssl, name) == 1 && SSL_set_tlsext_host_name(ssl, name) == 1;
        else if (ip && *ip)
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, ip) == 1;
        if (!ok) {
            ERR_clear_error();
            rpc_tls_free(t);
            return -EINVAL;
        }
    }
    *out = t;
    return 0;
}

int rpc_tls_new(SSL_CTX *ctx, int fd, bool server, const char *name, const char *ip,
                rpc_tls **out)
{
    *out = NULL;
    pthread_once(&sock_once, sock_meth_init);
    BIO *b = sock_meth ? BIO_new(sock_meth) : NULL;
    if (!b)
        return -ENOMEM;
    sbio *sb = BIO_get_data(b);
    sb->fd = fd;
    int rc = rpc_tls_new_bio(ctx, b, b, server, name, ip, out); /* one reference: SSL's */
    if (rc == 0)
        (*out)->sb = sb;
    return rc;
}

void rpc_tls_free(rpc_tls *t)
{
    if (!t)
        return;
    if (SSL_is_init_finished(t->ssl) &&
        !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)) {
        (void)SSL_shutdown(t->ssl); /* one try, non-blocking: close_notify if it fits */
        if (t->sb)
            (void)sb_push(t->sb);
    }
    ERR_clear_error();
    SSL_free(t->ssl); /* and its BIOs */
    free(t);
}

int rpc_tls_handshake(rpc_tls *t)
{
    ERR_clear_error();
    errno = 0;
    t->want_write = t->want_read = false;
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        t->want_write = true;
        return 0;
    }
    return fail(t, e, true);
}

/* After a read: what the session wrote meanwhile (a key update's answer) goes out. */
static void read_flush(rpc_tls *t)
{
    if (t->sb && t->sb->len > t->sb->off && sb_push(t->sb) == -EAGAIN)
        t->want_write = true;
}

long rpc_tls_read(rpc_tls *t, void *buf, size_t n)
{
    size_t got = 0;
    ERR_clear_error();
    errno = 0;
    t->want_write = false;
    if (SSL_read_ex(t->ssl, buf, n, &got) == 1) {
        read_flush(t);
        return (long)got;
    }
    int e = SSL_get_error(t->ssl, 0);
    read_flush(t);
    if (e == SSL_ERROR_WANT_READ)
        return -EAGAIN;
    if (e == SSL_ERROR_WANT_WRITE) {
        t->want_write = true;
        return -EAGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return 0;
    }
    return fail(t, e, false);
}

long rpc_tls_write(rpc_tls *t, const void *buf, size_t n)
{
    /* SSL_write returns after each record in partial-write mode: loop here, so the BIO
     * gathers the records of the whole buffer and they go out in one send() */
    size_t total = 0;
    t->want_read = false;
    while (total < n) {
        size_t done = 0;
        ERR_clear_error();
        errno = 0;
        if (SSL_write_ex(t->ssl, (const uint8_t *)buf + total, n - total, &done) == 1) {
            total += done;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            t->want_write = e == SSL_ERROR_WANT_WRITE;
            t->want_read = e == SSL_ERROR_WANT_READ;
            ERR_clear_error();
            if (total)
                break; /* what was taken is sent below; the rest waits */
            return -EAGAIN;
        }
        return fail(t, e, false);
    }
    int r = rpc_tls_flush(t);
    return r == 0 || r == -EAGAIN ? (long)total : r;
}

int rpc_tls_flush(rpc_tls *t)
{
    if (!t->sb || t->sb->len == t->sb->off)
        return 0;
    int r = sb_push(t->sb);
    if (r == -EAGAIN)
        t->want_write = true;
    return r;
}

bool rpc_tls_pending(const rpc_tls *t) { return SSL_has_pending(t->ssl) == 1; }

bool rpc_tls_unsent(const rpc_tls *t) { return t->sb && t->sb->len > t->sb->off; }

void rpc_tls_hold(rpc_tls *t, bool on)
{
    if (t->sb)
        t->sb->hold = on;
}

int rpc_tls_binding(rpc_tls *t, uint8_t out[RPC_TLS_BIND])
{
    static const char label[] = "EXPORTER-dhps-rpc-hello";
    if (SSL_export_keying_material(t->ssl, out, RPC_TLS_BIND, label, sizeof label - 1, NULL, 0,
                                   0) != 1) {
        ERR_clear_error();
        snprintf(t->err, sizeof t->err, "no keying material to bind the hello to");
        return DHPS_E_TLS;
    }
    return 0;
}

void rpc_tls_peer_name(const rpc_tls *t, char *out, size_t cap)
{
    if (cap)
        out[0] = 0;
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (x && cap)
        X509_NAME_oneline(X509_get_subject_name(x), out, (int)cap);
}

/* ---- policy (rpc.h) ---------------------------------------------------------------- */

const char *dhps_rpc_tls_policy_name(int policy)
{
    switch (policy) {
    case DHPS_RPC_TLS_OFF: return "off";
    case DHPS_RPC_TLS_CROSS_AZ: return "cross_az";
    case DHPS_RPC_TLS_ALWAYS: return "always";
    default: return "?";
    }
}

int dhps_rpc_tls_policy_parse(const char *s)
{
    for (int p = DHPS_RPC_TLS_OFF; s && p <= DHPS_RPC_TLS_ALWAYS; p++)
        if (!strcmp(s, dhps_rpc_tls_policy_name(p)))
            return p;
    return -EINVAL;
}

bool dhps_rpc_tls_wanted(int policy, const char *my_az, const char *peer_az)
{
    if (policy == DHPS_RPC_TLS_ALWAYS)
        return true;
    if (policy != DHPS_RPC_TLS_CROSS_AZ)
        return false;
    return !my_az || !*my_az || !peer_az || !*peer_az || strcmp(my_az, peer_az) != 0;
}

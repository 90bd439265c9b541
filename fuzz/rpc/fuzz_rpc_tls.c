/* Fuzz TLS-wrapped framing through the code the rpc server runs: an in-memory TLS pair
 * (memory BIOs; certificates made at start-up by tests/common/test_certs.h and loaded
 * with the library's own context loaders) around a server-side connection.
 *
 * The first input byte picks the mode, the rest is the payload:
 *   0  raw bytes to the server before its handshake ends (the acceptor's step,
 *      rpc_tls_handshake), as a hostile peer's ClientHello and records;
 *   1  raw bytes injected under an established session (forged, truncated or replayed
 *      records) and read by the connection's receive path (rpc_tcp_ops.rx over TLS);
 *   2  plaintext an authenticated peer sends inside the session: with bit 0x10 of the
 *      mode byte, first read as the client hello (rpc_hio_read over TLS, the acceptor's
 *      exact read), then as frames by the connection's receive path; requests are
 *      answered (reserve, commit, flush through TLS) and the client side reads the
 *      answers back as frames.
 * Bit 0x20 picks a large max message (256 KiB), so that a frame header can make the
 * receive buffer grow. Checks: no crash or sanitizer report, return codes from the
 * documented set, delivered frames within bounds, answers that parse. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "test_certs.h"

static SSL_CTX *sctx, *cctx;

static int init(void)
{
    char dir[] = "/tmp/fuzz-rpc-tls-XXXXXX", a[64], b[64], err[600];
    if (!mkdtemp(dir) || test_certs_make(dir))
        return -1;
    snprintf(a, sizeof a, "%s/server.pem", dir);
    snprintf(b, sizeof b, "%s/server.key", dir);
    int rc = rpc_tls_ctx_server(a, b, NULL, DHPS_RPC_TLS_VERIFY_NONE, &sctx, err, sizeof err);
    snprintf(a, sizeof a, "%s/ca.pem", dir);
    if (!rc)
        rc = rpc_tls_ctx_client(a, NULL, NULL, &cctx, err, sizeof err);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0 || rc) {
        fprintf(stderr, "fuzz_rpc_tls: %s\n", rc ? err : "rm failed");
        return -1;
    }
    return 0;
}

typedef struct pair {
    BIO *c_in, *c_out, *s_in, *s_out; /* c_out -> s_in, s_out -> c_in */
    rpc_tls *c, *s;
} pair;

/* Move what each side wrote to the other. */
static void carry(pair *p)
{
    uint8_t buf[4096];
    int n;
    while ((n = BIO_read(p->c_out, buf, sizeof buf)) > 0)
        BIO_write(p->s_in, buf, n);
    while ((n = BIO_read(p->s_out, buf, sizeof buf)) > 0)
        BIO_write(p->c_in, buf, n);
}

static void pair_new(pair *p)
{
    p->c_in = BIO_new(BIO_s_mem());
    p->c_out = BIO_new(BIO_s_mem());
    p->s_in = BIO_new(BIO_s_mem());
    p->s_out = BIO_new(BIO_s_mem());
    if (rpc_tls_new_bio(cctx, p->c_in, p->c_out, false, NULL, "127.0.0.1", &p->c) ||
        rpc_tls_new_bio(sctx, p->s_in, p->s_out, true, NULL, NULL, &p->s))
        abort();
}

/* A full handshake between the two ends. */
static void handshake(pair *p)
{
    int hc = 0, hs = 0;
    for (int i = 0; i < 8 && (hc != 1 || hs != 1); i++) {
        if (hc != 1)
            hc = rpc_tls_handshake(p->c);
        if (hs != 1)
            hs = rpc_tls_handshake(p->s);
        carry(p);
    }
    if (hc != 1 || hs != 1)
        abort(); /* our own certificates and contexts: must work */
}

static bool known_rc(long r)
{
    return r == DHPS_E_MALFORMED || r == DHPS_E_UNREACHABLE || r == DHPS_E_TLS ||
           r == DHPS_E_VERSION || r == DHPS_E_BUSY || r == -ENOMEM || r == 0 || r == 1;
}

/* The server's frame handler, reduced to what the transport sees: a request is answered
 * with its own payload (reserve + commit, as serve_frame does); anything else a client
 * may not send closes the connection. */
static int on_frame(void *arg, conn *c, int via, const rpc_frame *f, const uint8_t *payload)
{
    (void)arg;
    if (via != DHPS_RPC_TCP || f->len > c->max_msg)
        abort();
    if (f->type == RPC_F_DOORBELL)
        return 0;
    if (f->type != RPC_F_REQ)
        return DHPS_E_MALFORMED;
    uint8_t *r = rpc_tcp_ops.reserve(c, f->len);
    if (!r)
        return -ENOMEM;
    memcpy(r, payload, f->len);
    rpc_frame resp = {.type = RPC_F_RESP, .id = f->id, .method = f->method, .len = f->len};
    rpc_tcp_ops.commit(c, &resp);
    return 0;
}

/* The client end reads the server's answers: whole frames, responses only. */
static void read_answers(pair *p, uint32_t max_msg)
{
    static uint8_t buf[(256u << 10) + 4096];
    size_t len = 0;
    for (;;) {
        long r = rpc_tls_read(p->c, buf + len, sizeof buf - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        size_t off = 0;
        for (;;) {
            rpc_frame f;
            long n = rpc_frame_parse(buf + off, len - off, max_msg, false, &f);
            if (n < 0 || (n > 0 && f.type != RPC_F_RESP))
                abort(); /* we wrote them: they parse */
            if (n == 0)
                break;
            off += (size_t)n;
        }
        memmove(buf, buf + off, len - off);
        len -= off;
        if (len == sizeof buf)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready)
        ready = init() ? -1 : 1;
    if (ready < 0)
        abort();
    if (size < 1)
        return 0;
    int mode = data[0] & 0x0f;
    bool hello_first = data[0] & 0x10;
    uint32_t max_msg = data[0] & 0x20 ? 256u << 10 : 4096u;
    data++, size--;
    pair p;
    pair_new(&p);
    if (mode == 0) {
        if (size)
            BIO_write(p.s_in, data, (int)size);
        for (int i = 0; i < 4; i++) {
            int r = rpc_tls_handshake(p.s);
            if (r != 0 && r != 1 && r != DHPS_E_TLS)
                abort();
            if (r != 0)
                break;
        }
        rpc_tls_free(p.s);
        rpc_tls_free(p.c);
        return 0;
    }
    handshake(&p);
    uint8_t bind_c[RPC_TLS_BIND], bind_s[RPC_TLS_BIND];
    if (rpc_tls_binding(p.c, bind_c) || rpc_tls_binding(p.s, bind_s) ||
        memcmp(bind_c, bind_s, RPC_TLS_BIND))
        abort(); /* both ends export the same keying material */
    if (mode == 1) {
        if (size)
            BIO_write(p.s_in, data, (int)size);
    } else {
        for (size_t off = 0; off < size;) {
            long w = rpc_tls_write(p.c, data + off, size - off);
            if (w <= 0)
                abort();
            off += (size_t)w;
        }
        carry(&p);
    }
    conn c;
    if (conn_init(&c, -1, p.s, max_msg, true)) /* owns p.s from here */
        abort();
    long r = 1;
    if (mode == 2 && hello_first) {
        rpc_hio io;
        rpc_hello m;
        memset(&io, 0, sizeof io);
        r = rpc_hio_read(&io, -1, c.tls, &m);
        if (!known_rc(r))
            abort();
    }
    for (int turn = 0; r > 0 && turn < 4; turn++) {
        r = rpc_tcp_ops.rx(&c, on_frame, NULL);
        if (r < 0 && !known_rc(r))
            abort();
        if (c.tcp_dirty && rpc_tcp_ops.flush(&c) == 0) {
            carry(&p);
            read_answers(&p, max_msg);
        }
    }
    conn_fini(&c); /* frees the server end */
    rpc_tls_free(p.c);
    return 0;
}

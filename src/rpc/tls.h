/*
 * Private: TLS (OpenSSL 3) under the rpc library's TCP connections (docs/rpc.md §4 "TLS").
 *
 * A connection is plain or TLS for its whole life. TLS sits below the byte streams the
 * TCP transport already has: the hello (rpc_hio) and the frame send and receive buffers
 * go through rpc_tls_read / rpc_tls_write instead of recv / send, non-blocking, with
 * OpenSSL's WANT_READ / WANT_WRITE turned into the epoll interest the loops arm
 * (want_read, want_write below).
 *
 * Contexts: TLS 1.3 only; no compression; no renegotiation (1.3 has none, and the option
 * is set); no session tickets or cache, so no resumption: every connection runs a full
 * handshake, bounded by hello_timeout_ms at the acceptor like the hello; AES-128-GCM
 * preferred (then AES-256-GCM, ChaCha20-Poly1305); partial writes and a moving write
 * buffer (the TCP send buffer may compact or grow between two tries of one write);
 * buffers released while a connection is idle (an idle TLS connection holds no record
 * buffers); an EOF without close_notify reads as EOF (frames are self-delimiting: a cut
 * inside a frame is still seen, and refused, by the frame parser).
 *
 * System calls. Sockets are driven through a BIO of our own that sends with MSG_NOSIGNAL
 * and MSG_DONTWAIT and receives with MSG_DONTWAIT, as the plain path does (a peer that
 * resets a connection raises no SIGPIPE in the embedding process). It gathers the
 * records of one write and sends them with one send(), and the session reads ahead (one
 * recv() takes what the socket has, up to RPC_TLS_READ_BUF): a 64 KiB call costs about
 * the plain path's system calls (measured: 10 sends and 22 receives per 64 KiB round
 * trip before, 2 and 8 after). Read-ahead means the session may hold whole records no
 * socket event will announce: the receive path reads until the session is empty
 * (WANT_READ) and, past its per-turn bound, finishes what is buffered with socket reads
 * held off (rpc_tls_hold). The fuzz target drives the same code over memory BIOs
 * (rpc_tls_new_bio).
 *
 * Binding. rpc_tls_binding exports 32 bytes of keying material (RFC 8446 §7.5, label
 * "EXPORTER-dhps-rpc-hello"); both ends mix them into the hello's HMAC proofs
 * (rpc_proof_tls), so a proof made inside one TLS session does not check inside another:
 * a TLS-terminating relay that holds a certificate the client trusts cannot pass the
 * hello on to a server.
 */
#ifndef DHPS_RPC_TLS_H
#define DHPS_RPC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#define RPC_TLS_BIND 32u         /* bytes of keying material bound into the hello */
#define RPC_TLS_HANDSHAKE 0x16u  /* first byte of a TLS handshake record (a ClientHello) */
#define RPC_TLS_RECORD_MAX 16384u /* most plaintext bytes in one record (RFC 8446 §5.1) */
#define RPC_TLS_READ_BUF (64u << 10) /* the session's read-ahead buffer (while it holds bytes) */

struct sbio;

typedef struct rpc_tls {
    SSL *ssl;
    struct sbio *sb; /* the socket BIO's state (rpc_tls_new), NULL over other BIOs */
    bool server;
    bool want_write; /* the last read or handshake step waits for room in the socket:
                        arm EPOLLOUT and call it again then */
    bool want_read;  /* the last write waits for bytes from the peer: keep EPOLLIN armed
                        and write again after reading */
    char err[120];   /* why the last failed call failed (for the log line) */
} rpc_tls;

/* Server context: certificate chain and key (both required), ca (NULL: client
 * certificates are not asked for) and verify (DHPS_RPC_TLS_VERIFY_*). 0 and *out, or
 * DHPS_E_CONFIG with one line in err naming the file and why, or -ENOMEM. */
int rpc_tls_ctx_server(const char *cert, const char *key, const char *ca, int verify,
                       SSL_CTX **out, char *err, size_t errlen);
/* Client context: ca verifies servers (required); cert and key (both or neither) are
 * shown to servers that ask. Same returns. */
int rpc_tls_ctx_client(const char *ca, const char *cert, const char *key, SSL_CTX **out,
                       char *err, size_t errlen);

/* A TLS endpoint on socket fd (not owned), as a server or a client. A client checks the
 * server's certificate against name (a DNS name, also sent as SNI) when given, else
 * against ip (the numeric address dialled: an IP SAN). 0 and *out, or -ENOMEM. */
int rpc_tls_new(SSL_CTX *ctx, int fd, bool server, const char *name, const char *ip,
                rpc_tls **out);
/* The same over two BIOs (owned from now on, also on failure): the fuzz target's memory
 * pair. */
int rpc_tls_new_bio(SSL_CTX *ctx, BIO *rbio, BIO *wbio, bool server, const char *name,
                    const char *ip, rpc_tls **out);
/* Send close_notify if the session is healthy (best effort, never blocks) and free.
 * NULL allowed. */
void rpc_tls_free(rpc_tls *t);

/* One step of the handshake: 1 done, 0 waiting (want_write says for what), DHPS_E_TLS
 * (t->err says why: certificate not trusted or for another name, the peer closed or sent
 * an alert, not TLS). */
int rpc_tls_handshake(rpc_tls *t);

/* Read up to n bytes: > 0 bytes read, 0 the peer closed, -EAGAIN nothing now (want_write
 * set when the read waits for the socket to take bytes), DHPS_E_UNREACHABLE (socket
 * error), DHPS_E_TLS (the peer sent an alert, e.g. refused our certificate), or
 * DHPS_E_MALFORMED (bytes that are not a valid record of this session). */
long rpc_tls_read(rpc_tls *t, void *buf, size_t n);
/* Write up to n bytes (n > 0): > 0 bytes taken (and sent, or gathered for the socket:
 * then want_write is set and rpc_tls_flush sends the rest), -EAGAIN none now (want_read
 * set when the write waits for bytes from the peer), DHPS_E_UNREACHABLE, DHPS_E_TLS,
 * DHPS_E_MALFORMED. A retry after -EAGAIN must offer at least the same bytes again (they
 * may have moved). */
long rpc_tls_write(rpc_tls *t, const void *buf, size_t n);
/* Send records gathered by earlier writes: 0 none left, -EAGAIN some wait for room in
 * the socket (want_write set), DHPS_E_UNREACHABLE. */
int rpc_tls_flush(rpc_tls *t);
/* Bytes the session holds that no socket event will announce: records read ahead,
 * plaintext not read yet, or part of a record (the frame timeout counts that like a
 * partial frame). */
bool rpc_tls_pending(const rpc_tls *t);
/* While on, reads take only what the session has buffered, never the socket. */
void rpc_tls_hold(rpc_tls *t, bool on);
/* Records gathered by writes and not sent yet (rpc_tls_flush sends them). */
bool rpc_tls_unsent(const rpc_tls *t);
/* The session's binding (see above). 0 or DHPS_E_TLS. */
int rpc_tls_binding(rpc_tls *t, uint8_t out[RPC_TLS_BIND]);
/* Subject of the peer's certificate, for log lines ("" without one). */
void rpc_tls_peer_name(const rpc_tls *t, char *out, size_t cap);

#endif

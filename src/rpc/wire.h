/*
 * Private: the rpc wire format. Pure functions over byte buffers (no I/O, no global
 * state), so the fuzz targets in fuzz/rpc call them directly. All integers are
 * little-endian on the wire. Layouts are documented in docs/rpc.md.
 */
#ifndef DHPS_RPC_WIRE_H
#define DHPS_RPC_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- frames ---------------------------------------------------------------------- */

#define RPC_FRAME_MAGIC 0xD4B5u
#define RPC_FRAME_HDR 24u

enum rpc_frame_type {
    RPC_F_REQ = 1,      /* request: method, id, payload */
    RPC_F_RESP = 2,     /* response: id, status, payload (empty when status != 0) */
    RPC_F_DOORBELL = 3, /* shm wake-up on the TCP socket, no payload */
    RPC_F_PAD = 4,      /* shm ring filler up to the ring's end, never on TCP */
    RPC_F_CTRL = 5,     /* TCP only: verbs re-promotion; payload = op u32 + rpc_verbs_info */
};
#define RPC_FLAG_RETRY 0x01u /* request re-sent on TCP after a verbs failure */
#define RPC_CTRL_BYTES 44u
enum { RPC_CTRL_PROMOTE = 1, RPC_CTRL_PROMOTE_OK = 2, RPC_CTRL_PROMOTE_NO = 3 };

typedef struct rpc_frame {
    uint8_t type;
    uint8_t flags;
    uint16_t method;
    uint32_t len;    /* payload bytes following the header */
    uint64_t id;
    int32_t status;
} rpc_frame;

/* Encode a header into 24 bytes at out. */
void rpc_frame_encode(const rpc_frame *f, uint8_t *out);

/*
 * Parse one frame from buf[0..n). Returns the total frame size (header + payload, > 0)
 * when a whole frame is there, 0 when more bytes are needed, or DHPS_E_MALFORMED
 * (bad magic, unknown type, reserved bits set, len > max_payload, a doorbell with a
 * payload, a PAD longer than max_payload + 8, a request with a status, a response
 * with both a status and a payload, a PAD when !allow_pad).
 * *f is set when the header is valid (return != DHPS_E_MALFORMED and n >= 24).
 */
long rpc_frame_parse(const uint8_t *buf, size_t n, uint32_t max_payload, bool allow_pad,
                     rpc_frame *f);

/* ---- hello ----------------------------------------------------------------------- */

#define RPC_HELLO_MAGIC 0x48504844u /* "DHPH" */
#define RPC_HELLO_VERSION 3u        /* newest; 1 = TCP only (no capabilities) */
/* Oldest version a handshake accepts. Versions 1-2 sent the server's proof in its hello,
 * before the client had proved anything: an offline guessing oracle for the secret to
 * anyone who can connect. Since 3 the server proves itself only in its ACCEPT, after
 * the client's proof checked out. Older peers are refused (DHPS_E_VERSION). */
#define RPC_HELLO_MIN_VERSION 3u
#define RPC_HELLO_HDR 12u
#define RPC_HELLO_MAX_BODY 1024u
#define RPC_NONCE 32u
#define RPC_HOST_ID 16u
#define RPC_MAC 32u
#define RPC_SHM_NAME 48u

enum rpc_hello_kind {
    RPC_H_CLIENT_HELLO = 1,
    RPC_H_SERVER_HELLO = 2,
    RPC_H_CLIENT_PROOF = 3,
    RPC_H_ACCEPT = 4,
    RPC_H_REJECT = 5,
};

/* Verbs endpoint description: where to connect an RC QP and how many receives the
 * sender of this description keeps posted. No memory keys: the verbs path uses
 * SEND/RECV only, so no region is remotely accessible. */
typedef struct rpc_verbs_info {
    uint8_t gid[16];
    uint32_t qpn, psn;
    uint32_t slots;        /* receive slots posted (the peer's send credits) */
    uint32_t inflight_log2;/* client: log2(max_inflight), sizes the server's dedupe table */
    uint64_t rsvd;
} rpc_verbs_info;

typedef struct rpc_hello {
    uint16_t version;
    uint8_t kind;
    /* CLIENT_HELLO / SERVER_HELLO */
    uint32_t caps;       /* transport mask offered */
    uint32_t max_msg;
    uint8_t nonce[RPC_NONCE];
    uint8_t host_id[RPC_HOST_ID];
    /* CLIENT_PROOF; ACCEPT (version >= 3); SERVER_HELLO (versions 1-2 only) */
    uint8_t proof[RPC_MAC];
    /* CLIENT_PROOF: the transport wanted and its details */
    uint32_t want;
    uint64_t shm_bytes, shm_cookie;
    char shm_name[RPC_SHM_NAME]; /* NUL-terminated, validated */
    rpc_verbs_info verbs;
    /* ACCEPT / REJECT */
    int32_t status;
    uint32_t transport;
} rpc_hello;

/* Encode h (per its kind and version) into out (cap bytes). Returns bytes written,
 * or -1 when cap is too small. */
long rpc_hello_encode(const rpc_hello *h, uint8_t *out, size_t cap);

/*
 * Parse one hello message from buf[0..n). Returns its size (> 0), 0 when more bytes
 * are needed, DHPS_E_MALFORMED (bad magic, kind, body length beyond the limit or below
 * the kind's minimum, unterminated / unsafe shm name, unknown transport), or
 * DHPS_E_VERSION (version 0). Versions above ours parse as ours (trailing body bytes
 * ignored); version 1 hellos carry no capabilities (caps forced to TCP only).
 */
long rpc_hello_parse(const uint8_t *buf, size_t n, rpc_hello *h);

/* Encode / parse a CTRL payload (RPC_CTRL_BYTES). parse returns 0 or DHPS_E_MALFORMED. */
void rpc_ctrl_encode(uint32_t op, const rpc_verbs_info *v, uint8_t *out);
int rpc_ctrl_parse(const uint8_t *p, size_t n, uint32_t *op, rpc_verbs_info *v);

/* HMAC-SHA256 proofs. role 'c' (client proof, CLIENT_PROOF) covers the version, both
 * nonces and the client's transport offer (offer = the CLIENT_PROOF). role 'a' (server
 * proof, ACCEPT, version >= 3) covers the version, both nonces, both caps, max_msg and
 * host ids, and the accepted transport with its verbs block (offer = the ACCEPT). role
 * 's' is the versions 1-2 server proof (the 'a' fields without the ACCEPT's; offer
 * unused), kept for the wire tests. */
void rpc_proof(const void *key, size_t keylen, char role, const rpc_hello *ch,
               const rpc_hello *sh, const rpc_hello *offer, uint8_t out[RPC_MAC]);

/* rpc_proof, also covering bind (RPC_BIND bytes of keying material exported from the
 * TLS session the hello runs in; NULL on plain TCP, then equal to rpc_proof). */
#define RPC_BIND 32u
void rpc_proof_tls(const void *key, size_t keylen, char role, const rpc_hello *ch,
                   const rpc_hello *sh, const rpc_hello *offer, const uint8_t *bind,
                   uint8_t out[RPC_MAC]);

/* Constant-time compare of two MACs. */
bool rpc_mac_equal(const uint8_t *a, const uint8_t *b);

#endif

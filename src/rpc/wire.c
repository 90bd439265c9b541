/* rpc wire format: frame and hello encode/parse (pure), HMAC proofs. */
#include "wire.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dhps/error.h"
#include "dhps/rpc.h"

/* little-endian helpers: byte by byte, so they are alignment- and host-independent */
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- frames ---------------------------------------------------------------------- */

/* header: u16 magic | u8 type | u8 flags | u32 len | u64 id | u16 method | u16 rsvd |
 *         i32 status  (24 bytes) */
void rpc_frame_encode(const rpc_frame *f, uint8_t *out)
{
    put16(out, RPC_FRAME_MAGIC);
    out[2] = f->type;
    out[3] = f->flags;
    put32(out + 4, f->len);
    put64(out + 8, f->id);
    put16(out + 16, f->method);
    put16(out + 18, 0);
    put32(out + 20, (uint32_t)f->status);
}

long rpc_frame_parse(const uint8_t *buf, size_t n, uint32_t max_payload, bool allow_pad,
                     rpc_frame *f)
{
    if (n < RPC_FRAME_HDR)
        return 0;
    if (get16(buf) != RPC_FRAME_MAGIC || get16(buf + 18) != 0 || (buf[3] & ~RPC_FLAG_RETRY))
        return DHPS_E_MALFORMED;
    f->type = buf[2];
    f->flags = buf[3];
    f->len = get32(buf + 4);
    f->id = get64(buf + 8);
    f->method = get16(buf + 16);
    f->status = (int32_t)get32(buf + 20);
    switch (f->type) {
    case RPC_F_REQ:
        if (f->status != 0 || f->len > max_payload)
            return DHPS_E_MALFORMED;
        break;
    case RPC_F_RESP:
        if (f->flags ||f->len > max_payload || (f->status != 0 && f->len != 0) || f->status > 0)
            return DHPS_E_MALFORMED;
        break;
    case RPC_F_CTRL:
        if (f->flags || f->len != RPC_CTRL_BYTES || f->status != 0 || allow_pad)
            return DHPS_E_MALFORMED;
        break;
    case RPC_F_DOORBELL:
        if (f->len != 0 || f->status != 0 || f->flags)
            return DHPS_E_MALFORMED;
        break;
    case RPC_F_PAD:
        /* a pad fills less than one aligned frame; the ring also checks it ends at
         * the ring's end */
        if (!allow_pad || f->status != 0 || f->flags || f->len > max_payload + 8)
            return DHPS_E_MALFORMED;
        break;
    default:
        return DHPS_E_MALFORMED;
    }
    size_t total = RPC_FRAME_HDR + (size_t)f->len;
    if (n < total)
        return 0;
    return (long)total;
}

/* ---- hello ----------------------------------------------------------------------- */

#define CH_BODY 56u   /* caps, max_msg, nonce, host_id */
#define SH_BODY 88u   /* + proof */
#define CP_BODY 144u  /* proof, want, rsvd, shm_bytes, cookie, name, verbs */
#define AC_BODY 48u   /* status, transport, verbs */
#define AC_BODY3 80u  /* + server proof (version >= 3) */
#define RJ_BODY 8u    /* status, rsvd */
#define VERBS_BYTES 40u

static uint32_t body_min(uint8_t kind)
{
    switch (kind) {
    case RPC_H_CLIENT_HELLO: return CH_BODY;
    case RPC_H_SERVER_HELLO: return SH_BODY;
    case RPC_H_CLIENT_PROOF: return CP_BODY;
    case RPC_H_ACCEPT: return AC_BODY;
    case RPC_H_REJECT: return RJ_BODY;
    default: return 0;
    }
}

static void put_verbs(uint8_t *p, const rpc_verbs_info *v)
{
    memcpy(p, v->gid, 16);
    put32(p + 16, v->qpn);
    put32(p + 20, v->psn);
    put32(p + 24, v->slots);
    put32(p + 28, v->inflight_log2);
    put64(p + 32, v->rsvd);
}

static void get_verbs(const uint8_t *p, rpc_verbs_info *v)
{
    memcpy(v->gid, p, 16);
    v->qpn = get32(p + 16);
    v->psn = get32(p + 20);
    v->slots = get32(p + 24);
    v->inflight_log2 = get32(p + 28);
    v->rsvd = get64(p + 32);
}

void rpc_ctrl_encode(uint32_t op, const rpc_verbs_info *v, uint8_t *out)
{
    put32(out, op);
    put_verbs(out + 4, v);
}

int rpc_ctrl_parse(const uint8_t *p, size_t n, uint32_t *op, rpc_verbs_info *v)
{
    if (n != RPC_CTRL_BYTES)
        return DHPS_E_MALFORMED;
    *op = get32(p);
    get_verbs(p + 4, v);
    if (*op < RPC_CTRL_PROMOTE || *op > RPC_CTRL_PROMOTE_NO || v->slots > 4096 ||
        v->inflight_log2 > 20)
        return DHPS_E_MALFORMED;
    return 0;
}

long rpc_hello_encode(const rpc_hello *h, uint8_t *out, size_t cap)
{
    uint32_t body = body_min(h->kind);
    if (h->kind == RPC_H_ACCEPT && h->version >= 3)
        body = AC_BODY3;
    if (body == 0 || cap < RPC_HELLO_HDR + body)
        return -1;
    memset(out, 0, RPC_HELLO_HDR + body);
    put32(out, RPC_HELLO_MAGIC);
    put16(out + 4, h->version);
    out[6] = h->kind;
    put32(out + 8, body);
    uint8_t *b = out + RPC_HELLO_HDR;
    switch (h->kind) {
    case RPC_H_SERVER_HELLO:
        memcpy(b + CH_BODY, h->proof, RPC_MAC);
        /* fall through */
    case RPC_H_CLIENT_HELLO:
        put32(b, h->caps);
        put32(b + 4, h->max_msg);
        memcpy(b + 8, h->nonce, RPC_NONCE);
        memcpy(b + 40, h->host_id, RPC_HOST_ID);
        break;
    case RPC_H_CLIENT_PROOF:
        memcpy(b, h->proof, RPC_MAC);
        put32(b + 32, h->want);
        put64(b + 40, h->shm_bytes);
        put64(b + 48, h->shm_cookie);
        memcpy(b + 56, h->shm_name, strnlen(h->shm_name, RPC_SHM_NAME - 1));
        put_verbs(b + 104, &h->verbs);
        break;
    case RPC_H_ACCEPT:
        put32(b, (uint32_t)h->status);
        put32(b + 4, h->transport);
        put_verbs(b + 8, &h->verbs);
        if (h->version >= 3)
            memcpy(b + AC_BODY, h->proof, RPC_MAC);
        break;
    case RPC_H_REJECT:
        put32(b, (uint32_t)h->status);
        break;
    }
    return RPC_HELLO_HDR + body;
}

/* A shm name is empty or "/dhps-rpc-" followed by [A-Za-z0-9_-], NUL-terminated. */
static bool shm_name_ok(const char *s)
{
    size_t n = strnlen(s, RPC_SHM_NAME);
    if (n == RPC_SHM_NAME)
        return false;
    if (n == 0)
        return true;
    static const char pfx[] = "/dhps-rpc-";
    if (n <= sizeof pfx - 1 || strncmp(s, pfx, sizeof pfx - 1) != 0)
        return false;
    for (size_t i = sizeof pfx - 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

long rpc_hello_parse(const uint8_t *buf, size_t n, rpc_hello *h)
{
    if (n < RPC_HELLO_HDR)
        return 0;
    if (get32(buf) != RPC_HELLO_MAGIC || buf[7] != 0)
        return DHPS_E_MALFORMED;
    uint16_t ver = get16(buf + 4);
    uint8_t kind = buf[6];
    uint32_t body = get32(buf + 8);
    uint32_t need = body_min(kind);
    if (need == 0 || body < need || body > RPC_HELLO_MAX_BODY)
        return DHPS_E_MALFORMED;
    if (ver == 0)
        return DHPS_E_VERSION;
    if (kind == RPC_H_ACCEPT && ver >= 3 && body < AC_BODY3)
        return DHPS_E_MALFORMED;
    if (n < RPC_HELLO_HDR + (size_t)body)
        return 0;
    memset(h, 0, sizeof *h);
    h->version = ver > RPC_HELLO_VERSION ? RPC_HELLO_VERSION : ver;
    h->kind = kind;
    const uint8_t *b = buf + RPC_HELLO_HDR;
    switch (kind) {
    case RPC_H_SERVER_HELLO:
        memcpy(h->proof, b + CH_BODY, RPC_MAC);
        /* fall through */
    case RPC_H_CLIENT_HELLO:
        h->caps = get32(b) & DHPS_RPC_ALL;
        h->max_msg = get32(b + 4);
        memcpy(h->nonce, b + 8, RPC_NONCE);
        memcpy(h->host_id, b + 40, RPC_HOST_ID);
        if (h->version < 2)
            h->caps = DHPS_RPC_MASK(DHPS_RPC_TCP);
        if (h->max_msg == 0)
            return DHPS_E_MALFORMED;
        break;
    case RPC_H_CLIENT_PROOF:
        memcpy(h->proof, b, RPC_MAC);
        h->want = get32(b + 32);
        h->shm_bytes = get64(b + 40);
        h->shm_cookie = get64(b + 48);
        memcpy(h->shm_name, b + 56, RPC_SHM_NAME);
        get_verbs(b + 104, &h->verbs);
        if (h->want >= DHPS_RPC_NTRANSPORTS || !shm_name_ok(h->shm_name) ||
            h->verbs.slots > 4096 || h->verbs.inflight_log2 > 20)
            return DHPS_E_MALFORMED;
        break;
    case RPC_H_ACCEPT:
        h->status = (int32_t)get32(b);
        h->transport = get32(b + 4);
        get_verbs(b + 8, &h->verbs);
        if (h->version >= 3)
            memcpy(h->proof, b + AC_BODY, RPC_MAC);
        if (h->transport >= DHPS_RPC_NTRANSPORTS || h->status > 0 || h->verbs.slots > 4096)
            return DHPS_E_MALFORMED;
        break;
    case RPC_H_REJECT:
        h->status = (int32_t)get32(b);
        if (h->status >= 0)
            return DHPS_E_MALFORMED;
        break;
    }
    return (long)(RPC_HELLO_HDR + body);
}

void rpc_proof(const void *key, size_t keylen, char role, const rpc_hello *ch,
               const rpc_hello *sh, const rpc_hello *offer, uint8_t out[RPC_MAC])
{
    rpc_proof_tls(key, keylen, role, ch, sh, offer, NULL, out);
}

void rpc_proof_tls(const void *key, size_t keylen, char role, const rpc_hello *ch,
                   const rpc_hello *sh, const rpc_hello *offer, const uint8_t *bind,
                   uint8_t out[RPC_MAC])
{
    uint8_t m[256];
    size_t k = 0;
    memcpy(m, "dhps-rpc ", 9);
    k = 9;
    m[k++] = (uint8_t)role;
    put16(m + k, sh->version);
    k += 2;
    memcpy(m + k, ch->nonce, RPC_NONCE);
    k += RPC_NONCE;
    memcpy(m + k, sh->nonce, RPC_NONCE);
    k += RPC_NONCE;
    if (role == 's' || role == 'a') {
        put32(m + k, ch->caps);
        put32(m + k + 4, sh->caps);
        put32(m + k + 8, ch->max_msg);
        put32(m + k + 12, sh->max_msg);
        k += 16;
        memcpy(m + k, ch->host_id, RPC_HOST_ID);
        k += RPC_HOST_ID;
        memcpy(m + k, sh->host_id, RPC_HOST_ID);
        k += RPC_HOST_ID;
        if (role == 'a') {
            put32(m + k, offer->transport);
            k += 4;
            put_verbs(m + k, &offer->verbs);
            k += VERBS_BYTES;
        }
    } else {
        put32(m + k, offer->want);
        put64(m + k + 4, offer->shm_bytes);
        put64(m + k + 12, offer->shm_cookie);
        k += 20;
        memset(m + k, 0, RPC_SHM_NAME);
        memcpy(m + k, offer->shm_name, strnlen(offer->shm_name, RPC_SHM_NAME - 1));
        k += RPC_SHM_NAME;
        put_verbs(m + k, &offer->verbs);
        k += VERBS_BYTES;
    }
    if (bind) { /* the TLS session's exported keying material */
        memcpy(m + k, "tls", 3);
        memcpy(m + k + 3, bind, RPC_BIND);
        k += 3 + RPC_BIND;
    }
    static const uint8_t nokey = 0;
    unsigned int outlen = RPC_MAC;
    HMAC(EVP_sha256(), keylen ? key : &nokey, (int)keylen, m, k, out, &outlen);
}

bool rpc_mac_equal(const uint8_t *a, const uint8_t *b)
{
    return CRYPTO_memcmp(a, b, RPC_MAC) == 0;
}

/* Request decoding: every length is checked against the message before use. */
#include <string.h>

#include "msg.h"

int srv_msg_decode(uint16_t method, const void *buf, size_t len, srv_msg *m,
                   const char **why)
{
    const uint8_t *p = buf;
    memset(m, 0, sizeof *m);
    m->method = method;
    *why = "";
    if (len < sizeof(dhps_proto_hdr)) {
        *why = "request shorter than the 64-byte header";
        return DHPS_E_MALFORMED;
    }
    dhps_proto_hdr h;
    memcpy(&h, p, sizeof h);
    m->flags = h.flags;
    m->shard = h.shard;
    m->map_version = h.map_version;
    if (h.version != DHPS_PROTO_VERSION) {
        *why = "unsupported protocol version";
        return DHPS_E_VERSION;
    }
    size_t nl = strnlen(h.table, DHPS_TABLE_NAME_MAX);
    if (nl == DHPS_TABLE_NAME_MAX) {
        *why = "table name not NUL-terminated";
        return DHPS_E_MALFORMED;
    }
    for (size_t i = nl; i < DHPS_TABLE_NAME_MAX; i++)
        if (h.table[i]) {
            *why = "table name not NUL-padded";
            return DHPS_E_MALFORMED;
        }
    memcpy(m->table, h.table, DHPS_TABLE_NAME_MAX);
    p += sizeof h;
    len -= sizeof h;
    switch (method) {
    case DHPS_M_LOOKUP: {
        if (h.flags & ~(uint16_t)DHPS_LOOKUP_FP16) {
            *why = "unknown lookup flags";
            return DHPS_E_MALFORMED;
        }
        dhps_proto_lookup l;
        if (len < sizeof l) {
            *why = "lookup request shorter than its header";
            return DHPS_E_MALFORMED;
        }
        memcpy(&l, p, sizeof l);
        m->n = l.n;
        if (l.n > DHPS_PROTO_MAX_KEYS) {
            *why = "batch larger than DHPS_PROTO_MAX_KEYS";
            return DHPS_E_TOOBIG;
        }
        if (len - sizeof l != (size_t)l.n * 8) {
            *why = "lookup length does not match its key count";
            return DHPS_E_MALFORMED;
        }
        m->keys = p + sizeof l;
        return 0;
    }
    case DHPS_M_UPSERT: {
        if (h.flags != DHPS_FP32 && h.flags != DHPS_FP16) {
            *why = "upsert rows must be fp32 (flags 0) or fp16 (flags 1)";
            return DHPS_E_MALFORMED;
        }
        dhps_proto_upsert u;
        if (len < sizeof u) {
            *why = "upsert request shorter than its header";
            return DHPS_E_MALFORMED;
        }
        memcpy(&u, p, sizeof u);
        m->n = u.n;
        m->value_bytes = u.value_bytes;
        m->version = u.version;
        m->ttl = u.ttl;
        if (u.n > DHPS_PROTO_MAX_KEYS) {
            *why = "batch larger than DHPS_PROTO_MAX_KEYS";
            return DHPS_E_TOOBIG;
        }
        if (u.value_bytes == 0 || u.value_bytes > DHPS_SERVER_MAX_DIM * 4u) {
            *why = "upsert value_bytes out of range";
            return DHPS_E_MALFORMED;
        }
        size_t rest = len - sizeof u;
        if (rest != (size_t)u.n * 8 + (size_t)u.n * u.value_bytes) {
            *why = "upsert length does not match n * (8 + value_bytes)";
            return DHPS_E_MALFORMED;
        }
        m->keys = p + sizeof u;
        m->values = m->keys + (size_t)u.n * 8;
        return 0;
    }
    case DHPS_M_DELETE: {
        dhps_proto_delete d;
        if (h.flags) {
            *why = "unknown delete flags";
            return DHPS_E_MALFORMED;
        }
        if (len < sizeof d) {
            *why = "delete request shorter than its header";
            return DHPS_E_MALFORMED;
        }
        memcpy(&d, p, sizeof d);
        m->n = d.n;
        m->version = d.version;
        if (d.n > DHPS_PROTO_MAX_KEYS) {
            *why = "batch larger than DHPS_PROTO_MAX_KEYS";
            return DHPS_E_TOOBIG;
        }
        if (len - sizeof d != (size_t)d.n * 8) {
            *why = "delete length does not match its key count";
            return DHPS_E_MALFORMED;
        }
        m->keys = p + sizeof d;
        return 0;
    }
    case DHPS_M_SYNC_DIGEST: {
        dhps_proto_sync_digest d;
        if (h.flags || len != sizeof d) {
            *why = "sync digest request: bad flags or length";
            return DHPS_E_MALFORMED;
        }
        memcpy(&d, p, sizeof d);
        m->nranges = d.nranges;
        if (d.nranges == 0 || d.nranges > DHPS_PROTO_SYNC_MAX_RANGES || d.reserved) {
            *why = "sync digest: nranges must be 1..DHPS_PROTO_SYNC_MAX_RANGES";
            return DHPS_E_MALFORMED;
        }
        return 0;
    }
    case DHPS_M_SYNC_FETCH: {
        dhps_proto_sync_fetch f;
        if (h.flags || len < sizeof f) {
            *why = "sync fetch request: bad flags or shorter than its header";
            return DHPS_E_MALFORMED;
        }
        memcpy(&f, p, sizeof f);
        m->session = f.session;
        m->offset = f.offset;
        m->nranges = f.nranges;
        m->max_bytes = f.max_bytes;
        m->min_version = f.min_version;
        if (!f.session || f.max_bytes < 4096 || f.nranges > DHPS_PROTO_SYNC_MAX_RANGES) {
            *why = "sync fetch: session 0, max_bytes < 4096 or too many ranges";
            return DHPS_E_MALFORMED;
        }
        if (len - sizeof f != (size_t)(f.nranges + 63) / 64 * 8) {
            *why = "sync fetch length does not match its range mask";
            return DHPS_E_MALFORMED;
        }
        m->range_mask = f.nranges ? p + sizeof f : NULL;
        return 0;
    }
    case DHPS_M_STATS:
    case DHPS_M_SNAPSHOT:
    case DHPS_M_INFO:
        if (len != 0) {
            *why = "trailing bytes after the header";
            return DHPS_E_MALFORMED;
        }
        return 0;
    default:
        *why = "unknown method";
        return DHPS_E_MALFORMED;
    }
}

int srv_msg_check_rows(const srv_msg *m, uint32_t dim, const char **why)
{
    uint32_t want = m->flags == DHPS_FP16 ? dim * 2 : dim * 4;
    if (m->value_bytes != want) {
        *why = "upsert value_bytes does not match the table's dim for the row dtype";
        return DHPS_E_MALFORMED;
    }
    return 0;
}

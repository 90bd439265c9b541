/* dhps server: the update log's identity string. See logid.h. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "logid.h"

static bool safe_byte(unsigned char b)
{
    return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
           b == '.' || b == '_' || b == '~' || b == '-';
}

static bool name_byte(unsigned char b) /* a table name's bytes (config.c's rule) */
{
    return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
           b == '.' || b == '_' || b == '-';
}

/* Append s, percent-encoded, at buf[*o..len). false when it does not fit. */
static bool put_enc(char *buf, size_t len, size_t *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        size_t need = safe_byte(*p) ? 1 : 3;
        if (*o + need >= len)
            return false;
        if (need == 1) {
            buf[(*o)++] = (char)*p;
        } else {
            buf[(*o)++] = '%';
            buf[(*o)++] = hex[*p >> 4];
            buf[(*o)++] = hex[*p & 15];
        }
    }
    return true;
}

static bool put_str(char *buf, size_t len, size_t *o, const char *s)
{
    size_t n = strlen(s);
    if (*o + n >= len)
        return false;
    memcpy(buf + *o, s, n);
    *o += n;
    return true;
}

int srv_logid_encode(const dhps_server_config *c, char *buf, size_t len)
{
    size_t o = 0;
    char num[64];
    if (!len)
        return -ENAMETOOLONG;
    bool ok = put_str(buf, len, &o, SRV_LOGID_PREFIX "1 cluster=") &&
              put_enc(buf, len, &o, c->coord_cluster ? c->coord_cluster : "") &&
              put_str(buf, len, &o, " node=") && put_enc(buf, len, &o, c->node_id);
    snprintf(num, sizeof num, " shards=%u tables=", c->nshards);
    ok = ok && put_str(buf, len, &o, num);
    for (uint32_t i = 0; ok && i < c->ntables; i++) {
        const dhps_server_table_config *t = &c->tables[i];
        snprintf(num, sizeof num, ":%u:%s%s", t->dim, t->dtype == DHPS_FP16 ? "fp16" : "fp32",
                 i + 1 < c->ntables ? "," : "");
        ok = put_str(buf, len, &o, t->name) && put_str(buf, len, &o, num);
    }
    buf[ok ? o : 0] = 0;
    return ok ? (int)o : -ENAMETOOLONG;
}

/* ---- parsing -------------------------------------------------------------------- */

typedef struct cur {
    const char *p, *end;
} cur;

static bool lit(cur *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n))
        return false;
    c->p += n;
    return true;
}

static int hexval(char h)
{
    return h >= '0' && h <= '9' ? h - '0' : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
}

/* A percent-encoded value up to the next ' ' (or the end) into out (cap bytes with the
 * NUL). false on a bad escape, a NUL, a byte that must be escaped, or too long. */
static bool dec(cur *c, char *out, size_t cap)
{
    size_t n = 0;
    while (c->p < c->end && *c->p != ' ') {
        unsigned char b = (unsigned char)*c->p;
        if (b == '%') {
            if (c->end - c->p < 3)
                return false;
            int hi = hexval(c->p[1]), lo = hexval(c->p[2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return false;
            b = (unsigned char)(hi << 4 | lo);
            c->p += 3;
        } else if (safe_byte(b)) {
            c->p++;
        } else {
            return false;
        }
        if (n + 1 >= cap)
            return false;
        out[n++] = (char)b;
    }
    out[n] = 0;
    return true;
}

/* A decimal number in [lo, hi], no sign, no leading zero. */
static bool num(cur *c, uint32_t lo, uint32_t hi, uint32_t *v)
{
    uint64_t x = 0;
    const char *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && c->p - s < 10)
        x = x * 10 + (uint64_t)(*c->p++ - '0');
    if (c->p == s || (*s == '0' && c->p - s > 1) || x < lo || x > hi)
        return false;
    *v = (uint32_t)x;
    return true;
}

const srv_logid_table *srv_logid_table_find(const srv_logid *id, const char *name)
{
    for (uint32_t i = 0; i < id->ntables; i++)
        if (!strcmp(id->tables[i].name, name))
            return &id->tables[i];
    return NULL;
}

int srv_logid_parse(const char *s, size_t len, srv_logid *out, const char **why)
{
    memset(out, 0, sizeof *out);
    cur c = {s, s + len};
    uint32_t v;
    *why = NULL;
    if (!lit(&c, SRV_LOGID_PREFIX)) {
        *why = "does not start with \"" SRV_LOGID_PREFIX "\"";
        return DHPS_E_MALFORMED;
    }
    if (!num(&c, 0, UINT32_MAX, &v) || (c.p < c.end && *c.p != ' ')) {
        *why = "no version number";
        return DHPS_E_MALFORMED;
    }
    if (v != 1) {
        *why = "another version of the identity (this build reads version 1)";
        return DHPS_E_VERSION;
    }
    if (!lit(&c, " cluster=") || !dec(&c, out->cluster, sizeof out->cluster))
        *why = "bad or missing cluster=";
    else if (!lit(&c, " node=") || !dec(&c, out->node, sizeof out->node) || !out->node[0])
        *why = "bad or missing node=";
    else if (!lit(&c, " shards=") || !num(&c, 1, DHPS_SERVER_MAX_SHARDS, &out->nshards))
        *why = "bad or missing shards= (1..65536)";
    else if (!lit(&c, " tables="))
        *why = "missing tables=";
    if (*why)
        return DHPS_E_MALFORMED;
    for (;;) {
        if (out->ntables == DHPS_SERVER_MAX_TABLES) {
            *why = "more than 64 tables";
            return DHPS_E_MALFORMED;
        }
        srv_logid_table *t = &out->tables[out->ntables];
        size_t n = 0;
        while (c.p < c.end && name_byte((unsigned char)*c.p) && n < DHPS_TABLE_NAME_MAX - 1)
            t->name[n++] = *c.p++;
        t->name[n] = 0;
        if (!n || !lit(&c, ":")) {
            *why = "bad table name (1..47 of [A-Za-z0-9_.-], then ':')";
            return DHPS_E_MALFORMED;
        }
        if (srv_logid_table_find(out, t->name)) {
            *why = "a table listed twice";
            return DHPS_E_MALFORMED;
        }
        if (!num(&c, 1, DHPS_SERVER_MAX_DIM, &t->dim) || !lit(&c, ":")) {
            *why = "bad table dim (1..4096)";
            return DHPS_E_MALFORMED;
        }
        if (lit(&c, "fp32")) {
            t->dtype = DHPS_FP32;
        } else if (lit(&c, "fp16")) {
            t->dtype = DHPS_FP16;
        } else {
            *why = "bad table dtype (fp32 or fp16)";
            return DHPS_E_MALFORMED;
        }
        out->ntables++;
        if (c.p == c.end)
            return 0;
        if (!lit(&c, ",")) {
            *why = "bytes after the table list";
            return DHPS_E_MALFORMED;
        }
    }
}

/* s for a message: control bytes and '"' as '?'. */
static void shown(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    for (; *s && n + 1 < cap; s++)
        out[n++] = (unsigned char)*s < 0x20 || *s == 0x7f || *s == '"' ? '?' : *s;
    out[n] = 0;
}

void srv_logid_describe(const srv_logid *id, char *buf, size_t len)
{
    char node[256], cl[64];
    shown(id->node, node, sizeof node);
    shown(id->cluster, cl, sizeof cl);
    if (cl[0])
        snprintf(buf, len, "node \"%s\" of cluster \"%s\" with %u shards", node, cl,
                 id->nshards);
    else
        snprintf(buf, len, "node \"%s\" (no cluster name) with %u shards", node, id->nshards);
}

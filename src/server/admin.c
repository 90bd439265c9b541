/* The /fault admin endpoint's pure parts: body parser, request MAC, JSON and metrics. */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "srv_int.h"

void srv_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
}

/* A parse or auth error: the message into err, DHPS_E_CONFIG as the value. */
#define bad(err, errlen, ...) (srv_errf((err), (errlen), __VA_ARGS__), DHPS_E_CONFIG)

/* An integer field in [lo, hi]; absent leaves *out. */
static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return bad(err, errlen, "fault %s: must be an integer %lld..%lld", key, lo, hi);
    *out = json_integer_value(v);
    return 0;
}

int srv_fault_parse(const void *buf, size_t len, srv_fault_req *out, char *err,
                    size_t errlen)
{
    static const char *const keys[] = {"peer", "port", "delay_us", "delay_percent",
                                       "drop_percent", "partition", "seed", NULL};
    if (err && errlen)
        err[0] = 0;
    memset(out, 0, sizeof *out);
    dhps_rpc_fault_init(&out->f);
    if (len > SRV_ADMIN_MAX_BODY)
        return bad(err, errlen, "fault body: longer than %u bytes", SRV_ADMIN_MAX_BODY);
    json_error_t je;
    json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return bad(err, errlen, "fault body: not valid JSON (line %d column %d: %s)", je.line,
                   je.column, je.text);
    int rc = 0;
    const char *k;
    json_t *v;
    if (!json_is_object(o)) {
        rc = bad(err, errlen, "fault body: must be a JSON object like "
                 "{\"peer\":\"10.0.0.7\",\"delay_us\":500}");
        goto out;
    }
    json_object_foreach(o, k, v) {
        bool known = false;
        for (size_t i = 0; keys[i]; i++)
            known |= strcmp(k, keys[i]) == 0;
        if (!known) {
            rc = bad(err, errlen, "fault %.64s: unknown key (peer, port, delay_us, "
                     "delay_percent, drop_percent, partition, seed)", k);
            goto out;
        }
    }
    json_t *p = json_object_get(o, "peer");
    if (!p) {
        rc = bad(err, errlen, "fault peer: required (a numeric IPv4 address, or \"*\" for "
                 "every peer)");
        goto out;
    }
    struct in_addr a;
    const char *ps = json_string_value(p);
    if (!ps || json_string_length(p) != strlen(ps) || json_string_length(p) > 15 ||
        (strcmp(ps, "*") != 0 && inet_pton(AF_INET, ps, &a) != 1)) {
        rc = bad(err, errlen, "fault peer: must be a numeric IPv4 address or \"*\"");
        goto out;
    }
    if (strcmp(ps, "*") == 0)
        snprintf(out->peer, sizeof out->peer, "*");
    else
        inet_ntop(AF_INET, &a, out->peer, sizeof out->peer);
    long long port = 0, delay = 0, dpct = 100, drop = 0, seed = 0;
    if ((rc = get_int(o, "port", 0, 65535, &port, err, errlen)) ||
        (rc = get_int(o, "delay_us", 0, DHPS_RPC_FAULT_MAX_DELAY_US, &delay, err, errlen)) ||
        (rc = get_int(o, "delay_percent", 0, 100, &dpct, err, errlen)) ||
        (rc = get_int(o, "drop_percent", 0, 100, &drop, err, errlen)) ||
        (rc = get_int(o, "seed", 0, LLONG_MAX, &seed, err, errlen)))
        goto out;
    if (port && out->peer[0] == '*') {
        rc = bad(err, errlen, "fault port: must be 0 (or absent) with peer \"*\"");
        goto out;
    }
    json_t *pt = json_object_get(o, "partition");
    if (pt && !json_is_boolean(pt)) {
        rc = bad(err, errlen, "fault partition: must be true or false");
        goto out;
    }
    out->port = (uint16_t)port;
    out->f.delay_us = (uint32_t)delay;
    out->f.delay_percent = (uint32_t)dpct;
    out->f.drop_percent = (uint32_t)drop;
    out->f.partition = pt && json_is_true(pt);
    out->f.seed = (uint64_t)seed;
out:
    json_decref(o);
    return rc;
}

int srv_admin_mac(const void *secret, size_t secret_len, const char *method, const char *path,
                  const char *peer, const char *port, const char *all, const char *ts,
                  const void *body, size_t body_len, uint8_t mac[32])
{
    if (!method || !path || !peer || !port || !all || !ts || (body_len && !body))
        return -EINVAL;
    const char *parts[] = {"dhps-admin-v1\n", method, "\n", path, "\npeer=", peer,
                           "\nport=", port, "\nall=", all, "\n", ts, "\n"};
    size_t n = body_len;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        n += strlen(parts[i]);
    uint8_t *m = malloc(n ? n : 1), *q = m;
    if (!m)
        return -ENOMEM;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t k = strlen(parts[i]);
        memcpy(q, parts[i], k);
        q += k;
    }
    if (body_len)
        memcpy(q, body, body_len);
    static const uint8_t nokey = 0;
    unsigned int outlen = 0;
    uint8_t *r = HMAC(EVP_sha256(), secret_len ? secret : &nokey, (int)secret_len, m, n, mac,
                      &outlen);
    free(m);
    return r && outlen == 32 ? 0 : -ENOMEM;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int srv_admin_auth(const void *secret, size_t secret_len, const char *header,
                   const char *method, const char *path, const char *peer, const char *port,
                   const char *all, const void *body, size_t body_len, time_t now, char *err,
                   size_t errlen)
{
    if (!header) {
        srv_errf(err, errlen, "fault auth: missing %s header (\"<unix seconds> <hex "
            "HMAC-SHA256>\", see docs/server.md; `dhps fault` sends it)", SRV_ADMIN_AUTH_HEADER);
        return -EACCES;
    }
    /* "<digits>[.<1-32 hex>] <64 hex>" exactly */
    char ts[56];
    size_t i = 0, nd;
    while (header[i] >= '0' && header[i] <= '9' && i < 19) {
        ts[i] = header[i];
        i++;
    }
    nd = i;
    bool form = nd > 0;
    if (form && header[i] == '.') {
        ts[i] = header[i];
        i++;
        size_t h0 = i;
        while (hexval(header[i]) >= 0 && i - h0 < 32) {
            ts[i] = header[i];
            i++;
        }
        form = i > h0;
    }
    ts[i] = 0;
    const char *hex = header + i + 1;
    uint8_t got[32];
    form = form && header[i] == ' ' && strlen(hex) == 64;
    for (size_t k = 0; form && k < 32; k++) {
        int hi = hexval(hex[2 * k]), lo = hexval(hex[2 * k + 1]);
        if (hi < 0 || lo < 0)
            form = false;
        else
            got[k] = (uint8_t)(hi << 4 | lo);
    }
    if (!form) {
        srv_errf(err, errlen, "fault auth: %s must be \"<unix seconds>[.<nonce: 1-32 hex "
            "digits>] <64 hex digits>\"", SRV_ADMIN_AUTH_HEADER);
        return -EACCES;
    }
    long long t = strtoll(ts, NULL, 10); /* stops at the '.' */
    if (t < (long long)now - SRV_ADMIN_SKEW_S || t > (long long)now + SRV_ADMIN_SKEW_S) {
        srv_errf(err, errlen, "fault auth: timestamp %lld is more than %d s from the server's "
            "clock (%lld)", t, SRV_ADMIN_SKEW_S, (long long)now);
        return -EACCES;
    }
    uint8_t want[32];
    if (srv_admin_mac(secret, secret_len, method, path, peer, port, all, ts, body, body_len,
                      want) ||
        CRYPTO_memcmp(want, got, 32) != 0) {
        srv_errf(err, errlen, "fault auth: MAC does not match (wrong cluster secret?)");
        return -EACCES;
    }
    return 0;
}

void srv_admin_replay_init(srv_admin_replay *r)
{
    memset(r->e, 0, sizeof r->e);
    pthread_mutex_init(&r->mu, NULL);
}

void srv_admin_replay_fini(srv_admin_replay *r) { pthread_mutex_destroy(&r->mu); }

int srv_admin_replay_note(srv_admin_replay *r, const char *header, time_t now, char *err,
                          size_t errlen)
{
    /* what srv_admin_auth accepted: the timestamp leads, the MAC is the last 64 digits */
    size_t len = header ? strlen(header) : 0;
    if (len < 66 || header[0] < '0' || header[0] > '9') {
        srv_errf(err, errlen, "fault auth: malformed %s", SRV_ADMIN_AUTH_HEADER);
        return -EINVAL;
    }
    uint8_t mac[32];
    const char *hex = header + len - 64;
    for (size_t k = 0; k < 32; k++) {
        int hi = hexval(hex[2 * k]), lo = hexval(hex[2 * k + 1]);
        if (hi < 0 || lo < 0) {
            srv_errf(err, errlen, "fault auth: malformed %s", SRV_ADMIN_AUTH_HEADER);
            return -EINVAL;
        }
        mac[k] = (uint8_t)(hi << 4 | lo);
    }
    /* after its timestamp + skew the request is refused as stale anyway */
    long long until = strtoll(header, NULL, 10) + SRV_ADMIN_SKEW_S + 1;
    int rc = 0;
    size_t slot = SRV_ADMIN_REPLAY_SLOTS;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < SRV_ADMIN_REPLAY_SLOTS; i++) {
        if (r->e[i].until <= (long long)now) {
            r->e[i].until = 0;
            if (slot == SRV_ADMIN_REPLAY_SLOTS)
                slot = i;
        } else if (!memcmp(r->e[i].mac, mac, 32)) {
            rc = -EALREADY;
            break;
        }
    }
    if (!rc && slot == SRV_ADMIN_REPLAY_SLOTS)
        rc = -EBUSY;
    if (!rc) {
        memcpy(r->e[slot].mac, mac, 32);
        r->e[slot].until = until;
    }
    pthread_mutex_unlock(&r->mu);
    if (rc == -EALREADY)
        srv_errf(err, errlen, "fault auth: replayed request (this signed request was already "
                 "accepted; sign each change anew, with a nonce: `dhps fault` does)");
    else if (rc == -EBUSY)
        srv_errf(err, errlen, "fault auth: more than %u signed changes in %d s; try again "
                 "later", SRV_ADMIN_REPLAY_SLOTS, 2 * SRV_ADMIN_SKEW_S);
    return rc;
}

char *srv_fault_list_json(dhps_rpc_server *rpc)
{
    dhps_rpc_fault_entry e[DHPS_RPC_FAULT_MAX_RULES];
    size_t n = rpc ? dhps_rpc_server_fault_list(rpc, e, DHPS_RPC_FAULT_MAX_RULES) : 0;
    if (n > DHPS_RPC_FAULT_MAX_RULES)
        n = DHPS_RPC_FAULT_MAX_RULES;
    json_t *rules = json_array();
    for (size_t i = 0; rules && i < n; i++)
        json_array_append_new(
            rules, json_pack("{s:s,s:i,s:I,s:i,s:i,s:b,s:I,s:I,s:I,s:I,s:I}", "peer",
                             e[i].host, "port", (int)e[i].port, "delay_us",
                             (json_int_t)e[i].f.delay_us, "delay_percent",
                             (int)e[i].f.delay_percent, "drop_percent",
                             (int)e[i].f.drop_percent, "partition", e[i].f.partition, "seed",
                             (json_int_t)e[i].f.seed, "matched", (json_int_t)e[i].st.calls,
                             "delayed", (json_int_t)e[i].st.delayed, "dropped",
                             (json_int_t)e[i].st.dropped, "partitioned",
                             (json_int_t)e[i].st.partitioned));
    json_t *o = rules ? json_pack("{s:o}", "rules", rules) : NULL;
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

void srv_fault_metrics(dhps_rpc_server *rpc, FILE *f)
{
    dhps_rpc_fault_entry e[DHPS_RPC_FAULT_MAX_RULES];
    size_t n = rpc ? dhps_rpc_server_fault_list(rpc, e, DHPS_RPC_FAULT_MAX_RULES) : 0;
    if (n > DHPS_RPC_FAULT_MAX_RULES)
        n = DHPS_RPC_FAULT_MAX_RULES;
    fprintf(f, "# HELP dhps_fault_rules Server-side rpc fault rules set now.\n"
               "# TYPE dhps_fault_rules gauge\ndhps_fault_rules %zu\n", n);
    static const char *const names[] = {"matched", "delayed", "dropped", "partitioned"};
    for (int k = 0; k < 4; k++) {
        fprintf(f, "# HELP dhps_fault_%s_total Requests %s by a server-side fault rule "
                   "(restarts when the rule is replaced).\n# TYPE dhps_fault_%s_total counter\n",
                names[k], names[k], names[k]);
        for (size_t i = 0; i < n; i++) {
            const dhps_rpc_fault_stats *st = &e[i].st;
            uint64_t v = k == 0 ? st->calls : k == 1 ? st->delayed : k == 2 ? st->dropped
                                                                           : st->partitioned;
            fprintf(f, "dhps_fault_%s_total{peer=\"%s\",port=\"%u\"} %llu\n", names[k],
                    e[i].host, e[i].port, (unsigned long long)v);
        }
    }
}

/* Helpers for the server tests: temp dirs, config files, raw proto.h requests over a
 * dhps_rpc client, a tiny HTTP GET, and dhps-server child processes. */
#ifndef DHPS_SRV_TEST_H
#define DHPS_SRV_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <pthread.h>

#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "util.h"
#include "test_scale.h"

/* a secret file must hold >= 32 bytes with >= 10 distinct values (dhps_secret_load) */
#define T_SECRET "server-test-secret-0123456789abcdef"

static inline void t_write(const char *path, const char *text, int mode)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        abort();
    }
    fputs(text, f);
    fclose(f);
    chmod(path, (mode_t)mode);
}

static inline char *t_mkdtemp(void)
{
    char *d = strdup("/tmp/dhps-srvtest-XXXXXX");
    if (!mkdtemp(d))
        abort();
    char p[512];
    snprintf(p, sizeof p, "%s/secret", d);
    t_write(p, T_SECRET "\n", 0600);
    snprintf(p, sizeof p, "%s/snap", d);
    mkdir(p, 0700);
    return d;
}

static inline void t_rmdir(char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d);
    free(d);
}

/* The standard two-table config (emb fp32 dim 8, half fp16 dim 6), nshards shards;
 * extra is spliced in as more top-level keys (may be ""). */
static inline void t_config(const char *dir, char *out, size_t len, uint32_t nshards,
                            const char *own, const char *extra)
{
    snprintf(out, len,
             "{\"node_id\":\"t1\",\"labels\":{\"host\":\"h1\",\"az\":\"z1\"},"
             "\"listen\":{\"tcp_port\":0,\"workers\":2,\"shm\":true},"
             "\"tables\":[{\"name\":\"emb\",\"dim\":8,\"capacity\":4096},"
             "{\"name\":\"half\",\"dim\":6,\"dtype\":\"fp16\",\"capacity\":4096}],"
             "\"secret_file\":\"%s/secret\",\"metrics\":{\"port\":0},"
             "\"snapshot\":{\"dir\":\"%s/snap\"},\"port_file\":\"%s/ports\","
             "\"shards\":{\"nshards\":%u,\"own\":%s}%s%s}",
             dir, dir, dir, nshards, own, *extra ? "," : "", extra);
}

/* Parse cfgtext, then create and start an embedded server in *s. 0, or the failing
 * step's code with "config: ", "create: " or "start: " and its message in err. */
static inline int t_server_start(const char *cfgtext, dhps_server **s, char *err,
                                 size_t errlen)
{
    char e[512] = "";
    dhps_server_config *c = NULL;
    int rc = dhps_server_config_parse(cfgtext, strlen(cfgtext), &c, e, sizeof e);
    if (rc) {
        snprintf(err, errlen, "config: %s", e);
        return rc;
    }
    rc = dhps_server_create(c, s, e, sizeof e);
    dhps_server_config_free(c);
    if (rc) {
        snprintf(err, errlen, "create: %s", e);
        return rc;
    }
    if ((rc = dhps_server_start(*s, e, sizeof e)))
        snprintf(err, errlen, "start: %s", e);
    return rc;
}

/* ---- rpc ---------------------------------------------------------------------------- */

/* Response buffer, static size: big enough for the tests' batches. */
#define T_RESP_CAP (4u << 20)

typedef struct t_conn {
    dhps_rpc_client *c;
    dhps_rpc_channel *ch;
    uint8_t *resp; /* T_RESP_CAP bytes, reused by the request helpers below */
    uint64_t map_version; /* hdr.map_version of UPSERT/DELETE/LOOKUP below (0: none) */
} t_conn;

static inline int t_connect_ex(t_conn *tc, uint16_t port, const char *secret,
                               uint32_t allow, int require)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = secret;
    cp.secret_len = strlen(secret);
    cp.max_msg = 4u << 20;
    uint8_t host_id[DHPS_RPC_HOST_ID_LEN];
    dhps_rpc_host_id("h1", host_id); /* t_config's labels.host: shm is allowed */
    cp.host_id = host_id;
    tc->resp = NULL;
    tc->map_version = 0;
    int rc = dhps_rpc_client_create(&cp, &tc->c);
    if (rc)
        return rc;
    dhps_rpc_channel_params p;
    dhps_rpc_channel_params_init(&p);
    p.port = port;
    p.allow = allow;
    p.require = require;
    rc = dhps_rpc_channel_open(tc->c, &p, &tc->ch);
    if (!rc && !(tc->resp = malloc(T_RESP_CAP))) {
        dhps_rpc_channel_close(tc->ch);
        rc = -ENOMEM;
    }
    if (rc) {
        dhps_rpc_client_destroy(tc->c);
        tc->c = NULL;
    }
    return rc;
}

static inline int t_connect(t_conn *tc, uint16_t port, const char *secret)
{
    return t_connect_ex(tc, port, secret, DHPS_RPC_MASK(DHPS_RPC_TCP), -1);
}

static inline void t_close(t_conn *tc)
{
    dhps_rpc_channel_close(tc->ch);
    dhps_rpc_client_destroy(tc->c);
    free(tc->resp);
    tc->c = NULL;
    tc->ch = NULL;
    tc->resp = NULL;
}

static inline void t_hdr(void *buf, const char *table, uint32_t shard, uint16_t flags)
{
    dhps_proto_hdr h;
    memset(&h, 0, sizeof h);
    h.version = DHPS_PROTO_VERSION;
    h.flags = flags;
    h.shard = shard;
    strncpy(h.table, table, DHPS_TABLE_NAME_MAX - 1);
    memcpy(buf, &h, sizeof h);
}


/* Send a raw request; returns the rpc status; *resp_len set. */
static inline int t_call(t_conn *tc, uint16_t method, const void *req, size_t len,
                         void *resp, size_t *resp_len)
{
    return dhps_rpc_call(tc->ch, method, req, len, resp, T_RESP_CAP, resp_len,
                         dhps_test_us(5000000)); /* not under test: scaled */
}

/* Status of a proto response (or the rpc error when the call failed). */
static inline int t_status(int rc, const void *resp, size_t len)
{
    if (rc)
        return rc;
    if (len < sizeof(dhps_proto_resp))
        return -9999;
    dhps_proto_resp h;
    memcpy(&h, resp, sizeof h);
    return h.status;
}

/* UPSERT n keys (fp32 rows of dim floats, or fp16 rows when rows16). Returns status. */
static inline int t_upsert(t_conn *tc, const char *table, uint32_t shard, const uint64_t *keys,
                           uint32_t n, const void *rows, uint32_t row_bytes, int rows16,
                           uint64_t version, uint32_t *count)
{
    size_t len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_upsert) + (size_t)n * 8 +
                 (size_t)n * row_bytes;
    uint8_t *req = malloc(len), *resp = tc->resp;
    t_hdr(req, table, shard, rows16 ? DHPS_FP16 : DHPS_FP32);
    memcpy(req + offsetof(dhps_proto_hdr, map_version), &tc->map_version, 8);
    dhps_proto_upsert u = {.n = n, .value_bytes = row_bytes, .version = version,
                           .ttl = 0};
    memcpy(req + 64, &u, sizeof u);
    memcpy(req + 64 + sizeof u, keys, (size_t)n * 8);
    memcpy(req + 64 + sizeof u + (size_t)n * 8, rows, (size_t)n * row_bytes);
    size_t rl = 0;
    int rc = t_call(tc, DHPS_M_UPSERT, req, len, resp, &rl);
    rc = t_status(rc, resp, rl);
    if (rc == 0 && count) {
        dhps_proto_resp h;
        memcpy(&h, resp, sizeof h);
        *count = h.count;
    }
    free(req);
    return rc;
}

/* DELETE n keys of one shard at version. Returns status. */
static inline int t_delete(t_conn *tc, const char *table, uint32_t shard, const uint64_t *keys,
                           uint32_t n, uint64_t version)
{
    size_t len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_delete) + (size_t)n * 8;
    uint8_t *req = malloc(len), *resp = tc->resp;
    t_hdr(req, table, shard, 0);
    memcpy(req + offsetof(dhps_proto_hdr, map_version), &tc->map_version, 8);
    dhps_proto_delete d = {.n = n, .version = version};
    memcpy(req + 64, &d, sizeof d);
    memcpy(req + 64 + sizeof d, keys, (size_t)n * 8);
    size_t rl = 0;
    int rc = t_call(tc, DHPS_M_DELETE, req, len, resp, &rl);
    rc = t_status(rc, resp, rl);
    free(req);
    return rc;
}

/* LOOKUP: rows (n * out_row bytes) and found mask copied out. Returns status. */
static inline int t_lookup(t_conn *tc, const char *table, uint32_t shard, const uint64_t *keys,
                           uint32_t n, uint16_t flags, void *rows, uint64_t *found,
                           uint32_t *value_bytes)
{
    size_t len = sizeof(dhps_proto_hdr) + sizeof(dhps_proto_lookup) + (size_t)n * 8;
    uint8_t *req = malloc(len), *resp = tc->resp;
    t_hdr(req, table, shard, flags);
    memcpy(req + offsetof(dhps_proto_hdr, map_version), &tc->map_version, 8);
    dhps_proto_lookup l = {.n = n};
    memcpy(req + 64, &l, sizeof l);
    memcpy(req + 64 + sizeof l, keys, (size_t)n * 8);
    size_t rl = 0;
    int rc = t_call(tc, DHPS_M_LOOKUP, req, len, resp, &rl);
    rc = t_status(rc, resp, rl);
    if (rc == 0) {
        dhps_proto_resp h;
        memcpy(&h, resp, sizeof h);
        size_t mb = (size_t)((n + 63) / 64) * 8;
        if (h.n != n || rl != 16 + mb + (size_t)n * h.value_bytes) {
            rc = -9998;
        } else {
            if (found)
                memcpy(found, resp + 16, mb);
            if (rows)
                memcpy(rows, resp + 16 + mb, (size_t)n * h.value_bytes);
            if (value_bytes)
                *value_bytes = h.value_bytes;
        }
    }
    free(req);
    return rc;
}

/* The deterministic row (dim floats) the tests write for key at version ver, and expect
 * back. */
static inline void t_fill_row(float *row, uint32_t dim, uint64_t key, uint64_t ver)
{
    for (uint32_t j = 0; j < dim; j++)
        row[j] = (float)(key % 4096) + (float)j * 0.25f + (float)ver;
}

/* Keys [k0, k1) of table `table` (dim fp32, nsh shards, each key sent to its shard as
 * the server places it): present with version ver's rows (ver > 0), or absent (ver ==
 * 0). Fails the test naming the first key that is not. */
static inline void t_check_range(t_conn *tc, const char *table, uint32_t nsh, uint32_t dim,
                                 uint64_t k0, uint64_t k1, uint64_t ver)
{
    uint32_t n = (uint32_t)(k1 - k0);
    uint64_t *keys = malloc(n * 8), *found = calloc((n + 63) / 64, 8);
    float *rows = malloc((size_t)n * dim * 4), *want = malloc((size_t)dim * 4);
    assert_true(keys && found && rows && want);
    for (uint32_t sh = 0; sh < nsh; sh++) {
        uint32_t m = 0;
        for (uint64_t k = k0; k < k1; k++)
            if (dhps_proto_shard_of(k, nsh) == sh)
                keys[m++] = k;
        if (!m)
            continue;
        assert_int_equal(t_lookup(tc, table, sh, keys, m, 0, rows, found, NULL), 0);
        for (uint32_t i = 0; i < m; i++) {
            bool hit = found[i / 64] >> (i % 64) & 1;
            if (ver && !hit)
                fail_msg("key %llu (shard %u) missing", (unsigned long long)keys[i], sh);
            if (!ver && hit)
                fail_msg("key %llu (shard %u) present, should be absent",
                         (unsigned long long)keys[i], sh);
            if (ver) {
                t_fill_row(want, dim, keys[i], ver);
                if (memcmp(rows + (size_t)i * dim, want, (size_t)dim * 4))
                    fail_msg("key %llu: row differs (version %llu expected: %g, got %g)",
                             (unsigned long long)keys[i], (unsigned long long)ver,
                             (double)want[0], (double)rows[(size_t)i * dim]);
            }
        }
    }
    free(keys);
    free(found);
    free(rows);
    free(want);
}

/* A header-only request (STATS/SNAPSHOT/INFO); text after the header copied to out. */
static inline int t_simple(t_conn *tc, uint16_t method, const char *table, char *out,
                           size_t outlen, uint32_t *count)
{
    uint8_t req[64];
    uint8_t *resp = tc->resp;
    t_hdr(req, table, 0, 0);
    size_t rl = 0;
    int rc = t_call(tc, method, req, sizeof req, resp, &rl);
    int st = t_status(rc, resp, rl);
    if (!rc && rl >= 16) {
        if (out && outlen) {
            size_t k = rl - 16 < outlen - 1 ? rl - 16 : outlen - 1;
            memcpy(out, resp + 16, k);
            out[k] = 0;
        }
        dhps_proto_resp h;
        memcpy(&h, resp, sizeof h);
        if (count)
            *count = h.count;
    }
    return st;
}

/* ---- HTTP ---------------------------------------------------------------------------- */

/* A TCP connection to 127.0.0.1:port, or -1. */
static inline int t_http_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read an HTTP/1.x response from fd until EOF and close fd; returns the status code (or
 * -1) and sets *body (malloc'd, "" when there is none). */
static inline int t_http_reply(int fd, char **body)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    int code = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1)
        code = -1;
    char *b = strstr(buf, "\r\n\r\n");
    *body = strdup(b ? b + 4 : "");
    free(buf);
    return code;
}

/* GET path from 127.0.0.1:port; returns the status code (or -1), body malloc'd. */
static inline int t_http_get(uint16_t port, const char *path, char **body)
{
    *body = NULL;
    int fd = t_http_connect(port);
    if (fd < 0)
        return -1;
    char req[256];
    int k = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)k) != k) {
        close(fd);
        return -1;
    }
    return t_http_reply(fd, body);
}

/* Value of the first metrics line starting with `prefix` (exact series), or -1. */
static inline double t_metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, series, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}

static inline uint64_t t_now_ms(void) { return dhps_mono_ns() / 1000000; }

static inline void t_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#endif

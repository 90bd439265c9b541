/* Cluster access for the service subcommands (contracts in toolsclient.h). */
#include "toolsclient.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "secret.h"
#include "util.h"

const char *tools_default_dir(void)
{
    const char *d = getenv("DHPS_CLUSTER_DIR");
    return d && *d ? d : "dhps-cluster";
}

char *tools_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r < 4096)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

static void copy_label(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static int node_call(tools_conn *c, dhps_rpc_client *rc, const dhps_cluster_node *nd,
                     uint16_t method, const void *req, size_t req_len, void *resp, size_t cap,
                     size_t *len);
static int admin_rpc(tools_conn *c, dhps_rpc_client **out);

/* One TLS setting: $env, else key of cluster.json's "tls" object (tj may be NULL). */
static void tls_setting(char *dst, size_t cap, const char *env, json_t *tj, const char *key)
{
    const char *v = getenv(env);
    if (!v || !*v)
        v = json_string_value(json_object_get(tj, key));
    snprintf(dst, cap, "%s", v ? v : "");
}

/* The TLS settings of c (see tools_conn). 0, or -EINVAL after one line on stderr. */
static int tls_settings(tools_conn *c, json_t *cj)
{
    json_t *tj = json_object_get(cj, "tls");
    char pol[32];
    tls_setting(pol, sizeof pol, "DHPS_TLS", tj, "policy");
    tls_setting(c->tls_ca, sizeof c->tls_ca, "DHPS_TLS_CA", tj, "ca_file");
    tls_setting(c->tls_cert, sizeof c->tls_cert, "DHPS_TLS_CERT", tj, "cert_file");
    tls_setting(c->tls_key, sizeof c->tls_key, "DHPS_TLS_KEY", tj, "key_file");
    tls_setting(c->tls_name, sizeof c->tls_name, "DHPS_TLS_SERVER_NAME", tj, "server_name");
    c->tls = pol[0] ? dhps_rpc_tls_policy_parse(pol) : DHPS_RPC_TLS_OFF;
    if (c->tls < 0) {
        fprintf(stderr, "dhps: TLS policy \"%s\" (DHPS_TLS or cluster.json tls.policy): want "
                "off, cross_az or always\n", pol);
        return -EINVAL;
    }
    if (c->tls != DHPS_RPC_TLS_OFF && !c->tls_ca[0]) {
        fprintf(stderr, "dhps: TLS policy %s needs the CA file the nodes' certificates are "
                "checked against (DHPS_TLS_CA or cluster.json tls.ca_file)\n", pol);
        return -EINVAL;
    }
    return 0;
}

static const char *or_null(const char *s) { return s[0] ? s : NULL; }

/* --addr HOST:PORT: ask that node (INFO) for its shard count and write a one-node map
 * of it (every shard on it, 1 replica) to a temp file c->map_path. 0, or an error after
 * one line on stderr. */
static int addr_map(const char *addr, const char *secret_path, tools_conn *c)
{
    dhps_cluster_node nd;
    memset(&nd, 0, sizeof nd);
    const char *colon = strrchr(addr, ':');
    char *end;
    unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof nd.ip || *end || !port ||
        port > 65535) {
        fprintf(stderr, "dhps: --addr %s: want HOST:PORT (an IPv4 address and the rpc port)\n",
                addr);
        return -EINVAL;
    }
    snprintf(nd.ip, sizeof nd.ip, "%.*s", (int)(colon - addr), addr);
    snprintf(nd.addr, sizeof nd.addr, "%s", addr);
    nd.port = (uint16_t)port;
    char err[4200];
    int rc = dhps_secret_load(secret_path, c->secret, sizeof c->secret, &c->secret_len, err,
                              sizeof err);
    if (rc) {
        fprintf(stderr, "dhps: %s\n", err);
        return rc;
    }
    dhps_rpc_client *rpc = NULL;
    size_t cap = 1u << 20, len = 0;
    uint8_t *resp = malloc(cap);
    if (!resp || (rc = admin_rpc(c, &rpc)) < 0) {
        free(resp);
        return rc < 0 ? rc : -ENOMEM;
    }
    dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION};
    rc = node_call(c, rpc, &nd, DHPS_M_INFO, &h, sizeof h, resp, cap, &len);
    dhps_rpc_client_destroy(rpc);
    json_t *o = rc ? NULL : json_loadb((const char *)resp + sizeof(dhps_proto_resp),
                                       len - sizeof(dhps_proto_resp), 0, NULL);
    free(resp);
    long long ns = o ? json_integer_value(json_object_get(o, "nshards")) : 0;
    json_decref(o);
    if (rc || ns <= 0) {
        fprintf(stderr, "dhps: --addr %s: INFO failed: %s\n", addr,
                rc == DHPS_E_AUTH ? "auth failed (wrong cluster secret?)"
                : rc == DHPS_E_TLS ? "TLS failed (the node requires TLS: DHPS_TLS, or its "
                                     "certificate is not trusted: DHPS_TLS_CA)"
                : rc ? dhps_strerror(rc) : "no shard count in the answer");
        return rc ? rc : DHPS_E_MALFORMED;
    }
    snprintf(c->map_path, sizeof c->map_path, "/tmp/dhps-addr-map-XXXXXX");
    int fd = mkstemp(c->map_path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        fprintf(stderr, "dhps: temp map file: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    c->tmp_map = true;
    fprintf(f, "{\"version\":1,\"nshards\":%lld,\"replicas\":1,\"nodes\":[{\"id\":0,"
               "\"host\":\"h0\",\"pod\":\"p0\",\"az\":\"a0\",\"addr\":\"%s\"}],\"shards\":[",
            ns, addr);
    for (long long i = 0; i < ns; i++)
        fprintf(f, "%s[0]", i ? "," : "");
    fprintf(f, "]}\n");
    if (fclose(f)) {
        fprintf(stderr, "dhps: temp map file: %s\n", strerror(errno));
        return -EIO;
    }
    return 0;
}

static const char *jstr_or(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

int tools_conn_open(const tools_target *t, tools_conn **out)
{
    *out = NULL;
    tools_conn *c = calloc(1, sizeof *c);
    json_t *cj = NULL;
    char err[4200] = "";
    int rc = -ENOMEM;
    if (!c)
        goto fail;
    char secret_path[4096];
    if (t->addr || t->map || t->secret) { /* else after cluster.json is read */
        if ((rc = tls_settings(c, NULL)) < 0)
            goto fail;
    }
    if (t->addr) {
        if (!t->secret || t->map) {
            fprintf(stderr, "dhps: --addr HOST:PORT goes with --secret FILE (and no --map)\n");
            rc = -EINVAL;
            goto fail;
        }
        if ((rc = addr_map(t->addr, t->secret, c)) < 0)
            goto fail;
        snprintf(secret_path, sizeof secret_path, "%s", t->secret);
    } else if (t->map || t->secret) {
        if (!t->map || !t->secret) {
            fprintf(stderr, "dhps: --map and --secret go together\n");
            rc = -EINVAL;
            goto fail;
        }
        snprintf(c->map_path, sizeof c->map_path, "%s", t->map);
        snprintf(secret_path, sizeof secret_path, "%s", t->secret);
    } else {
        const char *dir = t->cluster_dir ? t->cluster_dir : tools_default_dir();
        char p[4096];
        snprintf(p, sizeof p, "%s/cluster.json", dir);
        json_error_t je;
        cj = json_load_file(p, 0, &je);
        if (!cj) {
            fprintf(stderr, "dhps: no cluster at %s (%s); start one with `dhps up --cluster %s` "
                    "or name one with --cluster DIR / --map FILE --secret FILE\n", dir,
                    je.text, dir);
            rc = -ENOENT;
            goto fail;
        }
        const char *m = json_string_value(json_object_get(cj, "map"));
        const char *s = json_string_value(json_object_get(cj, "secret"));
        if (!m || !s) {
            fprintf(stderr, "dhps: %s: no \"map\"/\"secret\"\n", p);
            rc = DHPS_E_CONFIG;
            goto fail;
        }
        snprintf(c->map_path, sizeof c->map_path, "%s", m);
        snprintf(secret_path, sizeof secret_path, "%s", s);
        json_t *et = json_object_get(cj, "etcd");
        if (json_string_value(json_object_get(et, "url")) &&
            json_string_value(json_object_get(et, "cluster"))) {
            snprintf(c->etcd, sizeof c->etcd, "%s", jstr_or(et, "url"));
            snprintf(c->etcd_cluster, sizeof c->etcd_cluster, "%s", jstr_or(et, "cluster"));
        }
        if ((rc = tls_settings(c, cj)) < 0)
            goto fail;
        json_t *l = json_object_get(cj, "client_labels");
        copy_label(c->host, sizeof c->host, json_string_value(json_object_get(l, "host")));
        copy_label(c->pod, sizeof c->pod, json_string_value(json_object_get(l, "pod")));
        copy_label(c->az, sizeof c->az, json_string_value(json_object_get(l, "az")));
    }
    if (!t->etcd != !t->etcd_cluster) {
        fprintf(stderr, "dhps: --etcd URL and --etcd-cluster NAME go together\n");
        rc = -EINVAL;
        goto fail;
    }
    if (t->etcd) {
        snprintf(c->etcd, sizeof c->etcd, "%s", t->etcd);
        snprintf(c->etcd_cluster, sizeof c->etcd_cluster, "%s", t->etcd_cluster);
    }
    if (t->host)
        copy_label(c->host, sizeof c->host, t->host);
    if (t->pod)
        copy_label(c->pod, sizeof c->pod, t->pod);
    if (t->az)
        copy_label(c->az, sizeof c->az, t->az);
    if ((rc = dhps_secret_load(secret_path, c->secret, sizeof c->secret, &c->secret_len, err,
                               sizeof err))) {
        fprintf(stderr, "dhps: %s\n", err);
        goto fail;
    }
    if ((rc = dhps_cluster_map_load(c->map_path, &c->map, err, sizeof err)) < 0) {
        fprintf(stderr, "dhps: map %s: %s\n%s", c->map_path, dhps_strerror(rc), err);
        goto fail;
    }
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.map_path = c->map_path;
    p.secret = c->secret;
    p.secret_len = c->secret_len;
    p.host = c->host[0] ? c->host : NULL;
    p.pod = c->pod[0] ? c->pod : NULL;
    p.az = c->az[0] ? c->az : NULL;
    p.max_msg = t->max_msg ? t->max_msg : 4u << 20;
    if (c->etcd[0]) { /* the map file stays the fallback while etcd is unreachable */
        p.etcd = c->etcd;
        p.cluster = c->etcd_cluster;
    }
    if (t->connect_timeout_ms)
        p.connect_timeout_ms = t->connect_timeout_ms;
    if (t->spin_set)
        p.spin_us = t->spin_us;
    p.tls = c->tls;
    if (c->tls != DHPS_RPC_TLS_OFF) {
        p.tls_ca_file = c->tls_ca;
        p.tls_cert_file = or_null(c->tls_cert);
        p.tls_key_file = or_null(c->tls_key);
        p.tls_server_name = or_null(c->tls_name);
    }
    c->put_timeout_us = 10000000;
    if (2000ull * p.connect_timeout_ms > c->put_timeout_us)
        c->put_timeout_us = 2000ull * p.connect_timeout_ms;
    p.max_node_id = dhps_cluster_map_max_node_id(c->map);
    if (p.max_node_id < 4095)
        p.max_node_id = 4095;
    if ((rc = dhps_client_create(&p, &c->client)) < 0) {
        fprintf(stderr, "dhps: client for map %s: %s\n", c->map_path, dhps_strerror(rc));
        goto fail;
    }
    json_decref(cj);
    *out = c;
    return 0;
fail:
    json_decref(cj);
    tools_conn_close(c);
    return rc;
}

void tools_conn_close(tools_conn *c)
{
    if (!c)
        return;
    dhps_client_destroy(c->client);
    dhps_cluster_map_destroy(c->map);
    if (c->tmp_map)
        unlink(c->map_path);
    memset(c->secret, 0, sizeof c->secret);
    free(c);
}

static bool same_label(const char *a, const char *b) { return *a && *b && !strcmp(a, b); }

int tools_tier_of(const char *host, const char *pod, const char *az, const char *chost,
                  const char *cpod, const char *caz)
{
    if (same_label(host, chost))
        return 0;
    if (same_label(az, caz))
        return same_label(pod, cpod) ? 1 : 2;
    return 3;
}

const char *const tools_tier_names[4] = {"host", "pod", "az", "remote"};

int tools_conn_put(tools_conn *c, const char *table, uint32_t dtype, uint32_t dim,
                   const uint64_t *keys, const void *rows, uint32_t n)
{
    return dhps_client_update(c->client, table, keys, rows, n, dim, (int)dtype,
                              DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, c->put_timeout_us, NULL,
                              NULL);
}

/* One call to node nd over TCP on its own channel (opened and closed here; TLS by c's
 * policy and the node's AZ): 0 with the response in resp (*len bytes, at least a
 * dhps_proto_resp) whose status is returned when negative, or the channel/call error. */
static int node_call(tools_conn *c, dhps_rpc_client *rc, const dhps_cluster_node *nd,
                     uint16_t method, const void *req, size_t req_len, void *resp, size_t cap,
                     size_t *len)
{
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.host = nd->ip;
    chp.port = nd->port;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    chp.tls = dhps_rpc_tls_wanted(c->tls, c->az, nd->az);
    dhps_rpc_channel *ch = NULL;
    *len = 0;
    int err = dhps_rpc_channel_open(rc, &chp, &ch);
    if (!err)
        err = dhps_rpc_call(ch, method, req, req_len, resp, cap, len, 30000000);
    dhps_proto_resp r = {0};
    if (!err && *len < sizeof r)
        err = DHPS_E_MALFORMED;
    if (!err) {
        memcpy(&r, resp, sizeof r);
        err = r.status > 0 ? DHPS_E_MALFORMED : r.status;
    }
    dhps_rpc_channel_close(ch);
    return err;
}

static int admin_rpc(tools_conn *c, dhps_rpc_client **out)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = c->secret;
    cp.secret_len = c->secret_len;
    cp.max_msg = 4u << 20;
    if (c->tls != DHPS_RPC_TLS_OFF) {
        cp.tls_ca_file = c->tls_ca;
        cp.tls_cert_file = or_null(c->tls_cert);
        cp.tls_key_file = or_null(c->tls_key);
        cp.tls_server_name = or_null(c->tls_name);
    }
    return dhps_rpc_client_create(&cp, out);
}

int tools_conn_admin(tools_conn *c, uint16_t method, const char *table, tools_admin_fn fn,
                     void *arg)
{
    dhps_rpc_client *rc = NULL;
    int failed = 0, err;
    size_t cap = 4u << 20;
    uint8_t *resp = malloc(cap);
    if (!resp || (err = admin_rpc(c, &rc)) < 0) {
        free(resp);
        return (int)dhps_cluster_map_nnodes(c->map);
    }
    for (size_t i = 0; i < dhps_cluster_map_nnodes(c->map); i++) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(c->map, i);
        dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION};
        snprintf(h.table, sizeof h.table, "%s", table ? table : "");
        h.map_version = dhps_cluster_map_version(c->map);
        size_t len = 0;
        err = node_call(c, rc, nd, method, &h, sizeof h, resp, cap, &len);
        dhps_proto_resp r = {0};
        if (!err)
            memcpy(&r, resp, sizeof r);
        else
            failed++;
        fn(arg, nd->id, err, r.count, err ? "" : (const char *)resp + sizeof r,
           err ? 0 : len - sizeof r);
    }
    dhps_rpc_client_destroy(rc);
    free(resp);
    return failed;
}

int tools_conn_call(tools_conn *c, uint32_t node, uint16_t method, const void *req,
                    size_t req_len, void *resp, size_t cap, size_t *resp_len)
{
    const dhps_cluster_node *nd = dhps_cluster_map_node(c->map, node);
    if (!nd)
        return DHPS_E_NOTFOUND;
    dhps_rpc_client *rc = NULL;
    int err = admin_rpc(c, &rc);
    if (err < 0)
        return err;
    err = node_call(c, rc, nd, method, req, req_len, resp, cap, resp_len);
    dhps_rpc_client_destroy(rc);
    return err;
}

/* dhps-server config: JSON (libjansson) -> dhps_server_config, validated key by key. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <jansson.h>

#include "dhps/cluster.h"
#include "dhps/log.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "dhps/wal.h"
#include "srv_int.h"

typedef struct cfg_ctx {
    char *err;
    size_t errlen;
} cfg_ctx;

__attribute__((format(printf, 2, 3))) static int fail(cfg_ctx *x, const char *fmt, ...)
{
    if (x->err && x->errlen) {
        int k = snprintf(x->err, x->errlen, "config ");
        va_list ap;
        va_start(ap, fmt);
        if (k >= 0 && (size_t)k < x->errlen)
            vsnprintf(x->err + k, x->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return DHPS_E_CONFIG;
}

/* Reject keys of obj not in the NULL-terminated list. */
static int only_keys(cfg_ctx *x, json_t *obj, const char *path, const char *const *keys)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        bool ok = false;
        for (size_t i = 0; keys[i]; i++)
            if (!strcmp(k, keys[i]))
                ok = true;
        if (!ok)
            return fail(x, "%s%s%s: unknown key", path, *path ? "." : "", k);
    }
    return 0;
}

static int get_str(cfg_ctx *x, json_t *obj, const char *key, const char *path, bool req,
                   size_t maxlen, char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (req)
            return fail(x, "%s%s%s: required", path, *path ? "." : "", key);
        return 0;
    }
    if (!json_is_string(v))
        return fail(x, "%s%s%s: must be a string", path, *path ? "." : "", key);
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n > maxlen || memchr(s, 0, n))
        return fail(x, "%s%s%s: must be a string of 1..%zu bytes without NUL", path,
                    *path ? "." : "", key, maxlen);
    free(*out);
    if (!(*out = strdup(s)))
        return -ENOMEM;
    return 0;
}

static int get_uint(cfg_ctx *x, json_t *obj, const char *key, const char *path,
                    uint64_t lo, uint64_t hi, uint64_t *out, bool *present)
{
    json_t *v = json_object_get(obj, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) < lo || (uint64_t)json_integer_value(v) > hi)
        return fail(x, "%s%s%s: must be %llu..%llu", path, *path ? "." : "", key,
                    (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_bool(cfg_ctx *x, json_t *obj, const char *key, const char *path, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return fail(x, "%s%s%s: must be true or false", path, *path ? "." : "", key);
    *out = json_is_true(v);
    return 0;
}

static int need_object(cfg_ctx *x, json_t *v, const char *path)
{
    return json_is_object(v) ? 0 : fail(x, "%s: must be an object", path);
}

static bool valid_ipv4(const char *s)
{
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

static bool valid_name(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

/* "tls": {"policy": "off"|"cross_az"|"always", "cert_file", "key_file", "ca_file",
 * "verify_clients": "none"|"optional"|"required", "server_name"}. The files are checked
 * (read) by srv_check_files, not here: parsing touches no file. */
static int parse_tls(cfg_ctx *x, json_t *root, dhps_server_config *c)
{
    json_t *tl = json_object_get(root, "tls");
    if (!tl)
        return 0;
    static const char *const tk[] = {"policy", "cert_file", "key_file", "ca_file",
                                     "verify_clients", "server_name", NULL};
    char *pol = NULL, *ver = NULL;
    int rc;
    if ((rc = need_object(x, tl, "tls")) || (rc = only_keys(x, tl, "tls", tk)) ||
        (rc = get_str(x, tl, "policy", "tls", true, 16, &pol)))
        return rc;
    c->tls_policy = dhps_rpc_tls_policy_parse(pol);
    free(pol);
    if (c->tls_policy < 0) {
        c->tls_policy = DHPS_RPC_TLS_OFF;
        return fail(x, "tls.policy: must be \"off\", \"cross_az\" or \"always\"");
    }
    if ((rc = get_str(x, tl, "cert_file", "tls", false, 4000, &c->tls_cert_file)) ||
        (rc = get_str(x, tl, "key_file", "tls", false, 4000, &c->tls_key_file)) ||
        (rc = get_str(x, tl, "ca_file", "tls", false, 4000, &c->tls_ca_file)) ||
        (rc = get_str(x, tl, "server_name", "tls", false, 253, &c->tls_server_name)) ||
        (rc = get_str(x, tl, "verify_clients", "tls", false, 16, &ver)))
        return rc;
    static const char *const vn[] = {"none", "optional", "required"};
    c->tls_verify_clients = ver ? -1 : DHPS_RPC_TLS_VERIFY_NONE;
    for (int i = 0; ver && i < 3; i++)
        if (!strcmp(ver, vn[i]))
            c->tls_verify_clients = i;
    free(ver);
    if (c->tls_verify_clients < 0) {
        c->tls_verify_clients = DHPS_RPC_TLS_VERIFY_NONE;
        return fail(x, "tls.verify_clients: must be \"none\", \"optional\" or \"required\"");
    }
    if (c->tls_server_name) {
        for (const char *s = c->tls_server_name; *s; s++)
            if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                  (*s >= '0' && *s <= '9') || *s == '-' || *s == '.'))
                return fail(x, "tls.server_name: must be a DNS name ([A-Za-z0-9.-])");
    }
    if (c->tls_policy == DHPS_RPC_TLS_OFF) {
        /* a careless half-configuration: files named, TLS not on */
        const char *set = c->tls_cert_file ? "cert_file" : c->tls_key_file ? "key_file"
                          : c->tls_ca_file ? "ca_file" : c->tls_server_name ? "server_name"
                          : c->tls_verify_clients ? "verify_clients" : NULL;
        if (set)
            return fail(x, "tls.%s: set, but tls.policy is \"off\" (no TLS): set the policy "
                        "to \"cross_az\" or \"always\", or remove tls.%s", set, set);
        return 0;
    }
    if (!c->tls_cert_file || !c->tls_key_file || !c->tls_ca_file)
        return fail(x, "tls.%s: required with tls.policy \"%s\" (this node's certificate, "
                    "its key, and the CA its peers' certificates are checked against)",
                    !c->tls_cert_file ? "cert_file" : !c->tls_key_file ? "key_file" : "ca_file",
                    dhps_rpc_tls_policy_name(c->tls_policy));
    return 0;
}

static int parse_table(cfg_ctx *x, json_t *t, size_t i, dhps_server_table_config *tc)
{
    static const char *const keys[] = {"name", "dim", "dtype", "default_ttl", "mem_limit",
                                       "capacity", "allow_nonfinite", NULL};
    char path[32];
    snprintf(path, sizeof path, "tables[%zu]", i);
    int rc;
    if ((rc = need_object(x, t, path)) || (rc = only_keys(x, t, path, keys)))
        return rc;
    char *name = NULL, *dtype = NULL;
    uint64_t v;
    if ((rc = get_str(x, t, "name", path, true, DHPS_TABLE_NAME_MAX - 1, &name)))
        goto out;
    if (!valid_name(name)) {
        rc = fail(x, "%s.name: only letters, digits, '_', '-' and '.' allowed", path);
        goto out;
    }
    strcpy(tc->name, name);
    bool have = false;
    if ((rc = get_uint(x, t, "dim", path, 1, DHPS_SERVER_MAX_DIM, &v, &have)))
        goto out;
    if (!have) {
        rc = fail(x, "%s.dim: required (1..%u)", path, DHPS_SERVER_MAX_DIM);
        goto out;
    }
    tc->dim = (uint32_t)v;
    tc->dtype = DHPS_FP32;
    if ((rc = get_str(x, t, "dtype", path, false, 16, &dtype)))
        goto out;
    if (dtype) {
        if (!strcmp(dtype, "fp32")) {
            tc->dtype = DHPS_FP32;
        } else if (!strcmp(dtype, "fp16")) {
            tc->dtype = DHPS_FP16;
        } else {
            rc = fail(x, "%s.dtype: must be \"fp32\" or \"fp16\"", path);
            goto out;
        }
    }
    v = 0;
    if ((rc = get_uint(x, t, "default_ttl", path, 0, 4194303, &v, NULL)))
        goto out;
    tc->default_ttl = (uint32_t)v;
    v = 0;
    if ((rc = get_uint(x, t, "mem_limit", path, 0, UINT64_MAX >> 1, &v, NULL)))
        goto out;
    tc->mem_limit = v;
    v = 65536;
    if ((rc = get_uint(x, t, "capacity", path, 1, 1ull << 36, &v, NULL)))
        goto out;
    tc->capacity = v;
    rc = get_bool(x, t, "allow_nonfinite", path, &tc->allow_nonfinite);
out:
    free(name);
    free(dtype);
    return rc;
}

static int parse_shards(cfg_ctx *x, json_t *sh, dhps_server_config *c)
{
    static const char *const keys[] = {"nshards", "own", "cluster_map", "map_node",
                                       "follow_etcd", NULL};
    int rc;
    if ((rc = need_object(x, sh, "shards")) || (rc = only_keys(x, sh, "shards", keys)))
        return rc;
    if ((rc = get_str(x, sh, "cluster_map", "shards", false, 4096, &c->cluster_map)))
        return rc;
    uint64_t v = 0;
    bool have = false;
    if (c->cluster_map) { /* the map decides nshards and ownership (resolved later) */
        if (json_object_get(sh, "nshards") || json_object_get(sh, "own"))
            return fail(x, "shards: give either cluster_map + map_node, or nshards + own");
        if ((rc = get_uint(x, sh, "map_node", "shards", 0, 65535, &v, &have)))
            return rc;
        if (!have)
            return fail(x, "shards.map_node: required with cluster_map (this node's id in "
                           "the map)");
        c->map_node = (uint32_t)v;
        if ((rc = get_bool(x, sh, "follow_etcd", "shards", &c->follow_etcd)))
            return rc;
        if (c->follow_etcd && !c->coord_etcd)
            return fail(x, "shards.follow_etcd: needs \"coord\" (the etcd the map is taken "
                           "from)");
        return 0;
    }
    if (json_object_get(sh, "map_node"))
        return fail(x, "shards.map_node: only with cluster_map");
    if (json_object_get(sh, "follow_etcd"))
        return fail(x, "shards.follow_etcd: only with cluster_map + map_node (the map's "
                       "local copy and this node's id in it)");
    if ((rc = get_uint(x, sh, "nshards", "shards", 1, DHPS_SERVER_MAX_SHARDS, &v, &have)))
        return rc;
    if (!have)
        return fail(x, "shards.nshards: required (1..%u)", DHPS_SERVER_MAX_SHARDS);
    c->nshards = (uint32_t)v;
    if (!(c->owned = calloc(c->nshards, 1)))
        return -ENOMEM;
    json_t *own = json_object_get(sh, "own");
    if (!own)
        return fail(x, "shards.own: required (\"all\" or a list of shard ids)");
    if (json_is_string(own)) {
        if (strcmp(json_string_value(own), "all"))
            return fail(x, "shards.own: must be \"all\" or a list of shard ids");
        memset(c->owned, 1, c->nshards);
        return 0;
    }
    if (!json_is_array(own) || json_array_size(own) == 0)
        return fail(x, "shards.own: must be \"all\" or a non-empty list of shard ids");
    size_t i;
    json_t *e;
    json_array_foreach(own, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) >= (json_int_t)c->nshards)
            return fail(x, "shards.own[%zu]: must be 0..%u", i, c->nshards - 1);
        if (c->owned[json_integer_value(e)])
            return fail(x, "shards.own[%zu]: shard %lld listed twice", i,
                        (long long)json_integer_value(e));
        c->owned[json_integer_value(e)] = 1;
    }
    return 0;
}

/* "log": the update log. Called after "snapshot" (its defaults derive from it). */
static int parse_log(cfg_ctx *x, json_t *root, dhps_server_config *c)
{
    static const char *const lk[] = {"dir", "enabled", "fsync", "fsync_interval_ms",
                                     "segment_mb", "max_mb", NULL};
    json_t *lg = json_object_get(root, "log");
    int rc;
    uint64_t v;
    char *fs = NULL;
    c->log_enabled = c->snapshot_dir != NULL;
    if (lg) {
        if ((rc = need_object(x, lg, "log")) || (rc = only_keys(x, lg, "log", lk)))
            return rc;
        bool en_set = json_object_get(lg, "enabled") != NULL;
        c->log_enabled = true; /* a "log" object asks for a log unless enabled: false */
        if ((rc = get_bool(x, lg, "enabled", "log", &c->log_enabled)))
            return rc;
        if (c->log_enabled && !c->snapshot_dir)
            return fail(x, en_set ? "log.enabled: needs snapshot.dir (snapshots are what "
                                    "truncate the log)"
                                  : "log: needs snapshot.dir (snapshots are what truncate "
                                    "the log); set snapshot.dir or log.enabled false");
        if ((rc = get_str(x, lg, "dir", "log", false, 4000, &c->log_dir)) ||
            (rc = get_str(x, lg, "fsync", "log", false, 16, &fs)))
            return rc;
        if (fs) {
            if (!strcmp(fs, "always"))
                c->log_fsync = DHPS_WAL_SYNC_ALWAYS;
            else if (!strcmp(fs, "interval"))
                c->log_fsync = DHPS_WAL_SYNC_INTERVAL;
            else if (!strcmp(fs, "never"))
                c->log_fsync = DHPS_WAL_SYNC_NEVER;
            free(fs);
            if (c->log_fsync < 0)
                return fail(x, "log.fsync: must be \"always\", \"interval\" or \"never\"");
        }
        v = c->log_fsync_interval_ms;
        if ((rc = get_uint(x, lg, "fsync_interval_ms", "log", 1, 10000, &v, NULL)))
            return rc;
        c->log_fsync_interval_ms = (uint32_t)v;
        v = c->log_segment_mb;
        if ((rc = get_uint(x, lg, "segment_mb", "log", 1, 1024, &v, NULL)))
            return rc;
        c->log_segment_mb = (uint32_t)v;
        v = c->log_max_mb;
        if ((rc = get_uint(x, lg, "max_mb", "log", 1, 1u << 20, &v, NULL)))
            return rc;
        c->log_max_mb = (uint32_t)v;
        if (c->log_max_mb < c->log_segment_mb)
            return fail(x, "log.max_mb: must be at least log.segment_mb (%u)",
                        c->log_segment_mb);
    }
    if (c->log_fsync < 0)
        c->log_fsync = DHPS_WAL_SYNC_INTERVAL;
    if (c->log_enabled && !c->log_dir) {
        size_t n = strlen(c->snapshot_dir) + 5;
        if (!(c->log_dir = malloc(n)))
            return -ENOMEM;
        snprintf(c->log_dir, n, "%s/log", c->snapshot_dir);
    }
    return 0;
}

static int parse_root(cfg_ctx *x, json_t *root, dhps_server_config *c)
{
    static const char *const keys[] = {"node_id", "labels", "listen", "tables", "snapshot",
                                       "secret_file", "metrics", "shards", "pid_file",
                                       "port_file", "startup_delay_ms", "startup_gate_file", "admin",
                                       "sync", "log", "coord", "tls", NULL};
    int rc;
    if (!json_is_object(root))
        return fail(x, "top level: must be an object");
    if ((rc = only_keys(x, root, "", keys)))
        return rc;
    if ((rc = get_str(x, root, "node_id", "", true, 255, &c->node_id)))
        return rc;

    json_t *l = json_object_get(root, "labels");
    if (l) {
        static const char *const lk[] = {"host", "pod", "az", NULL};
        if ((rc = need_object(x, l, "labels")) || (rc = only_keys(x, l, "labels", lk)) ||
            (rc = get_str(x, l, "host", "labels", false, 255, &c->label_host)) ||
            (rc = get_str(x, l, "pod", "labels", false, 255, &c->label_pod)) ||
            (rc = get_str(x, l, "az", "labels", false, 255, &c->label_az)))
            return rc;
    }

    uint64_t v;
    json_t *li = json_object_get(root, "listen");
    if (li) {
        static const char *const lk[] = {"host", "tcp_port", "shm", "verbs", "workers",
                                         "max_msg", "hello_timeout_ms", "max_connections",
                                         "max_conns_per_peer", "max_input_mb",
                                         "frame_timeout_ms", "idle_timeout_s", NULL};
        if ((rc = need_object(x, li, "listen")) || (rc = only_keys(x, li, "listen", lk)) ||
            (rc = get_str(x, li, "host", "listen", false, 63, &c->listen_host)))
            return rc;
        if (c->listen_host && !valid_ipv4(c->listen_host))
            return fail(x, "listen.host: must be a numeric IPv4 address");
        v = 0;
        if ((rc = get_uint(x, li, "tcp_port", "listen", 0, 65535, &v, &c->tcp_port_set)))
            return rc;
        c->tcp_port = (uint16_t)v;
        v = c->workers;
        if ((rc = get_uint(x, li, "workers", "listen", 1, 64, &v, NULL)))
            return rc;
        c->workers = (uint32_t)v;
        v = c->max_msg;
        if ((rc = get_uint(x, li, "max_msg", "listen", 4096, 16u << 20, &v, NULL)))
            return rc;
        c->max_msg = (uint32_t)v;
        v = c->hello_timeout_ms;
        if ((rc = get_uint(x, li, "hello_timeout_ms", "listen", 100, 60000, &v, NULL)))
            return rc;
        c->hello_timeout_ms = (uint32_t)v;
        /* limits against hostile peers (docs/security.md); 0 = the rpc default */
        const struct { const char *key; uint64_t lo, hi; uint32_t *out; } lim[] = {
            {"max_connections", 1, 1u << 20, &c->rpc_max_connections},
            {"max_conns_per_peer", 1, 1u << 20, &c->rpc_max_conns_per_peer},
            {"max_input_mb", 1, 1u << 20, &c->rpc_max_input_mb},
            {"frame_timeout_ms", 100, 3600000, &c->rpc_frame_timeout_ms},
            {"idle_timeout_s", 1, 86400 * 7, &c->rpc_idle_timeout_s},
        };
        for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
            bool has = false;
            if ((rc = get_uint(x, li, lim[i].key, "listen", lim[i].lo, lim[i].hi, &v, &has)))
                return rc;
            if (has)
                *lim[i].out = (uint32_t)v;
        }
        if (c->rpc_max_connections && c->rpc_max_conns_per_peer &&
            c->rpc_max_conns_per_peer > c->rpc_max_connections)
            return fail(x, "listen.max_conns_per_peer: must not exceed listen.max_connections");
        if ((rc = get_bool(x, li, "shm", "listen", &c->shm)) ||
            (rc = get_bool(x, li, "verbs", "listen", &c->verbs)))
            return rc;
    }
    if (!c->listen_host && !(c->listen_host = strdup("127.0.0.1")))
        return -ENOMEM;

    json_t *ts = json_object_get(root, "tables");
    if (!ts)
        return fail(x, "tables: required (a non-empty list)");
    if (!json_is_array(ts) || json_array_size(ts) == 0 ||
        json_array_size(ts) > DHPS_SERVER_MAX_TABLES)
        return fail(x, "tables: must be a list of 1..%d tables", DHPS_SERVER_MAX_TABLES);
    size_t i;
    json_t *t;
    json_array_foreach(ts, i, t) {
        if ((rc = parse_table(x, t, i, &c->tables[i])))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(c->tables[j].name, c->tables[i].name))
                return fail(x, "tables[%zu].name: \"%s\" already used by tables[%zu]", i,
                            c->tables[i].name, j);
        c->ntables = (uint32_t)i + 1;
    }

    json_t *sn = json_object_get(root, "snapshot");
    if (sn) {
        static const char *const sk[] = {"dir", "interval_s", "on_shutdown", NULL};
        if ((rc = need_object(x, sn, "snapshot")) ||
            (rc = only_keys(x, sn, "snapshot", sk)) ||
            (rc = get_str(x, sn, "dir", "snapshot", true, 4000, &c->snapshot_dir)) ||
            (rc = get_bool(x, sn, "on_shutdown", "snapshot", &c->snapshot_on_shutdown)))
            return rc;
        v = 0;
        if ((rc = get_uint(x, sn, "interval_s", "snapshot", 0, 86400 * 7, &v, NULL)))
            return rc;
        c->snapshot_interval_s = (uint32_t)v;
    }
    if ((rc = parse_log(x, root, c)))
        return rc;

    if ((rc = get_str(x, root, "secret_file", "", true, 4000, &c->secret_file)))
        return rc;
    if ((rc = parse_tls(x, root, c)))
        return rc;

    json_t *m = json_object_get(root, "metrics");
    if (m) {
        static const char *const mk[] = {"host",        "port",
                                         "max_connections", "max_per_ip",
                                         "header_timeout_ms", "health_port", NULL};
        if ((rc = need_object(x, m, "metrics")) || (rc = only_keys(x, m, "metrics", mk)) ||
            (rc = get_str(x, m, "host", "metrics", false, 63, &c->metrics_host)))
            return rc;
        if (c->metrics_host && !valid_ipv4(c->metrics_host))
            return fail(x, "metrics.host: must be a numeric IPv4 address");
        json_t *p = json_object_get(m, "port");
        if (p && json_is_integer(p) && json_integer_value(p) == -1) {
            c->metrics_enabled = false;
        } else {
            v = 0;
            if ((rc = get_uint(x, m, "port", "metrics", 0, 65535, &v, NULL)))
                return fail(x, "metrics.port: must be 0..65535, or -1 for no metrics");
            c->metrics_port = (uint16_t)v;
            c->metrics_enabled = true;
        }
        bool has = false;
        if ((rc = get_uint(x, m, "max_connections", "metrics", 1, 65536, &v, &has)))
            return rc;
        if (has)
            c->metrics_max_connections = (uint32_t)v;
        if ((rc = get_uint(x, m, "max_per_ip", "metrics", 1, 65536, &v, &has)))
            return rc;
        if (has)
            c->metrics_max_per_ip = (uint32_t)v;
        if ((rc = get_uint(x, m, "header_timeout_ms", "metrics", 100, 60000, &v, &has)))
            return rc;
        if (has)
            c->metrics_header_timeout_ms = (uint32_t)v;
        if ((rc = get_uint(x, m, "health_port", "metrics", 0, 65535, &v, &has)))
            return rc;
        if (has)
            c->metrics_health_port = (int32_t)v;
        if (c->metrics_max_per_ip && c->metrics_max_connections &&
            c->metrics_max_per_ip > c->metrics_max_connections)
            return fail(x, "metrics.max_per_ip: must not exceed metrics.max_connections");
    }
    if (!c->metrics_host && !(c->metrics_host = strdup("127.0.0.1")))
        return -ENOMEM;

    json_t *ad = json_object_get(root, "admin");
    if (ad) {
        static const char *const ak[] = {"faults", NULL};
        if ((rc = need_object(x, ad, "admin")) || (rc = only_keys(x, ad, "admin", ak)) ||
            (rc = get_bool(x, ad, "faults", "admin", &c->admin_faults)))
            return rc;
        if (c->admin_faults && !c->metrics_enabled)
            return fail(x, "admin.faults: needs the metrics HTTP endpoint (set metrics.port)");
    }

    json_t *sy = json_object_get(root, "sync");
    if (sy) {
        static const char *const yk[] = {"enabled", "peer_wait_s", "anti_entropy_s",
                                         "tombstone_s", "ranges", "version_margin_s",
                                         "empty_peer_wait_s", NULL};
        if ((rc = need_object(x, sy, "sync")) || (rc = only_keys(x, sy, "sync", yk)) ||
            (rc = get_bool(x, sy, "enabled", "sync", &c->sync_enabled)))
            return rc;
        struct {
            const char *key;
            uint64_t lo, hi;
            uint32_t *dst;
        } u[] = {{"peer_wait_s", 0, 3600, &c->sync_peer_wait_s},
                 {"anti_entropy_s", 0, 86400, &c->sync_anti_entropy_s},
                 {"tombstone_s", 60, 86400 * 30, &c->sync_tombstone_s},
                 {"ranges", 1, DHPS_PROTO_SYNC_MAX_RANGES, &c->sync_ranges},
                 {"version_margin_s", 0, 86400, &c->sync_version_margin_s},
                 {"empty_peer_wait_s", 0, 86400, &c->sync_empty_peer_wait_s}};
        for (size_t j = 0; j < sizeof u / sizeof u[0]; j++) {
            bool set = false;
            v = 0;
            if ((rc = get_uint(x, sy, u[j].key, "sync", u[j].lo, u[j].hi, &v, &set)))
                return rc;
            if (set)
                *u[j].dst = (uint32_t)v;
        }
        if (c->sync_anti_entropy_s && c->sync_anti_entropy_s * 2u > c->sync_tombstone_s)
            return fail(x, "sync.tombstone_s: must be at least twice sync.anti_entropy_s, so "
                        "that every peer sees a delete before it is forgotten");
    }

    json_t *co = json_object_get(root, "coord");
    c->coord_lease_ttl_s = 10;
    if (co) {
        static const char *const ck[] = {"etcd", "cluster", "lease_ttl_s", NULL};
        if ((rc = need_object(x, co, "coord")) || (rc = only_keys(x, co, "coord", ck)) ||
            (rc = get_str(x, co, "etcd", "coord", true, 255, &c->coord_etcd)) ||
            (rc = get_str(x, co, "cluster", "coord", true, 63, &c->coord_cluster)))
            return rc;
        if (strchr(c->coord_cluster, '/'))
            return fail(x, "coord.cluster: must not contain '/'");
        v = 10;
        if ((rc = get_uint(x, co, "lease_ttl_s", "coord", 2, 300, &v, NULL)))
            return rc;
        c->coord_lease_ttl_s = (uint32_t)v;
    }

    json_t *sh = json_object_get(root, "shards");
    if (!sh)
        return fail(x, "shards: required ({\"nshards\": N, \"own\": \"all\" | [ids]})");
    if ((rc = parse_shards(x, sh, c)))
        return rc;

    if ((rc = get_str(x, root, "pid_file", "", false, 4000, &c->pid_file)) ||
        (rc = get_str(x, root, "port_file", "", false, 4000, &c->port_file)))
        return rc;
    v = 0;
    if ((rc = get_uint(x, root, "startup_delay_ms", "", 0, 60000, &v, NULL)))
        return rc;
    c->startup_delay_ms = (uint32_t)v;
    if ((rc = get_str(x, root, "startup_gate_file", "", false, 4000, &c->startup_gate_file)))
        return rc;
    return 0;
}

int dhps_server_config_parse(const void *buf, size_t len, dhps_server_config **out,
                             char *err, size_t errlen)
{
    cfg_ctx x = {err, errlen};
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    dhps_server_config *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->shm = true;
    c->workers = 2;
    c->max_msg = 4u << 20;
    c->hello_timeout_ms = 2000;
    c->snapshot_on_shutdown = true;
    c->metrics_max_connections = 64;
    c->metrics_max_per_ip = 16;
    c->metrics_header_timeout_ms = 2000;
    c->metrics_health_port = -1;
    c->rpc_fd = c->metrics_fd = c->health_fd = -1;
    c->sync_enabled = true;
    c->sync_peer_wait_s = 10;
    c->sync_anti_entropy_s = 30;
    c->sync_tombstone_s = 3600;
    c->sync_ranges = 256;
    c->sync_version_margin_s = 60;
    c->log_fsync = -1; /* "interval" unless log.fsync says otherwise */
    c->log_fsync_interval_ms = 10;
    c->log_segment_mb = 64;
    c->log_max_mb = 1024;
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    int rc;
    if (!root) {
        rc = fail(&x, "line %d column %d: %s", je.line, je.column, je.text);
        goto fail;
    }
    rc = parse_root(&x, root, c);
    json_decref(root);
    if (rc)
        goto fail;
    *out = c;
    return 0;
fail:
    dhps_server_config_free(c);
    return rc;
}

int dhps_server_config_load(const char *path, dhps_server_config **out, char *err,
                            size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        if (err && errlen)
            snprintf(err, errlen, "config %s: %s", path, strerror(e));
        return DHPS_E_CONFIG;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            char *nb = cap > (16u << 20) ? NULL : realloc(buf, cap);
            if (!nb) {
                if (err && errlen)
                    snprintf(err, errlen, "config %s: too large or out of memory", path);
                rc = DHPS_E_CONFIG;
                goto out;
            }
            buf = nb;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        if (err && errlen)
            snprintf(err, errlen, "config %s: read error", path);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    rc = dhps_server_config_parse(buf, len, out, err, errlen);
out:
    free(buf);
    fclose(f);
    return rc;
}

void dhps_server_config_free(dhps_server_config *c)
{
    if (!c)
        return;
    free(c->node_id);
    free(c->label_host);
    free(c->label_pod);
    free(c->label_az);
    free(c->listen_host);
    free(c->snapshot_dir);
    free(c->secret_file);
    free(c->metrics_host);
    free(c->owned);
    free(c->cluster_map);
    free(c->pid_file);
    free(c->port_file);
    free(c->log_dir);
    free(c->coord_etcd);
    free(c->coord_cluster);
    free(c->startup_gate_file);
    free(c->tls_cert_file);
    free(c->tls_key_file);
    free(c->tls_ca_file);
    free(c->tls_server_name);
    free(c);
}

/* Deep copy (private: srv_int.h). Returns NULL on allocation failure. */
dhps_server_config *srv_config_dup(const dhps_server_config *c)
{
    dhps_server_config *d = malloc(sizeof *d);
    if (!d)
        return NULL;
    *d = *c;
    char **strs[] = {&d->node_id, &d->label_host, &d->label_pod, &d->label_az,
                     &d->listen_host, &d->snapshot_dir, &d->secret_file, &d->metrics_host,
                     &d->cluster_map, &d->pid_file, &d->port_file, &d->log_dir,
                     &d->coord_etcd, &d->coord_cluster, &d->startup_gate_file,
                     &d->tls_cert_file, &d->tls_key_file, &d->tls_ca_file,
                     &d->tls_server_name};
    const char *src[] = {c->node_id, c->label_host, c->label_pod, c->label_az,
                         c->listen_host, c->snapshot_dir, c->secret_file, c->metrics_host,
                         c->cluster_map, c->pid_file, c->port_file, c->log_dir,
                         c->coord_etcd, c->coord_cluster, c->startup_gate_file,
                         c->tls_cert_file, c->tls_key_file, c->tls_ca_file,
                         c->tls_server_name};
    bool ok = true;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        *strs[i] = NULL;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (src[i] && !(*strs[i] = strdup(src[i])))
            ok = false;
    d->owned = NULL;
    if (c->owned && c->nshards && (d->owned = malloc(c->nshards)))
        memcpy(d->owned, c->owned, c->nshards);
    else if (c->owned)
        ok = false;
    if (!ok) {
        dhps_server_config_free(d);
        return NULL;
    }
    return d;
}

int srv_config_resolve_map(dhps_server_config *c, const dhps_cluster_map *m, char *err,
                           size_t errlen)
{
    uint32_t ns = dhps_cluster_map_nshards(m);
    const dhps_cluster_node *me = dhps_cluster_map_node(m, c->map_node);
    if (!me && !c->follow_etcd) {
        if (err && errlen)
            snprintf(err, errlen, "config shards.map_node: node %u is not in the cluster map "
                     "%s", c->map_node, c->cluster_map);
        return DHPS_E_CONFIG;
    }
    if (ns < 1 || ns > DHPS_SERVER_MAX_SHARDS) {
        if (err && errlen)
            snprintf(err, errlen, "config shards.cluster_map %s: nshards %u outside 1..%u",
                     c->cluster_map, ns, DHPS_SERVER_MAX_SHARDS);
        return DHPS_E_CONFIG;
    }
    if (!c->tcp_port_set && me)
        c->tcp_port = me->port;
    uint8_t *owned = calloc(ns, 1);
    uint32_t *ids = malloc((size_t)ns * sizeof *ids);
    if (!owned || !ids) {
        free(owned);
        free(ids);
        return -ENOMEM;
    }
    size_t k = dhps_cluster_map_holdings_of(m, c->map_node, ids, ns);
    for (size_t i = 0; i < k && i < ns; i++)
        owned[ids[i]] = 1;
    free(ids);
    if (!me)
        DHPS_LOG(DHPS_LOG_WARN, "server", "node %u is not in cluster map version %llu: it holds "
                 "nothing until a map adds it", c->map_node,
                 (unsigned long long)dhps_cluster_map_version(m));
    else if (k == 0)
        DHPS_LOG(DHPS_LOG_WARN, "server", "node %u owns no shard in cluster map %s",
                 c->map_node, c->cluster_map);
    free(c->owned);
    c->owned = owned;
    c->nshards = ns;
    return 0;
}

int dhps_server_config_resolve(dhps_server_config *c, char *err, size_t errlen)
{
    if (!c->cluster_map)
        return 0;
    dhps_cluster_map *m = NULL;
    char merr[512] = "";
    int rc = dhps_cluster_map_load(c->cluster_map, &m, merr, sizeof merr);
    if (rc == -ENOENT && c->follow_etcd)
        return 0; /* the map comes from etcd at start */
    if (rc) {
        char *nl = strchr(merr, '\n');
        if (nl)
            *nl = 0; /* first problem only */
        if (err && errlen)
            snprintf(err, errlen, "config shards.cluster_map %s: %s", c->cluster_map,
                     merr[0] ? merr : dhps_strerror(rc));
        return DHPS_E_CONFIG;
    }
    rc = srv_config_resolve_map(c, m, err, errlen);
    dhps_cluster_map_destroy(m);
    return rc;
}

/*
 * dhps get / put / stats / snapshot: one-shot calls against a running cluster.
 *
 *   dhps get KEY... [--table T] [target]       print each key's vector, "missing" (a
 *                                              ready replica answered absent) or
 *                                              "unanswered (reason)"
 *   dhps put KEY V1,V2,... [--table T] [target] write one vector (every replica acks)
 *   dhps stats [--table T] [--json] [target]   STATS of every node: keys, bytes, lookups
 *   dhps snapshot [target]                     SNAPSHOT on every node
 *
 * target: --cluster DIR (default $DHPS_CLUSTER_DIR or ./dhps-cluster, as `dhps up`
 * writes it) or --map FILE --secret FILE. The table's dim and dtype come from the
 * nodes (INFO), so get/put need no --dim.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/server.h"
#include "tools.h"
#include "toolsclient.h"

struct ops_opts {
    tools_target tgt;
    const char *table;
    bool json;
    uint64_t timeout_us; /* dhps get's lookup deadline (--timeout-ms, default 2 s) */
    bool timeout_set;    /* --timeout-ms given: also put's deadline (default 10 s) */
};

/* Common options; returns the index of the first positional argument, or -1 (usage). */
static int ops_parse(int argc, char **argv, struct ops_opts *o, const char *usage)
{
    static const struct option lo[] = {
        {"cluster", required_argument, 0, 'c'}, {"dir", required_argument, 0, 'c'},
        {"map", required_argument, 0, 'm'},     {"addr", required_argument, 0, 'a'},
        {"secret", required_argument, 0, 's'},  {"table", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},          {"help", no_argument, 0, 'h'},
        {"timeout-ms", required_argument, 0, 'T'}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->table = "emb";
    /* A one-shot CLI lookup opens its connections inside the call: the client's 100 ms
     * default (sized for a warm inference client) was exceeded by a first connection
     * under ASan on a loaded machine. 2 s is generous for a human at a prompt. */
    o->timeout_us = 2000000;
    uint64_t ms;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:m:s:t:jha:", lo, NULL)) != -1) {
        switch (c) {
        case 'a': o->tgt.addr = optarg; break;
        case 'c': o->tgt.cluster_dir = optarg; break;
        case 'm': o->tgt.map = optarg; break;
        case 's': o->tgt.secret = optarg; break;
        case 't': o->table = optarg; break;
        case 'j': o->json = true; break;
        case 'T':
            if (!tools_parse_u64("get", "--timeout-ms", optarg, &ms) || !ms || ms > 3600000) {
                fprintf(stderr, "dhps: --timeout-ms must be 1..3600000\n");
                return -1;
            }
            o->timeout_us = ms * 1000;
            o->timeout_set = true;
            break;
        case 'h': printf("%s", usage); exit(0);
        default: fprintf(stderr, "%s", usage); return -1;
        }
    }
    return optind;
}

/* ---- table info (INFO of the nodes) --------------------------------------------------- */

struct info_ctx {
    tools_conn *c;
    const char *table;
    int dim, dtype; /* dim 0 until found */
    int serving;    /* nodes that answered with the table */
    char why[4096]; /* per node that did not: "node 0 (ip:port) auth failed (...)" */
    size_t whylen;
    json_t *nodes;  /* for `dhps info`: one object per node, or NULL */
};

static const char *fail_reason(int err);

static void info_fn(void *arg, uint32_t node, int status, uint32_t count, const char *text,
                    size_t len)
{
    struct info_ctx *ic = arg;
    (void)count;
    const dhps_cluster_node *nd = dhps_cluster_map_node(ic->c->map, node);
    const char *addr = nd ? nd->addr : "?";
    json_t *o = status ? NULL : json_loadb(text, len, 0, NULL), *t;
    char why[600] = "";
    bool has = false;
    if (status == DHPS_E_AUTH)
        snprintf(why, sizeof why, "auth failed (wrong cluster secret?)");
    else if (status)
        snprintf(why, sizeof why, "%s", fail_reason(status));
    else if (!o)
        snprintf(why, sizeof why, "INFO answer is not JSON");
    size_t i;
    json_t *tables = json_array();
    json_array_foreach(json_object_get(o, "tables"), i, t) {
        const char *name = json_string_value(json_object_get(t, "name")) ?: "";
        json_array_append_new(tables, json_string(name));
        if (strcmp(name, ic->table))
            continue;
        has = true;
        if (!ic->dim) {
            ic->dim = (int)json_integer_value(json_object_get(t, "dim"));
            const char *d = json_string_value(json_object_get(t, "dtype"));
            ic->dtype = d && !strcmp(d, "fp16") ? DHPS_FP16 : DHPS_FP32;
        }
    }
    if (o && !has) {
        size_t w = (size_t)snprintf(why, sizeof why, "has no table '%s' (tables:", ic->table);
        json_t *nm;
        json_array_foreach(tables, i, nm)
            if (w < sizeof why)
                w += (size_t)snprintf(why + w, sizeof why - w, " %s", json_string_value(nm));
        if (w < sizeof why)
            snprintf(why + w, sizeof why - w, "%s)", json_array_size(tables) ? "" : " none");
    }
    if (has)
        ic->serving++;
    else if (ic->whylen < sizeof ic->why) {
        int k = snprintf(ic->why + ic->whylen, sizeof ic->why - ic->whylen, "%snode %u (%s) %s",
                         ic->whylen ? "; " : "", node, addr, why);
        if (k > 0)
            ic->whylen += (size_t)k;
    }
    if (ic->nodes) {
        json_t *e = json_pack("{s:i,s:s,s:b}", "node", (int)node, "addr", addr, "serves", has);
        if (o) {
            json_object_set(e, "node_id", json_object_get(o, "node_id"));
            json_object_set(e, "ready", json_object_get(o, "ready"));
            json_object_set(e, "labels", json_object_get(o, "labels"));
            json_object_set(e, "nshards", json_object_get(o, "nshards"));
            json_object_set_new(e, "shards_owned",
                                json_integer((json_int_t)json_array_size(
                                    json_object_get(o, "shards"))));
            json_object_set_new(e, "tables", json_incref(tables));
        }
        if (!has)
            json_object_set_new(e, "error", json_string(why));
        json_array_append_new(ic->nodes, e);
    }
    json_decref(tables);
    json_decref(o);
}

/* The table's dim and dtype from the nodes' INFO. When no node answers with it: one
 * line naming every node and why (auth, unreachable, not ready, no such table). */
int tools_table_info(tools_conn *c, const char *table, uint32_t *dim, int *dtype)
{
    struct info_ctx ic = {.c = c, .table = table};
    tools_conn_admin(c, DHPS_M_INFO, table, info_fn, &ic);
    if (!ic.dim) {
        fprintf(stderr, "dhps: no node serves table '%s': %s\n", table,
                ic.whylen ? ic.why : "the map lists no nodes");
        return DHPS_E_NOTFOUND;
    }
    *dim = (uint32_t)ic.dim;
    *dtype = ic.dtype;
    return 0;
}

/* ---- get / put ------------------------------------------------------------------------ */

/* Why a node or a key went unanswered, in the words `dhps get` prints. */
static const char *fail_reason(int err)
{
    switch (err) {
    case DHPS_E_NOTREADY: return "not ready";
    case DHPS_E_UNREACHABLE: return "unreachable";
    case DHPS_E_TIMEOUT: return "timeout";
    case DHPS_E_AUTH: return "auth";
    case DHPS_E_TLS: return "tls (the node requires TLS, refused ours, or its certificate is "
                            "not trusted: DHPS_TLS, DHPS_TLS_CA)";
    default: return dhps_strerror(err);
    }
}

/* After a lookup that left keys unanswered: one line naming the nodes whose attempts
 * failed during it and why, from the client's per-node counters (before: taken just
 * before the lookup, one per node of the map, in map order). */
static void print_failed_nodes(tools_conn *c, const dhps_client_node_stats *before)
{
    char line[4096];
    size_t len = 0;
    int nfailed = 0;
    for (size_t i = 0; i < dhps_cluster_map_nnodes(c->map); i++) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(c->map, i);
        dhps_client_node_stats now;
        if (dhps_client_node_stats_get(c->client, nd->id, &now) < 0)
            continue;
        uint64_t not_ready = now.not_ready - before[i].not_ready;
        uint64_t timeouts = now.timeouts - before[i].timeouts;
        uint64_t other = now.errors - before[i].errors - not_ready;
        if (!not_ready && !timeouts && !other)
            continue;
        char why[160];
        int w = 0;
        if (not_ready)
            w += snprintf(why + w, sizeof why - (size_t)w, "not ready");
        if (timeouts)
            w += snprintf(why + w, sizeof why - (size_t)w, "%stimeout", w ? ", " : "");
        if (other) /* the reason of its latest failure, if that was not "not ready" */
            snprintf(why + w, sizeof why - (size_t)w, "%s%s", w ? ", " : "",
                     now.last_error && now.last_error != DHPS_E_NOTREADY
                         ? fail_reason(now.last_error) : "error");
        int k = snprintf(line + len, sizeof line - len, "%snode %u (%s) %s",
                         nfailed ? "; " : "", nd->id, nd->addr, why);
        if (k > 0 && (size_t)k < sizeof line - len)
            len += (size_t)k;
        nfailed++;
    }
    if (nfailed)
        fprintf(stderr, "dhps get: failed nodes: %s\n", line);
}

static const char get_usage[] =
    "usage: dhps get KEY... [--table T] [--timeout-ms 2000] [--cluster DIR | --map FILE --secret FILE]\n"
    "  print each key's vector (at most 1024 keys), \"missing\" or \"unanswered (why)\"\n"
    "  --table T          table (default emb)\n"
    "  --timeout-ms MS    deadline of the lookup (default 2000)\n"
    "  --cluster DIR      cluster directory of `dhps up` (default $DHPS_CLUSTER_DIR or\n"
    "                     ./dhps-cluster); --dir DIR is the same\n"
    "  --map F --secret F any cluster: its map file and its secret file\n"
    "  --addr H:P --secret F  one node by its rpc address, no map (its shards only)\n"
    "  --version          print the version\n";
static const char put_usage[] =
    "usage: dhps put KEY V1,V2,...,Vdim [--table T] [--timeout-ms 10000] [--cluster DIR | --map F --secret F]\n"
    "  write one key's vector (dim numbers; every replica acks)\n"
    "  --table T          table (default emb)\n"
    "  --timeout-ms MS    deadline of the write (default 10000)\n"
    "  --cluster DIR      cluster directory of `dhps up` (default $DHPS_CLUSTER_DIR or\n"
    "                     ./dhps-cluster); --dir DIR is the same\n"
    "  --map F --secret F any cluster: its map file and its secret file\n"
    "  --addr H:P --secret F  one node by its rpc address, no map (its shards only)\n"
    "  --version          print the version\n";

int dhps_cmd_get(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, get_usage);
    if (first < 0 || first >= argc) {
        fprintf(stderr, "%s", get_usage);
        return 2;
    }
    size_t n = (size_t)(argc - first);
    uint64_t *keys = calloc(n, sizeof *keys), miss[1024 / 64 + 1] = {0},
             unans[1024 / 64 + 1] = {0};
    float *out = NULL;
    dhps_client_node_stats *before = NULL;
    tools_conn *c = NULL;
    int rc = 1, err;
    if (!keys)
        goto out;
    if (n > 1024) {
        fprintf(stderr, "dhps get: at most 1024 keys at once\n");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!tools_parse_u64("get", "key", argv[first + (int)i], &keys[i])) {
            rc = 2;
            goto out;
        }
    uint32_t dim;
    int dtype;
    if (tools_conn_open(&o.tgt, &c) < 0 || tools_table_info(c, o.table, &dim, &dtype) < 0)
        goto out;
    size_t nnodes = dhps_cluster_map_nnodes(c->map);
    if (!(out = calloc(n * dim, sizeof *out)) ||
        !(before = calloc(nnodes + 1, sizeof *before)))
        goto out;
    for (size_t i = 0; i < nnodes; i++)
        dhps_client_node_stats_get(c->client, dhps_cluster_map_node_at(c->map, i)->id,
                                   &before[i]);
    dhps_client_result res;
    err = dhps_client_lookup_masks(c->client, o.table, keys, n, out, dim, DHPS_FP32, miss,
                                   unans, o.timeout_us, &res);
    if (err && !res.unanswered) { /* nothing written (bad arguments, too big, memory) */
        fprintf(stderr, "dhps get: %s\n", dhps_strerror(err));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        printf("%llu", (unsigned long long)keys[i]);
        if (unans[i / 64] >> (i % 64) & 1) { /* no ready replica answered */
            printf(" unanswered (%s)\n", fail_reason(err));
            continue;
        }
        if (miss[i / 64] >> (i % 64) & 1) { /* a ready replica answered "absent" */
            printf(" missing\n");
            continue;
        }
        for (uint32_t d = 0; d < dim; d++)
            printf("%c%.9g", d ? ',' : ' ', (double)out[i * dim + d]);
        printf("\n");
    }
    if (err || res.unanswered) {
        fprintf(stderr, "dhps get: %zu keys unanswered: %s\n", res.unanswered,
                dhps_strerror(err));
        print_failed_nodes(c, before);
        goto out;
    }
    rc = 0;
out:
    tools_conn_close(c);
    free(before);
    free(out);
    free(keys);
    return rc;
}

int dhps_cmd_put(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, put_usage);
    if (first < 0 || argc - first != 2) {
        fprintf(stderr, "%s", put_usage);
        return 2;
    }
    uint64_t key;
    if (!tools_parse_u64("put", "key", argv[first], &key))
        return 2;
    tools_conn *c = NULL;
    float *vec = NULL;
    int rc = 1, err;
    uint32_t dim;
    int dtype;
    if (tools_conn_open(&o.tgt, &c) < 0 || tools_table_info(c, o.table, &dim, &dtype) < 0)
        goto out;
    if (o.timeout_set)
        c->put_timeout_us = o.timeout_us;
    if (!(vec = calloc(dim, sizeof *vec)))
        goto out;
    const char *s = argv[first + 1];
    uint32_t got = 0;
    while (*s) {
        char *end;
        errno = 0;
        float v = strtof(s, &end);
        if (end != s && (!isfinite(v) || errno == ERANGE) && !(errno == ERANGE && v == 0)) {
            fprintf(stderr, "dhps put: value %u (%.*s) is not a finite fp32 number (NaN, inf "
                            "and magnitudes past 3.4e38 are refused)\n", got + 1,
                    (int)(end - s), s);
            rc = 2;
            goto out;
        }
        if (end == s || got == dim) {
            fprintf(stderr, "dhps put: need exactly %u comma-separated numbers for table %s\n",
                    dim, o.table);
            rc = 2;
            goto out;
        }
        vec[got++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end == ',' && !end[1]) {
            fprintf(stderr, "dhps put: a trailing comma after value %u\n", got);
            rc = 2;
            goto out;
        }
        if (*end && *end != ',') {
            fprintf(stderr, "dhps put: bad number near '%s'\n", end);
            rc = 2;
            goto out;
        }
    }
    if (got != dim) {
        fprintf(stderr, "dhps put: got %u numbers, table %s has dim %u\n", got, o.table, dim);
        rc = 2;
        goto out;
    }
    dhps_client_result res;
    err = dhps_client_update(c->client, o.table, &key, vec, 1, dim, DHPS_FP32,
                             DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, c->put_timeout_us, NULL, &res);
    if (err) {
        fprintf(stderr, "dhps put: %s\n", dhps_strerror(err));
        goto out;
    }
    printf("put %llu (dim %u) version %llu\n", (unsigned long long)key, dim,
           (unsigned long long)res.version);
    rc = 0;
out:
    free(vec);
    tools_conn_close(c);
    return rc;
}

/* ---- delete / info ------------------------------------------------------------------- */

static const char delete_usage[] =
    "usage: dhps delete KEY... [--table T] [--cluster DIR | --map FILE --secret FILE]\n"
    "  delete keys (every replica acks; at most 1024 keys)\n"
    "  --table T          table (default emb)\n"
    "  --cluster DIR      cluster directory of `dhps up` (default $DHPS_CLUSTER_DIR or\n"
    "                     ./dhps-cluster); --dir DIR is the same\n"
    "  --map F --secret F any cluster: its map and secret file\n";

int dhps_cmd_delete(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, delete_usage);
    if (first < 0 || first >= argc || argc - first > 1024) {
        fprintf(stderr, "%s", delete_usage);
        return 2;
    }
    size_t n = (size_t)(argc - first);
    uint64_t *keys = calloc(n, sizeof *keys), failed[1024 / 64 + 1] = {0};
    tools_conn *c = NULL;
    int rc = 1;
    uint32_t dim;
    int dtype;
    if (!keys)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!tools_parse_u64("delete", "key", argv[first + (int)i], &keys[i])) {
            rc = 2;
            goto out;
        }
    if (tools_conn_open(&o.tgt, &c) < 0 || tools_table_info(c, o.table, &dim, &dtype) < 0)
        goto out;
    dhps_client_result res;
    int err = dhps_client_delete(c->client, o.table, keys, n, DHPS_ACK_ALL, c->put_timeout_us,
                                 failed, &res);
    if (err) {
        size_t nf = 0;
        for (size_t i = 0; i < n; i++)
            nf += failed[i / 64] >> (i % 64) & 1;
        fprintf(stderr, "dhps delete: %zu of %zu keys not deleted on every replica: %s\n", nf,
                n, dhps_strerror(err));
        goto out;
    }
    printf("deleted %zu keys from %s\n", n, o.table);
    rc = 0;
out:
    tools_conn_close(c);
    free(keys);
    return rc;
}

static const char info_usage[] =
    "usage: dhps info TABLE [--json] [--cluster DIR | --map FILE --secret FILE]\n"
    "  the table's dim, dtype and shards, and per node of the map: whether it serves the\n"
    "  table, how many shards it owns, ready or not (or why it did not answer)\n"
    "  --json             one JSON object\n"
    "  --cluster DIR      cluster directory of `dhps up` (--dir DIR is the same)\n"
    "  --map F --secret F any cluster: its map and secret file\n";

int dhps_cmd_info(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, info_usage);
    if (first < 0 || argc - first != 1) {
        fprintf(stderr, "%s", info_usage);
        return 2;
    }
    tools_conn *c = NULL;
    struct info_ctx ic = {.table = argv[first], .nodes = json_array()};
    int rc = 1;
    if (!ic.nodes || tools_conn_open(&o.tgt, &c) < 0)
        goto out;
    ic.c = c;
    tools_conn_admin(c, DHPS_M_INFO, ic.table, info_fn, &ic);
    uint32_t nshards = dhps_cluster_map_nshards(c->map);
    int ready = 0;
    size_t i;
    json_t *e;
    json_array_foreach(ic.nodes, i, e) ready += json_is_true(json_object_get(e, "serves")) &&
                                                json_is_true(json_object_get(e, "ready"));
    if (o.json) {
        json_t *out = json_pack("{s:s,s:i,s:s,s:i,s:i,s:i,s:O}", "table", ic.table, "dim",
                                ic.dim, "dtype", ic.dtype == DHPS_FP16 ? "fp16" : "fp32",
                                "shards", (int)nshards, "nodes_serving", ic.serving,
                                "nodes_ready", ready, "nodes", ic.nodes);
        char *t = out ? json_dumps(out, JSON_COMPACT) : NULL;
        if (t)
            printf("%s\n", t);
        free(t);
        json_decref(out);
    } else if (ic.dim) {
        printf("table %s: dim %d, %s, %u shards, served by %d of %zu nodes (%d ready)\n",
               ic.table, ic.dim, ic.dtype == DHPS_FP16 ? "fp16" : "fp32", nshards, ic.serving,
               json_array_size(ic.nodes), ready);
    }
    if (!o.json)
        json_array_foreach(ic.nodes, i, e) {
            const char *err = json_string_value(json_object_get(e, "error"));
            if (err && !json_object_get(e, "ready"))
                printf("  node %-4lld %-21s %s\n",
                       (long long)json_integer_value(json_object_get(e, "node")),
                       json_string_value(json_object_get(e, "addr")), err);
            else
                printf("  node %-4lld %-21s %s, %lld shards owned, %s\n",
                       (long long)json_integer_value(json_object_get(e, "node")),
                       json_string_value(json_object_get(e, "addr")),
                       err ? err : "serves it",
                       (long long)json_integer_value(json_object_get(e, "shards_owned")),
                       json_is_true(json_object_get(e, "ready")) ? "ready" : "not ready");
        }
    if (!ic.dim) {
        fprintf(stderr, "dhps info: no node serves table '%s': %s\n", ic.table,
                ic.whylen ? ic.why : "the map lists no nodes");
        goto out;
    }
    rc = 0;
out:
    json_decref(ic.nodes);
    tools_conn_close(c);
    return rc;
}

/* ---- stats / snapshot --------------------------------------------------------------- */

static const char stats_usage[] =
    "usage: dhps stats [--table T] [--json] [--cluster DIR | --map FILE --secret FILE]\n"
    "  per node and table: keys, memory, fragmentation, lookups\n"
    "  --table T          only table T (default: every table)\n"
    "  --json             one JSON array, an object per node\n"
    "  --cluster DIR      cluster directory of `dhps up` (default $DHPS_CLUSTER_DIR or\n"
    "                     ./dhps-cluster); --dir DIR is the same\n"
    "  --map F --secret F any cluster: its map file and its secret file\n"
    "  --addr H:P --secret F  one node by its rpc address, no map (its shards only)\n"
    "  --version          print the version\n";
static const char snap_usage[] =
    "usage: dhps snapshot [--cluster DIR | --map FILE --secret FILE]\n"
    "  snapshot every node now (SNAPSHOT)\n"
    "  --cluster DIR      cluster directory of `dhps up` (default $DHPS_CLUSTER_DIR or\n"
    "                     ./dhps-cluster); --dir DIR is the same\n"
    "  --map F --secret F any cluster: its map file and its secret file\n"
    "  --addr H:P --secret F  one node by its rpc address, no map (its shards only)\n"
    "  --version          print the version\n";

struct stats_ctx {
    bool json;
    json_t *all;
    uint64_t keys, lookups, found, bytes;
};

static void stats_fn(void *arg, uint32_t node, int status, uint32_t count, const char *text,
                     size_t len)
{
    struct stats_ctx *sc = arg;
    json_t *o = status ? NULL : json_loadb(text, len, 0, NULL), *t;
    if (sc->json) {
        json_t *e = o ? json_incref(o) : json_pack("{s:s}", "error", dhps_strerror(status));
        json_object_set_new(e, "node", json_integer(node));
        json_array_append_new(sc->all, e);
    }
    if (!o) {
        if (!sc->json)
            printf("node %-4u error: %s\n", node, dhps_strerror(status));
        return;
    }
    size_t i;
    json_array_foreach(json_object_get(o, "tables"), i, t) {
        uint64_t k = (uint64_t)json_integer_value(json_object_get(t, "keys"));
        uint64_t lb = (uint64_t)json_integer_value(json_object_get(t, "live_bytes"));
        uint64_t sb = (uint64_t)json_integer_value(json_object_get(t, "segment_bytes"));
        uint64_t ib = (uint64_t)json_integer_value(json_object_get(t, "index_bytes"));
        uint64_t lu = (uint64_t)json_integer_value(json_object_get(t, "looked_up"));
        uint64_t fo = (uint64_t)json_integer_value(json_object_get(t, "found"));
        sc->keys += k;
        sc->lookups += lu;
        sc->found += fo;
        sc->bytes += sb + ib;
        if (!sc->json)
            printf("node %-4u %-8s %-10s shards %-5lld keys %-10llu live %7.1f MiB  "
                   "memory %7.1f MiB  frag %4.1f%%  looked up %llu found %llu\n", node,
                   json_string_value(json_object_get(o, "node_id")) ?: "?",
                   json_string_value(json_object_get(t, "name")) ?: "?",
                   json_integer_value(json_object_get(t, "shards")), (unsigned long long)k,
                   (double)lb / 1048576.0, (double)(sb + ib) / 1048576.0,
                   100.0 * json_number_value(json_object_get(t, "fragmentation")),
                   (unsigned long long)lu, (unsigned long long)fo);
    }
    json_decref(o);
}

int dhps_cmd_stats(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, stats_usage);
    if (first < 0 || first != argc) {
        fprintf(stderr, "%s", stats_usage);
        return 2;
    }
    bool all_tables = true;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--table") || !strncmp(argv[i], "--table=", 8))
            all_tables = false;
    tools_conn *c = NULL;
    if (tools_conn_open(&o.tgt, &c) < 0)
        return 1;
    struct stats_ctx sc = {.json = o.json, .all = json_array()};
    int failed = tools_conn_admin(c, DHPS_M_STATS, all_tables ? "" : o.table, stats_fn, &sc);
    if (o.json) {
        json_t *top = json_pack("{s:o,s:I,s:I,s:I,s:i}", "nodes", sc.all, "keys",
                                (json_int_t)sc.keys, "looked_up", (json_int_t)sc.lookups,
                                "found", (json_int_t)sc.found, "failed_nodes", failed);
        json_dumpf(top, stdout, JSON_INDENT(1));
        printf("\n");
        json_decref(top);
    } else {
        json_decref(sc.all);
        printf("total: %llu keys stored (all replicas), %.1f MiB, %llu keys looked up, "
               "%d node(s) failed\n", (unsigned long long)sc.keys, (double)sc.bytes / 1048576.0,
               (unsigned long long)sc.lookups, failed);
    }
    tools_conn_close(c);
    return failed ? 1 : 0;
}

static void snap_fn(void *arg, uint32_t node, int status, uint32_t count, const char *text,
                    size_t len)
{
    if (status)
        printf("node %-4u snapshot failed: %s\n", node, dhps_strerror(status));
    else
        printf("node %-4u snapshot written (%u stores)\n", node, count);
}

int dhps_cmd_snapshot(int argc, char **argv)
{
    struct ops_opts o;
    int first = ops_parse(argc, argv, &o, snap_usage);
    if (first < 0 || first != argc) {
        fprintf(stderr, "%s", snap_usage);
        return 2;
    }
    tools_conn *c = NULL;
    if (tools_conn_open(&o.tgt, &c) < 0)
        return 1;
    int failed = tools_conn_admin(c, DHPS_M_SNAPSHOT, "", snap_fn, NULL);
    tools_conn_close(c);
    return failed ? 1 : 0;
}

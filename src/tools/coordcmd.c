/*
 * dhps map publish / show / history, dhps nodes: the cluster map and the registered
 * nodes in etcd (key schema in include/dhps/coord.h and docs/cluster.md).
 *
 *   dhps map publish --etcd URL --cluster NAME [--expect-revision R] FILE
 *   dhps map show    --etcd URL --cluster NAME [--json]
 *   dhps map history --etcd URL --cluster NAME
 *   dhps nodes       --etcd URL --cluster NAME [--json]
 *
 * Exit codes: 0 done, 1 etcd error (unreachable, ...), 2 usage or invalid map, 3 the
 * compare-and-swap lost (the map changed since the revision given) or no map.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "dhps/cluster.h"
#include "dhps/coord.h"
#include "ctl.h" /* ctl_map_publish: the one publish path (CAS + history) */

int dhps_cmd_map_etcd(int argc, char **argv);
int dhps_cmd_nodes(int argc, char **argv);

struct copts {
    const char *etcd, *cluster, *file;
    long long expect;
    bool json;
};

static void coord_usage(FILE *f)
{
    fprintf(f, "usage: dhps map publish --etcd URL --cluster NAME [--expect-revision R] FILE\n"
               "       dhps map show --etcd URL --cluster NAME [--json]\n"
               "       dhps map history --etcd URL --cluster NAME\n"
               "       dhps nodes --etcd URL --cluster NAME [--json]\n"
               "publish creates the map when etcd has none; to replace one, pass the revision\n"
               "`dhps map show` printed: a concurrent change makes it refuse (exit 3).\n");
}

static int parse_opts(int argc, char **argv, struct copts *o, bool want_file)
{
    static const struct option opts[] = {
        {"etcd", required_argument, NULL, 'e'},
        {"cluster", required_argument, NULL, 'c'},
        {"expect-revision", required_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->expect = -1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'e': o->etcd = optarg; break;
        case 'c': o->cluster = optarg; break;
        case 'r': {
            char *end;
            o->expect = strtoll(optarg, &end, 10);
            if (*end || o->expect < 0)
                return -1;
            break;
        }
        case 'j': o->json = true; break;
        default: return -1;
        }
    }
    if (want_file) {
        if (optind != argc - 1)
            return -1;
        o->file = argv[optind];
    } else if (optind != argc) {
        return -1;
    }
    return o->etcd && o->cluster ? 0 : -1;
}

static dhps_coord *open_coord(const struct copts *o)
{
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = o->etcd;
    dhps_coord *c = NULL;
    int rc = dhps_coord_create(&p, &c);
    if (rc < 0)
        fprintf(stderr, "etcd %s: %s\n", o->etcd, dhps_strerror(rc));
    return c;
}

static int etcd_fail(const struct copts *o, const char *what, int rc)
{
    fprintf(stderr, "etcd %s: %s: %s\n", o->etcd, what, dhps_strerror(rc));
    return 1;
}

static int cmd_publish(int argc, char **argv)
{
    struct copts o;
    char key[256];
    if (parse_opts(argc, argv, &o, true) < 0 ||
        dhps_coord_key(key, sizeof key, o.cluster, DHPS_COORD_KEY_MAP, 0) < 0) {
        coord_usage(stderr);
        return 2;
    }
    char err[16384];
    dhps_cluster_map *m = NULL;
    int rc = dhps_cluster_map_load(o.file, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: invalid map (%s):\n%s", o.file, dhps_strerror(rc), err);
        return 2;
    }
    uint64_t ver = dhps_cluster_map_version(m);
    char *json = dhps_cluster_map_to_json(m);
    dhps_cluster_map_destroy(m);
    if (!json)
        return 1;
    int ret = 1;
    dhps_coord *c = open_coord(&o);
    if (!c)
        goto out;
    dhps_coord_kv *kv = NULL;
    rc = dhps_coord_get(c, key, false, &kv, NULL);
    if (rc < 0) {
        ret = etcd_fail(&o, "read the map", rc);
        goto out;
    }
    int64_t cur_rev = rc ? kv[0].mod_revision : 0;
    uint64_t cur_ver = 0;
    if (rc) {
        dhps_cluster_map *cm = NULL;
        if (dhps_cluster_map_parse(kv[0].value, kv[0].value_len, &cm, NULL, 0) == 0)
            cur_ver = dhps_cluster_map_version(cm);
        dhps_cluster_map_destroy(cm);
    }
    dhps_coord_kvs_free(kv, rc);
    int64_t expect = o.expect >= 0 ? o.expect : 0;
    if (cur_rev && o.expect < 0) {
        fprintf(stderr,
                "%s: a map exists (version %" PRIu64 ", revision %" PRId64 "): pass "
                "--expect-revision %" PRId64 " to replace it\n",
                key, cur_ver, cur_rev, cur_rev);
        ret = 3;
        goto out;
    }
    if (cur_rev && expect == cur_rev && ver <= cur_ver) {
        fprintf(stderr, "%s: version %" PRIu64 " is not newer than the published %" PRIu64 "\n",
                o.file, ver, cur_ver);
        ret = 2;
        goto out;
    }
    int64_t rev = 0;
    rc = ctl_map_publish(c, o.cluster, json, ver, expect, &rev); /* + the history entry */
    if (rc == DHPS_E_CONFLICT) {
        int n = dhps_coord_get(c, key, false, &kv, NULL); /* what won, for the message */
        cur_rev = n > 0 ? kv[0].mod_revision : 0;
        dhps_coord_kvs_free(kv, n);
        fprintf(stderr,
                "%s: refused: the map changed concurrently (expected revision %" PRId64
                ", etcd has revision %" PRId64 "); re-read it with `dhps map show` and retry\n",
                key, expect, cur_rev);
        ret = 3;
        goto out;
    }
    if (rc < 0) {
        ret = etcd_fail(&o, "write the map", rc);
        goto out;
    }
    printf("%s: published version %" PRIu64 " at revision %" PRId64 "\n", key, ver, rev);
    ret = 0;
out:
    dhps_coord_destroy(c);
    free(json);
    return ret;
}

static int cmd_show(int argc, char **argv)
{
    struct copts o;
    char key[256];
    if (parse_opts(argc, argv, &o, false) < 0 ||
        dhps_coord_key(key, sizeof key, o.cluster, DHPS_COORD_KEY_MAP, 0) < 0) {
        coord_usage(stderr);
        return 2;
    }
    dhps_coord *c = open_coord(&o);
    if (!c)
        return 1;
    dhps_coord_kv *kv = NULL;
    int rc = dhps_coord_get(c, key, false, &kv, NULL), ret = 0;
    if (rc < 0) {
        ret = etcd_fail(&o, "read the map", rc);
    } else if (rc == 0) {
        fprintf(stderr, "%s: no map published\n", key);
        ret = 3;
    } else if (o.json) {
        fwrite(kv[0].value, 1, kv[0].value_len, stdout);
        if (kv[0].value_len && kv[0].value[kv[0].value_len - 1] != '\n')
            putchar('\n');
    } else {
        dhps_cluster_map *m = NULL;
        char err[4096];
        int prc = dhps_cluster_map_parse(kv[0].value, kv[0].value_len, &m, err, sizeof err);
        if (prc) {
            printf("%s: revision %" PRId64 ": invalid map (%s):\n%s", key, kv[0].mod_revision,
                   dhps_strerror(prc), err);
            ret = 2;
        } else {
            printf("%s: version %" PRIu64 ", revision %" PRId64 ", %u shards x %u replicas, "
                   "%zu nodes\n",
                   key, dhps_cluster_map_version(m), kv[0].mod_revision,
                   dhps_cluster_map_nshards(m), dhps_cluster_map_nreplicas(m),
                   dhps_cluster_map_nnodes(m));
        }
        dhps_cluster_map_destroy(m);
    }
    dhps_coord_kvs_free(kv, rc);
    dhps_coord_destroy(c);
    return ret;
}

static int cmd_history(int argc, char **argv)
{
    struct copts o;
    char key[256];
    if (parse_opts(argc, argv, &o, false) < 0 ||
        dhps_coord_key(key, sizeof key, o.cluster, DHPS_COORD_KEY_HISTORY, 0) < 0) {
        coord_usage(stderr);
        return 2;
    }
    dhps_coord *c = open_coord(&o);
    if (!c)
        return 1;
    dhps_coord_kv *kv = NULL;
    int rc = dhps_coord_get(c, key, true, &kv, NULL), ret = 0;
    if (rc < 0)
        ret = etcd_fail(&o, "read the history", rc);
    for (int i = 0; i < rc; i++) {
        dhps_cluster_map *m = NULL;
        if (dhps_cluster_map_parse(kv[i].value, kv[i].value_len, &m, NULL, 0) == 0)
            printf("version %" PRIu64 "\trevision %" PRId64 "\t%u shards x %u replicas, %zu "
                   "nodes\n",
                   dhps_cluster_map_version(m), kv[i].mod_revision, dhps_cluster_map_nshards(m),
                   dhps_cluster_map_nreplicas(m), dhps_cluster_map_nnodes(m));
        else
            printf("%s\trevision %" PRId64 "\tinvalid map\n", kv[i].key, kv[i].mod_revision);
        dhps_cluster_map_destroy(m);
    }
    dhps_coord_kvs_free(kv, rc);
    dhps_coord_destroy(c);
    return ret;
}

int dhps_cmd_map_etcd(int argc, char **argv)
{
    if (!strcmp(argv[0], "publish"))
        return cmd_publish(argc, argv);
    if (!strcmp(argv[0], "show"))
        return cmd_show(argc, argv);
    if (!strcmp(argv[0], "history"))
        return cmd_history(argc, argv);
    coord_usage(stderr);
    return 2;
}

int dhps_cmd_nodes(int argc, char **argv)
{
    struct copts o;
    char key[256];
    if (parse_opts(argc, argv, &o, false) < 0 ||
        dhps_coord_key(key, sizeof key, o.cluster, DHPS_COORD_KEY_NODES, 0) < 0) {
        coord_usage(stderr);
        return 2;
    }
    dhps_coord *c = open_coord(&o);
    if (!c)
        return 1;
    dhps_coord_kv *kv = NULL;
    int rc = dhps_coord_get(c, key, true, &kv, NULL), ret = 0;
    if (rc < 0)
        ret = etcd_fail(&o, "read the nodes", rc);
    json_t *all = o.json ? json_array() : NULL;
    if (!o.json && rc >= 0)
        printf("%-6s %-22s %-12s %-8s %-6s %-18s %-6s %-12s %s\n", "id", "addr", "host", "pod",
               "az", "lease", "ttl_s", "map_version", "not_ready");
    for (int i = 0; i < rc; i++) {
        json_t *j = json_loadb(kv[i].value, kv[i].value_len, 0, NULL);
        int64_t ttl = -1;
        if (kv[i].lease)
            dhps_coord_lease_ttl(c, kv[i].lease, &ttl, NULL);
        if (o.json) {
            if (!j)
                j = json_object();
            json_object_set_new(j, "lease", json_integer(kv[i].lease));
            json_object_set_new(j, "lease_ttl_s", json_integer(ttl));
            json_object_set_new(j, "key", json_string(kv[i].key));
            json_array_append_new(all, j);
            continue;
        }
        const char *id = json_string_value(json_object_get(j, "node_id"));
        /* a server following the map in etcd reports the map it applied and the shards
         * it still catches up ("-": a server that does not follow) */
        json_t *mv = json_object_get(j, "map_version"), *nr = json_object_get(j, "not_ready");
        char mvs[24] = "-", nrs[24] = "-";
        if (json_is_integer(mv))
            snprintf(mvs, sizeof mvs, "%" PRId64, (int64_t)json_integer_value(mv));
        if (json_is_array(nr))
            snprintf(nrs, sizeof nrs, "%zu", json_array_size(nr));
        printf("%-6s %-22s %-12s %-8s %-6s %-18" PRIx64 " %-6" PRId64 " %-12s %s\n",
               id ? id : strrchr(kv[i].key, '/') + 1,
               json_string_value(json_object_get(j, "addr")) ?: "?",
               json_string_value(json_object_get(j, "host")) ?: "",
               json_string_value(json_object_get(j, "pod")) ?: "",
               json_string_value(json_object_get(j, "az")) ?: "", (uint64_t)kv[i].lease, ttl,
               mvs, nrs);
        json_decref(j);
    }
    if (all) {
        char *s = json_dumps(all, JSON_INDENT(2));
        if (s)
            puts(s);
        free(s);
        json_decref(all);
    }
    dhps_coord_kvs_free(kv, rc);
    dhps_coord_destroy(c);
    return ret;
}

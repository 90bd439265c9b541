/*
 * dhps map: cluster map files (include/dhps/cluster.h, format in docs/client.md).
 *
 *   dhps map check FILE          exit 0 when FILE is a valid map, 2 with every problem
 *   dhps map gen (--nodes NODES.json | --local N [--azs A] [--pods P] [--base-port PORT])
 *                [--shards S] [--replicas R] [--version V] -o FILE
 *   dhps map owners FILE NODE_ID print the shards node NODE_ID holds
 *   dhps map publish|show|history --etcd URL --cluster NAME ...  the map in etcd (coordcmd.c)
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/cluster.h"

int dhps_cmd_map(int argc, char **argv);
int dhps_cmd_map_etcd(int argc, char **argv);

static void map_usage(FILE *f)
{
    fprintf(f,
            "usage: dhps map check FILE\n"
            "       dhps map gen (--nodes NODES.json | --local N [--azs A] [--pods P]\n"
            "                    [--base-port PORT]) [--shards S] [--replicas R]\n"
            "                    [--version V] -o FILE\n"
            "       dhps map owners FILE NODE_ID\n"
            "       dhps map publish|show|history --etcd URL --cluster NAME ... (etcd)\n"
            "--local N: N nodes on 127.0.0.1 (ports PORT.., default 7100), hosts local-0..,\n"
            "round-robin over A azs and P pods (defaults 1). Defaults: 1024 shards, 3 replicas.\n");
}

/* The map at path, or NULL after saying on stderr why it is invalid. */
static dhps_cluster_map *load_or_say(const char *path)
{
    char err[16384];
    dhps_cluster_map *m = NULL;
    int rc = dhps_cluster_map_load(path, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: invalid map (%s):\n%s", path, dhps_strerror(rc), err);
        return NULL;
    }
    return m;
}

static int cmd_check(int argc, char **argv)
{
    if (argc != 2) {
        map_usage(stderr);
        return 2;
    }
    dhps_cluster_map *m = load_or_say(argv[1]);
    if (!m)
        return 2;
    printf("%s: ok: version %llu, %u shards x %u replicas, %zu nodes\n", argv[1],
           (unsigned long long)dhps_cluster_map_version(m), dhps_cluster_map_nshards(m),
           dhps_cluster_map_nreplicas(m), dhps_cluster_map_nnodes(m));
    dhps_cluster_map_destroy(m);
    return 0;
}

static int parse_u(const char *s, unsigned long long max, unsigned long long *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || !*s || *end || x > max)
        return -1;
    *v = x;
    return 0;
}

static int cmd_gen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"nodes", required_argument, NULL, 'n'}, {"local", required_argument, NULL, 'l'},
        {"azs", required_argument, NULL, 'a'},   {"pods", required_argument, NULL, 'p'},
        {"shards", required_argument, NULL, 's'}, {"replicas", required_argument, NULL, 'r'},
        {"version", required_argument, NULL, 'v'}, {"base-port", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    const char *nodes_path = NULL, *out_path = NULL;
    unsigned long long local = 0, azs = 1, pods = 1, base = 7100, v = 0;
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'n': nodes_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'l': bad = parse_u(optarg, DHPS_CLUSTER_MAX_NODES, &local) || !local; break;
        case 'a': bad = parse_u(optarg, 1u << 16, &azs) || !azs; break;
        case 'p': bad = parse_u(optarg, 1u << 16, &pods) || !pods; break;
        case 'b': bad = parse_u(optarg, 65535, &base) || !base; break;
        case 's': bad = parse_u(optarg, DHPS_CLUSTER_MAX_SHARDS, &v); gp.nshards = (uint32_t)v; break;
        case 'r': bad = parse_u(optarg, DHPS_CLUSTER_MAX_REPLICAS, &v); gp.replicas = (uint32_t)v; break;
        case 'v': bad = parse_u(optarg, UINT64_MAX, &v); gp.version = v; break;
        case 'h': map_usage(stdout); return 0;
        default: bad = 1;
        }
        if (bad) {
            fprintf(stderr, "dhps map gen: bad option value\n");
            map_usage(stderr);
            return 2;
        }
    }
    if (!out_path || (!nodes_path == !local) || optind != argc ||
        (local && base + local - 1 > 65535)) {
        map_usage(stderr);
        return 2;
    }
    dhps_cluster_node *nodes = NULL;
    size_t n = 0;
    char err[16384];
    int rc = 0;
    dhps_cluster_map *m = NULL;
    if (nodes_path) {
        FILE *f = fopen(nodes_path, "rb");
        if (!f) {
            fprintf(stderr, "dhps map gen: %s: %s\n", nodes_path, strerror(errno));
            return 2;
        }
        char *buf = NULL;
        size_t len = 0, cap = 0;
        for (;;) {
            if (len == cap) {
                cap = cap ? cap * 2 : 65536;
                char *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    fclose(f);
                    return 2;
                }
                buf = nb;
            }
            size_t r = fread(buf + len, 1, cap - len, f);
            if (r == 0)
                break;
            len += r;
        }
        fclose(f);
        rc = dhps_cluster_nodes_parse(buf, len, &nodes, &n, err, sizeof err);
        free(buf);
        if (rc) {
            fprintf(stderr, "dhps map gen: %s: %s\n%s", nodes_path, dhps_strerror(rc), err);
            return 2;
        }
    } else {
        n = (size_t)local;
        nodes = calloc(n, sizeof *nodes);
        if (!nodes)
            return 2;
        for (size_t i = 0; i < n; i++) {
            nodes[i].id = (uint32_t)i;
            snprintf(nodes[i].host, sizeof nodes[i].host, "local-%zu", i);
            snprintf(nodes[i].az, sizeof nodes[i].az, "az%llu", (unsigned long long)(i % azs));
            snprintf(nodes[i].pod, sizeof nodes[i].pod, "pod%llu",
                     (unsigned long long)((i / azs) % pods));
            snprintf(nodes[i].addr, sizeof nodes[i].addr, "127.0.0.1:%llu",
                     (unsigned long long)(base + i));
        }
    }
    rc = dhps_cluster_map_generate(&gp, nodes, n, &m, err, sizeof err);
    free(nodes);
    if (rc) {
        fprintf(stderr, "dhps map gen: %s\n%s", dhps_strerror(rc), err);
        return 2;
    }
    rc = dhps_cluster_map_write(m, out_path);
    if (rc) {
        fprintf(stderr, "dhps map gen: writing %s: %s\n", out_path, dhps_strerror(rc));
        dhps_cluster_map_destroy(m);
        return 1;
    }
    printf("%s: version %llu, %u shards x %u replicas over %zu nodes\n", out_path,
           (unsigned long long)gp.version, gp.nshards, gp.replicas, n);
    dhps_cluster_map_destroy(m);
    return 0;
}

static int cmd_owners(int argc, char **argv)
{
    unsigned long long id;
    if (argc != 3 || parse_u(argv[2], DHPS_CLUSTER_MAX_NODE_ID, &id)) {
        map_usage(stderr);
        return 2;
    }
    dhps_cluster_map *m = load_or_say(argv[1]);
    if (!m)
        return 2;
    size_t cnt = dhps_cluster_map_shards_of(m, (uint32_t)id, NULL, 0);
    uint32_t *v = malloc((cnt + 1) * sizeof *v);
    if (!v) {
        dhps_cluster_map_destroy(m);
        return 1;
    }
    dhps_cluster_map_shards_of(m, (uint32_t)id, v, cnt);
    printf("node %llu: %zu shards:", id, cnt);
    for (size_t i = 0; i < cnt; i++)
        printf(" %u", v[i]);
    printf("\n");
    free(v);
    int rc = dhps_cluster_map_node(m, (uint32_t)id) ? 0 : 1;
    dhps_cluster_map_destroy(m);
    return rc;
}

int dhps_cmd_map(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        map_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "publish") || !strcmp(argv[1], "show") || !strcmp(argv[1], "history"))
        return dhps_cmd_map_etcd(argc - 1, argv + 1); /* the map in etcd: coordcmd.c */
    if (!strcmp(argv[1], "check"))
        return cmd_check(argc - 1, argv + 1);
    if (!strcmp(argv[1], "gen"))
        return cmd_gen(argc - 1, argv + 1);
    if (!strcmp(argv[1], "owners"))
        return cmd_owners(argc - 1, argv + 1);
    fprintf(stderr, "dhps map: unknown subcommand '%s'\n", argv[1]);
    map_usage(stderr);
    return 2;
}

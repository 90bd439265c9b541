#define _GNU_SOURCE /* nftw */
/*
 * dhps up / dhps down: a local cluster on loopback, for trying dhps and for its tests.
 *
 * up: choose free ports (or --base-port), generate a secret, a cluster map (cluster
 *   library generator: replicas on distinct hosts, spread over AZs and PODs) and one
 *   dhps-server config per node in the map form (its shards and peers come from the
 *   map, so a restarted node catches up from its peers); start the servers (each in its
 *   own session, logs in DIR/nodeN/server.log); wait for every /health to answer 200
 *   (ready: caught up); write DIR/cluster.json
 *   (pids, ports, paths); load a deterministic sample table through the client
 *   library; check a sample of it; run a lookup workload and print throughput, batch
 *   latency quantiles and where the traffic went (per node, per tier relative to the
 *   client's labels). The cluster stays up.
 * down: SIGTERM every server of DIR/cluster.json (final snapshot), wait, SIGKILL after
 *   --timeout, report, remove cluster.json.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "secret.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"
#include "workload.h"

#define UP_MAX_NODES 64

/* Paths built here are a checked directory (< UP_MAX_DIR bytes) plus short suffixes, so
 * snprintf into PATH_MAX buffers cannot truncate; gcc cannot see that bound. */
#define UP_MAX_DIR 3000
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* ---- small helpers ------------------------------------------------------------------ */

bool up_find_server(const char *given, char *out, size_t cap)
{
    if (given) {
        snprintf(out, cap, "%s", given);
        return access(out, X_OK) == 0;
    }
    const char *env = getenv("DHPS_SERVER");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, X_OK) == 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            static const char *const rel[] = {"/dhps-server", "/../server/dhps-server"};
            for (size_t i = 0; i < 2; i++) {
                snprintf(out, cap, "%s%s", exe, rel[i]);
                if (access(out, X_OK) == 0)
                    return true;
            }
        }
    }
    const char *path = getenv("PATH");
    char buf[8192];
    snprintf(buf, sizeof buf, "%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, cap, "%s/dhps-server", d);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

/* ---- up ---------------------------------------------------------------------------- */

/* ^C / SIGTERM while the servers start: stop the ones started instead of leaving them
 * running with no cluster.json naming them. */
static volatile sig_atomic_t g_up_interrupted;
static void up_on_signal(int sig)
{
    (void)sig;
    g_up_interrupted = 1;
}

struct up_opts {
    uint32_t nodes, azs, pods, replicas, shards, workers, dim, threads, batch, max_msg;
    uint32_t spare, total;    /* --spare: nodes started outside the map; total = nodes + spare */
    uint32_t lease_ttl_s;     /* --etcd: the nodes' coord.lease_ttl_s */
    uint16_t etcd_ports[2];   /* --etcd: client, peer */
    const char *etcd_cluster; /* --etcd: cluster name in etcd */
    bool etcd;                /* start etcd, publish the map there, nodes follow it */
    uint32_t base_port; /* 0: free ports chosen at start */
    uint16_t ports[2 * UP_MAX_NODES]; /* node i: rpc 2i, metrics 2i + 1 */
    uint32_t anti_entropy_s;  /* sync.anti_entropy_s of the nodes (0: the server's default) */
    uint64_t keys;
    double seconds, zipf;
    const char *dir, *server, *table;
    bool shm, verbs, load, workload, quiet, pairs, fresh;
};

/* Port of node i (which 0: rpc, 1: metrics): --base-port + 2i (+1), or the free port
 * chosen for it at start. Held (up_hold_port) before any node starts and handed to its
 * server, so the map and every config name the ports the nodes listen on, and a restart
 * comes back on them. */
static uint32_t port_of(const struct up_opts *o, uint32_t i, int which)
{
    return o->ports[2 * i + which];
}

struct up_node {
    char name[16], host[32], pod[32], az[32];
    char cfg[PATH_MAX], log[PATH_MAX], portfile[PATH_MAX], pidfile[PATH_MAX], snap[PATH_MAX];
    pid_t pid;
    uint16_t port, mport;
};

static const char up_usage[] =
    "usage: dhps up [--cluster DIR] [--nodes 6] [--azs 2] [--pods 2] [--replicas 2]\n"
    "               [--shards 1024] [--workers 1] [--no-shm] [--verbs] [--server PATH]\n"
    "               [--table emb] [--keys 1000000] [--dim 32] [--no-load]\n"
    "               [--seconds 3] [--threads 2] [--batch 1000] [--zipf 0.99 | 0 uniform]\n"
    "               [--no-workload] [--same-host-pairs] [--max-msg 4194304] [--quiet]\n"
    "               [--base-port P] [--fresh] [--anti-entropy-s S]\n"
    "               [--etcd [--etcd-cluster local] [--spare N] [--lease-ttl-s 10]]\n"
    "  Starts a local cluster on 127.0.0.1 (pods are per AZ; nodes are spread round-robin\n"
    "  over AZs, then pods; --same-host-pairs puts nodes 2k and 2k+1 on one host label),\n"
    "  loads a sample table, runs a lookup workload, and leaves the\n"
    "  cluster running; state in DIR/cluster.json (default $DHPS_CLUSTER_DIR or\n"
    "  ./dhps-cluster). Stop it with `dhps down --cluster DIR`. --verbs: the servers offer\n"
    "  RDMA verbs (needs an RDMA device, e.g. Soft-RoCE; clients use it toward nodes of\n"
    "  another host label in their AZ, and fall back to TCP without one).\n"
    "  Each node's server.json names its map ports (free ports chosen at start, or P + 2i\n"
    "  for rpc and P + 2i + 1 for metrics with --base-port P) and reads its shards and\n"
    "  peers from DIR/map.json, so `dhps start|stop|restart` and a restart by hand bring\n"
    "  it back on the map's ports, caught up from its peers before it is ready.\n"
    "  --anti-entropy-s S: the nodes' sync.anti_entropy_s (default: the server's, 30).\n"
    "  --etcd: also start a local etcd (Debian's etcd-server; data in DIR/etcd), publish\n"
    "  the map there as /dhps/NAME/map (--etcd-cluster NAME, default local) and run the\n"
    "  nodes with \"coord\" + \"follow_etcd\": they register and follow the map in etcd,\n"
    "  so `dhps node add|drain|remove|replace` and `dhps rebalance --etcd URL --cluster\n"
    "  NAME` change it while serving (the URL is in DIR/cluster.json). --spare N starts N\n"
    "  more nodes (ids nodes..nodes+N-1) that register but are not in the first map,\n"
    "  ready for `dhps node add`. `dhps down` stops etcd after the nodes.\n"
    "  A DIR that already holds a\n"
    "  cluster (cluster.json, map, node dirs with snapshots) is refused unless --fresh,\n"
    "  which deletes them (and says what) first.\n";

/* Tier of node n relative to the client, which has node 0's labels. */
static int tier_of(const struct up_node *nd, const struct up_node *n)
{
    return tools_tier_of(n->host, n->pod, n->az, nd[0].host, nd[0].pod, nd[0].az);
}

/* dhps backend for the workload: the shared client (thread-safe by itself). */
struct dhps_wl {
    dhps_client *client;
    const char *table;
    uint32_t dim;
    uint64_t timeout_us;
};
static void *dwl_open(void *arg) { return arg; }
static void dwl_close(void *th) { (void)th; }
static int dwl_lookup(void *th, const uint64_t *keys, uint32_t n, void *out, uint32_t *missing)
{
    struct dhps_wl *w = th;
    dhps_client_result res;
    int rc = dhps_client_lookup(w->client, w->table, keys, n, out, w->dim, DHPS_FP32, NULL,
                                w->timeout_us, &res);
    *missing = (uint32_t)res.missing;
    return rc;
}
static int dwl_update(void *th, const uint64_t *keys, uint32_t n, const void *rows)
{
    struct dhps_wl *w = th;
    return dhps_client_update(w->client, w->table, keys, rows, n, w->dim, DHPS_FP32,
                              DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, w->timeout_us, NULL, NULL);
}
const wl_backend *up_dhps_backend(dhps_client *c, const char *table, uint32_t dim,
                                  uint64_t timeout_us)
{
    static struct dhps_wl w;
    static wl_backend b;
    w = (struct dhps_wl){.client = c, .table = table, .dim = dim, .timeout_us = timeout_us};
    b = (wl_backend){.name = "dhps", .open = dwl_open, .lookup = dwl_lookup,
                     .update = dwl_update, .close = dwl_close, .arg = &w};
    return &b;
}

int up_load_sample(dhps_client *c, const char *table, uint32_t dim, uint64_t nkeys, bool quiet)
{
    uint32_t batch = 16384;
    uint64_t *keys = malloc(batch * sizeof *keys);
    float *rows = malloc((size_t)batch * dim * sizeof *rows);
    int rc = -ENOMEM;
    if (!keys || !rows)
        goto out;
    tools_progress pg;
    tools_progress_init(&pg, "load");
    if (quiet)
        pg.tty = false;
    for (uint64_t done = 0; done < nkeys;) {
        uint32_t n = nkeys - done < batch ? (uint32_t)(nkeys - done) : batch;
        for (uint32_t i = 0; i < n; i++) {
            keys[i] = done + i;
            tools_sample_row(done + i, dim, rows + (size_t)i * dim);
        }
        rc = dhps_client_update(c, table, keys, rows, n, dim, DHPS_FP32,
                                DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 30000000, NULL, NULL);
        if (rc < 0)
            goto out;
        done += n;
        tools_progress_update(&pg, done, nkeys);
    }
    tools_progress_done(&pg);
    rc = 0;
out:
    free(rows);
    free(keys);
    return rc;
}

/* Look up `n` random loaded keys and compare with the generator; returns mismatches. */
static long verify_sample(dhps_client *c, const char *table, uint32_t dim, uint64_t nkeys,
                          uint32_t n)
{
    uint64_t *keys = malloc(n * sizeof *keys), rng = 42, mask[64] = {0};
    float *out = malloc((size_t)n * dim * sizeof *out), *want = malloc(dim * sizeof *want);
    long bad = -ENOMEM;
    if (!keys || !out || !want || n > 4096)
        goto done;
    for (uint32_t i = 0; i < n; i++)
        keys[i] = dhps_splitmix64(&rng) % nkeys;
    int rc = dhps_client_lookup(c, table, keys, n, out, dim, DHPS_FP32, mask, 0, NULL);
    if (rc < 0) {
        bad = rc;
        goto done;
    }
    bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        tools_sample_row(keys[i], dim, want);
        if ((mask[i / 64] >> (i % 64) & 1) || memcmp(want, out + (size_t)i * dim, dim * 4))
            bad++;
    }
done:
    free(want);
    free(out);
    free(keys);
    return bad;
}

/* Our children (a child may not have exec'd dhps-server yet): SIGTERM, wait, SIGKILL. */
static void stop_started(struct up_node *nd, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (nd[i].pid > 0)
            kill(nd[i].pid, SIGTERM);
    for (uint32_t i = 0; i < n; i++) {
        if (nd[i].pid <= 0)
            continue;
        int st;
        for (int k = 0; k < 300 && waitpid(nd[i].pid, &st, WNOHANG) == 0; k++)
            up_msleep(100);
        if (waitpid(nd[i].pid, &st, WNOHANG) == 0) {
            kill(nd[i].pid, SIGKILL);
            waitpid(nd[i].pid, &st, 0);
        }
        nd[i].pid = 0;
    }
}

static json_t *state_json(const struct up_opts *o, const char *absdir, const char *server,
                          struct up_node *nd, json_t *etcd)
{
    json_t *nodes = json_array();
    for (uint32_t i = 0; i < o->total; i++) {
        json_t *n = json_pack("{s:i,s:s,s:i,s:i,s:i,s:s,s:s,s:s,s:s,s:s}", "id", (int)i, "name",
                              nd[i].name, "pid", (int)nd[i].pid, "port", (int)nd[i].port,
                              "metrics_port", (int)nd[i].mport, "host", nd[i].host, "pod",
                              nd[i].pod, "az", nd[i].az, "config", nd[i].cfg, "log", nd[i].log);
        if (n && i >= o->nodes) /* --spare: started, registered, not in the first map */
            json_object_set_new(n, "spare", json_true());
        json_array_append_new(nodes, n);
    }
    char mp[PATH_MAX], sp[PATH_MAX];
    snprintf(mp, sizeof mp, "%s/map.json", absdir);
    snprintf(sp, sizeof sp, "%s/secret", absdir);
    json_t *st = json_pack("{s:i,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:I,s:{s:s,s:s,s:s},s:o}",
                           "version", 1, "dir", absdir, "map", mp, "secret", sp, "server",
                           server, "table", o->table, "dim", (int)o->dim, "dtype", "fp32",
                           "keys", (json_int_t)(o->load ? o->keys : 0), "client_labels",
                           "host", nd[0].host, "pod", nd[0].pod, "az", nd[0].az, "nodes", nodes);
    if (st && etcd)
        json_object_set(st, "etcd", etcd);
    return st;
}

/* ---- an existing cluster directory ------------------------------------------------- */

static unsigned g_snap_files; /* .snap files seen by count_snap / rm_entry */
static int count_snap(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)f;
    if (flag == FTW_F && strstr(path, ".snap"))
        g_snap_files++;
    return 0;
}
/* Is entry name one of what `dhps up` writes at the top of DIR? */
static bool up_entry(const char *name)
{
    static const char *const files[] = {"cluster.json", "cluster.json.stopped", "map.json",
                                        "secret", "etcd", "etcd.log"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (!strcmp(name, files[i]))
            return true;
    size_t n = strlen(name);
    return n > 4 && !strncmp(name, "node", 4) && strspn(name + 4, "0123456789") == n - 4;
}

/* A directory that holds a cluster (what up_entry names) is refused (1, said why) unless
 * fresh, which removes those entries after listing them (0; 1 when one cannot be
 * removed). An empty or unrelated directory: 0. Nothing is deleted without fresh. */
static int dir_holds_cluster(const char *absdir, bool fresh)
{
    DIR *d = opendir(absdir);
    if (!d)
        return 0;
    char names[1024] = "", p[PATH_MAX];
    unsigned nodes = 0, n = 0;
    size_t len = 0;
    g_snap_files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!up_entry(e->d_name))
            continue;
        n++;
        snprintf(p, sizeof p, "%s/%s", absdir, e->d_name);
        if (!strncmp(e->d_name, "node", 4)) {
            nodes++;
            nftw(p, count_snap, 16, FTW_PHYS);
        } else if (len + strlen(e->d_name) + 3 < sizeof names) {
            len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "",
                                    e->d_name);
        }
    }
    closedir(d);
    if (!n)
        return 0;
    char what[1200];
    snprintf(what, sizeof what, "%s%s%u node dirs (configs, logs, %u snapshot files)", names,
             len ? ", " : "", nodes, g_snap_files);
    if (!fresh) {
        fprintf(stderr, "dhps up: %s already holds a cluster (%s); `dhps start --cluster %s` "
                "restarts it, `dhps up --fresh` deletes it and makes a new one\n", absdir,
                what, absdir);
        return 1;
    }
    printf("dhps up: --fresh: removing from %s: %s\n", absdir, what);
    fflush(stdout);
    if (!(d = opendir(absdir)))
        return 1;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!up_entry(e->d_name))
            continue;
        snprintf(p, sizeof p, "%s/%s", absdir, e->d_name);
        int re = up_rm_tree(p);
        if (re < 0) {
            fprintf(stderr, "dhps up: --fresh: cannot remove %s: %s\n", p, strerror(-re));
            rc = 1;
        }
    }
    closedir(d);
    return rc;
}

int dhps_cmd_up(int argc, char **argv)
{
    static const struct option lo[] = {
        {"dir", required_argument, 0, 'd'},      {"cluster", required_argument, 0, 'd'},
        {"nodes", required_argument, 0, 'n'},
        {"azs", required_argument, 0, 'a'},      {"pods", required_argument, 0, 'p'},
        {"replicas", required_argument, 0, 'r'}, {"shards", required_argument, 0, 's'},
        {"workers", required_argument, 0, 'w'},  {"no-shm", no_argument, 0, 'S'},
        {"server", required_argument, 0, 'x'},   {"table", required_argument, 0, 't'},
        {"keys", required_argument, 0, 'k'},     {"dim", required_argument, 0, 'D'},
        {"no-load", no_argument, 0, 'L'},        {"seconds", required_argument, 0, 'T'},
        {"threads", required_argument, 0, 'j'},  {"batch", required_argument, 0, 'b'},
        {"zipf", required_argument, 0, 'z'},     {"no-workload", no_argument, 0, 'W'},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
        {"same-host-pairs", no_argument, 0, 'H'}, {"verbs", no_argument, 0, 'V'},
        {"max-msg", required_argument, 0, 'M'},  {"fresh", no_argument, 0, 'F'},
        {"base-port", required_argument, 0, 'P'},
        {"anti-entropy-s", required_argument, 0, 'E'},
        {"etcd", no_argument, 0, 'C'},           {"etcd-cluster", required_argument, 0, 'N'},
        {"spare", required_argument, 0, 'A'},    {"lease-ttl-s", required_argument, 0, 'l'},
        {0, 0, 0, 0}};
    struct up_opts o = {.nodes = 6, .azs = 2, .pods = 2, .replicas = 2, .shards = 1024,
                        .workers = 1, .dim = 32, .threads = 2, .batch = 1000,
                        .keys = 1000000, .seconds = 3, .zipf = 0.99, .table = "emb",
                        .shm = true, .load = true, .workload = true, .max_msg = 4u << 20};
    uint64_t v;
    int c;
    optind = 1;
#define U32OPT(field, what)                                                                \
    do {                                                                                   \
        if (!tools_parse_u64("up", what, optarg, &v) || v == 0 || v > UINT32_MAX)         \
            return 2;                                                                      \
        o.field = (uint32_t)v;                                                             \
    } while (0)
    while ((c = getopt_long(argc, argv, "d:n:a:p:r:s:w:SVM:x:t:k:D:LT:j:b:z:WqHhFP:E:CN:A:l:", lo,
                            NULL)) != -1) {
        switch (c) {
        case 'd': o.dir = optarg; break;
        case 'n': U32OPT(nodes, "--nodes"); break;
        case 'a': U32OPT(azs, "--azs"); break;
        case 'p': U32OPT(pods, "--pods"); break;
        case 'r': U32OPT(replicas, "--replicas"); break;
        case 's': U32OPT(shards, "--shards"); break;
        case 'w': U32OPT(workers, "--workers"); break;
        case 'S': o.shm = false; break;
        case 'V': o.verbs = true; break;
        case 'M': U32OPT(max_msg, "--max-msg"); break;
        case 'x': o.server = optarg; break;
        case 't': o.table = optarg; break;
        case 'k': if (!tools_parse_u64("up", "--keys", optarg, &o.keys) || !o.keys) return 2; break;
        case 'D': U32OPT(dim, "--dim"); break;
        case 'L': o.load = false; break;
        case 'T': o.seconds = atof(optarg); break;
        case 'j': U32OPT(threads, "--threads"); break;
        case 'b': U32OPT(batch, "--batch"); break;
        case 'z': o.zipf = atof(optarg); break;
        case 'W': o.workload = false; break;
        case 'q': o.quiet = true; break;
        case 'H': o.pairs = true; break;
        case 'F': o.fresh = true; break;
        case 'P': U32OPT(base_port, "--base-port"); break;
        case 'E': U32OPT(anti_entropy_s, "--anti-entropy-s"); break;
        case 'C': o.etcd = true; break;
        case 'N': o.etcd_cluster = optarg; break;
        case 'A':
            if (!tools_parse_u64("up", "--spare", optarg, &v) || v > UP_MAX_NODES)
                return 2;
            o.spare = (uint32_t)v;
            break;
        case 'l': U32OPT(lease_ttl_s, "--lease-ttl-s"); break;
        case 'h': printf("%s", up_usage); return 0;
        default: fprintf(stderr, "%s", up_usage); return 2;
        }
    }
#undef U32OPT
    if (optind != argc) {
        fprintf(stderr, "%s", up_usage);
        return 2;
    }
    if (o.max_msg < 4096 || o.max_msg > DHPS_RPC_MAX_MSG_LIMIT) {
        fprintf(stderr, "dhps up: --max-msg must be 4096..%u bytes\n", DHPS_RPC_MAX_MSG_LIMIT);
        return 2;
    }
    o.total = o.nodes + o.spare;
    if ((o.spare || o.etcd_cluster || o.lease_ttl_s) && !o.etcd) {
        fprintf(stderr, "dhps up: --spare, --etcd-cluster and --lease-ttl-s go with --etcd\n");
        return 2;
    }
    if (o.total > UP_MAX_NODES || o.replicas > o.nodes || o.dim > 4096 || o.seconds < 0 ||
        (uint64_t)o.shards * o.replicas < o.nodes || o.batch > DHPS_PROTO_MAX_KEYS) {
        fprintf(stderr, "dhps up: need nodes <= %d, replicas <= nodes, shards x replicas >= "
                "nodes, dim <= 4096, batch <= %u\n", UP_MAX_NODES, DHPS_PROTO_MAX_KEYS);
        return 2;
    }
    if (o.base_port && (o.base_port < 1024 || o.base_port + 2 * o.total - 1 > 65535)) {
        fprintf(stderr, "dhps up: --base-port needs 1024 <= P and P + 2 x nodes - 1 <= 65535\n");
        return 2;
    }
    if (!o.load)
        o.workload = false;
    if (o.load && o.max_msg < (4u << 20)) {
        fprintf(stderr, "dhps up: --max-msg below 4194304 needs --no-load (the loader's "
                "client sends messages of up to 4 MiB)\n");
        return 2;
    }
    const char *dir = o.dir ? o.dir : tools_default_dir();
    char server[PATH_MAX];
    if (!up_find_server(o.server, server, sizeof server)) {
        fprintf(stderr, "dhps up: no dhps-server binary (looked next to dhps, in ../server, "
                "on PATH; or give --server PATH / $DHPS_SERVER)\n");
        return 1;
    }
    pid_t alive;
    if (up_dir_running(dir, &alive)) {
        fprintf(stderr, "dhps up: a cluster in %s is still running (pid %d); "
                "`dhps down --cluster %s` first\n", dir, (int)alive, dir);
        return 1;
    }
    /* every node's two ports (--base-port: P + 2i, P + 2i + 1; else ports the kernel
     * picks), held from here until its server takes them over: the map and the configs
     * name them before any server runs, and no other process can take one meanwhile */
    int held[2 * UP_MAX_NODES];
    for (uint32_t i = 0; i < 2 * UP_MAX_NODES; i++)
        held[i] = -1;
    for (uint32_t i = 0; i < 2 * o.total; i++) {
        uint16_t want = o.base_port ? (uint16_t)(o.base_port + i) : 0;
        if ((held[i] = up_hold_port(want, &o.ports[i])) >= 0)
            continue;
        int pe = held[i];
        if (o.base_port)
            fprintf(stderr, "dhps up: port 127.0.0.1:%u (%s port of n%u): %s\n", want,
                    i % 2 ? "metrics" : "rpc", i / 2,
                    pe == -EADDRINUSE ? "in use by another process" : strerror(-pe));
        else
            fprintf(stderr, "dhps up: no free ports on 127.0.0.1: %s\n", strerror(-pe));
        for (uint32_t k = 0; k < i; k++)
            close(held[k]);
        return 1;
    }

    struct up_node *nd = calloc(o.total, sizeof *nd);
    dhps_cluster_node *cn = calloc(o.total, sizeof *cn);
    dhps_cluster_map *map = NULL;
    tools_conn *conn = NULL;
    json_t *state = NULL, *etcd_state = NULL;
    pid_t etcd_pid = 0;
    char etcd_url[64] = "";
    const char *ecl = o.etcd_cluster ? o.etcd_cluster : "local";
    char *stext = NULL, err[4096] = "", absdir[PATH_MAX], p[PATH_MAX];
    struct sigaction old_int, old_term;
    bool signals_caught = false;
    int rc = 1, e;
    if (!nd || !cn)
        goto fail;
    if ((e = up_mkdir_p(dir)) < 0 || !realpath(dir, absdir)) {
        fprintf(stderr, "dhps up: %s: %s\n", dir, strerror(e < 0 ? -e : errno));
        goto fail;
    }
    if (strlen(absdir) >= UP_MAX_DIR) {
        fprintf(stderr, "dhps up: %s: path too long\n", absdir);
        goto fail;
    }
    if (dir_holds_cluster(absdir, o.fresh) != 0)
        goto fail;

    /* secret: 32 random bytes, hex, 0600 (what `dhps keygen` writes) */
    snprintf(p, sizeof p, "%s/secret", absdir);
    if ((e = dhps_secret_generate(p, true)) < 0) {
        fprintf(stderr, "dhps up: %s: %s\n", p, strerror(-e));
        goto fail;
    }

    /* nodes and map, with the ports the nodes will listen on */
    for (uint32_t i = 0; i < o.total; i++) {
        uint32_t h = o.pairs ? i / 2 : i; /* --same-host-pairs: n0+n1 on h0, ... */
        uint32_t az = h % o.azs, pod = (h / o.azs) % o.pods;
        snprintf(nd[i].name, sizeof nd[i].name, "n%u", i);
        snprintf(nd[i].host, sizeof nd[i].host, "h%u", h);
        snprintf(nd[i].az, sizeof nd[i].az, "az%u", az);
        snprintf(nd[i].pod, sizeof nd[i].pod, "az%u-pod%u", az, pod);
        cn[i].id = i;
        snprintf(cn[i].host, sizeof cn[i].host, "%s", nd[i].host);
        snprintf(cn[i].pod, sizeof cn[i].pod, "%s", nd[i].pod);
        snprintf(cn[i].az, sizeof cn[i].az, "%s", nd[i].az);
        snprintf(cn[i].addr, sizeof cn[i].addr, "127.0.0.1:%u", port_of(&o, i, 0));
        cn[i].metrics_port = (uint16_t)port_of(&o, i, 1);
    }
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = o.shards;
    gp.replicas = o.replicas;
    gp.version = (uint64_t)time(NULL);
    if ((e = dhps_cluster_map_generate(&gp, cn, o.nodes, &map, err, sizeof err)) < 0) {
        fprintf(stderr, "dhps up: map: %s\n%s\n", dhps_strerror(e), err);
        goto fail;
    }

    /* the map first: every node reads it (its shards, and the peers it catches up from) */
    char mapp[PATH_MAX];
    snprintf(mapp, sizeof mapp, "%s/map.json", absdir);
    if ((e = dhps_cluster_map_write(map, mapp)) < 0) {
        fprintf(stderr, "dhps up: %s: %s\n", mapp, strerror(-e));
        goto fail;
    }

    /* --etcd: etcd first, with the map, so every node finds it when it starts */
    if (o.etcd) {
        if ((e = up_etcd_setup(absdir, ecl, map, o.etcd_ports, &etcd_pid, etcd_url,
                               sizeof etcd_url)) < 0)
            goto fail;
        etcd_state = json_pack("{s:s,s:s,s:i,s:i,s:i}", "url", etcd_url, "cluster", ecl, "pid",
                               (int)etcd_pid, "port", (int)o.etcd_ports[0], "peer_port",
                               (int)o.etcd_ports[1]);
        if (!o.quiet)
            printf("dhps up: etcd %s (pid %d, data %s/etcd), map version %llu published as "
                   "/dhps/%s/map\n", etcd_url, (int)etcd_pid, absdir,
                   (unsigned long long)dhps_cluster_map_version(map), ecl);
    }

    /* one config per node; with etcd a node may come to hold the shards of a dead one */
    uint64_t cap = o.keys * o.replicas / (o.etcd && o.nodes > o.replicas ? o.nodes - 1 : o.nodes)
                   * 3 / 2 + 1024;
    for (uint32_t i = 0; i < o.total; i++) {
        char nd_dir[PATH_MAX];
        snprintf(nd_dir, sizeof nd_dir, "%s/node%u", absdir, i);
        snprintf(nd[i].snap, sizeof nd[i].snap, "%s/snap", nd_dir);
        if ((e = up_mkdir_p(nd[i].snap)) < 0) {
            fprintf(stderr, "dhps up: %s: %s\n", nd[i].snap, strerror(-e));
            goto fail;
        }
        snprintf(nd[i].cfg, sizeof nd[i].cfg, "%s/server.json", nd_dir);
        snprintf(nd[i].log, sizeof nd[i].log, "%s/server.log", nd_dir);
        snprintf(nd[i].portfile, sizeof nd[i].portfile, "%s/ports", nd_dir);
        snprintf(nd[i].pidfile, sizeof nd[i].pidfile, "%s/pid", nd_dir);
        unlink(nd[i].portfile);
        json_t *cfg = json_pack(
            "{s:s,s:{s:s,s:s,s:s},s:{s:s,s:i,s:b,s:b,s:i,s:i},"
            "s:[{s:s,s:i,s:s,s:I}],s:{s:s,s:b},s:s,s:{s:s,s:i},s:{s:s,s:i},s:s,s:s,s:{s:b}}",
            "node_id", nd[i].name, "labels", "host", nd[i].host, "pod", nd[i].pod, "az",
            nd[i].az, "listen", "host", "127.0.0.1", "tcp_port", (int)port_of(&o, i, 0), "shm",
            o.shm, "verbs", o.verbs,
            "workers", (int)o.workers, "max_msg", (int)o.max_msg, "tables", "name", o.table, "dim",
            (int)o.dim, "dtype", "fp32", "capacity", (json_int_t)cap, "snapshot", "dir",
            nd[i].snap, "on_shutdown", 1, "secret_file", p, "metrics", "host", "127.0.0.1",
            "port", (int)port_of(&o, i, 1), "shards", "cluster_map", mapp, "map_node", (int)i,
            "pid_file",
            nd[i].pidfile, "port_file", nd[i].portfile,
            /* `dhps fault` works on the local cluster (changes need the cluster secret) */
            "admin", "faults", 1);
        if (cfg && o.etcd && up_etcd_node_config(cfg, etcd_url, ecl, o.lease_ttl_s, nd_dir,
                                                 i < o.nodes ? map : NULL) < 0) {
            fprintf(stderr, "dhps up: %s/map.json: cannot write\n", nd_dir);
            json_decref(cfg);
            goto fail;
        }
        if (cfg && o.anti_entropy_s)
            json_object_set_new(cfg, "sync", json_pack("{s:i}", "anti_entropy_s",
                                                       (int)o.anti_entropy_s));
        char *text = cfg ? json_dumps(cfg, JSON_INDENT(2)) : NULL;
        json_decref(cfg);
        if (!text || (e = up_write_text(nd[i].cfg, text, 0640)) < 0) {
            fprintf(stderr, "dhps up: cannot write %s\n", nd[i].cfg);
            free(text);
            goto fail;
        }
        free(text);
    }

    /* start the servers */
    if (!o.quiet)
        printf("dhps up: starting %u dhps-server nodes (%s), %u AZs x %u PODs, %u replicas of "
               "%u shards, in %s%s\n", o.total, server, o.azs, o.pods, o.replicas, o.shards,
               absdir, o.spare ? " (the last ones spares, not in the map)" : "");
    fflush(stdout);
    struct sigaction sa = {.sa_handler = up_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    signals_caught = true;
    for (uint32_t i = 0; i < o.total; i++) {
        if ((e = up_spawn_node(server, nd[i].cfg, nd[i].log, false, &held[2 * i],
                               &nd[i].pid)) < 0) {
            fprintf(stderr, "dhps up: fork: %s\n", strerror(-e));
            goto fail;
        }
        close(held[2 * i]); /* the server has them now */
        close(held[2 * i + 1]);
        held[2 * i] = held[2 * i + 1] = -1;
    }

    /* wait for ports and health */
    uint64_t t0 = dhps_mono_ns();
    for (uint32_t i = 0; i < o.total; i++) {
        up_wait w = {0};
        double left = 60 - (double)(dhps_mono_ns() - t0) / 1e9;
        e = up_wait_node(nd[i].pid, nd[i].portfile, left > 0 ? left : 0, &g_up_interrupted, &w);
        if (e == -ECHILD) {
            nd[i].pid = 0;
            fprintf(stderr, "dhps up: node %s exited during start (%s %d)\n", nd[i].name,
                    WIFEXITED(w.status) ? "status" : "signal",
                    WIFEXITED(w.status) ? WEXITSTATUS(w.status) : WTERMSIG(w.status));
            up_tail_log(nd[i].log);
            goto fail;
        }
        if (e == -ECANCELED) {
            fprintf(stderr, "dhps up: interrupted; stopping the nodes started\n");
            goto fail;
        }
        if (e < 0) {
            fprintf(stderr, "dhps up: node %s not healthy after 60 s\n", nd[i].name);
            up_tail_log(nd[i].log);
            goto fail;
        }
        nd[i].port = w.port;
        nd[i].mport = w.mport;
        if (w.port != port_of(&o, i, 0) || w.mport != port_of(&o, i, 1)) {
            fprintf(stderr, "dhps up: node %s listens on %u/%u, not on the map's %u/%u\n",
                    nd[i].name, w.port, w.mport, port_of(&o, i, 0), port_of(&o, i, 1));
            goto fail;
        }
    }
    if (!o.quiet)
        printf("dhps up: %u nodes healthy in %.2f s\n", o.total,
               (double)(dhps_mono_ns() - t0) / 1e9);

    state = state_json(&o, absdir, server, nd, etcd_state);
    snprintf(p, sizeof p, "%s/cluster.json", absdir);
    if (!state || !(stext = json_dumps(state, JSON_INDENT(2))) || up_write_text(p, stext, 0640) < 0) {
        fprintf(stderr, "dhps up: cannot write %s\n", p);
        goto fail;
    }
    for (uint32_t i = 0; i < o.total && !o.quiet; i++)
        printf("  %-3s pid %-7d rpc 127.0.0.1:%-5u metrics :%-5u host %-4s pod %-9s az %s\n",
               nd[i].name, (int)nd[i].pid, nd[i].port, nd[i].mport, nd[i].host, nd[i].pod,
               nd[i].az);

    /* all started and named in cluster.json: from here on the cluster stays up whatever
     * happens (^C now ends `dhps up` only; `dhps down` stops the nodes) */
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    signals_caught = false;
    rc = 0;
    tools_target tgt = {.cluster_dir = absdir};
    if (!o.load || tools_conn_open(&tgt, &conn) < 0)
        goto done;
    uint64_t tl = dhps_mono_ns();
    if ((e = up_load_sample(conn->client, o.table, o.dim, o.keys, o.quiet)) < 0) {
        fprintf(stderr, "dhps up: loading the sample table failed: %s\n", dhps_strerror(e));
        rc = 1;
        goto done;
    }
    double ls = (double)(dhps_mono_ns() - tl) / 1e9;
    long bad = verify_sample(conn->client, o.table, o.dim, o.keys, 1000);
    printf("dhps up: loaded table %s: %llu keys x dim %u fp32 (x%u replicas) in %.2f s "
           "(%.0f keys/s); check of 1000 random keys: %s\n", o.table,
           (unsigned long long)o.keys, o.dim, o.replicas, ls, (double)o.keys / ls,
           bad == 0 ? "all match" : "MISMATCH");
    if (bad != 0) {
        fprintf(stderr, "dhps up: %ld of 1000 sample keys wrong or missing (%s)\n", bad,
                bad < 0 ? dhps_strerror((int)bad) : "values differ");
        rc = 1;
        goto done;
    }
    if (!o.workload || o.seconds <= 0)
        goto done;

    dhps_client_node_stats before[UP_MAX_NODES], after;
    for (uint32_t i = 0; i < o.nodes; i++)
        dhps_client_node_stats_get(conn->client, i, &before[i]);
    wl_params wp = {.nkeys = o.keys, .row_bytes = o.dim * 4, .batch = o.batch,
                    .threads = o.threads, .seconds = o.seconds, .zipf = o.zipf, .seed = 7};
    wl_result wr;
    if ((e = wl_run(&wp, up_dhps_backend(conn->client, o.table, o.dim, 0), &wr)) < 0) {
        fprintf(stderr, "dhps up: workload: %s\n", dhps_strerror(e));
        rc = 1;
        goto done;
    }
    printf("dhps up: workload: %u threads, batches of %u keys (%s), %.1f s, client router %s\n"
           "  %.0f keys/s, %.0f batches/s; batch latency p50 %.0f us, p99 %.0f us, "
           "p99.9 %.0f us; %llu errors, %llu keys missing\n", o.threads, o.batch,
           o.zipf > 0 ? "zipf" : "uniform", wr.seconds, dhps_client_router_name(conn->client),
           (double)wr.keys / wr.seconds, (double)wr.batches / wr.seconds,
           tools_hist_quantile(&wr.hist, 0.5) / 1e3, tools_hist_quantile(&wr.hist, 0.99) / 1e3,
           tools_hist_quantile(&wr.hist, 0.999) / 1e3, (unsigned long long)wr.errors,
           (unsigned long long)wr.missing);
    uint64_t tier_msgs[4] = {0}, total = 0;
    printf("  traffic (rpc messages from this client; tiers relative to its labels %s/%s/%s):\n",
           nd[0].host, nd[0].pod, nd[0].az);
    for (uint32_t i = 0; i < o.nodes; i++) {
        dhps_client_node_stats_get(conn->client, i, &after);
        uint64_t m = after.messages - before[i].messages;
        total += m;
        tier_msgs[tier_of(nd, &nd[i])] += m;
    }
    for (uint32_t i = 0; i < o.nodes; i++) {
        dhps_client_node_stats_get(conn->client, i, &after);
        uint64_t m = after.messages - before[i].messages;
        printf("    %-3s %-6s %10llu msgs %5.1f%%  errors %llu timeouts %llu\n", nd[i].name,
               tools_tier_names[tier_of(nd, &nd[i])],
               (unsigned long long)m, total ? 100.0 * (double)m / (double)total : 0.0,
               (unsigned long long)(after.errors - before[i].errors),
               (unsigned long long)(after.timeouts - before[i].timeouts));
    }
    printf("    per tier:");
    for (int t = 0; t < 4; t++)
        printf(" %s %.1f%%", tools_tier_names[t],
               total ? 100.0 * (double)tier_msgs[t] / (double)total : 0.0);
    printf("\n");
done:
    printf("dhps up: cluster running; state in %s/cluster.json. Try `dhps get 1 --cluster %s`, "
           "`dhps stats --cluster %s`; stop with `dhps down --cluster %s`\n", absdir, absdir,
           absdir, absdir);
    tools_conn_close(conn);
    goto out;
fail:
    stop_started(nd, nd ? o.total : 0);
    if (etcd_pid > 0)
        up_etcd_stop(etcd_pid, 10);
    rc = 1;
out:
    for (uint32_t i = 0; i < 2 * UP_MAX_NODES; i++)
        if (held[i] >= 0)
            close(held[i]);
    if (signals_caught) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    free(stext);
    json_decref(state);
    json_decref(etcd_state);
    dhps_cluster_map_destroy(map);
    free(cn);
    free(nd);
    return rc;
}

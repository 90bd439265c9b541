/*
 * dhps start | stop | restart [--node N] and dhps down: the lifecycle of the nodes of a
 * cluster directory made by `dhps up` (docs/tools.md).
 *
 * Everything comes from DIR/cluster.json (or DIR/cluster.json.stopped after `dhps
 * down`): the server binary, each node's config, log, rpc and metrics ports. A node is
 * started from its own server.json, which `dhps up` pins to the ports of the map, so a
 * node comes back where the map says it is, whoever restarts it. A node's running
 * processes are found three ways, so one restarted by hand is not missed: the pid in
 * cluster.json, the node's pid file, and /proc (a dhps-server whose --config is the
 * node's). Processes in /proc whose config lies in DIR but belongs to no node of
 * cluster.json are stopped by `stop`/`down` of the whole cluster too.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools.h"
#include "toolsclient.h"
#include "up.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

#define NODE_MAX 64   /* nodes of one cluster (UP_MAX_NODES of up.c) */
#define NODE_PIDS 4   /* distinct live pids one node may show (a hand start beside ours) */
#define FOUND_MAX 256 /* dhps-server processes of one directory */

typedef struct cnode {
    int id;
    char name[16];
    char cfg[PATH_MAX], log[PATH_MAX], pidfile[PATH_MAX], portfile[PATH_MAX];
    pid_t pid; /* as cluster.json says */
    uint16_t port, mport;
} cnode;

typedef struct cluster {
    char dir[PATH_MAX];  /* resolved */
    char file[PATH_MAX]; /* the state file read: cluster.json or cluster.json.stopped */
    char server[PATH_MAX];
    bool stopped; /* read from cluster.json.stopped */
    json_t *j;
    uint32_t n;
    cnode node[NODE_MAX];
} cluster;

static void cluster_free(cluster *c)
{
    if (c) {
        json_decref(c->j);
        free(c);
    }
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Load DIR's cluster.json (or cluster.json.stopped). Prints "dhps <cmd>: ..." and returns
 * NULL when the directory or the file is missing or malformed. */
static cluster *cluster_load(const char *cmd, const char *dir)
{
    cluster *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || !realpath(dir, c->dir)) {
        fprintf(stderr, "dhps %s: cluster dir %s: %s\n", cmd, dir,
                errno ? strerror(errno) : "not a directory");
        goto fail;
    }
    json_error_t je;
    snprintf(c->file, sizeof c->file, "%s/cluster.json", c->dir);
    if (access(c->file, F_OK) < 0) {
        snprintf(c->file, sizeof c->file, "%s/cluster.json.stopped", c->dir);
        c->stopped = true;
        if (access(c->file, F_OK) < 0) {
            fprintf(stderr, "dhps %s: no cluster at %s (no cluster.json: make one with "
                    "`dhps up --cluster %s`)\n", cmd, c->dir, dir);
            goto fail;
        }
    }
    if (!(c->j = json_load_file(c->file, 0, &je))) {
        fprintf(stderr, "dhps %s: %s: %s\n", cmd, c->file, je.text);
        goto fail;
    }
    snprintf(c->server, sizeof c->server, "%s", jstr(c->j, "server"));
    json_t *n;
    size_t i;
    json_array_foreach(json_object_get(c->j, "nodes"), i, n) {
        if (i >= NODE_MAX) {
            fprintf(stderr, "dhps %s: %s: more than %d nodes\n", cmd, c->file, NODE_MAX);
            goto fail;
        }
        cnode *x = &c->node[i];
        x->id = (int)json_integer_value(json_object_get(n, "id"));
        snprintf(x->name, sizeof x->name, "%s", jstr(n, "name"));
        snprintf(x->cfg, sizeof x->cfg, "%s", jstr(n, "config"));
        snprintf(x->log, sizeof x->log, "%s", jstr(n, "log"));
        x->pid = (pid_t)json_integer_value(json_object_get(n, "pid"));
        x->port = (uint16_t)json_integer_value(json_object_get(n, "port"));
        x->mport = (uint16_t)json_integer_value(json_object_get(n, "metrics_port"));
        char nd[PATH_MAX];
        snprintf(nd, sizeof nd, "%s", x->cfg);
        char *slash = strrchr(nd, '/');
        if (slash)
            *slash = 0;
        json_t *cfg = json_load_file(x->cfg, 0, NULL); /* where the server writes them */
        const char *pf = jstr(cfg, "pid_file"), *qf = jstr(cfg, "port_file");
        snprintf(x->pidfile, sizeof x->pidfile, "%s", *pf ? pf : "");
        snprintf(x->portfile, sizeof x->portfile, "%s", *qf ? qf : "");
        if (!*pf)
            snprintf(x->pidfile, sizeof x->pidfile, "%s/pid", nd);
        if (!*qf)
            snprintf(x->portfile, sizeof x->portfile, "%s/ports", nd);
        json_decref(cfg);
        if (!*x->cfg || x->id != (int)i) {
            fprintf(stderr, "dhps %s: %s: node %zu malformed\n", cmd, c->file, i);
            goto fail;
        }
        c->n++;
    }
    if (!c->n || !*c->server) {
        fprintf(stderr, "dhps %s: %s: no nodes or no server binary\n", cmd, c->file);
        goto fail;
    }
    return c;
fail:
    cluster_free(c);
    return NULL;
}

/* Index of node "N" or "nN" in c, or -1 after printing "no such node". */
static int node_index(const char *cmd, const cluster *c, const char *arg)
{
    const char *s = arg[0] == 'n' ? arg + 1 : arg;
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end && v >= 0 && (uint32_t)v < c->n)
        return (int)v;
    fprintf(stderr, "dhps %s: no node '%s' in %s (nodes 0..%u)\n", cmd, arg, c->file, c->n - 1);
    return -1;
}

/* Same file? (configs are compared resolved) */
static bool same_path(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra))
        snprintf(ra, sizeof ra, "%s", a);
    if (!realpath(b, rb))
        snprintf(rb, sizeof rb, "%s", b);
    return !strcmp(ra, rb);
}

static size_t add_pid(pid_t *pids, size_t n, size_t cap, pid_t p)
{
    if (!up_pid_is_server(p))
        return n;
    for (size_t i = 0; i < n; i++)
        if (pids[i] == p)
            return n;
    if (n < cap)
        pids[n++] = p;
    return n;
}

/* Live dhps-server pids of node x: cluster.json, pid file, /proc (found[0..nf)). */
static size_t node_pids(const cnode *x, const up_found *found, size_t nf, pid_t *pids)
{
    size_t n = add_pid(pids, 0, NODE_PIDS, x->pid);
    n = add_pid(pids, n, NODE_PIDS, up_read_pid_file(x->pidfile));
    for (size_t i = 0; i < nf; i++)
        if (same_path(found[i].cfg, x->cfg))
            n = add_pid(pids, n, NODE_PIDS, found[i].pid);
    return n;
}

/* Write c's state back as DIR/cluster.json (from .stopped too), with the pids given. */
static int cluster_save(cluster *c)
{
    json_t *n;
    size_t i;
    json_array_foreach(json_object_get(c->j, "nodes"), i, n)
        if (i < c->n)
            json_object_set_new(n, "pid", json_integer(c->node[i].pid));
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/cluster.json", c->dir);
    char *text = json_dumps(c->j, JSON_INDENT(2));
    int rc = text ? up_write_text(p, text, 0640) : -ENOMEM;
    free(text);
    if (rc == 0 && c->stopped) {
        unlink(c->file);
        snprintf(c->file, sizeof c->file, "%s", p);
        c->stopped = false;
    }
    return rc;
}

bool up_dir_running(const char *dir, pid_t *pid)
{
    char abs[PATH_MAX];
    if (!realpath(dir, abs))
        return false;
    up_found *found = calloc(FOUND_MAX, sizeof *found);
    size_t nf = found ? up_find_dir_servers(abs, found, FOUND_MAX) : 0;
    bool alive = nf > 0;
    if (alive)
        *pid = found[0].pid;
    free(found);
    if (alive)
        return true;
    static const char *const files[] = {"cluster.json", "cluster.json.stopped"};
    for (size_t f = 0; f < 2 && !alive; f++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", abs, files[f]);
        json_t *j = json_load_file(p, 0, NULL), *n;
        pid_t ep = (pid_t)json_integer_value(json_object_get(json_object_get(j, "etcd"), "pid"));
        if (ep > 0 && up_pid_is_etcd(ep)) { /* `dhps up --etcd`'s etcd */
            *pid = ep;
            alive = true;
        }
        size_t i;
        json_array_foreach(json_object_get(j, "nodes"), i, n) {
            pid_t a = (pid_t)json_integer_value(json_object_get(n, "pid"));
            char pf[PATH_MAX], *slash;
            snprintf(pf, sizeof pf, "%s", jstr(n, "config"));
            if ((slash = strrchr(pf, '/')))
                snprintf(slash, sizeof pf - (size_t)(slash - pf), "/pid");
            pid_t b = up_read_pid_file(pf);
            if (up_pid_is_server(a) || up_pid_is_server(b)) {
                *pid = up_pid_is_server(a) ? a : b;
                alive = true;
                break;
            }
        }
        json_decref(j);
    }
    return alive;
}

/* ---- stop ------------------------------------------------------------------------- */

static const char *const stop_words[] = {
    [UP_STOP_CLEAN] = "stopped cleanly",
    [UP_STOP_KILLED] = "killed",
    [UP_STOP_NOT_RUNNING] = "was not running",
    [UP_STOP_STUCK] = "STILL RUNNING after SIGKILL",
};

/* Stop node `only` (or every node when only < 0, and then also the processes with a
 * config in DIR that belong to no node). One line per node unless quiet. Counts the
 * outcomes in cnt[UP_STOP_*]. */
static const char *stop_nodes(const char *cmd, cluster *c, int only, double timeout, bool quiet,
                              int cnt[4])
{
    bool one_each = true; /* every process found is the only one of a node of cluster.json */
    up_found *found = calloc(FOUND_MAX, sizeof *found);
    size_t nf = found ? up_find_dir_servers(c->dir, found, FOUND_MAX) : 0;
    pid_t pids[NODE_MAX * NODE_PIDS + FOUND_MAX] = {0};
    int owner[NODE_MAX * NODE_PIDS + FOUND_MAX]; /* node index, or -1 - found index */
    size_t np = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        if (only >= 0 && (int)i != only)
            continue;
        pid_t mine[NODE_PIDS];
        size_t k = node_pids(&c->node[i], found, nf, mine);
        one_each &= k <= 1;
        for (size_t q = 0; q < k; q++) {
            owner[np] = (int)i;
            pids[np++] = mine[q];
        }
    }
    for (size_t f = 0; only < 0 && f < nf; f++) {
        bool known = false;
        for (size_t q = 0; q < np && !known; q++)
            known = pids[q] == found[f].pid;
        if (!known) {
            one_each = false;
            owner[np] = -1 - (int)f;
            pids[np++] = found[f].pid;
        }
    }
    int res[NODE_MAX * NODE_PIDS + FOUND_MAX];
    double secs[NODE_MAX * NODE_PIDS + FOUND_MAX];
    up_stop_pids(pids, np, timeout, res, secs);
    for (uint32_t i = 0; i < c->n; i++) {
        if (only >= 0 && (int)i != only)
            continue;
        bool any = false;
        for (size_t q = 0; q < np; q++) {
            if (owner[q] != (int)i)
                continue;
            any = true;
            cnt[res[q]]++;
            if (quiet)
                continue;
            printf("  %-3s pid %-7d %s", c->node[i].name, (int)pids[q], stop_words[res[q]]);
            if (res[q] == UP_STOP_CLEAN)
                printf(" in %.2f s\n", secs[q]);
            else if (res[q] == UP_STOP_KILLED)
                printf(" (SIGKILL: no SIGTERM exit in %g s, no final snapshot)\n", timeout);
            else
                printf("\n");
            if (res[q] == UP_STOP_STUCK)
                fprintf(stderr, "dhps %s: node %s pid %d is still running\n", cmd,
                        c->node[i].name, (int)pids[q]);
        }
        if (!any) {
            cnt[UP_STOP_NOT_RUNNING]++;
            if (!quiet)
                printf("  %-3s %-11s was not running\n", c->node[i].name, "");
        }
        c->node[i].pid = 0;
    }
    for (size_t q = 0; q < np; q++) {
        if (owner[q] >= 0)
            continue;
        cnt[res[q]]++;
        if (!quiet)
            printf("  ?   pid %-7d %s (config %s, not a node of %s)\n", (int)pids[q],
                   stop_words[res[q]], found[-1 - owner[q]].cfg, c->file);
    }
    free(found);
    return one_each ? "nodes" : "processes";
}

/* "dhps <cmd>: 6 nodes stopped cleanly" when no process was killed or is left, else only
 * the nonzero counts ("1 killed; 2 not running"): never "stopped cleanly" for one that
 * was killed or still runs. */
static void print_counts(const char *cmd, const char *what, const int cnt[4])
{
    static const char *const fmt[] = {
        [UP_STOP_CLEAN] = "%d stopped cleanly",
        [UP_STOP_KILLED] = "%d killed",
        [UP_STOP_STUCK] = "%d STILL RUNNING",
        [UP_STOP_NOT_RUNNING] = "%d not running",
    };
    static const int order[] = {UP_STOP_CLEAN, UP_STOP_KILLED, UP_STOP_STUCK,
                                UP_STOP_NOT_RUNNING};
    printf("dhps %s: ", cmd);
    if (cnt[UP_STOP_KILLED] + cnt[UP_STOP_STUCK] == 0 && cnt[UP_STOP_CLEAN] > 0) {
        printf("%d %s stopped cleanly", cnt[UP_STOP_CLEAN], what);
        if (cnt[UP_STOP_NOT_RUNNING])
            printf("; %d not running", cnt[UP_STOP_NOT_RUNNING]);
        return;
    }
    const char *sep = "";
    for (int k = 0; k < 4; k++) {
        if (!cnt[order[k]])
            continue;
        printf("%s", sep);
        printf(fmt[order[k]], cnt[order[k]]);
        sep = ", ";
    }
    if (!*sep)
        printf("nothing to stop");
}

int up_stop_dir(const char *dir, double timeout_s, bool quiet)
{
    cluster *c = cluster_load("down", dir);
    if (!c)
        return 1;
    int cnt[4] = {0};
    const char *what = stop_nodes("down", c, -1, timeout_s, quiet, cnt);
    /* `dhps up --etcd`: etcd after the nodes (a clean stop revokes their leases in it) */
    json_t *etcd = json_object_get(c->j, "etcd");
    pid_t epid = (pid_t)json_integer_value(json_object_get(etcd, "pid"));
    if (etcd && epid > 0) {
        int er = up_etcd_stop(epid, timeout_s);
        if (!quiet)
            printf("  etcd pid %-7d %s\n", (int)epid,
                   er == 0 ? "stopped" : er == 1 ? "was not running" : "killed (SIGKILL)");
        if (er == 2)
            cnt[UP_STOP_KILLED]++;
    }
    if (!c->stopped) {
        char q[PATH_MAX + 16];
        snprintf(q, sizeof q, "%s.stopped", c->file);
        rename(c->file, q);
    }
    if (!quiet) {
        print_counts("down", what, cnt);
        printf("; data and logs stay in %s\n", c->dir);
    }
    cluster_free(c);
    return cnt[UP_STOP_KILLED] + cnt[UP_STOP_STUCK] ? 1 : 0;
}

/* ---- start ------------------------------------------------------------------------ */

/* Start node i unless it runs. Returns 0 (healthy), 1 (failed; said why), 3 (already
 * running: said so). */
static int start_node(const char *cmd, cluster *c, uint32_t i, double timeout)
{
    cnode *x = &c->node[i];
    up_found *found = calloc(FOUND_MAX, sizeof *found);
    size_t nf = found ? up_find_dir_servers(c->dir, found, FOUND_MAX) : 0;
    pid_t pids[NODE_PIDS];
    size_t np = node_pids(x, found, nf, pids);
    free(found);
    if (np) {
        fprintf(stderr, "dhps %s: node %u (%s) is already running (pid %d)\n", cmd, i, x->name,
                (int)pids[0]);
        x->pid = pids[0];
        return 3;
    }
    /* an older directory (ports 0 in server.json): pin the map's ports first */
    json_t *cfg = json_load_file(x->cfg, 0, NULL);
    if (!cfg) {
        fprintf(stderr, "dhps %s: node %u (%s): cannot read %s\n", cmd, i, x->name, x->cfg);
        return 1;
    }
    json_int_t cp = json_integer_value(json_object_get(json_object_get(cfg, "listen"), "tcp_port"));
    json_int_t cm = json_integer_value(json_object_get(json_object_get(cfg, "metrics"), "port"));
    json_decref(cfg);
    if ((cp != x->port || cm != x->mport) && x->port && x->mport) {
        int e = up_config_pin_ports(x->cfg, x->port, x->mport);
        if (e < 0) {
            fprintf(stderr, "dhps %s: node %u (%s): %s: %s\n", cmd, i, x->name, x->cfg,
                    strerror(-e));
            return 1;
        }
    }
    /* the map's ports, held here and handed to the server (nobody can take them
     * between this check and its listen) */
    unlink(x->portfile);
    pid_t pid;
    uint64_t t0 = dhps_mono_ns();
    const char *which = "";
    int e = up_restart_node(c->server, x->cfg, x->log, x->port, x->mport, &pid, &which);
    if (e == -EADDRINUSE || e == -EACCES || e == -EADDRNOTAVAIL) {
        fprintf(stderr, "dhps %s: node %u (%s): %s port 127.0.0.1:%u: %s\n", cmd, i, x->name,
                which, !strcmp(which, "rpc") ? x->port : x->mport,
                e == -EADDRINUSE ? "in use by another process" : strerror(-e));
        return 1;
    }
    if (e < 0) {
        fprintf(stderr, "dhps %s: starting node %u: %s\n", cmd, i, strerror(-e));
        return 1;
    }
    up_wait w = {0};
    e = up_wait_node(pid, x->portfile, timeout, NULL, &w);
    if (e == -ECHILD) {
        fprintf(stderr, "dhps %s: node %u (%s) exited during start (%s %d); log %s\n", cmd, i,
                x->name, WIFSIGNALED(w.status) ? "signal" : "status",
                WIFSIGNALED(w.status) ? WTERMSIG(w.status) : WEXITSTATUS(w.status), x->log);
        up_tail_log(x->log);
        return 1;
    }
    x->pid = pid;
    if (e == -ETIMEDOUT) {
        if (w.health > 0)
            fprintf(stderr, "dhps %s: node %u (%s) pid %d: /health answers %d after %.0f s%s; "
                    "left running\n", cmd, i, x->name, (int)pid, w.health, timeout,
                    w.health == 503 ? " (still loading or catching up)" : "");
        else
            fprintf(stderr, "dhps %s: node %u (%s) pid %d: no answer on /health after %.0f s "
                    "(%s); left running\n", cmd, i, x->name, (int)pid, timeout,
                    w.port ? strerror(-w.health) : "no port file yet");
        return 1;
    }
    printf("  %-3s pid %-7d healthy on rpc 127.0.0.1:%u, metrics :%u in %.2f s\n", x->name,
           (int)pid, w.port, w.mport, (double)(dhps_mono_ns() - t0) / 1e9);
    if (w.port != x->port || w.mport != x->mport) {
        fprintf(stderr, "dhps %s: node %u (%s) came up on ports %u/%u, the map says %u/%u\n",
                cmd, i, x->name, w.port, w.mport, x->port, x->mport);
        return 1;
    }
    return 0;
}

/* ---- the commands ----------------------------------------------------------------- */

enum { OP_START = 1, OP_STOP = 2 };

static int node_cmd(int argc, char **argv, int ops)
{
    const char *cmd = argv[0];
    static const struct option lo[] = {{"dir", required_argument, 0, 'd'},
                                       {"cluster", required_argument, 0, 'd'},
                                       {"node", required_argument, 0, 'n'},
                                       {"timeout", required_argument, 0, 't'},
                                       {"stop-timeout", required_argument, 0, 's'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    char usage[2048];
    if (ops == OP_START)
        snprintf(usage, sizeof usage,
                 "usage: dhps start [--cluster DIR] [--node N] [--timeout 60]\n"
                 "  Starts node N (or every node not running) of the cluster in DIR (made by\n"
                 "  `dhps up`; default $DHPS_CLUSTER_DIR or ./dhps-cluster) from its own\n"
                 "  server.json, on the rpc and metrics ports of cluster.json, and waits up to\n"
                 "  --timeout s for /health to answer 200. Log appended to DIR/nodeN/server.log.\n"
                 "  Exit 0 healthy; 1 no such node, already running (with --node), port taken,\n"
                 "  exited, or not healthy in time (the answer is printed; the node is left\n"
                 "  running); 2 usage.\n"
                 "  --cluster DIR      cluster directory (default $DHPS_CLUSTER_DIR or\n"
                 "                     ./dhps-cluster); --dir DIR is the same\n"
                 "  --node N           only node N (id or name); default every node\n"
                 "  --timeout S        seconds to wait for /health 200 (default 60)\n");
    else if (ops == OP_STOP)
        snprintf(usage, sizeof usage,
                 "usage: dhps stop [--cluster DIR] [--node N] [--timeout 30]\n"
                 "  Stops node N (or every node) of the cluster in DIR: SIGTERM to each of its\n"
                 "  dhps-server processes (from cluster.json, its pid file and /proc: also one\n"
                 "  started by hand), waits up to --timeout s (the final snapshot), then\n"
                 "  SIGKILL, and says which. Exit 0 stopped on SIGTERM or not running; 1 killed,\n"
                 "  still running, no such node or no cluster; 2 usage.\n"
                 "  --cluster DIR      cluster directory (default $DHPS_CLUSTER_DIR or\n"
                 "                     ./dhps-cluster); --dir DIR is the same\n"
                 "  --node N           only node N (id or name); default every node\n"
                 "  --timeout S        seconds to wait after SIGTERM (default 30)\n");
    else
        snprintf(usage, sizeof usage,
                 "usage: dhps restart [--cluster DIR] [--node N] [--stop-timeout 30] [--timeout 60]\n"
                 "  dhps stop, then dhps start, of node N (or every node) of the cluster in DIR.\n"
                 "  Exit 0 when the node(s) answer 200 on /health again; else 1; 2 usage.\n"
                 "  --cluster DIR      cluster directory (default $DHPS_CLUSTER_DIR or\n"
                 "                     ./dhps-cluster); --dir DIR is the same\n"
                 "  --node N           only node N (id or name); default every node\n"
                 "  --stop-timeout S   seconds to wait after SIGTERM (default 30)\n"
                 "  --timeout S        seconds to wait for /health 200 (default 60)\n");
    const char *dir = NULL, *node = NULL;
    double timeout = ops == OP_STOP ? 30 : 60, stop_timeout = 30;
    bool stop_timeout_given = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:n:t:s:h", lo, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': node = optarg; break;
        case 't':
        case 's': {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || !(v > 0)) {
                fprintf(stderr, "dhps %s: bad timeout '%s' (seconds > 0)\n", cmd, optarg);
                return 2;
            }
            *(c == 't' ? &timeout : &stop_timeout) = v;
            stop_timeout_given |= c == 's';
            break;
        }
        case 'h': printf("%s", usage); return 0;
        default: fprintf(stderr, "%s", usage); return 2;
        }
    }
    if (optind != argc || (stop_timeout_given && ops != (OP_START | OP_STOP))) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    if (ops == OP_STOP)
        stop_timeout = timeout;
    cluster *cl = cluster_load(cmd, dir ? dir : tools_default_dir());
    if (!cl)
        return 1;
    int only = -1, rc = 0;
    if (node && (only = node_index(cmd, cl, node)) < 0) {
        cluster_free(cl);
        return 1;
    }
    if (ops & OP_STOP) {
        int cnt[4] = {0};
        const char *what = stop_nodes(cmd, cl, only, stop_timeout, false, cnt);
        print_counts(cmd, only >= 0 ? "process(es) of the node" : what, cnt);
        printf("\n");
        if (cnt[UP_STOP_STUCK] || (ops == OP_STOP && cnt[UP_STOP_KILLED]))
            rc = 1;
        if (cnt[UP_STOP_STUCK])
            goto out;
        if (ops == OP_STOP && !cl->stopped && cluster_save(cl) < 0)
            fprintf(stderr, "dhps %s: cannot update %s\n", cmd, cl->file);
    }
    if (ops & OP_START) {
        fflush(stdout);
        int ok = 0, failed = 0, running = 0;
        for (uint32_t i = 0; i < cl->n; i++) {
            if (only >= 0 && (int)i != only)
                continue;
            int r = start_node(cmd, cl, i, timeout);
            ok += r == 0;
            failed += r == 1;
            running += r == 3;
        }
        if (cluster_save(cl) < 0)
            fprintf(stderr, "dhps %s: cannot update %s/cluster.json\n", cmd, cl->dir);
        if (only >= 0 && running)
            rc = 1;
        else if (only >= 0 && !failed)
            printf("dhps %s: node %d (%s) healthy\n", cmd, only, cl->node[only].name);
        else if (only < 0)
            printf("dhps %s: %d nodes started and healthy, %d already running, %d failed\n",
                   cmd, ok, running, failed);
        if (failed)
            rc = 1;
    }
out:
    cluster_free(cl);
    return rc;
}

int dhps_cmd_start(int argc, char **argv) { return node_cmd(argc, argv, OP_START); }
int dhps_cmd_stop(int argc, char **argv) { return node_cmd(argc, argv, OP_STOP); }
int dhps_cmd_restart(int argc, char **argv) { return node_cmd(argc, argv, OP_START | OP_STOP); }

int dhps_cmd_down(int argc, char **argv)
{
    static const struct option lo[] = {{"dir", required_argument, 0, 'd'},
                                       {"cluster", required_argument, 0, 'd'},
                                       {"timeout", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    static const char usage[] =
        "usage: dhps down [--cluster DIR] [--timeout 30]\n"
        "  Stops every dhps-server of the cluster in DIR: the pids of cluster.json, the\n"
        "  nodes' pid files, and any dhps-server whose --config lies in DIR (a node\n"
        "  restarted by hand); SIGTERM, wait up to --timeout s, then SIGKILL. One line per\n"
        "  node (stopped cleanly / killed / was not running); cluster.json becomes\n"
        "  cluster.json.stopped (`dhps start` brings the cluster back). Exit 0 all stopped\n"
        "  on SIGTERM; 1 a node killed or still running, or no cluster; 2 usage.\n"
        "  --cluster DIR      cluster directory (default $DHPS_CLUSTER_DIR or\n"
        "                     ./dhps-cluster); --dir DIR is the same\n"
        "  --timeout S        seconds to wait after SIGTERM before SIGKILL (default 30)\n";
    const char *dir = NULL;
    double timeout = 30;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:t:h", lo, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 't': timeout = atof(optarg); break;
        case 'h': printf("%s", usage); return 0;
        default: fprintf(stderr, "%s", usage); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    return up_stop_dir(dir ? dir : tools_default_dir(), timeout, false);
}

/*
 * dhps membership: the membership test of issue 10 through real processes and a real
 * etcd, with lookups and updates running throughout (docs/tools.md "dhps membership").
 *
 * Starts `dhps up --etcd` with 4 nodes in the map and 3 spares (registered, not in the
 * map), loads the sample keys, runs chaos.c's lookup thread (batches of sample keys, a
 * deadline each) and update thread (ACK_ALL by default; per-key generations), and plays:
 *   grow      `dhps node add 4 --no-wait`, `dhps node add 5`: 4 -> 6 nodes; the second
 *             is killed -9 once joins to node 5 are in the map, and run again (it waits
 *             for the killed one's election lease, then resumes)
 *   shrink    `dhps node drain 5 --no-wait`, `dhps node remove 4`, etcd killed (-9) while
 *             joins are in flight and restarted on its data after --etcd-down-s; then
 *             nodes 4 and 5 are stopped
 *   replace   `dhps node replace 0 6`, then node 0 is stopped
 *   kill      `dhps controller --grace-s G` runs; node 1 is killed -9; its registration
 *             goes with its lease, and after the grace the controller re-replicates its
 *             shards and removes it; the step ends when every shard has 2 replicas again
 *   joiner    node 4 is started again and `dhps node add 4` run; node 4 is killed -9 as
 *             soon as a join to it is in the map: the add's driver rolls the joins back
 *             after the grace, marks it dead and removes it
 * Each command is a child process (this binary), its --json result kept. Then the load
 * stops and chaoscheck.c checks the end state on the final map: every node ready, one
 * anti-entropy pass, every acknowledged update key read from every replica alone
 * (acked_updates_lost), digests compared. Report: JSON (--json) or text; exit 0 when
 * nothing was lost or missing while held, every step finished and the end state settled.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chaos.h"
#include "ctl.h"
#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/coord.h"
#include "dhps/error.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

int dhps_cmd_up(int argc, char **argv);
int dhps_cmd_membership(int argc, char **argv);

#define MB_NODES 7 /* 4 in the first map, spares 4, 5 (grow) and 6 (replacement) */
#define MB_STEPS 5

static const char mb_usage[] =
    "usage: dhps membership [--cluster DIR] [--keys 20000] [--dim 8] [--shards 64]\n"
    "                       [--batch 100] [--deadline-ms 100] [--grace-s 3] [--lease-ttl-s 3]\n"
    "                       [--parallel 16] [--step-timeout-s 180] [--etcd-down-s 3]\n"
    "                       [--ack all|quorum|one] [--server PATH] [--json]\n"
    "  Through real dhps-server processes and a real etcd (`dhps up --etcd`), with lookups\n"
    "  and updates running throughout: grow 4 -> 6 nodes, shrink back to 4 (etcd killed and\n"
    "  restarted while shards move), replace a node, kill -9 a node and let `dhps\n"
    "  controller` re-replicate its shards after the grace. Reports lookups answered in\n"
    "  deadline, acknowledged updates lost, keys missing while held, shards and bytes\n"
    "  moved, time per step. Default DIR: ./dhps-membership (its previous contents are\n"
    "  deleted); the cluster and etcd are stopped at the end.\n";

struct step {
    const char *name;
    double seconds;
    int exit;            /* the driving command's exit (0 done) */
    uint64_t moved;      /* replicas whose holder changed: the maps before and after */
    uint64_t started, cancels, conflicts, version; /* from the commands' --json */
    dhps_cluster_map *before;
    uint64_t bytes;      /* dhps_sync_fetched_bytes_total grown during the step */
};

struct mb {
    char self[PATH_MAX], dir[PATH_MAX], url[64], cluster[64], server[PATH_MAX];
    uint16_t mport0[MB_NODES]; /* metrics ports as started (mport is zeroed when a node goes) */
    pid_t etcd_pid;
    uint16_t etcd_port, etcd_peer;
    struct ch_node nd[MB_NODES];
    uint64_t fetched[MB_NODES]; /* last dhps_sync_fetched_bytes_total read per node */
    uint64_t base_fetched[MB_NODES];
    double grace_s;
    uint32_t parallel, lease_ttl_s;
    double step_timeout_s, etcd_down_s;
    bool json;
    FILE *say;
    dhps_coord *coord;
};

/* Read every live node's fetched-bytes counter (a node keeps its last value once gone). */
static void sample_bytes(struct mb *M)
{
    uint64_t v[MB_NODES];
    chaos_metrics_sum(M->nd, MB_NODES, "dhps_sync_fetched_bytes_total", v);
    for (int i = 0; i < MB_NODES; i++)
        if (M->nd[i].mport && v[i] > M->fetched[i])
            M->fetched[i] = v[i];
}

static uint64_t bytes_total(const struct mb *M)
{
    uint64_t s = 0;
    for (int i = 0; i < MB_NODES; i++)
        s += M->fetched[i] - M->base_fetched[i];
    return s;
}

/* Start `dhps ARGS --etcd URL --cluster NAME --json ...` (this binary); stdout to
 * DIR/<tag>.json, stderr to DIR/steps.log. Returns the pid or -errno. */
static pid_t spawn_cmd(struct mb *M, const char *tag, char *const *args)
{
    char out[PATH_MAX], log[PATH_MAX], grace[32], par[32];
    snprintf(out, sizeof out, "%s/%s.json", M->dir, tag);
    snprintf(log, sizeof log, "%s/steps.log", M->dir);
    snprintf(grace, sizeof grace, "%g", M->grace_s);
    snprintf(par, sizeof par, "%u", M->parallel);
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%g", M->step_timeout_s);
    char *argv[32];
    int n = 0;
    argv[n++] = "dhps";
    for (int i = 0; args[i] && n < 16; i++)
        argv[n++] = args[i];
    /* election lease 3 s: a driver killed on purpose holds it that long at most */
    char *common[] = {"--etcd", M->url, "--cluster", M->cluster, "--json", "--grace-s", grace,
                      "--parallel", par, "--poll-ms", "100", "--lease-ttl-s", "3", NULL};
    for (int i = 0; common[i]; i++)
        argv[n++] = common[i];
    if (strcmp(args[0], "controller")) {
        argv[n++] = "--timeout-s";
        argv[n++] = timeout;
    }
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    if (p < 0)
        return -errno;
    if (p == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int l = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (o >= 0)
            dup2(o, 1);
        if (l >= 0)
            dup2(l, 2);
        execv(M->self, argv);
        _exit(127);
    }
    return p;
}

/* Wait for a command; fold its --json result into s (the last object it printed). */
static int wait_cmd(struct mb *M, pid_t p, const char *tag, struct step *s)
{
    int st = 0;
    waitpid(p, &st, 0);
    int ex = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s.json", M->dir, tag);
    json_t *j = json_load_file(path, JSON_DISABLE_EOF_CHECK, NULL);
    if (j && s) {
        s->started += (uint64_t)json_integer_value(json_object_get(j, "joins"));
        s->cancels += (uint64_t)json_integer_value(json_object_get(j, "cancels"));
        s->conflicts += (uint64_t)json_integer_value(json_object_get(j, "conflicts"));
        uint64_t v = (uint64_t)json_integer_value(json_object_get(j, "map_version"));
        if (v > s->version)
            s->version = v;
    }
    json_decref(j);
    if (ex)
        fprintf(stderr, "dhps membership: `dhps %s` exited %d (log %s/steps.log)\n", tag, ex,
                M->dir);
    return ex;
}

/* Run one command to its end (see spawn_cmd). */
static int run_cmd(struct mb *M, const char *tag, struct step *s, char *const *args)
{
    pid_t p = spawn_cmd(M, tag, args);
    return p < 0 ? 125 : wait_cmd(M, p, tag, s);
}

/* The map in etcd now (NULL when unreadable). */
static dhps_cluster_map *map_now(struct mb *M)
{
    ctl_state st;
    if (ctl_state_read(M->coord, M->cluster, &st) < 0)
        return NULL;
    dhps_cluster_map *m = st.map;
    st.map = NULL;
    ctl_state_free(&st);
    return m;
}

/* SIGTERM node i (it left the map) and forget it for the checks. */
static void stop_node(struct mb *M, int i)
{
    sample_bytes(M);
    if (M->nd[i].pid > 0) {
        int res;
        double secs;
        up_stop_pids(&M->nd[i].pid, 1, 10, &res, &secs);
    }
    M->nd[i].pid = 0;
    M->nd[i].mport = 0;
}

static void step_begin(struct mb *M, struct chaos *C, struct step *s, int idx, const char *name)
{
    s->name = name;
    s->before = map_now(M);
    sample_bytes(M);
    s->bytes = bytes_total(M);
    s->seconds = (double)dhps_mono_ns() / 1e9;
    uint64_t old = atomic_load(&C->phase);
    atomic_store(&C->phase_ns, dhps_mono_ns());
    atomic_store(&C->phase, (uint64_t)idx | (old & 0xff) << 16);
    fprintf(M->say, "dhps membership: %s\n", name);
    fflush(M->say);
}

/* Replicas of b whose node is not among a's replicas of the same shard (0 without both). */
static uint64_t replicas_moved(const dhps_cluster_map *a, const dhps_cluster_map *b)
{
    uint64_t n = 0;
    if (!a || !b || dhps_cluster_map_nshards(a) != dhps_cluster_map_nshards(b))
        return 0;
    for (uint32_t sh = 0; sh < dhps_cluster_map_nshards(b); sh++) {
        const uint32_t *r;
        int k = dhps_cluster_map_replicas(b, sh, &r);
        for (int j = 0; j < k; j++)
            n += !dhps_cluster_map_owns(a, r[j], sh);
    }
    return n;
}

static void step_end(struct mb *M, struct step *s)
{
    dhps_cluster_map *after = map_now(M);
    s->moved = replicas_moved(s->before, after);
    if (after)
        s->version = dhps_cluster_map_version(after);
    dhps_cluster_map_destroy(after);
    dhps_cluster_map_destroy(s->before);
    s->before = NULL;
    sample_bytes(M);
    s->bytes = bytes_total(M) - s->bytes;
    s->seconds = (double)dhps_mono_ns() / 1e9 - s->seconds;
    fprintf(M->say, "  %.2f s, exit %d, %llu shards moved (%llu started, %llu rolled back), "
            "%llu bytes fetched by catch-up, map version %llu\n", s->seconds, s->exit,
            (unsigned long long)s->moved, (unsigned long long)s->started,
            (unsigned long long)s->cancels, (unsigned long long)s->bytes,
            (unsigned long long)s->version);
    fflush(M->say);
}

/* The shrink step's etcd outage: once the map has joins in flight (or the driver is
 * done), kill -9 etcd, wait etcd_down_s, restart it on its data and ports. */
static int etcd_outage(struct mb *M, pid_t driver, double *down_s, bool *mid_move)
{
    uint64_t by = dhps_mono_ns() + 60000000000ull;
    *mid_move = false;
    while (dhps_mono_ns() < by && waitpid(driver, NULL, WNOHANG) == 0) {
        dhps_cluster_map *m = map_now(M);
        bool moving = m && dhps_cluster_map_njoining(m) > 0;
        dhps_cluster_map_destroy(m);
        if (moving) {
            *mid_move = true;
            break;
        }
        up_msleep(20);
    }
    uint64_t t0 = dhps_mono_ns();
    kill(M->etcd_pid, SIGKILL);
    waitpid(M->etcd_pid, NULL, 0);
    fprintf(M->say, "  etcd killed (-9)%s; restarting it in %.1f s\n",
            *mid_move ? " with joins in flight" : "", M->etcd_down_s);
    chaos_sleep_s(M->etcd_down_s);
    char url[64];
    int e = up_etcd_start(M->dir, M->etcd_port, M->etcd_peer, &M->etcd_pid, url, sizeof url);
    *down_s = (double)(dhps_mono_ns() - t0) / 1e9;
    if (e < 0)
        fprintf(stderr, "dhps membership: restarting etcd failed: %s\n", strerror(-e));
    return e;
}

/* Start node i again from its config (log appended) and wait until it is registered
 * (30 s). */
static bool restart_node(struct mb *M, int i)
{
    pid_t pid;
    const char *which;
    int e = up_restart_node(M->server, M->nd[i].cfg, M->nd[i].log, M->nd[i].port,
                            M->mport0[i], &pid, &which);
    if (e < 0) {
        fprintf(stderr, "dhps membership: restarting node %d: %s%s%s\n", i,
                e == -EADDRINUSE ? which : "", e == -EADDRINUSE ? " port: " : "",
                strerror(-e));
        return false;
    }
    M->nd[i].pid = pid;
    M->nd[i].mport = M->mport0[i];
    for (int k = 0; k < 300; k++) {
        ctl_state st;
        if (ctl_state_read(M->coord, M->cluster, &st) == 0) {
            bool reg = ctl_state_reg(&st, (uint32_t)i) != NULL;
            ctl_state_free(&st);
            if (reg)
                return true;
        }
        up_msleep(100);
    }
    return false;
}

/* Wait until the map has a join to node (true), or the driver exits / 60 s pass. */
static bool wait_joining(struct mb *M, uint32_t node, pid_t driver)
{
    uint64_t by = dhps_mono_ns() + 60000000000ull;
    while (dhps_mono_ns() < by && waitpid(driver, NULL, WNOHANG) == 0) {
        dhps_cluster_map *m = map_now(M);
        size_t n = m ? dhps_cluster_map_njoining(m) : 0;
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = dhps_cluster_map_join_at(m, i)->node == node;
        dhps_cluster_map_destroy(m);
        if (found)
            return true;
        up_msleep(10);
    }
    return false;
}

/* Wait until node `gone` has left the map, nothing is joining and every shard has R
 * replicas on live nodes. */
static bool wait_restored(struct mb *M, uint32_t gone, double timeout_s)
{
    uint64_t by = dhps_mono_ns() + (uint64_t)(timeout_s * 1e9);
    while (dhps_mono_ns() < by) {
        dhps_cluster_map *m = map_now(M);
        bool ok = m && !dhps_cluster_map_node(m, gone) && !dhps_cluster_map_njoining(m);
        dhps_cluster_map_destroy(m);
        if (ok)
            return true;
        up_msleep(100);
    }
    return false;
}

static void report(const struct mb *M, const struct chaos *C, const struct chaos_check *K,
                   const struct step *st, int nst, double etcd_down, bool etcd_mid,
                   bool driver_killed, uint64_t deadline_ms)
{
    double avail = C->requests ? (double)C->in_deadline / (double)C->requests : 0;
    uint64_t moved = 0;
    for (int i = 0; i < nst; i++)
        moved += st[i].moved;
    if (M->json) {
        printf("{\"lookups\": %llu, \"answered_in_deadline\": %llu, \"availability\": %.6f, "
               "\"deadline_ms\": %llu, \"lookup_timeouts\": %llu, \"lookup_unreachable\": %llu, "
               "\"lookup_other_errors\": %llu, \"lookup_late\": %llu, "
               "\"missing_while_held\": %llu, \"updates\": %llu, \"update_shortfalls\": %llu, "
               "\"update_ack\": \"%s\", \"acked_updates\": %llu, \"acked_keys_checked\": %llu, "
               "\"acked_updates_lost\": %llu, \"stale_router_reads\": %llu, "
               "\"sample_keys_bad\": %llu, \"keys_unread\": %llu, \"replica_divergence\": "
               "{\"shards_checked\": %u, \"shards_differing\": %u, \"digest_errors\": %u, "
               "\"keys_differing\": %llu}, \"settled\": %s, \"shards_moved\": %llu, "
               "\"bytes_moved\": %llu, \"etcd_outage\": {\"seconds\": %.2f, \"mid_move\": %s}, "
               "\"driver_killed_mid_move\": %s, \"steps\": [",
               (unsigned long long)C->requests, (unsigned long long)C->in_deadline, avail,
               (unsigned long long)deadline_ms, (unsigned long long)C->errors[0],
               (unsigned long long)C->errors[1], (unsigned long long)C->errors[2],
               (unsigned long long)C->errors[3], (unsigned long long)C->missing_while_held,
               (unsigned long long)C->updates, (unsigned long long)C->update_shortfalls,
               chaos_ack_name[C->ack], (unsigned long long)C->acked_keys,
               (unsigned long long)K->checked, (unsigned long long)K->lost,
               (unsigned long long)K->stale_router, (unsigned long long)K->sample_bad,
               (unsigned long long)K->unread, K->shards_checked, K->shards_differing,
               K->digest_errors, (unsigned long long)K->keys_differing,
               K->settled ? "true" : "false", (unsigned long long)moved,
               (unsigned long long)bytes_total(M), etcd_down, etcd_mid ? "true" : "false",
               driver_killed ? "true" : "false");
        for (int i = 0; i < nst; i++)
            printf("%s{\"name\": \"%s\", \"seconds\": %.2f, \"exit\": %d, \"shards_moved\": "
                   "%llu, \"joins_started\": %llu, \"rolled_back\": %llu, \"conflicts\": %llu, "
                   "\"bytes_moved\": %llu, \"map_version\": %llu}",
                   i ? ", " : "", st[i].name, st[i].seconds, st[i].exit,
                   (unsigned long long)st[i].moved, (unsigned long long)st[i].started,
                   (unsigned long long)st[i].cancels, (unsigned long long)st[i].conflicts,
                   (unsigned long long)st[i].bytes, (unsigned long long)st[i].version);
        printf("]}\n");
    } else {
        printf("dhps membership: %llu lookups, %llu answered completely within %llu ms: "
               "%.5f %% (target 99.999 %%); %llu keys missing while held (target 0)\n"
               "  updates (ACK_%s): %llu batches, %llu short of acks; %llu key writes "
               "acknowledged, %llu keys checked on every replica: %llu lost (target 0), %llu "
               "stale router reads; %u of %u shards with differing digests; settled: %s\n"
               "  %llu shards moved, %llu bytes fetched by catch-up; etcd down %.2f s%s\n",
               (unsigned long long)C->requests, (unsigned long long)C->in_deadline,
               (unsigned long long)deadline_ms, 100.0 * avail,
               (unsigned long long)C->missing_while_held,
               C->ack == DHPS_ACK_ALL ? "ALL" : C->ack == DHPS_ACK_QUORUM ? "QUORUM" : "ONE",
               (unsigned long long)C->updates, (unsigned long long)C->update_shortfalls,
               (unsigned long long)C->acked_keys, (unsigned long long)K->checked,
               (unsigned long long)K->lost, (unsigned long long)K->stale_router,
               K->shards_differing, K->shards_checked, K->settled ? "yes" : "NO",
               (unsigned long long)moved, (unsigned long long)bytes_total(M), etcd_down,
               etcd_mid ? " (joins in flight)" : "");
        for (int i = 0; i < nst; i++)
            printf("  %-28s %7.2f s  exit %d  %4llu shards moved  %10llu bytes\n", st[i].name,
                   st[i].seconds, st[i].exit, (unsigned long long)st[i].moved,
                   (unsigned long long)st[i].bytes);
    }
    for (uint32_t i = 0; i < C->nfails; i++) {
        const struct ch_fail *f = &C->fails[i];
        fprintf(M->say, "  missed: %7.3f s, step %u (%.0f ms in): %s after %llu us, %zu keys "
                "unanswered\n", (double)f->t_ns / 1e9, f->phase, (double)f->since_ns / 1e6,
                f->rc ? dhps_strerror(f->rc) : "complete but late",
                (unsigned long long)f->dt_us, f->unanswered);
    }
    for (uint32_t i = 0; i < C->nheld_ex; i++)
        fprintf(M->say, "  missing while held: key %llu at %.3f s (step %u)\n",
                (unsigned long long)C->held_ex[i].key, (double)C->held_ex[i].t_ns / 1e9,
                C->held_ex[i].phase);
    for (uint32_t i = 0; i < K->nlost_ex; i++)
        fprintf(M->say, "  acked update behind: key %llu shard %u on n%u: generation %lld, "
                "acknowledged %lld\n", (unsigned long long)K->lost_ex[i].key,
                K->lost_ex[i].shard, K->lost_ex[i].node, (long long)K->lost_ex[i].got,
                (long long)K->lost_ex[i].want);
}

/* `dhps controller --json` prints one object per line, {"event": "map", ...} for each map
 * version it wrote: sum their flips, joins, cancels into s. */
static void controller_counts(const struct mb *M, struct step *s)
{
    char p[PATH_MAX], line[1024];
    snprintf(p, sizeof p, "%s/controller.json", M->dir);
    FILE *f = fopen(p, "r");
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && !strcmp(json_string_value(json_object_get(j, "event")) ?: "", "map")) {
            s->started += (uint64_t)json_integer_value(json_object_get(j, "joins"));
            s->cancels += (uint64_t)json_integer_value(json_object_get(j, "cancels"));
        }
        json_decref(j);
    }
    if (f)
        fclose(f);
}

/* Record etcd's new pid in DIR/cluster.json (so `dhps down` stops the restarted one). */
static void save_etcd_pid(const struct mb *M)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/cluster.json", M->dir);
    json_t *j = json_load_file(p, 0, NULL);
    json_t *e = json_object_get(j, "etcd");
    if (e) {
        json_object_set_new(e, "pid", json_integer(M->etcd_pid));
        json_dump_file(j, p, JSON_INDENT(2));
    }
    json_decref(j);
}

/* Start the cluster through `dhps up --etcd` and read DIR/cluster.json into M. */
static int start_cluster(struct mb *M, const char *dir, uint64_t shards, uint64_t keys,
                         uint64_t dim, const char *server)
{
    char a_sh[24], a_k[24], a_d[24], a_ttl[24];
    snprintf(a_sh, sizeof a_sh, "%llu", (unsigned long long)shards);
    snprintf(a_k, sizeof a_k, "%llu", (unsigned long long)keys);
    snprintf(a_d, sizeof a_d, "%llu", (unsigned long long)dim);
    snprintf(a_ttl, sizeof a_ttl, "%u", M->lease_ttl_s);
    char *av[40] = {"up", "--dir", (char *)dir, "--nodes", "4", "--spare", "3", "--etcd",
                    "--etcd-cluster", "membership", "--lease-ttl-s", a_ttl, "--shards", a_sh,
                    "--keys", a_k, "--dim", a_d, "--replicas", "2", "--azs", "1", "--pods",
                    "1", "--no-load", "--quiet", "--fresh", "--anti-entropy-s", "1"};
    int ac = 29;
    if (server) {
        av[ac++] = "--server";
        av[ac++] = (char *)server;
    }
    fflush(stdout);
    int saved = dup(1);
    dup2(2, 1); /* `dhps up` prints on stdout: keep it off the report */
    int rc = dhps_cmd_up(ac, av);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    if (!realpath(dir, M->dir))
        snprintf(M->dir, sizeof M->dir, "%s", dir);
    if (rc != 0)
        return -1;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/cluster.json", M->dir);
    json_t *cj = json_load_file(p, 0, NULL), *jn;
    json_t *e = json_object_get(cj, "etcd");
    snprintf(M->url, sizeof M->url, "%s", json_string_value(json_object_get(e, "url")) ?: "");
    snprintf(M->cluster, sizeof M->cluster, "%s",
             json_string_value(json_object_get(e, "cluster")) ?: "");
    M->etcd_pid = (pid_t)json_integer_value(json_object_get(e, "pid"));
    M->etcd_port = (uint16_t)json_integer_value(json_object_get(e, "port"));
    M->etcd_peer = (uint16_t)json_integer_value(json_object_get(e, "peer_port"));
    size_t i;
    json_array_foreach(json_object_get(cj, "nodes"), i, jn) {
        if (i >= MB_NODES)
            break;
        struct ch_node *n = &M->nd[i];
        n->pid = (pid_t)json_integer_value(json_object_get(jn, "pid"));
        n->port = (uint16_t)json_integer_value(json_object_get(jn, "port"));
        n->mport = (uint16_t)json_integer_value(json_object_get(jn, "metrics_port"));
        snprintf(n->cfg, sizeof n->cfg, "%s", json_string_value(json_object_get(jn, "config")));
        snprintf(n->log, sizeof n->log, "%s", json_string_value(json_object_get(jn, "log")));
        M->mport0[i] = n->mport;
    }
    snprintf(M->server, sizeof M->server, "%s",
             json_string_value(json_object_get(cj, "server")) ?: "");
    json_decref(cj);
    return M->url[0] && M->etcd_pid > 0 ? 0 : -1;
}

int dhps_cmd_membership(int argc, char **argv)
{
    static const struct option lo[] = {
        {"cluster", required_argument, 0, 'd'},  {"dir", required_argument, 0, 'd'},
        {"keys", required_argument, 0, 'k'},     {"dim", required_argument, 0, 'D'},
        {"shards", required_argument, 0, 's'},   {"batch", required_argument, 0, 'b'},
        {"deadline-ms", required_argument, 0, 'l'}, {"grace-s", required_argument, 0, 'g'},
        {"lease-ttl-s", required_argument, 0, 'L'}, {"parallel", required_argument, 0, 'p'},
        {"step-timeout-s", required_argument, 0, 't'},
        {"etcd-down-s", required_argument, 0, 'E'}, {"ack", required_argument, 0, 'A'},
        {"server", required_argument, 0, 'x'},   {"json", no_argument, 0, 'J'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    static struct mb M;
    static struct chaos C;
    static struct chaos_check K;
    memset(&M, 0, sizeof M);
    memset(&C, 0, sizeof C);
    memset(&K, 0, sizeof K);
    uint64_t keys = 20000, dim = 8, shards = 64, batch = 100, deadline_ms = 100, par = 16,
             ttl = 3;
    const char *dir = "dhps-membership", *server = NULL;
    M.grace_s = 3;
    M.step_timeout_s = 180;
    M.etcd_down_s = 3;
    int c, ack = DHPS_ACK_ALL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'd': dir = optarg; break;
        case 'k': ok = tools_parse_u64("membership", "--keys", optarg, &keys) && keys; break;
        case 'D':
            ok = tools_parse_u64("membership", "--dim", optarg, &dim) && dim && dim <= 1024;
            break;
        case 's':
            ok = tools_parse_u64("membership", "--shards", optarg, &shards) && shards >= 8;
            break;
        case 'b': ok = tools_parse_u64("membership", "--batch", optarg, &batch) && batch &&
                       batch <= 1000; break;
        case 'l': ok = tools_parse_u64("membership", "--deadline-ms", optarg, &deadline_ms) &&
                       deadline_ms; break;
        case 'g': M.grace_s = atof(optarg); ok = M.grace_s >= 0; break;
        case 'L': ok = tools_parse_u64("membership", "--lease-ttl-s", optarg, &ttl) && ttl >= 2 &&
                       ttl <= 300; break;
        case 'p': ok = tools_parse_u64("membership", "--parallel", optarg, &par) && par &&
                       par <= 4096; break;
        case 't': M.step_timeout_s = atof(optarg); ok = M.step_timeout_s > 0; break;
        case 'E': M.etcd_down_s = atof(optarg); ok = M.etcd_down_s >= 0; break;
        case 'A':
            ack = !strcmp(optarg, "all")      ? DHPS_ACK_ALL
                  : !strcmp(optarg, "quorum") ? DHPS_ACK_QUORUM
                  : !strcmp(optarg, "one")    ? DHPS_ACK_ONE
                                              : -1;
            ok = ack >= 0;
            break;
        case 'x': server = optarg; break;
        case 'J': M.json = true; break;
        case 'h': printf("%s", mb_usage); return 0;
        default: ok = false;
        }
        if (!ok) {
            fprintf(stderr, "%s", mb_usage);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "%s", mb_usage);
        return 2;
    }
    ssize_t sl = readlink("/proc/self/exe", M.self, sizeof M.self - 1);
    if (sl <= 0) {
        fprintf(stderr, "dhps membership: /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    M.self[sl] = 0;
    M.parallel = (uint32_t)par;
    M.lease_ttl_s = (uint32_t)ttl;
    M.say = M.json ? stderr : stdout;
    if (start_cluster(&M, dir, shards, keys, dim, server) < 0) {
        fprintf(stderr, "dhps membership: could not start the cluster (dhps up --etcd)\n");
        up_stop_dir(M.dir[0] ? M.dir : dir, 10, true);
        return 1;
    }
    int ret = 1;
    tools_conn *conn = NULL;
    struct step st[MB_STEPS];
    memset(st, 0, sizeof st);
    int nst = 0;
    double etcd_down = 0;
    bool etcd_mid = false, threads = false, driver_killed = false;
    pthread_t tl, tu;
    pid_t ctl_pid = 0;
    dhps_coord_params cp;
    dhps_coord_params_init(&cp);
    cp.endpoint = M.url;
    if (dhps_coord_create(&cp, &M.coord) < 0)
        goto stop;
    tools_target tgt = {.cluster_dir = M.dir};
    if (tools_conn_open(&tgt, &conn) < 0)
        goto stop;
    int e = up_load_sample(conn->client, "emb", (uint32_t)dim, keys, true);
    if (e < 0) {
        fprintf(stderr, "dhps membership: loading the sample table: %s\n", dhps_strerror(e));
        goto stop;
    }
    sample_bytes(&M);
    memcpy(M.base_fetched, M.fetched, sizeof M.fetched);
    C.client = conn->client;
    C.conn = conn;
    C.ack = ack;
    C.ae_s = 1;
    C.ready_timeout = 120;
    C.dim = (uint32_t)dim;
    C.batch = (uint32_t)batch;
    C.nodes = MB_NODES;
    C.nkeys = keys;
    C.deadline_us = deadline_ms * 1000;
    C.ld_at = -1;
    C.nd = M.nd;
    fprintf(M.say, "dhps membership: 4 nodes + 3 spares, %llu shards x 2 replicas, %llu keys "
            "dim %llu, etcd %s; lookups (batch %llu, deadline %llu ms) and ACK_%s updates "
            "throughout\n", (unsigned long long)shards, (unsigned long long)keys,
            (unsigned long long)dim, M.url, (unsigned long long)batch,
            (unsigned long long)deadline_ms, chaos_ack_name[ack]);
    if (pthread_create(&tl, NULL, chaos_lookup_thread, &C) != 0)
        goto stop;
    if (pthread_create(&tu, NULL, chaos_update_thread, &C) != 0) {
        atomic_store(&C.stop, 1);
        pthread_join(tl, NULL);
        goto stop;
    }
    threads = true;
    while (atomic_load(&C.warm) < 2)
        chaos_sleep_s(0.001);
    C.t_start = dhps_mono_ns();
    atomic_store(&C.phase_ns, C.t_start);
    atomic_store(&C.go, 1);
    chaos_sleep_s(1);

    /* grow 4 -> 6; the driver is killed -9 mid-move and run again */
    step_begin(&M, &C, &st[nst], 1, "grow 4->6 (driver killed)");
    st[nst].exit = run_cmd(&M, "add4", &st[nst], (char *[]){"node", "add", "4", "--no-wait", NULL});
    pid_t first = st[nst].exit ? -1 : spawn_cmd(&M, "add5", (char *[]){"node", "add", "5", NULL});
    if (first > 0) {
        driver_killed = wait_joining(&M, 5, first);
        kill(first, SIGKILL);
        waitpid(first, NULL, 0);
        /* again: it waits for the killed one's election lease, then resumes its joins */
        st[nst].exit = run_cmd(&M, "add5again", &st[nst], (char *[]){"node", "add", "5", NULL});
    }
    step_end(&M, &st[nst++]);
    chaos_sleep_s(1);

    /* shrink 6 -> 4, etcd killed mid-move */
    step_begin(&M, &C, &st[nst], 2, "shrink 6->4 (etcd killed)");
    st[nst].exit = run_cmd(&M, "drain5", &st[nst],
                           (char *[]){"node", "drain", "5", "--no-wait", NULL});
    pid_t drv = st[nst].exit ? -1
                              : spawn_cmd(&M, "remove4", (char *[]){"node", "remove", "4", NULL});
    if (drv > 0) {
        if (etcd_outage(&M, drv, &etcd_down, &etcd_mid) == 0)
            save_etcd_pid(&M);
        st[nst].exit = wait_cmd(&M, drv, "remove4", &st[nst]);
    } else if (!st[nst].exit) {
        st[nst].exit = 125;
    }
    dhps_cluster_map *m = map_now(&M);
    if (!st[nst].exit && m && (dhps_cluster_map_node(m, 4) || dhps_cluster_map_node(m, 5)))
        st[nst].exit = 126; /* the command said done, yet a node is still in the map */
    dhps_cluster_map_destroy(m);
    step_end(&M, &st[nst++]);
    if (!st[nst - 1].exit) {
        stop_node(&M, 4);
        stop_node(&M, 5);
    }
    chaos_sleep_s(1);

    /* replace 0 by 6 */
    step_begin(&M, &C, &st[nst], 3, "replace 0 by 6");
    st[nst].exit = run_cmd(&M, "replace", &st[nst], (char *[]){"node", "replace", "0", "6", NULL});
    step_end(&M, &st[nst++]);
    if (!st[nst - 1].exit)
        stop_node(&M, 0);
    chaos_sleep_s(1);

    /* kill -9 of node 1; the controller re-replicates after the grace */
    step_begin(&M, &C, &st[nst], 4, "kill -9 node 1 (controller)");
    ctl_pid = spawn_cmd(&M, "controller", (char *[]){"controller", NULL});
    chaos_sleep_s(1); /* elected */
    sample_bytes(&M);
    kill(M.nd[1].pid, SIGKILL);
    waitpid(M.nd[1].pid, NULL, 0);
    M.nd[1].pid = 0;
    M.nd[1].mport = 0;
    st[nst].exit = wait_restored(&M, 1, M.step_timeout_s) ? 0 : 4;
    if (ctl_pid > 0) {
        kill(ctl_pid, SIGTERM);
        waitpid(ctl_pid, NULL, 0);
        ctl_pid = 0;
    }
    controller_counts(&M, &st[nst]);
    step_end(&M, &st[nst++]);
    chaos_sleep_s(1);

    /* a joining node killed: node 4 started again and added; killed -9 as soon as a join
     * to it is in the map; the add's driver rolls its joins back after the grace (and
     * re-replicates what already flipped to it), marks it dead and removes it */
    step_begin(&M, &C, &st[nst], 5, "kill -9 a joining node (4)");
    st[nst].exit = restart_node(&M, 4) ? 0 : 125;
    pid_t add = st[nst].exit ? -1 : spawn_cmd(&M, "readd4", (char *[]){"node", "add", "4", NULL});
    if (add > 0) {
        bool joining = wait_joining(&M, 4, add);
        /* killed at once: the joins to it may finish within a second, and on a loaded
         * machine a metrics scrape of every node takes longer than that (its own
         * fetched bytes are left out of the step's total) */
        kill(M.nd[4].pid, SIGKILL);
        waitpid(M.nd[4].pid, NULL, 0);
        M.nd[4].pid = 0;
        M.nd[4].mport = 0;
        sample_bytes(&M);
        st[nst].exit = wait_cmd(&M, add, "readd4", &st[nst]);
        if (!joining && !st[nst].exit)
            st[nst].exit = 126; /* never saw it joining: nothing was tested */
    }
    m = map_now(&M);
    if (!st[nst].exit && (!m || dhps_cluster_map_node(m, 4) || dhps_cluster_map_njoining(m)))
        st[nst].exit = 126; /* done, yet node 4 or a join is still in the map */
    dhps_cluster_map_destroy(m);
    step_end(&M, &st[nst++]);
    chaos_sleep_s(1);

    atomic_store(&C.stop, 1);
    pthread_join(tl, NULL);
    pthread_join(tu, NULL);
    threads = false;
    chaos_sleep_s(0.2);

    /* the end state, on the final map */
    m = map_now(&M);
    if (!m) {
        fprintf(stderr, "dhps membership: cannot read the final map from etcd\n");
        goto stop;
    }
    for (uint32_t i = 0; i < MB_NODES; i++)
        if (!dhps_cluster_map_node(m, i))
            M.nd[i].mport = 0; /* not a holder any more: left out of the checks */
    dhps_cluster_map_destroy(conn->map);
    conn->map = m;
    C.map = m;
    chaos_settle(&C, &K);
    chaos_verify(&C, &K);
    chaos_digests(&C, &K);
    report(&M, &C, &K, st, nst, etcd_down, etcd_mid, driver_killed, deadline_ms);
    ret = K.lost || C.missing_while_held || K.keys_differing || K.shards_differing ||
                  K.digest_errors || K.stale_router || K.sample_bad || K.unread || !K.settled
              ? 1
              : 0;
    for (int i = 0; i < nst; i++)
        ret |= st[i].exit != 0;
stop:
    if (threads) {
        atomic_store(&C.stop, 1);
        pthread_join(tl, NULL);
        pthread_join(tu, NULL);
    }
    if (ctl_pid > 0) {
        kill(ctl_pid, SIGTERM);
        waitpid(ctl_pid, NULL, 0);
    }
    tools_conn_close(conn);
    dhps_coord_destroy(M.coord);
    up_stop_dir(M.dir, 10, true);
    for (int i = 0; i < MB_NODES; i++) /* reap our children */
        if (M.nd[i].pid > 0)
            waitpid(M.nd[i].pid, NULL, WNOHANG);
    return ret;
}

/*
 * dhps chaos: the availability and replica-state test on its own. Starts a local cluster
 * through the `dhps up` code path (small defaults: 4 nodes, 2 replicas, 64 shards, 20,000
 * keys of dim 8), restarts it in the cluster-map form (each node knows its peers, so a
 * restarted replica catches up from them before it serves; anti-entropy every
 * --anti-entropy-s), loads the sample keys, snapshots every node, then runs a lookup
 * thread and an update thread through the client for --seconds while the main thread
 * plays a fault schedule, one fault at a time on rotating nodes, each restored before
 * the next:
 *   kill -9 a node, then restart it from its config on the same ports and wait until its
 *     /health/ready answers 200 (the catch-up time is recorded);
 *   SIGSTOP a node, then SIGCONT;
 *   an rpc fault rule adding --latency-ms to every call to a node, then cleared.
 * Lookups: batches of --batch random sample keys with a --deadline-ms deadline; one is
 * "answered in deadline" when every key got an answer (rc 0) within the deadline; a
 * sample key missing from a complete answer is "missing while held" (every replica
 * holds every sample key). Updates: batches of 8 keys from a separate range, each row
 * carrying a per-key generation, written with --ack; a key counts as acknowledged when
 * its bit in failed_mask is clear. Then chaoscheck.c checks the end state (chaos.h).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "chaos.h"
#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

int dhps_cmd_up(int argc, char **argv);
int dhps_cmd_snapshot(int argc, char **argv);
int dhps_cmd_chaos(int argc, char **argv);

static const char chaos_usage[] =
    "usage: dhps chaos [--cluster DIR] [--seconds 60] [--interval 3] [--nodes 4] [--shards 64]\n"
    "                  [--keys 20000] [--dim 8] [--batch 100] [--deadline-ms 100]\n"
    "                  [--latency-ms 50] [--faults kill,stop,slow | none] [--verbs]\n"
    "                  [--ack all|quorum|one] [--ready-timeout 60] [--anti-entropy-s 1]\n"
    "                  [--rdma-link-delete SECONDS] [--max-msg 4194304]\n"
    "                  [--connect-timeout-ms 1000] [--server PATH] [--json]\n"
    "  Starts a local cluster (as `dhps up`, then in the cluster-map form so replicas\n"
    "  catch up from each other), runs lookup + update load (updates with --ack) while\n"
    "  killing (-9, then restart and wait for /health/ready), stopping (SIGSTOP/SIGCONT)\n"
    "  and slowing (injected rpc latency) one node at a time; reports the share of\n"
    "  lookups answered completely within the deadline, the catch-up times, and, once\n"
    "  every node is ready and anti-entropy has run: acknowledged updates behind on any\n"
    "  replica, keys reported missing while held, replicas that differ (all targets 0).\n"
    "  The cluster is stopped at the end. Default DIR: ./dhps-chaos.\n"
    "  --verbs: the servers offer RDMA verbs (the client uses it toward the other nodes,\n"
    "  all in its AZ). --rdma-link-delete S: run `rdma link delete DEV` S seconds into the\n"
    "  load (DEV: $RXE_DEV, else the first device in /sys/class/infiniband); the report\n"
    "  adds the verbs requests the servers handled before it and the lookups after it.\n";

static uint64_t rnd64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void wait_go(struct chaos *C)
{
    while (!atomic_load(&C->go) && !atomic_load(&C->stop)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

void *chaos_lookup_thread(void *arg)
{
    struct chaos *C = arg;
    uint64_t seed = 0x1234567ull, keys[DHPS_PROTO_MAX_KEYS > 1000 ? 1000 : DHPS_PROTO_MAX_KEYS];
    float *out = malloc((size_t)C->batch * C->dim * sizeof(float));
    uint64_t mask[(1000 + 63) / 64];
    /* warm-up: this thread's channels to every node, before the clock starts (a verbs
     * path under TCG takes longer than a deadline to set up) */
    dhps_client_connect(C->client);
    atomic_fetch_add(&C->warm, 1);
    wait_go(C);
    while (out && !atomic_load(&C->stop)) {
        for (uint32_t i = 0; i < C->batch; i++)
            keys[i] = rnd64(&seed) % C->nkeys;
        dhps_client_result res;
        uint64_t t0 = dhps_mono_ns();
        int rc = dhps_client_lookup(C->client, "emb", keys, C->batch, out, C->dim, DHPS_FP32,
                                    mask, C->deadline_us, &res);
        uint64_t dt = dhps_mono_ns() - t0;
        C->requests++;
        uint64_t ld = atomic_load(&C->ld_t_ns);
        bool after_ld = ld && t0 >= ld;
        C->ld_requests += after_ld;
        if (rc == 0 && dt <= C->deadline_us * 1000ull) {
            C->in_deadline++;
            C->ld_in_deadline += after_ld;
        }
        else if (rc == DHPS_E_TIMEOUT)
            C->errors[0]++;
        else if (rc == DHPS_E_UNREACHABLE)
            C->errors[1]++;
        else if (rc != 0)
            C->errors[2]++;
        else
            C->errors[3]++; /* complete, but late */
        C->missing_keys += res.missing - res.unanswered;
        if (rc == 0 && res.missing) { /* complete, yet a sample key missing */
            C->missing_while_held += res.missing;
            uint64_t ph = atomic_load(&C->phase);
            for (uint32_t i = 0; i < C->batch && C->nheld_ex < CH_MAX_EXAMPLES; i++)
                if ((mask[i / 64] >> (i % 64)) & 1)
                    C->held_ex[C->nheld_ex++] = (struct ch_missing){
                        keys[i], t0 - C->t_start, (uint32_t)(ph & 0xff),
                        (uint32_t)((ph >> 8) & 0xff)};
        }
        if ((rc != 0 || dt > C->deadline_us * 1000ull) && C->nfails < CH_MAX_FAILS) {
            uint64_t ph = atomic_load(&C->phase), pns = atomic_load(&C->phase_ns);
            struct ch_fail *f = &C->fails[C->nfails++];
            f->t_ns = t0 - C->t_start;
            f->since_ns = t0 > pns ? t0 - pns : 0;
            f->phase = (uint32_t)(ph & 0xff);
            f->victim = (uint32_t)((ph >> 8) & 0xff);
            f->prev_phase = (uint32_t)((ph >> 16) & 0xff);
            f->rc = rc;
            f->dt_us = dt / 1000;
            f->unanswered = res.unanswered;
            f->messages = res.messages;
            f->retries = res.retries;
            f->hedges = res.hedges;
        }
    }
    free(out);
    return NULL;
}

void *chaos_update_thread(void *arg)
{
    struct chaos *C = arg;
    uint64_t seed = 0x9876543ull, keys[CH_UBATCH], mask[1];
    uint32_t idx[CH_UBATCH];
    float *rows = malloc((size_t)CH_UBATCH * C->dim * sizeof(float));
    dhps_client_connect(C->client); /* warm-up (see lookup_thread) */
    atomic_fetch_add(&C->warm, 1);
    wait_go(C);
    while (rows && !atomic_load(&C->stop)) {
        uint32_t n = 0;
        while (n < CH_UBATCH) { /* distinct keys */
            uint32_t k = (uint32_t)(rnd64(&seed) % CH_UKEYS);
            bool dup = false;
            for (uint32_t j = 0; j < n; j++)
                dup |= idx[j] == k;
            if (dup)
                continue;
            idx[n] = k;
            keys[n] = CH_UBASE + k;
            uint32_t g = ++C->gen[k];
            for (uint32_t d = 0; d < C->dim; d++)
                rows[n * C->dim + d] = (float)g;
            n++;
        }
        dhps_client_result res;
        int rc = dhps_client_update(C->client, "emb", keys, rows, n, C->dim, DHPS_FP32, 0,
                                    C->ack, 4 * C->deadline_us, mask, &res);
        C->updates++;
        if (rc == 0)
            C->update_ok++;
        else
            C->update_shortfalls++;
        for (uint32_t j = 0; j < n; j++)
            if (rc == 0 || !((mask[0] >> j) & 1)) {
                C->acked[idx[j]] = C->gen[idx[j]];
                C->acked_keys++;
            }
        struct timespec ts = {0, 2000000}; /* ~ a few hundred updates/s */
        nanosleep(&ts, NULL);
    }
    free(rows);
    return NULL;
}

#define M_VERBS "dhps_rpc_handled_total{transport=\"verbs\"}"
#define M_TCP "dhps_rpc_handled_total{transport=\"tcp\"}"
#define M_NOTREADY "dhps_requests_total{method=\"lookup\",status=\"notready\"}"

/* The RDMA device to delete: $RXE_DEV, else the first of /sys/class/infiniband. */
static bool rdma_device(char *out, size_t cap)
{
    const char *e = getenv("RXE_DEV");
    if (e && *e) {
        snprintf(out, cap, "%s", e);
        return true;
    }
    DIR *d = opendir("/sys/class/infiniband");
    struct dirent *de;
    bool found = false;
    while (d && !found && (de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(out, cap, "%s", de->d_name);
            found = true;
        }
    if (d)
        closedir(d);
    return found;
}

/* Reap the rdma child (waiting up to 60 s if wait); true when it has exited. */
static bool ld_reap(struct chaos *C, bool wait)
{
    for (int i = 0; C->ld_pid > 0 && i < (wait ? 3000 : 1); i++) {
        int st = 0;
        if (waitpid(C->ld_pid, &st, WNOHANG) == C->ld_pid) {
            C->ld_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            C->ld_secs = (double)(dhps_mono_ns() - atomic_load(&C->ld_t_ns)) / 1e9;
            C->ld_pid = 0;
            return true;
        }
        if (wait) {
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    return C->ld_pid == 0;
}

/* --rdma-link-delete: at ld_at seconds into the load, count what verbs carried so far,
 * run `rdma link delete DEV` and wait for it. */
static void *link_delete_thread(void *arg)
{
    struct chaos *C = arg;
    uint64_t at = C->t_start + (uint64_t)(C->ld_at * 1e9);
    while (!atomic_load(&C->stop) && dhps_mono_ns() < at) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&C->stop))
        return NULL;
    /* lookups from here on count as "after": the metrics reads below take a while */
    atomic_store(&C->ld_t_ns, dhps_mono_ns());
    C->ld_verbs_before = chaos_metrics_sum(C->nd, C->nodes, M_VERBS, NULL);
    C->ld_tcp_before = chaos_metrics_sum(C->nd, C->nodes, M_TCP, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("rdma", "rdma", "link", "delete", C->ld_dev, (char *)NULL);
        _exit(127);
    }
    if (pid < 0)
        return NULL;
    C->ld_pid = pid;
    /* the kernel finishes the delete only when every process has closed the device: the
     * servers keep theirs open until they stop, so rdma may outlive the load */
    while (!atomic_load(&C->stop)) {
        if (ld_reap(C, false))
            return NULL;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void set_phase(struct chaos *C, uint32_t phase, uint32_t victim)
{
    uint64_t old = atomic_load(&C->phase);
    atomic_store(&C->phase_ns, dhps_mono_ns());
    atomic_store(&C->phase, phase | victim << 8 | (old & 0xff) << 16);
}

void chaos_sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Start dhps-server on node n's config (its own session, log appended): the config names
 * the map's ports, held here and handed to it, so it comes back where the map says. */
static int node_start(struct ch_node *n, const char *server)
{
    pid_t pid;
    const char *which;
    int e = up_restart_node(server, n->cfg, n->log, n->port, n->mport, &pid, &which);
    if (e == 0)
        n->pid = pid;
    else if (e == -EADDRINUSE)
        fprintf(stderr, "dhps chaos: %s: its %s port is in use by another process\n", n->cfg,
                which);
    return e;
}

/* Wait until node n's /health/ready answers 200 (caught up from its peers), at most
 * timeout_s; *secs = the wait. 0, -ETIMEDOUT, or -ECHILD when the process exited. */
static int node_wait_ready(struct ch_node *n, double timeout_s, double *secs)
{
    uint64_t t0 = dhps_mono_ns(), by = t0 + (uint64_t)(timeout_s * 1e9);
    int rc = -ETIMEDOUT;
    for (;;) {
        int st;
        if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
            n->pid = 0;
            rc = -ECHILD;
            break;
        }
        if (up_http_status(n->mport, "/health/ready") == 200) {
            rc = 0;
            break;
        }
        if (dhps_mono_ns() > by)
            break;
        chaos_sleep_s(0.01);
    }
    *secs = (double)(dhps_mono_ns() - t0) / 1e9;
    return rc;
}

/* Rewrite the pids in DIR/cluster.json (so `dhps down` and up_stop_dir find them). */
static void save_pids(const char *dir, struct ch_node *nd, uint32_t n)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/cluster.json", dir);
    json_t *j = json_load_file(p, 0, NULL), *x;
    size_t i;
    json_array_foreach(json_object_get(j, "nodes"), i, x)
        if (i < n)
            json_object_set_new(x, "pid", json_integer(nd[i].pid));
    if (j)
        json_dump_file(j, p, JSON_INDENT(2));
    json_decref(j);
}

int dhps_cmd_chaos(int argc, char **argv)
{
    static const struct option lo[] = {
        {"dir", required_argument, 0, 'd'},      {"cluster", required_argument, 0, 'd'},
        {"seconds", required_argument, 0, 'T'},
        {"interval", required_argument, 0, 'i'}, {"nodes", required_argument, 0, 'n'},
        {"shards", required_argument, 0, 's'},   {"keys", required_argument, 0, 'k'},
        {"dim", required_argument, 0, 'D'},      {"batch", required_argument, 0, 'b'},
        {"deadline-ms", required_argument, 0, 'l'}, {"latency-ms", required_argument, 0, 'L'},
        {"server", required_argument, 0, 'x'},   {"json", no_argument, 0, 'J'},
        {"faults", required_argument, 0, 'F'},   {"verbs", no_argument, 0, 'V'},
        {"rdma-link-delete", required_argument, 0, 'R'},
        {"max-msg", required_argument, 0, 'M'},  {"connect-timeout-ms", required_argument, 0, 'C'},
        {"ack", required_argument, 0, 'A'},      {"ready-timeout", required_argument, 0, 'Y'},
        {"anti-entropy-s", required_argument, 0, 'E'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    double seconds = 60, interval = 3;
    uint64_t nodes = 4, shards = 64, keys = 20000, dim = 8, batch = 100, deadline_ms = 100,
             latency_ms = 50;
    const char *dir = "dhps-chaos", *server_opt = NULL;
    bool json = false, verbs = false, f_kill = true, f_stop = true, f_slow = true;
    double ld_at = -1;
    uint64_t max_msg = 4u << 20, connect_ms = 1000, ae_s = 1;
    double ready_timeout = 60;
    int c, ack = DHPS_ACK_ALL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:T:i:n:s:k:D:b:l:L:x:JF:VR:M:C:A:Y:E:h", lo, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'd': dir = optarg; break;
        case 'T': seconds = atof(optarg); ok = seconds > 0; break;
        case 'i': interval = atof(optarg); ok = interval >= 0.2; break;
        case 'n': ok = tools_parse_u64("chaos", "--nodes", optarg, &nodes) && nodes >= 3 &&
                       nodes <= CH_MAX_NODES; break;
        case 's': ok = tools_parse_u64("chaos", "--shards", optarg, &shards) && shards; break;
        case 'k': ok = tools_parse_u64("chaos", "--keys", optarg, &keys) && keys; break;
        case 'D': ok = tools_parse_u64("chaos", "--dim", optarg, &dim) && dim && dim <= 1024; break;
        case 'b': ok = tools_parse_u64("chaos", "--batch", optarg, &batch) && batch &&
                       batch <= 1000; break;
        case 'l': ok = tools_parse_u64("chaos", "--deadline-ms", optarg, &deadline_ms) &&
                       deadline_ms; break;
        case 'L': ok = tools_parse_u64("chaos", "--latency-ms", optarg, &latency_ms); break;
        case 'x': server_opt = optarg; break;
        case 'J': json = true; break;
        case 'V': verbs = true; break;
        case 'M': ok = tools_parse_u64("chaos", "--max-msg", optarg, &max_msg) &&
                       max_msg >= 4096 && max_msg <= DHPS_RPC_MAX_MSG_LIMIT; break;
        case 'C': ok = tools_parse_u64("chaos", "--connect-timeout-ms", optarg, &connect_ms) &&
                       connect_ms && connect_ms <= 600000; break;
        case 'A':
            ack = !strcmp(optarg, "all")      ? DHPS_ACK_ALL
                  : !strcmp(optarg, "quorum") ? DHPS_ACK_QUORUM
                  : !strcmp(optarg, "one")    ? DHPS_ACK_ONE
                                              : -1;
            ok = ack >= 0;
            break;
        case 'Y': ready_timeout = atof(optarg); ok = ready_timeout > 0; break;
        case 'E': ok = tools_parse_u64("chaos", "--anti-entropy-s", optarg, &ae_s) && ae_s &&
                       ae_s <= 1800; break;
        case 'R': {
            char *end;
            ld_at = strtod(optarg, &end);
            ok = *optarg && !*end && ld_at >= 0;
            break;
        }
        case 'F': {
            f_kill = f_stop = f_slow = false;
            if (strcmp(optarg, "none")) {
                char list[128];
                snprintf(list, sizeof list, "%s", optarg);
                for (char *sv, *t = strtok_r(list, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                    if (!strcmp(t, "kill"))
                        f_kill = true;
                    else if (!strcmp(t, "stop"))
                        f_stop = true;
                    else if (!strcmp(t, "slow"))
                        f_slow = true;
                    else
                        ok = false;
                }
            }
            break;
        }
        case 'h': printf("%s", chaos_usage); return 0;
        default: ok = false; break;
        }
        if (!ok) {
            fprintf(stderr, "%s", chaos_usage);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "%s", chaos_usage);
        return 2;
    }
    FILE *say = json ? stderr : stdout;
    char ld_dev[64] = "";
    if (ld_at >= 0 && !rdma_device(ld_dev, sizeof ld_dev)) {
        fprintf(stderr, "dhps chaos: --rdma-link-delete: no RDMA device here ($RXE_DEV unset "
                "and /sys/class/infiniband empty or absent); run it where one exists, e.g. "
                "in the Soft-RoCE guest (tests/vm/rxe-run)\n");
        return 1;
    }
    if (ld_at >= 0 && ld_at >= seconds) {
        fprintf(stderr, "dhps chaos: --rdma-link-delete %.1f is not within --seconds %.1f\n",
                ld_at, seconds);
        return 2;
    }

    /* the cluster, through `dhps up` */
    char a_nodes[24], a_shards[24], a_keys[24], a_dim[24], a_msg[24], a_ae[24];
    snprintf(a_nodes, sizeof a_nodes, "%llu", (unsigned long long)nodes);
    snprintf(a_shards, sizeof a_shards, "%llu", (unsigned long long)shards);
    snprintf(a_keys, sizeof a_keys, "%llu", (unsigned long long)keys);
    snprintf(a_dim, sizeof a_dim, "%llu", (unsigned long long)dim);
    snprintf(a_msg, sizeof a_msg, "%llu", (unsigned long long)max_msg);
    snprintf(a_ae, sizeof a_ae, "%llu", (unsigned long long)ae_s);
    char *up_argv[28] = {"up", "--dir", (char *)dir, "--nodes", a_nodes, "--shards", a_shards,
                         "--keys", a_keys, "--dim", a_dim, "--replicas", "2", "--azs", "1",
                         "--pods", "1", "--no-load", "--quiet", "--max-msg", a_msg,
                         "--fresh", /* DIR is the run's scratch directory */
                         "--anti-entropy-s", a_ae};
    int up_argc = 24;
    if (verbs)
        up_argv[up_argc++] = "--verbs";
    if (server_opt) {
        up_argv[up_argc++] = "--server";
        up_argv[up_argc++] = (char *)server_opt;
    }
    fflush(stdout);
    int saved_out = -1;
    if (json) { /* `dhps up` prints on stdout: keep it off the JSON */
        fflush(stdout);
        saved_out = dup(1);
        dup2(2, 1);
    }
    int rc = dhps_cmd_up(up_argc, up_argv);
    fflush(stdout);
    if (saved_out >= 0) {
        dup2(saved_out, 1);
        close(saved_out);
        saved_out = -1;
    }
    char absdir[PATH_MAX], p[PATH_MAX], server[PATH_MAX];
    if (!realpath(dir, absdir))
        snprintf(absdir, sizeof absdir, "%s", dir);
    if (rc != 0) {
        fprintf(stderr, "dhps chaos: could not start the cluster\n");
        up_stop_dir(absdir, 10, true); /* whatever did start */
        return 1;
    }
    snprintf(p, sizeof p, "%s/cluster.json", absdir);
    json_t *cj = json_load_file(p, 0, NULL), *jn;
    struct ch_node nd[CH_MAX_NODES];
    memset(nd, 0, sizeof nd);
    size_t ji;
    json_array_foreach(json_object_get(cj, "nodes"), ji, jn) {
        if (ji >= nodes)
            break;
        nd[ji].pid = (pid_t)json_integer_value(json_object_get(jn, "pid"));
        nd[ji].port = (uint16_t)json_integer_value(json_object_get(jn, "port"));
        nd[ji].mport = (uint16_t)json_integer_value(json_object_get(jn, "metrics_port"));
        snprintf(nd[ji].cfg, sizeof nd[ji].cfg, "%s", json_string_value(json_object_get(jn, "config")));
        snprintf(nd[ji].log, sizeof nd[ji].log, "%s", json_string_value(json_object_get(jn, "log")));
    }
    const char *sv = json_string_value(json_object_get(cj, "server"));
    snprintf(server, sizeof server, "%s", sv ? sv : "");
    json_decref(cj);

    static struct chaos C; /* large; one run per process */
    static struct chaos_check K;
    memset(&C, 0, sizeof C);
    memset(&K, 0, sizeof K);
    tools_conn *conn = NULL;
    dhps_client *client = NULL;
    int ret = 1;
    bool cluster_stopped = false;
    rc = 0;
    for (uint32_t i = 0; i < nodes && rc == 0; i++) { /* `dhps up` waited for /health */
        double secs;
        if ((rc = node_wait_ready(&nd[i], ready_timeout, &secs)) < 0)
            fprintf(stderr, "dhps chaos: n%u not ready: %s (log %s)\n", i,
                    rc == -ECHILD ? "exited" : "timed out", nd[i].log);
    }
    if (rc < 0)
        goto stop;
    tools_target tgt = {.cluster_dir = absdir, .max_msg = (uint32_t)max_msg,
                        .connect_timeout_ms = (uint32_t)connect_ms};
    if ((rc = tools_conn_open(&tgt, &conn)) < 0)
        goto stop;
    client = conn->client;
    /* the sample table, through this client (its message size and connect bound) */
    if ((rc = up_load_sample(client, "emb", (uint32_t)dim, keys, json)) < 0) {
        fprintf(stderr, "dhps chaos: loading the sample table failed: %s\n", dhps_strerror(rc));
        goto stop;
    }
    if (json) {
        fflush(stdout);
        saved_out = dup(1);
        dup2(2, 1);
    }
    char *snap_argv[] = {"snapshot", "--cluster", absdir};
    int src = dhps_cmd_snapshot(3, snap_argv);
    fflush(stdout);
    if (saved_out >= 0) {
        dup2(saved_out, 1);
        close(saved_out);
    }
    if (src != 0)
        fprintf(stderr, "dhps chaos: snapshot of every node failed; continuing\n");
    C.client = client;
    C.conn = conn;
    C.map = conn->map;
    C.ack = ack;
    C.ae_s = (uint32_t)ae_s;
    C.ready_timeout = ready_timeout;
    C.dim = (uint32_t)dim;
    C.batch = (uint32_t)batch;
    C.nodes = (uint32_t)nodes;
    C.nkeys = keys;
    C.deadline_us = deadline_ms * 1000;
    C.ld_at = ld_at;
    C.ld_status = -1;
    C.nd = nd;
    snprintf(C.ld_dev, sizeof C.ld_dev, "%s", ld_dev);
    fprintf(say, "dhps chaos: %llu nodes x 2 replicas, %llu shards, %llu keys dim %llu; "
            "%.0f s of lookups (batch %llu, deadline %llu ms) and ACK_%s updates; a fault "
            "every %.1f s; anti-entropy every %llu s\n", (unsigned long long)nodes,
            (unsigned long long)shards, (unsigned long long)keys, (unsigned long long)dim,
            seconds, (unsigned long long)batch, (unsigned long long)deadline_ms,
            ack == DHPS_ACK_ALL ? "ALL" : ack == DHPS_ACK_QUORUM ? "QUORUM" : "ONE", interval,
            (unsigned long long)ae_s);
    pthread_t tl, tu, tld;
    bool ld_started = false;
    if (pthread_create(&tl, NULL, chaos_lookup_thread, &C) != 0)
        goto stop;
    if (pthread_create(&tu, NULL, chaos_update_thread, &C) != 0) {
        atomic_store(&C.stop, 1);
        pthread_join(tl, NULL);
        goto stop;
    }
    while (atomic_load(&C.warm) < 2) /* both threads have their connections */
        chaos_sleep_s(0.001);
    C.t_start = dhps_mono_ns();
    atomic_store(&C.phase_ns, C.t_start);
    atomic_store(&C.go, 1);
    if (ld_at >= 0) {
        if (pthread_create(&tld, NULL, link_delete_thread, &C) == 0)
            ld_started = true;
        else
            fprintf(stderr, "dhps chaos: cannot start the link-delete thread\n");
    }
    uint64_t t_end = dhps_mono_ns() + (uint64_t)(seconds * 1e9);
    for (uint32_t k = 0; dhps_mono_ns() + (uint64_t)(interval * 1e9) < t_end; k++) {
        uint32_t victim = k % C.nodes, kind = k % 3;
        if (!(kind == 0 ? f_kill : kind == 1 ? f_stop : f_slow)) {
            if (!f_kill && !f_stop && !f_slow)
                break; /* no process faults: only the load (and the link delete) */
            continue;
        }
        chaos_sleep_s(interval / 2); /* steady */
        double hold = interval / 2;
        if (kind == 0) {
            fprintf(say, "  %6.1f s: kill -9 n%u, restart\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, victim);
            set_phase(&C, PH_KILLED, victim);
            kill(nd[victim].pid, SIGKILL);
            waitpid(nd[victim].pid, NULL, 0);
            nd[victim].pid = 0;
            chaos_sleep_s(hold);
            set_phase(&C, PH_RESTARTING, victim);
            double secs = 0;
            int e = node_start(&nd[victim], server);
            if (!e)
                e = node_wait_ready(&nd[victim], ready_timeout, &secs);
            set_phase(&C, PH_STEADY, victim);
            if (e == -ETIMEDOUT) {
                fprintf(stderr, "dhps chaos: n%u not ready %.0f s after its restart (log %s)\n",
                        victim, secs, nd[victim].log);
                C.ready_timeouts++;
            } else if (e < 0) {
                fprintf(stderr, "dhps chaos: restarting n%u failed: %s (log %s)\n", victim,
                        strerror(-e), nd[victim].log);
                C.restart_failures++;
            } else if (C.ncatchup < CH_MAX_CATCHUPS) {
                C.catchup[C.ncatchup++] = secs;
                C.notready_answers += chaos_metrics_sum(&nd[victim], 1, M_NOTREADY, NULL);
                fprintf(say, "  %6.1f s: n%u ready %.2f s after its restart\n",
                        seconds - (double)(t_end - dhps_mono_ns()) / 1e9, victim, secs);
            }
            save_pids(absdir, nd, C.nodes);
            C.kills++;
        } else if (kind == 1) {
            fprintf(say, "  %6.1f s: SIGSTOP n%u, SIGCONT\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, victim);
            set_phase(&C, PH_STOPPED, victim);
            kill(nd[victim].pid, SIGSTOP);
            chaos_sleep_s(hold);
            kill(nd[victim].pid, SIGCONT);
            set_phase(&C, PH_STEADY, victim);
            C.stops++;
        } else {
            fprintf(say, "  %6.1f s: +%llu ms on calls to n%u, clear\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, (unsigned long long)latency_ms, victim);
            dhps_rpc_fault f;
            dhps_rpc_fault_init(&f);
            f.delay_us = (uint32_t)(latency_ms * 1000);
            set_phase(&C, PH_SLOWED, victim);
            dhps_client_fault_set(C.client, victim, &f);
            chaos_sleep_s(hold);
            dhps_client_fault_set(C.client, victim, NULL);
            set_phase(&C, PH_STEADY, victim);
            C.slows++;
        }
    }
    while (dhps_mono_ns() < t_end)
        chaos_sleep_s(0.05);
    atomic_store(&C.stop, 1);
    pthread_join(tl, NULL);
    pthread_join(tu, NULL);
    if (ld_started)
        pthread_join(tld, NULL);
    if (ld_at >= 0) {
        C.ld_verbs_end = chaos_metrics_sum(nd, C.nodes, M_VERBS, NULL);
        C.ld_tcp_end = chaos_metrics_sum(nd, C.nodes, M_TCP, NULL);
        C.ld_verbs_failures = chaos_metrics_sum(nd, C.nodes, "dhps_rpc_verbs_failures_total", NULL);
    }
    chaos_sleep_s(0.2); /* background acks of the last updates */

    /* the end state: every node ready, anti-entropy past the last write, then every
     * replica read alone and the digests compared (chaoscheck.c) */
    chaos_settle(&C, &K);
    if (!K.settled)
        fprintf(stderr, "dhps chaos: not every node ready, or no anti-entropy pass seen on "
                "every node, %.1f s after the load; checking anyway\n", K.settle_s);
    chaos_verify(&C, &K);
    chaos_digests(&C, &K);
    if (C.ld_pid > 0) { /* rdma is waiting for the device's users: stop them first */
        tools_conn_close(conn);
        conn = NULL;
        client = NULL;
        for (uint32_t i = 0; i < nodes; i++)
            if (nd[i].pid > 0)
                kill(nd[i].pid, SIGCONT);
        up_stop_dir(absdir, 10, true);
        cluster_stopped = true;
        if (!ld_reap(&C, true)) {
            fprintf(stderr, "dhps chaos: rdma link delete still running 60 s after the "
                    "cluster stopped; killing it\n");
            kill(C.ld_pid, SIGKILL);
            waitpid(C.ld_pid, NULL, 0);
        } else if (!json) {
            printf("  (rdma link delete ended %.1f s after it started, once the servers had "
                   "stopped and released the device)\n", C.ld_secs);
        }
    }
    struct chaos_opts ro = {.seconds = seconds, .deadline_ms = deadline_ms, .json = json};
    chaos_report(&C, &K, &ro, say);
    ret = chaos_verdict(&C, &K);
    if (ld_at >= 0 && (C.ld_status != 0 || C.ld_verbs_before == 0)) {
        fprintf(stderr, "dhps chaos: the rdma link delete %s\n",
                C.ld_status != 0 ? "did not succeed (see its exit status)"
                                 : "found no verbs traffic before it: nothing was tested");
        ret = 1;
    }
stop:
    tools_conn_close(conn);
    for (uint32_t i = 0; i < nodes; i++) /* never leave a node stopped */
        if (nd[i].pid > 0)
            kill(nd[i].pid, SIGCONT);
    if (!cluster_stopped)
        up_stop_dir(absdir, 10, json);
    for (uint32_t i = 0; i < nodes; i++) /* reap our children */
        if (nd[i].pid > 0)
            waitpid(nd[i].pid, NULL, WNOHANG);
    return ret;
}

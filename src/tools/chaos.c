/*
 * dhps chaos: the availability test on its own. Starts a local cluster through the
 * `dhps up` code path (small defaults: 4 nodes, 2 replicas, 64 shards, 20,000 keys of
 * dim 8), snapshots every node, then runs a lookup thread and an update thread through
 * the client for --seconds while the main thread plays a fault schedule, one fault at a
 * time on rotating nodes, each restored before the next:
 *   kill -9 a node, then restart it from its config on the same ports (it reloads its
 *     last snapshot: it does not catch up from a peer);
 *   SIGSTOP a node, then SIGCONT;
 *   an rpc fault rule adding --latency-ms to every call to a node, then cleared.
 * Lookups: batches of --batch random sample keys with a --deadline-ms deadline; one is
 * "answered in deadline" when every key got an answer (rc 0) within the deadline.
 * Updates: batches of 8 keys from a separate range, each row carrying a per-key
 * generation, written with DHPS_ACK_ALL; a key counts as acknowledged when its bit in
 * failed_mask is clear. At the end every acknowledged key is read from each of its
 * replicas alone (the client partitioned from the others by rpc fault rules): the
 * update is lost when no replica holds the acknowledged generation or a newer one.
 * Reads through the router that saw an older generation are reported separately
 * (stale_router_reads: the restarted replica's known gap). The cluster is stopped.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
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

#define CH_MAX_NODES 16
#define CH_UKEYS 2000u
#define CH_UBASE (1ull << 40)
#define CH_UBATCH 8u

static const char chaos_usage[] =
    "usage: dhps chaos [--dir DIR] [--seconds 60] [--interval 3] [--nodes 4] [--shards 64]\n"
    "                  [--keys 20000] [--dim 8] [--batch 100] [--deadline-ms 100]\n"
    "                  [--latency-ms 50] [--faults kill,stop,slow | none] [--verbs]\n"
    "                  [--rdma-link-delete SECONDS] [--max-msg 4194304]\n"
    "                  [--connect-timeout-ms 1000] [--server PATH] [--json]\n"
    "  Starts a local cluster (as `dhps up`), runs lookup + update load (updates with\n"
    "  ACK_ALL) while killing (-9, then restart), stopping (SIGSTOP/SIGCONT) and slowing\n"
    "  (injected rpc latency) one node at a time; reports the share of lookups answered\n"
    "  completely within the deadline and whether any acknowledged update was lost.\n"
    "  The cluster is stopped at the end. Default DIR: ./dhps-chaos.\n"
    "  --verbs: the servers offer RDMA verbs (the client uses it toward the other nodes,\n"
    "  all in its AZ). --rdma-link-delete S: run `rdma link delete DEV` S seconds into the\n"
    "  load (DEV: $RXE_DEV, else the first device in /sys/class/infiniband); the report\n"
    "  adds the verbs requests the servers handled before it and the lookups after it.\n";

struct ch_node {
    pid_t pid;
    uint16_t port, mport;
    char cfg[PATH_MAX], log[PATH_MAX];
};

/* Fault phases, for the record of each lookup that missed its deadline. */
enum { PH_STEADY, PH_KILLED, PH_RESTARTING, PH_STOPPED, PH_SLOWED };
static const char *const phase_name[] = {"steady", "killed", "restarting", "stopped", "slowed"};

#define CH_MAX_FAILS 64
struct ch_fail {
    uint64_t t_ns;          /* since the start of the load */
    uint64_t since_ns;      /* since the phase began */
    uint32_t phase, victim, prev_phase;
    int rc;
    uint64_t dt_us;
    size_t unanswered;
    uint32_t messages, retries, hedges;
};

struct chaos {
    dhps_client *client;
    /* rdma link delete (--rdma-link-delete) */
    double ld_at;             /* seconds into the load, < 0 = none */
    char ld_dev[64];
    _Atomic uint64_t ld_t_ns; /* when it was started (0 = not yet) */
    uint64_t ld_requests, ld_in_deadline; /* lookups started after it (lookup thread) */
    uint64_t ld_verbs_before, ld_verbs_end, ld_tcp_before, ld_tcp_end, ld_verbs_failures;
    int ld_status;            /* exit status of rdma, -1 = did not run / did not end */
    pid_t ld_pid;             /* rdma while it runs */
    double ld_secs;           /* how long rdma took */
    const struct ch_node *nd;
    const dhps_cluster_map *map;
    uint32_t dim, batch, nodes;
    uint64_t nkeys, deadline_us;
    _Atomic int stop;
    _Atomic int warm;         /* threads past their warm-up call */
    _Atomic int go;           /* the load (and its clock) starts */
    uint64_t t_start;
    _Atomic uint64_t phase;   /* phase | victim << 8 | previous phase << 16 */
    _Atomic uint64_t phase_ns;
    struct ch_fail fails[CH_MAX_FAILS];
    uint32_t nfails;
    /* lookups */
    uint64_t requests, in_deadline, missing_keys, errors[4];
    /* updates (one thread) */
    uint32_t gen[CH_UKEYS];   /* last generation written */
    uint32_t acked[CH_UKEYS]; /* last generation acknowledged (0 = none) */
    uint64_t updates, update_ok, update_shortfalls, acked_keys;
};

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

static void *lookup_thread(void *arg)
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

static void *update_thread(void *arg)
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
                                    DHPS_ACK_ALL, 4 * C->deadline_us, mask, &res);
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

/* Sum of one counter line (e.g. `dhps_rpc_handled_total{transport="verbs"}`) over the
 * servers' /metrics. */
static uint64_t metrics_sum(const struct ch_node *nd, uint32_t n, const char *name)
{
    static char buf[1 << 16];
    uint64_t sum = 0;
    size_t l = strlen(name);
    for (uint32_t i = 0; i < n; i++) {
        if (up_http_get(nd[i].mport, "/metrics", buf, sizeof buf) <= 0)
            continue;
        for (char *p = strstr(buf, name); p; p = strstr(p + 1, name))
            if ((p == buf || p[-1] == '\n') && p[l] == ' ')
                sum += strtoull(p + l + 1, NULL, 10);
    }
    return sum;
}

#define M_VERBS "dhps_rpc_handled_total{transport=\"verbs\"}"
#define M_TCP "dhps_rpc_handled_total{transport=\"tcp\"}"

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
    C->ld_verbs_before = metrics_sum(C->nd, C->nodes, M_VERBS);
    C->ld_tcp_before = metrics_sum(C->nd, C->nodes, M_TCP);
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

/* The client, from DIR/cluster.json (map, secret, client labels: those of node 0), with
 * this run's message size and connect bound. */
static int open_client(json_t *cj, uint32_t max_msg, uint32_t connect_ms, dhps_client **out,
                       dhps_cluster_map **map)
{
    const char *mp = json_string_value(json_object_get(cj, "map"));
    const char *sp = json_string_value(json_object_get(cj, "secret"));
    json_t *l = json_object_get(cj, "client_labels");
    if (!mp || !sp) {
        fprintf(stderr, "dhps chaos: cluster.json has no map or secret\n");
        return DHPS_E_CONFIG;
    }
    size_t slen = 0;
    char *sec = tools_read_file(sp, &slen);
    if (!sec || !slen) {
        fprintf(stderr, "dhps chaos: secret %s: unreadable or empty\n", sp);
        free(sec);
        return -EIO;
    }
    char err[2048] = "";
    int rc = dhps_cluster_map_load(mp, map, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "dhps chaos: map %s: %s\n%s", mp, dhps_strerror(rc), err);
        free(sec);
        return rc;
    }
    dhps_client_params cp;
    dhps_client_params_init(&cp);
    cp.map_path = mp;
    cp.secret = sec;
    cp.secret_len = slen;
    cp.host = json_string_value(json_object_get(l, "host"));
    cp.pod = json_string_value(json_object_get(l, "pod"));
    cp.az = json_string_value(json_object_get(l, "az"));
    cp.max_msg = max_msg;
    cp.connect_timeout_ms = connect_ms;
    rc = dhps_client_create(&cp, out);
    if (rc < 0)
        fprintf(stderr, "dhps chaos: client: %s\n", dhps_strerror(rc));
    free(sec);
    return rc;
}

static void set_phase(struct chaos *C, uint32_t phase, uint32_t victim)
{
    uint64_t old = atomic_load(&C->phase);
    atomic_store(&C->phase_ns, dhps_mono_ns());
    atomic_store(&C->phase, phase | victim << 8 | (old & 0xff) << 16);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Restart node i from its config, on its old ports; wait for /health (30 s). */
static int restart_node(struct ch_node *n, const char *server)
{
    int e = up_config_pin_ports(n->cfg, n->port, n->mport); /* `dhps up` pinned them too */
    if (e < 0)
        return e;
    pid_t pid;
    if ((e = up_spawn_node(server, n->cfg, n->log, true, &pid)) < 0)
        return e;
    n->pid = pid;
    up_wait w = {.port = n->port, .mport = n->mport}; /* known: no port file to read */
    if ((e = up_wait_node(pid, "", 30, NULL, &w)) == -ECHILD)
        n->pid = 0;
    return e;
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

/* Read every acknowledged key from each replica alone; count keys no replica holds at
 * the acknowledged generation or newer, and router reads that were older. */
static void verify(struct chaos *C, const struct ch_node *nd, uint64_t *lost,
                   uint64_t *stale_router, uint64_t *checked)
{
    uint32_t best[CH_UKEYS] = {0};
    uint64_t keys[CH_UKEYS], mask[(CH_UKEYS + 63) / 64];
    uint32_t idx[CH_UKEYS];
    float *out = malloc((size_t)CH_UKEYS * C->dim * sizeof(float));
    uint32_t nsh = dhps_cluster_map_nshards(C->map);
    dhps_rpc_fault part;
    dhps_rpc_fault_init(&part);
    part.partition = true;
    for (int32_t only = -1; out && only < (int32_t)C->nodes; only++) {
        /* only = -1: through the router, no fault */
        uint32_t n = 0;
        for (uint32_t k = 0; k < CH_UKEYS; k++) {
            if (!C->acked[k])
                continue;
            if (only >= 0) {
                const uint32_t *ids;
                int r = dhps_cluster_map_replicas(C->map, dhps_proto_shard_of(CH_UBASE + k, nsh), &ids);
                bool has = false;
                for (int j = 0; j < r; j++)
                    has |= ids[j] == (uint32_t)only;
                if (!has)
                    continue;
            }
            idx[n] = k;
            keys[n++] = CH_UBASE + k;
        }
        for (uint32_t i = 0; only >= 0 && i < C->nodes; i++)
            if (i != (uint32_t)only)
                dhps_client_fault_set(C->client, i, &part);
        for (uint32_t off = 0; off < n; off += 500) {
            uint32_t m = n - off < 500 ? n - off : 500;
            dhps_client_result res;
            for (int attempt = 0; attempt < 20; attempt++) {
                int rc = dhps_client_lookup(C->client, "emb", keys + off, m, out, C->dim,
                                            DHPS_FP32, mask, 2000000, &res);
                if (rc == 0)
                    break;
                sleep_s(0.05); /* breakers of the partitioned nodes settle */
            }
            for (uint32_t j = 0; j < m; j++) {
                if ((mask[j / 64] >> (j % 64)) & 1)
                    continue;
                uint32_t k = idx[off + j], g = (uint32_t)out[(size_t)j * C->dim];
                if (only < 0) {
                    if (g < C->acked[k])
                        (*stale_router)++;
                } else if (g > best[k]) {
                    best[k] = g;
                }
            }
        }
        for (uint32_t i = 0; only >= 0 && i < C->nodes; i++)
            dhps_client_fault_set(C->client, i, NULL);
        if (only < 0)
            *checked = n;
    }
    for (uint32_t k = 0; k < CH_UKEYS; k++)
        if (C->acked[k] && best[k] < C->acked[k])
            (*lost)++;
    free(out);
}

int dhps_cmd_chaos(int argc, char **argv)
{
    static const struct option lo[] = {
        {"dir", required_argument, 0, 'd'},      {"seconds", required_argument, 0, 'T'},
        {"interval", required_argument, 0, 'i'}, {"nodes", required_argument, 0, 'n'},
        {"shards", required_argument, 0, 's'},   {"keys", required_argument, 0, 'k'},
        {"dim", required_argument, 0, 'D'},      {"batch", required_argument, 0, 'b'},
        {"deadline-ms", required_argument, 0, 'l'}, {"latency-ms", required_argument, 0, 'L'},
        {"server", required_argument, 0, 'x'},   {"json", no_argument, 0, 'J'},
        {"faults", required_argument, 0, 'F'},   {"verbs", no_argument, 0, 'V'},
        {"rdma-link-delete", required_argument, 0, 'R'},
        {"max-msg", required_argument, 0, 'M'},  {"connect-timeout-ms", required_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    double seconds = 60, interval = 3;
    uint64_t nodes = 4, shards = 64, keys = 20000, dim = 8, batch = 100, deadline_ms = 100,
             latency_ms = 50;
    const char *dir = "dhps-chaos", *server_opt = NULL;
    bool json = false, verbs = false, f_kill = true, f_stop = true, f_slow = true;
    double ld_at = -1;
    uint64_t max_msg = 4u << 20, connect_ms = 1000;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:T:i:n:s:k:D:b:l:L:x:JF:VR:M:C:h", lo, NULL)) != -1) {
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
                "in the Soft-RoCE guest (../shared/rxe-vm/rxe-run)\n");
        return 1;
    }
    if (ld_at >= 0 && ld_at >= seconds) {
        fprintf(stderr, "dhps chaos: --rdma-link-delete %.1f is not within --seconds %.1f\n",
                ld_at, seconds);
        return 2;
    }

    /* the cluster, through `dhps up` */
    char a_nodes[24], a_shards[24], a_keys[24], a_dim[24], a_msg[24];
    snprintf(a_nodes, sizeof a_nodes, "%llu", (unsigned long long)nodes);
    snprintf(a_shards, sizeof a_shards, "%llu", (unsigned long long)shards);
    snprintf(a_keys, sizeof a_keys, "%llu", (unsigned long long)keys);
    snprintf(a_dim, sizeof a_dim, "%llu", (unsigned long long)dim);
    snprintf(a_msg, sizeof a_msg, "%llu", (unsigned long long)max_msg);
    char *up_argv[26] = {"up", "--dir", (char *)dir, "--nodes", a_nodes, "--shards", a_shards,
                         "--keys", a_keys, "--dim", a_dim, "--replicas", "2", "--azs", "1",
                         "--pods", "1", "--no-load", "--quiet", "--max-msg", a_msg,
                         "--fresh"}; /* DIR is the run's scratch directory */
    int up_argc = 22;
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

    static struct chaos C; /* large; one run per process */
    memset(&C, 0, sizeof C);
    dhps_client *client = NULL;
    dhps_cluster_map *map = NULL;
    int ret = 1;
    bool cluster_stopped = false;
    rc = open_client(cj, (uint32_t)max_msg, (uint32_t)connect_ms, &client, &map);
    json_decref(cj);
    if (rc < 0)
        goto stop;
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
    C.map = map;
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
            "%.0f s of lookups (batch %llu, deadline %llu ms) and ACK_ALL updates; a fault "
            "every %.1f s\n", (unsigned long long)nodes, (unsigned long long)shards,
            (unsigned long long)keys, (unsigned long long)dim, seconds,
            (unsigned long long)batch, (unsigned long long)deadline_ms, interval);
    pthread_t tl, tu, tld;
    bool ld_started = false;
    if (pthread_create(&tl, NULL, lookup_thread, &C) != 0)
        goto stop;
    if (pthread_create(&tu, NULL, update_thread, &C) != 0) {
        atomic_store(&C.stop, 1);
        pthread_join(tl, NULL);
        goto stop;
    }
    while (atomic_load(&C.warm) < 2) /* both threads have their connections */
        sleep_s(0.001);
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
    uint32_t kills = 0, stops = 0, slows = 0, restart_failures = 0;
    for (uint32_t k = 0; dhps_mono_ns() + (uint64_t)(interval * 1e9) < t_end; k++) {
        uint32_t victim = k % C.nodes, kind = k % 3;
        if (!(kind == 0 ? f_kill : kind == 1 ? f_stop : f_slow)) {
            if (!f_kill && !f_stop && !f_slow)
                break; /* no process faults: only the load (and the link delete) */
            continue;
        }
        sleep_s(interval / 2); /* steady */
        double hold = interval / 2;
        if (kind == 0) {
            fprintf(say, "  %6.1f s: kill -9 n%u, restart\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, victim);
            set_phase(&C, PH_KILLED, victim);
            kill(nd[victim].pid, SIGKILL);
            waitpid(nd[victim].pid, NULL, 0);
            nd[victim].pid = 0;
            sleep_s(hold);
            set_phase(&C, PH_RESTARTING, victim);
            int e = restart_node(&nd[victim], server);
            set_phase(&C, PH_STEADY, victim);
            if (e < 0) {
                fprintf(stderr, "dhps chaos: restarting n%u failed: %s\n", victim, strerror(-e));
                restart_failures++;
            }
            save_pids(absdir, nd, C.nodes);
            kills++;
        } else if (kind == 1) {
            fprintf(say, "  %6.1f s: SIGSTOP n%u, SIGCONT\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, victim);
            set_phase(&C, PH_STOPPED, victim);
            kill(nd[victim].pid, SIGSTOP);
            sleep_s(hold);
            kill(nd[victim].pid, SIGCONT);
            set_phase(&C, PH_STEADY, victim);
            stops++;
        } else {
            fprintf(say, "  %6.1f s: +%llu ms on calls to n%u, clear\n", seconds - (double)(t_end - dhps_mono_ns()) / 1e9, (unsigned long long)latency_ms, victim);
            dhps_rpc_fault f;
            dhps_rpc_fault_init(&f);
            f.delay_us = (uint32_t)(latency_ms * 1000);
            set_phase(&C, PH_SLOWED, victim);
            dhps_client_fault_set(C.client, victim, &f);
            sleep_s(hold);
            dhps_client_fault_set(C.client, victim, NULL);
            set_phase(&C, PH_STEADY, victim);
            slows++;
        }
    }
    while (dhps_mono_ns() < t_end)
        sleep_s(0.05);
    atomic_store(&C.stop, 1);
    pthread_join(tl, NULL);
    pthread_join(tu, NULL);
    if (ld_started)
        pthread_join(tld, NULL);
    if (ld_at >= 0) {
        C.ld_verbs_end = metrics_sum(nd, C.nodes, M_VERBS);
        C.ld_tcp_end = metrics_sum(nd, C.nodes, M_TCP);
        C.ld_verbs_failures = metrics_sum(nd, C.nodes, "dhps_rpc_verbs_failures_total");
    }
    sleep_s(0.2); /* background acks of the last updates */

    uint64_t lost = 0, stale = 0, checked = 0;
    verify(&C, nd, &lost, &stale, &checked);
    if (C.ld_pid > 0) { /* rdma is waiting for the device's users: stop them first */
        dhps_client_destroy(client);
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
    double avail = C.requests ? (double)C.in_deadline / (double)C.requests : 0;
    if (json) {
        printf("{\"seconds\": %.1f, \"requests\": %llu, \"answered_in_deadline\": %llu, "
               "\"availability\": %.6f, \"deadline_ms\": %llu, \"lookup_timeouts\": %llu, "
               "\"lookup_unreachable\": %llu, \"lookup_other_errors\": %llu, "
               "\"lookup_late\": %llu, \"missing_keys\": %llu, \"updates\": %llu, "
               "\"update_shortfalls\": %llu, \"update_ack\": \"all\", \"acked_updates\": %llu, "
               "\"acked_keys_checked\": %llu, \"acked_updates_lost\": %llu, "
               "\"stale_router_reads\": %llu, \"kills\": %u, \"stops\": %u, "
               "\"slowdowns\": %u, \"restart_failures\": %u",
               seconds, (unsigned long long)C.requests, (unsigned long long)C.in_deadline,
               avail, (unsigned long long)deadline_ms, (unsigned long long)C.errors[0],
               (unsigned long long)C.errors[1], (unsigned long long)C.errors[2],
               (unsigned long long)C.errors[3], (unsigned long long)C.missing_keys,
               (unsigned long long)C.updates, (unsigned long long)C.update_shortfalls,
               (unsigned long long)C.acked_keys, (unsigned long long)checked,
               (unsigned long long)lost, (unsigned long long)stale, kills, stops, slows,
               restart_failures);
        if (ld_at >= 0)
            printf(", \"rdma_link_delete\": {\"device\": \"%s\", \"at_s\": %.1f, "
                   "\"exit\": %d, \"took_s\": %.2f, \"verbs_handled_before\": %llu, "
                   "\"tcp_handled_before\": %llu, \"verbs_handled_end\": %llu, "
                   "\"tcp_handled_end\": %llu, \"verbs_failures\": %llu, "
                   "\"lookups_after\": %llu, \"lookups_after_in_deadline\": %llu, "
                   "\"lookups_after_failed\": %llu}",
                   C.ld_dev, ld_at, C.ld_status, C.ld_secs,
                   (unsigned long long)C.ld_verbs_before, (unsigned long long)C.ld_tcp_before,
                   (unsigned long long)C.ld_verbs_end, (unsigned long long)C.ld_tcp_end,
                   (unsigned long long)C.ld_verbs_failures, (unsigned long long)C.ld_requests,
                   (unsigned long long)C.ld_in_deadline,
                   (unsigned long long)(C.ld_requests - C.ld_in_deadline));
        printf("}\n");
    } else {
        printf("dhps chaos: %llu lookups, %llu answered completely within %llu ms: "
               "availability %.5f %% (target 99.999 %%)\n"
               "  not in deadline: %llu timeouts, %llu unreachable, %llu other errors, %llu "
               "late; %llu keys reported missing\n"
               "  updates (ACK_ALL): %llu batches, %llu short of acks; %llu key writes "
               "acknowledged, %llu keys checked on every replica: %llu lost; %llu router "
               "reads older than the ack (restarted replica behind)\n"
               "  faults: %u kill -9 + restart (%u restart failures), %u SIGSTOP, %u "
               "slowdowns\n",
               (unsigned long long)C.requests, (unsigned long long)C.in_deadline,
               (unsigned long long)deadline_ms, 100.0 * avail, (unsigned long long)C.errors[0],
               (unsigned long long)C.errors[1], (unsigned long long)C.errors[2],
               (unsigned long long)C.errors[3], (unsigned long long)C.missing_keys,
               (unsigned long long)C.updates, (unsigned long long)C.update_shortfalls,
               (unsigned long long)C.acked_keys, (unsigned long long)checked,
               (unsigned long long)lost, (unsigned long long)stale, kills, restart_failures,
               stops, slows);
        if (ld_at >= 0)
            printf("  rdma link delete %s at %.1f s: exit %d after %.2f s; requests the "
                   "servers handled over verbs %llu before it, %llu at the end (tcp %llu, "
                   "%llu); verbs paths failed %llu; lookups after it: %llu, %llu in "
                   "deadline, %llu failed\n",
                   C.ld_dev, ld_at, C.ld_status, C.ld_secs,
                   (unsigned long long)C.ld_verbs_before, (unsigned long long)C.ld_verbs_end,
                   (unsigned long long)C.ld_tcp_before, (unsigned long long)C.ld_tcp_end,
                   (unsigned long long)C.ld_verbs_failures, (unsigned long long)C.ld_requests,
                   (unsigned long long)C.ld_in_deadline,
                   (unsigned long long)(C.ld_requests - C.ld_in_deadline));
    }
    for (uint32_t i = 0; i < C.nfails; i++) {
        const struct ch_fail *f = &C.fails[i];
        fprintf(say, "  missed: %7.3f s, %s n%u for %.0f ms (before: %s): %s after %llu us, "
                "%zu keys unanswered, %u messages, %u retries, %u hedges\n",
                (double)f->t_ns / 1e9, phase_name[f->phase], f->victim,
                (double)f->since_ns / 1e6, phase_name[f->prev_phase],
                f->rc ? dhps_strerror(f->rc) : "complete but late",
                (unsigned long long)f->dt_us, f->unanswered, f->messages, f->retries, f->hedges);
    }
    ret = lost == 0 && restart_failures == 0 ? 0 : 1;
    if (ld_at >= 0 && (C.ld_status != 0 || C.ld_verbs_before == 0)) {
        fprintf(stderr, "dhps chaos: the rdma link delete %s\n",
                C.ld_status != 0 ? "did not succeed (see its exit status)"
                                 : "found no verbs traffic before it: nothing was tested");
        ret = 1;
    }
stop:
    dhps_client_destroy(client);
    dhps_cluster_map_destroy(map);
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

/*
 * dhps bench: lookup/update workloads against a running cluster (--cluster DIR or
 * --map FILE --secret FILE), or against a one-node cluster it starts itself (TCP only,
 * --server-workers rpc workers) and stops at the end. With --peers, the same keys and
 * values also go into redis-server (MGET/MSET, --io-threads W) and memcached (multi-get /
 * pipelined sets, -t W), started here with the same W server threads (benchpeers.c), and
 * all three are measured in the same run with the same client threads, one after the
 * other, --rounds times with the order rotated each round (bench.h).
 *
 * Pinning: --server-cpus LIST (or --server-cpu N) pins every server process to those
 * CPUs and the client threads to the CPUs left (when any are); by default one server
 * worker is pinned to the last CPU, and more than one is not pinned at all (servers and
 * clients share the machine). Around each measured run the bench reads the server's CPU
 * time (/proc/PID/stat, all its threads) and its own (CLOCK_PROCESS_CPUTIME_ID), so every
 * keys/s comes with the server cores it took.
 *
 * Method (docs/tools.md): keys 0..N-1 with the deterministic sample rows (value_bytes
 * = 4 x dim); T client threads, each with its own connection(s), send batches of B
 * keys drawn uniformly or Zipf; closed loop (next batch when the previous returns) or
 * open loop (--rate batches/s over all threads, latency from the scheduled start).
 * Reported (benchreport.c): keys/s, batch latency p50/p99/p99.9 (log-linear histogram,
 * ~4 %), errors, missing keys, server cores, keys/s per server core, client CPU per key;
 * --json prints one object.
 */
#define _GNU_SOURCE /* sched_setaffinity, cpu_set_t */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/client.h"
#include "dhps/error.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"
#include "util.h"
#include "workload.h"

static const char bench_usage[] =
    "usage: dhps bench [--cluster DIR | --map FILE --secret FILE]   (default: start a\n"
    "                  one-node cluster: --server-workers workers, TCP)\n"
    "                  [--mode lookup|update|mixed] [--update-share 0.1] [--dist zipf|uniform]\n"
    "                  [--zipf 0.99] [--batch 1000] [--value-bytes 128] [--keys 100000]\n"
    "                  [--threads 2] [--seconds 3] [--rate BATCHES_PER_S (open loop)]\n"
    "                  [--peers] [--rounds 1 (1..50)] [--json] [--table bench] [--shards 1]\n"
    "                  [--server-workers 1 (also redis io-threads, memcached -t)]\n"
    "                  [--server-cpus LIST|-1 | --server-cpu N|-1] (default: 1 worker on\n"
    "                  the last CPU; more workers not pinned)\n"
    "                  [--timeout-ms 1000 (dhps call deadline)]\n"
    "                  [--spin-us N (the dhps client's spin before it sleeps; default the\n"
    "                  client's 50, 0..1000000)]\n";

/* The servers' and clients' CPU sets. */
typedef struct bench_pin {
    uint32_t ncpu;           /* CPUs numbered below this (configured, <= CPU_SETSIZE) */
    bool allowed[CPU_SETSIZE]; /* where this process may run */
    bool server[CPU_SETSIZE], client[CPU_SETSIZE];
    int nserver, nclient;    /* 0: not pinned */
    const char *opt, *arg;   /* the pinning option given (NULL: none) */
} bench_pin;

/* --server-cpus LIST or --server-cpu N ("-1": no pinning). Returns false after saying
 * why. */
static bool parse_pin(bench_pin *p, const char *opt, const char *arg, bool single)
{
    char why[160];
    p->opt = opt;
    p->arg = arg;
    if (!strcmp(arg, "-1")) {
        memset(p->server, 0, sizeof p->server);
        p->nserver = 0;
        return true;
    }
    if (single && (!*arg || strspn(arg, "0123456789") != strlen(arg))) {
        fprintf(stderr, "dhps bench: bad %s '%s': one CPU number, or -1 (for a list: "
                "--server-cpus)\n", opt, arg);
        return false;
    }
    p->nserver = tools_parse_cpu_list(arg, p->ncpu, p->server, why, sizeof why);
    if (p->nserver < 0) {
        fprintf(stderr, "dhps bench: bad %s '%s': %s\n", opt, arg, why);
        return false;
    }
    return true;
}

/* Settle the CPU sets once the options are read: the given server set must be allowed
 * here; the default pins one worker to the last allowed CPU; clients take the allowed
 * CPUs the servers leave. Returns false after saying why. */
static bool settle_pin(bench_pin *p, uint32_t workers)
{
    int nallowed = 0, last = -1;
    for (uint32_t c = 0; c < p->ncpu; c++)
        if (p->allowed[c])
            nallowed++, last = (int)c;
    if (p->opt) {
        for (uint32_t c = 0; c < p->ncpu; c++)
            if (p->server[c] && !p->allowed[c]) {
                char al[256];
                tools_format_cpu_list(p->allowed, p->ncpu, al, sizeof al);
                fprintf(stderr, "dhps bench: bad %s '%s': CPU %u is not one this process may "
                        "run on (%s)\n", p->opt, p->arg, c, al);
                return false;
            }
    } else if (workers == 1 && nallowed > 1) {
        memset(p->server, 0, sizeof p->server);
        p->server[last] = true;
        p->nserver = 1;
    }
    p->nclient = 0;
    for (uint32_t c = 0; p->nserver && c < p->ncpu; c++) {
        p->client[c] = p->allowed[c] && !p->server[c];
        p->nclient += p->client[c];
    }
    return true;
}

static void to_set(const bool *in, uint32_t n, cpu_set_t *set)
{
    CPU_ZERO(set);
    for (uint32_t c = 0; c < n; c++)
        if (in[c])
            CPU_SET((int)c, set);
}

/* CPU seconds process pid has used (all its threads), or -1 (unknown, pid 0). */
static double pid_cpu_s(pid_t pid)
{
    uint64_t ns;
    return pid > 0 && dhps_pid_cpu_ns(pid, &ns) == 0 ? (double)ns / 1e9 : -1;
}

/* One store's run: wl_run between two readings of the server's CPU time (server pid 0:
 * unknown), this process's CPU time and the wall clock. */
static int measure(const wl_params *wp, const wl_backend *b, pid_t server, bench_meas *m)
{
    double s0 = pid_cpu_s(server);
    uint64_t c0 = dhps_clock_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = dhps_mono_ns();
    int e = wl_run(wp, b, &m->r);
    uint64_t t1 = dhps_mono_ns(), c1 = dhps_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    double s1 = pid_cpu_s(server);
    m->window_s = (double)(t1 - t0) / 1e9;
    m->client_cpu_s = (double)(c1 - c0) / 1e9;
    m->server_cpu_s = s0 >= 0 && s1 >= s0 ? s1 - s0 : -1;
    m->ran = e == 0;
    return e;
}

/* Start the one-node cluster in dir (`dhps up` of this executable, pinned to cpus: the
 * server inherits it) and find its server's pid (0 when not found: CPU unknown). */
static int start_own(const bench_opts *o, const char *dir, const cpu_set_t *cpus, pid_t *server)
{
    char server_bin[PATH_MAX], self[PATH_MAX], sh[16], wk[16], dimbuf[16], log[PATH_MAX];
    if (!up_find_server(NULL, server_bin, sizeof server_bin)) {
        fprintf(stderr, "dhps bench: no dhps-server binary to start (or give --cluster)\n");
        return -ENOENT;
    }
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0)
        return -errno;
    self[sl] = 0;
    snprintf(sh, sizeof sh, "%u", o->shards);
    snprintf(wk, sizeof wk, "%u", o->server_workers);
    snprintf(dimbuf, sizeof dimbuf, "%u", o->dim);
    char *const av[] = {self, "up", "--dir", (char *)dir, "--nodes", "1", "--azs", "1",
                        "--pods", "1", "--replicas", "1", "--shards", sh, "--workers", wk,
                        "--no-shm", "--no-load", "--quiet", "--table", (char *)o->table,
                        "--dim", dimbuf, "--server", server_bin, NULL};
    snprintf(log, sizeof log, "%s/up.log", dir);
    pid_t up = bench_spawn(av, log, cpus);
    int st;
    if (up < 0 || waitpid(up, &st, 0) != up || !WIFEXITED(st) || WEXITSTATUS(st)) {
        fprintf(stderr, "dhps bench: starting the local cluster failed (%s)\n", log);
        return DHPS_E_UNREACHABLE;
    }
    pid_t pid = 0;
    *server = up_dir_running(dir, &pid) && up_pid_is_server(pid) ? pid : 0;
    return 0;
}

int dhps_cmd_bench(int argc, char **argv)
{
    static const struct option lo[] = {
        {"cluster", required_argument, 0, 'c'},  {"dir", required_argument, 0, 'c'},
        {"map", required_argument, 0, 'm'},
        {"secret", required_argument, 0, 's'},   {"mode", required_argument, 0, 'M'},
        {"update-share", required_argument, 0, 'u'}, {"dist", required_argument, 0, 'D'},
        {"zipf", required_argument, 0, 'z'},     {"batch", required_argument, 0, 'b'},
        {"value-bytes", required_argument, 0, 'v'}, {"keys", required_argument, 0, 'k'},
        {"threads", required_argument, 0, 'j'},  {"seconds", required_argument, 0, 'T'},
        {"rate", required_argument, 0, 'r'},     {"peers", no_argument, 0, 'P'},
        {"json", no_argument, 0, 'J'},           {"table", required_argument, 0, 't'},
        {"shards", required_argument, 0, 'S'},   {"server-cpu", required_argument, 0, 'C'},
        {"server-cpus", required_argument, 0, 'X'}, {"rounds", required_argument, 0, 'R'},
        {"server-workers", required_argument, 0, 'W'}, {"help", no_argument, 0, 'h'},
        {"timeout-ms", required_argument, 0, 'O'}, {"spin-us", required_argument, 0, 'U'},
        {0, 0, 0, 0}};
    bench_opts o = {.table = "bench", .dim = 32, .batch = 1000, .threads = 2, .shards = 1,
                    .server_workers = 1, .rounds = 1, .keys = 100000, .seconds = 3,
                    .zipf = 0.99, .timeout_ms = 1000};
    bench_pin *pin = calloc(1, sizeof *pin);
    if (!pin)
        return 1;
    long nconf = sysconf(_SC_NPROCESSORS_CONF);
    pin->ncpu = nconf < 1 ? 1 : nconf > CPU_SETSIZE ? CPU_SETSIZE : (uint32_t)nconf;
    cpu_set_t cur;
    if (sched_getaffinity(0, sizeof cur, &cur) == 0) {
        for (uint32_t c = 0; c < pin->ncpu; c++)
            pin->allowed[c] = CPU_ISSET((int)c, &cur);
    } else {
        for (uint32_t c = 0; c < pin->ncpu; c++)
            pin->allowed[c] = true;
    }
    const char *mode = "lookup", *dist = "zipf";
    uint64_t v;
    bool share_given = false;
    int c, rc = 2;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:m:s:M:u:D:z:b:v:k:j:T:r:PJt:S:C:X:R:W:O:U:h", lo,
                            NULL)) != -1) {
        switch (c) {
        case 'c': o.tgt.cluster_dir = optarg; break;
        case 'm': o.tgt.map = optarg; break;
        case 's': o.tgt.secret = optarg; break;
        case 'M': mode = optarg; break;
        case 'u': o.update_share = atof(optarg); share_given = true; break;
        case 'D': dist = optarg; break;
        case 'z': o.zipf = atof(optarg); break;
        case 'b': if (!tools_parse_u64("bench", "--batch", optarg, &v) || !v || v > 65536) goto done;
                  o.batch = (uint32_t)v; break;
        case 'v': if (!tools_parse_u64("bench", "--value-bytes", optarg, &v) || !v || v % 4 ||
                      v > 16384) { fprintf(stderr, "dhps bench: --value-bytes: a multiple of 4, 4..16384\n"); goto done; }
                  o.dim = (uint32_t)(v / 4); break;
        case 'k': if (!tools_parse_u64("bench", "--keys", optarg, &o.keys) || !o.keys) goto done; break;
        case 'j': if (!tools_parse_u64("bench", "--threads", optarg, &v) || !v || v > 256) goto done;
                  o.threads = (uint32_t)v; break;
        case 'T': o.seconds = atof(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'P': o.peers = true; break;
        case 'J': o.json = true; break;
        case 't': o.table = optarg; break;
        case 'S': if (!tools_parse_u64("bench", "--shards", optarg, &v) || !v || v > 65536) goto done;
                  o.shards = (uint32_t)v; break;
        case 'C': if (!parse_pin(pin, "--server-cpu", optarg, true)) goto done; break;
        case 'X': if (!parse_pin(pin, "--server-cpus", optarg, false)) goto done; break;
        case 'R':
            if (!tools_parse_u64("bench", "--rounds", optarg, &v))
                goto done;
            if (!v || v > BENCH_ROUNDS_MAX) {
                fprintf(stderr, "dhps bench: --rounds: 1..%d\n", BENCH_ROUNDS_MAX);
                goto done;
            }
            o.rounds = (uint32_t)v;
            break;
        case 'W': if (!tools_parse_u64("bench", "--server-workers", optarg, &v) || !v || v > 64) goto done;
                  o.server_workers = (uint32_t)v; break;
        case 'O':
            if (!tools_parse_u64("bench", "--timeout-ms", optarg, &o.timeout_ms) || !o.timeout_ms)
                goto done;
            break;
        case 'U':
            if (!tools_parse_u64("bench", "--spin-us", optarg, &v))
                goto done;
            if (v > DHPS_RPC_SPIN_US_MAX) {
                fprintf(stderr, "dhps bench: --spin-us: 0..%u\n", DHPS_RPC_SPIN_US_MAX);
                goto done;
            }
            o.tgt.spin_set = true;
            o.tgt.spin_us = (uint32_t)v;
            break;
        case 'h': printf("%s", bench_usage); rc = 0; goto done;
        default: fprintf(stderr, "%s", bench_usage); goto done;
        }
    }
    if (optind != argc || o.seconds <= 0) {
        fprintf(stderr, "%s", bench_usage);
        goto done;
    }
    if (!strcmp(mode, "update"))
        o.update_share = 1;
    else if (!strcmp(mode, "mixed"))
        o.update_share = share_given ? o.update_share : 0.1;
    else if (!strcmp(mode, "lookup"))
        o.update_share = 0;
    else {
        fprintf(stderr, "dhps bench: --mode lookup, update or mixed\n");
        goto done;
    }
    if (!strcmp(dist, "uniform"))
        o.zipf = 0;
    else if (strcmp(dist, "zipf") || o.zipf <= 0) {
        fprintf(stderr, "dhps bench: --dist zipf (with --zipf S > 0) or uniform\n");
        goto done;
    }
    if (!settle_pin(pin, o.server_workers))
        goto done;
    rc = 1;
    o.own = !o.tgt.cluster_dir && !o.tgt.map && !o.tgt.secret;
    tools_format_cpu_list(pin->server, pin->nserver ? pin->ncpu : 0, o.server_cpus,
                          sizeof o.server_cpus);
    tools_format_cpu_list(pin->client, pin->nclient ? pin->ncpu : 0, o.client_cpus,
                          sizeof o.client_cpus);
    cpu_set_t srvset, cliset;
    to_set(pin->server, pin->ncpu, &srvset);
    to_set(pin->client, pin->ncpu, &cliset);
    const cpu_set_t *srv = pin->nserver ? &srvset : NULL;

    char tmp[] = "/tmp/dhps-bench-XXXXXX";
    bench_peer peers[2] = {{0}};
    bench_meas (*m)[BENCH_STORES] = calloc(o.rounds, sizeof *m);
    tools_conn *conn = NULL;
    pid_t dhps_pid = 0;
    int e;
    bool own_up = false;
    FILE *info = o.json ? stderr : stdout; /* progress lines stay off the JSON */
    if (!m)
        goto out;

    if (o.own) {
        if (!mkdtemp(tmp)) {
            fprintf(stderr, "dhps bench: mkdtemp: %s\n", strerror(errno));
            goto out;
        }
        own_up = true;
        if (start_own(&o, tmp, srv, &dhps_pid) < 0)
            goto out;
        o.tgt.cluster_dir = tmp;
        fprintf(info, "dhps bench: started a one-node cluster in %s (%u worker%s, TCP, %s%s)\n",
                tmp, o.server_workers, o.server_workers > 1 ? "s" : "",
                srv ? "cpu " : "not pinned", o.server_cpus);
    }
    /* client threads (created later, inheriting this mask) keep off the server CPUs when
     * the servers leave some free */
    if (pin->nclient)
        sched_setaffinity(0, sizeof cliset, &cliset);
    if (tools_conn_open(&o.tgt, &conn) < 0)
        goto out;
    fflush(info);
    uint64_t t0 = dhps_mono_ns();
    if ((e = up_load_sample(conn->client, o.table, o.dim, o.keys, true)) < 0) {
        fprintf(stderr, "dhps bench: loading %llu keys into table %s failed: %s\n",
                (unsigned long long)o.keys, o.table, dhps_strerror(e));
        goto out;
    }
    fprintf(info, "dhps bench: loaded %llu keys x %u B into dhps in %.2f s\n",
            (unsigned long long)o.keys, o.dim * 4, (double)(dhps_mono_ns() - t0) / 1e9);
    fflush(info);

    if (o.peers) {
        if (bench_peers_start(peers, o.server_workers, srv, o.dim * 4, o.batch) < 0)
            goto out;
        if ((e = bench_peers_load(peers, o.keys, o.dim)) < 0) {
            fprintf(stderr, "dhps bench: loading the peers failed: %s\n", dhps_strerror(e));
            goto out;
        }
        fprintf(info, "dhps bench: loaded the same keys into redis (:%u, io-threads %u) and "
                "memcached (:%u, -t %u), %s%s\n", peers[0].port, o.server_workers,
                peers[1].port, o.server_workers, srv ? "cpu " : "not pinned", o.server_cpus);
        fflush(info);
    }

    const wl_backend *dhps_b = up_dhps_backend(conn->client, o.table, o.dim,
                                               o.timeout_ms * 1000);
    int ns = o.peers ? BENCH_STORES : 1;
    for (uint32_t r = 0; r < o.rounds; r++) {
        wl_params wp = {.nkeys = o.keys, .row_bytes = o.dim * 4, .batch = o.batch,
                        .threads = o.threads, .seconds = o.seconds, .zipf = o.zipf,
                        .rate = o.rate, .update_share = o.update_share, .seed = 11 + r,
                        .distinct = true};
        for (int i = 0; i < ns; i++) {
            int s = bench_order(r, i, ns);
            const wl_backend *b = s == BENCH_DHPS ? dhps_b : &peers[s - 1].b;
            pid_t pid = s == BENCH_DHPS ? dhps_pid : peers[s - 1].pid;
            if (measure(&wp, b, pid, &m[r][s]) < 0)
                goto out;
        }
    }
    if (o.json)
        bench_print_json(&o, (const bench_meas(*)[BENCH_STORES])m);
    else
        bench_print_human(&o, (const bench_meas(*)[BENCH_STORES])m);
    rc = 0;
out:
    tools_conn_close(conn);
    bench_peers_stop(peers);
    if (own_up) {
        up_stop_dir(tmp, 10, true);
        if (up_rm_tree(tmp) < 0)
            fprintf(stderr, "dhps bench: could not remove %s\n", tmp);
    }
    free(m);
done:
    free(pin);
    return rc;
}

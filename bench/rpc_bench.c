/*
 * dhps-bench rpc: the RPC library on one transport, beside redis on loopback; and TCP with
 * and without TLS in the same run.
 *
 *   dhps-bench rpc --transport tcp|shm|verbs [--payload B] [--batch K] [--threads T]
 *                  [--workers W] [--seconds S] [--peers] [--json]
 *   dhps-bench rpc --transport tcp --tls [--payload B[,B...]] [--rounds N] [...]
 *   dhps-bench rpc --transport tcp|shm|verbs --rounds N [--peers] [...]
 *
 * An in-process server (W workers, echo handler: the response has the request's size)
 * and T client threads, each with its own client and channel, keeping K calls in
 * flight (zero-copy start/send, completions in callbacks). Reports small-call rate
 * (M calls/s), payload throughput (request + response bytes, GB/s), p50/p99/p99.9
 * latency (send to callback) and CPU time per call: the client threads' own
 * (CLOCK_THREAD_CPUTIME_ID of each) and the rest of the process (getrusage minus the
 * clients': the server's acceptors and workers). --peers runs redis-server on 127.0.0.1
 * and redis-benchmark (PING, SET then GET of that value, pipeline K, T connections, value
 * size B) in the same run. --wait block: the clients wait in dhps_rpc_client_poll while
 * their K calls are in flight, as the dhps client library does: they spin up to
 * --spin-us (default the library's, 50 us) and then sleep in epoll (as redis-benchmark
 * does); --spin-us 0 sleeps at once. --wait spin (default) busy-polls. --rounds N (without --tls) repeats the pair N times, the order
 * flipping every round, and prints each round's ratios dhps/redis, then the median and
 * range (min-max) of every figure and of the per-round ratios.
 *
 * --tls: for each payload size, N rounds of plain TCP then TCP+TLS (the order flips every
 * round, so a drift of the machine's load does not favour one side), S seconds each, a
 * fresh server and clients per run; prints every round and, per payload, the median and
 * range (min-max) of calls/s and CPU per call of each side and the ratio TLS/plain of the
 * medians (and its range over the rounds' own ratios). Its clients sleep in epoll while
 * their K calls are in flight instead of busy-polling (the other runs' clients spin), so
 * CPU per call counts work, not waiting. Certificates are throwaway ones made at start
 * (EC P-256, tests/common/test_certs.h) in a temp dir, removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "dhps/rpc.h"
#include "test_certs.h"
#include "util.h"

#define M_ECHO 1
#define MAX_LAT (1u << 22)

#define MAX_PAYLOADS 8

typedef struct opts {
    int transport;
    size_t payload;               /* of this run */
    size_t payloads[MAX_PAYLOADS];/* --payload list */
    int npayloads;
    int batch, threads, workers, rounds;
    double seconds;
    bool peers, json, tls_compare;
    bool tls;                     /* this run over TLS */
    bool rounds_given;            /* --rounds on the command line */
    bool block;                   /* clients wait in poll while K calls are in flight */
    int spin_us;                  /* --spin-us: the clients' spin_us (-1: the default) */
    char tls_dir[64];             /* certificates (--tls) */
} opts;

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int h_echo(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    size_t n = r->req_len < r->resp_cap ? r->req_len : r->resp_cap;
    memcpy(r->resp, r->req, n); /* echo; the send timestamp travels back in it */
    r->resp_len = n;
    return 0;
}

typedef struct worker_arg {
    const opts *o;
    uint16_t port;
    _Atomic bool *go, *stop;
    uint64_t calls, errors, bytes;
    uint64_t cpu_ns;  /* this client thread's CPU time over the measured window */
    uint32_t *lat; /* ns, sampled */
    uint32_t nlat;
    int rc;
} worker_arg;

static _Thread_local int tl_inflight;

static void on_done(void *arg, int status, const void *resp, size_t len)
{
    worker_arg *w = arg;
    tl_inflight--;
    if (status != 0 || len < 8) {
        w->errors++;
        return;
    }
    uint64_t t0;
    memcpy(&t0, resp, 8);
    uint64_t d = dhps_mono_ns() - t0;
    w->calls++;
    w->bytes += 2 * len;
    if (w->nlat < MAX_LAT)
        w->lat[w->nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

static void *client_main(void *p)
{
    worker_arg *w = p;
    const opts *o = w->o;
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = "bench";
    cp.secret_len = 5;
    cp.max_msg = (uint32_t)(o->payload < 4096 ? 4096 : o->payload);
    if (o->spin_us >= 0)
        cp.spin_us = (uint32_t)o->spin_us;
    if ((uint32_t)o->batch > cp.verbs_slots)
        cp.verbs_slots = (uint32_t)(o->batch > 1024 ? 1024 : o->batch);
    char ca[128];
    if (o->tls) {
        snprintf(ca, sizeof ca, "%s/ca.pem", o->tls_dir);
        cp.tls_ca_file = ca;
    }
    dhps_rpc_client *c = NULL;
    dhps_rpc_channel *ch = NULL;
    if ((w->rc = dhps_rpc_client_create(&cp, &c)))
        return NULL;
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.port = w->port;
    chp.require = o->transport;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(o->transport);
    chp.tls = o->tls;
    if ((w->rc = dhps_rpc_channel_open(c, &chp, &ch))) {
        dhps_rpc_client_destroy(c);
        return NULL;
    }
    while (!atomic_load(w->go))
        ;
    uint64_t cpu0 = dhps_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    size_t len = o->payload < 8 ? 8 : o->payload;
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        while (tl_inflight < o->batch) {
            void *buf;
            if (dhps_rpc_call_start(ch, M_ECHO, len, &buf))
                break;
            if (len > 8)
                memset((char *)buf + 8, 0x5a, len - 8); /* the caller writes its payload */
            uint64_t t = dhps_mono_ns();
            memcpy(buf, &t, 8);
            if (dhps_rpc_call_send(ch, len, 5000000, on_done, w))
                break;
            tl_inflight++;
        }
        /* busy-poll (--wait spin), or sleep in epoll while all K calls are in flight
         * (--wait block, and always with --tls: CPU per call is then a call's work, not
         * the wait's spinning) */
        dhps_rpc_client_poll(c, o->block && tl_inflight >= o->batch ? 5 : 0);
    }
    w->cpu_ns = dhps_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    while (tl_inflight > 0)
        dhps_rpc_client_poll(c, 10);
    dhps_rpc_client_destroy(c);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* ---- redis peers --------------------------------------------------------------------- */

static double redis_rps(const char *csv, const char *test)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\",\"", test);
    const char *p = strstr(csv, key);
    return p ? atof(p + strlen(key)) : 0.0;
}

static int run_peers(const opts *o, double *ping_mps, double *get_mps)
{
    int port = 20000 + (int)(getpid() % 20000);
    char ports[16], cmd[512];
    snprintf(ports, sizeof ports, "%d", port);
    pid_t srv = fork();
    if (srv < 0)
        return -1;
    if (srv == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("redis-server", "redis-server", "--bind", "127.0.0.1", "--port", ports, "--save",
               "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    int rc = -1;
    for (int i = 0; i < 50; i++) { /* wait until it answers */
        snprintf(cmd, sizeof cmd, "redis-cli -h 127.0.0.1 -p %d ping >/dev/null 2>&1", port);
        if (system(cmd) == 0) {
            rc = 0;
            break;
        }
        usleep(100000);
    }
    if (rc == 0) {
        long n = (long)(o->seconds * 200000);
        if (n < 100000)
            n = 100000;
        snprintf(cmd, sizeof cmd,
                 "redis-benchmark -h 127.0.0.1 -p %d -t ping,set,get -P %d -c %d -n %ld -d %zu --csv -q",
                 port, o->batch, o->threads, n, o->payload);
        FILE *f = popen(cmd, "r");
        char out[8192] = {0};
        size_t got = f ? fread(out, 1, sizeof out - 1, f) : 0;
        out[got] = 0;
        if (!f || pclose(f) != 0)
            rc = -1;
        *ping_mps = redis_rps(out, "PING_MBULK") / 1e6;
        *get_mps = redis_rps(out, "GET") / 1e6;
        if (*ping_mps <= 0 || *get_mps <= 0)
            rc = -1;
    }
    kill(srv, SIGTERM);
    waitpid(srv, NULL, 0);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dhps-bench rpc --transport tcp|shm|verbs [--payload B] [--batch K]\n"
               "                      [--threads T] [--workers W] [--seconds S] [--peers] [--json]\n"
               "                      [--wait spin|block] [--spin-us N] [--rounds N]\n"
               "       dhps-bench rpc --transport tcp --tls [--payload B[,B...]] [--rounds N]\n"
               "                      [--batch K] [--threads T] [--workers W] [--seconds S] [--json]\n"
               "       dhps-bench rpc --transport T --rounds N [--peers] [...]: N rounds, median\n"
               "                      and range (with --peers: of dhps/redis per round)\n"
               "defaults: payload 32, batch 16, threads 1, workers 1, seconds 3, rounds 1\n"
               "          (--tls: 5)\n"
               "--tls: plain TCP vs TCP+TLS in one run, N rounds each, ratio TLS/plain\n"
               "--wait: clients busy-poll (spin, default) or wait in the library's poll while\n"
               "        all K calls are in flight (block; always with --tls): they spin up to\n"
               "        --spin-us (default 50; 0 with --tls) and then sleep in epoll\n");
}

/* One measured run. */
typedef struct result {
    double secs, mps, gbs, p50, p99, p999;
    double cpu_us;         /* whole process per call */
    double cpu_client_us;  /* client threads per call */
    double cpu_server_us;  /* the rest (server threads) per call */
    uint64_t calls, errors;
} result;

static int run_once(const opts *o, result *res)
{
    memset(res, 0, sizeof *res);
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.workers = (uint32_t)o->workers;
    sp.secret = "bench";
    sp.secret_len = 5;
    sp.max_msg = (uint32_t)(o->payload < 4096 ? 4096 : o->payload);
    char cert[128], key[128];
    if (o->tls) {
        snprintf(cert, sizeof cert, "%s/server.pem", o->tls_dir);
        snprintf(key, sizeof key, "%s/server.key", o->tls_dir);
        sp.tls_cert_file = cert;
        sp.tls_key_file = key;
    }
    dhps_rpc_server *s = NULL;
    int rc = dhps_rpc_server_create(&sp, &s);
    if (rc == 0)
        rc = dhps_rpc_server_register(s, M_ECHO, h_echo, NULL);
    if (rc == 0)
        rc = dhps_rpc_server_start(s);
    if (rc) {
        fprintf(stderr, "dhps-bench rpc: server: %s\n", dhps_strerror(rc));
        dhps_rpc_server_destroy(s);
        return 1;
    }
    _Atomic bool go = false, stop = false;
    worker_arg *wa = calloc((size_t)o->threads, sizeof *wa);
    pthread_t *th = calloc((size_t)o->threads, sizeof *th);
    for (int i = 0; i < o->threads; i++) {
        wa[i] = (worker_arg){.o = o, .port = dhps_rpc_server_port(s), .go = &go, .stop = &stop};
        wa[i].lat = malloc(MAX_LAT * sizeof *wa[i].lat);
        pthread_create(&th[i], NULL, client_main, &wa[i]);
    }
    usleep(300000); /* channels open */
    double c0 = cpu_s();
    uint64_t t0 = dhps_mono_ns();
    atomic_store(&go, true);
    usleep((useconds_t)(o->seconds * 1e6));
    atomic_store(&stop, true);
    uint64_t t1 = dhps_mono_ns();
    double c1 = cpu_s();
    uint64_t calls = 0, errors = 0, bytes = 0, nlat = 0, ccpu = 0;
    int open_err = 0;
    for (int i = 0; i < o->threads; i++) {
        pthread_join(th[i], NULL);
        if (wa[i].rc)
            open_err = wa[i].rc;
        calls += wa[i].calls;
        errors += wa[i].errors;
        bytes += wa[i].bytes;
        nlat += wa[i].nlat;
        ccpu += wa[i].cpu_ns;
    }
    dhps_rpc_server_destroy(s);
    uint32_t *all = malloc((nlat ? nlat : 1) * sizeof *all);
    uint64_t k = 0;
    for (int i = 0; i < o->threads; i++) {
        memcpy(all + k, wa[i].lat, wa[i].nlat * sizeof *all);
        k += wa[i].nlat;
        free(wa[i].lat);
    }
    free(wa);
    free(th);
    if (open_err) {
        fprintf(stderr, "dhps-bench rpc: channel: %s\n", dhps_strerror(open_err));
        free(all);
        return 1;
    }
    qsort(all, nlat, sizeof *all, cmp_u32);
    res->secs = (double)(t1 - t0) / 1e9;
    res->calls = calls;
    res->errors = errors;
    res->mps = (double)calls / res->secs / 1e6;
    res->gbs = (double)bytes / res->secs / 1e9;
    res->p50 = nlat ? all[nlat / 2] / 1e3 : 0;
    res->p99 = nlat ? all[nlat * 99 / 100] / 1e3 : 0;
    res->p999 = nlat ? all[nlat * 999 / 1000] / 1e3 : 0;
    if (calls) {
        res->cpu_us = (c1 - c0) * 1e6 / (double)calls;
        res->cpu_client_us = (double)ccpu / 1e3 / (double)calls;
        res->cpu_server_us = res->cpu_us - res->cpu_client_us;
    }
    free(all);
    return 0;
}

/* --tls: rounds of plain and TLS per payload size. */
static int tls_compare(opts *o)
{
    snprintf(o->tls_dir, sizeof o->tls_dir, "/tmp/dhps-bench-tls-XXXXXX");
    if (!mkdtemp(o->tls_dir) || test_certs_make(o->tls_dir)) {
        fprintf(stderr, "dhps-bench rpc: cannot make test certificates\n");
        return 1;
    }
    int rc = 0, n = o->rounds;
    if (!o->json)
        printf("rpc tcp plain vs tcp+tls: batch %d, threads %d, workers %d, %.1f s per run, "
               "%d rounds (order flips each round)\n", o->batch, o->threads, o->workers,
               o->seconds, n);
    else
        printf("{\"mode\": \"tls_compare\", \"batch\": %d, \"threads\": %d, \"workers\": %d, "
               "\"seconds\": %.2f, \"rounds\": %d, \"results\": [", o->batch, o->threads,
               o->workers, o->seconds, n);
    for (int pi = 0; pi < o->npayloads && !rc; pi++) {
        o->payload = o->payloads[pi];
        double v[2][4][64]; /* side (0 plain, 1 tls) x {mps, cpu, client, server} x round */
        double ratio[2][64];
        for (int r = 0; r < n && !rc; r++) {
            result res[2];
            for (int k = 0; k < 2 && !rc; k++) {
                int side = (r % 2) ? 1 - k : k;
                o->tls = side == 1;
                rc = run_once(o, &res[side]);
                if (!rc && res[side].errors)
                    rc = 1;
            }
            if (rc)
                break;
            for (int side = 0; side < 2; side++) {
                v[side][0][r] = res[side].mps;
                v[side][1][r] = res[side].cpu_us;
                v[side][2][r] = res[side].cpu_client_us;
                v[side][3][r] = res[side].cpu_server_us;
            }
            ratio[0][r] = res[1].mps / res[0].mps;
            ratio[1][r] = res[1].cpu_us / res[0].cpu_us;
            if (!o->json)
                printf("  payload %6zu B round %d: plain %.3f M calls/s %.2f us CPU/call "
                       "(client %.2f, server %.2f) | tls %.3f M calls/s %.2f us CPU/call "
                       "(client %.2f, server %.2f)\n", o->payload, r + 1, res[0].mps,
                       res[0].cpu_us, res[0].cpu_client_us, res[0].cpu_server_us, res[1].mps,
                       res[1].cpu_us, res[1].cpu_client_us, res[1].cpu_server_us);
        }
        if (rc)
            break;
        double m[2][4][3], rr[2][3];
        for (int side = 0; side < 2; side++)
            for (int q = 0; q < 4; q++)
                bench_spread(v[side][q], n, m[side][q]);
        bench_spread(ratio[0], n, rr[0]);
        bench_spread(ratio[1], n, rr[1]);
        if (o->json) {
            printf("%s{\"payload\": %zu", pi ? ", " : "", o->payload);
            static const char *const sn[2] = {"plain", "tls"};
            for (int side = 0; side < 2; side++)
                printf(", \"%s\": {\"calls_mps\": [%.4f, %.4f, %.4f], \"cpu_us_per_call\": "
                       "[%.3f, %.3f, %.3f], \"cpu_client_us\": %.3f, \"cpu_server_us\": %.3f}",
                       sn[side], m[side][0][0], m[side][0][1], m[side][0][2], m[side][1][0],
                       m[side][1][1], m[side][1][2], m[side][2][0], m[side][3][0]);
            printf(", \"ratio_tls_plain\": {\"calls\": %.3f, \"calls_range\": [%.3f, %.3f], "
                   "\"cpu\": %.3f, \"cpu_range\": [%.3f, %.3f]}}",
                   m[1][0][0] / m[0][0][0], rr[0][1], rr[0][2], m[1][1][0] / m[0][1][0],
                   rr[1][1], rr[1][2]);
        } else {
            printf("payload %zu B (median, min-max over %d rounds):\n", o->payload, n);
            printf("  plain    %.3f M calls/s (%.3f-%.3f), CPU %.2f us/call (%.2f-%.2f; "
                   "client %.2f, server %.2f)\n", m[0][0][0], m[0][0][1], m[0][0][2],
                   m[0][1][0], m[0][1][1], m[0][1][2], m[0][2][0], m[0][3][0]);
            printf("  tls      %.3f M calls/s (%.3f-%.3f), CPU %.2f us/call (%.2f-%.2f; "
                   "client %.2f, server %.2f)\n", m[1][0][0], m[1][0][1], m[1][0][2],
                   m[1][1][0], m[1][1][1], m[1][1][2], m[1][2][0], m[1][3][0]);
            printf("  tls/plain  calls/s %.2fx (rounds %.2f-%.2f), CPU per call %.2fx "
                   "(rounds %.2f-%.2f)\n", m[1][0][0] / m[0][0][0], rr[0][1], rr[0][2],
                   m[1][1][0] / m[0][1][0], rr[1][1], rr[1][2]);
        }
        fflush(stdout);
    }
    if (o->json)
        printf("]}\n");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", o->tls_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "dhps-bench rpc: could not remove %s\n", o->tls_dir);
    if (rc)
        fprintf(stderr, "dhps-bench rpc: a run failed (errors or no channel)\n");
    return rc;
}

static const char *const tn[] = {"tcp", "shm", "verbs"};

/* "spin", or "block (spin N us)": how the clients wait, for the text header */
static const char *wait_text(const opts *o, char *buf, size_t cap)
{
    if (!o->block)
        return "spin";
    snprintf(buf, cap, "block (spin %d us)", o->spin_us);
    return buf;
}

/* --rounds N without --tls: N rounds of this transport and (--peers) redis-benchmark,
 * the order flipping every round; each round's ratios, then the median and range of
 * every figure and of the per-round ratios. A round with errors or a failed peer run
 * fails the bench. */
static int peers_rounds(const opts *o)
{
    int n = o->rounds;
    double v[5][64]; /* {dhps mps, p99, ping, get, cpu/call} x round */
    double ratio[2][64]; /* dhps / redis {PING, GET} x round */
    char wt[48];
    if (!o->json)
        printf("rpc %s: payload %zu B, batch %d, threads %d, workers %d, clients %s, %.1f s "
               "per run, %d rounds%s\n", tn[o->transport], o->payload, o->batch, o->threads,
               o->workers, wait_text(o, wt, sizeof wt), o->seconds, n,
               o->peers ? " beside redis-benchmark (order flips each round)" : "");
    else
        printf("{\"transport\": \"%s\", \"payload\": %zu, \"batch\": %d, \"threads\": %d, "
               "\"workers\": %d, \"wait\": \"%s\", \"spin_us\": %d, \"seconds\": %.2f, "
               "\"rounds\": [", tn[o->transport], o->payload, o->batch, o->threads, o->workers,
               o->block ? "block" : "spin", o->block ? o->spin_us : 0, o->seconds);
    for (int r = 0; r < n; r++) {
        result res;
        double ping = 0, get = 0;
        int rc = 0;
        for (int k = 0; k < 2 && !rc; k++) {
            bool peer_turn = (k == 1) != (r % 2 == 1); /* dhps first on even rounds */
            if (peer_turn)
                rc = o->peers ? run_peers(o, &ping, &get) : 0;
            else
                rc = run_once(o, &res) || res.errors ? 1 : 0;
        }
        if (rc) {
            if (o->json)
                printf("]}\n");
            fprintf(stderr, "dhps-bench rpc: round %d failed (errors, no channel, or "
                    "redis-server/redis-benchmark did not run)\n", r + 1);
            return 1;
        }
        v[0][r] = res.mps;
        v[1][r] = res.p99;
        v[2][r] = ping;
        v[3][r] = get;
        v[4][r] = res.cpu_us;
        ratio[0][r] = ping > 0 ? res.mps / ping : 0;
        ratio[1][r] = get > 0 ? res.mps / get : 0;
        if (o->json) {
            printf("%s{\"calls_mps\": %.4f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
                   "\"p999_us\": %.2f, \"cpu_us_per_call\": %.3f", r ? ", " : "", res.mps,
                   res.p50, res.p99, res.p999, res.cpu_us);
            if (o->peers)
                printf(", \"redis_ping_mps\": %.4f, \"redis_get_mps\": %.4f, "
                       "\"ratio_ping\": %.3f, \"ratio_get\": %.3f", ping, get, ratio[0][r],
                       ratio[1][r]);
            printf("}");
        } else {
            printf("  round %d: dhps %.3f M calls/s, p99 %.1f us, CPU %.2f us/call", r + 1,
                   res.mps, res.p99, res.cpu_us);
            if (o->peers)
                printf(" | redis PING %.3f M/s, GET %.3f M/s | dhps/PING %.2fx, dhps/GET %.2fx",
                       ping, get, ratio[0][r], ratio[1][r]);
            printf("\n");
        }
        fflush(stdout);
    }
    double m[5][3], rr[2][3];
    for (int q = 0; q < 5; q++)
        bench_spread(v[q], n, m[q]);
    double min_ping = ratio[0][0];
    for (int r = 1; r < n; r++)
        if (ratio[0][r] < min_ping)
            min_ping = ratio[0][r];
    bench_spread(ratio[0], n, rr[0]);
    bench_spread(ratio[1], n, rr[1]);
    if (o->json) {
        printf("], \"summary\": {\"calls_mps\": [%.4f, %.4f, %.4f], \"p99_us\": [%.2f, %.2f, "
               "%.2f], \"cpu_us_per_call\": [%.3f, %.3f, %.3f]", m[0][0], m[0][1], m[0][2],
               m[1][0], m[1][1], m[1][2], m[4][0], m[4][1], m[4][2]);
        if (o->peers)
            printf(", \"redis_ping_mps\": [%.4f, %.4f, %.4f], \"redis_get_mps\": [%.4f, %.4f, "
                   "%.4f], \"ratio_ping\": [%.3f, %.3f, %.3f], \"ratio_get\": [%.3f, %.3f, "
                   "%.3f]", m[2][0], m[2][1], m[2][2], m[3][0], m[3][1], m[3][2], rr[0][0],
                   rr[0][1], rr[0][2], rr[1][0], rr[1][1], rr[1][2]);
        printf("}}\n");
    } else {
        printf("median (min-max) over %d rounds:\n", n);
        printf("  dhps       %.3f M calls/s (%.3f-%.3f), p99 %.1f us (%.1f-%.1f), "
               "CPU %.2f us/call (%.2f-%.2f)\n", m[0][0], m[0][1], m[0][2], m[1][0], m[1][1],
               m[1][2], m[4][0], m[4][1], m[4][2]);
        if (o->peers) {
            printf("  redis      PING %.3f M/s (%.3f-%.3f), GET %.3f M/s (%.3f-%.3f)\n",
                   m[2][0], m[2][1], m[2][2], m[3][0], m[3][1], m[3][2]);
            printf("  dhps/PING  %.2fx (rounds %.2f-%.2f); dhps/GET %.2fx (rounds %.2f-%.2f)\n",
                   rr[0][0], rr[0][1], rr[0][2], rr[1][0], rr[1][1], rr[1][2]);
            printf("  target     dhps/PING >= 2x in every round: %s (lowest round %.2fx)\n",
                   min_ping >= 2.0 ? "met" : "not met", min_ping);
        }
    }
    return 0;
}

/* --payload B[,B...] */
static int parse_payloads(opts *o, const char *arg)
{
    o->npayloads = 0;
    for (const char *p = arg; *p;) {
        char *end;
        unsigned long v = strtoul(p, &end, 0);
        if (end == p || o->npayloads == MAX_PAYLOADS || v > (8u << 20))
            return -1;
        o->payloads[o->npayloads++] = v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return o->npayloads ? 0 : -1;
}

int bench_rpc_main(int argc, char **argv)
{
    opts o = {.transport = -1, .payload = 32, .payloads = {32}, .npayloads = 1, .batch = 16,
              .threads = 1, .workers = 1, .seconds = 3, .rounds = 5, .spin_us = -1};
    static const struct option lo[] = {
        {"transport", required_argument, 0, 't'}, {"payload", required_argument, 0, 'p'},
        {"batch", required_argument, 0, 'b'},     {"threads", required_argument, 0, 'T'},
        {"workers", required_argument, 0, 'w'},   {"seconds", required_argument, 0, 's'},
        {"peers", no_argument, 0, 'P'},           {"json", no_argument, 0, 'j'},
        {"tls", no_argument, 0, 'L'},             {"rounds", required_argument, 0, 'r'},
        {"wait", required_argument, 0, 'W'},      {"help", no_argument, 0, 'h'},
        {"spin-us", required_argument, 0, 'S'},
        {0, 0, 0, 0}};
    int c;
    bool bad = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't':
            o.transport = !strcmp(optarg, "tcp") ? DHPS_RPC_TCP
                          : !strcmp(optarg, "shm") ? DHPS_RPC_SHM
                          : !strcmp(optarg, "verbs") ? DHPS_RPC_VERBS : -2;
            break;
        case 'p': bad |= parse_payloads(&o, optarg) != 0; break;
        case 'b': o.batch = atoi(optarg); break;
        case 'T': o.threads = atoi(optarg); break;
        case 'w': o.workers = atoi(optarg); break;
        case 's': o.seconds = atof(optarg); break;
        case 'P': o.peers = true; break;
        case 'j': o.json = true; break;
        case 'L': o.tls_compare = true; break;
        case 'r': o.rounds = atoi(optarg); o.rounds_given = true; break;
        case 'W':
            if (!strcmp(optarg, "block"))
                o.block = true;
            else if (strcmp(optarg, "spin"))
                bad = true;
            break;
        case 'S': {
            char *e = NULL;
            long v = strtol(optarg, &e, 10);
            if (e == optarg || *e || v < 0 || v > (long)DHPS_RPC_SPIN_US_MAX)
                bad = true;
            else
                o.spin_us = (int)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.tls_compare) {
        o.block = true;
        if (o.spin_us < 0)
            o.spin_us = 0; /* CPU per call counts work, not waiting */
    }
    if (o.block && o.spin_us < 0) {
        dhps_rpc_client_params dp;
        dhps_rpc_client_params_init(&dp);
        o.spin_us = (int)dp.spin_us;
    }
    o.payload = o.payloads[0];
    if (bad || o.transport < 0 || o.batch < 1 || o.threads < 1 || o.threads > 64 ||
        o.workers < 1 || o.seconds <= 0 || o.rounds < 1 || o.rounds > 64 ||
        (o.tls_compare && (o.transport != DHPS_RPC_TCP || o.peers)) ||
        (!o.tls_compare && o.npayloads != 1)) {
        usage(stderr);
        return 2;
    }
    if (o.transport == DHPS_RPC_VERBS && !dhps_rpc_verbs_available()) {
        fprintf(stderr, "dhps-bench rpc: no active RDMA verbs device on this host\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (o.tls_compare)
        return tls_compare(&o);
    if (o.rounds_given && o.rounds > 1)
        return peers_rounds(&o);
    result r;
    if (run_once(&o, &r))
        return 1;
    double ping = 0, get = 0;
    int peers_rc = o.peers ? run_peers(&o, &ping, &get) : 0;
    if (o.json) {
        printf("{\"transport\": \"%s\", \"payload\": %zu, \"batch\": %d, \"threads\": %d, "
               "\"calls_mps\": %.4f, \"gbytes_s\": %.4f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
               "\"p999_us\": %.2f, \"cpu_us_per_call\": %.3f, \"cpu_client_us_per_call\": %.3f, "
               "\"cpu_server_us_per_call\": %.3f, \"errors\": %llu, \"wait\": \"%s\", "
               "\"spin_us\": %d",
               tn[o.transport], o.payload, o.batch, o.threads, r.mps, r.gbs, r.p50, r.p99, r.p999,
               r.cpu_us, r.cpu_client_us, r.cpu_server_us, (unsigned long long)r.errors,
               o.block ? "block" : "spin", o.block ? o.spin_us : 0);
        if (o.peers)
            printf(", \"peers\": {\"redis_ping\": {\"calls_mps\": %.4f}, "
                   "\"redis_get\": {\"calls_mps\": %.4f}}", ping, get);
        printf("}\n");
    } else {
        char wt[48];
        printf("rpc %s: payload %zu B, batch %d, threads %d, workers %d, clients %s, %.1f s\n",
               tn[o.transport], o.payload, o.batch, o.threads, o.workers,
               wait_text(&o, wt, sizeof wt), r.secs);
        printf("  calls      %.3f M calls/s (%llu calls, %llu errors)\n", r.mps,
               (unsigned long long)r.calls, (unsigned long long)r.errors);
        printf("  payload    %.3f GB/s (request + response)\n", r.gbs);
        printf("  latency    p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", r.p50, r.p99, r.p999);
        printf("  cpu        %.2f us per call (client threads %.2f, server %.2f; this process)\n",
               r.cpu_us, r.cpu_client_us, r.cpu_server_us);
        if (o.peers) {
            if (peers_rc)
                printf("  redis      FAILED to run redis-server/redis-benchmark\n");
            else
                printf("  redis      PING %.3f M/s, GET %.3f M/s (pipeline %d, %d conns); "
                       "dhps/redis-PING %.2fx, dhps/redis-GET %.2fx\n", ping, get, o.batch,
                       o.threads, ping > 0 ? r.mps / ping : 0, get > 0 ? r.mps / get : 0);
        }
    }
    return r.errors || peers_rc ? 1 : 0;
}

/*
 * dhps-bench rpc: the RPC library on one transport, beside redis on loopback.
 *
 *   dhps-bench rpc --transport tcp|shm|verbs [--payload B] [--batch K] [--threads T]
 *                  [--workers W] [--seconds S] [--peers] [--json]
 *
 * An in-process server (W workers, echo handler: the response has the request's size)
 * and T client threads, each with its own client and channel, keeping K calls in
 * flight (zero-copy start/send, completions in callbacks). Reports small-call rate
 * (M calls/s), payload throughput (request + response bytes, GB/s), p50/p99/p99.9
 * latency (send to callback) and CPU time per call (getrusage of the whole process:
 * both sides run here). --peers runs redis-server on 127.0.0.1 and redis-benchmark
 * (PING, SET then GET of that value, pipeline K, T connections, value size B) in the
 * same run.
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

#include "dhps/rpc.h"
#include "util.h"

#define M_ECHO 1
#define MAX_LAT (1u << 22)

typedef struct opts {
    int transport;
    size_t payload;
    int batch, threads, workers;
    double seconds;
    bool peers, json;
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
    if ((uint32_t)o->batch > cp.verbs_slots)
        cp.verbs_slots = (uint32_t)(o->batch > 1024 ? 1024 : o->batch);
    dhps_rpc_client *c = NULL;
    dhps_rpc_channel *ch = NULL;
    if ((w->rc = dhps_rpc_client_create(&cp, &c)))
        return NULL;
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.port = w->port;
    chp.require = o->transport;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(o->transport);
    if ((w->rc = dhps_rpc_channel_open(c, &chp, &ch))) {
        dhps_rpc_client_destroy(c);
        return NULL;
    }
    while (!atomic_load(w->go))
        ;
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
        dhps_rpc_client_poll(c, 0);
    }
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
               "defaults: payload 32, batch 16, threads 1, workers 1, seconds 3\n");
}

int bench_rpc_main(int argc, char **argv)
{
    opts o = {.transport = -1, .payload = 32, .batch = 16, .threads = 1, .workers = 1,
              .seconds = 3};
    static const struct option lo[] = {
        {"transport", required_argument, 0, 't'}, {"payload", required_argument, 0, 'p'},
        {"batch", required_argument, 0, 'b'},     {"threads", required_argument, 0, 'T'},
        {"workers", required_argument, 0, 'w'},   {"seconds", required_argument, 0, 's'},
        {"peers", no_argument, 0, 'P'},           {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't':
            o.transport = !strcmp(optarg, "tcp") ? DHPS_RPC_TCP
                          : !strcmp(optarg, "shm") ? DHPS_RPC_SHM
                          : !strcmp(optarg, "verbs") ? DHPS_RPC_VERBS : -2;
            break;
        case 'p': o.payload = strtoul(optarg, NULL, 0); break;
        case 'b': o.batch = atoi(optarg); break;
        case 'T': o.threads = atoi(optarg); break;
        case 'w': o.workers = atoi(optarg); break;
        case 's': o.seconds = atof(optarg); break;
        case 'P': o.peers = true; break;
        case 'j': o.json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.transport < 0 || o.batch < 1 || o.threads < 1 || o.threads > 64 || o.workers < 1 ||
        o.payload > (8u << 20) || o.seconds <= 0) {
        usage(stderr);
        return 2;
    }
    if (o.transport == DHPS_RPC_VERBS && !dhps_rpc_verbs_available()) {
        fprintf(stderr, "dhps-bench rpc: no active RDMA verbs device on this host\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.workers = (uint32_t)o.workers;
    sp.secret = "bench";
    sp.secret_len = 5;
    sp.max_msg = (uint32_t)(o.payload < 4096 ? 4096 : o.payload);
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
    worker_arg *wa = calloc((size_t)o.threads, sizeof *wa);
    pthread_t *th = calloc((size_t)o.threads, sizeof *th);
    for (int i = 0; i < o.threads; i++) {
        wa[i] = (worker_arg){.o = &o, .port = dhps_rpc_server_port(s), .go = &go, .stop = &stop};
        wa[i].lat = malloc(MAX_LAT * sizeof *wa[i].lat);
        pthread_create(&th[i], NULL, client_main, &wa[i]);
    }
    usleep(300000); /* channels open */
    double c0 = cpu_s();
    uint64_t t0 = dhps_mono_ns();
    atomic_store(&go, true);
    usleep((useconds_t)(o.seconds * 1e6));
    atomic_store(&stop, true);
    uint64_t t1 = dhps_mono_ns();
    double c1 = cpu_s();
    uint64_t calls = 0, errors = 0, bytes = 0, nlat = 0;
    int open_err = 0;
    for (int i = 0; i < o.threads; i++) {
        pthread_join(th[i], NULL);
        if (wa[i].rc)
            open_err = wa[i].rc;
        calls += wa[i].calls;
        errors += wa[i].errors;
        bytes += wa[i].bytes;
        nlat += wa[i].nlat;
    }
    dhps_rpc_server_destroy(s);
    if (open_err) {
        fprintf(stderr, "dhps-bench rpc: channel: %s\n", dhps_strerror(open_err));
        return 1;
    }
    uint32_t *all = malloc((nlat ? nlat : 1) * sizeof *all);
    uint64_t k = 0;
    for (int i = 0; i < o.threads; i++) {
        memcpy(all + k, wa[i].lat, wa[i].nlat * sizeof *all);
        k += wa[i].nlat;
        free(wa[i].lat);
    }
    qsort(all, nlat, sizeof *all, cmp_u32);
    double secs = (double)(t1 - t0) / 1e9;
    double mps = (double)calls / secs / 1e6, gbs = (double)bytes / secs / 1e9;
    double p50 = nlat ? all[nlat / 2] / 1e3 : 0, p99 = nlat ? all[nlat * 99 / 100] / 1e3 : 0,
           p999 = nlat ? all[nlat * 999 / 1000] / 1e3 : 0;
    double cpu_us = calls ? (c1 - c0) * 1e6 / (double)calls : 0;
    double ping = 0, get = 0;
    int peers_rc = o.peers ? run_peers(&o, &ping, &get) : 0;
    static const char *tn[] = {"tcp", "shm", "verbs"};
    if (o.json) {
        printf("{\"transport\": \"%s\", \"payload\": %zu, \"batch\": %d, \"threads\": %d, "
               "\"calls_mps\": %.4f, \"gbytes_s\": %.4f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
               "\"p999_us\": %.2f, \"cpu_us_per_call\": %.3f, \"errors\": %llu",
               tn[o.transport], o.payload, o.batch, o.threads, mps, gbs, p50, p99, p999, cpu_us,
               (unsigned long long)errors);
        if (o.peers)
            printf(", \"peers\": {\"redis_ping\": {\"calls_mps\": %.4f}, "
                   "\"redis_get\": {\"calls_mps\": %.4f}}", ping, get);
        printf("}\n");
    } else {
        printf("rpc %s: payload %zu B, batch %d, threads %d, workers %d, %.1f s\n", tn[o.transport],
               o.payload, o.batch, o.threads, o.workers, secs);
        printf("  calls      %.3f M calls/s (%llu calls, %llu errors)\n", mps,
               (unsigned long long)calls, (unsigned long long)errors);
        printf("  payload    %.3f GB/s (request + response)\n", gbs);
        printf("  latency    p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", p50, p99, p999);
        printf("  cpu        %.2f us per call (client + server, this process)\n", cpu_us);
        if (o.peers) {
            if (peers_rc)
                printf("  redis      FAILED to run redis-server/redis-benchmark\n");
            else
                printf("  redis      PING %.3f M/s, GET %.3f M/s (pipeline %d, %d conns); "
                       "dhps/redis-GET %.2fx\n", ping, get, o.batch, o.threads,
                       get > 0 ? mps / get : 0);
        }
    }
    free(all);
    free(wa);
    free(th);
    return errors || peers_rc ? 1 : 0;
}

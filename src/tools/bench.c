/*
 * dhps bench: lookup/update workloads against a running cluster (--cluster DIR or
 * --map FILE --secret FILE), or against a one-node cluster it starts itself (one rpc
 * worker, TCP only, pinned to one core) and stops at the end. With --peers, the same
 * keys and values also go into redis-server (MGET/MSET) and memcached (multi-get /
 * buffered sets), each started here on a 127.0.0.1 ephemeral port with one server
 * core (redis is single-threaded; memcached -t 1), and all three are measured in the
 * same run with the same client threads, one after the other.
 *
 * Method (docs/tools.md): keys 0..N-1 with the deterministic sample rows (value_bytes
 * = 4 x dim); T client threads, each with its own connection(s), send batches of B
 * keys drawn uniformly or Zipf; closed loop (next batch when the previous returns) or
 * open loop (--rate batches/s over all threads, latency from the scheduled start).
 * Reported: keys/s, batch latency p50/p99/p99.9 (log-linear histogram, ~4 %), errors,
 * missing keys; --json prints one object.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <libmemcached/memcached.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/client.h"
#include "dhps/error.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"
#include "workload.h"

struct bench_opts {
    tools_target tgt;
    bool own, peers, json, quiet;
    const char *table;
    uint32_t dim, batch, threads, shards, server_workers;
    int server_cpu;
    uint64_t keys, timeout_ms;
    double seconds, zipf, rate, update_share;
};

static void msleep(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A free TCP port on 127.0.0.1 (bound and released; a tiny race, loopback only). */
static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void pin_to(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

/* fork + exec argv with stdout/stderr to log (or /dev/null), pinned to cpu. */
static pid_t spawn(char *const argv[], const char *log, int cpu)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    pin_to(cpu);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* peers die with the bench, even on a crash */
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
}

static void stop_child(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    int st;
    for (int i = 0; i < 200 && waitpid(pid, &st, WNOHANG) == 0; i++)
        msleep(10);
    if (waitpid(pid, &st, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
}

static void key_text(uint64_t k, char out[17])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, k >>= 4)
        out[i] = hx[k & 15];
    out[16] = 0;
}

/* ---- redis backend ------------------------------------------------------------------ */

struct redis_th {
    redisContext *c;
    const char **argv;
    size_t *argl;
    char (*kt)[17];
    uint32_t row_bytes;
};
static uint16_t g_redis_port;
static uint32_t g_row_bytes, g_batch;

static void redis_close(void *th)
{
    struct redis_th *t = th;
    if (t->c)
        redisFree(t->c);
    free(t->argv);
    free(t->argl);
    free(t->kt);
    free(t);
}

static void *redis_open(void *arg)
{
    struct redis_th *t = calloc(1, sizeof *t);
    uint32_t n = 2 * g_batch + 1;
    if (!t)
        return NULL;
    t->c = redisConnect("127.0.0.1", g_redis_port);
    t->argv = calloc(n, sizeof *t->argv);
    t->argl = calloc(n, sizeof *t->argl);
    t->kt = calloc(g_batch, sizeof *t->kt);
    t->row_bytes = g_row_bytes;
    if (!t->c || t->c->err || !t->argv || !t->argl || !t->kt) {
        redis_close(t);
        return NULL;
    }
    return t;
}
static int redis_lookup(void *th, const uint64_t *keys, uint32_t n, void *out, uint32_t *missing)
{
    struct redis_th *t = th;
    t->argv[0] = "MGET";
    t->argl[0] = 4;
    for (uint32_t i = 0; i < n; i++) {
        key_text(keys[i], t->kt[i]);
        t->argv[i + 1] = t->kt[i];
        t->argl[i + 1] = 16;
    }
    redisReply *r = redisCommandArgv(t->c, (int)n + 1, t->argv, t->argl);
    if (!r)
        return DHPS_E_UNREACHABLE;
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        rc = DHPS_E_MALFORMED;
    } else {
        for (uint32_t i = 0; i < n; i++) {
            redisReply *e = r->element[i];
            if (e->type == REDIS_REPLY_STRING && e->len == t->row_bytes)
                memcpy((uint8_t *)out + (size_t)i * t->row_bytes, e->str, t->row_bytes);
            else
                (*missing)++;
        }
    }
    freeReplyObject(r);
    return rc;
}
static int redis_update(void *th, const uint64_t *keys, uint32_t n, const void *rows)
{
    struct redis_th *t = th;
    t->argv[0] = "MSET";
    t->argl[0] = 4;
    for (uint32_t i = 0; i < n; i++) {
        key_text(keys[i], t->kt[i]);
        t->argv[1 + 2 * i] = t->kt[i];
        t->argl[1 + 2 * i] = 16;
        t->argv[2 + 2 * i] = (const char *)rows + (size_t)i * t->row_bytes;
        t->argl[2 + 2 * i] = t->row_bytes;
    }
    redisReply *r = redisCommandArgv(t->c, 2 * (int)n + 1, t->argv, t->argl);
    if (!r)
        return DHPS_E_UNREACHABLE;
    int rc = r->type == REDIS_REPLY_STATUS ? 0 : DHPS_E_HANDLER;
    freeReplyObject(r);
    return rc;
}

/* ---- memcached backend -------------------------------------------------------------- */

struct mc_th {
    memcached_st *m;
    const char **kp;
    size_t *kl;
    char (*kt)[17];
    uint64_t *hk;      /* open-addressing map key -> batch index, 4 x batch slots */
    uint32_t *hv, hmask;
    uint32_t row_bytes;
    int fd;            /* plain socket for pipelined sets (mc_update), -1 until used */
};
static uint16_t g_mc_port;
static void mc_close(void *th);

static void *mc_open(void *arg)
{
    struct mc_th *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->m = memcached_create(NULL);
    t->kp = calloc(g_batch, sizeof *t->kp);
    t->kl = calloc(g_batch, sizeof *t->kl);
    t->kt = calloc(g_batch, sizeof *t->kt);
    uint32_t hs = 16;
    while (hs < 4 * g_batch)
        hs *= 2;
    t->hk = calloc(hs, sizeof *t->hk);
    t->hv = calloc(hs, sizeof *t->hv);
    t->hmask = hs - 1;
    t->row_bytes = g_row_bytes;
    t->fd = -1;
    if (!t->m || !t->kp || !t->kl || !t->kt || !t->hk || !t->hv ||
        memcached_server_add(t->m, "127.0.0.1", g_mc_port) != MEMCACHED_SUCCESS) {
        mc_close(t);
        return NULL;
    }
    memcached_behavior_set(t->m, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
    /* connect now: buffered writes on a not yet connected instance trip an assertion
     * inside libmemcached 1.1 */
    char kb[17];
    key_text(0, kb);
    memcached_return_t rc;
    size_t vl;
    uint32_t fl;
    free(memcached_get(t->m, kb, 16, &vl, &fl, &rc));
    if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND) {
        mc_close(t);
        return NULL;
    }
    return t;
}
static void mc_close(void *th)
{
    struct mc_th *t = th;
    if (t->m)
        memcached_free(t->m);
    if (t->fd >= 0)
        close(t->fd);
    free(t->kp);
    free(t->kl);
    free(t->kt);
    free(t->hk);
    free(t->hv);
    free(t);
}
static uint32_t mc_slot(uint64_t k, uint32_t mask)
{
    return (uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 40) & mask;
}
static int mc_lookup(void *th, const uint64_t *keys, uint32_t n, void *out, uint32_t *missing)
{
    struct mc_th *t = th;
    memset(t->hv, 0xff, (t->hmask + 1) * sizeof *t->hv);
    for (uint32_t i = 0; i < n; i++) {
        key_text(keys[i], t->kt[i]);
        t->kp[i] = t->kt[i];
        t->kl[i] = 16;
        uint32_t h = mc_slot(keys[i], t->hmask);
        while (t->hv[h] != UINT32_MAX && t->hk[h] != keys[i])
            h = (h + 1) & t->hmask;
        t->hk[h] = keys[i];
        t->hv[h] = i;
    }
    if (memcached_mget(t->m, t->kp, t->kl, n) != MEMCACHED_SUCCESS)
        return DHPS_E_UNREACHABLE;
    /* results come back in server order: place them through the key -> index map */
    uint32_t got = 0;
    memcached_return_t rc;
    memcached_result_st *res;
    while ((res = memcached_fetch_result(t->m, NULL, &rc)) != NULL) {
        const char *k = memcached_result_key_value(res);
        size_t vl = memcached_result_length(res);
        if (memcached_result_key_length(res) == 16 && vl == t->row_bytes) {
            char kb[17];
            memcpy(kb, k, 16);
            kb[16] = 0;
            uint64_t key = strtoull(kb, NULL, 16);
            uint32_t h = mc_slot(key, t->hmask);
            while (t->hv[h] != UINT32_MAX && t->hk[h] != key)
                h = (h + 1) & t->hmask;
            if (t->hv[h] != UINT32_MAX) {
                memcpy((uint8_t *)out + (size_t)t->hv[h] * t->row_bytes,
                       memcached_result_value(res), vl);
                got++;
            }
        }
        memcached_result_free(res);
    }
    *missing += n - (got < n ? got : n);
    return 0;
}
/* Sets go over a plain socket in the ASCII protocol, pipelined: one write of every
 * "set" of the batch, then the n "STORED" replies (libmemcached 1.1's buffered writes
 * trip an assertion on this setup, and unbuffered sets cost a round trip each). */
static int mc_update(void *th, const uint64_t *keys, uint32_t n, const void *rows)
{
    struct mc_th *t = th;
    if (t->fd < 0) {
        t->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_mc_port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int one = 1;
        setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (t->fd < 0 || connect(t->fd, (struct sockaddr *)&a, sizeof a) < 0) {
            if (t->fd >= 0)
                close(t->fd);
            t->fd = -1;
            return DHPS_E_UNREACHABLE;
        }
    }
    size_t cap = (size_t)n * (t->row_bytes + 64), len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        char kb[17];
        key_text(keys[i], kb);
        len += (size_t)sprintf(buf + len, "set %s 0 0 %u\r\n", kb, t->row_bytes);
        memcpy(buf + len, (const char *)rows + (size_t)i * t->row_bytes, t->row_bytes);
        len += t->row_bytes;
        buf[len++] = '\r';
        buf[len++] = '\n';
    }
    int rc = 0;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(t->fd, buf + off, len - off);
        if (w <= 0) {
            rc = DHPS_E_UNREACHABLE;
            goto out;
        }
        off += (size_t)w;
    }
    /* count reply lines: every set answers one line ("STORED" or an error) */
    uint32_t lines = 0, stored = 0;
    char rb[8192], last[8] = "";
    size_t ll = 0;
    while (lines < n) {
        ssize_t r = read(t->fd, rb, sizeof rb);
        if (r <= 0) {
            rc = DHPS_E_UNREACHABLE;
            goto out;
        }
        for (ssize_t i = 0; i < r; i++) {
            if (rb[i] == '\n') {
                lines++;
                stored += ll >= 6 && !memcmp(last, "STORED", 6);
                ll = 0;
            } else if (ll < sizeof last) {
                last[ll++] = rb[i];
            }
        }
    }
    if (stored != n)
        rc = DHPS_E_HANDLER;
out:
    free(buf);
    return rc;
}

/* ---- peers: start, load, stop ------------------------------------------------------- */

static int wait_redis(uint16_t port)
{
    for (int i = 0; i < 500; i++) {
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return 0;
        } else if (c) {
            redisFree(c);
        }
        msleep(10);
    }
    return DHPS_E_UNREACHABLE;
}

static int wait_mc(uint16_t port)
{
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return 0;
        msleep(10);
    }
    return DHPS_E_UNREACHABLE;
}

/* Load keys 0..n-1 with the sample rows through a backend's update, batch by batch. */
static int load_backend(const wl_backend *b, uint64_t n, uint32_t dim, uint32_t batch)
{
    void *th = b->open(b->arg);
    uint64_t *keys = malloc(batch * sizeof *keys);
    float *rows = malloc((size_t)batch * dim * sizeof *rows);
    int rc = th && keys && rows ? 0 : -ENOMEM;
    for (uint64_t done = 0; !rc && done < n;) {
        uint32_t k = n - done < batch ? (uint32_t)(n - done) : batch;
        for (uint32_t i = 0; i < k; i++) {
            keys[i] = done + i;
            tools_sample_row(done + i, dim, rows + (size_t)i * dim);
        }
        rc = b->update(th, keys, k, rows);
        done += k;
    }
    if (th)
        b->close(th);
    free(rows);
    free(keys);
    return rc;
}

/* ---- output ------------------------------------------------------------------------- */

struct bench_out {
    const char *name;
    wl_result r;
    bool ran;
};

static double kmps(const wl_result *r) { return r->seconds > 0 ? (double)r->keys / r->seconds / 1e6 : 0; }
static double q_us(const wl_result *r, double q) { return tools_hist_quantile(&r->hist, q) / 1e3; }

static void print_human(const struct bench_opts *o, const struct bench_out *res, size_t n)
{
    printf("dhps bench: %s, %s keys, %u threads, batches of %u keys, values %u B, %s loop%s, "
           "%.1f s each\n", o->update_share >= 1 ? "updates" : o->update_share > 0 ? "mixed"
                                                                                    : "lookups",
           o->zipf > 0 ? "zipf" : "uniform", o->threads, o->batch, o->dim * 4,
           o->rate > 0 ? "open" : "closed", o->rate > 0 ? " (rate in batches/s)" : "",
           o->seconds);
    printf("  %-10s %10s %10s %10s %10s %10s %8s %8s\n", "store", "Mkeys/s", "batches/s",
           "p50 us", "p99 us", "p99.9 us", "errors", "missing");
    for (size_t i = 0; i < n; i++) {
        if (!res[i].ran)
            continue;
        const wl_result *r = &res[i].r;
        printf("  %-10s %10.3f %10.0f %10.0f %10.0f %10.0f %8llu %8llu\n", res[i].name, kmps(r),
               r->seconds > 0 ? (double)r->batches / r->seconds : 0.0, q_us(r, 0.5),
               q_us(r, 0.99), q_us(r, 0.999), (unsigned long long)r->errors,
               (unsigned long long)r->missing);
    }
    if (n == 3 && res[1].ran && res[2].ran && kmps(&res[1].r) > 0 && kmps(&res[2].r) > 0) {
        printf("  dhps / redis: %.2fx keys/s (target >= 5x), p99 %.2f of redis's (target <= "
               "0.10)\n", kmps(&res[0].r) / kmps(&res[1].r),
               q_us(&res[1].r, 0.99) > 0 ? q_us(&res[0].r, 0.99) / q_us(&res[1].r, 0.99) : 0);
        printf("  dhps / memcached: %.2fx keys/s (target >= 2x)\n",
               kmps(&res[0].r) / kmps(&res[2].r));
    }
}

static void print_json(const struct bench_opts *o, const struct bench_out *res, size_t n)
{
    const wl_result *r = &res[0].r;
    printf("{\"store\":\"dhps\",\"mode\":\"%s\",\"dist\":\"%s\",\"loop\":\"%s\",\"threads\":%u,"
           "\"batch\":%u,\"value_bytes\":%u,\"keys\":%llu,\"seconds\":%.3f,\"keys_mps\":%.4f,"
           "\"batches_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"errors\":%llu,\"missing\":%llu",
           o->update_share >= 1 ? "update" : o->update_share > 0 ? "mixed" : "lookup",
           o->zipf > 0 ? "zipf" : "uniform", o->rate > 0 ? "open" : "closed", o->threads,
           o->batch, o->dim * 4, (unsigned long long)o->keys, r->seconds, kmps(r),
           r->seconds > 0 ? (double)r->batches / r->seconds : 0.0, q_us(r, 0.5), q_us(r, 0.99),
           q_us(r, 0.999), (unsigned long long)r->errors, (unsigned long long)r->missing);
    if (n > 1) {
        printf(",\"peers\":{");
        for (size_t i = 1; i < n; i++) {
            const wl_result *p = &res[i].r;
            printf("%s\"%s\":{\"keys_mps\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
                   "\"errors\":%llu,\"missing\":%llu}", i > 1 ? "," : "", res[i].name, kmps(p),
                   q_us(p, 0.5), q_us(p, 0.99), q_us(p, 0.999), (unsigned long long)p->errors,
                   (unsigned long long)p->missing);
        }
        printf("}");
    }
    printf("}\n");
}

/* ---- main --------------------------------------------------------------------------- */

static const char bench_usage[] =
    "usage: dhps bench [--cluster DIR | --map FILE --secret FILE]   (default: start a\n"
    "                  one-node cluster: 1 worker, TCP, pinned to one core)\n"
    "                  [--mode lookup|update|mixed] [--update-share 0.1] [--dist zipf|uniform]\n"
    "                  [--zipf 0.99] [--batch 1000] [--value-bytes 128] [--keys 100000]\n"
    "                  [--threads 2] [--seconds 3] [--rate BATCHES_PER_S (open loop)]\n"
    "                  [--peers] [--json] [--table bench] [--shards 1] [--server-cpu N|-1]\n"
    "                  [--server-workers 1] [--timeout-ms 1000 (dhps call deadline)]\n";

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
        {"server-workers", required_argument, 0, 'W'}, {"help", no_argument, 0, 'h'},
        {"timeout-ms", required_argument, 0, 'O'},
        {0, 0, 0, 0}};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct bench_opts o = {.table = "bench", .dim = 32, .batch = 1000, .threads = 2,
                           .shards = 1, .server_workers = 1, .keys = 100000, .seconds = 3,
                           .zipf = 0.99, .timeout_ms = 1000, .server_cpu = ncpu > 1 ? (int)ncpu - 1 : -1};
    const char *mode = "lookup", *dist = "zipf";
    uint64_t v;
    bool share_given = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:m:s:M:u:D:z:b:v:k:j:T:r:PJt:S:C:W:O:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o.tgt.cluster_dir = optarg; break;
        case 'm': o.tgt.map = optarg; break;
        case 's': o.tgt.secret = optarg; break;
        case 'M': mode = optarg; break;
        case 'u': o.update_share = atof(optarg); share_given = true; break;
        case 'D': dist = optarg; break;
        case 'z': o.zipf = atof(optarg); break;
        case 'b': if (!tools_parse_u64("bench", "--batch", optarg, &v) || !v || v > 65536) return 2;
                  o.batch = (uint32_t)v; break;
        case 'v': if (!tools_parse_u64("bench", "--value-bytes", optarg, &v) || !v || v % 4 ||
                      v > 16384) { fprintf(stderr, "dhps bench: --value-bytes: a multiple of 4, 4..16384\n"); return 2; }
                  o.dim = (uint32_t)(v / 4); break;
        case 'k': if (!tools_parse_u64("bench", "--keys", optarg, &o.keys) || !o.keys) return 2; break;
        case 'j': if (!tools_parse_u64("bench", "--threads", optarg, &v) || !v || v > 256) return 2;
                  o.threads = (uint32_t)v; break;
        case 'T': o.seconds = atof(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'P': o.peers = true; break;
        case 'J': o.json = true; break;
        case 't': o.table = optarg; break;
        case 'S': if (!tools_parse_u64("bench", "--shards", optarg, &v) || !v || v > 65536) return 2;
                  o.shards = (uint32_t)v; break;
        case 'C': o.server_cpu = atoi(optarg); break;
        case 'W': if (!tools_parse_u64("bench", "--server-workers", optarg, &v) || !v || v > 64) return 2;
                  o.server_workers = (uint32_t)v; break;
        case 'O':
            if (!tools_parse_u64("bench", "--timeout-ms", optarg, &o.timeout_ms) || !o.timeout_ms)
                return 2;
            break;
        case 'h': printf("%s", bench_usage); return 0;
        default: fprintf(stderr, "%s", bench_usage); return 2;
        }
    }
    if (optind != argc || o.seconds <= 0) {
        fprintf(stderr, "%s", bench_usage);
        return 2;
    }
    if (!strcmp(mode, "update"))
        o.update_share = 1;
    else if (!strcmp(mode, "mixed"))
        o.update_share = share_given ? o.update_share : 0.1;
    else if (!strcmp(mode, "lookup"))
        o.update_share = 0;
    else {
        fprintf(stderr, "dhps bench: --mode lookup, update or mixed\n");
        return 2;
    }
    if (!strcmp(dist, "uniform"))
        o.zipf = 0;
    else if (strcmp(dist, "zipf") || o.zipf <= 0) {
        fprintf(stderr, "dhps bench: --dist zipf (with --zipf S > 0) or uniform\n");
        return 2;
    }
    if (o.server_cpu >= ncpu)
        o.server_cpu = -1;
    o.own = !o.tgt.cluster_dir && !o.tgt.map && !o.tgt.secret;

    char tmp[] = "/tmp/dhps-bench-XXXXXX", server[PATH_MAX];
    pid_t redis_pid = 0, mc_pid = 0;
    tools_conn *conn = NULL;
    int rc = 1, e;
    bool own_up = false;
    struct bench_out res[3] = {{.name = "dhps"}, {.name = "redis"}, {.name = "memcached"}};
    g_row_bytes = o.dim * 4;
    g_batch = o.batch;
    FILE *info = o.json ? stderr : stdout; /* progress lines stay off the JSON */

    if (o.own) {
        if (!up_find_server(NULL, server, sizeof server)) {
            fprintf(stderr, "dhps bench: no dhps-server binary to start (or give --cluster)\n");
            return 1;
        }
        if (!mkdtemp(tmp)) {
            fprintf(stderr, "dhps bench: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
        char self[PATH_MAX], sh[16], wk[16];
        ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
        if (sl <= 0)
            goto out;
        self[sl] = 0;
        snprintf(sh, sizeof sh, "%u", o.shards);
        snprintf(wk, sizeof wk, "%u", o.server_workers);
        char *const av[] = {self, "up", "--dir", tmp, "--nodes", "1", "--azs", "1", "--pods",
                            "1", "--replicas", "1", "--shards", sh, "--workers", wk,
                            "--no-shm", "--no-load", "--quiet", "--table", (char *)o.table,
                            "--dim", "32", "--server", server, NULL};
        char dimbuf[16];
        snprintf(dimbuf, sizeof dimbuf, "%u", o.dim);
        ((char **)av)[22] = dimbuf;
        char log[PATH_MAX];
        snprintf(log, sizeof log, "%s/up.log", tmp);
        pid_t up = spawn(av, log, o.server_cpu); /* servers inherit the pinning */
        int st;
        own_up = true;
        if (up < 0 || waitpid(up, &st, 0) != up || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "dhps bench: starting the local cluster failed (%s)\n", log);
            goto out;
        }
        o.tgt.cluster_dir = tmp;
        fprintf(info, "dhps bench: started a one-node cluster in %s (1 worker, TCP, cpu %d)\n",
                tmp, o.server_cpu);
    }
    if (o.server_cpu >= 0 && ncpu > 1) {
        /* client threads (created later, inheriting this mask) keep off the server core */
        cpu_set_t set;
        CPU_ZERO(&set);
        for (long i = 0; i < ncpu && i < CPU_SETSIZE; i++)
            if (i != o.server_cpu)
                CPU_SET((int)i, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
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

    wl_params wp = {.nkeys = o.keys, .row_bytes = o.dim * 4, .batch = o.batch,
                    .threads = o.threads, .seconds = o.seconds, .zipf = o.zipf,
                    .rate = o.rate, .update_share = o.update_share, .seed = 11,
                    .distinct = true};
    if ((e = wl_run(&wp, up_dhps_backend(conn->client, o.table, o.dim, o.timeout_ms * 1000),
                    &res[0].r)) < 0)
        goto out;
    res[0].ran = true;

    if (o.peers) {
        char rp[16], mp[16], cpus[16];
        g_redis_port = free_port();
        g_mc_port = free_port();
        snprintf(rp, sizeof rp, "%u", g_redis_port);
        snprintf(mp, sizeof mp, "%u", g_mc_port);
        snprintf(cpus, sizeof cpus, "%d", o.server_cpu);
        char *const rav[] = {"redis-server", "--bind", "127.0.0.1", "--port", rp, "--save", "",
                             "--appendonly", "no", "--protected-mode", "no", "--daemonize",
                             "no", "--io-threads", "1", NULL};
        char *const mav_root[] = {"memcached", "-l", "127.0.0.1", "-p", mp, "-U", "0", "-t",
                                  "1", "-m", "4096", "-c", "4096", "-u", "root", NULL};
        char *const mav[] = {"memcached", "-l", "127.0.0.1", "-p", mp, "-U", "0", "-t", "1",
                             "-m", "4096", "-c", "4096", NULL};
        redis_pid = spawn(rav, NULL, o.server_cpu);
        mc_pid = spawn(geteuid() == 0 ? mav_root : mav, NULL, o.server_cpu);
        if (redis_pid < 0 || mc_pid < 0 || wait_redis(g_redis_port) < 0 ||
            wait_mc(g_mc_port) < 0) {
            fprintf(stderr, "dhps bench: could not start redis-server/memcached on 127.0.0.1 "
                    "(installed? Debian packages redis-server, memcached)\n");
            goto out;
        }
        wl_backend rb = {.name = "redis", .open = redis_open, .lookup = redis_lookup,
                         .update = redis_update, .close = redis_close};
        wl_backend mb = {.name = "memcached", .open = mc_open, .lookup = mc_lookup,
                         .update = mc_update, .close = mc_close};
        if ((e = load_backend(&rb, o.keys, o.dim, o.batch)) < 0 ||
            (e = load_backend(&mb, o.keys, o.dim, o.batch)) < 0) {
            fprintf(stderr, "dhps bench: loading the peers failed: %s\n", dhps_strerror(e));
            goto out;
        }
        fprintf(info, "dhps bench: loaded the same keys into redis (:%u) and memcached (:%u), "
                "server cpu %d\n", g_redis_port, g_mc_port, o.server_cpu);
        fflush(info);
        if (wl_run(&wp, &rb, &res[1].r) < 0 || wl_run(&wp, &mb, &res[2].r) < 0)
            goto out;
        res[1].ran = res[2].ran = true;
    }
    if (o.json)
        print_json(&o, res, o.peers ? 3 : 1);
    else
        print_human(&o, res, o.peers ? 3 : 1);
    rc = 0;
out:
    tools_conn_close(conn);
    stop_child(redis_pid);
    stop_child(mc_pid);
    if (own_up) {
        up_stop_dir(tmp, 10, true);
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "dhps bench: could not remove %s\n", tmp);
    }
    return rc;
}

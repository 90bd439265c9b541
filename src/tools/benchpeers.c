/*
 * dhps bench's peer stores (bench.h): redis-server and memcached started on 127.0.0.1
 * with the same server thread count as the dhps cluster, loaded with the same keys and
 * values, and driven through wl_backend: Redis MGET/MSET over hiredis
 * (redisCommandArgv), memcached multi-get over libmemcached (results placed by a key ->
 * index hash) and pipelined ASCII sets on a plain socket. Keys are the 16-hex-digit text
 * of the dhps key.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <libmemcached/memcached.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/error.h"
#include "tools.h"
#include "up.h"

static void msleep(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

pid_t bench_spawn(char *const argv[], const char *log, const cpu_set_t *cpus)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (cpus)
        sched_setaffinity(0, sizeof *cpus, cpus);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* peers die with the bench, even on a crash */
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
}

void bench_stop_child(pid_t pid)
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
    const bench_peer *p = arg;
    struct redis_th *t = calloc(1, sizeof *t);
    uint32_t n = 2 * p->batch + 1;
    if (!t)
        return NULL;
    t->c = redisConnect("127.0.0.1", p->port);
    t->argv = calloc(n, sizeof *t->argv);
    t->argl = calloc(n, sizeof *t->argl);
    t->kt = calloc(p->batch, sizeof *t->kt);
    t->row_bytes = p->row_bytes;
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
    uint16_t port;
    int fd;            /* plain socket for pipelined sets (mc_update), -1 until used */
};
static void mc_close(void *th);

static void *mc_open(void *arg)
{
    const bench_peer *p = arg;
    struct mc_th *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->m = memcached_create(NULL);
    t->kp = calloc(p->batch, sizeof *t->kp);
    t->kl = calloc(p->batch, sizeof *t->kl);
    t->kt = calloc(p->batch, sizeof *t->kt);
    uint32_t hs = 16;
    while (hs < 4 * p->batch)
        hs *= 2;
    t->hk = calloc(hs, sizeof *t->hk);
    t->hv = calloc(hs, sizeof *t->hv);
    t->hmask = hs - 1;
    t->row_bytes = p->row_bytes;
    t->port = p->port;
    t->fd = -1;
    if (!t->m || !t->kp || !t->kl || !t->kt || !t->hk || !t->hv ||
        memcached_server_add(t->m, "127.0.0.1", p->port) != MEMCACHED_SUCCESS) {
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
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(t->port)};
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

int bench_peers_start(bench_peer peers[2], uint32_t workers, const cpu_set_t *cpus,
                      uint32_t row_bytes, uint32_t batch)
{
    bench_peer *rd = &peers[0], *mc = &peers[1];
    uint16_t port[2] = {0, 0}; /* picked together, so redis and memcached never share one */
    int e = up_free_ports(port, 2);
    if (e < 0) {
        fprintf(stderr, "dhps bench: no free loopback port for redis/memcached: %s\n",
                strerror(-e));
        return e;
    }
    *rd = (bench_peer){.port = port[0], .row_bytes = row_bytes, .batch = batch,
                       .b = {.name = "redis", .open = redis_open, .lookup = redis_lookup,
                             .update = redis_update, .close = redis_close, .arg = rd}};
    *mc = (bench_peer){.port = port[1], .row_bytes = row_bytes, .batch = batch,
                       .b = {.name = "memcached", .open = mc_open, .lookup = mc_lookup,
                             .update = mc_update, .close = mc_close, .arg = mc}};
    char rp[16], mp[16], w[16];
    snprintf(rp, sizeof rp, "%u", rd->port);
    snprintf(mp, sizeof mp, "%u", mc->port);
    snprintf(w, sizeof w, "%u", workers);
    /* io-threads N counts the main thread; with threaded reads, parsing moves too (Redis
     * still runs the commands on the main thread, and turns the I/O threads off while
     * fewer than 2 N clients wait for replies). A NULL item ends an argv early: the
     * options after it are left out (threaded reads with 1 thread; -u root unless root) */
    char *const rav[] = {"redis-server", "--bind", "127.0.0.1", "--port", rp, "--save", "",
                         "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                         "--io-threads", w, workers > 1 ? "--io-threads-do-reads" : NULL,
                         "yes", NULL};
    char *const mav[] = {"memcached", "-l", "127.0.0.1", "-p", mp, "-U", "0", "-t", w, "-m",
                         "4096", "-c", "4096", geteuid() == 0 ? "-u" : NULL, "root", NULL};
    rd->pid = bench_spawn(rav, NULL, cpus);
    mc->pid = bench_spawn(mav, NULL, cpus);
    if (rd->pid < 0 || mc->pid < 0 || wait_redis(rd->port) < 0 || wait_mc(mc->port) < 0) {
        fprintf(stderr, "dhps bench: could not start redis-server/memcached on 127.0.0.1 "
                "(installed? Debian packages redis-server, memcached)\n");
        bench_peers_stop(peers);
        return DHPS_E_UNREACHABLE;
    }
    return 0;
}

int bench_peers_load(bench_peer peers[2], uint64_t n, uint32_t dim)
{
    int e = load_backend(&peers[0].b, n, dim, peers[0].batch);
    return e < 0 ? e : load_backend(&peers[1].b, n, dim, peers[1].batch);
}

void bench_peers_stop(bench_peer peers[2])
{
    for (int i = 0; i < 2; i++) {
        bench_stop_child(peers[i].pid);
        peers[i].pid = 0;
    }
}

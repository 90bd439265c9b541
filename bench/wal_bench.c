/*
 * dhps-bench wal: what the update log costs.
 *
 *   dhps-bench wal [--dir DIR] [--seconds 1] [--rounds 1] [--threads 4]
 *   dhps-bench wal --server [--dir DIR] [--seconds 3] [--rounds 3] [--clients 2]
 *                  [--batch 256] [--dim 32] [--shards 8]
 *
 * Log mode: appends of 1 KiB and 128 KiB records for --seconds each, in one run:
 *   dhps_wal never / interval (10 ms) / always (1 thread; --threads threads sharing
 *   group commits) -- the product's pwritev path -- and, beside them, two bare appenders
 *   writing the same record layout without checksums: pwrite (+ fdatasync per record for
 *   "always") and io_uring (liburing: one IORING_OP_WRITE per record, waited for, + a
 *   linked IORING_OP_FSYNC(DATASYNC) for "always"). Prints appends/s, MB/s, the ratio of
 *   each policy to dhps_wal never, and io_uring / pwrite.
 *
 * Server mode: an embedded dhps-server (--shards shards, one fp32 table) with the log off, on
 *   with the default policy (interval) and with fsync always, in turn each round, each
 *   fed by --clients rpc clients upserting batches of --batch random keys for --seconds;
 *   prints upserted keys/s and the ratio to log off per round, then median, min, max.
 *
 * DIR (default: a new directory under /tmp) must be on the disk being measured (tmpfs
 * makes fdatasync free). Everything written is removed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#ifdef DHPS_BENCH_URING
#include <liburing.h>
#endif

#include "bench.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "dhps/wal.h"
#include "util.h"

/* The --server run's cluster secret (the loader wants >= 32 bytes of several values). */
#define WB_SECRET "wal-bench-secret-7f3a9c2e51d84b60"

typedef struct wb_cfg {
    char dir[512];
    double seconds;
    uint32_t rounds, threads, clients, batch, dim, shards;
} wb_cfg;

static void rm_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR) {
            rm_files(p);
            rmdir(p);
        } else {
            unlink(p);
        }
    }
    if (d)
        closedir(d);
}

/* ---- log mode ----------------------------------------------------------------------- */

typedef struct wb_thr {
    dhps_wal *w;
    bool wait;
    size_t rec;
    uint64_t deadline, n;
    int rc;
} wb_thr;

static void *wal_thread(void *p)
{
    wb_thr *t = p;
    uint8_t *buf = malloc(t->rec);
    memset(buf, 0x5a, t->rec);
    struct iovec iov[2] = {{buf, 64}, {buf + 64, t->rec - 64}};
    while (dhps_mono_ns() < t->deadline) {
        for (int i = 0; i < 16; i++) {
            uint64_t lsn;
            if ((t->rc = dhps_wal_append(t->w, iov, 2, &lsn)) ||
                (t->wait && (t->rc = dhps_wal_wait(t->w, lsn))))
                goto out;
            t->n++;
        }
    }
out:
    free(buf);
    return NULL;
}

/* dhps_wal with policy pol, nthreads appenders (each waits when pol is ALWAYS). */
static double run_wal(const wb_cfg *c, int pol, uint32_t nthreads, size_t rec, double *fs)
{
    rm_files(c->dir);
    dhps_wal_params p;
    dhps_wal_params_init(&p);
    p.dir = c->dir;
    p.identity = "bench";
    p.sync = pol;
    dhps_wal *w;
    char err[512];
    if (dhps_wal_open(&p, 0, NULL, NULL, NULL, &w, err, sizeof err)) {
        fprintf(stderr, "dhps-bench wal: %s\n", err);
        return -1;
    }
    wb_thr t[64];
    pthread_t th[64];
    uint64_t t0 = dhps_mono_ns(), dl = t0 + (uint64_t)(c->seconds * 1e9);
    for (uint32_t i = 0; i < nthreads; i++) {
        t[i] = (wb_thr){.w = w, .wait = pol == DHPS_WAL_SYNC_ALWAYS, .rec = rec,
                        .deadline = dl};
        pthread_create(&th[i], NULL, wal_thread, &t[i]);
    }
    uint64_t n = 0;
    int rc = 0;
    for (uint32_t i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        n += t[i].n;
        rc = rc ? rc : t[i].rc;
    }
    double secs = (double)(dhps_mono_ns() - t0) / 1e9;
    dhps_wal_stats st;
    dhps_wal_get_stats(w, &st);
    *fs = (double)st.fsyncs / secs;
    dhps_wal_close(w);
    if (rc) {
        fprintf(stderr, "dhps-bench wal: append: %s\n", dhps_strerror(rc));
        return -1;
    }
    return (double)n / secs;
}

/* Bare appender: 24-byte header + payload per record at increasing offsets. */
static double run_bare(const wb_cfg *c, bool uring, bool sync, size_t rec)
{
    rm_files(c->dir);
    char path[1024];
    snprintf(path, sizeof path, "%s/bare.log", c->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = 24 + ((rec + 7) & ~(size_t)7);
    uint8_t *buf = aligned_alloc(4096, (len + 4095) & ~(size_t)4095);
    memset(buf, 0x5a, len);
    uint64_t off = 0, n = 0, t0 = dhps_mono_ns(), dl = t0 + (uint64_t)(c->seconds * 1e9);
    int rc = 0;
#ifdef DHPS_BENCH_URING
    struct io_uring ring;
    if (uring && (rc = io_uring_queue_init(8, &ring, 0))) {
        close(fd);
        free(buf);
        fprintf(stderr, "dhps-bench wal: io_uring_queue_init: %s\n", strerror(-rc));
        return -1;
    }
#else
    if (uring) {
        close(fd);
        free(buf);
        return -2;
    }
#endif
    while (!rc && dhps_mono_ns() < dl) {
        for (int i = 0; i < 16 && !rc; i++, n++) {
            if (!uring) {
                if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len ||
                    (sync && fdatasync(fd)))
                    rc = -errno;
            }
#ifdef DHPS_BENCH_URING
            else {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                io_uring_prep_write(sqe, fd, buf, (unsigned)len, off);
                int want = 1;
                if (sync) {
                    sqe->flags |= IOSQE_IO_LINK;
                    sqe = io_uring_get_sqe(&ring);
                    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
                    want = 2;
                }
                io_uring_submit_and_wait(&ring, (unsigned)want);
                for (int k = 0; k < want; k++) {
                    struct io_uring_cqe *cqe;
                    if ((rc = io_uring_wait_cqe(&ring, &cqe)))
                        break;
                    if (cqe->res < 0 || (k == 0 && (size_t)cqe->res != len))
                        rc = cqe->res < 0 ? cqe->res : -EIO;
                    io_uring_cqe_seen(&ring, cqe);
                }
            }
#endif
            off += len;
        }
    }
    double secs = (double)(dhps_mono_ns() - t0) / 1e9;
#ifdef DHPS_BENCH_URING
    if (uring)
        io_uring_queue_exit(&ring);
#endif
    close(fd);
    free(buf);
    unlink(path);
    if (rc) {
        fprintf(stderr, "dhps-bench wal: bare append: %s\n", strerror(-rc));
        return -1;
    }
    return (double)n / secs;
}

static int log_mode(const wb_cfg *c)
{
    static const size_t sizes[] = {1024, 128 * 1024};
    printf("dhps-bench wal: %s, %.1f s per cell, %u round(s)\n", c->dir, c->seconds,
           c->rounds);
    for (uint32_t r = 0; r < c->rounds; r++) {
        for (size_t si = 0; si < 2; si++) {
            size_t rec = sizes[si];
            double fs, base, v;
            printf("\nround %u, %zu-byte records\n", r + 1, rec);
            printf("  %-44s %12s %10s %9s %10s\n", "contender", "appends/s", "MB/s",
                   "ratio", "fsyncs/s");
            base = run_wal(c, DHPS_WAL_SYNC_NEVER, 1, rec, &fs);
            if (base <= 0)
                return 1;
#define ROW(name, x, f)                                                                  \
    printf("  %-44s %12.0f %10.1f %8.3fx %10.0f\n", name, x, (x) * (double)rec / 1e6,      \
           (x) / base, f)
            ROW("dhps_wal never (pwritev)", base, fs);
            if ((v = run_wal(c, DHPS_WAL_SYNC_INTERVAL, 1, rec, &fs)) < 0)
                return 1;
            ROW("dhps_wal interval 10 ms", v, fs);
            if ((v = run_wal(c, DHPS_WAL_SYNC_ALWAYS, 1, rec, &fs)) < 0)
                return 1;
            ROW("dhps_wal always, 1 thread", v, fs);
            char name[64];
            snprintf(name, sizeof name, "dhps_wal always, %u threads (group commit)",
                     c->threads);
            if ((v = run_wal(c, DHPS_WAL_SYNC_ALWAYS, c->threads, rec, &fs)) < 0)
                return 1;
            ROW(name, v, fs);
            double bp = run_bare(c, false, false, rec), bu = run_bare(c, true, false, rec);
            double bps = run_bare(c, false, true, rec), bus = run_bare(c, true, true, rec);
            if (bp < 0 || bps < 0 || bu == -1 || bus == -1)
                return 1;
            ROW("bare pwrite", bp, 0.0);
            ROW("bare pwrite + fdatasync each", bps, bps);
            if (bu > 0) {
                ROW("bare io_uring write", bu, 0.0);
                ROW("bare io_uring write + linked fdatasync", bus, bus);
                printf("  io_uring / pwrite: %.3fx (no sync), %.3fx (fdatasync each)\n",
                       bu / bp, bus / bps);
            } else {
                printf("  io_uring: not built (liburing-dev missing)\n");
            }
#undef ROW
        }
    }
    rm_files(c->dir);
    return 0;
}

/* ---- server mode --------------------------------------------------------------------- */

typedef struct wb_client {
    const wb_cfg *c;
    uint16_t port;
    uint64_t seed, deadline, keys;
    int rc;
} wb_client;

static void *client_main(void *p)
{
    wb_client *a = p;
    const wb_cfg *c = a->c;
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = WB_SECRET;
    cp.secret_len = strlen(cp.secret);
    cp.max_msg = 4u << 20;
    dhps_rpc_client *cl = NULL;
    dhps_rpc_channel *ch = NULL;
    if ((a->rc = dhps_rpc_client_create(&cp, &cl)))
        return NULL;
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.port = a->port;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    if ((a->rc = dhps_rpc_channel_open(cl, &chp, &ch))) {
        dhps_rpc_client_destroy(cl);
        return NULL;
    }
    size_t row = (size_t)c->dim * 4, len = 64 + sizeof(dhps_proto_upsert) +
                 (size_t)c->batch * (8 + row);
    uint8_t *req = calloc(1, len), *resp = malloc(1 << 20);
    dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION, .flags = DHPS_FP32, .shard = 0};
    strcpy(h.table, "emb");
    memcpy(req, &h, sizeof h);
    uint64_t ver = 1;
    while (!a->rc && dhps_mono_ns() < a->deadline) {
        h.shard = (uint32_t)(ver % c->shards); /* the server takes the client's routing */
        memcpy(req, &h, sizeof h);
        dhps_proto_upsert u = {.n = c->batch, .value_bytes = (uint32_t)row, .version = ver++};
        memcpy(req + 64, &u, sizeof u);
        uint64_t *keys = (uint64_t *)(void *)(req + 64 + sizeof u);
        for (uint32_t i = 0; i < c->batch; i++)
            keys[i] = dhps_splitmix64(&a->seed) % 1000000;
        size_t rl = 0;
        int rc = dhps_rpc_call(ch, DHPS_M_UPSERT, req, len, resp, 1 << 20, &rl, 5000000);
        dhps_proto_resp r;
        if (!rc && rl >= sizeof r) {
            memcpy(&r, resp, sizeof r);
            rc = r.status;
        } else if (!rc) {
            rc = -EIO;
        }
        if (rc) {
            a->rc = rc;
            break;
        }
        a->keys += c->batch;
    }
    free(req);
    free(resp);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(cl);
    return NULL;
}

/* One server with the log off (mode 0), interval (1) or always (2): keys/s. */
static double run_server(const wb_cfg *c, int mode, uint32_t round)
{
    char sdir[600], text[2048], err[512], secret[600];
    snprintf(sdir, sizeof sdir, "%s/snap", c->dir);
    rm_files(c->dir);
    mkdir(sdir, 0700);
    snprintf(secret, sizeof secret, "%s/secret", c->dir);
    FILE *f = fopen(secret, "w");
    fputs(WB_SECRET "\n", f);
    fclose(f);
    chmod(secret, 0600);
    static const char *const logs[] = {"{\"enabled\":false}", "{\"fsync\":\"interval\"}",
                                       "{\"fsync\":\"always\"}"};
    snprintf(text, sizeof text,
             "{\"node_id\":\"bench\",\"listen\":{\"tcp_port\":0,\"workers\":2,\"shm\":false},"
             "\"tables\":[{\"name\":\"emb\",\"dim\":%u,\"capacity\":1048576}],"
             "\"secret_file\":\"%s\",\"metrics\":{\"port\":-1},"
             "\"snapshot\":{\"dir\":\"%s\",\"on_shutdown\":false},\"log\":%s,"
             "\"shards\":{\"nshards\":%u,\"own\":\"all\"}}",
             c->dim, secret, sdir, logs[mode], c->shards);
    dhps_server_config *cfg = NULL;
    dhps_server *s = NULL;
    double rate = -1;
    if (dhps_server_config_parse(text, strlen(text), &cfg, err, sizeof err) ||
        dhps_server_create(cfg, &s, err, sizeof err) || dhps_server_start(s, err, sizeof err)) {
        fprintf(stderr, "dhps-bench wal --server: %s\n", err);
        goto out;
    }
    wb_client a[16];
    pthread_t th[16];
    uint64_t t0 = dhps_mono_ns(), dl = t0 + (uint64_t)(c->seconds * 1e9);
    for (uint32_t i = 0; i < c->clients; i++) {
        a[i] = (wb_client){.c = c, .port = dhps_server_port(s),
                           .seed = 1234567 + i * 7919 + round, .deadline = dl};
        pthread_create(&th[i], NULL, client_main, &a[i]);
    }
    uint64_t keys = 0;
    int rc = 0;
    for (uint32_t i = 0; i < c->clients; i++) {
        pthread_join(th[i], NULL);
        keys += a[i].keys;
        rc = rc ? rc : a[i].rc;
    }
    double secs = (double)(dhps_mono_ns() - t0) / 1e9;
    if (rc)
        fprintf(stderr, "dhps-bench wal --server: upsert: %s\n", dhps_strerror(rc));
    else
        rate = (double)keys / secs;
out:
    dhps_server_destroy(s);
    dhps_server_config_free(cfg);
    rm_files(c->dir);
    return rate;
}

static int server_mode(const wb_cfg *c)
{
    static const char *const names[] = {"log off", "log on, fsync interval (default)",
                                        "log on, fsync always"};
    double ratio[2][64];
    printf("dhps-bench wal --server: %s, %u clients x batches of %u keys (dim %u fp32, "
           "%u shards, 2 workers), %.1f s per cell, %u round(s)\n",
           c->dir, c->clients, c->batch, c->dim, c->shards, c->seconds, c->rounds);
    printf("  %-5s %-34s %14s %8s\n", "round", "server", "upserts keys/s", "ratio");
    for (uint32_t r = 0; r < c->rounds; r++) {
        double v[3];
        for (int m = 0; m < 3; m++) {
            if ((v[m] = run_server(c, m, r)) < 0)
                return 1;
            printf("  %-5u %-34s %14.0f %7.3fx\n", r + 1, names[m], v[m], v[m] / v[0]);
            fflush(stdout);
        }
        ratio[0][r] = v[1] / v[0];
        ratio[1][r] = v[2] / v[0];
    }
    for (int m = 0; m < 2; m++) {
        double q[3];
        bench_spread(ratio[m], (int)c->rounds, q);
        printf("  %s / log off: median %.3fx, min %.3fx, max %.3fx\n", names[m + 1], q[0],
               q[1], q[2]);
    }
    return 0;
}

int bench_wal_main(int argc, char **argv)
{
    wb_cfg c = {.seconds = 0, .rounds = 0, .threads = 4, .clients = 2, .batch = 256,
                .dim = 32, .shards = 8};
    bool server = false, own_dir = false;
    static const struct option lo[] = {
        {"dir", required_argument, NULL, 'd'},     {"seconds", required_argument, NULL, 's'},
        {"rounds", required_argument, NULL, 'r'},  {"threads", required_argument, NULL, 't'},
        {"server", no_argument, NULL, 'S'},        {"clients", required_argument, NULL, 'c'},
        {"batch", required_argument, NULL, 'b'},   {"dim", required_argument, NULL, 'D'},
        {"shards", required_argument, NULL, 'H'},  {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'd': snprintf(c.dir, sizeof c.dir, "%s", optarg); break;
        case 's': c.seconds = atof(optarg); break;
        case 'r': c.rounds = (uint32_t)atoi(optarg); break;
        case 't': c.threads = (uint32_t)atoi(optarg); break;
        case 'S': server = true; break;
        case 'c': c.clients = (uint32_t)atoi(optarg); break;
        case 'b': c.batch = (uint32_t)atoi(optarg); break;
        case 'D': c.dim = (uint32_t)atoi(optarg); break;
        case 'H': c.shards = (uint32_t)atoi(optarg); break;
        case 'h':
            printf("usage: dhps-bench wal [--dir DIR] [--seconds 1] [--rounds 1] "
                   "[--threads 4]\n"
                   "       dhps-bench wal --server [--dir DIR] [--seconds 3] [--rounds 3] "
                   "[--clients 2] [--batch 256] [--dim 32] [--shards 8]\n");
            return 0;
        default: return 2;
        }
    }
    if (!c.seconds)
        c.seconds = server ? 3 : 1;
    if (!c.rounds)
        c.rounds = server ? 3 : 1;
    if (c.seconds <= 0 || c.rounds < 1 || c.rounds > 64 || c.threads < 1 || c.threads > 64 ||
        c.clients < 1 || c.clients > 16 || c.batch < 1 || c.batch > 16384 || c.dim < 1 ||
        c.dim > 1024 || c.shards < 1 || c.shards > 4096) {
        fprintf(stderr, "dhps-bench wal: bad option value\n");
        return 2;
    }
    if (!c.dir[0]) {
        snprintf(c.dir, sizeof c.dir, "/tmp/dhps-walbench-XXXXXX");
        if (!mkdtemp(c.dir)) {
            perror("mkdtemp");
            return 1;
        }
        own_dir = true;
    } else if (mkdir(c.dir, 0700) && errno != EEXIST) {
        perror(c.dir);
        return 1;
    }
    int rc = server ? server_mode(&c) : log_mode(&c);
    if (own_dir) {
        rm_files(c.dir);
        rmdir(c.dir);
    }
    return rc;
}

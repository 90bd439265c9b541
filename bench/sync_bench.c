/*
 * dhps-bench sync: how fast a replica catches up from a peer, beside how fast the same
 * node loads the same data from its own snapshot file, in one run.
 *
 * Two dhps-server instances in this process (nodes 1 and 2 of a map with one virtual
 * shard and two replicas, on 127.0.0.1 TCP). Per round:
 *   1. load --keys rows (fp32, --dim) into node 1 through rpc UPSERT batches;
 *   2. catch-up: start node 2 empty and time from dhps_server_start to ready (digests,
 *      export on node 1, chunks over rpc, merge on node 2): keys/s and MB/s of records;
 *   3. snapshot load (the peer): stop node 2 (final snapshot), start it again with node
 *      1 stopped and sync.peer_wait_s 0, so readiness is the snapshot load alone;
 *   4. restart to ready: with node 1 back and --updates new rows written to node 1
 *      meanwhile, restart node 2 from its snapshot and time start to ready (snapshot
 *      load + catch-up of what changed since its newest version, then digests).
 * Rows are loaded with versions spread over the last hour (a table written over time),
 * the updates with the current time, as a dhps client's hybrid logical clock would.
 * Prints each figure and the ratio catch-up / snapshot load; --rounds repeats and
 * reports min/median/max.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "bench.h"
#include "util.h"

#define SECRET "dhps-bench-sync-secret-0123456789abcdef"

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    uint16_t p = 0;
    if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) &&
        !getsockname(fd, (struct sockaddr *)&a, &al))
        p = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return p;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    fputs(text, f);
    fclose(f);
    chmod(path, 0600);
    return 0;
}

typedef struct sb_ctx {
    char dir[64], cfg[2][1024];
    uint32_t dim;
} sb_ctx;

static int sb_setup(sb_ctx *x, uint32_t dim)
{
    char path[320], text[2048];
    snprintf(x->dir, sizeof x->dir, "/tmp/dhps-bench-sync-XXXXXX");
    if (!mkdtemp(x->dir))
        return -errno;
    x->dim = dim;
    uint16_t port[2] = {free_port(), free_port()};
    snprintf(path, sizeof path, "%s/secret", x->dir);
    write_text(path, SECRET);
    snprintf(path, sizeof path, "%s/map.json", x->dir);
    snprintf(text, sizeof text,
             "{\"version\":1,\"nshards\":1,\"replicas\":2,\"nodes\":["
             "{\"id\":1,\"host\":\"ha\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"},"
             "{\"id\":2,\"host\":\"hb\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:%u\"}],"
             "\"shards\":[[1,2]]}", port[0], port[1]);
    write_text(path, text);
    for (int i = 0; i < 2; i++) {
        char snap[320];
        snprintf(snap, sizeof snap, "%s/snap%d", x->dir, i + 1);
        mkdir(snap, 0700);
        snprintf(x->cfg[i], sizeof x->cfg[i], "{\"node_id\":\"n%d\","
                 "\"listen\":{\"workers\":1,\"shm\":false},"
                 "\"tables\":[{\"name\":\"emb\",\"dim\":%u,\"capacity\":1000000}],"
                 "\"secret_file\":\"%s/secret\",\"snapshot\":{\"dir\":\"%s\"},"
                 "\"shards\":{\"cluster_map\":\"%s/map.json\",\"map_node\":%d},"
                 "\"sync\":{\"peer_wait_s\":%%u,\"anti_entropy_s\":0}}",
                 i + 1, dim, x->dir, snap, x->dir, i + 1);
    }
    return 0;
}

/* Create and start node i (0 or 1) with sync.peer_wait_s wait. */
static int sb_start(sb_ctx *x, int i, unsigned wait, dhps_server **out)
{
    char text[2048], err[512];
    snprintf(text, sizeof text, x->cfg[i], wait);
    dhps_server_config *c = NULL;
    int rc = dhps_server_config_parse(text, strlen(text), &c, err, sizeof err);
    if (!rc)
        rc = dhps_server_create(c, out, err, sizeof err);
    dhps_server_config_free(c);
    if (!rc && (rc = dhps_server_start(*out, err, sizeof err))) {
        dhps_server_destroy(*out);
        *out = NULL;
    }
    if (rc)
        fprintf(stderr, "dhps-bench sync: node %d: %s (%s)\n", i + 1, err, dhps_strerror(rc));
    return rc;
}

/* Seconds until s is ready (polled every 1 ms), or -1 after 600 s. */
static double sb_wait_ready(dhps_server *s, uint64_t t0)
{
    while (!dhps_server_ready(s)) {
        if (dhps_mono_ns() - t0 > 600ull * 1000000000ull)
            return -1;
        usleep(1000);
    }
    return (double)(dhps_mono_ns() - t0) / 1e9;
}

/* Upsert keys [k0, k1) into the server at port, batch i with version ver + i * step. */
static int sb_load(uint16_t port, uint32_t dim, uint64_t k0, uint64_t k1, uint64_t ver,
                   uint64_t step)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = SECRET;
    cp.secret_len = strlen(SECRET);
    cp.max_msg = 4u << 20;
    dhps_rpc_client *c = NULL;
    dhps_rpc_channel *ch = NULL;
    int rc = dhps_rpc_client_create(&cp, &c);
    dhps_rpc_channel_params p;
    dhps_rpc_channel_params_init(&p);
    p.port = port;
    if (!rc)
        rc = dhps_rpc_channel_open(c, &p, &ch);
    const uint32_t batch = 8192;
    size_t row = (size_t)dim * 4, len = 64 + sizeof(dhps_proto_upsert) + batch * (8 + row);
    uint8_t *req = malloc(len), resp[64 << 10];
    for (uint64_t k = k0; !rc && k < k1; k += batch) {
        uint32_t n = (uint32_t)(k1 - k < batch ? k1 - k : batch);
        dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION, .flags = DHPS_FP32};
        strcpy(h.table, "emb");
        dhps_proto_upsert u = {.n = n, .value_bytes = (uint32_t)row,
                               .version = ver + (k - k0) / batch * step};
        memcpy(req, &h, 64);
        memcpy(req + 64, &u, sizeof u);
        uint8_t *kp = req + 64 + sizeof u, *vp = kp + (size_t)n * 8;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key = (k + i) * 0x9E3779B97F4A7C15ull;
            memcpy(kp + (size_t)i * 8, &key, 8);
            for (uint32_t j = 0; j < dim; j++) {
                float v = (float)(k + i) + (float)j;
                memcpy(vp + (size_t)i * row + j * 4, &v, 4);
            }
        }
        size_t rl = 0;
        size_t ml = 64 + sizeof u + (size_t)n * (8 + row);
        rc = dhps_rpc_call(ch, DHPS_M_UPSERT, req, ml, resp, sizeof resp, &rl, 10000000);
        dhps_proto_resp rh;
        if (!rc && rl >= sizeof rh) {
            memcpy(&rh, resp, sizeof rh);
            rc = rh.status;
        }
    }
    free(req);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    return rc;
}

int bench_sync_main(int argc, char **argv)
{
    uint64_t keys = 1000000, updates = 10000;
    uint32_t dim = 32, rounds = 1;
    bool json = false;
    static const struct option opts[] = {
        {"keys", 1, 0, 'k'}, {"dim", 1, 0, 'd'}, {"updates", 1, 0, 'u'},
        {"rounds", 1, 0, 'r'}, {"json", 0, 0, 'j'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'k': keys = strtoull(optarg, NULL, 10); break;
        case 'd': dim = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'u': updates = strtoull(optarg, NULL, 10); break;
        case 'r': rounds = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'j': json = true; break;
        default:
            fprintf(o == 'h' ? stdout : stderr,
                    "usage: dhps-bench sync [--keys 1000000] [--dim 32] [--updates 10000] "
                    "[--rounds 1] [--json]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (!keys || !dim || dim > 1024 || !rounds || rounds > 20) {
        fprintf(stderr, "dhps-bench sync: --keys >= 1, --dim 1..1024, --rounds 1..20\n");
        return 2;
    }
    double rec_mb = (double)keys * (8 + dim * 4.0) / 1e6;
    double *cu = calloc(rounds, sizeof *cu), *ld = calloc(rounds, sizeof *ld),
           *rs = calloc(rounds, sizeof *rs);
    int rc = 0;
    for (uint32_t r = 0; r < rounds && !rc; r++) {
        sb_ctx x;
        dhps_server *a = NULL, *b = NULL;
        if ((rc = sb_setup(&x, dim)) || (rc = sb_start(&x, 0, 1, &a)))
            break;
        uint16_t pa = dhps_server_port(a);
        /* versions as a dhps client makes them (realtime nanoseconds), as if the table
         * had been written over the last hour (batches spread evenly); the later updates
         * carry the time they are made */
        uint64_t hour = 3600ull * 1000000000ull, nb = (keys + 8191) / 8192;
        if ((rc = sb_load(pa, dim, 0, keys, dhps_clock_ns(CLOCK_REALTIME) - hour, hour / nb)))
            fprintf(stderr, "dhps-bench sync: load: %s\n", dhps_strerror(rc));
        uint64_t t0 = dhps_mono_ns();
        if (!rc && !(rc = sb_start(&x, 1, 30, &b)))
            cu[r] = sb_wait_ready(b, t0);
        dhps_server_destroy(b); /* final snapshot */
        b = NULL;
        dhps_server_destroy(a); /* node 1 down: the next start is the snapshot load alone */
        a = NULL;
        t0 = dhps_mono_ns();
        if (!rc && !(rc = sb_start(&x, 1, 0, &b)))
            ld[r] = sb_wait_ready(b, t0);
        dhps_server_destroy(b);
        b = NULL;
        if (!rc && !(rc = sb_start(&x, 0, 0, &a))) {
            pa = dhps_server_port(a);
            rc = sb_load(pa, dim, keys, keys + updates, dhps_clock_ns(CLOCK_REALTIME), 1);
        }
        t0 = dhps_mono_ns();
        if (!rc && !(rc = sb_start(&x, 1, 30, &b)))
            rs[r] = sb_wait_ready(b, t0);
        dhps_server_destroy(b);
        dhps_server_destroy(a);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", x.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "dhps-bench sync: could not remove %s\n", x.dir);
        if (cu[r] < 0 || ld[r] < 0 || rs[r] < 0)
            rc = DHPS_E_TIMEOUT;
        if (!rc && !json)
            printf("round %u: catch-up %.3f s (%.2f M keys/s, %.0f MB/s), snapshot load "
                   "%.3f s (%.2f M keys/s), restart to ready with %llu new rows %.3f s\n",
                   r + 1, cu[r], keys / cu[r] / 1e6, rec_mb / cu[r], ld[r],
                   keys / ld[r] / 1e6, (unsigned long long)updates, rs[r]);
    }
    if (rc) {
        fprintf(stderr, "dhps-bench sync: failed: %s\n", dhps_strerror(rc));
        free(cu);
        free(ld);
        free(rs);
        return 1;
    }
    double c3[3], l3[3], r3[3], ratio[20];
    for (uint32_t r = 0; r < rounds; r++)
        ratio[r] = ld[r] / cu[r];
    double q3[3];
    bench_spread(ratio, (int)rounds, q3);
    bench_spread(cu, (int)rounds, c3);
    bench_spread(ld, (int)rounds, l3);
    bench_spread(rs, (int)rounds, r3);
    if (json)
        printf("{\"keys\":%llu,\"dim\":%u,\"rounds\":%u,\"record_mb\":%.1f,"
               "\"catchup_s\":[%.3f,%.3f,%.3f],\"catchup_keys_per_s\":%.0f,"
               "\"catchup_mb_per_s\":%.1f,\"snapshot_load_s\":[%.3f,%.3f,%.3f],"
               "\"catchup_vs_snapshot_load\":[%.3f,%.3f,%.3f],"
               "\"updates\":%llu,\"restart_to_ready_s\":[%.3f,%.3f,%.3f]}\n",
               (unsigned long long)keys, dim, rounds, rec_mb, c3[1], c3[0], c3[2],
               keys / c3[0], rec_mb / c3[0], l3[1], l3[0], l3[2], q3[1], q3[0], q3[2],
               (unsigned long long)updates, r3[1], r3[0], r3[2]);
    else
        printf("catch-up of %llu keys (%.0f MB of records) from a peer: median %.3f s "
               "(min %.3f, max %.3f) = %.2f M keys/s, %.0f MB/s; %.2fx the speed of "
               "loading the same keys from the node's own snapshot (median %.3f s; ratios "
               "%.2f..%.2f); restart to ready with %llu rows to catch up: median %.3f s "
               "(min %.3f, max %.3f)\n",
               (unsigned long long)keys, rec_mb, c3[0], c3[1], c3[2], keys / c3[0] / 1e6,
               rec_mb / c3[0], q3[0], l3[0], q3[1], q3[2], (unsigned long long)updates,
               r3[0], r3[1], r3[2]);
    fflush(stdout);
    free(cu);
    free(ld);
    free(rs);
    return 0;
}

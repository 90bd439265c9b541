/*
 * dhps-bench route: what one routing decision costs. Each operation is one pick among a
 * shard's replicas plus the report of its outcome, as the client does per sub-batch.
 *
 *   dhps-bench route [--nodes 1024] [--replicas 3] [--ops 2000000] [--threads 1]
 *                    [--repeat 3]
 *
 * Contenders, run one after the other with the same threads and replica sets:
 *   dhps route   the route library: tiers, spill, P2C on peak EWMA x in-flight, weights,
 *                breakers, the latency histogram behind hedge delays; real clock
 *   random       a uniformly random replica and a relaxed counter per node: the floor
 *                any router pays (no state worth the name)
 *   round robin  one shared atomic counter, the same per-node counter: the classic
 *                stateless policy, and what one contended cache line costs
 * Nodes sit in 4 AZs x 8 PODs; the client is in POD 0 of AZ 0. Reported latencies are
 * per tier (5 / 20 / 60 / 500 us) with a small deterministic jitter, every 100th an
 * error. Prints ns per operation (per thread) and the ratio to `random`, best of
 * --repeat runs.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "dhps/route.h"
#include "util.h"

#define NSETS 4096u

typedef struct rb_cfg {
    uint32_t nodes, replicas, threads, repeat;
    uint64_t ops;
    uint32_t *sets; /* NSETS x replicas node ids */
    int *tier;      /* per node: its tier relative to the client */
} rb_cfg;

typedef struct rb_shared {
    const rb_cfg *cfg;
    dhps_route *route;
    _Atomic uint64_t rr;
    _Atomic uint64_t *per_node;
    pthread_barrier_t go;
    int which;
} rb_shared;

typedef struct rb_thread {
    rb_shared *sh;
    uint32_t idx;
    uint64_t ns;
    int failed;
} rb_thread;

static const uint64_t TIER_US[4] = {5, 20, 60, 500};

static void *rb_run(void *arg)
{
    rb_thread *t = arg;
    rb_shared *sh = t->sh;
    const rb_cfg *c = sh->cfg;
    uint64_t seed = 0x1234567ull * (t->idx + 1);
    pthread_barrier_wait(&sh->go);
    uint64_t t0 = dhps_mono_ns();
    for (uint64_t i = 0; i < c->ops; i++) {
        const uint32_t *set = c->sets + (dhps_splitmix64(&seed) % NSETS) * c->replicas;
        uint32_t node;
        if (sh->which == 0) {
            dhps_route_choice ch;
            if (dhps_route_pick(sh->route, set, c->replicas, NULL, 0, DHPS_ROUTE_PRIMARY,
                                &ch) != 0) {
                t->failed++;
                continue;
            }
            node = ch.node;
            uint64_t lat = (TIER_US[ch.tier] + i % 7) * 1000;
            dhps_route_report(sh->route, &ch, lat, i % 100 ? DHPS_ROUTE_OK : DHPS_ROUTE_ERROR);
        } else {
            uint64_t k = sh->which == 1
                             ? dhps_splitmix64(&seed)
                             : atomic_fetch_add_explicit(&sh->rr, 1, memory_order_relaxed);
            node = set[k % c->replicas];
        }
        atomic_fetch_add_explicit(&sh->per_node[node], 1, memory_order_relaxed);
    }
    t->ns = dhps_mono_ns() - t0;
    return NULL;
}

/* One run of contender `which` on all threads: ns per operation per thread (the mean of
 * the threads' own times), or 0 on failure. */
static double rb_once(rb_cfg *c, int which)
{
    rb_shared sh = {.cfg = c, .which = which};
    sh.per_node = calloc(c->nodes, sizeof *sh.per_node);
    rb_thread *th = calloc(c->threads, sizeof *th);
    pthread_t *pt = calloc(c->threads, sizeof *pt);
    double r = 0;
    if (!sh.per_node || !th || !pt)
        goto out;
    if (which == 0) {
        dhps_route_params p;
        dhps_route_params_init(&p);
        p.max_nodes = c->nodes;
        dhps_route_labels local = {"h0", "a0p0", "a0"};
        if (dhps_route_create(&p, &local, &sh.route))
            goto out;
        for (uint32_t n = 0; n < c->nodes; n++) {
            char host[24], pod[24], az[24];
            uint32_t a = n % 4, q = (n / 4) % 8; /* AZ, POD within it */
            snprintf(host, sizeof host, "h%u", n);
            snprintf(pod, sizeof pod, "a%up%u", a, q);
            snprintf(az, sizeof az, "a%u", a);
            dhps_route_labels l = {host, pod, az};
            if (dhps_route_node_set(sh.route, n, &l))
                goto out;
        }
    }
    pthread_barrier_init(&sh.go, NULL, c->threads);
    for (uint32_t i = 0; i < c->threads; i++) {
        th[i] = (rb_thread){.sh = &sh, .idx = i};
        if (pthread_create(&pt[i], NULL, rb_run, &th[i])) {
            fprintf(stderr, "dhps-bench route: pthread_create failed\n");
            exit(1);
        }
    }
    double sum = 0;
    int failed = 0;
    for (uint32_t i = 0; i < c->threads; i++) {
        pthread_join(pt[i], NULL);
        sum += (double)th[i].ns / (double)c->ops;
        failed += th[i].failed;
    }
    pthread_barrier_destroy(&sh.go);
    uint64_t total = 0;
    for (uint32_t n = 0; n < c->nodes; n++)
        total += sh.per_node[n];
    if (failed || total + (uint64_t)failed != c->ops * c->threads)
        fprintf(stderr, "dhps-bench route: %d picks failed\n", failed);
    else
        r = sum / c->threads;
out:
    dhps_route_destroy(sh.route);
    free(sh.per_node);
    free(th);
    free(pt);
    return r;
}

static void rb_usage(FILE *f)
{
    fprintf(f, "usage: dhps-bench route [--nodes 1024] [--replicas 3] [--ops 2000000] "
               "[--threads 1] [--repeat 3]\n");
}

int bench_route_main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"nodes", required_argument, 0, 'n'}, {"replicas", required_argument, 0, 'r'},
        {"ops", required_argument, 0, 'o'},   {"threads", required_argument, 0, 't'},
        {"repeat", required_argument, 0, 'R'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    rb_cfg c = {.nodes = 1024, .replicas = 3, .threads = 1, .repeat = 3, .ops = 2000000};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        char *end = NULL;
        unsigned long long v = optarg ? strtoull(optarg, &end, 10) : 0;
        if (o == 'h') {
            rb_usage(stdout);
            return 0;
        }
        if (o == '?' || !end || *end || v == 0) {
            rb_usage(stderr);
            return 2;
        }
        if (o == 'n')
            c.nodes = (uint32_t)v;
        else if (o == 'r')
            c.replicas = (uint32_t)v;
        else if (o == 'o')
            c.ops = v;
        else if (o == 't')
            c.threads = (uint32_t)v;
        else
            c.repeat = (uint32_t)v;
    }
    if (optind < argc || c.nodes > 65536 || c.replicas > c.nodes || c.replicas > 16 ||
        c.threads > 64) {
        rb_usage(stderr);
        return 2;
    }
    c.sets = malloc((size_t)NSETS * c.replicas * sizeof *c.sets);
    if (!c.sets)
        return 1;
    uint64_t seed = 42;
    for (uint32_t s = 0; s < NSETS; s++) { /* distinct replicas, spread over AZs/PODs */
        uint32_t *set = c.sets + (size_t)s * c.replicas;
        for (uint32_t k = 0; k < c.replicas; k++) {
            uint32_t n;
            bool dup;
            do {
                n = (uint32_t)(dhps_splitmix64(&seed) % c.nodes);
                dup = false;
                for (uint32_t j = 0; j < k; j++)
                    dup |= set[j] == n;
            } while (dup);
            set[k] = n;
        }
    }
    static const char *const names[3] = {"dhps route", "random", "round robin"};
    double best[3] = {0, 0, 0};
    for (uint32_t rep = 0; rep < c.repeat; rep++)
        for (int w = 0; w < 3; w++) {
            double ns = rb_once(&c, w);
            if (ns <= 0) {
                free(c.sets);
                return 1;
            }
            if (best[w] == 0 || ns < best[w])
                best[w] = ns;
        }
    printf("route: pick + report per sub-batch, %u nodes (4 AZ x 8 POD), %u replicas, %u "
           "thread(s) x %llu ops, best of %u\n",
           c.nodes, c.replicas, c.threads, (unsigned long long)c.ops, c.repeat);
    printf("  %-12s %10s %12s %10s\n", "contender", "ns/op", "M ops/s/thr", "vs random");
    for (int w = 0; w < 3; w++)
        printf("  %-12s %10.1f %12.2f %9.2fx\n", names[w], best[w], 1e3 / best[w],
               best[w] / best[1]);
    free(c.sets);
    return 0;
}

/*
 * dhps traffic: a steady lookup load against a running cluster, reported interval by
 * interval with where the client's rpc messages went, by tier relative to the client's
 * labels (host / pod / az / remote). It is the client side of the topology test
 * (tests/topology/topology.sh): servers in network namespaces, this command in one POD,
 * replicas killed and restarted while it runs, and the lines show traffic staying in the
 * POD, spilling to the next tier and coming back.
 *
 * Lookups: --threads threads, each first doing one uncounted warm-up lookup (it opens
 * the thread's channels; intervals start when every thread is past it), then sending
 * batches of --batch keys drawn uniformly from [0, --keys) with a --deadline-ms
 * deadline. A lookup is "complete" when every key got an answer (rc 0) - found or not -
 * and the call returned within the deadline; "incomplete" otherwise (partial result at
 * the deadline, no replica reachable, or late). With --load the keys are first written
 * with the deterministic sample rows (every replica acknowledges); with --check every
 * found row is compared with that sample row ("wrong") and keys not found are counted
 * ("missing").
 *
 * Traffic: rpc messages the client sent to each node in the interval (first attempts,
 * retries, hedges, fan-out), summed by the node's tier. --tier-delay-us H,P,A,R adds
 * that much injected latency (rpc fault rules, dhps_client_fault_set) to every call
 * toward nodes of each tier: the stand-in for link delays where the kernel has no netem.
 *
 * Router decisions (when the client routes with the route library, i.e. has labels):
 * breaker openings in the interval by reason (opened_err, opened_slow, opened_probe),
 * closings, nodes isolated now (ejected) and the common rise of latency (rise_us).
 *
 * Output: one line per --interval-ms, then a summary; --json prints one JSON object per
 * line instead (the summary has "summary": true). Runs --seconds (0: until SIGINT or
 * SIGTERM, which also end a timed run early - the summary is printed either way).
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/route.h"
#include "dhps/rpc.h"
#include "tools.h"
#include "toolsclient.h"

int dhps_cmd_traffic(int argc, char **argv);

static const char traffic_usage[] =
    "usage: dhps traffic [--cluster DIR | --map FILE --secret FILE] [--host H] [--pod P]\n"
    "                    [--az A] [--table T] [--dim 32] [--keys 10000] [--batch 100]\n"
    "                    [--threads 1] [--seconds 10] [--interval-ms 500]\n"
    "                    [--deadline-ms 100] [--tier-delay-us H,P,A,R] [--load] [--check]\n"
    "                    [--connect-timeout-ms MS] [--json]\n"
    "  Steady lookups; every interval prints lookups, complete/incomplete, latency and\n"
    "  the share of rpc messages per tier (relative to the client's labels).\n"
    "  --load writes the sample rows of keys 0..keys-1 first; --check verifies them.\n"
    "  --tier-delay-us injects that latency (us) toward nodes of each tier.\n"
    "  --seconds 0 runs until SIGINT/SIGTERM.\n";

struct tr_opts {
    tools_target tgt;
    const char *table;
    uint32_t dim, batch, threads;
    uint64_t keys, deadline_ms, interval_ms;
    double seconds;
    bool load, check, json, have_delay;
    uint32_t tier_delay_us[4];
};

struct tr_counts {
    uint64_t lookups, complete, incomplete, wrong, missing;
};

static void counts_add(struct tr_counts *to, const struct tr_counts *from)
{
    to->lookups += from->lookups;
    to->complete += from->complete;
    to->incomplete += from->incomplete;
    to->wrong += from->wrong;
    to->missing += from->missing;
}

struct tr_thread {
    pthread_t th;
    const struct tr_opts *o;
    dhps_client *client;
    uint64_t seed;
    pthread_mutex_t mu; /* counts and hist: taken per batch and by the reporter */
    struct tr_counts n;
    tools_hist h;
};

static atomic_bool tr_stop;
static atomic_uint tr_ready; /* threads past their warm-up lookup */
#define TR_WARMUP_US 60000000ull

static void tr_on_signal(int sig)
{
    (void)sig;
    atomic_store(&tr_stop, true);
}

static void *tr_run(void *arg)
{
    struct tr_thread *t = arg;
    const struct tr_opts *o = t->o;
    size_t n = o->batch, words = (n + 63) / 64;
    uint64_t *keys = malloc(n * sizeof *keys), *mask = malloc(words * sizeof *mask);
    float *out = malloc(n * o->dim * sizeof *out), *want = malloc(o->dim * sizeof *want);
    if (!keys || !mask || !out || !want) {
        fprintf(stderr, "dhps traffic: out of memory\n");
        atomic_store(&tr_stop, true);
        goto done;
    }
    /* warm-up, not counted: this thread's first lookup opens its channels (a verbs hello
     * can take seconds under emulation), so it gets a generous deadline */
    for (size_t i = 0; i < n; i++)
        keys[i] = dhps_splitmix64(&t->seed) % o->keys;
    dhps_client_lookup(t->client, o->table, keys, n, out, o->dim, DHPS_FP32, mask,
                       TR_WARMUP_US, NULL);
    atomic_fetch_add(&tr_ready, 1);
    while (!atomic_load_explicit(&tr_stop, memory_order_relaxed)) {
        for (size_t i = 0; i < n; i++)
            keys[i] = dhps_splitmix64(&t->seed) % o->keys;
        uint64_t t0 = dhps_mono_ns();
        int rc = dhps_client_lookup(t->client, o->table, keys, n, out, o->dim, DHPS_FP32, mask,
                                    o->deadline_ms * 1000, NULL);
        uint64_t dt = dhps_mono_ns() - t0;
        if (rc < 0 && rc != DHPS_E_TIMEOUT && rc != DHPS_E_UNREACHABLE &&
            rc != DHPS_E_NOTFOUND && rc != DHPS_E_HANDLER && rc != DHPS_E_MALFORMED) {
            fprintf(stderr, "dhps traffic: lookup: %s\n", dhps_strerror(rc));
            atomic_store(&tr_stop, true);
            break;
        }
        uint64_t wrong = 0, missing = 0;
        if (o->check && rc == 0) {
            for (size_t i = 0; i < n; i++) {
                if (mask[i / 64] >> (i % 64) & 1) {
                    missing++;
                    continue;
                }
                tools_sample_row(keys[i], o->dim, want);
                wrong += memcmp(want, out + i * o->dim, o->dim * sizeof *want) != 0;
            }
        }
        pthread_mutex_lock(&t->mu);
        t->n.lookups++;
        if (rc == 0 && dt <= o->deadline_ms * 1000000ull) /* all keys, in time */
            t->n.complete++;
        else
            t->n.incomplete++;
        t->n.wrong += wrong;
        t->n.missing += missing;
        tools_hist_add(&t->h, dt);
        pthread_mutex_unlock(&t->mu);
    }
done:
    free(keys);
    free(mask);
    free(out);
    free(want);
    return NULL;
}

/* Parse "H,P,A,R" microseconds. */
static bool parse_delays(const char *s, uint32_t d[4])
{
    char *end;
    for (int i = 0; i < 4; i++) {
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || v > 60000000ul || (i < 3 && *end != ',') || (i == 3 && *end))
            return false;
        d[i] = (uint32_t)v;
        s = end + 1;
    }
    return true;
}

static int tr_load(tools_conn *conn, const struct tr_opts *o)
{
    enum { B = 256 };
    uint64_t keys[B];
    float *rows = malloc((size_t)B * o->dim * sizeof *rows);
    if (!rows)
        return -ENOMEM;
    int rc = 0;
    for (uint64_t k = 0; k < o->keys && !rc; k += B) {
        uint32_t n = (uint32_t)(o->keys - k < B ? o->keys - k : B);
        for (uint32_t i = 0; i < n; i++) {
            keys[i] = k + i;
            tools_sample_row(k + i, o->dim, rows + (size_t)i * o->dim);
        }
        /* a first write opens channels to every replica (slow under emulation): a batch
         * that timed out is written again, idempotently (keys and rows are the same) */
        for (int attempt = 0; attempt < 3; attempt++)
            if ((rc = tools_conn_put(conn, o->table, DHPS_FP32, o->dim, keys, rows, n)) !=
                    DHPS_E_TIMEOUT &&
                rc != DHPS_E_UNREACHABLE)
                break;
    }
    free(rows);
    return rc;
}

/* Tier of node nd relative to the client's labels. */
static int tr_tier(const tools_conn *conn, const dhps_cluster_node *nd)
{
    return tools_tier_of(nd->host, nd->pod, nd->az, conn->host, conn->pod, conn->az);
}

/* Messages the client has sent so far to the i-th node of the map. */
static uint64_t tr_node_msgs(const tools_conn *conn, size_t i)
{
    dhps_client_node_stats st;
    dhps_client_node_stats_get(conn->client, dhps_cluster_map_node_at(conn->map, i)->id, &st);
    return st.messages;
}

/* Install the per-tier delay rules (or remove them: on = false). */
static int tr_delays(tools_conn *conn, const struct tr_opts *o, bool on)
{
    for (size_t i = 0; i < dhps_cluster_map_nnodes(conn->map); i++) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(conn->map, i);
        uint32_t d = o->tier_delay_us[tr_tier(conn, nd)];
        if (!d)
            continue;
        dhps_rpc_fault f;
        dhps_rpc_fault_init(&f);
        f.delay_us = d;
        int rc = dhps_client_fault_set(conn->client, nd->id, on ? &f : NULL);
        if (rc && on) {
            fprintf(stderr, "dhps traffic: delay rule for node %u: %s\n", nd->id,
                    dhps_strerror(rc));
            return rc;
        }
    }
    return 0;
}

/* The router's breaker decisions since *base (and *base moved on to now), when the
 * client routes with the route library: openings by reason, nodes isolated now, and
 * the rise of latency every tier shares (a loaded client; docs/route.md). */
struct tr_route {
    bool have;
    uint64_t opened_errors, opened_slow, opened_probe, closed;
    uint32_t ejected;
    double rise_us;
};

static struct tr_route tr_route_since(tools_conn *conn, dhps_route_stats *base)
{
    struct tr_route d = {0};
    dhps_route *r = dhps_client_route(conn->client);
    dhps_route_stats now;
    if (!r || dhps_route_stats_get(r, &now))
        return d;
    d.have = true;
    d.opened_errors = now.opened_errors - base->opened_errors;
    d.opened_slow = now.opened_slow - base->opened_slow;
    d.opened_probe = now.opened_probe - base->opened_probe;
    d.closed = now.breaker_closed - base->breaker_closed;
    d.ejected = now.ejected;
    d.rise_us = now.common_rise_ns / 1e3;
    *base = now;
    return d;
}

static void tr_print(const struct tr_opts *o, tools_conn *conn, double t, bool summary,
                     const struct tr_counts *n, const tools_hist *h, const uint64_t *msgs,
                     const struct tr_route *rt)
{
    uint64_t tier[4] = {0}, total = 0;
    size_t nn = dhps_cluster_map_nnodes(conn->map);
    for (size_t i = 0; i < nn; i++) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(conn->map, i);
        tier[tr_tier(conn, nd)] += msgs[i];
        total += msgs[i];
    }
    double share[4];
    for (int k = 0; k < 4; k++)
        share[k] = total ? (double)tier[k] / (double)total : 0;
    double avail = n->lookups ? (double)n->complete / (double)n->lookups : 1;
    unsigned long long p50 = tools_hist_quantile(h, 0.5) / 1000,
                       p99 = tools_hist_quantile(h, 0.99) / 1000;
    if (o->json) {
        printf("{%s\"t\":%.3f,\"lookups\":%llu,\"complete\":%llu,\"incomplete\":%llu,"
               "\"availability\":%.6f,\"wrong\":%llu,\"missing\":%llu,\"p50_us\":%llu,"
               "\"p99_us\":%llu,\"messages\":%llu,\"tier_share\":{",
               summary ? "\"summary\":true," : "", t, (unsigned long long)n->lookups,
               (unsigned long long)n->complete, (unsigned long long)n->incomplete, avail,
               (unsigned long long)n->wrong, (unsigned long long)n->missing, p50, p99,
               (unsigned long long)total);
        for (int k = 0; k < 4; k++)
            printf("%s\"%s\":%.4f", k ? "," : "", tools_tier_names[k], share[k]);
        printf("},\"node_messages\":{");
        for (size_t i = 0; i < nn; i++)
            printf("%s\"%u\":%llu", i ? "," : "", dhps_cluster_map_node_at(conn->map, i)->id,
                   (unsigned long long)msgs[i]);
        printf("}");
        if (rt->have)
            printf(",\"breaker\":{\"opened_errors\":%llu,\"opened_slow\":%llu,"
                   "\"opened_probe\":%llu,\"closed\":%llu,\"ejected\":%u},"
                   "\"common_rise_us\":%.1f",
                   (unsigned long long)rt->opened_errors, (unsigned long long)rt->opened_slow,
                   (unsigned long long)rt->opened_probe, (unsigned long long)rt->closed,
                   rt->ejected, rt->rise_us);
        printf("}\n");
    } else {
        printf("%s t=%.2f lookups=%llu complete=%llu incomplete=%llu wrong=%llu missing=%llu "
               "p50_us=%llu p99_us=%llu msgs=%llu",
               summary ? "summary" : "interval", t, (unsigned long long)n->lookups,
               (unsigned long long)n->complete, (unsigned long long)n->incomplete,
               (unsigned long long)n->wrong, (unsigned long long)n->missing, p50, p99,
               (unsigned long long)total);
        for (int k = 0; k < 4; k++)
            printf(" %s=%.3f", tools_tier_names[k], share[k]);
        if (rt->have)
            printf(" opened_err=%llu opened_slow=%llu opened_probe=%llu closed=%llu "
                   "ejected=%u rise_us=%.0f",
                   (unsigned long long)rt->opened_errors, (unsigned long long)rt->opened_slow,
                   (unsigned long long)rt->opened_probe, (unsigned long long)rt->closed,
                   rt->ejected, rt->rise_us);
        if (summary)
            printf(" availability=%.6f", avail);
        printf("\n");
    }
    fflush(stdout);
}

int dhps_cmd_traffic(int argc, char **argv)
{
    static const struct option lo[] = {
        {"cluster", required_argument, 0, 'c'}, {"dir", required_argument, 0, 'c'},
        {"map", required_argument, 0, 'm'},
        {"secret", required_argument, 0, 's'},  {"host", required_argument, 0, 'H'},
        {"pod", required_argument, 0, 'P'},     {"az", required_argument, 0, 'A'},
        {"table", required_argument, 0, 't'},   {"dim", required_argument, 0, 'd'},
        {"keys", required_argument, 0, 'k'},    {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 'j'}, {"seconds", required_argument, 0, 'T'},
        {"interval-ms", required_argument, 0, 'i'},
        {"deadline-ms", required_argument, 0, 'D'},
        {"tier-delay-us", required_argument, 0, 'y'},
        {"connect-timeout-ms", required_argument, 0, 'o'},
        {"load", no_argument, 0, 'L'},          {"check", no_argument, 0, 'C'},
        {"json", no_argument, 0, 'J'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    struct tr_opts o = {.table = "emb", .dim = 32, .batch = 100, .threads = 1,
                        .keys = 10000, .deadline_ms = 100, .interval_ms = 500, .seconds = 10};
    uint64_t v;
    int c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:m:s:H:P:A:t:d:k:b:j:T:i:D:y:o:LCJh", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o.tgt.cluster_dir = optarg; break;
        case 'm': o.tgt.map = optarg; break;
        case 's': o.tgt.secret = optarg; break;
        case 'H': o.tgt.host = optarg; break;
        case 'P': o.tgt.pod = optarg; break;
        case 'A': o.tgt.az = optarg; break;
        case 't': o.table = optarg; break;
        case 'd':
            if (!tools_parse_u64("traffic", "--dim", optarg, &v) || !v || v > 4096)
                return 2;
            o.dim = (uint32_t)v;
            break;
        case 'k':
            if (!tools_parse_u64("traffic", "--keys", optarg, &o.keys) || !o.keys)
                return 2;
            break;
        case 'b':
            if (!tools_parse_u64("traffic", "--batch", optarg, &v) || !v ||
                v > DHPS_PROTO_MAX_KEYS)
                return 2;
            o.batch = (uint32_t)v;
            break;
        case 'j':
            if (!tools_parse_u64("traffic", "--threads", optarg, &v) || !v || v > 64)
                return 2;
            o.threads = (uint32_t)v;
            break;
        case 'T':
            errno = 0;
            o.seconds = strtod(optarg, &end);
            if (errno || end == optarg || *end || o.seconds < 0) {
                fprintf(stderr, "dhps traffic: bad --seconds '%s'\n", optarg);
                return 2;
            }
            break;
        case 'i':
            if (!tools_parse_u64("traffic", "--interval-ms", optarg, &o.interval_ms) ||
                o.interval_ms < 10)
                return 2;
            break;
        case 'D':
            if (!tools_parse_u64("traffic", "--deadline-ms", optarg, &o.deadline_ms) ||
                !o.deadline_ms || o.deadline_ms > 600000)
                return 2;
            break;
        case 'y':
            if (!parse_delays(optarg, o.tier_delay_us)) {
                fprintf(stderr, "dhps traffic: --tier-delay-us: four microsecond counts "
                                "HOST,POD,AZ,REMOTE, each 0..60000000\n");
                return 2;
            }
            o.have_delay = true;
            break;
        case 'o':
            if (!tools_parse_u64("traffic", "--connect-timeout-ms", optarg, &v) || !v ||
                v > 600000)
                return 2;
            o.tgt.connect_timeout_ms = (uint32_t)v;
            break;
        case 'L': o.load = true; break;
        case 'C': o.check = true; break;
        case 'J': o.json = true; break;
        case 'h': printf("%s", traffic_usage); return 0;
        default: fprintf(stderr, "%s", traffic_usage); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "%s", traffic_usage);
        return 2;
    }

    /* the smallest message bound (a power of two, >= 64 KiB) that a batch of lookups or
     * of --load writes (256 rows) needs: a verbs channel registers 32 slots of it each
     * way, which is slow under emulation (not 32 x 4 MiB as bulk loads would) */
    uint64_t need = (uint64_t)(o.batch > 256 ? o.batch : 256) * (o.dim * 4 + 16) + 4096;
    o.tgt.max_msg = 64u << 10;
    while (o.tgt.max_msg < need && o.tgt.max_msg < DHPS_RPC_MAX_MSG_LIMIT)
        o.tgt.max_msg <<= 1;
    tools_conn *conn = NULL;
    if (tools_conn_open(&o.tgt, &conn) < 0)
        return 1;
    int rc = 1;
    size_t nn = dhps_cluster_map_nnodes(conn->map);
    uint64_t *prev = calloc(nn, sizeof *prev), *msgs = calloc(nn, sizeof *msgs),
             *first = calloc(nn, sizeof *first);
    struct tr_thread *th = calloc(o.threads, sizeof *th);
    if (!prev || !msgs || !first || !th) {
        fprintf(stderr, "dhps traffic: out of memory\n");
        goto out;
    }
    if (o.load) {
        uint64_t t0 = dhps_mono_ns();
        int e = tr_load(conn, &o);
        if (e) {
            fprintf(stderr, "dhps traffic: --load: %s\n", dhps_strerror(e));
            goto out;
        }
        fprintf(stderr, "dhps traffic: loaded %llu keys x dim %u into %s in %.2f s\n",
                (unsigned long long)o.keys, o.dim, o.table,
                (double)(dhps_mono_ns() - t0) / 1e9);
    }
    if (o.have_delay && tr_delays(conn, &o, true))
        goto out;

    atomic_store(&tr_stop, false);
    atomic_store(&tr_ready, 0);
    struct sigaction sa = {.sa_handler = tr_on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    uint32_t started = 0;
    for (; started < o.threads; started++) {
        struct tr_thread *t = &th[started];
        t->o = &o;
        t->client = conn->client;
        t->seed = 0x9e3779b97f4a7c15ull * (started + 1) ^ dhps_mono_ns();
        pthread_mutex_init(&t->mu, NULL);
        if (pthread_create(&t->th, NULL, tr_run, t)) {
            pthread_mutex_destroy(&t->mu);
            fprintf(stderr, "dhps traffic: cannot start thread %u\n", started);
            atomic_store(&tr_stop, true);
            break;
        }
    }

    while (atomic_load(&tr_ready) < started && !atomic_load(&tr_stop)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
        nanosleep(&ts, NULL);
    }
    for (uint32_t i = 0; i < started; i++) { /* intervals start after every warm-up */
        pthread_mutex_lock(&th[i].mu);
        memset(&th[i].n, 0, sizeof th[i].n);
        memset(&th[i].h, 0, sizeof th[i].h);
        pthread_mutex_unlock(&th[i].mu);
    }
    for (size_t i = 0; i < nn; i++)
        first[i] = prev[i] = tr_node_msgs(conn, i);
    dhps_route_stats rbase = {0}, rfirst;
    (void)tr_route_since(conn, &rbase); /* from here on */
    rfirst = rbase;
    struct tr_counts all = {0};
    tools_hist allh = {0}, ih;
    uint64_t t0 = dhps_mono_ns(), next = t0;
    bool last = false;
    while (!last) {
        next += o.interval_ms * 1000000ull;
        uint64_t end_ns = o.seconds > 0 ? t0 + (uint64_t)(o.seconds * 1e9) : UINT64_MAX;
        if (next >= end_ns)
            next = end_ns;
        for (uint64_t now = dhps_mono_ns(); now < next && !atomic_load(&tr_stop);
             now = dhps_mono_ns()) {
            uint64_t left = next - now, step = left < 20000000ull ? left : 20000000ull;
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step};
            nanosleep(&ts, NULL);
        }
        last = atomic_load(&tr_stop) || next >= end_ns;
        struct tr_counts in = {0};
        memset(&ih, 0, sizeof ih);
        for (uint32_t i = 0; i < started; i++) {
            struct tr_thread *t = &th[i];
            pthread_mutex_lock(&t->mu);
            counts_add(&in, &t->n);
            tools_hist_merge(&ih, &t->h);
            memset(&t->n, 0, sizeof t->n);
            memset(&t->h, 0, sizeof t->h);
            pthread_mutex_unlock(&t->mu);
        }
        for (size_t i = 0; i < nn; i++) {
            uint64_t m = tr_node_msgs(conn, i);
            msgs[i] = m - prev[i];
            prev[i] = m;
        }
        counts_add(&all, &in);
        tools_hist_merge(&allh, &ih);
        struct tr_route rt = tr_route_since(conn, &rbase);
        tr_print(&o, conn, (double)(dhps_mono_ns() - t0) / 1e9, false, &in, &ih, msgs, &rt);
    }
    atomic_store(&tr_stop, true);
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(th[i].th, NULL);
        pthread_mutex_destroy(&th[i].mu);
        /* batches that finished after the last interval still count */
        counts_add(&all, &th[i].n);
        tools_hist_merge(&allh, &th[i].h);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    for (size_t i = 0; i < nn; i++)
        msgs[i] = tr_node_msgs(conn, i) - first[i];
    struct tr_route rt = tr_route_since(conn, &rfirst);
    tr_print(&o, conn, (double)(dhps_mono_ns() - t0) / 1e9, true, &all, &allh, msgs, &rt);
    if (o.have_delay)
        tr_delays(conn, &o, false);
    rc = started == o.threads && all.lookups ? 0 : 1;
out:
    free(prev);
    free(msgs);
    free(first);
    free(th);
    tools_conn_close(conn);
    return rc;
}

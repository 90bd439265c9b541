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
 *
 * Membership (the topology test's POD join and node replacement, docs/topology.md):
 * --etcd URL --etcd-cluster NAME make the client follow the map in etcd; whenever the
 * client's map version changes the map is read from etcd too, so nodes added since
 * start get their tier's delay rule and their messages counted (--per-node prints each
 * node's share, n<ID>=). --updates N runs one more thread, on a client of its own (its
 * messages are not in the shares), writing batches of 8 of N update keys (1 << 40 + i)
 * with --ack, each row all equal to the key's generation; a lookup batch then carries a
 * quarter of update keys, and a key acknowledged before the lookup started must be found
 * (acked_missing) with at least that generation (stale, with --ack all). At the end
 * every acknowledged update key (and with --check every sample key) is read once more
 * through the router: final_lost counts those missing or older than acknowledged.
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
#include "dhps/coord.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/route.h"
#include "dhps/rpc.h"
#include "ctl.h"
#include "tools.h"
#include "toolsclient.h"
#include "traffic.h"

int dhps_cmd_traffic(int argc, char **argv);

static const char traffic_usage[] =
    "usage: dhps traffic [--cluster DIR | --map FILE --secret FILE] [--host H] [--pod P]\n"
    "                    [--az A] [--table T] [--dim 32] [--keys 10000] [--batch 100]\n"
    "                    [--threads 1] [--seconds 10] [--interval-ms 500]\n"
    "                    [--deadline-ms 100] [--tier-delay-us H,P,A,R] [--load] [--check]\n"
    "                    [--connect-timeout-ms MS] [--json] [--per-node]\n"
    "                    [--etcd URL --etcd-cluster NAME] [--updates N] [--ack all|quorum|one]\n"
    "  Steady lookups; every interval prints lookups, complete/incomplete, latency and\n"
    "  the share of rpc messages per tier (relative to the client's labels).\n"
    "  --load writes the sample rows of keys 0..keys-1 first; --check verifies them.\n"
    "  --tier-delay-us injects that latency (us) toward nodes of each tier.\n"
    "  --seconds 0 runs until SIGINT/SIGTERM.\n"
    "  --etcd/--etcd-cluster follow the map in etcd; --per-node adds each node's share.\n"
    "  --updates N writes N update keys (--ack, default all) beside the lookups and checks\n"
    "  that acknowledged ones are found, then reads them all once more at the end.\n";

static void counts_add(struct tr_counts *to, const struct tr_counts *from)
{
    to->lookups += from->lookups;
    to->complete += from->complete;
    to->incomplete += from->incomplete;
    to->wrong += from->wrong;
    to->missing += from->missing;
    to->errors += from->errors;
    to->acked_missing += from->acked_missing;
    to->stale += from->stale;
}

/* Update keys: TR_UBASE + 0..updates-1. tr_gen is the update thread's own; tr_acked[k]
 * the last generation acknowledged (release store after the update returned; a lookup
 * loads it before it starts, so a key acknowledged then must be found at least that new). */
#define TR_UBASE (1ull << 40)
#define TR_UBATCH 8u
static uint32_t *tr_gen;
static _Atomic uint32_t *tr_acked;

struct tr_upd {
    pthread_t th;
    const struct tr_opts *o;
    dhps_client *client;
    pthread_mutex_t mu; /* the counters: the update thread and the reporter */
    uint64_t updates, failed, acked_keys;
};

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
    /* with --updates the last quarter of each batch (at least one key) are update keys */
    size_t nu = o->updates ? (n / 4 ? n / 4 : 1) : 0, n0 = n - nu;
    uint64_t *keys = malloc(n * sizeof *keys), *mask = malloc(words * sizeof *mask);
    float *out = malloc(n * o->dim * sizeof *out), *want = malloc(o->dim * sizeof *want);
    uint32_t *snap = malloc((nu ? nu : 1) * sizeof *snap);
    if (!keys || !mask || !out || !want || !snap) {
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
        for (size_t i = 0; i < n0; i++)
            keys[i] = dhps_splitmix64(&t->seed) % o->keys;
        for (size_t i = 0; i < nu; i++) {
            uint32_t k = (uint32_t)(dhps_splitmix64(&t->seed) % o->updates);
            keys[n0 + i] = TR_UBASE + k;
            snap[i] = atomic_load_explicit(&tr_acked[k], memory_order_acquire);
        }
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
        uint64_t wrong = 0, missing = 0, acked_missing = 0, stale = 0;
        if (o->check && rc == 0) {
            for (size_t i = 0; i < n0; i++) {
                if (mask[i / 64] >> (i % 64) & 1) {
                    missing++;
                    continue;
                }
                tools_sample_row(keys[i], o->dim, want);
                wrong += memcmp(want, out + i * o->dim, o->dim * sizeof *want) != 0;
            }
        }
        for (size_t i = n0; rc == 0 && i < n; i++) { /* update keys: always checked */
            uint32_t a = snap[i - n0];
            if (mask[i / 64] >> (i % 64) & 1) {
                acked_missing += a != 0;
                continue;
            }
            const float *row = out + i * o->dim;
            bool uniform = true;
            for (uint32_t d = 1; d < o->dim; d++)
                uniform &= row[d] == row[0];
            wrong += !uniform;
            stale += uniform && o->ack == DHPS_ACK_ALL && row[0] < (float)a;
        }
        pthread_mutex_lock(&t->mu);
        t->n.lookups++;
        t->n.errors += rc < 0;
        t->n.acked_missing += acked_missing;
        t->n.stale += stale;
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
    free(snap);
    return NULL;
}

/* The update thread: batches of TR_UBATCH distinct update keys, each row all equal to the
 * key's next generation, with --ack; a key not in failed_mask is acknowledged. */
static void *tr_update_run(void *arg)
{
    struct tr_upd *u = arg;
    const struct tr_opts *o = u->o;
    uint64_t seed = 0x51ed270b2f6a1c3dull ^ dhps_mono_ns(), keys[TR_UBATCH], mask[1];
    uint32_t idx[TR_UBATCH], nb = o->updates < TR_UBATCH ? o->updates : TR_UBATCH;
    float *rows = malloc((size_t)TR_UBATCH * o->dim * sizeof *rows);
    while (rows && !atomic_load_explicit(&tr_stop, memory_order_relaxed)) {
        uint32_t n = 0;
        while (n < nb) {
            uint32_t k = (uint32_t)(dhps_splitmix64(&seed) % o->updates);
            bool dup = false;
            for (uint32_t j = 0; j < n; j++)
                dup |= idx[j] == k;
            if (dup)
                continue;
            idx[n] = k;
            keys[n] = TR_UBASE + k;
            uint32_t g = ++tr_gen[k];
            for (uint32_t d = 0; d < o->dim; d++)
                rows[(size_t)n * o->dim + d] = (float)g;
            n++;
        }
        mask[0] = ~0ull; /* an error that writes no mask acknowledges nothing */
        int rc = dhps_client_update(u->client, o->table, keys, rows, n, o->dim, DHPS_FP32, 0,
                                    o->ack, 4 * o->deadline_ms * 1000, mask, NULL);
        uint64_t acked = 0;
        for (uint32_t j = 0; j < n; j++)
            if (rc == 0 || !((mask[0] >> j) & 1)) {
                atomic_store_explicit(&tr_acked[idx[j]], tr_gen[idx[j]],
                                      memory_order_release);
                acked++;
            }
        pthread_mutex_lock(&u->mu);
        u->updates++;
        u->failed += rc != 0;
        u->acked_keys += acked;
        pthread_mutex_unlock(&u->mu);
        struct timespec ts = {0, 2000000}; /* a few hundred batches a second at most */
        nanosleep(&ts, NULL);
    }
    free(rows);
    return NULL;
}

static void tr_final_check(dhps_client *client, const struct tr_opts *o, struct tr_final *f)
{
    enum { B = 256 }; /* the rows of one --load batch: the message bound allows them */
    uint64_t keys[B], mask[B / 64], unans[B / 64];
    uint32_t want_gen[B];
    float *out = malloc((size_t)B * o->dim * sizeof *out), *want = malloc(o->dim * sizeof *want);
    uint64_t nsample = o->check ? o->keys : 0, total = nsample + o->updates;
    uint64_t deadline_us = 10 * o->deadline_ms * 1000;
    if (deadline_us < 5000000)
        deadline_us = 5000000;
    for (uint64_t next = 0; out && want && next < total;) {
        uint32_t n = 0;
        for (; next < total && n < B; next++) {
            if (next < nsample) {
                keys[n] = next;
                want_gen[n++] = 0;
                continue;
            }
            uint32_t k = (uint32_t)(next - nsample), a = atomic_load(&tr_acked[k]);
            if (!a)
                continue; /* never acknowledged: nothing to find */
            keys[n] = TR_UBASE + k;
            want_gen[n++] = a;
        }
        if (!n)
            break;
        int rc = -1;
        for (int attempt = 0; attempt < 5 && rc != 0; attempt++)
            rc = dhps_client_lookup_masks(client, o->table, keys, n, out, o->dim, DHPS_FP32,
                                          mask, unans, deadline_us, NULL);
        for (uint32_t i = 0; i < n; i++) {
            f->keys++;
            bool miss = mask[i / 64] >> (i % 64) & 1;
            if (miss && rc != 0 && (unans[i / 64] >> (i % 64) & 1)) {
                f->unread++;
                continue;
            }
            if (miss) {
                f->lost++;
                continue;
            }
            const float *row = out + (size_t)i * o->dim;
            if (!want_gen[i]) {
                tools_sample_row(keys[i], o->dim, want);
                f->wrong += memcmp(want, row, o->dim * sizeof *want) != 0;
                continue;
            }
            bool uniform = true;
            for (uint32_t d = 1; d < o->dim; d++)
                uniform &= row[d] == row[0];
            if (!uniform)
                f->wrong++;
            else if (o->ack == DHPS_ACK_ALL && row[0] < (float)want_gen[i])
                f->lost++;
        }
    }
    free(out);
    free(want);
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

/* Messages the client has sent so far to node id. */
static uint64_t tr_node_msgs(const tools_conn *conn, uint32_t id)
{
    dhps_client_node_stats st;
    if (dhps_client_node_stats_get(conn->client, id, &st))
        return 0;
    return st.messages;
}

/* Install (on) or remove the per-tier delay rule of node e (by its address: the rule
 * table is process-wide, so the update thread's client is delayed the same way). */
static int tr_delay(const struct tr_opts *o, struct tr_node *e, bool on)
{
    uint32_t d = o->tier_delay_us[e->tier];
    if (!o->have_delay || !d || e->delayed == on)
        return 0;
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = d;
    int rc = on ? dhps_rpc_fault_set(e->ip, e->port, &f) : dhps_rpc_fault_clear(e->ip, e->port);
    if (rc && on) {
        fprintf(stderr, "dhps traffic: delay rule for node %u: %s\n", e->id, dhps_strerror(rc));
        return rc;
    }
    e->delayed = on;
    return 0;
}

/* Node nd's entry in ns, made on first sight (its tier; started: the run has begun, so
 * its counts start at 0), with its tier's delay rule installed. NULL with *rc = 0 when ns
 * is full; NULL with *rc < 0 when the rule could not be set. */
static struct tr_node *tr_node_take(tools_conn *conn, const struct tr_opts *o,
                                    struct tr_nodes *ns, const dhps_cluster_node *nd,
                                    bool started, int *rc)
{
    struct tr_node *e = NULL;
    *rc = 0;
    for (size_t k = 0; k < ns->n && !e; k++)
        if (ns->nd[k].id == nd->id)
            e = &ns->nd[k];
    if (!e) {
        if (ns->n == TR_MAX_NODES)
            return NULL;
        e = &ns->nd[ns->n++];
        memset(e, 0, sizeof *e);
        e->id = nd->id;
        e->tier = tools_tier_of(nd->host, nd->pod, nd->az, conn->host, conn->pod, conn->az);
        snprintf(e->ip, sizeof e->ip, "%s", nd->ip);
        e->port = nd->port;
        e->first = e->prev = started ? 0 : tr_node_msgs(conn, e->id);
    }
    if ((*rc = tr_delay(o, e, true)))
        return NULL;
    return e;
}

/* Take map's nodes into ns (new ones: tier, delay rule; every known one: in_map).
 * started: the run has begun, so a new node's counts start at 0. */
static int tr_nodes_merge(tools_conn *conn, const struct tr_opts *o, struct tr_nodes *ns,
                          const dhps_cluster_map *map, bool started)
{
    for (size_t k = 0; k < ns->n; k++)
        ns->nd[k].in_map = false;
    for (size_t i = 0; i < dhps_cluster_map_nnodes(map); i++) {
        int rc;
        struct tr_node *e =
            tr_node_take(conn, o, ns, dhps_cluster_map_node_at(map, i), started, &rc);
        if (rc)
            return rc;
        if (e)
            e->in_map = true;
    }
    return 0;
}

/* --etcd, every interval: one read of etcd (the map and the registrations). Every
 * registered node gets its tier's delay rule at once: a server registers before an
 * operator can add it to a map, so the rule is in place before the client can route to
 * it (taking nodes from the map alone left a window of up to one interval in which a
 * new node answered without its delay, and the router learned its tier's baseline from
 * those answers). When the client's map version moved, the map's nodes are taken too
 * (in_map). A failed read is tried again at the next interval. */
static void tr_nodes_refresh(tools_conn *conn, const struct tr_opts *o, struct tr_nodes *ns,
                             dhps_coord *coord)
{
    ctl_state st;
    if (!coord || ctl_state_read(coord, conn->etcd_cluster, &st))
        return;
    for (size_t i = 0; i < st.nregs; i++) {
        int rc;
        if (st.regs[i].node.port)
            tr_node_take(conn, o, ns, &st.regs[i].node, true, &rc);
    }
    uint64_t v = dhps_client_map_version(conn->client);
    if (v != ns->version && st.map && dhps_cluster_map_version(st.map) >= v &&
        tr_nodes_merge(conn, o, ns, st.map, true) == 0)
        ns->version = v;
    ctl_state_free(&st);
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
        {"etcd", required_argument, 0, 'e'},    {"etcd-cluster", required_argument, 0, 'E'},
        {"updates", required_argument, 0, 'u'}, {"ack", required_argument, 0, 'a'},
        {"per-node", no_argument, 0, 'N'},
        {0, 0, 0, 0}};
    struct tr_opts o = {.table = "emb", .dim = 32, .batch = 100, .threads = 1,
                        .keys = 10000, .deadline_ms = 100, .interval_ms = 500, .seconds = 10};
    uint64_t v;
    int c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:m:s:H:P:A:t:d:k:b:j:T:i:D:y:o:e:E:u:a:NLCJh", lo,
                            NULL)) != -1) {
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
        case 'e': o.tgt.etcd = optarg; break;
        case 'E': o.tgt.etcd_cluster = optarg; break;
        case 'u':
            if (!tools_parse_u64("traffic", "--updates", optarg, &v) || v > 1000000)
                return 2;
            o.updates = (uint32_t)v;
            break;
        case 'a':
            if (!strcmp(optarg, "all"))
                o.ack = DHPS_ACK_ALL;
            else if (!strcmp(optarg, "quorum"))
                o.ack = DHPS_ACK_QUORUM;
            else if (!strcmp(optarg, "one"))
                o.ack = DHPS_ACK_ONE;
            else {
                fprintf(stderr, "dhps traffic: --ack all, quorum or one\n");
                return 2;
            }
            break;
        case 'N': o.per_node = true; break;
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
    tools_conn *conn = NULL, *uconn = NULL;
    dhps_coord *coord = NULL;
    struct tr_nodes *ns = NULL;
    struct tr_thread *th = NULL;
    struct tr_upd upd = {.o = &o};
    bool upd_started = false;
    int rc = 1;
    if (tools_conn_open(&o.tgt, &conn) < 0)
        return 1;
    ns = calloc(1, sizeof *ns);
    th = calloc(o.threads, sizeof *th);
    if (o.updates) {
        tr_gen = calloc(o.updates, sizeof *tr_gen);
        tr_acked = calloc(o.updates, sizeof *tr_acked);
    }
    if (!ns || !th || (o.updates && (!tr_gen || !tr_acked))) {
        fprintf(stderr, "dhps traffic: out of memory\n");
        goto out;
    }
    if (conn->etcd[0]) { /* the map's nodes as they change (tr_nodes_refresh) */
        dhps_coord_params cp;
        dhps_coord_params_init(&cp);
        cp.endpoint = conn->etcd;
        if (dhps_coord_create(&cp, &coord) < 0) {
            fprintf(stderr, "dhps traffic: etcd %s: bad endpoint\n", conn->etcd);
            goto out;
        }
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
    /* the nodes of the map the client started with (installs their delay rules), then
     * with --etcd those of etcd's map if the client has a newer one already */
    ns->version = dhps_cluster_map_version(conn->map);
    if (tr_nodes_merge(conn, &o, ns, conn->map, false))
        goto out;
    tr_nodes_refresh(conn, &o, ns, coord);
    if (o.updates && tools_conn_open(&o.tgt, &uconn) < 0)
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
    for (size_t i = 0; i < ns->n; i++)
        ns->nd[i].first = ns->nd[i].prev = tr_node_msgs(conn, ns->nd[i].id);
    if (o.updates && !atomic_load(&tr_stop)) {
        upd.client = uconn->client;
        pthread_mutex_init(&upd.mu, NULL);
        if (pthread_create(&upd.th, NULL, tr_update_run, &upd)) {
            pthread_mutex_destroy(&upd.mu);
            fprintf(stderr, "dhps traffic: cannot start the update thread\n");
            atomic_store(&tr_stop, true);
        } else
            upd_started = true;
    }
    dhps_route_stats rbase = {0}, rfirst;
    (void)tr_route_since(conn, &rbase); /* from here on */
    rfirst = rbase;
    struct tr_counts all = {0};
    struct tr_upd_counts uc = {.have = o.updates > 0}, ucprev = {0};
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
        tr_nodes_refresh(conn, &o, ns, coord);
        for (size_t i = 0; i < ns->n; i++) {
            uint64_t m = tr_node_msgs(conn, ns->nd[i].id);
            ns->nd[i].msgs = m - ns->nd[i].prev;
            ns->nd[i].prev = m;
        }
        struct tr_upd_counts ui = {.have = uc.have};
        if (upd_started) {
            pthread_mutex_lock(&upd.mu);
            uc.updates = upd.updates;
            uc.failed = upd.failed;
            uc.acked_keys = upd.acked_keys;
            pthread_mutex_unlock(&upd.mu);
            ui.updates = uc.updates - ucprev.updates;
            ui.failed = uc.failed - ucprev.failed;
            ui.acked_keys = uc.acked_keys - ucprev.acked_keys;
            ucprev = uc;
        }
        counts_add(&all, &in);
        tools_hist_merge(&allh, &ih);
        struct tr_route rt = tr_route_since(conn, &rbase);
        tr_print(&o, conn, ns, (double)(dhps_mono_ns() - t0) / 1e9, false, &in, &ih, &rt, &ui,
                 NULL);
    }
    atomic_store(&tr_stop, true);
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(th[i].th, NULL);
        pthread_mutex_destroy(&th[i].mu);
        /* batches that finished after the last interval still count */
        counts_add(&all, &th[i].n);
        tools_hist_merge(&allh, &th[i].h);
    }
    if (upd_started) {
        pthread_join(upd.th, NULL);
        pthread_mutex_destroy(&upd.mu);
        uc.updates = upd.updates;
        uc.failed = upd.failed;
        uc.acked_keys = upd.acked_keys;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    tr_nodes_refresh(conn, &o, ns, coord);
    for (size_t i = 0; i < ns->n; i++)
        ns->nd[i].msgs = tr_node_msgs(conn, ns->nd[i].id) - ns->nd[i].first;
    struct tr_route rt = tr_route_since(conn, &rfirst);
    struct tr_final fin = {0};
    bool final = o.updates > 0 || o.check;
    if (final)
        tr_final_check(conn->client, &o, &fin);
    tr_print(&o, conn, ns, (double)(dhps_mono_ns() - t0) / 1e9, true, &all, &allh, &rt, &uc,
             final ? &fin : NULL);
    rc = started == o.threads && all.lookups ? 0 : 1;
out:
    for (size_t i = 0; ns && i < ns->n; i++)
        tr_delay(&o, &ns->nd[i], false);
    free(ns);
    free(th);
    free(tr_gen);
    free(tr_acked);
    tr_gen = NULL;
    tr_acked = NULL;
    dhps_coord_destroy(coord);
    tools_conn_close(uconn);
    tools_conn_close(conn);
    return rc;
}

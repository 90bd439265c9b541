/*
 * dhps sim: a discrete-event simulation of inference clients reading sharded tables from
 * a cluster of 1,000+ nodes. Every routing decision is made by the real route library
 * (one router per client, on the simulated clock); the simulation only models the
 * cluster: placement, per-tier latencies with jitter and a tail, slow nodes, nodes that
 * die and revive, and a POD or AZ that becomes unreachable for a while.
 *
 * A request fans out to --fanout shards (sub-batches). Each sub-batch is sent to the
 * replica the router picks; after the router's hedge delay, and within its budget, a
 * hedge goes to another replica; an attempt that does not answer within the attempt
 * timeout (or the deadline) is reported as a timeout and, within the retry budget and
 * the deadline, retried on a replica not tried yet. A request is available when every
 * sub-batch answered before the deadline. Deterministic for a seed.
 */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/route.h"

#define US 1000ull
#define MAX_ATT 6
#define NREP 3

struct sim_opts {
    uint32_t nodes, azs, pods_per_az, clients, fanout;
    uint64_t requests, seed;
    double fail_rate, slow_share, rate, slow_pod;
    const char *partition;
    uint64_t deadline_ns, attempt_timeout_ns;
    bool json, hedge, retry, flat;
};

/* ---- random ------------------------------------------------------------------------- */

static uint64_t g_rng;
static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd01(void) { return (double)(rnd() >> 11) * 0x1.0p-53; }
static uint32_t rndn(uint32_t n) { return (uint32_t)(rnd() % n); }

/* ---- cluster ------------------------------------------------------------------------ */

struct node {
    uint32_t pod, az;     /* global pod index, az index */
    bool slow;
    uint64_t dead_from, dead_until; /* dead in [from, until) */
};

struct cluster {
    struct node *n;
    uint32_t (*rep)[NREP]; /* shard -> replicas; one shard per node */
    uint32_t npods;
    int part_kind;         /* 0 none, 1 pod, 2 az */
    uint32_t part_id;
    uint64_t part_from, part_until;
    uint64_t slow_from, slow_until; /* --slow-pod: POD 0's own fabric is slow */
    double slow_pod;
};

static uint64_t g_now;
static uint64_t sim_clock(void *arg)
{
    (void)arg;
    return g_now;
}

/* ---- events ---------------------------------------------------------------------------- */

enum { EV_ARRIVAL, EV_RESPONSE, EV_HEDGE, EV_TIMEOUT };

struct event {
    uint64_t t;
    uint64_t seq; /* ties broken by insertion order: deterministic */
    uint32_t type, sub, gen, att;
};

static struct event *g_heap;
static size_t g_nheap, g_capheap;
static uint64_t g_seq;

static bool ev_less(const struct event *a, const struct event *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void ev_push(uint64_t t, uint32_t type, uint32_t sub, uint32_t gen, uint32_t att)
{
    if (g_nheap == g_capheap) {
        g_capheap = g_capheap ? g_capheap * 2 : 4096;
        g_heap = realloc(g_heap, g_capheap * sizeof *g_heap);
        if (!g_heap) {
            fprintf(stderr, "dhps sim: out of memory\n");
            exit(1);
        }
    }
    struct event e = {t, g_seq++, type, sub, gen, att};
    size_t i = g_nheap++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&e, &g_heap[p]))
            break;
        g_heap[i] = g_heap[p];
        i = p;
    }
    g_heap[i] = e;
}

static struct event ev_pop(void)
{
    struct event top = g_heap[0], last = g_heap[--g_nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= g_nheap)
            break;
        if (c + 1 < g_nheap && ev_less(&g_heap[c + 1], &g_heap[c]))
            c++;
        if (!ev_less(&g_heap[c], &last))
            break;
        g_heap[i] = g_heap[c];
        i = c;
    }
    if (g_nheap)
        g_heap[i] = last;
    return top;
}

/* ---- requests and sub-batches ------------------------------------------------------------ */

struct request {
    uint64_t arrival, deadline, last_done;
    uint32_t client, left;
    bool failed;
};

struct sub {
    uint32_t gen, req, shard;
    uint8_t natt, open, hedged, done;
    dhps_route_choice att[MAX_ATT];
    bool att_open[MAX_ATT];
    uint64_t att_resp[MAX_ATT]; /* response time, or UINT64_MAX: never */
    uint32_t tried[MAX_ATT];
};

struct pool {
    void *items;
    size_t size, cap, n;
    uint32_t *free;
    size_t nfree;
};

static uint32_t pool_get(struct pool *p)
{
    if (p->nfree)
        return p->free[--p->nfree];
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 1024;
        p->items = realloc(p->items, p->cap * p->size);
        p->free = realloc(p->free, p->cap * sizeof *p->free);
        if (!p->items || !p->free) {
            fprintf(stderr, "dhps sim: out of memory\n");
            exit(1);
        }
    }
    memset((char *)p->items + p->n * p->size, 0, p->size);
    return (uint32_t)p->n++;
}
static void pool_put(struct pool *p, uint32_t i) { p->free[p->nfree++] = i; }

/* ---- the simulation ----------------------------------------------------------------------- */

struct sim {
    struct sim_opts o;
    struct cluster c;
    dhps_route **routers;
    uint32_t *client_node; /* the node whose host each client shares */
    struct pool reqs, subs;
    uint64_t issued, finished, failed;
    uint64_t *lat; /* per finished request, ns */
    uint64_t tier_lat[DHPS_ROUTE_TIERS];
    uint64_t sent[DHPS_ROUTE_TIERS]; /* attempts by true network tier */
    uint64_t pod0_att[10], pod0_in[10]; /* POD-0 clients' attempts by tenth of the run */
    uint64_t T;
    uint64_t sim_end;
};

#define REQ(s, i) (&((struct request *)(s)->reqs.items)[i])
#define SUB(s, i) (&((struct sub *)(s)->subs.items)[i])

static int tier_between(const struct cluster *c, uint32_t client_node, uint32_t node)
{
    if (client_node == node)
        return DHPS_ROUTE_HOST;
    if (c->n[client_node].pod == c->n[node].pod)
        return DHPS_ROUTE_POD;
    if (c->n[client_node].az == c->n[node].az)
        return DHPS_ROUTE_AZ;
    return DHPS_ROUTE_REMOTE;
}

static bool in_partition(const struct cluster *c, uint32_t node)
{
    if (!c->part_kind || g_now < c->part_from || g_now >= c->part_until)
        return false;
    return c->part_kind == 1 ? c->n[node].pod == c->part_id : c->n[node].az == c->part_id;
}

/* When the attempt from client_node to node answers, or UINT64_MAX. */
static uint64_t response_time(struct sim *s, uint32_t client_node, uint32_t node)
{
    const struct node *n = &s->c.n[node];
    if (g_now >= n->dead_from && g_now < n->dead_until)
        return UINT64_MAX;
    /* a partition cuts the group off from everyone outside it */
    if (in_partition(&s->c, node) != in_partition(&s->c, client_node))
        return UINT64_MAX;
    int tier = tier_between(&s->c, client_node, node);
    double lat = (double)s->tier_lat[tier];
    if (tier == DHPS_ROUTE_POD && n->pod == 0 && g_now >= s->c.slow_from &&
        g_now < s->c.slow_until)
        lat *= s->c.slow_pod;
    lat *= 0.8 + 0.4 * rnd01();  /* +-20 % jitter */
    if (rnd01() < 0.01)
        lat *= 2.0 + 8.0 * rnd01(); /* 1 % tail: 2-10x (queueing, GC, retransmits) */
    if (n->slow)
        lat *= 10.0;
    uint64_t t = g_now + (uint64_t)lat;
    /* a node that dies before answering never answers */
    if (t >= n->dead_from && g_now < n->dead_until && n->dead_from > g_now)
        return UINT64_MAX;
    return t;
}

static void send_attempt(struct sim *s, uint32_t si, int kind)
{
    struct sub *sb = SUB(s, si);
    struct request *rq = REQ(s, sb->req);
    dhps_route *r = s->routers[rq->client];
    dhps_route_choice ch;
    if (sb->natt >= MAX_ATT ||
        dhps_route_pick(r, s->c.rep[sb->shard], NREP, sb->tried, sb->natt, kind, &ch) != 0)
        return;
    uint32_t a = sb->natt++;
    sb->att[a] = ch;
    sb->att_open[a] = true;
    sb->tried[a] = ch.node;
    sb->open++;
    uint64_t resp = response_time(s, s->client_node[rq->client], ch.node);
    int tier = tier_between(&s->c, s->client_node[rq->client], ch.node);
    s->sent[tier]++;
    if (s->c.n[s->client_node[rq->client]].pod == 0) {
        uint64_t tenth = g_now * 10 / (s->T ? s->T : 1);
        tenth = tenth > 9 ? 9 : tenth;
        s->pod0_att[tenth]++;
        s->pod0_in[tenth] += tier <= DHPS_ROUTE_POD;
    }
    sb->att_resp[a] = resp;
    uint64_t tmo = g_now + s->o.attempt_timeout_ns;
    if (tmo > rq->deadline)
        tmo = rq->deadline;
    if (resp <= tmo)
        ev_push(resp, EV_RESPONSE, si, sb->gen, a);
    else
        ev_push(tmo, EV_TIMEOUT, si, sb->gen, a);
    if (s->o.hedge && !sb->hedged) {
        uint64_t d = (ch.flags & DHPS_ROUTE_PROBE) ? 0 : dhps_route_hedge_delay(r, &ch);
        if (g_now + d < tmo)
            ev_push(g_now + d, EV_HEDGE, si, sb->gen, a);
    }
}

static void sub_finish(struct sim *s, uint32_t si, bool ok)
{
    struct sub *sb = SUB(s, si);
    struct request *rq = REQ(s, sb->req);
    if (getenv("DHPS_SIM_TRACE") && (!ok || g_now > rq->deadline)) {
        fprintf(stderr, "fail t=%llu ok=%d late=%lld natt=%u:", (unsigned long long)g_now, ok,
                (long long)(g_now - rq->deadline), sb->natt);
        for (unsigned a = 0; a < sb->natt; a++)
            fprintf(stderr, " [slow%d n%u t%u k%u f%u start=%llu resp=%lld]",
                    s->c.n[sb->att[a].node].slow, sb->att[a].node, sb->att[a].tier, sb->att[a].kind, sb->att[a].flags,
                    (unsigned long long)sb->att[a].start_ns,
                    (long long)(sb->att_resp[a] - sb->att[a].start_ns));
        fprintf(stderr, "\n");
    }
    sb->done = 1;
    if (!ok || g_now > rq->deadline)
        rq->failed = true;
    if (g_now > rq->last_done)
        rq->last_done = g_now;
    dhps_route *r = s->routers[rq->client];
    for (uint32_t a = 0; a < sb->natt; a++)
        if (sb->att_open[a]) { /* the caller cancels the losers */
            sb->att_open[a] = false;
            sb->open--;
            dhps_route_report(r, &sb->att[a], g_now - sb->att[a].start_ns,
                              DHPS_ROUTE_CANCELLED);
        }
    uint32_t ri = sb->req;
    sb->gen++;
    pool_put(&s->subs, si);
    if (--rq->left == 0) {
        uint64_t l = (rq->failed ? rq->deadline : rq->last_done) - rq->arrival;
        s->lat[s->finished++] = l;
        s->failed += rq->failed;
        pool_put(&s->reqs, ri);
    }
}

static void on_event(struct sim *s, const struct event *e)
{
    if (e->type == EV_ARRIVAL) {
        uint32_t ri = pool_get(&s->reqs);
        struct request *rq = REQ(s, ri);
        memset(rq, 0, sizeof *rq);
        rq->arrival = g_now;
        rq->deadline = g_now + s->o.deadline_ns;
        rq->client = rndn(s->o.clients);
        rq->left = s->o.fanout;
        rq->last_done = g_now;
        for (uint32_t k = 0; k < s->o.fanout; k++) {
            uint32_t si = pool_get(&s->subs);
            struct sub *sb = SUB(s, si);
            uint32_t gen = sb->gen;
            memset(sb, 0, sizeof *sb);
            sb->gen = gen;
            sb->req = ri;
            sb->shard = rndn(s->o.nodes);
            send_attempt(s, si, DHPS_ROUTE_PRIMARY);
            if (!SUB(s, si)->natt)
                sub_finish(s, si, false);
        }
        if (++s->issued < s->o.requests)
            ev_push(g_now + (uint64_t)(-log(1.0 - rnd01()) / s->o.rate * 1e9) + 1,
                    EV_ARRIVAL, 0, 0, 0);
        return;
    }
    struct sub *sb = SUB(s, e->sub);
    if (sb->gen != e->gen || sb->done || !sb->att_open[e->att])
        return; /* stale: the sub-batch finished or the attempt was closed */
    struct request *rq = REQ(s, sb->req);
    dhps_route *r = s->routers[rq->client];
    dhps_route_choice *ch = &sb->att[e->att];
    if (e->type == EV_RESPONSE) {
        sb->att_open[e->att] = false;
        sb->open--;
        dhps_route_report(r, ch, g_now - ch->start_ns, DHPS_ROUTE_OK);
        sub_finish(s, e->sub, true);
    } else if (e->type == EV_HEDGE) {
        if (!sb->hedged && dhps_route_hedge_acquire(r, rq->deadline) == 0) {
            sb->hedged = 1;
            send_attempt(s, e->sub, DHPS_ROUTE_HEDGE);
        }
    } else { /* EV_TIMEOUT */
        sb->att_open[e->att] = false;
        sb->open--;
        dhps_route_report(r, ch, g_now - ch->start_ns, DHPS_ROUTE_TIMEOUT);
        if (sb->open)
            return; /* a hedge is still out */
        if (s->o.retry && g_now < rq->deadline &&
            dhps_route_retry_acquire(r, rq->deadline) == 0)
            send_attempt(s, e->sub, DHPS_ROUTE_RETRY);
        if (!sb->open)
            sub_finish(s, e->sub, false);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dhps sim [options]      (membership churn: dhps sim churn --help)\n"
            "  --nodes N          nodes (default 1024)\n"
            "  --azs N            availability zones (default 4)\n"
            "  --pods N           PODs per AZ (default 8)\n"
            "  --clients N        client processes, each with its own router (default 16)\n"
            "  --requests N       requests (default 100000)\n"
            "  --fanout N         sub-batches (shards) per request (default 8)\n"
            "  --rate R           requests per simulated second (default 20000)\n"
            "  --seed S           random seed (default 1)\n"
            "  --fail-rate F      share of nodes that die for a while (default 0)\n"
            "  --slow-share F     share of nodes 10x slower (default 0)\n"
            "  --partition P      none | pod | az: cut one off from 30 to 60 %% of the run\n"
            "  --slow-pod X       POD 0's internal latency x X from 30 to 60 %% of the run\n"
            "  --deadline-us D    per-request deadline (default 5000)\n"
            "  --attempt-us D     per-attempt timeout (default 1000)\n"
            "  --no-hedge         disable hedging\n"
            "  --no-retry         disable retries\n"
            "  --flat             hide the labels from the routers (no tiers: P2C only)\n"
            "  --json             print one JSON object\n");
}

int dhps_cmd_sim(int argc, char **argv);
int dhps_sim_churn(int argc, char **argv); /* simchurn.c */
int dhps_cmd_sim(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "churn"))
        return dhps_sim_churn(argc - 1, argv + 1);
    struct sim s;
    memset(&s, 0, sizeof s);
    struct sim_opts *o = &s.o;
    *o = (struct sim_opts){.nodes = 1024, .azs = 4, .pods_per_az = 8, .clients = 16,
                           .fanout = 8, .requests = 100000, .seed = 1, .rate = 20000,
                           .partition = "none", .slow_pod = 1.0, .deadline_ns = 5000 * US,
                           .attempt_timeout_ns = 1000 * US, .hedge = true, .retry = true};
    enum { O_NODES = 256, O_AZS, O_PODS, O_CLIENTS, O_REQ, O_FAN, O_RATE, O_SEED, O_FAIL,
           O_SLOW, O_PART, O_DL, O_ATT, O_NOHEDGE, O_NORETRY, O_FLAT, O_SLOWPOD, O_JSON, O_HELP };
    static const struct option lo[] = {
        {"nodes", 1, 0, O_NODES},       {"azs", 1, 0, O_AZS},
        {"pods", 1, 0, O_PODS},         {"clients", 1, 0, O_CLIENTS},
        {"requests", 1, 0, O_REQ},      {"fanout", 1, 0, O_FAN},
        {"rate", 1, 0, O_RATE},         {"seed", 1, 0, O_SEED},
        {"fail-rate", 1, 0, O_FAIL},    {"slow-share", 1, 0, O_SLOW},
        {"partition", 1, 0, O_PART},    {"deadline-us", 1, 0, O_DL},
        {"attempt-us", 1, 0, O_ATT},    {"no-hedge", 0, 0, O_NOHEDGE},
        {"no-retry", 0, 0, O_NORETRY},  {"json", 0, 0, O_JSON},
        {"flat", 0, 0, O_FLAT},         {"slow-pod", 1, 0, O_SLOWPOD},
        {"help", 0, 0, O_HELP},         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_NODES: o->nodes = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_AZS: o->azs = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_PODS: o->pods_per_az = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_CLIENTS: o->clients = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_REQ: o->requests = strtoull(optarg, NULL, 0); break;
        case O_FAN: o->fanout = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_RATE: o->rate = strtod(optarg, NULL); break;
        case O_SEED: o->seed = strtoull(optarg, NULL, 0); break;
        case O_FAIL: o->fail_rate = strtod(optarg, NULL); break;
        case O_SLOW: o->slow_share = strtod(optarg, NULL); break;
        case O_PART: o->partition = optarg; break;
        case O_DL: o->deadline_ns = strtoull(optarg, NULL, 0) * US; break;
        case O_ATT: o->attempt_timeout_ns = strtoull(optarg, NULL, 0) * US; break;
        case O_NOHEDGE: o->hedge = false; break;
        case O_NORETRY: o->retry = false; break;
        case O_FLAT: o->flat = true; break;
        case O_SLOWPOD: o->slow_pod = strtod(optarg, NULL); break;
        case O_JSON: o->json = true; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int part = !strcmp(o->partition, "none") ? 0 : !strcmp(o->partition, "pod") ? 1
             : !strcmp(o->partition, "az") ? 2 : -1;
    if (part < 0 ||  o->pods_per_az < 2 || o->clients == 0 || o->fanout == 0 ||
        o->requests == 0 || o->rate <= 0 || o->fail_rate < 0 || o->fail_rate > 1 ||
        o->slow_share < 0 || o->slow_share > 1 || o->slow_pod < 1 || o->deadline_ns == 0 || o->azs < 3 ||
        o->attempt_timeout_ns == 0 || o->nodes < 4 * o->azs * o->pods_per_az ||
        o->nodes > (1u << 20)) {
        fprintf(stderr, "dhps sim: invalid options (nodes >= 4 x azs x pods, azs >= 3, pods >= 2)\n");
        usage(stderr);
        return 2;
    }

    g_rng = o->seed * 0x2545F4914F6CDD1Dull + 12345;
    g_now = 0;
    g_nheap = 0;
    g_seq = 0;
    struct cluster *cl = &s.c;
    cl->npods = o->azs * o->pods_per_az;
    cl->n = calloc(o->nodes, sizeof *cl->n);
    cl->rep = calloc(o->nodes, sizeof *cl->rep);
    s.routers = calloc(o->clients, sizeof *s.routers);
    s.client_node = calloc(o->clients, sizeof *s.client_node);
    s.lat = calloc(o->requests, sizeof *s.lat);
    s.reqs.size = sizeof(struct request);
    s.subs.size = sizeof(struct sub);
    if (!cl->n || !cl->rep || !s.routers || !s.client_node || !s.lat) {
        fprintf(stderr, "dhps sim: out of memory\n");
        return 1;
    }
    s.tier_lat[0] = 5 * US;
    s.tier_lat[1] = 20 * US;
    s.tier_lat[2] = 60 * US;
    s.tier_lat[3] = 500 * US;
    double duration = (double)o->requests / o->rate; /* seconds */
    uint64_t T = (uint64_t)(duration * 1e9);
    s.T = T;
    cl->slow_pod = o->slow_pod;
    cl->slow_from = (uint64_t)(0.3 * (double)T);
    cl->slow_until = (uint64_t)(0.6 * (double)T);

    /* placement: node i in pod i % npods; pod p in az p / pods_per_az */
    uint32_t died = 0, slow = 0;
    for (uint32_t i = 0; i < o->nodes; i++) {
        struct node *n = &cl->n[i];
        n->pod = i % cl->npods;
        n->az = n->pod / o->pods_per_az;
        n->slow = rnd01() < o->slow_share;
        slow += n->slow;
        n->dead_from = n->dead_until = UINT64_MAX;
        if (rnd01() < o->fail_rate) { /* dies somewhere in 10..70 % of the run, for 20 % */
            n->dead_from = (uint64_t)((0.1 + 0.6 * rnd01()) * (double)T);
            n->dead_until = n->dead_from + T / 5;
            died++;
        }
    }
    /* replicas of shard s: node s and one node in each of two other AZs (so an AZ loss
     * leaves two replicas); within an AZ the POD is random */
    for (uint32_t sh = 0; sh < o->nodes; sh++) {
        uint32_t az = cl->n[sh].az, per_pod = o->nodes / cl->npods;
        uint32_t off1 = 1 + rndn(o->azs - 1), off2 = 1 + rndn(o->azs - 2);
        if (off2 >= off1)
            off2++;
        uint32_t az1 = (az + off1) % o->azs, az2 = (az + off2) % o->azs;
        uint32_t p1 = az1 * o->pods_per_az + rndn(o->pods_per_az);
        uint32_t p2 = az2 * o->pods_per_az + rndn(o->pods_per_az);
        cl->rep[sh][0] = sh;
        cl->rep[sh][1] = p1 + cl->npods * rndn(per_pod);
        cl->rep[sh][2] = p2 + cl->npods * rndn(per_pod);
    }
    /* clients: on node hosts in PODs 0 and 1 of AZ 0 and POD 0 of AZs 1..min(2, azs-1);
     * the last AZ has no client so that --partition az does not cut clients off */
    uint32_t cpods[4] = {0, 1, o->pods_per_az, 2 * o->pods_per_az};
    uint32_t ncp = o->azs > 3 ? 4 : 3;
    for (uint32_t k = 0; k < o->clients; k++)
        s.client_node[k] = cpods[k % ncp] + cl->npods * (k / ncp % (o->nodes / cl->npods));
    if (part) {
        cl->part_kind = part;
        cl->part_id = part == 1 ? 2 : o->azs - 1; /* POD 2 of AZ 0, or the last AZ */
        cl->part_from = (uint64_t)(0.3 * (double)T);
        cl->part_until = (uint64_t)(0.6 * (double)T);
    }

    for (uint32_t k = 0; k < o->clients; k++) {
        dhps_route_params p;
        dhps_route_params_init(&p);
        p.max_nodes = o->nodes;
        p.clock_ns = sim_clock;
        p.seed = o->seed * 1000 + k;
        char host[32], pod[32], az[32];
        const struct node *cn = &cl->n[s.client_node[k]];
        snprintf(host, sizeof host, "h%u", s.client_node[k]);
        snprintf(pod, sizeof pod, "p%u", cn->pod);
        snprintf(az, sizeof az, "az%u", cn->az);
        dhps_route_labels local = {host, pod, az};
        if (o->flat)
            local = (dhps_route_labels){NULL, NULL, NULL}; /* every node is "remote" */
        if (dhps_route_create(&p, &local, &s.routers[k]) != 0) {
            fprintf(stderr, "dhps sim: router create failed\n");
            return 1;
        }
        for (uint32_t i = 0; i < o->nodes; i++) {
            snprintf(host, sizeof host, "h%u", i);
            snprintf(pod, sizeof pod, "p%u", cl->n[i].pod);
            snprintf(az, sizeof az, "az%u", cl->n[i].az);
            dhps_route_labels l = {host, pod, az};
            dhps_route_node_set(s.routers[k], i, &l);
        }
    }

    ev_push(0, EV_ARRIVAL, 0, 0, 0);
    while (g_nheap) {
        struct event e = ev_pop();
        g_now = e.t;
        on_event(&s, &e);
    }
    s.sim_end = g_now;

    /* results */
    dhps_route_stats tot;
    memset(&tot, 0, sizeof tot);
    for (uint32_t k = 0; k < o->clients; k++) {
        dhps_route_stats st;
        dhps_route_stats_get(s.routers[k], &st);
        uint64_t *a = (uint64_t *)&tot, *b = (uint64_t *)&st;
        size_t nw = offsetof(dhps_route_stats, nodes) / sizeof(uint64_t);
        for (size_t i = 0; i < nw; i++)
            a[i] += b[i];
        for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
            tot.tier[t].picks += st.tier[t].picks;
            tot.tier[t].spills += st.tier[t].spills;
        }
        dhps_route_destroy(s.routers[k]);
    }
    qsort(s.lat, s.finished, sizeof *s.lat, cmp_u64);
    double avail = s.finished ? 1.0 - (double)s.failed / (double)s.finished : 0;
#define PCT(q) (s.finished ? (double)s.lat[(size_t)((q) * (double)(s.finished - 1))] / 1e3 : 0)
    double p50 = PCT(0.5), p99 = PCT(0.99), p999 = PCT(0.999);
    double share[DHPS_ROUTE_TIERS]; /* by true tier (the same as the router's unless --flat) */
    uint64_t sent = 0;
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
        sent += s.sent[t];
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
        share[t] = sent ? (double)s.sent[t] / (double)sent : 0;

    if (o->json) {
        printf("{\"nodes\":%u,\"azs\":%u,\"pods_per_az\":%u,\"clients\":%u,\"requests\":%llu,"
               "\"fanout\":%u,\"seed\":%llu,\"fail_rate\":%g,\"slow_share\":%g,"
               "\"partition\":\"%s\",\"flat\":%s,\"hedge\":%s,\"retry\":%s,\"nodes_died\":%u,"
               "\"nodes_slow\":%u,\"sim_seconds\":%.3f,\"availability\":%.6f,"
               "\"failed\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
               "\"tier_share\":{",
               o->nodes, o->azs, o->pods_per_az, o->clients, (unsigned long long)o->requests,
               o->fanout, (unsigned long long)o->seed, o->fail_rate, o->slow_share,
               o->partition, o->flat ? "true" : "false", o->hedge ? "true" : "false", o->retry ? "true" : "false", died,
               slow, (double)s.sim_end / 1e9, avail, (unsigned long long)s.failed, p50, p99,
               p999);
        for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
            printf("%s\"%s\":{\"share\":%.6f,\"picks\":%llu,\"spills\":%llu}", t ? "," : "",
                   dhps_route_tier_name(t), share[t], (unsigned long long)s.sent[t],
                   (unsigned long long)tot.tier[t].spills);
        printf("},\"picks\":%llu,\"hedges_sent\":%llu,\"hedges_won\":%llu,"
               "\"hedge_budget_exhausted\":%llu,\"retries\":%llu,"
               "\"retry_budget_exhausted\":%llu,\"retry_deadline\":%llu,\"timeouts\":%llu,"
               "\"breaker_opened\":%llu,\"breaker_closed\":%llu,\"ejection_capped\":%llu,"
               "\"displaced\":%llu,\"probes\":%llu,\"panics\":%llu,\"no_healthy\":%llu,\"spills\":%llu,"
               "\"slow_pod\":%g,\"pod0_local_share_by_tenth\":[",
               (unsigned long long)tot.picks, (unsigned long long)tot.hedge_sent,
               (unsigned long long)tot.hedge_won,
               (unsigned long long)tot.hedge_budget_exhausted, (unsigned long long)tot.retries,
               (unsigned long long)tot.retry_budget_exhausted,
               (unsigned long long)tot.retry_deadline, (unsigned long long)tot.reports_timeout,
               (unsigned long long)tot.breaker_opened, (unsigned long long)tot.breaker_closed,
               (unsigned long long)tot.ejection_capped, (unsigned long long)tot.displaced,
               (unsigned long long)tot.probes, (unsigned long long)tot.panics, (unsigned long long)tot.no_healthy,
               (unsigned long long)tot.spills, o->slow_pod);
        for (int i = 0; i < 10; i++)
            printf("%s%.4f", i ? "," : "", s.pod0_att[i] ? (double)s.pod0_in[i] / (double)s.pod0_att[i] : 0);
        printf("]}\n");
    } else {
        printf("dhps sim: %u nodes (%u AZ x %u POD), %u clients, %llu requests x %u "
               "sub-batches, seed %llu, %.2f s simulated\n",
               o->nodes, o->azs, o->pods_per_az, o->clients, (unsigned long long)o->requests,
               o->fanout, (unsigned long long)o->seed, (double)s.sim_end / 1e9);
        printf("faults: %u nodes died for %.2f s each, %u slow (10x), partition %s; "
               "hedging %s, retries %s\n",
               died, duration / 5, slow, o->partition, o->hedge ? "on" : "off",
               o->retry ? "on" : "off");
        printf("availability %.6f (%llu of %llu requests failed or late; deadline %llu us)\n",
               avail, (unsigned long long)s.failed, (unsigned long long)s.finished,
               (unsigned long long)(o->deadline_ns / US));
        printf("latency us: p50 %.1f  p99 %.1f  p99.9 %.1f\n", p50, p99, p999);
        printf("tier share:");
        for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
            printf(" %s %.2f%%", dhps_route_tier_name(t), 100 * share[t]);
        printf("\nhedges %llu sent, %llu won, %llu refused by budget; retries %llu, "
               "%llu refused by budget, %llu by deadline; timeouts %llu\n",
               (unsigned long long)tot.hedge_sent, (unsigned long long)tot.hedge_won,
               (unsigned long long)tot.hedge_budget_exhausted, (unsigned long long)tot.retries,
               (unsigned long long)tot.retry_budget_exhausted,
               (unsigned long long)tot.retry_deadline, (unsigned long long)tot.reports_timeout);
        printf("breakers: %llu opened, %llu closed, %llu capped, %llu displaced, %llu probes; "
               "picks %llu: %llu spilled, %llu panic, %llu no-healthy\n",
               (unsigned long long)tot.breaker_opened, (unsigned long long)tot.breaker_closed,
               (unsigned long long)tot.ejection_capped, (unsigned long long)tot.displaced,
               (unsigned long long)tot.probes,
               (unsigned long long)tot.picks, (unsigned long long)tot.spills,
               (unsigned long long)tot.panics, (unsigned long long)tot.no_healthy);
        printf("POD-0 clients, share of attempts kept in their POD (or host), by tenth of the run"
               "%s:\n ", o->slow_pod > 1 ? " (POD 0 slow in tenths 4-6)" : "");
        for (int i = 0; i < 10; i++)
            printf(" %.3f", s.pod0_att[i] ? (double)s.pod0_in[i] / (double)s.pod0_att[i] : 0);
        printf("\n");
    }
    free(cl->n);
    free(cl->rep);
    free(s.routers);
    free(s.client_node);
    free(s.lat);
    free(s.reqs.items);
    free(s.reqs.free);
    free(s.subs.items);
    free(s.subs.free);
    free(g_heap);
    g_heap = NULL;
    g_capheap = 0;
    return 0;
}

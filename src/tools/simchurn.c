/*
 * dhps sim churn: membership churn over a cluster map of 1,000+ nodes, driven by the real
 * placement and edit code (include/dhps/cluster.h: dhps_cluster_plan, dhps_cluster_map_edit_*)
 * under the move state machine of issue 10 (docs/cluster.md "Map: node state and joining").
 *
 * A controller reacts to a sequence of changes - a node joins, leaves (drained, then
 * removed), is replaced (new node added, old one drained) or dies (noticed after a grace
 * period, its replicas re-replicated from the others, then removed) - by planning moves,
 * starting them as joining entries, flipping each once its node has caught up, and
 * removing nodes that hold nothing. Catch-up takes --catchup-s per shard, one shard at a
 * time per joining node (x 0.8..1.2). Between events the simulation integrates, per
 * shard, whether it can serve reads (>= 1 serving replica alive: joining nodes answer no
 * lookups), QUORUM writes (a majority of the R serving replicas alive) and ACK_ALL writes
 * (every holder alive: replicas and joining nodes). Deterministic for a seed; no wall
 * clock in the JSON except plan_ms_max.
 *
 * Reported per change: moves started while it was the latest change, against the lower
 * bound it added (stats.min_moves of the first plan after the change - or after the
 * death was noticed - minus that of a plan just before it: the work already pending is
 * not counted twice), the time until the last flip of those moves, and the shard-seconds
 * unavailable while it was the latest change. When changes overlap (a change before the
 * previous one settled) moves of one change may be counted for the next one, and a
 * change can undo pending work (a node joins while another drains): compare totals.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dhps/cluster.h"

int dhps_sim_churn(int argc, char **argv);

struct churn_opts {
    uint32_t nodes, azs, pods, shards, replicas, changes, max_inflight;
    uint64_t seed;
    double interval_s, grace_s, catchup_s;
    bool json;
};

enum { K_JOIN, K_LEAVE, K_REPLACE, K_DEATH, K_NKIND };
static const char *const kind_name[K_NKIND] = {"join", "leave", "replace", "death"};

struct change {
    int kind;
    uint32_t node, node2;   /* node added/removed/dead; node2: the new node of a replace */
    double t;               /* when it happened */
    size_t moves;
    long min_moves;         /* lower bound added: may be negative (it undid pending work) */
    double t_last_flip;     /* last flip of a move started for it */
    double unavail[3];      /* shard-seconds: reads, QUORUM writes, ACK_ALL writes */
};

enum { EV_CHANGE, EV_NOTICE, EV_READY };

struct event {
    double t;
    uint64_t seq;
    int type;
    uint32_t a, b, c;       /* CHANGE: index; NOTICE: change, node; READY: shard, node, replaces */
};

struct churn {
    struct churn_opts o;
    dhps_cluster_map *m;
    uint64_t rng;
    uint8_t *alive, *noticed;    /* per node id */
    double *busy;                /* per node id: catch-up queue end */
    uint32_t next_id;
    struct change *ch;
    uint32_t nch, owner;         /* owner: the change the current moves count for */
    struct event *ev;
    size_t nev, capev;
    uint64_t seq;
    double now, t_last;
    double unavail[3];
    size_t moves, unplaced, versions, plans, cancelled;
    double plan_ms_max;
    struct { uint32_t shard, node, owner; } *jo; /* owner of each join in flight */
    size_t njo, capjo;
};

static uint64_t rnd(struct churn *c)
{
    uint64_t z = (c->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd01(struct churn *c) { return (double)(rnd(c) >> 11) * 0x1.0p-53; }

/* ---- events (binary heap on (t, seq)) ------------------------------------------------ */

static bool ev_less(const struct event *x, const struct event *y)
{
    return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static int ev_push(struct churn *c, double t, int type, uint32_t a, uint32_t b, uint32_t d)
{
    if (c->nev == c->capev) {
        size_t nc = c->capev ? c->capev * 2 : 256;
        struct event *ne = realloc(c->ev, nc * sizeof *ne);
        if (!ne)
            return -1;
        c->ev = ne;
        c->capev = nc;
    }
    size_t i = c->nev++;
    c->ev[i] = (struct event){t, c->seq++, type, a, b, d};
    while (i && ev_less(&c->ev[i], &c->ev[(i - 1) / 2])) {
        struct event tmp = c->ev[i];
        c->ev[i] = c->ev[(i - 1) / 2];
        c->ev[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
    return 0;
}

static struct event ev_pop(struct churn *c)
{
    struct event top = c->ev[0];
    c->ev[0] = c->ev[--c->nev];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->nev && ev_less(&c->ev[l], &c->ev[m]))
            m = l;
        if (r < c->nev && ev_less(&c->ev[r], &c->ev[m]))
            m = r;
        if (m == i)
            break;
        struct event tmp = c->ev[i];
        c->ev[i] = c->ev[m];
        c->ev[m] = tmp;
        i = m;
    }
    return top;
}

/* ---- map edits ---------------------------------------------------------------------- */

/* Adopt an edit's result; any refusal is a bug in the controller below: stop. */
static int adopt(struct churn *c, int rc, dhps_cluster_map *nm, const char *what, const char *err)
{
    if (rc) {
        fprintf(stderr, "dhps sim churn: %s refused (%d): %s\n", what, rc, err);
        return -1;
    }
    dhps_cluster_map_destroy(c->m);
    c->m = nm;
    c->versions++;
    return 0;
}

static dhps_cluster_node new_node(struct churn *c, uint32_t az, uint32_t pod)
{
    dhps_cluster_node n;
    memset(&n, 0, sizeof n);
    n.id = c->next_id++;
    snprintf(n.host, sizeof n.host, "h%u", n.id);
    snprintf(n.az, sizeof n.az, "az%u", az);
    snprintf(n.pod, sizeof n.pod, "p%u", pod);
    snprintf(n.addr, sizeof n.addr, "10.%u.%u.%u:7000", n.id / 62500, n.id / 250 % 250,
             n.id % 250 + 1);
    return n;
}

static int add_node(struct churn *c, dhps_cluster_node n)
{
    char err[512];
    dhps_cluster_map *nm = NULL;
    int rc = dhps_cluster_map_edit_add_node(c->m, &n, &nm, err, sizeof err);
    if (adopt(c, rc, nm, "add_node", err) < 0)
        return -1;
    c->alive[n.id] = 1;
    return 0;
}

/* A random active node that is alive and not noticed dead, or UINT32_MAX. */
static uint32_t pick_active(struct churn *c)
{
    size_t n = dhps_cluster_map_nnodes(c->m);
    for (int tries = 0; tries < 1000; tries++) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(c->m, rnd(c) % n);
        if (nd->state == DHPS_NODE_ACTIVE && c->alive[nd->id] && !c->noticed[nd->id])
            return nd->id;
    }
    return UINT32_MAX;
}

/* ---- availability ------------------------------------------------------------------- */

/* Shard-seconds unavailable over [t_last, now) with the current map and liveness. */
static void integrate(struct churn *c)
{
    double dt = c->now - c->t_last;
    c->t_last = c->now;
    if (dt <= 0)
        return;
    uint32_t S = dhps_cluster_map_nshards(c->m), R = dhps_cluster_map_nreplicas(c->m);
    size_t bad[3] = {0, 0, 0};
    for (uint32_t s = 0; s < S; s++) {
        const uint32_t *r;
        dhps_cluster_map_replicas(c->m, s, &r);
        uint32_t up = 0;
        for (uint32_t a = 0; a < R; a++)
            up += c->alive[r[a]];
        const dhps_cluster_join *j = NULL;
        int nj = dhps_cluster_map_joining(c->m, s, &j);
        bool all = up == R;
        for (int k = 0; k < nj; k++)
            all &= c->alive[j[k].node] != 0;
        bad[0] += up == 0;
        bad[1] += up < R / 2 + 1;
        bad[2] += !all;
    }
    for (int k = 0; k < 3; k++) {
        c->unavail[k] += dt * (double)bad[k];
        if (c->nch)
            c->ch[c->owner].unavail[k] += dt * (double)bad[k];
    }
}

/* ---- controller ---------------------------------------------------------------------- */

static void jo_remove(struct churn *c, uint32_t shard, uint32_t node)
{
    for (size_t k = 0; k < c->njo; k++)
        if (c->jo[k].shard == shard && c->jo[k].node == node) {
            c->jo[k] = c->jo[--c->njo];
            return;
        }
}

static uint32_t jo_owner(const struct churn *c, uint32_t shard, uint32_t node)
{
    for (size_t k = 0; k < c->njo; k++)
        if (c->jo[k].shard == shard && c->jo[k].node == node)
            return c->jo[k].owner;
    return c->owner;
}

/* The current plan's lower bound (the work still pending before a change), with the
 * deaths noticed so far; SIZE_MAX on failure. */
static size_t pending_min(struct churn *c)
{
    size_t nn = dhps_cluster_map_nnodes(c->m), ndead = 0, n = 0;
    uint32_t *dead = malloc((nn + 1) * sizeof *dead);
    if (!dead)
        return SIZE_MAX;
    for (size_t i = 0; i < nn; i++) {
        uint32_t id = dhps_cluster_map_node_at(c->m, i)->id;
        if (c->noticed[id])
            dead[ndead++] = id;
    }
    dhps_cluster_plan_params p;
    dhps_cluster_plan_params_init(&p);
    p.dead = dead;
    p.ndead = ndead;
    dhps_cluster_move *mv = NULL;
    dhps_cluster_plan_stats st;
    int rc = dhps_cluster_plan(c->m, &p, &mv, &n, &st, NULL, 0);
    free(mv);
    free(dead);
    return rc ? SIZE_MAX : st.min_moves;
}

/* After any event: cancel joins of nodes noticed dead, remove emptied nodes, plan and
 * start moves, schedule their readiness. */
static int control(struct churn *c)
{
    char err[4096];
    dhps_cluster_map *nm = NULL;
    /* joins whose joining node is noticed dead: roll back (its shards get re-planned) */
    size_t nj = dhps_cluster_map_njoining(c->m), ncancel = 0;
    dhps_cluster_move *cancel = malloc((nj + 1) * sizeof *cancel);
    if (!cancel)
        return -1;
    for (size_t k = 0; k < nj; k++) {
        const dhps_cluster_join *j = dhps_cluster_map_join_at(c->m, k);
        if (c->noticed[j->node])
            cancel[ncancel++] = (dhps_cluster_move){j->shard, j->replaces, j->node};
    }
    if (ncancel) {
        int rc = dhps_cluster_map_edit_cancel_joins(c->m, cancel, ncancel, &nm, err, sizeof err);
        for (size_t k = 0; k < ncancel; k++)
            jo_remove(c, cancel[k].shard, cancel[k].to);
        c->cancelled += ncancel;
        if (adopt(c, rc, nm, "cancel_joins", err) < 0) {
            free(cancel);
            return -1;
        }
    }
    free(cancel);
    /* remove draining or dead nodes that hold nothing any more */
    for (size_t i = 0; i < dhps_cluster_map_nnodes(c->m);) {
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(c->m, i);
        uint32_t id = nd->id;
        if ((nd->state == DHPS_NODE_DRAINING || c->noticed[id]) &&
            dhps_cluster_map_holdings_of(c->m, id, NULL, 0) == 0 &&
            dhps_cluster_map_nnodes(c->m) > 1) {
            int rc = dhps_cluster_map_edit_remove_node(c->m, id, &nm, err, sizeof err);
            if (adopt(c, rc, nm, "remove_node", err) < 0)
                return -1;
            continue; /* same index: the next node */
        }
        i++;
    }
    /* plan */
    size_t nn = dhps_cluster_map_nnodes(c->m), ndead = 0;
    uint32_t *dead = malloc((nn + 1) * sizeof *dead);
    if (!dead)
        return -1;
    for (size_t i = 0; i < nn; i++) {
        uint32_t id = dhps_cluster_map_node_at(c->m, i)->id;
        if (c->noticed[id])
            dead[ndead++] = id;
    }
    dhps_cluster_plan_params p;
    dhps_cluster_plan_params_init(&p);
    p.dead = dead;
    p.ndead = ndead;
    if (c->o.max_inflight) {
        size_t inflight = dhps_cluster_map_njoining(c->m);
        if (inflight >= c->o.max_inflight) {
            free(dead);
            return 0;
        }
        p.max_moves = c->o.max_inflight - inflight;
    }
    dhps_cluster_move *mv = NULL;
    size_t n = 0;
    dhps_cluster_plan_stats st;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = dhps_cluster_plan(c->m, &p, &mv, &n, &st, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    free(dead);
    if (rc) {
        fprintf(stderr, "dhps sim churn: plan failed (%d): %s\n", rc, err);
        return -1;
    }
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    c->plan_ms_max = ms > c->plan_ms_max ? ms : c->plan_ms_max;
    c->plans++;
    c->unplaced = st.unplaced;
    struct change *ch = c->nch ? &c->ch[c->owner] : NULL;
    if (!n) {
        free(mv);
        return 0;
    }
    rc = dhps_cluster_map_edit_start_joins(c->m, mv, n, &nm, err, sizeof err);
    if (adopt(c, rc, nm, "start_joins", err) < 0) {
        free(mv);
        return -1;
    }
    c->moves += n;
    if (ch)
        ch->moves += n;
    if (c->njo + n > c->capjo) {
        size_t cap = (c->njo + n) * 2;
        void *nj2 = realloc(c->jo, cap * sizeof *c->jo);
        if (!nj2) {
            free(mv);
            return -1;
        }
        c->jo = nj2;
        c->capjo = cap;
    }
    for (size_t k = 0; k < n; k++) {
        c->jo[c->njo].shard = mv[k].shard;
        c->jo[c->njo].node = mv[k].to;
        c->jo[c->njo++].owner = c->owner;
        uint32_t y = mv[k].to;
        if (!c->alive[y])
            continue; /* never ready; cancelled once its death is noticed */
        double start = c->busy[y] > c->now ? c->busy[y] : c->now;
        double ready = start + c->o.catchup_s * (0.8 + 0.4 * rnd01(c));
        c->busy[y] = ready;
        if (ev_push(c, ready, EV_READY, mv[k].shard, y, mv[k].from) < 0) {
            free(mv);
            return -1;
        }
    }
    free(mv);
    return 0;
}

static int apply_change(struct churn *c, uint32_t k);

/* A change, with the lower bound it adds: the pending plan's bound after it minus before. */
static int on_change(struct churn *c, uint32_t k)
{
    size_t before = pending_min(c);
    if (before == SIZE_MAX || apply_change(c, k) < 0)
        return -1;
    size_t after = pending_min(c);
    if (after == SIZE_MAX)
        return -1;
    c->ch[k].min_moves = (long)after - (long)before;
    return 0;
}

static int apply_change(struct churn *c, uint32_t k)
{
    struct change *ch = &c->ch[k];
    char err[512];
    dhps_cluster_map *nm = NULL;
    c->owner = k;
    ch->t = c->now;
    ch->node = ch->node2 = UINT32_MAX;
    ch->kind = (int)(rnd(c) % K_NKIND);
    if (ch->kind == K_JOIN) {
        uint32_t az = (uint32_t)(rnd(c) % c->o.azs), pod = (uint32_t)(rnd(c) % c->o.pods);
        dhps_cluster_node n = new_node(c, az, pod);
        ch->node = n.id;
        return add_node(c, n);
    }
    uint32_t x = pick_active(c);
    if (x == UINT32_MAX) {
        fprintf(stderr, "dhps sim churn: no active node left\n");
        return -1;
    }
    ch->node = x;
    if (ch->kind == K_DEATH) {
        c->alive[x] = 0;
        return ev_push(c, c->now + c->o.grace_s, EV_NOTICE, k, x, 0);
    }
    if (ch->kind == K_REPLACE) { /* same AZ and POD: a hardware swap */
        const dhps_cluster_node *old = dhps_cluster_map_node(c->m, x);
        uint32_t az = (uint32_t)strtoul(old->az + 2, NULL, 10);
        uint32_t pod = (uint32_t)strtoul(old->pod + 1, NULL, 10);
        dhps_cluster_node n = new_node(c, az, pod);
        ch->node2 = n.id;
        if (add_node(c, n) < 0)
            return -1;
    }
    int rc = dhps_cluster_map_edit_set_state(c->m, x, DHPS_NODE_DRAINING, &nm, err, sizeof err);
    return adopt(c, rc, nm, "set_state", err);
}

static int on_ready(struct churn *c, uint32_t shard, uint32_t node, uint32_t replaces)
{
    if (!c->alive[node])
        return 0;
    const dhps_cluster_join *j = NULL;
    int nj = dhps_cluster_map_joining(c->m, shard, &j);
    bool found = false;
    for (int k = 0; k < nj; k++)
        found |= j[k].node == node && j[k].replaces == replaces;
    if (!found)
        return 0; /* cancelled meanwhile */
    char err[512];
    dhps_cluster_map *nm = NULL;
    dhps_cluster_move mv = {shard, replaces, node};
    int rc = dhps_cluster_map_edit_complete_joins(c->m, &mv, 1, &nm, err, sizeof err);
    uint32_t owner = jo_owner(c, shard, node);
    jo_remove(c, shard, node);
    if (adopt(c, rc, nm, "complete_joins", err) < 0)
        return -1;
    if (c->ch[owner].t_last_flip < c->now)
        c->ch[owner].t_last_flip = c->now;
    return 0;
}

/* ---- command ------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dhps sim churn [options]\n"
            "  --nodes N          nodes at the start (default 1024)\n"
            "  --azs N            availability zones (default 4)\n"
            "  --pods N           PODs per AZ (default 8)\n"
            "  --shards N         virtual shards (default 1024)\n"
            "  --replicas R       replicas per shard (default 3)\n"
            "  --changes N        membership changes: join, leave, replace or death, at random\n"
            "                     (default 40)\n"
            "  --interval-s T     seconds between changes (default 300)\n"
            "  --grace-s T        a death is noticed this long after it (default 30)\n"
            "  --catchup-s T      catch-up time per shard, one at a time per joining node\n"
            "                     (default 20)\n"
            "  --max-inflight N   joins in flight at most (default 0: no limit)\n"
            "  --seed S           random seed (default 1)\n"
            "  --json             print one JSON object\n");
}

static int parse_opts(int argc, char **argv, struct churn_opts *o)
{
    *o = (struct churn_opts){.nodes = 1024, .azs = 4, .pods = 8, .shards = 1024,
                             .replicas = 3, .changes = 40, .seed = 1, .interval_s = 300,
                             .grace_s = 30, .catchup_s = 20};
    enum { O_NODES = 256, O_AZS, O_PODS, O_SHARDS, O_REP, O_CHANGES, O_INT, O_GRACE, O_CATCH,
           O_INFL, O_SEED, O_JSON, O_HELP };
    static const struct option lo[] = {
        {"nodes", 1, 0, O_NODES},       {"azs", 1, 0, O_AZS},
        {"pods", 1, 0, O_PODS},         {"shards", 1, 0, O_SHARDS},
        {"replicas", 1, 0, O_REP},      {"changes", 1, 0, O_CHANGES},
        {"interval-s", 1, 0, O_INT},    {"grace-s", 1, 0, O_GRACE},
        {"catchup-s", 1, 0, O_CATCH},   {"max-inflight", 1, 0, O_INFL},
        {"seed", 1, 0, O_SEED},         {"json", 0, 0, O_JSON},
        {"help", 0, 0, O_HELP},         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case O_NODES: o->nodes = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_AZS: o->azs = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_PODS: o->pods = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_SHARDS: o->shards = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_REP: o->replicas = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_CHANGES: o->changes = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_INT: o->interval_s = strtod(optarg, NULL); break;
        case O_GRACE: o->grace_s = strtod(optarg, NULL); break;
        case O_CATCH: o->catchup_s = strtod(optarg, NULL); break;
        case O_INFL: o->max_inflight = (uint32_t)strtoul(optarg, NULL, 0); break;
        case O_SEED: o->seed = strtoull(optarg, NULL, 0); break;
        case O_JSON: o->json = true; break;
        case O_HELP: usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    if (o->azs == 0 || o->pods == 0 || o->replicas == 0 ||
        o->replicas > DHPS_CLUSTER_MAX_REPLICAS || o->nodes < o->replicas + 2 ||
        o->nodes + 2 * o->changes > 60000 || o->shards == 0 ||
        o->shards > DHPS_CLUSTER_MAX_SHARDS || o->interval_s <= 0 || o->grace_s < 0 ||
        o->catchup_s <= 0) {
        fprintf(stderr, "dhps sim churn: invalid options (nodes >= replicas + 2, "
                        "nodes + 2 x changes <= 60000)\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

static void report(const struct churn *c)
{
    const struct churn_opts *o = &c->o;
    double T = c->now > 0 ? c->now : 1, ST = T * o->shards;
    long min_total = 0;
    for (uint32_t k = 0; k < c->nch; k++)
        min_total += c->ch[k].min_moves;
    if (o->json) {
        printf("{\"mode\":\"churn\",\"nodes\":%u,\"azs\":%u,\"pods_per_az\":%u,\"shards\":%u,"
               "\"replicas\":%u,\"seed\":%llu,\"interval_s\":%.1f,\"grace_s\":%.1f,"
               "\"catchup_s\":%.1f,\"max_inflight\":%u,\"nodes_end\":%zu,\"map_versions\":%zu,"
               "\"plans\":%zu,\"moves\":%zu,\"min_moves\":%ld,\"cancelled\":%zu,\"unplaced\":%zu,"
               "\"duration_s\":%.1f,\"read_availability\":%.8f,"
               "\"write_quorum_availability\":%.8f,\"write_all_availability\":%.8f,"
               "\"plan_ms_max\":%.2f,\"changes\":[",
               o->nodes, o->azs, o->pods, o->shards, o->replicas, (unsigned long long)o->seed,
               o->interval_s, o->grace_s, o->catchup_s, o->max_inflight,
               dhps_cluster_map_nnodes(c->m), c->versions, c->plans, c->moves, min_total,
               c->cancelled, c->unplaced, T, 1 - c->unavail[0] / ST, 1 - c->unavail[1] / ST,
               1 - c->unavail[2] / ST, c->plan_ms_max);
        for (uint32_t k = 0; k < c->nch; k++) {
            const struct change *h = &c->ch[k];
            printf("%s{\"t_s\":%.1f,\"kind\":\"%s\",\"node\":%u", k ? "," : "", h->t,
                   kind_name[h->kind], h->node);
            if (h->node2 != UINT32_MAX)
                printf(",\"new_node\":%u", h->node2);
            printf(",\"moves\":%zu,\"min_moves\":%ld,\"settle_s\":%.1f,"
                   "\"read_unavail_shard_s\":%.1f,\"write_quorum_unavail_shard_s\":%.1f,"
                   "\"write_all_unavail_shard_s\":%.1f}",
                   h->moves, h->min_moves, h->moves ? h->t_last_flip - h->t : 0.0,
                   h->unavail[0], h->unavail[1], h->unavail[2]);
        }
        printf("]}\n");
        return;
    }
    printf("dhps sim churn: %u nodes (%u AZ x %u POD), %u shards x %u replicas, %u changes "
           "every %.0f s (grace %.0f s, catch-up %.0f s per shard, seed %llu)\n",
           o->nodes, o->azs, o->pods, o->shards, o->replicas, o->changes, o->interval_s,
           o->grace_s, o->catchup_s, (unsigned long long)o->seed);
    printf("%-8s %6s %6s %6s %9s %11s %11s\n", "kind", "node", "moves", "min", "settle_s",
           "all_unav_s", "quo_unav_s");
    size_t kn[K_NKIND] = {0}, km[K_NKIND] = {0};
    long kmin[K_NKIND] = {0};
    double ks[K_NKIND] = {0}, kw[K_NKIND] = {0};
    for (uint32_t k = 0; k < c->nch; k++) {
        const struct change *h = &c->ch[k];
        double settle = h->moves ? h->t_last_flip - h->t : 0.0;
        printf("%-8s %6u %6zu %6ld %9.1f %11.1f %11.1f\n", kind_name[h->kind], h->node,
               h->moves, h->min_moves, settle, h->unavail[2], h->unavail[1]);
        kn[h->kind]++;
        km[h->kind] += h->moves;
        kmin[h->kind] += h->min_moves;
        ks[h->kind] += settle;
        kw[h->kind] += h->unavail[2];
    }
    printf("per kind (mean): ");
    for (int k = 0; k < K_NKIND; k++)
        if (kn[k])
            printf("%s%s x%zu: %.1f moves (min %.1f), settle %.1f s, ACK_ALL unavailable %.1f "
                   "shard-s", k ? "; " : "", kind_name[k], kn[k], (double)km[k] / (double)kn[k],
                   (double)kmin[k] / (double)kn[k], ks[k] / (double)kn[k],
                   kw[k] / (double)kn[k]);
    printf("\nmoves %zu for a lower bound of %ld (%zu cancelled: their joining node died); %zu "
           "map versions, %zu plans (slowest %.2f ms), %zu nodes at the end\n", c->moves,
           min_total, c->cancelled, c->versions, c->plans, c->plan_ms_max,
           dhps_cluster_map_nnodes(c->m));
    printf("availability over %.0f s: reads %.8f, QUORUM writes %.8f, ACK_ALL writes %.8f\n", T,
           1 - c->unavail[0] / ST, 1 - c->unavail[1] / ST, 1 - c->unavail[2] / ST);
}

int dhps_sim_churn(int argc, char **argv)
{
    struct churn c;
    memset(&c, 0, sizeof c);
    int rc = parse_opts(argc, argv, &c.o);
    if (rc)
        return rc == 1 ? 0 : rc;
    const struct churn_opts *o = &c.o;
    c.rng = o->seed * 0x2545F4914F6CDD1Dull + 77;
    size_t maxid = (size_t)o->nodes + 2 * o->changes + 1;
    c.alive = calloc(maxid, 1);
    c.noticed = calloc(maxid, 1);
    c.busy = calloc(maxid, sizeof *c.busy);
    c.ch = calloc(o->changes + 1, sizeof *c.ch);
    dhps_cluster_node *nv = calloc(o->nodes, sizeof *nv);
    rc = 1;
    if (!c.alive || !c.noticed || !c.busy || !c.ch || !nv) {
        fprintf(stderr, "dhps sim churn: out of memory\n");
        goto out;
    }
    /* node i in POD i mod (azs x pods), AZ = POD / pods; one host per node */
    for (uint32_t i = 0; i < o->nodes; i++) {
        uint32_t gp = i % (o->azs * o->pods);
        nv[i] = new_node(&c, gp / o->pods, gp % o->pods);
        c.alive[i] = 1;
    }
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = o->shards;
    gp.replicas = o->replicas;
    char err[1024];
    if (dhps_cluster_map_generate(&gp, nv, o->nodes, &c.m, err, sizeof err) != 0) {
        fprintf(stderr, "dhps sim churn: generate: %s\n", err);
        goto out;
    }
    for (uint32_t k = 0; k < o->changes; k++)
        if (ev_push(&c, (k + 1) * o->interval_s, EV_CHANGE, k, 0, 0) < 0)
            goto out;
    while (c.nev) {
        struct event e = ev_pop(&c);
        c.now = e.t;
        integrate(&c);
        int r = 0;
        switch (e.type) {
        case EV_CHANGE:
            c.nch = e.a + 1;
            r = on_change(&c, e.a);
            break;
        case EV_NOTICE: {
            size_t before = pending_min(&c);
            c.noticed[e.b] = 1;
            c.owner = e.a;
            size_t after = pending_min(&c);
            if (before == SIZE_MAX || after == SIZE_MAX)
                goto out;
            c.ch[e.a].min_moves += (long)after - (long)before;
            break;
        }
        case EV_READY:
            r = on_ready(&c, e.a, e.b, e.c);
            break;
        }
        if (r < 0 || control(&c) < 0)
            goto out;
    }
    report(&c);
    rc = 0;
out:
    dhps_cluster_map_destroy(c.m);
    free(c.alive);
    free(c.noticed);
    free(c.busy);
    free(c.ch);
    free(c.ev);
    free(c.jo);
    free(nv);
    return rc;
}

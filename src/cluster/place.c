/*
 * Placement: the generator of a new map (dhps_cluster_map_generate) and the planner of
 * moves over an existing one (dhps_cluster_plan). Design in include/dhps/cluster.h
 * ("Generation", "Placement") and docs/cluster.md "Placement".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

/* ---- generate ------------------------------------------------------------------------ */

void dhps_cluster_gen_params_init(dhps_cluster_gen_params *p)
{
    p->version = 1;
    p->nshards = 1024;
    p->replicas = 3;
}

/* Small interning of label strings to dense ids, for the generator. */
static uint32_t intern(const char **names, uint32_t *count, const char *s)
{
    for (uint32_t i = 0; i < *count; i++)
        if (!strcmp(names[i], s))
            return i;
    names[*count] = s;
    return (*count)++;
}

int dhps_cluster_map_generate(const dhps_cluster_gen_params *p, const dhps_cluster_node *nodes,
                              size_t n, dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!p || !out || (!nodes && n)) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    if (n == 0 || n > DHPS_CLUSTER_MAX_NODES || p->nshards == 0 ||
        p->nshards > DHPS_CLUSTER_MAX_SHARDS || p->replicas == 0 ||
        p->replicas > DHPS_CLUSTER_MAX_REPLICAS) {
        cl_eb_add(&e, "generate: need 1..%u nodes, 1..%u shards, 1..%u replicas",
               DHPS_CLUSTER_MAX_NODES, DHPS_CLUSTER_MAX_SHARDS, DHPS_CLUSTER_MAX_REPLICAS);
        return DHPS_E_CONFIG;
    }
    int rc = -ENOMEM;
    const uint32_t S = p->nshards, R = p->replicas;
    dhps_cluster_node *nv = malloc(n * sizeof *nv);
    uint32_t *shards = malloc((size_t)S * R * sizeof *shards);
    const char **names = malloc(3 * n * sizeof *names);
    uint32_t *hid = malloc(3 * n * sizeof *hid); /* host, pod, az ids per node */
    uint32_t *load = calloc(n, sizeof *load), *pload = calloc(n, sizeof *pload);
    uint32_t *idx = malloc((size_t)S * R * sizeof *idx); /* node index per slot */
    if (!nv || !shards || !names || !hid || !load || !pload || !idx)
        goto fail;
    memcpy(nv, nodes, n * sizeof *nv);
    for (size_t i = 0; i < n; i++) {
        nv[i].addr[DHPS_CLUSTER_ADDR_MAX] = '\0';
        nv[i].host[DHPS_CLUSTER_LABEL_MAX] = nv[i].pod[DHPS_CLUSTER_LABEL_MAX] =
            nv[i].az[DHPS_CLUSTER_LABEL_MAX] = '\0';
        if (nv[i].id > DHPS_CLUSTER_MAX_NODE_ID || !nv[i].host[0] ||
            dhps_cluster_addr_split(nv[i].addr, nv[i].ip, sizeof nv[i].ip, &nv[i].port) < 0)
            cl_eb_add(&e, "node %u: bad id, empty host or bad address \"%s\"", nv[i].id,
                      nv[i].addr);
        if (nv[i].state > DHPS_NODE_DRAINING)
            cl_eb_add(&e, "node %u: state %u is neither active nor draining", nv[i].id,
                   nv[i].state);
    }
    cl_check_nodes(nv, n, &e);
    if (e.count) {
        rc = DHPS_E_CONFIG;
        goto fail;
    }
    /* dense label ids: hosts, pods (qualified by az), azs */
    uint32_t nh = 0, np = 0, na = 0;
    const char **hn = names, **pn = names + n, **an = names + 2 * n;
    char (*podkey)[2 * DHPS_CLUSTER_LABEL_MAX + 2] = malloc(n * sizeof *podkey);
    if (!podkey)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        snprintf(podkey[i], sizeof podkey[i], "%s/%s", nv[i].az, nv[i].pod);
        hid[3 * i] = intern(hn, &nh, nv[i].host);
        hid[3 * i + 1] = intern(pn, &np, podkey[i]);
        hid[3 * i + 2] = intern(an, &na, nv[i].az);
    }
    if (nh < R) {
        cl_eb_add(&e, "generate: %u replicas need at least %u distinct hosts, have %u", R, R, nh);
        free(podkey);
        rc = DHPS_E_CONFIG;
        goto fail;
    }
    const uint64_t total = (uint64_t)S * R;
    const uint32_t cap = (uint32_t)((total + n - 1) / n);
    for (uint32_t s = 0; s < S; s++) {
        for (uint32_t r = 0; r < R; r++) {
            size_t best = n;
            uint64_t bestkey = UINT64_MAX;
            for (size_t k = 0; k < n; k++) {
                size_t i = (k + s) % n; /* rotation: ties go round the nodes */
                bool host_used = false, az_used = false, pod_used = false;
                for (uint32_t q = 0; q < r; q++) {
                    size_t j = idx[(size_t)s * R + q];
                    host_used |= hid[3 * j] == hid[3 * i];
                    pod_used |= hid[3 * j + 1] == hid[3 * i + 1];
                    az_used |= hid[3 * j + 2] == hid[3 * i + 2];
                }
                if (host_used)
                    continue;
                uint64_t key = ((uint64_t)(load[i] >= cap) << 62) | ((uint64_t)az_used << 61) |
                               ((uint64_t)pod_used << 60) | ((uint64_t)load[i] << 36) |
                               ((uint64_t)(r == 0 ? pload[i] : 0) << 12);
                if (key < bestkey) {
                    bestkey = key;
                    best = i;
                }
            }
            if (best == n) { /* cannot happen: nh >= R */
                rc = DHPS_E_CONFIG;
                free(podkey);
                goto fail;
            }
            idx[(size_t)s * R + r] = (uint32_t)best;
            load[best]++;
            if (r == 0)
                pload[best]++;
        }
    }
    free(podkey);
    /* repair: move replicas from the most to the least loaded node */
    for (uint64_t iter = 0; iter < total * 2; iter++) {
        size_t hi = 0, lo = 0;
        for (size_t i = 1; i < n; i++) {
            if (load[i] > load[hi])
                hi = i;
            if (load[i] < load[lo])
                lo = i;
        }
        if (load[hi] - load[lo] <= 1)
            break;
        bool moved = false;
        for (uint32_t s = 0; s < S && !moved; s++) {
            uint32_t *slot = idx + (size_t)s * R;
            int at = -1;
            bool ok = true;
            for (uint32_t q = 0; q < R; q++) {
                if (slot[q] == hi)
                    at = (int)q;
                else if (hid[3 * slot[q]] == hid[3 * lo])
                    ok = false;
            }
            if (at >= 0 && ok) {
                slot[at] = (uint32_t)lo;
                load[hi]--;
                load[lo]++;
                moved = true;
            }
        }
        if (!moved)
            break;
    }
    for (size_t k = 0; k < total; k++)
        shards[k] = nv[idx[k]].id;
    rc = cl_assemble(p->version, S, R, nv, n, shards, NULL, 0, &e, out);
    nv = NULL;
    shards = NULL;
fail:
    free(nv);
    free(shards);
    free(names);
    free(hid);
    free(load);
    free(pload);
    free(idx);
    return rc;
}

/* ---- plan ---------------------------------------------------------------------------- */

void dhps_cluster_plan_params_init(dhps_cluster_plan_params *p)
{
    memset(p, 0, sizeof *p);
}

/* splitmix64's finaliser: the deterministic tie-break between equal candidates, so ties
 * spread over the nodes instead of all going to the first one. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct label {
    const char *s;
    uint32_t i;
};

static int cmp_label(const void *a, const void *b)
{
    const struct label *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->i < y->i ? -1 : x->i > y->i);
}

/* Dense ids for a label of every node (the same string = the same id). O(n log n). */
static int label_ids(const dhps_cluster_map *m, int which, uint32_t *ids, uint32_t *count)
{
    size_t n = m->nnodes;
    struct label *v = malloc(n * sizeof *v);
    char (*pk)[2 * DHPS_CLUSTER_LABEL_MAX + 2] = which == 1 ? malloc(n * sizeof *pk) : NULL;
    if (!v || (which == 1 && !pk)) {
        free(v);
        free(pk);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const dhps_cluster_node *nd = &m->nodes[i];
        if (which == 1) /* a POD is qualified by its AZ */
            snprintf(pk[i], sizeof pk[i], "%s/%s", nd->az, nd->pod);
        v[i].s = which == 0 ? nd->host : which == 1 ? pk[i] : nd->az;
        v[i].i = (uint32_t)i;
    }
    qsort(v, n, sizeof *v, cmp_label);
    uint32_t c = 0;
    for (size_t k = 0; k < n; k++) {
        if (k && strcmp(v[k].s, v[k - 1].s))
            c++;
        ids[v[k].i] = c;
    }
    *count = n ? c + 1 : 0;
    free(v);
    free(pk);
    return 0;
}

/* Planner state. Node references are node indexes (file order); slots are s * R + a. */
struct plan {
    const dhps_cluster_map *m;
    uint32_t S, R, N;
    uint32_t *host, *pod, *az; /* label ids per node */
    uint8_t *elig;             /* may receive replicas: active and not dead */
    uint8_t *dead;
    uint8_t *frozen;           /* per shard: a joining entry in flight */
    uint32_t *orig;            /* slot -> node: the map's replicas, joins counted as done */
    uint32_t *now;             /* slot -> node after the moves planned so far */
    uint8_t *moved;            /* per slot: moved by this plan */
    int64_t *need;             /* per node: target - load (eligible nodes only) */
    uint32_t *load, *prim;     /* per node: replicas and first replicas after the moves */
    int64_t pf, pc;            /* first-replica target range per eligible node */
    dhps_cluster_move *out;    /* decisions, in decision order */
    uint8_t *cat;              /* per decision: 0 dead, 1 draining, 2 balance */
    size_t *dslot;             /* per decision: its slot */
    size_t nout, capout;
    /* augmenting-path search scratch, per node */
    uint32_t *bq, *bpar_node, *bseen, bstamp;
    int64_t *bpar_dec;
    uint8_t *bdepth;
};

/* May node y take slot a of shard s? Its host must differ from every other replica
 * before (they keep serving during the move) and after the moves planned so far (so the
 * joins of one plan can run at once). */
static bool host_ok(const struct plan *P, uint32_t s, uint32_t a, uint32_t y)
{
    const uint32_t *o = P->orig + (size_t)s * P->R, *w = P->now + (size_t)s * P->R;
    for (uint32_t b = 0; b < P->R; b++) {
        if (b == a)
            continue;
        if (P->host[o[b]] == P->host[y] || P->host[w[b]] == P->host[y])
            return false;
    }
    return true;
}

/* Other replicas of shard s (slot a excluded) in node x's AZ and in x's POD. */
static void spread_of(const struct plan *P, uint32_t s, uint32_t a, uint32_t x, int *az,
                      int *pod)
{
    const uint32_t *w = P->now + (size_t)s * P->R;
    *az = *pod = 0;
    for (uint32_t b = 0; b < P->R; b++) {
        if (b == a)
            continue;
        *az += P->az[w[b]] == P->az[x];
        *pod += P->pod[w[b]] == P->pod[x];
    }
}

/* Distance of a first-replica count from the target range. */
static int64_t pdist(const struct plan *P, int64_t p)
{
    return (p > P->pc ? p - P->pc : 0) + (p < P->pf ? P->pf - p : 0);
}

/* A candidate move's key (key_cmp: az, prim, pod, room, tie): lower is better. */
struct key {
    int64_t az, pod, prim, room;
    uint64_t tie;
};

static int key_cmp(const struct key *x, const struct key *y)
{
    if (x->az != y->az)
        return x->az < y->az ? -1 : 1;
    if (x->prim != y->prim)
        return x->prim < y->prim ? -1 : 1;
    if (x->pod != y->pod)
        return x->pod < y->pod ? -1 : 1;
    if (x->room != y->room)
        return x->room < y->room ? -1 : 1;
    return x->tie < y->tie ? -1 : x->tie > y->tie;
}

/* The key of moving slot a of shard s (now on x) to y, compared in the order AZ pairs
 * added, first-replica imbalance added (slot 0 only), POD pairs added, then room: y's
 * remaining need (forced moves: fill the emptiest first) or x's excess (balance: shed
 * from the fullest). For forced moves the pairs count y's side only (x goes anyway). */
static struct key key_of(const struct plan *P, uint32_t s, uint32_t a, uint32_t x, uint32_t y,
                         bool balance)
{
    struct key k;
    int azy, pody, azx, podx;
    spread_of(P, s, a, y, &azy, &pody);
    spread_of(P, s, a, x, &azx, &podx);
    k.az = azy - (balance ? azx : 0);
    k.pod = pody - (balance ? podx : 0);
    k.prim = 0;
    if (a == 0) {
        k.prim = pdist(P, (int64_t)P->prim[y] + 1) - pdist(P, P->prim[y]);
        if (P->elig[x])
            k.prim += pdist(P, (int64_t)P->prim[x] - 1) - pdist(P, P->prim[x]);
    }
    k.room = balance ? P->need[x] : -P->need[y];
    k.tie = mix(((uint64_t)s << 32) ^ ((uint64_t)P->m->nodes[y].id << 8) ^ a);
    return k;
}

static int record(struct plan *P, uint32_t s, uint32_t a, uint32_t y, uint8_t cat)
{
    uint32_t *slot = P->now + (size_t)s * P->R + a, x = *slot;
    if (P->nout == P->capout) {
        size_t nc = P->capout ? P->capout * 2 : 64;
        dhps_cluster_move *no = realloc(P->out, nc * sizeof *no);
        if (!no)
            return -ENOMEM;
        P->out = no;
        uint8_t *nca = realloc(P->cat, nc);
        if (!nca)
            return -ENOMEM;
        P->cat = nca;
        size_t *nds = realloc(P->dslot, nc * sizeof *nds);
        if (!nds)
            return -ENOMEM;
        P->dslot = nds;
        P->capout = nc;
    }
    P->out[P->nout] = (dhps_cluster_move){s, P->m->nodes[x].id, P->m->nodes[y].id};
    P->dslot[P->nout] = (size_t)s * P->R + a;
    P->cat[P->nout++] = cat;
    *slot = y;
    P->moved[(size_t)s * P->R + a] = 1;
    P->load[x]--;
    P->load[y]++;
    if (P->elig[x])
        P->need[x]++;
    P->need[y]--;
    if (a == 0) {
        P->prim[x]--;
        P->prim[y]++;
    }
    return 0;
}

/* Send decision d's slot to z instead of where it goes now (same move count). */
static void redirect(struct plan *P, size_t d, uint32_t z)
{
    size_t k = P->dslot[d];
    uint32_t y = P->now[k];
    P->now[k] = z;
    P->load[y]--;
    P->load[z]++;
    P->need[y]++;
    P->need[z]--;
    if (k % P->R == 0) {
        P->prim[y]--;
        P->prim[z]++;
    }
    P->out[d].to = P->m->nodes[z].id;
}

/* Does the search path ending at node y re-route a slot of shard s (or is s the shard
 * being placed)? Paths touch each shard once, so every step's host check stands. */
static bool path_has_shard(const struct plan *P, uint32_t y, uint32_t s, uint32_t s0)
{
    if (s == s0)
        return true;
    for (uint32_t v = y; P->bpar_dec[v] >= 0; v = P->bpar_node[v])
        if (P->dslot[P->bpar_dec[v]] / P->R == s)
            return true;
    return false;
}

#define AUGMENT_DEPTH 4

/*
 * Slot a of shard s0 has no eligible node below its target that may take it. Search an
 * augmenting path (bipartite b-matching): s0 goes to a node y at its target, and a slot
 * this plan already sends to y goes elsewhere instead, and so on, until a node below its
 * target takes the last one. Breadth first, at most AUGMENT_DEPTH re-routings: the move
 * count stays the lower bound where a greedy placement would need a detour. Returns 1
 * when placed, 0 when no path exists, -ENOMEM.
 */
static int augment(struct plan *P, uint32_t s0, uint32_t a0, uint8_t cat)
{
    const uint32_t N = P->N, R = P->R;
    uint32_t stamp = ++P->bstamp, qh = 0, qt = 0;
    for (uint32_t y = 0; y < N; y++) {
        if (!P->elig[y] || !host_ok(P, s0, a0, y))
            continue;
        P->bseen[y] = stamp;
        P->bpar_dec[y] = -1;
        P->bdepth[y] = 1;
        P->bq[qt++] = y;
    }
    while (qh < qt) {
        uint32_t y = P->bq[qh++];
        if (P->bdepth[y] > AUGMENT_DEPTH)
            continue;
        for (size_t d = 0; d < P->nout; d++) {
            size_t k = P->dslot[d];
            if (P->now[k] != y)
                continue;
            uint32_t s = (uint32_t)(k / R), a = (uint32_t)(k % R);
            if (path_has_shard(P, y, s, s0))
                continue;
            for (uint32_t z = 0; z < N; z++) {
                if (!P->elig[z] || P->bseen[z] == stamp || z == P->orig[k] ||
                    !host_ok(P, s, a, z))
                    continue;
                P->bseen[z] = stamp;
                P->bpar_dec[z] = (int64_t)d;
                P->bpar_node[z] = y;
                P->bdepth[z] = (uint8_t)(P->bdepth[y] + 1);
                if (P->need[z] <= 0) {
                    P->bq[qt++] = z;
                    continue;
                }
                /* found: re-route back along the path, then place s0 */
                uint32_t v = z;
                while (P->bpar_dec[v] >= 0) {
                    uint32_t u = P->bpar_node[v];
                    redirect(P, (size_t)P->bpar_dec[v], v);
                    v = u;
                }
                return record(P, s0, a0, v, cat) < 0 ? -ENOMEM : 1;
            }
        }
    }
    return 0;
}

/* A forced slot (its node is dead or draining), with its static difficulty. */
struct fslot {
    uint32_t s, a, cands;
    uint8_t cat;
};

static int cmp_fslot(const void *x, const void *y)
{
    const struct fslot *f = x, *g = y;
    if (f->cands != g->cands)
        return f->cands < g->cands ? -1 : 1;
    if (f->cat != g->cat)
        return f->cat < g->cat ? -1 : 1;
    if (f->s != g->s)
        return f->s < g->s ? -1 : 1;
    return f->a < g->a ? -1 : f->a > g->a;
}

struct ckey {
    size_t dec;
    uint8_t cat;
};


static int cmp_dec(const void *x, const void *y)
{
    const struct ckey *a = x, *b = y;
    if (a->cat != b->cat)
        return a->cat < b->cat ? -1 : 1;
    return a->dec < b->dec ? -1 : a->dec > b->dec;
}

struct eord {
    uint32_t i, load;
    uint32_t id;
};

static int cmp_eord(const void *x, const void *y)
{
    const struct eord *a = x, *b = y;
    if (a->load != b->load)
        return a->load > b->load ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static void plan_free(struct plan *P)
{
    free(P->host);
    free(P->pod);
    free(P->az);
    free(P->elig);
    free(P->dead);
    free(P->frozen);
    free(P->orig);
    free(P->now);
    free(P->moved);
    free(P->need);
    free(P->load);
    free(P->prim);
    free(P->out);
    free(P->cat);
    free(P->dslot);
    free(P->bq);
    free(P->bpar_node);
    free(P->bseen);
    free(P->bpar_dec);
    free(P->bdepth);
}

/* Forced moves: every slot of a non-frozen shard on a dead or draining node. Slots with
 * the fewest candidate nodes go first, so the easy ones do not take their only room. */
static int plan_forced(struct plan *P, struct cl_errbuf *e, dhps_cluster_plan_stats *st)
{
    const uint32_t S = P->S, R = P->R, N = P->N;
    size_t nf = 0;
    for (size_t k = 0; k < (size_t)S * R; k++)
        nf += !P->frozen[k / R] && !P->elig[P->orig[k]];
    st->forced = nf;
    if (!nf)
        return 0;
    struct fslot *f = malloc(nf * sizeof *f);
    if (!f)
        return -ENOMEM;
    nf = 0;
    for (uint32_t s = 0; s < S; s++) {
        if (P->frozen[s])
            continue;
        for (uint32_t a = 0; a < R; a++) {
            uint32_t x = P->orig[(size_t)s * R + a];
            if (P->elig[x])
                continue;
            uint32_t c = 0;
            for (uint32_t y = 0; y < N; y++)
                c += P->elig[y] && P->need[y] > 0 && host_ok(P, s, a, y);
            f[nf++] = (struct fslot){s, a, c, P->dead[x] ? 0 : 1};
        }
    }
    qsort(f, nf, sizeof *f, cmp_fslot);
    for (size_t k = 0; k < nf; k++) {
        uint32_t s = f[k].s, a = f[k].a, x = P->now[(size_t)s * R + a];
        uint32_t best = N;
        struct key bk = {0, 0, 0, 0, 0};
        /* a node below its target if any can take it; else an augmenting path; else
         * any eligible node (the balance pass then sheds the excess: a detour) */
        for (int pass = 0; pass < 2 && best == N; pass++) {
            if (pass == 1) {
                int r = augment(P, s, a, f[k].cat);
                if (r < 0) {
                    free(f);
                    return -ENOMEM;
                }
                if (r > 0)
                    break;
            }
            for (uint32_t y = 0; y < N; y++) {
                if (!P->elig[y] || (pass == 0 && P->need[y] <= 0) || !host_ok(P, s, a, y))
                    continue;
                struct key ky = key_of(P, s, a, x, y, false);
                if (best == N || key_cmp(&ky, &bk) < 0) {
                    best = y;
                    bk = ky;
                }
            }
        }
        if (best == N && P->now[(size_t)s * R + a] != x)
            continue; /* placed by augment */
        if (best == N) {
            st->unplaced++;
            cl_eb_add(e, "shard %u: no eligible node can take the replica of node %u (every "
                      "eligible host already holds the shard)", s, P->m->nodes[x].id);
            continue;
        }
        if (record(P, s, a, best, f[k].cat) < 0) {
            free(f);
            return -ENOMEM;
        }
    }
    free(f);
    return 0;
}

/* Can some slot of a node above its target (not moved, not frozen) go to node x? */
static bool has_source(const struct plan *P, const size_t *src, size_t nsrc, uint32_t x)
{
    for (size_t i = 0; i < nsrc; i++) {
        size_t k = src[i];
        uint32_t o = P->now[k];
        if (!P->moved[k] && o != x && P->need[o] < 0 &&
            host_ok(P, (uint32_t)(k / P->R), (uint32_t)(k % P->R), x))
            return true;
    }
    return false;
}

/* Balance moves: while an eligible node is below its target, give it the best slot of a
 * node above its target (one move each: the lower bound). When no such slot fits (hosts),
 * take one from a node at its target that can itself take a slot of a node above its
 * target (a detour of one move, so it always makes progress); otherwise the node stays
 * short (e.g. every slot above target is in a frozen shard). */
static int plan_balance(struct plan *P)
{
    const uint32_t S = P->S, R = P->R, N = P->N;
    uint8_t *stuck = calloc(N, 1);
    size_t *src = NULL, nsrc = 0;
    if (!stuck)
        return -ENOMEM;
    for (;;) {
        uint32_t y = N;
        for (uint32_t i = 0; i < N; i++)
            if (P->elig[i] && !stuck[i] && P->need[i] > 0 && (y == N || P->need[i] > P->need[y]))
                y = i;
        if (y == N)
            break;
        uint32_t bs = 0, ba = 0;
        bool found = false;
        struct key bk = {0, 0, 0, 0, 0};
        for (int pass = 0; pass < 2 && !found; pass++) {
            if (pass == 1) { /* the movable slots above target, for the detour's check */
                free(src);
                src = malloc(((size_t)S * R + 1) * sizeof *src);
                if (!src) {
                    free(stuck);
                    return -ENOMEM;
                }
                nsrc = 0;
                for (size_t k = 0; k < (size_t)S * R; k++)
                    if (!P->moved[k] && !P->frozen[k / R] && P->elig[P->now[k]] &&
                        P->need[P->now[k]] < 0)
                        src[nsrc++] = k;
                if (!nsrc)
                    break;
            }
            for (uint32_t s = 0; s < S; s++) {
                if (P->frozen[s])
                    continue;
                for (uint32_t a = 0; a < R; a++) {
                    size_t k = (size_t)s * R + a;
                    uint32_t x = P->now[k];
                    if (P->moved[k] || x == y || !P->elig[x] ||
                        (pass == 0 ? P->need[x] >= 0 : P->need[x] != 0) ||
                        !host_ok(P, s, a, y))
                        continue;
                    struct key ky = key_of(P, s, a, x, y, true);
                    if (found && key_cmp(&ky, &bk) >= 0)
                        continue;
                    if (pass == 1 && !has_source(P, src, nsrc, x))
                        continue;
                    found = true;
                    bk = ky;
                    bs = s;
                    ba = a;
                }
            }
        }
        if (!found) {
            stuck[y] = 1;
            continue;
        }
        if (record(P, bs, ba, y, 2) < 0) {
            free(stuck);
            free(src);
            return -ENOMEM;
        }
    }
    free(stuck);
    free(src);
    return 0;
}

int dhps_cluster_plan(const dhps_cluster_map *m, const dhps_cluster_plan_params *p,
                      dhps_cluster_move **moves, size_t *n, dhps_cluster_plan_stats *stp,
                      char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!m || !p || !moves || !n || (!p->dead && p->ndead)) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *moves = NULL;
    *n = 0;
    dhps_cluster_plan_stats st;
    memset(&st, 0, sizeof st);
    struct plan P;
    memset(&P, 0, sizeof P);
    const uint32_t S = m->nshards, R = m->nreplicas, N = (uint32_t)m->nnodes;
    const size_t SR = (size_t)S * R;
    P.m = m;
    P.S = S;
    P.R = R;
    P.N = N;
    int rc = -ENOMEM;
    uint32_t nhost, npod, naz;
    P.host = malloc(N * sizeof *P.host);
    P.pod = malloc(N * sizeof *P.pod);
    P.az = malloc(N * sizeof *P.az);
    P.elig = calloc(N, 1);
    P.dead = calloc(N, 1);
    P.frozen = calloc(S, 1);
    P.orig = malloc(SR * sizeof *P.orig);
    P.now = malloc(SR * sizeof *P.now);
    P.moved = calloc(SR, 1);
    P.need = calloc(N, sizeof *P.need);
    P.load = calloc(N, sizeof *P.load);
    P.prim = calloc(N, sizeof *P.prim);
    struct eord *eo = malloc(N * sizeof *eo);
    P.bq = malloc(N * sizeof *P.bq);
    P.bpar_node = malloc(N * sizeof *P.bpar_node);
    P.bseen = calloc(N, sizeof *P.bseen);
    P.bpar_dec = malloc(N * sizeof *P.bpar_dec);
    P.bdepth = malloc(N);
    if (!P.bq || !P.bpar_node || !P.bseen || !P.bpar_dec || !P.bdepth)
        goto out;
    if (!P.host || !P.pod || !P.az || !P.elig || !P.dead || !P.frozen || !P.orig || !P.now ||
        !P.moved || !P.need || !P.load || !P.prim || !eo)
        goto out;
    if (label_ids(m, 0, P.host, &nhost) < 0 || label_ids(m, 1, P.pod, &npod) < 0 ||
        label_ids(m, 2, P.az, &naz) < 0)
        goto out;
    for (size_t i = 0; i < p->ndead; i++)
        if (p->dead[i] <= m->max_id && m->by_id[p->dead[i]] >= 0)
            P.dead[m->by_id[p->dead[i]]] = 1;
    uint32_t ne = 0;
    for (uint32_t i = 0; i < N; i++) {
        P.elig[i] = m->nodes[i].state == DHPS_NODE_ACTIVE && !P.dead[i];
        ne += P.elig[i];
    }
    st.eligible = ne;
    if (!ne) {
        cl_eb_add(&e, "plan: no eligible node (every node is draining or dead)");
        rc = DHPS_E_CONFIG;
        goto out;
    }
    /* the replicas, joins in flight counted as done (their shards are frozen) */
    for (size_t k = 0; k < SR; k++)
        P.orig[k] = (uint32_t)m->by_id[m->shards[k]];
    for (size_t j = 0; j < m->njoins; j++) {
        const dhps_cluster_join *jn = &m->joins[j];
        uint32_t *r = P.orig + (size_t)jn->shard * R;
        for (uint32_t a = 0; a < R; a++)
            if (r[a] == (uint32_t)m->by_id[jn->replaces])
                r[a] = (uint32_t)m->by_id[jn->node];
        if (!P.frozen[jn->shard])
            st.frozen++;
        P.frozen[jn->shard] = 1;
    }
    memcpy(P.now, P.orig, SR * sizeof *P.now);
    size_t total = 0, nforced = 0;
    for (size_t k = 0; k < SR; k++) {
        uint32_t x = P.orig[k];
        P.load[x]++;
        if (k % R == 0)
            P.prim[x]++;
        if (P.elig[x])
            total++;
        else if (!P.frozen[k / R])
            nforced++;
    }
    total += nforced; /* what the eligible nodes hold once the forced replicas moved */
    /* targets: floor(total / ne), +1 for the (total mod ne) fullest eligible nodes */
    uint32_t ke = 0;
    for (uint32_t i = 0; i < N; i++)
        if (P.elig[i])
            eo[ke++] = (struct eord){i, P.load[i], m->nodes[i].id};
    qsort(eo, ke, sizeof *eo, cmp_eord);
    /* The (total mod ne) targets of fl + 1 go to the fullest nodes first (each one kept
     * is a move saved); any left over go to the emptiest nodes (they receive anyway,
     * so a node added to replace another takes all of its replicas). */
    size_t fl = total / ne, extra = total % ne, over = 0;
    while (over < ke && eo[over].load > fl)
        over++;
    for (uint32_t k = 0; k < ke; k++) {
        bool plus = extra <= over ? k < extra : (k < over || k >= ke - (extra - over));
        int64_t t = (int64_t)fl + (plus ? 1 : 0);
        P.need[eo[k].i] = t - (int64_t)P.load[eo[k].i];
        if (P.need[eo[k].i] > 0)
            st.min_moves += (size_t)P.need[eo[k].i];
    }
    /* The shortfalls are a lower bound; tighter: a node below its target that cannot
     * take enough of the forced replicas (their shards already have a replica on its
     * host) must get the rest from eligible nodes, one more move each. */
    size_t fit = 0;
    for (uint32_t i = 0; i < N && nforced; i++) {
        if (!P.elig[i] || P.need[i] <= 0)
            continue;
        size_t avail = 0;
        for (size_t k = 0; k < SR && avail < (size_t)P.need[i]; k++)
            avail += !P.elig[P.orig[k]] && !P.frozen[k / R] &&
                     host_ok(&P, (uint32_t)(k / R), (uint32_t)(k % R), i);
        fit += avail;
    }
    if (fit < nforced)
        st.min_moves += nforced - fit;
    P.pf = (int64_t)(S / ne);
    P.pc = P.pf + (S % ne ? 1 : 0);
    rc = plan_forced(&P, &e, &st);
    if (rc < 0)
        goto out;
    rc = plan_balance(&P);
    if (rc < 0)
        goto out;
    st.moves = P.nout;
    /* after: loads, first replicas, spread */
    st.load_min = st.primary_min = UINT32_MAX;
    for (uint32_t i = 0; i < N; i++) {
        if (!P.elig[i])
            continue;
        if (P.need[i] > 0)
            st.short_left += (size_t)P.need[i];
        st.load_min = P.load[i] < st.load_min ? P.load[i] : st.load_min;
        st.load_max = P.load[i] > st.load_max ? P.load[i] : st.load_max;
        st.primary_min = P.prim[i] < st.primary_min ? P.prim[i] : st.primary_min;
        st.primary_max = P.prim[i] > st.primary_max ? P.prim[i] : st.primary_max;
    }
    {
        /* AZs and PODs among eligible nodes */
        uint8_t *seen = calloc((size_t)npod + naz + 2, 1);
        if (!seen) {
            rc = -ENOMEM;
            goto out;
        }
        uint32_t eaz = 0, epod = 0;
        for (uint32_t i = 0; i < N; i++) {
            if (!P.elig[i])
                continue;
            if (!seen[P.az[i]]++)
                eaz++;
            if (!seen[naz + P.pod[i]]++)
                epod++;
        }
        free(seen);
        uint32_t waz = eaz < R ? eaz : R, wpod = epod < R ? epod : R;
        for (uint32_t s = 0; s < S; s++) {
            if (P.frozen[s])
                continue;
            const uint32_t *w = P.now + (size_t)s * R;
            uint32_t daz = 0, dpod = 0;
            for (uint32_t a = 0; a < R; a++) {
                bool saz = false, spod = false;
                for (uint32_t b = 0; b < a; b++) {
                    saz |= P.az[w[b]] == P.az[w[a]];
                    spod |= P.pod[w[b]] == P.pod[w[a]];
                }
                daz += !saz;
                dpod += !spod;
            }
            st.az_short += daz < waz;
            st.pod_short += dpod < wpod;
        }
    }
    /* output order: dead nodes' replicas, draining nodes', balance; decision order within */
    size_t nout = P.nout;
    if (p->max_moves && nout > p->max_moves)
        nout = p->max_moves;
    if (nout) {
        struct ckey *ck = malloc(P.nout * sizeof *ck);
        dhps_cluster_move *res = malloc(nout * sizeof *res);
        if (!ck || !res) {
            free(ck);
            free(res);
            rc = -ENOMEM;
            goto out;
        }
        for (size_t k = 0; k < P.nout; k++)
            ck[k] = (struct ckey){k, P.cat[k]};
        qsort(ck, P.nout, sizeof *ck, cmp_dec);
        for (size_t k = 0; k < nout; k++)
            res[k] = P.out[ck[k].dec];
        free(ck);
        *moves = res;
    }
    *n = nout;
    rc = 0;
out:
    if (stp)
        *stp = st;
    free(eo);
    plan_free(&P);
    return rc;
}

/*
 * The membership controller, second half: the move driver (ctl.h, "One step").
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h" /* dhps_mono_ns */

#define CTL_PLAN_CAP 4096u /* moves asked of the planner per step (the first are used) */

/* Since when a map node's registration has been absent (0: present when last read). */
struct absence {
    uint32_t id;
    uint64_t since_ns;
};

struct ctl_driver {
    ctl_params p;
    ctl_stats st;
    struct absence *abs;
    size_t nabs, capabs;
    ctl_move *moves;
    bool down; /* etcd unreachable at the last step (logged once per outage) */
};

void ctl_params_init(ctl_params *p)
{
    memset(p, 0, sizeof *p);
    p->parallel = 16;
    p->grace_s = 30;
    p->poll_s = 0.2;
}

int ctl_driver_create(const ctl_params *p, ctl_driver **out)
{
    *out = NULL;
    if (!p || !p->coord || !p->cluster || !p->plan || !p->parallel || p->grace_s < 0 ||
        p->poll_s < 0)
        return -EINVAL;
    ctl_driver *d = calloc(1, sizeof *d);
    if (!d || !(d->moves = malloc(CTL_PLAN_CAP * sizeof *d->moves))) {
        free(d);
        return -ENOMEM;
    }
    d->p = *p;
    *out = d;
    return 0;
}

void ctl_driver_destroy(ctl_driver *d)
{
    if (!d)
        return;
    free(d->abs);
    free(d->moves);
    free(d);
}

const ctl_stats *ctl_driver_stats(const ctl_driver *d) { return &d->st; }

static void say(ctl_driver *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(ctl_driver *d, const char *fmt, ...)
{
    if (!d->p.log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(d->p.log, fmt, ap);
    va_end(ap);
    fflush(d->p.log);
}

/* Update the absence record of node id (present or not, at now) and return for how long
 * it has been absent (0: present). */
static double absent_for(ctl_driver *d, uint32_t id, bool present, uint64_t now)
{
    for (size_t i = 0; i < d->nabs; i++)
        if (d->abs[i].id == id) {
            if (present)
                d->abs[i].since_ns = 0;
            else if (!d->abs[i].since_ns)
                d->abs[i].since_ns = now;
            return present ? 0 : (double)(now - d->abs[i].since_ns) / 1e9;
        }
    if (present)
        return 0;
    if (d->nabs == d->capabs) {
        size_t cap = d->capabs ? 2 * d->capabs : 16;
        struct absence *a = realloc(d->abs, cap * sizeof *a);
        if (!a)
            return 0; /* not recorded: never dead rather than dead too early */
        d->abs = a;
        d->capabs = cap;
    }
    d->abs[d->nabs++] = (struct absence){id, now};
    return 0;
}

/* Is (shard, node) a join of m, or node the replaced replica of one? */
static bool join_busy(const dhps_cluster_map *m, uint32_t shard, uint32_t node, bool replaced)
{
    const dhps_cluster_join *j;
    int n = dhps_cluster_map_joining(m, shard, &j);
    for (int i = 0; i < n; i++)
        if ((replaced ? j[i].replaces : j[i].node) == node)
            return true;
    return false;
}

/* Publish the edit as the next version over st->rev. 0 (published, or a lost CAS:
 * counted), DHPS_E_CONFIG, or an etcd error. */
static int publish(ctl_driver *d, ctl_edit *e, const ctl_state *st, const char *what,
                   ctl_publish *pub)
{
    dhps_cluster_map *m = NULL;
    char *json = NULL, err[2048] = "";
    int rc = ctl_edit_finish(e, &m, &json, err, sizeof err);
    if (rc < 0) {
        say(d, "controller: the edit (%s) would make an invalid map: %s\n%s", what,
            dhps_strerror(rc), err);
        return rc;
    }
    uint64_t ver = dhps_cluster_map_version(m);
    int64_t rev = 0;
    rc = ctl_map_publish(d->p.coord, d->p.cluster, json, ver, st->rev, &rev);
    if (rc == DHPS_E_CONFLICT) {
        d->st.conflicts++;
        say(d, "controller: the map changed concurrently (revision %" PRId64 " is gone); "
            "re-reading\n", st->rev);
        rc = 0;
    } else if (rc == 0) {
        d->st.publishes++;
        d->st.version = ver;
        say(d, "controller: published version %" PRIu64 " (revision %" PRId64 "): %s\n", ver,
            rev, what);
        pub->version = ver;
        pub->revision = rev;
        if (d->p.on_publish)
            d->p.on_publish(d->p.publish_arg, pub);
    }
    free(json);
    dhps_cluster_map_destroy(m);
    return rc;
}

int ctl_step(ctl_driver *d, bool *done)
{
    ctl_state st;
    ctl_edit *e = NULL;
    dhps_cluster_map *mid = NULL;
    char *midjson = NULL, what[256] = "", err[2048];
    if (done)
        *done = false;
    d->st.steps++;
    int rc = ctl_state_read(d->p.coord, d->p.cluster, &st);
    if (rc < 0)
        return rc;
    if (!st.json) {
        rc = DHPS_E_NOTFOUND;
        goto out;
    }
    if (st.bad_map) {
        say(d, "controller: the map in etcd (revision %" PRId64 ") does not parse\n", st.rev);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    d->st.version = dhps_cluster_map_version(st.map);
    if ((rc = ctl_edit_begin(st.json, strlen(st.json), &e)) < 0)
        goto out;
    uint64_t now = dhps_mono_ns();
    uint64_t flips = 0, cancels = 0, dead = 0, removed = 0, joins = 0;

    /* absences of every map node, and dead nodes */
    size_t nn = dhps_cluster_map_nnodes(st.map);
    for (size_t i = 0; i < nn; i++) {
        const dhps_cluster_node *n = dhps_cluster_map_node_at(st.map, i);
        double gone = absent_for(d, n->id, ctl_state_reg(&st, n->id) != NULL, now);
        if (gone >= d->p.grace_s && gone > 0 && n->state == DHPS_NODE_ACTIVE &&
            ctl_edit_set_state(e, n->id, DHPS_NODE_DRAINING) == 0) {
            dead++;
            say(d, "controller: node %u has had no registration for %.1f s (grace %.1f s): "
                "dead, its shards are re-replicated\n", n->id, gone, d->p.grace_s);
        }
    }
    /* 1 + 2: joins that completed, joins whose node is dead */
    size_t nj = dhps_cluster_map_njoining(st.map);
    for (size_t i = 0; i < nj; i++) {
        const dhps_cluster_join *j = dhps_cluster_map_join_at(st.map, i);
        if (ctl_join_ready(&st, j)) {
            if (ctl_edit_flip(e, j->shard, j->node) == 0)
                flips++;
        } else if (!ctl_state_reg(&st, j->node) &&
                   absent_for(d, j->node, false, now) >= d->p.grace_s) {
            if (ctl_edit_cancel(e, j->shard, j->node) == 0) {
                cancels++;
                say(d, "controller: join of shard %u to node %u rolled back (node gone)\n",
                    j->shard, j->node);
            }
        }
    }
    /* the map after 1-3, for 4 and 5 */
    if (ctl_edit_count(e)) {
        if ((rc = ctl_edit_finish(e, &mid, &midjson, err, sizeof err)) < 0) {
            say(d, "controller: flips/cancels would make an invalid map: %s\n%s",
                dhps_strerror(rc), err);
            goto out;
        }
    }
    const dhps_cluster_map *cur = mid ? mid : st.map;
    /* 4: drained nodes leave */
    nn = dhps_cluster_map_nnodes(cur);
    for (size_t i = 0; i < nn; i++) {
        const dhps_cluster_node *n = dhps_cluster_map_node_at(cur, i);
        if (n->state == DHPS_NODE_DRAINING &&
            dhps_cluster_map_holdings_of(cur, n->id, NULL, 0) == 0 &&
            ctl_edit_remove_node(e, n->id) == 0) {
            removed++;
            say(d, "controller: node %u drained: removed from the map\n", n->id);
        }
    }
    /* 5: new joins, up to parallel in flight */
    size_t inflight = dhps_cluster_map_njoining(cur);
    int np = d->p.plan(d->p.plan_arg, cur, d->moves, CTL_PLAN_CAP);
    if (np < 0) {
        say(d, "controller: placement failed: %s\n", dhps_strerror(np));
        rc = np;
        goto out;
    }
    d->st.planned = (uint64_t)np;
    size_t usable = 0; /* moves that could start now or are waiting for a slot */
    for (int i = 0; i < np && i < (int)CTL_PLAN_CAP; i++) {
        const ctl_move *mv = &d->moves[i];
        if (!ctl_state_reg(&st, mv->to))
            continue; /* target not registered: not now */
        if (join_busy(cur, mv->shard, mv->from, true) || join_busy(cur, mv->shard, mv->to, false))
            continue; /* already in flight */
        usable++;
        if (inflight >= d->p.parallel)
            continue;
        int erc = ctl_edit_add_join(e, mv->shard, mv->to, mv->from);
        if (erc == 0) {
            inflight++;
            joins++;
        } else if (erc != -EEXIST) {
            say(d, "controller: move of shard %u from %u to %u: %s\n", mv->shard, mv->from,
                mv->to, dhps_strerror(erc));
        }
    }
    /* nothing else to do: even out first replicas (order within shards only, no data
     * moves, no holder set changes) */
    size_t reordered = 0;
    if (!ctl_edit_count(e) && !inflight && !usable && np == 0 &&
        (rc = ctl_edit_balance_first(e, &reordered)) < 0)
        goto out;
    if (reordered) {
        snprintf(what, sizeof what, "first replicas evened out: %zu shards reordered",
                 reordered);
        if ((rc = publish(d, e, &st, what, &(ctl_publish){.in_flight = 0})) < 0)
            goto out;
    } else if (ctl_edit_count(e)) {
        snprintf(what, sizeof what,
                 "%" PRIu64 " flipped, %" PRIu64 " rolled back, %" PRIu64 " marked dead, %" PRIu64
                 " removed, %" PRIu64 " joins started (%zu in flight, %d moves planned)",
                 flips, cancels, dead, removed, joins, inflight, np);
        uint64_t pubs = d->st.publishes;
        ctl_publish pub = {.flips = flips, .cancels = cancels, .marked_dead = dead,
                           .removed = removed, .joins = joins, .in_flight = inflight,
                           .planned = np};
        if ((rc = publish(d, e, &st, what, &pub)) < 0)
            goto out;
        if (d->st.publishes > pubs) {
            d->st.flips += flips;
            d->st.cancels += cancels;
            d->st.marked_dead += dead;
            d->st.removed += removed;
            d->st.joins += joins;
        }
    } else if (done && !inflight && !usable && np == 0) {
        *done = true;
    }
out:
    free(midjson);
    dhps_cluster_map_destroy(mid);
    ctl_edit_free(e);
    ctl_state_free(&st);
    return rc;
}

static bool etcd_error(int rc)
{
    return rc == DHPS_E_UNREACHABLE || rc == DHPS_E_TIMEOUT || rc == -EIO ||
           rc == DHPS_E_MALFORMED;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int ctl_drive(ctl_driver *d, double timeout_s, volatile sig_atomic_t *stop)
{
    uint64_t t_end = timeout_s > 0 ? dhps_mono_ns() + (uint64_t)(timeout_s * 1e9) : 0;
    for (;;) {
        if (stop && *stop)
            return -ECANCELED;
        if (t_end && dhps_mono_ns() > t_end)
            return -ETIMEDOUT;
        if (d->p.election && !ctl_election_held(d->p.election))
            return DHPS_E_CONFLICT;
        bool done = false;
        int rc = ctl_step(d, &done);
        if (etcd_error(rc)) {
            d->st.etcd_errors++;
            if (!d->down)
                say(d, "controller: etcd %s: %s; retrying (the map stays as it is)\n",
                    dhps_coord_endpoint(d->p.coord), dhps_strerror(rc));
            d->down = true;
            sleep_s(d->p.poll_s > 0.5 ? d->p.poll_s : 0.5);
            continue;
        }
        if (d->down && rc == 0)
            say(d, "controller: etcd %s reachable again\n", dhps_coord_endpoint(d->p.coord));
        d->down = false;
        if (rc < 0)
            return rc;
        if (done && !d->p.forever)
            return 0;
        sleep_s(d->p.poll_s);
    }
}

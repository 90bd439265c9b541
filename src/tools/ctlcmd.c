/*
 * dhps node add|drain|remove|replace, dhps rebalance, dhps controller: membership changes
 * of a cluster whose map lives in etcd, driven by the move driver (ctl.h; docs/cluster.md
 * "Moving shards").
 *
 *   dhps node add ID        OPTS   add a registered node (labels, addr from its registration)
 *   dhps node drain ID      OPTS   mark it draining (its shards move away; it leaves the map
 *                                  once it holds nothing)
 *   dhps node remove ID     OPTS   drain, and wait until it has left the map
 *   dhps node replace OLD NEW OPTS add NEW, drain OLD, move OLD's shards to NEW
 *   dhps rebalance [--dry-run] OPTS  move shards to the placement (--dry-run: print them)
 *   dhps controller         OPTS   daemon: election, pending moves, dead nodes
 *   OPTS: --etcd URL --cluster NAME [--parallel 16] [--grace-s 30] [--timeout-s 0]
 *         [--no-wait] [--json] [--lease-ttl-s 10] [--poll-ms 200]
 *
 * Every command except --dry-run and --no-wait then drives the moves to completion
 * itself when it wins the election, or waits for the controller that holds it.
 * Exit codes: 0 done, 1 etcd error, 2 usage or an invalid map/edit, 3 refused (no map,
 * unknown or unregistered node, the map kept changing under the edit), 4 not finished
 * (--timeout-s or a signal; the map is valid and the moves resume with the next driver).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "dhps/error.h"
#include "util.h"

int dhps_cmd_node(int argc, char **argv);
int dhps_cmd_rebalance(int argc, char **argv);
int dhps_cmd_controller(int argc, char **argv);

enum { EX_OK = 0, EX_ETCD = 1, EX_USAGE = 2, EX_REFUSED = 3, EX_UNFINISHED = 4 };

static const char ctl_usage[] =
    "usage: dhps node add ID            --etcd URL --cluster NAME [options]\n"
    "       dhps node drain ID          --etcd URL --cluster NAME [options]\n"
    "       dhps node remove ID         --etcd URL --cluster NAME [options]\n"
    "       dhps node replace OLD NEW   --etcd URL --cluster NAME [options]\n"
    "       dhps rebalance [--dry-run]  --etcd URL --cluster NAME [options]\n"
    "       dhps controller             --etcd URL --cluster NAME [options]\n"
    "options: --parallel N (joins in flight, 16)  --grace-s S (a node without registration\n"
    "         this long is dead, 30)  --timeout-s S (give up waiting, 0 = never)  --no-wait\n"
    "         (edit the map only)  --json  --lease-ttl-s S (election lease, 10)  --poll-ms MS\n"
    "add takes the node's labels and address from its registration in etcd (its dhps-server\n"
    "must run with \"coord\" and \"follow_etcd\"). Exit: 0 done, 1 etcd error, 2 usage or\n"
    "invalid map, 3 refused, 4 not finished (timeout/signal: the map is valid, moves resume).\n";

struct opts {
    const char *etcd, *cluster;
    uint32_t parallel, poll_ms;
    double grace_s, timeout_s;
    int64_t lease_ttl_s;
    bool no_wait, json, dry_run;
    const char *pos[2];
    int npos;
};

static volatile sig_atomic_t g_stop;
static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int parse(int argc, char **argv, struct opts *o, int want_pos)
{
    static const struct option lo[] = {
        {"etcd", required_argument, 0, 'e'},      {"cluster", required_argument, 0, 'c'},
        {"parallel", required_argument, 0, 'p'},  {"grace-s", required_argument, 0, 'g'},
        {"timeout-s", required_argument, 0, 't'}, {"no-wait", no_argument, 0, 'n'},
        {"json", no_argument, 0, 'j'},            {"dry-run", no_argument, 0, 'd'},
        {"lease-ttl-s", required_argument, 0, 'l'}, {"poll-ms", required_argument, 0, 'P'},
        {"from-registration", no_argument, 0, 'r'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->parallel = 16;
    o->grace_s = 30;
    o->lease_ttl_s = 10;
    o->poll_ms = 200;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'e': o->etcd = optarg; break;
        case 'c': o->cluster = optarg; break;
        case 'p': o->parallel = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'g': o->grace_s = strtod(optarg, &end); break;
        case 't': o->timeout_s = strtod(optarg, &end); break;
        case 'l': o->lease_ttl_s = strtoll(optarg, &end, 10); break;
        case 'P': o->poll_ms = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'n': o->no_wait = true; break;
        case 'j': o->json = true; break;
        case 'd': o->dry_run = true; break;
        case 'r': break; /* the default (and only) source of a node's labels */
        case 'h': printf("%s", ctl_usage); exit(0);
        default: return -1;
        }
        if (end && *end)
            return -1;
    }
    while (optind < argc && o->npos < 2)
        o->pos[o->npos++] = argv[optind++];
    if (optind != argc || o->npos != want_pos || !o->etcd || !o->cluster || !o->parallel ||
        o->parallel > 4096 || o->grace_s < 0 || o->timeout_s < 0 || o->lease_ttl_s < 2 ||
        !o->poll_ms || o->poll_ms > 60000)
        return -1;
    return 0;
}

static int parse_id(const char *s, uint32_t *id)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || v > DHPS_CLUSTER_MAX_NODE_ID)
        return -1;
    *id = (uint32_t)v;
    return 0;
}

static dhps_coord *open_coord(const struct opts *o)
{
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = o->etcd;
    dhps_coord *c = NULL;
    int rc = dhps_coord_create(&p, &c);
    if (rc < 0)
        fprintf(stderr, "etcd %s: %s\n", o->etcd, dhps_strerror(rc));
    return c;
}

static bool is_etcd_error(int rc)
{
    return rc == DHPS_E_UNREACHABLE || rc == DHPS_E_TIMEOUT || rc == -EIO ||
           rc == DHPS_E_MALFORMED;
}

/* ---- planners ------------------------------------------------------------------------- */

struct replace_plan {
    uint32_t old, new;
};

/* replace OLD NEW: while OLD is a replica anywhere, each of its shards moves to NEW,
 * followed by the placement's moves away from OLD (taken for the shards NEW may not hold,
 * e.g. a replica on NEW's host); once OLD is empty, the placement's own moves. */
static int plan_replace(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap)
{
    const struct replace_plan *r = arg;
    size_t n = dhps_cluster_map_shards_of(m, r->old, NULL, 0);
    if (!n)
        return ctl_plan_placement(NULL, m, out, cap);
    uint32_t *sh = malloc(n * sizeof *sh);
    ctl_move *pl = malloc(cap * sizeof *pl);
    int rc = -ENOMEM;
    if (!sh || !pl)
        goto out;
    dhps_cluster_map_shards_of(m, r->old, sh, n);
    size_t k = 0;
    for (size_t i = 0; i < n && k < cap; i++)
        out[k++] = (ctl_move){sh[i], r->old, r->new};
    rc = ctl_plan_placement(NULL, m, pl, cap);
    for (int i = 0; i < rc && i < (int)cap && k < cap; i++)
        if (pl[i].from == r->old)
            out[k++] = pl[i];
    if (rc >= 0)
        rc = (int)k;
out:
    free(pl);
    free(sh);
    return rc;
}

/* ---- edits ---------------------------------------------------------------------------- */

/* An edit of the map: returns 0 (edits made in e, or none needed), or an exit code > 0
 * after saying why. */
typedef int (*edit_fn)(void *arg, const ctl_state *st, ctl_edit *e);

/* Apply fn to the map in etcd by CAS, re-reading on a conflict (20 tries). Returns an exit
 * code; *ver gets the map version after it. */
static int edit_map(dhps_coord *c, const struct opts *o, edit_fn fn, void *arg,
                    const char *what, uint64_t *ver)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        ctl_state st;
        int rc = ctl_state_read(c, o->cluster, &st);
        if (rc < 0) {
            fprintf(stderr, "etcd %s: %s\n", o->etcd, dhps_strerror(rc));
            return EX_ETCD;
        }
        if (!st.map) {
            fprintf(stderr, "/dhps/%s/map: %s\n", o->cluster,
                    st.bad_map ? "invalid map in etcd" : "no map published");
            ctl_state_free(&st);
            return st.bad_map ? EX_USAGE : EX_REFUSED;
        }
        *ver = dhps_cluster_map_version(st.map);
        ctl_edit *e = NULL;
        dhps_cluster_map *m = NULL;
        char *json = NULL, err[4096] = "";
        int ex = EX_OK;
        if ((rc = ctl_edit_begin(st.json, strlen(st.json), &e)) < 0) {
            ex = EX_USAGE;
        } else if ((ex = fn(arg, &st, e)) == EX_OK && ctl_edit_count(e)) {
            if ((rc = ctl_edit_finish(e, &m, &json, err, sizeof err)) < 0) {
                fprintf(stderr, "%s would make an invalid map: %s\n%s", what,
                        dhps_strerror(rc), err);
                ex = EX_USAGE;
            } else {
                int64_t rev = 0;
                rc = ctl_map_publish(c, o->cluster, json, dhps_cluster_map_version(m), st.rev,
                                     &rev);
                if (rc == DHPS_E_CONFLICT) {
                    ex = -1; /* again */
                } else if (rc < 0) {
                    fprintf(stderr, "etcd %s: write the map: %s\n", o->etcd, dhps_strerror(rc));
                    ex = EX_ETCD;
                } else {
                    *ver = dhps_cluster_map_version(m);
                    fprintf(o->json ? stderr : stdout,
                            "%s: published map version %" PRIu64 " (revision %" PRId64 ")\n",
                            what, *ver, rev);
                }
            }
        }
        free(json);
        dhps_cluster_map_destroy(m);
        ctl_edit_free(e);
        ctl_state_free(&st);
        if (ex >= 0)
            return ex;
    }
    fprintf(stderr, "%s: the map changed under every one of 20 attempts; refused\n", what);
    return EX_REFUSED;
}

struct node_arg {
    uint32_t id, id2;
    const char *cmd;
};

static int add_registered(const ctl_state *st, ctl_edit *e, uint32_t id, const char *cmd)
{
    if (dhps_cluster_map_node(st->map, id))
        return EX_OK; /* already a member (a re-run after a kill) */
    const ctl_reg *r = ctl_state_reg(st, id);
    if (!r || !r->node.addr[0] || !r->node.host[0]) {
        fprintf(stderr, "dhps %s: node %u is %s in etcd; start its dhps-server (\"coord\", "
                "\"shards\": {\"map_node\": %u, \"follow_etcd\": true}) first\n", cmd, id,
                r ? "registered without an address or host label" : "not registered", id);
        return EX_REFUSED;
    }
    int rc = ctl_edit_add_node(e, &r->node);
    if (rc < 0) {
        fprintf(stderr, "dhps %s: node %u: %s\n", cmd, id, dhps_strerror(rc));
        return EX_USAGE;
    }
    return EX_OK;
}

static int edit_add(void *arg, const ctl_state *st, ctl_edit *e)
{
    const struct node_arg *a = arg;
    return add_registered(st, e, a->id, a->cmd);
}

static int mark_draining(const ctl_state *st, ctl_edit *e, uint32_t id, const char *cmd)
{
    const dhps_cluster_node *n = dhps_cluster_map_node(st->map, id);
    if (!n) {
        fprintf(stderr, "dhps %s: node %u is not in the map (version %" PRIu64 ")\n", cmd, id,
                dhps_cluster_map_version(st->map));
        return EX_REFUSED;
    }
    if (n->state != DHPS_NODE_DRAINING)
        ctl_edit_set_state(e, id, DHPS_NODE_DRAINING);
    return EX_OK;
}

static int edit_drain(void *arg, const ctl_state *st, ctl_edit *e)
{
    const struct node_arg *a = arg;
    return mark_draining(st, e, a->id, a->cmd);
}

static int edit_replace(void *arg, const ctl_state *st, ctl_edit *e)
{
    const struct node_arg *a = arg;
    if (!dhps_cluster_map_node(st->map, a->id)) {
        fprintf(stderr, "dhps node replace: node %u is not in the map\n", a->id);
        return EX_REFUSED;
    }
    int ex = add_registered(st, e, a->id2, a->cmd);
    return ex ? ex : mark_draining(st, e, a->id, a->cmd);
}

/* ---- driving -------------------------------------------------------------------------- */

/* What the caller waits for beyond "nothing left to move": node `gone` out of the map. */
struct goal {
    bool want_gone;
    uint32_t gone;
};

static bool goal_met(const ctl_state *st, const struct goal *g, ctl_plan_fn plan, void *parg,
                     ctl_move *buf, size_t cap)
{
    if (!st->map || dhps_cluster_map_njoining(st->map))
        return false;
    if (g->want_gone && dhps_cluster_map_node(st->map, g->gone))
        return false;
    return plan(parg, st->map, buf, cap) == 0;
}

static void print_result(const struct opts *o, const char *cmd, const char *result,
                         const ctl_stats *s, double secs, int ex)
{
    if (o->json) {
        printf("{\"command\": \"%s\", \"result\": \"%s\", \"exit\": %d, \"seconds\": %.3f, "
               "\"map_version\": %" PRIu64 ", \"publishes\": %" PRIu64 ", \"joins\": %" PRIu64
               ", \"flips\": %" PRIu64 ", \"cancels\": %" PRIu64 ", \"marked_dead\": %" PRIu64
               ", \"removed\": %" PRIu64 ", \"conflicts\": %" PRIu64 ", \"etcd_errors\": %" PRIu64
               "}\n",
               cmd, result, ex, secs, s->version, s->publishes, s->joins, s->flips, s->cancels,
               s->marked_dead, s->removed, s->conflicts, s->etcd_errors);
    } else {
        printf("dhps %s: %s after %.2f s: map version %" PRIu64 ", %" PRIu64 " shard moves "
               "completed (%" PRIu64 " started, %" PRIu64 " rolled back), %" PRIu64
               " nodes removed, %" PRIu64 " marked dead, %" PRIu64 " map writes (%" PRIu64
               " lost to a concurrent change)\n",
               cmd, result, secs, s->version, s->flips, s->joins, s->cancels, s->removed,
               s->marked_dead, s->publishes, s->conflicts);
    }
}

/* Is the controller key there (someone holds the election)? Unknown (etcd error): yes. */
static bool election_held(dhps_coord *c, const char *cluster)
{
    char key[128];
    snprintf(key, sizeof key, "/dhps/%s/controller", cluster);
    dhps_coord_kv *kv = NULL;
    int n = dhps_coord_get(c, key, false, &kv, NULL);
    dhps_coord_kvs_free(kv, n);
    return n != 0;
}

/* Drive the moves with the election held (see drive). */
static int drive_held(dhps_coord *c, const struct opts *o, ctl_election *el, ctl_plan_fn plan,
                      void *parg, uint64_t t_end, FILE *log, ctl_stats *st,
                      const char **result)
{
    ctl_params p;
    ctl_params_init(&p);
    p.coord = c;
    p.cluster = o->cluster;
    p.parallel = o->parallel;
    p.grace_s = o->grace_s;
    p.poll_s = o->poll_ms / 1000.0;
    p.plan = plan;
    p.plan_arg = parg;
    p.log = log;
    p.election = el;
    ctl_driver *d = NULL;
    double left = t_end ? (double)(t_end - dhps_mono_ns()) / 1e9 : 0;
    if (t_end && left <= 0)
        left = 0.001;
    int rc = ctl_driver_create(&p, &d);
    if (rc == 0)
        rc = ctl_drive(d, left, &g_stop);
    if (d)
        *st = *ctl_driver_stats(d);
    ctl_driver_destroy(d);
    *result = "done";
    if (rc == -ETIMEDOUT || rc == -ECANCELED || rc == DHPS_E_CONFLICT) {
        *result = rc == -ETIMEDOUT   ? "timed out"
                  : rc == -ECANCELED ? "interrupted"
                                     : "lost the controller election";
        return EX_UNFINISHED;
    }
    *result = rc < 0 ? "failed" : "done";
    if (rc == DHPS_E_NOTFOUND)
        fprintf(stderr, "/dhps/%s/map: no map published\n", o->cluster);
    return rc == DHPS_E_NOTFOUND ? EX_REFUSED : rc < 0 ? EX_USAGE : EX_OK;
}

/*
 * Drive the moves until the goal: with the election won, by this process; while another
 * holds it, by waiting for the goal (the holder drives) and trying for the election
 * whenever its key is gone (a holder that died: its lease expired).
 */
static int drive(dhps_coord *c, const struct opts *o, const char *cmd, ctl_plan_fn plan,
                 void *parg, const struct goal *g, uint64_t t0, uint64_t ver)
{
    ctl_stats st = {.version = ver};
    if (o->no_wait) {
        print_result(o, cmd, "map edited (--no-wait)", &st, (double)(dhps_mono_ns() - t0) / 1e9,
                     EX_OK);
        return EX_OK;
    }
    char holder[128], held_by[512], said[512] = "";
    snprintf(holder, sizeof holder, "dhps %s (pid %d)", cmd, (int)getpid());
    FILE *log = o->json ? stderr : stdout;
    uint64_t t_end = o->timeout_s > 0 ? t0 + (uint64_t)(o->timeout_s * 1e9) : 0;
    const char *result = "timed out";
    ctl_move *buf = malloc(4096 * sizeof *buf);
    int ex = buf ? EX_UNFINISHED : EX_USAGE;
    bool try_election = true, first = true;
    while (buf && !g_stop && (!t_end || dhps_mono_ns() < t_end)) {
        if (try_election) {
            ctl_election *el = NULL;
            int rc = ctl_election_acquire(c, o->cluster, holder, o->lease_ttl_s, &el, held_by,
                                          sizeof held_by);
            if (rc == 0) {
                ex = drive_held(c, o, el, plan, parg, t_end, log, &st, &result);
                ctl_election_release(el);
                break;
            }
            if (rc != DHPS_E_CONFLICT && (first || !is_etcd_error(rc))) {
                fprintf(stderr, "etcd %s: the controller election: %s\n", o->etcd,
                        dhps_strerror(rc));
                ex = is_etcd_error(rc) ? EX_ETCD : EX_USAGE;
                result = "failed";
                break;
            }
            if (rc == DHPS_E_CONFLICT && strcmp(said, held_by)) {
                fprintf(log, "dhps %s: the controller %s drives the moves; waiting for it\n",
                        cmd, held_by);
                snprintf(said, sizeof said, "%s", held_by);
            }
        }
        first = false;
        ctl_state s;
        if (ctl_state_read(c, o->cluster, &s) == 0) {
            bool met = goal_met(&s, g, plan, parg, buf, 4096);
            st.version = s.map ? dhps_cluster_map_version(s.map) : 0;
            ctl_state_free(&s);
            if (met) {
                ex = EX_OK;
                result = "done";
                break;
            }
        }
        struct timespec ts = {0, (long)o->poll_ms * 1000000L};
        nanosleep(&ts, NULL);
        try_election = !election_held(c, o->cluster);
    }
    if (g_stop && ex == EX_UNFINISHED)
        result = "interrupted";
    free(buf);
    print_result(o, cmd, result, &st, (double)(dhps_mono_ns() - t0) / 1e9, ex);
    return ex;
}

static void catch_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int dhps_cmd_node(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "%s", ctl_usage);
        return EX_USAGE;
    }
    const char *sub = argv[1];
    bool add = !strcmp(sub, "add"), drain = !strcmp(sub, "drain"),
         remove = !strcmp(sub, "remove"), replace = !strcmp(sub, "replace");
    struct opts o;
    struct node_arg a = {0};
    if (!(add || drain || remove || replace) ||
        parse(argc - 1, argv + 1, &o, replace ? 2 : 1) < 0 || parse_id(o.pos[0], &a.id) < 0 ||
        (replace && (parse_id(o.pos[1], &a.id2) < 0 || a.id == a.id2)) || o.dry_run) {
        fprintf(stderr, "%s", ctl_usage);
        return EX_USAGE;
    }
    char cmd[32];
    snprintf(cmd, sizeof cmd, "node %s", sub);
    a.cmd = cmd;
    dhps_coord *c = open_coord(&o);
    if (!c)
        return EX_ETCD;
    catch_signals();
    uint64_t t0 = dhps_mono_ns(), ver = 0;
    char what[64];
    if (replace)
        snprintf(what, sizeof what, "dhps %s %u %u", cmd, a.id, a.id2);
    else
        snprintf(what, sizeof what, "dhps %s %u", cmd, a.id);
    int ex = edit_map(c, &o, add ? edit_add : replace ? edit_replace : edit_drain, &a, what,
                      &ver);
    struct replace_plan rp = {a.id, a.id2};
    struct goal g = {.want_gone = remove || replace, .gone = a.id};
    if (ex == EX_OK)
        ex = drive(c, &o, cmd, replace ? plan_replace : ctl_plan_placement,
                   replace ? &rp : NULL, &g, t0, ver);
    dhps_coord_destroy(c);
    return ex;
}

int dhps_cmd_rebalance(int argc, char **argv)
{
    struct opts o;
    if (parse(argc, argv, &o, 0) < 0) {
        fprintf(stderr, "%s", ctl_usage);
        return EX_USAGE;
    }
    dhps_coord *c = open_coord(&o);
    if (!c)
        return EX_ETCD;
    catch_signals();
    int ex = EX_OK;
    uint64_t t0 = dhps_mono_ns();
    if (!o.dry_run) {
        struct goal g = {0};
        ex = drive(c, &o, "rebalance", ctl_plan_placement, NULL, &g, t0, 0);
        dhps_coord_destroy(c);
        return ex;
    }
    ctl_state st;
    int rc = ctl_state_read(c, o.cluster, &st);
    ctl_move *mv = malloc(65536 * sizeof *mv);
    if (rc < 0 || !mv) {
        fprintf(stderr, "etcd %s: %s\n", o.etcd, dhps_strerror(rc < 0 ? rc : -ENOMEM));
        ex = EX_ETCD;
    } else if (!st.map) {
        fprintf(stderr, "/dhps/%s/map: %s\n", o.cluster, st.bad_map ? "invalid" : "no map");
        ex = st.bad_map ? EX_USAGE : EX_REFUSED;
    } else if ((rc = ctl_plan_placement(NULL, st.map, mv, 65536)) < 0) {
        fprintf(stderr, "dhps rebalance: placement: %s\n", dhps_strerror(rc));
        ex = EX_USAGE;
    } else {
        uint64_t ver = dhps_cluster_map_version(st.map);
        size_t nj = dhps_cluster_map_njoining(st.map), shown = rc < 65536 ? (size_t)rc : 65536;
        if (o.json) {
            printf("{\"map_version\": %" PRIu64 ", \"revision\": %" PRId64 ", \"joining\": %zu, "
                   "\"moves\": %d, \"list\": [", ver, st.rev, nj, rc);
            for (size_t i = 0; i < shown; i++)
                printf("%s{\"shard\": %u, \"from\": %u, \"to\": %u}", i ? ", " : "",
                       mv[i].shard, mv[i].from, mv[i].to);
            printf("]}\n");
        } else {
            printf("dhps rebalance --dry-run: map version %" PRIu64 " (revision %" PRId64
                   "), %zu joins in flight; %d moves to the placement:\n", ver, st.rev, nj, rc);
            for (size_t i = 0; i < shown; i++)
                printf("  shard %5u: node %u -> node %u\n", mv[i].shard, mv[i].from, mv[i].to);
        }
    }
    free(mv);
    ctl_state_free(&st);
    dhps_coord_destroy(c);
    return ex;
}

/* dhps controller --json: one object per map version written, on stdout. */
static void publish_json(void *arg, const ctl_publish *p)
{
    (void)arg;
    printf("{\"event\": \"map\", \"version\": %" PRIu64 ", \"revision\": %" PRId64
           ", \"flips\": %" PRIu64 ", \"cancels\": %" PRIu64 ", \"marked_dead\": %" PRIu64
           ", \"removed\": %" PRIu64 ", \"joins\": %" PRIu64 ", \"in_flight\": %" PRIu64
           ", \"planned\": %d}\n",
           p->version, p->revision, p->flips, p->cancels, p->marked_dead, p->removed, p->joins,
           p->in_flight, p->planned);
    fflush(stdout);
}

int dhps_cmd_controller(int argc, char **argv)
{
    struct opts o;
    if (parse(argc, argv, &o, 0) < 0 || o.dry_run || o.no_wait) {
        fprintf(stderr, "%s", ctl_usage);
        return EX_USAGE;
    }
    dhps_coord *c = open_coord(&o);
    if (!c)
        return EX_ETCD;
    catch_signals();
    char holder[128], held_by[512], last[512] = "";
    char host[64] = "?";
    gethostname(host, sizeof host - 1);
    snprintf(holder, sizeof holder, "dhps controller on %s (pid %d)", host, (int)getpid());
    ctl_params p;
    ctl_params_init(&p);
    p.coord = c;
    p.cluster = o.cluster;
    p.parallel = o.parallel;
    p.grace_s = o.grace_s;
    p.poll_s = o.poll_ms / 1000.0;
    p.log = o.json ? stderr : stdout;
    p.forever = true;
    p.plan = ctl_plan_placement;
    if (o.json)
        p.on_publish = publish_json;
    FILE *say = p.log;
    uint64_t t0 = dhps_mono_ns();
    int ex = EX_OK;
    while (!g_stop && (!o.timeout_s || dhps_mono_ns() < t0 + (uint64_t)(o.timeout_s * 1e9))) {
        ctl_election *el = NULL;
        int rc = ctl_election_acquire(c, o.cluster, holder, o.lease_ttl_s, &el, held_by,
                                      sizeof held_by);
        if (rc == DHPS_E_CONFLICT || is_etcd_error(rc)) {
            const char *why = rc == DHPS_E_CONFLICT ? held_by : dhps_strerror(rc);
            if (strcmp(why, last)) { /* once per holder / outage */
                fprintf(say, "dhps controller: standby (%s: %s)\n",
                        rc == DHPS_E_CONFLICT ? "held by" : "etcd", why);
                if (o.json)
                    printf("{\"event\": \"standby\", \"%s\": %s%s%s}\n",
                           rc == DHPS_E_CONFLICT ? "held_by" : "etcd_error",
                           rc == DHPS_E_CONFLICT ? "" : "\"", why,
                           rc == DHPS_E_CONFLICT ? "" : "\"");
            }
            fflush(stdout);
            fflush(say);
            snprintf(last, sizeof last, "%s", why);
            struct timespec ts = {0, 500000000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (rc < 0) {
            fprintf(stderr, "dhps controller: %s\n", dhps_strerror(rc));
            ex = EX_USAGE;
            break;
        }
        last[0] = 0;
        fprintf(say, "dhps controller: elected (%s); grace %.1f s, %u moves in flight at most\n",
                holder, o.grace_s, o.parallel);
        if (o.json)
            printf("{\"event\": \"elected\", \"pid\": %d}\n", (int)getpid());
        fflush(stdout);
        fflush(say);
        p.election = el;
        ctl_driver *d = NULL;
        double left = o.timeout_s ? o.timeout_s - (double)(dhps_mono_ns() - t0) / 1e9 : 0;
        if ((rc = ctl_driver_create(&p, &d)) == 0)
            rc = ctl_drive(d, o.timeout_s ? (left > 0 ? left : 0.001) : 0, &g_stop);
        ctl_driver_destroy(d);
        ctl_election_release(el);
        if (rc == DHPS_E_CONFLICT) {
            fprintf(say, "dhps controller: lost the election (lease expired); standing by\n");
            if (o.json)
                printf("{\"event\": \"lost\"}\n");
            continue;
        }
        if (rc == -ECANCELED || rc == -ETIMEDOUT)
            break;
        if (rc < 0) {
            /* an invalid map, no map: say so and keep trying (an operator fixes it) */
            fprintf(stderr, "dhps controller: %s; retrying in 2 s\n", dhps_strerror(rc));
            struct timespec ts = {2, 0};
            nanosleep(&ts, NULL);
        }
    }
    fprintf(say, "dhps controller: stopped\n");
    if (o.json)
        printf("{\"event\": \"stopped\", \"exit\": %d}\n", ex);
    dhps_coord_destroy(c);
    return ex;
}

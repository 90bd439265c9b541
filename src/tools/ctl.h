/*
 * The membership controller: the move driver behind `dhps node add|drain|remove|replace`,
 * `dhps rebalance` and `dhps controller` (docs/cluster.md "Moving shards"). Private to
 * src/tools; built as the dhps_ctl library so tests/coord drives it against a real etcd.
 *
 * Design.
 *
 * State. Everything the driver acts on lives in etcd: the map (/dhps/<cluster>/map, its
 *   mod_revision the compare-and-swap value) and the registrations (/dhps/<cluster>/
 *   nodes/, each under its server's lease, with "id", "map_version" and "not_ready").
 *   The driver keeps only one thing of its own: since when (monotonic clock) each map
 *   node's registration has been absent. A driver killed at any point therefore leaves
 *   nothing half-done that etcd does not record: a join in flight is a "joining" entry
 *   of the map, and the next driver (or this one restarted) reads it, sees from the
 *   registration whether the joining node is ready, and flips or cancels it.
 *
 * One step (ctl_step): read map + registrations; then, as one new map (one CAS; its
 *   version grows by one per kind of edit made, see ctl_edit):
 *   1. every join whose node reports ready (registration map_version >= since, the
 *      shard not in not_ready) is flipped: the joining node takes the replaced
 *      replica's position, the entry goes;
 *   2. every join whose node's registration has been gone for grace_s is cancelled
 *      (rolled back: the entry goes, the replaced replica never left);
 *   3. every active node whose registration has been gone for grace_s is marked
 *      "draining" (a dead node: placement moves its shards away, its replicas are
 *      caught up from the others);
 *   4. every draining node that holds nothing (no replica, no join) leaves "nodes";
 *   5. the planner proposes moves over the resulting map; moves whose target is not
 *      registered, or whose shard already has a join for the same replaced replica or
 *      target, are skipped; the first (parallel - joins in flight) become joins with
 *      since = the new version.
 *   6. only when 1-5 found nothing to do: first replicas are evened out
 *      (ctl_edit_balance_first: order within shards, no data moves); done when that
 *      changes nothing either.
 *   The new version is published by CAS on the revision read (ctl_map_publish, the
 *   same path as `dhps map publish`): a concurrent writer (another operator, a second
 *   driver) makes the CAS fail, and the step ends having changed nothing; the next
 *   step re-reads. Every map written is parsed first (dhps_cluster_map_parse: joins
 *   validated), so no invalid map reaches etcd.
 *
 * Election. One driver at a time holds /dhps/<cluster>/controller, created by CAS
 *   (create_revision 0) under its own lease and kept alive every ttl/3; it vanishes
 *   with the holder (lease expiry) or on release (revoke). Correctness never depends
 *   on it (every map change is a CAS); it only keeps two drivers from fighting over
 *   the same moves.
 *
 * Threads. A ctl_driver is used by one thread; ctl_election runs its keepalive thread.
 */
#ifndef DHPS_TOOLS_CTL_H
#define DHPS_TOOLS_CTL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dhps/cluster.h"
#include "dhps/coord.h"

typedef struct ctl_election ctl_election;

/* ---- the map in etcd ------------------------------------------------------------------ */

/*
 * Publish map JSON text (its version ver) as /dhps/<cluster>/map by compare-and-swap on
 * expect_rev (0: only if no map exists), then put the history entry map_history/<ver>
 * (a failed history put is reported on stderr and ignored: a gap in the record, never a
 * wrong map). Sets *rev (may be NULL) to the revision written. Returns 0,
 * DHPS_E_CONFLICT (the map changed since expect_rev, or exists for 0: nothing written),
 * -EINVAL (bad cluster name) or the dhps_coord errors. Used by `dhps map publish` too.
 */
int ctl_map_publish(dhps_coord *c, const char *cluster, const char *json, uint64_t ver,
                    int64_t expect_rev, int64_t *rev);

/* One registration under /dhps/<cluster>/nodes/, as the driver needs it. */
typedef struct ctl_reg {
    uint32_t id;                 /* the value's "id" (its map node id) */
    uint64_t map_version;        /* "map_version": the map the server has applied (0: none) */
    uint32_t *not_ready;         /* "not_ready": shards held but not ready, ascending */
    size_t n_not_ready;
    dhps_cluster_node node;      /* labels, addr (ip/port split from it; port 0: unusable), metrics_port */
    int64_t lease;
} ctl_reg;

/* What one read of etcd saw. */
typedef struct ctl_state {
    dhps_cluster_map *map;  /* NULL when etcd has no map (or an invalid one: see bad_map) */
    char *json;             /* the map's JSON text as stored (NULL without a map) */
    int64_t rev;            /* the map key's mod_revision (0: no map) */
    bool bad_map;           /* a map key whose value does not parse */
    ctl_reg *regs;          /* registrations that carry an "id", by ascending id */
    size_t nregs;
} ctl_state;

/* Read the map and every registration. Returns 0 (st filled; free with
 * ctl_state_free), -EINVAL, -ENOMEM or the dhps_coord errors (st left empty). */
int ctl_state_read(dhps_coord *c, const char *cluster, ctl_state *st);
void ctl_state_free(ctl_state *st);

/* The registration of node id, or NULL when none is present. */
const ctl_reg *ctl_state_reg(const ctl_state *st, uint32_t id);

/* Is the join complete: its node registered with map_version >= since and the shard not
 * in its not_ready list? */
bool ctl_join_ready(const ctl_state *st, const dhps_cluster_join *j);

/* ---- map edits ------------------------------------------------------------------------ */

/*
 * A map being edited through the cluster library's editing API (dhps_cluster_map_edit_*,
 * each call a new map, version + 1, validated whole). Flips and cancels are queued and
 * applied one call per kind before an edit of another kind; joins are queued and started
 * by one call in ctl_edit_finish (their since = the version published), each checked on
 * adding against the map with every queued join. The published version is therefore the
 * edited one + the number of calls (typically 1-3 for a driver step). Not thread-safe.
 *
 * Every edit returns 0, -ENOENT (no such node / join / replica), -EEXIST (already so),
 * or -ENOMEM; add_join also DHPS_E_CONFIG (the map would be invalid with it, e.g. two
 * copies of the shard on one host: nothing changed), remove_node -EBUSY (it still holds
 * a shard, as a replica or joining, or a queued join names it).
 */
typedef struct ctl_edit ctl_edit;

/* Start from map JSON text (len bytes). Returns 0 and *out, DHPS_E_MALFORMED (not a
 * valid map) or -ENOMEM. Free with ctl_edit_free (NULL-safe). */
int ctl_edit_begin(const char *json, size_t len, ctl_edit **out);
void ctl_edit_free(ctl_edit *e);

/* add_join: node starts catching up shard to replace replica `replaces`. flip: the join
 * (shard, node) completes (node takes the replaced replica's position). cancel: it is
 * rolled back. set_state: DHPS_NODE_ACTIVE or DHPS_NODE_DRAINING. add_node: n's id,
 * labels, addr, metrics_port. remove_node: a node that holds nothing. */
int ctl_edit_add_join(ctl_edit *e, uint32_t shard, uint32_t node, uint32_t replaces);
int ctl_edit_flip(ctl_edit *e, uint32_t shard, uint32_t node);
int ctl_edit_cancel(ctl_edit *e, uint32_t shard, uint32_t node);
int ctl_edit_set_state(ctl_edit *e, uint32_t node, int state);
int ctl_edit_add_node(ctl_edit *e, const dhps_cluster_node *n);
int ctl_edit_remove_node(ctl_edit *e, uint32_t node);

/* Even out first replicas (dhps_cluster_map_edit_balance_first: swaps within shards,
 * holder sets unchanged, no data moves). *changed = shards reordered; the edit counts
 * only when > 0. 0 or an error above. */
int ctl_edit_balance_first(ctl_edit *e, size_t *changed);

/* Number of edits made since begin (0: nothing to publish). */
unsigned ctl_edit_count(const ctl_edit *e);

/*
 * Apply what is queued and give the map as it now stands: parsed into *map (the caller's;
 * destroy it) and serialised into *json (malloc'ed; free()). Returns 0, DHPS_E_CONFIG
 * (the queued edits make an invalid map: err says why, one problem a line) or -ENOMEM.
 * The edit stays usable: more edits and another finish may follow (the driver plans on
 * the map after its flips, then adds joins).
 */
int ctl_edit_finish(ctl_edit *e, dhps_cluster_map **map, char **json, char *err,
                    size_t errlen);

/* ---- the driver ----------------------------------------------------------------------- */

/* One move: shard's replica `from` is to be replaced by `to`. */
typedef struct ctl_move {
    uint32_t shard, from, to;
} ctl_move;

/* The planner: the moves that take map m to its balanced placement, most urgent first
 * (re-replication of draining nodes before balance). Writes up to cap of them into out
 * and returns the total, or a negative error. Must be deterministic for one map. */
typedef int (*ctl_plan_fn)(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap);

/* The placement planner of the cluster library (dhps_cluster_plan; ctlplan.c): arg
 * unused. */
int ctl_plan_placement(void *arg, const dhps_cluster_map *m, ctl_move *out, size_t cap);

/* One map version a driver step published (ctl_params.on_publish). */
typedef struct ctl_publish {
    uint64_t version;
    int64_t revision;
    uint64_t flips, cancels, marked_dead, removed, joins; /* what it changed */
    uint64_t in_flight;      /* joins in the map it wrote */
    int planned;             /* moves the planner proposed */
} ctl_publish;

typedef struct ctl_params {
    dhps_coord *coord;       /* required; borrowed */
    const char *cluster;     /* required */
    uint32_t parallel;       /* joins in flight at most (default 16) */
    double grace_s;          /* registration gone this long = node dead (default 30) */
    double poll_s;           /* pause between steps (default 0.2) */
    ctl_plan_fn plan;        /* required (the tools pass ctl_plan_placement) */
    void *plan_arg;
    FILE *log;               /* one line per map change (NULL: quiet) */
    bool forever;            /* ctl_drive: keep stepping once done (the controller) */
    void (*on_publish)(void *arg, const ctl_publish *pub); /* after each version written
                                                             (may be NULL; driver thread) */
    void *publish_arg;
    const struct ctl_election *election; /* drive only while it is held (NULL: always) */
} ctl_params;

void ctl_params_init(ctl_params *p);

typedef struct ctl_stats {
    uint64_t steps, publishes, conflicts, etcd_errors;
    uint64_t joins, flips, cancels, marked_dead, removed;
    uint64_t planned;        /* moves the planner proposed in the last step */
    uint64_t version;        /* map version after the last step */
} ctl_stats;

typedef struct ctl_driver ctl_driver;

/* Create a driver (params copied; coord borrowed and must outlive it). Returns 0 and
 * *out, -EINVAL or -ENOMEM. Free with ctl_driver_destroy (NULL-safe). */
int ctl_driver_create(const ctl_params *p, ctl_driver **out);
void ctl_driver_destroy(ctl_driver *d);

/*
 * One step (the essay). *done (may be NULL) is set when the map needs nothing more: no
 * joins in flight, nothing to flip, cancel, mark or remove, and the planner proposes
 * no move. Returns 0 (including a lost CAS: counted in stats.conflicts, nothing
 * changed), DHPS_E_NOTFOUND (no map in etcd), DHPS_E_CONFIG (the map in etcd is
 * invalid, or an edit would make it so: described on the log), the planner's error, or
 * the dhps_coord errors (etcd unreachable: call again later).
 */
int ctl_step(ctl_driver *d, bool *done);

/* Step until done (never with params.forever), *stop is set, or timeout_s (0: none)
 * passes, sleeping poll_s between steps; etcd errors are retried (logged once per
 * outage). Returns 0 (done), -ETIMEDOUT, -ECANCELED (stop), DHPS_E_CONFLICT (the
 * params' election was lost: another driver may act now), or ctl_step's non-etcd
 * errors. */
int ctl_drive(ctl_driver *d, double timeout_s, volatile sig_atomic_t *stop);

const ctl_stats *ctl_driver_stats(const ctl_driver *d);

/* ---- the election --------------------------------------------------------------------- */

/*
 * Try to become the controller of cluster: create /dhps/<cluster>/controller =
 * {"holder": holder, "pid": N, "since": unix} under a new lease of ttl_s seconds, kept
 * alive by a thread every ttl_s/3. Returns 0 and *out (held), DHPS_E_CONFLICT (another
 * holder: its value in held_by when not NULL, up to cap bytes; nothing kept), or the
 * dhps_coord errors. Release with ctl_election_release (NULL-safe).
 */
int ctl_election_acquire(dhps_coord *c, const char *cluster, const char *holder,
                         int64_t ttl_s, ctl_election **out, char *held_by, size_t cap);

/* Still held? false once a keepalive found the lease gone (the key went with it: stop
 * driving and acquire again). Thread-safe. */
bool ctl_election_held(const ctl_election *e);

/* Stop the keepalive and revoke the lease (the key is deleted at once). */
void ctl_election_release(ctl_election *e);

#endif

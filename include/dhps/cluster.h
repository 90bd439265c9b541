/*
 * dhps cluster map: which nodes exist, where they are, and which nodes hold each
 * virtual shard. Servers read it to know what they own; clients read it to route.
 *
 * Design.
 *
 * Shape. A map is a version (u64, bumped by whoever edits it), a shard count (every key
 *   lives in shard dhps_proto_shard_of(key, nshards)), a replica count R, a node list
 *   (id, host/pod/az labels, ip:port address, optional metrics port) and, per shard, the
 *   ordered ids of its R replicas. Everything is explicit: the shard table is data, not
 *   the output of a hash ring, so an operator can move one shard by editing one line,
 *   and a client never needs to agree with a server on a placement function.
 *
 * File. JSON (Debian's libjansson), format in docs/client.md:
 *     {"version": 7, "nshards": 1024, "replicas": 3,
 *      "nodes": [{"id": 0, "host": "h0", "pod": "p0", "az": "a", "addr": "10.0.0.1:7000",
 *                 "metrics_port": 9100}, {"id": 4, ..., "state": "draining"}, ...],
 *      "joining": [{"shard": 17, "node": 5, "replaces": 2, "since": 7}, ...],
 *      "shards": [[0, 1, 2], [1, 2, 0], ...]}
 *   "state" (optional, "active" by default) and "joining" (optional, empty by default) are
 *   the membership additions (issue 10); a map without them parses as before.
 *   1024 shards x 3 replicas is ~14 KB: parsing it takes well under a millisecond, so a
 *   client simply re-reads the whole file when its mtime moves and keeps it only if the
 *   version grew (no diffs, no partial states).
 *
 * Validation. A map is loaded whole or not at all. The parser is a pure function over
 *   a byte buffer (fuzzed: fuzz/cluster) that collects every problem it can find, one
 *   line each, naming the key, node or shard: missing/ill-typed keys, duplicate node
 *   ids or addresses, bad addresses, a shards array whose length is not nshards, a
 *   shard without replicas or with a count other than R, an unknown node id, the same
 *   node twice in a shard, two replicas of one shard on one host (a host failure must
 *   never take out two copies), a node "state" other than "active"/"draining", and for
 *   each joining entry: an unknown shard or node, a node that is already a replica of the
 *   shard, a "replaces" that is not, a second entry for one (shard, node) or one
 *   (shard, replaces), a joining node on the host of a replica it does not replace or of
 *   another joining node of that shard (every flip order must give a valid map), a
 *   "since" newer than the map version.
 *
 * Generation (dhps_cluster_map_generate). Greedy, slot by slot: for shard s, replica r,
 *   the candidate nodes are those on a host not yet used by s whose load is below
 *   ceil(S*R/N); among them the key is (AZ already used by s, pod already used by s,
 *   load, primary load, rotation by s) - so replicas spread over AZs, then pods, when
 *   the labels allow it, and load stays even. A repair pass then moves replicas from the
 *   most to the least loaded node (keeping hosts distinct) until every node holds within
 *   +-1 of S*R/N shards. First replicas (the "first healthy" router's preferred target)
 *   are balanced the same way through the primary-load term (with R = 3; with R = 2 over
 *   two AZs they are not: measured up to 0..282 per node over 7 nodes, a known gap that
 *   dhps_cluster_map_edit_balance_first closes without moving data: 170..171).
 *
 * Placement (dhps_cluster_plan). Moves from an existing map to a balanced one, as few as
 *   possible. The eligible nodes are the active ones not named dead. Shards with a
 *   joining entry are frozen (their move is under way; the joins count as done).
 *   1. Targets. The replicas the eligible nodes will hold, T = theirs + the forced ones
 *      (on dead or draining nodes, unfrozen shards), are split floor(T/E) each, and the
 *      T mod E targets of one more go first to nodes already above floor(T/E) (a move
 *      saved each), then to the emptiest nodes (so a node added to replace another
 *      takes all of its replicas). The lower bound min_moves is the sum of the
 *      shortfalls below target, plus one per forced replica the short nodes cannot take
 *      because the shard already has a replica on their host.
 *   2. Forced replicas, hardest first (fewest eligible short nodes that may take them):
 *      each goes to a short node whose host no other holder of the shard uses (the
 *      replicas before the move, which keep serving, and after it), chosen by the key
 *      (replicas of the shard already in its AZ, first-replica imbalance added, replicas
 *      already in its POD, most room, hash tie-break). When no short node may take it,
 *      an augmenting path (depth <= 4) re-routes earlier moves of this plan to make room;
 *      only then does it go to a node at target (a detour the balance step pays for).
 *   3. Balance: while an eligible node is short, it takes the best slot (same key, now
 *      as the change in AZ/POD pairs and first-replica imbalance) of a node above its
 *      target. When none fits (hosts), it takes one from a node at its target that can
 *      itself take a slot of a node above target (a detour of one move that makes
 *      progress); else it stays short (stats.short_left). No slot moves twice in a
 *      plan, so the moves can start together.
 *   Measured (tests/cluster/test_cluster_plan.c, 120 random clusters of 4..60 nodes,
 *   2 AZs x 1..3 PODs, R = 2/3, 64..1024 shards, adds, drains, deaths, replacements):
 *   every plan meets its lower bound; shards short of the AZ spread after the moves
 *   3703 of 51456 against 3295 for a map generated afresh over the same nodes (which
 *   would move nearly everything); POD 1671 against 1071.
 *
 * Ownership and threads. A dhps_cluster_map is immutable after creation: any number of
 *   threads may read one at once. Pointers it returns live as long as the map.
 */
#ifndef DHPS_CLUSTER_H
#define DHPS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_cluster_map dhps_cluster_map;

#define DHPS_CLUSTER_LABEL_MAX 63      /* host/pod/az bytes, without NUL */
#define DHPS_CLUSTER_ADDR_MAX 47       /* "ip:port" bytes, without NUL */
#define DHPS_CLUSTER_MAX_NODE_ID 65535u /* node ids are 0..this */
#define DHPS_CLUSTER_MAX_SHARDS (1u << 20)
#define DHPS_CLUSTER_MAX_REPLICAS 16u
#define DHPS_CLUSTER_MAX_NODES 65536u

typedef struct dhps_cluster_node {
    uint32_t id;
    char host[DHPS_CLUSTER_LABEL_MAX + 1];
    char pod[DHPS_CLUSTER_LABEL_MAX + 1];
    char az[DHPS_CLUSTER_LABEL_MAX + 1];
    char addr[DHPS_CLUSTER_ADDR_MAX + 1]; /* "ip:port" as written */
    char ip[DHPS_CLUSTER_ADDR_MAX + 1];   /* the ip part (filled by the parser/generator) */
    uint16_t port;                        /* the port part */
    uint16_t metrics_port;                /* 0 = none */
    uint8_t state;                        /* DHPS_NODE_ACTIVE or DHPS_NODE_DRAINING */
} dhps_cluster_node;

/* Node states (key "state" of a node object; absent = active). A draining node still
 * serves every shard it lists; placement (dhps_cluster_plan) moves its shards away and
 * places nothing new on it; it is removed from the map once it holds nothing. */
#define DHPS_NODE_ACTIVE 0
#define DHPS_NODE_DRAINING 1

/*
 * A move in flight (top-level "joining" list): node is catching up shard to take the
 * place of replica replaces, which stays in the shard's replica list until the flip.
 * since = the map version that added the entry. A joining node receives every write of
 * the shard and answers no lookups (docs/cluster.md "Map: node state and joining").
 */
typedef struct dhps_cluster_join {
    uint32_t shard;
    uint32_t node;
    uint32_t replaces;
    uint64_t since;
} dhps_cluster_join;

/*
 * Parse a map from buf[0..len) (need not be NUL-terminated). Pure: no I/O, no global
 * state. On success returns 0 and sets *out (free with dhps_cluster_map_destroy). On
 * failure returns DHPS_E_MALFORMED (not JSON), DHPS_E_CONFIG (JSON, but not a valid map)
 * or -ENOMEM, leaves *out NULL, and when err != NULL writes a NUL-terminated list of
 * problems, one per line ("shard 17: replicas 3 and 5 share host h2"), truncated to
 * errlen. Thread-safe.
 */
int dhps_cluster_map_parse(const void *buf, size_t len, dhps_cluster_map **out, char *err,
                           size_t errlen);

/* Read the file at path and parse it as above. Adds -errno (open/read failure, named in
 * err). Thread-safe. */
int dhps_cluster_map_load(const char *path, dhps_cluster_map **out, char *err, size_t errlen);

/* Free a map. NULL allowed. No other thread may use it any more. */
void dhps_cluster_map_destroy(dhps_cluster_map *m);

/* Accessors: pure reads, thread-safe. */
uint64_t dhps_cluster_map_version(const dhps_cluster_map *m);
uint32_t dhps_cluster_map_nshards(const dhps_cluster_map *m);
uint32_t dhps_cluster_map_nreplicas(const dhps_cluster_map *m);
size_t dhps_cluster_map_nnodes(const dhps_cluster_map *m);
/* Largest node id in the map (0 for a map without nodes). */
uint32_t dhps_cluster_map_max_node_id(const dhps_cluster_map *m);

/* The i-th node in file order (i < nnodes), or NULL. Valid while the map lives. */
const dhps_cluster_node *dhps_cluster_map_node_at(const dhps_cluster_map *m, size_t i);
/* The node with this id, or NULL. O(1). Valid while the map lives. */
const dhps_cluster_node *dhps_cluster_map_node(const dhps_cluster_map *m, uint32_t id);

/* The shard of a key in this map (dhps_proto_shard_of with the map's nshards). */
uint32_t dhps_cluster_map_shard_of(const dhps_cluster_map *m, uint64_t key);

/* Replica node ids of shard (in map order, first = preferred). Returns the count (the
 * map's R) and sets *ids to an array valid while the map lives, or -EINVAL (shard out
 * of range, NULL argument). */
int dhps_cluster_map_replicas(const dhps_cluster_map *m, uint32_t shard, const uint32_t **ids);

/* Shards that list node_id among their replicas, ascending. Writes up to cap of them
 * into out (out may be NULL when cap is 0) and returns the total count (0 for an
 * unknown node). */
size_t dhps_cluster_map_shards_of(const dhps_cluster_map *m, uint32_t node_id, uint32_t *out,
                                  size_t cap);

/* Is node_id a replica of shard? False for a joining node, an unknown node or shard, or
 * m == NULL. Thread-safe. */
bool dhps_cluster_map_owns(const dhps_cluster_map *m, uint32_t node_id, uint32_t shard);

/* Number of joining entries (moves in flight) in the map; 0 for m == NULL. Thread-safe. */
size_t dhps_cluster_map_njoining(const dhps_cluster_map *m);

/* The i-th joining entry, sorted by (shard, node) whatever the file order, or NULL when
 * i >= njoining or m == NULL. Valid while the map lives. Thread-safe. */
const dhps_cluster_join *dhps_cluster_map_join_at(const dhps_cluster_map *m, size_t i);

/* Joining entries of one shard: returns their count (0..R) and sets *out to the first of
 * them (they are contiguous in join_at order, sorted by node; *out = NULL when the count
 * is 0), or -EINVAL (shard out of range, NULL argument). O(log njoining). Valid while
 * the map lives. Thread-safe. */
int dhps_cluster_map_joining(const dhps_cluster_map *m, uint32_t shard,
                             const dhps_cluster_join **out);

/* Does node hold shard, as a replica or as a joining node (it must keep a store for the
 * shard and accept its writes)? False for unknown node/shard or m == NULL. Thread-safe. */
bool dhps_cluster_map_holds(const dhps_cluster_map *m, uint32_t node, uint32_t shard);

/* Shards node holds (replica or joining), ascending. Writes up to cap of them into out
 * (out may be NULL when cap is 0) and returns the total count (0 for an unknown node or
 * m == NULL). O(count). Thread-safe. */
size_t dhps_cluster_map_holdings_of(const dhps_cluster_map *m, uint32_t node, uint32_t *out,
                                    size_t cap);

typedef struct dhps_cluster_gen_params {
    uint64_t version;   /* version of the new map (default 1) */
    uint32_t nshards;   /* default 1024 */
    uint32_t replicas;  /* default 3; must not exceed the number of distinct hosts */
} dhps_cluster_gen_params;

/* Fill p with the defaults above. */
void dhps_cluster_gen_params_init(dhps_cluster_gen_params *p);

/*
 * Generate a balanced map over nodes[0..n) (see the essay: distinct hosts per shard,
 * spread over AZs and pods when possible, every node within +-1 of the mean shard
 * count). The node array is copied; ip/port are derived from addr; state is copied (a
 * state other than active/draining is refused) but every node receives its share: a new
 * map has nothing to drain (dhps_cluster_plan moves draining nodes' shards away). The map
 * has no joining entries. Returns 0 and sets
 * *out, or DHPS_E_CONFIG (fewer distinct hosts than replicas, a node list that would
 * not pass dhps_cluster_map_parse, bad params; described in err), -ENOMEM.
 * Deterministic: the same input gives the same map. Thread-safe.
 */
int dhps_cluster_map_generate(const dhps_cluster_gen_params *p, const dhps_cluster_node *nodes,
                              size_t n, dhps_cluster_map **out, char *err, size_t errlen);

/*
 * Parse a node list (a JSON array of node objects, or an object with a "nodes" array;
 * same keys as in a map) for dhps_cluster_map_generate. Returns 0 and sets *nodes (free
 * with free()) and *n, or DHPS_E_MALFORMED / DHPS_E_CONFIG / -ENOMEM with err filled.
 * Thread-safe.
 */
int dhps_cluster_nodes_parse(const void *buf, size_t len, dhps_cluster_node **nodes, size_t *n,
                             char *err, size_t errlen);

/* ---- placement (place.c) --------------------------------------------------------------- */

/* One replica move: in shard `shard`, replica `from` is replaced by node `to` (at from's
 * position in the shard's replica list once the move completes). */
typedef struct dhps_cluster_move {
    uint32_t shard;
    uint32_t from;
    uint32_t to;
} dhps_cluster_move;

typedef struct dhps_cluster_plan_params {
    const uint32_t *dead; /* node ids to treat as gone: their replicas are re-placed like a
                           * draining node's, and nothing is placed on them (ids not in the
                           * map are ignored) */
    size_t ndead;
    size_t max_moves;     /* return at most this many moves (the first ones in priority
                           * order: dead nodes' replicas, draining nodes', then balance);
                           * 0 = no limit */
} dhps_cluster_plan_params;

/* Fill p with the defaults: no dead nodes, no limit. */
void dhps_cluster_plan_params_init(dhps_cluster_plan_params *p);

/* What a plan found; every count is over the shards the plan may touch (not frozen). */
typedef struct dhps_cluster_plan_stats {
    uint32_t eligible;     /* active nodes not dead: the nodes that may receive replicas */
    uint32_t frozen;       /* shards left alone: a joining entry is in flight */
    size_t forced;         /* replicas on dead or draining nodes (each one move) */
    size_t min_moves;      /* lower bound on the moves (essay, "Placement"): the eligible
                            * nodes' shortfalls below their targets, plus one per forced
                            * replica the nodes short of their target cannot take (hosts) */
    size_t moves;          /* moves planned, before max_moves */
    size_t unplaced;       /* forced replicas no eligible node could take (too few hosts) */
    size_t short_left;     /* replicas the eligible nodes still lack below their targets
                            * after the moves: balance the hosts or frozen shards did not
                            * allow (0 = every eligible node within +-1 of the mean) */
    uint32_t load_min, load_max;       /* eligible nodes' replica counts after the moves */
    uint32_t primary_min, primary_max; /* eligible nodes' first-replica counts after */
    size_t az_short;       /* shards after the moves whose replicas span fewer AZs than
                            * min(R, AZs among eligible nodes) */
    size_t pod_short;      /* the same for PODs (az/pod pairs) */
} dhps_cluster_plan_stats;

/*
 * Plan the moves from m to a balanced placement (essay above, "Placement"): every replica
 * on a dead or draining node replaced, every eligible node (active, not dead) within +-1
 * of the mean replica count, the replicas of a shard on distinct hosts (required: a move
 * whose target would share a host with another holder of the shard is never planned,
 * counting the joining nodes of the same plan), spread over AZs then PODs and first
 * replicas balanced (preferred), with as few moves as possible: stats->min_moves is the
 * lower bound, and the plan meets it unless host constraints force a detour (measured
 * in docs/cluster.md). Shards with a joining entry are left alone (their move is under
 * way); their joins are counted as done. Each (shard, from) appears at most once, so the
 * moves can be started together (dhps_cluster_map_edit_start_joins). Pure and
 * deterministic: the same map and params give the same moves. Thread-safe.
 *
 * Returns 0 with *moves (malloc'ed, free with free(); NULL when *n is 0) and *n, and
 * fills *st when st != NULL; -EINVAL (NULL m/moves/n/p); DHPS_E_CONFIG (no eligible
 * node; err says so); -ENOMEM. Forced replicas that no node can take (fewer eligible
 * hosts than R) are counted in st->unplaced and listed in err, one line each, and the
 * call still returns 0 with the moves it could plan.
 */
int dhps_cluster_plan(const dhps_cluster_map *m, const dhps_cluster_plan_params *p,
                      dhps_cluster_move **moves, size_t *n, dhps_cluster_plan_stats *st,
                      char *err, size_t errlen);

/* Split a node address "a.b.c.d:port" (IPv4, port 1-65535, as in a map's "addr") into
 * ip (NUL-terminated, at most ipcap bytes with the NUL) and port. Returns 0, or -1 (and
 * ip/port unspecified) when addr is not such an address or ip does not fit. Pure. */
int dhps_cluster_addr_split(const char *addr, char *ip, size_t ipcap, uint16_t *port);

/* ---- editing (edit.c) ------------------------------------------------------------------
 *
 * Maps are immutable: each edit returns a NEW map (version = m's version + 1; free with
 * dhps_cluster_map_destroy) and leaves m alone. An edit that would give an invalid map
 * (dhps_cluster_map_parse's rules) is refused as a whole. Every edit: 0 and *out, or
 * -EINVAL (NULL m/out), DHPS_E_NOTFOUND (the named node or joining entry does not
 * exist), DHPS_E_CONFIG (the edit is not allowed; err says why, naming node and shard),
 * -ENOMEM; *out is NULL on failure. Pure, thread-safe.
 */

/* Add a node (id, host/pod/az, addr, metrics_port, state as given; ip/port derived from
 * addr). It holds nothing until a plan moves replicas to it. DHPS_E_CONFIG: the id or
 * the addr already in m, an id above DHPS_CLUSTER_MAX_NODE_ID, an empty host, a bad
 * addr, an unknown state. */
int dhps_cluster_map_edit_add_node(const dhps_cluster_map *m, const dhps_cluster_node *nd,
                                   dhps_cluster_map **out, char *err, size_t errlen);

/* Set a node's state (DHPS_NODE_ACTIVE / DHPS_NODE_DRAINING). Setting the state it has
 * already still bumps the version. DHPS_E_NOTFOUND: no such node; DHPS_E_CONFIG: an
 * unknown state. */
int dhps_cluster_map_edit_set_state(const dhps_cluster_map *m, uint32_t node, uint8_t state,
                                    dhps_cluster_map **out, char *err, size_t errlen);

/* Remove a node that holds nothing (not a replica of any shard, not joining anywhere).
 * DHPS_E_NOTFOUND: no such node; DHPS_E_CONFIG: it still holds shards (the count is in
 * err) or it is the last node. */
int dhps_cluster_map_edit_remove_node(const dhps_cluster_map *m, uint32_t node,
                                      dhps_cluster_map **out, char *err, size_t errlen);

/* Start moves: for each moves[i], a joining entry {shard, node = to, replaces = from,
 * since = the new version}. All or nothing: DHPS_E_CONFIG when any entry breaks the
 * joining rules (from not a replica, to already holding the shard, a host shared, a
 * second entry for one (shard, to) or (shard, from), ...), DHPS_E_NOTFOUND when `to` is
 * not in the map. n == 0 is allowed (a version bump). */
int dhps_cluster_map_edit_start_joins(const dhps_cluster_map *m, const dhps_cluster_move *moves,
                                      size_t n, dhps_cluster_map **out, char *err,
                                      size_t errlen);

/* Complete moves (the flip): for each moves[i], the joining entry (shard, node = to,
 * replaces = from) is removed and `to` takes from's position in the shard's replica list.
 * All or nothing: DHPS_E_NOTFOUND when an entry does not exist. Readiness is the
 * caller's business (docs/cluster.md "Map: node state and joining"). */
int dhps_cluster_map_edit_complete_joins(const dhps_cluster_map *m,
                                         const dhps_cluster_move *moves, size_t n,
                                         dhps_cluster_map **out, char *err, size_t errlen);

/* Cancel moves (roll back): the joining entries (shard, node = to, replaces = from) are
 * removed; replicas stay as they are. All or nothing: DHPS_E_NOTFOUND when an entry
 * does not exist. */
int dhps_cluster_map_edit_cancel_joins(const dhps_cluster_map *m, const dhps_cluster_move *moves,
                                       size_t n, dhps_cluster_map **out, char *err,
                                       size_t errlen);

/* Balance first replicas (the "first healthy" router's preferred target) over the active
 * nodes without moving data: in some shards the first replica swaps places with another
 * replica of the same shard, so every holder set stays as it is (servers see no change;
 * no fence moves). Local search: a shard's first replica is swapped with the active
 * replica of the shard that is first in the fewest shards when that count + 1 is below
 * the first replica's, or when the first replica's node is draining; until no swap
 * applies (each swap lowers the sum of squared counts, so it ends). *changed (may be
 * NULL) = shards whose order changed. Useful after generate with R = 2 (essay) and after
 * moves, which keep a replaced replica's position. */
int dhps_cluster_map_edit_balance_first(const dhps_cluster_map *m, dhps_cluster_map **out,
                                        size_t *changed, char *err, size_t errlen);

/* Serialise the map as JSON (the format parse reads; shards one per line). "state" is
 * written only for draining nodes and "joining" only when non-empty (sorted by (shard,
 * node)), so a map without them serialises as before. parse(to_json(m)) gives a map
 * whose to_json is identical. Returns a malloc'ed NUL-terminated string (free with
 * free()), or NULL on -ENOMEM or m == NULL. Thread-safe. */
char *dhps_cluster_map_to_json(const dhps_cluster_map *m);

/* Write the map to path atomically: a temporary file in the same directory, fsync,
 * rename over path. Readers see the old or the new file, never a torn one. Returns 0 or
 * -errno / -ENOMEM. Thread-safe for distinct paths. */
int dhps_cluster_map_write(const dhps_cluster_map *m, const char *path);

#ifdef __cplusplus
}
#endif
#endif

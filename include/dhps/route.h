/*
 * dhps route: client-side traffic scheduling. Pure logic: the router never sends a byte.
 * The caller asks it where to send each sub-batch (dhps_route_pick), tells it how that
 * went (dhps_route_report), and asks it whether to hedge or retry. Time and randomness
 * are injected, so every decision is reproducible in tests and in `dhps sim`.
 *
 * Design (figures measured with `dhps sim` are in docs/route.md):
 *
 * Tiers. Every node has labels host, pod, az. Relative to the local node a replica is in
 *   tier 0 HOST (same host: shared memory), 1 POD (same az and pod: RDMA), 2 AZ (same az:
 *   RDMA) or 3 REMOTE (other az: TCP). A pod name is only compared within its az.
 *
 * Spill (Envoy's priority load). For one pick the caller passes the shard's replicas. Each
 *   replica gets an effective health e in [0,1]: 0 if it is administratively down, its
 *   breaker is not closed, or it has max_in_flight requests outstanding; otherwise its
 *   dynamic weight (below). A tier's health h is the mean e of its replicas, and it carries
 *   min(1, h x overprovision) of what reaches it; the rest spills to the next tier.
 *   overprovision = 1.4 (Envoy's factor): a tier keeps all its traffic until more than
 *   ~29 % of it is unhealthy, so one sick replica among several or a little jitter does not
 *   move traffic across the network. If the tiers together carry less than 1 the shares are
 *   scaled up (every request must go somewhere).
 *
 * Panic. When the share of nodes the router considers healthy falls below panic_threshold
 *   (default 0.5, Envoy's default), health is probably being misjudged (or whatever is left
 *   would be crushed): the router ignores health and spreads load over all replicas. A
 *   shard whose replicas are all unhealthy is routed the same way (counted as no_healthy).
 *
 * Within a tier: power of two choices. Two distinct eligible replicas are drawn and the one
 *   with the lower cost = peak_ewma x (in_flight + 1) / weight wins. Peak EWMA (Finagle): a
 *   sample above the average replaces it at once, otherwise the average decays toward the
 *   sample with time constant ewma_tau (default 1 s: Finagle's 10 s is for millisecond
 *   services; ours answer in microseconds and see thousands of samples a second). The cost
 *   also decays toward 0 while a node is idle, so a node that was slow once is retried.
 *   A node without samples borrows its tier's median, so it does not attract every pick.
 *
 * Dynamic flow ratios. A node's weight = success^2 x latency factor, in [weight_floor, 1].
 *   success is an EWMA of ok/failed reports (alpha 1/16: 5 errors in a row halve the weight).
 *   The latency factor asks how much of the tier's advantage over the next tier the node
 *   still has: f = (Lnext - (lat - rise)) / (Lnext - B), where lat is the node's smooth
 *   latency EWMA (time constant weight_tau, 2 s), B the tier's baseline (a decaying minimum
 *   of its nodes' latencies that rises with time constant baseline_tau, 10 min), Lnext the
 *   next tier's baseline (at least 1.5 B; 3 B when unknown) and rise the common rise
 *   (below; 0 unless every measured tier got slower). A POD whose latency doubles
 *   (20 -> 40 us, AZ 60 us) keeps half its weight, so with 1.4 it keeps 70 % of its traffic
 *   and sheds 30 %; at the AZ latency it keeps only the floor. Weights move smoothly (EWMA
 *   inputs) and are only rewritten when they move by more than weight_hysteresis (0.05),
 *   so they do not chase noise. weight_floor (0.05) keeps ~7 % of a tier's traffic on a
 *   degraded node: it keeps being measured and wins its traffic back when it recovers.
 *   A tier that stays slow for many minutes becomes its own new baseline, gradually.
 *
 * Common rise. Baselines remember a calm past on purpose, but a load on the client's own
 *   host (CPU wait) adds about the same time to every answer whatever the tier: judged
 *   against its calm baseline the fastest tier would look slow and be pushed out, though
 *   the tiers' order has not changed. So each tier also keeps a long EWMA of its latency
 *   (baseline_tau); its rise is its smooth latency minus that. The common rise is the
 *   least rise among the tiers with an ok answer in the last 3 weight_tau, 0 unless at
 *   least two did (with one tier its own slowdown and the client's cannot be told apart).
 *   Weights and the slow-call test subtract it from the latency they judge. A tier slow on
 *   its own rises alone, so the others keep the common rise at ~0 and it is judged in
 *   full; when all tiers rise together (POD 0.3 + 1.7 ms, AZ 1 + 1.7 ms) the POD is judged
 *   at about its calm 0.3 ms and keeps its traffic. The slow-call test, which judges one
 *   answer as it arrives, takes the larger of this and the same minimum over each tier's
 *   last answer, so a sudden load is seen once every measured tier has answered under
 *   it, not after the seconds the smooth EWMAs need.
 *
 * Circuit breaker, per node. Closed: it opens after consecutive_errors (5) failures in a
 *   row, or when a window (1 s, at least 20 requests) has error share >= 0.5 or slow share
 *   >= 0.5, a call being slow when its latency minus the common rise is above slow_factor
 *   (5) x its tier's baseline (10x slow nodes are isolated, also under a loaded client; a
 *   2-3x slow POD is left to the weights). Open: no traffic for
 *   base_ejection x 2^k (1 s doubling to 60 s; k grows by one per consecutive opening and
 *   is forgotten after the node has stayed closed for backoff_reset, 5 min). Half-open: one
 *   probe request at a time (real traffic, flagged DHPS_ROUTE_PROBE so the caller can hedge
 *   it at once); probe_successes (3) ok probes close it, a failed probe re-opens it with
 *   the next backoff. At most max_ejection_share (0.5) of the nodes (and at least one) are
 *   open or half-open at once: a breaker that would exceed the cap stays closed and the
 *   refusal is counted (Envoy's max_ejection_percent; its 10 % default assumes a second
 *   line of defence, here the breaker is the first one and an AZ is 25 % of nodes).
 *
 * Hedging. dhps_route_hedge_delay gives the p95 of the primary's tier, from a decaying
 *   log-bucketed histogram (4 buckets per octave, 19 % resolution; counts halve every
 *   hist_decay, 1 s) of successful latencies, clamped to [hedge_min, hedge_max]; below 32
 *   samples it returns hedge_default. dhps_route_hedge_acquire spends a token from a bucket
 *   that gains hedge_budget (0.05) per primary pick plus hedge_floor_per_s per second, up to
 *   hedge_burst (10), or up to what the per-pick share earned over the last
 *   budget_window (1 s) when that is more: hedges <= 5 % of requests + floor over any
 *   window, so a slow cluster is not doubled, yet the moment a node stalls under a wide
 *   fan-out (tens of sub-batches waiting on it at once) the last second's share can pay
 *   for hedging all of them.
 *
 * Retries. dhps_route_retry_acquire allows a retry on another replica (pick with the tried
 *   nodes excluded) when the deadline leaves room for one more attempt (the fastest known
 *   tier median, or retry_min_headroom) and a token is left in a bucket like the hedge one
 *   (retry_budget 0.1 per primary pick, retry_floor_per_s 10/s, burst 20 or the last
 *   budget_window's share; Finagle's retry budget has the same shape: a percentage of the
 *   requests in a time window plus a floor), so retries cannot multiply load during an
 *   outage.
 *
 * Observability. Every decision increments a counter: per tier (picks, spills in,
 *   hedges, retries, ok, errors), per node (picks, ok, errors, ejections) and per reason
 *   (panic, no_healthy, probes, breaker transitions, ejection cap, hedge sent/won/lost,
 *   budget exhausted, deadline). Read them with dhps_route_stats / _node_stats.
 *
 * Concurrency. The router is thread-safe without locks: node state and counters are
 *   relaxed atomics, breaker transitions and token buckets use compare-and-swap, node
 *   slots are preallocated (max_nodes), so pick/report/acquire/stats may run on any number
 *   of threads at once, and so may node_set/set_up/remove. Estimators (EWMAs, baselines)
 *   are read-modify-written without a lock: two reports racing on one node may lose one
 *   sample's contribution, which an estimator tolerates; counters and state machines are
 *   exact. Only dhps_route_destroy must not race with anything. With the default random
 *   source, a given seed reproduces a run only when calls come from a single thread.
 */
#ifndef DHPS_ROUTE_H
#define DHPS_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_route dhps_route;

enum dhps_route_tier {
    DHPS_ROUTE_HOST = 0,   /* same host: shared memory */
    DHPS_ROUTE_POD = 1,    /* same pod: RDMA */
    DHPS_ROUTE_AZ = 2,     /* same az: RDMA */
    DHPS_ROUTE_REMOTE = 3, /* other az: TCP */
    DHPS_ROUTE_TIERS = 4,
};

/* Longest label (host, pod, az) in bytes, without the terminating NUL. */
#define DHPS_ROUTE_LABEL_MAX 63
/* Most replicas one pick may consider. */
#define DHPS_ROUTE_MAX_REPLICAS 64

typedef struct dhps_route_labels {
    const char *host; /* NUL-terminated; NULL or "" = unknown (never equal to another) */
    const char *pod;
    const char *az;
} dhps_route_labels;

/* Time in nanoseconds (any epoch, monotonic non-decreasing). Called from any thread. */
typedef uint64_t (*dhps_route_clock_fn)(void *arg);
/* 64 uniformly random bits. Called from any thread; must be thread-safe if the router is
 * used from several threads. */
typedef uint64_t (*dhps_route_rand_fn)(void *arg);

typedef struct dhps_route_params {
    uint32_t max_nodes;           /* node ids are 0..max_nodes-1 (default 4096) */
    dhps_route_clock_fn clock_ns; /* default CLOCK_MONOTONIC */
    void *clock_arg;
    dhps_route_rand_fn rand;      /* default: splitmix64 over an atomic counter from seed */
    void *rand_arg;
    uint64_t seed;                /* seed of the default random source (default 1) */

    double overprovision;         /* tier carries min(1, health x this) (default 1.4) */
    double panic_threshold;       /* panic below this healthy share of nodes (default 0.5) */
    uint32_t max_in_flight;       /* a node with this many outstanding is "overloaded";
                                     0 = no limit (default 0) */
    uint64_t ewma_tau_ns;         /* peak-EWMA decay (default 1 s) */
    uint64_t weight_tau_ns;       /* smooth latency EWMA for weights (default 2 s) */
    uint64_t baseline_tau_ns;     /* tier baseline rise, and the long tier latency EWMA
                                     the common rise is measured from (default 600 s) */
    double weight_floor;          /* least weight of an eligible node (default 0.05) */
    double weight_hysteresis;     /* weight changes smaller than this are ignored (0.05) */

    uint32_t consecutive_errors;  /* breaker opens after this many failures in a row (5) */
    uint64_t window_ns;           /* breaker window (default 1 s) */
    uint32_t window_min_requests; /* least requests in a window to judge rates (20) */
    double error_threshold;       /* error share that opens (default 0.5) */
    double slow_threshold;        /* slow-call share that opens (default 0.5) */
    double slow_factor;           /* slow = latency > this x tier baseline (default 5) */
    uint64_t base_ejection_ns;    /* first open period (default 1 s) */
    uint64_t max_ejection_ns;     /* open period cap (default 60 s) */
    uint64_t backoff_reset_ns;    /* closed this long forgets the backoff (default 300 s) */
    uint32_t probe_successes;     /* ok probes that close a half-open breaker (default 3) */
    double max_ejection_share;    /* most nodes open/half-open at once (default 0.5) */

    double hedge_budget;          /* hedge tokens per primary pick (default 0.05) */
    double hedge_floor_per_s;     /* hedge tokens per second (default 1) */
    double hedge_burst;           /* bucket size, and initial tokens (default 10) */
    uint64_t hedge_default_ns;    /* hedge delay before enough samples (default 1 ms) */
    uint64_t hedge_min_ns;        /* least hedge delay (default 1 us) */
    uint64_t hedge_max_ns;        /* most hedge delay (default 100 ms) */
    uint64_t hist_decay_ns;       /* latency histograms halve this often (default 1 s) */

    double retry_budget;          /* retry tokens per primary pick (default 0.1) */
    double retry_floor_per_s;     /* retry tokens per second (default 10) */
    double retry_burst;           /* bucket size, and initial tokens (default 20) */
    uint64_t retry_min_headroom_ns; /* a retry needs this much time before the deadline;
                                       0 = the fastest tier's median (default 0) */
    uint64_t budget_window_ns;    /* the hedge and retry buckets may hold up to what the
                                     per-pick budget earned over the last window when
                                     that exceeds the burst; 0 = the burst is the cap
                                     (default 1 s) */
} dhps_route_params;

/* Fill p with the defaults documented above. */
void dhps_route_params_init(dhps_route_params *p);

/*
 * Create a router for a client running at `local` (labels are copied). Returns 0 and sets
 * *out, or -EINVAL (NULL argument, max_nodes 0 or > 2^24, a share outside [0,1],
 * overprovision < 1, a zero time constant), DHPS_E_TOOBIG (a label longer than
 * DHPS_ROUTE_LABEL_MAX), -ENOMEM. Free with dhps_route_destroy.
 */
int dhps_route_create(const dhps_route_params *p, const dhps_route_labels *local,
                      dhps_route **out);

/* Destroy a router; NULL allowed. No other call on it may be running or follow. */
void dhps_route_destroy(dhps_route *r);

/* ---- nodes -------------------------------------------------------------------------- */

/*
 * Add node `id` with its labels, or update the labels (and so the tier) of a known node,
 * keeping its statistics. A new node starts up, closed, weight 1, with no samples.
 * Returns 0, -EINVAL (id >= max_nodes, NULL labels), DHPS_E_TOOBIG (label too long).
 * Thread-safe; picks racing with the update see the old or the new tier.
 */
int dhps_route_node_set(dhps_route *r, uint32_t id, const dhps_route_labels *labels);

/* Remove node id (it is no longer picked; its counters are dropped). Returns 0, -EINVAL
 * (id out of range), DHPS_E_NOTFOUND (not present). Thread-safe. Outstanding picks on it
 * may still be reported; the reports are ignored. */
int dhps_route_node_remove(dhps_route *r, uint32_t id);

/* Mark a node administratively up or down (e.g. from cluster membership); a down node
 * is not picked except in panic. Returns 0, -EINVAL, DHPS_E_NOTFOUND. Thread-safe. */
int dhps_route_node_set_up(dhps_route *r, uint32_t id, bool up);

/* Tier of node id relative to the local node, or -EINVAL / DHPS_E_NOTFOUND. */
int dhps_route_node_tier(const dhps_route *r, uint32_t id);

/* ---- picking and reporting ------------------------------------------------------------ */

enum dhps_route_kind {
    DHPS_ROUTE_PRIMARY = 0, /* first attempt of a sub-batch: feeds the budgets */
    DHPS_ROUTE_HEDGE = 1,   /* after dhps_route_hedge_acquire succeeded */
    DHPS_ROUTE_RETRY = 2,   /* after dhps_route_retry_acquire succeeded */
};

/* dhps_route_choice.flags */
#define DHPS_ROUTE_SPILL 0x1u  /* a better tier had replicas but could not carry this */
#define DHPS_ROUTE_PANIC 0x2u  /* health ignored: too few healthy nodes overall */
#define DHPS_ROUTE_NO_HEALTHY 0x4u /* health ignored: no replica of this shard eligible */
#define DHPS_ROUTE_PROBE 0x8u  /* probe of a half-open breaker */

typedef struct dhps_route_choice {
    uint32_t node;   /* chosen node id */
    uint8_t tier;    /* its tier */
    uint8_t kind;    /* the dhps_route_kind passed to pick */
    uint8_t flags;   /* DHPS_ROUTE_SPILL | _PANIC | _NO_HEALTHY | _PROBE */
    uint64_t start_ns; /* router clock at the pick */
} dhps_route_choice;

/*
 * Choose a replica for one sub-batch. replicas: the shard's node ids (n in
 * 1..DHPS_ROUTE_MAX_REPLICAS; unknown ids and duplicates are skipped); exclude: ids not
 * to pick (nodes already tried for this sub-batch), may be NULL when n_exclude is 0.
 * On success fills *out, counts the pick as outstanding on the node (in-flight + 1) and
 * returns 0; every successful pick must later be reported exactly once with
 * dhps_route_report. Errors: -EINVAL (NULL r/out, n 0, bad kind), DHPS_E_TOOBIG
 * (n > DHPS_ROUTE_MAX_REPLICAS), DHPS_E_UNREACHABLE (no known replica left after
 * exclusions). Thread-safe, lock-free.
 */
int dhps_route_pick(dhps_route *r, const uint32_t *replicas, size_t n,
                    const uint32_t *exclude, size_t n_exclude, int kind,
                    dhps_route_choice *out);

enum dhps_route_outcome {
    DHPS_ROUTE_OK = 0,        /* answered in full */
    DHPS_ROUTE_ERROR = 1,     /* failed (refused, reset, handler error) */
    DHPS_ROUTE_TIMEOUT = 2,   /* gave up waiting; latency = time waited */
    DHPS_ROUTE_CANCELLED = 3, /* the caller cancelled it: the other attempt of a hedged
                                 pair answered first */
};

/*
 * Report the outcome of a pick: ends its in-flight count and feeds latency (ns since the
 * pick, as measured by the caller), success and breaker state. For a hedged pair report
 * the attempt that answered first with its outcome and the other one CANCELLED: a
 * reported OK on a HEDGE choice counts as hedge_won, a CANCELLED hedge as hedge_lost. A
 * cancelled attempt only raises the node's peak EWMA (it was at least that slow).
 * Returns 0, -EINVAL (NULL, bad outcome, node id out of range), DHPS_E_NOTFOUND (the
 * node was removed; nothing recorded). Thread-safe, lock-free.
 */
int dhps_route_report(dhps_route *r, const dhps_route_choice *c, uint64_t latency_ns,
                      int outcome);

/* ---- hedging and retries --------------------------------------------------------------- */

/*
 * How long to wait for the attempt c before hedging: about the p95 latency of c's tier
 * (see the essay), in ns. Always > 0. Thread-safe.
 */
uint64_t dhps_route_hedge_delay(dhps_route *r, const dhps_route_choice *c);

/*
 * Ask to send a hedge now for an attempt still outstanding at deadline_ns (absolute,
 * router clock; 0 = none). Returns 0 and consumes a hedge token (counted as hedge_sent;
 * then pick with DHPS_ROUTE_HEDGE excluding the first node), DHPS_E_TIMEOUT (the deadline
 * has passed) or DHPS_E_BUSY (budget exhausted; counted). Thread-safe.
 */
int dhps_route_hedge_acquire(dhps_route *r, uint64_t deadline_ns);

/*
 * Ask to retry a failed sub-batch on another replica. Returns 0 and consumes a retry
 * token (counted), DHPS_E_TIMEOUT (now + headroom >= deadline_ns, deadline_ns != 0;
 * counted) or DHPS_E_BUSY (retry budget exhausted; counted). Thread-safe.
 */
int dhps_route_retry_acquire(dhps_route *r, uint64_t deadline_ns);

/* ---- observability ----------------------------------------------------------------- */

typedef struct dhps_route_tier_stats {
    uint64_t picks;     /* picks that chose this tier (all kinds) */
    uint64_t spills;    /* of which DHPS_ROUTE_SPILL: traffic spilled into this tier */
    uint64_t hedges;    /* hedge picks into this tier */
    uint64_t retries;   /* retry picks into this tier */
    uint64_t ok, errors, timeouts, cancelled; /* reports */
    uint64_t p50_ns, p95_ns;  /* from the decaying histogram, 0 without samples */
    double latency_ns;        /* smooth latency EWMA of the tier's ok reports */
    double baseline_ns;       /* the tier baseline B (0 = unknown) */
    double latency_long_ns;   /* the same EWMA with baseline_tau (its rise is latency_ns
                                 minus this) */
} dhps_route_tier_stats;

typedef struct dhps_route_stats {
    uint64_t picks;             /* all successful picks */
    uint64_t primary, hedge_picks, retry_picks; /* by kind */
    uint64_t spills;            /* picks flagged SPILL */
    uint64_t panics;            /* picks flagged PANIC */
    uint64_t no_healthy;        /* picks flagged NO_HEALTHY */
    uint64_t probes;            /* picks flagged PROBE */
    uint64_t unreachable;       /* picks that failed: nothing left to pick */
    uint64_t breaker_opened;    /* closed -> open and half-open -> open */
    uint64_t breaker_half_opened;
    uint64_t breaker_closed;    /* half-open -> closed */
    uint64_t ejection_capped;   /* openings refused by max_ejection_share */
    uint64_t displaced;         /* breakers opened for slow answers closed early to make
                                   room, under max_ejection_share, for a node that fails */
    uint64_t opened_errors;     /* of breaker_opened: errors (consecutive, or the window's
                                   error share) */
    uint64_t opened_slow;       /* ... the window's slow share */
    uint64_t opened_probe;      /* ... a half-open probe failed or was slow */
    uint64_t hedge_sent;        /* hedge tokens granted */
    uint64_t hedge_won;         /* hedge choices reported OK */
    uint64_t hedge_lost;        /* hedge choices reported CANCELLED */
    uint64_t hedge_budget_exhausted;
    uint64_t hedge_deadline;    /* hedge refused: deadline passed */
    uint64_t retries;           /* retry tokens granted */
    uint64_t retry_budget_exhausted;
    uint64_t retry_deadline;    /* retry refused: no room before the deadline */
    uint64_t reports_ok, reports_error, reports_timeout, reports_cancelled;
    uint32_t nodes;             /* present */
    uint32_t ejected;           /* open or half-open now */
    uint32_t down;              /* administratively down now */
    double common_rise_ns;      /* the rise all measured tiers share (see the essay), from
                                   their smooth latencies */
    double common_rise_last_ns; /* ... from their last answers */
    dhps_route_tier_stats tier[DHPS_ROUTE_TIERS];
} dhps_route_stats;

enum dhps_route_breaker { DHPS_ROUTE_CLOSED = 0, DHPS_ROUTE_OPEN = 1, DHPS_ROUTE_HALF_OPEN = 2 };

typedef struct dhps_route_node_stats {
    uint64_t picks, ok, errors, timeouts, cancelled;
    uint64_t ejections;       /* times its breaker opened */
    uint32_t in_flight;
    uint8_t tier;
    uint8_t breaker;          /* enum dhps_route_breaker */
    bool up;                  /* administratively */
    uint64_t open_until_ns;   /* when open: end of the isolation */
    uint64_t backoff_ns;      /* the isolation period the next opening would use */
    double peak_ewma_ns;      /* as of its last update */
    double latency_ns;        /* smooth latency EWMA */
    double success;           /* success EWMA */
    double weight;            /* dynamic weight in [weight_floor, 1] */
} dhps_route_node_stats;

/* Read all counters (each read atomically; the set is not one snapshot). Thread-safe.
 * Returns 0 or -EINVAL. */
int dhps_route_stats_get(dhps_route *r, dhps_route_stats *out);

/* Read one node's state and counters. Returns 0, -EINVAL, DHPS_E_NOTFOUND. */
int dhps_route_node_stats_get(dhps_route *r, uint32_t id, dhps_route_node_stats *out);

/* Name of a tier ("host", "pod", "az", "remote"), or "?" */
const char *dhps_route_tier_name(int tier);

#ifdef __cplusplus
}
#endif
#endif

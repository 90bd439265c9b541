/*
 * dhps route internals shared by route.c (create, nodes, pick, report, stats), health.c
 * (latency histogram, breakers, weights) and budget.c (hedge and retry token buckets).
 *
 *
 * All shared state is accessed through the __atomic builtins: relaxed loads and stores for
 * estimators and counters, compare-and-swap for breaker states, ejection counts and token
 * buckets. Doubles are stored with the generic __atomic_load/__atomic_store (8-byte,
 * lock-free on every 64-bit target we build for).
 */
#ifndef DHPS_ROUTE_INT_H
#define DHPS_ROUTE_INT_H

#include "dhps/route.h"
#include "dhps/log.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RLX __ATOMIC_RELAXED
#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define ACQREL __ATOMIC_ACQ_REL

#define HIST_BUCKETS 128      /* quarter-octave buckets up to 2^32 ns (4.3 s) */
#define HIST_MIN_SAMPLES 32   /* fewer: quantiles are not trusted */
#define SUCCESS_ALPHA (1.0 / 16)
#define EWMA_SAME_TIME_ALPHA (1.0 / 1024) /* a sample at the same instant still counts */
#define BASELINE_MIN_SAMPLES 8 /* a node feeds its tier's baseline after this many oks */
#define NEXT_TIER_MIN_GAP 1.5  /* next tier's reference is at least 1.5 x this baseline */
#define NEXT_TIER_DEFAULT_GAP 3.0 /* ... and 3 x when unknown */
#define RISE_FRESH_TAUS 3      /* a tier measured in the last 3 weight_tau is a witness */
#define RISE_MIN_TIERS 2       /* witnesses needed before a rise is called common */
#define TOKEN 1000000LL        /* token buckets count micro-tokens */
#define MAX_LEVEL 40

/* A breaker word: state (bits 0-1), BRK_SLOW (bit 2: opened for slow answers, not
 * errors; kept through half-open), backoff level (bits 3..). One word, so a compare-and-
 * swap sees the state and the reason together. */
#define BRK_SLOW 4u
#define BRK_STATE(b) ((b)&3u)
#define BRK_LEVEL(b) ((b) >> 3)
#define BRK(st, lvl) ((uint32_t)(st) | ((uint32_t)(lvl) << 3))

struct rnode {
    uint32_t present;
    uint32_t tier;
    uint32_t up;
    uint32_t in_flight;
    uint32_t brk;        /* state | BRK_SLOW | level << 3 */
    uint32_t consec;     /* failures in a row (closed) */
    uint32_t probe_busy; /* a probe is outstanding (half-open) */
    uint32_t probe_ok;   /* ok probes since half-open */
    uint32_t win_total, win_err, win_slow;
    uint64_t win_start;
    uint64_t open_until;
    uint64_t closed_since;
    double peak;         /* peak EWMA, ns */
    uint64_t peak_stamp;
    double lat;          /* smooth latency EWMA, ns */
    uint64_t lat_stamp;
    double succ;         /* success EWMA */
    double weight;       /* dynamic weight */
    uint64_t picks, ok, errors, timeouts, cancelled, ejections;
} __attribute__((aligned(64)));

struct rtier {
    double lat;          /* smooth latency EWMA, weight_tau */
    double last;         /* latency of its last ok answer: what it answers in right now */
    double lat_long;     /* the same with baseline_tau: what it used to answer in */
    uint64_t lat_stamp;
    double base;
    uint64_t base_stamp;
    uint64_t hist_stamp;
    uint32_t hist[HIST_BUCKETS];
    uint64_t picks, spills, hedges, retries, ok, errors, timeouts, cancelled;
} __attribute__((aligned(64)));

struct bucket {
    int64_t tokens; /* micro-tokens */
    uint64_t stamp; /* last time-based refill */
    int64_t per_pick, cap;
    double per_s;
    uint64_t window;      /* budget_window_ns (0: the cap is fixed) */
    uint64_t win_start;   /* start of the current window */
    int64_t earned;       /* micro-tokens earned by picks in the current window */
    int64_t earned_prev;  /* ... in the previous one: the cap may grow to this */
} __attribute__((aligned(64)));

struct counters {
    uint64_t picks, primary, hedge_picks, retry_picks, spills, panics, no_healthy, probes,
        unreachable, breaker_opened, breaker_half_opened, breaker_closed, ejection_capped,
        displaced, opened_errors, opened_slow, opened_probe,
        hedge_sent, hedge_won, hedge_lost, hedge_budget_exhausted, hedge_deadline, retries,
        retry_budget_exhausted, retry_deadline, reports_ok, reports_error, reports_timeout,
        reports_cancelled;
};

struct dhps_route {
    dhps_route_params p;
    char local[3][DHPS_ROUTE_LABEL_MAX + 1]; /* host, pod, az */
    uint64_t rng;
    uint32_t present, ejected, down;
    struct counters c __attribute__((aligned(64)));
    struct bucket hedge, retry;
    struct rtier tier[DHPS_ROUTE_TIERS];
    struct rnode *nodes;
};

/* ---- small helpers ------------------------------------------------------------------ */

static inline uint32_t ld32(const uint32_t *p) { return __atomic_load_n(p, RLX); }
static inline void st32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, RLX); }
static inline uint64_t ld64(const uint64_t *p) { return __atomic_load_n(p, RLX); }
static inline void st64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, RLX); }
static inline void inc(uint64_t *p) { __atomic_fetch_add(p, 1, RLX); }
static inline double ldd(const double *p)
{
    double v;
    __atomic_load(p, &v, RLX);
    return v;
}
static inline void std_(double *p, double v) { __atomic_store(p, &v, RLX); }
static inline bool cas32(uint32_t *p, uint32_t *expect, uint32_t v)
{
    return __atomic_compare_exchange_n(p, expect, v, false, ACQREL, RLX);
}

static inline double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static inline uint64_t now_ns(dhps_route *r) { return r->p.clock_ns(r->p.clock_arg); }
static inline uint64_t rnd(dhps_route *r) { return r->p.rand(r->p.rand_arg); }
static inline double rnd01(dhps_route *r) { return (double)(rnd(r) >> 11) * 0x1.0p-53; }

/* Time-based EWMA weight of a new sample dt ns after the previous one. */
static inline double ewma_alpha(uint64_t dt, uint64_t tau)
{
    return dt ? 1.0 - exp(-(double)dt / (double)tau) : EWMA_SAME_TIME_ALPHA;
}

/* ---- health.c: what answers teach the router ------------------------------------------ */

/* Halves tier t's histogram once per hist_decay_ns (so quantiles follow the present). */
void route_hist_maybe_decay(dhps_route *r, struct rtier *t, uint64_t now);
/* Quantile q of tier t's latency histogram, ns; 0 when it holds fewer than HIST_MIN_SAMPLES. */
uint64_t route_hist_quantile(const struct rtier *t, double q);
/* Isolation time of a breaker opened at backoff level `level`. */
uint64_t route_backoff_ns(const dhps_route *r, uint32_t level);
/* Node n's breaker state now (moves open -> half-open when the isolation has ended). */
uint32_t route_breaker_state(dhps_route *r, struct rnode *n, uint64_t now);
/* Feeds one answer (ok, slow) of choice c to node n's breaker: windows, probes, opening
 * under the ejection cap, closing. */
void route_breaker_report(dhps_route *r, struct rnode *n, const dhps_route_choice *c, bool ok,
                          bool slow, uint64_t now);
/* The latency rise every measured tier shares (the client's own wait), ns; last: use each
 * tier's last answer instead of its smooth latency. */
double route_common_rise(const dhps_route *r, uint64_t now, bool last);
/* Does tier t's latency v beat what the next fresh tier answers in now? */
bool route_faster_than_next(const dhps_route *r, unsigned t, double v, uint64_t now);
/* Recomputes node n's dynamic weight in tier t with the common rise taken out, against
 * the next tier's baseline or, when fresh and slower now, its smooth latency. */
void route_weight_update(dhps_route *r, struct rnode *n, unsigned t, double rise, uint64_t now);
/* Feeds an ok answer's latency v to node n's and tier t's estimators and histogram. */
void route_latency_update(dhps_route *r, struct rnode *n, unsigned t, double v, uint64_t now);

/* ---- budget.c: hedge and retry token buckets ------------------------------------------ */

/* A bucket earning per_pick tokens per primary pick and per_s per second, up to burst. */
void route_bucket_init(struct bucket *b, double per_pick, double per_s, double burst,
                       uint64_t window, uint64_t now);
/* A primary pick's deposit, counted in the current window. */
void route_bucket_deposit(struct bucket *b, uint64_t now);

#endif

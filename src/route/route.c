/*
 * dhps route: see include/dhps/route.h for the design and the contracts.
 *
 * All shared state is accessed through the __atomic builtins: relaxed loads and stores for
 * estimators and counters, compare-and-swap for breaker states, ejection counts and token
 * buckets. Doubles are stored with the generic __atomic_load/__atomic_store (8-byte,
 * lock-free on every 64-bit target we build for).
 */
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

#define BRK_STATE(b) ((b)&3u)
#define BRK_LEVEL(b) ((b) >> 2)
#define BRK(st, lvl) ((uint32_t)(st) | ((uint32_t)(lvl) << 2))

struct rnode {
    uint32_t present;
    uint32_t tier;
    uint32_t up;
    uint32_t in_flight;
    uint32_t brk;        /* state | level << 2 */
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
        opened_errors, opened_slow, opened_probe,
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

static double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static uint64_t default_clock(void *arg)
{
    (void)arg;
    return dhps_mono_ns();
}

static uint64_t default_rand(void *arg)
{
    uint64_t *ctr = arg; /* splitmix64 */
    uint64_t z = __atomic_add_fetch(ctr, 0x9E3779B97F4A7C15ull, RLX);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t now_ns(dhps_route *r) { return r->p.clock_ns(r->p.clock_arg); }
static inline uint64_t rnd(dhps_route *r) { return r->p.rand(r->p.rand_arg); }
static inline double rnd01(dhps_route *r) { return (double)(rnd(r) >> 11) * 0x1.0p-53; }

/* Time-based EWMA weight of a new sample dt ns after the previous one. */
static double ewma_alpha(uint64_t dt, uint64_t tau)
{
    return dt ? 1.0 - exp(-(double)dt / (double)tau) : EWMA_SAME_TIME_ALPHA;
}

/* ---- histogram ----------------------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
    if (v > 0xFFFFFFFFull)
        v = 0xFFFFFFFFull;
    if (v < 4)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    return msb * 4 + (unsigned)((v >> (msb - 2)) & 3);
}

static void hist_bounds(unsigned i, double *lo, double *hi)
{
    if (i < 8) {
        *lo = i;
        *hi = i + 1;
        return;
    }
    unsigned msb = i / 4, sub = i % 4;
    *lo = (double)((4ull + sub) << (msb - 2));
    *hi = (double)((5ull + sub) << (msb - 2));
}

static void hist_maybe_decay(dhps_route *r, struct rtier *t, uint64_t now)
{
    uint64_t s = ld64(&t->hist_stamp);
    if (now - s < r->p.hist_decay_ns || now < s)
        return;
    if (!__atomic_compare_exchange_n(&t->hist_stamp, &s, now, false, ACQREL, RLX))
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint32_t v = ld32(&t->hist[i]);
        if (v)
            __atomic_fetch_sub(&t->hist[i], (v + 1) / 2, RLX);
    }
}

/* Quantile q of tier t's histogram; 0 when it holds fewer than HIST_MIN_SAMPLES. */
static uint64_t hist_quantile(const struct rtier *t, double q)
{
    uint32_t c[HIST_BUCKETS];
    uint64_t total = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        c[i] = ld32(&t->hist[i]);
        total += c[i];
    }
    if (total < HIST_MIN_SAMPLES)
        return 0;
    double target = q * (double)total, cum = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (!c[i])
            continue;
        if (cum + c[i] >= target) {
            double lo, hi;
            hist_bounds(i, &lo, &hi);
            double v = lo + (hi - lo) * (target - cum) / c[i];
            return v < 1 ? 1 : (uint64_t)v;
        }
        cum += c[i];
    }
    return 0xFFFFFFFFull;
}

/* ---- token buckets --------------------------------------------------------------------- */

static void bucket_init(struct bucket *b, double per_pick, double per_s, double burst,
                        uint64_t window, uint64_t now)
{
    b->per_pick = (int64_t)(per_pick * TOKEN);
    b->per_s = per_s;
    b->cap = (int64_t)(burst * TOKEN);
    b->tokens = b->cap;
    b->stamp = now;
    b->window = window;
    b->win_start = now;
}

/* The bucket holds at most the burst, or what picks earned in the last full window when
 * that is more: a budget of x % of the recent picks, so a burst of sub-batches that all
 * need a hedge at once (a node stalls under a wide fan-out) can be covered by what the
 * traffic of the last second earned, while the long-run share stays x %. */
static int64_t bucket_cap(const struct bucket *b)
{
    int64_t e = __atomic_load_n(&b->earned_prev, RLX);
    return e > b->cap ? e : b->cap;
}

static void bucket_add(struct bucket *b, int64_t amount)
{
    if (amount <= 0)
        return;
    int64_t cap = bucket_cap(b);
    int64_t cur = __atomic_load_n(&b->tokens, RLX), nv;
    do {
        if (cur >= cap)
            return;
        nv = cur + amount > cap ? cap : cur + amount;
    } while (!__atomic_compare_exchange_n(&b->tokens, &cur, nv, false, RLX, RLX));
}

/* A primary pick's deposit, counted in the current window. */
static void bucket_deposit(struct bucket *b, uint64_t now)
{
    if (b->per_pick <= 0)
        return;
    if (b->window) {
        uint64_t ws = ld64(&b->win_start);
        if (now >= ws + b->window &&
            __atomic_compare_exchange_n(&b->win_start, &ws, now, false, RLX, RLX)) {
            int64_t e = __atomic_exchange_n(&b->earned, 0, RLX);
            /* an idle window in between: nothing was earned in the last one */
            __atomic_store_n(&b->earned_prev, now >= ws + 2 * b->window ? 0 : e, RLX);
        }
        __atomic_fetch_add(&b->earned, b->per_pick, RLX);
    }
    bucket_add(b, b->per_pick);
}

/* Refill by elapsed time, then take one token. True on success. */
static bool bucket_take(struct bucket *b, uint64_t now)
{
    uint64_t s = ld64(&b->stamp);
    if (now > s && __atomic_compare_exchange_n(&b->stamp, &s, now, false, RLX, RLX))
        bucket_add(b, (int64_t)(b->per_s * (double)(now - s) * 1e-9 * TOKEN));
    int64_t cur = __atomic_load_n(&b->tokens, RLX);
    do {
        if (cur < TOKEN)
            return false;
    } while (!__atomic_compare_exchange_n(&b->tokens, &cur, cur - TOKEN, false, RLX, RLX));
    return true;
}

/* ---- params, create --------------------------------------------------------------------- */

void dhps_route_params_init(dhps_route_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_nodes = 4096;
    p->seed = 1;
    p->overprovision = 1.4;
    p->panic_threshold = 0.5;
    p->ewma_tau_ns = 1000000000ull;
    p->weight_tau_ns = 2000000000ull;
    p->baseline_tau_ns = 600000000000ull;
    p->weight_floor = 0.05;
    p->weight_hysteresis = 0.05;
    p->consecutive_errors = 5;
    p->window_ns = 1000000000ull;
    p->window_min_requests = 20;
    p->error_threshold = 0.5;
    p->slow_threshold = 0.5;
    p->slow_factor = 5.0;
    p->base_ejection_ns = 1000000000ull;
    p->max_ejection_ns = 60000000000ull;
    p->backoff_reset_ns = 300000000000ull;
    p->probe_successes = 3;
    p->max_ejection_share = 0.5;
    p->hedge_budget = 0.05;
    p->hedge_floor_per_s = 1.0;
    p->hedge_burst = 10.0;
    p->hedge_default_ns = 1000000ull;
    p->hedge_min_ns = 1000ull;
    p->hedge_max_ns = 100000000ull;
    p->hist_decay_ns = 1000000000ull;
    p->retry_budget = 0.1;
    p->retry_floor_per_s = 10.0;
    p->retry_burst = 20.0;
    p->retry_min_headroom_ns = 0;
    p->budget_window_ns = 1000000000ull;
}

static bool share_ok(double v) { return v >= 0.0 && v <= 1.0; }

static int copy_label(char *dst, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n > DHPS_ROUTE_LABEL_MAX)
        return DHPS_E_TOOBIG;
    if (n)
        memcpy(dst, src, n);
    dst[n] = 0;
    return 0;
}

static int check_labels(const dhps_route_labels *l)
{
    const char *v[3] = {l->host, l->pod, l->az};
    for (int i = 0; i < 3; i++)
        if (v[i] && strlen(v[i]) > DHPS_ROUTE_LABEL_MAX)
            return DHPS_E_TOOBIG;
    return 0;
}

int dhps_route_create(const dhps_route_params *p, const dhps_route_labels *local,
                      dhps_route **out)
{
    if (!p || !local || !out)
        return -EINVAL;
    *out = NULL;
    if (p->max_nodes == 0 || p->max_nodes > (1u << 24) || p->overprovision < 1.0 ||
        !share_ok(p->panic_threshold) || !share_ok(p->weight_floor) ||
        p->weight_floor <= 0.0 || !share_ok(p->weight_hysteresis) ||
        !share_ok(p->error_threshold) || !share_ok(p->slow_threshold) ||
        !share_ok(p->max_ejection_share) || p->slow_factor <= 1.0 || !p->ewma_tau_ns ||
        !p->weight_tau_ns || !p->baseline_tau_ns || !p->window_ns || !p->hist_decay_ns ||
        !p->base_ejection_ns || p->max_ejection_ns < p->base_ejection_ns ||
        !p->probe_successes || !p->consecutive_errors || p->hedge_budget < 0 ||
        p->hedge_burst < 1 || p->retry_budget < 0 || p->retry_burst < 1 ||
        p->hedge_floor_per_s < 0 || p->retry_floor_per_s < 0 || p->hedge_min_ns == 0 ||
        p->hedge_max_ns < p->hedge_min_ns)
        return -EINVAL;
    int rc = check_labels(local);
    if (rc)
        return rc;

    dhps_route *r = NULL;
    if (posix_memalign((void **)&r, 64, sizeof *r))
        return -ENOMEM;
    memset(r, 0, sizeof *r);
    r->p = *p;
    if (!r->p.clock_ns)
        r->p.clock_ns = default_clock;
    if (!r->p.rand) {
        r->rng = p->seed;
        r->p.rand = default_rand;
        r->p.rand_arg = &r->rng;
    }
    copy_label(r->local[0], local->host);
    copy_label(r->local[1], local->pod);
    copy_label(r->local[2], local->az);
    if (posix_memalign((void **)&r->nodes, 64, sizeof(struct rnode) * p->max_nodes)) {
        free(r);
        return -ENOMEM;
    }
    memset(r->nodes, 0, sizeof(struct rnode) * p->max_nodes);
    uint64_t now = now_ns(r);
    bucket_init(&r->hedge, p->hedge_budget, p->hedge_floor_per_s, p->hedge_burst,
                p->budget_window_ns, now);
    bucket_init(&r->retry, p->retry_budget, p->retry_floor_per_s, p->retry_burst,
                p->budget_window_ns, now);
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++)
        r->tier[t].hist_stamp = now;
    *out = r;
    return 0;
}

void dhps_route_destroy(dhps_route *r)
{
    if (!r)
        return;
    free(r->nodes);
    free(r);
}

/* ---- nodes -------------------------------------------------------------------------------- */

static bool label_eq(const char *local, const char *l)
{
    return l && l[0] && local[0] && strcmp(local, l) == 0;
}

static int tier_of(const dhps_route *r, const dhps_route_labels *l)
{
    if (label_eq(r->local[0], l->host))
        return DHPS_ROUTE_HOST;
    bool same_az = label_eq(r->local[2], l->az);
    if (same_az && label_eq(r->local[1], l->pod))
        return DHPS_ROUTE_POD;
    return same_az ? DHPS_ROUTE_AZ : DHPS_ROUTE_REMOTE;
}

int dhps_route_node_set(dhps_route *r, uint32_t id, const dhps_route_labels *labels)
{
    if (!r || !labels || id >= r->p.max_nodes)
        return -EINVAL;
    int rc = check_labels(labels);
    if (rc)
        return rc;
    struct rnode *n = &r->nodes[id];
    int t = tier_of(r, labels);
    if (__atomic_load_n(&n->present, ACQ)) {
        st32(&n->tier, (uint32_t)t);
        return 0;
    }
    st32(&n->tier, (uint32_t)t);
    st32(&n->up, 1);
    st32(&n->in_flight, 0);
    st32(&n->brk, BRK(DHPS_ROUTE_CLOSED, 0));
    st32(&n->consec, 0);
    st32(&n->probe_busy, 0);
    st32(&n->probe_ok, 0);
    st32(&n->win_total, 0);
    st32(&n->win_err, 0);
    st32(&n->win_slow, 0);
    st64(&n->win_start, now_ns(r));
    st64(&n->open_until, 0);
    st64(&n->closed_since, 0);
    std_(&n->peak, 0);
    st64(&n->peak_stamp, 0);
    std_(&n->lat, 0);
    st64(&n->lat_stamp, 0);
    std_(&n->succ, 1.0);
    std_(&n->weight, 1.0);
    uint64_t *cnt[] = {&n->picks, &n->ok, &n->errors, &n->timeouts, &n->cancelled,
                       &n->ejections};
    for (size_t i = 0; i < sizeof cnt / sizeof cnt[0]; i++)
        st64(cnt[i], 0);
    uint32_t zero = 0;
    if (__atomic_compare_exchange_n(&n->present, &zero, 1, false, ACQREL, RLX))
        __atomic_fetch_add(&r->present, 1, RLX);
    return 0;
}

static struct rnode *node_get(const dhps_route *r, uint32_t id, int *rc)
{
    if (!r || id >= r->p.max_nodes) {
        *rc = -EINVAL;
        return NULL;
    }
    struct rnode *n = &r->nodes[id];
    if (!__atomic_load_n(&n->present, ACQ)) {
        *rc = DHPS_E_NOTFOUND;
        return NULL;
    }
    *rc = 0;
    return n;
}

int dhps_route_node_remove(dhps_route *r, uint32_t id)
{
    int rc;
    struct rnode *n = node_get(r, id, &rc);
    if (!n)
        return rc;
    uint32_t one = 1;
    if (!__atomic_compare_exchange_n(&n->present, &one, 0, false, ACQREL, RLX))
        return DHPS_E_NOTFOUND;
    __atomic_fetch_sub(&r->present, 1, RLX);
    if (BRK_STATE(__atomic_exchange_n(&n->brk, BRK(DHPS_ROUTE_CLOSED, 0), ACQREL)) !=
        DHPS_ROUTE_CLOSED)
        __atomic_fetch_sub(&r->ejected, 1, RLX);
    if (__atomic_exchange_n(&n->up, 1, ACQREL) == 0)
        __atomic_fetch_sub(&r->down, 1, RLX);
    return 0;
}

int dhps_route_node_set_up(dhps_route *r, uint32_t id, bool up)
{
    int rc;
    struct rnode *n = node_get(r, id, &rc);
    if (!n)
        return rc;
    uint32_t old = __atomic_exchange_n(&n->up, up ? 1u : 0u, ACQREL);
    if (old && !up)
        __atomic_fetch_add(&r->down, 1, RLX);
    else if (!old && up)
        __atomic_fetch_sub(&r->down, 1, RLX);
    return 0;
}

int dhps_route_node_tier(const dhps_route *r, uint32_t id)
{
    int rc;
    struct rnode *n = node_get(r, id, &rc);
    return n ? (int)ld32(&n->tier) : rc;
}

const char *dhps_route_tier_name(int tier)
{
    static const char *const names[] = {"host", "pod", "az", "remote"};
    return tier >= 0 && tier < DHPS_ROUTE_TIERS ? names[tier] : "?";
}

/* ---- breaker ----------------------------------------------------------------------------------- */

static uint64_t backoff_ns(const dhps_route *r, uint32_t level)
{
    if (level > MAX_LEVEL)
        level = MAX_LEVEL;
    uint64_t b = r->p.base_ejection_ns;
    for (uint32_t i = 0; i < level && b < r->p.max_ejection_ns; i++)
        b *= 2;
    return b > r->p.max_ejection_ns ? r->p.max_ejection_ns : b;
}

static void window_reset(struct rnode *n, uint64_t now)
{
    st64(&n->win_start, now);
    st32(&n->win_total, 0);
    st32(&n->win_err, 0);
    st32(&n->win_slow, 0);
    st32(&n->consec, 0);
}

/* Closed -> open, unless the ejection cap forbids it. */
/* Open n's breaker (closed -> open); slow: the window's slow share tripped it, not
 * errors (counted apart, so a reader can tell a sick node from a loaded path). */
static void breaker_open(dhps_route *r, struct rnode *n, uint32_t b, uint64_t now, bool slow)
{
    uint32_t level = BRK_LEVEL(b);
    if (now - ld64(&n->closed_since) >= r->p.backoff_reset_ns)
        level = 0;
    uint32_t present = ld32(&r->present);
    uint32_t cap = (uint32_t)(r->p.max_ejection_share * present);
    if (cap < 1)
        cap = 1;
    uint32_t e = ld32(&r->ejected);
    do {
        if (e >= cap) {
            inc(&r->c.ejection_capped);
            window_reset(n, now); /* judge again on fresh evidence */
            return;
        }
    } while (!cas32(&r->ejected, &e, e + 1));
    st64(&n->open_until, now + backoff_ns(r, level));
    st32(&n->probe_ok, 0);
    st32(&n->probe_busy, 0);
    uint32_t nb = BRK(DHPS_ROUTE_OPEN, level + 1 > MAX_LEVEL ? MAX_LEVEL : level + 1);
    if (!cas32(&n->brk, &b, nb)) { /* someone else changed it first */
        __atomic_fetch_sub(&r->ejected, 1, RLX);
        return;
    }
    inc(&r->c.breaker_opened);
    inc(slow ? &r->c.opened_slow : &r->c.opened_errors);
    inc(&n->ejections);
    DHPS_LOG(DHPS_LOG_DEBUG, "route", "node %u breaker open for %llu ns",
             (unsigned)(n - r->nodes), (unsigned long long)backoff_ns(r, level));
}

/* Current breaker state, moving open -> half-open when the isolation has ended. */
static uint32_t breaker_state(dhps_route *r, struct rnode *n, uint64_t now)
{
    uint32_t b = __atomic_load_n(&n->brk, ACQ);
    /* probe_ok and probe_busy were cleared before the node entered OPEN */
    while (BRK_STATE(b) == DHPS_ROUTE_OPEN && now >= ld64(&n->open_until)) {
        if (cas32(&n->brk, &b, BRK(DHPS_ROUTE_HALF_OPEN, BRK_LEVEL(b)))) {
            inc(&r->c.breaker_half_opened);
            return DHPS_ROUTE_HALF_OPEN;
        }
    }
    return BRK_STATE(b);
}

static void breaker_report(dhps_route *r, struct rnode *n, const dhps_route_choice *c,
                           bool ok, bool slow, uint64_t now)
{
    uint32_t b = __atomic_load_n(&n->brk, ACQ);
    if (BRK_STATE(b) == DHPS_ROUTE_HALF_OPEN) {
        if (!(c->flags & DHPS_ROUTE_PROBE))
            return;
        st32(&n->probe_busy, 0);
        if (ok && !slow) {
            if (__atomic_add_fetch(&n->probe_ok, 1, RLX) < r->p.probe_successes)
                return;
            if (cas32(&n->brk, &b, BRK(DHPS_ROUTE_CLOSED, BRK_LEVEL(b)))) {
                __atomic_fetch_sub(&r->ejected, 1, RLX);
                st64(&n->closed_since, now);
                window_reset(n, now);
                std_(&n->succ, 1.0);
                inc(&r->c.breaker_closed);
            }
        } else {
            st64(&n->open_until, now + backoff_ns(r, BRK_LEVEL(b)));
            st32(&n->probe_ok, 0);
            uint32_t lvl = BRK_LEVEL(b) + 1 > MAX_LEVEL ? MAX_LEVEL : BRK_LEVEL(b) + 1;
            if (cas32(&n->brk, &b, BRK(DHPS_ROUTE_OPEN, lvl))) {
                inc(&r->c.breaker_opened);
                inc(&r->c.opened_probe);
                inc(&n->ejections);
            }
        }
        return;
    }
    if (BRK_STATE(b) != DHPS_ROUTE_CLOSED)
        return; /* answers to requests sent before the node was isolated */
    uint64_t ws = ld64(&n->win_start);
    if (now >= ws && now - ws >= r->p.window_ns &&
        __atomic_compare_exchange_n(&n->win_start, &ws, now, false, RLX, RLX)) {
        st32(&n->win_total, 0);
        st32(&n->win_err, 0);
        st32(&n->win_slow, 0);
    }
    uint32_t total = __atomic_add_fetch(&n->win_total, 1, RLX);
    uint32_t err = ok ? ld32(&n->win_err) : __atomic_add_fetch(&n->win_err, 1, RLX);
    uint32_t slw = slow ? __atomic_add_fetch(&n->win_slow, 1, RLX) : ld32(&n->win_slow);
    uint32_t consec = 0;
    if (ok)
        st32(&n->consec, 0);
    else
        consec = __atomic_add_fetch(&n->consec, 1, RLX);
    bool trip = consec >= r->p.consecutive_errors, by_slow = false;
    if (!trip && total >= r->p.window_min_requests) {
        if ((double)err >= r->p.error_threshold * total)
            trip = true;
        else if ((double)slw >= r->p.slow_threshold * total)
            trip = by_slow = true;
    }
    if (trip)
        breaker_open(r, n, b, now, by_slow);
}

/* ---- weights ------------------------------------------------------------------------------------ */

/*
 * The rise every tier shares now. A tier's rise is its smooth latency (weight_tau EWMA)
 * minus its long one (baseline_tau): how much slower it answers than it used to. The
 * common rise is the least rise among the tiers with an ok answer in the last
 * RISE_FRESH_TAUS x weight_tau, and 0 unless at least RISE_MIN_TIERS of them agree (with
 * one tier, its own slowdown and the client's cannot be told apart). A load on the
 * client's own host adds about the same time to every answer whatever the tier; a tier
 * that is slow on its own rises alone, so the others keep this near 0 and its slowness
 * is judged in full. last: each tier's last answer instead of its smooth latency, which
 * lags a sudden rise by seconds.
 */
static double common_rise(const dhps_route *r, uint64_t now, bool last)
{
    double rise = 0;
    int n = 0;
    uint64_t fresh = RISE_FRESH_TAUS * r->p.weight_tau_ns;
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
        const struct rtier *tr = &r->tier[t];
        double now_lat = ldd(last ? &tr->last : &tr->lat), long_lat = ldd(&tr->lat_long);
        uint64_t ts = ld64(&tr->lat_stamp);
        if (now_lat <= 0 || long_lat <= 0 || (now > ts && now - ts > fresh))
            continue;
        double d = now_lat > long_lat ? now_lat - long_lat : 0;
        if (!n++ || d < rise)
            rise = d;
    }
    return n >= RISE_MIN_TIERS ? rise : 0;
}

/* Does an answer in v ns beat what the next tier with fresh answers (an ok answer in the
 * last RISE_FRESH_TAUS x weight_tau) answers in now (its smooth latency)? Such a node is
 * not "slow" for the breaker, whatever its baseline says: isolating it would only move
 * its traffic to something slower (a baseline remembers quiet moments; under a load
 * present all along there is no rise to take out). With no fresh next tier: false. */
static bool faster_than_next(const dhps_route *r, unsigned t, double v, uint64_t now)
{
    uint64_t fresh = RISE_FRESH_TAUS * r->p.weight_tau_ns;
    for (unsigned k = t + 1; k < DHPS_ROUTE_TIERS; k++) {
        const struct rtier *nx = &r->tier[k];
        double nl = ldd(&nx->lat);
        uint64_t ts = ld64(&nx->lat_stamp);
        if (nl > 0 && (now <= ts || now - ts <= fresh))
            return v < nl;
    }
    return false;
}

/* f = (Lnext - lat') / (Lnext - B), lat' = lat - rise: the node's latency with the rise
 * every tier shares (the client's own wait) taken out, so B and Lnext still apply. */
static void weight_update(dhps_route *r, struct rnode *n, unsigned t, double rise)
{
    double f = 1.0;
    double B = ldd(&r->tier[t].base), lat = ldd(&n->lat);
    if (B > 0 && lat > 0) {
        double next = t + 1 < DHPS_ROUTE_TIERS ? ldd(&r->tier[t + 1].base) : 0;
        if (next <= 0)
            next = NEXT_TIER_DEFAULT_GAP * B;
        else if (next < NEXT_TIER_MIN_GAP * B)
            next = NEXT_TIER_MIN_GAP * B;
        f = clampd((next - (lat - rise)) / (next - B), 0.0, 1.0);
    }
    double s = ldd(&n->succ);
    double w = clampd(s * s * f, r->p.weight_floor, 1.0);
    double old = ldd(&n->weight);
    if (fabs(w - old) > r->p.weight_hysteresis || (w == 1.0 && old != 1.0) ||
        (w == r->p.weight_floor && old != w))
        std_(&n->weight, w);
}

static void latency_update(dhps_route *r, struct rnode *n, unsigned t, double v, uint64_t now)
{
    /* node smooth EWMA */
    double lat = ldd(&n->lat);
    uint64_t ls = ld64(&n->lat_stamp);
    if (lat <= 0)
        lat = v;
    else
        lat += (v - lat) * ewma_alpha(now > ls ? now - ls : 0, r->p.weight_tau_ns);
    std_(&n->lat, lat);
    st64(&n->lat_stamp, now);

    struct rtier *tr = &r->tier[t];
    double tl = ldd(&tr->lat), tll = ldd(&tr->lat_long);
    uint64_t ts = ld64(&tr->lat_stamp), dt = now > ts ? now - ts : 0;
    tl = tl <= 0 ? v : tl + (v - tl) * ewma_alpha(dt, r->p.weight_tau_ns);
    /* same-instant answers weigh in the long EWMA what they weigh in the short one,
     * relative to the time constants */
    double along = dt ? ewma_alpha(dt, r->p.baseline_tau_ns)
                      : EWMA_SAME_TIME_ALPHA * (double)r->p.weight_tau_ns /
                            (double)r->p.baseline_tau_ns;
    tll = tll <= 0 ? v : tll + (v - tll) * along;
    std_(&tr->lat, tl);
    std_(&tr->last, v);
    std_(&tr->lat_long, tll);
    st64(&tr->lat_stamp, now);

    /* tier baseline: decaying minimum of its nodes' smooth latencies */
    if (ld64(&n->ok) >= BASELINE_MIN_SAMPLES) {
        double B = ldd(&tr->base);
        uint64_t bs = ld64(&tr->base_stamp);
        if (B <= 0 || lat < B)
            B = lat;
        else if (now > bs)
            B += (lat - B) * (1.0 - exp(-(double)(now - bs) / (double)r->p.baseline_tau_ns));
        std_(&tr->base, B);
        st64(&tr->base_stamp, now);
    }

    hist_maybe_decay(r, tr, now);
    __atomic_fetch_add(&tr->hist[hist_index((uint64_t)v)], 1, RLX);
}

/* ---- pick ------------------------------------------------------------------------------------------ */

struct cand {
    uint32_t id;
    uint8_t tier;
    uint8_t state;
    double e; /* effective health */
};

static double node_cost(dhps_route *r, uint32_t id, uint64_t now)
{
    struct rnode *n = &r->nodes[id];
    double peak = ldd(&n->peak);
    uint64_t ps = ld64(&n->peak_stamp);
    if (peak <= 0) {
        peak = ldd(&r->tier[ld32(&n->tier) & 3].lat);
        if (peak <= 0)
            peak = 1000.0;
    } else if (now > ps) {
        peak *= exp(-(double)(now - ps) / (double)r->p.ewma_tau_ns);
    }
    double w = ldd(&n->weight);
    return peak * (double)(ld32(&n->in_flight) + 1) / (w > 0 ? w : r->p.weight_floor);
}

/* Power of two choices among cs[idx[0..k-1]]. */
static uint32_t p2c(dhps_route *r, const struct cand *cs, const unsigned *idx, unsigned k,
                    uint64_t now)
{
    if (k == 1)
        return idx[0];
    unsigned i = (unsigned)(rnd(r) % k), j = (unsigned)(rnd(r) % (k - 1));
    if (j >= i)
        j++;
    double ci = node_cost(r, cs[idx[i]].id, now), cj = node_cost(r, cs[idx[j]].id, now);
    return cj < ci ? idx[j] : idx[i];
}

int dhps_route_pick(dhps_route *r, const uint32_t *replicas, size_t n,
                    const uint32_t *exclude, size_t n_exclude, int kind,
                    dhps_route_choice *out)
{
    if (!r || !out || !replicas || n == 0 || kind < DHPS_ROUTE_PRIMARY ||
        kind > DHPS_ROUTE_RETRY || (n_exclude && !exclude))
        return -EINVAL;
    if (n > DHPS_ROUTE_MAX_REPLICAS)
        return DHPS_E_TOOBIG;
    uint64_t now = now_ns(r);
    if (kind == DHPS_ROUTE_PRIMARY) {
        bucket_deposit(&r->hedge, now);
        bucket_deposit(&r->retry, now);
    }

    struct cand cs[DHPS_ROUTE_MAX_REPLICAS];
    unsigned nc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t id = replicas[i];
        if (id >= r->p.max_nodes || !__atomic_load_n(&r->nodes[id].present, ACQ))
            continue;
        bool skip = false;
        for (unsigned j = 0; j < nc && !skip; j++)
            skip = cs[j].id == id;
        for (size_t j = 0; j < n_exclude && !skip; j++)
            skip = exclude[j] == id;
        if (skip)
            continue;
        struct rnode *nd = &r->nodes[id];
        struct cand *c = &cs[nc++];
        c->id = id;
        c->tier = (uint8_t)(ld32(&nd->tier) & 3);
        c->state = (uint8_t)breaker_state(r, nd, now);
        bool eligible = ld32(&nd->up) && c->state == DHPS_ROUTE_CLOSED &&
                        (!r->p.max_in_flight || ld32(&nd->in_flight) < r->p.max_in_flight);
        c->e = eligible ? ldd(&nd->weight) : 0.0;
    }
    if (!nc) {
        inc(&r->c.unreachable);
        return DHPS_E_UNREACHABLE;
    }

    unsigned chosen = nc;
    uint8_t flags = 0;
    /* a half-open breaker gets one probe at a time, from primary traffic */
    if (kind == DHPS_ROUTE_PRIMARY) {
        for (unsigned i = 0; i < nc && chosen == nc; i++) {
            if (cs[i].state != DHPS_ROUTE_HALF_OPEN || !ld32(&r->nodes[cs[i].id].up))
                continue;
            uint32_t zero = 0;
            if (__atomic_compare_exchange_n(&r->nodes[cs[i].id].probe_busy, &zero, 1, false,
                                            ACQREL, RLX)) {
                chosen = i;
                flags |= DHPS_ROUTE_PROBE;
            }
        }
    }

    unsigned idx[DHPS_ROUTE_MAX_REPLICAS], k = 0;
    int first_tier = DHPS_ROUTE_TIERS;
    for (unsigned i = 0; i < nc; i++)
        if (cs[i].tier < first_tier)
            first_tier = cs[i].tier;

    if (chosen == nc) {
        uint32_t present = ld32(&r->present);
        uint32_t unhealthy = ld32(&r->ejected) + ld32(&r->down);
        if (unhealthy > present)
            unhealthy = present;
        bool panic = present && (double)(present - unhealthy) <
                                    r->p.panic_threshold * (double)present;
        double cnt[DHPS_ROUTE_TIERS] = {0}, sum[DHPS_ROUTE_TIERS] = {0}, total = 0;
        for (unsigned i = 0; i < nc; i++) {
            cnt[cs[i].tier] += 1;
            sum[cs[i].tier] += cs[i].e;
            total += cs[i].e;
        }
        if (panic || total <= 0) {
            flags |= panic ? DHPS_ROUTE_PANIC : DHPS_ROUTE_NO_HEALTHY;
            for (unsigned i = 0; i < nc; i++)
                idx[k++] = i;
            chosen = p2c(r, cs, idx, k, now);
        } else {
            /* Envoy-style priority load: each tier carries min(1, h x overprovision) of
             * what reaches it */
            double share[DHPS_ROUTE_TIERS] = {0}, remaining = 1.0;
            for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
                if (!cnt[t])
                    continue;
                double carry = sum[t] / cnt[t] * r->p.overprovision;
                share[t] = remaining < carry ? remaining : carry;
                remaining -= share[t];
            }
            double u = rnd01(r) * (1.0 - remaining), acc = 0;
            int t = DHPS_ROUTE_TIERS - 1;
            for (int i = 0; i < DHPS_ROUTE_TIERS; i++) {
                acc += share[i];
                if (share[i] > 0 && u < acc) {
                    t = i;
                    break;
                }
            }
            while (share[t] <= 0) /* rounding at the top end */
                t--;
            for (unsigned i = 0; i < nc; i++)
                if (cs[i].tier == t && cs[i].e > 0)
                    idx[k++] = i;
            chosen = p2c(r, cs, idx, k, now);
            if (t > first_tier)
                flags |= DHPS_ROUTE_SPILL;
        }
    }

    const struct cand *c = &cs[chosen];
    struct rnode *nd = &r->nodes[c->id];
    __atomic_fetch_add(&nd->in_flight, 1, RLX);
    inc(&nd->picks);
    struct rtier *tr = &r->tier[c->tier];
    inc(&tr->picks);
    inc(&r->c.picks);
    if (kind == DHPS_ROUTE_PRIMARY)
        inc(&r->c.primary);
    else if (kind == DHPS_ROUTE_HEDGE) {
        inc(&r->c.hedge_picks);
        inc(&tr->hedges);
    } else {
        inc(&r->c.retry_picks);
        inc(&tr->retries);
    }
    if (flags & DHPS_ROUTE_SPILL) {
        inc(&r->c.spills);
        inc(&tr->spills);
    }
    if (flags & DHPS_ROUTE_PANIC)
        inc(&r->c.panics);
    if (flags & DHPS_ROUTE_NO_HEALTHY)
        inc(&r->c.no_healthy);
    if (flags & DHPS_ROUTE_PROBE)
        inc(&r->c.probes);
    out->node = c->id;
    out->tier = c->tier;
    out->kind = (uint8_t)kind;
    out->flags = flags;
    out->start_ns = now;
    return 0;
}

/* ---- report --------------------------------------------------------------------------------------- */

int dhps_route_report(dhps_route *r, const dhps_route_choice *c, uint64_t latency_ns,
                      int outcome)
{
    if (!r || !c || outcome < DHPS_ROUTE_OK || outcome > DHPS_ROUTE_CANCELLED ||
        c->tier >= DHPS_ROUTE_TIERS)
        return -EINVAL;
    int rc;
    struct rnode *n = node_get(r, c->node, &rc);
    if (!n)
        return rc;
    uint64_t now = now_ns(r);
    uint32_t f = ld32(&n->in_flight);
    while (f && !cas32(&n->in_flight, &f, f - 1))
        ;
    struct rtier *tr = &r->tier[c->tier];
    double v = (double)latency_ns;

    if (outcome == DHPS_ROUTE_CANCELLED) {
        inc(&r->c.reports_cancelled);
        inc(&tr->cancelled);
        inc(&n->cancelled);
        if (c->kind == DHPS_ROUTE_HEDGE)
            inc(&r->c.hedge_lost);
        if (v > ldd(&n->peak)) {
            std_(&n->peak, v);
            st64(&n->peak_stamp, now);
        }
        if (c->flags & DHPS_ROUTE_PROBE)
            st32(&n->probe_busy, 0); /* no verdict: the next pick probes again */
        return 0;
    }

    bool ok = outcome == DHPS_ROUTE_OK;
    if (outcome != DHPS_ROUTE_ERROR) {
        /* peak EWMA (Finagle): jump up to a sample above the average, else decay to it */
        double peak = ldd(&n->peak);
        uint64_t ps = ld64(&n->peak_stamp);
        if (v > peak || peak <= 0)
            peak = v;
        else
            peak = v + (peak - v) * exp(-(double)(now > ps ? now - ps : 0) /
                                        (double)r->p.ewma_tau_ns);
        std_(&n->peak, peak);
        st64(&n->peak_stamp, now);
    }
    if (ok) {
        inc(&n->ok);
        inc(&tr->ok);
        inc(&r->c.reports_ok);
        if (c->kind == DHPS_ROUTE_HEDGE)
            inc(&r->c.hedge_won);
        latency_update(r, n, c->tier, v, now);
    } else if (outcome == DHPS_ROUTE_ERROR) {
        inc(&n->errors);
        inc(&tr->errors);
        inc(&r->c.reports_error);
    } else {
        inc(&n->timeouts);
        inc(&tr->timeouts);
        inc(&r->c.reports_timeout);
    }
    /* slow: above slow_factor x the baseline once the rise all tiers share is taken out.
     * One answer is judged against the tiers' last answers too, so a sudden load on the
     * client is seen as soon as each tier has answered once; the smooth rise covers
     * steady state without their noise. Read after this answer updated its tier: a tier
     * back from an outage is a witness from its first answer. */
    double B = ldd(&tr->base), rise = common_rise(r, now, false);
    bool slow = false;
    if (B > 0 && v - rise > r->p.slow_factor * B) { /* else not slow whatever rise_last is */
        double rise_last = common_rise(r, now, true);
        slow = v - (rise > rise_last ? rise : rise_last) > r->p.slow_factor * B &&
               !faster_than_next(r, c->tier, v, now);
    }
    double s = ldd(&n->succ);
    std_(&n->succ, s + ((ok ? 1.0 : 0.0) - s) * SUCCESS_ALPHA);
    breaker_report(r, n, c, ok, slow, now); /* closing resets success: weigh after it */
    weight_update(r, n, c->tier, rise);
    return 0;
}

/* ---- hedging, retries -------------------------------------------------------------------------------- */

uint64_t dhps_route_hedge_delay(dhps_route *r, const dhps_route_choice *c)
{
    if (!r || !c || c->tier >= DHPS_ROUTE_TIERS)
        return r ? r->p.hedge_default_ns : 1000000ull;
    struct rtier *tr = &r->tier[c->tier];
    hist_maybe_decay(r, tr, now_ns(r));
    uint64_t q = hist_quantile(tr, 0.95);
    if (!q)
        q = r->p.hedge_default_ns;
    if (q < r->p.hedge_min_ns)
        q = r->p.hedge_min_ns;
    if (q > r->p.hedge_max_ns)
        q = r->p.hedge_max_ns;
    return q;
}

int dhps_route_hedge_acquire(dhps_route *r, uint64_t deadline_ns)
{
    if (!r)
        return -EINVAL;
    uint64_t now = now_ns(r);
    if (deadline_ns && now >= deadline_ns) {
        inc(&r->c.hedge_deadline);
        return DHPS_E_TIMEOUT;
    }
    if (!bucket_take(&r->hedge, now)) {
        inc(&r->c.hedge_budget_exhausted);
        return DHPS_E_BUSY;
    }
    inc(&r->c.hedge_sent);
    return 0;
}

int dhps_route_retry_acquire(dhps_route *r, uint64_t deadline_ns)
{
    if (!r)
        return -EINVAL;
    uint64_t now = now_ns(r);
    if (deadline_ns) {
        uint64_t headroom = r->p.retry_min_headroom_ns;
        if (!headroom) {
            for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
                uint64_t q = hist_quantile(&r->tier[t], 0.5);
                if (q && (!headroom || q < headroom))
                    headroom = q;
            }
        }
        if (now + headroom >= deadline_ns) {
            inc(&r->c.retry_deadline);
            return DHPS_E_TIMEOUT;
        }
    }
    if (!bucket_take(&r->retry, now)) {
        inc(&r->c.retry_budget_exhausted);
        return DHPS_E_BUSY;
    }
    inc(&r->c.retries);
    return 0;
}

/* ---- stats --------------------------------------------------------------------------------------------- */

int dhps_route_stats_get(dhps_route *r, dhps_route_stats *o)
{
    if (!r || !o)
        return -EINVAL;
    memset(o, 0, sizeof *o);
    const struct counters *c = &r->c;
    o->picks = ld64(&c->picks);
    o->primary = ld64(&c->primary);
    o->hedge_picks = ld64(&c->hedge_picks);
    o->retry_picks = ld64(&c->retry_picks);
    o->spills = ld64(&c->spills);
    o->panics = ld64(&c->panics);
    o->no_healthy = ld64(&c->no_healthy);
    o->probes = ld64(&c->probes);
    o->unreachable = ld64(&c->unreachable);
    o->breaker_opened = ld64(&c->breaker_opened);
    o->breaker_half_opened = ld64(&c->breaker_half_opened);
    o->breaker_closed = ld64(&c->breaker_closed);
    o->ejection_capped = ld64(&c->ejection_capped);
    o->opened_errors = ld64(&c->opened_errors);
    o->opened_slow = ld64(&c->opened_slow);
    o->opened_probe = ld64(&c->opened_probe);
    o->hedge_sent = ld64(&c->hedge_sent);
    o->hedge_won = ld64(&c->hedge_won);
    o->hedge_lost = ld64(&c->hedge_lost);
    o->hedge_budget_exhausted = ld64(&c->hedge_budget_exhausted);
    o->hedge_deadline = ld64(&c->hedge_deadline);
    o->retries = ld64(&c->retries);
    o->retry_budget_exhausted = ld64(&c->retry_budget_exhausted);
    o->retry_deadline = ld64(&c->retry_deadline);
    o->reports_ok = ld64(&c->reports_ok);
    o->reports_error = ld64(&c->reports_error);
    o->reports_timeout = ld64(&c->reports_timeout);
    o->reports_cancelled = ld64(&c->reports_cancelled);
    o->nodes = ld32(&r->present);
    o->ejected = ld32(&r->ejected);
    o->down = ld32(&r->down);
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
        const struct rtier *tr = &r->tier[t];
        dhps_route_tier_stats *ts = &o->tier[t];
        ts->picks = ld64(&tr->picks);
        ts->spills = ld64(&tr->spills);
        ts->hedges = ld64(&tr->hedges);
        ts->retries = ld64(&tr->retries);
        ts->ok = ld64(&tr->ok);
        ts->errors = ld64(&tr->errors);
        ts->timeouts = ld64(&tr->timeouts);
        ts->cancelled = ld64(&tr->cancelled);
        ts->p50_ns = hist_quantile(tr, 0.5);
        ts->p95_ns = hist_quantile(tr, 0.95);
        ts->latency_ns = ldd(&tr->lat);
        ts->baseline_ns = ldd(&tr->base);
        ts->latency_long_ns = ldd(&tr->lat_long);
    }
    uint64_t now = now_ns(r);
    o->common_rise_ns = common_rise(r, now, false);
    o->common_rise_last_ns = common_rise(r, now, true);
    return 0;
}

int dhps_route_node_stats_get(dhps_route *r, uint32_t id, dhps_route_node_stats *o)
{
    if (!o)
        return -EINVAL;
    int rc;
    struct rnode *n = node_get(r, id, &rc);
    if (!n)
        return rc;
    memset(o, 0, sizeof *o);
    o->picks = ld64(&n->picks);
    o->ok = ld64(&n->ok);
    o->errors = ld64(&n->errors);
    o->timeouts = ld64(&n->timeouts);
    o->cancelled = ld64(&n->cancelled);
    o->ejections = ld64(&n->ejections);
    o->in_flight = ld32(&n->in_flight);
    o->tier = (uint8_t)ld32(&n->tier);
    o->up = ld32(&n->up) != 0;
    uint32_t raw = __atomic_load_n(&n->brk, ACQ), b = BRK_STATE(raw); /* no transition */
    o->breaker = (uint8_t)b;
    o->open_until_ns = b == DHPS_ROUTE_OPEN ? ld64(&n->open_until) : 0;
    uint32_t level = BRK_LEVEL(raw);
    if (b == DHPS_ROUTE_CLOSED && now_ns(r) - ld64(&n->closed_since) >= r->p.backoff_reset_ns)
        level = 0;
    o->backoff_ns = backoff_ns(r, level);
    o->peak_ewma_ns = ldd(&n->peak);
    o->latency_ns = ldd(&n->lat);
    o->success = ldd(&n->succ);
    o->weight = ldd(&n->weight);
    return 0;
}

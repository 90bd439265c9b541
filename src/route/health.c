/* dhps route: latency histogram, circuit breakers, weights and latency estimators. */
#include "route_int.h"

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

/* Halves the tier's histogram once per hist_decay_ns, so quantiles follow the present. */
void route_hist_maybe_decay(dhps_route *r, struct rtier *t, uint64_t now)
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
uint64_t route_hist_quantile(const struct rtier *t, double q)
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

/* ---- breaker ----------------------------------------------------------------------------------- */

uint64_t route_backoff_ns(const dhps_route *r, uint32_t level)
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

/*
 * Errors outrank slowness under the ejection cap. When a node that fails its calls would
 * be refused by the cap, a node isolated only for slow answers (open or half-open with
 * BRK_SLOW) is closed to make room: it answered, just late, while the failing node's
 * shard partners now survive only by retries, within the retry budget. Returns whether
 * a slot was freed (another opening may still take it first). Scans the nodes in id
 * order; it runs only when the cap refuses an opening, and then once per node window.
 */
static bool displace_slow(dhps_route *r, uint64_t now)
{
    for (uint32_t i = 0; i < r->p.max_nodes; i++) {
        struct rnode *m = &r->nodes[i];
        if (!__atomic_load_n(&m->present, ACQ))
            continue;
        uint32_t b = __atomic_load_n(&m->brk, ACQ);
        if (BRK_STATE(b) == DHPS_ROUTE_CLOSED || !(b & BRK_SLOW))
            continue;
        if (!cas32(&m->brk, &b, BRK(DHPS_ROUTE_CLOSED, BRK_LEVEL(b))))
            continue; /* its state moved on; judge it no further */
        __atomic_fetch_sub(&r->ejected, 1, RLX);
        st64(&m->closed_since, now);
        window_reset(m, now);
        inc(&r->c.displaced);
        DHPS_LOG(DHPS_LOG_DEBUG, "route", "node %u (isolated for slowness) displaced by "
                 "a failing node under the ejection cap", i);
        return true;
    }
    return false;
}

/* Open n's breaker (closed -> open), unless the ejection cap forbids it; slow: the
 * window's slow share tripped it, not errors (counted apart, so a reader can tell a sick
 * node from a loaded path, and an opening for errors may displace one for slowness). */
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
    bool tried_displace = false;
    for (;;) {
        if (e < cap) {
            if (cas32(&r->ejected, &e, e + 1))
                break;
            continue; /* lost a race; e is fresh */
        }
        if (!slow && !tried_displace) {
            tried_displace = true;
            if (displace_slow(r, now)) {
                e = ld32(&r->ejected);
                continue;
            }
        }
        inc(&r->c.ejection_capped);
        window_reset(n, now); /* judge again on fresh evidence */
        return;
    }
    st64(&n->open_until, now + route_backoff_ns(r, level));
    st32(&n->probe_ok, 0);
    st32(&n->probe_busy, 0);
    uint32_t nb = BRK(DHPS_ROUTE_OPEN, level + 1 > MAX_LEVEL ? MAX_LEVEL : level + 1) |
                  (slow ? BRK_SLOW : 0);
    if (!cas32(&n->brk, &b, nb)) { /* someone else changed it first */
        __atomic_fetch_sub(&r->ejected, 1, RLX);
        return;
    }
    inc(&r->c.breaker_opened);
    inc(slow ? &r->c.opened_slow : &r->c.opened_errors);
    inc(&n->ejections);
    DHPS_LOG(DHPS_LOG_DEBUG, "route", "node %u breaker open for %llu ns",
             (unsigned)(n - r->nodes), (unsigned long long)route_backoff_ns(r, level));
}

/* Current breaker state, moving open -> half-open when the isolation has ended. */
uint32_t route_breaker_state(dhps_route *r, struct rnode *n, uint64_t now)
{
    uint32_t b = __atomic_load_n(&n->brk, ACQ);
    /* probe_ok and probe_busy were cleared before the node entered OPEN */
    while (BRK_STATE(b) == DHPS_ROUTE_OPEN && now >= ld64(&n->open_until)) {
        if (cas32(&n->brk, &b, BRK(DHPS_ROUTE_HALF_OPEN, BRK_LEVEL(b)) | (b & BRK_SLOW))) {
            inc(&r->c.breaker_half_opened);
            return DHPS_ROUTE_HALF_OPEN;
        }
    }
    return BRK_STATE(b);
}

void route_breaker_report(dhps_route *r, struct rnode *n, const dhps_route_choice *c,
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
            st64(&n->open_until, now + route_backoff_ns(r, BRK_LEVEL(b)));
            st32(&n->probe_ok, 0);
            uint32_t lvl = BRK_LEVEL(b) + 1 > MAX_LEVEL ? MAX_LEVEL : BRK_LEVEL(b) + 1;
            /* a probe that answered, late, keeps the node displaceable */
            if (cas32(&n->brk, &b, BRK(DHPS_ROUTE_OPEN, lvl) | (ok ? BRK_SLOW : 0))) {
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

/* Has tier tr had an ok answer in the last RISE_FRESH_TAUS x weight_tau (its latency
 * estimates are current, so it witnesses the rise and stands for the next tier's cost)? */
static bool tier_fresh(const dhps_route *r, const struct rtier *tr, uint64_t now)
{
    uint64_t ts = ld64(&tr->lat_stamp);
    return now <= ts || now - ts <= RISE_FRESH_TAUS * r->p.weight_tau_ns;
}

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
double route_common_rise(const dhps_route *r, uint64_t now, bool last)
{
    double rise = 0;
    int n = 0;
    for (int t = 0; t < DHPS_ROUTE_TIERS; t++) {
        const struct rtier *tr = &r->tier[t];
        double now_lat = ldd(last ? &tr->last : &tr->lat), long_lat = ldd(&tr->lat_long);
        if (now_lat <= 0 || long_lat <= 0 || !tier_fresh(r, tr, now))
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
bool route_faster_than_next(const dhps_route *r, unsigned t, double v, uint64_t now)
{
    for (unsigned k = t + 1; k < DHPS_ROUTE_TIERS; k++) {
        const struct rtier *nx = &r->tier[k];
        double nl = ldd(&nx->lat);
        if (nl > 0 && tier_fresh(r, nx, now))
            return v < nl;
    }
    return false;
}

/* f = (Lnext - lat') / (Lnext - B), lat' = lat - rise: the node's latency with the rise
 * every tier shares (the client's own wait) taken out, so B and Lnext still apply.
 * Lnext is what the next tier costs: its baseline, or, when it has fresh answers and
 * answers slower than that now (rise taken out likewise), its smooth latency. Its
 * baseline alone is a minimum it once showed, perhaps while it carried little; shedding
 * toward a tier that answers slower than the node now only makes the answers slower. */
void route_weight_update(dhps_route *r, struct rnode *n, unsigned t, double rise, uint64_t now)
{
    double f = 1.0;
    double B = ldd(&r->tier[t].base), lat = ldd(&n->lat);
    if (B > 0 && lat > 0) {
        double next = 0;
        if (t + 1 < DHPS_ROUTE_TIERS) {
            const struct rtier *nx = &r->tier[t + 1];
            double nl = ldd(&nx->lat) - rise;
            next = ldd(&nx->base);
            if (next > 0 && nl > next && tier_fresh(r, nx, now))
                next = nl;
        }
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

void route_latency_update(dhps_route *r, struct rnode *n, unsigned t, double v, uint64_t now)
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

    route_hist_maybe_decay(r, tr, now);
    __atomic_fetch_add(&tr->hist[hist_index((uint64_t)v)], 1, RLX);
}


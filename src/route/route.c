/* dhps route: see include/dhps/route.h for the design and the contracts, route_int.h
 * for the internals shared with health.c and budget.c. */
#include "route_int.h"

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
    route_bucket_init(&r->hedge, p->hedge_budget, p->hedge_floor_per_s, p->hedge_burst,
                p->budget_window_ns, now);
    route_bucket_init(&r->retry, p->retry_budget, p->retry_floor_per_s, p->retry_burst,
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
        route_bucket_deposit(&r->hedge, now);
        route_bucket_deposit(&r->retry, now);
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
        c->state = (uint8_t)route_breaker_state(r, nd, now);
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
        route_latency_update(r, n, c->tier, v, now);
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
    double B = ldd(&tr->base), rise = route_common_rise(r, now, false);
    bool slow = false;
    if (B > 0 && v - rise > r->p.slow_factor * B) { /* else not slow whatever rise_last is */
        double rise_last = route_common_rise(r, now, true);
        slow = v - (rise > rise_last ? rise : rise_last) > r->p.slow_factor * B &&
               !route_faster_than_next(r, c->tier, v, now);
    }
    double s = ldd(&n->succ);
    std_(&n->succ, s + ((ok ? 1.0 : 0.0) - s) * SUCCESS_ALPHA);
    route_breaker_report(r, n, c, ok, slow, now); /* closing resets success: weigh after it */
    route_weight_update(r, n, c->tier, rise, now);
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
    o->displaced = ld64(&c->displaced);
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
        ts->p50_ns = route_hist_quantile(tr, 0.5);
        ts->p95_ns = route_hist_quantile(tr, 0.95);
        ts->latency_ns = ldd(&tr->lat);
        ts->baseline_ns = ldd(&tr->base);
        ts->latency_long_ns = ldd(&tr->lat_long);
    }
    uint64_t now = now_ns(r);
    o->common_rise_ns = route_common_rise(r, now, false);
    o->common_rise_last_ns = route_common_rise(r, now, true);
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
    o->backoff_ns = route_backoff_ns(r, level);
    o->peak_ewma_ns = ldd(&n->peak);
    o->latency_ns = ldd(&n->lat);
    o->success = ldd(&n->succ);
    o->weight = ldd(&n->weight);
    return 0;
}


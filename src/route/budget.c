/* dhps route: hedge and retry token buckets, hedge delays. */
#include "route_int.h"

/* ---- token buckets --------------------------------------------------------------------- */

void route_bucket_init(struct bucket *b, double per_pick, double per_s, double burst,
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
void route_bucket_deposit(struct bucket *b, uint64_t now)
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

/* ---- hedging, retries -------------------------------------------------------------------------------- */

uint64_t dhps_route_hedge_delay(dhps_route *r, const dhps_route_choice *c)
{
    if (!r || !c || c->tier >= DHPS_ROUTE_TIERS)
        return r ? r->p.hedge_default_ns : 1000000ull;
    struct rtier *tr = &r->tier[c->tier];
    route_hist_maybe_decay(r, tr, now_ns(r));
    uint64_t q = route_hist_quantile(tr, 0.95);
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
                uint64_t q = route_hist_quantile(&r->tier[t], 0.5);
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


/* Lookup/update workloads (contracts in workload.h). */
#include "workload.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct wl_thread {
    const wl_params *p;
    const wl_backend *b;
    const uint64_t *pool; /* nb batches of this thread's keys, drawn before the run */
    uint32_t nb;
    uint64_t rng;         /* after the pool's draws: the update/lookup choices */
    uint32_t idx;
    uint64_t start_ns, end_ns;
    wl_result r;
    pthread_t tid;
    int open_failed;
};

void wl_keys(const wl_params *p, const dhps_zipf *z, uint64_t *rng, uint64_t *buf, uint32_t n,
             uint64_t *seen, uint32_t seen_mask)
{
    bool distinct = p->distinct && seen && n <= p->nkeys / 2;
    if (distinct) /* key + 1 per slot, 0 = empty: cleared per batch */
        memset(seen, 0, ((size_t)seen_mask + 1) * sizeof *seen);
    for (uint32_t i = 0; i < n; i++) {
        for (int tries = 0;; tries++) {
            uint64_t k = p->zipf > 0 ? dhps_zipf_next(z, rng) : dhps_splitmix64(rng) % p->nkeys;
            if (!distinct) {
                buf[i] = k;
                break;
            }
            uint32_t h = (uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & seen_mask;
            while (seen[h] && seen[h] != k + 1)
                h = (h + 1) & seen_mask;
            if (!seen[h] || tries >= 64) { /* new key (or give up on a very hot set) */
                seen[h] = k + 1;
                buf[i] = k;
                break;
            }
        }
    }
}

static void sleep_until(uint64_t t)
{
    uint64_t now = dhps_mono_ns();
    if (t > now + 50000) {
        struct timespec ts = {.tv_sec = (time_t)((t - now) / 1000000000ull),
                              .tv_nsec = (long)((t - now) % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    while (dhps_mono_ns() < t)
        ;
}

static void *wl_main(void *arg)
{
    struct wl_thread *t = arg;
    const wl_params *p = t->p;
    uint64_t rng = t->rng;
    uint8_t *buf = malloc((size_t)p->batch * p->row_bytes);
    void *th = t->b->open(t->b->arg);
    if (!buf || !th) {
        t->open_failed = 1;
        goto out;
    }
    for (size_t i = 0; i < (size_t)p->batch * p->row_bytes; i++)
        buf[i] = (uint8_t)(i * 7 + t->idx);
    double per_thread = p->rate > 0 ? p->rate / p->threads : 0;
    uint64_t gap = per_thread > 0 ? (uint64_t)(1e9 / per_thread) : 0;
    /* stagger open-loop threads over one gap so their batches do not leave together */
    uint64_t next = t->start_ns + (gap ? gap * t->idx / p->threads : 0);
    for (uint64_t n = 0;; n++) {
        const uint64_t *keys = t->pool + (size_t)(n % t->nb) * p->batch;
        bool upd = p->update_share > 0 &&
                   (double)(dhps_splitmix64(&rng) >> 11) * 0x1.0p-53 < p->update_share;
        if (gap)
            sleep_until(next);
        uint64_t t0 = gap ? next : dhps_mono_ns();
        if (t0 >= t->end_ns)
            break;
        uint32_t miss = 0;
        int rc = upd ? t->b->update(th, keys, p->batch, buf)
                     : t->b->lookup(th, keys, p->batch, buf, &miss);
        uint64_t dt = dhps_mono_ns() - t0;
        tools_hist_add(&t->r.hist, dt);
        tools_hist_add(upd ? &t->r.hist_update : &t->r.hist_lookup, dt);
        t->r.batches++;
        t->r.keys += p->batch;
        if (upd)
            t->r.updates++;
        else
            t->r.lookups++;
        t->r.missing += miss;
        if (rc < 0)
            t->r.errors++;
        if (gap)
            next += gap;
    }
out:
    if (th)
        t->b->close(th);
    free(buf);
    return NULL;
}

/* Batches per thread in its key pool: enough for every thread together to draw about
 * twice the key space (so a uniform run touches most of it), 16..1024, and at most
 * 256 MiB of keys over all threads (at least one batch each). */
static uint32_t pool_batches(const wl_params *p)
{
    uint64_t want = (2 * p->nkeys + (uint64_t)p->batch * p->threads - 1) /
                    ((uint64_t)p->batch * p->threads);
    uint64_t cap = (256ull << 20) / (8ull * p->batch * p->threads);
    if (want < 16)
        want = 16;
    if (want > 1024)
        want = 1024;
    if (want > cap)
        want = cap ? cap : 1;
    return (uint32_t)want;
}

int wl_run(const wl_params *p, const wl_backend *b, wl_result *r)
{
    memset(r, 0, sizeof *r);
    if (!p->threads || !p->batch || !p->nkeys)
        return -EINVAL;
    struct wl_thread *ts = calloc(p->threads, sizeof *ts);
    if (!ts)
        return -ENOMEM;
    dhps_zipf z;
    dhps_zipf_init(&z, p->nkeys, p->zipf > 0 ? p->zipf : 1.0);
    /* every thread's keys are drawn here, before any clock runs, and replayed in a
     * cycle: drawing 1000 distinct Zipf keys costs tens of microseconds of a client
     * core, which belongs to the workload, not to the store it measures (and every
     * store of a comparison gets the same streams) */
    uint32_t nb = pool_batches(p);
    size_t per = (size_t)nb * p->batch;
    uint64_t *pool = malloc(per * p->threads * sizeof *pool);
    uint32_t seen_n = 16;
    while (seen_n < 4 * p->batch)
        seen_n *= 2;
    uint64_t *seen = malloc(seen_n * sizeof *seen);
    if (!pool || !seen) {
        free(pool);
        free(seen);
        free(ts);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < p->threads; i++) {
        ts[i].rng = p->seed * 0x9E3779B97F4A7C15ull + i + 1;
        for (uint32_t k = 0; k < nb; k++)
            wl_keys(p, &z, &ts[i].rng, pool + per * i + (size_t)k * p->batch, p->batch, seen,
                    seen_n - 1);
    }
    free(seen);
    uint64_t start = dhps_mono_ns() + 20000000ull; /* let every thread open first */
    uint64_t end = start + (uint64_t)(p->seconds * 1e9);
    int rc = 0;
    uint32_t started = 0;
    for (uint32_t i = 0; i < p->threads; i++) {
        ts[i] = (struct wl_thread){.p = p, .b = b, .pool = pool + per * i, .nb = nb,
                                   .rng = ts[i].rng, .idx = i, .start_ns = start,
                                   .end_ns = end};
        if ((rc = -pthread_create(&ts[i].tid, NULL, wl_main, &ts[i])))
            break;
        started++;
    }
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(ts[i].tid, NULL);
        r->batches += ts[i].r.batches;
        r->keys += ts[i].r.keys;
        r->lookups += ts[i].r.lookups;
        r->updates += ts[i].r.updates;
        r->errors += ts[i].r.errors + (uint64_t)ts[i].open_failed;
        r->missing += ts[i].r.missing;
        tools_hist_merge(&r->hist, &ts[i].r.hist);
        tools_hist_merge(&r->hist_lookup, &ts[i].r.hist_lookup);
        tools_hist_merge(&r->hist_update, &ts[i].r.hist_update);
    }
    uint64_t now = dhps_mono_ns();
    r->seconds = (double)(now - start) / 1e9; /* until the last batch returned */
    free(pool);
    free(ts);
    return rc;
}

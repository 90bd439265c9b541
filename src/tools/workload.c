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
    const dhps_zipf *z;
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
    uint64_t rng = p->seed * 0x9E3779B97F4A7C15ull + t->idx + 1;
    uint64_t *keys = malloc(p->batch * sizeof *keys);
    uint8_t *buf = malloc((size_t)p->batch * p->row_bytes);
    uint32_t seen_n = 16;
    while (seen_n < 4 * p->batch)
        seen_n *= 2;
    uint64_t *seen = malloc(seen_n * sizeof *seen);
    void *th = t->b->open(t->b->arg);
    if (!keys || !buf || !seen || !th) {
        t->open_failed = 1;
        goto out;
    }
    for (size_t i = 0; i < (size_t)p->batch * p->row_bytes; i++)
        buf[i] = (uint8_t)(i * 7 + t->idx);
    double per_thread = p->rate > 0 ? p->rate / p->threads : 0;
    uint64_t gap = per_thread > 0 ? (uint64_t)(1e9 / per_thread) : 0;
    /* stagger open-loop threads over one gap so their batches do not leave together */
    uint64_t next = t->start_ns + (gap ? gap * t->idx / p->threads : 0);
    for (;;) {
        /* the batch's keys are drawn before its clock starts: a Zipf draw of 1000
         * distinct keys costs tens of microseconds of the client's CPU, which is the
         * workload's, not the store's (open loop: drawn while waiting for the slot) */
        wl_keys(p, t->z, &rng, keys, p->batch, seen, seen_n - 1);
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
    free(seen);
    free(buf);
    free(keys);
    return NULL;
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
    uint64_t start = dhps_mono_ns() + 20000000ull; /* let every thread open first */
    uint64_t end = start + (uint64_t)(p->seconds * 1e9);
    int rc = 0;
    uint32_t started = 0;
    for (uint32_t i = 0; i < p->threads; i++) {
        ts[i] = (struct wl_thread){.p = p, .b = b, .z = &z, .idx = i, .start_ns = start,
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
    free(ts);
    return rc;
}

/*
 * The dhps contender of `dhps-bench store` (store_run.h): dhps_store through the public
 * API of include/dhps/store.h only, as an application would use it. Lookups copy into
 * the harness's output matrix with dhps_store_get; the second variant, 'dhps (pinned)',
 * pins with dhps_store_get_pinned and copies itself. The store's clock is frozen, so
 * the TTLs of --churn are carried and nothing expires.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_run.h"
#include "util.h"

#ifndef DHPS_BENCH_NO_STORE
#include "dhps/error.h"
#include "dhps/store.h"

typedef struct dhps_ctx {
    dhps_store *s;
    dhps_store_reader *r;
    const void **pv;    /* get_pinned's value pointers, one batch */
    uint32_t *plens;
    size_t cap;
    uint64_t clock_ms;  /* frozen clock: TTLs are carried, nothing expires */
    uint32_t value_bytes;
} dhps_ctx;

static uint64_t dhps_frozen_clock(void *arg) { return ((const dhps_ctx *)arg)->clock_ms; }

static int dhps_c_create(const bench_store_cfg *cfg, void **out, char *err)
{
    dhps_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, BENCH_ERR_LEN, "out of memory");
        return -1;
    }
    c->cap = cfg->batch;
    c->value_bytes = cfg->value_bytes;
    c->pv = calloc(c->cap, sizeof *c->pv);
    c->plens = calloc(c->cap, sizeof *c->plens);
    c->clock_ms = dhps_mono_ns() / 1000000;
    if (!c->pv || !c->plens) {
        snprintf(err, BENCH_ERR_LEN, "out of memory");
        goto fail;
    }
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = cfg->keys;
    p.huge_pages = cfg->huge_pages;
    if (cfg->frag_goal > 0)
        p.fragmentation_goal = (float)cfg->frag_goal;
    p.clock = dhps_frozen_clock;
    p.clock_arg = c;
    int rc = dhps_store_create(&p, &c->s);
    if (rc) {
        snprintf(err, BENCH_ERR_LEN, "dhps_store_create: %s", dhps_strerror(rc));
        goto fail;
    }
    rc = dhps_store_reader_open(c->s, &c->r);
    if (rc) {
        snprintf(err, BENCH_ERR_LEN, "dhps_store_reader_open: %s", dhps_strerror(rc));
        goto fail;
    }
    *out = c;
    return 0;
fail:
    dhps_store_reader_close(c->r);
    dhps_store_destroy(c->s);
    free(c->pv);
    free(c->plens);
    free(c);
    return -1;
}

static int dhps_c_upsert(void *ctx, const uint64_t *keys, size_t n, const uint8_t *vals,
                         size_t stride, const uint32_t *lens, uint32_t ttl, uint64_t version,
                         char *err)
{
    dhps_ctx *c = ctx;
    dhps_store_batch b = {.keys = keys, .n = n, .values = vals, .value_stride = stride,
                          .lens = lens, .versions = NULL, .version = version, .ttl = ttl};
    long rc = dhps_store_put(c->s, &b, NULL);
    if (rc < 0) {
        snprintf(err, BENCH_ERR_LEN, "dhps_store_put(%zu keys, version %" PRIu64 "): %s", n,
                 version, dhps_strerror((int)rc));
        return -1;
    }
    if ((size_t)rc != n) {
        snprintf(err, BENCH_ERR_LEN,
                 "dhps_store_put wrote %ld of %zu records at increasing version %" PRIu64, rc,
                 n, version);
        return -1;
    }
    return 0;
}

static size_t dhps_c_lookup(void *ctx, const uint64_t *keys, size_t n, uint8_t *out,
                            size_t stride, uint32_t *lens, uint64_t *found)
{
    dhps_ctx *c = ctx;
    return dhps_store_get(c->r, keys, n, out, stride, lens, found);
}

/* Zero-copy lookup, then the copy an application would do itself. */
static size_t dhps_c_lookup_pinned(void *ctx, const uint64_t *keys, size_t n, uint8_t *out,
                                   size_t stride, uint32_t *lens, uint64_t *found)
{
    dhps_ctx *c = ctx;
    size_t hits = dhps_store_get_pinned(c->r, keys, n, c->pv, c->plens, found);
    for (size_t i = 0; i < n; i++) {
        uint8_t *row = out + i * stride;
        if (c->pv[i]) {
            size_t len = c->plens[i] < stride ? c->plens[i] : stride;
            memcpy(row, c->pv[i], len);
            if (len < stride)
                memset(row + len, 0, stride - len);
        } else {
            memset(row, 0, stride);
        }
        if (lens)
            lens[i] = c->pv[i] ? c->plens[i] : 0;
    }
    dhps_store_release(c->r);
    return hits;
}

static void dhps_c_stats(void *ctx, bench_kv_stats *st)
{
    dhps_ctx *c = ctx;
    dhps_store_stats s;
    dhps_store_get_stats(c->s, &s);
    st->index_bytes = s.index_bytes;
    st->payload_bytes = s.payload_bytes;
    st->segment_bytes = s.segment_bytes;
    st->keys = s.keys;
    st->fragmentation = s.fragmentation;
    st->load_factor = s.load_factor;
    st->inplace_updates = s.inplace_updates;
    st->inplace_shrinks = s.inplace_shrinks;
    st->compacted_segments = s.compacted_segments;
    st->index_grows = s.index_grows;
    st->compaction_bytes = s.compaction_bytes;
    st->live_bytes = s.live_bytes;
}

static void dhps_c_lines(void *ctx, double *index, double *data)
{
    dhps_ctx *c = ctx;
    dhps_store_lines l;
    if (dhps_store_lookup_lines(c->s, c->value_bytes, &l) == 0) {
        *index = l.bucket_lines;
        *data = l.record_lines;
    }
}

static void dhps_c_destroy(void *ctx)
{
    dhps_ctx *c = ctx;
    if (!c)
        return;
    dhps_store_reader_close(c->r);
    dhps_store_destroy(c->s);
    free(c->pv);
    free(c->plens);
    free(c);
}

static const char *g_simd; /* --simd, applied in the dhps child */

static int dhps_c_init(const bench_store_cfg *cfg, char *err)
{
    if (g_simd && g_simd[0]) {
        int rc = dhps_store_force_simd(g_simd);
        if (rc) {
            snprintf(err, BENCH_ERR_LEN, "dhps_store_force_simd(%s): %s", g_simd,
                     dhps_strerror(rc));
            return -1;
        }
    }
    return 0;
}

static const bench_contender k_dhps = {
    .id = "dhps", .label = "dhps", .lookup2_label = "dhps (pinned)",
    .describe = "dhps_store", .churn = true,
    .init = dhps_c_init, .create = dhps_c_create, .upsert = dhps_c_upsert,
    .lookup = dhps_c_lookup, .lookup2 = dhps_c_lookup_pinned, .stats = dhps_c_stats,
    .lines = dhps_c_lines, .destroy = dhps_c_destroy, .fini = NULL,
};
#endif /* DHPS_BENCH_NO_STORE */

const bench_contender *store_dhps_contender(const char *simd)
{
#ifndef DHPS_BENCH_NO_STORE
    g_simd = simd;
    return &k_dhps;
#else
    (void)simd;
    return NULL;
#endif
}

const char *store_dhps_simd_name(const char *forced)
{
#ifndef DHPS_BENCH_NO_STORE
    return forced && forced[0] ? forced : dhps_store_simd_name();
#else
    (void)forced;
    return NULL;
#endif
}

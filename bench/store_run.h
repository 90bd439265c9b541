/*
 * Internal interface between the parts of `dhps-bench store` written in C (not
 * installed; store_bench.h is the contender interface the C++ peers share):
 *  - store_bench.c: options, run data, the per-contender child harness, the entry point;
 *  - store_dhps.c: the dhps contender (public API of include/dhps/store.h only);
 *  - store_report.c: the merge of rounds, derived figures, the JSON and human reports.
 * All of it runs single-threaded: in the parent, or in a contender's forked child.
 */
#ifndef DHPS_BENCH_STORE_RUN_H
#define DHPS_BENCH_STORE_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store_bench.h"

/* Contender slots: dhps, unordered_map, absl, rte_hash (the column order of results). */
#define STORE_CONTENDER_MAX 4

/* The parsed command line (store_bench.c's usage() defines each option). */
typedef struct opts {
    uint64_t keys, value_bytes, batch, ops, update_ops, seed, rounds;
    bool update_ops_set;
    double zipf_s; /* 0: uniform */
    char dist[32];
    double churn;
    double frag_goal; /* dhps's fragmentation_goal (0: the store's default) */
    bool peers, json, huge, cpu_clock;
    char only[128];
    char simd[16];
} opts;

/* Shared run data: generated in the parent, read-only in the children. */
typedef struct run_data {
    const opts *o;
    bench_store_cfg cfg;
    uint64_t key_base;   /* key[i] = mix64(key_base + i) */
    uint32_t *lookup_ix; /* o->ops indices into the key set */
    uint32_t *update_ix; /* o->update_ops indices */
    bool churn_now;      /* this round runs --churn (the first round only) */
    double loadavg;      /* 1-minute load average when the run started (NAN: unknown) */
} run_data;

/* What one contender's child measured in one round; sent to the parent over a pipe. */
typedef struct bench_result {
    char id[24], label[48], lookup2_label[48];
    int ran;   /* the child got as far as sending its result */
    int ok;    /* every phase completed */
    char err[BENCH_ERR_LEN];
    uint64_t built, lookups, updates;
    double build_s, lookup_s, lookup2_s, update_s;
    uint64_t rss_base, rss_loaded, rss_updated, rss_end;
    uint64_t lookup_misses, lookup_checked, lookup_bad;
    uint64_t lookup2_misses, lookup2_checked, lookup2_bad;
    uint64_t update_checked, update_bad, update_misses;
    double cpu_share;      /* min over the timed phases of CPU time / wall time */
    uint64_t anon_huge_kb; /* AnonHugePages after loading */
    bench_kv_stats st_loaded, st_updated;
    double lines_index, lines_data; /* per lookup, from the layout (NAN: not known) */
    /* churn (dhps) */
    int churned;
    uint64_t churn_ops, churn_samples;
    double churn_s, frag_max, frag_final;
    uint64_t churn_rss, churn_rss_max; /* deltas over rss_base */
    uint64_t churn_live_payload;       /* sum of 8 + len over keys, as we wrote them */
    double churn_ratio_max;            /* max RSS delta / live payload over samples */
    uint64_t churn_checked, churn_bad, churn_misses;
    uint64_t churn_written;   /* sum of 8 + len over the overwrites */
    uint64_t churn_compacted; /* record bytes compaction moved during them */
    uint64_t churn_inplace;   /* overwrites the store did in place during them */
    uint64_t churn_shrinks;   /* of those, by a shorter value */
    double copy_gbs;          /* record-sized memcpy on this core after churn, GB/s */
    bench_kv_stats st_churn;
} bench_result;

/* Figures derived from one bench_result (rates in Mkeys/s; NAN where not measured). */
typedef struct derived {
    double lookup, lookup2, update, build;
    uint64_t rss;           /* delta after loading */
    double rss_ratio;       /* rss / payload */
    double index_per_key, overhead_per_key, frag;
    uint64_t bad, misses;
} derived;

/* ---- the dhps contender (store_dhps.c) --------------------------------------------- */

/* The dhps contender, or NULL when built without the store library
 * (DHPS_BENCH_NO_STORE). simd (--simd; NULL or "" for the store's own choice) is kept,
 * not copied, and forced by the contender's init() in its child. */
const bench_contender *store_dhps_contender(const char *simd);

/* The tag-match implementation dhps will use: forced (when non-empty), else the
 * store's run-time choice; NULL when built without the store library. */
const char *store_dhps_simd_name(const char *forced);

/* ---- rounds and reporting (store_report.c) ------------------------------------------- */

/* Fill *x from r for the run d (pure; any r, finished or not). */
void store_derive(const run_data *d, const bench_result *r, derived *x);

/* out = round 1 of contender column col of rounds[nr][STORE_CONTENDER_MAX], with the
 * median timings over the rounds when all nr (>= 2) completed, error counts summed
 * over all rounds, the least CPU share of the rounds that completed, and the first
 * failed later round's error when round 1 had none. */
void store_merge_rounds(bench_result *out, const bench_result *rounds, size_t col,
                        uint64_t nr);

/* Print res[0..nres) as one JSON object on f; simd as from store_dhps_simd_name(). */
void store_print_json(FILE *f, const run_data *d, const bench_result *res, size_t nres,
                      const char *simd);

/* Print res[0..nres) as tables on f: figures, lines per lookup, ratios dhps / peer,
 * the targets with their verdicts, the churn summary; thp as from store_thp_mode(). */
void store_print_human(FILE *f, const run_data *d, const bench_result *res, size_t nres,
                       const char *simd, const char *thp);

/* The bracketed transparent-huge-page mode of /sys/kernel/mm/transparent_hugepage/enabled
 * into buf (n bytes), or "unknown". */
void store_thp_mode(char *buf, size_t n);

#endif

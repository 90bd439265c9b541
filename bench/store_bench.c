/*
 * `dhps-bench store`: the dhps store beside std::unordered_map, absl::flat_hash_map and
 * DPDK rte_hash, on the same keys, in the same run. See usage() for options and
 * definitions; store_bench.h for the contender interface; store_dhps.c for dhps and
 * store_peers.cc for the peers; store_report.c for the merge of rounds and the reports
 * (store_run.h joins the C parts). This file: options, run data, the child harness, the
 * entry point.
 *
 * Method (what makes the figures comparable):
 *  - Keys: key[i] = mix64(splitmix64(seed) + i) for i < N, where mix64 is a bijection,
 *    so the N keys are distinct without deduplication. Values are derived from (key,
 *    generation, length) (bench_value_fill), so no value array is kept and any copied
 *    value can be checked.
 *  - Streams: the lookup and update streams (indices into the key array, uniform or
 *    Zipf by rejection-inversion (dhps_zipf, src/common/util.c) over a seeded shuffle
 *    of the keys, so hot keys are scattered) are generated in the parent before any
 *    contender starts.
 *  - Each contender runs in its own forked child, one after another. The child sets up
 *    its buffers, measures RSS, creates and loads its structure, measures RSS again:
 *    rss_bytes is the difference, i.e. the structure alone (streams, key array and
 *    buffers are in the baseline). Results return over a pipe.
 *  - Timing: CLOCK_MONOTONIC around each batch call only; values of an upsert batch and
 *    the keys of a lookup batch are gathered outside the timed region; every copied
 *    row is checked against the expected bytes after its batch, outside the timed
 *    region; misses are counted (expected 0).
 *  - Single thread everywhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "store_bench.h"
#include "store_run.h"
#include "util.h"

/* ---- small helpers ----------------------------------------------------------------- */

/* CPU time of this thread: with dhps_mono_ns() around a whole phase, the share of a CPU the
 * contender actually got (below ~0.9 the machine was busy and its rates understated). */
static uint64_t cpu_ns(void) { return dhps_clock_ns(CLOCK_THREAD_CPUTIME_ID); }

/* The clock around each timed call: wall time (CLOCK_MONOTONIC), or with --clock cpu the
 * thread's CPU time, so that time the contender spent descheduled on a shared machine
 * does not count (its caches still suffer from the neighbours). Set in the parent
 * before any fork. */
static uint64_t (*g_timer)(void) = dhps_mono_ns;

void *bench_map(size_t bytes, bool huge)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (huge)
        madvise(p, bytes, MADV_HUGEPAGE); /* advice only: ignore failure */
    return p;
}

void bench_unmap(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

uint64_t bench_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Uniform integer in [0, n). */
static inline uint64_t rand_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)bench_rand64(state) * n) >> 64);
}

static inline uint64_t key_of(uint64_t base, uint64_t i) { return bench_mix64(base + i); }

/* ---- options ------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
"usage: dhps-bench store [options]\n"
"\n"
"Builds a table of N random u64 keys with B-byte values, then measures batched lookups\n"
"(each value copied into a dense batch x B output matrix, as inference gathers\n"
"embeddings), batched upserts (overwrites of existing keys with new bytes) and memory.\n"
"Every contender runs alone in its own child process on the same keys and streams.\n"
"\n"
"  --keys N            table size (default 10000000; 1e6, 10M, 500k accepted)\n"
"  --value-bytes B     value size, 1..16383 (default 128)\n"
"  --batch K           keys per lookup / upsert call (default 1024)\n"
"  --dist D            lookup and update key distribution: uniform | zipf:S (S > 0,\n"
"                      e.g. zipf:0.99; ranks over a seeded shuffle of the keys)\n"
"  --ops M             lookups (default 20000000)\n"
"  --update-ops U      upserts (default M/2: overwrites of existing keys, new bytes)\n"
"  --peers             also run std::unordered_map, absl::flat_hash_map, rte_hash\n"
"  --only LIST         run only these, comma-separated: dhps,unordered_map,absl,rte_hash\n"
"  --churn R           dhps only: after the measures, R x N overwrites of random keys\n"
"                      with value sizes uniform in 16..512 B and TTLs none/1h/6h/1d (per\n"
"                      batch; the store's clock is frozen so nothing expires), then\n"
"                      fragmentation (max over samples every N/4 ops after a 1 x N\n"
"                      warm-up, and final), RSS / live payload, live payload, and what\n"
"                      it copied: compaction's write amplification, bytes per overwrite\n"
"                      and their rate against a 288-byte memcpy on the same core\n"
"  --fragmentation-goal F  dhps's fragmentation_goal, 0 < F < 0.5 (default the store's,\n"
"                      0.04): compaction keeps garbage below it; with --churn, the\n"
"                      trade of memory for overwrite rate\n"
"  --seed X            PRNG seed (splitmix64) for keys and streams (default 1)\n"
"  --rounds R          run the contenders R times, round-robin (dhps, peers, dhps,\n"
"                      ...), each time in a fresh process, and report the median\n"
"                      rates (memory and churn from round 1); shared machines are\n"
"                      noisy, and interleaving keeps a noise burst off one contender\n"
"  --no-huge           no madvise(MADV_HUGEPAGE) for anyone (dhps huge_pages=false)\n"
"  --simd NAME         force dhps's tag match: avx2 | sse2 | scalar\n"
"  --clock C           wall (default): time the calls by CLOCK_MONOTONIC; cpu: by the\n"
"                      thread's CPU time (a busy machine then costs cache, not turns)\n"
"  --json              print one JSON object on stdout (progress goes to stderr)\n"
"\n"
"Contenders (each pre-sized for N; large arrays huge-page advised like dhps):\n"
"  dhps                dhps_store, capacity_hint N, dhps_store_put batches of K with\n"
"                      increasing versions, dhps_store_get with out_stride B;\n"
"                      'dhps (pinned)': dhps_store_get_pinned, then our own copy\n");
    const bench_contender *peers[] = {bench_peer_unordered_map(), bench_peer_absl(),
                                      bench_peer_rte_hash()};
    for (size_t i = 0; i < 3; i++)
        fprintf(f, "  %-18s  %s\n", peers[i]->id, peers[i]->describe);
    fprintf(f,
"\n"
"Figures: lookup/update Mkeys/s = keys / time inside the calls; CPU got = least share\n"
"of a CPU the contender got during a phase (CPU time / wall time; < 90%%: busy machine,\n"
"rates understated); rss_bytes = RSS after\n"
"loading - RSS before creating (the structure alone; absolute RSS also shown);\n"
"payload = N x (8 + B); index B/key: dhps's index table / N, a peer's memory outside\n"
"its value slab / N (its map, keys included); overhead B/key = (rss_bytes - payload)/N;\n"
"fragmentation: dhps's 1 - live / segment bytes (null for peers).\n"
"Targets shown, not asserted: dhps lookups >= 5x unordered_map and >= 3x rte_hash;\n"
"upserts >= 3x unordered_map; RSS <= 1.10 x payload after loading, <= 1.15 x after\n"
"--churn 10; fragmentation <= 5%%.\n"
"Exit status: 0, or 1 if a contender failed, missed keys or copied wrong bytes.\n");
}

/* A count: 1000, 1e6, 2.5M, 10k, 1G. */
static int parse_count(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno)
        return -1;
    switch (*end) {
    case 'k': case 'K': v *= 1e3; end++; break;
    case 'm': case 'M': v *= 1e6; end++; break;
    case 'g': case 'G': v *= 1e9; end++; break;
    default: break;
    }
    if (*end || v < 0 || v > 1.8e19 || v != floor(v))
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_opts(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->keys = 10000000;
    o->value_bytes = 128;
    o->batch = 1024;
    o->ops = 20000000;
    o->seed = 1;
    o->rounds = 1;
    o->huge = true;
    snprintf(o->dist, sizeof o->dist, "uniform");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(name, "--peers")) { o->peers = true; continue; }
        if (!strcmp(name, "--json")) { o->json = true; continue; }
        if (!strcmp(name, "--no-huge")) { o->huge = false; continue; }
        static const char *const valued[] = {"--keys", "--value-bytes", "--batch", "--dist",
                                             "--ops", "--update-ops", "--churn", "--seed",
                                             "--only", "--simd", "--rounds", "--clock",
                                             "--fragmentation-goal"};
        bool known = false;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
            known |= !strcmp(name, valued[k]);
        if (!known) {
            fprintf(stderr, "dhps-bench store: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dhps-bench store: %s needs a value\n", name);
                return -1;
            }
            val = argv[++i];
        }
        int bad = 0;
        if (!strcmp(name, "--keys")) bad = parse_count(val, &o->keys);
        else if (!strcmp(name, "--value-bytes")) bad = parse_count(val, &o->value_bytes);
        else if (!strcmp(name, "--batch")) bad = parse_count(val, &o->batch);
        else if (!strcmp(name, "--ops")) bad = parse_count(val, &o->ops);
        else if (!strcmp(name, "--rounds"))
            bad = parse_count(val, &o->rounds) || o->rounds < 1 || o->rounds > 99;
        else if (!strcmp(name, "--update-ops")) {
            bad = parse_count(val, &o->update_ops);
            o->update_ops_set = true;
        } else if (!strcmp(name, "--seed")) {
            char *end;
            errno = 0;
            o->seed = strtoull(val, &end, 0);
            bad = *end || end == val || errno;
        } else if (!strcmp(name, "--churn")) {
            char *end;
            o->churn = strtod(val, &end);
            bad = *end || end == val || !(o->churn >= 0 && o->churn <= 1000);
        } else if (!strcmp(name, "--fragmentation-goal")) {
            char *end;
            o->frag_goal = strtod(val, &end);
            bad = *end || end == val || !(o->frag_goal > 0 && o->frag_goal < 0.5);
        } else if (!strcmp(name, "--dist")) {
            if (!strcmp(val, "uniform")) {
                o->zipf_s = 0;
            } else if (!strncmp(val, "zipf:", 5)) {
                char *end;
                o->zipf_s = strtod(val + 5, &end);
                bad = *end || end == val + 5 || !(o->zipf_s > 0 && o->zipf_s <= 10);
            } else {
                bad = 1;
            }
            snprintf(o->dist, sizeof o->dist, "%s", val);
        } else if (!strcmp(name, "--only")) {
            snprintf(o->only, sizeof o->only, "%s", val);
        } else if (!strcmp(name, "--simd")) {
            snprintf(o->simd, sizeof o->simd, "%s", val);
        } else if (!strcmp(name, "--clock")) {
            o->cpu_clock = !strcmp(val, "cpu");
            bad = !o->cpu_clock && strcmp(val, "wall");
        }
        if (bad) {
            fprintf(stderr, "dhps-bench store: bad value '%s' for %s\n", val, name);
            return -1;
        }
    }
    if (!o->update_ops_set)
        o->update_ops = o->ops / 2;
    if (o->batch == 0)
        o->batch = 1; /* rejected below */
    if (o->keys < 1 || o->keys > UINT32_MAX) {
        fprintf(stderr, "dhps-bench store: --keys must be in 1..%u\n", UINT32_MAX);
        return -1;
    }
    if (o->value_bytes < 1 || o->value_bytes > 16383) {
        fprintf(stderr, "dhps-bench store: --value-bytes must be in 1..16383\n");
        return -1;
    }
    if (o->batch < 1 || o->batch > (1u << 20)) {
        fprintf(stderr, "dhps-bench store: --batch must be in 1..1048576\n");
        return -1;
    }
    if (o->ops > (1ull << 34) || o->update_ops > (1ull << 34)) {
        fprintf(stderr, "dhps-bench store: --ops/--update-ops at most 2^34\n");
        return -1;
    }
    return 0;
}

/* ---- shared run data (generated in the parent, read-only in children) --------------- */

/* Fill n stream entries: uniform indices, or Zipf ranks mapped through perm. */
static void gen_stream(uint32_t *dst, uint64_t n, uint64_t nkeys, const dhps_zipf *z,
                       const uint32_t *perm, uint64_t *state)
{
    for (uint64_t i = 0; i < n; i++)
        dst[i] = z ? perm[dhps_zipf_next(z, state)] : (uint32_t)rand_below(state, nkeys);
}

static void *xmap(size_t bytes, const char *what)
{
    void *p = bench_map(bytes ? bytes : 1, false);
    if (!p) {
        fprintf(stderr, "dhps-bench store: cannot map %zu bytes for %s: %s\n", bytes, what,
                strerror(errno));
        exit(1);
    }
    return p;
}

static void gen_data(run_data *d)
{
    const opts *o = d->o;
    uint64_t st = o->seed;
    d->key_base = bench_rand64(&st);
    d->lookup_ix = xmap(o->ops * sizeof(uint32_t), "the lookup stream");
    d->update_ix = xmap(o->update_ops * sizeof(uint32_t), "the update stream");
    uint32_t *perm = NULL;
    dhps_zipf z, *zp = NULL;
    if (o->zipf_s > 0) {
        /* rank r -> perm[r]: a seeded Fisher-Yates shuffle, so the hottest keys are
         * not neighbours in insertion order (nor in anyone's value storage) */
        perm = xmap(o->keys * sizeof(uint32_t), "the Zipf permutation");
        for (uint64_t i = 0; i < o->keys; i++)
            perm[i] = (uint32_t)i;
        for (uint64_t i = o->keys - 1; i > 0; i--) {
            uint64_t j = rand_below(&st, i + 1);
            uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        dhps_zipf_init(&z, o->keys, o->zipf_s);
        zp = &z;
    }
    uint64_t ls = bench_mix64(o->seed ^ 0x6c6f6f6b7570ull); /* "lookup" */
    uint64_t us = bench_mix64(o->seed ^ 0x757064617465ull); /* "update" */
    gen_stream(d->lookup_ix, o->ops, o->keys, zp, perm, &ls);
    gen_stream(d->update_ix, o->update_ops, o->keys, zp, perm, &us);
    if (perm)
        bench_unmap(perm, o->keys * sizeof(uint32_t));
}

/* ---- one contender, in its child ----------------------------------------------------- */

static uint64_t anon_huge_kb(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    unsigned long long kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

typedef struct child_bufs {
    uint64_t *keys;   /* batch keys */
    uint8_t *vals;    /* batch x max_value */
    uint8_t *out;     /* batch x out_stride */
    uint8_t *expect;  /* one expected value */
    uint64_t *found;
    uint32_t *lens;
    size_t out_stride;
    uint32_t *key_gen;  /* per key: generation of its current value */
    uint16_t *key_len;  /* per key: current length (churn only) */
} child_bufs;

/* Check rows [0, n) of a lookup of keys ix[] against key_gen/key_len (generation 0
 * and length B when loaded is true: nothing was overwritten yet, and skipping the
 * per-key arrays keeps the check from dragging extra lines through the cache).
 * Returns wrong rows; counts misses. */
static uint64_t check_rows(const run_data *d, child_bufs *b, const uint32_t *ix, size_t n,
                           size_t stride, bool check_lens, bool loaded, uint64_t *misses)
{
    uint64_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t k = ix[i];
        uint64_t gen = loaded ? 0 : b->key_gen[k];
        size_t len = !loaded && b->key_len ? b->key_len[k] : d->cfg.value_bytes;
        if (!(b->found[i / 64] >> (i % 64) & 1)) {
            (*misses)++;
            continue;
        }
        if (check_lens && b->lens[i] != len) {
            bad++;
            continue;
        }
        size_t cmp = len < stride ? len : stride;
        bench_value_fill(b->expect, key_of(d->key_base, k), gen, len);
        const uint8_t *row = b->out + i * stride;
        if (memcmp(row, b->expect, cmp))
            bad++;
        else
            for (size_t j = cmp; j < stride; j++)
                if (row[j]) {
                    bad++;
                    break;
                }
    }
    return bad;
}

/* Timed lookups over the whole lookup stream with one of the contender's lookup ops.
 * Runs right after loading: every key holds its generation-0 value. */
static void run_lookups(const run_data *d, child_bufs *b, void *ctx,
                        size_t (*lookup)(void *, const uint64_t *, size_t, uint8_t *, size_t,
                                         uint32_t *, uint64_t *),
                        double *secs, uint64_t *misses, uint64_t *checked, uint64_t *bad)
{
    const size_t K = d->cfg.batch, B = d->cfg.value_bytes;
    uint64_t total = 0;
    for (uint64_t pos = 0; pos < d->o->ops; pos += K) {
        size_t n = d->o->ops - pos < K ? (size_t)(d->o->ops - pos) : K;
        const uint32_t *ix = d->lookup_ix + pos;
        for (size_t i = 0; i < n; i++)
            b->keys[i] = key_of(d->key_base, ix[i]);
        uint64_t t0 = g_timer();
        size_t got = lookup(ctx, b->keys, n, b->out, B, NULL, b->found);
        total += g_timer() - t0;
        uint64_t m = 0;
        *bad += check_rows(d, b, ix, n, B, false, true, &m);
        *misses += m;
        *checked += n;
        if (got + m != n) /* the count returned disagrees with the found bits */
            (*bad)++;
    }
    *secs = total / 1e9;
}

/* Untimed: look up every key of ix[0..n) in batches and check them. */
static void verify_keys(const run_data *d, child_bufs *b, void *ctx, const bench_contender *c,
                        const uint32_t *ix, uint64_t n, size_t stride, bool check_lens,
                        uint64_t *checked, uint64_t *bad, uint64_t *misses)
{
    const size_t K = d->cfg.batch;
    for (uint64_t pos = 0; pos < n; pos += K) {
        size_t m = n - pos < K ? (size_t)(n - pos) : K;
        for (size_t i = 0; i < m; i++)
            b->keys[i] = key_of(d->key_base, ix[pos + i]);
        c->lookup(ctx, b->keys, m, b->out, stride, check_lens ? b->lens : NULL, b->found);
        *bad += check_rows(d, b, ix + pos, m, stride, check_lens, false, misses);
        *checked += m;
    }
}

static void stats_of(const bench_contender *c, void *ctx, bench_kv_stats *st)
{
    memset(st, 0, sizeof *st);
    st->fragmentation = NAN;
    if (c->stats) {
        c->stats(ctx, st);
        st->known = true;
    }
}

static const uint32_t churn_ttls[] = {0, 3600, 6 * 3600, 24 * 3600};

/* The rate (GB/s of source bytes) at which this core copies 288-byte pieces -- the
 * churn's average record -- front to back from one 256 MiB region to another, both
 * resident and on huge pages where the kernel gives them, through glibc's memcpy as
 * compaction does: the best of three passes. The copying a churn overwrite causes
 * (its record, and the live records compaction moves for it) is measured against it in
 * the same process. NAN when the memory is not there. */
static double copy_rate_gbs(void)
{
    const size_t n = 256u << 20, piece = 288;
    uint8_t *src = mmap(NULL, 2 * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED)
        return NAN;
    (void)madvise(src, 2 * n, MADV_HUGEPAGE);
    uint8_t *dst = src + n;
    memset(src, 0x5a, 2 * n);
    volatile size_t vp = piece; /* a length known only at run time, as compaction's */
    double best = 0;
    for (int pass = 0; pass < 3; pass++) {
        uint64_t t0 = dhps_mono_ns();
        for (size_t off = 0; off + piece <= n; off += piece)
            memcpy(dst + off, src + off, vp);
        uint64_t dt = dhps_mono_ns() - t0;
        double r = (double)(n / piece * piece) / (double)(dt ? dt : 1);
        if (r > best)
            best = r;
    }
    if (dst[n - 1024] != 0x5a) /* keep the copies */
        best = NAN;
    munmap(src, 2 * n);
    return best;
}

static void run_churn(const run_data *d, child_bufs *b, void *ctx, const bench_contender *c,
                      bench_result *r, uint64_t *version, uint32_t *gen)
{
    const uint64_t N = d->cfg.keys, K = d->cfg.batch;
    const uint64_t total = (uint64_t)(d->o->churn * (double)N);
    const uint64_t warm = N, every = N / 4 ? N / 4 : 1;
    const size_t stride = d->cfg.max_value;
    uint64_t st = bench_mix64(d->o->seed ^ 0x636875726eull);
    uint64_t live = 0;
    uint32_t *bix = (uint32_t *)malloc(K * sizeof(uint32_t));
    uint32_t *blen = (uint32_t *)malloc(K * sizeof(uint32_t));
    if (!bix || !blen) {
        snprintf(r->err, BENCH_ERR_LEN, "churn: out of memory");
        free(bix);
        free(blen);
        return;
    }
    for (uint64_t k = 0; k < N; k++)
        live += 8 + b->key_len[k];
    bench_kv_stats st0;
    stats_of(c, ctx, &st0);
    uint64_t written = 0;
    uint64_t done = 0, next_sample = warm, t = 0;
    r->frag_max = 0;
    r->churn_ratio_max = 0;
    fprintf(stderr, "  [%s] churn: %" PRIu64 " overwrites, sizes 16..512, TTL none/1h/6h/1d\n",
            c->id, total);
    while (done < total) {
        size_t n = total - done < K ? (size_t)(total - done) : (size_t)K;
        uint32_t g = ++*gen;
        uint32_t ttl = churn_ttls[(g) % 4];
        for (size_t i = 0; i < n; i++) {
            uint32_t k = (uint32_t)rand_below(&st, N);
            uint32_t len = 16 + (uint32_t)rand_below(&st, 512 - 16 + 1);
            bix[i] = k;
            blen[i] = len;
            written += 8 + len;
            b->keys[i] = key_of(d->key_base, k);
            bench_value_fill(b->vals + i * stride, b->keys[i], g, len);
        }
        uint64_t t0 = g_timer();
        int rc = c->upsert(ctx, b->keys, n, b->vals, stride, blen, ttl, ++*version, r->err);
        t += g_timer() - t0;
        if (rc) {
            free(bix);
            free(blen);
            return;
        }
        for (size_t i = 0; i < n; i++) { /* in order: a repeated key's last write wins */
            live += (uint64_t)blen[i] - b->key_len[bix[i]];
            b->key_len[bix[i]] = (uint16_t)blen[i];
            b->key_gen[bix[i]] = g;
        }
        done += n;
        if (done >= next_sample || done == total) {
            bench_kv_stats s;
            stats_of(c, ctx, &s);
            uint64_t rss = bench_rss_bytes() - r->rss_base;
            if (s.fragmentation > r->frag_max)
                r->frag_max = s.fragmentation;
            double ratio = (double)rss / (double)live;
            if (ratio > r->churn_ratio_max)
                r->churn_ratio_max = ratio;
            if (rss > r->churn_rss_max)
                r->churn_rss_max = rss;
            r->churn_samples++;
            while (next_sample <= done)
                next_sample += every;
        }
    }
    r->churn_ops = done;
    r->churn_s = t / 1e9;
    r->churn_live_payload = live;
    r->churn_rss = bench_rss_bytes() - r->rss_base;
    stats_of(c, ctx, &r->st_churn);
    r->frag_final = r->st_churn.fragmentation;
    r->churn_written = written;
    r->churn_compacted = r->st_churn.compaction_bytes - st0.compaction_bytes;
    r->churn_inplace = r->st_churn.inplace_updates - st0.inplace_updates;
    r->churn_shrinks = r->st_churn.inplace_shrinks - st0.inplace_shrinks;
    /* check a spread sample of keys: length, bytes, presence */
    uint64_t ns = N < 262144 ? N : 262144;
    uint32_t *six = (uint32_t *)malloc(ns * sizeof(uint32_t));
    if (six) {
        for (uint64_t i = 0; i < ns; i++)
            six[i] = (uint32_t)(i * (N / ns));
        verify_keys(d, b, ctx, c, six, ns, stride, true, &r->churn_checked, &r->churn_bad,
                    &r->churn_misses);
        free(six);
    }
    r->copy_gbs = copy_rate_gbs();
    r->churned = 1;
    free(bix);
    free(blen);
}

/* Fold the CPU share of the phase that began at (*w, *c) into r; start the next one. */
static void note_share(bench_result *r, uint64_t *w, uint64_t *c)
{
    uint64_t w1 = dhps_mono_ns(), c1 = cpu_ns();
    if (w1 - *w > 50000000) { /* phases under 50 ms are too short to tell */
        double share = (double)(c1 - *c) / (double)(w1 - *w);
        if (share < r->cpu_share)
            r->cpu_share = share;
    }
    *w = dhps_mono_ns();
    *c = cpu_ns();
}

static void run_contender(const run_data *d, const bench_contender *c, bench_result *r)
{
    const opts *o = d->o;
    const bench_store_cfg *cfg = &d->cfg;
    const uint64_t N = cfg->keys;
    const size_t K = cfg->batch, B = cfg->value_bytes;
    const bool churn = o->churn > 0 && c->churn && d->churn_now;
    void *ctx = NULL;
    child_bufs b;
    memset(&b, 0, sizeof b);

    if (c->init && c->init(cfg, r->err))
        return;
    /* buffers first, touched, so they are in the RSS baseline */
    b.out_stride = cfg->max_value > B ? cfg->max_value : B;
    b.keys = xmap(K * sizeof(uint64_t), "batch keys");
    b.vals = xmap(K * (size_t)cfg->max_value, "batch values");
    b.out = xmap(K * b.out_stride, "output matrix");
    b.expect = xmap(cfg->max_value, "expected value");
    b.found = xmap((K + 63) / 64 * sizeof(uint64_t), "found mask");
    b.lens = xmap(K * sizeof(uint32_t), "lengths");
    b.key_gen = xmap(N * sizeof(uint32_t), "key generations");
    memset(b.keys, 0, K * sizeof(uint64_t));
    memset(b.vals, 0, K * (size_t)cfg->max_value);
    memset(b.out, 0, K * b.out_stride);
    memset(b.found, 0, (K + 63) / 64 * sizeof(uint64_t));
    memset(b.lens, 0, K * sizeof(uint32_t));
    memset(b.key_gen, 0, N * sizeof(uint32_t));
    if (churn) {
        b.key_len = xmap(N * sizeof(uint16_t), "key lengths");
        for (uint64_t k = 0; k < N; k++)
            b.key_len[k] = (uint16_t)B;
    }
    uint32_t *sample = xmap((N < 262144 ? N : 262144) * sizeof(uint32_t), "sample");
    memset(sample, 0, (N < 262144 ? N : 262144) * sizeof(uint32_t));

    r->rss_base = bench_rss_bytes();
    if (c->create(cfg, &ctx, r->err))
        return;

    /* load: keys in index order, generation 0, version 1 */
    uint64_t version = 1, t = 0;
    uint32_t gen = 0;
    r->cpu_share = 1;
    uint64_t pw = dhps_mono_ns(), pc = cpu_ns();
    fprintf(stderr, "  [%s] load %" PRIu64 " keys\n", c->id, N);
    for (uint64_t pos = 0; pos < N; pos += K) {
        size_t n = N - pos < K ? (size_t)(N - pos) : K;
        for (size_t i = 0; i < n; i++) {
            b.keys[i] = key_of(d->key_base, pos + i);
            bench_value_fill(b.vals + i * B, b.keys[i], 0, B);
        }
        uint64_t t0 = g_timer();
        int rc = c->upsert(ctx, b.keys, n, b.vals, B, NULL, 0, version, r->err);
        t += g_timer() - t0;
        if (rc)
            goto out;
    }
    r->built = N;
    r->build_s = t / 1e9;
    note_share(r, &pw, &pc);
    r->rss_loaded = bench_rss_bytes();
    r->anon_huge_kb = anon_huge_kb();
    stats_of(c, ctx, &r->st_loaded);
    r->lines_index = r->lines_data = NAN;
    if (c->lines)
        c->lines(ctx, &r->lines_index, &r->lines_data);

    fprintf(stderr, "  [%s] %" PRIu64 " lookups\n", c->id, o->ops);
    run_lookups(d, &b, ctx, c->lookup, &r->lookup_s, &r->lookup_misses, &r->lookup_checked,
                &r->lookup_bad);
    r->lookups = o->ops;
    note_share(r, &pw, &pc);
    if (c->lookup2) {
        fprintf(stderr, "  [%s] %" PRIu64 " lookups: %s\n", c->id, o->ops, c->lookup2_label);
        run_lookups(d, &b, ctx, c->lookup2, &r->lookup2_s, &r->lookup2_misses,
                    &r->lookup2_checked, &r->lookup2_bad);
        note_share(r, &pw, &pc);
    }

    /* updates: overwrites of existing keys, one new generation per batch */
    fprintf(stderr, "  [%s] %" PRIu64 " upserts\n", c->id, o->update_ops);
    t = 0;
    for (uint64_t pos = 0; pos < o->update_ops; pos += K) {
        size_t n = o->update_ops - pos < K ? (size_t)(o->update_ops - pos) : K;
        const uint32_t *ix = d->update_ix + pos;
        ++gen;
        for (size_t i = 0; i < n; i++) {
            b.keys[i] = key_of(d->key_base, ix[i]);
            bench_value_fill(b.vals + i * B, b.keys[i], gen, B);
        }
        uint64_t t0 = g_timer();
        int rc = c->upsert(ctx, b.keys, n, b.vals, B, NULL, 0, ++version, r->err);
        t += g_timer() - t0;
        if (rc)
            goto out;
        for (size_t i = 0; i < n; i++)
            b.key_gen[ix[i]] = gen;
    }
    r->updates = o->update_ops;
    r->update_s = t / 1e9;
    note_share(r, &pw, &pc);
    r->rss_updated = bench_rss_bytes();
    stats_of(c, ctx, &r->st_updated);
    {
        /* every key of a spread sample must hold the bytes of its last write */
        uint64_t ns = N < 262144 ? N : 262144;
        for (uint64_t i = 0; i < ns; i++)
            sample[i] = (uint32_t)(i * (N / ns));
        verify_keys(d, &b, ctx, c, sample, ns, B, false, &r->update_checked, &r->update_bad,
                    &r->update_misses);
    }

    if (churn) {
        run_churn(d, &b, ctx, c, r, &version, &gen);
        if (!r->churned)
            goto out;
    }
    r->rss_end = bench_rss_bytes();
    r->ok = 1;
out:
    if (c->destroy)
        c->destroy(ctx);
    if (c->fini)
        c->fini();
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static size_t read_all(int fd, void *p, size_t n)
{
    char *s = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, s + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Run c in a forked child; fills *r (r->ran = 0 and r->err set if the child died). */
static void run_forked(const run_data *d, const bench_contender *c, bench_result *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", c->id);
    snprintf(r->label, sizeof r->label, "%s", c->label);
    if (c->lookup2_label)
        snprintf(r->lookup2_label, sizeof r->lookup2_label, "%s", c->lookup2_label);
    int fds[2];
    if (pipe(fds)) {
        snprintf(r->err, BENCH_ERR_LEN, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(r->err, BENCH_ERR_LEN, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        bench_result cr = *r;
        run_contender(d, c, &cr);
        cr.ran = 1;
        int rc = write_all(fds[1], &cr, sizeof cr);
        fflush(stderr);
        _exit(rc ? 3 : 0);
    }
    close(fds[1]);
    bench_result got;
    size_t n = read_all(fds[0], &got, sizeof got);
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (n == sizeof got) {
        *r = got;
        return;
    }
    if (WIFSIGNALED(status))
        snprintf(r->err, BENCH_ERR_LEN, "child died of signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(r->err, BENCH_ERR_LEN, "child exited with status %d without a result",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* ---- entry ------------------------------------------------------------------------------ */

int bench_store_main(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o))
        return 2;

    /* which contenders */
    const bench_contender *all[STORE_CONTENDER_MAX];
    const char *names[STORE_CONTENDER_MAX] = {"dhps", "unordered_map", "absl", "rte_hash"};
    all[0] = store_dhps_contender(o.simd);
    all[1] = bench_peer_unordered_map();
    all[2] = bench_peer_absl();
    all[3] = bench_peer_rte_hash();
    bool want[STORE_CONTENDER_MAX] = {true, o.peers, o.peers, o.peers};
    if (o.only[0]) {
        memset(want, 0, sizeof want);
        char list[128];
        snprintf(list, sizeof list, "%s", o.only);
        char *save = NULL;
        for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int k = -1;
            for (int i = 0; i < STORE_CONTENDER_MAX; i++)
                if (!strcmp(t, names[i]))
                    k = i;
            if (k < 0) {
                fprintf(stderr, "dhps-bench store: --only: unknown contender '%s' "
                                "(dhps, unordered_map, absl, rte_hash)\n", t);
                return 2;
            }
            want[k] = true;
        }
    }
    if (want[0] && !all[0]) {
        if (o.only[0]) {
            fprintf(stderr, "dhps-bench store: built without the dhps store library "
                            "(DHPS_BENCH_NO_STORE): only peers can run\n");
            return 2;
        }
        fprintf(stderr, "dhps-bench store: note: built without the dhps store library; "
                        "running peers only\n");
        want[0] = false;
    }
    if (o.simd[0] && !want[0]) {
        fprintf(stderr, "dhps-bench store: --simd applies to dhps, which is not running\n");
        return 2;
    }

    run_data d;
    memset(&d, 0, sizeof d);
    d.o = &o;
    d.cfg.keys = o.keys;
    d.cfg.value_bytes = (uint32_t)o.value_bytes;
    d.cfg.batch = (uint32_t)o.batch;
    d.cfg.max_value = o.churn > 0 && want[0] ? (o.value_bytes > 512 ? (uint32_t)o.value_bytes : 512)
                                             : (uint32_t)o.value_bytes;
    d.cfg.huge_pages = o.huge;
    d.cfg.frag_goal = o.frag_goal;
    if (o.cpu_clock)
        g_timer = cpu_ns;

    const char *simd = store_dhps_simd_name(o.simd);
    char thp[32];
    store_thp_mode(thp, sizeof thp);
    double load[3] = {NAN, NAN, NAN};
    if (getloadavg(load, 3) < 1)
        load[0] = NAN;
    d.loadavg = load[0];
    fprintf(stderr, "dhps-bench store: generating %" PRIu64 " keys, %" PRIu64 " lookups, %" PRIu64
                    " upserts (%s)\n", o.keys, o.ops, o.update_ops, o.dist);
    uint64_t t0 = dhps_mono_ns();
    gen_data(&d);
    fprintf(stderr, "dhps-bench store: streams ready in %.2f s\n", (dhps_mono_ns() - t0) / 1e9);

    /* rounds x contenders, round-robin; res[] keeps round 1 with median timings */
    bench_result res[STORE_CONTENDER_MAX];
    bench_result *rounds = calloc(o.rounds * STORE_CONTENDER_MAX, sizeof *rounds);
    if (!rounds) {
        fprintf(stderr, "dhps-bench store: out of memory\n");
        return 1;
    }
    size_t nres = 0;
    int status = 0;
    for (uint64_t rd = 0; rd < o.rounds; rd++) {
        d.churn_now = rd == 0;
        nres = 0;
        for (int i = 0; i < STORE_CONTENDER_MAX; i++) {
            if (!want[i])
                continue;
            if (o.rounds > 1)
                fprintf(stderr, "dhps-bench store: round %" PRIu64 "/%" PRIu64 ": running %s\n",
                        rd + 1, o.rounds, all[i]->label);
            else
                fprintf(stderr, "dhps-bench store: running %s\n", all[i]->label);
            bench_result *r = &rounds[rd * STORE_CONTENDER_MAX + nres++];
            run_forked(&d, all[i], r);
            derived x;
            store_derive(&d, r, &x);
            if (!r->ok) {
                fprintf(stderr, "dhps-bench store: %s FAILED: %s\n", r->label, r->err);
                status = 1;
            } else if (x.bad || x.misses) {
                fprintf(stderr, "dhps-bench store: %s returned %" PRIu64 " wrong values and "
                                "missed %" PRIu64 " keys\n", r->label, x.bad, x.misses);
                status = 1;
            } else if (o.rounds > 1) {
                fprintf(stderr, "  [%s] lookup %.2f Mkeys/s, update %.2f Mkeys/s\n", r->id,
                        x.lookup, x.update);
            }
        }
    }
    for (size_t i = 0; i < nres; i++)
        store_merge_rounds(&res[i], rounds, i, o.rounds);
    if (o.json)
        store_print_json(stdout, &d, res, nres, simd);
    else
        store_print_human(stdout, &d, res, nres, simd, thp);
    free(rounds);
    bench_unmap(d.lookup_ix, o.ops * sizeof(uint32_t));
    bench_unmap(d.update_ix, o.update_ops * sizeof(uint32_t));
    return status;
}

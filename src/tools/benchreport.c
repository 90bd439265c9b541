/*
 * dhps bench's report (bench.h): every round's figures per store, then the medians and
 * ranges over the rounds and the ratios of dhps to each peer, human or JSON. Per store:
 * keys/s, batch latency quantiles, server cores (server CPU seconds / wall seconds of the
 * measured window), keys/s per server core (keys / server CPU seconds), client CPU per
 * key. A ratio's median is the median of the rounds' own ratios (each round measures the
 * stores back to back, so its ratio is the least disturbed by a load that drifts).
 */
#define _GNU_SOURCE
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

const char *const bench_store_names[BENCH_STORES] = {"dhps", "redis", "memcached"};

/* Issue 14's targets: dhps keys/s >= 5x Redis's and >= 2x memcached's, p99 <= 0.07 of
 * Redis's. */
#define TARGET_X_REDIS 5.0
#define TARGET_X_MC 2.0
#define TARGET_P99_REDIS 0.07

/* ---- per-run figures (negative: unknown) ------------------------------------------------ */

static double kmps(const bench_meas *m)
{
    return m->r.seconds > 0 ? (double)m->r.keys / m->r.seconds / 1e6 : 0;
}
static double q_us(const bench_meas *m, double q) { return tools_hist_quantile(&m->r.hist, q) / 1e3; }
static double p99(const bench_meas *m) { return q_us(m, 0.99); }
static double srv_cores(const bench_meas *m)
{
    return m->server_cpu_s >= 0 && m->window_s > 0 ? m->server_cpu_s / m->window_s : -1;
}
/* Mkeys per server CPU second: keys/s divided by server cores over the same window. */
static double per_core(const bench_meas *m)
{
    return m->server_cpu_s > 0 ? (double)m->r.keys / m->server_cpu_s / 1e6 : -1;
}
static double cli_ns_key(const bench_meas *m)
{
    return m->r.keys ? m->client_cpu_s * 1e9 / (double)m->r.keys : -1;
}

/* a / b of two known positive figures, else -1. */
static double ratio(double a, double b) { return a >= 0 && b > 0 ? a / b : -1; }

typedef double (*figure_fn)(const bench_meas *);

/* ---- medians ------------------------------------------------------------------------- */

typedef struct span {
    double med, min, max;
    uint32_t n; /* known values; 0: unknown */
} span;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median (mean of the middle two for an even count), min and max of the known (>= 0)
 * values of v[0..n). */
static span span_of(const double *v, uint32_t n)
{
    double k[BENCH_ROUNDS_MAX];
    span s = {0};
    for (uint32_t i = 0; i < n; i++)
        if (v[i] >= 0)
            k[s.n++] = v[i];
    if (!s.n)
        return s;
    qsort(k, s.n, sizeof k[0], cmp_double);
    s.min = k[0];
    s.max = k[s.n - 1];
    s.med = s.n % 2 ? k[s.n / 2] : (k[s.n / 2 - 1] + k[s.n / 2]) / 2;
    return s;
}

static span store_span(const bench_opts *o, const bench_meas (*m)[BENCH_STORES], int s,
                       figure_fn f)
{
    double v[BENCH_ROUNDS_MAX];
    for (uint32_t r = 0; r < o->rounds; r++)
        v[r] = m[r][s].ran ? f(&m[r][s]) : -1;
    return span_of(v, o->rounds);
}

/* The rounds' own ratios f(dhps) / f(peer). */
static span ratio_span(const bench_opts *o, const bench_meas (*m)[BENCH_STORES], int peer,
                       figure_fn f)
{
    double v[BENCH_ROUNDS_MAX];
    for (uint32_t r = 0; r < o->rounds; r++)
        v[r] = m[r][BENCH_DHPS].ran && m[r][peer].ran
                   ? ratio(f(&m[r][BENCH_DHPS]), f(&m[r][peer])) : -1;
    return span_of(v, o->rounds);
}

/* The round whose dhps keys/s is the median (the lower middle one for an even count). */
static uint32_t median_round(const bench_opts *o, const bench_meas (*m)[BENCH_STORES])
{
    uint32_t idx[BENCH_ROUNDS_MAX];
    for (uint32_t r = 0; r < o->rounds; r++)
        idx[r] = r;
    for (uint32_t i = 1; i < o->rounds; i++) /* insertion sort by dhps keys/s */
        for (uint32_t j = i; j > 0 && kmps(&m[idx[j - 1]][0]) > kmps(&m[idx[j]][0]); j--) {
            uint32_t t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    return idx[(o->rounds - 1) / 2];
}

/* ---- human --------------------------------------------------------------------------- */

static void span_text(char *out, size_t cap, span s, const char *fmt, bool range)
{
    char a[24], b[24], c[24];
    if (!s.n) {
        snprintf(out, cap, "-");
        return;
    }
    snprintf(a, sizeof a, fmt, s.med);
    if (!range) {
        snprintf(out, cap, "%s", a);
        return;
    }
    snprintf(b, sizeof b, fmt, s.min);
    snprintf(c, sizeof c, fmt, s.max);
    snprintf(out, cap, "%s [%s-%s]", a, b, c);
}

static void opt_text(char *out, size_t cap, double v, const char *fmt)
{
    if (v < 0)
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, fmt, v);
}

static void print_row(const bench_opts *o, uint32_t round, const char *name, const bench_meas *m)
{
    const wl_result *r = &m->r;
    char cores[16], pc[16], ck[16];
    opt_text(cores, sizeof cores, srv_cores(m), "%.2f");
    opt_text(pc, sizeof pc, per_core(m), "%.3f");
    opt_text(ck, sizeof ck, cli_ns_key(m), "%.0f");
    if (o->rounds > 1)
        printf("  %5u", round + 1);
    printf("  %-10s %8.3f %9.0f %8.0f %8.0f %9.0f %7llu %8llu %9s %12s %10s\n", name, kmps(m),
           r->seconds > 0 ? (double)r->batches / r->seconds : 0.0, q_us(m, 0.5), p99(m),
           q_us(m, 0.999), (unsigned long long)r->errors, (unsigned long long)r->missing, cores,
           pc, ck);
}

static void print_ratios(const bench_opts *o, const bench_meas (*m)[BENCH_STORES], int peer)
{
    bool range = o->rounds > 1;
    char k[80], c[80], p[80];
    span ks = ratio_span(o, m, peer, kmps);
    span_text(k, sizeof k, ks, "%.2fx", range);
    span_text(c, sizeof c, ratio_span(o, m, peer, per_core), "%.2fx", range);
    span ps = ratio_span(o, m, peer, p99);
    span_text(p, sizeof p, ps, "%.3f", range);
    const char *name = bench_store_names[peer];
    double tx = peer == BENCH_REDIS ? TARGET_X_REDIS : TARGET_X_MC;
    printf("  dhps / %s: keys/s %s (target >= %.0fx: %s); keys/s per server core %s; "
           "p99 %s of %s's", name, k, tx, !ks.n ? "unknown" : ks.med >= tx ? "met" : "not met",
           c, p, name);
    if (peer == BENCH_REDIS)
        printf(" (target <= %.2f: %s)", TARGET_P99_REDIS,
               !ps.n ? "unknown" : ps.med <= TARGET_P99_REDIS ? "met" : "not met");
    printf("\n");
}

void bench_print_human(const bench_opts *o, const bench_meas (*m)[BENCH_STORES])
{
    int ns = o->peers ? BENCH_STORES : 1;
    printf("dhps bench: %s, %s keys, %u threads, batches of %u keys, values %u B, %s loop%s, "
           "%.1f s each\n", o->update_share >= 1 ? "updates" : o->update_share > 0 ? "mixed"
                                                                                    : "lookups",
           o->zipf > 0 ? "zipf" : "uniform", o->threads, o->batch, o->dim * 4,
           o->rate > 0 ? "open" : "closed", o->rate > 0 ? " (rate in batches/s)" : "",
           o->seconds);
    printf("  %u server thread%s per store; ", o->server_workers, o->server_workers > 1 ? "s" : "");
    if (o->server_cpus[0])
        printf("servers on cpu %s, clients on %s", o->server_cpus,
               o->client_cpus[0] ? o->client_cpus : "any");
    else
        printf("servers and clients not pinned");
    if (o->rounds > 1)
        printf("; %u rounds, each round's store order rotated", o->rounds);
    if (o->tgt.spin_set)
        printf("; dhps client spin %u us", o->tgt.spin_us);
    printf("\n");
    if (o->rounds > 1)
        printf("  round");
    printf("  %-10s %8s %9s %8s %8s %9s %7s %8s %9s %12s %10s\n", "store", "Mkeys/s",
           "batches/s", "p50 us", "p99 us", "p99.9 us", "errors", "missing", "srv cores",
           "Mkeys/s/core", "cli ns/key");
    for (uint32_t r = 0; r < o->rounds; r++)
        for (int i = 0; i < ns; i++) {
            int s = bench_order(r, i, ns);
            if (m[r][s].ran)
                print_row(o, r, bench_store_names[s], &m[r][s]);
        }
    if (o->rounds > 1) {
        printf("  over %u rounds, median [min-max]:\n", o->rounds);
        printf("  %-10s %-26s %-26s %s\n", "store", "Mkeys/s", "p99 us",
               "Mkeys/s per server core");
        for (int s = 0; s < ns; s++) {
            char k[80], p[80], c[80];
            span_text(k, sizeof k, store_span(o, m, s, kmps), "%.3f", true);
            span_text(p, sizeof p, store_span(o, m, s, p99), "%.0f", true);
            span_text(c, sizeof c, store_span(o, m, s, per_core), "%.3f", true);
            printf("  %-10s %-26s %-26s %s\n", bench_store_names[s], k, p, c);
        }
    }
    if (o->peers) {
        if (o->rounds > 1)
            printf("  ratios: median of the rounds' own ratios [min-max]\n");
        print_ratios(o, m, BENCH_REDIS);
        print_ratios(o, m, BENCH_MC);
    }
}

/* ---- JSON ---------------------------------------------------------------------------- */

static void jnum(const char *key, double v, const char *fmt)
{
    printf(",\"%s\":", key);
    if (v < 0)
        printf("null");
    else
        printf(fmt, v);
}

/* The server/client CPU fields of one run (each after a comma). */
static void json_cpu(const bench_meas *m)
{
    jnum("server_cpu_s", m->server_cpu_s, "%.3f");
    jnum("server_cores", srv_cores(m), "%.3f");
    jnum("keys_mps_per_server_core", per_core(m), "%.4f");
    jnum("client_cpu_ns_per_key", cli_ns_key(m), "%.1f");
}

static void json_store(const bench_meas *m)
{
    const wl_result *r = &m->r;
    printf("{\"keys_mps\":%.4f,\"batches_per_s\":%.1f,\"seconds\":%.3f,\"p50_us\":%.1f,"
           "\"p99_us\":%.1f,\"p999_us\":%.1f,\"errors\":%llu,\"missing\":%llu", kmps(m),
           r->seconds > 0 ? (double)r->batches / r->seconds : 0.0, r->seconds, q_us(m, 0.5),
           p99(m), q_us(m, 0.999), (unsigned long long)r->errors,
           (unsigned long long)r->missing);
    json_cpu(m);
    printf("}");
}

static void json_span(const char *key, span s, const char *fmt)
{
    printf("\"%s\":", key);
    if (!s.n) {
        printf("null");
        return;
    }
    printf("{\"median\":");
    printf(fmt, s.med);
    printf(",\"min\":");
    printf(fmt, s.min);
    printf(",\"max\":");
    printf(fmt, s.max);
    printf("}");
}

static void json_str_or_null(const char *key, const char *v)
{
    if (v[0])
        printf(",\"%s\":\"%s\"", key, v);
    else
        printf(",\"%s\":null", key);
}

void bench_print_json(const bench_opts *o, const bench_meas (*m)[BENCH_STORES])
{
    int ns = o->peers ? BENCH_STORES : 1;
    uint32_t mr = median_round(o, m);
    const bench_meas *d = &m[mr][BENCH_DHPS];
    const wl_result *r = &d->r;
    printf("{\"store\":\"dhps\",\"mode\":\"%s\",\"dist\":\"%s\",\"loop\":\"%s\",\"threads\":%u,"
           "\"batch\":%u,\"value_bytes\":%u,\"keys\":%llu,\"seconds\":%.3f,\"keys_mps\":%.4f,"
           "\"batches_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"errors\":%llu,\"missing\":%llu",
           o->update_share >= 1 ? "update" : o->update_share > 0 ? "mixed" : "lookup",
           o->zipf > 0 ? "zipf" : "uniform", o->rate > 0 ? "open" : "closed", o->threads,
           o->batch, o->dim * 4, (unsigned long long)o->keys, r->seconds, kmps(d),
           r->seconds > 0 ? (double)r->batches / r->seconds : 0.0, q_us(d, 0.5), p99(d),
           q_us(d, 0.999), (unsigned long long)r->errors, (unsigned long long)r->missing);
    json_cpu(d);
    printf(",\"server_workers\":%u", o->server_workers);
    if (o->tgt.spin_set)
        printf(",\"spin_us\":%u", o->tgt.spin_us);
    else
        printf(",\"spin_us\":null");
    json_str_or_null("server_cpus", o->server_cpus);
    json_str_or_null("client_cpus", o->client_cpus);
    printf(",\"round\":%u", mr + 1);
    if (ns > 1) {
        printf(",\"peers\":{");
        for (int s = 1; s < ns; s++) {
            printf("%s\"%s\":", s > 1 ? "," : "", bench_store_names[s]);
            json_store(&m[mr][s]);
        }
        printf("}");
    }
    printf(",\"rounds\":[");
    for (uint32_t rd = 0; rd < o->rounds; rd++) {
        printf("%s{\"round\":%u,\"order\":[", rd ? "," : "", rd + 1);
        for (int i = 0; i < ns; i++)
            printf("%s\"%s\"", i ? "," : "", bench_store_names[bench_order(rd, i, ns)]);
        printf("]");
        for (int s = 0; s < ns; s++) {
            printf(",\"%s\":", bench_store_names[s]);
            json_store(&m[rd][s]);
        }
        printf("}");
    }
    printf("],\"summary\":{\"rounds\":%u,\"median_round\":%u", o->rounds, mr + 1);
    for (int s = 0; s < ns; s++) {
        printf(",\"%s\":{", bench_store_names[s]);
        json_span("keys_mps", store_span(o, m, s, kmps), "%.4f");
        printf(",");
        json_span("p99_us", store_span(o, m, s, p99), "%.1f");
        printf(",");
        json_span("keys_mps_per_server_core", store_span(o, m, s, per_core), "%.4f");
        printf("}");
    }
    for (int s = 1; s < ns; s++) {
        printf(",\"dhps_over_%s\":{", bench_store_names[s]);
        json_span("keys_mps", ratio_span(o, m, s, kmps), "%.3f");
        printf(",");
        json_span("keys_mps_per_server_core", ratio_span(o, m, s, per_core), "%.3f");
        printf(",");
        json_span("p99_us", ratio_span(o, m, s, p99), "%.4f");
        printf("}");
    }
    printf("}}\n");
}

/*
 * dhps-bench subcommands, and the few helpers they share. Each subcommand is one
 * function with a main()-like signature; bench/main.c dispatches on argv[1]. argv[0] of
 * the call is the subcommand name. Returns the process exit status (0 ok, 1 a contender
 * failed or returned wrong data, 2 usage error).
 */
#ifndef DHPS_BENCH_H
#define DHPS_BENCH_H

#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- helpers shared by the subcommands ------------------------------------------ */

/* qsort comparator of doubles, ascending (NaNs compare equal to everything). */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median, min and max of v[0..n) (n >= 1; v is sorted in place): out = {median, min,
 * max}; an even n's median is the mean of the middle two. */
static inline void bench_spread(double *v, int n, double out[3])
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    out[0] = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    out[1] = v[0];
    out[2] = v[n - 1];
}

/* ---- subcommands ----------------------------------------------------------------- */

/* `dhps-bench store`: the storage engine beside its peers (bench/store_bench.c). */
int bench_store_main(int argc, char **argv);

/* `dhps-bench route`: one routing decision (pick + report) beside trivial policies
 * (bench/route_bench.c). */
int bench_route_main(int argc, char **argv);

/* `dhps-bench sync`: replica catch-up between two embedded servers beside a snapshot
 * load of the same data (bench/sync_bench.c). */
int bench_sync_main(int argc, char **argv);

/* `dhps-bench wal`: the update log's appends per policy, pwrite vs io_uring; --server:
 * update throughput with the log on as a ratio to off (bench/wal_bench.c). */
int bench_wal_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif

/*
 * dhps bench's parts, private to src/tools: the command, its options and rounds
 * (bench.c), the peer stores it compares against (benchpeers.c), and the report of the
 * rounds (benchreport.c). Method and output: docs/tools.md "dhps bench".
 *
 * A round measures every store once, one after the other, in an order that rotates from
 * round to round (round r starts at store r mod the number of stores), so a load that
 * drifts during the run does not always land on the same store. Around each store's
 * wl_run the bench reads the store's server CPU time (all threads of its process) and
 * its own, so a figure per server core comes with every keys/s.
 */
#ifndef DHPS_TOOLS_BENCH_H
#define DHPS_TOOLS_BENCH_H

#include <sched.h> /* cpu_set_t: includers define _GNU_SOURCE before any system header */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "toolsclient.h"
#include "workload.h"

enum { BENCH_DHPS, BENCH_REDIS, BENCH_MC, BENCH_STORES };
#define BENCH_ROUNDS_MAX 50

extern const char *const bench_store_names[BENCH_STORES]; /* "dhps", "redis", "memcached" */

typedef struct bench_opts {
    tools_target tgt;
    bool own, peers, json;
    const char *table;
    uint32_t dim, batch, threads, shards, server_workers, rounds;
    uint64_t keys, timeout_ms;
    double seconds, zipf, rate, update_share;
    char server_cpus[256]; /* the servers' CPU list, "" = not pinned */
    char client_cpus[256]; /* the client threads' CPU list, "" = not pinned */
} bench_opts;

/* One store's run in one round. */
typedef struct bench_meas {
    wl_result r;
    double window_s;     /* wall time between the CPU readings around wl_run */
    double server_cpu_s; /* the server process's CPU time over the window; < 0: unknown */
    double client_cpu_s; /* this process's CPU time over the window (the client threads) */
    bool ran;
} bench_meas;

/* The store run at position i of round r (0-based) among n stores: the rotation. */
static inline int bench_order(uint32_t r, int i, int n) { return (int)((r + (uint32_t)i) % (uint32_t)n); }

/* ---- benchpeers.c ----------------------------------------------------------------------- */

/* fork + exec argv, stdout and stderr to log (NULL: /dev/null), pinned to cpus (NULL: the
 * caller's mask), killed (SIGTERM) when the caller dies. Returns the pid or -1. */
pid_t bench_spawn(char *const argv[], const char *log, const cpu_set_t *cpus);

/* SIGTERM pid, wait up to 2 s, then SIGKILL; reaps it. pid <= 0 is a no-op. */
void bench_stop_child(pid_t pid);

/* A peer store: its process, its port, and the workload backend that drives it (b.arg
 * points at this struct: keep it in place while b is in use). */
typedef struct bench_peer {
    pid_t pid;
    uint16_t port;
    uint32_t row_bytes, batch;
    wl_backend b;
} bench_peer;

/* Start redis-server (io-threads = workers, threaded reads too when workers > 1; no
 * persistence) as peers[0] and memcached -t workers as peers[1] on 127.0.0.1 ports
 * picked free, pinned to cpus (NULL: not pinned), and wait until both answer (5 s each).
 * row_bytes and batch size the backends' buffers. Returns 0, or a negative error after
 * saying what failed on stderr (whatever started is stopped). */
int bench_peers_start(bench_peer peers[2], uint32_t workers, const cpu_set_t *cpus,
                      uint32_t row_bytes, uint32_t batch);

/* Load keys 0..n-1 with the sample rows (dim floats) into both peers, batch by batch.
 * Returns 0 or the first negative error. */
int bench_peers_load(bench_peer peers[2], uint64_t n, uint32_t dim);

/* Stop both peers' processes (bench_stop_child). */
void bench_peers_stop(bench_peer peers[2]);

/* ---- benchreport.c ---------------------------------------------------------------------- */

/* m[r][s]: round r, store s (BENCH_DHPS...; the peers only with o->peers). Human: every
 * round's lines in run order, then (rounds > 1) each store's median and min-max, then the
 * ratios dhps / redis and dhps / memcached against the targets. */
void bench_print_human(const bench_opts *o, const bench_meas (*m)[BENCH_STORES]);

/* One JSON object on stdout: the median round's figures at the top level (and in
 * "peers"), every round in "rounds", medians and ranges in "summary". */
void bench_print_json(const bench_opts *o, const bench_meas (*m)[BENCH_STORES]);

#endif

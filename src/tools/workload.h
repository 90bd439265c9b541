/*
 * Lookup/update workloads for `dhps up` and `dhps bench`: T threads issue batches of
 * keys drawn uniformly or from a Zipf distribution over [0, nkeys) against a backend
 * (the dhps client, or a peer store for comparison), closed loop (each thread sends its
 * next batch when the previous one returns) or open loop (batches scheduled at a fixed
 * total rate; latency counted from the scheduled start, so queueing behind a slow
 * batch is measured rather than hidden). Each thread's batches are drawn before the run
 * (a pool of up to 1024 batches, about twice the key space over all threads) and
 * replayed in a cycle, so the draws cost the client nothing while it is measured.
 * Private to src/tools.
 */
#ifndef DHPS_TOOLS_WORKLOAD_H
#define DHPS_TOOLS_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "tools.h"

/* A store the workload drives. Thread model: open runs once per thread and returns a
 * per-thread handle; lookup/update run on that thread only. All return 0 or a negative
 * error (counted, the run goes on). lookup fills out (n rows of row_bytes) and sets
 * *missing to the number of keys not found. */
typedef struct wl_backend {
    const char *name;
    void *(*open)(void *arg);
    int (*lookup)(void *th, const uint64_t *keys, uint32_t n, void *out, uint32_t *missing);
    int (*update)(void *th, const uint64_t *keys, uint32_t n, const void *rows);
    void (*close)(void *th);
    void *arg;
} wl_backend;

typedef struct wl_params {
    uint64_t nkeys;       /* key space [0, nkeys) (keys as stored: key = rank) */
    uint32_t row_bytes;   /* bytes of one value */
    uint32_t batch;       /* keys per batch */
    uint32_t threads;
    double seconds;
    double zipf;          /* 0 = uniform, else the Zipf exponent */
    double rate;          /* open loop: batches per second over all threads; 0 = closed */
    double update_share;  /* share of batches that are updates (0..1) */
    uint64_t seed;
    bool distinct;        /* draw distinct keys within a batch (redis/memcached return
                             one value per distinct key; dhps does not care) */
} wl_params;

typedef struct wl_result {
    uint64_t batches, keys, lookups, updates, errors, missing;
    double seconds;
    tools_hist hist;      /* batch latency, ns */
    tools_hist hist_lookup, hist_update;
} wl_result;

/* Run the workload; fills *r. Returns 0, or -ENOMEM / -errno (threads). Drawing the
 * key pools comes first and takes time too (about 0.1 s per million keys drawn). */
int wl_run(const wl_params *p, const wl_backend *b, wl_result *r);

/* Fill buf[0..n) with keys for a batch (uniform or Zipf rank). With p->distinct and a
 * scratch table seen[0..seen_mask] (a power of two >= 2n slots), keys within the batch
 * are distinct (up to 64 redraws per key, so a tiny hot set still terminates). */
void wl_keys(const wl_params *p, const dhps_zipf *z, uint64_t *rng, uint64_t *buf, uint32_t n,
             uint64_t *seen, uint32_t seen_mask);

#endif

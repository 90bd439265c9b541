/*
 * Small internal helpers shared by the dhps libraries, the dhps tool, tests and benches.
 * Not public API (include/dhps/ holds that): anything linking dhps_common can include
 * "util.h". The clock and random helpers are static inline, so they cost nothing on hot
 * paths; the Zipf sampler lives in util.c.
 */
#ifndef DHPS_COMMON_UTIL_H
#define DHPS_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

/* Nanoseconds on clock `id` (CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_THREAD_CPUTIME_ID).
 * Thread-safe; one clock_gettime (a vDSO call for the first two). */
static inline uint64_t dhps_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Monotonic nanoseconds: the clock for deadlines, timeouts and durations. */
static inline uint64_t dhps_mono_ns(void) { return dhps_clock_ns(CLOCK_MONOTONIC); }

/* splitmix64: advance *state and return the next pseudo-random word of its stream. */
static inline uint64_t dhps_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) from the splitmix64 stream *state (53 random bits). */
static inline double dhps_rand_unit(uint64_t *state)
{
    return (double)(dhps_splitmix64(state) >> 11) * 0x1.0p-53;
}

/* Zipf(s) sampler over ranks [0, n) by rejection-inversion (Hoermann and Derflinger
 * 1996): P(rank r) proportional to (r + 1)^-s, O(1) expected time per sample, any n >= 1
 * (0 is taken as 1), s > 0 (s = 1 allowed). Rank 0 is the most popular; callers scramble
 * ranks into keys. Init once; next is pure given *rng (a splitmix64 state), so one
 * dhps_zipf may be shared by threads that each have their own rng. */
typedef struct dhps_zipf {
    double s, n, h_x1, h_n, cut;
} dhps_zipf;
void dhps_zipf_init(dhps_zipf *z, uint64_t n, double s);
uint64_t dhps_zipf_next(const dhps_zipf *z, uint64_t *rng);

/* Are all n fp32 (f16: fp16) values at p finite (exponent bits not all ones: no NaN, no
 * +-inf)? Bit tests, so no floating-point traps and any alignment. */
static inline bool dhps_f32_all_finite(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, b + 4 * i, 4);
        bad |= (uint32_t)((x & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

static inline bool dhps_f16_all_finite(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t x;
        memcpy(&x, b + 2 * i, 2);
        bad |= (uint32_t)((x & 0x7c00u) == 0x7c00u);
    }
    return !bad;
}

/* A log rate limit: at most `per_s` lines a second; the lines left out are counted and
 * the next line that goes out reports them. Not thread-safe: one per thread (or under the
 * caller's lock). Zero-initialise. */
typedef struct dhps_ratelimit {
    uint64_t window_ns, suppressed;
    uint32_t lines;
} dhps_ratelimit;

/* May a line be logged now? When true, more[0..morelen) gets what ends the line: "" or
 * "; N more not logged" (the lines refused since the last one allowed). */
static inline bool dhps_ratelimit_allow(dhps_ratelimit *r, uint32_t per_s, char *more,
                                        size_t morelen)
{
    uint64_t now = dhps_mono_ns();
    if (now - r->window_ns > 1000000000ull) {
        r->window_ns = now;
        r->lines = 0;
    }
    if (r->lines >= per_s) {
        r->suppressed++;
        return false;
    }
    r->lines++;
    if (r->suppressed)
        snprintf(more, morelen, "; %llu more not logged", (unsigned long long)r->suppressed);
    else if (morelen)
        more[0] = 0;
    r->suppressed = 0;
    return true;
}

/* True when process `pid` holds a TCP socket listening on `port` (IPv4 or IPv6, any
 * address) in the caller's network namespace: tells a child that bound its port from
 * another process answering there (a port picked free, then taken). Reads /proc; false
 * when the process is gone or its fds are not readable. Thread-safe. (proc.c) */
bool dhps_pid_listens_tcp(pid_t pid, uint16_t port);

/* CPU time process `pid` has used so far, user + system over all its threads (live and
 * exited; not its children): /proc/PID/stat fields utime and stime, in clock ticks
 * (sysconf(_SC_CLK_TCK), 100 a second on Linux: 10 ms resolution), written to *ns.
 * Returns 0, -EINVAL (pid <= 0), -ESRCH (no such process, or a zombie: its times are no
 * longer counted there), -EPROTO (a stat line it cannot read). Thread-safe. (proc.c) */
int dhps_pid_cpu_ns(pid_t pid, uint64_t *ns);

#endif

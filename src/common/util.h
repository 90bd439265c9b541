/*
 * Small internal helpers shared by the dhps libraries, the dhps tool, tests and benches.
 * Not public API (include/dhps/ holds that): anything linking dhps_common can include
 * "util.h". Everything here is static inline, so it costs nothing on hot paths.
 */
#ifndef DHPS_COMMON_UTIL_H
#define DHPS_COMMON_UTIL_H

#include <stdint.h>
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

#endif

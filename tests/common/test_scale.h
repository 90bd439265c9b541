/* test_scale.h: one time scale for every test deadline that is not itself under test,
 * and the margin for the ones that are.
 *
 * A deadline in a test is one of two things:
 *   - not the thing under test (a lookup that should simply succeed, a wait for a server
 *     to come up): then it must be generous, dhps_test_ms(base) with a native base;
 *   - the thing under test (returns at the deadline, a window closes): then the bound
 *     the test asserts is derived from the same scale, never a fixed number.
 *
 * The scale is the product of
 *   - DHPS_TEST_TIME_SCALE (a number, default 1), set by hand or by scripts/test.sh;
 *   - the build: 3 under ASan, 5 under TSan (their measured slow-down on dhps's tests);
 *   - the load: the 1-minute load average per online CPU when above 1 (a shared 2-core
 *     machine at load 8 gives each runnable thread about a quarter of a core).
 * It is computed once per process and capped at 100. Waits in tests are on events
 * (poll until a condition holds, up to a scaled bound), not fixed sleeps. */
#ifndef DHPS_TEST_SCALE_H
#define DHPS_TEST_SCALE_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define DHPS_TEST_BUILD_SCALE 3.0
#elif defined(__SANITIZE_THREAD__)
#define DHPS_TEST_BUILD_SCALE 5.0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DHPS_TEST_BUILD_SCALE 3.0
#elif __has_feature(thread_sanitizer)
#define DHPS_TEST_BUILD_SCALE 5.0
#endif
#endif
#ifndef DHPS_TEST_BUILD_SCALE
#define DHPS_TEST_BUILD_SCALE 1.0
#endif

static inline double dhps_test_scale(void)
{
    static double cached; /* read and written atomically: tests call this from threads */
    double c;
    __atomic_load(&cached, &c, __ATOMIC_RELAXED);
    if (c > 0)
        return c;
    double s = 1.0;
    const char *e = getenv("DHPS_TEST_TIME_SCALE");
    if (e && *e) {
        double v = strtod(e, NULL);
        if (v >= 1.0)
            s = v;
    }
    s *= DHPS_TEST_BUILD_SCALE;
    double load[1];
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1)
        ncpu = 1;
    if (getloadavg(load, 1) == 1 && load[0] / (double)ncpu > 1.0)
        s *= load[0] / (double)ncpu;
    if (s > 100.0)
        s = 100.0;
    __atomic_store(&cached, &s, __ATOMIC_RELAXED);
    return s;
}

/* A native bound of base_ms, scaled. */
static inline uint32_t dhps_test_ms(uint32_t base_ms)
{
    double v = (double)base_ms * dhps_test_scale();
    return v > 4e9 ? 4000000000u : (uint32_t)v;
}

static inline uint64_t dhps_test_us(uint64_t base_us)
{
    return (uint64_t)((double)base_us * dhps_test_scale());
}

static inline uint64_t dhps_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait on an event: poll COND every 2 ms for up to dhps_test_ms(base_ms); true when it held. */
#define DHPS_TEST_WAIT_FOR(cond, base_ms)                                                \
    ({                                                                                   \
        uint64_t dhps_tw_end_ = dhps_test_now_ms() + dhps_test_ms(base_ms);              \
        int dhps_tw_ok_ = 0;                                                             \
        for (;;) {                                                                       \
            if (cond) {                                                                  \
                dhps_tw_ok_ = 1;                                                         \
                break;                                                                   \
            }                                                                            \
            if (dhps_test_now_ms() >= dhps_tw_end_)                                      \
                break;                                                                   \
            struct timespec dhps_tw_ts_ = {0, 2000000};                                  \
            nanosleep(&dhps_tw_ts_, NULL);                                               \
        }                                                                                \
        dhps_tw_ok_;                                                                     \
    })

#endif

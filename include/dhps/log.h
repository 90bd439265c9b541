/*
 * Logging by module and level, free when off: a disabled level costs one load and a
 * predictable branch; arguments are not evaluated. Output goes to stderr, one line
 * per call, prefixed "<ISO-8601 UTC time with ms> dhps <module> <level>:", e.g.
 * "2026-12-04T06:49:04.123Z dhps rpc warn: ...". The level comes from DHPS_LOG
 * (error|warn|info|debug, default warn) at the first call, or dhps_log_set_level().
 */
#ifndef DHPS_LOG_H
#define DHPS_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

enum dhps_log_level { DHPS_LOG_ERROR = 0, DHPS_LOG_WARN = 1, DHPS_LOG_INFO = 2, DHPS_LOG_DEBUG = 3 };

extern int dhps_log_level_; /* -1 until initialised */

/* Set the level for every module. Thread-safe (a relaxed store). */
void dhps_log_set_level(int level);
/* Implementation of DHPS_LOG; call the macro instead. */
int dhps_log_enabled_slow(int level);
void dhps_log_write(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DHPS_LOG(level, module, ...)                                                   \
    do {                                                                               \
        int dhps_lvl_ = __atomic_load_n(&dhps_log_level_, __ATOMIC_RELAXED);          \
        if (__builtin_expect(dhps_lvl_ >= (level), 0) ||                               \
            (__builtin_expect(dhps_lvl_ < 0, 0) && dhps_log_enabled_slow(level)))      \
            dhps_log_write((level), (module), __VA_ARGS__);                            \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif

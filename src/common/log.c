#include "dhps/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int dhps_log_level_ = -1;

void dhps_log_set_level(int level)
{
    __atomic_store_n(&dhps_log_level_, level, __ATOMIC_RELAXED);
}

int dhps_log_enabled_slow(int level)
{
    const char *e = getenv("DHPS_LOG");
    int lvl = DHPS_LOG_WARN;
    if (e) {
        if (!strcmp(e, "error"))
            lvl = DHPS_LOG_ERROR;
        else if (!strcmp(e, "info"))
            lvl = DHPS_LOG_INFO;
        else if (!strcmp(e, "debug"))
            lvl = DHPS_LOG_DEBUG;
    }
    int unset = -1;
    __atomic_compare_exchange_n(&dhps_log_level_, &unset, lvl, 0, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
    return __atomic_load_n(&dhps_log_level_, __ATOMIC_RELAXED) >= level;
}

void dhps_log_write(int level, const char *module, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[1024], ts[64] = "";
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    if (gmtime_r(&now.tv_sec, &tm))
        snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 now.tv_nsec / 1000000);
    int n = snprintf(line, sizeof line, "%sdhps %s %s: ", ts, module,
                     names[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line); /* one write per line: stderr is unbuffered */
}

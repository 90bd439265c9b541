#include "dhps/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    char line[1024];
    int n = snprintf(line, sizeof line, "dhps %s %s: ", module,
                     names[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line); /* one write per line: stderr is unbuffered */
}

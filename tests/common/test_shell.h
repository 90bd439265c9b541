/* Running shell command lines from tests (cmocka): the exit code, or the output. One
 * copy for every test directory; tests/tools/capture.h adds the tool tests' helpers. */
#ifndef DHPS_TEST_SHELL_H
#define DHPS_TEST_SHELL_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* Run cmd through the shell and return its stdout (up to cap - 1 bytes, NUL-terminated;
 * the caller frees it); *status gets pclose's status. Fails the test if cmd cannot
 * start. */
static inline char *capture_cap(const char *cmd, int *status, size_t cap)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = 0, r;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0)
        n += r;
    buf[n] = 0;
    *status = pclose(p);
    return buf;
}

/* capture_cap of up to 64 KiB. */
static inline char *capture(const char *cmd, int *status)
{
    return capture_cap(cmd, status, 1 << 16);
}

/* Run a printf-formatted command through the shell: its exit code, or 128 when it did
 * not exit (killed by a signal, or could not start). */
static inline int shellf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int shellf(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* capture() of a printf-formatted command, up to 1 MiB of stdout; *rc (when not NULL)
 * gets the exit code as shellf() gives it. */
static inline char *capturef(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline char *capturef(int *rc, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st;
    char *buf = capture_cap(cmd, &st, 1 << 20);
    if (rc)
        *rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    return buf;
}
#endif

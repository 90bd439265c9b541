/* Shared by the tool tests that drive the built `dhps` binary. */
#ifndef DHPS_TEST_TOOLS_CAPTURE_H
#define DHPS_TEST_TOOLS_CAPTURE_H
#include <stdio.h>
#include <stdlib.h>

/* Run cmd through the shell and return its stdout (up to 64 KiB, NUL-terminated; the
 * caller frees it); *status gets pclose's status. Fails the test if cmd cannot start. */
static inline char *capture(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0)
        n += r;
    buf[n] = 0;
    *status = pclose(p);
    return buf;
}
#endif

/* Shared by the tool tests that drive the built `dhps` binary. */
#ifndef DHPS_TEST_TOOLS_CAPTURE_H
#define DHPS_TEST_TOOLS_CAPTURE_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The number after "name": in out, searched from the text after "in": when in is given
 * (fields of a nested object). Fails the test when it is absent. */
static inline long long field_in(const char *out, const char *in, const char *name)
{
    char key[64];
    if (in) {
        snprintf(key, sizeof key, "\"%s\": {", in);
        const char *o = strstr(out, key);
        if (!o)
            fail_msg("no %s in %s", in, out);
        out = o;
    }
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *s = strstr(out, key);
    if (!s)
        fail_msg("no %s in %s", name, out);
    return atoll(s + strlen(key));
}
#endif

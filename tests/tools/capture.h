/* Shared by the tool tests that drive the built `dhps` binary (the shell helpers are
 * tests/common/test_shell.h). */
#ifndef DHPS_TEST_TOOLS_CAPTURE_H
#define DHPS_TEST_TOOLS_CAPTURE_H
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_shell.h"

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

/* SIGKILL every pid dir/cluster.json still lists (`dhps up`'s nodes, after a failed
 * test). */
static inline void kill_cluster_leftovers(const char *dir)
{
    char *pids = capturef(NULL, "grep -o '\"pid\": [0-9]*' %s/cluster.json 2>/dev/null | "
                          "cut -d' ' -f2", dir);
    char *save = NULL;
    for (char *s = strtok_r(pids, "\n", &save); s; s = strtok_r(NULL, "\n", &save))
        if (atoi(s) > 0)
            kill(atoi(s), SIGKILL);
    free(pids);
}
#endif

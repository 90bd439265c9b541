/* Stand-ins for the cluster commands when the client/cluster libraries are not built. */
#include <stdio.h>

static int noclient(const char *cmd)
{
    fprintf(stderr, "dhps %s: this build has no client library (src/client)\n", cmd);
    return 1;
}

#define STUB(name)                                                                         \
    int dhps_cmd_##name(int argc, char **argv);                                            \
    int dhps_cmd_##name(int argc, char **argv) { return noclient(#name); }
STUB(load)
STUB(up)
STUB(down)
STUB(get)
STUB(put)
STUB(delete)
STUB(info)
STUB(stats)
STUB(snapshot)
STUB(bench)
STUB(chaos)
STUB(fault)
STUB(traffic)
STUB(start)
STUB(stop)
STUB(restart)
STUB(membership)

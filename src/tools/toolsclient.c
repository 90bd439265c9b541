/* Cluster access for the service subcommands (contracts in toolsclient.h). */
#include "toolsclient.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "dhps/error.h"

struct tools_conn {
    int unused;
};

const char *tools_default_dir(void)
{
    const char *d = getenv("DHPS_CLUSTER_DIR");
    return d && *d ? d : "dhps-cluster";
}

int tools_conn_open(const tools_target *t, tools_conn **out)
{
    (void)t;
    *out = NULL;
    fprintf(stderr, "dhps: the client library is not built yet (use --dry-run)\n");
    return -ENOSYS;
}

void tools_conn_close(tools_conn *c) { free(c); }

int tools_conn_put(tools_conn *c, const char *table, uint32_t dtype, uint32_t dim,
                   const uint64_t *keys, const void *rows, uint32_t n)
{
    return -ENOSYS;
}

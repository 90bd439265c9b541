/* Shared by the tool tests that start a cluster with `dhps up` (DHPS_SERVER_BIN is set
 * by tests/tools/CMakeLists.txt). */
#ifndef DHPS_TEST_TOOLS_SERVER_BIN_H
#define DHPS_TEST_TOOLS_SERVER_BIN_H
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* For main(): 0 when the built dhps-server is there (DHPS_SERVER then names it, so
 * `dhps up` starts that one), else 77 (ctest: skipped) after saying why. */
static inline int use_built_server(void)
{
    if (access(DHPS_SERVER_BIN, X_OK) != 0) {
        fprintf(stderr, "dhps-server not built: skipping\n");
        return 77;
    }
    setenv("DHPS_SERVER", DHPS_SERVER_BIN, 1);
    return 0;
}
#endif

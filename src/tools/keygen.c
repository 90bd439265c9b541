/*
 * dhps keygen FILE [--force]: write a new cluster secret (docs/security.md): 32 random
 * bytes, hex-encoded, mode 0600. Refuses to replace an existing file without --force.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

int dhps_cmd_keygen(int argc, char **argv)
{
    const char *path = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--force"))
            force = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dhps keygen FILE [--force]\n"
                   "Write a new cluster secret to FILE: 32 random bytes, hex, mode 0600.\n"
                   "--force replaces an existing FILE (atomically).\n");
            return 0;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "dhps keygen: unexpected argument %s (usage: dhps keygen FILE "
                            "[--force])\n", argv[i]);
            return 2;
        } else
            path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "usage: dhps keygen FILE [--force]\n");
        return 2;
    }
    int rc = dhps_secret_generate(path, force);
    if (rc == -EEXIST) {
        fprintf(stderr, "dhps keygen: %s exists; --force replaces it (every node and client "
                        "of the cluster then needs the new one)\n", path);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "dhps keygen: %s: %s\n", path, strerror(-rc));
        return 1;
    }
    return 0;
}

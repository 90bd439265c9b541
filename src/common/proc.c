/* Which process listens on a port: read from /proc (Linux). */
#include "util.h"

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

/* The inodes of IPv4 and IPv6 TCP sockets listening on `port`, from /proc/net/tcp{,6}
 * (the caller's network namespace). Returns how many were stored (at most cap). */
static int listening_inodes(uint16_t port, unsigned long *ino, int cap)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int n = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f)
            continue;
        char line[512];
        if (!fgets(line, sizeof line, f)) { /* the header */
            fclose(f);
            continue;
        }
        while (n < cap && fgets(line, sizeof line, f)) {
            char local[64];
            unsigned st;
            unsigned long inode;
            /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
            if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st,
                       &inode) != 3)
                continue;
            const char *colon = strrchr(local, ':');
            if (!colon || st != 0x0A /* TCP_LISTEN */)
                continue;
            if (strtoul(colon + 1, NULL, 16) == port && inode)
                ino[n++] = inode;
        }
        fclose(f);
    }
    return n;
}

bool dhps_pid_listens_tcp(pid_t pid, uint16_t port)
{
    unsigned long ino[16];
    int n = listening_inodes(port, ino, 16);
    if (n == 0 || pid <= 0)
        return false;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char lp[PATH_MAX], tgt[64];
        snprintf(lp, sizeof lp, "%s/%s", path, e->d_name);
        ssize_t k = readlink(lp, tgt, sizeof tgt - 1);
        if (k <= 0)
            continue;
        tgt[k] = 0;
        unsigned long v;
        if (sscanf(tgt, "socket:[%lu]", &v) != 1)
            continue;
        for (int i = 0; i < n && !found; i++)
            found = ino[i] == v;
    }
    closedir(d);
    return found;
}

/* Facts about other processes read from /proc (Linux): which one listens on a port, how
 * much CPU one has used. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
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

int dhps_pid_cpu_ns(pid_t pid, uint64_t *ns)
{
    if (pid <= 0)
        return -EINVAL;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? -ESRCH : -errno;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* "pid (comm) state ...": comm may hold spaces and parentheses, so the fields start
     * after the last ')'; utime and stime are fields 14 and 15 (11 and 12 after it) */
    const char *p = strrchr(buf, ')');
    char state;
    unsigned long long ut, st;
    long tck = sysconf(_SC_CLK_TCK);
    if (!p || tck <= 0 ||
        sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &state, &ut,
               &st) != 3)
        return -EPROTO;
    if (state == 'Z' || state == 'X')
        return -ESRCH;
    *ns = (ut + st) * (1000000000ull / (unsigned long long)tck);
    return 0;
}

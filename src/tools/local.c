/*
 * Processes of a local cluster (contracts in up.h), shared by `dhps up`, `dhps down`,
 * `dhps start|stop|restart`, `dhps bench` and `dhps chaos`: files, the health endpoint,
 * one node's spawn and wait, stopping pids, finding the dhps-server processes of a
 * cluster directory in /proc.
 */
#define _GNU_SOURCE /* nftw */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"
#include "toolsclient.h"
#include "up.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

void up_msleep(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int up_mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int up_write_text(const char *path, const char *text, mode_t mode)
{
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0) {
            int e = -errno;
            close(fd);
            unlink(tmp);
            return e;
        }
        off += (size_t)w;
    }
    close(fd);
    return rename(tmp, path) < 0 ? -errno : 0;
}

void up_tail_log(const char *path)
{
    size_t len;
    char *t = tools_read_file(path, &len);
    if (!t)
        return;
    const char *s = len > 1500 ? t + len - 1500 : t;
    fprintf(stderr, "--- last lines of %s ---\n%s---\n", path, s);
    free(t);
}

/* ---- health endpoint ---------------------------------------------------------------- */

/* GET path from 127.0.0.1:port (HTTP/1.0), reading the response into buf (NUL-terminated,
 * at most cap - 1 bytes) with a receive timeout of secs. Returns the bytes read, or
 * -ECONNREFUSED, -EIO, -EPROTO (no status line), -errno. */
static int http_exchange(uint16_t port, const char *path, char *buf, size_t cap, int secs)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = secs};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int rc = -ECONNREFUSED;
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        char req[256];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
        rc = -EIO;
        if (write(fd, req, (size_t)n) == n) {
            ssize_t r;
            while (got + 1 < cap && (r = read(fd, buf + got, cap - 1 - got)) > 0)
                got += (size_t)r;
            rc = got > 12 ? (int)got : -EPROTO;
        }
    }
    buf[got] = 0;
    close(fd);
    return rc;
}

int up_http_get(uint16_t port, const char *path, char *buf, size_t cap)
{
    if (!buf || cap < 2)
        return -EINVAL;
    return http_exchange(port, path, buf, cap, 5);
}

int up_http_status(uint16_t port, const char *path)
{
    char resp[64];
    int rc = http_exchange(port, path, resp, sizeof resp, 2);
    int code;
    if (rc < 0)
        return rc;
    return sscanf(resp, "HTTP/%*d.%*d %d", &code) == 1 ? code : -EPROTO;
}

int up_free_ports(uint16_t *out, uint32_t n)
{
    int *fds = calloc(n ? n : 1, sizeof *fds), rc = 0;
    if (!fds)
        return -ENOMEM;
    uint32_t k = 0;
    for (; k < n && !rc; k++) { /* all bound at once, so no port is handed out twice */
        fds[k] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t al = sizeof a;
        if (fds[k] < 0 || bind(fds[k], (struct sockaddr *)&a, sizeof a) ||
            getsockname(fds[k], (struct sockaddr *)&a, &al))
            rc = -errno;
        else
            out[k] = ntohs(a.sin_port);
    }
    for (uint32_t i = 0; i < k; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    return rc;
}

int up_hold_port(uint16_t port, uint16_t *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, zero = 0;
    if (port)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        (port && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof zero) != 0) ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)f;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

int up_rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -errno;
}

/* ---- processes ---------------------------------------------------------------------- */

bool up_pid_is_server(pid_t pid)
{
    if (pid <= 0 || kill(pid, 0) < 0)
        return false;
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    if (!rp || rp[1] != ' ' || rp[2] == 'Z' || rp[2] == 'X')
        return false;
    return strstr(buf, "(dhps-server)") != NULL;
}

pid_t up_read_pid_file(const char *path)
{
    char *t = tools_read_file(path, NULL);
    long v = t ? strtol(t, NULL, 10) : 0;
    free(t);
    return v > 0 && v < INT_MAX ? (pid_t)v : 0;
}

extern char **environ;

int up_spawn_node(const char *server, const char *cfg, const char *log, bool append,
                  const int fds[2], pid_t *pid)
{
    /* the environment is built here: a child of a program with threads may only call
     * async-signal-safe functions (no setenv); LISTEN_PID is written into it there */
    char **envp = NULL, pidvar[32] = "LISTEN_PID=";
    if (fds) {
        size_t n = 0, k = 0;
        while (environ[n])
            n++;
        if (!(envp = calloc(n + 4, sizeof *envp)))
            return -ENOMEM;
        for (size_t i = 0; i < n; i++)
            if (strncmp(environ[i], "LISTEN_", 7))
                envp[k++] = environ[i];
        envp[k++] = "LISTEN_FDS=2";
        envp[k++] = "LISTEN_FDNAMES=rpc:metrics";
        envp[k++] = pidvar;
    }
    pid_t p = fork();
    if (p < 0) {
        int e = -errno;
        free(envp);
        return e;
    }
    if (p == 0) {
        setsid(); /* outlives the command, not killed by its terminal's ^C */
        int hi[2] = {-1, -1}; /* the sockets out of the way of what follows (fds >= 10) */
        if (fds && ((hi[0] = fcntl(fds[0], F_DUPFD, 10)) < 0 ||
                    (hi[1] = fcntl(fds[1], F_DUPFD, 10)) < 0))
            _exit(127);
        int lfd = open(log, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0640);
        int nfd = open("/dev/null", O_RDONLY);
        if (lfd >= 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
        }
        if (nfd >= 0)
            dup2(nfd, 0);
        if (lfd > 2)
            close(lfd);
        if (nfd > 2)
            close(nfd);
        if (!fds) {
            execl(server, "dhps-server", "--config", cfg, (char *)NULL);
            _exit(127);
        }
        if (dup2(hi[0], 3) != 3 || dup2(hi[1], 4) != 4) /* without close-on-exec */
            _exit(127);
        close(hi[0]);
        close(hi[1]);
        char digits[16], *d = pidvar + strlen("LISTEN_PID=");
        int nd = 0;
        for (unsigned v = (unsigned)getpid(); nd == 0 || v; v /= 10)
            digits[nd++] = (char)('0' + v % 10);
        while (nd)
            *d++ = digits[--nd];
        *d = 0;
        char *const argv[] = {"dhps-server", "--config", (char *)cfg, NULL};
        execve(server, argv, envp);
        _exit(127);
    }
    free(envp);
    *pid = p;
    return 0;
}

int up_restart_node(const char *server, const char *cfg, const char *log, uint16_t port,
                    uint16_t mport, pid_t *pid, const char **which)
{
    uint16_t got[2];
    int fds[2] = {up_hold_port(port, &got[0]), -1};
    *which = "rpc";
    if (fds[0] >= 0) {
        *which = "metrics";
        fds[1] = up_hold_port(mport, &got[1]);
    }
    int e = fds[0] < 0 ? fds[0] : fds[1] < 0 ? fds[1] : 0;
    if (e == 0)
        e = up_spawn_node(server, cfg, log, true, fds, pid);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return e;
}

int up_wait_node(pid_t pid, const char *portfile, double timeout_s,
                 volatile sig_atomic_t *cancel, up_wait *w)
{
    uint64_t deadline = dhps_mono_ns() + (uint64_t)(timeout_s * 1e9);
    w->status = -1;
    w->health = -ECONNREFUSED;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            w->status = st;
            return -ECHILD;
        }
        if (kill(pid, 0) < 0) /* not our child: gone */
            return -ECHILD;
        if (!w->port) {
            char *t = tools_read_file(portfile, NULL);
            unsigned a, b;
            if (t && sscanf(t, "%u %u", &a, &b) == 2) {
                w->port = (uint16_t)a;
                w->mport = (uint16_t)b;
            }
            free(t);
        }
        if (w->port && (w->health = up_http_status(w->mport, "/health")) == 200)
            return 0;
        if (cancel && *cancel)
            return -ECANCELED;
        if (dhps_mono_ns() > deadline)
            return -ETIMEDOUT;
        up_msleep(20);
    }
}

/* Gone: reaped when it is our child, else no live dhps-server of that pid. */
static bool pid_gone(pid_t pid)
{
    waitpid(pid, NULL, WNOHANG);
    return !up_pid_is_server(pid);
}

void up_stop_pids(const pid_t *pids, size_t n, double timeout_s, int *res, double *secs)
{
    uint64_t t0 = dhps_mono_ns(), deadline = t0 + (uint64_t)(timeout_s * 1e9);
    for (size_t i = 0; i < n; i++) {
        res[i] = UP_STOP_CLEAN;
        secs[i] = 0;
        if (!up_pid_is_server(pids[i]) || kill(pids[i], SIGTERM) < 0)
            res[i] = UP_STOP_NOT_RUNNING;
    }
    for (size_t i = 0; i < n; i++) {
        if (res[i] == UP_STOP_NOT_RUNNING)
            continue;
        while (!pid_gone(pids[i]) && dhps_mono_ns() < deadline)
            up_msleep(10);
        secs[i] = (double)(dhps_mono_ns() - t0) / 1e9;
        if (pid_gone(pids[i]))
            continue;
        kill(pids[i], SIGKILL);
        res[i] = UP_STOP_KILLED;
        for (int k = 0; k < 500 && !pid_gone(pids[i]); k++)
            up_msleep(10);
        if (!pid_gone(pids[i]))
            res[i] = UP_STOP_STUCK;
    }
}

/* The --config argument of a dhps-server's command line, made absolute (relative to the
 * process's working directory) and resolved when the file exists. */
static bool server_config_of(pid_t pid, char *out, size_t cap)
{
    char p[64], buf[8192];
    snprintf(p, sizeof p, "/proc/%d/cmdline", (int)pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = 0;
    const char *cfg = NULL;
    for (char *a = buf; a < buf + n; a += strlen(a) + 1)
        if (!strcmp(a, "--config") && a + strlen(a) + 1 < buf + n) {
            cfg = a + strlen(a) + 1;
            break;
        }
    if (!cfg || !*cfg)
        return false;
    char abs[2 * PATH_MAX];
    if (cfg[0] == '/') {
        snprintf(abs, sizeof abs, "%s", cfg);
    } else {
        char cwd[PATH_MAX];
        snprintf(p, sizeof p, "/proc/%d/cwd", (int)pid);
        ssize_t k = readlink(p, cwd, sizeof cwd - 1);
        if (k <= 0)
            return false;
        cwd[k] = 0;
        snprintf(abs, sizeof abs, "%s/%s", cwd, cfg);
    }
    if (!realpath(abs, out))
        snprintf(out, cap, "%s", abs);
    return true;
}

size_t up_find_dir_servers(const char *absdir, up_found *out, size_t cap)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    size_t n = 0, dl = strlen(absdir);
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == getpid() || !up_pid_is_server((pid_t)pid))
            continue;
        char cfg[PATH_MAX];
        if (!server_config_of((pid_t)pid, cfg, sizeof cfg))
            continue;
        if (strncmp(cfg, absdir, dl) || cfg[dl] != '/')
            continue;
        out[n].pid = (pid_t)pid;
        snprintf(out[n].cfg, sizeof out[n].cfg, "%s", cfg);
        n++;
    }
    closedir(d);
    return n;
}

int up_config_pin_ports(const char *cfg, uint16_t port, uint16_t mport)
{
    json_t *j = json_load_file(cfg, 0, NULL);
    if (!j)
        return -EIO;
    json_t *l = json_object_get(j, "listen"), *m = json_object_get(j, "metrics");
    int rc = -EINVAL;
    if (json_is_object(l) && json_is_object(m)) {
        json_object_set_new(l, "tcp_port", json_integer(port));
        json_object_set_new(m, "port", json_integer(mport));
        char *text = json_dumps(j, JSON_INDENT(2));
        rc = text ? up_write_text(cfg, text, 0640) : -ENOMEM;
        free(text);
    }
    json_decref(j);
    return rc;
}

/* Helpers for tests that run real dhps-server processes (DHPS_SERVER_BIN): spawn with a
 * config file, read the port file, wait for health, wait for exit. */
#ifndef DHPS_SRV_PROC_H
#define DHPS_SRV_PROC_H

#include "srv_test.h"

typedef struct proc {
    pid_t pid;
    uint16_t port, mport;
} proc;

/* DHPS_LOG for the servers p_spawn starts (e.g. "info"); NULL: inherited. */
static const char *p_server_log;

/* Start DHPS_SERVER_BIN flag cfg with stderr in dir/stderr.log (appended, so restarts
 * keep the earlier lines). */
static inline pid_t p_spawn(const char *dir, const char *flag, const char *cfg)
{
    char log[600];
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 2);
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        if (p_server_log)
            setenv("DHPS_LOG", p_server_log, 1);
        execl(DHPS_SERVER_BIN, "dhps-server", flag, cfg, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Exit status of a child, waiting up to ms; -1 on timeout (child killed). */
static inline int p_wait_exit(pid_t pid, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms); /* a bound on an event, scaled */
    int st;
    while (t_now_ms() < end) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        t_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* A file's whole text, malloc'ed; "" when unreadable. */
static inline char *p_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    size_t cap = 1 << 16, len = 0, r;
    char *buf = malloc(cap);
    while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0)
        if ((len += r) + 1 == cap)
            buf = realloc(buf, cap *= 2);
    buf[len] = 0;
    fclose(f);
    return buf;
}

/* dir/stderr.log, the servers' stderr (p_spawn), malloc'ed. */
static inline char *p_stderr(const char *dir)
{
    char p[600];
    snprintf(p, sizeof p, "%s/stderr.log", dir);
    return p_slurp(p);
}

/* Empty dir/stderr.log: a test that looks for a line in it sees this run's lines only. */
static inline void p_stderr_clear(const char *dir)
{
    char p[600];
    snprintf(p, sizeof p, "%s/stderr.log", dir);
    if (truncate(p, 0) && errno != ENOENT)
        perror(p);
}

/* Wait until GET path on p's metrics port answers code (or the process exits, or ms
 * pass). 0 or -1. */
static inline int p_wait_http(const proc *p, const char *path, int code, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms); /* a bound on an event, scaled */
    while (t_now_ms() < end) {
        char *body = NULL;
        int c = t_http_get(p->mport, path, &body);
        free(body);
        if (c == code)
            return 0;
        if (waitpid(p->pid, NULL, WNOHANG) == p->pid)
            return -1;
        t_sleep_ms(10);
    }
    return -1;
}

/* The rpc and metrics ports of a port file ("RPC METRICS ...") into p: false until it is
 * there. */
static inline bool p_read_ports(const char *pf, proc *p)
{
    FILE *f = fopen(pf, "r");
    unsigned a = 0, b = 0;
    if (!f)
        return false;
    int k = fscanf(f, "%u %u", &a, &b);
    fclose(f);
    if (k != 2)
        return false;
    p->port = (uint16_t)a;
    p->mport = (uint16_t)b;
    return true;
}

/* Start a server from cfg (its port_file is dir/ports), wait for the port file and,
 * when wait_ready, for /health 200. 0 or -1. */
static inline int p_start(const char *dir, const char *cfg, proc *p, bool wait_ready)
{
    char pf[600];
    snprintf(pf, sizeof pf, "%s/ports", dir);
    unlink(pf);
    memset(p, 0, sizeof *p);
    p->pid = p_spawn(dir, "--config", cfg);
    uint64_t end = t_now_ms() + dhps_test_ms(15000); /* a bound on an event, scaled */
    while (t_now_ms() < end && !p_read_ports(pf, p)) {
        if (waitpid(p->pid, NULL, WNOHANG) == p->pid)
            return -1;
        t_sleep_ms(10);
    }
    if (!p->port)
        return -1;
    return wait_ready ? p_wait_http(p, "/health", 200, 15000) /* scaled inside */ : 0;
}

/* A TCP port on 127.0.0.1 held for a server the test starts later (a cluster map names
 * it first): bound here and kept bound, not listening, in *fd (close it when done).
 * Others cannot bind it nor get it as a connect's ephemeral port meanwhile, while
 * dhps-server, which binds with SO_REUSEADDR, can bind and listen on it -- also again
 * after a kill -9. Picked exclusively (bound to 0 before SO_REUSEADDR is set). 0 on
 * error. */
static inline uint16_t p_hold_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int one = 1;
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&a, sizeof a) ||
        setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        getsockname(*fd, (struct sockaddr *)&a, &al)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return 0;
    }
    return ntohs(a.sin_port);
}

#endif

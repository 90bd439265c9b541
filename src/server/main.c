/* dhps-server: run one parameter-server node in the foreground. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "dhps/log.h"
#include "dhps/proto.h"
#include "dhps/server.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: dhps-server --config FILE      run in the foreground (SIGTERM: final\n"
               "                                       snapshot, exit 0)\n"
               "       dhps-server --check-config FILE validate FILE (exit 0, or 2)\n"
               "       dhps-server --version            print the version\n");
}

/* Sockets passed by a launcher that holds the ports (`dhps up`, systemd): the socket
 * activation protocol. LISTEN_PID names this process, LISTEN_FDS counts the sockets from
 * fd 3 on, LISTEN_FDNAMES names them, colon-separated: "rpc", "metrics", "health". The
 * variables are removed (children do not see them). Without LISTEN_FDS, or for another
 * pid: nothing. 0, or DHPS_E_CONFIG with a message (the sockets are closed then). */
static int take_listen_fds(dhps_server_config *cfg, char *err, size_t len)
{
    const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    int rc = 0;
    if (!pid || !nfds)
        goto out;
    char *end;
    long p = strtol(pid, &end, 10);
    if (*end || p != (long)getpid())
        goto out;
    long n = strtol(nfds, &end, 10);
    if (*end || n < 1 || n > 3) {
        snprintf(err, len, "LISTEN_FDS=%s: want 1..3 sockets (rpc, metrics, health)", nfds);
        rc = DHPS_E_CONFIG;
        n = *end || n < 1 ? 0 : 3; /* closed below */
    }
    char list[64];
    snprintf(list, sizeof list, "%s", names ? names : "");
    char *save = NULL, *name = strtok_r(list, ":", &save);
    for (int i = 0; i < n; i++, name = name ? strtok_r(NULL, ":", &save) : NULL) {
        int fd = 3 + i, *slot = NULL;
        if (name && !strcmp(name, "rpc"))
            slot = &cfg->rpc_fd;
        else if (name && !strcmp(name, "metrics"))
            slot = &cfg->metrics_fd;
        else if (name && !strcmp(name, "health"))
            slot = &cfg->health_fd;
        if (!rc && (!slot || *slot >= 0)) {
            snprintf(err, len, "LISTEN_FDNAMES=%s: socket %d is named %s%s%s (want rpc, "
                     "metrics or health, each once)", names ? names : "", fd,
                     name ? "\"" : "", name ? name : "nothing", name ? "\"" : "");
            rc = DHPS_E_CONFIG;
        }
        if (rc || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
            if (!rc) {
                snprintf(err, len, "LISTEN_FDS: socket %d: %s", fd, strerror(errno));
                rc = DHPS_E_CONFIG;
            }
            close(fd);
            continue;
        }
        *slot = fd;
    }
    if (rc) { /* none of them is used */
        int *slots[] = {&cfg->rpc_fd, &cfg->metrics_fd, &cfg->health_fd};
        for (int i = 0; i < 3; i++)
            if (*slots[i] >= 0) {
                close(*slots[i]);
                *slots[i] = -1;
            }
    }
out:
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--config") || !strcmp(argv[i], "--check-config")) &&
            i + 1 < argc) {
            check = !strcmp(argv[i], "--check-config");
            path = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("dhps-server %s (protocol %d)\n", DHPS_VERSION_STRING, DHPS_PROTO_VERSION);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    dhps_server_config *cfg = NULL;
    int rc = dhps_server_config_load(path, &cfg, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dhps-server: %s\n", rc == DHPS_E_CONFIG ? err : dhps_strerror(rc));
        return 2;
    }
    if ((rc = take_listen_fds(cfg, err, sizeof err))) {
        fprintf(stderr, "dhps-server: %s\n", err);
        dhps_server_config_free(cfg);
        return 2;
    }
    if (check && (rc = dhps_server_config_check(cfg, err, sizeof err))) {
        fprintf(stderr, "dhps-server: %s\n", err);
        dhps_server_config_free(cfg);
        return 2;
    }
    if (check) {
        if (cfg->follow_etcd && !cfg->nshards)
            printf("dhps-server: config %s OK (%u tables; %s missing: the map is taken from "
                   "etcd at start)\n", path, cfg->ntables, cfg->cluster_map);
        else
            printf("dhps-server: config %s OK (%u tables, %u shards%s)\n", path, cfg->ntables,
                   cfg->nshards, cfg->follow_etcd ? "; a newer map in etcd wins at start" : "");
        dhps_server_config_free(cfg);
        return 0;
    }
    /* Block the stop signals in every thread; the main thread waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("DHPS_LOG")) /* default to info: a server logs its lifecycle */
        dhps_log_set_level(DHPS_LOG_INFO);

    dhps_server *s = NULL;
    rc = dhps_server_create(cfg, &s, err, sizeof err);
    dhps_server_config_free(cfg);
    if (rc) {
        fprintf(stderr, "dhps-server: %s\n", err[0] ? err : dhps_strerror(rc));
        return rc == DHPS_E_CONFIG ? 2 : 1;
    }
    if ((rc = dhps_server_start(s, err, sizeof err))) {
        fprintf(stderr, "dhps-server: %s\n", err[0] ? err : dhps_strerror(rc));
        dhps_server_destroy(s);
        return 1;
    }
    fprintf(stderr, "dhps-server: serving, rpc port %u, metrics port %u\n", dhps_server_port(s),
            dhps_server_metrics_port(s));
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "dhps-server: signal %d, stopping\n", sig);
    rc = dhps_server_stop(s);
    dhps_server_destroy(s);
    if (rc) {
        fprintf(stderr, "dhps-server: final snapshot failed: %s\n", dhps_strerror(rc));
        return 1;
    }
    fprintf(stderr, "dhps-server: stopped\n");
    return 0;
}

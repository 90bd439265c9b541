/* dhps-server: run one parameter-server node in the foreground. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

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

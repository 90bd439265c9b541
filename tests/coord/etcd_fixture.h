/*
 * A real etcd for tests: started on free loopback ports with a temporary data dir,
 * killed at the end. etcd_start returns 77 (skip) when the binary is missing.
 * The ports are free when picked, not held (etcd binds them itself): on its first start
 * an etcd that exits (a port taken meanwhile by another process) is retried on new
 * ports. Bounds are scaled (test_scale.h).
 */
#ifndef DHPS_TEST_ETCD_FIXTURE_H
#define DHPS_TEST_ETCD_FIXTURE_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/coord.h"
#include "util.h" /* dhps_pid_listens_tcp */
#include "test_scale.h"

struct etcd_fx {
    pid_t pid;
    int cport, pport;
    char dir[64];
    char url[64];
};

/* Two distinct TCP ports on 127.0.0.1 that were free a moment ago: both bound to 0 at
 * once (so the kernel cannot hand out the same one twice), read, closed. etcd binds them
 * itself; a port taken meanwhile makes etcd exit, and etcd_start tries new ones. */
static int fx_free_ports(int *a, int *b)
{
    int s[2] = {-1, -1}, port[2] = {0, 0}, rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof sa;
        s[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (s[i] < 0 || bind(s[i], (struct sockaddr *)&sa, sizeof sa) ||
            getsockname(s[i], (struct sockaddr *)&sa, &l))
            rc = -1;
        else
            port[i] = ntohs(sa.sin_port);
    }
    for (int i = 0; i < 2; i++)
        if (s[i] >= 0)
            close(s[i]);
    *a = port[0];
    *b = port[1];
    return rc;
}

static const char *fx_etcd_bin(void)
{
    static const char *c[] = {"/usr/bin/etcd", "/usr/local/bin/etcd"};
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
        if (access(c[i], X_OK) == 0)
            return c[i];
    return NULL;
}

/* Start etcd on fx's ports and dir and wait until it answers: 0; -1 when it exited
 * (e.g. a port taken) or did not answer within a scaled bound (then killed). */
static int fx_run(struct etcd_fx *fx, const char *bin)
{
    char lc[64], pu[64], log[96], ic[96];
    snprintf(lc, sizeof lc, "http://127.0.0.1:%d", fx->cport);
    snprintf(pu, sizeof pu, "http://127.0.0.1:%d", fx->pport);
    snprintf(log, sizeof log, "%s.log", fx->dir);
    snprintf(ic, sizeof ic, "t=%s", pu);
    fx->pid = fork();
    if (fx->pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        dup2(2, 1);
        execl(bin, "etcd", "--name", "t", "--data-dir", fx->dir, "--listen-client-urls", lc,
              "--advertise-client-urls", lc, "--listen-peer-urls", pu,
              "--initial-advertise-peer-urls", pu, "--initial-cluster", ic,
              (char *)NULL);
        _exit(127);
    }
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = fx->url;
    p.timeout_ms = 500; /* one probe; the loop below is the bound */
    dhps_coord *c = NULL;
    if (dhps_coord_create(&p, &c) < 0)
        return -1;
    uint64_t end = dhps_test_now_ms() + dhps_test_ms(10000); /* an event, scaled */
    int rc = -1;
    while (dhps_test_now_ms() < end) {
        dhps_coord_kv *kv;
        /* an answer counts only from our etcd, not one that took the port meanwhile */
        if (dhps_coord_get(c, "/probe", false, &kv, NULL) >= 0 &&
            dhps_pid_listens_tcp(fx->pid, (uint16_t)fx->cport)) {
            rc = 0;
            break;
        }
        if (waitpid(fx->pid, NULL, WNOHANG) == fx->pid) { /* exited: it will not answer */
            fx->pid = 0;
            break;
        }
        usleep(50000);
    }
    dhps_coord_destroy(c);
    if (rc && fx->pid > 0) {
        kill(fx->pid, SIGKILL);
        waitpid(fx->pid, NULL, 0);
        fx->pid = 0;
    }
    return rc;
}

/* (Re)start etcd on fx's ports and dir (first call picks them). Waits until it answers.
 * Returns 0, 77 (no etcd binary), or -1. */
static int etcd_start(struct etcd_fx *fx)
{
    const char *bin = fx_etcd_bin();
    if (!bin) {
        fprintf(stderr, "SKIP: no etcd binary (apt-get install etcd-server)\n");
        return 77;
    }
    if (fx->dir[0]) /* a restart: same ports, same data */
        return fx_run(fx, bin);
    strcpy(fx->dir, "/tmp/dhps-etcd-XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    for (int attempt = 0; attempt < 3; attempt++) {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "rm -rf %s/*", fx->dir); /* what a failed try left */
        if (attempt && system(cmd) != 0)
            return -1;
        if (fx_free_ports(&fx->cport, &fx->pport))
            continue;
        snprintf(fx->url, sizeof fx->url, "http://127.0.0.1:%d", fx->cport);
        if (fx_run(fx, bin) == 0)
            return 0;
        fprintf(stderr, "etcd on ports %d/%d did not come up (log %s.log)%s\n", fx->cport,
                fx->pport, fx->dir, attempt < 2 ? ": new ports" : "");
    }
    return -1;
}

static void etcd_kill(struct etcd_fx *fx)
{
    if (fx->pid > 0) {
        kill(fx->pid, SIGKILL);
        waitpid(fx->pid, NULL, 0);
        fx->pid = 0;
    }
}

static void etcd_cleanup(struct etcd_fx *fx)
{
    etcd_kill(fx);
    if (fx->dir[0]) {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "rm -rf %s %s.log", fx->dir, fx->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup failed: %s\n", cmd);
    }
}

#endif

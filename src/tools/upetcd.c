/*
 * The local etcd of `dhps up --etcd` (and of `dhps membership`): Debian's etcd-server
 * binary on two loopback ports, data in DIR/etcd, log DIR/etcd.log, in its own session
 * like the dhps-server nodes (it outlives `dhps up`; `dhps down` stops it after the
 * nodes, whose stop revokes their leases in it). See up.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl.h"
#include "dhps/cluster.h"
#include "dhps/coord.h"
#include "tools.h"
#include "toolsclient.h" /* tools_read_file */
#include "up.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

bool up_etcd_find(char *out, size_t cap)
{
    const char *env = getenv("DHPS_ETCD");
    static const char *const c[] = {"/usr/bin/etcd", "/usr/local/bin/etcd"};
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, X_OK) == 0;
    }
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        if (access(c[i], X_OK) == 0) {
            snprintf(out, cap, "%s", c[i]);
            return true;
        }
    return false;
}

int up_etcd_start(const char *dir, uint16_t cport, uint16_t pport, pid_t *pid, char *url,
                  size_t cap)
{
    char bin[PATH_MAX], data[PATH_MAX], log[PATH_MAX], lc[64], pu[64], ic[96];
    if (!up_etcd_find(bin, sizeof bin))
        return -ENOENT;
    snprintf(data, sizeof data, "%s/etcd", dir);
    snprintf(log, sizeof log, "%s/etcd.log", dir);
    snprintf(lc, sizeof lc, "http://127.0.0.1:%u", cport);
    snprintf(pu, sizeof pu, "http://127.0.0.1:%u", pport);
    snprintf(ic, sizeof ic, "local=%s", pu);
    snprintf(url, cap, "%s", lc);
    pid_t p = fork();
    if (p < 0)
        return -errno;
    if (p == 0) {
        setsid();
        int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int nfd = open("/dev/null", O_RDONLY);
        if (lfd >= 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
        }
        if (nfd >= 0)
            dup2(nfd, 0);
        execl(bin, "etcd", "--name", "local", "--data-dir", data, "--listen-client-urls", lc,
              "--advertise-client-urls", lc, "--listen-peer-urls", pu,
              "--initial-advertise-peer-urls", pu, "--initial-cluster", ic, (char *)NULL);
        _exit(127);
    }
    *pid = p;
    dhps_coord_params cp;
    dhps_coord_params_init(&cp);
    cp.endpoint = lc;
    cp.timeout_ms = 500;
    dhps_coord *c = NULL;
    int rc = dhps_coord_create(&cp, &c);
    for (int i = 0; rc == 0 && i < 200; i++) { /* 10 s */
        dhps_coord_kv *kv = NULL;
        int n = dhps_coord_get(c, "/dhps-probe", false, &kv, NULL);
        dhps_coord_kvs_free(kv, n);
        /* an answer counts only from our etcd: the port was free when picked, and
         * another etcd (another cluster's) may have taken it since */
        if (n >= 0 && dhps_pid_listens_tcp(p, cport))
            break;
        int st;
        if (waitpid(p, &st, WNOHANG) == p) {
            rc = -ECHILD;
            break;
        }
        if (i == 199)
            rc = -ETIMEDOUT;
        up_msleep(50);
    }
    dhps_coord_destroy(c);
    if (rc < 0 && rc != -ECHILD) {
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    }
    return rc;
}

bool up_pid_is_etcd(pid_t pid)
{
    char p[64], comm[64] = "";
    snprintf(p, sizeof p, "/proc/%d/comm", (int)pid);
    FILE *f = pid > 0 ? fopen(p, "r") : NULL;
    if (!f)
        return false;
    bool ok = fgets(comm, sizeof comm, f) && !strncmp(comm, "etcd", 4);
    fclose(f);
    /* a zombie still has its comm: only a live one counts */
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    char *st = ok ? tools_read_file(p, NULL) : NULL;
    char *rp = st ? strrchr(st, ')') : NULL;
    ok = rp && rp[1] == ' ' && rp[2] != 'Z';
    free(st);
    return ok;
}

int up_etcd_stop(pid_t pid, double timeout_s)
{
    if (!up_pid_is_etcd(pid))
        return 1;
    kill(pid, SIGTERM);
    for (int i = 0; i < (int)(timeout_s * 20) && up_pid_is_etcd(pid); i++) {
        waitpid(pid, NULL, WNOHANG);
        up_msleep(50);
    }
    if (up_pid_is_etcd(pid)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 2;
    }
    waitpid(pid, NULL, WNOHANG);
    return 0;
}

int up_etcd_setup(const char *dir, const char *cluster, const dhps_cluster_map *map,
                  uint16_t ports[2], pid_t *pid, char *url, size_t cap)
{
    int e = -ECHILD;
    char data[PATH_MAX];
    snprintf(data, sizeof data, "%s/etcd", dir);
    for (int attempt = 0; attempt < 3 && e == -ECHILD; attempt++) {
        if (attempt) { /* its first start exited: a port taken meanwhile? New ones, anew */
            fprintf(stderr, "dhps up: etcd exited at start on ports %u/%u; again on new "
                    "ports\n", ports[0], ports[1]);
            up_rm_tree(data);
        }
        if ((e = up_free_ports(ports, 2)) < 0)
            break;
        e = up_etcd_start(dir, ports[0], ports[1], pid, url, cap);
    }
    if (e < 0) {
        fprintf(stderr, "dhps up: etcd: %s\n",
                e == -ENOENT ? "no etcd binary (apt-get install etcd-server, or $DHPS_ETCD)"
                             : strerror(-e));
        if (e != -ENOENT) {
            char log[PATH_MAX];
            snprintf(log, sizeof log, "%s/etcd.log", dir);
            up_tail_log(log);
        }
        return e;
    }
    dhps_coord_params cp;
    dhps_coord_params_init(&cp);
    cp.endpoint = url;
    dhps_coord *c = NULL;
    char *json = dhps_cluster_map_to_json(map);
    e = json ? dhps_coord_create(&cp, &c) : -ENOMEM;
    if (e == 0)
        e = ctl_map_publish(c, cluster, json, dhps_cluster_map_version(map), 0, NULL);
    if (e < 0) {
        fprintf(stderr, "dhps up: publishing the map as /dhps/%s/map: %s\n", cluster,
                dhps_strerror(e));
        up_etcd_stop(*pid, 10);
        *pid = 0;
    }
    dhps_coord_destroy(c);
    free(json);
    return e;
}

int up_etcd_node_config(json_t *cfg, const char *url, const char *cluster,
                        uint32_t lease_ttl_s, const char *node_dir, const dhps_cluster_map *map)
{
    char mp[PATH_MAX];
    snprintf(mp, sizeof mp, "%s/map.json", node_dir);
    json_t *coord = json_pack("{s:s,s:s}", "etcd", url, "cluster", cluster);
    json_t *sh = json_object_get(cfg, "shards");
    if (!coord || !sh) {
        json_decref(coord);
        return -ENOMEM;
    }
    if (lease_ttl_s)
        json_object_set_new(coord, "lease_ttl_s", json_integer(lease_ttl_s));
    json_object_set_new(cfg, "coord", coord);
    json_object_set_new(sh, "cluster_map", json_string(mp));
    json_object_set_new(sh, "follow_etcd", json_true());
    unlink(mp);
    return map ? dhps_cluster_map_write(map, mp) : 0;
}

/* Local-cluster helpers shared by `dhps up`, `dhps down`, `dhps start|stop|restart`,
 * `dhps bench` and `dhps chaos`. Private. */
#ifndef DHPS_TOOLS_UP_H
#define DHPS_TOOLS_UP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "workload.h"

struct dhps_client;

/* Find the dhps-server binary: given path, $DHPS_SERVER, next to this executable,
 * ../server/ from it (the build tree), then PATH. Writes it to out; false when none. */
bool up_find_server(const char *given, char *out, size_t cap);

/* ---- local.c: files and processes of a local cluster --------------------------------- */

#include <signal.h>
#include <sys/stat.h>

void up_msleep(unsigned ms);
/* mkdir -p (mode 0755). Returns 0 or -errno. */
int up_mkdir_p(const char *path);
/* Write text to path atomically (path.tmp, then rename) with mode. Returns 0 or -errno. */
int up_write_text(const char *path, const char *text, mode_t mode);
/* Print the last ~1500 bytes of a log file on stderr, framed (nothing when unreadable). */
void up_tail_log(const char *path);

/* HTTP status of GET path on 127.0.0.1:port, or a negative errno. */
int up_http_status(uint16_t port, const char *path);

/* GET path on 127.0.0.1:port (HTTP/1.0, 5 s read timeout): the whole response, headers
 * included, NUL-terminated in buf (truncated to cap - 1 bytes). Returns its length, or a
 * negative errno (-EPROTO for a reply too short to be HTTP). */
int up_http_get(uint16_t port, const char *path, char *buf, size_t cap);

/* n distinct TCP ports of 127.0.0.1 that were free a moment ago (each bound to port 0
 * at the same time, read, then all closed): only for a program that cannot take a held
 * socket (etcd), which must then be started again on new ports when one was taken
 * meanwhile. 0 or -errno. */
int up_free_ports(uint16_t *out, uint32_t n);

/* A TCP socket bound to 127.0.0.1:port (0: a port the kernel picks), not listening, held
 * for a dhps-server that takes it over (up_spawn_node passes it): nobody else can bind
 * the port meanwhile, nor get it for a connection, so the map and the configs can name
 * it before the server runs. A given port is bound with SO_REUSEADDR, as a server binds
 * (its earlier server's connections in TIME_WAIT do not hold it), then the option is
 * cleared (Linux lets SO_REUSEADDR sockets share a port none of them listens on); the
 * server sets it again before it listens. Returns the socket (close-on-exec) and sets
 * *bound, or -errno (-EADDRINUSE: something holds the port). */
int up_hold_port(uint16_t port, uint16_t *bound);

/* Remove path and everything under it (no symlink followed). 0 or -errno; a missing
 * path is 0. */
int up_rm_tree(const char *path);

/* Is pid a live, non-zombie process named dhps-server? */
bool up_pid_is_server(pid_t pid);

/* The pid in a pid file, or 0 (missing, unreadable, not a number). */
pid_t up_read_pid_file(const char *path);

/* Fork and exec `server --config cfg` in its own session (setsid: it outlives the caller
 * and its terminal's ^C), stdout and stderr to log (appended or truncated), stdin
 * /dev/null. fds: NULL, or the node's held rpc and metrics sockets (up_hold_port),
 * passed as fds 3 and 4 by the socket activation protocol (LISTEN_FDS=2, LISTEN_PID,
 * LISTEN_FDNAMES=rpc:metrics; docs/server.md): the server listens on them instead of
 * binding its config's ports, which must name the same ports. The caller still closes
 * its fds. Returns 0 (*pid set) or -errno (fork, -ENOMEM). The caller reaps the child.
 * Safe in a program with threads (the child only calls async-signal-safe functions). */
int up_spawn_node(const char *server, const char *cfg, const char *log, bool append,
                  const int fds[2], pid_t *pid);

/* up_spawn_node for a node whose config names fixed ports (a restart): holds them
 * (up_hold_port) and passes them, so a port taken while the node was down is reported
 * here (-EADDRINUSE; *which = "rpc" or "metrics") instead of by the server's exit. */
int up_restart_node(const char *server, const char *cfg, const char *log, uint16_t port,
                    uint16_t mport, pid_t *pid, const char **which);

/* What up_wait_node saw. Zero port/mport before the call to read them from the port file;
 * set them to skip the port file. */
typedef struct up_wait {
    uint16_t port, mport; /* from the node's port file ("RPC METRICS") */
    int health;           /* last /health status, or -errno of the request */
    int status;           /* waitpid status when the node exited (-1: not our child) */
} up_wait;

/* Wait until the node's port file names its ports and /health answers 200. Returns 0,
 * -ECHILD (the process exited: w->status), -ETIMEDOUT after timeout_s (w->health is the
 * last answer, e.g. 503 while it catches up), or -ECANCELED once *cancel is set. */
int up_wait_node(pid_t pid, const char *portfile, double timeout_s,
                 volatile sig_atomic_t *cancel, up_wait *w);

/* Outcome of stopping one pid (up_stop_pids). */
enum { UP_STOP_CLEAN, UP_STOP_KILLED, UP_STOP_NOT_RUNNING, UP_STOP_STUCK };

/* SIGTERM every pid that is a live dhps-server, wait for all of them up to timeout_s
 * (one deadline), SIGKILL what is left and wait 5 s more. res[i]: UP_STOP_CLEAN (exited
 * after SIGTERM), UP_STOP_KILLED (exited after SIGKILL), UP_STOP_NOT_RUNNING (no such
 * live dhps-server at the start), UP_STOP_STUCK (still there after SIGKILL); secs[i]: time
 * until it exited or was killed. Children of the caller are reaped. */
void up_stop_pids(const pid_t *pids, size_t n, double timeout_s, int *res, double *secs);

/* A dhps-server process found in /proc, with its --config made absolute. */
typedef struct up_found {
    pid_t pid;
    char cfg[4096];
} up_found;

/* Live dhps-server processes whose --config (resolved against the process's working
 * directory) lies inside absdir (an absolute, resolved path). Returns how many were
 * written to out (at most cap). Processes of other users are found only as root. */
size_t up_find_dir_servers(const char *absdir, up_found *out, size_t cap);

/* Rewrite a dhps-server config with fixed listen.tcp_port and metrics.port (atomically).
 * Returns 0 or -errno (-EINVAL: the file has no listen/metrics objects). */
int up_config_pin_ports(const char *cfg, uint16_t port, uint16_t mport);

/* ---- node.c: the cluster directory ---------------------------------------------------- */

/* Is any dhps-server of dir running (cluster.json pids, node pid files, or a process
 * whose config lies in dir)? *pid gets one of them. */
bool up_dir_running(const char *dir, pid_t *pid);

/* Stop every dhps-server of dir (see `dhps down` in docs/tools.md), print one line per
 * node unless quiet, rename cluster.json to cluster.json.stopped. Returns 0 (every node
 * stopped on SIGTERM or was not running) or 1 (no cluster, a node killed or still
 * running). */
int up_stop_dir(const char *dir, double timeout_s, bool quiet);

/* Load the sample table: keys 0..nkeys-1, rows tools_sample_row. Returns 0 or error. */
int up_load_sample(struct dhps_client *c, const char *table, uint32_t dim, uint64_t nkeys,
                   bool quiet);

/* A workload backend over the client (one static instance: not reentrant); timeout_us
 * is each call's deadline (0 = the client's default, 100 ms). */
const wl_backend *up_dhps_backend(struct dhps_client *c, const char *table, uint32_t dim,
                                  uint64_t timeout_us);

#endif

/* ---- upetcd.c: the local etcd of `dhps up --etcd` ------------------------------------- */

struct json_t;
struct dhps_cluster_map;

/* The etcd binary: $DHPS_ETCD, /usr/bin/etcd, /usr/local/bin/etcd. false when none. */
bool up_etcd_find(char *out, size_t cap);

/* Start etcd (its own session) with data in dir/etcd, log appended to dir/etcd.log, on
 * 127.0.0.1:cport (clients) and :pport (peers); the same dir and ports restart it on its
 * data. Waits up to 10 s until it answers. Returns 0 (*pid; url = "http://127.0.0.1:
 * cport"), -ENOENT (no etcd binary), -ECHILD (it exited: see the log), -ETIMEDOUT (killed
 * again), -errno of fork. The caller reaps (up_etcd_stop). */
int up_etcd_start(const char *dir, uint16_t cport, uint16_t pport, pid_t *pid, char *url,
                  size_t cap);

/* Is pid a live etcd process? */
bool up_pid_is_etcd(pid_t pid);

/* SIGTERM, wait up to timeout_s, SIGKILL. 0 stopped, 1 not running, 2 killed. */
int up_etcd_stop(pid_t pid, double timeout_s);

/* up_etcd_start on dir with ports[0..1] (client, peer) picked here (up_free_ports: etcd
 * binds them itself; an etcd that exits at start, a port taken meanwhile, is started
 * again on new ports, twice at most), then publish map as /dhps/<cluster>/map (create).
 * Says what failed on stderr. Returns 0 (*pid, url, ports) or a negative error (etcd
 * stopped). */
int up_etcd_setup(const char *dir, const char *cluster, const struct dhps_cluster_map *map,
                  uint16_t ports[2], pid_t *pid, char *url, size_t cap);

/* Turn a dhps-server config (from `dhps up`) into one that follows the map in etcd:
 * "coord" {etcd: url, cluster, lease_ttl_s (0: the server's default)} and "shards"
 * {"cluster_map": node_dir/map.json, "follow_etcd": true}; map (may be NULL: a --spare
 * node, which takes the map from etcd) is written to that file. 0 or -errno/-ENOMEM. */
int up_etcd_node_config(struct json_t *cfg, const char *url, const char *cluster,
                        uint32_t lease_ttl_s, const char *node_dir,
                        const struct dhps_cluster_map *map);

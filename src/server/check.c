/* dhps server: the checks of a configuration's files and ports, shared by
 * dhps_server_create (files) and `dhps-server --check-config` (files and ports), so a
 * config that --check-config passes does not fail at start for a reason it could see. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "srv_int.h"
#include "secret.h"
#include "util.h"

/* dir must be a directory this process may write (create files in). */
static int check_dir(const char *what, const char *dir, char *err, size_t errlen)
{
    struct stat sd;
    if (stat(dir, &sd) != 0) {
        srv_errf(err, errlen, "%s %s: %s", what, dir, strerror(errno));
        return DHPS_E_CONFIG;
    }
    if (!S_ISDIR(sd.st_mode)) {
        srv_errf(err, errlen, "%s %s: not a directory", what, dir);
        return DHPS_E_CONFIG;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        srv_errf(err, errlen, "%s %s: not writable by this user (%s)", what, dir,
                 strerror(errno));
        return DHPS_E_CONFIG;
    }
    return 0;
}

int srv_check_files(const dhps_server_config *c, char *err, size_t errlen)
{
    size_t len = 0;
    char e[4400];
    /* judged, not derived: dhps_server_create derives a passphrase file's key once */
    int rc = dhps_secret_load(c->secret_file, NULL, DHPS_RPC_MAX_SECRET, &len, e, sizeof e);
    if (rc) {
        srv_errf(err, errlen, "config secret_file: %s", e);
        return rc;
    }
    if (c->tls_policy != DHPS_RPC_TLS_OFF &&
        (rc = dhps_rpc_tls_check(c->tls_cert_file, c->tls_key_file, c->tls_ca_file, e,
                                 sizeof e))) {
        /* "tls key file PATH: why" -> "config tls.key_file PATH: why" */
        static const char *const what[][2] = {{"tls cert file ", "tls.cert_file"},
                                               {"tls key file ", "tls.key_file"},
                                               {"tls ca file ", "tls.ca_file"}};
        for (size_t i = 0; i < 3; i++)
            if (!strncmp(e, what[i][0], strlen(what[i][0]))) {
                srv_errf(err, errlen, "config %s %s", what[i][1], e + strlen(what[i][0]));
                return rc;
            }
        srv_errf(err, errlen, "config %s", e);
        return rc;
    }
    if (c->snapshot_dir && (rc = check_dir("snapshot.dir", c->snapshot_dir, err, errlen)))
        return rc;
    if (c->log_enabled && c->log_dir) {
        /* the update log creates its directory (0700) when missing: its parent must do */
        struct stat sd;
        if (stat(c->log_dir, &sd) == 0)
            return check_dir("log.dir", c->log_dir, err, errlen);
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", c->log_dir);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent)
            *slash = 0;
        else
            snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
        return check_dir("log.dir (to create it in)", parent, err, errlen);
    }
    return 0;
}

/* Can host:port be bound now (TCP)? port 0 always can. */
static int check_port(const char *what, const char *host, unsigned port, char *err,
                      size_t errlen)
{
    if (!port)
        return 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int rc = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        srv_errf(err, errlen, "%s %s:%u: cannot bind (%s)", what, host, port, strerror(errno));
        rc = DHPS_E_CONFIG;
    }
    close(fd);
    return rc;
}

/* A socket given for key (what: its name in LISTEN_FDNAMES): a bound IPv4 TCP socket on
 * host and, when port is non-zero, on port. */
static int check_fd(const char *what, const char *key, int fd, const char *host,
                    unsigned port, char *err, size_t errlen)
{
    struct sockaddr_in a, want = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockname(fd, (struct sockaddr *)&a, &al) != 0 || al != sizeof a ||
        a.sin_family != AF_INET || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 ||
        type != SOCK_STREAM || a.sin_port == 0) {
        srv_errf(err, errlen, "socket \"%s\" (fd %d, for %s): not a bound IPv4 TCP socket",
                 what, fd, key);
        return DHPS_E_CONFIG;
    }
    char got[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &a.sin_addr, got, sizeof got);
    if (inet_pton(AF_INET, host, &want.sin_addr) != 1 ||
        want.sin_addr.s_addr != a.sin_addr.s_addr || (port && ntohs(a.sin_port) != port)) {
        srv_errf(err, errlen, "socket \"%s\" (fd %d) is bound to %s:%u, but %s is %s:%u", what,
                 fd, got, ntohs(a.sin_port), key, host, port);
        return DHPS_E_CONFIG;
    }
    return 0;
}

int srv_check_listen_fds(const dhps_server_config *c, char *err, size_t errlen)
{
    int rc;
    const char *host = c->listen_host ? c->listen_host : "127.0.0.1";
    if (c->rpc_fd >= 0 &&
        (rc = check_fd("rpc", "listen.tcp_port", c->rpc_fd, host, c->tcp_port, err, errlen)))
        return rc;
    if (c->metrics_fd >= 0 && !c->metrics_enabled) {
        srv_errf(err, errlen, "socket \"metrics\" given, but the config has no \"metrics\"");
        return DHPS_E_CONFIG;
    }
    if (c->metrics_fd >= 0 && (rc = check_fd("metrics", "metrics.port", c->metrics_fd,
                                             c->metrics_host, c->metrics_port, err, errlen)))
        return rc;
    if (c->health_fd >= 0 && (!c->metrics_enabled || c->metrics_health_port < 0)) {
        srv_errf(err, errlen, "socket \"health\" given, but the config has no "
                 "metrics.health_port");
        return DHPS_E_CONFIG;
    }
    if (c->health_fd >= 0 &&
        (rc = check_fd("health", "metrics.health_port", c->health_fd, c->metrics_host,
                       (unsigned)c->metrics_health_port, err, errlen)))
        return rc;
    return 0;
}

int dhps_server_config_check(dhps_server_config *c, char *err, size_t errlen)
{
    int rc = dhps_server_config_resolve(c, err, errlen);
    if (rc || (rc = srv_check_files(c, err, errlen)) ||
        (rc = srv_check_listen_fds(c, err, errlen)))
        return rc;
    if (c->rpc_fd < 0 &&
        (rc = check_port("listen.tcp_port", c->listen_host ? c->listen_host : "127.0.0.1",
                         c->tcp_port, err, errlen)))
        return rc;
    if (c->metrics_enabled && c->metrics_fd < 0 &&
        (rc = check_port("metrics.port", c->metrics_host, c->metrics_port, err, errlen)))
        return rc;
    if (c->metrics_enabled && c->metrics_health_port > 0 && c->health_fd < 0 &&
        (rc = check_port("metrics.health_port", c->metrics_host,
                         (unsigned)c->metrics_health_port, err, errlen)))
        return rc;
    return 0;
}

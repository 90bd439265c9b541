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

int dhps_server_config_check(dhps_server_config *c, char *err, size_t errlen)
{
    int rc = dhps_server_config_resolve(c, err, errlen);
    if (rc || (rc = srv_check_files(c, err, errlen)))
        return rc;
    if ((rc = check_port("listen.tcp_port", c->listen_host ? c->listen_host : "127.0.0.1",
                         c->tcp_port, err, errlen)))
        return rc;
    if (c->metrics_enabled &&
        (rc = check_port("metrics.port", c->metrics_host, c->metrics_port, err, errlen)))
        return rc;
    if (c->metrics_enabled && c->metrics_health_port > 0 &&
        (rc = check_port("metrics.health_port", c->metrics_host,
                         (unsigned)c->metrics_health_port, err, errlen)))
        return rc;
    return 0;
}

/* Local-cluster helpers shared by `dhps up`, `dhps down` and `dhps bench`. Private. */
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

/* HTTP status of GET path on 127.0.0.1:port, or a negative errno. */
int up_http_status(uint16_t port, const char *path);

/* GET path on 127.0.0.1:port (HTTP/1.0, 5 s read timeout): the whole response, headers
 * included, NUL-terminated in buf (truncated to cap - 1 bytes). Returns its length, or a
 * negative errno (-EPROTO for a reply too short to be HTTP). */
int up_http_get(uint16_t port, const char *path, char *buf, size_t cap);

/* Is pid a live, non-zombie process named dhps-server? */
bool up_pid_is_server(pid_t pid);

/* Stop the cluster of dir/cluster.json (SIGTERM, wait up to timeout_s, SIGKILL);
 * prints a report unless quiet. Returns 0 (all stopped cleanly) or 1. */
int up_stop_dir(const char *dir, double timeout_s, bool quiet);

/* Load the sample table: keys 0..nkeys-1, rows tools_sample_row. Returns 0 or error. */
int up_load_sample(struct dhps_client *c, const char *table, uint32_t dim, uint64_t nkeys,
                   bool quiet);

/* A workload backend over the client (one static instance: not reentrant); timeout_us
 * is each call's deadline (0 = the client's default, 100 ms). */
const wl_backend *up_dhps_backend(struct dhps_client *c, const char *table, uint32_t dim,
                                  uint64_t timeout_us);

#endif

/* Private: the /fault admin endpoint's pure parts (body parser, request MAC, rule list
 * JSON and metrics), kept apart from the HTTP plumbing so they can be fuzzed and tested.
 * The endpoint and its wire contract are described in docs/server.md. */
#ifndef DHPS_SRV_ADMIN_H
#define DHPS_SRV_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <time.h>

#include "dhps/rpc.h"

/* Largest /fault request body accepted. */
#define SRV_ADMIN_MAX_BODY 4096u
/* Accepted distance between the request's timestamp and the server's clock. */
#define SRV_ADMIN_SKEW_S 60
/* Header carrying "<unix seconds>[.<nonce>] <64 hex digits of HMAC-SHA256>", the nonce
 * being 1..32 hex digits (signed with the timestamp: the MAC's ts is the whole token). */
#define SRV_ADMIN_AUTH_HEADER "X-Dhps-Auth"
/* Signed changes remembered against replay (each for 2 x SRV_ADMIN_SKEW_S at most). */
#define SRV_ADMIN_REPLAY_SLOTS 4096u

typedef struct srv_fault_req {
    char peer[64];     /* canonical numeric IPv4, or "*" */
    uint16_t port;     /* 0 = every port */
    dhps_rpc_fault f;
} srv_fault_req;

/* Parse a PUT/POST /fault body: a JSON object with "peer" (required: numeric IPv4 or
 * "*"), "port" (0..65535, 0 with "*"; default 0), "delay_us" (0..60000000),
 * "delay_percent" (0..100, default 100), "drop_percent" (0..100), "partition" (bool),
 * "seed" (integer >= 0). Pure. Returns 0 and fills out, or DHPS_E_CONFIG with a message
 * naming the field ("fault delay_us: must be 0..60000000") in err; -ENOMEM. */
int srv_fault_parse(const void *buf, size_t len, srv_fault_req *out, char *err,
                    size_t errlen);

/* The request MAC: HMAC-SHA256(secret, "dhps-admin-v1\n" method "\n" path "\n" "peer="
 * peer "\n" "port=" port "\n" "all=" all "\n" ts "\n" body), where peer/port/all are the
 * query arguments as given ("" when absent) and ts the decimal timestamp of the header.
 * Returns 0, or -EINVAL (a NULL string). */
int srv_admin_mac(const void *secret, size_t secret_len, const char *method, const char *path,
                  const char *peer, const char *port, const char *all, const char *ts,
                  const void *body, size_t body_len, uint8_t mac[32]);

/* Check an X-Dhps-Auth header value against the request at time now: timestamp within
 * SRV_ADMIN_SKEW_S and the MAC equal (constant-time compare). Returns 0, or -EACCES with
 * the reason in err. Pure: replays are srv_admin_replay_note's job. */
int srv_admin_auth(const void *secret, size_t secret_len, const char *header,
                   const char *method, const char *path, const char *peer, const char *port,
                   const char *all, const void *body, size_t body_len, time_t now, char *err,
                   size_t errlen);

/* JSON of one rule with its counters, and of every rule of rpc:
 * {"rules":[{"peer","port","delay_us","delay_percent","drop_percent","partition","seed",
 * "matched","delayed","dropped","partitioned"}, ...]}. malloc'ed, NULL on no memory. */
char *srv_fault_list_json(dhps_rpc_server *rpc);

/* Prometheus lines for the rules of rpc (dhps_fault_rules, dhps_fault_*_total). */
void srv_fault_metrics(dhps_rpc_server *rpc, FILE *f);

/* Replay guard for signed admin changes: the MACs of accepted requests, each kept until
 * its timestamp leaves the accepted window. Thread-safe (one mutex; admin requests are
 * rare). */
typedef struct srv_admin_replay {
    pthread_mutex_t mu;
    struct {
        uint8_t mac[32];
        long long until; /* unix seconds; 0 = free */
    } e[SRV_ADMIN_REPLAY_SLOTS];
} srv_admin_replay;

void srv_admin_replay_init(srv_admin_replay *r);
void srv_admin_replay_fini(srv_admin_replay *r);

/* Note the request whose X-Dhps-Auth header (already checked by srv_admin_auth) is
 * `header`, at time now. Returns 0 (first use: remembered), -EALREADY (this exact signed
 * request was accepted before: a replay), -EBUSY (SRV_ADMIN_REPLAY_SLOTS changes within
 * the window: refused rather than forgotten), -EINVAL (malformed header), with the
 * reason in err. */
int srv_admin_replay_note(srv_admin_replay *r, const char *header, time_t now, char *err,
                          size_t errlen);

#endif

/*
 * dhps chaos, private to src/tools. Two halves around one struct chaos:
 *   chaos.c      the command: options, the local cluster (started by `dhps up`, then
 *                switched to the cluster-map form so replicas catch up from each other),
 *                the lookup and update threads, the fault schedule, the rdma link delete;
 *   chaoscheck.c what is checked once the load has stopped, and the report: every node
 *                ready and one anti-entropy pass after the last write on each
 *                (chaos_settle), every chaos key read from each replica alone and through
 *                the router (chaos_verify), the replicas' SYNC_DIGESTs of every shard
 *                (chaos_digests), text or JSON (chaos_report).
 * The load threads write their own fields of struct chaos; the main thread reads them
 * after joining the threads.
 */
#ifndef DHPS_TOOLS_CHAOS_H
#define DHPS_TOOLS_CHAOS_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct dhps_client;
struct dhps_cluster_map;
struct tools_conn;

#define CH_MAX_NODES 16
#define CH_MAX_REPL 4        /* replicas compared per shard (chaos starts 2) */
#define CH_UKEYS 2000u       /* update keys: CH_UBASE + 0..CH_UKEYS-1 */
#define CH_UBASE (1ull << 40)
#define CH_UBATCH 8u
#define CH_MAX_FAILS 64      /* missed lookups listed */
#define CH_MAX_CATCHUPS 256  /* restarts timed */
#define CH_MAX_EXAMPLES 16   /* keys listed per finding */

struct ch_node {
    pid_t pid;
    uint16_t port, mport;
    char cfg[PATH_MAX], log[PATH_MAX];
};

/* Fault phases, for the record of each lookup that missed its deadline. */
enum { PH_STEADY, PH_KILLED, PH_RESTARTING, PH_STOPPED, PH_SLOWED };
extern const char *const chaos_phase_name[5];

struct ch_fail {
    uint64_t t_ns;          /* since the start of the load */
    uint64_t since_ns;      /* since the phase began */
    uint32_t phase, victim, prev_phase;
    int rc;
    uint64_t dt_us;
    size_t unanswered;
    uint32_t messages, retries, hedges;
};

/* A key a complete lookup reported missing, and the fault phase it happened in. */
struct ch_missing {
    uint64_t key, t_ns;
    uint32_t phase, victim;
};

/* One finding of the final check, for the listing: key (or shard), node, what it saw. */
struct ch_example {
    uint64_t key;
    uint32_t shard, node;
    int64_t got, want;      /* generations (-1: absent) */
};

struct chaos_check {
    double settle_s;                       /* ready + anti-entropy wait at the end */
    bool settled;                          /* every node ready and one pass seen */
    uint64_t checked;                      /* acknowledged keys checked */
    uint64_t lost;                         /* acked keys absent or older on >= 1 replica */
    uint64_t lost_everywhere;              /* ... on every replica */
    uint64_t stale_router;                 /* router reads older than the ack */
    uint64_t keys_compared, keys_differing; /* chaos keys read on every replica */
    uint64_t sample_bad;                   /* sample keys absent/wrong on >= 1 replica */
    uint64_t unread;                       /* key reads no replica answered (left out) */
    uint32_t shards_checked, shards_differing, digest_errors;
    struct ch_example lost_ex[CH_MAX_EXAMPLES], stale_ex[CH_MAX_EXAMPLES],
        diff_ex[CH_MAX_EXAMPLES], shard_ex[CH_MAX_EXAMPLES];
    uint32_t nlost_ex, nstale_ex, ndiff_ex, nshard_ex;
};

struct chaos {
    struct dhps_client *client;
    struct tools_conn *conn;  /* owns client and map */
    /* rdma link delete (--rdma-link-delete) */
    double ld_at;             /* seconds into the load, < 0 = none */
    char ld_dev[64];
    _Atomic uint64_t ld_t_ns; /* when it was started (0 = not yet) */
    uint64_t ld_requests, ld_in_deadline; /* lookups started after it (lookup thread) */
    uint64_t ld_verbs_before, ld_verbs_end, ld_tcp_before, ld_tcp_end, ld_verbs_failures;
    int ld_status;            /* exit status of rdma, -1 = did not run / did not end */
    pid_t ld_pid;             /* rdma while it runs */
    double ld_secs;           /* how long rdma took */
    const struct ch_node *nd;
    const struct dhps_cluster_map *map;
    uint32_t dim, batch, nodes, ae_s;
    int ack;                  /* enum dhps_client_ack of the update thread */
    uint64_t nkeys, deadline_us;
    double ready_timeout;
    _Atomic int stop;
    _Atomic int warm;         /* threads past their warm-up call */
    _Atomic int go;           /* the load (and its clock) starts */
    uint64_t t_start;
    _Atomic uint64_t phase;   /* phase | victim << 8 | previous phase << 16 */
    _Atomic uint64_t phase_ns;
    struct ch_fail fails[CH_MAX_FAILS];
    uint32_t nfails;
    /* lookups (lookup thread) */
    uint64_t requests, in_deadline, missing_keys, errors[4];
    uint64_t missing_while_held;           /* keys missing in complete answers */
    struct ch_missing held_ex[CH_MAX_EXAMPLES];
    uint32_t nheld_ex;
    /* updates (update thread) */
    uint32_t gen[CH_UKEYS];   /* last generation written */
    uint32_t acked[CH_UKEYS]; /* last generation acknowledged (0 = none) */
    uint64_t updates, update_ok, update_shortfalls, acked_keys;
    /* faults (main thread) */
    uint32_t kills, stops, slows, restart_failures, ready_timeouts;
    double catchup[CH_MAX_CATCHUPS];      /* restart → /health/ready 200, seconds */
    uint32_t ncatchup;
    uint64_t notready_answers; /* lookups restarted nodes answered DHPS_E_NOTREADY while
                                  catching up (their counter, read once they are ready) */
};

extern const char *const chaos_ack_name[3]; /* "all", "quorum", "one" */

/* The load threads (chaos.c), also run by `dhps membership` (membership.c): arg is the
 * struct chaos. Each connects, counts itself in warm, waits for go, then loops until
 * stop: lookups of --batch random sample keys with deadline_us (requests, in_deadline,
 * errors, missing_while_held, fails with the phase then current), or ACK updates of
 * CH_UBATCH distinct update keys carrying per-key generations (gen, acked). */
void *chaos_lookup_thread(void *arg);
void *chaos_update_thread(void *arg);

void chaos_sleep_s(double s);

/* Sum of one counter line (e.g. `dhps_rpc_handled_total{transport="verbs"}`) over the
 * servers' /metrics; with per_node (n entries) also each node's value (0 when it did
 * not answer). Nodes with mport 0 (not part of the cluster any more) are skipped. */
uint64_t chaos_metrics_sum(const struct ch_node *nd, uint32_t n, const char *name,
                           uint64_t *per_node);

/* Wait (up to --ready-timeout) until every node's /health/ready answers 200, then until
 * dhps_sync_antientropy_passes_total has grown by 2 on every node (so one whole pass
 * started after the last write; bounded by 10 intervals + 10 s). Nodes with mport 0 are
 * left out. */
void chaos_settle(struct chaos *C, struct chaos_check *K);

/* Read every chaos key (the sample and every update key written) from each of its
 * replicas alone (the client partitioned from the other nodes by fault rules), and the
 * acknowledged update keys through the router; fill the key counts of K. */
void chaos_verify(struct chaos *C, struct chaos_check *K);

/* SYNC_DIGEST of every shard from each of its replicas; fill the shard counts of K. */
void chaos_digests(struct chaos *C, struct chaos_check *K);

/* Print the report (JSON on stdout, or text); the missed lookups and examples go to say. */
struct chaos_opts {
    double seconds;
    uint64_t deadline_ms;
    bool json;
};
void chaos_report(const struct chaos *C, const struct chaos_check *K,
                  const struct chaos_opts *o, FILE *say);

/* 0 when every target of the check is met (nothing lost, missing, stale or divergent;
 * every restart worked and got ready); 1 otherwise. Availability is reported, not judged. */
int chaos_verdict(const struct chaos *C, const struct chaos_check *K);

#endif

/*
 * Private to the rpc server (src/rpc/server*.c): its state and the functions its parts
 * call across files.
 *
 *   server.c         the public lifecycle: params, create, register, start, destroy,
 *                    stats, server-side fault rules
 *   server_accept.c  the acceptor threads: accept + authenticated hello as state
 *                    machines on an event loop, hand-off to a worker
 *   server_worker.c  the worker threads: adopt connections, serve requests (TCP, shm),
 *                    held-back responses of fault rules
 *   server_verbs.c   the verbs path of a worker: shared receive queue, endpoints,
 *                    requests that overtake their connection's hand-off (orphans)
 *   server_limits.c  connection caps (total, per peer address), rate-limited refusal log
 *
 * An acceptor thread (accept + authenticated hello) hands connections to
 * run-to-completion worker threads through SPSC pointer rings (atomics + eventfd).
 */
#ifndef DHPS_RPC_SERVER_INTERNAL_H
#define DHPS_RPC_SERVER_INTERNAL_H

#include "internal.h"
#include "verbs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dhps/log.h"

#define INBOX 256u
#define MAX_ACCEPTORS 8u
#define MAX_WORKERS 64u
#define PEND_MAX 256u /* hellos in progress per acceptor (server_accept.c) */

typedef struct handler {
    dhps_rpc_handler_fn fn;
    void *arg;
} handler;

/* Verbs connections keep, per client call slot, the last request id seen and (for
 * requests that arrived over verbs) a copy of the response, so a request re-sent on
 * TCP after a verbs failure is answered from here and its handler runs once. */
typedef struct dd_entry {
    uint64_t id;
    int32_t status;
    uint32_t len, cap;
    bool have; /* response cached */
    uint8_t *buf;
} dd_entry;

typedef struct sconn {
    conn c;
    uint32_t peer_ip;   /* network order; counted in the server's peer table */
    dd_entry *dd;
    uint32_t dd_mask;
    struct sconn *prev, *next;
    char peer[16];      /* caller's IPv4 address (numeric), for the fault rules */
    uint16_t peer_port; /* caller's TCP port */
    bool fault_flush;   /* a held-back response was committed this turn */
    bool reading; /* EPOLLIN armed */
    bool tx_full; /* shm: a request waits for room in the response ring */
    bool want_out;
} sconn;

typedef struct wstats {
    _Atomic uint64_t handled[DHPS_RPC_NTRANSPORTS];
    _Atomic uint64_t handler_errors, unknown_method, malformed, open, dup, verbs_down;
    _Atomic uint64_t fault_overflow, closed_budget, closed_timeout, open_tls;
} wstats;

typedef struct worker {
    struct dhps_rpc_server *s;
    uint32_t idx;
    pthread_t th;
    bool started;
    int ep, evfd;
    struct inbox { /* one single-producer/single-consumer ring per acceptor */
        _Alignas(64) _Atomic uint32_t head; /* consumer (this worker) */
        _Alignas(64) _Atomic uint32_t tail; /* producer (that acceptor) */
        sconn *slot[INBOX];
    } in[MAX_ACCEPTORS];
    sconn *conns; /* list owned by this worker only */
    uint32_t nshm, nverbs;
    uint64_t dev_checked;
    vsrq *srq;       /* shared receive queue of this worker's verbs connections (set
                        once, under srq_lock, with a release store) */
    sconn *last_sc;  /* last connection a shared-queue completion mapped to */
    struct dresp **heap; /* responses held back by a fault rule: min-heap on `at` */
    uint32_t nheap, capheap;
    uint64_t held_bytes; /* bytes of the held-back entries (bounded by fault_hold_bytes) */
    bool heap_stuck;     /* the due response could not be reserved: retry soon */
    uint8_t *fscratch;   /* handler output of delayed requests (max_msg), lazily */
    struct orphan *orph, *orph_tail; /* requests from QPs not adopted yet (FIFO) */
    uint32_t norph;
    uint64_t swept_ns;  /* last timeout sweep over the connections */
    dhps_ratelimit log_rl;
    wstats st;
} worker;

/* A request that came through the worker's shared receive queue from a QP whose
 * connection the worker does not hold yet: the acceptor connects the QP and answers
 * ACCEPT before it hands the connection over, so a fast client's first requests can
 * overtake the hand-off. Kept (copied) until the connection is adopted, then served in
 * order; dropped after hello_timeout_ms (its connection is gone: the client re-sends on
 * TCP). */
typedef struct orphan {
    struct orphan *next;
    uint64_t at;
    uint32_t qp_num, len;
    uint8_t data[];
} orphan;
#define ORPHANS_MAX 4096u

struct dhps_rpc_server {
    dhps_rpc_server_params p;
    uint8_t secret[DHPS_RPC_MAX_SECRET];
    uint8_t host_id[RPC_HOST_ID];
    int lfd;
    uint16_t port;
    bool started;
    _Atomic bool stop;
    struct acceptor {
        struct dhps_rpc_server *s;
        uint32_t idx, next_worker;
        pthread_t th;
        bool started;
        int ep;               /* the listening socket + hellos in progress */
        struct pend **pend;   /* hellos in progress (PEND_MAX slots) */
        uint32_t npend;
        dhps_ratelimit log_rl; /* refusals at accept */
    } acc[MAX_ACCEPTORS];
    handler *handlers; /* 65536 entries, read-only after start */
    rpc_dev *dev;      /* verbs device (thread-safe verbs calls), or NULL */
    pthread_mutex_t srq_lock; /* lazy creation of the workers' shared receive queues */
    worker *w;
    _Atomic uint64_t accepted, rejected_auth, rejected_hello, rejected_limit;
    _Atomic uint64_t accepted_tls, tls_failures, rejected_plain;
    SSL_CTX *tls_ctx;              /* TLS configured (tls_cert_file), else NULL */
    _Atomic uint64_t input_used;   /* conn.in_used of every TCP connection */
    struct rpc_peers *peers;       /* open connections per address (server_limits.c) */
    rpc_fault_table faults; /* server-side fault rules (dhps_rpc_server_fault_*) */
};

/* A response held back by a delay rule: sent on `via` at `at` (dhps_mono_ns clock). */
typedef struct dresp {
    uint64_t at;
    sconn *sc;
    int via;
    rpc_frame f;
    uint8_t data[];
} dresp;

static inline void bump(_Atomic uint64_t *a)
{
    /* single writer: a relaxed load + store is enough and avoids a locked add */
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

extern char verbs_wake_tag; /* epoll data for completion-channel fds: drain them all */

/* server_worker.c */
void sconn_close(worker *w, sconn *sc, int why);
int dd_alloc(sconn *sc, uint32_t log2);
int serve_frame(void *arg, conn *c, int via, const rpc_frame *f, const uint8_t *payload);
int sconn_flush(worker *w, sconn *sc);
void adopt(worker *w);
void *worker_main(void *arg);

/* server_limits.c */
int rpc_peers_create(struct rpc_peers **out);
void rpc_peers_destroy(struct rpc_peers *t);
/* Count a new connection from ip (network order). 0, or refused: -EMFILE (the server's
 * max_connections), DHPS_E_BUSY (the address's max_conns_per_peer), -ENOMEM; *held then
 * says how many were open. Thread-safe. */
int rpc_peer_acquire(dhps_rpc_server *s, uint32_t ip, uint32_t *held);
/* The connection counted by rpc_peer_acquire(ip) is closed. Thread-safe. */
void rpc_peer_release(dhps_rpc_server *s, uint32_t ip);
/* Refusals a thread logs per second at most (dhps_ratelimit_allow). */
#define RPC_LOG_PER_S 5u

/* server_verbs.c */
int verbs_setup(dhps_rpc_server *s, worker *w, sconn *sc, const rpc_verbs_info *r,
                rpc_verbs_info *mine);
void verbs_down(worker *w, sconn *sc);
void orphans_serve(worker *w, sconn *sc);
void orphans_expire(worker *w, uint64_t now);
int serve_verbs(worker *w);

/* server_accept.c */
void *acceptor_main(void *arg);

#endif

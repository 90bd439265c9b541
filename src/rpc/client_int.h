/* Private to the rpc client (src/rpc/client*.c): its state and the functions its parts
 * call across files.
 *
 *   client.c       the event loop: client lifecycle, calls, completion, verbs fallback and
 *                  re-promotion, fault rules
 *   client_chan.c  channel handles onto shared sessions; the public channel and call
 *                  functions, the blocking call
 *   client_open.c  opening a channel: connect, [TLS,] the authenticated hello and the
 *                  transport negotiation, as a state machine that never blocks the loop
 */
#ifndef DHPS_RPC_CLIENT_INT_H
#define DHPS_RPC_CLIENT_INT_H

#include "internal.h"
#include "verbs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dhps/log.h"

typedef struct slot {
    uint64_t id;       /* 0 = free */
    uint64_t deadline; /* ns, UINT64_MAX = none */
    dhps_rpc_done_fn done;
    void *arg;
    uint8_t transport;
    int16_t vslot;
    const void *owner; /* the channel handle that sent it */     /* verbs send slot holding the request, when transport is verbs */
} slot;

typedef struct session session;
struct hs;
struct deferred;

/* A session is one connection (TCP + fast path) to a peer; channels with the same
 * policy to the same peer share it (one QP per peer per client). */
struct session {
    dhps_rpc_client *cl;
    session *prev, *next;
    conn c;
    /* sharing */
    uint32_t refs;
    char host[64];
    uint16_t port;
    uint32_t allow;
    int require;
    bool exclusive;
    bool tls;             /* the connection runs TLS (the channel asked for it) */
    bool out_armed;       /* EPOLLOUT armed: output waits for room in the socket */
    const void *lent_owner;
    int broken;           /* 0, or the error calls now get */
    slot *slots;
    uint32_t *free_stack, nfree;
    uint32_t mask;        /* max_inflight - 1 */
    uint32_t log2;
    uint64_t seq;
    uint32_t inflight;
    uint64_t min_deadline;
    /* the lent buffer */
    bool lent;
    uint16_t lent_method;
    size_t lent_max;
    int lent_transport;
    void *lent_buf;
    dhps_rpc_channel_stats st;
    /* verbs */
    bool verbs_wanted;      /* negotiated verbs once: keep re-trying after failures */
    bool mixed;
    uint32_t remote_slots;  /* server receives posted = our verbs credits */
    uint32_t v_inflight;
    vep *pending;           /* endpoint offered in a PROMOTE, awaiting the answer */
    uint64_t retry_at;      /* next re-promotion attempt (ns) */
    uint32_t backoff_ms;
    /* opening */
    struct hs *hs;          /* the hello in progress, NULL once ready (or failed) */
    struct deferred *stage; /* lent buffer of a call started while opening */
    uint64_t ready_ns;      /* when the hello completed */
};


/* What the caller holds: a handle onto a (possibly shared) session. */
struct dhps_rpc_channel {
    session *s;
    struct dhps_rpc_channel *prev, *next;
};

/* A call held back by a fault rule (see dhps_rpc_fault_set): failed or sent at `at`. */
typedef struct deferred {
    struct deferred *next;
    session *s;
    const void *owner;  /* the channel handle that sent it */
    uint16_t method;
    int status;         /* 0: send at `at`; < 0: fail with it at `at` */
    bool wait_open;     /* started while the channel opened: sent (fault rules applied)
                           once it is ready, `at` is UINT64_MAX until then */
    uint64_t at;        /* ns */
    uint64_t deadline;  /* ns, UINT64_MAX = none */
    dhps_rpc_done_fn done;
    void *arg;
    size_t len;
    uint8_t req[];
} deferred;

struct dhps_rpc_client {
    dhps_rpc_client_params p;
    deferred *dq;             /* calls held back by fault rules (unsorted) */
    uint8_t secret[DHPS_RPC_MAX_SECRET];
    uint8_t host_id[RPC_HOST_ID];
    int ep;
    session *chans;           /* sessions */
    struct dhps_rpc_channel *handles; /* channel handles, freed by destroy */
    uint32_t nshm, nverbs;
    rpc_dev *dev; /* opened on first use; closed on a fatal device event */
    SSL_CTX *tls_ctx;         /* tls_ca_file given, else NULL */
    char *tls_name;           /* tls_server_name (copied), or NULL */
    uint32_t nopening;        /* sessions whose hello is in progress */
    uint64_t dev_checked;
    uint64_t spin_ns;         /* p.spin_us in ns */
    uint32_t spin_skip;       /* waits left that sleep at once (after a spin ran out) */
    dhps_rpc_client_stats st;
};

/* ---- channel open: connect, hello, negotiate, without blocking -------------------- */

/*
 * An open in progress. The hello is a state machine driven by the client's poll turns
 * (dhps_rpc_channel_open_async) or by a private poll loop (dhps_rpc_channel_open):
 * connect -> [TLS handshake] -> CLIENT_HELLO -> SERVER_HELLO -> CLIENT_PROOF -> ACCEPT.
 * Hello messages are read exactly (header, then body), so nothing that follows the
 * ACCEPT is consumed.
 */
enum { HS_CONNECT = 1, HS_TLS, HS_SERVER_HELLO, HS_ACCEPT };

struct hs {
    int state;
    int fd;                   /* until conn_init takes it over (then c->c.fd) */
    int shmfd;
    bool unlink_name;
    bool want_out;            /* registered for EPOLLOUT */
    uint64_t deadline;        /* connect + hello */
    uint64_t connect_deadline;/* the TCP connect alone */
    vep *v;                   /* verbs endpoint offered, until the ACCEPT */
    rpc_tls *tls;             /* TLS session, until conn_init takes it over (c->c.tls) */
    uint8_t bind[RPC_BIND];   /* its keying material, bound into both proofs */
    rpc_hello ch, sh, pr;
    rpc_hio io;
};

/* epoll data for completion-channel fds: drain them all (client.c) */
extern char cl_verbs_wake_tag;

/* client.c */
/* Watch a verbs endpoint's completion channel from the client's epoll set. */
void cl_watch_vep(dhps_rpc_client *cl, vep *v);
/* Schedule the next verbs re-promotion attempt of a session that negotiated verbs. */
void cl_schedule_promote(session *ch);
/* Complete call slot idx with status (callback runs now). */
void complete(session *ch, uint32_t idx, int status, const void *resp, size_t len);
/* Close a session (its calls cancelled) and free it. NULL allowed. */
void s_close(session *ch);
/* Cancel the calls held back by fault rules of one channel handle (owner NULL: all). */
void cancel_deferred(dhps_rpc_client *cl, const void *owner);
/* dhps_rpc_call_start / _abort / _send / _inject on a session (owner: the handle). */
int s_call_start(session *ch, uint16_t method, size_t max_len, void **buf);
void s_call_abort(session *ch);
int s_send(session *ch, const void *owner, size_t len, uint64_t timeout_us,
           dhps_rpc_done_fn done, void *arg);
int s_inject(session *ch, int fault);

/* client_open.c */
/* Start opening a session for p (connect issued, hello queued). 0 and *out, or an error. */
int s_begin(dhps_rpc_client *cl, const dhps_rpc_channel_params *p, session **out);
/* The open's deadline: the connect's while connecting, else the whole hello's. */
uint64_t hs_deadline(const session *c);
/* Move the open as far as the socket allows. 1: ready, 0: waiting, < 0: failed. */
int hs_drive(session *c);
/* Drive the open to its end, polling only its socket. 0 or the open's error. */
int hs_block(session *c);
/* The open failed (or the channel closes while opening). */
void hs_fail(session *c, int why);
/* Fail the opens whose deadline passed by now. */
void hs_expire(dhps_rpc_client *cl, uint64_t now);

#endif

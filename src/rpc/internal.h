/* Private: connection state and the transport ops table shared by server and client. */
#ifndef DHPS_RPC_INTERNAL_H
#define DHPS_RPC_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dhps/rpc.h"
#include "tls.h"
#include "util.h"
#include "wire.h"

#define RPC_LOG "rpc"

static inline size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* ---- byte buffers (TCP) ----------------------------------------------------------- */

typedef struct obuf { /* bytes [head, tail) are queued for send() */
    uint8_t *p;
    size_t cap, head, tail;
} obuf;

typedef struct ibuf { /* bytes [0, len) received, not yet parsed */
    uint8_t *p;
    size_t cap, len;
} ibuf;

/* ---- shared-memory rings ---------------------------------------------------------- */

#define SHM_MAGIC 0x64687073726d6731ull /* "dhpsrmg1" */
#define SHM_HDR_BYTES 4096u

typedef struct shm_ctl {
    _Alignas(64) _Atomic uint64_t head;     /* consumer's position (consumer writes) */
    _Alignas(64) _Atomic uint64_t tail;     /* producer's published position */
    _Alignas(64) _Atomic uint32_t sleeping; /* consumer is (about to be) asleep */
} shm_ctl;

typedef struct shm_region_hdr {
    uint64_t magic, cookie, ring_bytes, rsvd;
    shm_ctl c2s, s2c;
} shm_region_hdr;
_Static_assert(sizeof(shm_region_hdr) <= SHM_HDR_BYTES, "shm header fits its page");

typedef struct shm_ring {
    shm_ctl *ctl;
    uint8_t *data;
    uint64_t size;
    uint64_t pos;       /* producer: committed tail; consumer: consumed head */
    uint64_t published; /* producer: last tail stored to ctl */
} shm_ring;

/* ---- connection ------------------------------------------------------------------- */

struct conn;
/* Frame delivery: return 0 (consumed), 1 (not consumed: stop, retry later), <0 (fatal,
 * connection closes with that code). payload is in place and valid during the call. */
typedef int (*rpc_rx_fn)(void *arg, struct conn *c, int via, const rpc_frame *f,
                         const uint8_t *payload);

typedef struct rpc_ops {
    const char *name;
    /* Lend room for a frame with up to `payload` bytes; NULL when full (retry later). */
    uint8_t *(*reserve)(struct conn *c, size_t payload);
    /* Commit the frame last reserved (f->len <= the reserved payload). */
    void (*commit)(struct conn *c, const rpc_frame *f);
    /* Publish committed frames. Returns 0 or a negative code (connection broken). */
    int (*flush)(struct conn *c);
    /* Deliver received frames to fn. Returns frames delivered (>= 0) or < 0 (broken). */
    int (*rx)(struct conn *c, rpc_rx_fn fn, void *arg);
} rpc_ops;

extern const rpc_ops rpc_tcp_ops;
extern const rpc_ops rpc_shm_ops;
extern const rpc_ops rpc_verbs_ops;
extern const rpc_ops *const rpc_transports[DHPS_RPC_NTRANSPORTS];

typedef struct conn {
    int fd;
    int transport;     /* fast path in use for new sends */
    uint32_t max_msg;  /* negotiated payload bound */
    bool is_server;
    bool tcp_dirty, shm_dirty, verbs_dirty;
    struct vep *v;     /* verbs endpoint, or NULL */
    rpc_tls *tls;      /* TLS session under the TCP byte stream, or NULL (plain) */
    bool eof;
    obuf out;
    ibuf in;
    size_t in_base;             /* in.cap before any large frame (grown per frame) */
    uint64_t in_grown_ns;       /* when in.cap last grew */
    _Atomic uint64_t *in_used;  /* server: bytes of in.cap above in_base over all conns */
    uint64_t in_limit;          /*   and their bound (max_input_bytes); NULL/0: no budget */
    uint64_t in_since_ns;       /* a partial frame waits since then (0: none) */
    uint64_t last_rx_ns;        /* last complete frame received */
    void *shm_base;
    size_t shm_len;
    shm_ring tx, rx;
    uint64_t doorbells, flushes;
} conn;

/* Set up c over socket fd and TLS session tls (NULL: plain), both owned by c from now
 * on, also when it fails (-ENOMEM: conn_fini ran). */
int conn_init(conn *c, int fd, rpc_tls *tls, uint32_t max_msg, bool is_server);
/* Give a grown input buffer back (down to in_base) once it holds no more than that and
 * has not grown for a second: the server's sweep calls it, so a stream of large frames
 * keeps its buffer and an idle connection does not hold the input budget. */
void conn_in_shrink(conn *c, uint64_t now);
void conn_fini(conn *c);
/* Map a region of `bytes` from an open shm fd and attach as server or client. */
int shm_attach(conn *c, int shmfd, size_t bytes, uint64_t cookie, bool create);
/* Consumer sleep protocol on c->rx: returns true when it may sleep (ring empty). */
bool shm_prepare_sleep(conn *c);
void shm_end_sleep(conn *c);
bool shm_rx_pending(conn *c);

/* helpers (the clock is dhps_mono_ns, src/common/util.h) */
void rpc_host_id(const uint8_t *override, uint8_t out[RPC_HOST_ID]);
int rpc_random(void *buf, size_t n);
void rpc_tune_socket(int fd, uint32_t busy_poll_us);
/* Non-blocking hello I/O, one message each way at a time (both ends of the hello are
 * state machines driven by readiness: a peer that stalls holds no thread). */
typedef struct rpc_hio {
    size_t in_len, out_off, out_len;
    uint8_t in[RPC_HELLO_HDR + RPC_HELLO_MAX_BODY];
    uint8_t out[RPC_HELLO_HDR + RPC_HELLO_MAX_BODY];
} rpc_hio;
/* Queue hello m for sending (replaces what is queued). 0 or -EINVAL. */
int rpc_hio_put(rpc_hio *h, const rpc_hello *m);
/* Send what is queued on fd, through t when it is not NULL (TLS): 1 all sent, 0 the
 * socket is full (wait for POLLOUT; with TLS, t->want_read: for POLLIN), or
 * DHPS_E_UNREACHABLE (TLS: also DHPS_E_TLS, DHPS_E_MALFORMED). */
int rpc_hio_flush(rpc_hio *h, int fd, rpc_tls *t);
/* Read one hello message into m, exactly its bytes (what follows belongs to the
 * connection): 1 parsed, 0 more bytes needed (wait for POLLIN; with TLS, t->want_write:
 * for POLLOUT), DHPS_E_UNREACHABLE (peer closed / error), the parse's DHPS_E_MALFORMED /
 * DHPS_E_VERSION, or (TLS) DHPS_E_TLS. */
int rpc_hio_read(rpc_hio *h, int fd, rpc_tls *t, rpc_hello *m);
static inline bool rpc_hio_pending_out(const rpc_hio *h) { return h->out_off < h->out_len; }

/* ---- fault injection (fault.c) ---------------------------------------------------- */

#define RPC_FAULT_HOST_MAX 64u

typedef struct rpc_fault_rule {
    bool used;
    char host[RPC_FAULT_HOST_MAX];
    uint16_t port;
    dhps_rpc_fault f;
    uint64_t rng;
    dhps_rpc_fault_stats st;
} rpc_fault_rule;

/* A rule table: the rule count is read with one relaxed load on the request path (0 =
 * nothing to look up); everything else under mu. */
typedef struct rpc_fault_table {
    _Atomic uint32_t nrules;
    pthread_mutex_t mu;
    rpc_fault_rule rules[DHPS_RPC_FAULT_MAX_RULES];
} rpc_fault_table;

enum { RPC_FAULT_NONE = 0, RPC_FAULT_FAIL = 1, RPC_FAULT_HOLD = 2, RPC_FAULT_DELAY = 3 };

void rpc_fault_table_init(rpc_fault_table *t);
void rpc_fault_table_fini(rpc_fault_table *t);
int rpc_fault_table_set(rpc_fault_table *t, const char *host, uint16_t port,
                        const dhps_rpc_fault *f);
int rpc_fault_table_clear(rpc_fault_table *t, const char *host, uint16_t port);
int rpc_fault_table_get(rpc_fault_table *t, const char *host, uint16_t port,
                        dhps_rpc_fault_stats *st);
size_t rpc_fault_table_list(rpc_fault_table *t, dhps_rpc_fault_entry *out, size_t cap);
/* Decide the fate of one call/request of host:port (exact rule, else the host's port-0
 * rule, else with any_peer the DHPS_RPC_FAULT_ANY_PEER rule): NONE, FAIL (partition or
 * drop), HOLD (drop with drop_timeout), DELAY (*delay_ns later). Counts it in the rule. */
int rpc_fault_table_decide(rpc_fault_table *t, const char *host, uint16_t port,
                           bool any_peer, uint64_t *delay_ns);
/* Check a server rule's peer and write its canonical form. 0 or -EINVAL. */
int rpc_fault_server_peer(const char *peer, uint16_t port, char out[RPC_FAULT_HOST_MAX]);

/* The client side's process-wide table (client.c reads rpc_fault_nrules). */
extern rpc_fault_table rpc_client_faults;
#define rpc_fault_nrules (rpc_client_faults.nrules)
/* rpc_fault_table_decide on the client table, without the any-peer rule: NONE (send
 * now), FAIL (fail with DHPS_E_UNREACHABLE), HOLD (fail with DHPS_E_TIMEOUT at the
 * deadline), DELAY (send *delay_ns later). */
int rpc_fault_decide(const char *host, uint16_t port, uint64_t *delay_ns);

#endif

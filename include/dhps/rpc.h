/*
 * dhps rpc: one request/response RPC API over TCP, shared memory and RDMA verbs, for
 * the parameter server's lookups and updates.
 *
 * Design (the full essay, wire layouts and test record are in docs/rpc.md):
 *
 * Model. A server owns a few acceptor threads and N worker threads. Handlers are
 *   registered by a 16-bit method id before the server starts. An acceptor accepts a
 *   TCP connection, runs the authenticated hello (below) with a bounded timeout, and
 *   hands the connection to a worker through a single-producer/single-consumer ring
 *   of pointers (one ring per acceptor and worker: atomics only, plus an eventfd
 *   kick). From then on the worker owns the connection: it reads, runs handlers to completion and writes, with no lock on
 *   that path. A client (dhps_rpc_client) is the same idea seen from the caller: one
 *   event-loop object owned by one thread at a time (eRPC's model); its channels,
 *   calls and callbacks all run on that thread inside dhps_rpc_client_poll().
 *
 * Zero copy. A caller asks its channel for a request buffer (dhps_rpc_call_start),
 *   writes the request there and sends it (dhps_rpc_call_send). On shared memory the
 *   buffer lies inside the ring the server reads from; on TCP it lies in the
 *   connection's send buffer handed to the kernel. A handler reads its request in
 *   place (in the ring, or the connection's receive buffer) and writes its response
 *   into a buffer the library lends it, again inside the outgoing ring / send buffer.
 *   Completion callbacks get the response in place. Nothing is copied between the
 *   application and the transport's memory; dhps_rpc_call() is a blocking
 *   convenience that does copy (once each way).
 *
 * Coalescing. Committed requests are only queued; each poll turn flushes every
 *   channel once: one send() for all frames queued to a TCP peer, one tail store
 *   (and at most one doorbell) for a shared-memory peer. Servers do the same with the
 *   responses produced in one loop turn.
 *
 * Transports sit behind one const ops table (reserve, commit, flush, receive).
 *   TCP (epoll, TCP_NODELAY, optional SO_BUSY_POLL) is always there: it carries the
 *   hello, the shared-memory doorbells, verbs re-promotion, and every call when no
 *   faster path was negotiated or the fast path failed.
 *   Shared memory (same host id, both sides allow it): the client creates a region of
 *   two single-producer/single-consumer byte rings (one each way); frames are written
 *   in place; the consumer polls and, when idle, sets a "sleeping" word in the region
 *   and blocks in epoll on the TCP socket; a producer that sees the word sends one
 *   doorbell frame on TCP (the eventfd-equivalent that also works across processes
 *   without passing descriptors).
 *   RDMA verbs (libibverbs; different hosts, or when required): one RC queue pair per
 *   connection, shared by all channels of a client to that peer (see
 *   dhps_rpc_channel_open), SEND/RECV over pre-registered slots (the request is
 *   written into a send slot, the handler reads it in its receive slot and writes the
 *   response into a send slot), a shared receive queue per server worker (all its QPs receive into
 *   it), inline sends for small frames, one signalled work request per post list, one
 *   ibv_post_send per flush, completion queues polled in the loop and slept on through
 *   completion channels when idle. No memory is remotely accessible (SEND/RECV needs
 *   no rkeys), so no keys travel in the hello. Credits: a channel keeps at most
 *   verbs_slots calls on verbs; the server re-posts receives before it posts a turn's
 *   responses; a burst beyond the shared queue waits in the NIC (RNR retry).
 *
 * Fallback. On a verbs failure (completion error, QP in the error state, device gone
 *   from sysfs or a fatal async event, post failure) the client re-sends every call
 *   in flight on verbs over the still-open TCP connection with the same request id;
 *   the server keeps, per client call slot, the last request id and the response of
 *   requests served over verbs, so a re-sent request is answered from that cache and
 *   its handler runs once. The channel keeps serving on TCP and re-tries verbs with
 *   exponential backoff (a CTRL frame on TCP carries the new QP), re-promoting when it
 *   connects. Mixed mode spills calls to TCP when the verbs slots are all in use.
 *
 * Negotiation and security. Every connection starts on TCP with a versioned hello:
 *   client hello (magic, version, capabilities, max message, nonce, host id), server
 *   hello (same, plus HMAC-SHA256 proof over both nonces and capabilities with the
 *   shared cluster secret), client proof (HMAC over the nonces and its transport
 *   offer: shm region name, or QP number/GID), server accept (its QP number/GID when
 *   verbs was chosen). No region is opened, no QP is created, no handler
 *   runs and nothing is registered for a peer before its proof checks; a wrong proof
 *   gets a reject message and the connection is closed. A version-1 peer (no
 *   capabilities) gets TCP. The caller's per-channel allow mask and required
 *   transport are applied on top. Frames are bounded by the negotiated max message;
 *   an unknown method gets an error reply (DHPS_E_NOTFOUND); garbage closes the
 *   connection. Parsers are pure functions over byte buffers (fuzzed).
 *
 * TLS (OpenSSL, TLS 1.3 only; docs/rpc.md §4). A server given a certificate and key
 *   accepts TLS and plain TCP on one port, told apart by the first byte (a TLS record
 *   0x16, the hello's magic 'D'), or TLS only (tls_require: a plain peer gets a REJECT
 *   with DHPS_E_TLS, counted and logged). A channel opened with tls runs the handshake
 *   after the TCP connect, checks the server's certificate against the client's CA and
 *   the server's name (tls_server_name, else the address dialled as an IP SAN), and then
 *   runs the same hello inside TLS: the secret still authenticates the cluster, and both
 *   proofs also cover keying material exported from the TLS session, so a proof does not
 *   check in another session (a TLS-terminating relay cannot pass it on). TLS carries the
 *   hello and every TCP frame (calls, doorbells, verbs re-promotion, fallback traffic);
 *   shared memory and verbs, when negotiated inside a TLS hello, are not encrypted.
 *
 * Errors (error.h): DHPS_E_TIMEOUT (deadline passed), DHPS_E_UNREACHABLE (connect
 *   failed, or the peer died / closed), DHPS_E_AUTH (hello proof rejected by either
 *   side), DHPS_E_MALFORMED (a peer broke the protocol), DHPS_E_HANDLER (the remote
 *   handler returned an error), DHPS_E_NOTFOUND (no handler for the method),
 *   DHPS_E_TOOBIG (message above the negotiated limit), DHPS_E_BUSY (send ring or
 *   in-flight table full: poll and retry), DHPS_E_CONFIG (bad params, or a required
 *   transport could not be negotiated), DHPS_E_VERSION (peer speaks no common hello
 *   version), DHPS_E_TLS (certificate not trusted or of another name, our certificate
 *   refused, TLS required by the server, or a broken handshake).
 */
#ifndef DHPS_RPC_H
#define DHPS_RPC_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_rpc_server dhps_rpc_server;
typedef struct dhps_rpc_client dhps_rpc_client;
typedef struct dhps_rpc_channel dhps_rpc_channel;

/* Transports, and masks of them (1u << transport). */
enum dhps_rpc_transport {
    DHPS_RPC_TCP = 0,
    DHPS_RPC_SHM = 1,
    DHPS_RPC_VERBS = 2,
    DHPS_RPC_NTRANSPORTS = 3,
};
#define DHPS_RPC_MASK(t) (1u << (t))
#define DHPS_RPC_ALL ((1u << DHPS_RPC_NTRANSPORTS) - 1)

/* Hard upper bound on max_msg (payload bytes of one request or response). */
#define DHPS_RPC_MAX_MSG_LIMIT (16u << 20)
/* Longest shared cluster secret accepted. */
#define DHPS_RPC_MAX_SECRET 256u
/* Longest spin a client may be given (dhps_rpc_client_params.spin_us, also
 * dhps_client_params.spin_us), in microseconds: one second. */
#define DHPS_RPC_SPIN_US_MAX 1000000u

/* Name a transport ("tcp", "shm", "verbs"; "?" otherwise). Thread-safe. */
const char *dhps_rpc_transport_name(int transport);

/* Does this host have a usable RDMA verbs device (ibv_get_device_list non-empty and a
 * port ACTIVE)? Thread-safe; costs a device scan. */
bool dhps_rpc_verbs_available(void);

/* Length of a host id (the hello's "same host?" token; equal ids allow shared memory). */
#define DHPS_RPC_HOST_ID_LEN 16u

/* Fill out with a host id for a node labelled label on this kernel: the kernel boot id
 * when label is NULL or empty, else the first 16 bytes of SHA-256(boot id || label). So
 * processes on one machine with the same host label share an id (and use shared memory
 * with each other), while processes that simulate different hosts on one machine (network
 * namespaces, `dhps up`) do not. Thread-safe. */
void dhps_rpc_host_id(const char *label, uint8_t out[DHPS_RPC_HOST_ID_LEN]);

/* ---- TLS policy (shared by the server's and the client's configs) ------------------ */

/* Which TCP connections use TLS: none (default), those between different availability
 * zones, or all. The rpc library itself only sees a per-channel `tls` flag and a
 * server's tls_require; dhps_rpc_tls_wanted is the one rule the client library and
 * dhps-server apply to pick the flag. */
enum dhps_rpc_tls_policy {
    DHPS_RPC_TLS_OFF = 0,
    DHPS_RPC_TLS_CROSS_AZ = 1,
    DHPS_RPC_TLS_ALWAYS = 2,
};

/* Client certificates a TLS server asks for: none; optional (verified against the CA
 * when one is sent); required (a TLS client without a valid one is refused). */
enum dhps_rpc_tls_verify {
    DHPS_RPC_TLS_VERIFY_NONE = 0,
    DHPS_RPC_TLS_VERIFY_OPTIONAL = 1,
    DHPS_RPC_TLS_VERIFY_REQUIRED = 2,
};

/* "off", "cross_az", "always" ("?" otherwise). Thread-safe. */
const char *dhps_rpc_tls_policy_name(int policy);
/* The policy named s (the names above), or -EINVAL. Thread-safe. */
int dhps_rpc_tls_policy_parse(const char *s);

/* Must a connection from a peer in AZ my_az to one in peer_az use TLS under policy?
 * ALWAYS: yes; OFF: no; CROSS_AZ: yes unless both AZ labels are known (non-empty) and
 * equal - an unlabelled side counts as another AZ. NULL = unknown. Thread-safe. */
bool dhps_rpc_tls_wanted(int policy, const char *my_az, const char *peer_az);

/* Check TLS files the way dhps_rpc_server_create / dhps_rpc_client_create load them:
 * cert_file and key_file (both or neither) a PEM certificate chain, not expired, and the
 * unencrypted PEM private key that matches it, the key file neither group- nor
 * world-readable or writable (as secret files); ca_file (NULL allowed) a PEM bundle with
 * at least one certificate. Returns 0, or DHPS_E_CONFIG with one line in err naming the
 * file and why, or -ENOMEM. Thread-safe. */
int dhps_rpc_tls_check(const char *cert_file, const char *key_file, const char *ca_file,
                       char *err, size_t errlen);

/* ---- server ----------------------------------------------------------------------- */

/* What a handler sees. req/req_len point at the request in the transport's receive
 * memory; resp is a buffer of resp_cap bytes lent by the library, inside the outgoing
 * ring / send buffer. All three are valid only during the handler call. The handler
 * sets resp_len (<= resp_cap; 0 allowed). */
typedef struct dhps_rpc_request {
    uint16_t method;
    uint32_t worker;        /* index of the worker thread running the handler */
    uint64_t id;            /* request id (unique per connection) */
    const void *req;
    size_t req_len;
    void *resp;
    size_t resp_cap;
    size_t resp_len;
    const char *peer;       /* caller's numeric IPv4 address as the server's socket sees
                               it ("" if unknown); valid during the call */
    uint16_t peer_port;     /* caller's TCP port (the key of per-port fault rules) */
} dhps_rpc_request;

/* A handler returns 0 (response = resp[0..resp_len)) or a negative code: the caller's
 * call then completes with DHPS_E_HANDLER and an empty response. Runs on a worker
 * thread; must not block for long (it holds up every connection of that worker). */
typedef int (*dhps_rpc_handler_fn)(void *arg, dhps_rpc_request *r);

typedef struct dhps_rpc_server_params {
    const char *host;          /* listen address, numeric IPv4 (default "127.0.0.1") */
    uint16_t port;             /* 0 = ephemeral; see dhps_rpc_server_port (default 0) */
    int listen_fd;             /* a TCP socket already bound (IPv4; listening or not),
                                  served instead of binding host:port, e.g. one passed by
                                  a launcher that holds the port (socket activation).
                                  host and port are then ignored. The server owns it from
                                  dhps_rpc_server_create on, also when that fails.
                                  -1 = bind host:port (default -1) */
    uint32_t workers;          /* worker threads, 1..64 (default 1) */
    uint32_t acceptors;        /* acceptor threads, 1..8 (default 2), each running up to
                                  256 hellos at once on an event loop: a peer stalling
                                  its hello holds a slot until hello_timeout_ms */
    const void *secret;        /* shared cluster secret (copied); may be NULL with */
    size_t secret_len;         /*   secret_len 0 = empty key, which authenticates nothing */
    uint32_t max_msg;          /* largest request/response payload (default 256 KiB) */
    uint32_t allow;            /* transports the server offers (default DHPS_RPC_ALL) */
    uint32_t hello_timeout_ms; /* bound on one peer's hello at the acceptor (default 2000) */
    uint32_t busy_poll_us;     /* SO_BUSY_POLL on accepted sockets, 0 = off (default 0) */
    uint32_t spin_turns;       /* idle loop turns a worker spins before sleeping (default 64) */
    uint32_t verbs_srq_slots;  /* receive slots of each worker's shared receive queue,
                                  one max_msg frame each, 1..16384 (default 64) */
    const uint8_t *host_id;    /* 16 bytes identifying this host; NULL = kernel boot id */
    uint64_t fault_hold_bytes; /* most bytes of responses one worker holds back for delay
                                  fault rules; a response beyond it goes out at once
                                  (counted in fault_overflow) (default 256 MiB) */
    uint32_t handoff_delay_us; /* test hook: the acceptor waits this long between its
                                  ACCEPT and handing the connection to its worker, so a
                                  client's first verbs requests overtake the hand-off
                                  (default 0) */
    /* Limits against hostile or broken peers (docs/rpc.md §4). Connections past a cap
     * are closed at accept; a connection past a timeout or the input budget is closed.
     * Every refusal is counted (stats) and logged, rate-limited, with the peer. */
    uint32_t max_connections;  /* open connections, hellos included (default 4096) */
    uint32_t max_conns_per_peer;/* of them from one IPv4 address (default 256) */
    uint64_t max_input_bytes;  /* TCP input buffered beyond 64 KiB per connection, summed
                                  over all connections: a frame that would take it past
                                  this closes its connection (default 256 MiB) */
    uint32_t frame_timeout_ms; /* a TCP frame must arrive whole within this of its first
                                  byte (default 30000; 0 = no bound) */
    uint32_t idle_timeout_ms;  /* an authenticated connection without a request for this
                                  long is closed (default 0 = kept) */
    /* TLS (docs/rpc.md §4 "TLS"). With a certificate and key the server takes TLS and
     * plain TCP on its port (or TLS only, tls_require). Files are read at create; a bad
     * one fails it with DHPS_E_CONFIG and a log line naming it (dhps_rpc_tls_check). The
     * handshake is bounded by hello_timeout_ms and counted in the connection caps. */
    const char *tls_cert_file; /* PEM certificate chain (default NULL: no TLS) */
    const char *tls_key_file;  /* its PEM private key, unencrypted, mode 0600 or stricter */
    const char *tls_ca_file;   /* PEM CA bundle verifying client certificates (needed
                                  when tls_verify_client is not NONE) */
    int tls_verify_client;     /* enum dhps_rpc_tls_verify (default NONE: the cluster
                                  secret authenticates clients) */
    bool tls_require;          /* refuse plain TCP connections: they get a REJECT with
                                  DHPS_E_TLS, counted (rejected_plain) and logged with the
                                  peer, rate-limited (default false) */
} dhps_rpc_server_params;

/* Fill p with the defaults above. */
void dhps_rpc_server_params_init(dhps_rpc_server_params *p);

/* Create a server and bind its socket, or take p->listen_fd (threads are not started
 * and nothing listens yet: a peer dialing before dhps_rpc_server_start is refused at
 * once, rather than left waiting in the backlog while the owner loads its data; a
 * listen_fd that listens already keeps its backlog). Returns 0 and sets *out, or
 * -EINVAL / DHPS_E_CONFIG (bad params), -ENOTSOCK (listen_fd is not a bound IPv4 TCP
 * socket), -errno from socket/bind (e.g. -EADDRINUSE), -ENOMEM. listen_fd is closed when
 * it fails. Free with dhps_rpc_server_destroy. */
int dhps_rpc_server_create(const dhps_rpc_server_params *p, dhps_rpc_server **out);

/* Register handler fn(arg, ...) for method. Only before dhps_rpc_server_start; not
 * thread-safe. Returns 0, -EINVAL (NULL fn), -EBUSY (already started), -EEXIST. */
int dhps_rpc_server_register(dhps_rpc_server *s, uint16_t method, dhps_rpc_handler_fn fn,
                             void *arg);

/* Listen (SO_REUSEADDR, also on a listen_fd), then start the acceptor and worker
 * threads. Returns 0, -EBUSY (already started) or -errno (listen, pthread_create;
 * threads already started are stopped by dhps_rpc_server_destroy). */
int dhps_rpc_server_start(dhps_rpc_server *s);

/* The bound TCP port (host order). Thread-safe. */
uint16_t dhps_rpc_server_port(const dhps_rpc_server *s);

typedef struct dhps_rpc_server_stats {
    uint64_t accepted;                        /* connections that passed the hello */
    uint64_t rejected_auth;                   /* hellos refused for a bad proof */
    uint64_t rejected_malformed;              /* hellos or frames that broke the protocol */
    uint64_t handled[DHPS_RPC_NTRANSPORTS];   /* requests handled, by transport */
    uint64_t handler_errors;                  /* handlers that returned < 0 */
    uint64_t unknown_method;                  /* requests for an unregistered method */
    uint64_t open_conns;                      /* connections owned by workers now */
    uint64_t duplicates;                      /* re-sent requests answered from the
                                                 de-duplication cache (handler not run) */
    uint64_t verbs_failures;                  /* verbs paths torn down (then TCP) */
    uint64_t fault_overflow;                  /* responses a delay rule should have held
                                                 back, sent at once: fault_hold_bytes
                                                 reached (or no memory) */
    uint64_t rejected_limit;                  /* connections closed at accept:
                                                 max_connections / max_conns_per_peer */
    uint64_t closed_budget;                   /* closed: a frame past max_input_bytes */
    uint64_t closed_timeout;                  /* closed: frame_timeout_ms / idle_timeout_ms */
    uint64_t input_bytes;                     /* input buffered beyond the per-connection
                                                 64 KiB now (max_input_bytes bounds it) */
    uint64_t accepted_tls;                    /* of accepted, over TLS (the rest plain) */
    uint64_t open_tls;                        /* of open_conns, over TLS */
    uint64_t tls_handshake_failures;          /* TLS handshakes that failed (not TLS, a
                                                 client certificate refused, the peer
                                                 gave up); those cut at hello_timeout_ms
                                                 count in rejected_malformed */
    uint64_t rejected_plain;                  /* plain TCP refused: tls_require */
} dhps_rpc_server_stats;

/* Snapshot of counters (relaxed atomic loads; each value is exact, the set is not a
 * consistent cut). Thread-safe. */
void dhps_rpc_server_get_stats(const dhps_rpc_server *s, dhps_rpc_server_stats *st);

/* Stop threads, close every connection and free the server. NULL allowed. Must not be
 * called from a handler. Clients see their connections close (DHPS_E_UNREACHABLE). */
void dhps_rpc_server_destroy(dhps_rpc_server *s);

/* ---- client ----------------------------------------------------------------------- */

typedef struct dhps_rpc_client_params {
    const void *secret;        /* shared cluster secret (copied), as for the server */
    size_t secret_len;
    uint32_t max_msg;          /* largest payload this side accepts (default 256 KiB) */
    uint32_t max_inflight;     /* outstanding calls per channel, power of two (default 1024) */
    uint32_t connect_timeout_ms;/* connect + hello bound (default 2000) */
    uint32_t shm_ring_bytes;   /* bytes of each shm ring, power of two, >= 4*max_msg+
                                  4 KiB (default: smallest such, at least 1 MiB) */
    uint32_t busy_poll_us;     /* SO_BUSY_POLL on channel sockets, 0 = off (default 0) */
    const uint8_t *host_id;    /* 16 bytes; NULL = kernel boot id */
    uint16_t hello_version;    /* test hook: hello version to speak (default: newest) */
    uint32_t verbs_slots;      /* verbs: receive slots = send slots = calls in flight on
                                  the verbs path per channel, 1..1024 (default 32) */
    uint32_t promote_backoff_ms;/* first wait before re-trying verbs after a failure;
                                  doubles up to 64x (default 20) */
    /* TLS for channels opened with `tls` (docs/rpc.md §4 "TLS"). Files are read at
     * create (DHPS_E_CONFIG with a log line naming a bad one, dhps_rpc_tls_check). */
    const char *tls_ca_file;   /* PEM CA bundle verifying servers (default NULL: opening a
                                  channel with tls fails with DHPS_E_CONFIG) */
    const char *tls_cert_file; /* client certificate and its key, for servers that ask */
    const char *tls_key_file;  /*   (both or neither; default NULL) */
    const char *tls_server_name;/* DNS name every server's certificate must carry (one
                                  cluster-wide name; also sent as SNI); NULL (default) =
                                  the numeric address dialled, as an IP SAN (copied) */
    uint32_t spin_us;          /* dhps_rpc_client_poll with calls in flight and nothing
                                  ready: keep turning without sleeping for up to this
                                  long before sleeping in the kernel, 0..DHPS_RPC_SPIN_US_MAX (default
                                  50; 0 = sleep at once). A wait whose spin ran out
                                  makes the next 16 waits sleep at once, so a slow peer
                                  costs little CPU; a spinning wait yields its CPU at
                                  least every 4 us to any thread ready to run there
                                  (docs/rpc.md §1 "Waiting") */
} dhps_rpc_client_params;

/* Fill p with the defaults above (no secret: set secret/secret_len). */
void dhps_rpc_client_params_init(dhps_rpc_client_params *p);

/* Create a client event loop. Returns 0 and sets *out, -EINVAL, DHPS_E_CONFIG (a TLS
 * file unusable: logged, naming it), -ENOMEM, -errno.
 * A client and all its channels are used by one thread at a time (no locks inside);
 * different clients are independent. Free with dhps_rpc_client_destroy. */
int dhps_rpc_client_create(const dhps_rpc_client_params *p, dhps_rpc_client **out);

/* Close every channel (their in-flight calls complete with DHPS_E_CANCELLED, callbacks
 * run inside this call) and free the client. NULL allowed. */
void dhps_rpc_client_destroy(dhps_rpc_client *c);

typedef struct dhps_rpc_channel_params {
    const char *host;          /* server address, numeric IPv4 (default "127.0.0.1") */
    uint16_t port;             /* server port (no default) */
    uint32_t allow;            /* transports this channel may use (default DHPS_RPC_ALL;
                                  TCP is always used for the hello) */
    int require;               /* transport that must be negotiated, or -1 (default) */
    bool mixed;                /* verbs channels: when the verbs path has no free slot,
                                  send on TCP instead of returning DHPS_E_BUSY (default
                                  false) */
    bool exclusive;            /* do not share the connection (default false: channels of
                                  one client to the same host:port with the same allow,
                                  require and mixed share one connection, one QP) */
    uint32_t tcp_connect_timeout_us; /* bound on the TCP connect alone, before the hello
                                  (0 = default: the client's connect_timeout_ms bounds
                                  connect and hello together). A caller with a deadline
                                  passes what is left of it, so a host that drops SYNs
                                  (dead, or a full backlog) costs at most that; a live
                                  host answers the connect in one round trip. */
    bool tls;                  /* run TLS under the hello (the client's tls_ca_file must be
                                  set); channels differing in it do not share a
                                  connection (default false) */
} dhps_rpc_channel_params;

/* Fill p with the defaults above (port must still be set). */
void dhps_rpc_channel_params_init(dhps_rpc_channel_params *p);

/* Open a channel. When this client already has a connection to the same host:port
 * with the same allow/require/mixed/tls policy (and neither side asked for exclusive),
 * the channel shares it: same TCP connection, same shm rings or verbs QP (one QP per
 * peer per client, the client being one worker thread); otherwise it connects,
 * authenticates and negotiates, blocking up to connect_timeout_ms. Returns 0 and
 * sets *out, or DHPS_E_UNREACHABLE (connect failed / peer closed), DHPS_E_TIMEOUT,
 * DHPS_E_AUTH (server proof wrong, or the server rejected ours), DHPS_E_VERSION,
 * DHPS_E_MALFORMED, DHPS_E_CONFIG (bad params, `require` not negotiable, or tls without
 * the client's tls_ca_file), DHPS_E_TLS (tls: the server's certificate not trusted or
 * not for its name, ours refused, no TLS at the server; or a plain channel to a server
 * that requires TLS), -ENOMEM. The channel belongs to c (same thread rule); close with dhps_rpc_channel_close. */
int dhps_rpc_channel_open(dhps_rpc_client *c, const dhps_rpc_channel_params *p,
                          dhps_rpc_channel **out);

/* Open a channel without blocking. Same sharing and checks as dhps_rpc_channel_open,
 * but the connect and hello run inside this client's dhps_rpc_client_poll turns, so a
 * peer that is slow to answer (stopped, loading, setting up verbs) holds no thread.
 * Calls may be started and sent on the channel at once: while it opens, a request is
 * copied once and waits (its deadline running); when the channel is ready it goes out
 * on the negotiated transport (fault rules applied then); when the open fails, it
 * completes with the open's error (DHPS_E_UNREACHABLE, DHPS_E_TIMEOUT, DHPS_E_AUTH,
 * ...). Returns 0 and sets *out (see dhps_rpc_channel_status), or at once
 * DHPS_E_CONFIG, -ENOMEM, -errno. Client thread only. */
int dhps_rpc_channel_open_async(dhps_rpc_client *c, const dhps_rpc_channel_params *p,
                                dhps_rpc_channel **out);

/* State of a channel: 0 ready, -EINPROGRESS while its open runs, or the error that
 * ended it (the open's, or DHPS_E_UNREACHABLE / DHPS_E_MALFORMED after the connection
 * broke). A failed channel stays failed: close it and open another. Client thread only. */
int dhps_rpc_channel_status(const dhps_rpc_channel *ch);

/* CLOCK_MONOTONIC time in ns at which the channel's connection became
 * ready; 0 while it opens or when its open failed. Client thread only. */
uint64_t dhps_rpc_channel_ready_ns(const dhps_rpc_channel *ch);

/* Close a channel: its in-flight calls complete with DHPS_E_CANCELLED (callbacks run
 * inside this call); the connection closes with its last channel. NULL allowed. */
void dhps_rpc_channel_close(dhps_rpc_channel *ch);

/* Does the channel's connection run TLS? Client thread only. */
bool dhps_rpc_channel_tls(const dhps_rpc_channel *ch);

/* Transport the channel's new calls use now (DHPS_RPC_TCP / _SHM / _VERBS; a verbs
 * channel reads TCP between a fallback and its re-promotion). Client thread only. */
int dhps_rpc_channel_transport(const dhps_rpc_channel *ch);

/* Completion: status 0 and resp/len = the response (in place in the receive ring or
 * buffer, valid only during the callback), or a negative code with resp NULL, len 0.
 * Runs inside dhps_rpc_client_poll (or close/destroy) on the client's thread; it may
 * start and send new calls, but must not close a channel or destroy the client.
 * Called exactly once per sent call. */
typedef void (*dhps_rpc_done_fn)(void *arg, int status, const void *resp, size_t len);

/*
 * Zero-copy send, step 1: lend the caller a buffer of at least max_len bytes for a
 * request to `method`, inside the transport's send memory. Returns 0 and sets *buf,
 * or DHPS_E_TOOBIG (max_len > negotiated max message), DHPS_E_BUSY (ring, verbs slots
 * or in-flight table full: poll, then retry), DHPS_E_UNREACHABLE (channel broken),
 * -EINVAL (a previous buffer was not yet sent). The buffer is valid until
 * dhps_rpc_call_send or dhps_rpc_call_abort on this channel; one lent buffer per
 * connection at a time (channels sharing a connection share that rule).
 */
int dhps_rpc_call_start(dhps_rpc_channel *ch, uint16_t method, size_t max_len, void **buf);

/*
 * Zero-copy send, step 2: queue the request (len <= max_len bytes of the lent buffer)
 * with a deadline timeout_us from now (0 = none). done(arg, ...) runs exactly once
 * later, from dhps_rpc_client_poll. Queued requests go out at the next poll/flush.
 * Returns 0 or -EINVAL (no buffer lent, len too long); on error done is not called.
 */
int dhps_rpc_call_send(dhps_rpc_channel *ch, size_t len, uint64_t timeout_us,
                       dhps_rpc_done_fn done, void *arg);

/* Give back the buffer lent to this channel without sending; no effect when none is
 * lent. Client thread only. */
void dhps_rpc_call_abort(dhps_rpc_channel *ch);

/* One loop turn (or several, up to timeout_ms, until at least one completion ran):
 * flush queued requests of every channel, receive responses, run callbacks, expire
 * deadlines, handle path failures (fallback to TCP, re-sending in-flight verbs calls)
 * and re-promotion. timeout_ms 0 = do not block, -1 = until something completes.
 * Returns the number of callbacks run (>= 0), -EINVAL when a channel has a lent
 * buffer outstanding (send or abort it first), or -errno from epoll. */
int dhps_rpc_client_poll(dhps_rpc_client *c, int timeout_ms);

/* dhps_rpc_client_poll with a nanosecond bound (timeout_ns < 0: until something
 * completes). Sleeps use epoll_pwait2 where the kernel has it, so a caller waking for a
 * hedge or a held-back call (fault delay) is not rounded up to the next millisecond. */
int dhps_rpc_client_poll_ns(dhps_rpc_client *c, int64_t timeout_ns);

/*
 * Blocking convenience: copy req into a lent buffer, send, poll until done or the
 * deadline, copy the response into resp (up to resp_cap; *resp_len gets the full
 * length, and DHPS_E_TOOBIG is returned when it did not fit). Returns 0, or the
 * call's error (DHPS_E_TIMEOUT, DHPS_E_UNREACHABLE, DHPS_E_HANDLER, DHPS_E_NOTFOUND,
 * DHPS_E_MALFORMED, DHPS_E_TOOBIG, -EINVAL). Runs other calls' callbacks meanwhile.
 */
int dhps_rpc_call(dhps_rpc_channel *ch, uint16_t method, const void *req, size_t req_len,
                  void *resp, size_t resp_cap, size_t *resp_len, uint64_t timeout_us);

typedef struct dhps_rpc_channel_stats {
    uint64_t calls[DHPS_RPC_NTRANSPORTS]; /* calls sent, by transport */
    uint64_t completed;                    /* callbacks with status 0 */
    uint64_t failed;                       /* callbacks with status < 0 */
    uint64_t timeouts;                     /* of those, deadline passed */
    uint64_t fallbacks;                    /* fast path lost, calls moved to TCP */
    uint64_t repromotions;                 /* fast path re-established */
    uint64_t retries;                      /* calls re-sent after a fallback */
    uint64_t doorbells;                    /* shm doorbell frames sent */
    uint64_t flushes;                      /* send syscalls / ring publishes / post lists */
    uint64_t channels;                     /* channels sharing this connection */
} dhps_rpc_channel_stats;

/* Counters of the channel's connection (shared by every channel that shares it, see
 * dhps_rpc_channel_params.exclusive). Client thread only. */
void dhps_rpc_channel_get_stats(const dhps_rpc_channel *ch, dhps_rpc_channel_stats *st);

typedef struct dhps_rpc_client_stats {
    uint64_t turns;       /* loop turns run by dhps_rpc_client_poll (and dhps_rpc_call) */
    uint64_t sleeps;      /* turns that waited in the kernel (epoll with a timeout) */
    uint64_t spin_turns;  /* turns run without sleeping while a wait spun (spin_us) */
    uint64_t spin_hits;   /* waits that ended with a completion while spinning */
    uint64_t spin_misses; /* waits whose spin ran out: they slept, and the next 16 waits
                             sleep at once */
} dhps_rpc_client_stats;

/* Counters of the client's event loop since create (how it waited). Client thread
 * only. */
void dhps_rpc_client_get_stats(const dhps_rpc_client *c, dhps_rpc_client_stats *st);

/* Test hooks (fault injection). DHPS_RPC_FAULT_QP_ERROR moves the channel's verbs
 * queue pair to the error state, as a failing device would; the next poll detects it
 * and falls back. Returns 0, or -ENOTCONN when the channel has no verbs path now. */
enum { DHPS_RPC_FAULT_QP_ERROR = 1 };
int dhps_rpc_channel_inject(dhps_rpc_channel *ch, int fault);

/* ---- fault injection (client side, per peer) --------------------------------------
 *
 * Rules in the manner of Envoy's fault filter, applied to calls a client sends to one
 * peer, keyed by the peer's address as given to dhps_rpc_channel_open (numeric IPv4
 * host and port; port 0 matches every port of that host). The table is process-wide:
 * every dhps_rpc_client of the process sees a rule (a test or an operator thread sets
 * it while other threads' clients carry traffic). Set, clear and read are thread-safe
 * (one mutex); the call path costs one relaxed atomic load while the table is empty.
 *
 * Applied in dhps_rpc_call_send (and dhps_rpc_call), in this order, once per call:
 *   partition: the call fails with DHPS_E_UNREACHABLE (as if the peer vanished).
 *   drop:      drop_percent of calls fail, with DHPS_E_UNREACHABLE (drop_timeout false)
 *              or DHPS_E_TIMEOUT at their deadline (drop_timeout true; a call with no
 *              deadline then fails with DHPS_E_TIMEOUT at once). Nothing is sent.
 *   delay:     delay_percent of the remaining calls are sent delay_us later (the request
 *              is copied out of the lent buffer and re-issued by dhps_rpc_client_poll;
 *              if its deadline passes first it fails with DHPS_E_TIMEOUT).
 * A faulted call's callback still runs exactly once, from dhps_rpc_client_poll, never
 * inside dhps_rpc_call_send. Percent draws come from a per-rule xorshift generator
 * seeded by `seed`, so one thread's call sequence sees a reproducible pattern. Calls
 * already sent when a rule is set are not affected. A rule with no effect selected
 * (all zero) is allowed and only counts calls.
 */
typedef struct dhps_rpc_fault {
    bool partition;          /* every call fails with DHPS_E_UNREACHABLE */
    uint32_t drop_percent;   /* 0..100 */
    bool drop_timeout;       /* dropped calls time out instead of failing fast */
    uint32_t delay_us;       /* added before sending, 0 = none (at most 60 s) */
    uint32_t delay_percent;  /* 0..100 of calls delayed (default 100) */
    uint64_t seed;           /* percent generator seed (0 = a fixed default) */
} dhps_rpc_fault;

typedef struct dhps_rpc_fault_stats {
    uint64_t calls;          /* calls that matched the rule */
    uint64_t partitioned;    /* failed by the partition */
    uint64_t dropped;        /* failed by the drop percentage */
    uint64_t delayed;        /* sent late */
} dhps_rpc_fault_stats;

/* Most rules at once (per table: the client's process-wide one, each server's own). */
#define DHPS_RPC_FAULT_MAX_RULES 64u
/* Longest delay a rule may ask for (60 s). */
#define DHPS_RPC_FAULT_MAX_DELAY_US 60000000u

/* Fill f with no effect (delay_percent 100, everything else 0). */
void dhps_rpc_fault_init(dhps_rpc_fault *f);

/* Set (or replace) the rule for host:port; its counters restart at zero. Returns 0,
 * -EINVAL (bad host, percent > 100, delay > 60 s), -ENOSPC (table full). Thread-safe. */
int dhps_rpc_fault_set(const char *host, uint16_t port, const dhps_rpc_fault *f);

/* Remove the rule for host:port (host NULL: every rule). Returns 0 or -ENOENT. Calls
 * already held back by a delay are still sent at their time. Thread-safe. */
int dhps_rpc_fault_clear(const char *host, uint16_t port);

/* Counters of the rule for host:port. Returns 0 or -ENOENT. Thread-safe. */
int dhps_rpc_fault_get_stats(const char *host, uint16_t port, dhps_rpc_fault_stats *st);

/* ---- fault injection (server side, per calling peer) ------------------------------
 *
 * The same rules applied by a server to the requests it receives, keyed by the calling
 * peer's address as the server's TCP socket sees it (numeric IPv4; port 0 matches every
 * port of that address, i.e. every connection from that host) or DHPS_RPC_FAULT_ANY_PEER
 * ("*", port 0: every peer without a rule of its own, "make this node slow"). Lookup:
 * exact ip:port, else ip:0, else "*". Each server has its own table (a test can fault one
 * of two servers of a process). Set, clear, get and list are thread-safe (one mutex per
 * server) and may be called while the server runs; a worker costs one relaxed atomic load
 * per request while the server's table is empty. Applied per request, in this order,
 * whatever the transport (TCP, shm, verbs), before the handler:
 *   partition: the request is discarded: no handler run, no response; the connection
 *              stays open and its hello still succeeds, so the caller sees what a
 *              network partition with live sockets looks like: silence, and its call
 *              ends with DHPS_E_TIMEOUT at its deadline (no deadline: never).
 *   drop:      drop_percent of requests are discarded the same way (drop_timeout has no
 *              meaning here: a dropped request always ends in the caller's time-out).
 *   delay:     delay_percent of the remaining requests run their handler at once, and
 *              the response (copied out) is held back delay_us on a per-worker timer
 *              heap; the worker goes on serving its other connections meanwhile (its
 *              loop sleeps no longer than the next due response). A worker holds at
 *              most fault_hold_bytes (server param) of responses; beyond that a
 *              delayed response goes out at once and counts in fault_overflow. A held-back response
 *              goes back on the transport its request came in on; if the connection
 *              closed meanwhile it is discarded; if its verbs path failed meanwhile it
 *              is discarded and the client's re-send on TCP is answered from the
 *              de-duplication cache.
 * Requests already handled when a rule is set are not affected; clearing a rule does
 * not release responses already held back (they go at their time). Counters (calls =
 * requests matched, partitioned, dropped, delayed) restart when a rule is replaced.
 * Percent draws: per-rule xorshift seeded by `seed`, shared by the server's workers.
 */
#define DHPS_RPC_FAULT_ANY_PEER "*"

typedef struct dhps_rpc_fault_entry {
    char host[64];              /* numeric IPv4 or DHPS_RPC_FAULT_ANY_PEER */
    uint16_t port;              /* 0 = every port */
    dhps_rpc_fault f;           /* the rule as set */
    dhps_rpc_fault_stats st;    /* its counters now */
} dhps_rpc_fault_entry;

/* Set (or replace) the server's rule for requests from peer:port (peer a numeric IPv4
 * address, or DHPS_RPC_FAULT_ANY_PEER with port 0); its counters restart at zero.
 * Returns 0, -EINVAL (NULL s or f, peer not numeric IPv4 nor "*", "*" with a port,
 * percent > 100, delay_us > DHPS_RPC_FAULT_MAX_DELAY_US), -ENOSPC (64 rules already).
 * Thread-safe; takes effect for requests read after it returns. */
int dhps_rpc_server_fault_set(dhps_rpc_server *s, const char *peer, uint16_t port,
                              const dhps_rpc_fault *f);

/* Remove the rule for peer:port (peer NULL: every rule of this server). Returns 0,
 * -ENOENT (no such rule / no rule at all), -EINVAL (bad peer). Responses already held
 * back are still sent at their time. Thread-safe. */
int dhps_rpc_server_fault_clear(dhps_rpc_server *s, const char *peer, uint16_t port);

/* Counters of the rule for peer:port. Returns 0, -ENOENT or -EINVAL. Thread-safe. */
int dhps_rpc_server_fault_get_stats(dhps_rpc_server *s, const char *peer, uint16_t port,
                                    dhps_rpc_fault_stats *st);

/* Copy up to cap rules with their counters into out (in table order; out may be NULL
 * with cap 0). Returns the number of rules set (may exceed cap). Thread-safe. */
size_t dhps_rpc_server_fault_list(dhps_rpc_server *s, dhps_rpc_fault_entry *out,
                                  size_t cap);

#ifdef __cplusplus
}
#endif
#endif

/* The RPC suite's shared part: the transport under test, the handlers' methods, and
 * the helpers every part uses (rpc_suite.c). Built once per transport:
 * RPC_SUITE_TRANSPORT = DHPS_RPC_TCP / _SHM / _VERBS. */
#ifndef DHPS_TEST_RPC_SUITE_H
#define DHPS_TEST_RPC_SUITE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, pthread_setaffinity_np */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dhps/rpc.h"
#include "wire.h"
#include "test_scale.h"

#ifndef RPC_SUITE_TRANSPORT
#define RPC_SUITE_TRANSPORT DHPS_RPC_TCP
#endif
#define T RPC_SUITE_TRANSPORT

enum { M_ECHO = 1, M_FAIL = 2, M_SLOW = 3, M_COUNT = 4, M_BIG = 5, M_WHO = 6 };
#define SECRET "cluster-secret-for-tests"

/* handler calls served (every handler counts) */
extern _Atomic long handled;
/* when >= 0, the M_SLOW handler writes a byte there as it starts */
extern int g_slow_started_fd;
/* M_SLOW with this many ms waits until the test opens the gate (at most a minute: a
 * failed test must not hang the server's destroy), instead of sleeping */
#define GATED UINT32_MAX
extern _Atomic bool g_gate_open;
/* when set, start_server's hello timeout */
extern uint32_t g_hello_timeout_ms;

/* M_ECHO: the response is the request (servers a test builds itself register it) */
int h_echo(void *arg, dhps_rpc_request *r);

/* A started server with W workers and the suite's handlers (M_ECHO, M_FAIL, M_SLOW,
 * M_BIG, M_WHO); host_id NULL = this host's. */
dhps_rpc_server *start_server(uint32_t workers, const uint8_t *host_id);
/* The suite's client params: 64 KiB messages, 256 calls in flight; connect_timeout_ms
 * 0 = 2 s scaled (test_scale.h). */
void client_params(dhps_rpc_client_params *cp, const char *secret, uint32_t connect_timeout_ms);
/* A client with client_params. */
dhps_rpc_client *new_client_ct(const char *secret, uint32_t connect_timeout_ms);
dhps_rpc_client *new_client(const char *secret);
/* Channel params for the transport under test (TCP only, or T required). */
void chan_params(dhps_rpc_channel_params *p, uint16_t port);
/* A channel on T to port, or the test fails naming the error. */
dhps_rpc_channel *open_chan(dhps_rpc_client *c, uint16_t port);

/* Completions of 8-byte echoes: count, failures (the first one's status), and the sum
 * of the low 32 bits of every value echoed. */
typedef struct async_ctx {
    int done, bad;
    int first_status; /* status of the first failed call, for the report */
    uint32_t expect_sum;
} async_ctx;
void async_done(void *arg, int status, const void *resp, size_t len);

/* A TCP socket bound to an ephemeral loopback port (*a gets the address), listening with
 * `backlog` when backlog >= 0, else left unlistened (its port refuses connections). */
int loopback_socket(int backlog, struct sockaddr_in *a);
/* Seconds since *t0 (CLOCK_MONOTONIC). */
double since(const struct timespec *t0);

/* the tests (main's tables list them) */
void echo_blocking(void **state);
void client_spin_then_sleep(void **state);
void client_spin_gives_way(void **state);
void zero_copy_async_coalesced(void **state);
void large_and_limits(void **state);
void errors_distinct(void **state);
void slow_reader_backpressure(void **state);
void inflight_limit_busy(void **state);
void channels_share_one_connection(void **state);
void wrong_secret_rejected(void **state);
void forged_proof_closed_before_handlers(void **state);
void stalled_hello_does_not_block_others(void **state);
void server_proves_only_after_client(void **state);
void client_refuses_impostor_server(void **state);
void garbage_closes_connection(void **state);
void negotiation_policy(void **state);
void refused_until_started(void **state);
void create_on_taken_port(void **state);
void tcp_connect_bounded(void **state);
void async_open_queues_calls(void **state);
void async_open_does_not_block(void **state);
void async_open_errors(void **state);
void peer_killed_mid_call(void **state);
void server_destroyed_under_client(void **state);
void threads_many_clients(void **state);
void server_fault_rules(void **state);
void verbs_requests_overtake_handoff(void **state);
void verbs_qp_error_fallback_and_repromotion(void **state);
void verbs_retry_answered_from_cache(void **state);
void verbs_mixed_mode(void **state);
void verbs_small_shared_receive_queue(void **state);
void verbs_link_deleted_mid_stream(void **state);
#endif

/*
 * The RPC suite, through the public API (plus the private wire format for raw-socket
 * attacks). Built once per transport: RPC_SUITE_TRANSPORT = DHPS_RPC_TCP / _SHM /
 * _VERBS. The verbs build skips (77) without an active RDMA device.
 *
 * This file: the handlers, the shared helpers and main (the test tables). The tests:
 * rpc_suite_basic.c (calls, limits, sharing, waiting), rpc_suite_security.c (the hello
 * under attack, negotiation), rpc_suite_faults.c (refusals, opening without blocking,
 * dead peers, many threads, server-side fault rules), rpc_suite_verbs.c (verbs faults).
 */
#include "rpc_suite.h"

_Atomic long handled;

int h_echo(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    handled++;
    if (r->req_len > r->resp_cap)
        return -1;
    memcpy(r->resp, r->req, r->req_len);
    r->resp_len = r->req_len;
    return 0;
}
static int h_fail(void *arg, dhps_rpc_request *r) { (void)arg; (void)r; handled++; return -5; }
int g_slow_started_fd = -1;
_Atomic bool g_gate_open = true;

static int h_slow(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    handled++;
    if (g_slow_started_fd >= 0 && write(g_slow_started_fd, "s", 1) != 1)
        return -1;
    uint32_t ms = 200;
    if (r->req_len == 4)
        memcpy(&ms, r->req, 4);
    if (ms == GATED) {
        for (int i = 0; i < 60000 && !g_gate_open; i++) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    } else {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    r->resp_len = 0;
    return 0;
}
static int h_who(void *arg, dhps_rpc_request *r)
{   /* the caller's port as the server sees it (the key of per-port fault rules) */
    (void)arg;
    uint32_t port = r->peer_port;
    memcpy(r->resp, &port, 4);
    r->resp_len = 4;
    return 0;
}
static int h_big(void *arg, dhps_rpc_request *r)
{   /* answer with resp_cap bytes of a pattern */
    (void)arg;
    handled++;
    for (size_t i = 0; i < r->resp_cap; i++)
        ((uint8_t *)r->resp)[i] = (uint8_t)(i * 7);
    r->resp_len = r->resp_cap;
    return 0;
}

uint32_t g_hello_timeout_ms;

dhps_rpc_server *start_server(uint32_t workers, const uint8_t *host_id)
{
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    /* not under test unless a test sets it: scaled (test_scale.h) */
    sp.hello_timeout_ms = g_hello_timeout_ms ? g_hello_timeout_ms : dhps_test_ms(2000);
    sp.workers = workers;
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.max_msg = 64 << 10;
    sp.host_id = host_id;
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_FAIL, h_fail, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_SLOW, h_slow, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_BIG, h_big, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_WHO, h_who, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), -EEXIST);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    assert_int_equal(dhps_rpc_server_register(s, 9, h_echo, NULL), -EBUSY);
    return s;
}

/* A client with the suite's limits; connect_timeout_ms 0 = 2 s scaled (test_scale.h). */
void client_params(dhps_rpc_client_params *cp, const char *secret, uint32_t connect_timeout_ms)
{
    dhps_rpc_client_params_init(cp);
    cp->secret = secret;
    cp->secret_len = strlen(secret);
    cp->max_msg = 64 << 10;
    cp->max_inflight = 256;
    cp->connect_timeout_ms = connect_timeout_ms ? connect_timeout_ms : dhps_test_ms(2000);
}

dhps_rpc_client *new_client_ct(const char *secret, uint32_t connect_timeout_ms)
{
    dhps_rpc_client_params cp;
    client_params(&cp, secret, connect_timeout_ms);
    dhps_rpc_client *c = NULL;
    assert_int_equal(dhps_rpc_client_create(&cp, &c), 0);
    return c;
}

dhps_rpc_client *new_client(const char *secret) { return new_client_ct(secret, 0); }

void chan_params(dhps_rpc_channel_params *p, uint16_t port)
{
    dhps_rpc_channel_params_init(p);
    p->port = port;
    if (T == DHPS_RPC_TCP)
        p->allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    else
        p->require = T;
    if (T == DHPS_RPC_VERBS)
        p->allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(DHPS_RPC_VERBS);
}

dhps_rpc_channel *open_chan(dhps_rpc_client *c, uint16_t port)
{
    dhps_rpc_channel_params p;
    chan_params(&p, port);
    dhps_rpc_channel *ch = NULL;
    int rc = dhps_rpc_channel_open(c, &p, &ch);
    if (rc)
        fail_msg("channel_open on %s: %s", dhps_rpc_transport_name(T), dhps_strerror(rc));
    assert_int_equal(dhps_rpc_channel_transport(ch), T);
    return ch;
}

void async_done(void *arg, int status, const void *resp, size_t len)
{
    async_ctx *a = arg;
    a->done++;
    if (status != 0 || len != 8) {
        if (!a->bad++)
            a->first_status = status;
        return;
    }
    uint64_t v;
    memcpy(&v, resp, 8);
    a->expect_sum += (uint32_t)v;
}

int loopback_socket(int backlog, struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)a, sizeof *a), 0);
    if (backlog >= 0)
        assert_int_equal(listen(fd, backlog), 0);
    socklen_t al = sizeof *a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)a, &al), 0);
    return fd;
}

double since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* DHPS_TEST_FILTER=name (cmocka pattern, * and ? allowed) runs only matching tests */
    if (getenv("DHPS_TEST_FILTER"))
        cmocka_set_test_filter(getenv("DHPS_TEST_FILTER"));
    if (T == DHPS_RPC_VERBS) {
        if (!dhps_rpc_verbs_available()) {
            printf("SKIP: no active RDMA verbs device on this host\n");
            return 77;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(echo_blocking),
        cmocka_unit_test(client_spin_then_sleep),
        cmocka_unit_test(client_spin_gives_way),
        cmocka_unit_test(zero_copy_async_coalesced),
        cmocka_unit_test(large_and_limits),
        cmocka_unit_test(errors_distinct),
        cmocka_unit_test(inflight_limit_busy),
        cmocka_unit_test(slow_reader_backpressure),
        cmocka_unit_test(channels_share_one_connection),
        cmocka_unit_test(wrong_secret_rejected),
        cmocka_unit_test(forged_proof_closed_before_handlers),
        cmocka_unit_test(stalled_hello_does_not_block_others),
        cmocka_unit_test(garbage_closes_connection),
        cmocka_unit_test(negotiation_policy),
        cmocka_unit_test(server_proves_only_after_client),
        cmocka_unit_test(client_refuses_impostor_server),
        cmocka_unit_test(server_destroyed_under_client),
        cmocka_unit_test(threads_many_clients),
        cmocka_unit_test(refused_until_started),
        cmocka_unit_test(create_on_taken_port),
        cmocka_unit_test(tcp_connect_bounded),
        cmocka_unit_test(async_open_queues_calls),
        cmocka_unit_test(async_open_does_not_block),
        cmocka_unit_test(async_open_errors),
        cmocka_unit_test(peer_killed_mid_call),
        cmocka_unit_test(server_fault_rules),
    };
    const struct CMUnitTest verbs_tests[] = {
        cmocka_unit_test(verbs_qp_error_fallback_and_repromotion),
        cmocka_unit_test(verbs_retry_answered_from_cache),
        cmocka_unit_test(verbs_mixed_mode),
        cmocka_unit_test(verbs_small_shared_receive_queue),
        cmocka_unit_test(verbs_requests_overtake_handoff),
        cmocka_unit_test(verbs_link_deleted_mid_stream), /* last: the device is gone after */
    };
    int fails = cmocka_run_group_tests(tests, NULL, NULL);
    if (T == DHPS_RPC_VERBS)
        fails += cmocka_run_group_tests(verbs_tests, NULL, NULL);
    return fails;
}

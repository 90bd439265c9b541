/*
 * Server-side fault rules (dhps_rpc_server_fault_*), through the public API, on TCP and
 * shared memory: a delayed peer's responses are held back while another connection of
 * the same (single) worker is served; drop and partition make calls time out while
 * other peers' calls succeed and no handler runs for them; the per-address, per-port
 * and every-peer rules and their precedence; clearing restores; counters; a connection
 * closed with responses held back; rules changed by another thread under traffic.
 *
 * Every connection comes from 127.0.0.1, so peers are told apart by their TCP port: a
 * "whoami" method answers the caller's port as the server sees it (dhps_rpc_request
 * peer_port), and rules are set for 127.0.0.1:<that port>.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dhps/rpc.h"
#include "fault_test.h"
#include "test_scale.h"

enum { M_ECHO = 1, M_WHOAMI = 2 };
static const char SECRET[] = "server-fault-secret";

static int h_whoami(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    uint32_t port = r->peer_port;
    memcpy(r->resp, &port, 4);
    r->resp_len = 4;
    if (strcmp(r->peer, "127.0.0.1") != 0)
        return -1;
    return 0;
}

static dhps_rpc_server *start_server_hold(uint32_t workers, uint64_t hold_bytes)
{
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    if (hold_bytes)
        sp.fault_hold_bytes = hold_bytes;
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.workers = workers;
    sp.hello_timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_WHOAMI, h_whoami, NULL), 0);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    return s;
}

static dhps_rpc_server *start_server(uint32_t workers)
{
    return start_server_hold(workers, 0);
}

typedef struct peer {
    dhps_rpc_client *c;
    dhps_rpc_channel *ch;
    uint16_t port; /* our port as the server sees it */
} peer;

static void peer_open(peer *p, uint16_t server_port, int transport)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = SECRET;
    cp.secret_len = sizeof SECRET - 1;
    cp.max_inflight = 512;
    cp.connect_timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    assert_int_equal(dhps_rpc_client_create(&cp, &p->c), 0);
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.port = server_port;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP) | DHPS_RPC_MASK(transport);
    chp.require = transport;
    chp.exclusive = true;
    assert_int_equal(dhps_rpc_channel_open(p->c, &chp, &p->ch), 0);
    assert_int_equal(dhps_rpc_channel_transport(p->ch), transport);
    uint32_t port = 0;
    size_t n = 0;
    assert_int_equal(dhps_rpc_call(p->ch, M_WHOAMI, NULL, 0, &port, 4, &n, dhps_test_us(5000000)),
                     0);
    assert_int_equal(n, 4);
    assert_true(port > 0 && port < 65536);
    p->port = (uint16_t)port;
}

static void peer_close(peer *p)
{
    dhps_rpc_channel_close(p->ch);
    dhps_rpc_client_destroy(p->c);
    memset(p, 0, sizeof *p);
}

static int echo(peer *p, uint64_t timeout_us)
{
    uint64_t v = 42, r = 0;
    size_t n = 0;
    int rc = dhps_rpc_call(p->ch, M_ECHO, &v, 8, &r, 8, &n, timeout_us);
    if (rc == 0)
        assert_true(n == 8 && r == 42);
    return rc;
}

/* async calls: count completions by status */
typedef struct tally {
    int done, ok, timeout, other;
} tally;

static void on_done(void *arg, int status, const void *resp, size_t len)
{
    tally *t = arg;
    t->done++;
    if (status == 0) {
        assert_int_equal(len, 8);
        uint64_t v;
        memcpy(&v, resp, 8);
        assert_true(v == 7);
        t->ok++;
    } else if (status == DHPS_E_TIMEOUT) {
        t->timeout++;
    } else {
        t->other++;
    }
}

static void send_async(peer *p, tally *t, uint64_t timeout_us)
{
    void *buf;
    assert_int_equal(dhps_rpc_call_start(p->ch, M_ECHO, 8, &buf), 0);
    uint64_t v = 7;
    memcpy(buf, &v, 8);
    assert_int_equal(dhps_rpc_call_send(p->ch, 8, timeout_us, on_done, t), 0);
}

static void wait_all(peer *p, tally *t, int n)
{
    while (t->done < n)
        assert_true(dhps_rpc_client_poll(p->c, 100) >= 0);
}

static void bad_arguments(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(1);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    assert_int_equal(dhps_rpc_server_fault_set(NULL, "127.0.0.1", 0, &f), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, NULL, 0, &f), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", 0, NULL), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, "", 0, &f), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, "localhost", 0, &f), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.256", 0, &f), -EINVAL);
    assert_int_equal(dhps_rpc_server_fault_set(s, "*", 80, &f), -EINVAL);
    f.drop_percent = 101;
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.1", 0, &f), -EINVAL);
    dhps_rpc_fault_init(&f);
    f.delay_percent = 101;
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.1", 0, &f), -EINVAL);
    dhps_rpc_fault_init(&f);
    f.delay_us = DHPS_RPC_FAULT_MAX_DELAY_US + 1;
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.1", 0, &f), -EINVAL);
    dhps_rpc_fault_init(&f);
    assert_int_equal(dhps_rpc_server_fault_clear(s, "10.0.0.1", 0), -ENOENT);
    assert_int_equal(dhps_rpc_server_fault_clear(s, NULL, 0), -ENOENT);
    assert_int_equal(dhps_rpc_server_fault_clear(s, "nope", 0), -EINVAL);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "10.0.0.1", 0, &fs), -ENOENT);
    assert_int_equal(dhps_rpc_server_fault_list(s, NULL, 0), 0);
    for (uint32_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES - 1; i++)
        assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.1", (uint16_t)(i + 1), &f), 0);
    assert_int_equal(dhps_rpc_server_fault_set(s, "*", 0, &f), 0);
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.2", 0, &f), -ENOSPC);
    assert_int_equal(dhps_rpc_server_fault_set(s, "10.0.0.1", 1, &f), 0); /* replace */
    dhps_rpc_fault_entry e[4];
    assert_int_equal(dhps_rpc_server_fault_list(s, e, 4), DHPS_RPC_FAULT_MAX_RULES);
    assert_string_equal(e[0].host, "10.0.0.1");
    assert_int_equal(e[0].port, 1);
    assert_int_equal(e[0].f.delay_percent, 100);
    /* the server's table is its own: the client side's process-wide table is empty */
    assert_int_equal(dhps_rpc_fault_clear(NULL, 0), -ENOENT);
    assert_int_equal(dhps_rpc_server_fault_clear(s, NULL, 0), 0);
    assert_int_equal(dhps_rpc_server_fault_list(s, NULL, 0), 0);
    dhps_rpc_server_destroy(s);
}

/* A delay on peer A's port holds A's response back while peer B, on the same worker,
 * is answered; A's response then arrives, no earlier than the delay. */
static void delay_one_peer(int transport)
{
    dhps_rpc_server *s = start_server(1);
    uint16_t port = dhps_rpc_server_port(s);
    peer a, b;
    peer_open(&a, port, transport);
    peer_open(&b, port, transport);
    assert_int_not_equal(a.port, b.port);
    /* the delay is under test: A's response is held while B's calls are answered. Its
     * margin is calibrated: 20 times what B's calls take here and now (sanitizers, load),
     * at least 50 ms scaled (test_scale.h: a stall after the calibration) */
    const int nb = 50;
    uint64_t c0 = now_us();
    for (int i = 0; i < nb; i++)
        assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    uint64_t d = 20 * (now_us() - c0);
    if (d < dhps_test_us(50000))
        d = dhps_test_us(50000);
    const uint32_t delay = d < DHPS_RPC_FAULT_MAX_DELAY_US ? (uint32_t)d
                                                          : DHPS_RPC_FAULT_MAX_DELAY_US;
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = delay;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    tally ta = {0};
    uint64_t t0 = now_us();
    send_async(&a, &ta, dhps_test_us(30000000));
    assert_true(dhps_rpc_client_poll(a.c, 0) >= 0); /* flush: the request leaves */
    long before = handled;
    for (int i = 0; i < nb; i++)
        assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    /* B's calls were served (one worker: A's held-back response does not block it) */
    assert_true(handled - before >= nb);
    uint64_t tb = now_us() - t0;
    /* A: nothing yet (its response is held back) */
    assert_int_equal(dhps_rpc_client_poll(a.c, 0), 0);
    assert_int_equal(ta.done, 0);
    wait_all(&a, &ta, 1);
    uint64_t ta_us = now_us() - t0;
    assert_int_equal(ta.ok, 1);
    assert_true(ta_us >= delay);
    assert_true(ta_us < delay + dhps_test_us(20000000)); /* the delay, not the deadline */
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs), 0);
    assert_int_equal(fs.calls, 1);
    assert_int_equal(fs.delayed, 1);
    assert_int_equal(fs.dropped + fs.partitioned, 0);
    print_message("  %s: B's %d calls done after %llu us while A's response was held; A "
                  "answered after %llu us (delay %u us)\n", dhps_rpc_transport_name(transport),
                  nb, (unsigned long long)tb, (unsigned long long)ta_us, delay);
    /* many delayed calls in flight come back, each exactly once */
    f.delay_us = 20000;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    tally tm = {0};
    for (int i = 0; i < 100; i++)
        send_async(&a, &tm, dhps_test_us(30000000));
    wait_all(&a, &tm, 100);
    assert_int_equal(tm.ok, 100);
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs), 0);
    assert_int_equal(fs.delayed, 100);
    /* cleared: A answered at once again (no held-back response left) */
    assert_int_equal(dhps_rpc_server_fault_clear(s, "127.0.0.1", a.port), 0);
    assert_int_equal(echo(&a, dhps_test_us(5000000)), 0);
    peer_close(&a);
    peer_close(&b);
    dhps_rpc_server_destroy(s);
}

static void delay_one_peer_tcp(void **st)
{
    (void)st;
    delay_one_peer(DHPS_RPC_TCP);
}

static void delay_one_peer_shm(void **st)
{
    (void)st;
    delay_one_peer(DHPS_RPC_SHM);
}

/* Drop: A's calls time out, B's succeed, no handler runs for a dropped request; a 30 %
 * drop with a seed drops exactly the calls the counters say. */
static void drop_one_peer(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(1);
    uint16_t port = dhps_rpc_server_port(s);
    peer a, b;
    peer_open(&a, port, DHPS_RPC_TCP);
    peer_open(&b, port, DHPS_RPC_TCP);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.drop_percent = 100;
    f.drop_timeout = false; /* ignored server side: a dropped request is never answered */
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    long before = handled;
    tally t = {0};
    for (int i = 0; i < 20; i++)
        send_async(&a, &t, 100000);
    for (int i = 0; i < 20; i++)
        assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    wait_all(&a, &t, 20);
    assert_int_equal(t.timeout, 20);
    assert_int_equal(handled - before, 20); /* B's only */
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs), 0);
    assert_int_equal(fs.calls, 20);
    assert_int_equal(fs.dropped, 20);
    /* 30 % */
    f.drop_percent = 30;
    f.seed = 12345;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    tally t2 = {0};
    const int n = 400;
    for (int i = 0; i < n; i++)
        send_async(&a, &t2, dhps_test_us(300000)); /* answered ones must make it: scaled */
    wait_all(&a, &t2, n);
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs), 0);
    assert_int_equal(fs.calls, n);
    assert_int_equal(t2.timeout, (int)fs.dropped);
    assert_int_equal(t2.ok, n - (int)fs.dropped);
    assert_true(fs.dropped >= 80 && fs.dropped <= 160); /* 120 expected, sd 9 */
    print_message("  30%% drop over %d calls: %llu dropped (timed out), %d answered\n", n,
                  (unsigned long long)fs.dropped, t2.ok);
    /* cleared: every call answered */
    assert_int_equal(dhps_rpc_server_fault_clear(s, "127.0.0.1", a.port), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(echo(&a, dhps_test_us(5000000)), 0);
    peer_close(&a);
    peer_close(&b);
    dhps_rpc_server_destroy(s);
}

/* Partition by address (every port), by port, and of every peer, with precedence:
 * exact ip:port, then ip, then "*". A partitioned peer's hello still succeeds. */
static void partition_rules(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(2);
    uint16_t port = dhps_rpc_server_port(s);
    peer a, b;
    peer_open(&a, port, DHPS_RPC_TCP);
    peer_open(&b, port, DHPS_RPC_TCP);
    dhps_rpc_fault f, none;
    dhps_rpc_fault_init(&f);
    dhps_rpc_fault_init(&none);
    f.partition = true;
    /* port rule: only A */
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    long before = handled;
    assert_int_equal(echo(&a, 50000), DHPS_E_TIMEOUT);
    assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    assert_int_equal(handled - before, 1);
    /* address rule: everyone from 127.0.0.1 but A keeps its own rule */
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", 0, &f), 0);
    assert_int_equal(echo(&b, 50000), DHPS_E_TIMEOUT);
    /* a new connection from the partitioned address opens (hello is not faulted) but its
     * calls go unanswered */
    peer c;
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = SECRET;
    cp.secret_len = sizeof SECRET - 1;
    assert_int_equal(dhps_rpc_client_create(&cp, &c.c), 0);
    dhps_rpc_channel_params chp;
    dhps_rpc_channel_params_init(&chp);
    chp.port = port;
    chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    assert_int_equal(dhps_rpc_channel_open(c.c, &chp, &c.ch), 0);
    assert_int_equal(echo(&c, 50000), DHPS_E_TIMEOUT);
    /* an exact rule with no effect exempts B from the address rule */
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", b.port, &none), 0);
    assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    assert_int_equal(dhps_rpc_server_fault_clear(s, "127.0.0.1", 0), 0);
    assert_int_equal(echo(&c, dhps_test_us(5000000)), 0);
    /* every peer: "*" applies to peers without a rule of their own (C), not to B */
    assert_int_equal(dhps_rpc_server_fault_set(s, DHPS_RPC_FAULT_ANY_PEER, 0, &f), 0);
    assert_int_equal(echo(&c, 50000), DHPS_E_TIMEOUT);
    assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    assert_int_equal(echo(&a, 50000), DHPS_E_TIMEOUT); /* its own partition */
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "*", 0, &fs), 0);
    assert_int_equal(fs.calls, 1);
    assert_int_equal(fs.partitioned, 1);
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs), 0);
    assert_int_equal(fs.calls, 2);
    assert_int_equal(fs.partitioned, 2);
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", b.port, &fs), 0);
    assert_int_equal(fs.calls, 2);
    assert_int_equal(fs.partitioned + fs.dropped + fs.delayed, 0);
    dhps_rpc_fault_entry e[8];
    assert_int_equal(dhps_rpc_server_fault_list(s, e, 8), 3);
    /* cleared: all served; the connections survived the partition */
    assert_int_equal(dhps_rpc_server_fault_clear(s, NULL, 0), 0);
    assert_int_equal(echo(&a, dhps_test_us(5000000)), 0);
    assert_int_equal(echo(&b, dhps_test_us(5000000)), 0);
    assert_int_equal(echo(&c, dhps_test_us(5000000)), 0);
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.accepted, 3);
    peer_close(&a);
    peer_close(&b);
    peer_close(&c);
    dhps_rpc_server_destroy(s);
}

/* A client that goes away with responses held back for it: the server drops them and
 * keeps serving (ASan: nothing leaks, nothing is used after free). */
static void close_with_held_responses(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(1);
    uint16_t port = dhps_rpc_server_port(s);
    peer a, b;
    peer_open(&a, port, DHPS_RPC_TCP);
    peer_open(&b, port, DHPS_RPC_SHM);
    /* a's responses are held far longer than the test runs (they must still be held when
     * a closes), b's briefly */
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = DHPS_RPC_FAULT_MAX_DELAY_US;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", a.port, &f), 0);
    f.delay_us = 100000;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", b.port, &f), 0);
    tally ta = {0}, tb = {0};
    for (int i = 0; i < 32; i++) {
        send_async(&a, &ta, dhps_test_us(30000000));
        send_async(&b, &tb, dhps_test_us(30000000));
    }
    assert_true(dhps_rpc_client_poll(a.c, 0) >= 0);
    assert_true(dhps_rpc_client_poll(b.c, 0) >= 0);
    /* wait until the server has held them all back */
    dhps_rpc_fault_stats fs = {0}, fb = {0};
    DHPS_TEST_WAIT_FOR(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", a.port, &fs) == 0 &&
                       dhps_rpc_server_fault_get_stats(s, "127.0.0.1", b.port, &fb) == 0 &&
                       fs.delayed + fb.delayed >= 64, 20000);
    assert_int_equal(fs.delayed, 32);
    assert_int_equal(fb.delayed, 32);
    peer_close(&a); /* its 32 calls are cancelled client side */
    assert_int_equal(ta.done, 32);
    wait_all(&b, &tb, 32);
    assert_int_equal(tb.ok, 32);
    assert_int_equal(dhps_rpc_server_fault_clear(s, NULL, 0), 0);
    peer_open(&a, port, DHPS_RPC_TCP);
    assert_int_equal(echo(&a, dhps_test_us(5000000)), 0);
    peer_close(&a);
    peer_close(&b);
    dhps_rpc_server_destroy(s); /* b's connection closed with nothing held: fine too */
}

static void count_ok(void *arg, int status, const void *resp, size_t len)
{
    (void)resp;
    int *ok = arg;
    assert_int_equal(status, 0);
    assert_int_equal(len, 1024);
    (*ok)++;
}

/* A worker holds back at most fault_hold_bytes of responses: beyond that a delayed
 * response goes out at once and is counted in fault_overflow; every call still gets
 * its one answer. */
static void hold_bound(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server_hold(1, 16384);
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.fault_overflow, 0);
    peer a;
    peer_open(&a, dhps_rpc_server_port(s), DHPS_RPC_TCP);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = 500000;
    assert_int_equal(dhps_rpc_server_fault_set(s, "*", 0, &f), 0);
    /* 64 calls in flight with 1 KiB responses: about 15 fit in 16 KiB */
    const int n = 64;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        void *buf;
        assert_int_equal(dhps_rpc_call_start(a.ch, M_ECHO, 1024, &buf), 0);
        memset(buf, i, 1024);
        assert_int_equal(dhps_rpc_call_send(a.ch, 1024, dhps_test_us(30000000), count_ok, &ok),
                         0);
    }
    while (ok < n)
        assert_true(dhps_rpc_client_poll(a.c, 100) >= 0);
    dhps_rpc_server_get_stats(s, &ss);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "*", 0, &fs), 0);
    assert_int_equal(fs.delayed, n);
    assert_true(ss.fault_overflow >= 1);
    assert_true(ss.fault_overflow <= (uint64_t)n - 8); /* at least 8 were held */
    print_message("  hold bound 16 KiB: %d delayed 1 KiB responses, %llu sent at once\n", n,
                  (unsigned long long)ss.fault_overflow);
    peer_close(&a);
    dhps_rpc_server_destroy(s);
}

/* Rules changed by another thread while two client threads run calls: every callback
 * exactly once, statuses only 0 or DHPS_E_TIMEOUT. */
typedef struct churn {
    _Atomic bool stop;
    int transport;
    peer p;
    tally t;
    int sent, send_failed, poll_failed;
} churn;

/* Runs on its own thread with a peer opened by the main thread (an rpc client may move
 * between threads, used by one at a time): its open does not race the rule changes, and
 * no cmocka assertion runs off the main thread (a failure there could not be reported). */
static void *churn_client(void *arg)
{
    churn *cz = arg;
    while (!cz->stop) {
        int n = 0;
        for (int i = 0; i < 16; i++) {
            void *buf;
            if (dhps_rpc_call_start(cz->p.ch, M_ECHO, 8, &buf) != 0)
                break;
            uint64_t v = 7;
            memcpy(buf, &v, 8);
            if (dhps_rpc_call_send(cz->p.ch, 8, 50000, on_done, &cz->t) != 0)
                break;
            n++;
        }
        cz->sent += n;
        if (n < 16)
            cz->send_failed++;
        while (cz->t.done < cz->sent)
            if (dhps_rpc_client_poll(cz->p.c, 100) < 0) {
                cz->poll_failed++;
                return NULL;
            }
    }
    return NULL;
}

static void rules_change_under_traffic(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(2);
    churn cz[2] = {{.transport = DHPS_RPC_TCP}, {.transport = DHPS_RPC_SHM}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        peer_open(&cz[i].p, dhps_rpc_server_port(s), cz[i].transport);
        assert_int_equal(pthread_create(&th[i], NULL, churn_client, &cz[i]), 0);
    }
    dhps_rpc_fault f;
    for (int round = 0; round < 60; round++) {
        dhps_rpc_fault_init(&f);
        switch (round % 4) {
        case 0: f.delay_us = 2000; break;
        case 1: f.drop_percent = 50; break;
        case 2: f.partition = true; break;
        default: break;
        }
        if (round % 4 == 3)
            dhps_rpc_server_fault_clear(s, NULL, 0);
        else
            assert_int_equal(dhps_rpc_server_fault_set(s, round % 2 ? "*" : "127.0.0.1", 0,
                                                       &f), 0);
        dhps_rpc_fault_entry e[4];
        (void)dhps_rpc_server_fault_list(s, e, 4);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    dhps_rpc_server_fault_clear(s, NULL, 0);
    for (int i = 0; i < 2; i++) {
        cz[i].stop = true;
        pthread_join(th[i], NULL);
        peer_close(&cz[i].p);
        assert_int_equal(cz[i].send_failed, 0);
        assert_int_equal(cz[i].poll_failed, 0);
        assert_int_equal(cz[i].t.done, cz[i].sent);
        assert_int_equal(cz[i].t.other, 0);
        assert_int_equal(cz[i].t.ok + cz[i].t.timeout, cz[i].sent);
        print_message("  %s client: %d calls, %d answered, %d timed out\n",
                      dhps_rpc_transport_name(cz[i].transport), cz[i].sent, cz[i].t.ok,
                      cz[i].t.timeout);
    }
    dhps_rpc_server_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(delay_one_peer_tcp),
        cmocka_unit_test(delay_one_peer_shm),
        cmocka_unit_test(drop_one_peer),
        cmocka_unit_test(partition_rules),
        cmocka_unit_test(close_with_held_responses),
        cmocka_unit_test(hold_bound),
        cmocka_unit_test(rules_change_under_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

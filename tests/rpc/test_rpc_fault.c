/*
 * Fault injection rules of the rpc library (dhps_rpc_fault_*), through the public API,
 * over TCP: delay, drop (fail fast / time out), partition, clearing, counters, closing a
 * channel with held-back calls, and rules changed by another thread under traffic.
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

enum { M_ECHO = 1 };
static const char SECRET[] = "fault-secret";

static dhps_rpc_server *start_server(void)
{
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.hello_timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    return s;
}

static dhps_rpc_client *new_client(void)
{
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = SECRET;
    cp.secret_len = sizeof SECRET - 1;
    cp.max_inflight = 256;
    cp.connect_timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    dhps_rpc_client *c = NULL;
    assert_int_equal(dhps_rpc_client_create(&cp, &c), 0);
    return c;
}

static dhps_rpc_channel *open_chan(dhps_rpc_client *c, uint16_t port)
{
    dhps_rpc_channel_params p;
    dhps_rpc_channel_params_init(&p);
    p.port = port;
    p.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(dhps_rpc_channel_open(c, &p, &ch), 0);
    return ch;
}

static int echo(dhps_rpc_channel *ch, uint64_t timeout_us)
{
    uint64_t v = 42, r = 0;
    size_t n = 0;
    int rc = dhps_rpc_call(ch, M_ECHO, &v, 8, &r, 8, &n, timeout_us);
    if (rc == 0)
        assert_true(n == 8 && r == 42);
    return rc;
}

static void bad_arguments(void **st)
{
    (void)st;
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    assert_int_equal(f.delay_percent, 100);
    assert_int_equal(dhps_rpc_fault_set(NULL, 1, &f), -EINVAL);
    assert_int_equal(dhps_rpc_fault_set("", 1, &f), -EINVAL);
    f.drop_percent = 101;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", 1, &f), -EINVAL);
    dhps_rpc_fault_init(&f);
    f.delay_us = 60000001u;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", 1, &f), -EINVAL);
    assert_int_equal(dhps_rpc_fault_clear("127.0.0.1", 1), -ENOENT);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_fault_get_stats("127.0.0.1", 1, &fs), -ENOENT);
    dhps_rpc_fault_init(&f);
    for (uint16_t i = 0; i < DHPS_RPC_FAULT_MAX_RULES; i++)
        assert_int_equal(dhps_rpc_fault_set("10.0.0.1", (uint16_t)(i + 1), &f), 0);
    assert_int_equal(dhps_rpc_fault_set("10.0.0.2", 1, &f), -ENOSPC);
    assert_int_equal(dhps_rpc_fault_set("10.0.0.1", 1, &f), 0); /* replace: no new slot */
    assert_int_equal(dhps_rpc_fault_clear(NULL, 0), 0);
    assert_int_equal(dhps_rpc_fault_clear(NULL, 0), -ENOENT);
}

static void delay_adds_latency(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server();
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = new_client();
    dhps_rpc_channel *ch = open_chan(c, port);
    const int n = 20;
    /* under test: every call takes at least the delay, the slowest not much more (a scaled
     * margin), and once cleared the fastest of 20 takes less (all 20 stalled that long
     * would be needed to miss it) */
    const uint32_t delay = 20000;
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = delay;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", port, &f), 0);
    uint64_t worst = 0, best = UINT64_MAX;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_us();
        assert_int_equal(echo(ch, dhps_test_us(2000000)), 0);
        uint64_t dt = now_us() - t0;
        worst = dt > worst ? dt : worst;
        best = dt < best ? dt : best;
    }
    assert_true(best >= delay);
    assert_true(worst < delay + dhps_test_us(200000)); /* the delay, not more: scaled margin */
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_fault_get_stats("127.0.0.1", port, &fs), 0);
    assert_int_equal(fs.calls, n);
    assert_int_equal(fs.delayed, n);
    assert_int_equal(fs.dropped + fs.partitioned, 0);
    /* a delayed call whose deadline is shorter than the delay times out */
    assert_int_equal(echo(ch, 5000), DHPS_E_TIMEOUT);
    /* cleared: no added latency */
    assert_int_equal(dhps_rpc_fault_clear("127.0.0.1", port), 0);
    uint64_t after = UINT64_MAX;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_us();
        assert_int_equal(echo(ch, dhps_test_us(2000000)), 0);
        uint64_t dt = now_us() - t0;
        after = dt < after ? dt : after;
    }
    assert_true(after < delay);
    print_message("  delay %u us: min %llu us, max %llu us; cleared: min %llu us\n", delay,
                  (unsigned long long)best, (unsigned long long)worst,
                  (unsigned long long)after);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

typedef struct tally {
    int done, ok, unreachable, timeout, cancelled, other;
} tally;

static void count(void *arg, int status, const void *resp, size_t len)
{
    (void)resp;
    (void)len;
    tally *t = arg;
    t->done++;
    if (status == 0)
        t->ok++;
    else if (status == DHPS_E_UNREACHABLE)
        t->unreachable++;
    else if (status == DHPS_E_TIMEOUT)
        t->timeout++;
    else if (status == DHPS_E_CANCELLED)
        t->cancelled++;
    else
        t->other++;
}

static void send_async(dhps_rpc_channel *ch, uint64_t timeout_us, tally *t)
{
    void *buf;
    assert_int_equal(dhps_rpc_call_start(ch, M_ECHO, 8, &buf), 0);
    memset(buf, 7, 8);
    assert_int_equal(dhps_rpc_call_send(ch, 8, timeout_us, count, t), 0);
}

static void drop_percentage(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server();
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = new_client();
    dhps_rpc_channel *ch = open_chan(c, port);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.drop_percent = 30;
    f.seed = 12345;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", 0, &f), 0); /* any port */
    long h0 = handled;
    tally t = {0};
    const int n = 2000, batch = 100;
    for (int i = 0; i < n; i += batch) {
        for (int j = 0; j < batch; j++)
            send_async(ch, dhps_test_us(2000000), &t);
        assert_int_equal(t.done, i); /* failed calls complete in poll, not in send */
        while (t.done < i + batch)
            assert_true(dhps_rpc_client_poll(c, 1000) >= 0);
    }
    assert_int_equal(t.done, n);
    assert_int_equal(t.other + t.timeout, 0);
    /* binomial(2000, 0.3): mean 600, sd 20.5; +-100 is ~5 sd */
    assert_in_range(t.unreachable, 500, 700);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_fault_get_stats("127.0.0.1", 0, &fs), 0);
    assert_int_equal(fs.calls, n);
    assert_int_equal(fs.dropped, t.unreachable);
    assert_int_equal(handled - h0, t.ok); /* dropped calls never reached the server */
    dhps_rpc_channel_stats cs;
    dhps_rpc_channel_get_stats(ch, &cs);
    assert_int_equal(cs.failed, t.unreachable);
    print_message("  drop 30%%: %d of %d failed\n", t.unreachable, n);

    /* same seed, same pattern */
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", 0, &f), 0);
    tally t2 = {0};
    for (int i = 0; i < n; i += batch) {
        for (int j = 0; j < batch; j++)
            send_async(ch, dhps_test_us(2000000), &t2);
        while (t2.done < i + batch)
            assert_true(dhps_rpc_client_poll(c, 1000) >= 0);
    }
    assert_int_equal(t2.unreachable, t.unreachable);

    /* drop as time-out: completes with DHPS_E_TIMEOUT at the deadline */
    f.drop_percent = 100;
    f.drop_timeout = true;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", 0, &f), 0);
    tally t3 = {0};
    uint64_t t0 = now_us();
    for (int j = 0; j < 10; j++)
        send_async(ch, 50000, &t3);
    while (t3.done < 10)
        assert_true(dhps_rpc_client_poll(c, 1000) >= 0);
    assert_true(now_us() - t0 >= 50000);
    assert_int_equal(t3.timeout, 10);
    assert_int_equal(dhps_rpc_fault_clear("127.0.0.1", 0), 0);
    assert_int_equal(echo(ch, dhps_test_us(2000000)), 0);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

static void partition_fails_fast(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server();
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = new_client();
    dhps_rpc_channel *ch = open_chan(c, port);
    assert_int_equal(echo(ch, dhps_test_us(2000000)), 0);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.partition = true;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", port, &f), 0);
    long h0 = handled;
    uint64_t t0 = now_us();
    /* fast: 100 calls take less than one deadline, so none waited for it; the deadline
     * scales with the machine (test_scale.h) so 100 quick failures fit on a loaded one */
    uint64_t deadline_us = dhps_test_us(2000000);
    for (int i = 0; i < 100; i++)
        assert_int_equal(echo(ch, deadline_us), DHPS_E_UNREACHABLE);
    uint64_t dt = now_us() - t0;
    assert_true(dt < deadline_us / 2);
    assert_int_equal(handled, h0);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_fault_get_stats("127.0.0.1", port, &fs), 0);
    assert_int_equal(fs.calls, 100);
    assert_int_equal(fs.partitioned, 100);
    /* a rule for another port does not apply */
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", (uint16_t)(port + 1), &f), 0);
    assert_int_equal(dhps_rpc_fault_clear("127.0.0.1", port), 0);
    assert_int_equal(echo(ch, dhps_test_us(2000000)), 0);
    assert_int_equal(handled, h0 + 1);
    assert_int_equal(dhps_rpc_fault_clear(NULL, 0), 0);
    print_message("  partition: 100 calls failed in %llu us\n", (unsigned long long)dt);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

static void close_cancels_held_calls(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server();
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *c = new_client();
    dhps_rpc_channel *a = open_chan(c, port), *b = open_chan(c, port);
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = 1000000;
    assert_int_equal(dhps_rpc_fault_set("127.0.0.1", port, &f), 0);
    tally ta = {0}, tb = {0};
    send_async(a, 0, &ta);
    send_async(b, 0, &tb);
    dhps_rpc_channel_close(a);
    assert_int_equal(ta.cancelled, 1);
    assert_int_equal(tb.done, 0);
    dhps_rpc_client_destroy(c);
    assert_int_equal(tb.cancelled, 1);
    assert_int_equal(dhps_rpc_fault_clear(NULL, 0), 0);
    dhps_rpc_server_destroy(s);
}

/* ---- rules flipped by another thread while two clients carry traffic ---- */

typedef struct worker {
    uint16_t port;
    _Atomic int *stop;
    _Atomic int answered; /* set once a call of this worker was answered */
    tally t;
    int sent;
} worker;

static void *traffic(void *p)
{
    worker *w = p;
    dhps_rpc_client *c = new_client();
    dhps_rpc_channel *ch = open_chan(c, w->port);
    while (!*w->stop) {
        for (int j = 0; j < 16; j++, w->sent++)
            send_async(ch, 1000000, &w->t);
        while (w->t.done < w->sent)
            dhps_rpc_client_poll(c, 100);
        if (w->t.ok)
            w->answered = 1;
    }
    dhps_rpc_client_destroy(c);
    return NULL;
}

static void rules_changed_under_traffic(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server();
    uint16_t port = dhps_rpc_server_port(s);
    _Atomic int stop = 0;
    worker w[2] = {{.port = port, .stop = &stop}, {.port = port, .stop = &stop}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, traffic, &w[i]), 0);
    /* the rules change under traffic: both clients are connected and answered first */
    assert_true(DHPS_TEST_WAIT_FOR(w[0].answered && w[1].answered, 10000));
    dhps_rpc_fault f;
    for (int round = 0; round < 60; round++) {
        dhps_rpc_fault_init(&f);
        switch (round % 4) {
        case 0: f.delay_us = 2000; f.delay_percent = 50; break;
        case 1: f.drop_percent = 20; break;
        case 2: f.partition = true; break;
        default: break;
        }
        if (round % 4 == 3)
            (void)dhps_rpc_fault_clear("127.0.0.1", port);
        else
            assert_int_equal(dhps_rpc_fault_set("127.0.0.1", port, &f), 0);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    (void)dhps_rpc_fault_clear(NULL, 0);
    stop = 1;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].t.done, w[i].sent); /* every callback ran exactly once */
        assert_int_equal(w[i].t.other + w[i].t.cancelled, 0);
        assert_true(w[i].t.ok > 0);
    }
    print_message("  under traffic: %d + %d calls, %d + %d unreachable\n", w[0].sent,
                  w[1].sent, w[0].t.unreachable, w[1].t.unreachable);
    dhps_rpc_server_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(delay_adds_latency),
        cmocka_unit_test(drop_percentage),
        cmocka_unit_test(partition_fails_fast),
        cmocka_unit_test(close_cancels_held_calls),
        cmocka_unit_test(rules_changed_under_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

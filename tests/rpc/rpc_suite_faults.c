/*
 * RPC suite, faults: refused and bounded connects, opening without blocking, a peer
 * killed mid-call or destroyed under the client, many client threads on several
 * workers, and server-side fault rules on this transport.
 */
#include "rpc_suite.h"

/* ---- faults ------------------------------------------------------------------------ */

/* A server that is created but not started holds its port yet does not listen: a peer is
 * refused at once (DHPS_E_UNREACHABLE), not left in the backlog until the connect times
 * out (DHPS_E_TIMEOUT); once started, the same peer gets in. */
void refused_until_started(void **st)
{
    (void)st;
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.secret = SECRET;
    sp.secret_len = sizeof SECRET - 1;
    sp.max_msg = 64 << 10;
    dhps_rpc_server *s = NULL;
    assert_int_equal(dhps_rpc_server_create(&sp, &s), 0);
    assert_int_equal(dhps_rpc_server_register(s, M_ECHO, h_echo, NULL), 0);
    dhps_rpc_client *c = new_client(SECRET);
    dhps_rpc_channel_params p;
    chan_params(&p, dhps_rpc_server_port(s));
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(dhps_rpc_channel_open(c, &p, &ch), DHPS_E_UNREACHABLE);
    assert_null(ch);
    assert_int_equal(dhps_rpc_server_start(s), 0);
    assert_int_equal(dhps_rpc_channel_open(c, &p, &ch), 0);
    char resp[8] = {0};
    size_t rl = 0;
    assert_int_equal(dhps_rpc_call(ch, M_ECHO, "ping", 4, resp, sizeof resp, &rl,
                                   dhps_test_us(2000000)), 0);
    assert_memory_equal(resp, "ping", 4);
    dhps_rpc_channel_close(ch);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

/* A port already bound: create fails with -EADDRINUSE and leaves nothing behind (it used
 * to crash in the destroy of the half-created server); a bad host is -EINVAL. */
void create_on_taken_port(void **st)
{
    (void)st;
    dhps_rpc_server *a = start_server(2, NULL), *b = (dhps_rpc_server *)&b;
    dhps_rpc_server_params sp;
    dhps_rpc_server_params_init(&sp);
    sp.workers = 2;
    sp.port = dhps_rpc_server_port(a);
    assert_int_equal(dhps_rpc_server_create(&sp, &b), -EADDRINUSE);
    assert_null(b);
    sp.port = 0;
    sp.host = "not-an-address";
    assert_int_equal(dhps_rpc_server_create(&sp, &b), -EINVAL);
    assert_null(b);
    dhps_rpc_server_destroy(a);
}

/* A listener whose accept queue is full drops SYNs (as a dead host sends nothing back):
 * a channel's tcp_connect_timeout_us bounds the connect alone, well inside the client's
 * connect timeout (10 s here), and the open fails with DHPS_E_TIMEOUT. */
void tcp_connect_bounded(void **st)
{
    (void)st;
    struct sockaddr_in a;
    int lfd = loopback_socket(0, &a); /* never accepted: one queued connection fills it */
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(filler, (struct sockaddr *)&a, sizeof a), 0);
    uint32_t client_ms = dhps_test_ms(10000); /* the bound not used; scaled, as the check */
    dhps_rpc_client *c = new_client_ct(SECRET, client_ms);
    dhps_rpc_channel_params p;
    chan_params(&p, ntohs(a.sin_port));
    p.tcp_connect_timeout_us = 200000;
    dhps_rpc_channel *ch = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(dhps_rpc_channel_open(c, &p, &ch), DHPS_E_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    print_message("  connect to a full backlog failed after %.3f s (bound 0.2 s, client %.1f s)\n",
                  s, client_ms / 1e3);
    assert_true(s < client_ms / 2e3); /* the client's own bound would have been used */
    assert_null(ch);
    dhps_rpc_client_destroy(c);
    close(filler);
    close(lfd);
}

/* ---- opening without blocking ---------------------------------------------------- */
/* Send one 8-byte echo of v on ch (which may still be opening). */
static void send_echo(dhps_rpc_channel *ch, uint64_t v, uint64_t timeout_us, async_ctx *a)
{
    void *buf;
    assert_int_equal(dhps_rpc_call_start(ch, M_ECHO, 8, &buf), 0);
    memcpy(buf, &v, 8);
    assert_int_equal(dhps_rpc_call_send(ch, 8, timeout_us, async_done, a), 0);
}

void async_open_queues_calls(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(1, NULL);
    dhps_rpc_client *c = new_client(SECRET);
    dhps_rpc_channel_params p;
    chan_params(&p, dhps_rpc_server_port(s));
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(dhps_rpc_channel_open_async(c, &p, &ch), 0);
    int stat = dhps_rpc_channel_status(ch);
    assert_true(stat == -EINPROGRESS || stat == 0);
    if (stat == -EINPROGRESS)
        assert_int_equal(dhps_rpc_channel_ready_ns(ch), 0);
    /* calls sent before the hello finished wait for it, then go out on the path */
    async_ctx a = {0};
    uint32_t sum = 0;
    for (uint64_t v = 1; v <= 100; v++) {
        send_echo(ch, v, dhps_test_us(20000000), &a);
        sum += (uint32_t)v;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (a.done < 100 && since(&t0) < dhps_test_ms(30000) / 1e3)
        assert_true(dhps_rpc_client_poll(c, 100) >= 0);
    assert_int_equal(a.done, 100);
    assert_int_equal(a.bad, 0);
    assert_int_equal(a.expect_sum, sum);
    assert_int_equal(dhps_rpc_channel_status(ch), 0);
    assert_true(dhps_rpc_channel_ready_ns(ch) > 0);
    assert_int_equal(dhps_rpc_channel_transport(ch), T);
    dhps_rpc_channel_stats cs;
    dhps_rpc_channel_get_stats(ch, &cs);
    assert_int_equal(cs.calls[T], 100);
    /* a blocking open to the same peer shares the connection */
    dhps_rpc_channel *ch2 = open_chan(c, dhps_rpc_server_port(s));
    dhps_rpc_channel_get_stats(ch2, &cs);
    assert_int_equal(cs.channels, 2);
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal(ss.accepted, 1);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

/* A peer that accepts connections but never answers the hello holds no thread: other
 * channels keep serving, and calls queued on it fail when the open times out. */
void async_open_does_not_block(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(1, NULL);
    struct sockaddr_in a;
    int lfd = loopback_socket(8, &a); /* connects complete in the backlog; nobody reads */
    /* under test: the stalled open fails at its bound (the client's connect timeout), not
     * at the queued call's deadline, ten times longer. The bound is calibrated: 20 times
     * what a whole blocking open (connect and hello) takes here and now, at least 500 ms */
    dhps_rpc_client *cal = new_client(SECRET);
    uint64_t c0 = dhps_test_now_ms();
    dhps_rpc_channel_close(open_chan(cal, dhps_rpc_server_port(s)));
    uint64_t open_ms = 20 * (dhps_test_now_ms() - c0);
    dhps_rpc_client_destroy(cal);
    if (open_ms < 500)
        open_ms = 500;
    uint64_t call_us = 10000ull * open_ms;
    dhps_rpc_client *c = new_client_ct(SECRET, (uint32_t)open_ms);
    dhps_rpc_channel *good = open_chan(c, dhps_rpc_server_port(s));
    dhps_rpc_channel_params p;
    chan_params(&p, ntohs(a.sin_port));
    dhps_rpc_channel *stuck = NULL;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(dhps_rpc_channel_open_async(c, &p, &stuck), 0);
    double opened = since(&t0);
    assert_int_equal(dhps_rpc_channel_status(stuck), -EINPROGRESS);
    async_ctx q = {0};
    send_echo(stuck, 7, call_us, &q); /* waits for the hello */
    /* meanwhile the other channel serves blocking calls, driving the same event loop */
    int served = 0;
    char out[8];
    size_t n;
    while (q.done == 0 && since(&t0) < call_us / 1e6) {
        assert_int_equal(dhps_rpc_call(good, M_ECHO, "ping", 4, out, sizeof out, &n,
                                       dhps_test_us(5000000)), 0);
        served++;
    }
    double failed_at = since(&t0);
    print_message("  open_async returned in %.2f ms; %d calls served beside the stalled hello; "
                  "its queued call failed after %.2f s (open bound %.1f s, call %.1f s)\n",
                  opened * 1e3, served, failed_at, (double)open_ms / 1e3, (double)call_us / 1e6);
    assert_true(opened < (double)open_ms / 2e3); /* a blocking one would have waited open_ms */
    assert_int_equal(q.done, 1);
    assert_int_equal(q.bad, 1);
    assert_int_equal(q.first_status, DHPS_E_TIMEOUT);
    assert_true(served > 1);
    assert_true(failed_at < call_us / 2e6); /* the open's bound, not the call's deadline */
    assert_int_equal(dhps_rpc_channel_status(stuck), DHPS_E_TIMEOUT);
    void *buf;
    assert_int_equal(dhps_rpc_call_start(stuck, M_ECHO, 8, &buf), DHPS_E_TIMEOUT);
    dhps_rpc_channel_close(stuck);
    assert_int_equal(dhps_rpc_call(good, M_ECHO, "ping", 4, out, sizeof out, &n,
                                   dhps_test_us(5000000)), 0);
    dhps_rpc_client_destroy(c);
    close(lfd);
    dhps_rpc_server_destroy(s);
}

/* Send an echo on a channel whose open may already have failed (the peer can answer
 * before we look): a refused start counts as that call's failure. */
static void try_echo(dhps_rpc_channel *ch, uint64_t v, async_ctx *a)
{
    void *buf;
    int rc = dhps_rpc_call_start(ch, M_ECHO, 8, &buf);
    if (rc) {
        async_done(a, rc, NULL, 0);
        return;
    }
    memcpy(buf, &v, 8);
    assert_int_equal(dhps_rpc_call_send(ch, 8, dhps_test_us(5000000), async_done, a), 0);
}

void async_open_errors(void **st)
{
    (void)st;
    /* nobody listens: refused */
    struct sockaddr_in a;
    close(loopback_socket(-1, &a));
    dhps_rpc_client *c = new_client(SECRET);
    dhps_rpc_channel_params p;
    chan_params(&p, ntohs(a.sin_port));
    dhps_rpc_channel *ch = NULL;
    assert_int_equal(dhps_rpc_channel_open_async(c, &p, &ch), 0);
    async_ctx q = {0};
    try_echo(ch, 1, &q);
    while (q.done == 0)
        assert_true(dhps_rpc_client_poll(c, 100) >= 0);
    assert_int_equal(q.first_status, DHPS_E_UNREACHABLE);
    assert_int_equal(dhps_rpc_channel_status(ch), DHPS_E_UNREACHABLE);
    dhps_rpc_channel_close(ch);
    /* wrong secret: the queued call fails with DHPS_E_AUTH */
    dhps_rpc_server *s = start_server(1, NULL);
    dhps_rpc_client *bad = new_client("not-the-cluster-secret");
    chan_params(&p, dhps_rpc_server_port(s));
    assert_int_equal(dhps_rpc_channel_open_async(bad, &p, &ch), 0);
    q = (async_ctx){0};
    try_echo(ch, 2, &q);
    while (q.done == 0)
        assert_true(dhps_rpc_client_poll(bad, 100) >= 0);
    assert_int_equal(q.first_status, DHPS_E_AUTH);
    assert_int_equal(dhps_rpc_channel_status(ch), DHPS_E_AUTH);
    dhps_rpc_client_destroy(bad);
    /* closed while opening: its queued calls are cancelled, nothing leaks (ASan) */
    assert_int_equal(dhps_rpc_channel_open_async(c, &p, &ch), 0);
    q = (async_ctx){0};
    send_echo(ch, 3, dhps_test_us(5000000), &q);
    send_echo(ch, 4, dhps_test_us(5000000), &q);
    void *buf; /* and one started but never sent */
    assert_int_equal(dhps_rpc_call_start(ch, M_ECHO, 8, &buf), 0);
    dhps_rpc_channel_close(ch); /* in flight or still waiting: cancelled either way */
    assert_int_equal(q.done, 2);
    assert_int_equal(q.first_status, DHPS_E_CANCELLED);
    dhps_rpc_client_destroy(c);
    dhps_rpc_server_destroy(s);
}

void peer_killed_mid_call(void **st)
{
    (void)st;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* child: the server, killed below */
        close(pfd[0]);
        g_slow_started_fd = pfd[1]; /* then tells when a slow handler runs */
        dhps_rpc_server *s = start_server(1, NULL);
        uint16_t port = dhps_rpc_server_port(s);
        if (write(pfd[1], &port, sizeof port) != sizeof port)
            _exit(2);
        for (;;)
            pause();
    }
    close(pfd[1]);
    uint16_t port = 0;
    assert_int_equal(read(pfd[0], &port, sizeof port), (ssize_t)sizeof port);
    dhps_rpc_client *c = new_client(SECRET);
    dhps_rpc_channel *ch = open_chan(c, port);
    char out[8];
    size_t n;
    assert_int_equal(dhps_rpc_call(ch, M_ECHO, "a", 1, out, sizeof out, &n,
                                   dhps_test_us(2000000)), 0);
    /* a few calls in flight on a slow handler (scaled: longer than any stall), then kill -9
     * the server */
    uint32_t slow_ms = dhps_test_ms(5000);
    async_ctx a = {0};
    for (int i = 0; i < 4; i++) {
        void *buf;
        assert_int_equal(dhps_rpc_call_start(ch, M_SLOW, 4, &buf), 0);
        memcpy(buf, &slow_ms, 4);
        assert_int_equal(dhps_rpc_call_send(ch, 4, 0 /* no deadline */, async_done, &a), 0);
    }
    /* the server is running the first of them when it is killed */
    assert_true(dhps_rpc_client_poll(c, 0) >= 0);
    struct pollfd started = {.fd = pfd[0], .events = POLLIN};
    assert_int_equal(poll(&started, 1, (int)dhps_test_ms(5000)), 1);
    close(pfd[0]);
    assert_int_equal(kill(pid, SIGKILL), 0);
    uint64_t t0 = dhps_test_now_ms();
    while (a.done < 4)
        assert_true(dhps_rpc_client_poll(c, 1000) >= 0);
    /* under test: they failed as the peer died, not when the handler would answer */
    assert_true(dhps_test_now_ms() - t0 < slow_ms / 2);
    assert_int_equal(a.bad, 4); /* each failed, cleanly */
    assert_int_equal(dhps_rpc_call(ch, M_ECHO, "a", 1, out, sizeof out, &n, dhps_test_us(1000000)),
                     DHPS_E_UNREACHABLE);
    void *buf;
    assert_int_equal(dhps_rpc_call_start(ch, M_ECHO, 1, &buf), DHPS_E_UNREACHABLE);
    waitpid(pid, NULL, 0);
    dhps_rpc_client_destroy(c);
}

static int unreachable_seen;
static void count_unreachable(void *arg, int status, const void *resp, size_t len)
{
    (void)arg; (void)resp; (void)len;
    if (status == DHPS_E_UNREACHABLE)
        unreachable_seen++;
}

void server_destroyed_under_client(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(2, NULL);
    dhps_rpc_client *c = new_client(SECRET);
    dhps_rpc_channel *ch = open_chan(c, dhps_rpc_server_port(s));
    char out[8];
    size_t n;
    assert_int_equal(dhps_rpc_call(ch, M_ECHO, "a", 1, out, sizeof out, &n,
                                   dhps_test_us(1000000)), 0);
    dhps_rpc_server_destroy(s);
    void *buf;
    int rc = dhps_rpc_call_start(ch, M_ECHO, 1, &buf);
    if (rc == 0) {
        unreachable_seen = 0;
        assert_int_equal(dhps_rpc_call_send(ch, 1, 0, count_unreachable, NULL), 0);
        while (unreachable_seen == 0)
            dhps_rpc_client_poll(c, 1000);
    } else {
        assert_int_equal(rc, DHPS_E_UNREACHABLE);
    }
    dhps_rpc_client_destroy(c);
}

/* ---- concurrency: many client threads, several workers -------------------------------- */

typedef struct thr_arg {
    uint16_t port;
    int calls, errors;
} thr_arg;

static void *client_thread(void *p)
{
    thr_arg *t = p;
    dhps_rpc_client_params cp;
    dhps_rpc_client_params_init(&cp);
    cp.secret = SECRET;
    cp.secret_len = sizeof SECRET - 1;
    cp.max_msg = 64 << 10;
    cp.connect_timeout_ms = dhps_test_ms(30000); /* not under test: scaled */
    dhps_rpc_client *c = NULL;
    if (dhps_rpc_client_create(&cp, &c)) {
        t->errors++;
        return NULL;
    }
    dhps_rpc_channel_params chp;
    chan_params(&chp, t->port);
    dhps_rpc_channel *ch = NULL;
    int rc = dhps_rpc_channel_open(c, &chp, &ch);
    if (rc) {
        print_message("  client thread: channel_open: %s\n", dhps_strerror(rc));
        t->errors++;
        dhps_rpc_client_destroy(c);
        return NULL;
    }
    async_ctx a = {0};
    const char *scale = getenv("DHPS_TEST_SCALE");
    int total = scale && !strcmp(scale, "small") ? 500 : 3000, sent = 0;
    while (a.done < total) {
        while (sent < total && sent - a.done < 32) {
            void *buf;
            if (dhps_rpc_call_start(ch, M_ECHO, 8, &buf))
                break;
            uint64_t v = (uint64_t)sent;
            memcpy(buf, &v, 8);
            dhps_rpc_call_send(ch, 8, dhps_test_us(30000000), async_done,
                               &a); /* TCG + a loaded host */
            sent++;
        }
        dhps_rpc_client_poll(c, 100);
    }
    t->calls = a.done;
    t->errors += a.bad;
    if (a.bad)
        print_message("  client thread: %d calls failed, the first with %s\n", a.bad,
                      dhps_strerror(a.first_status));
    dhps_rpc_channel_stats cs;
    dhps_rpc_channel_get_stats(ch, &cs);
    if (a.bad)
        print_message("  client thread: now on %s; verbs %llu tcp %llu, timeouts %llu, "
                      "fallbacks %llu, retries %llu\n",
                      dhps_rpc_transport_name(dhps_rpc_channel_transport(ch)),
                      (unsigned long long)cs.calls[DHPS_RPC_VERBS],
                      (unsigned long long)cs.calls[DHPS_RPC_TCP],
                      (unsigned long long)cs.timeouts, (unsigned long long)cs.fallbacks,
                      (unsigned long long)cs.retries);
    dhps_rpc_client_destroy(c);
    return NULL;
}

void threads_many_clients(void **st)
{
    (void)st;
    dhps_rpc_server *s = start_server(2, NULL);
    enum { NT = 4 };
    pthread_t th[NT];
    thr_arg ta[NT];
    for (int i = 0; i < NT; i++) {
        ta[i] = (thr_arg){.port = dhps_rpc_server_port(s)};
        assert_int_equal(pthread_create(&th[i], NULL, client_thread, &ta[i]), 0);
    }
    long calls = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ta[i].errors, 0);
        calls += ta[i].calls;
    }
    dhps_rpc_server_stats ss;
    dhps_rpc_server_get_stats(s, &ss);
    assert_int_equal((long)ss.handled[T], calls);
    assert_int_equal(ss.accepted, NT);
    dhps_rpc_server_destroy(s);
}

/* ---- server-side fault rules on this transport ---------------------------------- */

static uint16_t my_port(dhps_rpc_channel *ch)
{
    uint32_t port = 0;
    size_t n = 0;
    assert_int_equal(dhps_rpc_call(ch, M_WHO, NULL, 0, &port, 4, &n, dhps_test_us(20000000)), 0);
    assert_int_equal(n, 4);
    return (uint16_t)port;
}

static int echo_once(dhps_rpc_channel *ch, uint64_t timeout_us)
{
    uint64_t v = 5, r = 0;
    size_t n = 0;
    int rc = dhps_rpc_call(ch, M_ECHO, &v, 8, &r, 8, &n, timeout_us);
    if (rc == 0)
        assert_true(n == 8 && r == 5);
    return rc;
}

/* A delay rule on peer A's port holds A's responses (sent back on this transport when
 * due) while peer B, on the same single worker, is answered; drop makes A's calls time
 * out; a partition of every peer ("*") silences B too; clearing restores both. */
void server_fault_rules(void **unused)
{
    (void)unused;
    dhps_rpc_server *s = start_server(1, NULL);
    uint16_t port = dhps_rpc_server_port(s);
    dhps_rpc_client *ca = new_client(SECRET), *cb = new_client(SECRET);
    dhps_rpc_channel *a = open_chan(ca, port), *b = open_chan(cb, port);
    uint16_t pa = my_port(a), pb = my_port(b);
    assert_int_not_equal(pa, pb);
    /* the delay is under test: A's answers are held while B's 20 calls are answered. Its
     * margin is calibrated: 20 times what B's 20 calls take here and now (TCG, sanitizers,
     * load), at least 50 ms scaled (a stall after the calibration) */
    uint64_t t0 = dhps_test_now_ms();
    for (int i = 0; i < 20; i++)
        assert_int_equal(echo_once(b, dhps_test_us(20000000)), 0);
    uint64_t delay_us = 20 * 1000 * (dhps_test_now_ms() - t0);
    if (delay_us < dhps_test_us(50000))
        delay_us = dhps_test_us(50000);
    if (delay_us > DHPS_RPC_FAULT_MAX_DELAY_US)
        delay_us = DHPS_RPC_FAULT_MAX_DELAY_US;
    dhps_rpc_fault f;
    dhps_rpc_fault_init(&f);
    f.delay_us = (uint32_t)delay_us;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", pa, &f), 0);
    async_ctx aa = {0};
    for (int i = 0; i < 8; i++) {
        void *buf;
        assert_int_equal(dhps_rpc_call_start(a, M_ECHO, 8, &buf), 0);
        uint64_t v = (uint64_t)i;
        memcpy(buf, &v, 8);
        assert_int_equal(dhps_rpc_call_send(a, 8, dhps_test_us(60000000), async_done, &aa), 0);
    }
    assert_true(dhps_rpc_client_poll(ca, 0) >= 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(echo_once(b, dhps_test_us(20000000)), 0);
    assert_int_equal(dhps_rpc_client_poll(ca, 0), 0); /* A's answers are still held */
    assert_int_equal(aa.done, 0);
    while (aa.done < 8)
        assert_true(dhps_rpc_client_poll(ca, 100) >= 0);
    assert_int_equal(aa.bad, 0);
    assert_int_equal(aa.expect_sum, 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7);
    assert_int_equal(dhps_rpc_channel_transport(a), T);
    dhps_rpc_fault_stats fs;
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "127.0.0.1", pa, &fs), 0);
    assert_int_equal(fs.delayed, 8);
    /* drop */
    dhps_rpc_fault_init(&f);
    f.drop_percent = 100;
    assert_int_equal(dhps_rpc_server_fault_set(s, "127.0.0.1", pa, &f), 0);
    assert_int_equal(echo_once(a, 200000), DHPS_E_TIMEOUT);
    assert_int_equal(echo_once(b, dhps_test_us(20000000)), 0);
    /* every peer partitioned: B has no rule of its own */
    dhps_rpc_fault_init(&f);
    f.partition = true;
    assert_int_equal(dhps_rpc_server_fault_set(s, DHPS_RPC_FAULT_ANY_PEER, 0, &f), 0);
    assert_int_equal(echo_once(b, 200000), DHPS_E_TIMEOUT);
    assert_int_equal(dhps_rpc_server_fault_get_stats(s, "*", 0, &fs), 0);
    assert_int_equal(fs.partitioned, 1);
    assert_int_equal(dhps_rpc_server_fault_clear(s, NULL, 0), 0);
    assert_int_equal(echo_once(a, dhps_test_us(20000000)), 0);
    assert_int_equal(echo_once(b, dhps_test_us(20000000)), 0);
    assert_int_equal(dhps_rpc_channel_transport(a), T);
    assert_int_equal(dhps_rpc_channel_transport(b), T);
    dhps_rpc_client_destroy(ca);
    dhps_rpc_client_destroy(cb);
    dhps_rpc_server_destroy(s);
}

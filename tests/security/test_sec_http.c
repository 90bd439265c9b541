/*
 * Admin HTTP under a slowloris attack (issue 12, docs/security.md): 1,100 connections
 * from 127.0.0.1 to the metrics port, each sending a request line and then one header
 * line every 300 ms (never finishing its header; libmicrohttpd's idle timeout alone would
 * keep every one open), reconnecting whenever cut. While it runs:
 *   - /health on the health-only listener (metrics.health_port) answers 200, every probe,
 *     from the attacker's own address;
 *   - /metrics answers 200 from another address (127.0.0.2: the per-address limit keeps
 *     the attacker to its share);
 *   - the server is alive and its thread count bounded.
 * After it: the guard cut connections (dhps_http_header_timeouts_total > 0), open
 * connections fell back, and /metrics answers from 127.0.0.1 again.
 * (Before: the select-based daemon answered nothing on /health for the whole attack.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <sys/resource.h>

#include "srv_proc.h"

enum { NATTACK = 1100 };

static char *g_dir;
static proc g_p;
static uint16_t g_health;

/* GET path from src (an IPv4 address on lo) to 127.0.0.1:port, bounded by ms; the
 * status code, or -1 (refused, cut, no answer in time). */
static int get_from(const char *src, uint16_t port, const char *path, unsigned ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in b = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &b.sin_addr);
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&b, sizeof b) || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    char req[256];
    int k = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)k) != k) {
        close(fd);
        return -1;
    }
    char *body = NULL;
    int code = t_http_reply(fd, &body);
    free(body);
    return code;
}

static int setup(void **st)
{
    (void)st;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < NATTACK + 64) {
        fprintf(stderr, "test_sec_http: needs %d descriptors (hard limit %llu)\n", NATTACK + 64,
                (unsigned long long)rl.rlim_max);
        return -1;
    }
    g_dir = t_mkdtemp();
    char cfg[600], text[2048];
    snprintf(cfg, sizeof cfg, "%s/node.json", g_dir);
    snprintf(text, sizeof text,
             "{\"node_id\":\"sec\",\"listen\":{\"tcp_port\":0,\"workers\":1},"
             "\"tables\":[{\"name\":\"emb\",\"dim\":4}],\"secret_file\":\"%s/secret\","
             "\"metrics\":{\"port\":0,\"health_port\":0,\"max_connections\":64,"
             "\"max_per_ip\":16,\"header_timeout_ms\":1000},"
             "\"shards\":{\"nshards\":4,\"own\":\"all\"},\"port_file\":\"%s/ports\"}",
             g_dir, g_dir);
    t_write(cfg, text, 0600);
    if (p_start(g_dir, cfg, &g_p, true))
        return -1;
    char pf[600];
    snprintf(pf, sizeof pf, "%s/ports", g_dir);
    char *ports = p_slurp(pf);
    unsigned a = 0, b = 0, c = 0;
    int k = sscanf(ports, "%u %u %u", &a, &b, &c);
    free(ports);
    g_health = (uint16_t)c;
    return k == 3 && g_health ? 0 : -1;
}

static int teardown(void **st)
{
    (void)st;
    if (g_p.pid > 0) {
        kill(g_p.pid, SIGTERM);
        p_wait_exit(g_p.pid, 10000);
    }
    t_rmdir(g_dir);
    return 0;
}

typedef struct attack {
    bool stop; /* __atomic: set by the test, read by the attacker */
    uint16_t port;
    uint64_t connects, cut; /* cut: __atomic (the test watches it) */
    uint64_t passes;        /* __atomic: passes over every connection done */
} attack;

static int slow_open(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Keep NATTACK slowloris connections open: a request line, then a header line per
 * connection every 300 ms; a connection the server closed is opened again. */
static void *attacker(void *arg)
{
    attack *at = arg;
    static int fd[NATTACK];
    static bool started[NATTACK];
    for (int i = 0; i < NATTACK; i++) {
        fd[i] = slow_open(at->port);
        started[i] = false;
        at->connects++;
    }
    while (!__atomic_load_n(&at->stop, __ATOMIC_RELAXED)) {
        for (int i = 0; i < NATTACK && !__atomic_load_n(&at->stop, __ATOMIC_RELAXED); i++) {
            char junk[64];
            bool dead = fd[i] < 0;
            if (!dead) {
                ssize_t r = recv(fd[i], junk, sizeof junk, MSG_DONTWAIT);
                dead = r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                                  errno != ENOTCONN);
            }
            if (!dead) {
                const char *line = started[i] ? "X-Slow: yes\r\n"
                                              : "GET /metrics HTTP/1.1\r\nHost: x\r\n";
                ssize_t w = send(fd[i], line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w > 0)
                    started[i] = true;
                else if (w < 0 && errno != EAGAIN && errno != ENOTCONN)
                    dead = true;
            }
            if (dead) {
                if (fd[i] >= 0) {
                    close(fd[i]);
                    __atomic_add_fetch(&at->cut, 1, __ATOMIC_RELAXED);
                }
                fd[i] = slow_open(at->port);
                started[i] = false;
                at->connects++;
            }
        }
        __atomic_add_fetch(&at->passes, 1, __ATOMIC_RELEASE);
        t_sleep_ms(300);
    }
    for (int i = 0; i < NATTACK; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    return NULL;
}

static unsigned threads_of(pid_t pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    char *s = p_slurp(p);
    char *t = strstr(s, "Threads:");
    unsigned n = t ? (unsigned)strtoul(t + 8, NULL, 10) : 0;
    free(s);
    return n;
}

static void slowloris_health_and_metrics_still_answer(void **st)
{
    (void)st;
    unsigned threads0 = threads_of(g_p.pid);
    attack at = {.port = g_p.mport};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, attacker, &at), 0);
    /* the attack is in place: every connection opened and sent a header line, twice (an
     * event, scaled) */
    assert_true(DHPS_TEST_WAIT_FOR(__atomic_load_n(&at.passes, __ATOMIC_ACQUIRE) >= 2, 10000));
    /* probes: a deadline per probe (the property under test: answered in time), for 6 s
     * and until the server has cut slow connections (header_timeout_ms) */
    unsigned probe_ms = dhps_test_ms(1000);
    int health_ok = 0, health_n = 0, metrics_ok = 0, metrics_n = 0;
    uint64_t t0 = t_now_ms(), end = t0 + 6000, cut_by = t0 + dhps_test_ms(20000);
    while (t_now_ms() < end ||
           (!__atomic_load_n(&at.cut, __ATOMIC_RELAXED) && t_now_ms() < cut_by)) {
        health_n++;
        health_ok += get_from("127.0.0.1", g_health, "/health", probe_ms) == 200;
        metrics_n++;
        metrics_ok += get_from("127.0.0.2", g_p.mport, "/metrics", probe_ms) == 200;
        t_sleep_ms(100);
    }
    unsigned threads1 = threads_of(g_p.pid);
    __atomic_store_n(&at.stop, true, __ATOMIC_RELAXED);
    pthread_join(th, NULL);
    print_message("  slowloris %d conns: %llu connects, %llu cut by the server; /health %d/%d, "
                  "/metrics from another address %d/%d; threads %u -> %u\n",
                  NATTACK, (unsigned long long)at.connects, (unsigned long long)at.cut,
                  health_ok, health_n, metrics_ok, metrics_n, threads0, threads1);
    assert_int_equal(health_ok, health_n);
    assert_int_equal(metrics_ok, metrics_n);
    assert_true(at.cut > 0);                 /* the server cut the slow ones */
    assert_true(threads1 <= threads0 + 2);   /* no thread per connection */
    assert_int_equal(waitpid(g_p.pid, NULL, WNOHANG), 0); /* alive */
    /* afterwards: the attacker's address is served again, the guard counted its cuts */
    char *body = NULL;
    int code = -1;
    uint64_t until = t_now_ms() + dhps_test_ms(5000);
    while (t_now_ms() < until && (code = t_http_get(g_p.mport, "/metrics", &body)) != 200) {
        free(body);
        body = NULL;
        t_sleep_ms(50);
    }
    assert_int_equal(code, 200);
    assert_true(t_metric(body, "dhps_http_header_timeouts_total") > 0);
    assert_true(t_metric(body, "dhps_http_connections") < 64);
    free(body);
    /* the health listener answers nothing but health */
    assert_int_equal(get_from("127.0.0.1", g_health, "/metrics", probe_ms), 404);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(slowloris_health_and_metrics_still_answer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * dhps bench smoke: tiny sizes, its own one-node cluster, --json fields present; with
 * redis-server and memcached installed, the peers object too. Also an open-loop mixed
 * run, --rounds (every round and the summary in the JSON, the store order rotated),
 * --server-workers 2 with the peers on as many threads (every store's server CPU
 * measured), the pinning options, and the usage errors of --server-cpus/--server-cpu/
 * --rounds. Skips (77) when dhps-server is not built; the peer parts are skipped when
 * redis-server or memcached is not installed. Figures, and even zero errors, are not
 * asserted: on a shared, loaded machine a batch may miss the client's deadline
 * (docs/tools.md has the measured figures).
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "capture.h"
#include "server_bin.h"


static bool have(const char *bin)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", bin);
    return system(cmd) == 0;
}

static void json_fields(void **state)
{
    (void)state;
    bool peers = have("redis-server") && have("memcached");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, DHPS_BIN " bench --keys 2000 --batch 100 --seconds 0.5 "
             "--threads 2 --json %s", peers ? "--peers" : "");
    int st;
    char *out = capture(cmd, &st);
    if (st != 0)
        fail_msg("%s: status %d, output: %s", cmd, st, out);
    static const char *const fields[] = {"\"keys_mps\":", "\"p50_us\":", "\"p99_us\":",
                                         "\"p999_us\":", "\"errors\":", "\"missing\":"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!strstr(out, fields[i]))
            fail_msg("no %s in %s", fields[i], out);
    assert_int_equal(out[0], '{');
    if (peers) {
        assert_non_null(strstr(out, "\"peers\":{\"redis\":{\"keys_mps\":"));
        assert_non_null(strstr(out, "\"memcached\":{\"keys_mps\":"));
        char *r = strstr(out, "\"redis\":");
        assert_non_null(strstr(r, "\"p99_us\":"));
    } else {
        fprintf(stderr, "redis-server/memcached not installed: peers not checked\n");
    }
    free(out);
}

static void open_loop_mixed(void **state)
{
    (void)state;
    int st;
    char *out = capture(DHPS_BIN " bench --keys 1000 --batch 50 --seconds 0.5 --threads 2 "
                        "--mode mixed --update-share 0.5 --dist uniform --rate 400 "
                        "--value-bytes 64 --json", &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "\"mode\":\"mixed\""));
    assert_non_null(strstr(out, "\"loop\":\"open\""));
    assert_non_null(strstr(out, "\"value_bytes\":64"));
    assert_non_null(strstr(out, "\"errors\":"));
    free(out);
    /* bad options are usage errors */
    free(capture(DHPS_BIN " bench --value-bytes 3 2>/dev/null", &st));
    assert_int_equal(WEXITSTATUS(st), 2);
}

/* Run `dhps bench ARGS --json` (progress on stderr to /dev/null), expect status 0, parse
 * the object. */
static json_t *bench_json(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, DHPS_BIN " bench %s --json 2>/dev/null", args);
    int st;
    char *out = capture(cmd, &st);
    if (st != 0)
        fail_msg("%s: status %d, output: %s", cmd, st, out);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j)
        fail_msg("%s: not JSON (%s): %s", cmd, je.text, out);
    free(out);
    return j;
}

static json_t *obj(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        fail_msg("no \"%s\" in %s", k, json_dumps(o, JSON_COMPACT));
    return v;
}

static double num(json_t *o, const char *k)
{
    json_t *v = obj(o, k);
    if (!json_is_number(v))
        fail_msg("\"%s\" is not a number", k);
    return json_number_value(v);
}

/* a store's per-run object: the figures and the CPU fields (numbers or null) */
static void check_store(json_t *s)
{
    static const char *const f[] = {"keys_mps", "p50_us", "p99_us", "p999_us", "errors",
                                    "missing", "seconds"};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        (void)num(s, f[i]);
    static const char *const cpu[] = {"server_cpu_s", "server_cores",
                                      "keys_mps_per_server_core", "client_cpu_ns_per_key"};
    for (size_t i = 0; i < sizeof cpu / sizeof cpu[0]; i++) {
        json_t *v = obj(s, cpu[i]);
        assert_true(json_is_number(v) || json_is_null(v));
    }
    assert_true(num(s, "client_cpu_ns_per_key") > 0);
}

static void check_span(json_t *o, const char *k)
{
    json_t *sp = obj(o, k);
    assert_true(num(sp, "min") <= num(sp, "median"));
    assert_true(num(sp, "median") <= num(sp, "max"));
}

static void rounds_json(void **state)
{
    (void)state;
    bool peers = have("redis-server") && have("memcached");
    char args[256];
    snprintf(args, sizeof args, "--keys 2000 --batch 100 --seconds 0.3 --rounds 2 %s",
             peers ? "--peers" : "");
    json_t *j = bench_json(args);
    static const char *const stores[] = {"dhps", "redis", "memcached"};
    size_t ns = peers ? 3 : 1;
    /* the top level is one of the rounds (the median one) */
    double top = num(j, "round");
    assert_true(top == 1 || top == 2);
    check_store(j);
    json_t *rounds = obj(j, "rounds");
    assert_int_equal(json_array_size(rounds), 2);
    for (size_t r = 0; r < 2; r++) {
        json_t *rd = json_array_get(rounds, r);
        assert_int_equal((int)num(rd, "round"), (int)r + 1);
        json_t *order = obj(rd, "order");
        assert_int_equal(json_array_size(order), ns);
        /* rotated: round r starts with store r */
        assert_string_equal(json_string_value(json_array_get(order, 0)), stores[r % ns]);
        for (size_t s = 0; s < ns; s++)
            check_store(obj(rd, stores[s]));
    }
    json_t *sum = obj(j, "summary");
    assert_int_equal((int)num(sum, "rounds"), 2);
    assert_int_equal((int)num(sum, "median_round"), (int)top);
    for (size_t s = 0; s < ns; s++) {
        json_t *st = obj(sum, stores[s]);
        check_span(st, "keys_mps");
        check_span(st, "p99_us");
        json_t *pc = obj(st, "keys_mps_per_server_core"); /* own cluster: known */
        assert_true(json_is_object(pc));
    }
    if (peers) {
        for (size_t p = 0; p < 2; p++) {
            json_t *rt = obj(sum, p ? "dhps_over_memcached" : "dhps_over_redis");
            check_span(rt, "keys_mps");
            check_span(rt, "p99_us");
            check_span(rt, "keys_mps_per_server_core");
        }
    } else {
        fprintf(stderr, "redis-server/memcached not installed: peers not checked\n");
    }
    json_decref(j);
}

/* --server-workers 2: every store's server runs 2 threads, nothing is pinned by
 * default, and the server CPU of each store is measured */
static void two_workers(void **state)
{
    (void)state;
    bool peers = have("redis-server") && have("memcached");
    char args[256];
    snprintf(args, sizeof args, "--keys 2000 --batch 100 --seconds 1 --server-workers 2 %s",
             peers ? "--peers" : "");
    json_t *j = bench_json(args);
    assert_int_equal((int)num(j, "server_workers"), 2);
    assert_true(json_is_null(obj(j, "server_cpus")));
    assert_true(json_is_null(obj(j, "client_cpus")));
    assert_true(num(j, "server_cores") > 0);
    assert_true(num(j, "keys_mps_per_server_core") > 0);
    if (peers) {
        json_t *p = obj(j, "peers");
        for (size_t i = 0; i < 2; i++) {
            json_t *s = obj(p, i ? "memcached" : "redis");
            assert_true(num(s, "keys_mps") > 0);
            assert_true(num(s, "server_cores") > 0);
            assert_true(num(s, "keys_mps_per_server_core") > 0);
        }
    } else {
        fprintf(stderr, "redis-server/memcached not installed: peers not checked\n");
    }
    json_decref(j);
}

/* --server-cpus pins the servers (clients on the CPUs left); -1 pins nothing */
static void pinning(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
        if (CPU_ISSET(c, &set))
            first = c;
    char args[128], want[16];
    snprintf(args, sizeof args, "--keys 1000 --batch 50 --seconds 0.2 --server-cpus %d", first);
    snprintf(want, sizeof want, "%d", first);
    json_t *j = bench_json(args);
    assert_string_equal(json_string_value(obj(j, "server_cpus")), want);
    if (CPU_COUNT(&set) > 1)
        assert_true(json_is_string(obj(j, "client_cpus")));
    else
        assert_true(json_is_null(obj(j, "client_cpus")));
    json_decref(j);
    j = bench_json("--keys 1000 --batch 50 --seconds 0.2 --server-cpu -1");
    assert_true(json_is_null(obj(j, "server_cpus")));
    assert_true(num(j, "server_cores") >= 0);
    json_decref(j);
}

/* --spin-us reaches the report (and the client: a run with spin 0 still answers) */
static void spin_option(void **state)
{
    (void)state;
    json_t *j = bench_json("--keys 1000 --batch 50 --seconds 0.3 --spin-us 0");
    assert_int_equal((int)num(j, "spin_us"), 0);
    assert_true(num(j, "keys_mps") > 0);
    assert_int_equal((int)num(j, "errors"), 0);
    json_decref(j);
    j = bench_json("--keys 1000 --batch 50 --seconds 0.3");
    assert_true(json_is_null(obj(j, "spin_us")));
    json_decref(j);
}

/* exit 2 and a message naming the option */
static void usage_error(const char *args, const char *opt)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, DHPS_BIN " bench %s 2>&1", args);
    int st;
    char *out = capture(cmd, &st);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 2 || !strstr(out, opt))
        fail_msg("%s: status %d, output: %s", cmd, st, out);
    free(out);
}

static void bad_options(void **state)
{
    (void)state;
    static const char *const bad[] = {"x", "0-", "5-2", "", "1,", "0,,1", "-3", "0 1", "1x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char a[64];
        snprintf(a, sizeof a, "--server-cpus '%s'", bad[i]);
        usage_error(a, "--server-cpus");
    }
    char a[64];
    snprintf(a, sizeof a, "--server-cpus 0-%ld", sysconf(_SC_NPROCESSORS_CONF));
    usage_error(a, "--server-cpus"); /* a CPU past the machine's count */
    snprintf(a, sizeof a, "--server-cpus %ld", sysconf(_SC_NPROCESSORS_CONF) + 7);
    usage_error(a, "--server-cpus");
    usage_error("--server-cpu 0-1", "--server-cpu");
    usage_error("--server-cpu x", "--server-cpu");
    usage_error("--rounds 0", "--rounds");
    usage_error("--rounds 51", "--rounds");
    usage_error("--spin-us 1000001", "--spin-us");
    usage_error("--spin-us x", "--spin-us");
}

int main(void)
{
    if (use_built_server())
        return 77;
    const struct CMUnitTest tests[] = {cmocka_unit_test(json_fields),
                                       cmocka_unit_test(open_loop_mixed),
                                       cmocka_unit_test(rounds_json),
                                       cmocka_unit_test(two_workers),
                                       cmocka_unit_test(pinning),
                                       cmocka_unit_test(spin_option),
                                       cmocka_unit_test(bad_options)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * coord against a real etcd (started here): put/get, prefixes, compare-and-swap
 * conflicts, leases (expiry, keepalive, revoke), watch order, watch resume across an
 * etcd restart, outage errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "dhps/coord.h"
#include "etcd_fixture.h"

static struct etcd_fx fx;
static dhps_coord *C;

static void test_key_schema(void **st)
{
    char b[128];
    assert_int_equal(dhps_coord_key(b, sizeof b, "c1", DHPS_COORD_KEY_NODE, 7), 16);
    assert_string_equal(b, "/dhps/c1/nodes/7");
    dhps_coord_key(b, sizeof b, "c1", DHPS_COORD_KEY_MAP, 0);
    assert_string_equal(b, "/dhps/c1/map");
    dhps_coord_key(b, sizeof b, "c1", DHPS_COORD_KEY_HISTORY_VERSION, 12);
    assert_string_equal(b, "/dhps/c1/map_history/00000000000000000012");
    assert_int_equal(dhps_coord_key(b, sizeof b, "a/b", DHPS_COORD_KEY_MAP, 0), -EINVAL);
    assert_int_equal(dhps_coord_key(b, 4, "c1", DHPS_COORD_KEY_MAP, 0), -ENOSPC);
}

static void test_put_get_delete(void **st)
{
    int64_t r1, r2, rev;
    assert_int_equal(dhps_coord_put(C, "/t/a", "v1", 2, 0, &r1), 0);
    assert_int_equal(dhps_coord_put(C, "/t/b", "\xff\x00z", 3, 0, &r2), 0);
    assert_true(r2 > r1);
    assert_int_equal(dhps_coord_put(C, "/u", "x", 1, 0, NULL), 0);
    dhps_coord_kv *kv;
    int n = dhps_coord_get(C, "/t/a", false, &kv, &rev);
    assert_int_equal(n, 1);
    assert_string_equal(kv[0].key, "/t/a");
    assert_int_equal(kv[0].value_len, 2);
    assert_memory_equal(kv[0].value, "v1", 2);
    assert_int_equal(kv[0].mod_revision, r1);
    assert_true(rev >= r2);
    dhps_coord_kvs_free(kv, n);
    n = dhps_coord_get(C, "/t/", true, &kv, NULL);
    assert_int_equal(n, 2);
    assert_string_equal(kv[1].key, "/t/b");
    assert_int_equal(kv[1].value_len, 3);
    assert_memory_equal(kv[1].value, "\xff\x00z", 3);
    dhps_coord_kvs_free(kv, n);
    assert_int_equal(dhps_coord_get(C, "/none", false, &kv, NULL), 0);
    assert_null(kv);
    assert_int_equal(dhps_coord_delete(C, "/t/", true), 2);
    assert_int_equal(dhps_coord_delete(C, "/t/", true), 0);
    assert_int_equal(dhps_coord_get(C, "/u", true, &kv, NULL), 1);
    dhps_coord_kvs_free(kv, 1);
}

static void test_cas(void **st)
{
    int64_t r1, r2;
    assert_int_equal(dhps_coord_cas(C, "/cas", "a", 1, 0, 0, &r1), 0);
    assert_int_equal(dhps_coord_cas(C, "/cas", "b", 1, 0, 0, NULL), DHPS_E_CONFLICT);
    assert_int_equal(dhps_coord_cas(C, "/cas", "b", 1, r1, 0, &r2), 0);
    assert_int_equal(dhps_coord_cas(C, "/cas", "c", 1, r1, 0, NULL), DHPS_E_CONFLICT);
    dhps_coord_kv *kv;
    assert_int_equal(dhps_coord_get(C, "/cas", false, &kv, NULL), 1);
    assert_memory_equal(kv[0].value, "b", 1);
    assert_int_equal(kv[0].mod_revision, r2);
    dhps_coord_kvs_free(kv, 1);
}

struct racer {
    int64_t expect;
    int rc;
    char val[8];
};
static void *race(void *arg)
{
    struct racer *r = arg;
    r->rc = dhps_coord_cas(C, "/race", r->val, strlen(r->val), r->expect, 0, NULL);
    return NULL;
}

static void test_cas_race(void **st)
{
    int64_t rev;
    assert_int_equal(dhps_coord_put(C, "/race", "0", 1, 0, &rev), 0);
    struct racer r[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        r[i].expect = rev;
        snprintf(r[i].val, sizeof r[i].val, "w%d", i);
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    int wins = 0, conflicts = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        wins += r[i].rc == 0;
        conflicts += r[i].rc == DHPS_E_CONFLICT;
    }
    assert_int_equal(wins, 1);
    assert_int_equal(conflicts, 7);
}

/* Keys of prefix key (or the key) in etcd now; -1 on error. */
static int key_count(const char *key, bool prefix)
{
    dhps_coord_kv *kv;
    int n = dhps_coord_get(C, key, prefix, &kv, NULL);
    if (n > 0)
        dhps_coord_kvs_free(kv, n);
    return n < 0 ? -1 : n;
}

static void test_lease(void **st)
{
    /* the TTL is the thing under test: keepalives every quarter of it keep the key, then
     * the key goes with the lease. It is scaled (test_scale.h; 2 s natively) so that a
     * keepalive delayed by the machine still lands inside it, and capped at 10 s (a
     * keepalive 7.5 s late; the test stays under a minute). */
    int64_t id, ttl, left, granted, want = dhps_test_ms(2000) / 1000;
    if (want > 10)
        want = 10;
    assert_int_equal(dhps_coord_lease_grant(C, want, &id, &ttl), 0);
    assert_int_equal(ttl, want);
    assert_int_equal(dhps_coord_put(C, "/lease/k", "x", 1, id, NULL), 0);
    dhps_coord_kv *kv;
    assert_int_equal(dhps_coord_get(C, "/lease/k", false, &kv, NULL), 1);
    assert_int_equal(kv[0].lease, id);
    dhps_coord_kvs_free(kv, 1);
    /* kept alive well past its TTL */
    for (int i = 0; i < 6; i++) {
        usleep((useconds_t)(want * 250000));
        assert_int_equal(dhps_coord_lease_keepalive(C, id, &ttl), 0);
        assert_int_equal(ttl, want);
    }
    assert_int_equal(dhps_coord_get(C, "/lease/k", false, &kv, NULL), 1);
    dhps_coord_kvs_free(kv, 1);
    assert_int_equal(dhps_coord_lease_ttl(C, id, &left, &granted), 0);
    assert_true(left >= 0 && left <= want);
    assert_int_equal(granted, want);
    /* then left alone: the key expires with it (an event: etcd's lessor revokes expired
     * leases on its own schedule; a fixed 3.5 s sleep assumed it did so within 1.5 s) */
    assert_true(DHPS_TEST_WAIT_FOR(key_count("/lease/k", false) == 0, 2000 + 10000));
    assert_int_equal(dhps_coord_lease_keepalive(C, id, NULL), DHPS_E_NOTFOUND);
    assert_int_equal(dhps_coord_lease_ttl(C, id, &left, NULL), 0);
    assert_int_equal(left, -1);
    /* revoke deletes at once */
    assert_int_equal(dhps_coord_lease_grant(C, 30, &id, NULL), 0);
    assert_int_equal(dhps_coord_put(C, "/lease/r", "x", 1, id, NULL), 0);
    assert_int_equal(dhps_coord_lease_revoke(C, id), 0);
    assert_int_equal(dhps_coord_get(C, "/lease/r", false, &kv, NULL), 0);
    assert_int_equal(dhps_coord_lease_revoke(C, id), DHPS_E_NOTFOUND);
    assert_int_equal(dhps_coord_put(C, "/lease/r", "x", 1, id, NULL), DHPS_E_NOTFOUND);
}

#define MAXEV 256
struct seen {
    pthread_mutex_t mu;
    int n;
    int64_t rev[MAXEV];
    int type[MAXEV];
    char val[MAXEV][16];
    int down, up, stale;
};

static void on_ev(void *arg, const dhps_coord_event *ev)
{
    struct seen *s = arg;
    pthread_mutex_lock(&s->mu);
    if (s->n < MAXEV) {
        s->rev[s->n] = ev->kv->mod_revision;
        s->type[s->n] = ev->type;
        snprintf(s->val[s->n], 16, "%s", ev->kv->value);
        s->n++;
    }
    pthread_mutex_unlock(&s->mu);
}

static void on_st(void *arg, int status, int64_t rev)
{
    struct seen *s = arg;
    pthread_mutex_lock(&s->mu);
    if (status == 0)
        s->up++;
    else if (status == DHPS_E_STALE)
        s->stale++;
    else
        s->down++;
    pthread_mutex_unlock(&s->mu);
}

/* Wait for n events, up to a scaled ms (not under test); the count seen. */
static int wait_n(struct seen *s, int n, int ms)
{
    ms = (int)dhps_test_ms((uint32_t)ms);
    for (int t = 0; t < ms; t += 20) {
        pthread_mutex_lock(&s->mu);
        int k = s->n;
        pthread_mutex_unlock(&s->mu);
        if (k >= n)
            return k;
        usleep(20000);
    }
    return s->n;
}

static void test_watch_order_and_restart(void **st)
{
    struct seen *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    int64_t rev;
    dhps_coord_kv *kv;
    dhps_coord_get(C, "/w/", true, &kv, &rev);
    dhps_coord_watch *w;
    assert_int_equal(dhps_coord_watch_start(C, "/w/", true, rev + 1, on_ev, on_st, s, &w), 0);
    char v[16];
    for (int i = 0; i < 20; i++) {
        snprintf(v, sizeof v, "v%d", i);
        assert_int_equal(dhps_coord_put(C, i % 2 ? "/w/a" : "/w/b", v, strlen(v), 0, NULL), 0);
    }
    assert_int_equal(dhps_coord_delete(C, "/w/a", false), 1);
    assert_int_equal(dhps_coord_put(C, "/other", "x", 1, 0, NULL), 0); /* not watched */
    assert_int_equal(wait_n(s, 21, 5000), 21);
    for (int i = 0; i < 20; i++) {
        snprintf(v, sizeof v, "v%d", i);
        assert_string_equal(s->val[i], v);
        assert_int_equal(s->type[i], DHPS_COORD_PUT);
        if (i)
            assert_true(s->rev[i] > s->rev[i - 1]);
    }
    assert_int_equal(s->type[20], DHPS_COORD_DELETE);

    /* etcd down: the watch reports it once, calls fail as unreachable */
    etcd_kill(&fx);
    assert_int_equal(dhps_coord_put(C, "/w/a", "x", 1, 0, NULL), DHPS_E_UNREACHABLE);
    /* an event (the watch thread notices on its own time; a fixed 1.5 s sleep assumed
     * it did by then); that it is reported once is checked after the outage below */
    assert_true(DHPS_TEST_WAIT_FOR(({
                                       pthread_mutex_lock(&s->mu);
                                       int d = s->down;
                                       pthread_mutex_unlock(&s->mu);
                                       d >= 1;
                                   }),
                                   10000));
    pthread_mutex_lock(&s->mu);
    assert_int_equal(s->down, 1);
    pthread_mutex_unlock(&s->mu);
    /* back (same data dir): the watch resumes after its last revision, nothing lost */
    assert_int_equal(etcd_start(&fx), 0);
    assert_int_equal(dhps_coord_put(C, "/w/a", "after", 5, 0, NULL), 0);
    assert_int_equal(wait_n(s, 22, 10000), 22);
    assert_string_equal(s->val[21], "after");
    assert_true(s->rev[21] > s->rev[20]);
    pthread_mutex_lock(&s->mu);
    assert_int_equal(s->up, 1);
    assert_int_equal(s->down, 1);
    pthread_mutex_unlock(&s->mu);
    assert_int_equal(dhps_coord_watch_revision(w), s->rev[21]);
    dhps_coord_watch_stop(w);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void test_watch_compacted(void **st)
{
    struct seen *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    int64_t r1, r2, r3;
    assert_int_equal(dhps_coord_put(C, "/cmp/a", "1", 1, 0, &r1), 0);
    assert_int_equal(dhps_coord_put(C, "/cmp/a", "2", 1, 0, &r2), 0);
    assert_int_equal(dhps_coord_put(C, "/cmp/a", "3", 1, 0, &r3), 0);
    assert_int_equal(dhps_coord_compact(C, r3), 0);
    /* a watch from before the compaction: told so, then resumes at the compact revision */
    dhps_coord_watch *w;
    assert_int_equal(dhps_coord_watch_start(C, "/cmp/", true, r1, on_ev, on_st, s, &w), 0);
    assert_int_equal(wait_n(s, 1, 5000), 1);
    pthread_mutex_lock(&s->mu);
    assert_int_equal(s->stale, 1);
    assert_int_equal(s->down, 0);
    assert_int_equal(s->rev[0], r3);
    assert_string_equal(s->val[0], "3");
    pthread_mutex_unlock(&s->mu);
    dhps_coord_watch_stop(w);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void test_unreachable(void **st)
{
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    /* a port bound here and not listening: refused for as long as the test holds it (a
     * port only free a moment ago may be taken by a test running beside this one) */
    int hold = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(hold, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(hold, (struct sockaddr *)&a, &al), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    p.endpoint = url;
    p.timeout_ms = 300;
    dhps_coord *c;
    assert_int_equal(dhps_coord_create(&p, &c), 0);
    dhps_coord_kv *kv;
    assert_int_equal(dhps_coord_get(c, "/x", false, &kv, NULL), DHPS_E_UNREACHABLE);
    int64_t id;
    assert_int_equal(dhps_coord_lease_grant(c, 5, &id, NULL), DHPS_E_UNREACHABLE);
    dhps_coord_destroy(c);
    close(hold);
    p.endpoint = "";
    assert_int_equal(dhps_coord_create(&p, &c), -EINVAL);
}

int main(void)
{
    int rc = etcd_start(&fx);
    if (rc == 77)
        return 77;
    if (rc != 0) {
        fprintf(stderr, "etcd did not start (log %s.log)\n", fx.dir);
        etcd_cleanup(&fx);
        return 1;
    }
    dhps_coord_params p;
    dhps_coord_params_init(&p);
    p.endpoint = fx.url;
    p.timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    p.connect_timeout_ms = dhps_test_ms(1000);
    dhps_coord_create(&p, &C);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_schema),  cmocka_unit_test(test_put_get_delete),
        cmocka_unit_test(test_cas),         cmocka_unit_test(test_cas_race),
        cmocka_unit_test(test_lease),       cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_watch_compacted),
        cmocka_unit_test(test_watch_order_and_restart),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    dhps_coord_destroy(C);
    etcd_cleanup(&fx);
    return rc;
}

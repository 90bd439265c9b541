/* Randomized model test: millions of mixed operations (put with random versions,
 * lengths and TTLs, get, pinned get, delete, clock advances, maintenance with random
 * budgets, snapshot and reload) checked against a plain reference array. */
#include <stdio.h>
#include <unistd.h>

#include "test_util.h"

enum { K = 3000 };

typedef struct ref_rec {
    int present;
    uint64_t ver;
    uint32_t len;
    uint32_t exp; /* 0: none */
} ref_rec;

static ref_rec model[K];
static test_clock clk = {.ms = 10000000};

static uint64_t key_of(unsigned i) { return (uint64_t)i * 0x9E3779B97F4A7C15ull + 17; }
static uint64_t tag_of(uint64_t ver, uint32_t len) { return ver ^ ((uint64_t)len << 48); }
static uint32_t now_s(void) { return (uint32_t)(clk.ms / 1000); }
static int visible(const ref_rec *m) { return m->present && (!m->exp || now_s() < m->exp); }

static void check_all(dhps_store *s, dhps_store_reader *r)
{
    static uint64_t keys[K];
    static uint8_t out[K][300];
    static uint32_t lens[K];
    uint64_t found[(K + 63) / 64];
    for (unsigned i = 0; i < K; i++)
        keys[i] = key_of(i);
    size_t hits = dhps_store_get(r, keys, K, out, 300, lens, found);
    size_t want = 0;
    for (unsigned i = 0; i < K; i++) {
        int v = visible(&model[i]);
        want += (size_t)v;
        assert_int_equal(bit(found, i), v);
        if (v) {
            assert_int_equal(lens[i], model[i].len);
            assert_true(check_value(out[i], model[i].len, keys[i], tag_of(model[i].ver, model[i].len)));
        }
    }
    assert_int_equal(hits, want);
    (void)s;
}

static void model_run(void **state)
{
    (void)state;
    uint64_t ops = test_scale(2000000, 150000);
    uint64_t x = 12345;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = 64; /* start tiny: growth is exercised */
    p.segment_bytes = 64u << 10;
    p.clock = test_clock_fn;
    p.clock_arg = &clk;
    dhps_store *s;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    char path[64];
    snprintf(path, sizeof path, "/tmp/dhps-model-%d.snap", (int)getpid());
    static const uint32_t ttls[] = {0, 0, 0, 2, 7, 30, 3600};
    uint64_t n_stale = 0, n_put = 0, n_del = 0, n_snap = 0;

    for (uint64_t op = 0; op < ops;) {
        unsigned what = (unsigned)(splitmix(&x) % 1000);
        if (what < 550) { /* put batch */
            enum { B = 16 };
            uint64_t keys[B], vers[B], stale[1];
            uint32_t lens[B];
            static uint8_t vals[B][300];
            unsigned idx[B];
            size_t n = 1 + splitmix(&x) % B;
            uint32_t ttl = ttls[splitmix(&x) % 7];
            int dup = 0;
            for (size_t j = 0; j < n; j++) {
                idx[j] = (unsigned)(splitmix(&x) % K);
                for (size_t q = 0; q < j; q++)
                    dup |= idx[q] == idx[j];
            }
            if (dup)
                continue; /* keep batches free of repeated keys: order within is not modelled */
            for (size_t j = 0; j < n; j++) {
                ref_rec *m = &model[idx[j]];
                keys[j] = key_of(idx[j]);
                uint64_t base = m->present ? m->ver : 100;
                uint64_t v = splitmix(&x) % 10 == 0 ? base - 1 - splitmix(&x) % 3 : base + splitmix(&x) % 3;
                if (splitmix(&x) % 50 == 0)
                    v = base + (1ull << 33); /* forces wide versions */
                vers[j] = v;
                lens[j] = splitmix(&x) % 3 == 0 && m->present ? m->len : (uint32_t)(splitmix(&x) % 300);
                fill_value(vals[j], lens[j], keys[j], tag_of(v, lens[j]));
            }
            dhps_store_batch b = {.keys = keys, .n = n, .values = vals, .value_stride = 300,
                                  .lens = lens, .versions = vers, .ttl = ttl};
            long rc = dhps_store_put(s, &b, stale);
            long want = 0;
            for (size_t j = 0; j < n; j++) {
                ref_rec *m = &model[idx[j]];
                int is_stale = visible(m) && vers[j] < m->ver;
                assert_int_equal(bit(stale, j), is_stale);
                if (is_stale) {
                    n_stale++;
                    continue;
                }
                want++;
                m->present = 1;
                m->ver = vers[j];
                m->len = lens[j];
                m->exp = ttl ? now_s() + ttl : 0;
            }
            assert_int_equal(rc, want);
            n_put += n;
            op += n;
        } else if (what < 800) { /* get batch */
            enum { B = 64 };
            uint64_t keys[B], found[1];
            unsigned idx[B];
            static uint8_t out[B][300];
            uint32_t lens[B];
            size_t n = 1 + splitmix(&x) % B;
            for (size_t j = 0; j < n; j++) {
                idx[j] = (unsigned)(splitmix(&x) % K);
                keys[j] = key_of(idx[j]);
            }
            if (splitmix(&x) % 8 == 0) {
                const void *vals[B];
                dhps_store_get_pinned(r, keys, n, vals, lens, found);
                for (size_t j = 0; j < n; j++) {
                    ref_rec *m = &model[idx[j]];
                    assert_int_equal(bit(found, j), visible(m));
                    if (visible(m))
                        assert_true(check_value(vals[j], m->len, keys[j], tag_of(m->ver, m->len)));
                }
                dhps_store_release(r);
            } else {
                dhps_store_get(r, keys, n, out, 300, lens, found);
                for (size_t j = 0; j < n; j++) {
                    ref_rec *m = &model[idx[j]];
                    assert_int_equal(bit(found, j), visible(m));
                    if (visible(m)) {
                        assert_int_equal(lens[j], m->len);
                        assert_true(check_value(out[j], m->len, keys[j], tag_of(m->ver, m->len)));
                    }
                }
            }
            op += n;
        } else if (what < 900) { /* delete */
            unsigned i = (unsigned)(splitmix(&x) % K);
            uint64_t key = key_of(i), del[1];
            ref_rec *m = &model[i];
            uint64_t v = splitmix(&x) % 2 ? UINT64_MAX : (m->present ? m->ver - 1 + splitmix(&x) % 3 : 5);
            size_t got = dhps_store_delete(s, &key, 1, v, del);
            int want = visible(m) && m->ver <= v;
            assert_int_equal(got, (size_t)want);
            if (want || (m->present && !visible(m)))
                m->present = 0;
            n_del++;
            op++;
        } else if (what < 960) { /* time passes */
            test_clock_advance(&clk, splitmix(&x) % 2500);
            op++;
        } else if (what < 995) { /* maintenance */
            dhps_store_maintain(s, splitmix(&x) % 2 ? 0 : (size_t)(splitmix(&x) % 100000));
            op++;
        } else if (splitmix(&x) % 20 == 0) { /* snapshot and reload */
            assert_int_equal(dhps_store_snapshot(s, path), 0);
            dhps_store *t;
            assert_int_equal(dhps_store_create(&p, &t), 0);
            assert_true(dhps_store_load(t, path) >= 0);
            dhps_store_reader_close(r);
            dhps_store_destroy(s);
            s = t;
            assert_int_equal(dhps_store_reader_open(s, &r), 0);
            /* the reloaded store no longer holds expired records: drop them */
            for (unsigned i = 0; i < K; i++)
                if (model[i].present && !visible(&model[i]))
                    model[i].present = 0;
            n_snap++;
            op++;
        }
        if (op % 50000 < 8)
            check_all(s, r);
    }
    check_all(s, r);
    dhps_store_maintain(s, 0);
    check_all(s, r);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_true(st.fragmentation <= 0.05 + (double)(64u << 10) * 24 / (double)(st.segment_bytes + 1));
    printf("model: %llu ops, %llu puts (%llu stale), %llu deletes, %llu snapshots; "
           "keys %llu, segments %llu, fragmentation %.3f, inplace %llu, compacted %llu, grows %llu\n",
           (unsigned long long)ops, (unsigned long long)n_put, (unsigned long long)n_stale,
           (unsigned long long)n_del, (unsigned long long)n_snap, (unsigned long long)st.keys,
           (unsigned long long)st.segments, st.fragmentation, (unsigned long long)st.inplace_updates,
           (unsigned long long)st.compacted_segments, (unsigned long long)st.index_grows);
    unlink(path);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(model_run)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

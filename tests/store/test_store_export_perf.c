/* Export, merge, digest and range-version rates (label slow; prints, asserts only
 * correctness): 1 M records of 128-byte values by default, DHPS_EXPORT_PERF_N to
 * change. Figures in docs/store.md come from the rel build of this test. */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>

#include "test_util.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void report(const char *what, uint64_t recs, size_t bytes, double dt)
{
    printf("%-34s %9.2f M rec/s  %8.1f MB/s  (%.3f s)\n", what, (double)recs / dt / 1e6,
           (double)bytes / dt / 1e6, dt);
}

static void rates(void **state)
{
    (void)state;
    const char *e = getenv("DHPS_EXPORT_PERF_N");
    uint64_t n = e ? strtoull(e, NULL, 10) : test_scale(1000000, 50000);
    enum { LEN = 128, B = 1024 };
    dhps_store *s = mk_store(NULL, n, 0);
    uint64_t keys[B];
    static uint8_t vals[B][LEN];
    uint64_t x = 42;
    double t0 = now_s();
    for (uint64_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        for (size_t j = 0; j < m; j++) {
            keys[j] = splitmix(&x);
            fill_value(vals[j], LEN, keys[j], 1);
        }
        dhps_store_batch b = {.keys = keys, .n = m, .values = vals, .value_stride = LEN, .version = 1};
        assert_int_equal(dhps_store_put(s, &b, NULL), (long)m);
    }
    report("put, batches of 1024 (+value gen)", n, n * (LEN + 8), now_s() - t0);
    void *buf;
    size_t len;
    uint64_t recs;
    t0 = now_s();
    assert_int_equal(dhps_store_export(s, NULL, 0, &buf, &len, &recs), 0);
    report("export (all)", recs, len, now_s() - t0);
    assert_int_equal(recs, n);

    uint64_t mask[1024] = {0};
    for (int r = 0; r < 65536; r += 16)
        mask[r / 64] |= 1ull << (r % 64);
    void *b2;
    size_t l2;
    uint64_t r2;
    t0 = now_s();
    assert_int_equal(dhps_store_export(s, mask, 65536, &b2, &l2, &r2), 0);
    report("export (1/16 of 65536 ranges)", n, l2, now_s() - t0);
    free(b2);

    dhps_store *t = mk_store(NULL, n, 0);
    t0 = now_s();
    assert_int_equal(dhps_store_merge_buffer(t, buf, len, NULL, NULL, NULL), (long)n);
    report("merge into empty", n, len, now_s() - t0);
    t0 = now_s();
    assert_int_equal(dhps_store_merge_buffer(t, buf, len, NULL, NULL, NULL), 0);
    report("merge over equal versions (all left as they are)", n, len, now_s() - t0);
    dhps_store_destroy(t);
    t = mk_store(NULL, n, 0);
    t0 = now_s();
    assert_int_equal(dhps_store_load_buffer(t, buf, len), (long)n);
    report("load_buffer into empty", n, len, now_s() - t0);

    uint32_t nr = 65536;
    uint64_t *h = calloc(nr, 8), *c = calloc(nr, 8), *h2 = calloc(nr, 8), *c2 = calloc(nr, 8);
    t0 = now_s();
    assert_int_equal(dhps_store_digest(s, nr, h, c), 0);
    report("digest (65536 ranges)", n, 0, now_s() - t0);
    assert_int_equal(dhps_store_digest(t, nr, h2, c2), 0);
    assert_memory_equal(h, h2, nr * 8);
    uint64_t *ks, *vs;
    size_t nk;
    t0 = now_s();
    assert_int_equal(dhps_store_range_versions(s, NULL, 0, &ks, &vs, &nk), 0);
    report("range_versions (all)", nk, 0, now_s() - t0);
    assert_int_equal(nk, n);
    free(ks), free(vs), free(h), free(c), free(h2), free(c2);
    free(buf);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

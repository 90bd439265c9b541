/* Export, merge, digests and range versions (replica catch-up and anti-entropy), all
 * through store.h: round trips through load_buffer and merge, version precedence both
 * ways, the skip callback, expiry on both sides, whole rejection of damaged images,
 * order-independent digests that differ exactly where the stores differ. */
#include <errno.h>
#include <stdio.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dhps/proto.h"
#include "test_util.h"

enum { N = 4000, NR = 64 };

static uint64_t keyof(uint64_t i) { return i * 0x9E3779B97F4A7C15ull + 7; }

/* N keys, lengths 0..299, a third with a 100 s TTL, some overwritten, some deleted. */
static dhps_store *filled(test_clock *c, uint64_t hint)
{
    dhps_store *s = mk_store(c, hint, 0);
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(put1(s, keyof(i), i, (uint32_t)(i % 300), i % 3 ? 0 : 100), 1);
    for (uint64_t i = 1; i <= N; i += 5)
        assert_int_equal(put1(s, keyof(i), i + 1000, (uint32_t)(i % 300), 0), 1);
    for (uint64_t i = 2; i <= N; i += 7) {
        uint64_t k = keyof(i);
        dhps_store_delete(s, &k, 1, UINT64_MAX, NULL);
    }
    return s;
}
static int f_deleted(uint64_t i) { return i >= 2 && (i - 2) % 7 == 0; }
static uint64_t f_ver(uint64_t i) { return (i - 1) % 5 == 0 ? i + 1000 : i; }
static int f_ttl(uint64_t i) { return (i - 1) % 5 != 0 && i % 3 == 0; }

static int in_mask(const uint64_t *mask, uint64_t key)
{
    return !mask || bit(mask, dhps_store_key_range(key, NR));
}

/* t holds exactly filled()'s live records in the ranges of mask (NULL: all). */
static void check_filled(dhps_store *t, const uint64_t *mask, int ttl_alive)
{
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(t, &r), 0);
    for (uint64_t i = 1; i <= N; i++) {
        int want = !f_deleted(i) && (!f_ttl(i) || ttl_alive) && in_mask(mask, keyof(i));
        assert_int_equal(get1(r, keyof(i), f_ver(i), (uint32_t)(i % 300)), want);
    }
    dhps_store_reader_close(r);
}

static void digests_equal(dhps_store *a, dhps_store *b, uint32_t nr)
{
    uint64_t *ha = calloc(nr, 8), *ca = calloc(nr, 8), *hb = calloc(nr, 8), *cb = calloc(nr, 8);
    assert_int_equal(dhps_store_digest(a, nr, ha, ca), 0);
    assert_int_equal(dhps_store_digest(b, nr, hb, cb), 0);
    assert_memory_equal(ha, hb, nr * 8);
    assert_memory_equal(ca, cb, nr * 8);
    free(ha), free(ca), free(hb), free(cb);
}

static void key_range_is_even_within_a_shard(void **state)
{
    (void)state;
    assert_int_equal(dhps_store_key_range(12345, 1), 0);
    for (uint64_t k = 0; k < 100000; k++)
        assert_true(dhps_store_key_range(k * 977, 65536) < 65536);
    /* keys of one virtual shard (of 16) over 64 ranges: each range near 1/64 */
    uint32_t cnt[NR] = {0}, total = 0;
    for (uint64_t k = 0; total < NR * 1000; k++) {
        if (dhps_proto_shard_of(k, 16) != 3)
            continue;
        cnt[dhps_store_key_range(k, NR)]++;
        total++;
    }
    for (int r = 0; r < NR; r++)
        assert_true(cnt[r] > 850 && cnt[r] < 1150); /* sd ~31: about 5 sd */
}

static void export_all_round_trips(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c, N);
    void *buf;
    size_t len;
    uint64_t recs;
    assert_int_equal(dhps_store_export(s, NULL, 0, &buf, &len, &recs), 0);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(recs, st.keys);

    /* into an empty store through the snapshot loader */
    dhps_store *t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load_buffer(t, buf, len), (long)recs);
    check_filled(t, NULL, 1);
    digests_equal(s, t, 1);
    digests_equal(s, t, 1000);
    dhps_store_destroy(t);

    /* into a non-empty store through merge: unrelated keys stay */
    t = mk_store(&c, 10, 0);
    for (uint64_t k = 1; k <= 100; k++)
        assert_int_equal(put1(t, k, 1, 8, 0), 1);
    dhps_store_merge_stats ms;
    assert_int_equal(dhps_store_merge_buffer(t, buf, len, NULL, NULL, &ms), (long)recs);
    assert_int_equal(ms.applied, recs);
    assert_int_equal(ms.stale + ms.skipped + ms.expired, 0);
    check_filled(t, NULL, 1);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(t, &r), 0);
    for (uint64_t k = 1; k <= 100; k++)
        assert_int_equal(get1(r, k, 1, 8), 1);
    dhps_store_reader_close(r);
    /* TTLs continue: 100 s left at export */
    test_clock_advance(&c, 99 * 1000);
    check_filled(t, NULL, 1);
    test_clock_advance(&c, 1000);
    check_filled(t, NULL, 0);
    dhps_store_destroy(t);
    free(buf);

    /* an empty store exports an image that loads as empty */
    t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_export(t, NULL, 0, &buf, &len, &recs), 0);
    assert_int_equal(recs, 0);
    assert_int_equal(dhps_store_load_buffer(t, buf, len), 0);
    assert_int_equal(dhps_store_merge_buffer(t, buf, len, NULL, NULL, NULL), 0);
    free(buf);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

static void export_by_range(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c, N);
    uint64_t mask[1] = {0};
    for (int r = 0; r < NR; r += 3)
        mask[0] |= 1ull << r;
    void *buf;
    size_t len;
    uint64_t recs;
    assert_int_equal(dhps_store_export(s, mask, NR, &buf, &len, &recs), 0);
    dhps_store *t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load_buffer(t, buf, len), (long)recs);
    check_filled(t, mask, 1);
    /* merge into a store holding the other ranges gives the whole store */
    uint64_t other[1] = {~mask[0]};
    void *buf2;
    size_t len2;
    uint64_t recs2;
    assert_int_equal(dhps_store_export(s, other, NR, &buf2, &len2, &recs2), 0);
    assert_int_equal(dhps_store_merge_buffer(t, buf2, len2, NULL, NULL, NULL), (long)recs2);
    check_filled(t, NULL, 1);
    digests_equal(s, t, NR);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(recs + recs2, st.keys);
    /* an empty mask exports nothing; bad range counts are refused */
    uint64_t none[1] = {0};
    free(buf);
    assert_int_equal(dhps_store_export(s, none, NR, &buf, &len, &recs), 0);
    assert_int_equal(recs, 0);
    free(buf);
    assert_int_equal(dhps_store_export(s, none, 0, &buf, &len, &recs), -EINVAL);
    assert_null(buf);
    uint64_t big[1025] = {0};
    assert_int_equal(dhps_store_export(s, big, 65537, &buf, &len, &recs), -EINVAL);
    free(buf2);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

static void merge_keeps_the_higher_version(void **state)
{
    (void)state;
    dhps_store *a = mk_store(NULL, 10, 0), *b = mk_store(NULL, 10, 0);
    for (uint64_t k = 1; k <= 1000; k++)
        assert_int_equal(put1(a, k, 10, 64, 0), 1);
    assert_int_equal(put1(a, 5000, 10, 32, 0), 1);
    for (uint64_t k = 1; k <= 500; k++)
        assert_int_equal(put1(b, k, 5, 64, 0), 1); /* older: replaced */
    for (uint64_t k = 501; k <= 1000; k++)
        assert_int_equal(put1(b, k, 20, 64, 0), 1); /* newer: survives */
    for (uint64_t k = 2001; k <= 2100; k++)
        assert_int_equal(put1(b, k, 1, 16, 0), 1); /* only here: untouched */
    assert_int_equal(put1(b, 5000, 10, 48, 0), 1); /* equal version: the same write, kept */
    void *buf;
    size_t len;
    assert_int_equal(dhps_store_export(a, NULL, 0, &buf, &len, NULL), 0);
    dhps_store_merge_stats st;
    assert_int_equal(dhps_store_merge_buffer(b, buf, len, NULL, NULL, &st), 500);
    assert_int_equal(st.applied, 500);
    assert_int_equal(st.stale, 501);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(b, &r), 0);
    for (uint64_t k = 1; k <= 500; k++)
        assert_int_equal(get1(r, k, 10, 64), 1);
    for (uint64_t k = 501; k <= 1000; k++)
        assert_int_equal(get1(r, k, 20, 64), 1);
    for (uint64_t k = 2001; k <= 2100; k++)
        assert_int_equal(get1(r, k, 1, 16), 1);
    assert_int_equal(get1(r, 5000, 10, 48), 1);
    dhps_store_reader_close(r);
    dhps_store_stats ss;
    dhps_store_get_stats(b, &ss);
    assert_int_equal(ss.stale_updates, 500); /* equal versions are not stale updates */
    /* versions were kept, not restamped: an older put is still refused */
    assert_int_equal(put1(b, 1, 9, 64, 0), 0);
    assert_int_equal(put1(b, 501, 19, 64, 0), 0);
    free(buf);
    dhps_store_destroy(a);
    dhps_store_destroy(b);
}

static bool skip_even(void *arg, uint64_t key, uint64_t version)
{
    (*(int *)arg)++;
    (void)version;
    return key % 2 == 0;
}

static void skip_drops_records(void **state)
{
    (void)state;
    dhps_store *a = mk_store(NULL, 10, 0), *b = mk_store(NULL, 10, 0);
    for (uint64_t k = 1; k <= 1000; k++)
        assert_int_equal(put1(a, k, 3, 40, 0), 1);
    void *buf;
    size_t len;
    assert_int_equal(dhps_store_export(a, NULL, 0, &buf, &len, NULL), 0);
    int calls = 0;
    dhps_store_merge_stats st;
    assert_int_equal(dhps_store_merge_buffer(b, buf, len, skip_even, &calls, &st), 500);
    assert_int_equal(calls, 1000);
    assert_int_equal(st.skipped, 500);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(b, &r), 0);
    for (uint64_t k = 1; k <= 1000; k++)
        assert_int_equal(get1(r, k, 3, 40), (int)(k % 2));
    dhps_store_reader_close(r);
    free(buf);
    dhps_store_destroy(a);
    dhps_store_destroy(b);
}

static void expired_records_are_neither_exported_nor_merged(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *a = mk_store(&c, 10, 0);
    for (uint64_t k = 1; k <= 300; k++)
        assert_int_equal(put1(a, k, 1, 24, k <= 100 ? 10 : k <= 200 ? 200 : 0), 1);
    test_clock_advance(&c, 10 * 1000); /* keys 1..100 expire */
    void *buf;
    size_t len;
    uint64_t recs;
    assert_int_equal(dhps_store_export(a, NULL, 0, &buf, &len, &recs), 0);
    assert_int_equal(recs, 200);
    uint64_t *ks, *vs;
    size_t n;
    assert_int_equal(dhps_store_range_versions(a, NULL, 0, &ks, &vs, &n), 0);
    assert_int_equal(n, 200);
    free(ks), free(vs);
    /* pretend the image was made 100 s ago (header wall clock, rehashed): keys
     * 101..200 had 190 s left, now 90 s; a 50 s TTL record would be gone */
    uint8_t *p = buf;
    uint64_t wall;
    memcpy(&wall, p + 32, 8);
    wall -= 100 * 1000;
    memcpy(p + 32, &wall, 8);
    uint64_t h = XXH3_64bits(p, 56);
    memcpy(p + 56, &h, 8);
    dhps_store *b = mk_store(&c, 10, 0);
    dhps_store_merge_stats st;
    assert_int_equal(dhps_store_merge_buffer(b, buf, len, NULL, NULL, &st), 200);
    assert_int_equal(st.expired, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(b, &r), 0);
    test_clock_advance(&c, 89 * 1000);
    for (uint64_t k = 101; k <= 300; k++)
        assert_int_equal(get1(r, k, 1, 24), 1);
    test_clock_advance(&c, 1000);
    for (uint64_t k = 101; k <= 300; k++)
        assert_int_equal(get1(r, k, 1, 24), k > 200);
    dhps_store_reader_close(r);
    /* 200 s ago: every TTL record of the image has run out */
    wall -= 100 * 1000;
    memcpy(p + 32, &wall, 8);
    h = XXH3_64bits(p, 56);
    memcpy(p + 56, &h, 8);
    dhps_store *d = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_merge_buffer(d, buf, len, NULL, NULL, &st), 100);
    assert_int_equal(st.expired, 100);
    dhps_store_destroy(d);
    d = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load_buffer(d, buf, len), 100); /* the loader agrees */
    free(buf);
    dhps_store_destroy(d);
    dhps_store_destroy(b);
    dhps_store_destroy(a);
}

static void damaged_image_is_rejected_whole(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c, N);
    void *buf;
    size_t n;
    assert_int_equal(dhps_store_export(s, NULL, 0, &buf, &n, NULL), 0);
    uint8_t *img = buf;
    dhps_store *t = mk_store(&c, 10, 0);
    for (uint64_t k = 1; k <= 50; k++)
        assert_int_equal(put1(t, k, 1, 8, 0), 1);
    uint64_t h0[16], c0[16], h1[16], c1[16];
    assert_int_equal(dhps_store_digest(t, 16, h0, c0), 0);
    dhps_store_merge_stats st;
    for (size_t cut = 0; cut < n; cut += (cut < 300 || n - cut < 300) ? 1 : 997) {
        assert_int_equal(dhps_store_merge_buffer(t, img, cut, NULL, NULL, &st), DHPS_E_CORRUPT);
        assert_int_equal(st.applied, 0);
    }
    for (size_t off = 0; off < n; off += (off < 128 || n - off < 128) ? 1 : 499) {
        if (off >= 8 && off < 16)
            continue;
        for (int b = 0; b < 8; b += 3) {
            img[off] ^= (uint8_t)(1u << b);
            long rc = dhps_store_merge_buffer(t, img, n, NULL, NULL, NULL);
            img[off] ^= (uint8_t)(1u << b);
            assert_int_equal(rc, DHPS_E_CORRUPT);
        }
    }
    img[8] = 3;
    assert_int_equal(dhps_store_merge_buffer(t, img, n, NULL, NULL, NULL), DHPS_E_VERSION);
    img[8] = 2;
    assert_int_equal(dhps_store_digest(t, 16, h1, c1), 0);
    assert_memory_equal(h0, h1, sizeof h0);
    assert_memory_equal(c0, c1, sizeof c0);
    /* the intact image still merges */
    assert_true(dhps_store_merge_buffer(t, img, n, NULL, NULL, NULL) > 0);
    check_filled(t, NULL, 1);
    free(buf);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

static void digests_are_order_and_layout_independent(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *a = mk_store(&c, 10, 0);      /* grows its index many times */
    dhps_store *b = mk_store(&c, 100000, 0);  /* one large index */
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(put1(a, keyof(i), i, (uint32_t)(i % 200), i % 4 ? 0 : 1000), 1);
    for (uint64_t i = N; i >= 1; i--) {
        /* b: reverse order, different lengths and TTLs, an older version first */
        assert_int_equal(put1(b, keyof(i), i - 1, 7, 0), 1);
        assert_int_equal(put1(b, keyof(i), i, (uint32_t)(i % 50), 0), 1);
    }
    static const uint32_t nrs[] = {1, 7, NR, 1024, 65536};
    for (size_t j = 0; j < sizeof nrs / sizeof nrs[0]; j++)
        digests_equal(a, b, nrs[j]);

    uint32_t nr = 1024;
    uint64_t *ha = calloc(nr, 8), *ca = calloc(nr, 8), *hb = calloc(nr, 8), *cb = calloc(nr, 8);
    /* one version differs: exactly its range's hash, counts equal */
    assert_int_equal(put1(b, keyof(17), 10000, 8, 0), 1);
    /* one key missing from b, one extra key in b */
    uint64_t gone = keyof(33), extra = keyof(N + 5);
    dhps_store_delete(b, &gone, 1, UINT64_MAX, NULL);
    assert_int_equal(put1(b, extra, 1, 8, 0), 1);
    assert_int_equal(dhps_store_digest(a, nr, ha, ca), 0);
    assert_int_equal(dhps_store_digest(b, nr, hb, cb), 0);
    uint32_t r17 = dhps_store_key_range(keyof(17), nr), rg = dhps_store_key_range(gone, nr),
             rx = dhps_store_key_range(extra, nr);
    assert_true(r17 != rg && r17 != rx && rg != rx); /* distinct for these keys */
    for (uint32_t r = 0; r < nr; r++) {
        int diff = r == r17 || r == rg || r == rx;
        assert_int_equal(ha[r] != hb[r], diff);
        assert_int_equal((int64_t)cb[r] - (int64_t)ca[r], r == rg ? -1 : r == rx ? 1 : 0);
    }
    /* expired records leave the digest without maintenance */
    test_clock_advance(&c, 1000 * 1000);
    assert_int_equal(dhps_store_digest(a, 1, ha, ca), 0);
    assert_int_equal(ca[0], N - N / 4);
    assert_int_equal(dhps_store_digest(a, 0, ha, ca), -EINVAL);
    assert_int_equal(dhps_store_digest(a, 65537, ha, ca), -EINVAL);
    free(ha), free(ca), free(hb), free(cb);
    dhps_store_destroy(a);
    dhps_store_destroy(b);
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void range_versions_returns_the_selected_ranges(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c, N);
    uint64_t mask[1] = {0x8000000000000001ull | (1ull << 20) | (1ull << 41)};
    uint64_t *ks, *vs;
    size_t n;
    assert_int_equal(dhps_store_range_versions(s, mask, NR, &ks, &vs, &n), 0);
    uint64_t want[N], got[N];
    size_t nw = 0;
    for (uint64_t i = 1; i <= N; i++)
        if (!f_deleted(i) && in_mask(mask, keyof(i)))
            want[nw++] = keyof(i);
    assert_int_equal(n, nw);
    assert_true(nw > 100);
    for (size_t j = 0; j < n; j++) {
        got[j] = ks[j];
        /* the version returned is the stored one */
        uint64_t i = 0;
        for (uint64_t q = 1; q <= N; q++)
            if (keyof(q) == ks[j])
                i = q;
        assert_int_equal(vs[j], f_ver(i));
    }
    qsort(want, nw, 8, cmp_u64);
    qsort(got, n, 8, cmp_u64);
    assert_memory_equal(want, got, n * 8);
    free(ks), free(vs);
    uint64_t none[1] = {0};
    assert_int_equal(dhps_store_range_versions(s, none, NR, &ks, &vs, &n), 0);
    assert_int_equal(n, 0);
    assert_null(ks);
    assert_int_equal(dhps_store_range_versions(s, mask, 0, &ks, &vs, &n), -EINVAL);
    dhps_store_destroy(s);
}

/* export_since keeps exactly the records at or above a version; max_version is the
 * highest live version. */
static void export_since_filters_by_version(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c, N);
    assert_int_equal(dhps_store_max_version(s), N - 4 + 1000); /* key N-4: i % 5 == 1 */
    uint64_t since = 3000, want = 0;
    for (uint64_t i = 1; i <= N; i++)
        want += !f_deleted(i) && f_ver(i) >= since;
    void *buf;
    size_t len;
    uint64_t recs;
    assert_int_equal(dhps_store_export_since(s, NULL, 0, since, &buf, &len, &recs), 0);
    assert_int_equal(recs, want);
    dhps_store *t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load_buffer(t, buf, len), (long)want);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(t, &r), 0);
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(get1(r, keyof(i), f_ver(i), (uint32_t)(i % 300)),
                         !f_deleted(i) && f_ver(i) >= since);
    dhps_store_reader_close(r);
    free(buf);
    assert_int_equal(dhps_store_max_version(t), N - 4 + 1000);
    dhps_store_destroy(t);
    t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_max_version(t), 0);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(key_range_is_even_within_a_shard),
        cmocka_unit_test(export_all_round_trips),
        cmocka_unit_test(export_by_range),
        cmocka_unit_test(export_since_filters_by_version),
        cmocka_unit_test(merge_keeps_the_higher_version),
        cmocka_unit_test(skip_drops_records),
        cmocka_unit_test(expired_records_are_neither_exported_nor_merged),
        cmocka_unit_test(damaged_image_is_rejected_whole),
        cmocka_unit_test(digests_are_order_and_layout_independent),
        cmocka_unit_test(range_versions_returns_the_selected_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

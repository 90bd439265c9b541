/* Store behaviour through the public API: lookups, versions, lengths, SIMD paths,
 * growth, TTL expiry, memory limits, compaction, zero-copy pins, stats, params. */
#include <errno.h>
#include "test_util.h"

static void put_get_basic(void **state)
{
    (void)state;
    dhps_store *s = mk_store(NULL, 1000, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    enum { N = 300, D = 64 };
    uint64_t keys[N];
    static uint8_t vals[N][D], out[N + 2][D];
    for (int i = 0; i < N; i++) {
        keys[i] = (uint64_t)i * 7919 + 1;
        fill_value(vals[i], D, keys[i], 5);
    }
    dhps_store_batch b = {.keys = keys, .n = N, .values = vals, .value_stride = D, .version = 5};
    assert_int_equal(dhps_store_put(s, &b, NULL), N);

    uint64_t q[N + 2];
    memcpy(q, keys, sizeof keys);
    q[N] = 424242;     /* absent */
    q[N + 1] = keys[3];
    uint32_t lens[N + 2];
    uint64_t found[(N + 2 + 63) / 64];
    memset(out, 0xAB, sizeof out);
    assert_int_equal(dhps_store_get(r, q, N + 2, out, D, lens, found), N + 1);
    for (int i = 0; i < N; i++) {
        assert_true(bit(found, (size_t)i));
        assert_int_equal(lens[i], D);
        assert_memory_equal(out[i], vals[i], D);
    }
    assert_false(bit(found, N));
    assert_int_equal(lens[N], 0);
    for (int j = 0; j < D; j++)
        assert_int_equal(out[N][j], 0); /* missing rows are zero-filled */
    assert_memory_equal(out[N + 1], vals[3], D);

    /* a narrower output stride truncates, a wider one zero-fills */
    uint8_t narrow[16], wide[100];
    uint64_t f;
    uint32_t l;
    assert_int_equal(dhps_store_get(r, &keys[1], 1, narrow, 16, &l, &f), 1);
    assert_int_equal(l, D);
    assert_memory_equal(narrow, vals[1], 16);
    assert_int_equal(dhps_store_get(r, &keys[1], 1, wide, 100, NULL, &f), 1);
    assert_memory_equal(wide, vals[1], D);
    for (int j = D; j < 100; j++)
        assert_int_equal(wide[j], 0);
    /* presence test without output */
    assert_int_equal(dhps_store_get(r, q, N + 2, NULL, 0, NULL, found), N + 1);

    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.keys, N);
    assert_int_equal(st.payload_bytes, N * (8 + D));
    assert_true(st.live_bytes >= st.payload_bytes);
    assert_true(st.index_bytes > 0 && st.segments >= 1);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void versions_and_deletes(void **state)
{
    (void)state;
    dhps_store *s = mk_store(NULL, 100, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    assert_int_equal(put1(s, 1, 10, 32, 0), 1);
    assert_int_equal(put1(s, 1, 9, 32, 0), 0); /* stale: ignored */
    assert_int_equal(get1(r, 1, 10, 32), 1);
    assert_int_equal(put1(s, 1, 10, 32, 0), 1); /* equal overwrites */
    assert_int_equal(put1(s, 1, 1ull << 40, 48, 0), 1); /* far version, new length */
    assert_int_equal(get1(r, 1, 1ull << 40, 48), 1);
    assert_int_equal(put1(s, 1, 3, 48, 0), 0);

    /* stale mask over a batch with per-key versions */
    uint64_t keys[3] = {1, 2, 3}, vers[3] = {5, 7, 7}, stale[1];
    uint8_t v[3][48];
    for (int i = 0; i < 3; i++)
        fill_value(v[i], 48, keys[i], vers[i]);
    dhps_store_batch b = {.keys = keys, .n = 3, .values = v, .value_stride = 48, .versions = vers};
    assert_int_equal(dhps_store_put(s, &b, stale), 2);
    assert_int_equal(stale[0], 1);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.stale_updates, 3);

    /* deletes respect versions */
    uint64_t del[1];
    assert_int_equal(dhps_store_delete(s, &keys[1], 1, 6, del), 0);
    assert_int_equal(dhps_store_delete(s, &keys[1], 1, 7, del), 1);
    assert_int_equal(del[0], 1);
    assert_int_equal(get1(r, 2, 7, 48), 0);
    assert_int_equal(dhps_store_delete(s, &keys[1], 1, UINT64_MAX, NULL), 0);
    assert_int_equal(put1(s, 2, 1, 48, 0), 1); /* no tombstone: a later put lands */
    assert_int_equal(get1(r, 2, 1, 48), 1);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void lengths_and_limits(void **state)
{
    (void)state;
    dhps_store *s = mk_store(NULL, 100, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint32_t sizes[] = {0, 1, 7, 8, 63, 64, 65, 128, 512, 4096, DHPS_STORE_MAX_VALUE};
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        assert_int_equal(put1(s, 100 + i, 1, sizes[i], 0), 1);
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        assert_int_equal(get1(r, 100 + i, 1, sizes[i]), 1);
    static uint8_t big[DHPS_STORE_MAX_VALUE + 1];
    uint64_t k = 5;
    dhps_store_batch b = {.keys = &k, .n = 1, .values = big, .value_stride = sizeof big};
    assert_int_equal(dhps_store_put(s, &b, NULL), DHPS_E_TOOBIG);
    uint32_t l = 10;
    b.value_stride = 8;
    b.lens = &l; /* a length beyond the stride is refused too */
    assert_int_equal(dhps_store_put(s, &b, NULL), DHPS_E_TOOBIG);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void simd_paths_agree(void **state)
{
    (void)state;
    const char *names[] = {"scalar", "sse2", "avx2"};
    enum { N = 20000, Q = 4096 };
    dhps_store *s = mk_store(NULL, N, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t x = 1;
    static uint64_t keys[N], q[Q];
    static uint8_t v[N][16];
    for (int i = 0; i < N; i++) {
        keys[i] = splitmix(&x);
        fill_value(v[i], 16, keys[i], 1);
    }
    dhps_store_batch b = {.keys = keys, .n = N, .values = v, .value_stride = 16, .version = 1};
    assert_int_equal(dhps_store_put(s, &b, NULL), N);
    for (int i = 0; i < Q; i++)
        q[i] = (i & 1) ? keys[splitmix(&x) % N] : splitmix(&x);
    static uint8_t ref_out[Q][16], out[Q][16];
    uint64_t ref_found[Q / 64], found[Q / 64];
    const char *orig = dhps_store_simd_name();
    assert_int_equal(dhps_store_force_simd("scalar"), 0);
    size_t ref_hits = dhps_store_get(r, q, Q, ref_out, 16, NULL, ref_found);
    assert_true(ref_hits >= Q / 2);
    for (unsigned k = 0; k < 3; k++) {
        if (dhps_store_force_simd(names[k]) != 0)
            continue; /* CPU lacks it (or a TSan build): skip, do not fail */
        assert_string_equal(dhps_store_simd_name(), names[k]);
        assert_int_equal(dhps_store_get(r, q, Q, out, 16, NULL, found), ref_hits);
        assert_memory_equal(found, ref_found, sizeof found);
        assert_memory_equal(out, ref_out, sizeof out);
    }
    assert_int_equal(dhps_store_force_simd("mmx"), -ENOTSUP);
    assert_int_equal(dhps_store_force_simd(orig), 0);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

/* Rows of 64, 128 and 256 bytes take the constant-size copy paths of lookups and of
 * in-place upserts; a value shorter than the row (stored with lens) takes the general
 * path inside the same call. Checked for every tag-match implementation, with
 * duplicate keys, a stale version and a short value inside the update batch. */
static void fixed_row_sizes(void **state)
{
    (void)state;
    enum { N = 3000 };
    static const uint32_t sizes[] = {64, 128, 256};
    static uint64_t keys[N], vers[N];
    static uint32_t lens[N];
    static uint8_t vals[N * 256], out[N * 256];
    uint64_t found[(N + 63) / 64], stale[(N + 63) / 64];
    const char *orig = dhps_store_simd_name();
    const char *names[] = {"scalar", "sse2", "avx2"};
    for (unsigned z = 0; z < 3; z++) {
        const uint32_t D = sizes[z];
        dhps_store *s = mk_store(NULL, N, 0);
        dhps_store_reader *r;
        assert_int_equal(dhps_store_reader_open(s, &r), 0);
        uint64_t x = 7 + z;
        for (int i = 0; i < N; i++) {
            keys[i] = splitmix(&x);
            fill_value(vals + (size_t)i * D, D, keys[i], 10);
        }
        dhps_store_batch b = {.keys = keys, .n = N, .values = vals, .value_stride = D, .version = 10};
        assert_int_equal(dhps_store_put(s, &b, NULL), N);
        /* update: key 5 written twice (the second wins), key 7 with an older version,
         * key 9 with a shorter value (an append), the rest in place at version 11 */
        static uint64_t ukeys[N];
        memcpy(ukeys, keys, sizeof keys);
        ukeys[6] = keys[5];
        for (int i = 0; i < N; i++) {
            vers[i] = i == 7 ? 9 : 11 + (uint64_t)(i == 6);
            lens[i] = i == 9 ? D - 24 : D;
            fill_value(vals + (size_t)i * D, lens[i], ukeys[i], vers[i]);
        }
        dhps_store_batch u = {.keys = ukeys, .n = N, .values = vals, .value_stride = D,
                              .lens = lens, .versions = vers};
        assert_int_equal(dhps_store_put(s, &u, stale), N - 1);
        assert_true(bit(stale, 7));
        dhps_store_stats st;
        dhps_store_get_stats(s, &st);
        assert_true(st.inplace_updates >= N - 4);
        for (unsigned k = 0; k < 3; k++) {
            if (dhps_store_force_simd(names[k]) != 0)
                continue;
            memset(out, 0xCD, sizeof out);
            uint8_t *row;
            assert_int_equal(dhps_store_get(r, keys, N, out, D, lens, found), N);
            for (int i = 0; i < N; i++) {
                /* keys[6] was not in the batch and keys[7]'s write was stale */
                uint64_t ver = i == 5 ? 12 : i == 6 || i == 7 ? 10 : 11;
                uint32_t len = i == 9 ? D - 24 : D;
                assert_true(bit(found, (size_t)i));
                assert_int_equal(lens[i], len);
                row = out + (size_t)i * D;
                if (!check_value(row, len, keys[i], ver))
                    fail_msg("%u-byte rows, %s: row %d is not version %llu", D, names[k], i,
                             (unsigned long long)ver);
                for (uint32_t j = len; j < D; j++)
                    assert_int_equal(row[j], 0);
            }
        }
        assert_int_equal(dhps_store_force_simd(orig), 0);
        dhps_store_lines l;
        assert_int_equal(dhps_store_lookup_lines(s, D, &l), 0);
        assert_int_equal(l.keys, N);
        assert_true(l.bucket_lines >= 1.0 && l.bucket_lines <= 2.0);
        /* a record is 14 + D bytes at 2-byte alignment: its lines, and rarely another
         * record's first line read for a stray tag hit */
        double min_lines = (double)((14 + D + 63) / 64);
        assert_true(l.record_lines >= min_lines && l.record_lines <= min_lines + 1.2);
        assert_int_equal(dhps_store_lookup_lines(s, D, NULL), -EINVAL);
        dhps_store_reader_close(r);
        dhps_store_destroy(s);
    }
}

static void index_grows(void **state)
{
    (void)state;
    uint64_t n = test_scale(300000, 60000);
    dhps_store *s = mk_store(NULL, 1000, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t x = 7;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = splitmix(&x) | 1;
        assert_int_equal(put1(s, k, 1, 8, 0), 1);
    }
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.keys, n);
    assert_true(st.index_grows >= 3);
    assert_true(st.load_factor > 0.3 && st.load_factor <= 0.96);
    x = 7;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(get1(r, splitmix(&x) | 1, 1, 8), 1);
    assert_int_equal(get1(r, 2, 1, 8), 0); /* even keys were never written */
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

/* One batch that grows the index several times while it is applied: new keys, each
 * written twice in the same chunk of the batch (the second, newer write wins and no
 * key is inserted twice), then a second batch mixing in-place rewrites of those keys
 * with new keys that grow the index again. Lookups of a length that is not a multiple
 * of 64 leave the found bits past n clear whatever the array held. */
static void batch_grows_index(void **state)
{
    (void)state;
    enum { U = 6000, N = 2 * U, D = 64 };
    static uint64_t keys[N], vers[N];
    static uint8_t vals[(size_t)N * D], out[(size_t)N * D];
    uint64_t found[(N + 63) / 64];
    dhps_store *s = mk_store(NULL, 500, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t x = 99;
    for (int i = 0; i < U; i++) {
        keys[2 * i] = keys[2 * i + 1] = splitmix(&x);
        vers[2 * i] = 1;
        vers[2 * i + 1] = 2;
    }
    for (int i = 0; i < N; i++)
        fill_value(vals + (size_t)i * D, D, keys[i], vers[i]);
    dhps_store_batch b = {.keys = keys, .n = N, .values = vals, .value_stride = D, .versions = vers};
    assert_int_equal(dhps_store_put(s, &b, NULL), N);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.keys, U);
    assert_true(st.index_grows >= 2);
    uint64_t grows = st.index_grows;
    /* second batch: the U keys at version 3 interleaved with U new keys */
    for (int i = 0; i < U; i++) {
        keys[2 * i] = keys[2 * i + 1];
        keys[2 * i + 1] = splitmix(&x);
        vers[2 * i] = vers[2 * i + 1] = 3;
    }
    for (int i = 0; i < N; i++)
        fill_value(vals + (size_t)i * D, D, keys[i], 3);
    assert_int_equal(dhps_store_put(s, &b, NULL), N);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.keys, N);
    assert_true(st.index_grows > grows);
    for (size_t n = N - 37; n <= N; n += 37) {
        memset(found, 0xFF, sizeof found);
        assert_int_equal(dhps_store_get(r, keys, n, out, D, NULL, found), n);
        for (size_t i = 0; i < n; i++)
            if (!check_value(out + i * D, D, keys[i], 3))
                fail_msg("row %zu of %zu is not version 3", i, n);
        for (size_t i = n; i < (n + 63) / 64 * 64; i++)
            assert_int_equal(bit(found, i), 0);
    }
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void high_fill_from_hint(void **state)
{
    (void)state;
    /* A table sized from its hint fills to ~93 % without growing. */
    uint64_t n = test_scale(200000, 50000);
    dhps_store *s = mk_store(NULL, n, 0);
    uint64_t x = 99;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(put1(s, splitmix(&x), 1, 8, 0), 1);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.index_grows, 0);
    assert_true(st.load_factor > 0.9);
    assert_true((double)st.index_bytes / (double)n < 6.0);
    /* At this fill many keys live in their second bucket, and first buckets hold
     * stray tag matches: every key must still be found, in batches and one by one,
     * by every tag-match implementation. */
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t *keys = malloc(n * sizeof *keys), *found = malloc(((n + 63) / 64) * 8);
    x = 99;
    for (uint64_t i = 0; i < n; i++)
        keys[i] = splitmix(&x);
    const char *orig = dhps_store_simd_name();
    const char *names[] = {"scalar", "sse2", "avx2"};
    for (int v = 0; v < 3; v++) {
        if (dhps_store_force_simd(names[v]) != 0)
            continue;
        assert_int_equal(dhps_store_get(r, keys, n, NULL, 0, NULL, found), n);
        for (uint64_t i = 0; i < n; i += 7)
            assert_int_equal(get1(r, keys[i], 1, 8), 1);
    }
    assert_int_equal(dhps_store_force_simd(orig), 0);
    free(keys);
    free(found);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void ttl_precise_expiry(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = mk_store(&c, 1000, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    enum { N = 20000 };
    for (uint64_t k = 1; k <= N; k++)
        assert_int_equal(put1(s, k, 1, 100, 10), 1); /* TTL 10 s */
    assert_int_equal(put1(s, 999999, 1, 100, 0), 1); /* never expires */
    test_clock_advance(&c, 9999); /* 1009.999 s: still inside the 10th second */
    for (uint64_t k = 1; k <= N; k += 97)
        assert_int_equal(get1(r, k, 1, 100), 1);
    test_clock_advance(&c, 1); /* 1010 s: expiry second reached */
    for (uint64_t k = 1; k <= N; k += 97)
        assert_int_equal(get1(r, k, 1, 100), 0); /* gone before any maintenance */
    assert_int_equal(get1(r, 999999, 1, 100), 1);
    dhps_store_stats st0, st;
    dhps_store_get_stats(s, &st0);
    assert_true(dhps_store_maintain(s, 0) > 0);
    dhps_store_get_stats(s, &st);
    assert_true(st.expired_segments >= 8); /* freed whole: 20000 x 118 B > 8 x 256 KiB */
    assert_int_equal(st.expired_records, N);
    assert_int_equal(st.keys, 1);
    assert_true(st.segments < st0.segments);
    /* memory goes back to the system, but for a few segments kept for reuse */
    assert_true(st.segment_bytes <= 5 * (256u << 10));
    assert_true(st0.segment_bytes > 5 * (256u << 10));
    /* a refresh extends the life of a key */
    assert_int_equal(put1(s, 7, 2, 100, 5), 1);
    test_clock_advance(&c, 3000);
    assert_int_equal(put1(s, 7, 3, 100, 5), 1);
    test_clock_advance(&c, 3000);
    assert_int_equal(get1(r, 7, 3, 100), 1);
    /* default TTL */
    dhps_store_reader_close(r);
    dhps_store_destroy(s);

    dhps_store_params p;
    dhps_store_params_init(&p);
    p.clock = test_clock_fn;
    p.clock_arg = &c;
    p.default_ttl = 2;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    assert_int_equal(put1(s, 1, 1, 8, DHPS_TTL_DEFAULT), 1);
    assert_int_equal(get1(r, 1, 1, 8), 1);
    test_clock_advance(&c, 2000);
    assert_int_equal(get1(r, 1, 1, 8), 0);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void memory_limit_evicts_nearest_expiry(void **state)
{
    (void)state;
    test_clock c = {.ms = 5000000};
    uint64_t limit = 4u << 20; /* 16 segments of 256 KiB, less the index */
    dhps_store *s = mk_store(&c, 1000, limit);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    /* long-lived keys first, then short-lived, then more long-lived */
    uint64_t k = 1;
    for (; k <= 4000; k++)
        assert_int_equal(put1(s, k, 1, 200, 86400), 1);
    for (; k <= 10000; k++)
        assert_int_equal(put1(s, k, 1, 200, 60), 1);
    for (; k <= 20000; k++)
        assert_int_equal(put1(s, k, 1, 200, 86400), 1);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_true(st.evicted_segments > 0);
    assert_true(st.segment_bytes + st.index_bytes <= limit);
    /* the short-TTL keys absorb the evictions: every long-lived key is still there */
    int short_left = 0;
    for (uint64_t q = 4001; q <= 10000; q++)
        short_left += get1(r, q, 1, 200);
    assert_true(short_left < 6000);
    for (uint64_t q = 1; q <= 4000; q++)
        assert_int_equal(get1(r, q, 1, 200), 1);
    /* more pressure: the short-TTL keys are all gone, then the oldest go */
    for (; k <= 26000; k++)
        assert_int_equal(put1(s, k, 1, 200, 86400), 1);
    short_left = 0;
    for (uint64_t q = 4001; q <= 10000; q++)
        short_left += get1(r, q, 1, 200);
    assert_int_equal(short_left, 0);
    assert_int_equal(get1(r, 1, 1, 200), 0);
    dhps_store_get_stats(s, &st);
    assert_true(st.segment_bytes + st.index_bytes <= limit);
    assert_true(st.evicted_records >= 6000);
    /* the newest keys are always there */
    for (uint64_t q = 25000; q <= 26000; q++)
        assert_int_equal(get1(r, q, 1, 200), 1);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void memory_limit_refuses_index_growth(void **state)
{
    (void)state;
    /* tiny values: the index, not the segments, hits the limit */
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = 1000;
    p.segment_bytes = 64u << 10;
    p.mem_limit = 1u << 20;
    p.huge_pages = false;
    dhps_store *s;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    long rc = 0;
    uint64_t k;
    for (k = 1; k < 2000000 && rc >= 0; k++)
        rc = put1(s, k, 1, 0, 0);
    /* Either the index could not grow (DHPS_E_FULL) or eviction kept up; both keep
     * memory under the limit, and the store still answers. */
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_true(st.segment_bytes + st.index_bytes <= p.mem_limit);
    assert_true(rc == DHPS_E_FULL || rc == 1);
    assert_true(st.keys > 1000);
    dhps_store_destroy(s);
}

static void compaction_bounds_fragmentation(void **state)
{
    (void)state;
    uint64_t n = test_scale(40000, 10000);
    dhps_store *s = mk_store(NULL, n, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t *ver = calloc(n, sizeof *ver);
    uint32_t *len = calloc(n, sizeof *len);
    uint64_t x = 3;
    for (uint64_t round = 0; round < 8 * n; round++) {
        uint64_t i = splitmix(&x) % n;
        uint32_t l = 16 + (uint32_t)(splitmix(&x) % 240);
        ver[i]++;
        len[i] = l;
        assert_int_equal(put1(s, i + 1, ver[i], l, 0), 1);
    }
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_true(st.compacted_segments > 0);
    assert_true(st.compaction_bytes > 0);
    assert_true(st.fragmentation <= 0.05 + 256.0 * 2 * 1024 / (double)st.segment_bytes);
    dhps_store_maintain(s, 0);
    dhps_store_get_stats(s, &st);
    assert_true(st.fragmentation <= 0.05);
    for (uint64_t i = 0; i < n; i++)
        if (ver[i])
            assert_int_equal(get1(r, i + 1, ver[i], len[i]), 1);
    free(ver);
    free(len);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

/* Compaction that finds no room to move a record into (memory full of retired segments a
 * pinning reader still holds) must leave that record where it is and come back to it:
 * retiring the victim past it would free a live record. Every acknowledged update is
 * read back after the pin ends and maintenance has run. */
static void compaction_waits_for_room(void **state)
{
    (void)state;
    uint64_t n = 6000;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = n;
    p.segment_bytes = 64u << 10;
    p.mem_limit = 4u << 20;
    p.huge_pages = false;
    p.auto_maintain = false; /* garbage piles up until dhps_store_maintain */
    dhps_store *s;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    uint64_t *ver = calloc(n, sizeof *ver);
    uint32_t *len = calloc(n, sizeof *len);
    for (uint64_t i = 0; i < n; i++) { /* ~1.3 MiB live */
        ver[i] = 1;
        len[i] = 200;
        assert_int_equal(put1(s, i + 1, 1, 200, 0), 1);
    }
    /* overwrites with other sizes until memory is two segments short of the limit */
    uint64_t x = 11;
    dhps_store_stats st;
    for (;;) {
        dhps_store_get_stats(s, &st);
        if (st.segment_bytes + st.index_bytes + 2 * p.segment_bytes > p.mem_limit)
            break;
        uint64_t i = splitmix(&x) % n;
        uint32_t l = 16 + (uint32_t)(splitmix(&x) % 400);
        assert_int_equal(put1(s, i + 1, ++ver[i], l, 0), 1);
        len[i] = l;
    }
    assert_true(st.fragmentation > 0.3);
    /* a pin holds every segment compaction retires from now on: it runs out of room */
    uint64_t pk = 1, found[1];
    const void *pv;
    uint32_t pl;
    assert_int_equal(dhps_store_get_pinned(r, &pk, 1, &pv, &pl, found), 1);
    dhps_store_maintain(s, 0);
    dhps_store_get_stats(s, &st);
    assert_true(st.fragmentation > 0.05); /* stopped short */
    dhps_store_release(r);
    for (int i = 0; i < 4; i++)
        dhps_store_maintain(s, 0);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.evicted_records, 0);
    assert_int_equal(st.keys, n);
    assert_true(st.fragmentation <= 0.05);
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(get1(r, i + 1, ver[i], len[i]), 1);
    free(ver);
    free(len);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void inplace_and_pins(void **state)
{
    (void)state;
    dhps_store *s = mk_store(NULL, 100, 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    assert_int_equal(put1(s, 1, 1, 64, 0), 1);
    assert_int_equal(put1(s, 2, 1, 64, 0), 1);
    assert_int_equal(put1(s, 1, 2, 64, 0), 1);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, 1);
    uint64_t live0 = st.live_bytes, seg_used = st.segment_bytes;

    uint64_t keys[3] = {1, 2, 3}, found[1];
    const void *vals[3];
    uint32_t lens[3];
    assert_int_equal(dhps_store_get_pinned(r, keys, 3, vals, lens, found), 2);
    assert_int_equal(found[0], 3);
    assert_null(vals[2]);
    assert_true(check_value(vals[0], 64, 1, 2));
    /* while pinned, an update appends: pinned bytes stay as they were */
    assert_int_equal(put1(s, 1, 3, 64, 0), 1);
    assert_true(check_value(vals[0], 64, 1, 2));
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, 1);
    assert_int_equal(st.live_bytes, live0);
    (void)seg_used;
    dhps_store_release(r);
    assert_int_equal(get1(r, 1, 3, 64), 1);
    assert_int_equal(put1(s, 1, 4, 64, 0), 1);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, 2);
    assert_int_equal(get1(r, 1, 4, 64), 1);
    /* in-place can be turned off */
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

/* A shorter value is written over a longer one in place: the record keeps its ref,
 * the bytes it frees become a dead filler that compaction drops, and the store's live
 * bytes and fragmentation count them as garbage. A shrink that frees too few bytes for
 * a filler header, a longer value and a pinned record append instead. */
static void shorter_value_rewritten_in_place(void **state)
{
    (void)state;
    enum { N = 30000 };
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = N;
    p.segment_bytes = 256u << 10;
    p.auto_maintain = false; /* compaction runs when the test says */
    dhps_store *s = NULL;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    for (uint64_t k = 1; k <= N; k++)
        assert_int_equal(put1(s, k, 1, 200, 0), 1);
    dhps_store_stats st0, st;
    dhps_store_get_stats(s, &st0);
    assert_true(st0.fragmentation < 0.01);

    /* 200 -> 100 bytes: 214-byte records become 114 with a 100-byte filler each */
    for (uint64_t k = 1; k <= N; k++)
        assert_int_equal(put1(s, k, 2, 100, 0), 1);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, N);
    assert_int_equal(st.inplace_shrinks, N);
    assert_int_equal(st.segments, st0.segments); /* nothing appended */
    assert_int_equal(st.keys, N);
    assert_int_equal(st.live_bytes, st0.live_bytes - 100ull * N);
    assert_int_equal(st.payload_bytes, st0.payload_bytes - 100ull * N);
    assert_true(st.fragmentation > 0.40);
    for (uint64_t k = 1; k <= N; k++)
        assert_int_equal(get1(r, k, 2, 100), 1);

    /* 100 -> 99: the same padded size, no filler; 99 -> 90 frees 10 bytes, too few
     * for a filler header: appended; 90 -> 120: longer, appended */
    assert_int_equal(put1(s, 1, 3, 99, 0), 1);
    assert_int_equal(put1(s, 2, 3, 90, 0), 1);
    assert_int_equal(put1(s, 3, 3, 120, 0), 1);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, N + 1);
    assert_int_equal(st.inplace_shrinks, N + 1);
    assert_int_equal(get1(r, 1, 3, 99), 1);
    assert_int_equal(get1(r, 2, 3, 90), 1);
    assert_int_equal(get1(r, 3, 3, 120), 1);

    /* while a record is pinned its bytes stay: the shorter value is appended */
    uint64_t key = 4, found[1];
    const void *val;
    uint32_t len;
    assert_int_equal(dhps_store_get_pinned(r, &key, 1, &val, &len, found), 1);
    assert_int_equal(put1(s, 4, 3, 50, 0), 1);
    assert_int_equal(len, 100);
    assert_true(check_value(val, 100, 4, 2));
    dhps_store_release(r);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_shrinks, N + 1);
    assert_int_equal(get1(r, 4, 3, 50), 1);

    /* compaction walks over the fillers, moves the live records and meets the goal but
     * for the fillers in the write segment, which is not compacted until it is sealed */
    dhps_store_maintain(s, 0);
    dhps_store_get_stats(s, &st);
    assert_true(st.compacted_segments > 0);
    assert_true(st.fragmentation <= p.fragmentation_goal + (double)p.segment_bytes / (double)st.segment_bytes);
    assert_int_equal(st.keys, N);
    assert_int_equal(get1(r, 1, 3, 99), 1);
    assert_int_equal(get1(r, 2, 3, 90), 1);
    assert_int_equal(get1(r, 3, 3, 120), 1);
    assert_int_equal(get1(r, 4, 3, 50), 1);
    for (uint64_t k = 5; k <= N; k++)
        assert_int_equal(get1(r, k, 2, 100), 1);
    /* and the moved records shrink in place again */
    assert_int_equal(put1(s, 5, 4, 40, 0), 1);
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_shrinks, N + 2);
    assert_int_equal(get1(r, 5, 4, 40), 1);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

static void readers_limit_and_params(void **state)
{
    (void)state;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.max_readers = 2;
    dhps_store *s;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    dhps_store_reader *a, *b, *c;
    assert_int_equal(dhps_store_reader_open(s, &a), 0);
    assert_int_equal(dhps_store_reader_open(s, &b), 0);
    assert_int_equal(dhps_store_reader_open(s, &c), -EMFILE);
    dhps_store_reader_close(a);
    assert_int_equal(dhps_store_reader_open(s, &c), 0);
    dhps_store_reader_close(b);
    dhps_store_reader_close(c);
    dhps_store_reader_close(NULL);
    dhps_store_destroy(s);
    dhps_store_destroy(NULL);

    dhps_store_params bad[6];
    for (int i = 0; i < 6; i++)
        dhps_store_params_init(&bad[i]);
    bad[0].segment_bytes = 3u << 20;
    bad[1].record_align_log2 = 0;
    bad[2].max_fill = 1.5f;
    bad[3].fragmentation_goal = 0.0f;
    bad[4].max_readers = 0;
    bad[5].mem_limit = 1000;
    for (int i = 0; i < 6; i++) {
        s = (dhps_store *)1;
        assert_int_equal(dhps_store_create(&bad[i], &s), -EINVAL);
        assert_null(s);
    }
}

static void alignment_option(void **state)
{
    (void)state;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.record_align_log2 = 3;
    p.inplace_updates = false;
    dhps_store *s;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    for (uint64_t k = 1; k < 2000; k++)
        assert_int_equal(put1(s, k, k, (uint32_t)(k % 50), 0), 1);
    for (uint64_t k = 1; k < 2000; k++)
        assert_int_equal(put1(s, k, k + 1, (uint32_t)(k % 50), 0), 1);
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    assert_int_equal(st.inplace_updates, 0);
    for (uint64_t k = 1; k < 2000; k++)
        assert_int_equal(get1(r, k, k + 1, (uint32_t)(k % 50)), 1);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(put_get_basic),
        cmocka_unit_test(versions_and_deletes),
        cmocka_unit_test(lengths_and_limits),
        cmocka_unit_test(simd_paths_agree),
        cmocka_unit_test(fixed_row_sizes),
        cmocka_unit_test(index_grows),
        cmocka_unit_test(batch_grows_index),
        cmocka_unit_test(high_fill_from_hint),
        cmocka_unit_test(ttl_precise_expiry),
        cmocka_unit_test(memory_limit_evicts_nearest_expiry),
        cmocka_unit_test(memory_limit_refuses_index_growth),
        cmocka_unit_test(compaction_bounds_fragmentation),
        cmocka_unit_test(compaction_waits_for_room),
        cmocka_unit_test(inplace_and_pins),
        cmocka_unit_test(shorter_value_rewritten_in_place),
        cmocka_unit_test(readers_limit_and_params),
        cmocka_unit_test(alignment_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Concurrency stress: lock-free readers verify every value they see while one writer
 * upserts (in place, shorter values in place too, and appending), deletes, expires,
 * compacts and grows the index.
 * Values carry their version in the first 8 bytes and bytes derived from (key,
 * version, length) after it, so a torn or stale-pointer read is caught. Keys below
 * STABLE are written once before readers start and never deleted or expired: readers
 * must always find them (no false miss while entries move or the index is rebuilt).
 * Pinned readers check that pinned bytes do not change until release. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "test_util.h"

enum { K = 20000, STABLE = 2000, READERS = 3 };

static test_clock clk = {.ms = 1000000};
static dhps_store *S;
static _Atomic int done;
static _Atomic uint64_t reads, hits, pinned_checks;

static uint64_t key_of(unsigned i) { return (uint64_t)i * 0xD6E8FEB86659FD93ull + 1; }

static void make_value(uint8_t *v, uint32_t len, uint64_t key, uint64_t ver)
{
    memcpy(v, &ver, 8);
    fill_value(v + 8, len - 8, key, ver ^ ((uint64_t)len << 48));
}

/* Reader threads must not call cmocka's assertions (a failure off the main thread cannot
 * be reported: the process just ends). They record the first failure here and stop;
 * the main thread fails the test with it after joining them. */
static _Atomic int failed;
static char fail_text[256];

__attribute__((format(printf, 1, 2))) static void reader_fail(const char *fmt, ...)
{
    int expect = 0;
    if (atomic_compare_exchange_strong(&failed, &expect, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(fail_text, sizeof fail_text, fmt, ap);
        va_end(ap);
    }
    atomic_store(&done, 1);
}

static bool verify(const uint8_t *v, uint32_t len, uint64_t key)
{
    uint64_t ver;
    if (len < 8) {
        reader_fail("key %llx: value of %u bytes (< 8)", (unsigned long long)key, len);
        return false;
    }
    memcpy(&ver, v, 8);
    if (!check_value(v + 8, len - 8, key, ver ^ ((uint64_t)len << 48))) {
        reader_fail("key %llx: torn or stale value (version %llu, %u bytes)",
                    (unsigned long long)key, (unsigned long long)ver, len);
        return false;
    }
    return true;
}

static void *reader_main(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t x = 77 + id;
    dhps_store_reader *r;
    if (dhps_store_reader_open(S, &r) != 0) {
        reader_fail("reader %u: reader_open failed", id);
        return NULL;
    }
    enum { B = 64 };
    uint64_t keys[B], found[1];
    static __thread uint8_t out[B][128];
    uint32_t lens[B];
    const void *vals[B];
    while (!atomic_load(&done)) {
        for (int j = 0; j < B; j++)
            keys[j] = key_of((unsigned)(splitmix(&x) % K));
        keys[0] = key_of((unsigned)(splitmix(&x) % STABLE));
        if (splitmix(&x) % 16 == 0) {
            dhps_store_get_pinned(r, keys, B, vals, lens, found);
            if (!bit(found, 0))
                reader_fail("reader %u: stable key %llx missed (pinned get)", id,
                            (unsigned long long)keys[0]);
            uint8_t copy[B][128];
            for (int j = 0; j < B; j++)
                if (bit(found, (size_t)j)) {
                    verify(vals[j], lens[j], keys[j]);
                    memcpy(copy[j], vals[j], lens[j]);
                }
            for (volatile int spin = 0; spin < 2000; spin++)
                ;
            for (int j = 0; j < B; j++)
                if (bit(found, (size_t)j) && memcmp(copy[j], vals[j], lens[j]) != 0)
                    reader_fail("reader %u: pinned bytes of key %llx changed before release",
                                id, (unsigned long long)keys[j]);
            dhps_store_release(r);
            atomic_fetch_add(&pinned_checks, 1);
        } else {
            size_t h = dhps_store_get(r, keys, B, out, 128, lens, found);
            if (!bit(found, 0)) /* stable keys are never missed */
                reader_fail("reader %u: stable key %llx missed", id,
                            (unsigned long long)keys[0]);
            for (int j = 0; j < B; j++)
                if (bit(found, (size_t)j))
                    verify(out[j], lens[j], keys[j]);
            atomic_fetch_add(&hits, h);
        }
        atomic_fetch_add(&reads, B);
    }
    dhps_store_reader_close(r);
    return NULL;
}

static void stress(void **state)
{
    (void)state;
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = 256; /* grows several times under the readers */
    p.segment_bytes = 64u << 10;
    p.clock = test_clock_fn;
    p.clock_arg = &clk;
    assert_int_equal(dhps_store_create(&p, &S), 0);
    uint64_t ver[K] = {0};
    uint8_t v[128];
    for (unsigned i = 0; i < STABLE; i++) {
        uint64_t k = key_of(i);
        make_value(v, 64, k, ++ver[i]);
        dhps_store_batch b = {.keys = &k, .n = 1, .values = v, .value_stride = 64, .version = ver[i]};
        assert_int_equal(dhps_store_put(S, &b, NULL), 1);
    }
    pthread_t th[READERS];
    for (uintptr_t i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, (void *)i), 0);

    uint64_t ops = test_scale(600000, 60000), x = 5;
    for (uint64_t op = 0; op < ops && !atomic_load(&failed); op++) {
        unsigned what = (unsigned)(splitmix(&x) % 100);
        unsigned i = (unsigned)(splitmix(&x) % K);
        uint64_t k = key_of(i);
        if (what < 80) {
            uint32_t len = splitmix(&x) % 4 ? 64 : 8 + (uint32_t)(splitmix(&x) % 120);
            uint32_t ttl = i < STABLE ? 0 : (splitmix(&x) % 3 ? 0 : 1 + (uint32_t)(splitmix(&x) % 4));
            make_value(v, len, k, ++ver[i]);
            dhps_store_batch b = {.keys = &k, .n = 1, .values = v, .value_stride = len,
                                  .version = ver[i], .ttl = ttl};
            assert_int_equal(dhps_store_put(S, &b, NULL), 1);
        } else if (what < 90) {
            if (i >= STABLE)
                dhps_store_delete(S, &k, 1, UINT64_MAX, NULL);
        } else if (what < 95) {
            test_clock_advance(&clk, 300);
        } else {
            dhps_store_maintain(S, (size_t)(splitmix(&x) % 200000));
        }
    }
    atomic_store(&done, 1);
    for (int i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&failed))
        fail_msg("%s", fail_text);
    dhps_store_stats st;
    dhps_store_get_stats(S, &st);
    printf("stress: %llu writer ops, %llu keys read (%llu hits), %llu pinned checks; grows %llu, "
           "compacted %llu, expired %llu, inplace %llu (%llu shorter), reader retries %llu\n",
           (unsigned long long)ops, (unsigned long long)atomic_load(&reads),
           (unsigned long long)atomic_load(&hits), (unsigned long long)atomic_load(&pinned_checks),
           (unsigned long long)st.index_grows, (unsigned long long)st.compacted_segments,
           (unsigned long long)st.expired_segments, (unsigned long long)st.inplace_updates,
           (unsigned long long)st.inplace_shrinks, (unsigned long long)st.reader_retries);
    assert_true(st.index_grows >= 3);
    assert_true(st.inplace_shrinks > 0); /* readers met shorter values written in place */
    assert_true(atomic_load(&reads) > 0);
    dhps_store_destroy(S);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(stress)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

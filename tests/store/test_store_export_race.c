/* A merge racing readers (label concurrency, also run under TSan): the writer merges
 * images of ever newer versions of the same keys (in place and by append, with an index
 * that grows) while a reader thread looks the keys up and checks that every key stays
 * present, every value is whole (its bytes match the version it carries) and versions
 * seen per key never go back. */
#include <pthread.h>
#include <stdatomic.h>

#include "test_util.h"

enum { NK = 3000, LEN = 64 };

static dhps_store *target;
static atomic_int stop;
static atomic_ulong reader_rounds;

/* value: u64 version, then fill_value(key, version) */
static void mk_val(uint8_t *v, uint64_t key, uint64_t ver)
{
    memcpy(v, &ver, 8);
    fill_value(v + 8, LEN - 8, key, ver);
}

static void *reader(void *arg)
{
    (void)arg;
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(target, &r), 0);
    static uint64_t last[NK + 1];
    enum { B = 64 };
    uint64_t keys[B], found[1];
    uint8_t out[B][LEN];
    while (!atomic_load(&stop)) {
        for (uint64_t k0 = 1; k0 <= NK; k0 += B) {
            size_t n = k0 + B - 1 <= NK ? B : NK - k0 + 1;
            for (size_t i = 0; i < n; i++)
                keys[i] = k0 + i;
            size_t hits = dhps_store_get(r, keys, n, out, LEN, NULL, found);
            if (hits != n)
                fail_msg("a stable key went missing during a merge");
            for (size_t i = 0; i < n; i++) {
                uint64_t ver;
                memcpy(&ver, out[i], 8);
                if (!check_value(out[i] + 8, LEN - 8, keys[i], ver))
                    fail_msg("torn value for key %llu", (unsigned long long)keys[i]);
                if (ver < last[keys[i]])
                    fail_msg("version went back for key %llu", (unsigned long long)keys[i]);
                last[keys[i]] = ver;
            }
        }
        atomic_fetch_add(&reader_rounds, 1);
    }
    dhps_store_reader_close(r);
    return NULL;
}

static void merge_races_readers(void **state)
{
    (void)state;
    target = mk_store(NULL, 16, 0); /* grows while readers run */
    dhps_store *src = mk_store(NULL, NK, 0);
    uint64_t keys[NK];
    static uint8_t vals[NK][LEN];
    for (uint64_t i = 0; i < NK; i++) {
        keys[i] = i + 1;
        mk_val(vals[i], keys[i], 1);
    }
    dhps_store_batch b = {.keys = keys, .n = NK, .values = vals, .value_stride = LEN, .version = 1};
    assert_int_equal(dhps_store_put(target, &b, NULL), NK);
    atomic_store(&stop, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader, NULL), 0);
    uint64_t rounds = test_scale(60, 20);
    for (uint64_t v = 2; v < 2 + rounds; v++) {
        for (uint64_t i = 0; i < NK; i++)
            mk_val(vals[i], keys[i], v);
        b.version = v;
        /* odd rounds: some keys keep their old TTL-less record, others get a TTL, so
         * merges mix in-place overwrites and appends */
        b.ttl = v % 2 ? 0 : 3600;
        assert_int_equal(dhps_store_put(src, &b, NULL), NK);
        void *buf;
        size_t len;
        assert_int_equal(dhps_store_export(src, NULL, 0, &buf, &len, NULL), 0);
        dhps_store_merge_stats st;
        assert_int_equal(dhps_store_merge_buffer(target, buf, len, NULL, NULL, &st), NK);
        /* a second merge of the same image: the same writes again, all left as they are */
        assert_int_equal(dhps_store_merge_buffer(target, buf, len, NULL, NULL, &st), 0);
        assert_int_equal(st.stale, NK);
        free(buf);
    }
    atomic_store(&stop, 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(atomic_load(&reader_rounds) > 0);
    dhps_store_destroy(src);
    dhps_store_destroy(target);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(merge_races_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

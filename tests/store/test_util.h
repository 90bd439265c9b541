/* Helpers shared by the store tests. */
#ifndef DHPS_TEST_STORE_UTIL_H
#define DHPS_TEST_STORE_UTIL_H
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/store.h"

/* An injectable clock the tests move by hand. */
typedef struct test_clock { uint64_t ms; } test_clock;
static inline uint64_t test_clock_fn(void *arg) { return __atomic_load_n(&((test_clock *)arg)->ms, __ATOMIC_RELAXED); }
static inline void test_clock_advance(test_clock *c, uint64_t ms) { __atomic_fetch_add(&c->ms, ms, __ATOMIC_RELAXED); }

static inline uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Deterministic value bytes for (key, version), so any copy can be checked. */
static inline void fill_value(uint8_t *v, size_t len, uint64_t key, uint64_t ver)
{
    uint64_t x = key * 0x9E3779B97F4A7C15ull ^ ver;
    for (size_t i = 0; i < len; i++) {
        if ((i & 7) == 0)
            splitmix(&x);
        v[i] = (uint8_t)(x >> ((i & 7) * 8));
    }
}
static inline int check_value(const uint8_t *v, size_t len, uint64_t key, uint64_t ver)
{
    uint8_t buf[DHPS_STORE_MAX_VALUE];
    fill_value(buf, len, key, ver);
    return memcmp(buf, v, len) == 0;
}

/* Test sizes shrink under sanitizers: DHPS_TEST_SCALE=small. */
static inline uint64_t test_scale(uint64_t full, uint64_t small)
{
    const char *e = getenv("DHPS_TEST_SCALE");
    return e && !strcmp(e, "small") ? small : full;
}

static inline int bit(const uint64_t *m, size_t i) { return (int)((m[i >> 6] >> (i & 63)) & 1); }

static inline dhps_store *mk_store(test_clock *c, uint64_t hint, uint64_t limit)
{
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = hint;
    p.mem_limit = limit;
    p.segment_bytes = 256u << 10;
    if (c) {
        p.clock = test_clock_fn;
        p.clock_arg = c;
    }
    dhps_store *s = NULL;
    assert_int_equal(dhps_store_create(&p, &s), 0);
    return s;
}

static inline long put1(dhps_store *s, uint64_t key, uint64_t ver, uint32_t len, uint32_t ttl)
{
    uint8_t v[DHPS_STORE_MAX_VALUE];
    fill_value(v, len, key, ver);
    dhps_store_batch b = {.keys = &key, .n = 1, .values = v, .value_stride = len, .version = ver, .ttl = ttl};
    return dhps_store_put(s, &b, NULL);
}

/* 1 found with the expected bytes, 0 missing; fails the test on wrong bytes. */
static inline int get1(dhps_store_reader *r, uint64_t key, uint64_t ver, uint32_t len)
{
    uint8_t out[DHPS_STORE_MAX_VALUE];
    uint32_t l = 0;
    uint64_t f = 0;
    size_t n = dhps_store_get(r, &key, 1, out, len ? len : 1, &l, &f);
    if (!n)
        return 0;
    assert_int_equal(l, len);
    assert_true(check_value(out, len, key, ver));
    return 1;
}
#endif

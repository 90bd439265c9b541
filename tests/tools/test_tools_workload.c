/* The workload driver of dhps bench and dhps up (src/tools/workload.c) against a fake
 * store: every batch it hands the store has the asked size, keys in range and distinct
 * (when asked), Zipf keys really are skewed, the threads get different streams, the
 * update share is honoured and the counts add up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

#define NKEYS_MAX 100000

typedef struct fake {
    const wl_params *p;
    pthread_mutex_t mu;
    uint64_t calls, updates, bad_size, bad_range, dup, with_key0;
    uint64_t first[2]; /* first key of each thread's first batch (+1; 0 = none yet) */
    uint32_t opened;
} fake;

typedef struct fthread {
    fake *f;
    uint32_t idx;
    bool first_seen;
    uint8_t *seen; /* NKEYS_MAX flags */
} fthread;

static void *f_open(void *arg)
{
    fake *f = arg;
    fthread *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->f = f;
    t->seen = calloc(NKEYS_MAX, 1);
    assert_non_null(t->seen);
    pthread_mutex_lock(&f->mu);
    t->idx = f->opened++;
    pthread_mutex_unlock(&f->mu);
    return t;
}

static void f_close(void *th)
{
    fthread *t = th;
    free(t->seen);
    free(t);
}

static void check_batch(fthread *t, const uint64_t *keys, uint32_t n, bool upd)
{
    fake *f = t->f;
    uint64_t bad_size = n != f->p->batch, bad_range = 0, dup = 0, key0 = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (keys[i] >= f->p->nkeys) {
            bad_range++;
            continue;
        }
        dup += t->seen[keys[i]];
        t->seen[keys[i]] = 1;
        key0 |= keys[i] == 0;
    }
    for (uint32_t i = 0; i < n; i++)
        if (keys[i] < f->p->nkeys)
            t->seen[keys[i]] = 0;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    f->updates += upd;
    f->bad_size += bad_size;
    f->bad_range += bad_range;
    f->dup += dup;
    f->with_key0 += key0;
    if (!t->first_seen && t->idx < 2 && n) {
        f->first[t->idx] = keys[0] + 1;
        t->first_seen = true;
    }
    pthread_mutex_unlock(&f->mu);
}

static int f_lookup(void *th, const uint64_t *keys, uint32_t n, void *out, uint32_t *missing)
{
    fthread *t = th;
    check_batch(t, keys, n, false);
    memset(out, 0, (size_t)n * t->f->p->row_bytes);
    *missing = 0;
    return 0;
}

static int f_update(void *th, const uint64_t *keys, uint32_t n, const void *rows)
{
    (void)rows;
    check_batch(th, keys, n, true);
    return 0;
}

static void run(const wl_params *p, fake *f, wl_result *r)
{
    memset(f, 0, sizeof *f);
    f->p = p;
    pthread_mutex_init(&f->mu, NULL);
    wl_backend b = {.name = "fake", .open = f_open, .lookup = f_lookup, .update = f_update,
                    .close = f_close, .arg = f};
    assert_int_equal(wl_run(p, &b, r), 0);
    pthread_mutex_destroy(&f->mu);
    assert_true(r->batches > 0);
    assert_int_equal(r->batches, f->calls);
    assert_int_equal(r->keys, f->calls * p->batch);
    assert_int_equal(r->lookups + r->updates, r->batches);
    assert_int_equal(r->updates, f->updates);
    assert_int_equal(r->errors, 0);
    assert_int_equal(f->bad_size, 0);
    assert_int_equal(f->bad_range, 0);
}

static void uniform_distinct_two_threads(void **state)
{
    (void)state;
    wl_params p = {.nkeys = 50000, .row_bytes = 16, .batch = 500, .threads = 2,
                   .seconds = 0.2, .seed = 3, .distinct = true};
    fake f;
    wl_result r;
    run(&p, &f, &r);
    assert_int_equal(f.dup, 0);
    assert_int_equal(f.opened, 2);
    assert_true(f.first[0] && f.first[1]);
    assert_true(f.first[0] != f.first[1]); /* each thread its own stream */
    assert_int_equal(r.updates, 0);
}

static void zipf_is_skewed(void **state)
{
    (void)state;
    /* Zipf 0.99 over 100 000 keys: rank 0 is about 1 draw in 12, so nearly every
     * 200-key batch holds it; uniform keys would put it in 0.2 % of them */
    wl_params p = {.nkeys = NKEYS_MAX, .row_bytes = 8, .batch = 200, .threads = 1,
                   .seconds = 0.2, .zipf = 0.99, .seed = 5, .distinct = true};
    fake f;
    wl_result r;
    run(&p, &f, &r);
    assert_int_equal(f.dup, 0);
    assert_true(f.with_key0 * 10 >= f.calls * 9);
}

static void update_share(void **state)
{
    (void)state;
    wl_params p = {.nkeys = 10000, .row_bytes = 8, .batch = 50, .threads = 2,
                   .seconds = 0.2, .update_share = 0.5, .seed = 7, .distinct = true};
    fake f;
    wl_result r;
    run(&p, &f, &r);
    assert_true(r.batches >= 100);
    assert_true(r.updates * 10 >= r.batches * 3 && r.updates * 10 <= r.batches * 7);
}

static void bad_params(void **state)
{
    (void)state;
    wl_backend b = {.name = "fake"};
    wl_result r;
    wl_params p = {.nkeys = 10, .row_bytes = 8, .batch = 0, .threads = 1, .seconds = 0.1};
    assert_int_equal(wl_run(&p, &b, &r), -EINVAL);
    p.batch = 1;
    p.threads = 0;
    assert_int_equal(wl_run(&p, &b, &r), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uniform_distinct_two_threads),
        cmocka_unit_test(zipf_is_skewed),
        cmocka_unit_test(update_share),
        cmocka_unit_test(bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

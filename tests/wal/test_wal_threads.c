/* Group commit under DHPS_WAL_SYNC_ALWAYS: several threads append and wait; every
 * record is durable when its wait returns, fdatasyncs are shared, and everything
 * replays. Labelled concurrency: runs under TSan. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <cmocka.h>

#include "wal_test.h"

#define THREADS 6
#define PER 300

typedef struct targ {
    dhps_wal *w;
    int rc;
    uint64_t max_lsn;
} targ;

static void *appender(void *p)
{
    targ *a = p;
    uint8_t buf[64];
    for (int i = 0; i < PER && !a->rc; i++) {
        memset(buf, i, sizeof buf);
        struct iovec iov[3] = {{buf, 8}, {buf + 8, 0}, {buf + 8, 40}};
        uint64_t lsn;
        if ((a->rc = dhps_wal_append(a->w, iov, 3, &lsn)))
            break;
        if ((a->rc = dhps_wal_wait(a->w, lsn)))
            break;
        dhps_wal_stats st;
        dhps_wal_get_stats(a->w, &st);
        if (st.synced_lsn < lsn)
            a->rc = -1000;
        if (lsn > a->max_lsn)
            a->max_lsn = lsn;
    }
    return NULL;
}

static int count(void *arg, uint64_t lsn, const void *p, size_t len)
{
    uint64_t *n = arg;
    (*n)++;
    return len == 48 && lsn == *n ? 0 : -EIO;
}

static void group_commit(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    for (int pol = DHPS_WAL_SYNC_INTERVAL; pol <= DHPS_WAL_SYNC_ALWAYS; pol++) {
        dhps_wal *w;
        dhps_wal_params p;
        dhps_wal_params_init(&p);
        p.dir = d;
        p.identity = "gc";
        p.sync = pol;
        p.segment_bytes = 16 << 10; /* rotations too */
        uint64_t n0 = 0;
        assert_int_equal(dhps_wal_open(&p, 0, count, &n0, NULL, &w, err, sizeof err), 0);
        pthread_t th[THREADS];
        targ a[THREADS];
        for (int i = 0; i < THREADS; i++) {
            a[i] = (targ){.w = w};
            pthread_create(&th[i], NULL, appender, &a[i]);
        }
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(a[i].rc, 0);
        }
        dhps_wal_stats st;
        dhps_wal_get_stats(w, &st);
        assert_int_equal(st.appended, THREADS * PER);
        assert_true(st.fsyncs > 0);
        print_message("policy %d: %d appends+waits from %d threads, %llu fdatasyncs\n", pol,
                      THREADS * PER, THREADS, (unsigned long long)st.fsyncs);
        dhps_wal_close(w);
        uint64_t n = 0;
        assert_int_equal(dhps_wal_open(&p, 0, count, &n, NULL, &w, err, sizeof err), 0);
        assert_int_equal(n, (uint64_t)(pol - DHPS_WAL_SYNC_INTERVAL + 1) * THREADS * PER);
        dhps_wal_close(w);
    }
    w_rmdir(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(group_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The update log through its public API: round trip, rotation, truncation, reopen,
 * a torn tail cut at every byte of the last record, corruption refused, identity
 * checked, and a real kill -9 of an appending process. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <signal.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "wal_test.h"

static void round_trip(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    dhps_wal *w;
    dhps_wal_report rep;
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_INTERVAL, 0, 0, NULL, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(rep.next_lsn, 1);
    assert_int_equal(rep.records, 0);
    for (uint64_t i = 1; i <= 100; i++) {
        uint64_t lsn = 0;
        assert_int_equal(w_append_std(w, &lsn), 0);
        assert_int_equal(lsn, i);
    }
    assert_int_equal(dhps_wal_sync(w), 0);
    dhps_wal_stats st;
    dhps_wal_get_stats(w, &st);
    assert_int_equal(st.appended, 100);
    assert_int_equal(st.synced_lsn, 100);
    assert_int_equal(st.segments, 1);
    assert_true(st.disk_bytes > DHPS_WAL_SEGMENT_HDR_BYTES(6) + 100 * DHPS_WAL_RECORD_HDR);
    dhps_wal_close(w);

    w_seen seen;
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_NEVER, 0, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 100);
    assert_int_equal(seen.first, 1);
    assert_int_equal(seen.bad, 0);
    assert_int_equal(rep.records, 100);
    assert_int_equal(rep.replayed, 100);
    assert_int_equal(rep.torn_bytes, 0);
    assert_int_equal(rep.first_lsn, 1);
    dhps_wal_close(w);
    /* from_lsn skips the older records */
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_NEVER, 0, 60, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 41);
    assert_int_equal(seen.first, 60);
    assert_int_equal(rep.replayed, 41);
    /* bad arguments */
    struct iovec iov = {err, 1};
    assert_int_equal(dhps_wal_append(w, &iov, 0, NULL), -EINVAL);
    assert_int_equal(dhps_wal_wait(w, 101), -EINVAL);
    assert_int_equal(dhps_wal_wait(w, 0), -EINVAL);
    dhps_wal_close(w);
    w_rmdir(d);
}

static void rotation_and_truncate(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    dhps_wal *w;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_ALWAYS, 4096, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 300; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_stats st;
    dhps_wal_get_stats(w, &st);
    int files = w_segments(d, NULL, 0);
    assert_true(files > 5);
    assert_int_equal(st.segments, (uint64_t)files);
    uint64_t before = st.disk_bytes;
    int del = dhps_wal_truncate_before(w, 150);
    assert_true(del > 0);
    assert_int_equal(w_segments(d, NULL, 0), files - del);
    dhps_wal_get_stats(w, &st);
    assert_true(st.disk_bytes < before);
    dhps_wal_close(w);

    /* what is left replays from 150 (and a little before: whole segments) */
    w_seen seen;
    dhps_wal_report rep;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_ALWAYS, 4096, 150, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.first, 150);
    assert_int_equal(seen.last, 300);
    assert_int_equal(seen.bad, 0);
    assert_true(rep.first_lsn <= 150 && rep.first_lsn > 1);
    /* truncating at the end leaves one fresh segment; LSNs go on */
    assert_int_equal(dhps_wal_next_lsn(w), 301);
    assert_true(dhps_wal_truncate_before(w, 301) > 0);
    assert_int_equal(w_segments(d, NULL, 0), 1);
    dhps_wal_close(w);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_ALWAYS, 4096, 301, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 0);
    assert_int_equal(rep.next_lsn, 301);
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 301);
    dhps_wal_close(w);
    /* a checkpoint past the end of the log: appends start there, reopen is clean */
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 500, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(rep.next_lsn, 500);
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 500);
    dhps_wal_close(w);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 500, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.first, 500);
    dhps_wal_close(w);
    /* ... but a log that starts after the checkpoint lost records: refused */
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 200, &seen, &rep, &w, err,
                            sizeof err), DHPS_E_CORRUPT);
    assert_non_null(strstr(err, "missing"));
    w_rmdir(d);
}

static void reopen_continues(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    dhps_wal *w;
    for (int round = 0; round < 3; round++) {
        w_seen seen;
        assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_INTERVAL, 0, 0, &seen, NULL, &w, err,
                                sizeof err), 0);
        assert_int_equal(seen.n, (uint64_t)round * 10);
        assert_int_equal(seen.bad, 0);
        for (int i = 0; i < 10; i++) {
            uint64_t lsn;
            assert_int_equal(w_append_std(w, &lsn), 0);
            assert_int_equal(lsn, (uint64_t)round * 10 + (uint64_t)i + 1);
        }
        dhps_wal_close(w);
    }
    w_rmdir(d);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

static void torn_tail_every_offset(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512], seg[600];
    dhps_wal *w;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_stats st;
    dhps_wal_get_stats(w, &st);
    dhps_wal_close(w);
    w_segments(d, seg, sizeof seg);
    size_t len;
    uint8_t *orig = slurp(seg, &len);
    assert_int_equal(len, st.disk_bytes);
    size_t last_len = DHPS_WAL_RECORD_HDR + ((w_len(5) + 7) & ~(size_t)7);
    size_t end4 = len - last_len;
    for (size_t cut = end4 + 1; cut < len; cut++) {
        spit(seg, orig, cut);
        w_seen seen;
        dhps_wal_report rep;
        int rc = w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, &seen, &rep, &w, err, sizeof err);
        assert_int_equal(rc, 0);
        assert_int_equal(seen.n, 4);
        assert_int_equal(seen.bad, 0);
        assert_int_equal(rep.torn_bytes, cut - end4);
        assert_int_equal(rep.torn_offset, end4);
        assert_int_equal(rep.torn_lsn, 4);
        assert_non_null(strstr(seg, rep.torn_segment));
        assert_int_equal(rep.next_lsn, 5);
        dhps_wal_close(w);
        struct stat sb;
        assert_int_equal(stat(seg, &sb), 0);
        assert_int_equal((size_t)sb.st_size, end4); /* cut */
    }
    /* the same, with garbage instead of a short file, and then appends go on */
    for (size_t i = end4 + 3; i < len; i++)
        orig[i] ^= 0x5a;
    spit(seg, orig, len);
    w_seen seen;
    dhps_wal_report rep;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 4);
    assert_int_equal(rep.torn_bytes, last_len);
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 5);
    dhps_wal_close(w);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 5);
    assert_int_equal(seen.bad, 0);
    assert_int_equal(rep.torn_bytes, 0);
    dhps_wal_close(w);
    free(orig);
    w_rmdir(d);
}

static void corrupt_middle_refused(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512], seg[600];
    dhps_wal *w;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    w_segments(d, seg, sizeof seg);
    size_t len;
    uint8_t *orig = slurp(seg, &len);
    /* a bit in a payload, in a length field, in an LSN, in the segment header (its
     * first LSN, its identity) */
    const size_t hdr = DHPS_WAL_SEGMENT_HDR_BYTES(1); /* identity "n" */
    size_t spots[] = {len / 2, hdr + 1, hdr + 9, hdr + 30, 17, 24};
    for (size_t k = 0; k < sizeof spots / sizeof spots[0]; k++) {
        uint8_t *b = malloc(len);
        memcpy(b, orig, len);
        b[spots[k]] ^= 0x10;
        spit(seg, b, len);
        free(b);
        w_seen seen;
        int rc = w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, &seen, NULL, &w, err, sizeof err);
        assert_int_equal(rc, DHPS_E_CORRUPT);
        assert_null(w);
        assert_int_equal(seen.n, 0); /* nothing replayed */
        assert_non_null(strstr(err, strrchr(seg, '/') + 1));
        if (spots[k] >= hdr)
            assert_non_null(strstr(err, "offset"));
        else
            assert_non_null(strstr(err, "damaged segment header"));
        struct stat sb;
        assert_int_equal(stat(seg, &sb), 0);
        assert_int_equal((size_t)sb.st_size, len); /* not cut */
    }
    /* a damaged older segment is corruption even at its end */
    spit(seg, orig, len);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    assert_int_equal(dhps_wal_truncate_before(w, 1), 0);
    assert_int_equal(dhps_wal_truncate_before(w, 0), 0);
    dhps_wal_close(w);
    spit(seg, orig, len - 3);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0); /* torn: cut, ready at 10 */
    assert_int_equal(dhps_wal_next_lsn(w), 10);
    assert_int_equal(dhps_wal_truncate_before(w, 100), 1); /* rotates, drops the old one */
    dhps_wal_close(w);
    free(orig);
    w_rmdir(d);
}

static void identity_checked(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    dhps_wal *w;
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    assert_int_equal(w_open(d, "node-b", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), DHPS_E_MISMATCH);
    assert_null(w);
    assert_non_null(strstr(err, "node-a"));
    assert_non_null(strstr(err, "node-b"));
    /* over-long identity, missing dir */
    char big[DHPS_WAL_IDENTITY_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(w_open(d, big, DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), -EINVAL);
    assert_int_equal(w_open("/nonexistent/x/y", "n", DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL,
                            &w, err, sizeof err), -ENOENT);
    w_rmdir(d);
}

/* A child appends (INTERVAL: no fdatasync before the ack) and reports each LSN append
 * returned through a pipe; kill -9; every reported LSN must replay. */
static void crash_kill9(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[512];
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dhps_wal *w;
        if (w_open(d, "crash", DHPS_WAL_SYNC_INTERVAL, 64 << 10, 0, NULL, NULL, &w, err,
                   sizeof err))
            _exit(3);
        for (;;) {
            uint64_t lsn;
            if (w_append_std(w, &lsn))
                _exit(4);
            if (write(fds[1], &lsn, 8) != 8)
                _exit(5);
        }
    }
    close(fds[1]);
    uint64_t got = 0, lsn;
    while (got < 20000 && read(fds[0], &lsn, 8) == 8)
        got = lsn;
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    while (read(fds[0], &lsn, 8) == 8) /* what it reported before dying */
        got = lsn;
    close(fds[0]);
    assert_true(got >= 20000);
    w_seen seen;
    dhps_wal_report rep;
    dhps_wal *w;
    assert_int_equal(w_open(d, "crash", DHPS_WAL_SYNC_INTERVAL, 64 << 10, 0, &seen, &rep, &w,
                            err, sizeof err), 0);
    assert_int_equal(seen.bad, 0);
    assert_int_equal(seen.first, 1);
    assert_true(seen.last >= got);
    assert_true(rep.segments > 1);
    print_message("kill -9 after %llu acknowledged appends: %llu replayed, %llu segments, "
                  "%llu torn bytes\n", (unsigned long long)got, (unsigned long long)seen.n,
                  (unsigned long long)rep.segments, (unsigned long long)rep.torn_bytes);
    dhps_wal_close(w);
    w_rmdir(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(rotation_and_truncate),
        cmocka_unit_test(reopen_continues),
        cmocka_unit_test(torn_tail_every_offset),
        cmocka_unit_test(corrupt_middle_refused),
        cmocka_unit_test(identity_checked),
        cmocka_unit_test(crash_kill9),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

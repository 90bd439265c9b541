/* The update log's segment identities through the public API: the check callback (called
 * for every segment, oldest first, before any replay; its refusal names the file), a new
 * segment when the identity changed (an empty newest one replaced in place), identities
 * up to DHPS_WAL_IDENTITY_MAX bytes, format-1 segments (older builds) still read, and
 * segments cut short while being created. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "wal_test.h"

typedef struct checks {
    int calls;
    uint64_t firsts[16];
    char seen[16][32];
    const char *refuse;   /* refuse a segment with this identity */
} checks;

static int check_cb(void *arg, const char *segment, uint64_t first_lsn, const char *found,
                    size_t len, char *err, size_t errlen)
{
    checks *c = arg;
    assert_int_equal(strlen(found), len); /* NUL-terminated copy */
    assert_non_null(strstr(segment, "wal."));
    if (c->calls < 16) {
        c->firsts[c->calls] = first_lsn;
        snprintf(c->seen[c->calls], sizeof c->seen[0], "%s", found);
    }
    c->calls++;
    if (c->refuse && !strcmp(found, c->refuse)) {
        snprintf(err, errlen, "identity %s refused by the test", found);
        return DHPS_E_MISMATCH;
    }
    return 0;
}

static int open_checked(const char *dir, const char *ident, checks *c, uint64_t seg_bytes,
                        w_seen *seen, dhps_wal **w, char *err, size_t errlen)
{
    dhps_wal_params p;
    dhps_wal_params_init(&p);
    p.dir = dir;
    p.identity = ident;
    p.sync = DHPS_WAL_SYNC_NEVER;
    if (seg_bytes)
        p.segment_bytes = seg_bytes;
    p.check = check_cb;
    p.check_arg = c;
    memset(seen, 0, sizeof *seen);
    return dhps_wal_open(&p, 0, w_collect, seen, NULL, w, err, errlen);
}

/* The callback sees every segment oldest first; a refusal stops the open before any
 * record is replayed and names the file; an identity change starts a new segment. */
static void check_callback(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[1200], last[600];
    dhps_wal *w;
    checks c = {0};
    w_seen seen;
    assert_int_equal(open_checked(d, "id-1", &c, 4096, &seen, &w, err, sizeof err), 0);
    assert_int_equal(c.calls, 0); /* empty directory */
    for (int i = 0; i < 80; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    int files1 = w_segments(d, NULL, 0);
    assert_true(files1 > 2);
    /* same identity: appends go on in the newest segment */
    memset(&c, 0, sizeof c);
    assert_int_equal(open_checked(d, "id-1", &c, 4096, &seen, &w, err, sizeof err), 0);
    assert_int_equal(c.calls, files1);
    assert_int_equal(seen.n, 80);
    assert_int_equal(w_segments(d, NULL, 0), files1);
    dhps_wal_close(w);
    /* another identity the callback accepts: a new segment starts at LSN 81 (0x51) */
    memset(&c, 0, sizeof c);
    assert_int_equal(open_checked(d, "id-2", &c, 4096, &seen, &w, err, sizeof err), 0);
    assert_int_equal(c.calls, files1);
    assert_int_equal(w_segments(d, last, sizeof last), files1 + 1);
    assert_non_null(strstr(last, "wal.0000000000000051.log"));
    char *id = w_seg_ident(last);
    assert_string_equal(id, "id-2");
    free(id);
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 81);
    dhps_wal_close(w);
    /* oldest first, each with its first LSN and identity */
    memset(&c, 0, sizeof c);
    assert_int_equal(open_checked(d, "id-2", &c, 4096, &seen, &w, err, sizeof err), 0);
    assert_int_equal(c.calls, files1 + 1);
    assert_int_equal(c.firsts[0], 1);
    for (int i = 1; i < c.calls; i++)
        assert_true(c.firsts[i] > c.firsts[i - 1]);
    assert_string_equal(c.seen[0], "id-1");
    assert_string_equal(c.seen[c.calls - 1], "id-2");
    assert_int_equal(seen.n, 81);
    assert_int_equal(seen.bad, 0);
    dhps_wal_close(w);
    /* a refusal: nothing replayed, no handle, the file and the reason named */
    memset(&c, 0, sizeof c);
    c.refuse = "id-2";
    assert_int_equal(open_checked(d, "id-2", &c, 4096, &seen, &w, err, sizeof err),
                     DHPS_E_MISMATCH);
    assert_null(w);
    assert_int_equal(seen.n, 0);
    assert_non_null(strstr(err, "wal.0000000000000051.log: identity id-2 refused"));
    /* without a callback, the first segment of another identity is refused */
    assert_int_equal(w_open(d, "id-2", DHPS_WAL_SYNC_NEVER, 4096, 0, NULL, NULL, &w, err,
                            sizeof err), DHPS_E_MISMATCH);
    assert_non_null(strstr(err, "\"id-1\""));
    assert_non_null(strstr(err, "wal.0000000000000001.log"));
    w_rmdir(d);
}

/* An empty newest segment written with another identity is replaced (same file name,
 * new header), not left beside a second segment of the same first LSN. */
static void empty_segment_replaced(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[1200], last[600];
    dhps_wal *w;
    checks c = {0};
    w_seen seen;
    assert_int_equal(open_checked(d, "old", &c, 0, &seen, &w, err, sizeof err), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    assert_true(dhps_wal_truncate_before(w, 6) > 0); /* a checkpoint: one empty segment */
    dhps_wal_close(w);
    assert_int_equal(w_segments(d, last, sizeof last), 1);
    char *id = w_seg_ident(last);
    assert_string_equal(id, "old");
    free(id);
    assert_int_equal(open_checked(d, "new", &c, 0, &seen, &w, err, sizeof err), 0);
    assert_int_equal(w_segments(d, last, sizeof last), 1);
    assert_non_null(strstr(last, "wal.0000000000000006.log"));
    id = w_seg_ident(last);
    assert_string_equal(id, "new");
    free(id);
    dhps_wal_stats st;
    dhps_wal_get_stats(w, &st);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.disk_bytes, DHPS_WAL_SEGMENT_HDR_BYTES(3));
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 6);
    dhps_wal_close(w);
    /* and the result reopens with the new identity alone */
    assert_int_equal(w_open(d, "new", DHPS_WAL_SYNC_NEVER, 0, 6, &seen, NULL, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.first, 6);
    dhps_wal_close(w);
    w_rmdir(d);
}

/* The longest identity round-trips; one byte more is refused. */
static void long_identity(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[1200], last[600];
    char *big = malloc(DHPS_WAL_IDENTITY_MAX + 2);
    for (uint32_t i = 0; i < DHPS_WAL_IDENTITY_MAX + 1; i++)
        big[i] = (char)('a' + i % 26);
    big[DHPS_WAL_IDENTITY_MAX] = 0;
    dhps_wal *w;
    w_seen seen;
    assert_int_equal(w_open(d, big, DHPS_WAL_SYNC_ALWAYS, 0, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    w_segments(d, last, sizeof last);
    char *id = w_seg_ident(last);
    assert_string_equal(id, big);
    free(id);
    assert_int_equal(w_open(d, big, DHPS_WAL_SYNC_NEVER, 0, 0, &seen, NULL, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 3);
    assert_int_equal(seen.bad, 0);
    dhps_wal_close(w);
    big[DHPS_WAL_IDENTITY_MAX] = 'x';
    big[DHPS_WAL_IDENTITY_MAX + 1] = 0;
    assert_int_equal(w_open(d, big, DHPS_WAL_SYNC_NEVER, 0, 0, NULL, NULL, &w, err,
                            sizeof err), -EINVAL);
    free(big);
    w_rmdir(d);
}

/* Segments written by older builds (format 1) replay; with the same identity appends go
 * on in them, with another (accepted by the check) a format-2 segment starts. */
static void format1_read(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[1200], last[600];
    dhps_wal *w;
    w_seen seen;
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_NEVER, 4096, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 30; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    int conv = w_dir_to_format1(d, "node-a");
    assert_true(conv > 1);
    assert_int_equal(w_open(d, "node-a", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, NULL, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 30);
    assert_int_equal(seen.bad, 0);
    assert_int_equal(w_segments(d, NULL, 0), conv); /* same identity: no new segment */
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0);
    assert_int_equal(lsn, 31);
    dhps_wal_close(w);
    assert_int_equal(w_open(d, "node-b", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, NULL, &w, err,
                            sizeof err), DHPS_E_MISMATCH);
    assert_non_null(strstr(err, "\"node-a\""));
    checks c = {0};
    assert_int_equal(open_checked(d, "node-a v2", &c, 4096, &seen, &w, err, sizeof err), 0);
    assert_int_equal(seen.n, 31);
    assert_string_equal(c.seen[0], "node-a");
    assert_int_equal(w_segments(d, last, sizeof last), conv + 1);
    char *id = w_seg_ident(last);
    assert_string_equal(id, "node-a v2");
    free(id);
    dhps_wal_close(w);
    /* a format-1 header with a bit flipped is damaged, not another identity */
    char first[600];
    snprintf(first, sizeof first, "%s/wal.0000000000000001.log", d);
    size_t len;
    uint8_t *b = w_slurp(first, &len);
    b[30] ^= 1;
    w_spit(first, b, len);
    free(b);
    assert_int_equal(open_checked(d, "node-a v2", &c, 4096, &seen, &w, err, sizeof err),
                     DHPS_E_CORRUPT);
    assert_non_null(strstr(err, "damaged segment header"));
    w_rmdir(d);
}

/* Creations cut short: a leftover .tmp is removed; a newest segment shorter than the
 * fixed header (or a format-1 one shorter than 288 bytes) held nothing and is removed;
 * a format-2 segment shorter than the header it declares is refused, not removed. */
static void short_segments(void **state)
{
    (void)state;
    char *d = w_mkdtemp(), err[1200], p[600], q[600];
    dhps_wal *w;
    w_seen seen;
    dhps_wal_report rep;
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 0, NULL, NULL, &w, err,
                            sizeof err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(w_append_std(w, NULL), 0);
    dhps_wal_close(w);
    /* a leftover temp file of a creation that never got renamed */
    snprintf(p, sizeof p, "%s/wal.0000000000000004.log.tmp", d);
    w_spit(p, (const uint8_t *)"DHPSWAL", 8);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 3);
    assert_int_equal(access(p, F_OK), -1);
    dhps_wal_close(w);
    /* a newest segment of 20 bytes */
    snprintf(q, sizeof q, "%s/wal.0000000000000004.log", d);
    w_spit(q, (const uint8_t *)"DHPSWAL\0\2\0\0\0\0\0\0\0\4\0\0\0", 20);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 3);
    assert_int_equal(rep.torn_bytes, 20);
    assert_int_equal(rep.next_lsn, 4);
    uint64_t lsn;
    assert_int_equal(w_append_std(w, &lsn), 0); /* goes into the first segment */
    assert_int_equal(lsn, 4);
    dhps_wal_close(w);
    assert_int_equal(access(q, F_OK), -1);
    /* a format-2 header declaring an identity longer than the file */
    size_t len;
    w_segments(d, p, sizeof p);
    uint8_t *b = w_slurp(p, &len);
    uint8_t *c = malloc(len);
    memcpy(c, b, len);
    uint32_t il = 4000;
    memcpy(c + 12, &il, 4);
    w_spit(p, c, len);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, &rep, &w, err,
                            sizeof err), DHPS_E_CORRUPT);
    assert_non_null(strstr(err, "damaged segment header"));
    assert_int_equal(access(p, F_OK), 0);
    /* a format-1 segment shorter than 288 bytes, newest: removed */
    w_spit(p, b, len);
    free(c);
    free(b);
    uint8_t f1[100];
    memset(f1, 0, sizeof f1);
    memcpy(f1, "DHPSWAL", 8);
    f1[8] = 1;
    uint64_t first = 5;
    memcpy(f1 + 16, &first, 8);
    snprintf(q, sizeof q, "%s/wal.0000000000000005.log", d);
    w_spit(q, f1, sizeof f1);
    assert_int_equal(w_open(d, "n", DHPS_WAL_SYNC_NEVER, 4096, 0, &seen, &rep, &w, err,
                            sizeof err), 0);
    assert_int_equal(seen.n, 4);
    assert_int_equal(rep.torn_bytes, sizeof f1);
    dhps_wal_close(w);
    assert_int_equal(access(q, F_OK), -1);
    w_rmdir(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(check_callback),
        cmocka_unit_test(empty_segment_replaced),
        cmocka_unit_test(long_identity),
        cmocka_unit_test(format1_read),
        cmocka_unit_test(short_segments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

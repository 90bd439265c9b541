/* Table file parsers of `dhps load` (src/tools/tablefile.h): valid and damaged files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tablefile.h"

/* ---- binary format ------------------------------------------------------------------ */

static uint8_t *make_bin(uint32_t dtype, uint32_t dim, uint64_t count, size_t *len)
{
    size_t n = tf_bin_size(dtype, dim, count);
    assert_true(n > 0);
    uint64_t *keys = malloc(count * 8 + 8);
    size_t rb = (size_t)dim * tf_dtype_size(dtype);
    uint8_t *rows = malloc(count * rb + 1);
    for (uint64_t i = 0; i < count; i++)
        keys[i] = i * 7919 + 0x1234567890ull;
    for (size_t i = 0; i < count * rb; i++)
        rows[i] = (uint8_t)(i * 31);
    uint8_t *buf = malloc(n);
    assert_int_equal(tf_bin_write(buf, n, dtype, dim, count, keys, rows), (long)n);
    free(keys);
    free(rows);
    *len = n;
    return buf;
}

static void bin_roundtrip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = make_bin(DHPS_FP32, 5, 100, &len);
    tf_table t;
    assert_int_equal(tf_bin_parse(b, len, true, &t), 0);
    assert_int_equal(t.dtype, DHPS_FP32);
    assert_int_equal(t.dim, 5);
    assert_int_equal(t.row_bytes, 20);
    assert_int_equal(t.count, 100);
    assert_int_equal(tf_u64le(t.keys + 8 * 42), 42 * 7919 + 0x1234567890ull);
    assert_int_equal(t.rows[21], (uint8_t)(21 * 31));
    assert_ptr_equal(t.rows + 100 * 20, b + len - 8);
    free(b);

    b = make_bin(DHPS_FP16, 3, 0, &len); /* empty table */
    assert_int_equal(tf_bin_parse(b, len, true, &t), 0);
    assert_int_equal(t.count, 0);
    assert_int_equal(t.row_bytes, 6);
    free(b);
}

static void bin_damaged(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = make_bin(DHPS_FP32, 4, 10, &len);
    tf_table t;
    /* any flipped byte is caught: header fields by their checks, the rest by XXH64 */
    for (size_t i = 0; i < len; i++) {
        b[i] ^= 0x40;
        int rc = tf_bin_parse(b, len, true, &t);
        assert_true(rc == DHPS_E_CORRUPT || rc == DHPS_E_VERSION);
        b[i] ^= 0x40;
    }
    /* a flipped row byte without the checksum pass is not noticed (documented) */
    b[TF_BIN_HDR + 80 + 3] ^= 1;
    assert_int_equal(tf_bin_parse(b, len, false, &t), 0);
    b[TF_BIN_HDR + 80 + 3] ^= 1;
    /* truncated or extended */
    for (size_t l = 0; l < len; l += 7)
        assert_int_equal(tf_bin_parse(b, l, true, &t), DHPS_E_CORRUPT);
    uint8_t *big = malloc(len + 1);
    memcpy(big, b, len);
    big[len] = 0;
    assert_int_equal(tf_bin_parse(big, len + 1, true, &t), DHPS_E_CORRUPT);
    free(big);
    /* version 2 and unknown flags are a version error, not corruption */
    b[8] = 2;
    assert_int_equal(tf_bin_parse(b, len, true, &t), DHPS_E_VERSION);
    b[8] = 1;
    b[28] = 1;
    assert_int_equal(tf_bin_parse(b, len, true, &t), DHPS_E_VERSION);
    b[28] = 0;
    /* a count that overflows the size computation */
    memset(b + 16, 0xff, 8);
    assert_int_equal(tf_bin_parse(b, len, false, &t), DHPS_E_CORRUPT);
    assert_int_equal(tf_bin_parse(NULL, len, true, &t), -EINVAL);
    free(b);
    /* bad sizes on write */
    uint8_t small[16];
    assert_int_equal(tf_bin_write(small, sizeof small, DHPS_FP32, 4, 1, (uint64_t[]){1}, small),
                     -EINVAL);
    assert_int_equal(tf_bin_size(7, 4, 1), 0);
    assert_int_equal(tf_bin_size(DHPS_FP32, 0, 1), 0);
    assert_int_equal(tf_bin_size(DHPS_FP32, 4096, 1), 0); /* 16 KiB row > store max */
}

/* ---- npy ---------------------------------------------------------------------------- */

/* A .npy file from a header text (dict) for a given version, then data bytes. */
static uint8_t *npy_raw(int major, const char *dict, size_t data_len, size_t *len)
{
    size_t pre = major == 1 ? 10 : 12, hl = strlen(dict) + 1;
    *len = pre + hl + data_len;
    uint8_t *b = calloc(1, *len);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (uint8_t)major;
    if (major == 1) {
        b[8] = (uint8_t)hl;
        b[9] = (uint8_t)(hl >> 8);
    } else {
        b[8] = (uint8_t)hl;
        b[9] = (uint8_t)(hl >> 8);
    }
    memcpy(b + pre, dict, hl - 1);
    b[pre + hl - 1] = '\n';
    for (size_t i = 0; i < data_len; i++)
        b[pre + hl + i] = (uint8_t)i;
    return b;
}

static void npy_versions_and_writer(void **state)
{
    (void)state;
    for (int major = 1; major <= 3; major++) {
        uint8_t buf[4096];
        uint64_t shape[2] = {7, 3};
        long h = tf_npy_write_header(buf, sizeof buf, major, "<f4", false, 2, shape);
        assert_true(h > 0);
        assert_int_equal(h % 64, 0);
        memset(buf + h, 0, 7 * 3 * 4);
        tf_npy a;
        assert_int_equal(tf_npy_parse(buf, (size_t)h + 84, &a), 0);
        assert_int_equal(a.major, major);
        assert_int_equal(a.ndim, 2);
        assert_int_equal(a.shape[0], 7);
        assert_int_equal(a.shape[1], 3);
        assert_int_equal(a.itemsize, 4);
        assert_false(a.fortran_order);
        assert_ptr_equal(a.data, buf + h);
        tf_table t;
        assert_int_equal(tf_npy_as_rows(&a, &t), 0);
        assert_int_equal(t.count, 7);
        assert_int_equal(t.dim, 3);
        assert_int_equal(t.dtype, DHPS_FP32);
        assert_null(t.keys);
        /* keys file (N,) of <u8 and <i8 */
        uint64_t ks[1] = {5};
        h = tf_npy_write_header(buf, sizeof buf, major, major == 2 ? "<i8" : "<u8", false, 1, ks);
        assert_int_equal(tf_npy_parse(buf, (size_t)h + 40, &a), 0);
        assert_int_equal(a.ndim, 1);
        const uint8_t *kp;
        uint64_t kn;
        assert_int_equal(tf_npy_as_keys(&a, &kp, &kn), 0);
        assert_int_equal(kn, 5);
        /* keys are not rows and rows are not keys */
        assert_int_equal(tf_npy_as_rows(&a, &t), DHPS_E_CONFIG);
    }
}

static void npy_header_syntax(void **state)
{
    (void)state;
    struct {
        const char *dict;
        size_t data;
        int rc;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, 0},
        {"{\"shape\":(2,3),\"descr\":\"<f2\",\"fortran_order\":False}   ", 12, 0},
        {"{'descr': '<u8', 'fortran_order': False, 'shape': (4,), }", 32, 0},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, 0}, /* scalar */
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", 0, 0},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }", 24, 0},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, 0},
        /* damaged */
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 23, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 25, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, }", 0, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'fortran_order': False, 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", 48, DHPS_E_CORRUPT},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) 'x': 1}", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3), }", 24, DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3), }", 0,
         DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }", 0,
         DHPS_E_CORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x", 24, DHPS_E_CORRUPT},
        {"", 0, DHPS_E_CORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int major = 1; major <= 3; major++) {
            size_t len;
            uint8_t *b = npy_raw(major, cases[i].dict, cases[i].data, &len);
            tf_npy a;
            int rc = tf_npy_parse(b, len, &a);
            if (rc != cases[i].rc)
                fail_msg("case %zu (v%d) '%s': rc %d, want %d", i, major, cases[i].dict, rc,
                         cases[i].rc);
            free(b);
        }
    }
    /* rows/keys views refuse what a loader cannot use */
    size_t len;
    tf_npy a;
    tf_table t;
    uint8_t *b = npy_raw(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, &len);
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    assert_int_equal(tf_npy_as_rows(&a, &t), DHPS_E_CONFIG);
    free(b);
    b = npy_raw(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 1), }", 24, &len);
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    assert_int_equal(tf_npy_as_rows(&a, &t), DHPS_E_CONFIG);
    free(b);
    /* '<f8' rows are taken (dhps load casts them to fp32) */
    b = npy_raw(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, &len);
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    assert_int_equal(tf_npy_as_rows(&a, &t), 0);
    assert_int_equal(t.dtype, TF_F64);
    assert_int_equal(t.row_bytes, 24);
    free(b);
    b = npy_raw(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 24, &len);
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    assert_int_equal(tf_npy_as_rows(&a, &t), DHPS_E_CONFIG);
    free(b);
    b = npy_raw(1, "{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }", 8, &len);
    const uint8_t *kp;
    uint64_t kn;
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    assert_int_equal(tf_npy_as_keys(&a, &kp, &kn), DHPS_E_CONFIG);
    free(b);
}

static void npy_damaged_prefix(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = npy_raw(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, &len);
    tf_npy a;
    assert_int_equal(tf_npy_parse(b, len, &a), 0);
    for (size_t l = 0; l < len; l++) /* every truncation */
        assert_int_equal(tf_npy_parse(b, l, &a), DHPS_E_CORRUPT);
    b[6] = 4;
    assert_int_equal(tf_npy_parse(b, len, &a), DHPS_E_VERSION);
    b[6] = 0;
    assert_int_equal(tf_npy_parse(b, len, &a), DHPS_E_VERSION);
    b[6] = 1;
    b[0] = 0x92;
    assert_int_equal(tf_npy_parse(b, len, &a), DHPS_E_CORRUPT);
    b[0] = 0x93;
    b[8] = 0xff; /* header length beyond the file */
    b[9] = 0xff;
    assert_int_equal(tf_npy_parse(b, len, &a), DHPS_E_CORRUPT);
    free(b);
}

/* ---- batching ----------------------------------------------------------------------- */

struct collect {
    uint64_t next_key, rows, calls, fail_at;
    uint32_t row_bytes;
    const uint8_t *rows_base;
};

static int collect_fn(void *arg, const uint64_t *keys, const void *rows, uint32_t n)
{
    struct collect *c = arg;
    if (c->calls == c->fail_at)
        return DHPS_E_UNREACHABLE;
    assert_ptr_equal(rows, c->rows_base + c->rows * c->row_bytes);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(keys[i], c->next_key++);
    c->rows += n;
    c->calls++;
    return 0;
}

static uint64_t g_prog_done;
static void prog(void *arg, uint64_t done, uint64_t total)
{
    (void)arg;
    assert_true(done > g_prog_done && done <= total);
    g_prog_done = done;
}

static void batches(void **state)
{
    (void)state;
    /* rows keyed by index + base */
    uint8_t rows[1000 * 8];
    tf_table t = {.dtype = DHPS_FP32, .dim = 2, .row_bytes = 8, .count = 1000, .rows = rows};
    uint64_t kb[64];
    struct collect c = {.next_key = 500, .row_bytes = 8, .rows_base = rows, .fail_at = ~0ull};
    g_prog_done = 0;
    assert_int_equal(tf_batches(&t, 500, 64, kb, collect_fn, &c, prog, NULL), 1000);
    assert_int_equal(c.calls, (1000 + 63) / 64);
    assert_int_equal(g_prog_done, 1000);
    /* keys from a file */
    size_t len;
    uint8_t *b = make_bin(DHPS_FP32, 2, 1000, &len);
    assert_int_equal(tf_bin_parse(b, len, true, &t), 0);
    uint64_t seen = 0;
    for (uint64_t i = 0; i < 1000; i++)
        seen += tf_u64le(t.keys + 8 * i) == i * 7919 + 0x1234567890ull;
    assert_int_equal(seen, 1000);
    free(b);
    /* an error stops the load */
    t = (tf_table){.dtype = DHPS_FP32, .dim = 2, .row_bytes = 8, .count = 1000, .rows = rows};
    c = (struct collect){.next_key = 0, .row_bytes = 8, .rows_base = rows, .fail_at = 3};
    assert_int_equal(tf_batches(&t, 0, 64, kb, collect_fn, &c, NULL, NULL), DHPS_E_UNREACHABLE);
    assert_int_equal(c.rows, 3 * 64);
    assert_int_equal(tf_batches(&t, 0, 0, kb, collect_fn, &c, NULL, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bin_roundtrip),     cmocka_unit_test(bin_damaged),
        cmocka_unit_test(npy_versions_and_writer), cmocka_unit_test(npy_header_syntax),
        cmocka_unit_test(npy_damaged_prefix), cmocka_unit_test(batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

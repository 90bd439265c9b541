/* Snapshots: round trip, TTLs across the snapshot, rejection of every kind of damage
 * (truncation anywhere, any flipped byte, wrong format, non-empty target), and of a file
 * that belongs to another table, shard, shard count or cluster. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "test_util.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/dhps-snap-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

enum { N = 5000 };

static dhps_store *filled(test_clock *c)
{
    dhps_store *s = mk_store(c, N, 0);
    for (uint64_t k = 1; k <= N; k++)
        assert_int_equal(put1(s, k * 11, k, (uint32_t)(k % 300), k % 3 ? 0 : 100), 1);
    /* overwrite some, delete some: only the live state is saved */
    for (uint64_t k = 1; k <= N; k += 5)
        assert_int_equal(put1(s, k * 11, k + 1000, (uint32_t)(k % 300), 0), 1);
    for (uint64_t k = 2; k <= N; k += 7) {
        uint64_t key = k * 11;
        dhps_store_delete(s, &key, 1, UINT64_MAX, NULL);
    }
    return s;
}

static void check_filled(dhps_store *s, int expect_ttl_alive)
{
    dhps_store_reader *r;
    assert_int_equal(dhps_store_reader_open(s, &r), 0);
    for (uint64_t k = 1; k <= N; k++) {
        int deleted = k >= 2 && (k - 2) % 7 == 0;
        int rewritten = (k - 1) % 5 == 0;
        uint64_t ver = rewritten ? k + 1000 : k;
        int ttl = !rewritten && k % 3 == 0;
        int want = !deleted && (!ttl || expect_ttl_alive);
        assert_int_equal(get1(r, k * 11, ver, (uint32_t)(k % 300)), want);
    }
    dhps_store_reader_close(r);
}

static void round_trip(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c);
    char path[300];
    snprintf(path, sizeof path, "%s/a.snap", dir);
    assert_int_equal(dhps_store_snapshot(s, path), 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600); /* the table's data: its owner only */
    dhps_store_stats st0;
    dhps_store_get_stats(s, &st0);

    dhps_store *t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load(t, path), (long)st0.keys);
    check_filled(t, 1);
    /* versions survive: an older update is still refused */
    assert_int_equal(put1(t, 11, 1, 1, 0), 0);
    /* loading into a non-empty store is refused */
    assert_int_equal(dhps_store_load(t, path), -EBUSY);
    /* TTLs continue from where they were: 100 s left */
    test_clock_advance(&c, 100 * 1000);
    check_filled(t, 0);
    dhps_store_destroy(t);

    /* a missing file is an I/O error, not a crash */
    t = mk_store(&c, 10, 0);
    char nope[300];
    snprintf(nope, sizeof nope, "%s/none.snap", dir);
    assert_int_equal(dhps_store_load(t, nope), -ENOENT);
    /* an empty store snapshots and loads */
    assert_int_equal(dhps_store_snapshot(t, nope), 0);
    assert_int_equal(dhps_store_load(t, nope), 0);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

static void damage_is_rejected_whole(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c);
    char path[300];
    snprintf(path, sizeof path, "%s/b.snap", dir);
    assert_int_equal(dhps_store_snapshot(s, path), 0);
    size_t n;
    uint8_t *img = slurp(path, &n);
    dhps_store *t = mk_store(&c, 10, 0);
    dhps_store_stats st;

    /* every truncation point (sampled), including inside header, block and trailer */
    for (size_t cut = 0; cut < n; cut += (cut < 200 || n - cut < 200) ? 1 : 997) {
        assert_int_equal(dhps_store_load_buffer(t, img, cut), DHPS_E_CORRUPT);
        dhps_store_get_stats(t, &st);
        assert_int_equal(st.keys, 0);
    }
    /* a flipped bit anywhere (sampled) */
    for (size_t off = 0; off < n; off += (off < 128 || n - off < 128) ? 1 : 499) {
        if (off >= 8 && off < 16)
            continue; /* format fields: checked below */
        img[off] ^= 0x10;
        long rc = dhps_store_load_buffer(t, img, n);
        img[off] ^= 0x10;
        assert_int_equal(rc, DHPS_E_CORRUPT);
        dhps_store_get_stats(t, &st);
        assert_int_equal(st.keys, 0);
    }
    /* an unknown format version is named as such */
    img[8] = 3;
    assert_int_equal(dhps_store_load_buffer(t, img, n), DHPS_E_VERSION);
    img[8] = 2;
    /* appended garbage */
    uint8_t *longer = malloc(n + 10);
    memcpy(longer, img, n);
    memset(longer + n, 0, 10);
    assert_int_equal(dhps_store_load_buffer(t, longer, n + 10), DHPS_E_CORRUPT);
    free(longer);
    /* the intact image still loads */
    assert_true(dhps_store_load_buffer(t, img, n) > 0);
    check_filled(t, 1);
    free(img);
    dhps_store_destroy(t);
    dhps_store_destroy(s);
}

static dhps_store_identity ident(const char *table, uint32_t shard, uint32_t nshards,
                                 const char *cluster)
{
    dhps_store_identity id;
    memset(&id, 0, sizeof id);
    snprintf(id.table, sizeof id.table, "%s", table);
    snprintf(id.cluster, sizeof id.cluster, "%s", cluster);
    id.shard = shard;
    id.nshards = nshards;
    return id;
}

/* Shard 1's file copied over shard 0's must not load (issue 12: it used to, silently,
 * and the next snapshot made the loss permanent). */
static void identity_is_checked(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c);
    dhps_store_identity mine = ident("emb", 1, 16, "prod");
    assert_int_equal(dhps_store_set_identity(s, &mine), 0);
    char path[300];
    snprintf(path, sizeof path, "%s/emb.1.snap", dir);
    assert_int_equal(dhps_store_snapshot(s, path), 0);
    dhps_store_identity got;
    assert_int_equal(dhps_store_file_identity(path, &got), 1);
    assert_string_equal(got.table, "emb");
    assert_string_equal(got.cluster, "prod");
    assert_int_equal(got.shard, 1);
    assert_int_equal(got.nshards, 16);
    struct {
        dhps_store_identity id;
        long want; /* -1: loads */
    } cases[] = {
        {ident("emb", 0, 16, "prod"), DHPS_E_MISMATCH},  /* another shard */
        {ident("emb", 1, 32, "prod"), DHPS_E_MISMATCH},  /* another shard count */
        {ident("user", 1, 16, "prod"), DHPS_E_MISMATCH}, /* another table */
        {ident("emb", 1, 16, "test"), DHPS_E_MISMATCH},  /* another cluster */
        {ident("emb", 1, 16, ""), -1},                   /* store not named after a cluster */
        {ident("emb", 1, 16, "prod"), -1},
    };
    dhps_store_stats st0;
    dhps_store_get_stats(s, &st0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dhps_store *t = mk_store(&c, 10, 0);
        assert_int_equal(dhps_store_set_identity(t, &cases[i].id), 0);
        long rc = dhps_store_load(t, path);
        dhps_store_stats st;
        dhps_store_get_stats(t, &st);
        if (cases[i].want == -1) {
            assert_int_equal(rc, (long)st0.keys);
        } else {
            assert_int_equal(rc, cases[i].want);
            assert_int_equal(st.keys, 0); /* nothing loaded */
        }
        /* a merge (catch-up image) is checked the same way */
        size_t n;
        uint8_t *img = slurp(path, &n);
        dhps_store *u = mk_store(&c, 10, 0);
        assert_int_equal(dhps_store_set_identity(u, &cases[i].id), 0);
        rc = dhps_store_merge_buffer(u, img, n, NULL, NULL, NULL);
        if (cases[i].want == -1)
            assert_int_equal(rc, (long)st0.keys);
        else
            assert_int_equal(rc, cases[i].want);
        free(img);
        dhps_store_destroy(u);
        dhps_store_destroy(t);
    }
    /* a store without an identity loads any file; a store with one loads a file written
     * without one and a format-1 file (before identities) */
    dhps_store *t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_load(t, path), (long)st0.keys);
    dhps_store_destroy(t);
    dhps_store *anon = filled(&c);
    char apath[300];
    snprintf(apath, sizeof apath, "%s/anon.snap", dir);
    assert_int_equal(dhps_store_snapshot(anon, apath), 0);
    assert_int_equal(dhps_store_file_identity(apath, &got), 0);
    t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_set_identity(t, &mine), 0);
    assert_int_equal(dhps_store_load(t, apath), (long)st0.keys);
    dhps_store_destroy(t);
    /* format 1: the same image without the identity block */
    size_t n;
    uint8_t *img = slurp(path, &n);
    uint8_t *v1 = malloc(n - 128);
    memcpy(v1, img, 64);
    memcpy(v1 + 64, img + 192, n - 192);
    v1[8] = 1;
    uint32_t off64 = 64;
    memcpy(v1 + 12, &off64, 4);
    uint64_t h = XXH3_64bits(v1, 56);
    memcpy(v1 + 56, &h, 8);
    assert_int_equal(dhps_store_image_identity(v1, n - 128, &got), 0);
    t = mk_store(&c, 10, 0);
    assert_int_equal(dhps_store_set_identity(t, &mine), 0);
    assert_int_equal(dhps_store_load_buffer(t, v1, n - 128), (long)st0.keys);
    check_filled(t, 1);
    dhps_store_destroy(t);
    /* a damaged identity block is damage */
    img[64 + 20] ^= 1;
    assert_int_equal(dhps_store_image_identity(img, n, &got), DHPS_E_CORRUPT);
    free(img);
    free(v1);
    /* bad identities are refused */
    dhps_store_identity bad = ident("emb", 16, 16, "");
    assert_int_equal(dhps_store_set_identity(s, &bad), -EINVAL);
    bad = ident("emb", 0, 0, "");
    assert_int_equal(dhps_store_set_identity(s, &bad), -EINVAL);
    dhps_store_destroy(anon);
    dhps_store_destroy(s);
}

static void failed_write_keeps_old_file(void **state)
{
    (void)state;
    test_clock c = {.ms = 1000000};
    dhps_store *s = filled(&c);
    char path[300];
    snprintf(path, sizeof path, "%s/c.snap", dir);
    assert_int_equal(dhps_store_snapshot(s, path), 0);
    /* a path in a missing directory fails cleanly */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir.snap", dir);
    assert_int_equal(dhps_store_snapshot(s, bad), -ENOENT);
    /* no temp files are left behind */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp", dir);
    assert_int_not_equal(system(cmd), 0);
    dhps_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(damage_is_rejected_whole),
        cmocka_unit_test(failed_write_keeps_old_file),
        cmocka_unit_test(identity_is_checked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* The cluster secret file loader (src/common/secret.h) and its public wrapper
 * dhps_client_secret_load: random secrets, passphrase files (scrypt) against known-answer
 * vectors, weak costs and passphrases, malformed forms, modes, the writer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "dhps/client.h"
#include "dhps/error.h"
#include "dhps/rpc.h"
#include "secret.h"

static char g_dir[64];

static const char *put(const char *name, const void *text, size_t len, int mode)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    unlink(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    assert_int_equal(chmod(path, (mode_t)mode), 0);
    return path;
}

static const char *puts600(const char *name, const char *text)
{
    return put(name, text, strlen(text), 0600);
}

/* Load path; expect rc; on failure err must hold every string of want (NULL-ended). */
static void expect_refused(const char *path, const char *const *want)
{
    uint8_t buf[DHPS_RPC_MAX_SECRET];
    size_t len = 99;
    char err[4400] = "";
    assert_int_equal(dhps_secret_load(path, buf, sizeof buf, &len, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_int_equal(len, 0);
    assert_non_null(strstr(err, path));
    for (; *want; want++)
        if (!strstr(err, *want))
            fail_msg("\"%s\" does not say \"%s\"", err, *want);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

/* ---- random secrets ----------------------------------------------------------------- */

static void random_secrets(void **state)
{
    (void)state;
    const char *good = "0123456789abcdef0123456789abcdef0123456789abcdef";
    uint8_t buf[DHPS_RPC_MAX_SECRET];
    size_t len;
    char err[4400];
    const char *endings[] = {"", "\n", "\r\n", "\n\n"};
    for (int i = 0; i < 4; i++) {
        char text[128];
        snprintf(text, sizeof text, "%s%s", good, endings[i]);
        const char *p = puts600("raw", text);
        assert_int_equal(dhps_secret_load(p, buf, sizeof buf, &len, err, sizeof err), 0);
        assert_int_equal(len, strlen(good));
        assert_memory_equal(buf, good, len);
    }
    /* the public wrapper reads the same */
    assert_int_equal(dhps_client_secret_load(puts600("raw", good), buf, sizeof buf, &len, err,
                                             sizeof err), 0);
    assert_memory_equal(buf, good, strlen(good));
    assert_int_equal(dhps_client_secret_load(NULL, buf, sizeof buf, &len, err, sizeof err),
                     -EINVAL);
    expect_refused(puts600("weak", "dog\n"), (const char *const[]){"too weak (3 bytes",
                   "dhps keygen", "dhps keygen --passphrase", NULL});
    expect_refused(puts600("weak", "passwordpasswordpasswordpassword"),
                   (const char *const[]){"too weak (32 bytes, 7 distinct", NULL});
    expect_refused(puts600("empty", "\r\n"), (const char *const[]){": empty", NULL});
    expect_refused(put("grp", good, strlen(good), 0640),
                   (const char *const[]){"mode 0640 lets its group", "chmod 600", NULL});
    expect_refused(put("oth", good, strlen(good), 0604),
                   (const char *const[]){"lets any user", NULL});
    char missing[128];
    snprintf(missing, sizeof missing, "%s/none", g_dir);
    expect_refused(missing, (const char *const[]){"No such file", NULL});
    /* longer than the caller's buffer (a random secret), than any secret file */
    char *big = malloc(DHPS_SECRET_FILE_MAX + 2);
    for (size_t i = 0; i < DHPS_SECRET_FILE_MAX + 1; i++)
        big[i] = (char)('a' + i % 26);
    expect_refused(put("big", big, 300, 0600),
                   (const char *const[]){"longer than 256 bytes", NULL});
    expect_refused(put("big", big, DHPS_SECRET_FILE_MAX + 1, 0600),
                   (const char *const[]){"longer than 4096 bytes", NULL});
    free(big);
    /* check only (buf NULL): judged, nothing read out */
    len = 7;
    assert_int_equal(dhps_secret_load(puts600("raw", good), NULL, 256, &len, err, sizeof err),
                     0);
    assert_int_equal(len, 0);
}

/* ---- passphrase files --------------------------------------------------------------- */

/* Known answers, computed when the test was written with python3's hashlib.scrypt and
 * checked with `openssl kdf -keylen 32 -kdfopt pass:... -kdfopt hexsalt:... -kdfopt
 * n:16384 -kdfopt r:8 -kdfopt p:1 SCRYPT` (both independent of this code). */
static void passphrase_known_answers(void **state)
{
    (void)state;
    static const struct {
        const char *file, *key;
    } kat[] = {
        {"scrypt:N=16384,r=8,p=1,salt=000102030405060708090a0b0c0d0e0f:"
         "correct horse battery staple\n",
         "d7590aca2c9801cf06eeba772a69dc31ce3862591d96522ac4e6bba6ad1f31a5"},
        /* UTF-8, p = 2, a 32-byte salt (bytes 100..131) in upper-case hex, CRLF */
        {"scrypt:N=16384,r=8,p=2,salt=6465666768696A6B6C6D6E6F707172737475767778797A7B7C"
         "7D7E7F80818283:Gr\xc3\xbc\xc3\x9f" "e, \xc3\x9cn\xc3\xaf" "code p\xc3\xa4ssphrase\r\n",
         "1aacf682a4c1805596265ccfb2dd16e05679a770f503894eb4148bf0586fab51"},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        const char *p = puts600("pass", kat[i].file);
        uint8_t buf[DHPS_RPC_MAX_SECRET];
        size_t len = 0;
        char err[4400] = "", got[65];
        assert_int_equal(dhps_secret_load(p, buf, sizeof buf, &len, err, sizeof err), 0);
        assert_int_equal(len, DHPS_SECRET_KEY_BYTES);
        hex(buf, len, got);
        assert_string_equal(got, kat[i].key);
        memset(buf, 0, sizeof buf);
        assert_int_equal(dhps_client_secret_load(p, buf, sizeof buf, &len, err, sizeof err), 0);
        hex(buf, len, got);
        assert_string_equal(got, kat[i].key);
        /* a key does not fit in less than 32 bytes */
        assert_int_equal(dhps_secret_load(p, buf, 31, &len, err, sizeof err), DHPS_E_CONFIG);
        assert_non_null(strstr(err, "does not fit"));
    }
    /* the parser's view of the first */
    dhps_secret_kdf k;
    char why[400];
    const char *t = kat[0].file;
    assert_int_equal(dhps_secret_parse((const uint8_t *)t, strlen(t) - 1, &k, why, sizeof why),
                     1);
    assert_int_equal(k.n, 16384);
    assert_int_equal(k.r, 8);
    assert_int_equal(k.p, 1);
    assert_int_equal(k.salt_len, 16);
    assert_int_equal(k.salt[15], 15);
    assert_int_equal(k.pass_len, strlen("correct horse battery staple"));
    assert_memory_equal(k.pass, "correct horse battery staple", k.pass_len);
    const char *raw = "0123456789abcdef0123456789abcdef";
    assert_int_equal(dhps_secret_parse((const uint8_t *)raw, strlen(raw), &k, why, sizeof why),
                     0);
}

#define SALT16 "00112233445566778899aabbccddeeff"
#define PASS ":correct horse battery staple"

static void weak_costs_refused(void **state)
{
    (void)state;
    static const struct {
        const char *file, *want;
    } cases[] = {
        {"scrypt:N=8192,r=8,p=1,salt=" SALT16 PASS, "scrypt N=8192: must be a power of two "
                                                    "from 16384 (the floor"},
        {"scrypt:N=20000,r=8,p=1,salt=" SALT16 PASS, "N=20000: must be a power of two"},
        {"scrypt:N=2097152,r=8,p=1,salt=" SALT16 PASS, "to 1048576"},
        {"scrypt:N=16384,r=4,p=1,salt=" SALT16 PASS, "scrypt r=4: must be 8..32"},
        {"scrypt:N=16384,r=33,p=1,salt=" SALT16 PASS, "scrypt r=33: must be 8..32"},
        {"scrypt:N=16384,r=8,p=0,salt=" SALT16 PASS, "scrypt p=0: must be 1..16"},
        {"scrypt:N=16384,r=8,p=17,salt=" SALT16 PASS, "scrypt p=17: must be 1..16"},
        {"scrypt:N=1048576,r=16,p=1,salt=" SALT16 PASS, "needs 2048 MiB, more than 1024 MiB"},
        {"scrypt:N=16384,r=8,p=1,salt=00112233445566778899aabbccddee" PASS,
         "salt is not 16..64 bytes of hex"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(puts600("cost", cases[i].file),
                       (const char *const[]){cases[i].want, NULL});
}

static void short_passphrases_refused(void **state)
{
    (void)state;
    static const struct {
        const char *file, *want;
    } cases[] = {
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16 ":Tr0ub4dor&3", "passphrase too weak (11 bytes, "
                                                               "10 distinct; at least 16"},
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16 ":abababababababababab", "(20 bytes, 2 distinct"},
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16 ":", "passphrase too weak (0 bytes"},
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16 ":correct horse\nbattery staple",
         "NUL or a line break"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(puts600("short", cases[i].file),
                       (const char *const[]){cases[i].want, "dhps keygen --passphrase", NULL});
    /* a NUL inside */
    static const char nul[] = "scrypt:N=16384,r=8,p=1,salt=" SALT16 ":correct horse\0battery";
    expect_refused(put("nul", nul, sizeof nul - 1, 0600),
                   (const char *const[]){"NUL or a line break", NULL});
}

static void malformed_forms_refused(void **state)
{
    (void)state;
    static const struct {
        const char *file, *want;
    } cases[] = {
        {"scrypt:", "no decimal N= where expected (the form is scrypt:N=<power of 2>,"},
        {"scrypt:N=16384", "no decimal r= where expected"},
        {"scrypt:n=16384,r=8,p=1,salt=" SALT16 PASS, "no decimal N="},
        {"scrypt:N=016384,r=8,p=1,salt=" SALT16 PASS, "no decimal N="},
        {"scrypt:N=+16384,r=8,p=1,salt=" SALT16 PASS, "no decimal N="},
        {"scrypt:N=99999999999,r=8,p=1,salt=" SALT16 PASS, "no decimal N="},
        {"scrypt:r=8,N=16384,p=1,salt=" SALT16 PASS, "no decimal N="},
        {"scrypt:N=16384,r=8,p=1" PASS, "no decimal salt="},
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16, "salt is not 16..64 bytes of hex followed by"},
        {"scrypt:N=16384,r=8,p=1,salt=zz112233445566778899aabbccddeeff" PASS,
         "salt is not 16..64 bytes of hex"},
        {"scrypt:N=16384,r=8,p=1,salt=" SALT16 "0" PASS, "salt is not 16..64 bytes"},
        {"scrypt:N=16384 ,r=8,p=1,salt=" SALT16 PASS, "no decimal r="},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(puts600("bad", cases[i].file),
                       (const char *const[]){cases[i].want, NULL});
}

/* dhps_secret_passphrase_write: 0600, the documented form with a fresh salt each time,
 * loads back; weak input writes nothing; no silent replace. */
static void writer(void **state)
{
    (void)state;
    char path[128], err[600];
    snprintf(path, sizeof path, "%s/written", g_dir);
    unlink(path);
    const char *pass = "correct horse battery staple";
    assert_int_equal(dhps_secret_passphrase_write(path, (const uint8_t *)pass, strlen(pass),
                                                  DHPS_SCRYPT_N_MIN, 8, 1, false, err,
                                                  sizeof err), 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char text[256] = "";
    FILE *f = fopen(path, "r");
    assert_non_null(fgets(text, sizeof text, f));
    fclose(f);
    assert_int_equal(strncmp(text, "scrypt:N=16384,r=8,p=1,salt=", 28), 0);
    assert_int_equal(strspn(text + 28, "0123456789abcdef"), 32);
    assert_string_equal(text + 60, ":correct horse battery staple");
    uint8_t k1[64], k2[64];
    size_t l1, l2;
    assert_int_equal(dhps_secret_load(path, k1, sizeof k1, &l1, err, sizeof err), 0);
    assert_int_equal(dhps_secret_passphrase_write(path, (const uint8_t *)pass, strlen(pass),
                                                  DHPS_SCRYPT_N_MIN, 8, 1, false, err,
                                                  sizeof err), -EEXIST);
    assert_non_null(strstr(err, "exists"));
    assert_int_equal(dhps_secret_passphrase_write(path, (const uint8_t *)pass, strlen(pass),
                                                  DHPS_SCRYPT_N_MIN, 8, 1, true, err,
                                                  sizeof err), 0);
    assert_int_equal(dhps_secret_load(path, k2, sizeof k2, &l2, err, sizeof err), 0);
    assert_int_equal(l1, 32);
    assert_int_equal(l2, 32);
    assert_memory_not_equal(k1, k2, 32); /* another salt: another key */
    char weak[128];
    snprintf(weak, sizeof weak, "%s/weak-written", g_dir);
    assert_int_equal(dhps_secret_passphrase_write(weak, (const uint8_t *)"short", 5,
                                                  DHPS_SCRYPT_N_MIN, 8, 1, false, err,
                                                  sizeof err), DHPS_E_CONFIG);
    assert_non_null(strstr(err, "passphrase too weak (5 bytes"));
    assert_int_equal(dhps_secret_passphrase_write(weak, (const uint8_t *)pass, strlen(pass),
                                                  1024, 8, 1, false, err, sizeof err),
                     DHPS_E_CONFIG);
    assert_non_null(strstr(err, "N=1024"));
    assert_int_equal(access(weak, F_OK), -1);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/dhps-secret-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_secrets),
        cmocka_unit_test(passphrase_known_answers),
        cmocka_unit_test(weak_costs_refused),
        cmocka_unit_test(short_passphrases_refused),
        cmocka_unit_test(malformed_forms_refused),
        cmocka_unit_test(writer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

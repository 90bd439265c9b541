/*
 * Passphrase secrets (issue 12, docs/security.md "The cluster secret"), with the real
 * binaries: `dhps keygen --passphrase` writes a 0600 scrypt file from stdin; a
 * dhps-server and a dhps client (the CLI) given that file talk; a client with another
 * passphrase -- or the same passphrase under another salt -- is refused by the hello;
 * weak passphrases and costs are refused by keygen, by the server (exit 2 naming the
 * file) and by --check-config.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_proc.h"
#include "test_shell.h"

static void server_cfg(const char *dir, const char *secret, char *cfg, size_t len)
{
    char text[2048];
    snprintf(cfg, len, "%s/node.json", dir);
    snprintf(text, sizeof text,
             "{\"node_id\":\"p\",\"listen\":{\"tcp_port\":0},\"tables\":[{\"name\":\"emb\","
             "\"dim\":4}],\"secret_file\":\"%s\",\"metrics\":{\"port\":0},"
             "\"shards\":{\"nshards\":2,\"own\":\"all\"},\"port_file\":\"%s/ports\"}",
             secret, dir);
    t_write(cfg, text, 0600);
}

static void passphrase_client_and_server(void **st)
{
    (void)st;
    char *dir = t_mkdtemp(), cfg[600];
    /* keygen from stdin: 0600, the documented form, the cost reported */
    assert_int_equal(shellf("printf 'correct horse battery staple\\n' | " DHPS_BIN " keygen "
                        "--passphrase %s/pass > %s/keygen.out", dir, dir), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/keygen.out", dir);
    char *out = p_slurp(p);
    assert_non_null(strstr(out, "passphrase file, scrypt N=32768 r=8 p=1 (32 MiB): deriving "
                                "the key took"));
    free(out);
    snprintf(p, sizeof p, "%s/pass", dir);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char *text = p_slurp(p);
    assert_int_equal(strncmp(text, "scrypt:N=32768,r=8,p=1,salt=", 28), 0);
    assert_non_null(strstr(text, ":correct horse battery staple"));
    free(text);
    /* another passphrase; the same passphrase under another salt */
    assert_int_equal(shellf("printf 'correct horse battery stable\\n' | " DHPS_BIN " keygen "
                        "--passphrase %s/other > /dev/null", dir), 0);
    assert_int_equal(shellf("printf 'correct horse battery staple\\n' | " DHPS_BIN " keygen "
                        "--passphrase %s/resalted > /dev/null", dir), 0);
    /* an existing file is not replaced (asked before reading the passphrase) */
    assert_int_equal(shellf(DHPS_BIN " keygen --passphrase %s/pass < /dev/null 2> %s/exists.err",
                        dir, dir), 1);
    snprintf(p, sizeof p, "%s/exists.err", dir);
    out = p_slurp(p);
    assert_non_null(strstr(out, "exists; --force replaces it"));
    free(out);

    snprintf(p, sizeof p, "%s/pass", dir);
    server_cfg(dir, p, cfg, sizeof cfg);
    proc s;
    assert_int_equal(p_start(dir, cfg, &s, true), 0);
    /* the same file: put and get through the client library (the dhps CLI) */
    assert_int_equal(shellf(DHPS_BIN " put 7 1,2,3,4 --addr 127.0.0.1:%u --secret %s/pass "
                        "> /dev/null", s.port, dir), 0);
    assert_int_equal(shellf(DHPS_BIN " get 7 --addr 127.0.0.1:%u --secret %s/pass > %s/get.out",
                        s.port, dir, dir), 0);
    snprintf(p, sizeof p, "%s/get.out", dir);
    out = p_slurp(p);
    assert_non_null(strstr(out, "1,2,3,4"));
    free(out);
    /* another passphrase, another salt: refused by the hello */
    const char *wrong[] = {"other", "resalted"};
    for (int i = 0; i < 2; i++) {
        assert_int_not_equal(shellf(DHPS_BIN " get 7 --addr 127.0.0.1:%u --secret %s/%s "
                                "--timeout-ms 2000 > %s/wrong.out 2>&1", s.port, dir,
                                wrong[i], dir), 0);
        snprintf(p, sizeof p, "%s/wrong.out", dir);
        out = p_slurp(p);
        if (!strstr(out, "auth failed (wrong cluster secret?)"))
            fail_msg("%s: not an auth failure: %s", wrong[i], out);
        free(out);
    }
    /* the server is still serving the right secret */
    assert_int_equal(shellf(DHPS_BIN " get 7 --addr 127.0.0.1:%u --secret %s/pass > /dev/null",
                        s.port, dir), 0);
    kill(s.pid, SIGTERM);
    assert_int_equal(p_wait_exit(s.pid, 20000), 0);
    t_rmdir(dir);
}

static void weak_passphrases_refused(void **st)
{
    (void)st;
    char *dir = t_mkdtemp(), cfg[600], p[600];
    /* keygen: weak passphrase, weak cost, mismatched flags: exit 2, no file */
    assert_int_equal(shellf("printf 'Tr0ub4dor&3\\n' | " DHPS_BIN " keygen --passphrase %s/w "
                        "2> %s/err", dir, dir), 2);
    snprintf(p, sizeof p, "%s/err", dir);
    char *out = p_slurp(p);
    assert_non_null(strstr(out, "passphrase too weak (11 bytes"));
    free(out);
    assert_int_equal(shellf("printf 'correct horse battery staple\\n' | " DHPS_BIN " keygen "
                        "--passphrase %s/w --scrypt-n 1024 2> %s/err", dir, dir), 2);
    out = p_slurp(p);
    assert_non_null(strstr(out, "scrypt N=1024: must be a power of two from 16384"));
    free(out);
    assert_int_equal(shellf(DHPS_BIN " keygen %s/w --scrypt-n 65536 2> %s/err", dir, dir), 2);
    snprintf(p, sizeof p, "%s/w", dir);
    assert_int_equal(access(p, F_OK), -1);
    /* a hand-written weak file: the server and --check-config refuse it, naming it */
    static const struct {
        const char *text, *want;
    } files[] = {
        {"scrypt:N=1024,r=8,p=1,salt=00112233445566778899aabbccddeeff:correct horse battery",
         "scrypt N=1024: must be a power of two"},
        {"scrypt:N=16384,r=8,p=1,salt=00112233445566778899aabbccddeeff:hunter2",
         "passphrase too weak (7 bytes"},
        {"scrypt:N=16384,r=8,salt=00112233445566778899aabbccddeeff:correct horse battery",
         "no decimal p= where expected"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/weak", dir);
        t_write(p, files[i].text, 0600);
        server_cfg(dir, p, cfg, sizeof cfg);
        const char *modes[] = {"--check-config", "--config"};
        for (int m = 0; m < 2; m++) {
            p_stderr_clear(dir);
            pid_t pid = p_spawn(dir, modes[m], cfg);
            assert_int_equal(p_wait_exit(pid, 20000), 2);
            char *log = p_stderr(dir);
            if (!strstr(log, files[i].want) || !strstr(log, p) ||
                !strstr(log, "dhps keygen --passphrase"))
                fail_msg("%s of file %zu: %s", modes[m], i, log);
            free(log);
        }
    }
    t_rmdir(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(passphrase_client_and_server),
        cmocka_unit_test(weak_passphrases_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

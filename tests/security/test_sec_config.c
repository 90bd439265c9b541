/*
 * A careless operator's configs (issue 12, docs/security.md): for each, `dhps-server
 * --check-config` exits 2 naming the problem, exactly as `--config` then would -- it used
 * to say OK for a missing secret_file or snapshot.dir that --config rejected. And a good
 * config passes both.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "srv_proc.h"
#include "test_certs.h"

static char *g_dir;

/* Run dhps-server flag cfg; exit code, stderr appended to dir/stderr.log. */
static int run_flag(const char *flag, const char *cfg)
{
    char lp[600];
    snprintf(lp, sizeof lp, "%s/stderr.log", g_dir);
    unlink(lp);
    return p_wait_exit(p_spawn(g_dir, flag, cfg), 15000);
}

static char *stderr_text(void)
{
    char lp[600];
    snprintf(lp, sizeof lp, "%s/stderr.log", g_dir);
    return p_slurp(lp);
}

/* Write dir/node.json with the secret file, snapshot dir and extra keys given. */
static void config(char *out, size_t cap, const char *secret, const char *snap,
                   const char *extra)
{
    snprintf(out, cap, "%s/node.json", g_dir);
    char text[4096];
    snprintf(text, sizeof text,
             "{\"node_id\":\"c\",\"listen\":{\"tcp_port\":0},\"tables\":[{\"name\":\"emb\","
             "\"dim\":4}],\"secret_file\":\"%s\",\"snapshot\":{\"dir\":\"%s\"},"
             "\"shards\":{\"nshards\":2,\"own\":\"all\"}%s}", secret, snap, extra);
    t_write(out, text, 0600);
}

static void check_config_refuses_what_config_refuses(void **st)
{
    (void)st;
    g_dir = t_mkdtemp();
    char secret[600], snap[600], weak[600], grp[600], cfg[600];
    snprintf(secret, sizeof secret, "%s/secret", g_dir);
    snprintf(snap, sizeof snap, "%s/snap", g_dir);
    snprintf(weak, sizeof weak, "%s/weak", g_dir);
    snprintf(grp, sizeof grp, "%s/grp", g_dir);
    t_write(weak, "dog", 0600);
    t_write(grp, T_SECRET, 0640);
    /* a port that is taken (held by this test) */
    int hold = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(hold, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(hold, 1), 0);
    assert_int_equal(getsockname(hold, (struct sockaddr *)&a, &al), 0);
    char taken[128];
    snprintf(taken, sizeof taken, ",\"metrics\":{\"port\":%u}", ntohs(a.sin_port));
    char nosecret[600], nosnap[600];
    snprintf(nosecret, sizeof nosecret, "%s/none", g_dir);
    snprintf(nosnap, sizeof nosnap, "%s/no-such-dir", g_dir);
    struct {
        const char *secret, *snap, *extra, *want;
    } cases[] = {
        {nosecret, snap, "", "secret_file"},
        {weak, snap, "", "too weak"},
        {grp, snap, "", "lets its group read"},
        {secret, nosnap, "", "snapshot.dir"},
        {secret, snap, taken, "127.0.0.1:"}, /* "metrics.port 127.0.0.1:P" / "metrics 127.0.0.1:P" */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config(cfg, sizeof cfg, cases[i].secret, cases[i].snap, cases[i].extra);
        for (int mode = 0; mode < 2; mode++) {
            int rc = run_flag(mode ? "--config" : "--check-config", cfg);
            char *err = stderr_text();
            if (!strstr(err, cases[i].want))
                fail_msg("case %zu %s: stderr \"%s\" lacks \"%s\"", i,
                         mode ? "--config" : "--check-config", err, cases[i].want);
            free(err);
            /* --check-config: 2; --config: 2 for a config error, 1 for a port taken */
            if (mode == 0 || i != 4)
                assert_int_equal(rc, 2);
            else
                assert_int_equal(rc, 1);
        }
    }
    close(hold);
    /* a good one passes */
    config(cfg, sizeof cfg, secret, snap, "");
    assert_int_equal(run_flag("--check-config", cfg), 0);
    char *out = stderr_text();
    free(out);
    t_rmdir(g_dir);
}

/* TLS files: missing, a key others can read, a key of another certificate, an expired
 * certificate, a CA file that is no certificate: --check-config and --config both exit
 * 2 naming the key and the file; a good TLS config passes. */
static void check_config_refuses_bad_tls_files(void **st)
{
    (void)st;
    g_dir = t_mkdtemp();
    assert_int_equal(test_certs_make(g_dir), 0);
    char secret[600], snap[600], cfg[600], cmd[2048];
    snprintf(secret, sizeof secret, "%s/secret", g_dir);
    snprintf(snap, sizeof snap, "%s/snap", g_dir);
    snprintf(cmd, sizeof cmd, "cp %s/server.key %s/loose.key && chmod 644 %s/loose.key",
             g_dir, g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
    struct {
        const char *cert, *key, *ca, *want;
    } cases[] = {
        {"none.pem", "server.key", "ca.pem", "tls.cert_file"},
        {"server.pem", "loose.key", "ca.pem", "chmod 600"},
        {"server.pem", "client.key", "ca.pem", "does not match the certificate"},
        {"expired.pem", "expired.key", "ca.pem", "has expired"},
        {"server.pem", "server.key", "secret", "tls.ca_file"},
        {"server.pem", "server.key", "ca.pem", NULL}, /* good */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char extra[2048];
        snprintf(extra, sizeof extra,
                 ",\"tls\":{\"policy\":\"always\",\"cert_file\":\"%s/%s\",\"key_file\":"
                 "\"%s/%s\",\"ca_file\":\"%s/%s\"}", g_dir, cases[i].cert, g_dir, cases[i].key,
                 g_dir, cases[i].ca);
        config(cfg, sizeof cfg, secret, snap, extra);
        if (!cases[i].want) {
            assert_int_equal(run_flag("--check-config", cfg), 0);
            continue;
        }
        for (int mode = 0; mode < 2; mode++) {
            int rc = run_flag(mode ? "--config" : "--check-config", cfg);
            char *err = stderr_text();
            if (rc != 2 || !strstr(err, cases[i].want))
                fail_msg("case %zu %s: exit %d, stderr \"%s\" lacks \"%s\"", i,
                         mode ? "--config" : "--check-config", rc, err, cases[i].want);
            free(err);
        }
    }
    t_rmdir(g_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(check_config_refuses_what_config_refuses),
        cmocka_unit_test(check_config_refuses_bad_tls_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

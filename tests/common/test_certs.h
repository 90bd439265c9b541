/* test_certs.h: TLS test certificates made at run time with OpenSSL (no private key is
 * ever committed). test_certs_make(dir) writes, as PEM (keys mode 0600):
 *
 *   ca.pem                      the test CA (self-signed)
 *   server.pem / server.key     signed by ca; SAN IP:127.0.0.1, DNS:dhps.test
 *   dns.pem / dns.key           signed by ca; SAN DNS:dhps.test only (no IP)
 *   client.pem / client.key     signed by ca; SAN DNS:client.dhps.test
 *   other-ca.pem                another CA, nobody's trust anchor
 *   other.pem / other.key       signed by other-ca; SAN IP:127.0.0.1, DNS:dhps.test
 *   expired.pem / expired.key   signed by ca; expired yesterday
 *
 * Every leaf allows serverAuth and clientAuth (a dhps-server dials its peers with its own
 * certificate). Keys are EC P-256. Used by the rpc and security tests and the TLS fuzz
 * target (which builds its contexts from these files with the library's own loaders). */
#ifndef DHPS_TEST_CERTS_H
#define DHPS_TEST_CERTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static inline int tc_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e)
        return -1;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* A certificate for key named cn, signed by issuer/ikey (NULL: self-signed), valid from
 * from_s to to_s seconds around now; ca or a leaf with san. NULL on failure. */
static inline X509 *tc_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey,
                            bool ca, const char *san, long from_s, long to_s, uint64_t serial)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    X509_set_version(x, 2);
    ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), from_s);
    X509_gmtime_adj(X509_getm_notAfter(x), to_s);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"dhps test", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    int bad = tc_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (issuer || ca)
        bad |= tc_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    if (ca) {
        bad |= tc_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE");
        bad |= tc_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        bad |= tc_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
        bad |= tc_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
        bad |= tc_ext(x, issuer, NID_ext_key_usage, "serverAuth,clientAuth");
        if (san)
            bad |= tc_ext(x, issuer, NID_subject_alt_name, san);
    }
    if (bad || !X509_sign(x, ikey ? ikey : key, EVP_sha256())) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static inline int tc_write(const char *dir, const char *name, X509 *x, EVP_PKEY *k)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.pem", dir, name);
    FILE *f = fopen(p, "w");
    int ok = f && PEM_write_X509(f, x);
    if (f)
        fclose(f);
    if (!ok || !k)
        return ok ? 0 : -1;
    snprintf(p, sizeof p, "%s/%s.key", dir, name);
    f = fopen(p, "w");
    if (!f)
        return -1;
    fchmod(fileno(f), 0600);
    ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    return ok ? 0 : -1;
}

/* Write the set above into dir (existing). 0 or -1. Thread-safe; ~10 ms. */
static inline int test_certs_make(const char *dir)
{
    static const struct {
        const char *name, *cn, *san;
        int issuer; /* 0 ca, 1 other-ca */
        long from_s, to_s;
    } leaf[] = {
        {"server", "dhps server", "IP:127.0.0.1,DNS:dhps.test", 0, -3600, 86400},
        {"dns", "dhps server by name", "DNS:dhps.test", 0, -3600, 86400},
        {"client", "dhps client", "DNS:client.dhps.test", 0, -3600, 86400},
        {"other", "impostor", "IP:127.0.0.1,DNS:dhps.test", 1, -3600, 86400},
        {"expired", "dhps server, expired", "IP:127.0.0.1", 0, -2 * 86400, -86400},
    };
    EVP_PKEY *cak[2] = {EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
                        EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")};
    X509 *ca[2] = {NULL, NULL};
    int rc = -1;
    if (!cak[0] || !cak[1])
        goto out;
    ca[0] = tc_cert(cak[0], "dhps test CA", NULL, NULL, true, NULL, -3600, 86400, 1);
    ca[1] = tc_cert(cak[1], "dhps other CA", NULL, NULL, true, NULL, -3600, 86400, 2);
    if (!ca[0] || !ca[1] || tc_write(dir, "ca", ca[0], NULL) ||
        tc_write(dir, "other-ca", ca[1], NULL))
        goto out;
    for (size_t i = 0; i < sizeof leaf / sizeof leaf[0]; i++) {
        EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        int is = leaf[i].issuer;
        X509 *x = k ? tc_cert(k, leaf[i].cn, ca[is], cak[is], false, leaf[i].san,
                              leaf[i].from_s, leaf[i].to_s, 10 + i)
                    : NULL;
        int w = x ? tc_write(dir, leaf[i].name, x, k) : -1;
        X509_free(x);
        EVP_PKEY_free(k);
        if (w)
            goto out;
    }
    rc = 0;
out:
    X509_free(ca[0]);
    X509_free(ca[1]);
    EVP_PKEY_free(cak[0]);
    EVP_PKEY_free(cak[1]);
    return rc;
}

/* dir/name into out (a path buffer of cap bytes); returns out. */
static inline const char *tc_path(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
    return out;
}

#endif

/* The cluster secret file: parse, derive, load, write. See secret.h. */
#define _GNU_SOURCE
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "dhps/error.h"

#define FORM DHPS_SCRYPT_PREFIX "N=<power of 2>,r=<n>,p=<n>,salt=<hex>:<passphrase>"

static unsigned distinct_bytes(const uint8_t *b, size_t n)
{
    bool seen[256] = {false};
    unsigned d = 0;
    for (size_t i = 0; i < n; i++)
        if (!seen[b[i]]) {
            seen[b[i]] = true;
            d++;
        }
    return d;
}

/* "<key>=<decimal>" at *p (no sign, no leading zero, at most 10 digits). */
static bool field_num(const uint8_t **p, const uint8_t *end, const char *key, uint64_t *v)
{
    size_t kl = strlen(key);
    if ((size_t)(end - *p) < kl || memcmp(*p, key, kl))
        return false;
    const uint8_t *s = *p + kl, *q = s;
    uint64_t x = 0;
    while (q < end && *q >= '0' && *q <= '9' && q - s < 10)
        x = x * 10 + (uint64_t)(*q++ - '0');
    if (q == s || (*s == '0' && q - s > 1) || (q < end && *q >= '0' && *q <= '9'))
        return false;
    *v = x;
    *p = q;
    return true;
}

static int hexval(uint8_t h)
{
    return h >= '0' && h <= '9'   ? h - '0'
           : h >= 'a' && h <= 'f' ? h - 'a' + 10
           : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                  : -1;
}

static int parse_kdf(const uint8_t *text, size_t len, dhps_secret_kdf *k, char *why,
                     size_t whylen)
{
    const uint8_t *p = text + strlen(DHPS_SCRYPT_PREFIX), *end = text + len;
    uint64_t n, r, pp;
    memset(k, 0, sizeof *k);
    const char *bad = NULL;
    if (!field_num(&p, end, "N=", &n))
        bad = "N=";
    else if (!field_num(&p, end, ",r=", &r))
        bad = "r=";
    else if (!field_num(&p, end, ",p=", &pp))
        bad = "p=";
    else if ((size_t)(end - p) < 6 || memcmp(p, ",salt=", 6))
        bad = "salt=";
    if (bad) {
        snprintf(why, whylen, "a passphrase file, but no decimal %s where expected (the form "
                 "is " FORM ")", bad);
        return DHPS_E_CONFIG;
    }
    p += 6;
    const uint8_t *hs = p;
    while (p < end && hexval(*p) >= 0)
        p++;
    size_t hexlen = (size_t)(p - hs);
    if (p == end || *p != ':' || hexlen % 2 || hexlen < 2 * DHPS_SECRET_SALT_MIN ||
        hexlen > 2 * DHPS_SECRET_SALT_MAX) {
        snprintf(why, whylen, "a passphrase file, but the salt is not %u..%u bytes of hex "
                 "followed by ':' (the form is " FORM ")", DHPS_SECRET_SALT_MIN,
                 DHPS_SECRET_SALT_MAX);
        return DHPS_E_CONFIG;
    }
    for (size_t i = 0; i < hexlen / 2; i++)
        k->salt[i] = (uint8_t)(hexval(hs[2 * i]) << 4 | hexval(hs[2 * i + 1]));
    k->salt_len = hexlen / 2;
    p++; /* ':' */
    if (n < DHPS_SCRYPT_N_MIN || n > DHPS_SCRYPT_N_MAX || (n & (n - 1))) {
        snprintf(why, whylen, "scrypt N=%llu: must be a power of two from %u (the floor: "
                 "below it a guess costs too little) to %u", (unsigned long long)n,
                 DHPS_SCRYPT_N_MIN, DHPS_SCRYPT_N_MAX);
        return DHPS_E_CONFIG;
    }
    if (r < DHPS_SCRYPT_R_MIN || r > DHPS_SCRYPT_R_MAX) {
        snprintf(why, whylen, "scrypt r=%llu: must be %u..%u", (unsigned long long)r,
                 DHPS_SCRYPT_R_MIN, DHPS_SCRYPT_R_MAX);
        return DHPS_E_CONFIG;
    }
    if (pp < DHPS_SCRYPT_P_MIN || pp > DHPS_SCRYPT_P_MAX) {
        snprintf(why, whylen, "scrypt p=%llu: must be %u..%u", (unsigned long long)pp,
                 DHPS_SCRYPT_P_MIN, DHPS_SCRYPT_P_MAX);
        return DHPS_E_CONFIG;
    }
    if (128ull * r * n > DHPS_SCRYPT_MEM_MAX) {
        snprintf(why, whylen, "scrypt N=%llu r=%llu needs %llu MiB, more than %llu MiB",
                 (unsigned long long)n, (unsigned long long)r,
                 (unsigned long long)((128ull * r * n) >> 20), DHPS_SCRYPT_MEM_MAX >> 20);
        return DHPS_E_CONFIG;
    }
    k->n = (uint32_t)n;
    k->r = (uint32_t)r;
    k->p = (uint32_t)pp;
    k->pass = p;
    k->pass_len = (size_t)(end - p);
    if (memchr(p, 0, k->pass_len) || memchr(p, '\n', k->pass_len) ||
        memchr(p, '\r', k->pass_len)) {
        snprintf(why, whylen, "the passphrase holds a NUL or a line break (one line)");
        return DHPS_E_CONFIG;
    }
    unsigned d = distinct_bytes(p, k->pass_len);
    if (k->pass_len < DHPS_PASSPHRASE_MIN_BYTES || d < DHPS_PASSPHRASE_MIN_DISTINCT) {
        snprintf(why, whylen, "passphrase too weak (%zu bytes, %u distinct; at least %u bytes "
                 "and %u distinct are needed: 4 or more random words)", k->pass_len, d,
                 DHPS_PASSPHRASE_MIN_BYTES, DHPS_PASSPHRASE_MIN_DISTINCT);
        return DHPS_E_CONFIG;
    }
    return 1;
}

int dhps_secret_parse(const uint8_t *text, size_t len, dhps_secret_kdf *kdf, char *why,
                      size_t whylen)
{
    size_t pl = strlen(DHPS_SCRYPT_PREFIX);
    if (len >= pl && !memcmp(text, DHPS_SCRYPT_PREFIX, pl)) {
        int rc = parse_kdf(text, len, kdf, why, whylen);
        if (rc < 0)
            memset(kdf, 0, sizeof *kdf);
        return rc;
    }
    if (len == 0) {
        snprintf(why, whylen, "empty (the cluster secret must not be empty)");
        return DHPS_E_CONFIG;
    }
    unsigned d = distinct_bytes(text, len);
    if (len < DHPS_SECRET_MIN_BYTES || d < DHPS_SECRET_MIN_DISTINCT) {
        snprintf(why, whylen, "too weak (%zu bytes, %u distinct; at least %u bytes and %u "
                 "distinct are needed)", len, d, DHPS_SECRET_MIN_BYTES,
                 DHPS_SECRET_MIN_DISTINCT);
        return DHPS_E_CONFIG;
    }
    return 0;
}

int dhps_secret_derive(const dhps_secret_kdf *kdf, uint8_t *key)
{
    uint64_t mem = 128ull * kdf->r * ((uint64_t)kdf->n + kdf->p + 2);
    if (EVP_PBE_scrypt((const char *)kdf->pass, kdf->pass_len, kdf->salt, kdf->salt_len,
                       kdf->n, kdf->r, kdf->p, mem + (64u << 10), key,
                       DHPS_SECRET_KEY_BYTES) != 1) {
        explicit_bzero(key, DHPS_SECRET_KEY_BYTES);
        return mem > DHPS_SCRYPT_MEM_MAX + (1u << 20) ? -EINVAL : -ENOMEM;
    }
    return 0;
}

int dhps_private_file_check_fd(int fd, const char *path, const char *what, const char *why,
                               char *err, size_t errlen)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    if (sb.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
        snprintf(err, errlen, "%s %s: mode %04o lets %s read or change it; %s: chmod 600 %s",
                 what, path, (unsigned)(sb.st_mode & 07777),
                 sb.st_mode & (S_IROTH | S_IWOTH) ? "any user" : "its group", why, path);
        return DHPS_E_CONFIG;
    }
    return 0;
}

int dhps_private_file_check(const char *path, const char *what, const char *why, char *err,
                            size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    int rc = dhps_private_file_check_fd(fd, path, what, why, err, errlen);
    close(fd);
    return rc;
}

int dhps_secret_load(const char *path, uint8_t *buf, size_t cap, size_t *len, char *err,
                     size_t errlen)
{
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    if (dhps_private_file_check_fd(fd, path, "secret file",
                                   "the cluster secret authenticates every peer", err,
                                   errlen)) {
        close(fd);
        return DHPS_E_CONFIG;
    }
    uint8_t tmp[DHPS_SECRET_FILE_MAX + 1];
    size_t n = 0;
    int rc = 0;
    for (;;) { /* one byte more than the most allowed: a longer file is refused */
        ssize_t k = read(fd, tmp + n, sizeof tmp - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
            rc = DHPS_E_CONFIG;
            goto out;
        }
        if (k == 0 || (n += (size_t)k) == sizeof tmp)
            break;
    }
    if (n > DHPS_SECRET_FILE_MAX) {
        snprintf(err, errlen, "secret file %s: longer than %u bytes", path,
                 DHPS_SECRET_FILE_MAX);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    while (n && (tmp[n - 1] == '\n' || tmp[n - 1] == '\r'))
        n--;
    dhps_secret_kdf kdf;
    char why[400];
    int form = dhps_secret_parse(tmp, n, &kdf, why, sizeof why);
    if (form < 0) {
        snprintf(err, errlen, "secret file %s: %s; `dhps keygen %s` writes a random secret, "
                 "`dhps keygen --passphrase %s` a passphrase file", path, why, path, path);
        rc = form;
        goto out;
    }
    if (form == 0 && n > cap) {
        snprintf(err, errlen, "secret file %s: longer than %zu bytes", path, cap);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    if (!buf)
        goto out; /* checked, not derived */
    if (form == 0) {
        memcpy(buf, tmp, n);
        *len = n;
    } else if (cap < DHPS_SECRET_KEY_BYTES) {
        snprintf(err, errlen, "secret file %s: its key (%u bytes) does not fit in %zu", path,
                 DHPS_SECRET_KEY_BYTES, cap);
        rc = DHPS_E_CONFIG;
    } else if ((rc = dhps_secret_derive(&kdf, buf)) != 0) {
        snprintf(err, errlen, "secret file %s: scrypt N=%u r=%u p=%u: %s", path, kdf.n, kdf.r,
                 kdf.p, strerror(-rc));
        rc = DHPS_E_CONFIG;
    } else {
        *len = DHPS_SECRET_KEY_BYTES;
    }
out:
    explicit_bzero(tmp, sizeof tmp);
    close(fd);
    return rc;
}

/* Write text[0..len) to path, 0600, fsync'ed: O_EXCL, or (replace) beside it and renamed
 * over it. 0 or -errno. */
static int write_secret_file(const char *path, const char *text, size_t len, bool replace)
{
    char tmp[4096];
    const char *dst = path;
    if (replace) {
        if (snprintf(tmp, sizeof tmp, "%s.new-%d", path, (int)getpid()) >= (int)sizeof tmp)
            return -ENAMETOOLONG;
        dst = tmp;
    }
    int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fchmod(fd, 0600) != 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) != 0)
        rc = errno ? -errno : -EIO;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && replace && rename(tmp, path) != 0)
        rc = -errno;
    if (rc && dst != path)
        unlink(tmp);
    else if (rc)
        unlink(path);
    return rc;
}

static int random_bytes(uint8_t *b, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = getrandom(b + got, n - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        got += (size_t)k;
    }
    return 0;
}

int dhps_secret_generate(const char *path, bool replace)
{
    uint8_t rnd[32];
    int rc = random_bytes(rnd, sizeof rnd);
    if (rc)
        return rc;
    char text[2 * sizeof rnd + 1];
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(text + 2 * i, 3, "%02x", rnd[i]);
    explicit_bzero(rnd, sizeof rnd);
    /* no newline: readers that take the bytes as they are (not dhps_secret_load) see the
     * same secret */
    rc = write_secret_file(path, text, 2 * sizeof rnd, replace);
    explicit_bzero(text, sizeof text);
    return rc;
}

int dhps_secret_passphrase_write(const char *path, const uint8_t *pass, size_t pass_len,
                                 uint32_t n, uint32_t r, uint32_t p, bool replace, char *err,
                                 size_t errlen)
{
    uint8_t salt[DHPS_SECRET_SALT_DEFAULT];
    int rc = random_bytes(salt, sizeof salt);
    if (rc) {
        snprintf(err, errlen, "getrandom: %s", strerror(-rc));
        return rc;
    }
    char text[DHPS_SECRET_FILE_MAX + 1];
    int k = snprintf(text, sizeof text, DHPS_SCRYPT_PREFIX "N=%u,r=%u,p=%u,salt=", n, r, p);
    for (size_t i = 0; i < sizeof salt; i++)
        k += snprintf(text + k, sizeof text - (size_t)k, "%02x", salt[i]);
    k += snprintf(text + k, sizeof text - (size_t)k, ":");
    dhps_secret_kdf kdf;
    char why[400];
    if (pass_len > DHPS_SECRET_FILE_MAX - (size_t)k) {
        snprintf(err, errlen, "passphrase longer than %zu bytes",
                 DHPS_SECRET_FILE_MAX - (size_t)k);
        return DHPS_E_CONFIG;
    }
    memcpy(text + k, pass, pass_len);
    size_t len = (size_t)k + pass_len;
    if (dhps_secret_parse((const uint8_t *)text, len, &kdf, why, sizeof why) != 1) {
        snprintf(err, errlen, "%s", why);
        rc = DHPS_E_CONFIG;
    } else if ((rc = write_secret_file(path, text, len, replace)) != 0) {
        snprintf(err, errlen, "%s: %s", path, rc == -EEXIST ? "exists" : strerror(-rc));
    }
    explicit_bzero(text, sizeof text);
    return rc;
}

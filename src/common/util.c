/* The out-of-line parts of util.h: the Zipf sampler, the private-file mode check and the
 * secret file reader/writer. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "dhps/error.h"

/* log1p(x)/x and expm1(x)/x, stable (and continuous) near 0 */
static double log1p_x(double x)
{
    return fabs(x) > 1e-8 ? log1p(x) / x : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

static double expm1_x(double x)
{
    return fabs(x) > 1e-8 ? expm1(x) / x : 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x));
}

/* h(x) = x^-s */
static double zipf_h(const dhps_zipf *z, double x) { return exp(-z->s * log(x)); }

/* H(x): an antiderivative of h (shifted so it is continuous at s = 1). */
static double zipf_H(const dhps_zipf *z, double x)
{
    double lx = log(x);
    return expm1_x((1.0 - z->s) * lx) * lx;
}

static double zipf_Hinv(const dhps_zipf *z, double x)
{
    double t = x * (1.0 - z->s);
    if (t < -1.0)
        t = -1.0;
    return exp(log1p_x(t) * x);
}

void dhps_zipf_init(dhps_zipf *z, uint64_t n, double s)
{
    z->s = s;
    z->n = (double)(n ? n : 1);
    z->h_x1 = zipf_H(z, 1.5) - 1.0;
    z->h_n = zipf_H(z, z->n + 0.5);
    z->cut = 2.0 - zipf_Hinv(z, zipf_H(z, 2.5) - zipf_h(z, 2.0));
}

uint64_t dhps_zipf_next(const dhps_zipf *z, uint64_t *rng)
{
    for (;;) {
        double u = z->h_n + dhps_rand_unit(rng) * (z->h_x1 - z->h_n);
        double x = zipf_Hinv(z, u);
        double k = floor(x + 0.5);
        if (k < 1.0)
            k = 1.0;
        else if (k > z->n)
            k = z->n;
        if (k - x <= z->cut || u >= zipf_H(z, k + 0.5) - zipf_h(z, k))
            return (uint64_t)k - 1;
    }
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
    uint8_t tmp[4096 + 2];
    size_t n = 0, want = cap + 2 < sizeof tmp ? cap + 2 : sizeof tmp; /* room for "\r\n" */
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, tmp + n, want - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
            rc = DHPS_E_CONFIG;
            goto out;
        }
        if (k == 0 || (n += (size_t)k) == want)
            break;
    }
    if (n == want) { /* more may follow: a longer file is too long whatever it ends with */
        uint8_t more;
        ssize_t k = read(fd, &more, 1);
        if (k > 0) {
            snprintf(err, errlen, "secret file %s: longer than %zu bytes", path, cap);
            rc = DHPS_E_CONFIG;
            goto out;
        }
    }
    while (n && (tmp[n - 1] == '\n' || tmp[n - 1] == '\r'))
        n--;
    if (n == 0) {
        snprintf(err, errlen, "secret file %s: empty (the cluster secret must not be empty)",
                 path);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    if (n > cap) {
        snprintf(err, errlen, "secret file %s: longer than %zu bytes", path, cap);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    bool seen[256] = {false};
    unsigned distinct = 0;
    for (size_t i = 0; i < n; i++)
        if (!seen[tmp[i]]) {
            seen[tmp[i]] = true;
            distinct++;
        }
    if (n < DHPS_SECRET_MIN_BYTES || distinct < DHPS_SECRET_MIN_DISTINCT) {
        snprintf(err, errlen, "secret file %s: too weak (%zu bytes, %u distinct; at least %u "
                 "bytes and %u distinct are needed): write a random one with `dhps keygen "
                 "%s`", path, n, distinct, DHPS_SECRET_MIN_BYTES, DHPS_SECRET_MIN_DISTINCT,
                 path);
        rc = DHPS_E_CONFIG;
        goto out;
    }
    memcpy(buf, tmp, n);
    *len = n;
out:
    memset(tmp, 0, sizeof tmp);
    close(fd);
    return rc;
}

int dhps_secret_generate(const char *path, bool replace)
{
    uint8_t rnd[32];
    size_t got = 0;
    while (got < sizeof rnd) {
        ssize_t k = getrandom(rnd + got, sizeof rnd - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        got += (size_t)k;
    }
    char text[2 * sizeof rnd + 1];
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(text + 2 * i, 3, "%02x", rnd[i]);
    memset(rnd, 0, sizeof rnd);
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
    size_t tl = 2 * sizeof rnd; /* no newline: readers that take the bytes as they are
                                   (not dhps_secret_load) see the same secret */
    if (fchmod(fd, 0600) != 0 || write(fd, text, tl) != (ssize_t)tl ||
        fsync(fd) != 0)
        rc = errno ? -errno : -EIO;
    memset(text, 0, sizeof text);
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

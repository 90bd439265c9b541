/* The out-of-line parts of util.h: the Zipf sampler and the secret file reader. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
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

int dhps_secret_load(const char *path, uint8_t *buf, size_t cap, size_t *len,
                     bool *world_readable, char *err, size_t errlen)
{
    *len = 0;
    if (world_readable)
        *world_readable = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
        return DHPS_E_CONFIG;
    }
    struct stat sb;
    if (world_readable && fstat(fd, &sb) == 0 && (sb.st_mode & S_IROTH))
        *world_readable = true;
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
    memcpy(buf, tmp, n);
    *len = n;
out:
    memset(tmp, 0, sizeof tmp);
    close(fd);
    return rc;
}

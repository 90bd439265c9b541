/* The out-of-line parts of util.h: the Zipf sampler. */
#include "util.h"

#include <math.h>

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

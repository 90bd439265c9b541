/* Shared helpers of the dhps service subcommands (contracts in tools.h). */
#include "tools.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tools_file_map(const char *path, tools_file *f)
{
    f->data = NULL;
    f->len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        goto out;
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            rc = -errno;
            goto out;
        }
        madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
        f->data = p;
        f->len = (size_t)st.st_size;
    }
out:
    close(fd);
    return rc;
}

void tools_file_unmap(tools_file *f)
{
    if (f && f->data)
        munmap((void *)f->data, f->len);
    if (f) {
        f->data = NULL;
        f->len = 0;
    }
}

bool tools_parse_u64(const char *cmd, const char *what, const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        goto bad;
    unsigned long long x = strtoull(s, &end, 0);
    if (errno)
        goto bad;
    uint64_t mul = 1;
    if (*end == 'k' || *end == 'K')
        mul = 1000, end++;
    else if (*end == 'm' || *end == 'M')
        mul = 1000000, end++;
    else if (*end == 'g' || *end == 'G')
        mul = 1000000000, end++;
    if (*end || (x && mul > UINT64_MAX / x))
        goto bad;
    *v = (uint64_t)x * mul;
    return true;
bad:
    fprintf(stderr, "dhps %s: bad %s '%s'\n", cmd, what, s ? s : "");
    return false;
}

/* ---- progress ----------------------------------------------------------------------- */

void tools_progress_init(tools_progress *p, const char *label)
{
    p->tty = isatty(STDERR_FILENO) == 1;
    p->label = label;
    p->start_ns = p->last_ns = dhps_mono_ns();
}

void tools_progress_update(void *arg, uint64_t done, uint64_t total)
{
    tools_progress *p = arg;
    if (!p->tty)
        return;
    uint64_t now = dhps_mono_ns();
    if (done < total && now - p->last_ns < 100000000ull)
        return;
    p->last_ns = now;
    int width = 30, fill = total ? (int)((double)done / (double)total * width) : width;
    double s = (double)(now - p->start_ns) / 1e9;
    fprintf(stderr, "\r%s [%.*s%*s] %llu/%llu %.0f/s ", p->label, fill,
            "##############################", width - fill, "", (unsigned long long)done,
            (unsigned long long)total, s > 0 ? (double)done / s : 0.0);
    fflush(stderr);
}

void tools_progress_done(tools_progress *p)
{
    if (p->tty)
        fputc('\n', stderr);
}

/* ---- histogram ---------------------------------------------------------------------- */

void tools_hist_add(tools_hist *h, uint64_t v)
{
    if (v >= (1ull << 41))
        v = (1ull << 41) - 1;
    unsigned idx;
    if (v < TOOLS_HIST_SUB) {
        idx = (unsigned)v;
    } else {
        unsigned e = 63u - (unsigned)__builtin_clzll(v);
        idx = (e - 3) * TOOLS_HIST_SUB + (unsigned)((v >> (e - 4)) & (TOOLS_HIST_SUB - 1));
    }
    h->b[idx]++;
    h->n++;
    h->sum += v;
}

void tools_hist_merge(tools_hist *into, const tools_hist *from)
{
    into->n += from->n;
    into->sum += from->sum;
    for (unsigned i = 0; i < TOOLS_HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
}

uint64_t tools_hist_quantile(const tools_hist *h, double q)
{
    if (!h->n)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->n), seen = 0;
    if (rank < 1)
        rank = 1;
    for (unsigned i = 0; i < TOOLS_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            if (i < TOOLS_HIST_SUB)
                return i;
            unsigned e = i / TOOLS_HIST_SUB + 3, sub = i % TOOLS_HIST_SUB;
            uint64_t lo = (uint64_t)(TOOLS_HIST_SUB + sub) << (e - 4), w = 1ull << (e - 4);
            return lo + w / 2;
        }
    }
    return 0;
}

/* ---- random ------------------------------------------------------------------------- */

uint64_t tools_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rnd01(uint64_t *s) { return (double)(tools_rand(s) >> 11) * 0x1.0p-53; }

/* (exp(x) - 1) / x and log1p(x) / x, continuous at 0 */
static double expm1_x(double x) { return fabs(x) > 1e-8 ? expm1(x) / x : 1.0 + x / 2; }
static double log1p_x(double x) { return fabs(x) > 1e-8 ? log1p(x) / x : 1.0 - x / 2; }

static double zh(const tools_zipf *z, double x) { return exp(-z->s * log(x)); }
static double zH(const tools_zipf *z, double x)
{
    double lx = log(x);
    return expm1_x((1.0 - z->s) * lx) * lx;
}
static double zHinv(const tools_zipf *z, double x)
{
    double t = x * (1.0 - z->s);
    if (t < -1.0)
        t = -1.0;
    return exp(log1p_x(t) * x);
}

void tools_zipf_init(tools_zipf *z, uint64_t n, double s)
{
    z->s = s;
    z->n = (double)(n ? n : 1);
    z->h_x1 = zH(z, 1.5) - 1.0;
    z->h_n = zH(z, z->n + 0.5);
    z->hd = 2.0 - zHinv(z, zH(z, 2.5) - zh(z, 2.0));
}

uint64_t tools_zipf_next(const tools_zipf *z, uint64_t *rng)
{
    for (;;) {
        double u = z->h_n + rnd01(rng) * (z->h_x1 - z->h_n);
        double x = zHinv(z, u);
        double k = floor(x + 0.5);
        if (k < 1)
            k = 1;
        else if (k > z->n)
            k = z->n;
        if (k - x <= z->hd || u >= zH(z, k + 0.5) - zh(z, k))
            return (uint64_t)k - 1;
    }
}

void tools_sample_row(uint64_t key, uint32_t dim, float *out)
{
    uint64_t s = key * 0xD1B54A32D192ED03ull + 1;
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)((double)(tools_rand(&s) >> 40) * 0x1.0p-23 - 1.0);
}

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

/* ---- CPU lists ---------------------------------------------------------------------- */

/* A decimal CPU number at *p (digits only), advanced past it; false when there is none. */
static bool cpu_number(const char **p, uint64_t *v)
{
    const char *s = *p;
    uint64_t x = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++)
        x = x > 100000000ull ? x : x * 10 + (uint64_t)(*s - '0'); /* saturates: too big */
    *p = s;
    *v = x;
    return true;
}

int tools_parse_cpu_list(const char *s, uint32_t ncpu, bool *in, char *why, size_t whylen)
{
    if (ncpu)
        memset(in, 0, ncpu * sizeof *in);
    if (!s || !*s) {
        snprintf(why, whylen, "an empty CPU list");
        return -1;
    }
    const char *p = s;
    for (;;) {
        uint64_t a, b;
        if (!cpu_number(&p, &a)) {
            if (*p)
                snprintf(why, whylen, "a CPU number expected at '%s'", p);
            else
                snprintf(why, whylen, "a CPU number expected after the last ','");
            return -1;
        }
        b = a;
        if (*p == '-') {
            p++;
            if (!cpu_number(&p, &b)) {
                snprintf(why, whylen, "range %llu- has no end CPU number", (unsigned long long)a);
                return -1;
            }
            if (b < a) {
                snprintf(why, whylen, "range %llu-%llu runs backwards", (unsigned long long)a,
                         (unsigned long long)b);
                return -1;
            }
        }
        if (b >= ncpu) {
            snprintf(why, whylen, "CPU %llu is past this machine's %u CPUs (0-%u)",
                     (unsigned long long)b, ncpu, ncpu ? ncpu - 1 : 0);
            return -1;
        }
        for (uint64_t c = a; c <= b; c++)
            in[c] = true;
        if (!*p)
            break;
        if (*p != ',') {
            snprintf(why, whylen, "unexpected '%c' (a list is N, N-M or N,M,...)", *p);
            return -1;
        }
        p++;
    }
    int n = 0;
    for (uint32_t c = 0; c < ncpu; c++)
        n += in[c];
    return n;
}

size_t tools_format_cpu_list(const bool *in, uint32_t ncpu, char *out, size_t cap)
{
    size_t len = 0;
    if (cap)
        out[0] = 0;
    for (uint32_t c = 0; c < ncpu; c++) {
        if (!in[c])
            continue;
        uint32_t e = c;
        while (e + 1 < ncpu && in[e + 1])
            e++;
        char item[32];
        int k = e > c ? snprintf(item, sizeof item, "%s%u-%u", len ? "," : "", c, e)
                      : snprintf(item, sizeof item, "%s%u", len ? "," : "", c);
        if (cap && len + 1 < cap)
            snprintf(out + len, cap - len, "%s", item);
        len += (size_t)k;
        c = e;
    }
    return len;
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

/* ---- sample rows -------------------------------------------------------------------- */

void tools_sample_row(uint64_t key, uint32_t dim, float *out)
{
    uint64_t s = key * 0xD1B54A32D192ED03ull + 1;
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)((double)(dhps_splitmix64(&s) >> 40) * 0x1.0p-23 - 1.0);
}

/* Table file parsers for `dhps load` (contracts in tablefile.h). */
#include "tablefile.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <xxhash.h>

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- binary format ------------------------------------------------------------------ */

size_t tf_bin_size(uint32_t dtype, uint32_t dim, uint64_t count)
{
    uint32_t es = tf_dtype_size(dtype);
    if (!es || dim == 0 || (uint64_t)dim * es > TF_MAX_ROW_BYTES)
        return 0;
    uint64_t per = 8 + (uint64_t)dim * es;
    if (count > (SIZE_MAX - TF_BIN_HDR - 8) / per)
        return 0;
    return TF_BIN_HDR + count * per + 8;
}

int tf_bin_parse(const void *buf, size_t len, bool verify_checksum, tf_table *t)
{
    if (!buf || !t)
        return -EINVAL;
    const uint8_t *p = buf;
    if (len < TF_BIN_HDR + 8 || memcmp(p, TF_BIN_MAGIC, 8) != 0)
        return DHPS_E_CORRUPT;
    uint32_t version = rd32(p + 8), dtype = rd32(p + 12), dim = rd32(p + 24);
    uint32_t flags = rd32(p + 28);
    uint64_t count = tf_u64le(p + 16);
    if (version != TF_BIN_VERSION || flags != 0)
        return DHPS_E_VERSION;
    for (unsigned i = 32; i < TF_BIN_HDR; i++)
        if (p[i])
            return DHPS_E_CORRUPT;
    size_t want = tf_bin_size(dtype, dim, count);
    if (want == 0 || want != len)
        return DHPS_E_CORRUPT;
    if (verify_checksum && XXH64(p, len - 8, 0) != tf_u64le(p + len - 8))
        return DHPS_E_CORRUPT;
    t->dtype = dtype;
    t->dim = dim;
    t->row_bytes = dim * tf_dtype_size(dtype);
    t->count = count;
    t->keys = p + TF_BIN_HDR;
    t->rows = p + TF_BIN_HDR + count * 8;
    return 0;
}

long tf_bin_write(void *out, size_t cap, uint32_t dtype, uint32_t dim, uint64_t count,
                  const uint64_t *keys, const void *rows)
{
    size_t n = tf_bin_size(dtype, dim, count);
    if (!out || n == 0 || n > cap || n > (size_t)LONG_MAX || (count && (!keys || !rows)))
        return -EINVAL;
    uint8_t *p = out;
    memset(p, 0, TF_BIN_HDR);
    memcpy(p, TF_BIN_MAGIC, 8);
    wr32(p + 8, TF_BIN_VERSION);
    wr32(p + 12, dtype);
    wr64(p + 16, count);
    wr32(p + 24, dim);
    for (uint64_t i = 0; i < count; i++)
        wr64(p + TF_BIN_HDR + 8 * i, keys[i]);
    size_t rb = (size_t)dim * tf_dtype_size(dtype);
    if (count)
        memcpy(p + TF_BIN_HDR + count * 8, rows, count * rb);
    wr64(p + n - 8, XXH64(p, n - 8, 0));
    return (long)n;
}

/* ---- .npy header ------------------------------------------------------------------- */

/* A cursor over the header dict text. */
struct cur {
    const char *s, *end;
};

static void skip_ws(struct cur *c)
{
    while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\n' || *c->s == '\r'))
        c->s++;
}

static bool eat(struct cur *c, char ch)
{
    skip_ws(c);
    if (c->s < c->end && *c->s == ch) {
        c->s++;
        return true;
    }
    return false;
}

/* A quoted string ('...' or "...", no escapes: numpy never writes any) into out. */
static bool parse_str(struct cur *c, char *out, size_t cap)
{
    skip_ws(c);
    if (c->s >= c->end || (*c->s != '\'' && *c->s != '"'))
        return false;
    char q = *c->s++;
    size_t n = 0;
    while (c->s < c->end && *c->s != q) {
        if (*c->s == '\\' || n + 1 >= cap)
            return false;
        out[n++] = *c->s++;
    }
    if (c->s >= c->end)
        return false;
    c->s++;
    out[n] = 0;
    return true;
}

static bool parse_word(struct cur *c, const char *w)
{
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->s) < n || memcmp(c->s, w, n) != 0)
        return false;
    c->s += n;
    return true;
}

/* A non-negative decimal integer (Python may write a trailing 'L' in old files). */
static bool parse_uint(struct cur *c, uint64_t *v)
{
    skip_ws(c);
    if (c->s >= c->end || *c->s < '0' || *c->s > '9')
        return false;
    uint64_t x = 0;
    while (c->s < c->end && *c->s >= '0' && *c->s <= '9') {
        unsigned d = (unsigned)(*c->s - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
        c->s++;
    }
    if (c->s < c->end && *c->s == 'L')
        c->s++;
    *v = x;
    return true;
}

/* (a, b, ...) with an optional trailing comma; () and (n,) allowed. */
static bool parse_shape(struct cur *c, tf_npy *a)
{
    if (!eat(c, '('))
        return false;
    a->ndim = 0;
    for (;;) {
        if (eat(c, ')'))
            return true;
        if (a->ndim == TF_NPY_MAX_DIMS || !parse_uint(c, &a->shape[a->ndim]))
            return false;
        a->ndim++;
        if (eat(c, ','))
            continue;
        return eat(c, ')');
    }
}

/* descr: byte order + kind + size, e.g. "<f4", "|u1". */
static bool parse_descr(const char *d, tf_npy *a)
{
    size_t dl = strlen(d);
    if (dl < 3 || dl >= sizeof a->descr || (d[0] != '<' && d[0] != '|' && d[0] != '='))
        return false;
    if (!strchr("fiub", d[1]))
        return false;
    uint64_t sz = 0;
    for (const char *p = d + 2; *p; p++) {
        if (*p < '0' || *p > '9' || sz > 1000)
            return false;
        sz = sz * 10 + (uint64_t)(*p - '0');
    }
    if (sz == 0 || sz > 16)
        return false;
    if (d[0] == '|' && sz != 1)
        return false; /* multi-byte types must say their byte order */
    a->kind = d[1];
    a->itemsize = (uint32_t)sz;
    memcpy(a->descr, d, dl + 1);
    return true;
}

static int parse_dict(const char *s, size_t n, tf_npy *a)
{
    struct cur c = {s, s + n};
    bool have_descr = false, have_order = false, have_shape = false;
    if (!eat(&c, '{'))
        return DHPS_E_CORRUPT;
    for (;;) {
        if (eat(&c, '}'))
            break;
        char key[32], val[32];
        if (!parse_str(&c, key, sizeof key) || !eat(&c, ':'))
            return DHPS_E_CORRUPT;
        if (!strcmp(key, "descr")) {
            if (have_descr || !parse_str(&c, val, sizeof val) || !parse_descr(val, a))
                return DHPS_E_CORRUPT;
            have_descr = true;
        } else if (!strcmp(key, "fortran_order")) {
            if (have_order)
                return DHPS_E_CORRUPT;
            if (parse_word(&c, "True"))
                a->fortran_order = true;
            else if (parse_word(&c, "False"))
                a->fortran_order = false;
            else
                return DHPS_E_CORRUPT;
            have_order = true;
        } else if (!strcmp(key, "shape")) {
            if (have_shape || !parse_shape(&c, a))
                return DHPS_E_CORRUPT;
            have_shape = true;
        } else {
            return DHPS_E_CORRUPT; /* the format allows exactly these three keys */
        }
        if (eat(&c, ','))
            continue;
        if (eat(&c, '}'))
            break;
        return DHPS_E_CORRUPT;
    }
    skip_ws(&c);
    if (c.s != c.end || !have_descr || !have_order || !have_shape)
        return DHPS_E_CORRUPT;
    return 0;
}

int tf_npy_parse(const void *buf, size_t len, tf_npy *a)
{
    if (!buf || !a)
        return -EINVAL;
    const uint8_t *p = buf;
    memset(a, 0, sizeof *a);
    if (len < 10 || memcmp(p, "\x93NUMPY", 6) != 0)
        return DHPS_E_CORRUPT;
    a->major = p[6];
    a->minor = p[7];
    if (a->major < 1 || a->major > 3)
        return DHPS_E_VERSION;
    size_t hl, off;
    if (a->major == 1) {
        hl = (size_t)p[8] | (size_t)p[9] << 8;
        off = 10;
    } else {
        if (len < 12)
            return DHPS_E_CORRUPT;
        hl = rd32(p + 8);
        off = 12;
    }
    if (hl > len - off || hl == 0)
        return DHPS_E_CORRUPT;
    const char *h = (const char *)p + off;
    /* the header ends with '\n' (padding spaces before it); bytes must be printable
     * ASCII for v1/v2 (latin1 in principle, but numpy writes ASCII); v3 allows UTF-8
     * only inside field names of structured dtypes, which we reject anyway. */
    if (h[hl - 1] != '\n')
        return DHPS_E_CORRUPT;
    for (size_t i = 0; i + 1 < hl; i++)
        if ((unsigned char)h[i] < 0x20 || (unsigned char)h[i] > 0x7e)
            return DHPS_E_CORRUPT;
    int rc = parse_dict(h, hl - 1, a);
    if (rc)
        return rc;
    uint64_t ne = 1;
    for (uint32_t i = 0; i < a->ndim; i++) {
        if (a->shape[i] && ne > UINT64_MAX / a->shape[i])
            return DHPS_E_CORRUPT;
        ne *= a->shape[i];
    }
    a->nelems = ne;
    a->header_len = off + hl;
    size_t data_len = len - a->header_len;
    if (ne > UINT64_MAX / a->itemsize || ne * a->itemsize != data_len)
        return DHPS_E_CORRUPT;
    a->data = p + a->header_len;
    return 0;
}

int tf_npy_as_rows(const tf_npy *a, tf_table *t)
{
    if (!a || !t || a->kind != 'f' || a->fortran_order ||
        (a->itemsize != 8 && a->itemsize != 4 && a->itemsize != 2))
        return DHPS_E_CONFIG;
    uint64_t n, d;
    if (a->ndim == 2) {
        n = a->shape[0];
        d = a->shape[1];
    } else if (a->ndim == 1) {
        n = a->shape[0];
        d = 1;
    } else {
        return DHPS_E_CONFIG;
    }
    if (d == 0 || d * (a->itemsize == 8 ? 4 : a->itemsize) > TF_MAX_ROW_BYTES)
        return DHPS_E_CONFIG;
    t->dtype = a->itemsize == 8 ? TF_F64 : a->itemsize == 4 ? DHPS_FP32 : DHPS_FP16;
    t->dim = (uint32_t)d;
    t->row_bytes = (uint32_t)(d * a->itemsize);
    t->count = n;
    t->keys = NULL;
    t->rows = a->data;
    return 0;
}

int tf_npy_as_keys(const tf_npy *a, const uint8_t **keys, uint64_t *n)
{
    if (!a || !keys || !n || (a->kind != 'u' && a->kind != 'i') || a->itemsize != 8 ||
        a->fortran_order)
        return DHPS_E_CONFIG;
    if (!(a->ndim == 1 || (a->ndim == 2 && a->shape[1] == 1)))
        return DHPS_E_CONFIG;
    *keys = a->data;
    *n = a->shape[0];
    return 0;
}

long tf_npy_write_header(void *out, size_t cap, int major, const char *descr,
                         bool fortran_order, uint32_t ndim, const uint64_t *shape)
{
    if (!out || !descr || major < 1 || major > 3 || ndim > TF_NPY_MAX_DIMS || (ndim && !shape))
        return -EINVAL;
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': %s, 'shape': (",
                     descr, fortran_order ? "True" : "False");
    for (uint32_t i = 0; i < ndim && n > 0 && (size_t)n < sizeof dict; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%llu,%s",
                      (unsigned long long)shape[i], i + 1 < ndim ? " " : "");
    if (n > 0 && ndim > 1)
        n--; /* numpy writes (N,) for 1-D and (N, D) without the trailing comma */
    if (n <= 0 || (size_t)n + 8 >= sizeof dict)
        return -EINVAL;
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t pre = major == 1 ? 10 : 12;
    size_t total = pre + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    if (total > cap)
        return -EINVAL;
    uint8_t *p = out;
    memcpy(p, "\x93NUMPY", 6);
    p[6] = (uint8_t)major;
    p[7] = 0;
    size_t hl = total - pre;
    if (major == 1) {
        p[8] = (uint8_t)hl;
        p[9] = (uint8_t)(hl >> 8);
    } else {
        wr32(p + 8, (uint32_t)hl);
    }
    memcpy(p + pre, dict, (size_t)n);
    memset(p + pre + n, ' ', hl - (size_t)n - 1);
    p[total - 1] = '\n';
    return (long)total;
}

/* ---- batching ---------------------------------------------------------------------- */

long tf_batches(const tf_table *t, uint64_t key_base, uint32_t batch, uint64_t *keybuf,
                tf_batch_fn fn, void *arg,
                void (*progress)(void *parg, uint64_t done, uint64_t total), void *parg)
{
    if (!t || !batch || !keybuf || !fn || t->count > (uint64_t)LONG_MAX)
        return -EINVAL;
    uint64_t done = 0;
    while (done < t->count) {
        uint32_t n = t->count - done < batch ? (uint32_t)(t->count - done) : batch;
        for (uint32_t i = 0; i < n; i++)
            keybuf[i] = t->keys ? tf_u64le(t->keys + 8 * (done + i)) : key_base + done + i;
        int rc = fn(arg, keybuf, t->rows + done * t->row_bytes, n);
        if (rc < 0)
            return rc;
        done += n;
        if (progress)
            progress(parg, done, t->count);
    }
    return (long)done;
}

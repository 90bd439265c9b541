/*
 * dhps load FILE --table T [--format bin|npy (default: by magic)] [--keys KEYS.npy | --keys-from-row-index
 *           [--key-base N]] [--batch N] [--cluster DIR | --map FILE --secret FILE]
 *           [--dry-run] [--no-verify]
 *
 * Bulk-load a table from a dhps binary table file or a .npy array (formats in
 * tablefile.h and docs/tools.md). The file is mapped, parsed whole (a damaged file
 * loads nothing), then cut into batches sent as updates through the client library.
 * A progress bar is drawn on stderr when it is a terminal. --dry-run parses and
 * batches without a cluster.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/error.h"
#include "tablefile.h"
#include "tools.h"
#include "toolsclient.h"

struct load_ctx {
    tools_conn *conn;
    const char *table;
    uint32_t src;    /* the file's element type: DHPS_FP32, DHPS_FP16, TF_F64, DHPS_BYTES */
    uint32_t dtype;  /* what is sent: the file's type, or DHPS_FP32 after a cast */
    uint32_t dim;
    uint64_t sent;   /* rows acknowledged by every replica */
    float *scratch;  /* batch * dim floats when casting */
};

static float half_to_float(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, f;
    if (e == 0) {
        if (m == 0)
            f = s;
        else { /* subnormal: normalise */
            e = 127 - 15 + 1;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            f = s | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31)
        f = s | 0x7f800000u | (m << 13);
    else
        f = s | ((e + 127 - 15) << 23) | (m << 13);
    float out;
    memcpy(&out, &f, 4);
    return out;
}

static int load_batch(void *arg, const uint64_t *keys, const void *rows, uint32_t n)
{
    struct load_ctx *c = arg;
    if (!c->conn) {
        c->sent += n;
        return 0;
    }
    if (c->src != c->dtype) { /* cast the batch to fp32 (f8 narrowed, f2 widened) */
        const uint8_t *p = rows;
        size_t ne = (size_t)n * c->dim;
        for (size_t i = 0; i < ne; i++) {
            if (c->src == TF_F64) {
                double d;
                memcpy(&d, p + 8 * i, 8);
                c->scratch[i] = (float)d;
            } else {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                c->scratch[i] = half_to_float(h);
            }
        }
        rows = c->scratch;
    }
    int rc = tools_conn_put(c->conn, c->table, c->dtype, c->dim, keys, rows, n);
    if (rc == 0)
        c->sent += n;
    return rc;
}

/* CSV/TSV text: one row a line, `KEY<sep>V1,V2,...` (sep a comma, tab or space; values
 * separated by commas, tabs or spaces); blank lines and lines starting with '#' skipped.
 * Every row must have the first row's dim. Fills t (fp32, keys and rows malloc'ed into
 * *keys_out / *rows_out); 0, or -1 after one line on stderr naming the line. */
static int parse_text(const char *path, const char *buf, size_t len, tf_table *t,
                      uint8_t **keys_out, float **rows_out)
{
    size_t cap = 1024, n = 0, fcap = 1024 * 8, nf = 0;
    uint8_t *keys = malloc(cap * 8);
    float *rows = malloc(fcap * sizeof *rows);
    uint32_t dim = 0;
    size_t line = 0;
    const char *p = buf, *end = buf + len;
    if (!keys || !rows)
        goto nomem;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        line++;
        const char *q = p;
        p = eol + 1;
        while (q < eol && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q == eol || *q == '#')
            continue;
        char tmp[65536];
        size_t ll = (size_t)(eol - q);
        if (ll >= sizeof tmp) {
            fprintf(stderr, "dhps load: %s:%zu: line longer than %zu bytes\n", path, line,
                    sizeof tmp - 1);
            goto fail;
        }
        memcpy(tmp, q, ll);
        tmp[ll] = 0;
        char *e;
        errno = 0;
        if (tmp[0] == '-' || tmp[0] == '+') {
            fprintf(stderr, "dhps load: %s:%zu: key must be an unsigned integer\n", path, line);
            goto fail;
        }
        unsigned long long k = strtoull(tmp, &e, 10);
        if (e == tmp || errno || (*e != ',' && *e != '\t' && *e != ' ')) {
            fprintf(stderr, "dhps load: %s:%zu: expected KEY<sep>V1,V2,... (sep: comma, tab "
                    "or space)\n", path, line);
            goto fail;
        }
        char *v = e + 1;
        uint32_t d = 0;
        for (;;) {
            while (*v == ' ' || *v == '\t' || *v == '\r')
                v++;
            if (!*v)
                break;
            errno = 0;
            float x = strtof(v, &e);
            if (e == v) {
                fprintf(stderr, "dhps load: %s:%zu: bad number near '%.20s'\n", path, line, v);
                goto fail;
            }
            if (nf == fcap) {
                float *r = realloc(rows, 2 * fcap * sizeof *rows);
                if (!r)
                    goto nomem;
                rows = r;
                fcap *= 2;
            }
            rows[nf++] = x;
            d++;
            v = e;
            while (*v == ' ' || *v == '\t' || *v == '\r')
                v++;
            if (*v == ',')
                v++;
        }
        if (d == 0 || (dim && d != dim)) {
            fprintf(stderr, "dhps load: %s:%zu: %u values, the first row has %u\n", path, line,
                    d, dim);
            goto fail;
        }
        dim = d;
        if (n == cap) {
            uint8_t *r = realloc(keys, 2 * cap * 8);
            if (!r)
                goto nomem;
            keys = r;
            cap *= 2;
        }
        uint64_t kk = k;
        memcpy(keys + 8 * n++, &kk, 8);
    }
    if (!n) {
        fprintf(stderr, "dhps load: %s: no rows\n", path);
        goto fail;
    }
    if ((uint64_t)dim * 4 > TF_MAX_ROW_BYTES) {
        fprintf(stderr, "dhps load: %s: dim %u too large\n", path, dim);
        goto fail;
    }
    t->dtype = DHPS_FP32;
    t->dim = dim;
    t->row_bytes = dim * 4;
    t->count = n;
    t->keys = keys;
    t->rows = (const uint8_t *)rows;
    *keys_out = keys;
    *rows_out = rows;
    return 0;
nomem:
    fprintf(stderr, "dhps load: out of memory\n");
fail:
    free(keys);
    free(rows);
    return -1;
}

static void load_usage(FILE *f)
{
    fprintf(f,
            "usage: dhps load FILE --table T [--format bin|npy|csv|tsv|raw [--dim D]]\n"
            "                 [--keys KEYS.npy | --keys-from-row-index [--key-base N]]\n"
            "                 [--batch N] [--cluster DIR | --map FILE --secret FILE]\n"
            "                 [--dry-run] [--no-verify]\n"
            "  bin: dhps binary table (docs/tools.md); npy: (N, D) '<f8', '<f4' or '<f2' array\n"
            "  (cast to the table's type); csv/tsv: lines KEY<sep>V1,V2,...;\n"
            "  keys from a (N,) '<u8'/'<i8' .npy or the row index (+ --key-base).\n"
            "  --table T          table to load into (its dim and dtype come from the nodes)\n"
            "  --format F         bin, npy, csv, tsv or raw (default: from the first bytes)\n"
            "  --keys KEYS.npy    the keys of the rows, a (N,) '<u8' or '<i8' array\n"
            "  --keys-from-row-index  key = --key-base + row index\n"
            "  --key-base N       first key with --keys-from-row-index (default 0)\n"
            "  --batch N          rows per update call\n"
            "  --cluster DIR      cluster directory of `dhps up` (--dir DIR is the same)\n"
            "  --map F --secret F any cluster: its map file and its secret file\n"
            "  --format raw --dim D  rows of D little-endian float32, no header\n"
            "  --resume-from ROW  skip the first ROW rows (what a failed load said)\n"
            "  --dry-run          parse and check (dim, type against the nodes when a\n"
            "                     cluster is named); send nothing\n"
            "  --no-verify        skip the read-back of sampled rows after loading\n");
}

/* Without --format: the NumPy magic is npy, the dhps magic bin, text starting with a
 * digit csv/tsv; anything else NULL (unsupported). */
static const char *guess_format(const tools_file *f)
{
    if (f->len >= 6 && !memcmp(f->data, "\x93NUMPY", 6))
        return "npy";
    if (f->len >= 8 && !memcmp(f->data, TF_BIN_MAGIC, 8))
        return "bin";
    const char *p = (const char *)f->data;
    size_t i = 0;
    while (i < f->len && i < 4096 && (p[i] == '#' || p[i] == '\n' || p[i] == '\r')) {
        if (p[i] == '#') /* a comment line */
            while (i < f->len && p[i] != '\n')
                i++;
        else
            i++;
    }
    if (i < f->len && p[i] >= '0' && p[i] <= '9') {
        for (size_t j = i; j < f->len && p[j] != '\n'; j++)
            if (p[j] == '\t')
                return "tsv";
        return "csv";
    }
    return NULL;
}

int dhps_cmd_load(int argc, char **argv)
{
    static const struct option lo[] = {
        {"table", required_argument, 0, 't'},   {"format", required_argument, 0, 'f'},
        {"keys", required_argument, 0, 'k'},    {"keys-from-row-index", no_argument, 0, 'r'},
        {"key-base", required_argument, 0, 'b'}, {"batch", required_argument, 0, 'B'},
        {"cluster", required_argument, 0, 'c'}, {"dir", required_argument, 0, 'c'},
        {"map", required_argument, 0, 'm'},
        {"secret", required_argument, 0, 's'},  {"dry-run", no_argument, 0, 'n'},
        {"no-verify", no_argument, 0, 'V'},     {"help", no_argument, 0, 'h'},
        {"dim", required_argument, 0, 'D'},     {"resume-from", required_argument, 0, 'R'},
        {0, 0, 0, 0}};
    const char *table = NULL, *format = NULL, *keys_path = NULL;
    tools_target tgt = {0};
    bool row_index = false, dry = false, verify = true;
    uint64_t key_base = 0, batch = 4096, rawdim = 0, resume = 0;
    int o, rc = 1;
    optind = 1;
    while ((o = getopt_long(argc, argv, "t:f:k:rb:B:c:m:s:nVhD:R:", lo, NULL)) != -1) {
        switch (o) {
        case 't': table = optarg; break;
        case 'f': format = optarg; break;
        case 'k': keys_path = optarg; break;
        case 'r': row_index = true; break;
        case 'b': if (!tools_parse_u64("load", "--key-base", optarg, &key_base)) return 2; break;
        case 'B': if (!tools_parse_u64("load", "--batch", optarg, &batch)) return 2; break;
        case 'D': if (!tools_parse_u64("load", "--dim", optarg, &rawdim)) return 2; break;
        case 'R': if (!tools_parse_u64("load", "--resume-from", optarg, &resume)) return 2; break;
        case 'c': tgt.cluster_dir = optarg; break;
        case 'm': tgt.map = optarg; break;
        case 's': tgt.secret = optarg; break;
        case 'n': dry = true; break;
        case 'V': verify = false; break;
        case 'h': load_usage(stdout); return 0;
        default: load_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || !table || batch == 0 || batch > DHPS_PROTO_MAX_KEYS) {
        if (batch == 0 || batch > DHPS_PROTO_MAX_KEYS)
            fprintf(stderr, "dhps load: --batch must be 1..%u\n", DHPS_PROTO_MAX_KEYS);
        load_usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    static const char *const formats[] = {"bin", "npy", "csv", "tsv", "raw"};
    bool known = !format;
    for (size_t i = 0; format && i < sizeof formats / sizeof formats[0]; i++)
        known |= !strcmp(format, formats[i]);
    if (!known) {
        fprintf(stderr, "dhps load: unsupported format '%s' (bin, npy, csv, tsv, raw)\n",
                format);
        return 2;
    }
    if (format && !strcmp(format, "raw") && (rawdim == 0 || rawdim * 4 > TF_MAX_ROW_BYTES)) {
        fprintf(stderr, "dhps load: --format raw needs --dim D (1..%u): rows of D "
                "little-endian float32\n", TF_MAX_ROW_BYTES / 4);
        return 2;
    }

    tools_file f = {0}, kf = {0};
    tools_conn *conn = NULL;
    uint64_t *keybuf = NULL;
    uint8_t *text_keys = NULL;
    float *text_rows = NULL, *scratch = NULL;
    tf_table t;
    int err;
    if ((err = tools_file_map(path, &f)) < 0) {
        fprintf(stderr, "dhps load: %s: %s\n", path, dhps_strerror(err));
        goto out;
    }
    if (!format && !(format = guess_format(&f))) {
        fprintf(stderr, "dhps load: %s: unsupported file format (not a dhps table file, .npy, "
                "CSV or TSV; raw float32 rows need --format raw --dim D)\n", path);
        rc = 2;
        goto out;
    }
    bool file_keys = !strcmp(format, "bin") || !strcmp(format, "csv") || !strcmp(format, "tsv");
    if (file_keys && (keys_path || row_index)) {
        fprintf(stderr, "dhps load: a %s file carries its keys (no --keys/--keys-from-row-index)\n",
                format);
        rc = 2;
        goto out;
    }
    if (!strcmp(format, "bin")) {
        if ((err = tf_bin_parse(f.data, f.len, verify, &t)) < 0) {
            fprintf(stderr, "dhps load: %s: not a valid dhps table file (%s)\n", path,
                    dhps_strerror(err));
            goto out;
        }
    } else if (!strcmp(format, "csv") || !strcmp(format, "tsv")) {
        if (parse_text(path, (const char *)f.data, f.len, &t, &text_keys, &text_rows) < 0)
            goto out;
    } else {
        if (!strcmp(format, "raw")) {
            uint64_t rb = rawdim * 4;
            if (f.len % rb) {
                fprintf(stderr, "dhps load: %s: %zu bytes is not a whole number of rows of "
                        "%llu float32\n", path, f.len, (unsigned long long)rawdim);
                goto out;
            }
            t = (tf_table){.dtype = DHPS_FP32, .dim = (uint32_t)rawdim, .row_bytes = (uint32_t)rb,
                           .count = f.len / rb, .rows = f.data};
        } else {
            tf_npy a;
            if ((err = tf_npy_parse(f.data, f.len, &a)) < 0) {
                fprintf(stderr, "dhps load: %s: not a valid .npy file (%s)\n", path,
                        dhps_strerror(err));
                goto out;
            }
            if (tf_npy_as_rows(&a, &t) < 0) {
                fprintf(stderr, "dhps load: %s: need a C-order (N, D) '<f8', '<f4' or '<f2' "
                        "array, got descr '%s'%s, %u dims\n", path, a.descr,
                        a.fortran_order ? " in Fortran order" : "", a.ndim);
                goto out;
            }
        }
        if (!!keys_path == row_index) {
            fprintf(stderr, "dhps load: a %s file needs --keys KEYS.npy or --keys-from-row-index\n",
                    format);
            rc = 2;
            goto out;
        }
        if (keys_path) {
            tf_npy ka;
            uint64_t kn;
            if ((err = tools_file_map(keys_path, &kf)) < 0 ||
                (err = tf_npy_parse(kf.data, kf.len, &ka)) < 0 ||
                (err = tf_npy_as_keys(&ka, &t.keys, &kn)) < 0) {
                fprintf(stderr, "dhps load: %s: need a (N,) '<u8' or '<i8' .npy (%s)\n",
                        keys_path, dhps_strerror(err));
                goto out;
            }
            if (kn != t.count) {
                fprintf(stderr, "dhps load: %s has %llu keys but %s has %llu rows\n", keys_path,
                        (unsigned long long)kn, path, (unsigned long long)t.count);
                goto out;
            }
        }
    }
    /* keys from the row index: the last key must not wrap past 2^64 - 1 */
    if (!t.keys && t.count && key_base > UINT64_MAX - (t.count - 1)) {
        fprintf(stderr, "dhps load: --key-base %llu + %llu rows overflows the 64-bit key range "
                "(largest base: %llu)\n", (unsigned long long)key_base,
                (unsigned long long)t.count, (unsigned long long)(UINT64_MAX - (t.count - 1)));
        rc = 2;
        goto out;
    }
    if (resume > t.count) {
        fprintf(stderr, "dhps load: --resume-from %llu: the file has %llu rows\n",
                (unsigned long long)resume, (unsigned long long)t.count);
        rc = 2;
        goto out;
    }
    uint32_t src = t.dtype, send = t.dtype == TF_F64 ? DHPS_FP32 : t.dtype;
    /* the table on the nodes: its dim must match, its type decides the cast */
    if (!dry || tgt.cluster_dir || tgt.map) {
        if ((err = tools_conn_open(&tgt, &conn)) < 0)
            goto out; /* tools_conn_open printed why */
        uint32_t tdim;
        int tdtype;
        if (tools_table_info(conn, table, &tdim, &tdtype) < 0)
            goto out;
        if (tdim != t.dim) {
            fprintf(stderr, "dhps load: %s has dim %u but table %s has dim %u on the nodes; "
                    "nothing sent\n", path, t.dim, table, tdim);
            goto out;
        }
        if (src == DHPS_BYTES && tdtype != DHPS_BYTES) {
            fprintf(stderr, "dhps load: %s holds bytes rows but table %s is %s; nothing sent\n",
                    path, table, tdtype == DHPS_FP16 ? "fp16" : "fp32");
            goto out;
        }
        if (src == DHPS_FP16 && tdtype == DHPS_FP32)
            send = DHPS_FP32; /* widen here; fp32 into an fp16 table the server narrows */
        if (dry) {
            tools_conn_close(conn);
            conn = NULL;
        }
    }
    keybuf = malloc(batch * sizeof *keybuf);
    if (send != src)
        scratch = malloc(batch * t.dim * sizeof *scratch);
    if (!keybuf || (send != src && !scratch)) {
        fprintf(stderr, "dhps load: out of memory\n");
        goto out;
    }
    tf_table rest = t; /* --resume-from: skip the first rows */
    rest.rows += resume * t.row_bytes;
    if (t.keys)
        rest.keys += 8 * resume;
    rest.count -= resume;
    struct load_ctx ctx = {.conn = conn, .table = table, .src = src, .dtype = send,
                           .dim = t.dim, .scratch = scratch};
    tools_progress pg;
    tools_progress_init(&pg, "load");
    uint64_t t0 = dhps_mono_ns();
    long n = tf_batches(&rest, key_base + resume, (uint32_t)batch, keybuf, load_batch, &ctx,
                        tools_progress_update, &pg);
    tools_progress_done(&pg);
    double s = (double)(dhps_mono_ns() - t0) / 1e9;
    if (n < 0) {
        fprintf(stderr, "dhps load: update failed after %llu rows: %s; %llu rows of %llu "
                "loaded, resume with --resume-from %llu\n",
                (unsigned long long)ctx.sent, dhps_strerror((int)n),
                (unsigned long long)(resume + ctx.sent), (unsigned long long)t.count,
                (unsigned long long)(resume + ctx.sent));
        goto out;
    }
    printf("%s %llu rows (dim %u, %s%s) into table %s in %.2f s (%.0f rows/s)%s\n",
           dry ? "parsed" : "loaded", (unsigned long long)n, t.dim,
           src == TF_F64 ? "f8" : src == DHPS_FP32 ? "fp32" : src == DHPS_FP16 ? "fp16" : "bytes",
           send != src ? " cast to fp32" : "", table, s, s > 0 ? (double)n / s : 0.0,
           resume ? " (resumed)" : "");
    rc = 0;
out:
    free(scratch);
    free(keybuf);
    free(text_keys);
    free(text_rows);
    tools_conn_close(conn);
    tools_file_unmap(&kf);
    tools_file_unmap(&f);
    return rc;
}

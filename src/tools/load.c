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
#include <getopt.h>
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
    uint32_t dtype, dim;
    uint64_t sent;
};

static int load_batch(void *arg, const uint64_t *keys, const void *rows, uint32_t n)
{
    struct load_ctx *c = arg;
    c->sent += n;
    if (!c->conn)
        return 0;
    return tools_conn_put(c->conn, c->table, c->dtype, c->dim, keys, rows, n);
}

static void load_usage(FILE *f)
{
    fprintf(f,
            "usage: dhps load FILE --table T [--format bin|npy]\n"
            "                 [--keys KEYS.npy | --keys-from-row-index [--key-base N]]\n"
            "                 [--batch N] [--cluster DIR | --map FILE --secret FILE]\n"
            "                 [--dry-run] [--no-verify]\n"
            "  bin: dhps binary table (docs/tools.md); npy: (N, D) '<f4' or '<f2' array,\n"
            "  keys from a (N,) '<u8'/'<i8' .npy or the row index (+ --key-base).\n"
            "  --table T          table to load into (its dim and dtype come from the nodes)\n"
            "  --format F         bin or npy (default: from the file's first bytes)\n"
            "  --keys KEYS.npy    the keys of the rows, a (N,) '<u8' or '<i8' array\n"
            "  --keys-from-row-index  key = --key-base + row index\n"
            "  --key-base N       first key with --keys-from-row-index (default 0)\n"
            "  --batch N          rows per update call\n"
            "  --cluster DIR      cluster directory of `dhps up` (--dir DIR is the same)\n"
            "  --map F --secret F any cluster: its map file and its secret file\n"
            "  --dry-run          parse and check only; send nothing\n"
            "  --no-verify        skip the read-back of sampled rows after loading\n");
}

/* Without --format: a file starting with the NumPy magic is npy, anything else bin. */
static const char *guess_format(const tools_file *f)
{
    return f->len >= 6 && !memcmp(f->data, "\x93NUMPY", 6) ? "npy" : "bin";
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
        {0, 0, 0, 0}};
    const char *table = NULL, *format = NULL, *keys_path = NULL;
    tools_target tgt = {0};
    bool row_index = false, dry = false, verify = true;
    uint64_t key_base = 0, batch = 4096;
    int o, rc = 1;
    optind = 1;
    while ((o = getopt_long(argc, argv, "t:f:k:rb:B:c:m:s:nVh", lo, NULL)) != -1) {
        switch (o) {
        case 't': table = optarg; break;
        case 'f': format = optarg; break;
        case 'k': keys_path = optarg; break;
        case 'r': row_index = true; break;
        case 'b': if (!tools_parse_u64("load", "--key-base", optarg, &key_base)) return 2; break;
        case 'B': if (!tools_parse_u64("load", "--batch", optarg, &batch)) return 2; break;
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
    if (format && strcmp(format, "bin") && strcmp(format, "npy")) {
        fprintf(stderr, "dhps load: --format must be bin or npy\n");
        return 2;
    }

    tools_file f = {0}, kf = {0};
    tools_conn *conn = NULL;
    uint64_t *keybuf = NULL;
    tf_table t;
    int err;
    if ((err = tools_file_map(path, &f)) < 0) {
        fprintf(stderr, "dhps load: %s: %s\n", path, dhps_strerror(err));
        goto out;
    }
    if (!format)
        format = guess_format(&f);
    if (!strcmp(format, "bin")) {
        if (keys_path || row_index) {
            fprintf(stderr, "dhps load: a bin file carries its keys (no --keys/--keys-from-row-index)\n");
            rc = 2;
            goto out;
        }
        if ((err = tf_bin_parse(f.data, f.len, verify, &t)) < 0) {
            fprintf(stderr, "dhps load: %s: not a valid dhps table file (%s)\n", path,
                    dhps_strerror(err));
            goto out;
        }
    } else {
        tf_npy a;
        if ((err = tf_npy_parse(f.data, f.len, &a)) < 0) {
            fprintf(stderr, "dhps load: %s: not a valid .npy file (%s)\n", path,
                    dhps_strerror(err));
            goto out;
        }
        if (tf_npy_as_rows(&a, &t) < 0) {
            fprintf(stderr, "dhps load: %s: need a C-order (N, D) '<f4' or '<f2' array, got "
                    "descr '%s'%s, %u dims\n", path, a.descr,
                    a.fortran_order ? " in Fortran order" : "", a.ndim);
            goto out;
        }
        if (!!keys_path == row_index) {
            fprintf(stderr, "dhps load: a .npy needs --keys KEYS.npy or --keys-from-row-index\n");
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
    if (!dry && (err = tools_conn_open(&tgt, &conn)) < 0)
        goto out; /* tools_conn_open printed why */
    keybuf = malloc(batch * sizeof *keybuf);
    if (!keybuf) {
        fprintf(stderr, "dhps load: out of memory\n");
        goto out;
    }
    struct load_ctx ctx = {.conn = conn, .table = table, .dtype = t.dtype, .dim = t.dim};
    tools_progress pg;
    tools_progress_init(&pg, "load");
    uint64_t t0 = dhps_mono_ns();
    long n = tf_batches(&t, key_base, (uint32_t)batch, keybuf, load_batch, &ctx,
                        tools_progress_update, &pg);
    tools_progress_done(&pg);
    double s = (double)(dhps_mono_ns() - t0) / 1e9;
    if (n < 0) {
        fprintf(stderr, "dhps load: update failed after %llu rows: %s\n",
                (unsigned long long)ctx.sent, dhps_strerror((int)n));
        goto out;
    }
    printf("%s %llu rows (dim %u, %s) into table %s in %.2f s (%.0f rows/s)\n",
           dry ? "parsed" : "loaded", (unsigned long long)n, t.dim,
           t.dtype == DHPS_FP32 ? "fp32" : t.dtype == DHPS_FP16 ? "fp16" : "bytes", table, s,
           s > 0 ? (double)n / s : 0.0);
    rc = 0;
out:
    free(keybuf);
    tools_conn_close(conn);
    tools_file_unmap(&kf);
    tools_file_unmap(&f);
    return rc;
}

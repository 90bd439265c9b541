/* Helpers for the wal tests (and tests of the server's log, tests/security): temp dirs,
 * a collecting replay callback, whole-file reads and writes, and rewriting a segment in
 * the format older builds wrote. */
#ifndef DHPS_WAL_TEST_H
#define DHPS_WAL_TEST_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define XXH_INLINE_ALL /* header-only: the tests need not link libxxhash */
#include <xxhash.h>

#include "dhps/wal.h"

static inline char *w_mkdtemp(void)
{
    char *d = strdup("/tmp/dhps-waltest-XXXXXX");
    if (!mkdtemp(d))
        abort();
    return d;
}

static inline void w_rmdir(char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d);
    free(d);
}

/* Number of wal.*.log files in dir; the newest (largest name) copied to last. */
static inline int w_segments(const char *dir, char *last, size_t len)
{
    DIR *d = opendir(dir);
    int n = 0;
    char best[256] = "";
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, "wal.", 4))
            continue;
        n++;
        if (strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    }
    if (d)
        closedir(d);
    if (last)
        snprintf(last, len, "%s/%s", dir, best);
    return n;
}

/* Payload of record lsn: len bytes derived from lsn (len = 1 + lsn * 37 % 300). */
static inline size_t w_len(uint64_t lsn)
{
    return 1 + (size_t)(lsn * 37 % 300);
}

static inline void w_fill(uint8_t *buf, uint64_t lsn)
{
    size_t len = w_len(lsn);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(lsn * 131 + i * 7);
}

typedef struct w_seen {
    uint64_t n, first, last;
    int bad;             /* records whose payload did not match w_fill or LSNs not in order */
} w_seen;

static inline int w_collect(void *arg, uint64_t lsn, const void *p, size_t len)
{
    w_seen *s = arg;
    uint8_t buf[512];
    if (s->n && lsn != s->last + 1)
        s->bad++;
    if (!s->n)
        s->first = lsn;
    s->last = lsn;
    s->n++;
    if (((uintptr_t)p & 7u) != 0)
        s->bad++;
    if (len != w_len(lsn)) {
        s->bad++;
        return 0;
    }
    w_fill(buf, lsn);
    if (memcmp(buf, p, len))
        s->bad++;
    return 0;
}

/* Append the standard payload of the next LSN as two iovecs; returns the append's rc. */
static inline int w_append_std(dhps_wal *w, uint64_t *lsn)
{
    uint64_t want = dhps_wal_next_lsn(w);
    uint8_t buf[512];
    w_fill(buf, want);
    size_t len = w_len(want), h = len / 2;
    struct iovec iov[2] = {{buf, h}, {buf + h, len - h}};
    return dhps_wal_append(w, iov, 2, lsn);
}

static inline int w_open(const char *dir, const char *ident, int sync, uint64_t seg_bytes,
                         uint64_t from, w_seen *seen, dhps_wal_report *rep, dhps_wal **w,
                         char *err, size_t errlen)
{
    dhps_wal_params p;
    dhps_wal_params_init(&p);
    p.dir = dir;
    p.identity = ident;
    p.sync = sync;
    if (seg_bytes)
        p.segment_bytes = seg_bytes;
    if (seen)
        memset(seen, 0, sizeof *seen);
    return dhps_wal_open(&p, from, seen ? w_collect : NULL, seen, rep, w, err, errlen);
}

/* The whole file at path, malloc'ed (aborts on error). */
static inline uint8_t *w_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        abort();
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len ? *len : 1);
    if (fread(b, 1, *len, f) != *len)
        abort();
    fclose(f);
    return b;
}

static inline void w_spit(const char *path, const void *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, len, f) != len)
        abort();
    fclose(f);
}

/* Rewrite the segment at path as format 1 with identity ident, what builds before format
 * 2 wrote: a 288-byte header (magic, format 1, identity length, first LSN, the identity
 * in a 256-byte field, XXH3-64 of the 280 bytes before it). The records stay as they
 * are. */
static inline void w_to_format1(const char *path, const char *ident)
{
    size_t len, nl = strlen(ident);
    uint8_t *b = w_slurp(path, &len);
    uint32_t il, format, one = 1, nl32 = (uint32_t)nl;
    memcpy(&format, b + 8, 4);
    memcpy(&il, b + 12, 4);
    size_t hl = format == 1 ? 288 : DHPS_WAL_SEGMENT_HDR_BYTES(il);
    if (nl > 255 || len < hl)
        abort();
    uint8_t h[288];
    memset(h, 0, sizeof h);
    memcpy(h, b, 24); /* magic, format, identity length, first LSN */
    memcpy(h + 8, &one, 4);
    memcpy(h + 12, &nl32, 4);
    memcpy(h + 24, ident, nl);
    uint64_t sum = XXH3_64bits(h, 280);
    memcpy(h + 280, &sum, 8);
    uint8_t *o = malloc(288 + len - hl);
    memcpy(o, h, 288);
    memcpy(o + 288, b + hl, len - hl);
    w_spit(path, o, 288 + len - hl);
    free(o);
    free(b);
}

/* Apply w_to_format1(..., ident) to every segment in dir; returns how many. */
static inline int w_dir_to_format1(const char *dir, const char *ident)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "wal.", 4) || l < 4 || strcmp(e->d_name + l - 4, ".log"))
            continue;
        char p[PATH_MAX + NAME_MAX + 2];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        w_to_format1(p, ident);
        n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* The identity in the header of the (format 2) segment at path, malloc'ed; NULL when
 * it is not a format-2 segment. */
static inline char *w_seg_ident(const char *path)
{
    size_t len;
    uint8_t *b = w_slurp(path, &len);
    uint32_t format = 0, il = 0;
    char *s = NULL;
    if (len >= 32) {
        memcpy(&format, b + 8, 4);
        memcpy(&il, b + 12, 4);
    }
    if (format == 2 && il <= DHPS_WAL_IDENTITY_MAX && len >= DHPS_WAL_SEGMENT_HDR_BYTES(il)) {
        s = malloc(il + 1);
        memcpy(s, b + 24, il);
        s[il] = 0;
    }
    free(b);
    return s;
}

#endif

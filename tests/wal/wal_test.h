/* Helpers for the wal tests: temp dirs, a collecting replay callback. */
#ifndef DHPS_WAL_TEST_H
#define DHPS_WAL_TEST_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

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

#endif

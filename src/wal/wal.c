/* dhps wal: segments, appends, group commit, rotation, truncation, recovery.
 * Design and contracts: include/dhps/wal.h. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "dhps/log.h"
#include "dhps/wal.h"
#include "util.h"

#define LOGM "wal"
#define WAL_MAGIC "DHPSWAL"    /* 8 bytes with the NUL */
#define WAL_FORMAT 2u          /* written; format 1 is read too */

/* The fixed start of a segment header (both formats), little-endian host layout
 * (x86-64/aarch64). Format 2: then the identity (ident_len bytes, zero padded to 8) and
 * an XXH3-64 of every byte before it. */
typedef struct wal_seg_fixed {
    char magic[8];
    uint32_t format;
    uint32_t ident_len;
    uint64_t first_lsn;
} wal_seg_fixed;
_Static_assert(sizeof(wal_seg_fixed) == 24, "segment header layout");
_Static_assert(DHPS_WAL_SEGMENT_HDR_BYTES(0) == sizeof(wal_seg_fixed) + 8, "header bytes");

/* Format 1: a fixed 288-byte header. */
typedef struct wal_seg_hdr1 {
    wal_seg_fixed f;
    char ident[256];
    uint64_t checksum;         /* XXH3-64 of the bytes before it */
} wal_seg_hdr1;
_Static_assert(sizeof(wal_seg_hdr1) == 288, "format 1 segment header layout");
#define WAL_HDR_MAX DHPS_WAL_SEGMENT_HDR_BYTES(DHPS_WAL_IDENTITY_MAX)

typedef struct wal_rec_hdr {
    uint32_t len;
    uint32_t zero;
    uint64_t lsn;
    uint64_t checksum;
} wal_rec_hdr;
_Static_assert(sizeof(wal_rec_hdr) == DHPS_WAL_RECORD_HDR, "record header layout");

typedef struct wal_seg {
    uint64_t first_lsn;
    uint64_t bytes;
    uint32_t hdr_len;          /* where its records start */
} wal_seg;

struct dhps_wal {
    char *dir;
    char ident[DHPS_WAL_IDENTITY_MAX + 1];
    uint32_t ident_len;
    uint32_t hdr_len;          /* DHPS_WAL_SEGMENT_HDR_BYTES(ident_len): new segments */
    int sync;
    uint32_t interval_ms;
    uint64_t segment_bytes;

    pthread_mutex_t mu;        /* appends, rotation, the segment list */
    int fd;                    /* active segment */
    uint64_t off;              /* end of the active segment */
    uint64_t next_lsn;
    wal_seg *segs;             /* ascending; the last is active */
    size_t nsegs, capsegs;
    uint64_t disk_bytes;
    int failed;                /* sticky error (0 = fine) */
    bool older_unsynced;       /* NEVER: a rotated-away segment may be unsynced */

    pthread_mutex_t sync_mu;   /* group commit */
    pthread_cond_t sync_cv;
    bool syncing;
    uint64_t synced_lsn;
    int sync_err;
    bool stop;
    pthread_t thread;
    bool thread_running;

    uint64_t appended, appended_bytes, fsyncs, fsync_ns; /* atomics */
};

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline uint64_t pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

static inline uint64_t rec_checksum(const wal_rec_hdr *h, uint64_t payload_hash)
{
    return XXH3_64bits_withSeed(h, 16, payload_hash);
}

void dhps_wal_params_init(dhps_wal_params *p)
{
    memset(p, 0, sizeof *p);
    p->identity = "";
    p->sync = DHPS_WAL_SYNC_INTERVAL;
    p->interval_ms = 10;
    p->segment_bytes = 64ull << 20;
}

static void seg_name(uint64_t first_lsn, char *buf, size_t len)
{
    snprintf(buf, len, "wal.%016" PRIx64 ".log", first_lsn);
}

static void seg_path(const dhps_wal *w, uint64_t first_lsn, char *buf, size_t len)
{
    char name[64];
    seg_name(first_lsn, name, sizeof name);
    snprintf(buf, len, "%s/%s", w->dir, name);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

static int push_seg(dhps_wal *w, uint64_t first_lsn, uint64_t bytes, uint32_t hdr_len)
{
    if (w->nsegs == w->capsegs) {
        size_t nc = w->capsegs ? w->capsegs * 2 : 16;
        wal_seg *ns = realloc(w->segs, nc * sizeof *ns);
        if (!ns)
            return -ENOMEM;
        w->segs = ns;
        w->capsegs = nc;
    }
    w->segs[w->nsegs++] = (wal_seg){first_lsn, bytes, hdr_len};
    return 0;
}

static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t k = pwrite(fd, p, len, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        p += k;
        len -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Create segment first_lsn with its header, make it the active one. Caller holds mu (or
 * is open). The previous active fd must already be closed. The header is written to
 * <name>.tmp and renamed into place (over an empty segment of the same name, which open
 * replaces that way), so a segment file never holds a partial header. */
static int new_segment(dhps_wal *w, uint64_t first_lsn)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    seg_path(w, first_lsn, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    uint8_t h[WAL_HDR_MAX];
    wal_seg_fixed f;
    memset(&f, 0, sizeof f);
    memcpy(f.magic, WAL_MAGIC, 8);
    f.format = WAL_FORMAT;
    f.ident_len = w->ident_len;
    f.first_lsn = first_lsn;
    memset(h, 0, w->hdr_len);
    memcpy(h, &f, sizeof f);
    memcpy(h + sizeof f, w->ident, w->ident_len);
    uint64_t sum = XXH3_64bits(h, w->hdr_len - 8);
    memcpy(h + w->hdr_len - 8, &sum, 8);
    int rc = write_full(fd, h, w->hdr_len, 0);
    if (!rc && w->sync != DHPS_WAL_SYNC_NEVER && fdatasync(fd))
        rc = -errno;
    bool renamed = false;
    if (!rc && !(renamed = rename(tmp, path) == 0))
        rc = -errno;
    if (!rc && w->sync != DHPS_WAL_SYNC_NEVER)
        rc = fsync_dir(w->dir);
    if (!rc)
        rc = push_seg(w, first_lsn, w->hdr_len, w->hdr_len);
    if (rc) {
        close(fd);
        unlink(renamed ? path : tmp); /* holds no record either way */
        return rc;
    }
    w->fd = fd;
    w->off = w->hdr_len;
    w->disk_bytes += w->hdr_len;
    return 0;
}

/* Close the active segment and start one at next_lsn. Caller holds mu. Under ALWAYS and
 * INTERVAL the old segment is fdatasync'd first (at most one interval of data is
 * unsynced in it); sync_step only syncs the active segment. Under NEVER that fdatasync
 * would stall appends behind a whole segment's writeback (measured: halves appends/s of
 * 1 KiB records), so the rotation is only noted and a later forced sync_step uses
 * syncfs. */
static int rotate(dhps_wal *w)
{
    if (w->sync == DHPS_WAL_SYNC_NEVER) {
        w->older_unsynced = true;
    } else {
        uint64_t t0 = dhps_mono_ns();
        if (fdatasync(w->fd))
            return -errno;
        __atomic_fetch_add(&w->fsyncs, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&w->fsync_ns, dhps_mono_ns() - t0, __ATOMIC_RELAXED);
        pthread_mutex_lock(&w->sync_mu);
        if (w->synced_lsn < w->next_lsn - 1)
            w->synced_lsn = w->next_lsn - 1;
        pthread_cond_broadcast(&w->sync_cv);
        pthread_mutex_unlock(&w->sync_mu);
    }
    int old = w->fd;
    w->fd = -1;
    int rc = new_segment(w, w->next_lsn);
    if (rc) {
        w->fd = old;
        return rc;
    }
    close(old);
    return 0;
}

int dhps_wal_append(dhps_wal *w, const struct iovec *iov, int iovcnt, uint64_t *lsn)
{
    if (!w || !iov || iovcnt < 1 || iovcnt > DHPS_WAL_MAX_IOV)
        return -EINVAL;
    uint64_t len = 0;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (int i = 0; i < iovcnt; i++) {
        len += iov[i].iov_len;
        if (iov[i].iov_len)
            XXH3_64bits_update(&st, iov[i].iov_base, iov[i].iov_len);
    }
    if (len > DHPS_WAL_MAX_RECORD)
        return DHPS_E_TOOBIG;
    uint64_t ph = XXH3_64bits_digest(&st);
    static const uint8_t zeros[8];
    uint64_t total = DHPS_WAL_RECORD_HDR + pad8(len);
    wal_rec_hdr h = {.len = (uint32_t)len, .zero = 0};
    struct iovec v[DHPS_WAL_MAX_IOV + 2];
    v[0].iov_base = &h;
    v[0].iov_len = sizeof h;
    int nv = 1;
    for (int i = 0; i < iovcnt; i++)
        if (iov[i].iov_len)
            v[nv++] = iov[i];
    if (pad8(len) != len) {
        v[nv].iov_base = (void *)zeros;
        v[nv++].iov_len = pad8(len) - len;
    }

    pthread_mutex_lock(&w->mu);
    int rc = w->failed;
    if (rc)
        goto out;
    if (w->off > w->segs[w->nsegs - 1].hdr_len && w->off + total > w->segment_bytes &&
        (rc = rotate(w)))
        goto out;
    h.lsn = w->next_lsn;
    h.checksum = rec_checksum(&h, ph);
    uint64_t off = w->off, left = total;
    struct iovec *cur = v;
    int ncur = nv;
    while (left) {
        ssize_t k = pwritev(w->fd, cur, ncur, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = k < 0 ? -errno : -EIO;
            if (ftruncate(w->fd, (off_t)w->off)) {
                w->failed = -EIO;
                DHPS_LOG(DHPS_LOG_ERROR, LOGM, "%s: cannot cut a failed append: %s; log "
                         "failed", w->dir, strerror(errno));
            }
            goto out;
        }
        off += (uint64_t)k;
        left -= (uint64_t)k;
        while (k > 0 && (size_t)k >= cur->iov_len) {
            k -= (ssize_t)cur->iov_len;
            cur++;
            ncur--;
        }
        if (k > 0) {
            cur->iov_base = (uint8_t *)cur->iov_base + k;
            cur->iov_len -= (size_t)k;
        }
    }
    w->off += total;
    w->disk_bytes += total;
    w->segs[w->nsegs - 1].bytes = w->off;
    if (lsn)
        *lsn = w->next_lsn;
    __atomic_store_n(&w->next_lsn, w->next_lsn + 1, __ATOMIC_RELEASE);
    __atomic_fetch_add(&w->appended, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->appended_bytes, total, __ATOMIC_RELAXED);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* One group-commit step: fdatasync everything written so far. Call with sync_mu held and
 * syncing false; returns with sync_mu held. */
static void sync_step(dhps_wal *w)
{
    w->syncing = true;
    pthread_mutex_unlock(&w->sync_mu);
    pthread_mutex_lock(&w->mu);
    uint64_t target = w->next_lsn - 1;
    int fd = w->fd >= 0 ? dup(w->fd) : -1; /* a rotation may close w->fd meanwhile; it
                                               fdatasyncs the old segment itself */
    bool all = w->older_unsynced;          /* NEVER only: older segments too */
    w->older_unsynced = false;
    pthread_mutex_unlock(&w->mu);
    int rc = 0;
    uint64_t t0 = dhps_mono_ns();
    if (fd < 0)
        rc = -errno;
    else if (all ? syncfs(fd) : fdatasync(fd))
        rc = -errno;
    uint64_t dt = dhps_mono_ns() - t0;
    if (fd >= 0)
        close(fd);
    __atomic_fetch_add(&w->fsyncs, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->fsync_ns, dt, __ATOMIC_RELAXED);
    pthread_mutex_lock(&w->sync_mu);
    w->syncing = false;
    if (rc) {
        /* After a failed fdatasync the page cache may have dropped the dirty pages:
         * nothing written before can be promised durable any more (fsyncgate). */
        w->sync_err = rc;
        DHPS_LOG(DHPS_LOG_ERROR, LOGM, "%s: fdatasync: %s; log failed", w->dir,
                 strerror(-rc));
    } else if (target > w->synced_lsn) {
        w->synced_lsn = target;
    }
    pthread_cond_broadcast(&w->sync_cv);
}

int dhps_wal_wait(dhps_wal *w, uint64_t lsn)
{
    if (lsn == 0 || lsn >= __atomic_load_n(&w->next_lsn, __ATOMIC_ACQUIRE))
        return -EINVAL;
    pthread_mutex_lock(&w->sync_mu);
    int rc = 0;
    while (w->synced_lsn < lsn) {
        if ((rc = w->sync_err))
            break;
        if (w->syncing) {
            pthread_cond_wait(&w->sync_cv, &w->sync_mu);
            continue;
        }
        sync_step(w);
    }
    if (!rc && w->sync_err && w->synced_lsn < lsn)
        rc = w->sync_err;
    pthread_mutex_unlock(&w->sync_mu);
    if (rc) {
        pthread_mutex_lock(&w->mu);
        if (!w->failed)
            w->failed = -EIO;
        pthread_mutex_unlock(&w->mu);
    }
    return rc;
}

int dhps_wal_sync(dhps_wal *w)
{
    uint64_t last = __atomic_load_n(&w->next_lsn, __ATOMIC_ACQUIRE) - 1;
    return last ? dhps_wal_wait(w, last) : 0;
}

uint64_t dhps_wal_next_lsn(dhps_wal *w)
{
    return __atomic_load_n(&w->next_lsn, __ATOMIC_ACQUIRE);
}

static void *interval_main(void *arg)
{
    dhps_wal *w = arg;
    pthread_mutex_lock(&w->sync_mu);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)w->interval_ms * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        while (!w->stop && pthread_cond_timedwait(&w->sync_cv, &w->sync_mu, &ts) != ETIMEDOUT)
            ;
        if (w->stop)
            break;
        uint64_t written = __atomic_load_n(&w->next_lsn, __ATOMIC_ACQUIRE) - 1;
        if (!w->syncing && !w->sync_err && written > w->synced_lsn)
            sync_step(w);
    }
    pthread_mutex_unlock(&w->sync_mu);
    return NULL;
}

int dhps_wal_truncate_before(dhps_wal *w, uint64_t lsn)
{
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (w->off > w->segs[w->nsegs - 1].hdr_len && w->next_lsn <= lsn && !w->failed)
        rc = rotate(w); /* the active segment holds only records < lsn: let it go too */
    int n = 0;
    while (!rc && w->nsegs > 1 && w->segs[1].first_lsn <= lsn) {
        char path[PATH_MAX];
        seg_path(w, w->segs[0].first_lsn, path, sizeof path);
        if (unlink(path) && errno != ENOENT) {
            rc = -errno;
            DHPS_LOG(DHPS_LOG_ERROR, LOGM, "unlink %s: %s", path, strerror(errno));
            break;
        }
        w->disk_bytes -= w->segs[0].bytes;
        memmove(w->segs, w->segs + 1, (w->nsegs - 1) * sizeof *w->segs);
        w->nsegs--;
        n++;
    }
    pthread_mutex_unlock(&w->mu);
    if (n && w->sync != DHPS_WAL_SYNC_NEVER)
        fsync_dir(w->dir);
    return rc ? rc : n;
}

void dhps_wal_get_stats(dhps_wal *w, dhps_wal_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&w->mu);
    st->disk_bytes = w->disk_bytes;
    st->segments = w->nsegs;
    st->next_lsn = w->next_lsn;
    pthread_mutex_unlock(&w->mu);
    st->appended = __atomic_load_n(&w->appended, __ATOMIC_RELAXED);
    st->appended_bytes = __atomic_load_n(&w->appended_bytes, __ATOMIC_RELAXED);
    st->fsyncs = __atomic_load_n(&w->fsyncs, __ATOMIC_RELAXED);
    st->fsync_ns = __atomic_load_n(&w->fsync_ns, __ATOMIC_RELAXED);
    pthread_mutex_lock(&w->sync_mu);
    st->synced_lsn = w->synced_lsn;
    pthread_mutex_unlock(&w->sync_mu);
}

void dhps_wal_close(dhps_wal *w)
{
    if (!w)
        return;
    if (w->thread_running) {
        pthread_mutex_lock(&w->sync_mu);
        w->stop = true;
        pthread_cond_broadcast(&w->sync_cv);
        pthread_mutex_unlock(&w->sync_mu);
        pthread_join(w->thread, NULL);
    }
    if (w->fd >= 0) {
        if (w->sync != DHPS_WAL_SYNC_NEVER && !w->failed && fdatasync(w->fd))
            DHPS_LOG(DHPS_LOG_ERROR, LOGM, "%s: final fdatasync: %s", w->dir, strerror(errno));
        close(w->fd);
    }
    pthread_cond_destroy(&w->sync_cv);
    pthread_mutex_destroy(&w->sync_mu);
    pthread_mutex_destroy(&w->mu);
    free(w->segs);
    free(w->dir);
    free(w);
}

/* ---- recovery ------------------------------------------------------------------------ */

typedef struct scan_seg {
    uint64_t first_lsn;
    int fd;
    uint8_t *map;
    uint64_t map_len;
    uint64_t size;        /* file size (after a cut: the cut) */
    uint64_t end;         /* end of the last whole record */
    uint64_t next_lsn;    /* LSN after its last record */
    uint32_t hdr_len;     /* where its records start */
    bool same_ident;      /* written with the caller's identity */
    char name[64];
} scan_seg;

static int cmp_seg(const void *a, const void *b)
{
    const scan_seg *x = a, *y = b;
    return x->first_lsn < y->first_lsn ? -1 : x->first_lsn > y->first_lsn;
}

/* Is there a whole record at off of m[0..size)? (checks length, zero field, checksum) */
static bool whole_record(const uint8_t *m, uint64_t size, uint64_t off, wal_rec_hdr *h)
{
    if (size - off < DHPS_WAL_RECORD_HDR)
        return false;
    memcpy(h, m + off, sizeof *h);
    if (h->zero || h->len > DHPS_WAL_MAX_RECORD ||
        pad8(h->len) > size - off - DHPS_WAL_RECORD_HDR)
        return false;
    uint64_t ph = XXH3_64bits(m + off + DHPS_WAL_RECORD_HDR, h->len);
    return rec_checksum(h, ph) == h->checksum;
}

/* Check one segment's header and records; set end / next_lsn. last: the newest segment
 * (a damaged tail there is a torn write; anywhere else it is corruption). */
static int scan_one(const dhps_wal_params *p, dhps_wal *w, scan_seg *g, bool last,
                    dhps_wal_report *rep, char *err, size_t errlen)
{
    wal_seg_fixed f;
    memcpy(&f, g->map, sizeof f);
    if (memcmp(f.magic, WAL_MAGIC, 8)) {
        errf(err, errlen, "wal %s/%s: not a dhps log segment (bad magic)", w->dir, g->name);
        return DHPS_E_CORRUPT;
    }
    if (f.format != 1 && f.format != WAL_FORMAT) {
        errf(err, errlen, "wal %s/%s: format version %u, this build reads 1 and %u", w->dir,
             g->name, f.format, WAL_FORMAT);
        return DHPS_E_VERSION;
    }
    const char *ident;
    bool ok;
    if (f.format == 1) {
        const wal_seg_hdr1 *h1 = (const wal_seg_hdr1 *)g->map; /* mmap'ed: aligned */
        g->hdr_len = sizeof *h1;
        ident = h1->ident;
        ok = g->size >= sizeof *h1 && f.ident_len < sizeof h1->ident &&
             XXH3_64bits(h1, offsetof(wal_seg_hdr1, checksum)) == h1->checksum;
    } else {
        g->hdr_len = f.ident_len <= DHPS_WAL_IDENTITY_MAX
                         ? DHPS_WAL_SEGMENT_HDR_BYTES(f.ident_len) : UINT32_MAX;
        ident = (const char *)g->map + sizeof f;
        ok = g->size >= g->hdr_len;
        uint64_t sum;
        if (ok) {
            memcpy(&sum, g->map + g->hdr_len - 8, 8);
            ok = XXH3_64bits(g->map, g->hdr_len - 8) == sum;
        }
        for (uint32_t i = sizeof f + f.ident_len; ok && i < g->hdr_len - 8; i++)
            ok = g->map[i] == 0; /* padding */
    }
    if (!ok || f.first_lsn != g->first_lsn) {
        errf(err, errlen, "wal %s/%s: damaged segment header", w->dir, g->name);
        return DHPS_E_CORRUPT;
    }
    /* the identity as a NUL-terminated copy (a format-1 header holds no NUL after it) */
    char found[DHPS_WAL_IDENTITY_MAX + 1];
    memcpy(found, ident, f.ident_len);
    found[f.ident_len] = 0;
    g->same_ident = f.ident_len == w->ident_len && !memcmp(found, w->ident, w->ident_len);
    if (p->check) {
        char why[1024] = "";
        int rc = p->check(p->check_arg, g->name, g->first_lsn, found, f.ident_len, why,
                          sizeof why);
        if (rc) {
            errf(err, errlen, "wal %s/%s: %s", w->dir, g->name,
                 why[0] ? why : dhps_strerror(rc));
            return rc;
        }
    } else if (!g->same_ident) {
        errf(err, errlen, "wal %s/%s: written by \"%s\", not by \"%s\" (another node's log: "
             "refusing to load it)", w->dir, g->name, found, w->ident);
        return DHPS_E_MISMATCH;
    }
    uint64_t off = g->hdr_len, lsn = g->first_lsn;
    wal_rec_hdr r;
    while (off < g->size) {
        if (!whole_record(g->map, g->size, off, &r))
            break;
        if (r.lsn != lsn) {
            errf(err, errlen, "wal %s/%s offset %" PRIu64 ": LSN %" PRIu64 ", expected %"
                 PRIu64, w->dir, g->name, off, r.lsn, lsn);
            return DHPS_E_CORRUPT;
        }
        lsn++;
        rep->records++;
        off += DHPS_WAL_RECORD_HDR + pad8(r.len);
    }
    g->end = off;
    g->next_lsn = lsn;
    if (off == g->size)
        return 0;
    if (!last) {
        errf(err, errlen, "wal %s/%s offset %" PRIu64 ": damaged record (LSN %" PRIu64
             ") in a segment that is not the newest", w->dir, g->name, off, lsn);
        return DHPS_E_CORRUPT;
    }
    /* Torn tail, or damage in the middle? A whole valid record further on says middle.
     * Records are 8-aligned, so only 8-aligned offsets can hold one. */
    for (uint64_t q = off + 8; q + DHPS_WAL_RECORD_HDR <= g->size; q += 8) {
        uint64_t l;
        memcpy(&l, g->map + q + 8, 8);
        if (l < lsn || l > lsn + (g->size - off) / DHPS_WAL_RECORD_HDR)
            continue;
        if (whole_record(g->map, g->size, q, &r)) {
            errf(err, errlen, "wal %s/%s offset %" PRIu64 ": damaged record (LSN %" PRIu64
                 ") followed by a valid record (LSN %" PRIu64 " at offset %" PRIu64 "): "
                 "corruption, not a torn tail; refusing to replay", w->dir, g->name, off,
                 lsn, r.lsn, q);
            return DHPS_E_CORRUPT;
        }
    }
    rep->torn_bytes = g->size - off;
    rep->torn_offset = off;
    rep->torn_lsn = lsn - 1;
    snprintf(rep->torn_segment, sizeof rep->torn_segment, "%s", g->name);
    DHPS_LOG(DHPS_LOG_WARN, LOGM, "wal %s/%s: torn tail: cutting %" PRIu64 " bytes at offset %"
             PRIu64 " (last whole record: LSN %" PRIu64 ")", w->dir, g->name, rep->torn_bytes,
             off, rep->torn_lsn);
    if (ftruncate(g->fd, (off_t)off) || fdatasync(g->fd)) {
        int e = errno;
        errf(err, errlen, "wal %s/%s: cannot cut the torn tail: %s", w->dir, g->name,
             strerror(e));
        return -e;
    }
    g->size = off;
    return 0;
}

/* A file name wal.<16 lowercase hex>.log (tail "") or wal.<...>.log.tmp (tail ".tmp")?
 * Sets *first. */
static bool seg_file_name(const char *nm, const char *tail, uint64_t *first)
{
    size_t tl = strlen(tail);
    if (strlen(nm) != 24 + tl || strncmp(nm, "wal.", 4) || strncmp(nm + 20, ".log", 4) ||
        strcmp(nm + 24, tail))
        return false;
    char hex[17];
    memcpy(hex, nm + 4, 16);
    hex[16] = 0;
    char *endp;
    *first = strtoull(hex, &endp, 16);
    return !*endp && strspn(hex, "0123456789abcdef") == 16;
}

/* A newest segment cut short while it was being created, before any record went into
 * it? Shorter than a header's fixed part (format 2 segments appear by rename with their
 * header written, so only a power cut under NEVER leaves that), or a format-1 segment
 * (created in place by older builds) shorter than its 288-byte header. A format-2
 * segment shorter than the header it declares is not: its length field may be what is
 * damaged, with records after it. */
static bool torn_creation(int fd, uint64_t size)
{
    if (size < sizeof(wal_seg_fixed))
        return true;
    wal_seg_fixed f;
    return size < sizeof(wal_seg_hdr1) && pread(fd, &f, sizeof f, 0) == (ssize_t)sizeof f &&
           !memcmp(f.magic, WAL_MAGIC, 8) && f.format == 1;
}

static int wal_recover(const dhps_wal_params *p, dhps_wal *w, uint64_t from_lsn,
                       dhps_wal_replay_fn fn, void *arg, dhps_wal_report *rep, char *err,
                       size_t errlen)
{
    scan_seg *g = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    DIR *d = opendir(w->dir);
    if (!d) {
        rc = -errno;
        errf(err, errlen, "wal dir %s: %s", w->dir, strerror(errno));
        return rc;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        uint64_t first;
        if (seg_file_name(nm, ".tmp", &first)) { /* a creation that never got renamed */
            if (unlinkat(dirfd(d), nm, 0) == 0)
                DHPS_LOG(DHPS_LOG_WARN, LOGM, "wal %s/%s: a segment that was never "
                         "completed: removed", w->dir, nm);
            continue;
        }
        if (!seg_file_name(nm, "", &first))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            scan_seg *ng = realloc(g, cap * sizeof *ng);
            if (!ng) {
                rc = -ENOMEM;
                break;
            }
            g = ng;
        }
        memset(&g[n], 0, sizeof g[n]);
        g[n].first_lsn = first;
        g[n].fd = -1;
        seg_name(first, g[n].name, sizeof g[n].name); /* == nm (lowercase hex) */
        n++;
    }
    closedir(d);
    if (rc)
        goto out;
    if (n)
        qsort(g, n, sizeof *g, cmp_seg);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", w->dir, g[i].name);
        struct stat sb;
        if ((g[i].fd = open(path, O_RDWR | O_CLOEXEC)) < 0 || fstat(g[i].fd, &sb)) {
            rc = -errno;
            errf(err, errlen, "wal %s: %s", path, strerror(errno));
            goto out;
        }
        g[i].size = (uint64_t)sb.st_size;
        if (torn_creation(g[i].fd, g[i].size)) {
            if (i + 1 < n) {
                errf(err, errlen, "wal %s: %" PRIu64 " bytes, shorter than a segment header, "
                     "and not the newest segment", path, g[i].size);
                rc = DHPS_E_CORRUPT;
                goto out;
            }
            /* Crashed while creating the newest segment: nothing was appended to it. */
            rep->torn_bytes = g[i].size;
            rep->torn_offset = 0;
            rep->torn_lsn = i ? g[i - 1].next_lsn - 1 : 0;
            snprintf(rep->torn_segment, sizeof rep->torn_segment, "%s", g[i].name);
            DHPS_LOG(DHPS_LOG_WARN, LOGM, "wal %s: %" PRIu64 " bytes, a segment whose header "
                     "was never completed: removed", path, g[i].size);
            close(g[i].fd);
            if (unlink(path)) {
                rc = -errno;
                errf(err, errlen, "wal %s: %s", path, strerror(errno));
                goto out;
            }
            n--;
            break;
        }
        g[i].map = mmap(NULL, g[i].size, PROT_READ, MAP_PRIVATE, g[i].fd, 0);
        if (g[i].map == MAP_FAILED) {
            g[i].map = NULL;
            rc = -errno;
            errf(err, errlen, "wal %s: mmap: %s", path, strerror(errno));
            goto out;
        }
        g[i].map_len = g[i].size;
        if ((rc = scan_one(p, w, &g[i], i + 1 == n, rep, err, errlen)))
            goto out;
    }
    /* LSNs must run on across segments; a gap is harmless only below from_lsn (those
     * records are covered by the checkpoint's snapshots). */
    for (size_t i = 0; i < n; i++) {
        uint64_t want = i ? g[i - 1].next_lsn : (from_lsn ? from_lsn : g[0].first_lsn);
        if (i && g[i].first_lsn < want) {
            errf(err, errlen, "wal %s/%s: starts at LSN %" PRIu64 " but %s ends at %" PRIu64,
                 w->dir, g[i].name, g[i].first_lsn, g[i - 1].name, want - 1);
            rc = DHPS_E_CORRUPT;
            goto out;
        }
        if (g[i].first_lsn > want && g[i].first_lsn > from_lsn) {
            errf(err, errlen, "wal %s/%s: starts at LSN %" PRIu64 ", records %" PRIu64
                 "..%" PRIu64 " are missing (needed from LSN %" PRIu64 ")", w->dir, g[i].name,
                 g[i].first_lsn, want, g[i].first_lsn - 1, from_lsn);
            rc = DHPS_E_CORRUPT;
            goto out;
        }
    }
    rep->segments = n;
    rep->first_lsn = n ? g[0].first_lsn : 0;
    /* The whole log checked out: replay. */
    for (size_t i = 0; i < n && fn; i++) {
        uint64_t off = g[i].hdr_len;
        while (off < g[i].end) {
            wal_rec_hdr r;
            memcpy(&r, g[i].map + off, sizeof r);
            if (r.lsn >= from_lsn) {
                if ((rc = fn(arg, r.lsn, g[i].map + off + DHPS_WAL_RECORD_HDR, r.len))) {
                    errf(err, errlen, "wal %s/%s: replay of LSN %" PRIu64 ": %s", w->dir,
                         g[i].name, r.lsn, dhps_strerror(rc));
                    goto out;
                }
                rep->replayed++;
            }
            off += DHPS_WAL_RECORD_HDR + pad8(r.len);
        }
    }
    uint64_t next = n ? g[n - 1].next_lsn : 1;
    if (next < from_lsn)
        next = from_lsn;
    if (next < 1)
        next = 1;
    /* Appends go on in the newest segment when it ends at next and was written with
     * this identity. Else a new segment starts at next; a newest segment that starts
     * there holds no record and is replaced (the new one is renamed over it). */
    bool cont = n && g[n - 1].next_lsn == next && g[n - 1].same_ident;
    size_t keep = n && !cont && g[n - 1].first_lsn == next ? n - 1 : n;
    for (size_t i = 0; i < keep; i++)
        if ((rc = push_seg(w, g[i].first_lsn, g[i].size, g[i].hdr_len)))
            goto out;
        else
            w->disk_bytes += g[i].size;
    w->next_lsn = next;
    w->synced_lsn = next - 1; /* recovery read it back; what we cut was fdatasync'd */
    if (cont) {
        w->fd = g[n - 1].fd;
        g[n - 1].fd = -1;
        w->off = g[n - 1].size;
    } else {
        /* empty log, the checkpoint past its end, or another identity: a new segment */
        if (n && (rc = fsync_dir(w->dir)))
            goto out;
        if ((rc = new_segment(w, next))) {
            errf(err, errlen, "wal %s: cannot create a segment: %s", w->dir, strerror(-rc));
            goto out;
        }
    }
    rep->next_lsn = next;
out:
    for (size_t i = 0; i < n; i++) {
        if (g[i].map)
            munmap(g[i].map, g[i].map_len);
        if (g[i].fd >= 0)
            close(g[i].fd);
    }
    free(g);
    return rc;
}

int dhps_wal_open(const dhps_wal_params *p, uint64_t from_lsn, dhps_wal_replay_fn fn,
                  void *arg, dhps_wal_report *rep, dhps_wal **out, char *err, size_t errlen)
{
    *out = NULL;
    errf(err, errlen, "%s", "");
    dhps_wal_report dummy;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof *rep);
    const char *ident = p && p->identity ? p->identity : "";
    if (!p || !p->dir || !*p->dir || strlen(ident) > DHPS_WAL_IDENTITY_MAX ||
        p->sync < DHPS_WAL_SYNC_NEVER || p->sync > DHPS_WAL_SYNC_ALWAYS ||
        p->interval_ms < 1 || p->interval_ms > 10000 || p->segment_bytes < 4096) {
        errf(err, errlen, "wal: bad parameters");
        return -EINVAL;
    }
    dhps_wal *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->sync_mu, NULL);
    pthread_cond_init(&w->sync_cv, NULL);
    w->ident_len = (uint32_t)strlen(ident);
    memcpy(w->ident, ident, w->ident_len);
    w->hdr_len = DHPS_WAL_SEGMENT_HDR_BYTES(w->ident_len);
    w->sync = p->sync;
    w->interval_ms = p->interval_ms;
    w->segment_bytes = p->segment_bytes;
    int rc;
    if (!(w->dir = strdup(p->dir))) {
        rc = -ENOMEM;
        goto fail;
    }
    if (mkdir(w->dir, 0700) && errno != EEXIST) {
        rc = -errno;
        errf(err, errlen, "wal dir %s: %s", w->dir, strerror(errno));
        goto fail;
    }
    if ((rc = wal_recover(p, w, from_lsn, fn, arg, rep, err, errlen)))
        goto fail;
    if (w->sync == DHPS_WAL_SYNC_INTERVAL) {
        if ((rc = pthread_create(&w->thread, NULL, interval_main, w))) {
            rc = -rc;
            errf(err, errlen, "wal: sync thread: %s", strerror(-rc));
            goto fail;
        }
        w->thread_running = true;
    }
    *out = w;
    return 0;
fail:
    dhps_wal_close(w);
    return rc;
}

/* Snapshots: a consistent image of the live records, written by the writer thread
 * (so nothing changes underneath), verified whole before anything is loaded.
 *
 * Layout (little-endian; see docs/store.md):
 *   header  64 B: "DHPSSNAP" | u32 format 2 | u32 192 (where blocks start) | u64 records |
 *                 u64 clock_ms | u64 wall_ms | u32 block_bytes | u32 0 | u64 0 |
 *                 u64 xxh3(bytes 0..55)
 *   identity 128 B (format 2): "IDNT" | u32 flags (1: set) | u32 shard | u32 nshards |
 *                 char table[48] | char cluster[56] (NUL-padded) | u64 xxh3(bytes 0..119)
 *   (format 1, still read: no identity block, blocks start at 64)
 *   block*      : "BLK1" | u32 nrecs | u32 payload_len | u32 0 | payload | u64 xxh3(hdr+payload)
 *      record   : u64 key | u64 version | u32 ttl_left_s (0: none) | u16 len | value
 *   trailer 32 B: "DHPSEND1" | u64 records | u64 blocks | u64 chain
 *   where chain = xxh3(block_hash, seed = chain) over the blocks in order, from 0.
 *
 * One walk (store_walk) and one image writer (snap_write, over a sink) serve the file
 * snapshot here and the in-memory export, digests and range versions in export.c;
 * load_buffer and merge_buffer share snap_verify and snap_apply. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dhps/log.h"
#include "store_int.h"

uint64_t store_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the record walk (shared with export.c) ------------------------------------- */

int store_walk(dhps_store *s, const uint64_t *range_mask, uint32_t nranges, bool values,
               store_visit_fn fn, void *arg)
{
    uint32_t now_s = store_now_s(s);
    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    /* Records of the bucket PF ahead are prefetched: their first line (key, header),
     * and when the visitor needs values the next PF_LINES - 1 lines too (a 128-byte
     * value spans 3 lines); keeps ~PF * 11 misses in flight. */
    enum { PF = 4, PF_LINES = 3 };
    const int lines = values && !range_mask ? PF_LINES : 1;
    for (uint64_t bi = 0; bi < t->nb; bi++) {
        if (bi + PF < t->nb) {
            const bucket *pb = &t->b[bi + PF];
            for (int i = 0; i < SLOTS; i++)
                if (pb->tags[i]) {
                    const uint8_t *pr = rec_ptr(s, pb->refs[i]);
                    for (int l = 0; l < lines; l++)
                        __builtin_prefetch(pr + 64 * l);
                }
        }
        const bucket *b = &t->b[bi];
        for (int i = 0; i < SLOTS; i++) {
            if (!b->tags[i])
                continue;
            uint32_t ref = b->refs[i];
            const uint8_t *rec = rec_ptr(s, ref);
            uint64_t key = rd64(rec);
            if (range_mask) {
                uint32_t r = dhps_store_key_range(key, nranges);
                if (!((range_mask[r >> 6] >> (r & 63)) & 1))
                    continue;
            }
            uint16_t lf = rd16(rec + 8);
            uint32_t ttl_left = 0;
            if (lf & REC_EXP) {
                uint32_t exp = rd32(rec + rec_exp_off(lf));
                if (exp <= now_s)
                    continue;
                ttl_left = exp - now_s;
            }
            int rc = fn(arg, key, rec_version(s, rec, seg_of_ref(s, ref)), ttl_left,
                        rec + rec_hdr_size(lf), lf & REC_LEN_MASK);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- the image writer, over a sink --------------------------------------------- */

typedef struct snap_writer {
    const snap_sink *k;
    uint64_t min_version; /* records with a lower version are left out */
    uint8_t *blk;
    uint32_t len, nrecs;
    uint64_t blocks, records, chain;
} snap_writer;

static int w_flush(snap_writer *w)
{
    if (!w->nrecs)
        return 0;
    memcpy(w->blk, SNAP_BLK, 4);
    wr32(w->blk + 4, w->nrecs);
    wr32(w->blk + 8, w->len - BLK_HDR);
    wr32(w->blk + 12, 0);
    uint64_t h = XXH3_64bits(w->blk, w->len);
    wr64(w->blk + w->len, h);
    int rc = w->k->write(w->k->arg, w->blk, w->len + 8);
    w->chain = XXH3_64bits_withSeed(&h, 8, w->chain);
    w->blocks++;
    w->len = BLK_HDR;
    w->nrecs = 0;
    return rc;
}

static int w_record(void *arg, uint64_t key, uint64_t ver, uint32_t ttl_left, const uint8_t *val,
                    uint32_t len)
{
    snap_writer *w = arg;
    if (ver < w->min_version)
        return 0;
    uint8_t *o = w->blk + w->len;
    wr64(o, key);
    wr64(o + 8, ver);
    wr32(o + 16, ttl_left);
    wr16(o + 20, (uint16_t)len);
    memcpy(o + SNAP_REC_HDR, val, len);
    w->len += SNAP_REC_HDR + len;
    w->nrecs++;
    w->records++;
    return w->len >= SNAP_BLOCK_TARGET ? w_flush(w) : 0;
}

int snap_write(dhps_store *s, const uint64_t *range_mask, uint32_t nranges,
               uint64_t min_version, const snap_sink *k, uint64_t *records)
{
    snap_writer w = {.k = k, .min_version = min_version, .len = BLK_HDR};
    /* a block: header, up to the target plus one largest record, its hash */
    w.blk = malloc(SNAP_BLOCK_TARGET + SNAP_REC_HDR + DHPS_STORE_MAX_VALUE + 8);
    if (!w.blk)
        return -ENOMEM;
    uint64_t now_ms = store_now_ms(s);
    uint8_t hdr[SNAP_HDR] = {0}, id[SNAP_ID_BYTES] = {0};
    memcpy(hdr, SNAP_MAGIC, 8);
    wr32(hdr + 8, SNAP_FORMAT);
    wr32(hdr + 12, SNAP_HDR + SNAP_ID_BYTES);
    /* records (offset 16) and the header hash are set by the sink's finish */
    wr64(hdr + 24, now_ms);
    wr64(hdr + 32, store_wall_ms());
    wr32(hdr + 40, SNAP_BLOCK_TARGET);
    memcpy(id, "IDNT", 4);
    if (s->has_id) {
        wr32(id + 4, 1);
        wr32(id + 8, s->id.shard);
        wr32(id + 12, s->id.nshards);
        memcpy(id + 16, s->id.table, strlen(s->id.table));
        memcpy(id + 64, s->id.cluster, strlen(s->id.cluster));
    }
    wr64(id + 120, XXH3_64bits(id, 120));
    int rc = k->write(k->arg, hdr, SNAP_HDR);
    if (!rc)
        rc = k->write(k->arg, id, SNAP_ID_BYTES);
    if (!rc)
        rc = store_walk(s, range_mask, nranges, true, w_record, &w);
    if (!rc)
        rc = w_flush(&w);
    free(w.blk);
    if (rc)
        return rc;
    uint8_t tr[SNAP_TRAILER];
    memcpy(tr, SNAP_END, 8);
    wr64(tr + 8, w.records);
    wr64(tr + 16, w.blocks);
    wr64(tr + 24, w.chain);
    if ((rc = k->write(k->arg, tr, SNAP_TRAILER)) != 0)
        return rc;
    wr64(hdr + 16, w.records);
    wr64(hdr + 56, XXH3_64bits(hdr, 56));
    if ((rc = k->finish(k->arg, hdr)) != 0)
        return rc;
    if (records)
        *records = w.records;
    return 0;
}

/* ---- the file sink --------------------------------------------------------------- */

static int file_write(void *arg, const void *p, size_t n)
{
    return fwrite(p, 1, n, (FILE *)arg) == n ? 0 : (errno ? -errno : -EIO);
}

static int file_finish(void *arg, const uint8_t *hdr)
{
    FILE *f = arg;
    if (fflush(f) != 0)
        return -errno;
    if (pwrite(fileno(f), hdr, SNAP_HDR, 0) != SNAP_HDR)
        return errno ? -errno : -EIO;
    if (fsync(fileno(f)) != 0)
        return -errno;
    return 0;
}

int dhps_store_snapshot(dhps_store *s, const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    /* 0600: a snapshot holds the table's data; only the server's user reads it */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = -errno;
        close(fd);
        unlink(tmp);
        return e;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    snap_sink k = {.write = file_write, .finish = file_finish, .arg = f};
    int err = snap_write(s, NULL, 0, 0, &k, NULL);
    if (fclose(f) != 0 && !err)
        err = -errno;
    if (!err && rename(tmp, path) != 0)
        err = -errno;
    if (err) {
        unlink(tmp);
        DHPS_LOG(DHPS_LOG_ERROR, "store", "snapshot %s: %s", path, dhps_strerror(err));
        return err;
    }
    char dirbuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* The header (and identity block) of an image: 1 with *id filled when it records one,
 * 0 when not, or DHPS_E_CORRUPT / DHPS_E_VERSION. */
static int snap_header(const uint8_t *p, size_t n, dhps_store_identity *id)
{
    if (n < SNAP_HDR || memcmp(p, SNAP_MAGIC, 8) != 0)
        return DHPS_E_CORRUPT;
    uint32_t fmt = rd32(p + 8), off = rd32(p + 12);
    if (!((fmt == 1 && off == SNAP_HDR) || (fmt == 2 && off == SNAP_HDR + SNAP_ID_BYTES)))
        return DHPS_E_VERSION;
    if (XXH3_64bits(p, 56) != rd64(p + 56))
        return DHPS_E_CORRUPT;
    if (fmt == 1)
        return 0;
    const uint8_t *b = p + SNAP_HDR;
    if (n < SNAP_HDR + SNAP_ID_BYTES || memcmp(b, "IDNT", 4) != 0 ||
        XXH3_64bits(b, 120) != rd64(b + 120))
        return DHPS_E_CORRUPT;
    uint32_t flags = rd32(b + 4);
    if (flags > 1)
        return DHPS_E_CORRUPT;
    if (!flags)
        return 0;
    memset(id, 0, sizeof *id);
    id->shard = rd32(b + 8);
    id->nshards = rd32(b + 12);
    memcpy(id->table, b + 16, DHPS_STORE_ID_TABLE_MAX);  /* the 48th byte stays NUL */
    memcpy(id->cluster, b + 64, DHPS_STORE_ID_CLUSTER_MAX);
    if (b[16 + DHPS_STORE_ID_TABLE_MAX] || b[64 + DHPS_STORE_ID_CLUSTER_MAX] ||
        id->nshards == 0 || id->shard >= id->nshards)
        return DHPS_E_CORRUPT;
    return 1;
}

int dhps_store_image_identity(const void *buf, size_t len, dhps_store_identity *id)
{
    return buf && id ? snap_header(buf, len, id) : -EINVAL;
}

int dhps_store_file_identity(const char *path, dhps_store_identity *id)
{
    uint8_t b[SNAP_HDR + SNAP_ID_BYTES];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = pread(fd, b, sizeof b, 0);
    int e = n < 0 ? -errno : 0;
    close(fd);
    return e ? e : snap_header(b, (size_t)n, id);
}

bool dhps_store_identity_match(const dhps_store_identity *a, const dhps_store_identity *b)
{
    return !strcmp(a->table, b->table) && a->shard == b->shard && a->nshards == b->nshards &&
           (!a->cluster[0] || !b->cluster[0] || !strcmp(a->cluster, b->cluster));
}

int dhps_store_set_identity(dhps_store *s, const dhps_store_identity *id)
{
    if (!s || !id || strnlen(id->table, sizeof id->table) > DHPS_STORE_ID_TABLE_MAX ||
        strnlen(id->cluster, sizeof id->cluster) > DHPS_STORE_ID_CLUSTER_MAX ||
        id->nshards == 0 || id->shard >= id->nshards)
        return -EINVAL;
    s->id = *id;
    s->has_id = true;
    return 0;
}

/* An image given to this store: refused when both name their data and differ. */
int snap_check_identity(const dhps_store *s, const uint8_t *p, size_t n)
{
    dhps_store_identity id;
    int rc = snap_header(p, n, &id);
    if (rc <= 0 || !s->has_id)
        return rc < 0 ? rc : 0;
    if (dhps_store_identity_match(&s->id, &id))
        return 0;
    DHPS_LOG(DHPS_LOG_WARN, "store", "image of table %s shard %u/%u%s%s refused by the store "
             "of table %s shard %u/%u%s%s", id.table, id.shard, id.nshards,
             id.cluster[0] ? " cluster " : "", id.cluster, s->id.table, s->id.shard,
             s->id.nshards, s->id.cluster[0] ? " cluster " : "", s->id.cluster);
    return DHPS_E_MISMATCH;
}

/* Verify the whole image; returns records or a negative error. */
long snap_verify(const uint8_t *p, size_t n)
{
    dhps_store_identity id;
    int hr = snap_header(p, n, &id);
    if (hr < 0)
        return hr;
    if (n < (size_t)SNAP_DATA_OFF(p) + SNAP_TRAILER)
        return DHPS_E_CORRUPT;
    uint64_t records = rd64(p + 16), seen = 0, blocks = 0, chain = 0;
    size_t off = SNAP_DATA_OFF(p), end = n - SNAP_TRAILER;
    while (off < end) {
        if (end - off < BLK_HDR + 8 || memcmp(p + off, SNAP_BLK, 4) != 0)
            return DHPS_E_CORRUPT;
        uint32_t nrecs = rd32(p + off + 4), plen = rd32(p + off + 8);
        if (rd32(p + off + 12) != 0 || plen > end - off - BLK_HDR - 8)
            return DHPS_E_CORRUPT;
        uint64_t h = XXH3_64bits(p + off, BLK_HDR + plen);
        if (h != rd64(p + off + BLK_HDR + plen))
            return DHPS_E_CORRUPT;
        const uint8_t *q = p + off + BLK_HDR, *qe = q + plen;
        for (uint32_t r = 0; r < nrecs; r++) {
            if ((size_t)(qe - q) < SNAP_REC_HDR)
                return DHPS_E_CORRUPT;
            uint16_t len = rd16(q + 20);
            if (len > DHPS_STORE_MAX_VALUE || (size_t)(qe - q) - SNAP_REC_HDR < len)
                return DHPS_E_CORRUPT;
            q += SNAP_REC_HDR + len;
        }
        if (q != qe)
            return DHPS_E_CORRUPT;
        seen += nrecs;
        blocks++;
        chain = XXH3_64bits_withSeed(&h, 8, chain);
        off += BLK_HDR + plen + 8;
    }
    const uint8_t *tr = p + end;
    if (memcmp(tr, SNAP_END, 8) != 0 || rd64(tr + 8) != seen || rd64(tr + 16) != blocks ||
        rd64(tr + 24) != chain || seen != records)
        return DHPS_E_CORRUPT;
    return (long)records;
}

long dhps_store_load_buffer(dhps_store *s, const void *buf, size_t n)
{
    if (s->keys)
        return -EBUSY;
    long rc = snap_verify(buf, n);
    if (rc < 0) {
        DHPS_LOG(DHPS_LOG_WARN, "store", "snapshot rejected: %s", dhps_strerror((int)rc));
        return rc;
    }
    if ((rc = snap_check_identity(s, buf, n)) < 0)
        return rc;
    return snap_apply(s, buf, n, NULL, NULL, NULL);
}

long dhps_store_load(dhps_store *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (st.st_size < (off_t)(SNAP_HDR + SNAP_TRAILER)) {
        close(fd);
        DHPS_LOG(DHPS_LOG_WARN, "store", "snapshot %s rejected: truncated", path);
        return DHPS_E_CORRUPT;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -errno;
    (void)madvise(m, (size_t)st.st_size, MADV_SEQUENTIAL);
    long rc = dhps_store_load_buffer(s, m, (size_t)st.st_size);
    munmap(m, (size_t)st.st_size);
    return rc;
}

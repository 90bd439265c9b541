/* Snapshots: a consistent image of the live records, written by the writer thread
 * (so nothing changes underneath), verified whole before anything is loaded.
 *
 * Layout (little-endian; see docs/store.md):
 *   header  64 B: "DHPSSNAP" | u32 format 1 | u32 64 | u64 records | u64 clock_ms |
 *                 u64 wall_ms | u32 block_bytes | u32 0 | u64 0 | u64 xxh3(bytes 0..55)
 *   block*      : "BLK1" | u32 nrecs | u32 payload_len | u32 0 | payload | u64 xxh3(hdr+payload)
 *      record   : u64 key | u64 version | u32 ttl_left_s (0: none) | u16 len | value
 *   trailer 32 B: "DHPSEND1" | u64 records | u64 blocks | u64 chain
 *   where chain = xxh3(block_hash, seed = chain) over the blocks in order, from 0. */
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

#define SNAP_MAGIC "DHPSSNAP"
#define SNAP_END "DHPSEND1"
#define SNAP_BLK "BLK1"
#define SNAP_FORMAT 1u
#define SNAP_HDR 64u
#define SNAP_TRAILER 32u
#define BLK_HDR 16u
#define REC_HDR 22u
#define BLOCK_TARGET (64u << 10)

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

typedef struct snap_writer {
    FILE *f;
    uint8_t *blk;
    uint32_t len, nrecs;
    uint64_t blocks, records, chain;
    int err;
} snap_writer;

static void w_bytes(snap_writer *w, const void *p, size_t n)
{
    if (!w->err && fwrite(p, 1, n, w->f) != n)
        w->err = errno ? -errno : -EIO;
}

static void w_flush(snap_writer *w)
{
    if (!w->nrecs)
        return;
    memcpy(w->blk, SNAP_BLK, 4);
    wr32(w->blk + 4, w->nrecs);
    wr32(w->blk + 8, w->len - BLK_HDR);
    wr32(w->blk + 12, 0);
    uint64_t h = XXH3_64bits(w->blk, w->len);
    w_bytes(w, w->blk, w->len);
    w_bytes(w, &h, 8);
    w->chain = XXH3_64bits_withSeed(&h, 8, w->chain);
    w->blocks++;
    w->len = BLK_HDR;
    w->nrecs = 0;
}

int dhps_store_snapshot(dhps_store *s, const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    snap_writer w = {0};
    w.blk = malloc(BLOCK_TARGET + REC_HDR + DHPS_STORE_MAX_VALUE);
    if (!w.blk)
        return -ENOMEM;
    w.len = BLK_HDR;
    w.f = fopen(tmp, "wb");
    if (!w.f) {
        int e = -errno;
        free(w.blk);
        return e;
    }
    setvbuf(w.f, NULL, _IOFBF, 1 << 20);
    uint64_t now_ms = store_now_ms(s);
    uint32_t now_s = (uint32_t)(now_ms / 1000);
    uint8_t hdr[SNAP_HDR] = {0};
    memcpy(hdr, SNAP_MAGIC, 8);
    wr32(hdr + 8, SNAP_FORMAT);
    wr32(hdr + 12, SNAP_HDR);
    /* records (offset 16) is patched after the walk */
    wr64(hdr + 24, now_ms);
    wr64(hdr + 32, wall_ms());
    wr32(hdr + 40, BLOCK_TARGET);
    w_bytes(&w, hdr, SNAP_HDR);

    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    for (uint64_t bi = 0; bi < t->nb && !w.err; bi++) {
        const bucket *b = &t->b[bi];
        for (int i = 0; i < SLOTS; i++) {
            if (!b->tags[i])
                continue;
            uint32_t ref = b->refs[i];
            const uint8_t *rec = rec_ptr(s, ref);
            uint16_t lf = rd16(rec + 8);
            uint32_t len = lf & REC_LEN_MASK, ttl_left = 0;
            if (lf & REC_EXP) {
                uint32_t exp = rd32(rec + rec_exp_off(lf));
                if (exp <= now_s)
                    continue;
                ttl_left = exp - now_s;
            }
            uint8_t *o = w.blk + w.len;
            wr64(o, rd64(rec));
            wr64(o + 8, rec_version(s, rec, seg_of_ref(s, ref)));
            wr32(o + 16, ttl_left);
            wr16(o + 20, (uint16_t)len);
            memcpy(o + REC_HDR, rec + rec_hdr_size(lf), len);
            w.len += REC_HDR + len;
            w.nrecs++;
            w.records++;
            if (w.len >= BLOCK_TARGET)
                w_flush(&w);
        }
    }
    w_flush(&w);
    uint8_t tr[SNAP_TRAILER];
    memcpy(tr, SNAP_END, 8);
    wr64(tr + 8, w.records);
    wr64(tr + 16, w.blocks);
    wr64(tr + 24, w.chain);
    w_bytes(&w, tr, SNAP_TRAILER);
    wr64(hdr + 16, w.records);
    uint64_t hh = XXH3_64bits(hdr, 56);
    wr64(hdr + 56, hh);
    if (!w.err && fflush(w.f) != 0)
        w.err = -errno;
    if (!w.err && pwrite(fileno(w.f), hdr, SNAP_HDR, 0) != SNAP_HDR)
        w.err = errno ? -errno : -EIO;
    if (!w.err && fsync(fileno(w.f)) != 0)
        w.err = -errno;
    if (fclose(w.f) != 0 && !w.err)
        w.err = -errno;
    free(w.blk);
    if (!w.err && rename(tmp, path) != 0)
        w.err = -errno;
    if (w.err) {
        unlink(tmp);
        DHPS_LOG(DHPS_LOG_ERROR, "store", "snapshot %s: %s", path, dhps_strerror(w.err));
        return w.err;
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

/* Verify the whole image; returns records or a negative error. */
static long snap_verify(const uint8_t *p, size_t n)
{
    if (n < SNAP_HDR + SNAP_TRAILER || memcmp(p, SNAP_MAGIC, 8) != 0)
        return DHPS_E_CORRUPT;
    if (rd32(p + 8) != SNAP_FORMAT || rd32(p + 12) != SNAP_HDR)
        return DHPS_E_VERSION;
    if (XXH3_64bits(p, 56) != rd64(p + 56))
        return DHPS_E_CORRUPT;
    uint64_t records = rd64(p + 16), seen = 0, blocks = 0, chain = 0;
    size_t off = SNAP_HDR, end = n - SNAP_TRAILER;
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
            if ((size_t)(qe - q) < REC_HDR)
                return DHPS_E_CORRUPT;
            uint16_t len = rd16(q + 20);
            if (len > DHPS_STORE_MAX_VALUE || (size_t)(qe - q) - REC_HDR < len)
                return DHPS_E_CORRUPT;
            q += REC_HDR + len;
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
    const uint8_t *p = buf;
    long rc = snap_verify(p, n);
    if (rc < 0) {
        DHPS_LOG(DHPS_LOG_WARN, "store", "snapshot rejected: %s", dhps_strerror((int)rc));
        return rc;
    }
    /* Time passed while the snapshot sat on disk counts against TTLs. */
    uint64_t snap_wall = rd64(p + 32), now_wall = wall_ms();
    uint64_t away_s = now_wall > snap_wall ? (now_wall - snap_wall) / 1000 : 0;
    long loaded = 0;
    size_t off = SNAP_HDR, end = n - SNAP_TRAILER;
    while (off < end) {
        uint32_t nrecs = rd32(p + off + 4), plen = rd32(p + off + 8);
        const uint8_t *q = p + off + BLK_HDR;
        for (uint32_t r = 0; r < nrecs; r++) {
            uint64_t key = rd64(q), ver = rd64(q + 8);
            uint32_t ttl = rd32(q + 16);
            uint16_t len = rd16(q + 20);
            const uint8_t *val = q + REC_HDR;
            q += REC_HDR + len;
            if (ttl) {
                if (ttl <= away_s)
                    continue;
                ttl -= (uint32_t)away_s;
            }
            dhps_store_batch b = {.keys = &key, .n = 1, .values = val, .value_stride = len,
                                  .version = ver, .ttl = ttl};
            long w = dhps_store_put(s, &b, NULL);
            if (w < 0)
                return w;
            loaded += w;
        }
        off += BLK_HDR + plen + 8;
    }
    return loaded;
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

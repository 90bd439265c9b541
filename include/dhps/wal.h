/*
 * dhps wal: an append-only update log (write-ahead log) in one directory.
 *
 * Why. A dhps-server node keeps its tables in memory and snapshots them now and then; the
 *   log holds every update acknowledged since the last complete snapshot, so a restart
 *   (kill -9, OOM kill, power cut) loses nothing that was acknowledged, within the fsync
 *   policy below. The module does not interpret payloads: the server encodes one record
 *   per write batch (src/server/durable.h).
 *
 * Files. Numbered segment files wal.<first LSN as 16 hex digits>.log. A segment starts
 *   with a header: magic "DHPSWAL\0", format version (2), the identity length, the
 *   segment's first LSN, the caller's identity (up to DHPS_WAL_IDENTITY_MAX bytes, zero
 *   padded to 8) and an XXH3-64 of all that: DHPS_WAL_SEGMENT_HDR_BYTES(identity length)
 *   bytes. A segment is created as wal.<...>.log.tmp, its header written (and fdatasync'd
 *   unless NEVER) and renamed into place, so a segment file always starts with a whole
 *   header. Format 1 (a fixed 288-byte header with up to 255 identity bytes, written by
 *   older builds) is still read; new segments are always format 2. Records follow the
 *   header, each 8-byte aligned:
 *     u32 payload length | u32 zero | u64 LSN | u64 checksum | payload | zero pad to 8
 *   checksum = XXH3-64(first 16 header bytes, seed = XXH3-64(payload)), i.e. it covers the
 *   header and the payload; the payload hash is computed before the log's lock is taken,
 *   so the critical section is the write alone. LSNs start at 1 and grow by one per
 *   record, across segments without gaps.
 *
 * Identity. Each segment's identity is checked at open, before anything is replayed: by
 *   default it must equal the caller's byte for byte (DHPS_E_MISMATCH naming both), or
 *   params.check decides (dhps-server accepts its older identity form that way and keeps
 *   what each segment names for its replay). Appends continue in the newest segment only
 *   when its identity is the caller's; otherwise open starts a new segment (replacing the
 *   newest one when that holds no record), so the records of a segment were all written
 *   under the identity in its header.

 * Appends. dhps_wal_append hands the record to the kernel (one pwritev of header +
 *   caller's iovecs + pad) before it returns: a process crash after it returned loses
 *   nothing under any policy. Durability against power loss depends on the policy:
 *     ALWAYS    the caller calls dhps_wal_wait(lsn), which returns once an fdatasync that
 *               started after the record was written has completed. Group commit: one
 *               waiter runs the fdatasync for every record written so far, the others
 *               sleep on a condvar and are released together.
 *     INTERVAL  a background thread fdatasyncs every interval_ms (default 10) when
 *               something was written: a power cut loses at most ~interval_ms of appends.
 *     NEVER     the page cache decides.
 *   Appends from several threads are serialized by one mutex held for the pwritev.
 *   pwritev, not io_uring (docs/PERFORMANCE.md "Update log", `dhps-bench wal`): append
 *   must have the record in the kernel when it returns, so io_uring means one submission
 *   and one completion wait per record; for buffered 1 KiB appends that measured 0.37-0.42x
 *   of pwrite (1.2-1.3x for 128 KiB), and under ALWAYS the bound is the number of
 *   fdatasyncs, which group commit cuts, not how they are submitted. liburing is a
 *   bench-only dependency.
 *
 * Rotation and truncation. A record that would take a segment past segment_bytes (default
 *   64 MiB) goes to a new segment (the old one is fdatasync'd first, except under NEVER). After a checkpoint (every store snapshotted, all records < L covered) the
 *   caller calls dhps_wal_truncate_before(L): segment files all of whose records are < L
 *   are deleted.
 *
 * Recovery. dhps_wal_open scans every segment: headers (magic, version, checksum,
 *   identity), then records (length, checksum, LSN sequence). A damaged tail of the last
 *   segment (torn write, short record, garbage, bad checksum with no whole valid record
 *   after it) is cut with ftruncate at the end of the last whole record and reported in
 *   dhps_wal_report and in the log (warn). Damage followed by a whole valid record, or any
 *   damage in an older segment, is corruption: DHPS_E_CORRUPT with the file and offset in
 *   the error message, and nothing is replayed. Only after the whole log checked out are
 *   the records with LSN >= from_lsn passed, in order, to the replay callback. Appends
 *   then continue at the next LSN. A newest segment cut short while it was created
 *   (shorter than a header's 24 fixed bytes, or a format-1 segment shorter than 288) held
 *   no record and is removed with a warning, as are leftover wal.*.log.tmp files; a
 *   format-2 segment shorter than the header it declares is a damaged header.
 */
#ifndef DHPS_WAL_H
#define DHPS_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "dhps/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dhps_wal dhps_wal;

enum dhps_wal_sync {
    DHPS_WAL_SYNC_NEVER = 0,
    DHPS_WAL_SYNC_INTERVAL = 1,
    DHPS_WAL_SYNC_ALWAYS = 2,
};

/* Longest identity (bytes, without the NUL). */
#define DHPS_WAL_IDENTITY_MAX 8191u
/* Largest payload of one record (bytes). */
#define DHPS_WAL_MAX_RECORD (256u << 20)
/* Bytes of a record header. */
#define DHPS_WAL_RECORD_HDR 24u
/* Bytes of a (format 2) segment header whose identity has ident_len bytes: 24 fixed,
 * the identity padded to 8, an 8-byte checksum. Records start there. */
#define DHPS_WAL_SEGMENT_HDR_BYTES(ident_len) (32u + (((uint32_t)(ident_len) + 7u) & ~7u))
/* Most iovecs one append takes. */
#define DHPS_WAL_MAX_IOV 64

/*
 * Identity check of one existing segment (params.check): called by dhps_wal_open for every
 * segment, oldest first, after its header checked out and before any record is replayed.
 * found[0..len) is the identity the segment was written with (found[len] is a NUL; the
 * bytes may hold anything else), segment its file name, first_lsn its first LSN. Return 0
 * to accept it, or a negative error (e.g. DHPS_E_MISMATCH) with a one-line reason in err
 * (errlen bytes) to refuse the open; the open's message is "wal <dir>/<segment>: <err>".
 */
typedef int (*dhps_wal_check_fn)(void *arg, const char *segment, uint64_t first_lsn,
                                 const char *found, size_t len, char *err, size_t errlen);

typedef struct dhps_wal_params {
    const char *dir;          /* directory of the segments (created if missing, one level) */
    const char *identity;     /* written into every new segment; "" allowed, at most
                                 DHPS_WAL_IDENTITY_MAX bytes (default "") */
    int sync;                 /* enum dhps_wal_sync (default DHPS_WAL_SYNC_INTERVAL) */
    uint32_t interval_ms;     /* INTERVAL period, 1..10000 (default 10) */
    uint64_t segment_bytes;   /* rotation size, >= 4096 (default 64 MiB) */
    dhps_wal_check_fn check;  /* NULL (default): a segment's identity must equal identity,
                                 else the open fails with DHPS_E_MISMATCH naming both */
    void *check_arg;          /* passed to check */
} dhps_wal_params;

/* Fill p with the defaults above (dir NULL: the caller must set it). */
void dhps_wal_params_init(dhps_wal_params *p);

/* What dhps_wal_open found. */
typedef struct dhps_wal_report {
    uint64_t segments;        /* segment files found (after a torn empty one was removed) */
    uint64_t records;         /* whole records found in the log */
    uint64_t replayed;        /* records passed to the callback (LSN >= from_lsn) */
    uint64_t first_lsn;       /* first LSN in the log (0: empty) */
    uint64_t next_lsn;        /* LSN the next append gets */
    uint64_t torn_bytes;      /* bytes cut from the tail (0: clean) */
    uint64_t torn_offset;     /* offset of the cut in torn_segment */
    uint64_t torn_lsn;        /* last whole LSN before the cut (0: none) */
    char torn_segment[64];    /* file name of the cut segment ("" when clean) */
} dhps_wal_report;

/* Replay callback: one record, in LSN order. payload is valid during the call only
 * (8-byte aligned). Return 0 to go on, or a negative error to stop open with it. */
typedef int (*dhps_wal_replay_fn)(void *arg, uint64_t lsn, const void *payload, size_t len);

/*
 * Open (or create) the log in p->dir, check it, cut a torn tail, replay the records with
 * LSN >= from_lsn through fn (may be NULL) and get ready to append at
 * max(last LSN + 1, from_lsn, 1). rep (may be NULL) receives what was found. Starts the
 * INTERVAL thread. Not thread-safe against another open of the same directory (one
 * process owns a log; nothing locks the directory).
 * Returns 0 and sets *out, or, with a message naming the file in err (errlen bytes):
 *   -EINVAL      bad params
 *   DHPS_E_MISMATCH a segment written with another identity (params.check NULL), or
 *                   params.check's error
 *   DHPS_E_VERSION  a segment of an unknown format version
 *   DHPS_E_CORRUPT  a damaged header, damage followed by a valid record, damage in an
 *                   older segment, a gap in the LSNs, or a log starting after from_lsn
 *   -errno       I/O; or the callback's error. Nothing is left open on failure.
 */
int dhps_wal_open(const dhps_wal_params *p, uint64_t from_lsn, dhps_wal_replay_fn fn,
                  void *arg, dhps_wal_report *rep, dhps_wal **out, char *err, size_t errlen);

/*
 * Append one record whose payload is the concatenation of iov[0..iovcnt) (iovcnt
 * 1..DHPS_WAL_MAX_IOV; the buffers are only read during the call). Thread-safe: appends
 * are serialized; the record is in the kernel (pwritev returned) when this returns.
 * Sets *lsn (may be NULL) to the record's LSN. Returns 0, or -EINVAL, DHPS_E_TOOBIG
 * (payload > DHPS_WAL_MAX_RECORD), -errno from the write (the partial record is cut off
 * again; if even that fails, or an fdatasync failed before, the log is failed and every
 * later append returns -EIO). On error no LSN is consumed.
 */
int dhps_wal_append(dhps_wal *w, const struct iovec *iov, int iovcnt, uint64_t *lsn);

/*
 * Wait until an fdatasync covers record lsn (group commit: at most one fdatasync runs at
 * a time; it covers every record written before it started, and every waiter it covers
 * returns). Works under every policy (under NEVER it forces the sync). Thread-safe.
 * Returns 0, -EINVAL for an LSN not yet appended, or the fdatasync's -errno (sticky).
 */
int dhps_wal_wait(dhps_wal *w, uint64_t lsn);

/* Make every record appended so far durable (dhps_wal_wait on the last one). 0: nothing
 * appended yet, else as dhps_wal_wait. Thread-safe. */
int dhps_wal_sync(dhps_wal *w);

/* The LSN the next append will get. Thread-safe. */
uint64_t dhps_wal_next_lsn(dhps_wal *w);

/*
 * Delete every segment file all of whose records have LSN < lsn. When the active segment
 * holds only such records (and at least one), a new segment is started first so it can
 * go too. Thread-safe (takes the append lock for the rotation only). Returns the number
 * of files deleted, or -errno (unlink / the rotation's create).
 */
int dhps_wal_truncate_before(dhps_wal *w, uint64_t lsn);

typedef struct dhps_wal_stats {
    uint64_t disk_bytes;      /* bytes of all segment files (headers included) */
    uint64_t segments;        /* segment files */
    uint64_t appended;        /* records appended since open */
    uint64_t appended_bytes;  /* bytes written by those appends (headers, pads included) */
    uint64_t fsyncs;          /* fdatasync calls since open */
    uint64_t fsync_ns;        /* total time in those calls */
    uint64_t next_lsn;
    uint64_t synced_lsn;      /* every record <= it is covered by an fdatasync */
} dhps_wal_stats;

/* Fill *st. Thread-safe (takes the append lock briefly). */
void dhps_wal_get_stats(dhps_wal *w, dhps_wal_stats *st);

/* Stop the INTERVAL thread, fdatasync what was written (unless NEVER), close the files
 * and free w. NULL allowed. No append/wait may run on w during or after the call. */
void dhps_wal_close(dhps_wal *w);

#ifdef __cplusplus
}
#endif
#endif

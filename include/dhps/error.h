/*
 * dhps error convention.
 *
 * Every dhps function that can fail returns an int: 0 (or a non-negative count) on
 * success, a negative value on failure. Negative values in (-4096, 0) are -errno
 * values (-ENOMEM, -EINVAL, -EIO, ...); values at or below DHPS_E_BASE are dhps's own
 * codes below. dhps_strerror() names both. Bulk calls return a count plus a bit mask.
 */
#ifndef DHPS_ERROR_H
#define DHPS_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum dhps_error {
    DHPS_OK = 0,
    DHPS_E_BASE = -10000,
    DHPS_E_FULL = -10001,        /* index or memory limit reached; nothing was inserted */
    DHPS_E_CORRUPT = -10002,     /* a snapshot/frame failed its checks; nothing was loaded */
    DHPS_E_STALE = -10003,       /* an update carried a version older than the stored one */
    DHPS_E_TOOBIG = -10004,      /* a value or batch exceeds a documented limit */
    DHPS_E_TIMEOUT = -10005,     /* a deadline passed */
    DHPS_E_UNREACHABLE = -10006, /* the peer cannot be reached or died */
    DHPS_E_AUTH = -10007,        /* authentication failed */
    DHPS_E_MALFORMED = -10008,   /* a message broke the protocol */
    DHPS_E_HANDLER = -10009,     /* a remote handler returned an error */
    DHPS_E_NOTFOUND = -10010,    /* a named object (table, method) does not exist */
    DHPS_E_CONFIG = -10011,      /* a configuration is invalid */
    DHPS_E_VERSION = -10012,     /* a file or peer speaks an unsupported version */
    DHPS_E_CANCELLED = -10013,   /* the operation was cancelled */
    DHPS_E_BUSY = -10014,        /* overloaded or rejected by flow control; retry later */
    DHPS_E_NOTREADY = -10015,    /* a replica is recovering or catching up: it holds writes
                                    but answers no lookups yet; ask another replica */
    DHPS_E_CONFLICT = -10016,    /* a compare-and-swap lost: the compared value changed
                                    (etcd: another writer moved the revision first) */
    DHPS_E_MOVED = -10017,       /* the shard's replica set changed after the map the request
                                    was routed with: reload the map and send it again */
    DHPS_E_MISMATCH = -10018,    /* a file or image belongs to another table, shard, shard
                                    count, node or cluster than the one it was given to */
    DHPS_E_TLS = -10019,         /* TLS failed: a certificate not trusted or naming another
                                    peer, the peer refused ours, no TLS where the policy
                                    needs it, or a broken handshake */
    DHPS_E_LAST = -10020,
};

/* Name an error: a static string for any int (0, -errno or DHPS_E_*). Thread-safe. */
const char *dhps_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif

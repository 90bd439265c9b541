#include "dhps/error.h"

#include <string.h>

static const char *const dhps_errstr[] = {
    [-(DHPS_E_FULL - DHPS_E_BASE)] = "table full: index or memory limit reached",
    [-(DHPS_E_CORRUPT - DHPS_E_BASE)] = "data corrupt or truncated",
    [-(DHPS_E_STALE - DHPS_E_BASE)] = "stale version: a newer version is stored",
    [-(DHPS_E_TOOBIG - DHPS_E_BASE)] = "value or batch too large",
    [-(DHPS_E_TIMEOUT - DHPS_E_BASE)] = "deadline exceeded",
    [-(DHPS_E_UNREACHABLE - DHPS_E_BASE)] = "peer unreachable",
    [-(DHPS_E_AUTH - DHPS_E_BASE)] = "authentication failed",
    [-(DHPS_E_MALFORMED - DHPS_E_BASE)] = "malformed message",
    [-(DHPS_E_HANDLER - DHPS_E_BASE)] = "remote handler error",
    [-(DHPS_E_NOTFOUND - DHPS_E_BASE)] = "not found",
    [-(DHPS_E_CONFIG - DHPS_E_BASE)] = "invalid configuration",
    [-(DHPS_E_VERSION - DHPS_E_BASE)] = "unsupported version",
    [-(DHPS_E_CANCELLED - DHPS_E_BASE)] = "cancelled",
    [-(DHPS_E_BUSY - DHPS_E_BASE)] = "busy: overloaded, retry later",
    [-(DHPS_E_NOTREADY - DHPS_E_BASE)] = "replica not ready: recovering or catching up",
    [-(DHPS_E_CONFLICT - DHPS_E_BASE)] = "conflict: a concurrent change won the compare-and-swap",
    [-(DHPS_E_MOVED - DHPS_E_BASE)] = "moved: the shard's replicas changed since the client's map; reload it and retry",
    [-(DHPS_E_MISMATCH - DHPS_E_BASE)] = "mismatch: the file belongs to another table, shard, node or cluster",
    [-(DHPS_E_TLS - DHPS_E_BASE)] = "TLS failed: certificate not trusted or of another peer, our certificate refused, or TLS required",
};

const char *dhps_strerror(int err)
{
    if (err == 0)
        return "success";
    if (err < 0 && err > -4096)
        return strerror(-err); /* glibc's strerror returns static strings for known codes */
    if (err < DHPS_E_BASE && err > DHPS_E_LAST) {
        const char *s = dhps_errstr[-(err - DHPS_E_BASE)];
        if (s)
            return s;
    }
    return "unknown error";
}

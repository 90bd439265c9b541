"""Exceptions carrying a dhps error code (include/dhps/error.h) and its text."""

import errno as _errno

E_BASE = -10000
E_FULL = -10001
E_CORRUPT = -10002
E_STALE = -10003
E_TOOBIG = -10004
E_TIMEOUT = -10005
E_UNREACHABLE = -10006
E_AUTH = -10007
E_MALFORMED = -10008
E_HANDLER = -10009
E_NOTFOUND = -10010
E_CONFIG = -10011
E_VERSION = -10012
E_CANCELLED = -10013
E_BUSY = -10014
E_NOTREADY = -10015
E_CONFLICT = -10016
E_MOVED = -10017
E_MISMATCH = -10018
E_TLS = -10019


class Error(Exception):
    """A dhps call failed. code: the C return code (negative errno or DHPS_E_*);
    message: dhps_strerror(code) plus context. Partial-result errors also carry
    the masks: missing / unanswered (lookup) or failed (update, delete), bool ndarrays,
    and values (lookup: the rows written all the same), else None."""

    def __init__(self, code, message, *, values=None, missing=None, unanswered=None,
                 failed=None, version=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.values = values
        self.missing = missing
        self.unanswered = unanswered
        self.failed = failed
        self.version = version

    def __str__(self):
        return f"{self.message} (dhps error {self.code})"


class TimeoutError(Error):
    """DHPS_E_TIMEOUT: the deadline passed with keys unanswered / unacknowledged."""


class NotReadyError(Error):
    """DHPS_E_NOTREADY: the replicas asked were recovering or catching up."""


class UnreachableError(Error):
    """DHPS_E_UNREACHABLE: no replica could be reached."""


class NotFoundError(Error):
    """DHPS_E_NOTFOUND: unknown table, or no replica owns a shard."""


class MovedError(Error):
    """DHPS_E_MOVED: an update or delete was refused as routed with an old map (a
    shard's holders changed) and no newer map could be had to re-route it; .failed
    marks the keys of the shards that fell short. Retrying once the new map is
    published succeeds."""


class AuthError(Error):
    """DHPS_E_AUTH: the cluster secret was refused."""


class ConfigError(Error):
    """DHPS_E_CONFIG: invalid map or parameters."""


_BY_CODE = {
    E_TIMEOUT: TimeoutError,
    E_NOTREADY: NotReadyError,
    E_UNREACHABLE: UnreachableError,
    E_NOTFOUND: NotFoundError,
    E_MOVED: MovedError,
    E_AUTH: AuthError,
    E_CONFIG: ConfigError,
}


def error_for(code, context, **kw):
    """The exception for a C return code (not raised here)."""
    from . import _ffi
    text = _ffi.ffi.string(_ffi.lib().dhps_strerror(code)).decode()
    cls = _BY_CODE.get(code, Error)
    if code == -_errno.ENOMEM:
        return MemoryError(f"{context}: {text}")
    return cls(code, f"{context}: {text}", **kw)

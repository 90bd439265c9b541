"""dhps.Client: lookups, updates and deletes over libdhps.so.0 (include/dhps/client.h)."""

import json
import os

import numpy as np

from . import _ffi
from ._ffi import ffi
from .errors import error_for

_ACK = {"all": _ffi.DHPS_ACK_ALL, "quorum": _ffi.DHPS_ACK_QUORUM, "one": _ffi.DHPS_ACK_ONE}
_DTYPES = {np.dtype(np.float32): _ffi.DHPS_FP32, np.dtype(np.float16): _ffi.DHPS_FP16}
_WRITES_NOTHING = (-22, -12, -10004)  # -EINVAL, -ENOMEM, DHPS_E_TOOBIG
_DTYPE_NAMES = {_ffi.DHPS_FP32: np.dtype(np.float32), _ffi.DHPS_FP16: np.dtype(np.float16)}


class TableInfo:
    """A table's row shape, from the servers' INFO: dim (elements per row) and dtype
    (numpy float32 or float16, the width the servers store)."""

    __slots__ = ("name", "dim", "dtype")

    def __init__(self, name, dim, dtype):
        self.name, self.dim, self.dtype = name, dim, dtype

    def __repr__(self):
        return f"TableInfo(name={self.name!r}, dim={self.dim}, dtype={self.dtype.name})"


def read_secret_file(path):
    """The cluster secret in a file, read by the C loader dhps-server and the dhps tools
    use (dhps_client_secret_load; docs/security.md "The cluster secret"): mode 0600; a
    random secret (trailing newlines stripped; at least 32 bytes with 10 distinct values,
    `dhps keygen FILE` writes one) is returned as it is; a passphrase file
    (`dhps keygen --passphrase FILE`) gives its 32-byte scrypt key, derived here (about
    0.2 s at the default cost; the GIL is released meanwhile). A file that cannot be
    opened raises OSError (FileNotFoundError, PermissionError); anything else ValueError,
    both with the loader's message (the file, what is wrong, the fix)."""
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    cap = _ffi.DHPS_RPC_MAX_SECRET
    buf = ffi.new("unsigned char[]", cap)
    n = ffi.new("size_t *")
    err = ffi.new("char[]", 4400)
    rc = _ffi.lib().dhps_client_secret_load(os.fsencode(path), buf, cap, n, err, 4400)
    if rc:
        msg = ffi.string(err).decode(errors="replace") or f"secret file {path}: refused ({rc})"
        os.stat(path)  # a file that is not there: FileNotFoundError, PermissionError, ...
        raise ValueError(msg)
    sec = bytes(ffi.buffer(buf, n[0]))
    ffi.memmove(buf, bytes(cap), cap)  # the C copy; Python's bytes cannot be wiped
    return sec


def _timeout_us(timeout_ms):
    if timeout_ms is None:
        return 0  # the client's default_timeout_us
    if not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool):
        raise TypeError("timeout_ms must be a number")
    if timeout_ms <= 0:
        raise ValueError("timeout_ms must be > 0")
    return max(1, int(timeout_ms * 1000))


def _keys(keys):
    """keys as a contiguous uint64 array, converted once (no per-key Python work)."""
    a = np.asarray(keys)
    if a.ndim != 1:
        if a.ndim == 0:
            raise ValueError("keys must be a 1-d sequence, not a scalar")
        raise ValueError(f"keys must be 1-d (got shape {a.shape})")
    if a.dtype == np.uint64:
        return np.ascontiguousarray(a)
    if a.size == 0:
        return np.empty(0, np.uint64)
    if a.dtype.kind == "i":
        if a.min() < 0:
            raise ValueError("keys must be non-negative")
    elif a.dtype.kind != "u":
        raise TypeError(f"keys must be integers (got dtype {a.dtype})")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _mask_words(n):
    return np.zeros((n + 63) // 64, dtype=np.uint64)


def _unpack(words, n):
    """n bits (u64 words, bit i of key i) as a bool ndarray."""
    return np.unpackbits(words.view(np.uint8), count=n, bitorder="little").view(bool)


def _table(table):
    if not isinstance(table, str):
        raise TypeError("table must be a str")
    b = table.encode()
    if not b or len(b) >= _ffi.DHPS_TABLE_NAME_MAX or b"\0" in b:
        raise ValueError(f"table name must be 1..{_ffi.DHPS_TABLE_NAME_MAX - 1} bytes")
    return b


class Client:
    """A dhps cluster client. Thread-safe: any number of threads may call lookup, update
    and delete at once (the C client keeps per-thread channels). The GIL is released
    during every C call.

        Client(cluster="DIR")        DIR/cluster.json of `dhps up` (map, secret, labels)
        Client(map="map.json", secret="secret-file" | secret=b"bytes",
               host=None, pod=None, az=None)
        Client(etcd="http://127.0.0.1:2379", name="prod", secret=...)
                                     the map from etcd (docs/cluster.md), watched: a newer
                                     version applies without a restart; during an etcd
                                     outage the last map stays in use

    Options: timeout_ms (default deadline of calls, 100 ms), connect_timeout_ms,
    max_msg (bytes, default 4 MiB like the tools), hedge (bool), allow_nonfinite
    (bool, default False: an update with a NaN or inf value is refused whole, dhps.Error
    with code -errno.EDOM, and nothing is written), spin_us (0..1000000: a call waiting
    for its answers spins this long before sleeping, default 50; 0 = sleep at once,
    the least CPU per call).

    TLS (docs/client.md "TLS"): tls="off" (default) | "cross_az" | "always", tls_ca (the
    CA file the nodes' certificates are checked against; needed unless off), tls_cert /
    tls_key (a client certificate for nodes that verify clients), tls_server_name (the
    DNS name the nodes' certificates carry; default: each node's address).
    """

    def __init__(self, cluster=None, *, map=None, secret=None, host=None, pod=None, az=None,
                 timeout_ms=None, connect_timeout_ms=None, max_msg=4 << 20, hedge=None,
                 etcd=None, name=None, allow_nonfinite=False, tls="off", tls_ca=None,
                 tls_cert=None, tls_key=None, tls_server_name=None, spin_us=None):
        self._c = None
        if spin_us is not None and (isinstance(spin_us, bool) or not isinstance(spin_us, int)
                                    or not 0 <= spin_us <= _ffi.DHPS_RPC_SPIN_US_MAX):
            raise ValueError(f"spin_us must be an int in 0..{_ffi.DHPS_RPC_SPIN_US_MAX} "
                             "(microseconds)")
        if etcd is not None:
            if cluster is not None:
                raise ValueError("give cluster=DIR or etcd=URL, not both")
            if not name or not isinstance(name, str):
                raise ValueError("etcd= needs name= (the cluster's name in etcd)")
            if not isinstance(etcd, str):
                raise TypeError("etcd must be a URL string, e.g. http://127.0.0.1:2379")
        if cluster is not None:
            if map is not None or secret is not None:
                raise ValueError("give cluster= or map=/secret=, not both")
            cluster = os.fspath(cluster)
            with open(os.path.join(cluster, "cluster.json")) as f:
                cj = json.load(f)
            if "map" not in cj or "secret" not in cj:
                raise ValueError(f"{cluster}/cluster.json: no \"map\"/\"secret\"")
            map, secret = cj["map"], cj["secret"]
            labels = cj.get("client_labels") or {}
            host = host if host is not None else labels.get("host")
            pod = pod if pod is not None else labels.get("pod")
            az = az if az is not None else labels.get("az")
        if secret is None or (map is None and etcd is None):
            raise ValueError("need cluster=DIR, or map= (or etcd= and name=) and secret=")
        if isinstance(secret, (bytes, bytearray)):
            sec = bytes(secret)
        else:
            sec = read_secret_file(secret)
        if not sec:
            raise ValueError("the secret is empty")
        self._keep = []  # cdata the params point to, alive until create returns

        def cstr(s):
            if s is None or s == "":
                return ffi.NULL
            if not isinstance(s, str):
                raise TypeError("labels and paths must be str")
            b = ffi.new("char[]", s.encode())
            self._keep.append(b)
            return b

        p = ffi.new("dhps_client_params *")
        lib = _ffi.lib()
        lib.dhps_client_params_init(p)
        p.map_path = cstr(os.fspath(map)) if map is not None else ffi.NULL
        if etcd is not None:  # the map from etcd, watched; a newer version applies live
            p.etcd, p.cluster = cstr(etcd), cstr(name)
        secbuf = ffi.new("char[]", sec)
        self._keep.append(secbuf)
        p.secret = secbuf
        p.secret_len = len(sec)
        p.host, p.pod, p.az = cstr(host), cstr(pod), cstr(az)
        if timeout_ms is not None:
            p.default_timeout_us = _timeout_us(timeout_ms)
        if connect_timeout_ms is not None:
            p.connect_timeout_ms = int(connect_timeout_ms)
        if max_msg is not None:
            p.max_msg = int(max_msg)
        if hedge is not None:
            p.hedge = bool(hedge)
        p.allow_nonfinite = bool(allow_nonfinite)
        if spin_us is not None:
            p.spin_us = spin_us
        policies = {"off": 0, "cross_az": 1, "always": 2}
        if tls not in policies:
            raise ValueError('tls must be "off", "cross_az" or "always"')
        p.tls = policies[tls]
        p.tls_ca_file = cstr(os.fspath(tls_ca)) if tls_ca is not None else ffi.NULL
        p.tls_cert_file = cstr(os.fspath(tls_cert)) if tls_cert is not None else ffi.NULL
        p.tls_key_file = cstr(os.fspath(tls_key)) if tls_key is not None else ffi.NULL
        p.tls_server_name = cstr(tls_server_name)
        out = ffi.new("dhps_client **")
        rc = lib.dhps_client_create(p, out)
        self._keep = None
        if rc < 0:
            raise error_for(rc, f"dhps_client_create({os.fspath(map)})")
        self._c = out[0]
        self._lib = lib
        self._info = {}

    # ---- lifecycle -------------------------------------------------------------------
    def close(self):
        """Free the client. No call may be running on it, on any thread; calls after
        close raise ValueError. Idempotent."""
        c, self._c = self._c, None
        if c is not None:
            self._lib.dhps_client_destroy(c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if self._c is None:
            raise ValueError("the client is closed")
        return self._c

    # ---- table info ------------------------------------------------------------------
    def table_info(self, table, *, timeout_ms=2000, refresh=False):
        """TableInfo(dim, dtype) of table from the servers (cached per client; refresh=True
        asks again). Raises NotFoundError for a table no node serves."""
        b = _table(table)
        if not refresh and table in self._info:
            return self._info[table]
        dim = ffi.new("uint32_t *")
        dt = ffi.new("int *")
        rc = self._lib.dhps_client_table_info(self._h(), b, dim, dt, _timeout_us(timeout_ms))
        if rc < 0:
            raise error_for(rc, f"table_info({table!r})")
        info = TableInfo(table, int(dim[0]), _DTYPE_NAMES[dt[0]])
        self._info[table] = info
        return info

    # ---- lookup ----------------------------------------------------------------------
    def lookup(self, table, keys, *, out=None, dtype=np.float32, timeout_ms=None,
               partial=False, dim=None):
        """Look up keys of table.

        keys: any 1-d integer array-like (converted once to contiguous uint64).
        out: optional preallocated C-contiguous [n, dim] array of dtype, written in
        place and returned (no copy). dtype: np.float32 or np.float16 (the server's
        width is converted in C). dim: rows' width; default from table_info (cached).

        Returns (values, missing): missing[i] is True when keys[i] is absent (every key
        got an answer from a ready replica). When keys were left unanswered (replicas
        not ready, unreachable, deadline) raises NotReadyError / TimeoutError /
        UnreachableError / ... (subclasses of dhps.Error, with .code, .values,
        .missing, .unanswered), unless partial=True: then returns
        (values, missing, unanswered) and never raises for unanswered keys.
        Missing/unanswered rows hold the table's default row or zeros."""
        b = _table(table)
        dt = np.dtype(dtype)
        if dt not in _DTYPES:
            raise TypeError(f"dtype must be float32 or float16 (got {dt})")
        k = _keys(keys)
        n = k.shape[0]
        if dim is None:
            dim = out.shape[1] if (out is not None and getattr(out, "ndim", 0) == 2) \
                else self.table_info(table).dim
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError("dim must be a positive integer")
        if out is None:
            out = np.empty((n, dim), dtype=dt)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError("out must be a numpy ndarray")
            if out.dtype != dt:
                raise TypeError(f"out has dtype {out.dtype}, expected {dt}")
            if out.shape != (n, dim):
                raise ValueError(f"out has shape {out.shape}, expected {(n, dim)}")
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("out must be C-contiguous and writeable")
        mm = _mask_words(n)
        um = _mask_words(n)
        res = ffi.new("dhps_client_result *")
        rc = self._lib.dhps_client_lookup_masks(
            self._h(), b, ffi.from_buffer("uint64_t[]", k), n,
            ffi.from_buffer(out, require_writable=True), dim, _DTYPES[dt],
            ffi.from_buffer("uint64_t[]", mm, require_writable=True),
            ffi.from_buffer("uint64_t[]", um, require_writable=True),
            _timeout_us(timeout_ms), res)
        if rc in _WRITES_NOTHING:  # bad arguments, row too large, no memory
            raise error_for(rc, f"lookup({table!r}, {n} keys)")
        missing = _unpack(mm, n)
        if partial:
            return out, missing, _unpack(um, n)
        if rc < 0:
            unanswered = _unpack(um, n)
            raise error_for(rc, f"lookup({table!r}, {n} keys): {int(res.unanswered)} "
                            "unanswered", values=out, missing=missing, unanswered=unanswered)
        return out, missing

    # ---- writes ----------------------------------------------------------------------
    def update(self, table, keys, values, *, ttl=None, ack="all", timeout_ms=None):
        """Write rows: values [n, dim] float32 or float16 (converted once to a contiguous
        array; the server narrows/widens to the table's dtype). ttl: seconds (0 = none,
        None = the table's default). ack: "all", "quorum" or "one". Returns the
        version the batch was written with. Raises TimeoutError / UnreachableError /
        MovedError (refused as routed with an old map, no newer map to re-route to) /
        ... with .failed (bool mask of keys whose shard fell short) and .version."""
        b = _table(table)
        a = _ack(ack)
        k = _keys(keys)
        n = k.shape[0]
        v = np.asarray(values)
        if v.dtype not in _DTYPES:
            if v.dtype.kind in "fiu":
                v = v.astype(np.float32)
            else:
                raise TypeError(f"values must be float32 or float16 (got {v.dtype})")
        if v.ndim != 2 or v.shape[0] != n or v.shape[1] == 0:
            raise ValueError(f"values must be [n={n}, dim>0] (got shape {v.shape})")
        v = np.ascontiguousarray(v)
        if ttl is None:
            t = _ffi.DHPS_CLIENT_TTL_DEFAULT
        else:
            if not isinstance(ttl, (int, np.integer)) or isinstance(ttl, bool):
                raise TypeError("ttl must be an int (seconds) or None")
            if ttl < 0 or ttl >= _ffi.DHPS_CLIENT_TTL_DEFAULT:
                raise ValueError("ttl must be 0..2^32-2 seconds")
            t = int(ttl)
        fm = _mask_words(n)
        res = ffi.new("dhps_client_result *")
        rc = self._lib.dhps_client_update(
            self._h(), b, ffi.from_buffer("uint64_t[]", k), ffi.from_buffer(v), n,
            v.shape[1], _DTYPES[v.dtype], t, a, _timeout_us(timeout_ms),
            ffi.from_buffer("uint64_t[]", fm, require_writable=True), res)
        if rc < 0:
            raise error_for(rc, f"update({table!r}, {n} keys)", failed=_unpack(fm, n),
                            version=int(res.version))
        return int(res.version)

    def delete(self, table, keys, *, ack="all", timeout_ms=None):
        """Delete keys (one new version; a key that was absent counts as deleted).
        Returns the version; raises like update."""
        b = _table(table)
        a = _ack(ack)
        k = _keys(keys)
        n = k.shape[0]
        fm = _mask_words(n)
        res = ffi.new("dhps_client_result *")
        rc = self._lib.dhps_client_delete(
            self._h(), b, ffi.from_buffer("uint64_t[]", k), n, a, _timeout_us(timeout_ms),
            ffi.from_buffer("uint64_t[]", fm, require_writable=True), res)
        if rc < 0:
            raise error_for(rc, f"delete({table!r}, {n} keys)", failed=_unpack(fm, n),
                            version=int(res.version))
        return int(res.version)

    def connect(self):
        """Open the calling thread's channels to every node now (the first lookup then
        pays no connect inside its deadline). Returns the number of nodes unreachable."""
        rc = self._lib.dhps_client_connect(self._h())
        if rc < 0:
            raise error_for(rc, "connect")
        return rc

    @property
    def map_version(self):
        return int(self._lib.dhps_client_map_version(self._h()))


def _ack(ack):
    if not isinstance(ack, str):
        raise TypeError('ack must be "all", "quorum" or "one"')
    try:
        return _ACK[ack]
    except KeyError:
        raise ValueError('ack must be "all", "quorum" or "one"') from None

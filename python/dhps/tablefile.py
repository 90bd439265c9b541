"""Writer for the dhps binary table format that `dhps load` reads (version 1; the layout
is documented in src/tools/tablefile.h):

    0   8  magic b"DHPSTBL\\0"      8  4  version = 1     12  4  dtype: 0 fp32, 1 fp16
    16  8  count                   24  4  dim            28  4  flags = 0
    32 32  reserved, zero          64     count u64 keys, then count rows (dim elements)
    end-8  8  XXH64 (seed 0) of every byte before it

All integers little-endian. The checksum is XXH64, computed here in pure Python over
numpy (no xxhash module in Debian's python3 set used here); it runs at roughly tens of
MB/s, fine for test and tool-sized files."""

import struct

import numpy as np

MAGIC = b"DHPSTBL\0"
VERSION = 1
HDR = 64
MAX_ROW_BYTES = 16383

_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261
_M = (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    acc = (acc + lane * _P2) & _M
    return (_rotl(acc, 31) * _P1) & _M


def _merge(acc, v):
    acc ^= _round(0, v)
    return (acc * _P1 + _P4) & _M


def xxh64(data, seed=0):
    """XXH64 of a bytes-like object (the reference algorithm; the stripe loop runs over
    numpy uint64 lanes, 4 accumulators at once)."""
    b = memoryview(data).cast("B")
    n = len(b)
    i = 0
    if n >= 32:
        nstripes = n // 32
        lanes = np.frombuffer(b[:nstripes * 32], dtype="<u8").reshape(nstripes, 4)
        acc = np.array([(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M,
                        (seed - _P1) & _M], dtype=np.uint64)
        p1, p2 = np.uint64(_P1), np.uint64(_P2)
        with np.errstate(over="ignore"):
            for row in lanes:
                acc = acc + row * p2
                acc = (acc << np.uint64(31)) | (acc >> np.uint64(33))
                acc = acc * p1
        a = [int(x) for x in acc]
        h = (_rotl(a[0], 1) + _rotl(a[1], 7) + _rotl(a[2], 12) + _rotl(a[3], 18)) & _M
        for v in a:
            h = _merge(h, v)
        i = nstripes * 32
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        k = _round(0, int.from_bytes(b[i:i + 8], "little"))
        h ^= k
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(b[i:i + 4], "little") * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h ^= (b[i] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


def encode(keys, values):
    """The bytes of a table file for keys (n integers) and values ([n, dim] float32 or
    float16: the file's dtype is the array's). Raises ValueError/TypeError."""
    keys = np.ascontiguousarray(keys)
    if keys.ndim != 1 or keys.dtype.kind not in "iu":
        raise TypeError("keys must be a 1-d integer array")
    if keys.dtype.kind == "i" and keys.size and keys.min() < 0:
        raise ValueError("keys must be non-negative")
    keys = keys.astype("<u8", copy=False)
    values = np.asarray(values)
    if values.dtype == np.float32:
        dtype = 0
    elif values.dtype == np.float16:
        dtype = 1
    else:
        raise TypeError("values must be float32 or float16 (got %s)" % values.dtype)
    if values.ndim != 2 or values.shape[0] != keys.shape[0]:
        raise ValueError("values must be [n, dim] with n = len(keys)")
    dim = values.shape[1]
    if dim == 0 or dim * values.itemsize > MAX_ROW_BYTES:
        raise ValueError(f"dim must be 1..{MAX_ROW_BYTES // values.itemsize}")
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    hdr = struct.pack("<8sIIQII32x", MAGIC, VERSION, dtype, keys.shape[0], dim, 0)
    body = hdr + keys.tobytes() + values.tobytes()
    return body + struct.pack("<Q", xxh64(body))


def write(path, keys, values):
    """Write a table file at path (see encode). Returns the number of bytes written."""
    data = encode(keys, values)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)

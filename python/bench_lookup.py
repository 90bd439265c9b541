#!/usr/bin/python3
"""Python lookup throughput at 1,000-key batches, as a ratio to the C client's in the same
run, and to redis-py MGET on the same keys and value sizes.

    DHPS_LIB=build/rel/libdhps.so.0 /usr/bin/python3 python/bench_lookup.py \
        [--cluster DIR] [--batch 1000] [--seconds 3] [--rounds 3]

Without --cluster it starts `dhps up --no-workload --keys 100000 --nodes 3` in a temporary
directory (build/rel/src/tools/dhps, or $DHPS_BIN) and stops it at the end. One thread
each; rounds alternate C, Python (no out=), Python (out=, preallocated) and redis, so a
noisy neighbour hits them alike (C first in odd
rounds, Python first in even ones); the C driver warms up 1 s (a fresh client), Python
0.3 s (its client is warm). The C side is python/bench/lookup_bench.c, compiled here
with cc against include/ and the library under test, run two ways: "c", a process of its
own with its own client; "c_inproc", its loop called in this process on the Python
Client's own handle (same client, channels and thread: only the loop's language differs,
the fairest ratio). Redis: a private redis-server on a
unix socket in the temporary directory, the same keys as "k<key>" with the same
dim * 4-byte values, MGET per batch and the rows joined into one [n, dim] float32 array.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
os.environ.setdefault("DHPS_LIB", os.path.join(ROOT, "build", "rel", "libdhps.so.0"))

import numpy as np  # noqa: E402

import dhps  # noqa: E402

DHPS = os.environ.get("DHPS_BIN") or os.path.join(ROOT, "build", "rel", "src", "tools", "dhps")


def c_bench(tmp, cj, table, dim, batch, keys_file, seconds):
    exe = os.path.join(tmp, "lookup_bench")
    if not os.path.exists(exe):
        lib = os.path.realpath(os.environ["DHPS_LIB"])
        subprocess.run(["cc", "-O2", "-std=c11", "-I", os.path.join(ROOT, "include"),
                        os.path.join(ROOT, "python", "bench", "lookup_bench.c"), "-o", exe,
                        lib, "-Wl,-rpath," + os.path.dirname(lib)], check=True)
    lab = cj.get("client_labels") or {}
    out = subprocess.run([exe, cj["map"], cj["secret"], lab.get("host", ""), lab.get("pod", ""),
                          lab.get("az", ""), table, str(dim), str(batch), keys_file,
                          str(seconds)], capture_output=True, text=True, check=True).stdout
    f = out.split()
    return float(f[f.index("keys_per_s") + 1])


_inproc = None


def c_inproc_bench(tmp, c, table, dim, batch, keys, seconds):
    """The C loop in this process on c's own handle (same client, channels, thread)."""
    global _inproc
    if _inproc is None:
        from cffi import FFI
        so = os.path.join(tmp, "lookup_bench.so")
        lib = os.path.realpath(os.environ["DHPS_LIB"])
        subprocess.run(["cc", "-O2", "-std=c11", "-shared", "-fPIC", "-DDHPS_BENCH_NO_MAIN",
                        "-I", os.path.join(ROOT, "include"),
                        os.path.join(ROOT, "python", "bench", "lookup_bench.c"), "-o", so, lib,
                        "-Wl,-rpath," + os.path.dirname(lib)], check=True)
        f = FFI()
        f.cdef("double dhps_bench_loop(uintptr_t client, const char *table, "
               "const uint64_t *keys, size_t nkeys, size_t batch, uint32_t dim, "
               "double seconds, double warmup);")
        _inproc = (f, f.dlopen(so))
    f, lib = _inproc
    k = np.ascontiguousarray(keys, np.uint64)
    addr = int(dhps._ffi.ffi.cast("uintptr_t", c._c))
    return lib.dhps_bench_loop(addr, table.encode(), f.from_buffer("uint64_t[]", k), len(k),
                               batch, dim, seconds, 0.3)


def py_bench(c, table, dim, batch, keys, seconds, use_out):
    out = np.empty((batch, dim), np.float32) if use_out else None
    nb = len(keys) // batch
    batches = [keys[i * batch:(i + 1) * batch] for i in range(nb)]
    c.lookup(table, batches[0], out=out, partial=True)  # connect, cache table info
    t_end = time.perf_counter() + 0.3
    i = 0
    while time.perf_counter() < t_end:
        c.lookup(table, batches[i % nb], out=out, partial=True)
        i += 1
    n = 0
    t0 = time.perf_counter()
    t = t0
    while t - t0 < seconds:
        for _ in range(16):
            c.lookup(table, batches[n % nb], out=out, partial=True)
            n += 1
        t = time.perf_counter()
    return n * batch / (t - t0)


def redis_setup(tmp, keys_all, dim):
    try:
        import redis
    except ImportError:
        return None, "redis-py not installed (Debian: python3-redis)"
    srv = shutil.which("redis-server")
    if not srv:
        return None, "redis-server not installed"
    sock = os.path.join(tmp, "redis.sock")
    p = subprocess.Popen([srv, "--port", "0", "--unixsocket", sock, "--save", "",
                          "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    r = redis.Redis(unix_socket_path=sock)
    vals = np.random.default_rng(0).standard_normal((len(keys_all), dim)).astype(np.float32)
    pipe = r.pipeline(transaction=False)
    for k, v in zip(keys_all.tolist(), vals):
        pipe.set(b"k%d" % k, v.tobytes())
    pipe.execute()
    return (p, r), None


def redis_bench(r, dim, batch, keys, seconds):
    nb = len(keys) // batch
    names = [[b"k%d" % k for k in keys[i * batch:(i + 1) * batch].tolist()] for i in range(nb)]

    def one(i):
        vals = r.mget(names[i % nb])
        return np.frombuffer(b"".join(vals), np.float32).reshape(batch, dim)

    t_end = time.perf_counter() + 0.3
    i = 0
    while time.perf_counter() < t_end:
        one(i)
        i += 1
    n = 0
    t0 = time.perf_counter()
    t = t0
    while t - t0 < seconds:
        one(n)
        n += 1
        t = time.perf_counter()
    return n * batch / (t - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cluster")
    ap.add_argument("--table", default="emb")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=100000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dhps-bench-py-")
    started = None
    redis_proc = None
    try:
        cdir = a.cluster
        if not cdir:
            cdir = os.path.join(tmp, "cluster")
            subprocess.run([DHPS, "up", "--dir", cdir, "--no-workload", "--keys", str(a.keys),
                            "--nodes", "3", "--shards", "64", "--quiet"], check=True)
            started = cdir
        with open(os.path.join(cdir, "cluster.json")) as f:
            cj = json.load(f)
        c = dhps.Client(cluster=cdir)
        info = c.table_info(a.table)
        nkeys = int(cj.get("keys", a.keys))
        rng = np.random.default_rng(42)
        keys = rng.integers(1, nkeys + 1, size=200 * a.batch, dtype=np.uint64)
        kf = os.path.join(tmp, "keys.u64")
        keys.tofile(kf)
        (rd, why) = redis_setup(tmp, np.arange(1, nkeys + 1, dtype=np.uint64), info.dim)
        if rd:
            redis_proc, rcli = rd
        print(f"table {a.table}: dim {info.dim} {info.dtype.name}, {nkeys} keys; batch "
              f"{a.batch}; {a.seconds:g} s x {a.rounds} rounds; lib {dhps._ffi.lib_path()}")
        res = {"c": [], "c_inproc": [], "py": [], "py_out": [], "redis": []}
        for r in range(a.rounds):
            # odd rounds run C first, even rounds Python first (order effects cancel)
            if r % 2 == 0:
                res["c"].append(c_bench(tmp, cj, a.table, info.dim, a.batch, kf, a.seconds))
            res["py"].append(py_bench(c, a.table, info.dim, a.batch, keys, a.seconds, False))
            if r % 2 == 1:
                res["c"].append(c_bench(tmp, cj, a.table, info.dim, a.batch, kf, a.seconds))
            res["c_inproc"].append(c_inproc_bench(tmp, c, a.table, info.dim, a.batch, keys,
                                                  a.seconds))
            res["py_out"].append(py_bench(c, a.table, info.dim, a.batch, keys, a.seconds, True))
            if rd:
                res["redis"].append(redis_bench(rcli, info.dim, a.batch, keys, a.seconds))
            line = " ".join(f"{k} {v[-1] / 1e6:.3f}M" for k, v in res.items() if v)
            print(f"round {r + 1}: keys/s {line}  py/c_inproc "
                  f"{res['py'][-1] / res['c_inproc'][-1]:.2f}", flush=True)
        med = {k: statistics.median(v) for k, v in res.items() if v}
        spread = {k: (min(v), max(v)) for k, v in res.items() if v}
        print("median keys/s: " + ", ".join(
            f"{k} {med[k] / 1e6:.3f}M [{spread[k][0] / 1e6:.3f}..{spread[k][1] / 1e6:.3f}]"
            for k in med))
        print(f"ratio python/C in-process (same client): {med['py'] / med['c_inproc']:.2f} "
              f"(out=: {med['py_out'] / med['c_inproc']:.2f}); python/C process: "
              f"{med['py'] / med['c']:.2f} (target >= 0.8)")
        if rd:
            print(f"ratio python/redis-py MGET: {med['py'] / med['redis']:.1f}x")
        else:
            print(f"redis: skipped ({why})")
        c.close()
    finally:
        if redis_proc:
            redis_proc.terminate()
            redis_proc.wait()
        if started:
            subprocess.run([DHPS, "down", "--dir", started], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

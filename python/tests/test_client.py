"""dhps.Client against a real local cluster (3 nodes, 64 shards, table emb: 1000 keys of
dim 32 fp32 loaded by `dhps up`)."""
import errno
import os
import subprocess
import threading
import time

import numpy as np
import pytest

import dhps
from conftest import dhps_tool, scaled, wait_for

DIM = 32


@pytest.fixture(scope="module")
def client(cluster):
    with dhps.Client(cluster=cluster, timeout_ms=int(scaled(2) * 1000)) as c:  # not under test
        yield c


def test_table_info(client):
    info = client.table_info("emb")
    assert (info.dim, info.dtype) == (DIM, np.dtype(np.float32))
    with pytest.raises(dhps.NotFoundError) as ei:
        client.table_info("no_such_table")
    assert ei.value.code == dhps.errors.E_NOTFOUND
    assert "not found" in ei.value.message


def test_lookup_loaded_and_missing(client):
    keys = np.array([1, 2, 3, 10_000_001], dtype=np.int64)
    v, m = client.lookup("emb", keys)
    assert v.shape == (4, DIM) and v.dtype == np.float32
    assert m.dtype == bool and m.tolist() == [False, False, False, True]
    assert not v[:3].all(axis=1).any() or np.abs(v[:3]).sum() > 0
    assert (v[3] == 0).all()
    # same keys as a list, a tuple, uint32: one conversion, same answer
    for ks in ([1, 2, 3, 10_000_001], tuple(keys), keys.astype(np.uint32)[:3]):
        v2, _ = client.lookup("emb", ks)
        assert np.array_equal(v2, v[:len(v2)])


def test_update_lookup_delete_roundtrip(client):
    keys = np.arange(50_000, 51_000, dtype=np.uint64)
    vals = np.random.default_rng(1).standard_normal((1000, DIM)).astype(np.float32)
    ver = client.update("emb", keys, vals)
    assert ver > 0
    got, miss = client.lookup("emb", keys)
    assert not miss.any() and np.array_equal(got, vals)
    for ack in ("quorum", "one"):
        assert client.update("emb", keys[:10], vals[:10] * 2, ack=ack, ttl=3600) > ver
    ver2 = client.delete("emb", keys)
    assert ver2 > ver
    got, miss = client.lookup("emb", keys)
    assert miss.all() and (got == 0).all()


def test_out_preallocated_no_copy(client):
    keys = np.arange(1, 101)
    out = np.full((100, DIM), 7.0, dtype=np.float32)
    v, m = client.lookup("emb", keys, out=out)
    assert v is out and np.shares_memory(v, out)
    assert not m.any() and not (out == 7.0).all()
    ref, _ = client.lookup("emb", keys)
    assert np.array_equal(out, ref)


def test_fp16(client):
    keys = np.arange(60_000, 60_064)
    vals = np.random.default_rng(2).standard_normal((64, DIM)).astype(np.float16)
    client.update("emb", keys, vals)  # narrowed/widened by the client and the server
    got16, m = client.lookup("emb", keys, dtype=np.float16)
    assert got16.dtype == np.float16 and not m.any()
    assert np.array_equal(got16, vals)
    got32, _ = client.lookup("emb", keys)
    assert np.array_equal(got32, vals.astype(np.float32))
    out = np.empty((64, DIM), np.float16)
    assert client.lookup("emb", keys, out=out, dtype=np.float16)[0] is out
    client.delete("emb", keys)


def test_empty_batch(client):
    v, m = client.lookup("emb", [])
    assert v.shape == (0, DIM) and m.shape == (0,)


def test_bad_arguments_raise_before_call(client):
    with pytest.raises(TypeError):
        client.lookup("emb", [1.5, 2.5])
    with pytest.raises(ValueError):
        client.lookup("emb", [-1])
    with pytest.raises(ValueError):
        client.lookup("emb", [[1, 2]])
    with pytest.raises(ValueError):
        client.lookup("emb", 5)
    with pytest.raises(TypeError):
        client.lookup(b"emb", [1])
    with pytest.raises(ValueError):
        client.lookup("x" * 100, [1])
    with pytest.raises(TypeError):
        client.lookup("emb", [1], dtype=np.float64)
    with pytest.raises(ValueError):
        client.lookup("emb", [1, 2], out=np.empty((3, DIM), np.float32))
    with pytest.raises(TypeError):
        client.lookup("emb", [1], out=np.empty((1, DIM), np.float16))
    with pytest.raises(ValueError):
        client.lookup("emb", [1, 2], out=np.empty((DIM, 2), np.float32).T)
    with pytest.raises(ValueError):
        client.lookup("emb", [1], timeout_ms=0)
    with pytest.raises(ValueError):
        client.update("emb", [1, 2], np.zeros((1, DIM), np.float32))
    with pytest.raises(TypeError):
        client.update("emb", [1], np.array([["a"] * DIM]))
    with pytest.raises(ValueError):
        client.update("emb", [1], np.zeros((1, DIM), np.float32), ack="most")
    with pytest.raises(ValueError):
        client.update("emb", [1], np.zeros((1, DIM), np.float32), ttl=-1)
    with pytest.raises(ValueError):
        client.delete("emb", [1], ack="two")


def test_nonfinite_refused(client):
    rows = np.ones((2, DIM), np.float32)
    rows[1, 3] = np.nan
    with pytest.raises(dhps.Error) as ei:
        client.update("emb", [5, 6], rows)
    assert ei.value.code == -errno.EDOM


def test_secret_file_rules(cluster, tmp_path):
    """The binding reads a secret file by the server's rules (docs/security.md)."""
    good = open(os.path.join(cluster, "secret"), "rb").read()
    p = tmp_path / "secret"
    p.write_bytes(good + b"\n")
    os.chmod(p, 0o600)
    assert dhps.client.read_secret_file(p) == good.rstrip(b"\r\n")
    os.chmod(p, 0o640)
    with pytest.raises(ValueError, match="lets its group read"):
        dhps.client.read_secret_file(p)
    p.write_bytes(b"dog\n")
    os.chmod(p, 0o600)
    with pytest.raises(ValueError, match="too weak"):
        dhps.Client(map=os.path.join(cluster, "map.json"), secret=p)


def test_error_carries_code_and_text(cluster):
    with pytest.raises(dhps.Error) as ei:
        dhps.Client(map=os.path.join(cluster, "no-map.json"),
                    secret=os.path.join(cluster, "secret"))
    # no map file: -ENOENT from the C side (a plain dhps.Error)
    assert ei.value.code == -2 and "No such file" in ei.value.message
    e = dhps.errors.error_for(dhps.errors.E_NOTREADY, "ctx")
    assert isinstance(e, dhps.NotReadyError) and isinstance(e, dhps.Error)
    assert e.code == -10015 and e.message.startswith("ctx: ") and "-10015" in str(e)
    assert issubclass(dhps.TimeoutError, dhps.Error)


def test_spin_us(cluster):
    # the same answers whether a waiting call spins (1 s cap: it answers well within)
    # or sleeps at once; out-of-range values are refused before C sees them
    keys = np.arange(60_000, 60_100, dtype=np.uint64)
    vals = np.random.default_rng(2).standard_normal((100, DIM)).astype(np.float32)
    for scale, spin in ((2, 0), (3, 1_000_000)):
        with dhps.Client(cluster=cluster, spin_us=spin,
                         timeout_ms=int(scaled(2) * 1000)) as c:
            c.update("emb", keys, vals * scale)
            got, miss = c.lookup("emb", keys)
            assert not miss.any() and np.array_equal(got, vals * scale)
            c.delete("emb", keys)
    for bad in (-1, 1_000_001, 2.5, True, "50"):
        with pytest.raises(ValueError):
            dhps.Client(cluster=cluster, spin_us=bad)


def test_closed_client(cluster):
    c = dhps.Client(cluster=cluster)
    c.close()
    c.close()
    with pytest.raises(ValueError):
        c.lookup("emb", [1], dim=DIM)


def test_unanswered_raises_and_partial(cluster, stopped):
    # every node SIGSTOPped: nothing answers, so nothing may be reported "absent"
    with dhps.Client(cluster=cluster, connect_timeout_ms=100) as c:
        keys = np.arange(1, 65)
        with pytest.raises((dhps.NotReadyError, dhps.TimeoutError,
                            dhps.UnreachableError)) as ei:
            c.lookup("emb", keys, dim=DIM, timeout_ms=200)
        e = ei.value
        assert e.code in (dhps.errors.E_NOTREADY, dhps.errors.E_TIMEOUT,
                          dhps.errors.E_UNREACHABLE)
        assert e.unanswered.all() and e.missing.all() and e.values.shape == (64, DIM)
        v, m, u = c.lookup("emb", keys, dim=DIM, timeout_ms=200, partial=True)
        assert u.dtype == bool and u.all() and m.all() and (v == 0).all()
        with pytest.raises(dhps.Error) as ei:
            c.update("emb", keys, np.zeros((64, DIM), np.float32), timeout_ms=200)
        assert ei.value.failed.all() and ei.value.code < 0


def test_gil_released(cluster, stopped):
    """A Python thread keeps counting while the main thread waits in a lookup on a
    SIGSTOPped cluster: the GIL is released during the C call."""
    with dhps.Client(cluster=cluster, connect_timeout_ms=300) as c:
        count = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                count[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        assert wait_for(lambda: count[0] > 0, 5)  # it runs (an event, not a sleep)
        before = count[0]
        t0 = time.monotonic()
        _, _, u = c.lookup("emb", np.arange(1, 65), dim=DIM, timeout_ms=500, partial=True)
        waited = time.monotonic() - t0
        during = count[0] - before
        stop.set()
        t.join()
        assert u.all() and waited >= 0.3
        # with the GIL held the spinning thread would not advance at all during the call
        assert during > 10_000, during


def test_tablefile_roundtrip_through_dhps_load(cluster, client, tmp_path):
    keys = np.arange(70_000, 70_500, dtype=np.uint64)
    vals = np.random.default_rng(3).standard_normal((500, DIM)).astype(np.float32)
    path = tmp_path / "t.bin"
    n = dhps.tablefile.write(path, keys, vals)
    assert n == 64 + 500 * 8 + 500 * DIM * 4 + 8 == path.stat().st_size
    r = subprocess.run([dhps_tool(), "load", str(path), "--table", "emb", "--cluster", cluster],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    got, miss = client.lookup("emb", keys)
    assert not miss.any() and np.array_equal(got, vals)
    client.delete("emb", keys)
    # fp16 file, and a damaged one is refused whole by `dhps load`
    p16 = tmp_path / "t16.bin"
    dhps.tablefile.write(p16, keys[:10], vals[:10].astype(np.float16))
    r = subprocess.run([dhps_tool(), "load", str(p16), "--table", "emb", "--cluster", cluster],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    got, _ = client.lookup("emb", keys[:10])
    assert np.array_equal(got, vals[:10].astype(np.float16).astype(np.float32))
    client.delete("emb", keys[:10])
    bad = bytearray(path.read_bytes())
    bad[100] ^= 1
    (tmp_path / "bad.bin").write_bytes(bad)
    r = subprocess.run([dhps_tool(), "load", str(tmp_path / "bad.bin"), "--table", "emb",
                        "--cluster", cluster], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode != 0


def test_tablefile_bad_arguments():
    with pytest.raises(TypeError):
        dhps.tablefile.encode([1], np.zeros((1, 4), np.float64))
    with pytest.raises(ValueError):
        dhps.tablefile.encode([1, 2], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError):
        dhps.tablefile.encode([-1], np.zeros((1, 4), np.float32))

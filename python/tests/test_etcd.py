"""Client(etcd=...): the map comes from a real etcd (started here on free ports; the test
skips, saying why, only when the etcd binary is missing), published with
`dhps map publish`, and lookups and updates run against the local cluster it names."""
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

import dhps
from conftest import dhps_tool


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    exe = shutil.which("etcd")
    if not exe:
        pytest.skip("no etcd binary (apt-get install etcd-server)")
    d = tmp_path_factory.mktemp("etcd")
    cu, pu = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    log = open(d / "etcd.log", "w")
    p = subprocess.Popen([exe, "--name", "t", "--data-dir", str(d / "data"),
                          "--listen-client-urls", cu, "--advertise-client-urls", cu,
                          "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
                          "--initial-cluster", f"t={pu}"], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(urllib.request.Request(
                    cu + "/v3/kv/range", data=b'{"key":"AA=="}'), timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"etcd did not start; see {d}/etcd.log")
        yield cu
    finally:
        p.kill()
        p.wait()
        log.close()


def test_client_from_etcd(cluster, etcd):
    tool = dhps_tool()
    r = subprocess.run([tool, "map", "publish", "--etcd", etcd, "--cluster", "pytest",
                        os.path.join(cluster, "map.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with dhps.Client(etcd=etcd, name="pytest", secret=os.path.join(cluster, "secret"),
                     timeout_ms=2000) as c:
        keys = np.arange(7_000_000, 7_000_050, dtype=np.uint64)
        vals = np.random.default_rng(3).random((50, c.table_info("emb").dim),
                                               dtype=np.float32)
        c.update("emb", keys, vals)
        got, missing = c.lookup("emb", keys)
        assert not missing.any()
        assert np.array_equal(got, vals)


def test_etcd_arguments():
    with pytest.raises(ValueError):
        dhps.Client(etcd="http://127.0.0.1:1", secret=b"x")  # no name=
    with pytest.raises(ValueError):
        dhps.Client("somedir", etcd="http://127.0.0.1:1", name="n", secret=b"x")

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
from conftest import dhps_tool, scaled, wait_for


def _free_ports(n):
    """n distinct loopback ports free a moment ago (bound at once, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    exe = shutil.which("etcd")
    if not exe:
        pytest.skip("no etcd binary (apt-get install etcd-server)")
    d = tmp_path_factory.mktemp("etcd")
    log = open(d / "etcd.log", "w")

    def holds(pid, port):
        """Does process pid hold a listening TCP socket on port? (An answer on a port
        picked free counts only from the etcd we started: another test's etcd may have
        taken the port meanwhile; the C fixture and `dhps up` check the same.)"""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("socket:["):
                    inodes.add(t[8:-1])
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    c = line.split()
                    if (c[3] == "0A" and int(c[1].split(":")[1], 16) == port
                            and c[9] in inodes):
                        return True
        except OSError:
            pass
        return False

    def answers(cu):
        if not holds(p.pid, int(cu.rsplit(":", 1)[1])):
            return False
        try:
            urllib.request.urlopen(urllib.request.Request(
                cu + "/v3/kv/range", data=b'{"key":"AA=="}'), timeout=1).read()
            return True
        except OSError:
            return False

    # the ports are free when picked, not held: an etcd that exits at start (one was
    # taken meanwhile) is started again on new ones, as `dhps up` does
    p = None
    try:
        for _ in range(3):
            cport, pport = _free_ports(2)
            cu, pu = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
            shutil.rmtree(d / "data", ignore_errors=True)
            p = subprocess.Popen([exe, "--name", "t", "--data-dir", str(d / "data"),
                                  "--listen-client-urls", cu, "--advertise-client-urls", cu,
                                  "--listen-peer-urls", pu, "--initial-advertise-peer-urls",
                                  pu, "--initial-cluster", f"t={pu}"], stdout=log, stderr=log)
            # an event (it answers, or it exited), bounded on the tests' time scale
            assert wait_for(lambda: p.poll() is not None or answers(cu), 10, step=0.05), \
                f"etcd did not start; see {d}/etcd.log"
            if p.poll() is None:
                break
        else:
            pytest.fail(f"etcd exited at start three times; see {d}/etcd.log")
        yield cu
    finally:
        if p is not None:
            p.kill()
            p.wait()
        log.close()


def test_client_from_etcd(cluster, etcd):
    tool = dhps_tool()
    r = subprocess.run([tool, "map", "publish", "--etcd", etcd, "--cluster", "pytest",
                        os.path.join(cluster, "map.json")],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    with dhps.Client(etcd=etcd, name="pytest", secret=os.path.join(cluster, "secret"),
                     timeout_ms=int(scaled(2) * 1000)) as c:
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

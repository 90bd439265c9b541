"""Secret files through the binding: it reads them with the C loader of dhps-server and
the tools (dhps_client_secret_load), so a passphrase file (`dhps keygen --passphrase`,
scrypt; docs/security.md) gives the same key everywhere. A client and a dhps-server given
the same passphrase file talk; another passphrase is refused by the hello."""
import hashlib
import os
import re
import socket
import subprocess
import time

import numpy as np
import pytest

import dhps
from conftest import dhps_tool, scaled

PASS = "correct horse battery staple"


def write_secret(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def test_passphrase_file_same_key_as_scrypt(tmp_path):
    """The key is scrypt(passphrase, salt, N, r, p) -- checked against Python's own
    hashlib.scrypt, an implementation independent of the loader."""
    salt = bytes(range(16, 48))
    p = tmp_path / "pass"
    write_secret(p, f"scrypt:N=16384,r=8,p=1,salt={salt.hex()}:{PASS}\n")
    want = hashlib.scrypt(PASS.encode(), salt=salt, n=16384, r=8, p=1, maxmem=1 << 26,
                          dklen=32)
    assert dhps.client.read_secret_file(p) == want
    assert dhps.client.read_secret_file(str(p).encode()) == want  # a bytes path


def test_passphrase_file_refusals(tmp_path):
    p = tmp_path / "pass"
    salt = "00112233445566778899aabbccddeeff"
    cases = [
        (f"scrypt:N=16384,r=8,p=1,salt={salt}:hunter2", "passphrase too weak (7 bytes"),
        (f"scrypt:N=1024,r=8,p=1,salt={salt}:{PASS}", "scrypt N=1024: must be a power of two"),
        (f"scrypt:N=16384,r=8,salt={salt}:{PASS}", "no decimal p= where expected"),
        (f"scrypt:N=16384,r=8,p=1,salt=0011:{PASS}", "salt is not 16..64 bytes of hex"),
    ]
    for text, want in cases:
        write_secret(p, text)
        with pytest.raises(ValueError, match="secret file .*" + re.escape(want)):
            dhps.client.read_secret_file(p)
    write_secret(p, f"scrypt:N=16384,r=8,p=1,salt={salt}:{PASS}", 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        dhps.client.read_secret_file(p)
    with pytest.raises(FileNotFoundError, match="No such file"):
        dhps.client.read_secret_file(tmp_path / "none")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def passphrase_node(tmp_path):
    """One dhps-server (4 shards, table emb dim 4) whose secret is a passphrase file
    written by `dhps keygen --passphrase`; yields (map path, secret path, tmp dir)."""
    tool = dhps_tool()
    server = os.path.join(os.path.dirname(tool), "..", "server", "dhps-server")
    if not os.access(server, os.X_OK):
        server = os.path.join(os.path.dirname(tool), "dhps-server")
    secret = tmp_path / "secret"
    r = subprocess.run([tool, "keygen", "--passphrase", str(secret)], input=PASS + "\n",
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    assert "passphrase file, scrypt N=32768" in r.stdout
    port = free_port()
    mp = tmp_path / "map.json"
    r = subprocess.run([tool, "map", "gen", "--local", "1", "--base-port", str(port),
                        "--shards", "4", "--replicas", "1", "-o", str(mp)],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "node.json"
    cfg.write_text(
        '{"node_id":"n0","tables":[{"name":"emb","dim":4}],'
        f'"secret_file":"{secret}","metrics":{{"port":-1}},'
        f'"shards":{{"cluster_map":"{mp}","map_node":0}},"port_file":"{tmp_path}/ports"}}')
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([server, "--config", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + scaled(30)
        while not (tmp_path / "ports").exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "dhps-server did not write its port file"
            time.sleep(0.02)
        yield str(mp), str(secret), tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=scaled(30))
        log.close()


def test_passphrase_client_talks_other_refused(passphrase_node):
    mp, secret, tmp = passphrase_node
    keys = np.array([1, 2, 3], np.uint64)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    with dhps.Client(map=mp, secret=secret, timeout_ms=int(scaled(5) * 1000)) as c:
        deadline = time.monotonic() + scaled(30)
        while True:  # the node may still be loading (NotReady) right after its port file
            try:
                c.update("emb", keys, rows)
                break
            except dhps.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        got, missing = c.lookup("emb", keys)
        assert np.array_equal(got, rows) and not missing.any()
    other = tmp / "other"
    r = subprocess.run([dhps_tool(), "keygen", "--passphrase", str(other)],
                       input="correct horse battery stable\n", capture_output=True, text=True,
                       timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    with dhps.Client(map=mp, secret=other, timeout_ms=int(scaled(1) * 1000)) as c:
        with pytest.raises(dhps.AuthError) as ei:  # the hello refused the proof
            c.lookup("emb", keys)
        assert ei.value.code == dhps.errors.E_AUTH

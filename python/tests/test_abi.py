"""The cffi cdef in dhps/_ffi.py against the C headers: a small C program compiled with
include/ prints the size and every field offset of the structs the binding declares,
and the constants it copies; they must equal cffi's view. A header change that breaks
the binding fails here. Skips when no C compiler is installed."""
import os
import shutil
import subprocess

import pytest

import dhps
from dhps import _ffi
from dhps._ffi import ffi

from conftest import ROOT

STRUCTS = {
    "dhps_client_params": ["map_path", "secret", "secret_len", "host", "pod", "az", "router",
                           "router_ops", "router_self", "max_node_id", "max_msg",
                           "connect_timeout_ms", "redial_backoff_ms", "default_timeout_us",
                           "reload_interval_ms", "max_attempts", "hedge",
                           "attempt_timeout_us", "etcd", "cluster", "allow_nonfinite", "tls",
                           "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name",
                           "spin_us"],
    "dhps_client_result": ["found", "missing", "unanswered", "messages", "retries", "hedges",
                           "version"],
}
CONSTS = {
    "DHPS_FP32": _ffi.DHPS_FP32, "DHPS_FP16": _ffi.DHPS_FP16,
    "DHPS_ACK_ALL": _ffi.DHPS_ACK_ALL, "DHPS_ACK_QUORUM": _ffi.DHPS_ACK_QUORUM,
    "DHPS_ACK_ONE": _ffi.DHPS_ACK_ONE, "DHPS_CLIENT_TTL_DEFAULT": _ffi.DHPS_CLIENT_TTL_DEFAULT,
    "DHPS_TABLE_NAME_MAX": _ffi.DHPS_TABLE_NAME_MAX,
    "DHPS_RPC_MAX_SECRET": _ffi.DHPS_RPC_MAX_SECRET,
    "DHPS_RPC_SPIN_US_MAX": _ffi.DHPS_RPC_SPIN_US_MAX,
    **{f"DHPS_E_{n[2:]}": getattr(dhps.errors, n) for n in dir(dhps.errors)
       if n.startswith("E_")},
}


def test_cdef_matches_headers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler: cannot check the cdef against the headers")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "dhps/client.h"',
             'int main(void) {']
    for s, fields in STRUCTS.items():
        lines.append(f'printf("{s} %zu\\n", sizeof({s}));')
        lines += [f'printf("{s}.{f} %zu\\n", offsetof({s}, {f}));' for f in fields]
    lines += [f'printf("{c} %lld\\n", (long long)({c}));' for c in CONSTS]
    lines.append("return 0; }")
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "abi"
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", os.path.join(ROOT, "include"),
                        str(src), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = dict(l.split() for l in subprocess.run([str(exe)], capture_output=True, text=True,
                                                 check=True).stdout.splitlines())
    for s, fields in STRUCTS.items():
        assert int(got[s]) == ffi.sizeof(s), s
        for f in fields:
            assert int(got[f"{s}.{f}"]) == ffi.offsetof(s, f), f"{s}.{f}"
    for c, v in CONSTS.items():
        assert int(got[c]) == v, c


def test_cdef_prototypes_match_header(tmp_path):
    """Each function prototype in the cdef, compiled after the real header: a differing
    declaration of the same function is a C compile error ("conflicting types")."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    protos = [l for l in _ffi.CDEF.replace("\n                     ", " ")
              .replace("\n                           ", " ")
              .replace("\n                             ", " ").splitlines()
              if "(" in l and l.rstrip().endswith(";") and not l.startswith(" ")]
    assert len(protos) >= 10
    src = tmp_path / "proto.c"
    src.write_text('#include "dhps/client.h"\n' + "\n".join(protos) + "\n")
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-c", "-I",
                        os.path.join(ROOT, "include"), str(src), "-o",
                        str(tmp_path / "proto.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_library_exports_the_cdef_functions():
    lib = _ffi.lib()
    for name in ("dhps_client_create", "dhps_client_lookup_masks", "dhps_client_update",
                 "dhps_client_delete", "dhps_client_table_info", "dhps_client_secret_load",
                 "dhps_strerror"):
        assert getattr(lib, name) is not None


def test_error_classes_by_code():
    """Each code with a class of its own maps to it (a shard refused as routed with an old
    map: MovedError, with the failed mask), anything else to dhps.Error."""
    from dhps.errors import error_for
    for code, cls in ((dhps.errors.E_MOVED, dhps.MovedError),
                      (dhps.errors.E_NOTREADY, dhps.NotReadyError),
                      (dhps.errors.E_NOTFOUND, dhps.NotFoundError),
                      (dhps.errors.E_CONFLICT, dhps.Error)):
        e = error_for(code, "update('emb', 3 keys)", failed=[True, False, True])
        assert type(e) is cls
        assert e.code == code and e.failed == [True, False, True]
        assert "update('emb', 3 keys)" in str(e)
    assert "moved" in str(error_for(dhps.errors.E_MOVED, "x"))  # dhps_strerror's text

"""Fixtures: a real local cluster started with the built `dhps up` and stopped with
`dhps down`. The binaries come from $DHPS_BIN (the dhps tool) or the build tree
(build/rel/src/tools/dhps); the tests skip, saying why, only when it is missing."""
import os
import signal
import subprocess
import json
import sys
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))  # the package from this checkout
DHPS = os.environ.get("DHPS_BIN") or os.path.join(ROOT, "build", "rel", "src", "tools", "dhps")


def dhps_tool():
    if not os.access(DHPS, os.X_OK):
        pytest.skip(f"dhps tool not built ({DHPS}); run ./scripts/build.sh rel")
    return DHPS


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    tool = dhps_tool()
    d = str(tmp_path_factory.mktemp("cluster") / "c")
    r = subprocess.run([tool, "up", "--dir", d, "--no-workload", "--keys", "1000",
                        "--nodes", "3", "--shards", "64", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        subprocess.run([tool, "down", "--dir", d], capture_output=True, timeout=60)
        pytest.fail(f"dhps up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    yield d
    subprocess.run([tool, "down", "--dir", d], capture_output=True, timeout=60)


@pytest.fixture
def stopped(cluster):
    """SIGSTOP every node of the cluster for the test's duration (SIGCONT after)."""
    with open(os.path.join(cluster, "cluster.json")) as f:
        pids = [n["pid"] for n in json.load(f)["nodes"]]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    # kill() returns before the signal takes effect: wait until every thread of every
    # node is stopped ('T'), or a node could still answer the test's first request
    for p in pids:
        for t in os.listdir(f"/proc/{p}/task"):
            for _ in range(2000):
                with open(f"/proc/{p}/task/{t}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in "Tt":
                        break
                time.sleep(0.001)
    try:
        yield pids
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)

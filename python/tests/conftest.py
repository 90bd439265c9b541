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


def scaled(base_s):
    """base_s seconds on the time scale of tests/common/test_scale.h: DHPS_TEST_TIME_SCALE
    (>= 1) times the 1-minute load average per CPU when above 1, capped at 100. For
    bounds on events that are not under test (a wait that ends when the event comes)."""
    try:
        s = max(1.0, float(os.environ.get("DHPS_TEST_TIME_SCALE", "1")))
    except ValueError:
        s = 1.0
    s *= max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    return base_s * min(s, 100.0)


def wait_for(cond, base_s, step=0.01):
    """Call cond until it is true (True) or scaled(base_s) passed (False)."""
    end = time.monotonic() + scaled(base_s)
    while not cond():
        if time.monotonic() >= end:
            return False
        time.sleep(step)
    return True


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
                       capture_output=True, text=True, timeout=scaled(120))
    if r.returncode != 0:
        subprocess.run([tool, "down", "--dir", d], capture_output=True, timeout=scaled(60))
        pytest.fail(f"dhps up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    yield d
    subprocess.run([tool, "down", "--dir", d], capture_output=True, timeout=scaled(60))


@pytest.fixture
def stopped(cluster):
    """SIGSTOP every node of the cluster for the test's duration (SIGCONT after)."""
    with open(os.path.join(cluster, "cluster.json")) as f:
        pids = [n["pid"] for n in json.load(f)["nodes"]]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    # kill() returns before the signal takes effect: wait until every thread of every
    # node is stopped ('T'), or a node could still answer the test's first request
    def stopped_state(p, t):
        with open(f"/proc/{p}/task/{t}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "Tt"
    for p in pids:
        for t in os.listdir(f"/proc/{p}/task"):
            assert wait_for(lambda: stopped_state(p, t), 2, step=0.001), f"{p}/{t} not stopped"
    try:
        yield pids
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)

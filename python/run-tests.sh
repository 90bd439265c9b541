#!/usr/bin/env bash
# Python package tests (python/tests) against the release build: libdhps.so.0 and the
# dhps tool from build/rel (a cluster of 3 nodes is started and stopped by the tests).
# Debian's python3 (/usr/bin/python3, with python3-cffi/-numpy/-pytest from
# scripts/deps.sh), not whatever python3 comes first on PATH. pytest's exit code 5
# (no tests collected) is a failure here, like any other non-zero code.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DHPS_BUILD:-$root/build/rel}
export DHPS_LIB=${DHPS_LIB:-$build/libdhps.so.0}
export DHPS_BIN=${DHPS_BIN:-$build/src/tools/dhps}
export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
[ -e "$DHPS_LIB" ] || { echo "run-tests: $DHPS_LIB missing (./scripts/build.sh rel)" >&2; exit 1; }
cd "$root"
rc=0
/usr/bin/python3 -m pytest python/tests -q -p no:cacheprovider "$@" || rc=$?
[ "$rc" -ne 5 ] || echo "run-tests: pytest collected no tests" >&2
exit "$rc"

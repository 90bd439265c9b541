#!/usr/bin/env bash
# Run the RPC suite on RDMA verbs inside a Soft-RoCE guest (tests/vm/rxe-run: Debian's
# kernel with rdma_rxe in qemu). Binaries are built on the host (build/verbs) and
# only run in the guest (TCG is 10-50x slower).
#
# Exit status: 0 when the suite passed; 77 when it was skipped (the guest could not
# boot, e.g. no qemu and no root to install it, or the test reported skip), printed as
# "verbs suite SKIPPED: <why>" and appended to $DHPS_SKIP_FILE when set. Non-zero when a test failed in the
# guest or the build failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rxe=${RXE_RUN:-$root/tests/vm/rxe-run}
bdir=${DHPS_VERBS_BUILD:-$root/build/verbs}

skip() { echo "verbs suite SKIPPED: $*"; [ -z "${DHPS_SKIP_FILE:-}" ] || echo "verbs suite: $*" >>"$DHPS_SKIP_FILE"; exit 77; }

[ -x "$rxe" ] || skip "no Soft-RoCE harness at $rxe"

echo "verbs: building on the host in $bdir"
if ! cmake -S "$root" -B "$bdir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDHPS_BENCH=OFF >/dev/null ||
   ! cmake --build "$bdir" -j "$(nproc)" --target test_rpc_verbs >/dev/null; then
  echo "verbs: build FAILED"; exit 1
fi

log=$(mktemp)
echo "verbs: running test_rpc_verbs in the guest"
(cd "$bdir" && DHPS_TEST_SCALE=${DHPS_TEST_SCALE:-small} "$rxe" --timeout "${RXE_TIMEOUT:-600}" -- ./tests/rpc/test_rpc_verbs) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
case $rc in
  0)   echo "verbs suite PASSED in the Soft-RoCE guest"; rm -f "$log"; exit 0 ;;
  77)  why=$(grep -m1 -E "SKIP|NOT IMPLEMENTED" "$log" || echo "the test reported skip")
       rm -f "$log"; skip "in the guest: $why" ;;
  125) why=$(grep -m1 '^rxe-run: ' "$log" | sed 's/^rxe-run: //'); rm -f "$log"
       skip "the Soft-RoCE guest could not start: ${why:-rxe-run exit 125, see above}" ;;
  124) echo "verbs suite FAILED: timeout in the guest"; rm -f "$log"; exit 1 ;;
  *)   echo "verbs suite FAILED in the guest (exit $rc)"; rm -f "$log"; exit 1 ;;
esac

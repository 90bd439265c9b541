#!/usr/bin/env bash
# dhps chaos on RDMA verbs inside a Soft-RoCE guest (tests/vm/rxe-run: Debian's kernel with
# rdma_rxe in qemu), with the rxe link deleted in the middle of the load. Binaries are
# built on the host (build/chaos-rxe) and only run in the guest (TCG: 10-50x slower).
#
# What it runs in the guest: a 4-node local cluster whose servers offer verbs (`dhps up
# --verbs`), all in one AZ so the client may use verbs toward every node but its own host
# label (that one gets shared memory); lookups and ACK_ALL updates for --seconds; at
# --rdma-link-delete seconds `rdma link delete $RXE_DEV`. No process faults (kill/stop/
# slow are covered natively by `dhps chaos`; here the fault under test is the device).
# Sized for TCG: 16 shards, 2,000 keys, batches of 20, 256 KiB messages (every verbs
# slot is one registered max-size frame), a 20 s connect bound (setting up a verbs path
# took ~1 s in the guest), and a 3 s deadline: 30x the native 100 ms, for TCG's 10-50x;
# in the guest a lookup's p50 was ~20 ms and its p95 ~100 ms (natively ~0.2 / ~0.5 ms),
# and the rpc library's verbs teardown after the delete held the client's loop for up to
# ~0.6 s (a 1 s deadline missed one lookup in flight across it).
#
# Passes when: chaos exits 0 (no acknowledged update lost, the link delete ran and exited
# 0, verbs carried requests before it), every lookup of the run was answered completely
# within its deadline (so, in particular, none after the delete), and lookups did run
# after the delete.
#
# Exit status: 0 when it passed; 77 when it was skipped (the guest could not boot),
# printed as "chaos-rxe SKIPPED: <why>" and appended to $DHPS_SKIP_FILE when set.
# Non-zero when the build failed or a check failed in the guest.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rxe=${RXE_RUN:-$root/tests/vm/rxe-run}
bdir=${DHPS_CHAOS_RXE_BUILD:-$root/build/chaos-rxe}
seconds=${CHAOS_RXE_SECONDS:-30}
delete_at=${CHAOS_RXE_DELETE_AT:-12}

skip() { echo "chaos-rxe SKIPPED: $*"; [ -z "${DHPS_SKIP_FILE:-}" ] || echo "chaos-rxe: $*" >>"$DHPS_SKIP_FILE"; exit 77; }
fail() { echo "chaos-rxe FAILED: $*"; exit 1; }

[ -x "$rxe" ] || skip "no Soft-RoCE harness at $rxe"

echo "chaos-rxe: building dhps and dhps-server on the host in $bdir"
if ! cmake -S "$root" -B "$bdir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDHPS_BENCH=OFF >/dev/null ||
   ! cmake --build "$bdir" -j "$(nproc)" --target dhps dhps-server >/dev/null; then
  echo "chaos-rxe: build FAILED"; exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -rf "$bdir/chaos-rxe-run"
echo "chaos-rxe: dhps chaos --verbs --rdma-link-delete $delete_at for $seconds s in the guest"
(cd "$bdir" && "$rxe" --timeout "${RXE_TIMEOUT:-240}" -- ./src/tools/dhps chaos \
   --dir ./chaos-rxe-run --seconds "$seconds" --faults none --verbs \
   --rdma-link-delete "$delete_at" --nodes 4 --shards 16 --keys 2000 --batch 20 \
   --deadline-ms 3000 --max-msg 262144 --connect-timeout-ms 20000 --json) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
case $rc in
  125) why=$(grep -m1 '^rxe-run: ' "$log" | sed 's/^rxe-run: //')
       skip "the Soft-RoCE guest could not start: ${why:-rxe-run exit 125, see above}" ;;
  124) fail "timeout in the guest" ;;
esac
json=$(grep -m1 '^{"seconds"' "$log") || fail "no JSON report from dhps chaos (exit $rc)"
check() { # check NAME JQ-EXPRESSION: print the value, fail unless the expression holds
  echo "$json" | jq -e "$2" >/dev/null || fail "$1: $(echo "$json" | jq -c "$3")"
}
summary=$(echo "$json" | jq -r '"lookups \(.requests), in deadline \(.answered_in_deadline); verbs requests before the delete \(.rdma_link_delete.verbs_handled_before) (tcp \(.rdma_link_delete.tcp_handled_before)), at the end \(.rdma_link_delete.verbs_handled_end) (tcp \(.rdma_link_delete.tcp_handled_end)); verbs paths failed \(.rdma_link_delete.verbs_failures); lookups after the delete \(.rdma_link_delete.lookups_after), failed \(.rdma_link_delete.lookups_after_failed); rdma exit \(.rdma_link_delete.exit) after \(.rdma_link_delete.took_s) s; acked updates lost \(.acked_updates_lost)"')
echo "chaos-rxe: $summary"
check "rdma link delete did not succeed" '.rdma_link_delete.exit == 0' '.rdma_link_delete'
check "verbs carried nothing before the delete" '.rdma_link_delete.verbs_handled_before > 0' '.rdma_link_delete'
check "no lookup ran after the delete" '.rdma_link_delete.lookups_after > 0' '.rdma_link_delete'
check "lookups failed after the delete" '.rdma_link_delete.lookups_after_failed == 0' '.rdma_link_delete'
check "lookups failed" '.requests == .answered_in_deadline' '{requests, answered_in_deadline, lookup_timeouts, lookup_unreachable, lookup_other_errors, lookup_late}'
check "acknowledged updates lost" '.acked_updates_lost == 0' '{acked_updates, acked_updates_lost}'
[ "$rc" -eq 0 ] || fail "dhps chaos exited $rc"
echo "chaos-rxe PASSED in the Soft-RoCE guest"

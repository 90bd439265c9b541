#!/usr/bin/env bash
# The topology test inside the Soft-RoCE guest (tests/vm/rxe-run): real link
# delays with tc netem, RDMA verbs inside AZ a, every delay and deadline x30 for TCG, and
# up to 0.2 % of lookups may miss their deadline (0.1 % on the host: TCG timing is
# noisier; the 1 % once needed for dials that blocked the client thread on a restarted
# node's slow verbs set-up went with the non-blocking open, docs/topology.md).
# Binaries come from the host's release build (build/rel, built here if missing). The
# guest gets 4 GiB (RXE_MEM): with 2 GiB its OOM killer took a dhps-server (640 MB
# resident each) on 2026-12-04.
# The membership part (etcd, a POD join, a node replacement) runs on the host only
# (--no-membership here): the guest can run the host's etcd-server over 9p (3.4.23 started
# in 6.4 s under TCG, a put and a get by curl took 4.9 s), but the coord client's 2 s call
# bound and the 90 s the part may add to the stage do not fit TCG, and nothing in it
# depends on verbs (docs/topology.md "Membership").
# Exit 0 when it passed, 77 when it was skipped (printed "topology (guest) SKIPPED: why",
# appended to $DHPS_SKIP_FILE when set), another non-zero status when it failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rxe=${RXE_RUN:-$root/tests/vm/rxe-run}
skip() { echo "topology (guest) SKIPPED: $*"; [ -z "${DHPS_SKIP_FILE:-}" ] || echo "topology (guest): $*" >>"$DHPS_SKIP_FILE"; exit 77; }
[ -x "$rxe" ] || skip "no Soft-RoCE harness at $rxe"
bdir=$("$root/scripts/build.sh" rel) || { echo "topology (guest): build FAILED"; exit 1; }
cd "$root" || exit 1
"$rxe" --timeout "${RXE_TIMEOUT:-900}" --mem "${RXE_MEM:-4G}" -- tests/topology/topology.sh --bin "$bdir" --netem \
  --verbs --scale 30 --phase-timeout 150 --max-incomplete 0.2 --no-membership
rc=$?
case $rc in
  0)   echo "topology (guest) PASSED"; exit 0 ;;
  77)  skip "the test skipped itself in the guest (see above)" ;;
  125) skip "the Soft-RoCE guest could not start (rxe-run exit 125, see above)" ;;
  124) echo "topology (guest) FAILED: timeout"; exit 1 ;;
  *)   echo "topology (guest) FAILED (exit $rc)"; exit 1 ;;
esac

#!/usr/bin/env bash
# dhps map publish/show/history against a real etcd: create, refuse without
# --expect-revision, refuse a stale revision, replace, history; two concurrent publishes
# with the same expected revision: exactly one wins.
set -euo pipefail
D=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/etcd-lib.sh"
t=$(mktemp -d)
trap 'etcd_kill; rm -rf "$t"' EXIT
etcd_start "$t"
E=(--etcd "$ETCD_URL" --cluster c1)
for v in 1 2 3 4; do "$D" map gen --local 3 --shards 16 --replicas 2 --version $v -o "$t/m$v.json" >/dev/null; done
set +e
"$D" map show "${E[@]}"; rc=$?; [ $rc -eq 3 ] || { echo "show without a map: rc $rc"; exit 1; }
set -e
"$D" map publish "${E[@]}" "$t/m1.json"
out=$("$D" map show "${E[@]}"); echo "$out"
rev=$(sed 's/.*revision \([0-9]*\),.*/\1/' <<<"$out")
grep -q 'version 1,' <<<"$out"
set +e
"$D" map publish "${E[@]}" "$t/m2.json" 2>"$t/err"; rc=$?
set -e
[ $rc -eq 3 ] && grep -q "expect-revision $rev" "$t/err" || { cat "$t/err"; exit 1; }
"$D" map publish "${E[@]}" --expect-revision "$rev" "$t/m2.json"
set +e
"$D" map publish "${E[@]}" --expect-revision "$rev" "$t/m3.json" 2>"$t/err"; rc=$?
set -e
[ $rc -eq 3 ] && grep -q "changed concurrently" "$t/err" || { echo "stale revision: rc $rc"; cat "$t/err"; exit 1; }
# the race: same expected revision, two publishers
rev=$("$D" map show "${E[@]}" | sed 's/.*revision \([0-9]*\),.*/\1/')
set +e
"$D" map publish "${E[@]}" --expect-revision "$rev" "$t/m3.json" >"$t/o3" 2>&1 & p3=$!
"$D" map publish "${E[@]}" --expect-revision "$rev" "$t/m4.json" >"$t/o4" 2>&1 & p4=$!
wait $p3; r3=$?; wait $p4; r4=$?
set -e
cat "$t/o3" "$t/o4"
{ [ $r3 -eq 0 ] && [ $r4 -eq 3 ]; } || { [ $r3 -eq 3 ] && [ $r4 -eq 0 ]; } || { echo "race: $r3 $r4"; exit 1; }
win=$([ $r3 -eq 0 ] && echo 3 || echo 4)
"$D" map show "${E[@]}" | grep "version $win," >/dev/null
"$D" map show "${E[@]}" --json | "$D" map check /dev/stdin | grep "version $win" >/dev/null
"$D" map history "${E[@]}" | tee "$t/h"
[ "$(wc -l <"$t/h")" -eq 3 ]
echo "test_coord_cli: ok"

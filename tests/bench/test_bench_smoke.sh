#!/usr/bin/env bash
# Every dhps-bench subcommand at a tiny size: it runs to the end, exits 0 and prints its
# table, so a benchmark that rotted (a refused secret, a changed API) fails here instead
# of in front of the next person who measures. No figure is judged. A second argument,
# dhps-store-probe's path, runs the probe once at a tiny size and checks its usage errors.
set -euo pipefail
B=$1
P=${2:-}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
run() { # NAME WANT-REGEX ARGS...
  local name=$1 want=$2; shift 2
  local rc=0
  "$B" "$@" >"$t/out" 2>"$t/err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: dhps-bench $* exited $rc"; cat "$t/out" "$t/err"; exit 1
  fi
  grep -Eq "$want" "$t/out" || { echo "FAIL: $name: no line matching '$want'"; cat "$t/out"; exit 1; }
}
run store 'dhps' store --keys 20000 --ops 100000 --batch 256 --rounds 1
run store-json '"contenders"|"results"|\{' store --keys 20000 --ops 100000 --batch 256 --json
run store-churn 'compaction moved [0-9.]+ B of live records per record byte written' \
  store --keys 20000 --ops 20000 --batch 256 --only dhps --churn 3
run store-churn-inplace 'in place: [0-9]+ of the overwrites' \
  store --keys 20000 --ops 20000 --batch 256 --only dhps --churn 3
run store-churn-json '"write_amplification": [0-9]' \
  store --keys 20000 --ops 20000 --batch 256 --only dhps --churn 3 --json
run store-goal 'fragmentation goal 0.08$' \
  store --keys 20000 --ops 20000 --batch 256 --only dhps --churn 3 --fragmentation-goal 0.08
for bad in 0 0.5 x; do # out of (0, 0.5) or not a number: a usage error naming the option
  rc=0; "$B" store --keys 1000 --fragmentation-goal "$bad" >"$t/out" 2>"$t/err" || rc=$?
  [ "$rc" -ne 0 ] && grep -q -- '--fragmentation-goal' "$t/err" ||
    { echo "FAIL: --fragmentation-goal $bad: exit $rc"; cat "$t/err"; exit 1; }
done
run route 'ns|ops' route --nodes 64 --ops 20000 --repeat 1
run sync 'catch-up of 5000 keys' sync --keys 5000 --updates 200 --rounds 1
run wal 'dhps_wal never' wal --dir "$t/wal" --seconds 0.2 --rounds 1 --threads 1
run wal-server 'log off' wal --server --dir "$t/walsrv" --seconds 0.3 --rounds 1 --clients 1
run rpc-shm 'calls' rpc --transport shm --seconds 0.2
if [ -n "$P" ]; then
  rc=0; "$P" 2048 100 3 >"$t/out" 2>"$t/err" || rc=$?
  [ "$rc" -eq 0 ] && grep -q 'values 100 B at 8-byte alignment' "$t/out" &&
    grep -Eq 'lookups per line [0-9.]+$' "$t/out" ||
    { echo "FAIL: dhps-store-probe 2048 100 3: exit $rc"; cat "$t/out" "$t/err"; exit 1; }
  # too few keys, a value too long, an alignment the store refuses, a fourth argument
  for args in "1000" "2048 16384" "2048 64 9" "2048 64 1 x"; do
    rc=0; "$P" $args >"$t/out" 2>"$t/err" || rc=$?
    [ "$rc" -eq 2 ] && grep -q 'usage: dhps-store-probe' "$t/err" ||
      { echo "FAIL: dhps-store-probe $args: exit $rc"; cat "$t/err"; exit 1; }
  done
fi
echo ok

#!/usr/bin/env bash
# dhps node add|drain|remove|replace, rebalance, controller against a real etcd, with
# registrations put here under leases standing in for servers: "fast" nodes report every
# map version applied and nothing not ready (a join completes at once), a "slow" one
# never catches up. Exit codes, --dry-run, --no-wait, the election (a second driver waits
# for the first), a rebalance timed out and resumed, a dead node re-replicated by the
# controller, the map valid at every step (dhps map check on each history entry).
set -euo pipefail
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
D=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/etcd-lib.sh"
t=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; etcd_kill; rm -rf "$t"' EXIT
etcd_start "$t"
E=(--etcd "$ETCD_URL" --cluster cc)
b64() { printf '%s' "$1" | base64 -w0; }
post() { curl -sf -m 5 -X POST -d "$2" "$ETCD_URL/v3/$1"; }
# registration leases outlive the test however slow the machine (the test ran past 60 s
# under load, the nodes' registrations expired and the driver rolled the joins back);
# a node leaves only when the test revokes its lease
lease() { post lease/grant '{"TTL": 3600}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["ID"])'; }
# reg ID LEASE MAPVERSION NOTREADY_JSON
reg() {
  local v="{\"node_id\":\"n$1\",\"id\":$1,\"host\":\"h$1\",\"pod\":\"p\",\"az\":\"a\",\"addr\":\"127.0.0.1:$((7000+$1))\",\"metrics_port\":$((9000+$1)),\"map_version\":$3,\"not_ready\":$4}"
  post kv/put "{\"key\":\"$(b64 /dhps/cc/nodes/n$1)\",\"value\":\"$(b64 "$v")\",\"lease\":\"$2\"}" >/dev/null
}
expect_rc() { local want=$1; shift; set +e; "$@" >"$t/out" 2>"$t/err"; local rc=$?; set -e
  [ "$rc" -eq "$want" ] || { echo "FAIL: $* -> rc $rc, want $want"; cat "$t/out" "$t/err"; exit 1; }; }
ver() { "$D" map show "${E[@]}" | sed 's/.*version \([0-9]*\),.*/\1/'; }
holds() { "$D" map show "${E[@]}" --json | python3 -c "
import json,sys; m=json.load(sys.stdin); n=int(sys.argv[1])
print(sum(n in s for s in m['shards']) + sum(j['node']==n for j in m.get('joining',[])))" "$1"; }
joining() { "$D" map show "${E[@]}" --json | python3 -c "import json,sys;print(len(json.load(sys.stdin).get('joining',[])))"; }
# pid of the election holder (/dhps/cc/controller), empty when none
holder_pid() { post kv/range "{\"key\":\"$(b64 /dhps/cc/controller)\"}" | python3 -c "
import base64,json,sys; d=json.load(sys.stdin)
print(json.loads(base64.b64decode(d['kvs'][0]['value']))['pid'] if d.get('kvs') else '')"; }
innodes() { "$D" map show "${E[@]}" --json | python3 -c "
import json,sys;print(int(sys.argv[1]) in [n['id'] for n in json.load(sys.stdin)['nodes']])" "$1"; }

"$D" map gen --local 4 --shards 32 --replicas 2 --version 1 -o "$t/m.json" >/dev/null
# map gen --local names hosts local-0..: re-label them h0.. like the registrations
sed -i 's/"local-\([0-9]*\)"/"h\1"/g' "$t/m.json"
"$D" map check "$t/m.json" >/dev/null
expect_rc 3 "$D" rebalance --dry-run "${E[@]}"            # no map yet
"$D" map publish "${E[@]}" "$t/m.json" >/dev/null
declare -A L
for i in 0 1 2 3 4 5 6; do L[$i]=$(lease); done
for i in 0 1 2 3 4 5; do reg $i "${L[$i]}" 1000000 '[]'; done   # fast nodes; 6 is slow

expect_rc 2 "$D" node add "${E[@]}"                          # usage
expect_rc 3 "$D" node add 9 "${E[@]}"                        # not registered
grep -q "not registered" "$t/err"
expect_rc 3 "$D" node drain 9 "${E[@]}"                      # not in the map
t0=$(date +%s.%N)
expect_rc 0 "$D" rebalance --dry-run "${E[@]}"
t1=$(date +%s.%N)
grep -q ' 0 moves' "$t/out"                                  # generated balanced
# cal S: S seconds, or four times what that dry run took (a command's start and its etcd
# round trips here and now: sanitizers, load) when longer: the margin of the bounds
# under test below (a rebalance that times out with joins in flight; a standby)
cal() { awk -v a="$t0" -v b="$t1" -v m="$1" 'BEGIN { d = (b - a) * 4; printf "%.2f", (d > m ? d : m) }'; }

# add with --no-wait: the node is in the map, holds nothing; dry-run lists moves to it
expect_rc 0 "$D" node add 4 "${E[@]}" --no-wait
[ "$(innodes 4)" = True ] && [ "$(holds 4)" -eq 0 ]
expect_rc 0 "$D" rebalance --dry-run "${E[@]}" --json
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['moves']>0 and all(m['to']==4 for m in d['list']), d" "$t/out"
n4=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['moves'])" "$t/out")
# two drivers at once (one move at a time: seconds): one holds the election and moves,
# the other waits for it
"$D" rebalance "${E[@]}" --parallel 1 --json >"$t/r1" 2>"$t/r1e" & p1=$!
"$D" rebalance "${E[@]}" --parallel 1 --json >"$t/r2" 2>"$t/r2e" & p2=$!
wait $p1; r1=$?; wait $p2; r2=$?
[ $r1 -eq 0 ] && [ $r2 -eq 0 ] || { echo "FAIL: concurrent rebalance $r1 $r2"; cat "$t"/r1* "$t"/r2*; exit 1; }
cat "$t/r1e" "$t/r2e" | grep "drives the moves; waiting" >/dev/null || { echo "FAIL: no driver waited"; cat "$t"/r1* "$t"/r2*; exit 1; }
flips=$(cat "$t/r1" "$t/r2" | python3 -c "import json,sys; print(sum(json.loads(l)['flips'] for l in sys.stdin))")
[ "$flips" -eq "$n4" ] || { echo "FAIL: $flips flips, planned $n4"; exit 1; }
[ "$(holds 4)" -eq "$n4" ] && [ "$(joining)" -eq 0 ]
expect_rc 0 "$D" rebalance --dry-run "${E[@]}"
grep -q ' 0 moves' "$t/out"

# a slow node: the rebalance times out with joins in flight (exit 4, map valid); once
# the node catches up, a new rebalance resumes and finishes
reg 6 "${L[6]}" 0 '[]'
expect_rc 0 "$D" node add 6 "${E[@]}" --no-wait
expect_rc 4 "$D" rebalance "${E[@]}" --timeout-s "$(cal 2)"
[ "$(joining)" -gt 0 ]
# a driver killed (-9) mid-move (once it holds the election): the map stays valid with
# its joins; its election key stays until its lease (5 s) expires; the next rebalance
# waits for that, then drives
"$D" rebalance "${E[@]}" --lease-ttl-s 5 >"$t/k" 2>&1 & pk=$!
wait_for 10 eval '[ "$(holder_pid)" = "$pk" ]' || { echo "FAIL: the driver did not take the election"; cat "$t/k"; exit 1; }
kill -9 $pk; wait $pk || true
"$D" map show "${E[@]}" --json >"$t/cur.json"; "$D" map check "$t/cur.json" >/dev/null
[ "$(joining)" -gt 0 ]
reg 6 "${L[6]}" 1000000 '[]'
expect_rc 0 "$D" rebalance "${E[@]}" --timeout-s 60
grep -q "drives the moves; waiting for it" "$t/out" || { echo "FAIL: no wait for the dead holder"; cat "$t/out"; exit 1; }
grep -q "flipped" "$t/out" || { echo "FAIL: it did not drive after the lease expired"; cat "$t/out"; exit 1; }
[ "$(joining)" -eq 0 ] && [ "$(holds 6)" -gt 0 ]

# drain (no wait), then remove: both leave the map, their shards elsewhere
expect_rc 0 "$D" node drain 6 "${E[@]}" --no-wait
"$D" map show "${E[@]}" --json | grep '"state": *"draining"' >/dev/null
expect_rc 0 "$D" node remove 4 "${E[@]}" --json
[ "$(innodes 4)" = False ] && [ "$(innodes 6)" = False ]
grep -q '"result": "done"' "$t/out"

# replace 0 by 5: 5 takes exactly 0's shards
h0=$(holds 0)
expect_rc 0 "$D" node replace 0 5 "${E[@]}"
[ "$(innodes 0)" = False ] && [ "$(holds 5)" -eq "$h0" ]

# the controller: node 1's registration goes (its lease revoked, as on kill -9); after
# the grace its shards are re-replicated and it leaves the map
"$D" controller "${E[@]}" --grace-s 1 >"$t/ctl" 2>&1 & pc=$!; pids+=($pc)
wait_for 10 grep -q "elected" "$t/ctl" || { echo "FAIL: the controller was not elected"; cat "$t/ctl"; exit 1; }
expect_rc 0 "$D" controller "${E[@]}" --timeout-s "$(cal 1)"
grep -q "standby (held by" "$t/out" || { echo "FAIL: a second controller was not on standby"; cat "$t/out" "$t/ctl"; exit 1; }
post lease/revoke "{\"ID\":\"${L[1]}\"}" >/dev/null
wait_for 20 eval '[ "$(innodes 1)" = False ] && [ "$(joining)" -eq 0 ]' || true
[ "$(innodes 1)" = False ] || { echo "FAIL: node 1 still in the map"; cat "$t/ctl"; exit 1; }
kill $pc; wait $pc || true
grep -q "node 1 has had no registration" "$t/ctl"
python3 -c "
import json,sys; m=json.load(open(sys.argv[1]))
assert all(len(s)==2 and 1 not in s for s in m['shards']), m['shards']" <("$D" map show "${E[@]}" --json)
# every version published is a valid map
"$D" map history "${E[@]}" | grep -v 'invalid map' | wc -l >"$t/n"
"$D" map history "${E[@]}" | grep 'invalid map' >/dev/null && { echo "FAIL: an invalid map in the history"; exit 1; }
echo "test_ctl_cli: ok ($(cat "$t/n") map versions)"

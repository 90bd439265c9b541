#!/usr/bin/env bash
# dhps-bench rpc through its command line: one round and --rounds N (with --peers when
# redis-server and redis-benchmark are installed), --wait spin|block, --spin-us, --json's
# fields,
# and bad options refused with exit 2. The figures themselves are not judged here (a
# benchmark on a shared machine); only that every round ran, without errors, and that
# the summary is the median and range of the rounds printed.
set -euo pipefail
B=$1
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*"; [ -f "$t/out" ] && cat "$t/out"; [ -f "$t/err" ] && cat "$t/err"; exit 1; }

"$B" rpc --transport tcp --seconds 0.3 --json >"$t/out" 2>"$t/err" || fail "one round"
python3 - "$t/out" <<'PY' || fail "one round json"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["transport"] == "tcp" and d["wait"] == "spin" and d["spin_us"] == 0, d
assert d["calls_mps"] > 0 and d["errors"] == 0, d
assert 0 < d["p50_us"] <= d["p99_us"] <= d["p999_us"], d
PY

peers=()
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  peers=(--peers)
else
  echo "note: redis-server/redis-benchmark not installed: rounds without --peers"
fi
"$B" rpc --transport tcp --seconds 0.3 --rounds 3 --wait block "${peers[@]}" --json \
  >"$t/out" 2>"$t/err" || fail "--rounds 3"
python3 - "$t/out" "${#peers[@]}" <<'PY' || fail "--rounds 3 json"
import json, statistics, sys
d = json.load(open(sys.argv[1])); peers = sys.argv[2] == "1"
assert d["wait"] == "block" and d["spin_us"] == 50 and len(d["rounds"]) == 3, d
s = d["summary"]
for field, key in (("calls_mps", "calls_mps"), ("p99_us", "p99_us")):
    v = [r[key] for r in d["rounds"]]
    med, lo, hi = s[field]
    assert abs(med - statistics.median(v)) < 1e-3 * max(1, med), (field, v, s[field])
    assert abs(lo - min(v)) < 1e-3 * max(1, lo) and abs(hi - max(v)) < 1e-3 * max(1, hi), (field, v)
if peers:
    for r in d["rounds"]:
        assert r["redis_ping_mps"] > 0 and r["redis_get_mps"] > 0, r
        assert abs(r["ratio_ping"] - r["calls_mps"] / r["redis_ping_mps"]) < 0.01 * r["ratio_ping"] + 1e-3, r
    v = [r["ratio_ping"] for r in d["rounds"]]
    assert abs(s["ratio_ping"][0] - statistics.median(v)) < 1e-2, (v, s)
else:
    assert "ratio_ping" not in s, s
PY

# --spin-us: the clients' spin before they sleep (block), in the JSON and the header
"$B" rpc --transport tcp --seconds 0.2 --wait block --spin-us 0 --json >"$t/out" 2>"$t/err" \
  || fail "--spin-us 0"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["wait"] == "block" and d["spin_us"] == 0 and d["errors"] == 0, d' "$t/out" \
  || fail "--spin-us 0 json"
"$B" rpc --transport tcp --seconds 0.2 --wait block --spin-us 200 >"$t/out" 2>"$t/err" \
  || fail "--spin-us 200"
grep -q "clients block (spin 200 us)" "$t/out" || fail "no spin in the header"

# the text form names every round and the summary
"$B" rpc --transport tcp --seconds 0.2 --rounds 2 >"$t/out" 2>"$t/err" || fail "text rounds"
grep -q "^  round 2: dhps" "$t/out" || fail "no round 2 line"
grep -q "^median (min-max) over 2 rounds" "$t/out" || fail "no summary"

for bad in "--wait nap" "--rounds 0" "--rounds 65" "--transport udp" "--batch 0" \
           "--spin-us -1" "--spin-us 1000001" "--spin-us 5x"; do
  set +e
  # shellcheck disable=SC2086
  "$B" rpc --transport tcp --seconds 0.1 $bad >"$t/out" 2>"$t/err"
  rc=$?
  set -e
  [ "$rc" -eq 2 ] || fail "'$bad' exited $rc, want 2"
  grep -q "usage: dhps-bench rpc" "$t/err" || fail "'$bad': no usage on stderr"
done
echo "ok"

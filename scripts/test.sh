#!/usr/bin/env bash
# Run every dhps test: installs Debian packages (idempotent), then
#   1. release build, all tests (ctest)
#   2. ASan+UBSan build, all tests
#   3. TSan build, the concurrency-labelled tests
#   4. clang libFuzzer build, each fuzz target for a short time from its seed corpus
#   5. verbs tests inside a Soft-RoCE guest (../shared/rxe-vm), when present: the rpc
#      suite on verbs, and dhps chaos with the rxe link deleted mid-load
#   6. topology: servers in network namespaces, routing by tier (tests/topology), on the
#      host with injected delays, then in the Soft-RoCE guest with netem and verbs
# Ends with one line "N passed, N failed" over the stages; exits non-zero on any failure.
# Env: DHPS_TEST_STAGES="rel asan tsan fuzz verbs topology" to pick stages; FUZZ_SECONDS (20).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh" || { echo "deps: install failed"; exit 1; }
stages=${DHPS_TEST_STAGES:-rel asan tsan fuzz verbs topology}
passed=0; failed=0; failed_names=()
stage() { # stage NAME CMD...
  local name=$1; shift
  echo "=== stage $name"
  local t0=$SECONDS
  if "$@"; then passed=$((passed+1)); echo "=== stage $name: ok ($((SECONDS-t0)) s)"
  else failed=$((failed+1)); failed_names+=("$name"); echo "=== stage $name: FAILED ($((SECONDS-t0)) s)"; fi
}
ctest_in() { # ctest_in KIND [ctest args]
  local kind=$1; shift
  local dir; dir=$("$root/scripts/build.sh" "$kind") || return 1
  (cd "$dir" && ctest --output-on-failure --no-tests=error -j 2 "$@")
}
fuzz_all() {
  local dir; dir=$("$root/scripts/build.sh" fuzz) || return 1
  local secs=${FUZZ_SECONDS:-20} rc=0 n=0
  for f in "$dir"/fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    n=$((n+1))
    local name; name=$(basename "$f")
    local seeds="$root/fuzz/corpus/${name#fuzz_}"
    local work; work=$(mktemp -d)
    [ -d "$seeds" ] && cp -r "$seeds/." "$work/"
    echo "fuzz: $name for ${secs}s"
    if ! (cd "$work" && "$f" -max_total_time="$secs" -print_final_stats=0 "$work" >fuzz.log 2>&1); then
      echo "fuzz: $name FAILED"; tail -40 "$work/fuzz.log"; rc=1
    fi
    rm -rf "$work"
  done
  echo "fuzz: $n targets run"
  [ "$n" -gt 0 ] || { echo "fuzz: no targets built"; return 1; }
  return $rc
}
asan_tests() {
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    DHPS_TEST_SCALE=small ctest_in asan
}
tsan_tests() {
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 DHPS_TEST_SCALE=small \
    ctest_in tsan -L concurrency
}
verbs() { # the rpc suite on verbs, then dhps chaos with the rxe link deleted mid-load
  "$root/tests/rpc/verbs-suite.sh" || return 1
  "$root/tests/tools/chaos-rxe.sh"
}
topology() {
  local dir rc; dir=$("$root/scripts/build.sh" rel) || return 1
  # x2 delays and 60 s per phase: margin for a shared, loaded CI machine (docs/topology.md)
  "$root/tests/topology/topology.sh" --bin "$dir" --scale 2 --phase-timeout 60; rc=$?
  [ $rc = 77 ] && rc=0 # skipped (printed): not root or no ip netns
  [ $rc = 0 ] || return $rc
  "$root/tests/topology/topology-rxe.sh"
}
for s in $stages; do
  case $s in
    rel)   stage rel   ctest_in rel; stage install "$root/tests/install/install-test.sh"; stage python "$root/python/run-tests.sh" ;;
    asan)  stage asan  asan_tests ;;
    tsan)  stage tsan  tsan_tests ;;
    fuzz)  stage fuzz  fuzz_all ;;
    verbs) stage verbs verbs ;;
    topology) stage topology topology ;;
    *) echo "unknown stage $s"; failed=$((failed+1)) ;;
  esac
done
((failed)) && echo "failed stages: ${failed_names[*]}"
echo "stages: $passed passed, $failed failed"
exit $((failed > 0))

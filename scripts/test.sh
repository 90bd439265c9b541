#!/usr/bin/env bash
# Run every dhps test: installs Debian packages (idempotent), then
#   1. release build, all tests (ctest)
#   2. ASan+UBSan build, all tests
#   3. TSan build, the concurrency-labelled tests
#   4. clang libFuzzer build, each fuzz target for a short time from its seed corpus
#   5. verbs tests inside a Soft-RoCE guest (tests/vm/rxe-run: Debian's kernel in qemu):
#      the rpc suite on verbs, and dhps chaos with the rxe link deleted mid-load
#   6. topology: servers in network namespaces, routing by tier (tests/topology), on the
#      host with injected delays (then, with an etcd it starts, a POD join and a node
#      replacement), then in the Soft-RoCE guest with netem and verbs
#
# usage: scripts/test.sh [--repeat N] [--load K] [STAGE...]
#   STAGE...   stages to run (default $DHPS_TEST_STAGES, else all six, in the order above)
#   --repeat N run the chosen stages N times (default 1); every failure is reported with
#              its repeat, stage and test names
#   --load K   run K busy loops beside the tests (started and killed here), to show that
#              no test depends on an idle machine
# Each stage ends passed, failed or skipped (with the reason: no root for namespaces, no
# qemu, ...). With CI=true a skipped verbs or topology stage counts as failed: CI has
# root and can install qemu, so a skip there means the RDMA path went untested.
# The last line is "stages: N passed, N failed, N skipped" (stage runs over all repeats);
# exits non-zero when any failed.
# Env: DHPS_TEST_STAGES; FUZZ_SECONDS (20); DHPS_TEST_TIME_SCALE (tests/common/test_scale.h).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

repeat=1 load=0 pick=()
while (($#)); do
  case $1 in
    --repeat) repeat=${2:-}; shift 2 ;;
    --repeat=*) repeat=${1#*=}; shift ;;
    --load) load=${2:-}; shift 2 ;;
    --load=*) load=${1#*=}; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "test.sh: unknown option $1" >&2; exit 2 ;;
    *) pick+=("$1"); shift ;;
  esac
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "test.sh: --repeat needs a positive number" >&2; exit 2; }
[[ $load =~ ^[0-9]+$ ]] || { echo "test.sh: --load needs a number" >&2; exit 2; }
if ((${#pick[@]})); then stages="${pick[*]}"; else stages=${DHPS_TEST_STAGES:-rel asan tsan fuzz verbs topology}; fi

"$root/scripts/deps.sh" || { echo "deps: install failed"; exit 1; }

logs=$(mktemp -d /tmp/dhps-test.XXXXXX)
load_pids=()
cleanup() {
  local p
  for p in "${load_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${load_pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((i = 0; i < load; i++)); do
  ( trap - INT TERM; while :; do :; done ) &
  load_pids+=($!)
done
((load)) && echo "test.sh: $load busy loops beside the tests (pids ${load_pids[*]})"

passed=0 failed=0 skipped=0 report=()
# A stage function returns 0 (passed), 77 (skipped: it wrote the reason to $skip_file)
# or anything else (failed). Its output is shown and kept in $stage_log.
stage() { # stage NAME FUNCTION
  local name=$1 fn=$2 t0=$SECONDS rc why
  stage_log=$logs/$name.$rep.log skip_file=$logs/$name.$rep.skip
  : >"$skip_file"
  export DHPS_SKIP_FILE=$skip_file
  echo "=== stage $name${tag}"
  "$fn" 2>&1 | tee "$stage_log"
  rc=${PIPESTATUS[0]}
  why=$(paste -sd';' "$skip_file" | sed 's/;/; /g')
  if ((rc == 77)); then
    [ -n "$why" ] || why="the stage reported skip"
    if [ "${CI:-}" = true ] && [[ $name == verbs || $name == topology ]]; then
      failed=$((failed+1))
      echo "=== stage $name${tag}: FAILED: skipped ($why), and CI must run it (CI=true: root and qemu are there)"
      report+=("$name${tag}: skipped under CI: $why")
    else
      skipped=$((skipped+1))
      echo "=== stage $name${tag}: skipped: $why ($((SECONDS-t0)) s)"
    fi
  elif ((rc == 0)); then
    passed=$((passed+1))
    echo "=== stage $name${tag}: passed ($((SECONDS-t0)) s)"
  else
    failed=$((failed+1))
    local tests
    tests=$(failed_tests "$stage_log")
    echo "=== stage $name${tag}: FAILED ($((SECONDS-t0)) s)${tests:+: $tests}"
    report+=("$name${tag}: ${tests:-exit $rc (see its output)}")
  fi
}
# Names of the failed tests in a stage's output: ctest's list ("12 - test_client
# (Failed)") with the cmocka cases that failed in it ("[  FAILED  ] test_big_batch_split"),
# fuzz targets, and the verbs/topology scripts' FAILED lines.
failed_tests() {
  local log=$1 cases
  cases=$(grep -oE '^\[  FAILED  \] [A-Za-z_][A-Za-z_0-9]*' "$log" | awk '{print $NF}' | sort -u | paste -sd, -)
  {
    sed -n '/The following tests FAILED:/,$p' "$log" | grep -oE '^[[:space:]]*[0-9]+ - [^ ]+ \([^)]*\)' |
      sed -E 's/^[[:space:]]*[0-9]+ - //'
    grep -oE '^fuzz: fuzz_[A-Za-z0-9_]+ FAILED' "$log" | awk '{print $2}'
    grep -E '(verbs suite|chaos-rxe|topology( \(guest\))?) FAILED' "$log" | sed -n 1,3p
  } | paste -sd';' - | sed "s/;/; /g${cases:+; s/\$/ [cases: $cases]/}"
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
rel_tests() { ctest_in rel; }
asan_tests() {
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    DHPS_TEST_SCALE=small ctest_in asan
}
tsan_tests() {
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 DHPS_TEST_SCALE=small \
    ctest_in tsan -L concurrency
}
# The verbs and topology scripts exit 77 on a skip, after printing "<what> SKIPPED: <why>"
# and appending <why> to $DHPS_SKIP_FILE.
verbs() { # the rpc suite on verbs, then dhps chaos with the rxe link deleted mid-load
  "$root/tests/rpc/verbs-suite.sh" || return $?
  "$root/tests/tools/chaos-rxe.sh"
}
topology() { # host part (netns), then guest part (netem, verbs); skipped if either was
  local dir rc skips=0; dir=$("$root/scripts/build.sh" rel) || return 1
  # x2 delays and 60 s per phase: margin for a shared, loaded CI machine (docs/topology.md)
  "$root/tests/topology/topology.sh" --bin "$dir" --scale 2 --phase-timeout 60; rc=$?
  case $rc in 0) ;; 77) skips=1 ;; *) return $rc ;; esac
  "$root/tests/topology/topology-rxe.sh"; rc=$?
  case $rc in 0) ;; 77) skips=1 ;; *) return $rc ;; esac
  ((skips == 0)) || return 77
}

for ((rep = 1; rep <= repeat; rep++)); do
  tag=""; ((repeat > 1)) && tag=" (repeat $rep/$repeat)"
  for s in $stages; do
    case $s in
      rel)   stage rel   rel_tests; stage install "$root/tests/install/install-test.sh"
             stage python "$root/python/run-tests.sh" ;;
      asan)  stage asan  asan_tests ;;
      tsan)  stage tsan  tsan_tests ;;
      fuzz)  stage fuzz  fuzz_all ;;
      verbs) stage verbs verbs ;;
      topology) stage topology topology ;;
      *) echo "unknown stage $s"; failed=$((failed+1)); report+=("$s: unknown stage") ;;
    esac
  done
done
if ((${#report[@]})); then
  echo "failures:"
  printf '  %s\n' "${report[@]}"
fi
rm -rf "$logs"
echo "stages: $passed passed, $failed failed, $skipped skipped"
exit $((failed > 0))

# test_scale.sh: tests/common/test_scale.h for the shell tests (sourced). One time scale
# for every bound on an event that is not itself under test:
#   - DHPS_TEST_TIME_SCALE (a number >= 1, default 1), set by hand or by scripts/test.sh;
#   - DHPS_TEST_BUILD_SCALE: the build's factor (3 ASan, 5 TSan), which CMake puts in the
#     environment of the shell tests (the binaries they run are the sanitized ones);
#   - the load: the 1-minute load average per online CPU when above 1;
# their product, capped at 100, computed once when sourced.
#   test_s BASE            BASE seconds, scaled (a decimal number, for sleep/timeout/curl -m)
#   wait_for BASE CMD...   run CMD every 50 ms until it succeeds: 0; 1 once BASE seconds,
#                          scaled, passed (CMD's output is left alone)
TEST_SCALE=$(awk -v t="${DHPS_TEST_TIME_SCALE:-1}" -v b="${DHPS_TEST_BUILD_SCALE:-1}" \
  -v n="$(nproc 2>/dev/null || echo 1)" '
  { load = $1 }
  END {
    s = (t + 0 >= 1 ? t + 0 : 1) * (b + 0 >= 1 ? b + 0 : 1)
    if (n < 1) n = 1
    if (load / n > 1) s *= load / n
    if (s > 100) s = 100
    printf "%.3f", s
  }' /proc/loadavg 2>/dev/null || echo 1)

test_s() { awk -v b="$1" -v s="$TEST_SCALE" 'BEGIN { printf "%.3f", b * s }'; }

wait_for() {
  local end
  end=$(awk -v b="$1" -v s="$TEST_SCALE" -v now="$(date +%s.%N)" 'BEGIN { printf "%.3f", now + b * s }')
  shift
  while :; do
    "$@" && return 0
    awk -v e="$end" -v now="$(date +%s.%N)" 'BEGIN { exit !(now >= e) }' && return 1
    sleep 0.05
  done
}

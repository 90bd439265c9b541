#!/usr/bin/env bash
# build.sh [rel|asan|tsan|fuzz]: configure and build into build/<kind>. Prints the dir.
set -euo pipefail
kind=${1:-rel}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build/$kind
jobs=$(nproc)
case $kind in
  rel)  args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) args=(-DCMAKE_BUILD_TYPE=Debug -DDHPS_SANITIZE=asan -DDHPS_BENCH=OFF) ;;
  tsan) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DDHPS_SANITIZE=tsan -DDHPS_BENCH=OFF) ;;
  fuzz) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DDHPS_FUZZ=ON -DDHPS_BENCH=OFF
              -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++) ;;
  *) echo "usage: build.sh [rel|asan|tsan|fuzz]" >&2; exit 2 ;;
esac
cmake -S "$root" -B "$dir" "${args[@]}" >/dev/null
cmake --build "$dir" -j "$jobs" >&2
echo "$dir"

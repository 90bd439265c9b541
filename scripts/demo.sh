#!/usr/bin/env bash
# dhps's main job on default settings: `dhps up` starts a local cluster on loopback
# (6 dhps-server nodes across 2 AZs x 2 PODs, 2 replicas of 1024 shards), loads a sample
# embedding table (1M keys x dim 32 fp32), runs a sample inference workload through the
# client library and prints throughput, p50/p99/p99.9 batch latency and where traffic
# went; then `dhps down` stops the cluster (pass --keep to leave it running).
#
#   ./scripts/demo.sh [--keep] [dhps up options...]
#   ./scripts/demo.sh store [dhps-bench store options...]   # the storage-engine benchmark
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
dir=$("$root/scripts/build.sh" rel)
if [ "${1:-}" = store ]; then
  shift
  exec "$dir/bench/dhps-bench" store --peers "$@"
fi
keep=0
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
cluster="$root/build/demo-cluster"
"$dir/src/tools/dhps" down --dir "$cluster" >/dev/null 2>&1 || true # a previous --keep run
rm -rf "$cluster"
"$dir/src/tools/dhps" up --dir "$cluster" "$@"
if [ "$keep" = 1 ]; then
  echo "demo: cluster left running; stop it with: $dir/src/tools/dhps down --dir $cluster"
else
  "$dir/src/tools/dhps" down --dir "$cluster"
fi

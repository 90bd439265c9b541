#!/usr/bin/env bash
# dhps's main job on default settings. Until the service lands (issue 4: `dhps up`),
# that is the store benchmark: 10 M keys of 128-byte values, batched lookups and
# upserts, dhps beside std::unordered_map, absl::flat_hash_map and DPDK rte_hash.
# Extra arguments go to `dhps-bench store`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
dir=$("$root/scripts/build.sh" rel)
exec "$dir/bench/dhps-bench" store --peers "$@"

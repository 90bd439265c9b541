#!/usr/bin/env bash
# Install dhps's Debian 12 build, test and benchmark dependencies. Idempotent: does
# nothing (no apt-get at all) when every package is already installed.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config clang libclang-rt-14-dev llvm
  libxxhash-dev libcmocka-dev liburing-dev libssl-dev libyaml-dev libjansson-dev
  libmicrohttpd-dev libibverbs-dev librdmacm-dev ibverbs-providers rdma-core
  libabsl-dev libdpdk-dev
  redis-server redis-tools memcached libhiredis-dev libmemcached-dev
  iproute2 procps python3 curl jq
  libcurl4-openssl-dev etcd-server etcd-client   # coord (etcd JSON gateway) and its tests
  python3-cffi python3-numpy python3-pytest   # python/ package and its tests (/usr/bin/python3)
  python3-redis                               # python/bench_lookup.py: redis-py MGET baseline
  prometheus   # promtool: tests/tools/test_tools_metrics checks /metrics with it
  dpkg-dev file binutils util-linux   # tests/install: cpack DEB (dpkg-shlibdeps), nm, setpriv
)
missing=()
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "deps: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

#!/usr/bin/env bash
# install-test.sh [BUILD_DIR]: dhps as a user installs it (issue 11). From a release
# build dir (default: ./scripts/build.sh rel):
#   1. cmake --install into a temp prefix; the expected files are there
#   2. libdhps.so exports only the public API (check-exports.sh, nm -D); the installed
#      headers compile as C11 and C++17
#   3. examples/ built out of tree with pkg-config (make) and with CMake (find_package:
#      dhps::dhps and dhps::dhps_static); the pkg-config build needs only libdhps.so.0
#   4. a local cluster from the prefix (dhps up --no-workload --keys 1000): every example
#      binary writes, reads back and sees the unwritten keys "absent"; dhps down
#   5. cpack: dhps_<ver>_amd64.deb, its file list and control files; as root under
#      CI=true, dpkg -i into the system (else dpkg-deb -x into a temp dir), the unit's
#      ExecStart run as the unit would run it, /health 200, SIGTERM, exit 0; dpkg -r, then
#      dpkg -P (purge) so that a second run starts from the same system
# Prints one line per check and "install: N passed, N failed"; exit 0 or 1. Idempotent.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/common/test_scale.sh" # wait_for: waits on events, scaled bounds
build=${1:-}
if [ -z "$build" ]; then build=$("$root/scripts/build.sh" rel) || { echo "install: build failed"; exit 1; }; fi
build=$(cd "$build" && pwd)
tmp=$(mktemp -d /tmp/dhps-install.XXXXXX)
prefix=$tmp/prefix
passed=0; failed=0
ok() { passed=$((passed+1)); echo "install: ok: $*"; }
bad() { failed=$((failed+1)); echo "install: FAILED: $*"; }
check() { # check "what" CMD...: ok when CMD exits 0, else FAILED with its output
  local what=$1; shift
  if "$@" >"$tmp/out" 2>&1; then ok "$what"; else bad "$what"; tail -30 "$tmp/out" | sed 's/^/    /'; fi
}
cluster_up=""; server_pid=""; deb_installed=""
cleanup() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$cluster_up" ] && "$prefix/bin/dhps" down --dir "$tmp/cluster" >/dev/null 2>&1
  [ -n "$deb_installed" ] && dpkg -P dhps >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

# 1. install into a temp prefix
check "cmake --install $build --prefix $prefix" cmake --install "$build" --prefix "$prefix"
missing=""
for f in bin/dhps bin/dhps-server lib/libdhps.so lib/libdhps.so.0 lib/libdhps.a \
         include/dhps/client.h include/dhps/proto.h lib/pkgconfig/dhps.pc \
         lib/cmake/dhps/dhpsConfig.cmake lib/cmake/dhps/dhpsConfigVersion.cmake \
         etc/dhps/server.json lib/systemd/system/dhps-server.service; do
  [ -e "$prefix/$f" ] || missing="$missing $f"
done
if [ -z "$missing" ]; then ok "installed files present (bin, lib .so/.a, headers, dhps.pc, CMake package, unit, config)"
else bad "installed files missing:$missing"; fi

# 2. exports and headers
check "exports of the installed libdhps.so (nm -D)" \
  "$root/tests/install/check-exports.sh" "$prefix/lib/libdhps.so.0" "$prefix/include" "$root/cmake/dhps.map"
hdr_c11() { for h in "$prefix"/include/dhps/*.h; do
  echo "#include <dhps/$(basename "$h")>" | cc -std=c11 -Wall -Wextra -pedantic -Werror -I"$prefix/include" -x c -fsyntax-only - || return 1; done; }
hdr_cxx() { for h in "$prefix"/include/dhps/*.h; do
  echo "#include <dhps/$(basename "$h")>" | c++ -std=c++17 -Wall -Wextra -pedantic -Werror -I"$prefix/include" -x c++ -fsyntax-only - || return 1; done; }
check "installed headers compile alone as C11 (-pedantic -Werror)" hdr_c11
check "installed headers compile alone as C++17 (-pedantic -Werror)" hdr_cxx

# 3. examples out of tree; docs/client.md quotes the example whole
doc_quotes_example() {
  awk '/<!-- examples\/client_example.c/ {m=1; next} m==1 && /^```c$/ {m=2; next}
       m==2 && /^```$/ {exit} m==2 {print}' "$root/docs/client.md" | diff - "$root/examples/client_example.c"
}
check "docs/client.md quotes examples/client_example.c exactly" doc_quotes_example
cp -r "$root/examples" "$tmp/examples"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
check "pkg-config --libs dhps is -ldhps only" bash -c '[ "$(pkg-config --libs-only-l dhps | xargs)" = "-ldhps" ]'
check "pkg-config --static --libs dhps lists the private deps" bash -c \
  'pkg-config --static --libs dhps | grep -- -ljansson >/dev/null && pkg-config --static --libs dhps | grep -- -lcrypto >/dev/null'
check "examples with pkg-config: make -C examples" make -C "$tmp/examples" client_example
needed=$(readelf -d "$tmp/examples/client_example" 2>/dev/null | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
case " $needed" in
  *" libdhps.so.0 "*) if echo "$needed" | grep -qE 'jansson|crypto|ibverbs'; then bad "client_example needs $needed"
                      else ok "client_example (pkg-config) needs only: $needed"; fi ;;
  *) bad "client_example does not need libdhps.so.0: $needed" ;;
esac
check "examples with CMake: find_package(dhps), dhps::dhps and dhps::dhps_static" bash -c \
  "cmake -S '$tmp/examples' -B '$tmp/examples-build' -DCMAKE_PREFIX_PATH='$prefix' &&
   cmake --build '$tmp/examples-build' && test -x '$tmp/examples-build/client_example' &&
   test -x '$tmp/examples-build/client_example_static'"

# 4. the examples against a local cluster started from the prefix
if check "dhps up --no-workload --keys 1000 (installed binaries)" \
    "$prefix/bin/dhps" up --dir "$tmp/cluster" --no-workload --keys 1000 --quiet; then
  cluster_up=1
  run_ex() { LD_LIBRARY_PATH="$prefix/lib" "$1" "$tmp/cluster/map.json" "$tmp/cluster/secret"; }
  for ex in "$tmp/examples/client_example" "$tmp/examples-build/client_example" \
            "$tmp/examples-build/client_example_static"; do
    if [ -x "$ex" ]; then
      check "example ${ex#$tmp/}: rows read back, unwritten keys absent, rc 0" run_ex "$ex"
      grep -E '^(update|lookup|  key 2000001)' "$tmp/out" | sed 's/^/    /'
    fi
  done
  check "dhps down" "$prefix/bin/dhps" down --dir "$tmp/cluster"
  cluster_up=""
fi

# 5. the Debian package
ver=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
deb=$build/dhps_${ver}_amd64.deb
rm -f "$deb"
check "cpack -G DEB -> $(basename "$deb")" bash -c "cd '$build' && cpack -G DEB && test -f '$deb'"
if [ -f "$deb" ]; then
  dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' > "$tmp/deb.files"
  missing=""
  for f in /usr/bin/dhps /usr/bin/dhps-server /usr/lib/libdhps.so.0 /usr/lib/libdhps.a \
           /usr/include/dhps/client.h /usr/lib/pkgconfig/dhps.pc /usr/lib/cmake/dhps/dhpsConfig.cmake \
           /lib/systemd/system/dhps-server.service /etc/dhps/server.json; do
    grep -qxF "$f" "$tmp/deb.files" || missing="$missing $f"
  done
  if [ -z "$missing" ]; then ok "deb holds server, CLI, libs, headers, dhps.pc, CMake package, unit, config"
  else bad "deb lacks:$missing"; fi
  check "deb control: conffiles /etc/dhps/server.json, postinst, Depends" bash -c \
    "dpkg-deb -I '$deb' conffiles | grep -x /etc/dhps/server.json >/dev/null && dpkg-deb -I '$deb' postinst >/dev/null &&
     dpkg-deb -f '$deb' Depends | grep libc6 >/dev/null"
  if [ "$(id -u)" = 0 ] && [ "${CI:-}" = true ]; then
    mode=system
    check "dpkg -i $(basename "$deb") (root, CI=true)" dpkg -i "$deb" && deb_installed=1
    sysroot=""
    check "postinst: /etc/dhps/secret 0600 owned by dhps, /var/lib/dhps/snap" bash -c \
      '[ "$(stat -c %a:%U /etc/dhps/secret)" = 600:dhps ] && [ -s /etc/dhps/secret ] && [ -d /var/lib/dhps/snap ]'
  else
    mode=extracted
    sysroot=$tmp/sysroot
    dpkg-deb -x "$deb" "$sysroot"
    # as the postinst would (secret 0600, snapshot dir), under the temp root; the config
    # copy points at them
    mkdir -p "$sysroot/var/lib/dhps/snap"
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$sysroot/etc/dhps/secret")
    sed -i "s|/etc/dhps|$sysroot/etc/dhps|; s|/var/lib/dhps|$sysroot/var/lib/dhps|" "$sysroot/etc/dhps/server.json"
    # ephemeral ports (a developer's machine may use 7000/9100), found in port_file
    jq --arg pf "$tmp/ports" '.listen.tcp_port = 0 | .metrics.port = 0 | .port_file = $pf' \
      "$sysroot/etc/dhps/server.json" > "$tmp/cfg" && cp "$tmp/cfg" "$sysroot/etc/dhps/server.json"
    ok "deb extracted to a temp root (not root under CI=true: system left alone)"
  fi
  unit=$sysroot/lib/systemd/system/dhps-server.service
  execstart=$(sed -n 's/^ExecStart=//p' "$unit")
  user=$(sed -n 's/^User=//p' "$unit")
  cmdline=${execstart//\/usr\/bin\//$sysroot/usr/bin/}
  cmdline=${cmdline//\/etc\/dhps\//$sysroot/etc/dhps/}
  cfg=$sysroot/etc/dhps/server.json
  check "dhps-server --check-config on the packaged config ($mode)" \
    env LD_LIBRARY_PATH="$sysroot/usr/lib" "$sysroot/usr/bin/dhps-server" --check-config "$cfg"
  metrics=$(jq -r '.metrics.port // empty' "$cfg")
  portfile=$(jq -r '.port_file // empty' "$cfg")
  if [ ! -x "$sysroot/usr/bin/dhps-server" ] || [ -z "$metrics" ]; then
    bad "no dhps-server or no metrics port in the package: not started"
  else
  runas=()
  # as the unit's User=, exec'd in place like systemd does (setpriv: no parent shell
  # between the signal and the server)
  [ "$mode" = system ] && [ -n "$user" ] && command -v setpriv >/dev/null &&
    runas=(setpriv --reuid "$user" --regid "$user" --init-groups --)
  echo "install: running the unit's ExecStart: ${runas[*]} $cmdline"
  # shellcheck disable=SC2086 # the unit's command line, split as systemd splits it
  "${runas[@]}" $cmdline >"$tmp/server.log" 2>&1 &
  server_pid=$!
  code=""
  healthy_or_gone() { # /health 200, or the server exited (the wait ends either way)
    if [ -n "$portfile" ]; then metrics=$(awk '{print $2}' "$portfile" 2>/dev/null); fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$metrics/health" || true)
    [ "$code" = 200 ] || ! kill -0 "$server_pid" 2>/dev/null
  }
  wait_for 20 healthy_or_gone
  if [ "$code" = 200 ]; then ok "dhps-server from the unit's ExecStart: /health 200 on port $metrics"
  else bad "dhps-server /health: '$code'"; tail -20 "$tmp/server.log" | sed 's/^/    /'; fi
  kill -TERM "$server_pid" 2>/dev/null
  wait "$server_pid"; src=$?
  server_pid=""
  if [ $src = 0 ]; then ok "dhps-server stopped by SIGTERM, exit 0"
  else bad "dhps-server exit $src after SIGTERM"; tail -20 "$tmp/server.log" | sed 's/^/    /'; fi
  fi
  if [ -n "$deb_installed" ]; then
    check "dpkg -r dhps" dpkg -r dhps && deb_installed=""
    check "after dpkg -r: binaries and libdhps gone, config kept (conffile)" bash -c \
      '! [ -e /usr/bin/dhps-server ] && ! [ -e /usr/lib/libdhps.so.0 ] && [ -f /etc/dhps/server.json ]'
    # leave the system as it was: the conffile, the secret, /var/lib/dhps, the user
    check "dpkg -P dhps: config, secret, /var/lib/dhps and the dhps user gone" bash -c \
      'dpkg -P dhps && ! [ -e /etc/dhps/server.json ] && ! [ -e /etc/dhps/secret ] &&
       ! [ -e /var/lib/dhps ] && ! getent passwd dhps'
  fi
fi
echo "install: $passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# check-exports.sh LIBDHPS_SO INCLUDE_DIR [MAP]: the dynamic symbols libdhps.so defines
# (nm -D --defined-only) must all be declared in the public headers (INCLUDE_DIR/dhps),
# none of the internal helpers (client_*, srv_*, rpc_*, adopt, worker_main, ...) may be
# there, every public function the library defines must be exported, and, with MAP
# (cmake/dhps.map), every name the map lists must be exported.
# Exit 0 or 1; prints what it checked.
set -euo pipefail
so=${1:?usage: check-exports.sh LIBDHPS_SO INCLUDE_DIR [MAP]}
inc=${2:?usage: check-exports.sh LIBDHPS_SO INCLUDE_DIR [MAP]}
map=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$here/public-symbols.sh" "$inc" > "$tmp/public"
# defined dynamic symbols, without versions ("name@@DHPS_0"), without the version node
nm -D --defined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep -v '^DHPS_' | sort -u > "$tmp/exported"
rc=0
n=$(wc -l < "$tmp/exported")
extra=$(comm -23 "$tmp/exported" "$tmp/public")
if [ -n "$extra" ]; then
  echo "exports: FAILED: exported but not declared in $inc/dhps/*.h:"; echo "$extra" | sed 's/^/  /'; rc=1
fi
if [ "$n" -lt 20 ]; then echo "exports: FAILED: only $n symbols exported"; rc=1; fi
for s in client_map_pin srv_rpc_handler adopt worker_main dhps_zipf_next rpc_frame_parse; do
  if grep -qx "$s" "$tmp/exported"; then echo "exports: FAILED: internal $s exported"; rc=1; fi
done
# a public function compiled into the library but left out of the map (so hidden): the
# full symbol table lists it (lower-case type when local); skipped on a stripped library
if nm --defined-only "$so" > "$tmp/all" 2>/dev/null && [ -s "$tmp/all" ]; then
  # (static inline helpers of the headers are local copies in unoptimised builds: not API
  # the library has to export)
  grep -ohE 'static inline[^(;]*[^A-Za-z0-9_]dhps_[A-Za-z0-9_]+[[:space:]]*\(' "$inc"/dhps/*.h |
    grep -oE 'dhps_[A-Za-z0-9_]+' | sort -u > "$tmp/inline"
  awk '{print $NF}' "$tmp/all" | sort -u | comm -12 - "$tmp/public" | comm -23 - "$tmp/inline" \
    > "$tmp/defined_public"
  hidden=$(comm -23 "$tmp/defined_public" "$tmp/exported")
  if [ -n "$hidden" ]; then
    echo "exports: FAILED: declared in a public header and defined, but not exported (add to the map):"
    echo "$hidden" | sed 's/^/  /'; rc=1
  fi
fi
if [ -n "$map" ]; then
  sed -n 's/^ *\(dhps_[A-Za-z0-9_]*\);$/\1/p' "$map" | sort -u > "$tmp/listed"
  missing=$(comm -23 "$tmp/listed" "$tmp/exported")
  if [ -n "$missing" ]; then
    echo "exports: FAILED: listed in $map but not exported:"; echo "$missing" | sed 's/^/  /'; rc=1
  fi
fi
soname=$(objdump -p "$so" | awk '$1 == "SONAME" {print $2}')
case $soname in
  libdhps.so.[0-9]*) ;;
  *) echo "exports: FAILED: SONAME '$soname'"; rc=1 ;;
esac
[ $rc = 0 ] && echo "exports: ok: $n symbols exported by $(basename "$so") (SONAME $soname), all declared in the public headers, no internal helper"
exit $rc

#!/usr/bin/env bash
# Run every ```sh runnable block of README.md and docs/tools.md, as written, in a temp
# directory with the built dhps and dhps-server first on PATH and DHPS_CLUSTER_DIR
# pointing there (so `dhps up` without --cluster writes there). Each block runs under
# `bash -euo pipefail`; the first failing block fails the test (its text and output are
# printed). Any cluster left running is stopped. Usage: test_docs_runnable.sh SRC_DIR
# DHPS DHPS_SERVER
set -uo pipefail
src=$1 dhps=$2 server=$3
[ -x "$server" ] || { echo "dhps-server not built: skipping"; exit 77; }
work=$(mktemp -d /tmp/dhps_docs_XXXXXX)
bin=$work/bin
mkdir -p "$bin"
ln -s "$dhps" "$bin/dhps"
ln -s "$server" "$bin/dhps-server"
export PATH="$bin:$PATH" DHPS_CLUSTER_DIR="$work/dhps-cluster" DHPS_SERVER="$server"
cleanup() {
  "$dhps" down --cluster "$DHPS_CLUSTER_DIR" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
nblocks=0
for doc in README.md docs/tools.md; do
  # split the runnable blocks of $doc into $work/block.<doc>.<n>.sh
  awk -v out="$work/block.${doc//\//_}." '
    /^```sh runnable[ \t]*$/ { n++; f = out n ".sh"; inb = 1; printf "" > f; next }
    inb && /^```[ \t]*$/ { inb = 0; close(f); next }
    inb { print >> f }' "$src/$doc"
  for b in "$work"/block."${doc//\//_}".*.sh; do
    [ -e "$b" ] || continue
    nblocks=$((nblocks + 1))
    if ! (cd "$work" && bash -euo pipefail "$b") > "$b.out" 2>&1; then
      echo "FAIL: a runnable block of $doc:"
      sed 's/^/    /' "$b"
      echo "output:"
      sed 's/^/    /' "$b.out"
      exit 1
    fi
    echo "ok: $doc block $(basename "$b")"
  done
done
[ "$nblocks" -gt 0 ] || { echo "no runnable blocks found"; exit 1; }
echo "$nblocks runnable blocks ran"

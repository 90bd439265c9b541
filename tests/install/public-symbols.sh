#!/usr/bin/env bash
# public-symbols.sh INCLUDE_DIR: the function and variable names the public headers
# (INCLUDE_DIR/dhps/*.h) declare, one per line, sorted. Preprocessed first (no comments),
# then every dhps_* identifier followed by "(" (functions) or ";" / "[" (variables).
set -euo pipefail
inc=${1:?usage: public-symbols.sh INCLUDE_DIR}
for h in "$inc"/dhps/*.h; do echo "#include \"dhps/$(basename "$h")\""; done |
  ${CC:-cc} -std=gnu11 -E -P -I"$inc" -x c - |
  grep -oE '\bdhps_[A-Za-z0-9_]+[[:space:]]*(\(|;|\[)' |
  sed -E 's/[[:space:]]*[(;[]$//' | sort -u

# Sourced by the coord shell tests: a real etcd on free loopback ports.
#   etcd_start DIR     start (or restart on the same data) etcd; sets ETCD_URL, ETCD_PID
#   etcd_kill          kill -9 it
# Exits 77 (skip) when the etcd binary is missing. The ports are free when picked, not held
# (etcd binds them itself): on its first start an etcd that exits (a port taken meanwhile
# by another process) is started again on new ports. Waits are on events, bounded by the
# scaled time of tests/common/test_scale.sh.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/../common" && pwd)/test_scale.sh"
# two distinct ports free a moment ago: bound at once, so the kernel cannot repeat one
free_ports() { python3 -c 'import socket;s=[socket.socket() for _ in range(2)];[x.bind(("127.0.0.1",0)) for x in s];print(*[x.getsockname()[1] for x in s])'; }
etcd_answers() { curl -sf -m 1 -X POST -d '{"key":"AA=="}' "$ETCD_URL/v3/kv/range" >/dev/null; }
# the etcd answering is ours (it holds the client port), not one that took the port meanwhile
etcd_ours() { ss -Hltnp "sport = :$ETCD_CPORT" 2>/dev/null | grep -q "pid=$ETCD_PID,"; }
etcd_start() {
  command -v etcd >/dev/null || { echo "SKIP: no etcd binary (apt-get install etcd-server)"; exit 77; }
  ETCD_DIR=$1
  local tries=1 attempt
  [ -n "${ETCD_CPORT:-}" ] || tries=3
  for ((attempt = 0; attempt < tries; attempt++)); do
    if [ "$tries" -gt 1 ]; then
      read -r ETCD_CPORT ETCD_PPORT < <(free_ports)
      rm -rf "$ETCD_DIR/etcd"
    fi
    ETCD_URL=http://127.0.0.1:$ETCD_CPORT
    local pu=http://127.0.0.1:$ETCD_PPORT
    etcd --name t --data-dir "$ETCD_DIR/etcd" --listen-client-urls "$ETCD_URL" \
      --advertise-client-urls "$ETCD_URL" --listen-peer-urls "$pu" \
      --initial-advertise-peer-urls "$pu" --initial-cluster "t=$pu" >>"$ETCD_DIR/etcd.log" 2>&1 &
    ETCD_PID=$!
    wait_for 10 etcd_wait_step || true
    etcd_answers && etcd_ours && return 0
    if kill -0 "$ETCD_PID" 2>/dev/null; then break; fi # running but silent: no retry
    wait "$ETCD_PID" 2>/dev/null || true
    echo "etcd exited at start (ports $ETCD_CPORT/$ETCD_PPORT taken?)" >&2
  done
  echo "etcd did not start: $ETCD_DIR/etcd.log" >&2; tail -5 "$ETCD_DIR/etcd.log" >&2
  etcd_kill
  return 1
}
# the start wait ends once etcd answers or has exited
etcd_wait_step() { { etcd_answers && etcd_ours; } || ! kill -0 "$ETCD_PID" 2>/dev/null; }
etcd_kill() { if [ -n "${ETCD_PID:-}" ]; then kill -9 "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=; fi; }

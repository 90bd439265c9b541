# Sourced by the coord shell tests: a real etcd on free loopback ports.
#   etcd_start DIR     start (or restart on the same data) etcd; sets ETCD_URL, ETCD_PID
#   etcd_kill          kill -9 it
# Exits 77 (skip) when the etcd binary is missing.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
etcd_start() {
  command -v etcd >/dev/null || { echo "SKIP: no etcd binary (apt-get install etcd-server)"; exit 77; }
  ETCD_DIR=$1
  [ -n "${ETCD_CPORT:-}" ] || { ETCD_CPORT=$(free_port); ETCD_PPORT=$(free_port); }
  ETCD_URL=http://127.0.0.1:$ETCD_CPORT
  local pu=http://127.0.0.1:$ETCD_PPORT
  etcd --name t --data-dir "$ETCD_DIR/etcd" --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" --listen-peer-urls "$pu" \
    --initial-advertise-peer-urls "$pu" --initial-cluster "t=$pu" >>"$ETCD_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 100); do
    curl -sf -m 1 -X POST -d '{"key":"AA=="}' "$ETCD_URL/v3/kv/range" >/dev/null && return 0
    sleep 0.1
  done
  echo "etcd did not start: $ETCD_DIR/etcd.log" >&2; tail -5 "$ETCD_DIR/etcd.log" >&2; return 1
}
etcd_kill() { if [ -n "${ETCD_PID:-}" ]; then kill -9 "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=; fi; }

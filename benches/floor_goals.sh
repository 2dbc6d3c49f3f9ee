#!/usr/bin/env bash
# The issue-15 goals table (BENCHMARKS.md, "Fan-out at the kernel's floor"):
# each scenario against a fresh release server on loopback, its SUMMARY line
# printed. Bounded: every scenario stops by itself (and within 300 s).
#   cargo build --release --workspace && benches/floor_goals.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for b in target/release/skywave target/release/skywave-loadgen; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release --workspace" >&2; exit 1; }
done
export SKYWAVE_WORKER_SECRET=bench-secret-0123456789abcdef0123456789abcdef
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.yaml" <<'YAML'
ws_bind: 127.0.0.1
ws_port: 19300
internal_port: 19301
log_level: warn
YAML
L=target/release/skywave-loadgen
run() {
  target/release/skywave --config "$work/bench.yaml" > "$work/server.log" 2>&1 & P=$!
  sleep 1
  echo "== $*"
  timeout 300 "$L" "$@" --ws 127.0.0.1:19300 --internal 127.0.0.1:19301 --server-pid "$P" \
    | grep -E 'round 1:|POST|context switches of|^overload:|^idle|^SUMMARY' || true
  kill "$P"; wait "$P" 2>/dev/null || true
}
run fanout --sockets 10000 --topics 1 --rate 2 --duration 10 --floor
run fanout --sockets 10000 --topics 1 --rate 10 --duration 10 --floor
run fanout --sockets 10000 --topics 1000 --rate 500 --duration 10 --floor
run fanout --sockets 1000 --topics 1 --rate 20 --duration 10 --floor
run overload --sockets 10000 --publishes 3000
run idle --sockets 10000 --topics 10

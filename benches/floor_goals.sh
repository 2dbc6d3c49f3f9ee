#!/usr/bin/env bash
# The issue-15 goals table (BENCHMARKS.md, "Fan-out at the kernel's floor"):
# each scenario against a fresh release server on loopback, its SUMMARY line
# printed. Bounded: every scenario stops by itself (and within 300 s).
#   cargo build --release --workspace && benches/floor_goals.sh
#
# ROUNDS floor/server pairs per fan-out scenario, alternating (default 3):
# the SUMMARY's median_cpu_ratio is the figure; the machine is shared and
# one round moves by 20 % or more.
#
# Two CPU layouts (LAYOUT=shared|apart|both, default both):
#  shared  every process anywhere, the kernel places them (the receivers
#          often land on the sending thread's CPU and preempt it per write);
#  apart   the server, and the floor's sender in its turn, on the upper half
#          of this process's CPUs, the receivers and the publisher on the
#          lower half: what remote browsers are to a server (fan-out
#          scenarios only; needs 2 CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
for b in target/release/skywave target/release/skywave-loadgen; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release --workspace" >&2; exit 1; }
done
layout=${LAYOUT:-both}
rounds=${ROUNDS:-3}
case "$rounds" in [1-9]|10) ;; *) echo "ROUNDS is 1 to 10, not $rounds" >&2; exit 1;; esac
case "$layout" in shared|apart|both) ;; *) echo "LAYOUT is shared, apart or both, not $layout" >&2; exit 1;; esac
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

# This process's CPUs, one per line (Cpus_allowed_list: "0-3,6").
cpus() {
  local list part
  list=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)
  for part in ${list//,/ }; do
    if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}
mapfile -t all < <(cpus)
half=$(( ${#all[@]} / 2 ))
client_cpus=$(IFS=,; echo "${all[*]:0:$half}")
server_cpus=$(IFS=,; echo "${all[*]:$half}")

# run LAYOUT scenario-args...
run() {
  local where=$1; shift
  local pin_server=() pin_client=() floor_cpus=()
  if [ "$where" = apart ]; then
    pin_server=(taskset -c "$server_cpus")
    pin_client=(taskset -c "$client_cpus")
    floor_cpus=(--floor-cpus "$server_cpus")
  fi
  "${pin_server[@]}" target/release/skywave --config "$work/bench.yaml" > "$work/server.log" 2>&1 & P=$!
  sleep 1
  echo "== [$where] $*"
  timeout 300 "${pin_client[@]}" "$L" "$@" "${floor_cpus[@]}" --ws 127.0.0.1:19300 --internal 127.0.0.1:19301 --server-pid "$P" \
    | grep -E 'round [0-9]+:|^compare:|POST|context switches of|^floor: sender|^overload:|^idle|^SUMMARY' || true
  kill "$P"; wait "$P" 2>/dev/null || true
}
fanouts=(
  "--sockets 10000 --topics 1 --rate 2"
  "--sockets 10000 --topics 1 --rate 10"
  "--sockets 10000 --topics 1000 --rate 500"
  "--sockets 1000 --topics 1 --rate 20"
)
if [ "$layout" != apart ]; then
  for f in "${fanouts[@]}"; do
    # shellcheck disable=SC2086
    run shared fanout $f --duration 10 --floor --rounds "$rounds"
  done
  run shared overload --sockets 10000 --publishes 3000
  run shared idle --sockets 10000 --topics 10
fi
if [ "$layout" != shared ]; then
  if [ "$half" -lt 1 ]; then
    echo "apart: needs 2 CPUs, this process may use ${#all[@]}" >&2; exit 1
  fi
  echo "apart: server and floor sender on CPUs $server_cpus, receivers and publisher on $client_cpus"
  for f in "${fanouts[@]}"; do
    # shellcheck disable=SC2086
    run apart fanout $f --duration 10 --floor --rounds "$rounds"
  done
fi

#!/usr/bin/env bash
# Deployment tests: static checks of the kit (compose.yaml, Dockerfile,
# nginx/, deploy/skywave.service, docs), the Sentinel, Redis Cluster and NATS
# compose examples started for real (check_compose_ha.py), the monitoring files (Grafana
# dashboard, Prometheus alerts) against real nodes, the Kubernetes manifests
# against the Kubernetes JSON schemas, the end-to-end runs through a real
# nginx and a real haproxy in front of two skywave nodes and a real
# redis-server, and the dashboard of such a cluster in a real headless
# Chromium (which rewrites docs/dashboard.png).
#
#   tests/deploy/run.sh [path/to/skywave]      (default target/release/skywave)
#
# Needs: python3 (>= 3.11), nginx, haproxy, chromium, redis-server, nats-server,
# wget, promtool, systemd-analyze, and the pip packages in tests/deploy/requirements.txt
# (scripts/test installs them all). check_files.py reports a missing tool as
# SKIP; in the other tests a missing tool or package is a FAIL naming it.
# Every test always runs; the exit status is non-zero if any failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
binary="${1:-$here/../../target/release/skywave}"

passed=0 failed=0
for test in check_files.py check_compose_ha.py check_monitoring.py check_kubernetes.py e2e_nginx.py e2e_haproxy.py e2e_dashboard.py; do
  echo "== tests/deploy/$test"
  if python3 "$here/$test" "$binary"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "!! tests/deploy/$test failed (see its FAIL lines above)"
  fi
done
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

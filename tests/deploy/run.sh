#!/usr/bin/env bash
# Deployment tests: static checks of the kit (compose.yaml, Dockerfile,
# nginx/, deploy/skywave.service, docs), the end-to-end run through a real
# nginx in front of two skywave nodes and a real redis-server, and the
# dashboard of such a cluster in a real headless Chromium.
#
#   tests/deploy/run.sh [path/to/skywave]      (default target/release/skywave)
#
# Needs: python3 (>= 3.11), nginx, chromium, redis-server, systemd-analyze,
# and the pip packages in tests/deploy/requirements.txt; a missing tool is
# reported as SKIP by check_files.py, a missing nginx/chromium/redis-server
# fails the e2e test that needs it. The dashboard test rewrites
# docs/dashboard.png. Every test always runs; the exit status is non-zero if
# any failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
binary="${1:-$here/../../target/release/skywave}"

passed=0 failed=0
for test in check_files.py e2e_nginx.py e2e_dashboard.py; do
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

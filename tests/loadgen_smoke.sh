#!/usr/bin/env bash
# A few seconds of every load scenario at small N, so the load tool cannot rot.
# Figures are printed, not asserted; the run fails only if a delivery is lost
# or out of order, or a scenario errors.
set -euo pipefail
cd "$(dirname "$0")/.."
target/release/skywave-loadgen smoke --server-bin target/release/skywave

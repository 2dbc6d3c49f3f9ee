#!/usr/bin/env bash
# A few seconds of every load scenario at small N, so the load tool cannot rot.
# Figures are printed, not asserted; the run fails only if a delivery is lost
# or out of order, or a scenario errors. It covers the floor (the same
# receivers fed by a plain write(2) sender, then the server, and their CPU
# ratio; the floor split over two sender threads) and the overload policy
# (back-to-back publishes: every frame a socket did not get must be
# reported by a lagged notice, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
target/release/skywave-loadgen smoke --server-bin target/release/skywave

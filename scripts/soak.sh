#!/usr/bin/env bash
# Soak test: mixed traffic (all modes, both dialects, streams, upstream faults,
# refusals, client disconnects) through the built proxy and `ccproxy sim`, for a
# bounded time. Samples the proxy's RSS, open descriptors and threads from /proc
# and exits non-zero if they grow (or on any unexpected outcome). Linux only.
#
#   scripts/soak.sh [DURATION_SECS=300] [CONCURRENCY=16]
#   PROFILE=debug scripts/soak.sh 60      # against the debug build
#
# The samples are written to target/soak-<timestamp>.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-300}
concurrency=${2:-16}
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release -p ccproxy -p ccproxy-soak
    dir=target/release
else
    cargo build -p ccproxy -p ccproxy-soak
    dir=target/debug
fi
warmup=$((duration / 6))
[ "$warmup" -lt 10 ] && warmup=10
exec "$dir/ccproxy-soak" --ccproxy "$dir/ccproxy" --duration "$duration" \
    --concurrency "$concurrency" --warmup "$warmup" --sample-every 2 \
    --csv "target/soak-$(date -u +%Y%m%dT%H%M%SZ).csv"

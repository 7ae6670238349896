#!/usr/bin/env bash
# Where ccproxy's CPU goes, per request, by mode: instruction counts from
# `valgrind --tool=callgrind` (stable on a noisy machine, unlike timings).
#
#   scripts/bench/profile.sh [REQUESTS]      (default 2000; needs a release build:
#                                            cargo build --release -p ccproxy -p ccproxy-bench)
#
# Runs inside `unshare -n` like run.sh: the simulated upstream natively, ccproxy under
# callgrind (all threads: request path, logger, usage writer). Counters are zeroed before each
# mode and dumped after it, so each dump holds exactly that mode's requests. Writes, under
# target/bench/profile-<stamp>/: summary.txt (instructions per request by mode) and
# MODE.txt (callgrind_annotate, inclusive, top functions).
#
# CCPROXY=PATH profiles another ccproxy binary (a copy of an earlier build, for a before/after
# without rebuilding); PROFILE_PRELOAD=LIB runs it with LD_PRELOAD=LIB (another malloc).
# PROFILE_MODES="MODE ..." profiles only those modes (pt-anthropic min-anthropic full-anthropic
# full-openai full-anthropic-cc pt-anthropic-stream64 full-openai-stream64 full-responses
# full-responses-stream64). PROFILE_H2C=1 sets `upstream_h2c = true` (the upstream leg over h2c).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-2000}
command -v valgrind >/dev/null || { echo "profile.sh: valgrind is not installed" >&2; exit 1; }
OUT=$ROOT/target/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
CCPROXY=${CCPROXY:-$ROOT/target/release/ccproxy}
PROFILE_PRELOAD=${PROFILE_PRELOAD:-}
PROFILE_MODES=${PROFILE_MODES:-}
PROFILE_H2C=${PROFILE_H2C:-0}
export ROOT N OUT CCPROXY PROFILE_PRELOAD PROFILE_MODES PROFILE_H2C
unshare -n bash <<'INNER'
set -euo pipefail
ip link set lo up
cd "$OUT"
BIN=$ROOT/target/release
KEY=sk-ant-api03-bench-key
U=http://127.0.0.1
FIX=$(cd "$ROOT/.." && pwd)/shared/fixtures/clients/claude_code_api_key.request.json
"$CCPROXY" sim --port 18101 >sim.log 2>&1 &
SIM=$!
mkdir -p home
: >home/ccproxy.toml
if [ "$PROFILE_H2C" = 1 ]; then echo 'upstream_h2c = true' >home/ccproxy.toml; fi
env -i PATH=/usr/bin:/bin HOME="$OUT/home" XDG_CONFIG_HOME="$OUT/home/.config" ANTHROPIC_API_KEY=$KEY \
  ${PROFILE_PRELOAD:+LD_PRELOAD=$PROFILE_PRELOAD} valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no \
  "$CCPROXY" serve --config "$OUT/home/ccproxy.toml" --host 127.0.0.1 --port 18102 --upstream-url $U:18101 >ccproxy.log 2>&1 &
PROXY=$!
trap 'kill "$PROXY" "$SIM" 2>/dev/null || true' EXIT
for i in $(seq 1 600); do (echo >/dev/tcp/127.0.0.1/18102) 2>/dev/null && break; sleep 0.1; done
# callgrind_control finds the process by PID (valgrind's own PID is ccproxy's).
run() { # mode url body stream-args...
  local mode=$1 url=$2 body=$3 n=$4
  shift 4
  if [ -n "$PROFILE_MODES" ] && [[ " $PROFILE_MODES " != *" $mode "* ]]; then return 0; fi
  "$BIN/ccproxy-bench" run --arm "name=$mode,url=$url,body=$body" --requests 50 --cc-fixture "$FIX" --quiet "$@" >/dev/null
  callgrind_control -z "$PROXY" >/dev/null 2>&1
  "$BIN/ccproxy-bench" run --arm "name=$mode,url=$url,body=$body" --requests "$n" --cc-fixture "$FIX" --quiet "$@" >"$mode.load.txt"
  callgrind_control -d "$mode" "$PROXY" >/dev/null 2>&1
  sleep 0.5
  local f
  f=$(ls -t callgrind.out.* | head -1)
  mv "$f" "$mode.callgrind"
  local ir
  ir=$(callgrind_annotate "$mode.callgrind" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",","",$1); print $1}' || true)
  printf '%-28s %6d requests  %12s Ir total  %9d Ir/request\n' "$mode" "$n" "$ir" $((ir / n)) | tee -a summary.txt
  callgrind_annotate --inclusive=yes "$mode.callgrind" >"$mode.txt" 2>/dev/null || true
  callgrind_annotate "$mode.callgrind" >"$mode.self.txt" 2>/dev/null || true
}
run pt-anthropic "$U:18102/pt/v1/messages" anthropic "$N"
run min-anthropic "$U:18102/min/v1/messages" anthropic "$N"
run full-anthropic "$U:18102/v1/messages" anthropic "$N"
run full-openai "$U:18102/openai/v1/chat/completions" openai "$N"
run full-anthropic-cc "$U:18102/v1/messages" anthropic $((N / 4)) --body-size cc
run pt-anthropic-stream64 "$U:18102/pt/v1/messages" anthropic $((N / 20)) --stream --deltas 64 --gap-ms 1
run full-openai-stream64 "$U:18102/openai/v1/chat/completions" openai $((N / 20)) --stream --deltas 64 --gap-ms 1
run full-responses "$U:18102/openai/v1/responses" responses "$N"
run full-responses-stream64 "$U:18102/openai/v1/responses" responses $((N / 20)) --stream --deltas 64 --gap-ms 1
kill "$PROXY" "$SIM" 2>/dev/null || true
wait 2>/dev/null || true
INNER
echo "profile.sh: results in $OUT"
cat "$OUT/summary.txt"

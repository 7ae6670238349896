#!/usr/bin/env bash
# Two ccproxy builds side by side, in interleaved rounds in one run (so machine noise hits both):
# CPU per request at c=32 and added latency at c=1, passthrough and OpenAI conversion, beside the
# bare TCP relay. For before/after figures of a change without the full suite (run.sh).
#
#   scripts/bench/ab.sh BEFORE_BINARY AFTER_BINARY     (needs target/release/ccproxy-bench)
#
# A_TOML / B_TOML: a config file's text for that arm (say `usage = false`), to compare settings of
# one build (pass the same binary twice).
#
# Inside `unshare -n` (loopback only); results under target/bench/ab-<stamp>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
A=$(realpath "${1:?before binary}")
B=$(realpath "${2:?after binary}")
OUT=$ROOT/target/bench/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
A_TOML=${A_TOML:-}
B_TOML=${B_TOML:-}
export ROOT A B OUT A_TOML B_TOML
unshare -n bash <<'INNER'
set -euo pipefail
ip link set lo up
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$OUT"
BENCH=$ROOT/target/release/ccproxy-bench
KEY=sk-ant-api03-bench-key
U=http://127.0.0.1
"$B" sim --port 18401 >sim.log 2>&1 &
SIM=$!
start() { # binary port dir config-text
  mkdir -p "$3/.config"
  printf '%s\n' "$4" >"$OUT/$3/ccproxy.toml"
  env -i PATH=/usr/bin:/bin HOME="$OUT/$3" XDG_CONFIG_HOME="$OUT/$3/.config" ANTHROPIC_API_KEY=$KEY \
    "$1" serve --config "$OUT/$3/ccproxy.toml" --host 127.0.0.1 --port "$2" --upstream-url $U:18401 >"$3.log" 2>&1 &
}
start "$A" 18402 before "$A_TOML"
PA=$!
start "$B" 18403 after "$B_TOML"
PB=$!
"$BENCH" relay --listen 127.0.0.1:18409 --upstream 127.0.0.1:18401 &
RELAY=$!
trap 'kill "$PA" "$PB" "$SIM" "$RELAY" 2>/dev/null || true' EXIT
for p in 18401 18402 18403 18409; do
  for i in $(seq 1 300); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
ARMS=(--arm "name=direct-anthropic,url=$U:18401/v1/messages"
  --arm "name=before-pt,url=$U:18402/pt/v1/messages,base=direct-anthropic,pid=$PA"
  --arm "name=after-pt,url=$U:18403/pt/v1/messages,base=direct-anthropic,pid=$PB"
  --arm "name=direct-converted,url=$U:18401/v1/messages,body=converted"
  --arm "name=before-full-openai,url=$U:18402/openai/v1/chat/completions,body=openai,base=direct-converted,pid=$PA"
  --arm "name=after-full-openai,url=$U:18403/openai/v1/chat/completions,body=openai,base=direct-converted,pid=$PB"
  --arm "name=ref-tcp-relay,url=$U:18409/v1/messages,base=direct-anthropic,pid=$RELAY")
echo "== c=32, CPU per request" | tee summary.txt
"$BENCH" run --scenario ab-c32 --out results.jsonl --quiet "${ARMS[@]}" -c 32 --seconds 2 --rounds 3 --warmup 300 | tee -a summary.txt
echo "== c=1, added latency" | tee -a summary.txt
"$BENCH" run --scenario ab-c1 --out results.jsonl --quiet "${ARMS[@]}" -c 1 --requests 400 --rounds 5 --warmup 100 | tee -a summary.txt
INNER
echo "ab.sh: results in $OUT"

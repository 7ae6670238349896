#!/usr/bin/env bash
# Concurrent paced streams through one fresh ccproxy, and its memory after the burst: the
# figures of issue 15 that scenario 4c of run.sh takes a full run to reach, alone.
#
#   scripts/bench/streams.sh [STREAMS] [HOLD_SECS] [AFTER_SECS]   (defaults 2000 3 30;
#       needs a release build: cargo build --release -p ccproxy -p ccproxy-bench)
#
# Inside `unshare -n` (loopback only): `ccproxy sim`, a fresh `ccproxy serve` (default settings
# but `max_concurrent_requests = 16384`, as run.sh), and `ccproxy-bench relay` (a bare TCP relay,
# the floor). One round of STREAMS workers, each holding one stream of 64 deltas 20 ms apart
# (the next when it ends) for HOLD_SECS after a ramp, every token checked, stalls > 500 ms
# counted; the pt-anthropic arm and the relay in turn. Above 9 000 streams the client leg is h2c
# (as run.sh). Then the proxy's RSS is sampled every 5 s for AFTER_SECS ("memory after a
# burst"). Writes under target/bench/streams-<stamp>/: results.jsonl, rss.txt, summary.txt.
# CCPROXY=PATH runs another ccproxy binary (a copy of an earlier build) as the proxy and the sim;
# PROXY_ENV="K=V ..." adds to the proxy's environment (LD_PRELOAD=another malloc, its options);
# PROXY_TOML="k = v; ..." adds settings to the proxy's configuration file (`;` separates lines);
# UPSTREAM_H2C=1 sets `upstream_h2c = true` (the proxy's upstream leg multiplexed over h2c);
# CLIENT_H2=1 makes the client leg h2c at any STREAMS; ROUTES="..." picks the proxy's arms, in
# order (default "pt-anthropic"; run.sh's 4c has "pt-anthropic full-openai"): pt-anthropic,
# min-anthropic, full-anthropic, min-openai and full-openai (Chat Completions), full-responses;
# GAP_MS=20 sets the pace (ms between deltas); RELAY_SPIN_US=N makes the relay busy-spin N µs
# after every read (a relay that spends a proxy's CPU per stream: findings.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-2000}
HOLD=${2:-3}
AFTER=${3:-30}
OUT=$ROOT/target/bench/streams-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
CCPROXY=${CCPROXY:-$ROOT/target/release/ccproxy}
PROXY_ENV=${PROXY_ENV:-}
UPSTREAM_H2C=${UPSTREAM_H2C:-0}
CLIENT_H2=${CLIENT_H2:-0}
PROXY_TOML=${PROXY_TOML:-}
ROUTES=${ROUTES:-pt-anthropic}
GAP_MS=${GAP_MS:-20}
RELAY_SPIN_US=${RELAY_SPIN_US:-0}
export ROOT N HOLD AFTER OUT CCPROXY PROXY_ENV PROXY_TOML UPSTREAM_H2C CLIENT_H2 ROUTES GAP_MS RELAY_SPIN_US
unshare -n bash <<'INNER'
set -euo pipefail
ip link set lo up
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$OUT"
BIN=$ROOT/target/release
KEY=sk-ant-api03-bench-key
U=http://127.0.0.1
"$CCPROXY" sim --port 18201 >sim.log 2>&1 &
SIM=$!
mkdir -p home/.config
echo 'max_concurrent_requests = 16384' >home/ccproxy.toml
if [ "$UPSTREAM_H2C" = 1 ]; then echo 'upstream_h2c = true' >>home/ccproxy.toml; fi
if [ -n "$PROXY_TOML" ]; then tr ';' '\n' <<<"$PROXY_TOML" >>home/ccproxy.toml; fi
# shellcheck disable=SC2086 # PROXY_ENV is a list of K=V words
env -i PATH=/usr/bin:/bin HOME="$OUT/home" XDG_CONFIG_HOME="$OUT/home/.config" ANTHROPIC_API_KEY=$KEY $PROXY_ENV \
  "$CCPROXY" serve --config "$OUT/home/ccproxy.toml" --host 127.0.0.1 --port 18202 \
  --upstream-url $U:18201 >ccproxy.log 2>&1 &
PROXY=$!
"$BIN/ccproxy-bench" relay --listen 127.0.0.1:18209 --upstream 127.0.0.1:18201 --spin-us "${RELAY_SPIN_US:-0}" &
RELAY=$!
trap 'kill "$PROXY" "$SIM" "$RELAY" 2>/dev/null || true' EXIT
for p in 18201 18202 18209; do
  for i in $(seq 1 300); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PROXY/status"; }
fds() { find "/proc/$PROXY/fd" -mindepth 1 -maxdepth 1 | wc -l; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$PROXY/status"; }
echo "idle $(rss) kB" | tee rss.txt
h2=""
if [ "$N" -gt 9000 ] || [ "$CLIENT_H2" = 1 ]; then h2=",h2=true"; fi
ramp=$(python3 -c "print(min(1.0, $N / 2000))")
arms=()
for r in $ROUTES; do
  case $r in
    pt-anthropic) path=/pt/v1/messages body=anthropic ;;
    min-anthropic) path=/min/v1/messages body=anthropic ;;
    full-anthropic) path=/v1/messages body=anthropic ;;
    min-openai) path=/min/openai/v1/chat/completions body=openai ;;
    full-openai) path=/openai/v1/chat/completions body=openai ;;
    full-responses) path=/openai/v1/responses body=responses ;;
    *) echo "streams.sh: unknown route $r" >&2; exit 2 ;;
  esac
  arms+=(--arm "name=ccproxy-$r,url=$U:18202$path,body=$body,base=direct-anthropic,pid=$PROXY$h2")
done
"$BIN/ccproxy-bench" run --scenario "streams-$N" --sim-pid "$SIM" --out results.jsonl --quiet \
  --arm "name=direct-anthropic,url=$U:18201/v1/messages$h2" \
  "${arms[@]}" \
  --arm "name=ref-tcp-relay,url=$U:18209/v1/messages,base=direct-anthropic,pid=$RELAY$h2" \
  -c "$N" --stream --deltas 64 --gap-ms "$GAP_MS" --ramp-secs "$ramp" --seconds "$HOLD" \
  --stall-ms 500 --timeout-secs 30 --close-between | tee summary.txt
echo "peak $(hwm) kB" | tee -a rss.txt
for t in $(seq 0 5 "$AFTER"); do
  echo "after ${t}s $(rss) kB, $(fds) open files" | tee -a rss.txt
  if [ "$t" -lt "$AFTER" ]; then sleep 5; fi
done
INNER
echo "streams.sh: results in $OUT"

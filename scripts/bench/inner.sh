#!/usr/bin/env bash
# The benchmark run proper, started by run.sh inside `unshare -n` (a network namespace with
# only loopback). Starts the simulated upstream, ccproxy and the peers, runs the scenarios
# with target/release/ccproxy-bench, and leaves the results in OUT/results.jsonl.
#
#   BENCH_ROOT=... BENCH_FIXTURE=... [BENCH_QUICK=1] [BENCH_PEERS=0] [BENCH_PROFILE=0] \
#     unshare -n bash scripts/bench/inner.sh OUT
set -euo pipefail
main() {
OUT=$1
ROOT=${BENCH_ROOT:-$PWD}
cd "$ROOT"
QUICK=${BENCH_QUICK:-0}
FIXTURE=${BENCH_FIXTURE:?}
RES=$OUT/results.jsonl
LOG=$OUT/run.log
BIN=$ROOT/target/release
BENCH=$BIN/ccproxy-bench
KEY=sk-ant-api03-bench-key
U=http://127.0.0.1
SIM_PORT=18001 PROXY_PORT=18002 CCA_PORT=18003 LITE_PORT=18004 LEAN_PORT=18005 FRESH_PORT=18006 FRESH_H2_PORT=18007 RELAY_PORT=18009
KEYS0_PORT=18007 KEYS1K_PORT=18008 KEYS1_PORT=18010

ip link set lo up
# Loopback only: refuse to go on if any other interface is up.
if ip -o link show up | grep -v ' lo:' | grep -q .; then
  echo "inner.sh: not in a loopback-only namespace; refusing to run" >&2
  exit 1
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
touch "$RES"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # port pid
  local i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
# `ccproxy serve` in the background with a clean environment, HOME (and its config, ccproxy.toml)
# in $1, on port $2, logging to $3, against the sim; its PID in $STARTED (also in PIDS). Returns
# 1 if it did not start.
start_ccproxy() { # home port log
  env -i PATH=/usr/bin:/bin HOME="$1" XDG_CONFIG_HOME="$1/.config" ANTHROPIC_API_KEY=$KEY \
    "$BIN/ccproxy" serve --config "$1/ccproxy.toml" --host 127.0.0.1 --port "$2" \
    --upstream-url $U:$SIM_PORT >"$3" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
  wait_port "$2" "$STARTED"
}

note() { echo "$*" | tee -a "$LOG"; }

# --- the processes under test -----------------------------------------------------------
"$BIN/ccproxy" sim --host 127.0.0.1 --port $SIM_PORT >"$OUT/sim.log" 2>&1 &
SIM=$!
PIDS+=("$SIM")
wait_port $SIM_PORT $SIM || { echo "simulated upstream did not start" >&2; exit 1; }

PHOME=$OUT/home-ccproxy
mkdir -p "$PHOME/.config"
# Default settings but one: the concurrency limit (default 4096, then 503) is raised so that
# scenario 4c can reach 10 000 streams. A clean HOME: no subscription credentials, the server
# API key only.
echo 'max_concurrent_requests = 16384' >"$PHOME/ccproxy.toml"
start_ccproxy "$PHOME" $PROXY_PORT "$OUT/ccproxy.log" || { echo "ccproxy did not start" >&2; cat "$OUT/ccproxy.log" >&2; exit 1; }
PROXY=$STARTED
# The same binary with its observability turned down (no request log line, no usage database):
# measures what those cost on the request path, for the profile findings.
LHOME=$OUT/home-ccproxy-lean
mkdir -p "$LHOME/.config"
printf 'max_concurrent_requests = 16384\nusage = false\nlog_level = "warn"\n' >"$LHOME/ccproxy.toml"
start_ccproxy "$LHOME" $LEAN_PORT "$OUT/ccproxy-lean.log" || { echo "ccproxy (lean) did not start" >&2; exit 1; }
LEAN=$STARTED
# A reference L4 relay (TCP in, TCP out, no HTTP): the floor one extra loopback hop costs here.
"$BENCH" relay --listen 127.0.0.1:$RELAY_PORT --upstream 127.0.0.1:$SIM_PORT &
RELAY=$!
PIDS+=("$RELAY")
wait_port $RELAY_PORT $RELAY || { echo "relay did not start" >&2; exit 1; }
sleep 1
"$BENCH" proc --pid "$PROXY" --label ccproxy-idle --out "$RES" >/dev/null
"$BENCH" proc --pid "$SIM" --label sim-idle --out "$RES" >/dev/null

# --- arms -------------------------------------------------------------------------------
D_ANTH="name=direct-anthropic,url=$U:$SIM_PORT/v1/messages,body=anthropic"
D_CHAT="name=direct-openai,url=$U:$SIM_PORT/v1/chat/completions,body=openai,auth=x-api-key:$KEY"
D_CONV="name=direct-converted,url=$U:$SIM_PORT/v1/messages,body=converted"
P="pid=$PROXY"
PT_ANTH="name=ccproxy-pt-anthropic,url=$U:$PROXY_PORT/pt/v1/messages,base=direct-anthropic,$P"
MIN_ANTH="name=ccproxy-min-anthropic,url=$U:$PROXY_PORT/min/v1/messages,base=direct-anthropic,$P"
FULL_ANTH="name=ccproxy-full-anthropic,url=$U:$PROXY_PORT/v1/messages,base=direct-anthropic,$P"
PT_OAI="name=ccproxy-pt-openai,url=$U:$PROXY_PORT/pt/openai/v1/chat/completions,body=openai,base=direct-openai,$P"
MIN_OAI="name=ccproxy-min-openai,url=$U:$PROXY_PORT/min/openai/v1/chat/completions,body=openai,base=direct-converted,$P"
FULL_OAI="name=ccproxy-full-openai,url=$U:$PROXY_PORT/openai/v1/chat/completions,body=openai,base=direct-converted,$P"
# The Responses route (full mode), measured in scenarios 3 (c=32) and 4d only. Its baseline is the
# Chat request's conversion: the same model and text, so the upstream does the same work.
FULL_RESP="name=ccproxy-full-responses,url=$U:$PROXY_PORT/openai/v1/responses,body=responses,base=direct-converted,$P"
ALL9=(--arm "$D_ANTH" --arm "$PT_ANTH" --arm "$MIN_ANTH" --arm "$FULL_ANTH"
  --arm "$D_CHAT" --arm "$PT_OAI" --arm "$D_CONV" --arm "$MIN_OAI" --arm "$FULL_OAI")
# Reference arms: the L4 relay, and ccproxy without request log line and usage database.
REF=(--arm "name=ref-tcp-relay,url=$U:$RELAY_PORT/v1/messages,base=direct-anthropic,pid=$RELAY"
  --arm "name=ref-lean-pt-anthropic,url=$U:$LEAN_PORT/pt/v1/messages,base=direct-anthropic,pid=$LEAN"
  --arm "name=ref-lean-full-openai,url=$U:$LEAN_PORT/openai/v1/chat/completions,body=openai,base=direct-converted,pid=$LEAN")

bench() { # scenario args...
  local s=$1
  shift
  note "-- $s: $*" | cut -c1-220
  # A failing scenario is logged and the run goes on; the report shows what is missing.
  "$BENCH" run --scenario "$s" --sim-pid "$SIM" --cc-fixture "$FIXTURE" --out "$RES" --quiet "$@" 2>&1 |
    tee -a "$LOG" || note "scenario $s failed"
}

if [ "$QUICK" = 1 ]; then
  R1=3 N1=200 R2=3 N2=50 S3=1 R3=1 R4=3 N4=50 R4B=2 N4B=4 HOLD=2 STEPS="64 1000" PR=2 PN=30 PS=2
  SK=1 RK=2 SE=1 RE=2
else
  R1=15 N1=500 R2=11 N2=150 S3=1.5 R3=3 R4=11 N4=200 R4B=5 N4B=8 HOLD=3 STEPS="64 1000 2500 5000 10000" PR=5 PN=100 PS=3
  SK=1.5 RK=5 SE=2 RE=3
fi
AFTER=30 # seconds of RSS samples after the concurrent-streams burst (4c), every 5 s

# --- scenario 0: the simulated upstream's own ceiling -------------------------------------
note "== 0: simulated upstream ceiling"
bench s0-ceiling-c32 --arm "$D_ANTH" -c 32 --seconds 3 --warmup 500
bench s0-ceiling-c128 --arm "$D_ANTH" -c 128 --seconds 3 --warmup 500

# --- scenario 1: added latency, c=1, small non-stream ------------------------------------
note "== 1: added latency, c=1, small body"
bench s1-small-c1 "${ALL9[@]}" "${REF[@]}" -c 1 --requests $N1 --rounds $R1 --warmup 300

# --- scenario 2: the same with the ~80 KB Claude Code body --------------------------------
note "== 2: added latency, c=1, Claude Code body"
bench s2-cc-c1 "${ALL9[@]}" -c 1 --body-size cc --requests $N2 --rounds $R2 --warmup 50

# --- scenario 3: throughput and CPU per request -------------------------------------------
note "== 3: throughput"
bench s3-c32 "${ALL9[@]}" --arm "$FULL_RESP" "${REF[@]}" -c 32 --seconds $S3 --rounds $R3 --warmup 500
bench s3-c128 --arm "$D_ANTH" --arm "$PT_ANTH" --arm "$FULL_ANTH" --arm "$D_CONV" --arm "$FULL_OAI" \
  -c 128 --seconds $S3 --rounds $R3 --warmup 500

# --- scenario 4: streaming ----------------------------------------------------------------
note "== 4a: time to first token, c=1 (64 deltas, unpaced)"
bench s4-ttft-c1 "${ALL9[@]}" "${REF[@]}" -c 1 --stream --deltas 64 --requests $N4 --rounds $R4 --warmup 50
note "== 4b: inter-event gaps, c=1 (16 deltas, 5 ms apart)"
bench s4-gap-c1 "${ALL9[@]}" -c 1 --stream --deltas 16 --gap-ms 5 --requests $N4B --rounds $R4B --warmup 2
note "== 4c: concurrent 20 ms-paced streams (64 deltas)"
# A fresh ccproxy process (same settings), so that its peak RSS is that of this load alone.
start_ccproxy "$PHOME" $FRESH_PORT "$OUT/ccproxy-streams.log" || { echo "ccproxy (streams) did not start" >&2; exit 1; }
FRESH=$STARTED
"$BENCH" proc --pid "$FRESH" --label ccproxy-streams-idle --out "$RES" >/dev/null
# Above ~9 000 streams an HTTP/1.1 client leg would need more than the 20 000 open files this
# machine allows a process (ccproxy holds both legs): the client leg is h2c there (100 streams
# per connection), and so is ccproxy's upstream leg, from another fresh process with
# `upstream_h2c = true` (as an https:// upstream negotiates HTTP/2): each leg then holds about
# n / 100 connections, like the relay, which pipes each client connection to one of its own.
PHOME_H2=$OUT/home-ccproxy-h2
mkdir -p "$PHOME_H2/.config"
printf 'max_concurrent_requests = 16384\nupstream_h2c = true\n' >"$PHOME_H2/ccproxy.toml"
FRESH_H2=""
for n in $STEPS; do
  h2=""
  port=$FRESH_PORT pid=$FRESH
  if [ "$n" -gt 9000 ]; then
    h2=",h2=true"
    if [ -z "$FRESH_H2" ]; then
      start_ccproxy "$PHOME_H2" $FRESH_H2_PORT "$OUT/ccproxy-streams-h2.log" ||
        { echo "ccproxy (streams, h2c) did not start" >&2; exit 1; }
      FRESH_H2=$STARTED
    fi
    port=$FRESH_H2_PORT pid=$FRESH_H2
  fi
  rounds=1
  { [ "$n" = 1000 ] || [ "$n" = 10000 ]; } && [ "$QUICK" = 0 ] && rounds=3
  ramp=$(python3 -c "print(min(1.0, $n / 2000))")
  bench "s4-streams-$n" --arm "$D_ANTH$h2" \
    --arm "name=ccproxy-pt-anthropic,url=$U:$port/pt/v1/messages,base=direct-anthropic,pid=$pid$h2" \
    --arm "name=ccproxy-full-openai,url=$U:$port/openai/v1/chat/completions,body=openai,base=direct-anthropic,pid=$pid$h2" \
    --arm "name=ref-tcp-relay,url=$U:$RELAY_PORT/v1/messages,base=direct-anthropic,pid=$RELAY$h2" \
    -c "$n" --stream --deltas 64 --gap-ms 20 --ramp-secs "$ramp" --seconds $HOLD --rounds $rounds \
    --stall-ms 500 --timeout-secs 30 --close-between
done
if [ -n "$FRESH_H2" ]; then kill "$FRESH_H2" 2>/dev/null || true; fi
"$BENCH" proc --pid "$PROXY" --label ccproxy-after-load --out "$RES" >/dev/null
"$BENCH" proc --pid "$FRESH" --label ccproxy-streams-after --out "$RES" >/dev/null
# Memory after the burst (issue 15): the 4c process, idle now, sampled every 5 s for $AFTER s
# in the background while the next scenarios run (they do not touch it).
(
  for ((t = 5; t <= AFTER; t += 5)); do
    sleep 5
    "$BENCH" proc --pid "$FRESH" --label "ccproxy-streams-after-${t}s" --out "$RES" >/dev/null 2>&1 || true
  done
) &
AFTER_SAMPLER=$!
PIDS+=("$AFTER_SAMPLER")

# --- scenario 4d: CPU per streamed event, ccproxy beside the bare relay --------------------
# Streams of 64 deltas 1 ms apart (each event its own read and write on every hop), c=32. CPU per
# event = (CPU per stream - CPU per small request at c=32, scenario 3) / events per stream, for
# ccproxy and for the relay alike. The Responses arm's stream has 8 framing events (Chat's 6).
note "== 4d: CPU per streamed event, c=32 (64 deltas, 1 ms apart)"
bench s4-events-c32 --arm "$D_ANTH" --arm "$PT_ANTH" \
  --arm "name=ccproxy-full-openai,url=$U:$PROXY_PORT/openai/v1/chat/completions,body=openai,base=direct-anthropic,$P" \
  --arm "${FULL_RESP/base=direct-converted/base=direct-anthropic}" \
  --arm "name=ref-tcp-relay,url=$U:$RELAY_PORT/v1/messages,base=direct-anthropic,pid=$RELAY" \
  -c 32 --stream --deltas 64 --gap-ms 1 --seconds $SE --rounds $RE --warmup 64 --stall-ms 500

# --- scenario 3k: 1 000 client keys configured vs none ------------------------------------
# Fresh ccproxy processes with the same settings (each its own usage database): one with no client
# key, one with a single key, one with 1 000 (the arm's key made by `ccproxy keys create`, 999 more
# rows of the same shape written straight into its `client_keys` table: 1 000 CLI runs would take
# ~40 s). The 1-key process tells the cost of having client keys at all from that of their
# number. Passthrough, small requests, c=32, interleaved rounds.
note "== 3k: 1 000 client keys vs 1 vs none, c=32"
keys_ok=1
CKS=()
for k in 0 1 1k; do
  h=$OUT/home-ccproxy-keys$k
  mkdir -p "$h/.config"
  printf 'max_concurrent_requests = 16384\nusage_db = "%s"\n' "$h/usage.db" >"$h/ccproxy.toml"
  [ "$k" = 0 ] && continue
  ck=$(env -i PATH=/usr/bin:/bin HOME="$h" XDG_CONFIG_HOME="$h/.config" \
    "$BIN/ccproxy" keys create --config "$h/ccproxy.toml" bench-0000 2>>"$LOG" | grep -o 'ccp-[A-Za-z0-9_-]*' | head -1) || true
  [ -n "$ck" ] || keys_ok=0
  CKS+=("$ck")
done
if [ "$keys_ok" = 0 ] || ! python3 - "$OUT/home-ccproxy-keys1k/usage.db" 999 2>>"$LOG" <<'EOF'
import hashlib, secrets, sqlite3, string, sys, time
db, n = sys.argv[1], int(sys.argv[2])
alphabet = string.ascii_letters + string.digits
c = sqlite3.connect(db)
now = int(time.time() * 1000)
rows = []
for i in range(1, n + 1):
    key = "ccp-" + "".join(secrets.choice(alphabet) for _ in range(40))
    rows.append((f"bench-{i:04d}", hashlib.sha256(key.encode()).digest(), key[:8], now))
c.executemany("INSERT INTO client_keys (name, digest, prefix, created_at_ms) VALUES (?, ?, ?, ?)", rows)
c.commit()
total = c.execute("SELECT count(*) FROM client_keys").fetchone()[0]
assert total == n + 1, total
EOF
then
  note "3k: could not configure the client keys (see run.log)"
  keys_ok=0
fi
if [ "$keys_ok" = 1 ]; then
  KPIDS=()
  for k in 0 1 1k; do
    h=$OUT/home-ccproxy-keys$k
    case $k in 0) port=$KEYS0_PORT ;; 1) port=$KEYS1_PORT ;; *) port=$KEYS1K_PORT ;; esac
    start_ccproxy "$h" $port "$OUT/ccproxy-keys$k.log" || { note "ccproxy (keys $k) did not start"; keys_ok=0; }
    KPIDS+=("$STARTED")
  done
  if [ "$keys_ok" = 1 ]; then
    bench s3-keys-c32 --arm "$D_ANTH" \
      --arm "name=ccproxy-pt-keys0,url=$U:$KEYS0_PORT/pt/v1/messages,base=direct-anthropic,pid=${KPIDS[0]}" \
      --arm "name=ccproxy-pt-keys1,url=$U:$KEYS1_PORT/pt/v1/messages,base=direct-anthropic,pid=${KPIDS[1]},auth=x-api-key:${CKS[0]}" \
      --arm "name=ccproxy-pt-keys1000,url=$U:$KEYS1K_PORT/pt/v1/messages,base=direct-anthropic,pid=${KPIDS[2]},auth=x-api-key:${CKS[1]}" \
      -c 32 --seconds $SK --rounds $RK --warmup 500
  fi
  for p in "${KPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
fi

# --- scenario 5: conversion micro-benchmarks ----------------------------------------------
note "== 5: conversion micro-benchmarks"
if [ -n "${BENCH_CONVERT:-}" ] && [ -x "$BENCH_CONVERT" ]; then
  if [ "$QUICK" = 1 ]; then
    "$BENCH_CONVERT" --bench --sample-count 20 >"$OUT/micro.txt" 2>&1 || true
  else
    "$BENCH_CONVERT" --bench --sample-count 200 >"$OUT/micro.txt" 2>&1 || true
  fi
  cat "$OUT/micro.txt" | tee -a "$LOG"
else
  note "micro-benchmark executable not found"
fi

wait "$AFTER_SAMPLER" 2>/dev/null || true
kill "$FRESH" 2>/dev/null || true

# --- profile: where ccproxy's CPU goes under load -----------------------------------------
if [ "${BENCH_PROFILE:-1}" = 1 ] && command -v perf >/dev/null 2>&1; then
  note "== profile (perf, cpu-clock, c=32)"
  for arm in "$PT_ANTH" "$FULL_ANTH" "$FULL_OAI"; do
    name=$(echo "$arm" | sed 's/^name=\([^,]*\).*/\1/')
    perf record -e cpu-clock -F 2000 -g -p "$PROXY" -o "$OUT/perf-$name.data" -- sleep 4 >/dev/null 2>&1 &
    PERF=$!
    sleep 0.3
    "$BENCH" run --scenario "profile-$name" --arm "$(echo "$arm" | sed 's/,base=[^,]*//')" -c 32 \
      --seconds 3.2 --rounds 1 --quiet --cc-fixture "$FIXTURE" >/dev/null 2>&1 || true
    wait $PERF || true
    perf report -i "$OUT/perf-$name.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | grep '%' | head -40 >"$OUT/perf-$name.txt" || true
    perf report -i "$OUT/perf-$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | grep '%' | head -10 >"$OUT/perf-$name-dso.txt" || true
    rm -f "$OUT/perf-$name.data"
  done
fi

# --- peers, side by side in the same namespace and against the same upstream ----------------
if [ "${BENCH_PEERS:-1}" = 1 ]; then
  for peer in ccproxy-api litellm; do
    note "== peer: $peer"
    case $peer in
      ccproxy-api) port=$CCA_PORT auth="auth=none" anth=/claude/v1/messages oai=/claude/v1/chat/completions ;;
      litellm) port=$LITE_PORT auth="auth=bearer:sk-bench-master" anth=/v1/messages oai=/v1/chat/completions ;;
    esac
    if ! ppid=$(bash scripts/bench/peers.sh start "$peer" "$ROOT/target/bench" "$OUT" "$port" "$U:$SIM_PORT"); then
      note "$peer: not started (see BENCHMARKS.md)"
      continue
    fi
    ppid=$(echo "$ppid" | tail -1)
    PIDS+=("$ppid")
    sleep 2
    "$BENCH" proc --pid "$ppid" --label "$peer-idle" --out "$RES" >/dev/null
    PA="name=$peer-anthropic,url=$U:$port$anth,base=direct-anthropic,pid=$ppid,$auth"
    PO="name=$peer-openai,url=$U:$port$oai,body=openai,base=direct-converted,pid=$ppid,$auth"
    PEER_ARMS=(--arm "$D_ANTH" --arm "$FULL_ANTH" --arm "$PA" --arm "$D_CONV" --arm "$FULL_OAI" --arm "$PO")
    bench "peer-$peer-small-c1" "${PEER_ARMS[@]}" -c 1 --requests $PN --rounds $PR --warmup 20
    bench "peer-$peer-c32" "${PEER_ARMS[@]}" -c 32 --seconds $PS --rounds $PR --warmup 64 --timeout-secs 30
    bench "peer-$peer-gap-c1" "${PEER_ARMS[@]}" -c 1 --stream --deltas 16 --gap-ms 5 --requests 4 --rounds $PR --warmup 1
    bench "peer-$peer-streams-64" --arm "$D_ANTH" --arm "$PA" --arm "${PO/base=direct-converted/base=direct-anthropic}" \
      -c 64 --stream --deltas 64 --gap-ms 20 --ramp-secs 0.2 --seconds $HOLD --rounds 1 --stall-ms 500 --timeout-secs 60
    "$BENCH" proc --pid "$ppid" --label "$peer-after-load" --out "$RES" >/dev/null
    pkill -P "$ppid" 2>/dev/null || true
    kill "$ppid" 2>/dev/null || true
  done
fi
note "== done"
}
main "$@"

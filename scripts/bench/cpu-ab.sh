#!/usr/bin/env bash
# CPU per passthrough request of two ccproxy builds, user and system time apart, in alternating
# rounds (old new, new old, …) against one simulated upstream, c=32. On a machine whose speed
# drifts by more than a change's effect within minutes, the comparison inside one run is the
# figure; `ab.sh` gives latency and the relay beside it.
#
#   scripts/bench/cpu-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   (default 8 rounds of 3 s each;
#       needs target/release/ccproxy-bench)
#
# AB_PATH and AB_BODY choose another route (default /pt/v1/messages with an Anthropic body; e.g.
# AB_PATH=/openai/v1/responses AB_BODY=responses).
#
# Inside `unshare -n` (loopback only); results under target/bench/cpu-ab-<stamp>/ (rounds.txt:
# build, requests, user and system nanoseconds per request).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
A=$(realpath "${1:?old binary}")
B=$(realpath "${2:?new binary}")
ROUNDS=${3:-8}
OUT=$ROOT/target/bench/cpu-ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
AB_PATH=${AB_PATH:-/pt/v1/messages}
AB_BODY=${AB_BODY:-anthropic}
export ROOT A B ROUNDS OUT AB_PATH AB_BODY
unshare -n bash <<'INNER'
set -euo pipefail
ip link set lo up
cd "$OUT"
BENCH=$ROOT/target/release/ccproxy-bench
"$A" sim --port 18501 >sim.log 2>&1 &
SIM=$!
start() { # binary port home
  mkdir -p "$3"
  env -i PATH=/usr/bin:/bin HOME="$3" XDG_CONFIG_HOME="$3/.config" ANTHROPIC_API_KEY=sk-ant-api03-bench-key \
    "$1" serve --host 127.0.0.1 --port "$2" --upstream-url http://127.0.0.1:18501 >"$3.log" 2>&1 &
}
start "$A" 18502 "$OUT/old"; PA=$!
start "$B" 18503 "$OUT/new"; PB=$!
trap 'kill "$PA" "$PB" "$SIM" 2>/dev/null || true' EXIT
for p in 18501 18502 18503; do
  for i in $(seq 1 300); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
TICK_NS=$((1000000000 / $(getconf CLK_TCK)))
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
one() { # name pid port
  local u0 s0 u1 s1 n
  read -r u0 s0 < <(ticks "$2")
  n=$("$BENCH" run --arm "name=x,url=http://127.0.0.1:$3$AB_PATH,body=$AB_BODY" -c 32 --seconds 3 --quiet | awk '$1=="x"{print $2}')
  read -r u1 s1 < <(ticks "$2")
  echo "$1 $n $(( (u1 - u0) * TICK_NS / n )) $(( (s1 - s0) * TICK_NS / n ))"
}
for p in 18502 18503; do
  "$BENCH" run --arm "name=w,url=http://127.0.0.1:$p$AB_PATH,body=$AB_BODY" -c 32 --seconds 1 --quiet >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one old "$PA" 18502; one new "$PB" 18503
  else one new "$PB" 18503; one old "$PA" 18502; fi
done | tee rounds.txt
awk '{u[$1] += $3; s[$1] += $4; c[$1]++}
  END {for (k in u) printf "%s: user %.1f µs, system %.1f µs, total %.1f µs per request (%d rounds)\n",
    k, u[k] / c[k] / 1000, s[k] / c[k] / 1000, (u[k] + s[k]) / c[k] / 1000, c[k]}' rounds.txt | sort -r | tee summary.txt
INNER
echo "cpu-ab.sh: results in $OUT"

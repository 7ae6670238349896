#!/usr/bin/env bash
# ccproxy's benchmark suite, one command; regenerates BENCHMARKS.md.
#
#   scripts/bench/run.sh [--quick] [--no-peers] [--no-profile]
#
# 1. builds the release binaries and the micro-benchmarks once (cargo build --release);
# 2. installs the peers (ccproxy-api, litellm[proxy]) from PyPI into venvs under
#    target/bench/ (reused when present; a peer that cannot be installed is recorded, not fatal);
# 3. runs everything — simulated upstream, ccproxy, peers, load client, profiler — inside one
#    network namespace that has only loopback (`unshare -n`), so no request leaves 127.0.0.1
#    and the peers cannot phone home (scripts/bench/inner.sh);
# 4. counts instructions per request by mode under callgrind (scripts/bench/profile.sh);
# 5. writes BENCHMARKS.md from the results (scripts/bench/report.py).
#
# Raw results stay in target/bench/run-<UTC stamp>/ (target/bench/latest links to the last).
# --quick: a few rounds only, for checking the suite itself (figures too noisy to publish).
set -euo pipefail
main() {
cd "$(dirname "$0")/../.."
ROOT=$PWD

QUICK=0
PEERS=1
PROFILE=1
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --no-peers) PEERS=0 ;;
    --no-profile) PROFILE=0 ;;
    -h | --help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

if ! unshare -n true 2>/dev/null; then
  echo "run.sh: 'unshare -n' is not permitted here; the suite runs only inside a private" >&2
  echo "network namespace (run as root, or with CAP_SYS_ADMIN)." >&2
  exit 1
fi
FIXTURE=$(cd "$ROOT/.." && pwd)/shared/fixtures/clients/claude_code_api_key.request.json
if [ ! -f "$FIXTURE" ]; then
  echo "run.sh: the Claude Code request fixture is missing: $FIXTURE" >&2
  exit 1
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench/run-$STAMP
mkdir -p "$OUT"
ln -sfn "run-$STAMP" "$ROOT/target/bench/latest"
CMD="scripts/bench/run.sh${*:+ $*}"
T0=$(date +%s)

echo "== build (release, once)"
cargo build --release -p ccproxy -p ccproxy-bench --bins --benches --message-format=json-render-diagnostics >"$OUT/build.jsonl"
CONVERT_BENCH=$(python3 - "$OUT/build.jsonl" <<'EOF'
import json, sys
exe = ""
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("name") == "convert" and "bench" in t.get("kind", []):
        exe = m.get("executable") or exe
print(exe)
EOF
)

python3 - "$OUT/machine.json" "$CMD" "$QUICK" <<'EOF'
import json, os, platform, subprocess, sys, datetime
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
cpu = ""
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip(); break
def release_profile():
    """`[profile.release]`'s lto and codegen-units, as Cargo.toml has them for this build."""
    import tomllib
    p = tomllib.load(open("Cargo.toml", "rb")).get("profile", {}).get("release", {})
    lto = {True: "fat", "fat": "fat", "thin": "thin", False: "thin-local", "off": "off"}.get(p.get("lto", False), str(p.get("lto")))
    return f"{lto} LTO, {p.get('codegen-units', 16)} codegen unit{'s' if p.get('codegen-units', 16) != 1 else ''}"
mem = 0
for l in open("/proc/meminfo"):
    if l.startswith("MemTotal"):
        mem = int(l.split()[1]) // 1024
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "command": sys.argv[2], "quick": sys.argv[3] == "1",
    "cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem,
    "kernel": platform.release(), "rustc": sh("rustc -V"),
    "git": sh("git rev-parse --short HEAD") + (" (with local changes)" if sh("git status --porcelain --untracked-files=no") else ""),
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "release_profile": release_profile(),
}, open(sys.argv[1], "w"), indent=1)
EOF

if [ "$PEERS" = 1 ]; then
  echo "== peers: install (PyPI, into target/bench/venv-*)"
  bash scripts/bench/peers.sh install "$ROOT/target/bench" "$OUT" || true
fi

echo "== run (inside unshare -n: loopback only)"
BENCH_QUICK=$QUICK BENCH_PEERS=$PEERS BENCH_PROFILE=$PROFILE BENCH_FIXTURE=$FIXTURE \
  BENCH_CONVERT=$CONVERT_BENCH BENCH_ROOT=$ROOT \
  unshare -n bash scripts/bench/inner.sh "$OUT"

if [ "$PROFILE" = 1 ] && command -v valgrind >/dev/null 2>&1; then
  echo "== instructions per request (callgrind)"
  if bash scripts/bench/profile.sh 1000 >"$OUT/callgrind.log" 2>&1; then
    ln -sfn "$(ls -td "$ROOT"/target/bench/profile-* | head -1)" "$OUT/callgrind"
    tail -8 "$OUT/callgrind.log"
  fi
fi

echo $(( $(date +%s) - T0 )) >"$OUT/elapsed_s"
python3 scripts/bench/report.py "$OUT" >"$ROOT/BENCHMARKS.md.tmp"
mv "$ROOT/BENCHMARKS.md.tmp" "$ROOT/BENCHMARKS.md"
echo "== wrote BENCHMARKS.md (raw results: $OUT)"
}
main "$@"

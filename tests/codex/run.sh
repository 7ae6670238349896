#!/usr/bin/env bash
# Codex CLI through ccproxy: `codex exec` (the npm package @openai/codex, pinned below, installed
# into target/codex-npm and reused) completes a multi-step task — a shell command, then an
# apply_patch that creates a file — against ccproxy's /openai/v1/responses in full and minimal
# mode, ccproxy in front of the simulated upstream (`[sim:agent]`, see src/sim/agent.rs).
#
# Everything runs inside a new network namespace with only the loopback interface (unshare -n,
# or unshare -rn where creating one needs a user namespace): nothing can reach the internet.
# The checks are in check.py (stdlib only). Usage: bash tests/codex/run.sh [-v]
set -euo pipefail

CODEX_VERSION="0.171.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
NPM_DIR="$REPO/target/codex-npm"
PY="${PYTHON:-python3}"

log() { printf '[codex] %s\n' "$*" >&2; }

installed_version() {
    "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$NPM_DIR/node_modules/@openai/codex/package.json" 2>/dev/null || true
}

if [[ "$(installed_version)" != "$CODEX_VERSION" ]]; then
    command -v npm >/dev/null || { log "npm is needed to install @openai/codex"; exit 2; }
    log "installing @openai/codex@$CODEX_VERSION into target/codex-npm"
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save --loglevel=error \
        "@openai/codex@$CODEX_VERSION" >&2
fi
CODEX_BIN="$NPM_DIR/node_modules/.bin/codex"
if [[ ! -x "$CODEX_BIN" ]] || [[ "$("$CODEX_BIN" --version)" != *"$CODEX_VERSION"* ]]; then
    log "no working codex $CODEX_VERSION in $NPM_DIR (its platform package may be missing)"
    exit 2
fi
export CODEX_BIN

# The binary as `cargo test` builds it (see tests/conformance/run.sh): reused after test-rust.
log "building ccproxy (debug, as cargo test builds it)"
CCPROXY_BIN="$(cd "$REPO" && cargo test --no-run --test architecture --message-format=json-render-diagnostics |
    "$PY" -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("name") == "ccproxy" and "bin" in t.get("kind", []):
        print(m.get("executable") or "")
')"
if [[ ! -x "$CCPROXY_BIN" ]]; then
    log "cargo reported no ccproxy binary"
    exit 2
fi
export CCPROXY_BIN

# A loopback-only network namespace: as root `unshare -n`; otherwise through a user namespace.
if unshare -n true 2>/dev/null; then
    NETNS=(unshare -n)
elif unshare -rn true 2>/dev/null; then
    NETNS=(unshare -rn)
else
    log "cannot create a network namespace (unshare -n / -rn): refusing to run Codex unconfined"
    exit 2
fi

export CODEX_RUN_DIR="$REPO/target/codex-run"
log "running codex exec in a loopback-only namespace (${NETNS[*]})"
exec "${NETNS[@]}" "$PY" "$HERE/check.py" "$@"

#!/usr/bin/env bash
# Conformance suite: drives ccproxy with the official Anthropic and OpenAI Python SDKs.
#
#   bash tests/conformance/run.sh [pytest args...]
#
# Creates (or reuses) a virtualenv with the pinned SDKs, builds the debug binary (or reuses the
# one `cargo test --all-targets` built), and runs pytest; the exit code is pytest's. Needs
# python >= 3.10 with pip, the Rust toolchain, and PyPI for the first run.
#
# Environment:
#   CCPROXY_VENV   virtualenv path (default: <repo>/target/conformance-venv)
#   PYTHON         interpreter to create it with (default: python3.11, python3.12, ..., python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${CCPROXY_VENV:-$REPO/target/conformance-venv}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.conformance-requirements.sha256"

log() { printf 'conformance: %s\n' "$*" >&2; }

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return
    fi
    local c
    for c in python3.11 python3.12 python3.13 python3.14 python3.10 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$c"
            return
        fi
    done
    log "no python >= 3.10 found (set PYTHON)"
    exit 2
}

PY="$(find_python)"
# The stamp covers the requirements and the interpreter the venv was made with.
want="$("$PY" - "$REQ" <<'EOF'
import hashlib, sys
h = hashlib.sha256(open(sys.argv[1], "rb").read())
h.update(sys.version.encode())
print(h.hexdigest())
EOF
)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    : # up to date
else
    log "creating virtualenv $VENV with $PY"
    rm -f "$STAMP"
    if ! "$PY" -m venv --clear "$VENV" >/dev/null 2>&1; then
        # No ensurepip (e.g. Debian without python3-venv): bootstrap virtualenv from PyPI.
        log "python -m venv failed; bootstrapping virtualenv"
        boot="$(mktemp -d)"
        trap 'rm -rf "$boot"' EXIT
        "$PY" -m pip install -q --disable-pip-version-check --target "$boot" virtualenv
        rm -rf "$VENV"
        PYTHONPATH="$boot" "$PY" -m virtualenv -q "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" >"$STAMP"
fi

# The binary is built as `cargo test` builds it (same profile, and features unified with the
# dev-dependencies), so after `cargo test --all-targets` (make test, CI) it is reused as it is;
# `cargo build` would resolve features without the dev-dependencies and compile ccproxy again.
# Any integration test target makes cargo build the package's binaries: the smallest one is asked.
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

cd "$REPO"
export PYTHONDONTWRITEBYTECODE=1
set +e
"$VENV/bin/python" -m pytest -q tests/conformance "$@"
status=$?
set -e
exit "$status"

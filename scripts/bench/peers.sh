#!/usr/bin/env bash
# The peers of the side-by-side benchmark: installing them (needs PyPI), and starting them
# against the simulated upstream (inside the benchmark's network namespace).
#
#   peers.sh install VENV_DIR OUT_DIR
#   peers.sh start ccproxy-api|litellm VENV_DIR OUT_DIR PORT UPSTREAM_URL   (prints the PID)
#
# Failures are recorded in OUT_DIR/results.jsonl ({"kind":"peer",...}) with the reason,
# never fatal: BENCHMARKS.md then says why a peer is missing.
set -uo pipefail

cmd=${1:-}
shift || true

record() { # peer ok stage reason version
  python3 - "$OUT/results.jsonl" "$@" <<'EOF'
import json, sys
path, peer, ok, stage, reason, version = sys.argv[1:7]
with open(path, "a") as f:
    f.write(json.dumps({"kind": "peer", "peer": peer, "ok": ok == "1", "stage": stage,
                        "reason": reason, "version": version}) + "\n")
EOF
}

pkg_of() { case $1 in ccproxy-api) echo ccproxy-api ;; litellm) echo litellm ;; esac; }
spec_of() { case $1 in ccproxy-api) echo ccproxy-api ;; litellm) echo 'litellm[proxy]' ;; esac; }

install_one() {
  local peer=$1 dir=$VENVS/venv-$1 pkg spec version
  pkg=$(pkg_of "$peer")
  spec=$(spec_of "$peer")
  if ! { [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip show "$pkg" >/dev/null 2>&1; }; then
    rm -rf "$dir"
    if ! python3 -m venv "$dir" >"$OUT/pip-$peer.log" 2>&1; then
      record "$peer" 0 install "python3 -m venv failed: $(tail -1 "$OUT/pip-$peer.log")" ""
      return
    fi
    if ! timeout 900 "$dir/bin/python" -m pip install -q "$spec" >>"$OUT/pip-$peer.log" 2>&1; then
      record "$peer" 0 install "pip install $spec failed: $(grep -m1 -i error "$OUT/pip-$peer.log" | cut -c1-200)" ""
      rm -rf "$dir"
      return
    fi
  fi
  version=$("$dir/bin/python" -m pip show "$pkg" 2>/dev/null | sed -n 's/^Version: //p')
  record "$peer" 1 install "" "$version"
  echo "   $peer $version"
}

wait_http() { # url seconds pid
  local url=$1 secs=$2 pid=$3 i
  for ((i = 0; i < secs * 4; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

start_one() {
  local peer=$1 port=$2 upstream=$3 dir=$VENVS/venv-$1 home pid
  home=$OUT/home-$peer
  mkdir -p "$home"
  if [ ! -x "$dir/bin/python" ]; then
    return 1
  fi
  case $peer in
    ccproxy-api)
      # OAuth only: a fake Claude credentials file in a temporary HOME (the simulated
      # upstream accepts any sk-ant-oat token sent with Claude Code's identity).
      mkdir -p "$home/.claude"
      local exp=$((($(date +%s) + 30 * 86400) * 1000))
      cat >"$home/.claude/.credentials.json" <<EOF
{"claudeAiOauth":{"accessToken":"sk-ant-oat01-bench-access","refreshToken":"sk-ant-ort01-bench-refresh","expiresAt":$exp,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}
EOF
      cat >"$home/ccproxy-api.toml" <<'EOF'
enabled_plugins = ["claude_api", "oauth_claude"]
EOF
      # PATH holds only the venv: with no `claude`/`npx` to find, its Claude CLI detection
      # falls back to its built-in defaults at once instead of trying npm (no network here).
      env -i HOME="$home" PATH="$dir/bin" LANG=C.UTF-8 \
        PLUGINS__CLAUDE_API__BASE_URL="$upstream" \
        SCHEDULER__VERSION_CHECK_ENABLED=false SCHEDULER__PRICING_UPDATE_ENABLED=false \
        "$dir/bin/ccproxy-api" serve --config "$home/ccproxy-api.toml" \
        --host 127.0.0.1 --port "$port" --log-level WARNING \
        >"$OUT/peer-$peer.log" 2>&1 &
      pid=$!
      if ! wait_http "http://127.0.0.1:$port/health" 120 "$pid"; then
        record "$peer" 0 start "did not answer /health within 120 s: $(tail -c 300 "$OUT/peer-$peer.log" | tr '\n' ' ')" ""
        kill "$pid" 2>/dev/null
        return 1
      fi
      ;;
    litellm)
      cat >"$home/litellm.yaml" <<EOF
model_list:
  - model_name: claude-sonnet-4-5
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: $upstream
      api_key: sk-ant-api03-bench-key
general_settings:
  master_key: sk-bench-master
EOF
      env -i HOME="$home" PATH="$dir/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False \
        "$dir/bin/litellm" --config "$home/litellm.yaml" --host 127.0.0.1 --port "$port" \
        >"$OUT/peer-$peer.log" 2>&1 &
      pid=$!
      if ! wait_http "http://127.0.0.1:$port/health/liveliness" 180 "$pid"; then
        record "$peer" 0 start "did not answer /health/liveliness within 180 s: $(tail -c 300 "$OUT/peer-$peer.log" | tr '\n' ' ')" ""
        kill "$pid" 2>/dev/null
        return 1
      fi
      ;;
    *) return 1 ;;
  esac
  record "$peer" 1 start "" ""
  echo "$pid"
}

case $cmd in
  install)
    VENVS=$1 OUT=$2
    mkdir -p "$VENVS"
    install_one ccproxy-api
    install_one litellm
    ;;
  start)
    peer=$1 VENVS=$2 OUT=$3
    start_one "$peer" "$4" "$5"
    ;;
  *)
    sed -n 2,9p "$0"
    exit 2
    ;;
esac

"""Codex CLI through ccproxy, checked by its outcomes (run by run.sh inside a network namespace).

For each mode (full: /openai/v1, minimal: /min/openai/v1), over HTTP (SSE) and over the Responses
WebSocket mode (`supports_websockets = true`), a fresh CODEX_HOME gets a config.toml with a custom
model provider (`wire_api = "responses"`, `env_key`) and Codex's default features (its sub-agent
tools come as the `namespace` tool multi_agent_v1), and `codex exec` is asked for the simulated
upstream's agent task (`[sim:agent]`, src/sim/agent.rs). Checked:

- codex exits 0 and reports the command's real output (`sim-agent-42`, which appears nowhere
  before the command ran), the file change and a completed turn;
- the file the apply_patch created exists in the work dir with the expected content (so the
  freeform patch reached Codex as raw text);
- the upstream requests the simulated service received: the command's output and the patch
  result came back as tool_results, the thinking block (with its signature) came back unchanged
  through the reasoning item, and the mode's credential was used;
- ccproxy served only the responses route (no /models or /responses/compact); HTTP runs made
  three POSTs and no socket; WebSocket runs made all three responses on sockets to the mode's
  path (ccproxy's `responses websocket closed … responses=N` log lines), none over POST, and
  Codex reported no fallback to HTTP.

Stdlib only. Logs and work dirs stay in $CODEX_RUN_DIR (target/codex-run) for inspection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CODEX = os.environ["CODEX_BIN"]
CCPROXY = os.environ["CCPROXY_BIN"]
RUN = Path(os.environ.get("CODEX_RUN_DIR", "target/codex-run")).absolute()
VERBOSE = "-v" in sys.argv[1:]

MODEL = "claude-sonnet-4-5"
SERVER_KEY = "sk-ant-api03-codex-server-key"
OAUTH_ACCESS = "sk-ant-oat01-codex-access-token"
CLIENT_KEY = "sk-ant-api03-codex-client-key"
KEY_ENV = "CCPROXY_CODEX_TEST_KEY"
# Mirrors src/sim/agent.rs.
COMMAND_OUTPUT = "sim-agent-42"
PATCH_FILE = "sim-agent.txt"
PATCH_CONTENT = "written by the simulated upstream\nthrough apply_patch\n"
# (run, URL prefix, WebSocket mode): full and minimal mode, over HTTP (SSE) and over WebSocket.
MODES = [("full", "", False), ("min", "/min", False), ("full-ws", "", True), ("min-ws", "/min", True)]
# CODEX_ONLY=full-ws,min-ws runs only those (when iterating on one of them).
if os.environ.get("CODEX_ONLY"):
    MODES = [m for m in MODES if m[0] in os.environ["CODEX_ONLY"].split(",")]
CODEX_TIMEOUT = 120

failures: list[str] = []


def log(msg: str) -> None:
    print(f"[codex] {msg}", file=sys.stderr, flush=True)


def check(ok: bool, what: str) -> bool:
    if ok:
        if VERBOSE:
            log(f"ok: {what}")
    else:
        failures.append(what)
        log(f"FAILED: {what}")
    return ok


def loopback_only() -> None:
    """Brings lo up; refuses to go on if this namespace has any other interface."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    others = [l.split(":")[1].strip() for l in links.splitlines() if l.split(":")[1].strip() != "lo"]
    if others:
        sys.exit(f"not in a loopback-only network namespace (interfaces: {others})")


def environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("ANTHROPIC_", "OPENAI_", "CCPROXY_", "CLAUDE_", "CODEX_"))
        and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "RUST_LOG")
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        NO_COLOR="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.log_path = RUN / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=RUN)

    def text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for(self, predicate, what: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited before {what}:\n{self.text()[-3000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        sys.exit(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def get_json(url: str):
    assert url.startswith("http://127.0.0.1:"), url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return json.loads(r.read())


def healthy(port: int) -> bool:
    try:
        return get_json(f"http://127.0.0.1:{port}/health") is not None
    except OSError:
        return False


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from ports import free_port  # noqa: E402  (tests/support/ports.py)


def model_catalog(codex_home: Path, env: dict[str, str]) -> Path:
    """Codex's bundled metadata of a Responses model with a freeform apply_patch tool, under the
    Claude model's name: without an entry Codex uses fallback metadata and offers no apply_patch."""
    out = subprocess.run([CODEX, "debug", "models"], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit(f"codex debug models failed ({out.returncode}):\n{out.stderr[-2000:]}")
    models = json.loads(out.stdout)["models"]
    plain = [m for m in models if m.get("apply_patch_tool_type") == "freeform" and not m.get("tool_mode") and not m.get("multi_agent_version")]
    if not plain:
        sys.exit(f"no bundled model with a freeform apply_patch tool: {[m.get('slug') for m in models]}")
    # supports_search_tool off: with it Codex defers its sub-agent tools behind a client-executed
    # `tool_search` tool (tool_search_call / tool_search_output items), which ccproxy does not
    # convert yet; without it Codex offers them directly as the `namespace` tool multi_agent_v1.
    entry = dict(plain[0], slug=MODEL, display_name=f"{MODEL} (ccproxy)", supports_search_tool=False)
    path = codex_home / "models.json"
    path.write_text(json.dumps({"models": [entry]}))
    return path


CONFIG = """\
model = "{model}"
model_provider = "ccproxy"
model_catalog_json = "{catalog}"
approval_policy = "never"
# Codex runs inside a throwaway network namespace and work dir: no sandbox of its own.
sandbox_mode = "danger-full-access"

[model_providers.ccproxy]
name = "ccproxy"
base_url = "{base_url}"
env_key = "{key_env}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 60000
supports_websockets = {websockets}
"""


def events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def items(evs: list[dict], kind: str) -> list[dict]:
    return [e["item"] for e in evs if e.get("type") == "item.completed" and e.get("item", {}).get("type") == kind]


def check_transport(mode: str, prefix: str, websockets: bool, served: str, codex_output: str) -> None:
    """WebSocket runs: every response of the run was made on a socket to the mode's path (the
    socket's close line counts them, and the request log has no other responses), Codex did not
    fall back to HTTP. HTTP runs: no socket at all."""
    requests = len(re.findall(r"\broute=responses\b", served))
    opened = re.findall(r"responses websocket opened.*?path=(\S+)", served)
    closed = [dict(re.findall(r"\b(responses|warm_ups|continued)=(\d+)", l))
              for l in served.splitlines() if "responses websocket closed" in l]
    if not websockets:
        check(not opened, f"{mode}: no WebSocket over HTTP: {opened}")
        check(requests == 3, f"{mode}: three POST /responses: {requests}")
        return
    on_socket = sum(int(c.get("responses", 0)) for c in closed)
    check(bool(opened) and all(p == f"{prefix}/openai/v1/responses" for p in opened),
          f"{mode}: Codex opened a WebSocket on {prefix}/openai/v1/responses: {opened}")
    check(on_socket == 3 and requests == 3,
          f"{mode}: all three responses were made on the socket, none over HTTP POST (on the socket: {on_socket}, requests: {requests}, closes: {closed})")
    check(not re.search(r"fall(ing)? ?back|fallback", codex_output, re.I),
          f"{mode}: Codex reported no fallback to HTTP")
    if VERBOSE:
        log(f"{mode}: socket use {closed}")


def run_mode(mode: str, prefix: str, websockets: bool, proxy: "Process", proxy_port: int, sim_url: str) -> None:
    tag = f"codex-{mode}-{os.getpid()}"
    base = RUN / mode
    home, codex_home, work = base / "home", base / "codex-home", base / "work"
    for d in (home, codex_home, work):
        d.mkdir(parents=True)
    env = environment(home, {"CODEX_HOME": str(codex_home), KEY_ENV: CLIENT_KEY})
    catalog = model_catalog(codex_home, env)
    base_url = f"http://127.0.0.1:{proxy_port}{prefix}/openai/v1"
    (codex_home / "config.toml").write_text(
        CONFIG.format(model=MODEL, catalog=catalog, base_url=base_url, key_env=KEY_ENV,
                      websockets="true" if websockets else "false")
    )
    log_start = len(proxy.text())
    prompt = f"Run a command, then create {PATCH_FILE}. [sim:agent] ({tag})"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [CODEX, "exec", "--skip-git-repo-check", "--json", "-C", str(work), prompt],
            env=env, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CODEX_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        check(False, f"{mode}: codex exec finished within {CODEX_TIMEOUT}s (stdout: {str(e.stdout)[-2000:]})")
        return
    took = time.monotonic() - started
    (base / "codex.jsonl").write_text(done.stdout)
    (base / "codex.stderr").write_text(done.stderr)
    # How ccproxy served this run: the upgrade (GET) and the responses made on the socket, or
    # POSTs only.
    served = proxy.text()[log_start:]
    if websockets:
        # The socket's close is logged once Codex has hung up.
        deadline = time.monotonic() + 5
        while (served.count("responses websocket closed") < max(1, served.count("responses websocket opened"))
               and time.monotonic() < deadline):
            time.sleep(0.05)
            served = proxy.text()[log_start:]
    (base / "proxy.log").write_text(served)
    check_transport(mode, prefix, websockets, served, done.stdout + done.stderr)
    log(f"{mode}: codex exec exited {done.returncode} in {took:.1f}s ({base_url})")
    if not check(done.returncode == 0, f"{mode}: codex exec exits 0 (stderr: {done.stderr[-1500:]}; stdout: {done.stdout[-1500:]})"):
        return
    evs = events(done.stdout)
    commands = items(evs, "command_execution")
    check(
        any(COMMAND_OUTPUT in c.get("aggregated_output", "") and c.get("exit_code") == 0 for c in commands),
        f"{mode}: codex ran the command and saw {COMMAND_OUTPUT!r}: {commands}",
    )
    changes = items(evs, "file_change")
    check(
        any(c.get("status") == "completed" and any(ch.get("path", "").endswith(PATCH_FILE) and ch.get("kind") == "add" for ch in c.get("changes", [])) for c in changes),
        f"{mode}: codex applied the patch adding {PATCH_FILE}: {changes}",
    )
    check(any(e.get("type") == "turn.completed" for e in evs), f"{mode}: the turn completed")
    check(not any(e.get("type") in ("error", "turn.failed") for e in evs), f"{mode}: no error events: {[e for e in evs if e.get('type') in ('error', 'turn.failed')]}")
    messages = items(evs, "agent_message")
    check(bool(messages) and COMMAND_OUTPUT in messages[-1].get("text", ""), f"{mode}: the final answer uses the command's output: {messages[-1:]}")
    created = work / PATCH_FILE
    check(created.is_file() and created.read_text() == PATCH_CONTENT, f"{mode}: {created} holds the patch's content: {created.read_text() if created.is_file() else 'missing'!r}")

    # What the simulated upstream received for this run.
    recorded = [r for r in get_json(f"{sim_url}/_sim/requests") if tag in r["body"]]
    bodies = [json.loads(r["body"]) for r in recorded]
    check(len(recorded) == 3 and all(r["method"] == "POST" and r["path"] == "/v1/messages" for r in recorded),
          f"{mode}: three upstream Messages requests (command, patch, answer): {[(r['method'], r['path']) for r in recorded]}")
    if len(bodies) < 3:
        return
    results = [
        b for m in bodies[-1]["messages"] if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"] if b.get("type") == "tool_result"
    ]
    text_of = lambda b: b["content"] if isinstance(b["content"], str) else "".join(p.get("text", "") for p in b["content"])
    check(any(COMMAND_OUTPUT in text_of(b) for b in results), f"{mode}: the command's output reached the model as a tool_result: {results}")
    check(any(PATCH_FILE in text_of(b) for b in results), f"{mode}: the patch result reached the model: {results}")
    assistant = [m for m in bodies[-1]["messages"] if m["role"] == "assistant"]
    uses = [b for m in assistant for b in m["content"] if isinstance(m["content"], list) and b.get("type") == "tool_use"]
    check([u["name"] for u in uses] == ["exec_command", "apply_patch"], f"{mode}: history carries both tool calls: {uses}")
    thinking = [b for m in assistant for b in m["content"] if isinstance(m["content"], list) and b.get("type") == "thinking"]
    check(
        len(thinking) >= 1 and all(re.fullmatch(r"EqQBCkYIBxgCKkBzaW0tc2lnbmF0dXJlLXtufQ[0-9a-f]{8}==", t.get("signature", "")) for t in thinking),
        f"{mode}: the thinking blocks came back with their signatures through the reasoning items: {thinking}",
    )
    # Full mode: the server's subscription credentials; minimal: the client's key.
    want = ("authorization", f"Bearer {OAUTH_ACCESS}") if mode.startswith("full") else ("x-api-key", CLIENT_KEY)
    headers = [{k.lower(): v for k, v in r["headers"]} for r in recorded]
    check(all(h.get(want[0]) == want[1] for h in headers), f"{mode}: the upstream requests carry {want[0]}: {want[1]}")


def main() -> None:
    loopback_only()
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    home = RUN / "proxy-home"
    home.mkdir()
    sim = Process("sim", [CCPROXY, "sim", "--host", "127.0.0.1", "--port", "0", "--record"], environment(home, {}))
    prefix = "simulated Anthropic upstream listening on "
    sim_url = sim.wait_for(lambda: next((l.split(prefix, 1)[1].strip() for l in sim.text().splitlines() if prefix in l), None), "the simulated upstream")
    creds = home / "credentials.json"
    creds.write_text(json.dumps({"claudeAiOauth": {
        "accessToken": OAUTH_ACCESS, "refreshToken": "sk-ant-ort01-codex-refresh-token",
        "expiresAt": int(time.time() * 1000) + 3600 * 1000, "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max"}}))
    creds.chmod(0o600)
    port = free_port()
    proxy = Process(
        "proxy",
        [CCPROXY, "serve", "--host", "127.0.0.1", "--port", str(port), "--upstream-url", sim_url, "--no-usage",
         "--oauth-token-url", f"{sim_url}/v1/oauth/token", "--credentials-file", str(creds)],
        environment(home, {"ANTHROPIC_API_KEY": SERVER_KEY}),
    )
    try:
        proxy.wait_for(lambda: healthy(port), "ccproxy GET /health")
        for mode, prefix, websockets in MODES:
            run_mode(mode, prefix, websockets, proxy, port, sim_url)
        # Which routes Codex used: only the HTTP create route (no /models, compact or WebSocket).
        routes = set(re.findall(r"\broute=(\S+)", proxy.text()))
        check(routes == {"responses"}, f"ccproxy served only the responses route to Codex: {routes}")
        check(proxy.proc.poll() is None and sim.proc.poll() is None, "ccproxy and the simulated upstream are still running")
    finally:
        proxy.stop()
        sim.stop()
    failed = {f.split(":", 1)[0] for f in failures}
    passed = [m for m, _, _ in MODES if m not in failed]
    print(f"codex: {len(passed)} passed, {len(failed)} failed", flush=True)
    if failures:
        log(f"logs and work dirs in {RUN}")
        sys.exit(1)


if __name__ == "__main__":
    main()

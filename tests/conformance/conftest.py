"""Fixtures of the conformance suite: real ccproxy processes on loopback ports.

Processes (all session-scoped, stopped at the end):

- ``sim``: the simulated Anthropic upstream, standalone (``ccproxy sim --record``);
  ``sim.requests_with(tag)`` returns what it received, so tests can check what the
  proxy actually sent upstream.
- ``proxy``: ``ccproxy serve`` in front of ``sim``, with a server-side API key and
  Claude Code OAuth credentials (a file in Claude Code's format): full mode uses the
  subscription token, minimal and passthrough use the client's API key.
- ``apikey_proxy``: the same without OAuth credentials.
- ``token_proxy``: the same as ``apikey_proxy`` but started with ``--auth-token``.
- ``dead_upstream_proxy``: a proxy whose upstream does not answer (nothing listens).

Everything is hermetic: HOME and the XDG directories point into a temporary
directory, credential and proxy variables are removed from the environment, and all
traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CCPROXY_BIN") or REPO / "target" / "debug" / "ccproxy").absolute()

SERVER_API_KEY = "sk-ant-api03-conformance-server-key"
CLIENT_API_KEY = "sk-ant-api03-conformance-client-key"
PROXY_TOKEN = "conformance-proxy-token-3f9c"
OAUTH_ACCESS = "sk-ant-oat01-conformance-access-token"
OAUTH_REFRESH = "sk-ant-ort01-conformance-refresh-token"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
MODEL = "claude-haiku-4-5-20251001"

# Mode prefixes of the Anthropic routes, and their names.
ANTHROPIC_PREFIXES = ["", "/full", "/min", "/pt"]
OPENAI_PREFIXES = ["", "/min", "/pt"]
MODE_OF = {"": "full", "/full": "full", "/min": "min", "/pt": "pt"}


def _scrub_environment(env: dict[str, str]) -> dict[str, str]:
    """Drops anything that could leak real credentials, settings or proxies in."""
    out = {}
    for k, v in env.items():
        ku = k.upper()
        if ku.startswith(("ANTHROPIC_", "OPENAI_", "CCPROXY_", "CLAUDE_")):
            continue
        if ku in ("AUTH_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "RUST_LOG"):
            continue
        out[k] = v
    out["NO_PROXY"] = out["no_proxy"] = "127.0.0.1,localhost"
    return out


# The SDKs in this process read ANTHROPIC_*/OPENAI_* and proxy variables: clear them.
_clean = _scrub_environment(dict(os.environ))
for _k in list(os.environ):
    if _k not in _clean:
        del os.environ[_k]
os.environ.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from ports import free_port  # noqa: E402  (tests/support/ports.py)


def http_get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, method="GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body.decode("utf-8", "replace")


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Sim:
    url: str
    process: Process

    def requests(self) -> list[dict[str, Any]]:
        status, body = http_get_json(f"{self.url}/_sim/requests")
        assert status == 200, body
        return body

    def requests_with(self, tag: str) -> list[dict[str, Any]]:
        """The recorded upstream requests whose body contains `tag` (oldest first)."""
        return [r for r in self.requests() if tag in r["body"]]

    def one_request_with(self, tag: str) -> "Recorded":
        found = self.requests_with(tag)
        assert len(found) == 1, (
            f"expected exactly one upstream request carrying {tag!r}, got {len(found)}: "
            f"{[(r['method'], r['path']) for r in found]}"
        )
        return Recorded(found[0])


class Recorded:
    """One request as the simulated upstream received it."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.method: str = raw["method"]
        self.path: str = raw["path"]
        self.query: str | None = raw.get("query")
        self.body: str = raw["body"]
        self.headers: list[tuple[str, str]] = [(k.lower(), v) for k, v in raw["headers"]]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def beta_tags(self) -> list[str]:
        return [t.strip() for v in self.header_all("anthropic-beta") for t in v.split(",") if t.strip()]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Recorded({self.method} {self.path} headers={self.headers!r} body={self.body[:300]!r})"


@dataclass
class Proxy:
    port: int
    process: Process
    workdir: Path
    credentials_file: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> Any:
        return http_get_json(f"{self.base}/health")[1]


def _wait_for(predicate, process: Process, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited ({process.proc.returncode}) before {what}:\n{process.log()}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}:\n{process.log()}")


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="ccproxy-conformance-") as d:
        root = Path(d)
        for sub in ("home", "config", "data", "state", "cache"):
            (root / sub).mkdir()
        yield root


def _child_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = _scrub_environment(dict(os.environ))
    env.update(
        {
            "HOME": str(workdir / "home"),
            "XDG_CONFIG_HOME": str(workdir / "config"),
            "XDG_DATA_HOME": str(workdir / "data"),
            "XDG_STATE_HOME": str(workdir / "state"),
            "XDG_CACHE_HOME": str(workdir / "cache"),
            "NO_COLOR": "1",
        }
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def binary() -> Path:
    if not BIN.is_file():
        pytest.exit(f"{BIN} not found: build it with `cargo build --bin ccproxy` (run.sh does)", returncode=2)
    return BIN


@pytest.fixture(scope="session")
def sim(binary, workdir):
    # --port 0: the simulated upstream picks a free port and prints it.
    p = Process("sim", [str(binary), "sim", "--host", "127.0.0.1", "--port", "0", "--record"], _child_env(workdir), workdir)
    prefix = "simulated Anthropic upstream listening on "

    def url():
        for line in p.log().splitlines():
            if prefix in line:
                return line.split(prefix, 1)[1].strip()
        return None

    try:
        u = _wait_for(url, p, "the simulated upstream to listen")
        assert u.startswith("http://127.0.0.1:"), u
        _wait_for(lambda: http_get_json(f"{u}/_sim/requests")[0] == 200, p, "GET /_sim/requests")
        yield Sim(u, p)
    finally:
        p.stop()


def write_claude_credentials(path: Path, access: str = OAUTH_ACCESS, refresh: str = OAUTH_REFRESH) -> Path:
    creds = {
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": int(time.time() * 1000) + 3600 * 1000,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        }
    }
    path.write_text(json.dumps(creds))
    path.chmod(0o600)
    return path


def start_proxy(
    binary: Path,
    sim: Sim,
    workdir: Path,
    name: str,
    *,
    oauth: bool = False,
    auth_token: str | None = None,
    upstream_url: str | None = None,
) -> Proxy:
    pdir = workdir / name
    pdir.mkdir()
    args = [
        str(binary),
        "serve",
        "--host",
        "127.0.0.1",
        "--upstream-url",
        upstream_url or sim.url,
        # Hermetic: any refresh would go to the simulated upstream, never out.
        "--oauth-token-url",
        f"{sim.url}/v1/oauth/token",
    ]
    creds = None
    if oauth:
        creds = write_claude_credentials(pdir / "credentials.json")
        args += ["--credentials-file", str(creds)]
    if auth_token:
        args += ["--auth-token", auth_token]
    env = _child_env(
        workdir,
        {
            "ANTHROPIC_API_KEY": SERVER_API_KEY,
            # Each proxy has its own home: no credentials discovered from elsewhere.
            "HOME": str(pdir),
            "XDG_CONFIG_HOME": str(pdir / "config"),
            "XDG_DATA_HOME": str(pdir / "data"),
        },
    )
    last_error = ""
    for attempt in range(3):
        port = free_port()
        p = Process(f"{name}-{attempt}", args + ["--port", str(port)], env, pdir)

        def healthy():
            try:
                return http_get_json(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200
            except (OSError, ValueError):
                return False

        try:
            _wait_for(healthy, p, f"{name} GET /health to answer 200")
            return Proxy(port, p, pdir, creds)
        except RuntimeError as e:  # e.g. the port was taken meanwhile: try another
            last_error = str(e)
            p.stop()
    raise RuntimeError(f"could not start {name}: {last_error}")


@pytest.fixture(scope="session")
def proxy(binary, sim, workdir):
    p = start_proxy(binary, sim, workdir, "proxy-oauth", oauth=True)
    try:
        yield p
    finally:
        p.process.stop()


@pytest.fixture(scope="session")
def apikey_proxy(binary, sim, workdir):
    p = start_proxy(binary, sim, workdir, "proxy-apikey")
    try:
        yield p
    finally:
        p.process.stop()


@pytest.fixture(scope="session")
def token_proxy(binary, sim, workdir):
    p = start_proxy(binary, sim, workdir, "proxy-token", auth_token=PROXY_TOKEN)
    try:
        yield p
    finally:
        p.process.stop()


@pytest.fixture(scope="session")
def dead_upstream_proxy(binary, sim, workdir):
    """A proxy whose upstream is a loopback port nobody listens on."""
    p = start_proxy(binary, sim, workdir, "proxy-dead-upstream", upstream_url=f"http://127.0.0.1:{free_port()}")
    try:
        yield p
    finally:
        p.process.stop()


@pytest.fixture
def tag() -> str:
    """A unique marker for this test's request(s), to find them at the upstream."""
    return f"ctag-{uuid.uuid4().hex[:16]}"


class RequestCapture:
    """httpx2 event hook keeping the requests an SDK client sent (bytes included)."""

    def __init__(self):
        self.requests: list[Any] = []

    def __call__(self, request) -> None:
        request.read()
        self.requests.append(request)

    @property
    def last(self):
        assert self.requests, "the SDK sent no request"
        return self.requests[-1]

    def last_body(self) -> str:
        return self.last.content.decode("utf-8")


@pytest.fixture
def capture() -> RequestCapture:
    return RequestCapture()


@pytest.fixture(autouse=True)
def _processes_alive(request):
    """After each test, every started process must still be running (no crash)."""
    yield
    for name in ("sim", "proxy", "apikey_proxy", "token_proxy", "dead_upstream_proxy"):
        obj = request.node.funcargs.get(name)
        if obj is not None:
            proc = obj.process
            assert proc.alive(), f"{proc.name} died during the test:\n{proc.log()}"

"""The official Anthropic Python SDK driving ccproxy's Anthropic routes, in every mode.

Each test talks to the proxy exactly as a user would (``base_url`` = the proxy, with a
mode prefix) and, where it matters, checks through the simulated upstream's record
what the proxy actually sent upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import anthropic
import pytest

from conftest import (
    ANTHROPIC_PREFIXES,
    CLIENT_API_KEY,
    IDENTITY,
    MODE_OF,
    MODEL,
    OAUTH_ACCESS,
    PROXY_TOKEN,
    SERVER_API_KEY,
    Recorded,
)

BETA_OAUTH = "oauth-2025-04-20"
BETA_CLAUDE_CODE = "claude-code-20250219"

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a place",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
    {
        "name": "calculate_distance",
        "description": "Distance between two coordinates",
        "input_schema": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("lat1", "lon1", "lat2", "lon2", "note")},
        },
    },
]
# What the simulated upstream's two parallel tool calls carry.
WEATHER_INPUT = {"location": "New York, NY", "unit": "celsius"}
DISTANCE_INPUT = {"lat1": "40.7128", "lon1": "-74.0060", "lat2": "34.0522", "lon2": "-118.2437", "note": "ünïcode ✓"}
SIM_THINKING = "The user wants a short answer. I will keep it brief."


def prefix_id(p: str) -> str:
    return p.strip("/") or "default"


@pytest.fixture(params=ANTHROPIC_PREFIXES, ids=prefix_id)
def prefix(request) -> str:
    return request.param


def make_client(base: str, api_key: str = CLIENT_API_KEY, capture=None, **kw) -> anthropic.Anthropic:
    http_client = anthropic.DefaultHttpxClient(event_hooks={"request": [capture]}) if capture else None
    return anthropic.Anthropic(base_url=base, api_key=api_key, max_retries=0, timeout=20, http_client=http_client, **kw)


@pytest.fixture
def client(proxy, prefix, capture) -> anthropic.Anthropic:
    return make_client(f"{proxy.base}{prefix}", capture=capture)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def check_upstream_request(rec: Recorded, prefix: str, capture, path: str = "/v1/messages") -> None:
    """What each mode must send upstream for the SDK's request (captured by `capture`)."""
    sent = capture.last
    sent_body = capture.last_body()
    mode = MODE_OF[prefix]
    assert rec.path == path, rec
    # The SDK's anthropic-version reaches the upstream unchanged in every mode.
    assert rec.header("anthropic-version") == sent.headers["anthropic-version"], rec
    if mode == "full":
        # The server's Claude subscription: OAuth token, the two beta tags, the identity block.
        assert rec.header("authorization") == f"Bearer {OAUTH_ACCESS}", rec
        assert rec.header("x-api-key") is None, rec
        assert CLIENT_API_KEY not in json.dumps(rec.headers), rec
        tags = rec.beta_tags()
        assert BETA_OAUTH in tags and BETA_CLAUDE_CODE in tags, tags
        assert len(tags) == len(set(tags)), f"duplicate beta tags: {tags}"
        body = rec.json()
        assert isinstance(body["system"], list), body.get("system")
        assert body["system"][0]["type"] == "text"
        assert body["system"][0]["text"] == IDENTITY
        # Claude CLI identity headers.
        assert rec.header("x-app") == "cli", rec
        assert re.fullmatch(r"claude-cli/\S+ \(external, cli\)", rec.header("user-agent") or ""), rec
        assert rec.header("anthropic-dangerous-direct-browser-access") == "true", rec
        # The rest of the body is the client's.
        sent_json = json.loads(sent_body)
        for k, v in sent_json.items():
            if k != "system":
                assert body[k] == v, (k, body.get(k), v)
    else:
        # Minimal and passthrough: the client's API key as x-api-key (the SDK sent it as
        # Authorization: Bearer), never as a bearer token; the body byte for byte.
        assert sent.headers.get("authorization") == f"Bearer {CLIENT_API_KEY}"
        assert rec.header("x-api-key") == CLIENT_API_KEY, rec
        assert rec.header("authorization") is None, rec
        assert rec.body == sent_body, "the body changed on its way upstream"
        assert BETA_OAUTH not in rec.beta_tags(), rec
        if mode == "pt":
            # Passthrough forwards the client's own headers.
            assert rec.header("user-agent") == sent.headers["user-agent"], rec
            assert rec.header("x-stainless-lang") == "python", rec


# --------------------------------------------------------------------------- messages


def test_create_message(client, prefix, sim, capture, tag):
    msg = client.messages.create(model=MODEL, max_tokens=256, messages=user(f"Say hello {tag}"))
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.model == MODEL
    assert [b.type for b in msg.content] == ["text"]
    assert tag in msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    check_upstream_request(sim.one_request_with(tag), prefix, capture)


def test_create_message_with_raw_response_headers(client, tag):
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user(tag))
    # The upstream's request-id and rate-limit headers are forwarded.
    assert (raw.headers.get("request-id") or "").startswith("req_sim_"), dict(raw.headers)
    assert raw.headers.get("anthropic-ratelimit-unified-status") == "allowed", dict(raw.headers)
    assert tag in raw.parse().content[0].text


def test_stream_message(client, prefix, sim, capture, tag):
    with client.messages.stream(model=MODEL, max_tokens=256, messages=user(f"Stream please {tag}")) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) >= 2, texts  # the upstream's deltas, not one blob
    assert "".join(texts) == final.content[0].text
    assert tag in final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    rec = sim.one_request_with(tag)
    assert rec.json()["stream"] is True
    check_upstream_request(rec, prefix, capture)


def test_stream_raw_events(client, tag):
    stream = client.messages.create(model=MODEL, max_tokens=64, stream=True, messages=user(f"{tag} [sim:deltas=5]"))
    types = [ev.type for ev in stream]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert types.count("content_block_delta") == 5
    assert "message_delta" in types


def test_stream_arrives_incrementally(client, tag):
    """Events reach the SDK as the upstream sends them (no buffering of the whole stream)."""
    gap = 0.15
    t0 = time.monotonic()
    arrivals = []
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:gap={int(gap * 1000)}] [sim:deltas=3]")
    ) as stream:
        for _ in stream.text_stream:
            arrivals.append(time.monotonic() - t0)
        stream.get_final_message()
    total = time.monotonic() - t0
    assert len(arrivals) == 3
    # Upstream: message_start, block start, ping, 3 deltas, block stop, message_delta,
    # message_stop, one gap apart: the first delta is due after 3 gaps, the end after 8.
    assert total >= 7 * gap
    assert arrivals[0] < total - 2 * gap, (arrivals, total)
    assert arrivals[-1] - arrivals[0] >= gap, arrivals


def test_unknown_stream_event_is_tolerated(client, prefix, tag):
    stream = client.messages.create(
        model=MODEL, max_tokens=64, stream=True, messages=user(f"{tag} [sim:unknown-event]")
    )
    events = list(stream)
    types = [ev.type for ev in events]
    assert types[-1] == "message_stop", types
    text = "".join(ev.delta.text for ev in events if ev.type == "content_block_delta")
    assert tag in text
    if MODE_OF[prefix] == "pt":
        assert "sim_future_event" in types, types


def test_cache_usage(client, tag):
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:cache]"))
    assert msg.usage.cache_read_input_tokens == 8192
    assert msg.usage.cache_creation_input_tokens == 2048
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user(f"{tag}b [sim:cache]")) as s:
        final = s.get_final_message()
    assert final.usage.cache_read_input_tokens == 8192
    assert final.usage.cache_creation_input_tokens == 2048
    assert final.usage.output_tokens > 1


# --------------------------------------------------------------------------- tools


def _tool_round_trip(client: anthropic.Anthropic, tag: str, stream: bool):
    def call(messages):
        kw = dict(model=MODEL, max_tokens=1024, tools=TOOLS, messages=messages)
        if stream:
            with client.messages.stream(**kw) as s:
                for _ in s:
                    pass
                return s.get_final_message()
        return client.messages.create(**kw)

    messages = user(f"What's the weather in New York and how far is LA? [sim:tools] {tag}")
    first = call(messages)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 2, first.content
    assert [u.name for u in uses] == ["get_weather", "calculate_distance"]
    assert uses[0].input == WEATHER_INPUT
    assert uses[1].input == DISTANCE_INPUT
    assert all(u.id.startswith("toolu_") for u in uses) and uses[0].id != uses[1].id
    messages = messages + [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "22°C and sunny"},
                {"type": "tool_result", "tool_use_id": uses[1].id, "content": [{"type": "text", "text": " / 3936 km"}]},
            ],
        },
    ]
    final = call(messages)
    assert final.stop_reason == "end_turn"
    text = "".join(b.text for b in final.content if b.type == "text")
    assert "Thanks, the tool returned: 22°C and sunny / 3936 km" in text, text


def test_tool_use_round_trip(client, tag):
    _tool_round_trip(client, tag, stream=False)


def test_tool_use_round_trip_streaming(client, tag):
    _tool_round_trip(client, tag, stream=True)


def test_streamed_tool_input_json_deltas(client, tag):
    """input_json_delta fragments (split mid-token by the upstream) concatenate to the input."""
    stream = client.messages.create(
        model=MODEL, max_tokens=256, tools=TOOLS, stream=True, messages=user(f"{tag} [sim:tools]")
    )
    parts: dict[int, str] = {}
    for ev in stream:
        if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
            parts[ev.index] = parts.get(ev.index, "") + ev.delta.partial_json
    assert [json.loads(v) for _, v in sorted(parts.items())] == [WEATHER_INPUT, DISTANCE_INPUT]


# --------------------------------------------------------------------------- thinking


def test_thinking(client, tag):
    msg = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user(f"Think first {tag} [sim:thinking]"),
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == SIM_THINKING
    assert msg.content[0].signature


def test_thinking_streaming(client, tag):
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user(f"Think first {tag} [sim:thinking]"),
    ) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds, kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == SIM_THINKING
    assert final.content[0].signature.startswith("EqQB")
    # The signed thinking block goes back in a later turn, unchanged.
    again = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user(f"Think first {tag}") + [
            {"role": "assistant", "content": final.content},
            {"role": "user", "content": f"And then? {tag}-2"},
        ],
    )
    assert again.stop_reason == "end_turn"


# --------------------------------------------------------------------------- other routes


def test_count_tokens(client, prefix, sim, capture, tag):
    res = client.messages.count_tokens(model=MODEL, messages=user(f"How many tokens? {tag}"))
    assert res.input_tokens > 0
    check_upstream_request(sim.one_request_with(tag), prefix, capture, path="/v1/messages/count_tokens")


def test_models_list(client, sim):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids
    assert all(i.startswith("claude-") for i in ids)


# --------------------------------------------------------------------------- errors


def test_rate_limit_error(client, sim, tag):
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:status=429]"))
    err = e.value
    assert err.status_code == 429
    assert err.body["error"]["type"] == "rate_limit_error"
    # What clients back off with.
    assert err.response.headers.get("retry-after") == "7"
    assert err.response.headers.get("anthropic-ratelimit-requests-remaining") == "0"
    assert err.response.headers.get("request-id") == "req_sim_error"
    assert len(sim.requests_with(tag)) == 1


def test_rate_limit_error_streaming(client, tag):
    with pytest.raises(anthropic.RateLimitError):
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:status=429]")) as s:
            s.get_final_message()


def test_overloaded_error(client, tag):
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:status=529]"))
    assert e.value.status_code == 529
    assert isinstance(e.value, anthropic.OverloadedError)
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_bad_request_error(client, tag):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:status=400]"))
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_midstream_error_raises_during_iteration(client, tag):
    got = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:error-midstream]")) as s:
            for text in s.text_stream:
                got.append(text)
    assert got, "the text before the error should have arrived"
    assert e.value.body["error"]["type"] == "overloaded_error", e.value.body


def test_midstream_error_raw_stream(client, tag):
    stream = client.messages.create(
        model=MODEL, max_tokens=64, stream=True, messages=user(f"{tag} [sim:error-midstream]")
    )
    seen = []
    with pytest.raises(anthropic.APIStatusError) as e:
        for ev in stream:
            seen.append(ev.type)
    assert seen[:2] == ["message_start", "content_block_start"], seen
    assert "overloaded" in str(e.value).lower()


def test_proxy_token_rejects_bad_key(token_proxy, prefix, sim, tag):
    bad = make_client(f"{token_proxy.base}{prefix}", api_key="sk-ant-api03-not-the-proxy-token")
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model=MODEL, max_tokens=64, messages=user(tag))
    assert e.value.status_code == 401
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    assert sim.requests_with(tag) == [], "a rejected request must not reach the upstream"


def test_proxy_token_accepted_and_never_forwarded(token_proxy, prefix, sim, tag):
    good = make_client(f"{token_proxy.base}{prefix}", api_key=PROXY_TOKEN)
    msg = good.messages.create(model=MODEL, max_tokens=64, messages=user(tag))
    assert tag in msg.content[0].text
    rec = sim.one_request_with(tag)
    # Only the server's own credential goes upstream (this proxy has no OAuth credentials).
    assert rec.header("x-api-key") == SERVER_API_KEY, rec
    assert PROXY_TOKEN not in json.dumps(rec.headers), rec


def test_placeholder_key_is_not_forwarded(proxy, prefix, sim, tag):
    dummy = make_client(f"{proxy.base}{prefix}", api_key="dummy")
    msg = dummy.messages.create(model=MODEL, max_tokens=64, messages=user(tag))
    assert tag in msg.content[0].text
    rec = sim.one_request_with(tag)
    assert "dummy" not in json.dumps(rec.headers), rec
    if MODE_OF[prefix] == "full":
        assert rec.header("authorization") == f"Bearer {OAUTH_ACCESS}", rec
    else:
        assert rec.header("x-api-key") == SERVER_API_KEY, rec


def test_full_mode_with_client_api_key(apikey_proxy, sim, capture, tag):
    """Without subscription credentials, full mode uses the client's API key (as x-api-key)."""
    c = make_client(f"{apikey_proxy.base}/full", capture=capture)
    msg = c.messages.create(model=MODEL, max_tokens=64, system="Be terse.", messages=user(tag))
    assert tag in msg.content[0].text
    rec = sim.one_request_with(tag)
    assert rec.header("x-api-key") == CLIENT_API_KEY, rec
    assert rec.header("authorization") is None, rec
    tags = rec.beta_tags()
    assert BETA_CLAUDE_CODE in tags and BETA_OAUTH not in tags, tags
    system = rec.json()["system"]
    assert system[0]["text"] == IDENTITY
    assert system[1]["type"] == "text" and system[1]["text"] == "Be terse.", system


def test_beta_tags_and_query_string(client, prefix, sim, tag):
    """The client's beta tags are kept (full mode adds its own, without duplicates) and the
    query string (Claude Code's ?beta=true) reaches the upstream."""
    msg = client.beta.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=user(tag),
        betas=["context-management-2025-06-27", BETA_CLAUDE_CODE],
        extra_query={"beta": "true"},
    )
    assert tag in msg.content[0].text
    rec = sim.one_request_with(tag)
    assert rec.query == "beta=true", rec
    tags = rec.beta_tags()
    assert len(tags) == len(set(tags)), f"duplicate beta tags: {tags}"
    if MODE_OF[prefix] == "full":
        assert set(tags) == {"context-management-2025-06-27", BETA_CLAUDE_CODE, BETA_OAUTH}, tags
    else:
        assert tags == ["context-management-2025-06-27", BETA_CLAUDE_CODE], tags


def test_identity_block_not_duplicated_and_stable(client, prefix, sim, tag):
    """A client that already identifies as Claude Code keeps one identity block; the injected
    block is the same in every request (prompt caching depends on it)."""
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": IDENTITY}, {"type": "text", "text": "More instructions."}],
        messages=user(f"{tag}-a"),
    )
    first = sim.one_request_with(f"{tag}-a").json()["system"]
    assert [b["text"] for b in first] == [IDENTITY, "More instructions."], first
    client.messages.create(model=MODEL, max_tokens=64, system="One.", messages=user(f"{tag}-b"))
    client.messages.create(model=MODEL, max_tokens=64, system="Two.", messages=user(f"{tag}-c"))
    b = sim.one_request_with(f"{tag}-b")
    c = sim.one_request_with(f"{tag}-c")
    if MODE_OF[prefix] == "full":
        sb, sc = b.json()["system"], c.json()["system"]
        assert sb[0] == sc[0] and sb[0]["text"] == IDENTITY
        # Byte-identical: the raw JSON of the injected block is the same in both bodies.
        start = '"system":['
        raw_b = b.body[b.body.index(start) :].split("One.")[0]
        raw_c = c.body[c.body.index(start) :].split("Two.")[0]
        assert IDENTITY in raw_b and raw_b == raw_c, (raw_b, raw_c)
    else:
        assert b.json()["system"] == "One."


def test_four_cache_control_blocks_are_accepted(client, tag):
    """A request already using the 4 cache_control blocks allowed must still go through
    (full mode may not add a fifth with its identity block)."""
    cc = {"type": "ephemeral"}
    tools = [dict(TOOLS[0], cache_control=cc)]
    msg = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        system=[{"type": "text", "text": "A", "cache_control": cc}, {"type": "text", "text": "B", "cache_control": cc}],
        messages=[{"role": "user", "content": [{"type": "text", "text": f"{tag} [sim:cache]", "cache_control": cc}]}],
    )
    assert msg.usage.cache_read_input_tokens == 8192


def test_malformed_json_is_a_bad_request(client, prefix):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post(
            "/v1/messages",
            cast_to=anthropic.types.Message,
            content=b'{"model": "claude-haiku-4-5", "messages": [',
            options={"headers": {"content-type": "application/json"}},
        )
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_not_found(client, prefix):
    path = "/v1/messages/nope" if MODE_OF[prefix] != "pt" else "/v2/nope"
    with pytest.raises(anthropic.NotFoundError) as e:
        client.get(path, cast_to=object)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "not_found_error"


def test_wrong_method_is_405(client, prefix):
    with pytest.raises(anthropic.APIStatusError) as e:
        client.get("/v1/messages", cast_to=object)
    assert e.value.status_code == 405
    assert e.value.body["type"] == "error"


def test_async_client_stream(proxy, prefix, tag):
    async def go():
        async with anthropic.AsyncAnthropic(
            base_url=f"{proxy.base}{prefix}", api_key=CLIENT_API_KEY, max_retries=0, timeout=20
        ) as c:
            async with c.messages.stream(
                model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:tools]"), tools=TOOLS
            ) as s:
                texts = [t async for t in s.text_stream]
                return texts, await s.get_final_message()

    texts, final = asyncio.run(go())
    assert "".join(texts) == final.content[0].text
    assert [b.input for b in final.content if b.type == "tool_use"] == [WEATHER_INPUT, DISTANCE_INPUT]


def test_concurrent_streams(client, tag):
    """Several streams at once through one proxy, each answered with its own text."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[str, str]:
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=user(f"{tag}-{i} [sim:gap=5]")
        ) as s:
            return f"{tag}-{i}", s.get_final_text()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for want, text in results:
        assert want in text, (want, text)


def test_client_timeout_then_proxy_still_serves(client, tag):
    """A client that gives up (timeout) leaves the proxy healthy for the next request."""
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.4).messages.create(
            model=MODEL, max_tokens=64, messages=user(f"{tag} [sim:delay=1500]")
        )
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=user(f"{tag}-after"))
    assert f"{tag}-after" in msg.content[0].text


def test_health_reports_credentials_without_secrets(proxy, apikey_proxy, token_proxy):
    h = proxy.health()
    assert h["status"] == "ok"
    assert h["credentials"]["active"] == "oauth", h
    assert apikey_proxy.health()["credentials"]["active"] == "api_key"
    assert token_proxy.health()["auth_required"] is True
    for p in (proxy, apikey_proxy, token_proxy):
        text = json.dumps(p.health())
        for secret in (OAUTH_ACCESS, SERVER_API_KEY, PROXY_TOKEN, "sk-ant-ort01"):
            assert secret not in text, f"/health exposes a secret: {text}"


def test_unreachable_upstream_is_502(dead_upstream_proxy, prefix):
    c = make_client(f"{dead_upstream_proxy.base}{prefix}")
    with pytest.raises(anthropic.InternalServerError) as e:
        c.messages.create(model=MODEL, max_tokens=64, messages=user("hello"))
    assert e.value.status_code == 502
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "api_error", e.value.body


# --------------------------------------------------------------------------- 2026 API surface
# Files, Message Batches and models.retrieve (issue 17), in every mode: full mode on the
# server's subscription, minimal and passthrough on the client's key.

FILE_BYTES = bytes(range(256)) * 512 + "ünïcode ✓".encode()


def check_mode_credential(rec: Recorded, prefix: str) -> None:
    if MODE_OF[prefix] == "full":
        # The subscription, unless an earlier test's 429 benched it (then the server's key).
        if rec.header("x-api-key") is None:
            assert rec.header("authorization") == f"Bearer {OAUTH_ACCESS}", rec
            assert BETA_OAUTH in rec.beta_tags(), rec
        else:
            assert rec.header("x-api-key") == SERVER_API_KEY, rec
            assert rec.header("authorization") is None, rec
        assert BETA_CLAUDE_CODE in rec.beta_tags(), rec
    else:
        assert rec.header("x-api-key") == CLIENT_API_KEY, rec
        assert rec.header("authorization") is None, rec
        assert BETA_OAUTH not in rec.beta_tags(), rec


@pytest.mark.parametrize("api", ["ga", "beta"])
def test_files_upload_list_download_delete(client, prefix, sim, tag, api):
    files = client.beta.files if api == "beta" else client.files
    name = f"{tag}.bin"
    meta = files.upload(file=(name, FILE_BYTES, "application/octet-stream"))
    assert meta.id.startswith("file_"), meta
    assert meta.size_bytes == len(FILE_BYTES)
    assert meta.filename == name

    # The upload reached the upstream whole, multipart, with the mode's credential.
    rec = sim.one_request_with(tag)
    assert rec.method == "POST" and rec.path == "/v1/files", rec
    assert rec.header("content-type").startswith("multipart/form-data; boundary="), rec
    check_mode_credential(rec, prefix)

    assert meta.id in [f.id for f in files.list(limit=100)]
    assert files.retrieve_metadata(meta.id).filename == name
    assert files.download(meta.id).read() == FILE_BYTES
    assert files.delete(meta.id).id == meta.id
    with pytest.raises(anthropic.NotFoundError) as e:
        files.retrieve_metadata(meta.id)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_files_upload_without_a_file_is_a_bad_request(client, prefix):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post(
            "/v1/files",
            cast_to=object,
            content=b"not multipart",
            options={"headers": {"content-type": "text/plain"}},
        )
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_message_batches_create_retrieve_results(client, prefix, sim, tag):
    batch = client.messages.batches.create(
        requests=[
            {"custom_id": "one", "params": {"model": MODEL, "max_tokens": 64, "messages": user(f"{tag} one")}},
            {"custom_id": "two", "params": {"model": MODEL, "max_tokens": 64, "messages": user(f"{tag} two")}},
        ]
    )
    assert batch.id.startswith("msgbatch_"), batch
    assert batch.processing_status == "in_progress"
    rec = sim.one_request_with(tag)
    assert rec.path == "/v1/messages/batches", rec
    check_mode_credential(rec, prefix)
    if MODE_OF[prefix] == "full":
        # Full mode shapes each request as it shapes a message.
        for r in rec.json()["requests"]:
            assert r["params"]["system"][0]["text"] == IDENTITY
    else:
        assert rec.json()["requests"][0]["params"]["messages"] == user(f"{tag} one")

    got = client.messages.batches.retrieve(batch.id)
    assert got.processing_status == "ended"
    assert got.request_counts.succeeded == 2
    # The results URL leads back through the proxy, in the client's mode (else the SDK would
    # fetch the results from the upstream directly).
    assert got.results_url.startswith(str(client.base_url).rstrip("/") + "/v1/"), got.results_url
    assert batch.id in [b.id for b in client.messages.batches.list(limit=20)]

    results = {r.custom_id: r for r in client.messages.batches.results(batch.id)}
    assert set(results) == {"one", "two"}
    for r in results.values():
        assert r.result.type == "succeeded", r
        assert r.result.message.content[0].type == "text"
        assert r.result.message.usage.output_tokens > 0


def test_message_batches_cancel_and_bad_batch(client, prefix, tag):
    batch = client.messages.batches.create(
        requests=[{"custom_id": "slow", "params": {"model": MODEL, "max_tokens": 8,
                                                   "messages": user(f"{tag} [sim:batch-slow]")}}]
    )
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    assert client.messages.batches.retrieve(batch.id).request_counts.canceled == 1
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_unknown")


def test_models_retrieve(client, prefix, sim):
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-none-0")


def test_skills_create_list_retrieve_delete(client, prefix, sim, tag):
    skill_md = f"---\nname: {tag}-skill\ndescription: Formats reports.\n---\nUse the house style.\n"
    skill = client.beta.skills.create(
        files=[
            (f"{tag}/SKILL.md", skill_md.encode(), "text/markdown"),
            (f"{tag}/scripts/format.py", b"print('formatted')\n", "text/x-python"),
        ],
        betas=["skills-2025-10-02"],
    )
    assert skill.id.startswith("skill_") and skill.type == "skill", skill
    assert skill.display_name == f"{tag}-skill", "named by the SKILL.md frontmatter"
    assert skill.source == "custom" and skill.latest_version_id

    # Both files reached the upstream in one multipart body, with the mode's credential and
    # the client's beta tag.
    rec = sim.one_request_with(tag)
    assert rec.method == "POST" and rec.path == "/v1/skills", rec
    assert rec.header("content-type").startswith("multipart/form-data; boundary="), rec
    assert "print('formatted')" in rec.body, rec
    assert "skills-2025-10-02" in rec.beta_tags(), rec
    check_mode_credential(rec, prefix)

    assert skill.id in [s.id for s in client.beta.skills.list(limit=100)]
    assert client.beta.skills.retrieve(skill.id).display_name == f"{tag}-skill"
    assert client.beta.skills.delete(skill.id).id == skill.id
    with pytest.raises(anthropic.NotFoundError):
        client.beta.skills.retrieve(skill.id)
    # A skill without its SKILL.md is refused by the service, in Anthropic's envelope.
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.skills.create(files=[(f"{tag}/README.md", b"hi", "text/markdown")])
    assert e.value.body["error"]["type"] == "invalid_request_error"

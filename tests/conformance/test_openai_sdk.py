"""The official OpenAI Python SDK driving ccproxy's OpenAI-compatible routes.

Full and minimal mode convert to the Messages API (checked at the simulated upstream);
passthrough relays the request unchanged to the upstream's own
``POST /v1/chat/completions``.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone

import openai
import pytest
from openai.types.chat import ChatCompletion

from conftest import (
    CLIENT_API_KEY,
    IDENTITY,
    MODE_OF,
    OAUTH_ACCESS,
    OPENAI_PREFIXES,
    PROXY_TOKEN,
    SERVER_API_KEY,
    Recorded,
)

# A 1x1 transparent PNG.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
IMAGE_URL = "https://example.com/images/cat.png"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a place",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculate_distance",
            "description": "Distance between two coordinates",
            "parameters": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("lat1", "lon1", "lat2", "lon2", "note")},
            },
        },
    },
]
WEATHER_ARGS = {"location": "New York, NY", "unit": "celsius"}
DISTANCE_ARGS = {"lat1": "40.7128", "lon1": "-74.0060", "lat2": "34.0522", "lon2": "-118.2437", "note": "ünïcode ✓"}
SIM_THINKING = "The user wants a short answer. I will keep it brief."


def prefix_id(p: str) -> str:
    return p.strip("/") or "default"


@pytest.fixture(params=OPENAI_PREFIXES, ids=prefix_id)
def prefix(request) -> str:
    return request.param


def make_client(base: str, api_key: str = CLIENT_API_KEY, capture=None) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [capture]}) if capture else None
    return openai.OpenAI(base_url=base, api_key=api_key, max_retries=0, timeout=20, http_client=http_client)


@pytest.fixture
def client(proxy, prefix, capture) -> openai.OpenAI:
    return make_client(f"{proxy.base}{prefix}/openai/v1", capture=capture)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def check_upstream(rec: Recorded, prefix: str, capture) -> dict | None:
    """The upstream request: converted Messages API in full/min, the bytes unchanged in pt.
    Returns the converted body (full/min)."""
    mode = MODE_OF[prefix]
    if mode == "pt":
        assert rec.path == "/v1/chat/completions", rec
        assert rec.body == capture.last_body(), "passthrough changed the request body"
        assert rec.header("x-api-key") == CLIENT_API_KEY, rec
        assert rec.header("authorization") is None, rec
        return None
    assert rec.path == "/v1/messages", rec
    body = rec.json()
    assert body["model"].startswith("claude-"), body["model"]
    assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0
    if mode == "full":
        assert rec.header("authorization") == f"Bearer {OAUTH_ACCESS}", rec
        assert body["system"][0]["text"] == IDENTITY, body.get("system")
    else:
        assert rec.header("x-api-key") == CLIENT_API_KEY, rec
        assert rec.header("authorization") is None, rec
        assert "You are Claude Code" not in json.dumps(body.get("system", ""))
    return body


def collect_tool_calls(chunks) -> dict[int, dict]:
    """Assembles streamed tool calls by index, checking the fragment protocol."""
    calls: dict[int, dict] = {}
    for ch in chunks:
        for choice in ch.choices:
            for tc in choice.delta.tool_calls or []:
                assert tc.index is not None
                if tc.index not in calls:
                    # First fragment: id, type, name.
                    assert tc.id and tc.type == "function" and tc.function.name, tc
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments or ""}
                else:
                    # Later fragments: arguments only; a call is never announced twice.
                    assert tc.id is None and (tc.function.name is None), f"tool call {tc.index} re-announced: {tc}"
                    calls[tc.index]["arguments"] += tc.function.arguments or ""
    return calls


# --------------------------------------------------------------------------- chat


def test_plain_chat(client, prefix, sim, capture, tag):
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hello {tag}"}],
    )
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o"
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    assert tag in choice.message.content
    assert choice.finish_reason == "stop"
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    body = check_upstream(sim.one_request_with(tag), prefix, capture)
    if body is not None:
        assert "Be brief." in json.dumps(body["system"])
        assert "sonnet" in body["model"], body["model"]  # gpt-4o maps to a current Sonnet
        assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user", body["messages"]
        content = body["messages"][0]["content"]
        if isinstance(content, list):
            content = "".join(b["text"] for b in content if b["type"] == "text")
        assert content == f"Hello {tag}"


def test_stream(client, tag):
    stream = client.chat.completions.create(model="gpt-4o", messages=user(f"Stream {tag}"), stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == 1, "every chunk carries the same id"
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-4o" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello!") and tag in text, text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Several text deltas, as the upstream sent them.
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2


def test_stream_matches_non_stream(client, tag):
    text = client.chat.completions.create(model="gpt-4o", messages=user(tag)).choices[0].message.content
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user(tag), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_stream_include_usage(client, tag):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=user(tag), stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_cache_usage(client, tag):
    resp = client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:cache]"))
    u = resp.usage
    # prompt_tokens counts cached reads and writes too; cached_tokens = the reads.
    assert u.prompt_tokens > 8192 + 2048
    assert u.prompt_tokens_details.cached_tokens == 8192
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=user(f"{tag} [sim:cache]"), stream=True, stream_options={"include_usage": True}
        )
    )
    su = chunks[-1].usage
    assert su.prompt_tokens > 8192 + 2048
    assert su.prompt_tokens_details.cached_tokens == 8192
    assert su.completion_tokens > 1


@pytest.mark.parametrize(
    "stop, finish", [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")]
)
def test_finish_reason_mapping(client, tag, stop, finish):
    resp = client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:stop={stop}]"))
    assert resp.choices[0].finish_reason == finish
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:stop={stop}]"), stream=True)
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [finish]


def test_reasoning_content(client, tag):
    resp = client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:thinking]"))
    msg = resp.choices[0].message
    assert getattr(msg, "reasoning_content", None) == SIM_THINKING, msg
    assert tag in msg.content
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:thinking]"), stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == SIM_THINKING
    assert tag in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --------------------------------------------------------------------------- tools


def test_parallel_tool_calls(client, tag):
    resp = client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:tools]"), tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    assert [c.type for c in calls] == ["function", "function"]
    assert [c.function.name for c in calls] == ["get_weather", "calculate_distance"]
    assert calls[0].id and calls[1].id and calls[0].id != calls[1].id
    assert json.loads(calls[0].function.arguments) == WEATHER_ARGS
    assert json.loads(calls[1].function.arguments) == DISTANCE_ARGS


@pytest.mark.parametrize("with_thinking", [False, True], ids=["plain", "after-thinking"])
def test_parallel_tool_calls_streaming(client, tag, with_thinking):
    # With a thinking block first, the tool calls are content blocks 2 and 3 upstream:
    # their OpenAI index still counts tool calls (0, 1).
    if with_thinking:
        tag += " [sim:thinking]"
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:tools]"), tools=TOOLS, stream=True)
    )
    assert len({c.id for c in chunks}) == 1
    calls = collect_tool_calls(chunks)
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "calculate_distance"]
    assert calls[0]["id"] != calls[1]["id"]
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
    assert json.loads(calls[1]["arguments"]) == DISTANCE_ARGS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    # Streamed arguments are the exact JSON of the non-stream answer.
    resp = client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:tools]"), tools=TOOLS)
    assert [c.function.arguments for c in resp.choices[0].message.tool_calls] == [
        calls[0]["arguments"],
        calls[1]["arguments"],
    ]


def _tool_loop(client: openai.OpenAI, prefix: str, sim, tag: str, stream: bool):
    messages = user(f"Weather in New York and the distance to LA? [sim:tools] {tag}")
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS, stream=True))
        calls = collect_tool_calls(chunks)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) or None
        tool_calls = [
            {"id": calls[i]["id"], "type": "function", "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]}}
            for i in sorted(calls)
        ]
    else:
        resp = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
        assert resp.choices[0].finish_reason == "tool_calls"
        content = resp.choices[0].message.content
        tool_calls = [tc.model_dump(exclude_none=True) for tc in resp.choices[0].message.tool_calls]
    assert len(tool_calls) == 2
    tag2 = f"{tag}-answer"
    messages = messages + [
        {"role": "assistant", "content": content, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": f"22°C and sunny {tag2}"},
        {"role": "tool", "tool_call_id": tool_calls[1]["id"], "content": " / 3936 km"},
    ]
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS, stream=True))
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        assert collect_tool_calls(chunks) == {}
    else:
        resp = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
        answer = resp.choices[0].message.content
        assert resp.choices[0].finish_reason == "stop"
        assert not resp.choices[0].message.tool_calls
    assert f"Thanks, the tool returned: 22°C and sunny {tag2} / 3936 km" in answer, answer
    if MODE_OF[prefix] != "pt":
        # Upstream: the assistant's tool_use blocks (ids kept), then one user turn with
        # both tool_result blocks in order.
        body = sim.one_request_with(tag2).json()
        assistant, results = body["messages"][-2], body["messages"][-1]
        assert assistant["role"] == "assistant"
        uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
        assert [u["id"] for u in uses] == [tc["id"] for tc in tool_calls]
        assert [u["input"] for u in uses] == [WEATHER_ARGS, DISTANCE_ARGS]
        assert results["role"] == "user"
        assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result"]
        assert [b["tool_use_id"] for b in results["content"]] == [tc["id"] for tc in tool_calls]


def test_tool_loop(client, prefix, sim, tag):
    _tool_loop(client, prefix, sim, tag, stream=False)


def test_tool_loop_streaming(client, prefix, sim, tag):
    _tool_loop(client, prefix, sim, tag, stream=True)


# --------------------------------------------------------------------------- images


def test_images(client, prefix, sim, capture, tag):
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"What is in these images? {tag}"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                    {"type": "image_url", "image_url": {"url": IMAGE_URL}},
                ],
            }
        ],
    )
    assert tag in resp.choices[0].message.content
    body = check_upstream(sim.one_request_with(tag), prefix, capture)
    if body is None:
        return
    blocks = body["messages"][-1]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert len(images) == 2, blocks
    assert images[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_B64}
    assert images[1]["source"] == {"type": "url", "url": IMAGE_URL}
    texts = [b for b in blocks if b["type"] == "text"]
    assert texts and tag in texts[0]["text"]


# --------------------------------------------------------------------------- models


def test_models_list(client, prefix):
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert any(i.startswith("claude-") for i in ids), ids
    if MODE_OF[prefix] != "pt":
        assert all(m.object == "model" for m in models), models


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_models_created_is_the_models_date(client, prefix):
    """OpenAI's `created` is when the model was created: the upstream's `created_at`
    (2025-09-29T00:00:00Z for every model of the simulated upstream), not the time of the request."""
    expected = int(datetime(2025, 9, 29, tzinfo=timezone.utc).timestamp())
    converted = [m for m in client.models.list() if m.owned_by == "anthropic"]
    assert converted
    assert {m.created for m in converted} == {expected}, [(m.id, m.created) for m in converted]


# --------------------------------------------------------------------------- errors


def assert_openai_envelope(err: openai.APIStatusError) -> dict:
    body = err.body
    assert isinstance(body, dict), body
    assert {"message", "type", "param", "code"} <= set(body), body
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_rate_limit_error(client, sim, tag):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:status=429]"))
    assert e.value.status_code == 429
    assert_openai_envelope(e.value)
    assert len(sim.requests_with(tag)) == 1


@pytest.mark.parametrize("prefix", ["", "/min", "/pt"], ids=prefix_id)
def test_rate_limit_error_keeps_retry_after(client, tag):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:status=429]"))
    assert e.value.response.headers.get("retry-after") == "7", dict(e.value.response.headers)


def test_rate_limit_error_streaming(client, tag):
    with pytest.raises(openai.RateLimitError):
        for _ in client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:status=429]"), stream=True):
            pass


def test_bad_request_error(client, tag):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:status=400]"))
    assert e.value.status_code == 400
    assert_openai_envelope(e.value)


def test_overloaded_error(client, tag):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(f"{tag} [sim:status=529]"))
    assert e.value.status_code in (503, 529)
    assert_openai_envelope(e.value)


def test_n_greater_than_one_is_rejected(client, prefix, sim, tag):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(tag), n=2)
    body = assert_openai_envelope(e.value)
    assert body["param"] == "n" or re.search(r"(^|[^\w])n([^\w]|$)", body["message"]), body
    if MODE_OF[prefix] != "pt":
        assert sim.requests_with(tag) == [], "a request the proxy rejects must not reach the upstream"


def test_missing_messages_is_rejected(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"model": "gpt-4o"}, cast_to=ChatCompletion)
    body = assert_openai_envelope(e.value)
    assert "messages" in body["message"] or body["param"] == "messages", body


def test_malformed_json_is_rejected(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            content=b'{"model": "gpt-4o", "messages": [',
            options={"headers": {"content-type": "application/json"}},
        )
    assert_openai_envelope(e.value)


def test_midstream_error_raises_during_iteration(client, tag):
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=user(f"{tag} [sim:error-midstream]"), stream=True
        ):
            got.append(chunk)
    assert got, "chunks before the error should have arrived"
    assert "overload" in str(e.value).lower(), e.value


def test_proxy_token_rejects_bad_key(token_proxy, prefix, sim, tag):
    bad = make_client(f"{token_proxy.base}{prefix}/openai/v1", api_key="sk-ant-api03-not-the-proxy-token")
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o", messages=user(tag))
    assert e.value.status_code == 401
    assert_openai_envelope(e.value)
    assert sim.requests_with(tag) == []


def test_proxy_token_accepted(token_proxy, prefix, sim, tag):
    good = make_client(f"{token_proxy.base}{prefix}/openai/v1", api_key=PROXY_TOKEN)
    resp = good.chat.completions.create(model="gpt-4o", messages=user(tag))
    assert tag in resp.choices[0].message.content
    rec = sim.one_request_with(tag)
    assert rec.header("x-api-key") == SERVER_API_KEY, rec
    assert PROXY_TOKEN not in json.dumps(rec.headers), rec


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_request_fields_convert(client, prefix, sim, capture, tag):
    """The fields an SDK user sets reach the upstream in their Messages API form."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": f"Weather? {tag}"},
        ],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_completion_tokens=321,
        temperature=0.25,
        top_p=0.5,
        stop=["END", "STOP"],
        user="user-1234",
    )
    body = sim.one_request_with(tag).json()
    assert body["max_tokens"] == 321
    assert body["temperature"] == 0.25 and body["top_p"] == 0.5
    assert body["stop_sequences"] == ["END", "STOP"]
    assert body["metadata"]["user_id"] == "user-1234"
    assert "Answer in French." in json.dumps(body["system"])
    assert body["tool_choice"]["type"] == "tool" and body["tool_choice"]["name"] == "get_weather"
    assert body["tool_choice"].get("disable_parallel_tool_use") is True, body["tool_choice"]
    assert [t["name"] for t in body["tools"]] == ["get_weather", "calculate_distance"]
    assert body["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    assert "haiku" in body["model"], body["model"]


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_reasoning_effort_becomes_thinking_budget(client, prefix, sim, tag):
    client.chat.completions.create(
        model="gpt-4o", messages=user(tag), reasoning_effort="low", max_completion_tokens=4000
    )
    body = sim.one_request_with(tag).json()
    thinking = body.get("thinking")
    assert thinking and thinking["type"] in ("enabled", "adaptive"), body
    if thinking["type"] == "enabled":
        # Anthropic's minimum budget is 1024, and it must stay below max_tokens.
        assert 1024 <= thinking["budget_tokens"] < body["max_tokens"], body
    assert "temperature" not in body or body["temperature"] == 1


@pytest.mark.parametrize(
    "messages, field",
    [
        ([], "messages"),
        ([{"role": "wizard", "content": "hi"}], "role"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}], "tool"),
        ([{"role": "user", "content": 42}], "content"),
    ],
    ids=["empty", "unknown-role", "orphan-tool-message", "wrong-type"],
)
def test_invalid_messages_are_rejected(client, messages, field):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    body = assert_openai_envelope(e.value)
    named = f"{body.get('param')} {body['message']}".lower()
    assert field in named, body


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_response_format_json_becomes_an_instruction(client, prefix, sim, tag):
    client.chat.completions.create(model="gpt-4o", messages=user(tag), response_format={"type": "json_object"})
    body = sim.one_request_with(tag).json()
    assert "json" in (json.dumps(body.get("system", "")) + json.dumps(body["messages"])).lower()
    assert "response_format" not in body


def test_async_client_stream(proxy, prefix, tag):
    async def go():
        async with openai.AsyncOpenAI(
            base_url=f"{proxy.base}{prefix}/openai/v1", api_key=CLIENT_API_KEY, max_retries=0, timeout=20
        ) as c:
            stream = await c.chat.completions.create(
                model="gpt-4o", messages=user(f"{tag} [sim:tools]"), tools=TOOLS, stream=True
            )
            return [ch async for ch in stream]

    chunks = asyncio.run(go())
    calls = collect_tool_calls(chunks)
    assert [json.loads(calls[i]["arguments"]) for i in sorted(calls)] == [WEATHER_ARGS, DISTANCE_ARGS]


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
@pytest.mark.parametrize(
    "tool_choice, expected",
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "calculate_distance"}}, {"type": "tool", "name": "calculate_distance"}),
    ],
    ids=["auto", "required", "named"],
)
def test_tool_choice_converts(client, prefix, sim, tag, tool_choice, expected):
    client.chat.completions.create(model="gpt-4o", messages=user(tag), tools=TOOLS, tool_choice=tool_choice)
    body = sim.one_request_with(tag).json()
    got = {k: v for k, v in body["tool_choice"].items() if k != "disable_parallel_tool_use"}
    assert got == expected, body["tool_choice"]


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_tool_choice_none(client, prefix, sim, tag):
    resp = client.chat.completions.create(model="gpt-4o", messages=user(tag), tools=TOOLS, tool_choice="none")
    assert tag in resp.choices[0].message.content
    body = sim.one_request_with(tag).json()
    assert body.get("tool_choice") == {"type": "none"} or "tools" not in body, body


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_legacy_functions(client, prefix, sim, tag):
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=user(f"{tag} [sim:tools]"),
        functions=[t["function"] for t in TOOLS],
        function_call={"name": "get_weather"},
    )
    body = sim.one_request_with(tag).json()
    assert [t["name"] for t in body["tools"]] == ["get_weather", "calculate_distance"]
    assert body["tool_choice"]["type"] == "tool" and body["tool_choice"]["name"] == "get_weather"
    msg = resp.choices[0].message
    # The model's calls come back, as tool_calls or (legacy) function_call.
    if msg.tool_calls:
        assert json.loads(msg.tool_calls[0].function.arguments) == WEATHER_ARGS
    else:
        assert msg.function_call is not None and msg.function_call.name == "get_weather"
        assert json.loads(msg.function_call.arguments) == WEATHER_ARGS


def test_unreachable_upstream_is_502(dead_upstream_proxy, prefix):
    c = make_client(f"{dead_upstream_proxy.base}{prefix}/openai/v1")
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="gpt-4o", messages=user("hello"))
    assert e.value.status_code == 502
    assert_openai_envelope(e.value)


# ---- the Responses API (full and minimal; passthrough has none upstream) ----

RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    }
]


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_create(client, tag):
    r = client.responses.create(model="gpt-4o", instructions="Be brief.", input=f"hello {tag}")
    assert r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.model == "gpt-4o"
    assert r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_stream(client, tag):
    with client.responses.stream(model="gpt-4o", input=f"hello {tag} [sim:deltas=4]") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_function_tool_loop(client, tag):
    first = client.responses.create(
        model="gpt-4o", input=f"weather? {tag} [sim:tools]", tools=RESPONSES_TOOLS
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    args = json.loads(calls[0].arguments)
    assert isinstance(args["location"], str)
    history = [{"role": "user", "content": f"weather? {tag} [sim:tools]"}]
    history += [o.model_dump(exclude_none=True) for o in first.output]
    history += [
        {"type": "function_call_output", "call_id": c.call_id, "output": "18 C, sunny"} for c in calls
    ]
    second = client.responses.create(model="gpt-4o", input=history, tools=RESPONSES_TOOLS)
    assert second.status == "completed"
    assert second.output_text


# ---- the Responses store: previous_response_id, retrieve, delete, input items ----


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_previous_response_id_chain(client, sim, tag):
    first = client.responses.create(model="gpt-4o", input=f"my name is Ada {tag}")
    second = client.responses.create(
        model="gpt-4o", input=f"what is my name? {tag}-2", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    third = client.responses.create(
        model="gpt-4o", input=f"once more {tag}-3", previous_response_id=second.id
    )
    assert third.status == "completed"
    # Upstream: the whole conversation, earlier answers included.
    body = sim.one_request_with(f"{tag}-3").json()
    texts = json.dumps(body["messages"])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert f"my name is Ada {tag}" in texts and f"what is my name? {tag}-2" in texts
    assert first.output_text[:20] in texts


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_stream_then_continue(client, sim, tag):
    with client.responses.stream(model="gpt-4o", input=f"hello {tag}") as stream:
        final = stream.get_final_response()
    nxt = client.responses.create(model="gpt-4o", input=f"and then {tag}-2", previous_response_id=final.id)
    assert nxt.status == "completed"
    body = sim.one_request_with(f"{tag}-2").json()
    assert len(body["messages"]) == 3


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_retrieve_input_items_delete(client, tag):
    created = client.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": f"one {tag}"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": f"three {tag}"},
        ],
    )
    got = client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text
    assert got.status == "completed"

    items = client.responses.input_items.list(created.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert all(i.id for i in items.data)
    # Pagination: the SDK follows `after` itself.
    paged = list(client.responses.input_items.list(created.id, order="asc", limit=1))
    assert [i.id for i in paged] == [i.id for i in items.data]
    newest = client.responses.input_items.list(created.id, limit=1)
    assert newest.data[0].id == items.data[-1].id and newest.has_more

    deleted = client.responses.delete(created.id)
    assert deleted is None  # the SDK returns nothing for a 200
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(created.id)
    assert_openai_envelope(e.value)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-4o", input="x", previous_response_id=created.id)
    assert assert_openai_envelope(e.value)["param"] == "previous_response_id"


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_store_false_is_not_kept(client, tag):
    r = client.responses.create(model="gpt-4o", input=f"hi {tag}", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_input_tokens(client, tag):
    r = client.responses.input_tokens.count(model="gpt-4o", input=f"count these {tag}")
    assert r.object == "response.input_tokens"
    assert r.input_tokens > 0


@pytest.mark.parametrize("prefix", ["", "/min"], ids=prefix_id)
def test_responses_structured_output(client, sim, tag):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="gpt-4o",
        input=f"weather in Paris as JSON {tag}",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}},
    )
    assert r.status == "completed"
    assert r.text.format.type == "json_schema"
    body = sim.one_request_with(tag).json()
    # Either native structured output or the schema as an instruction reaches the upstream.
    assert "temp_c" in json.dumps(body.get("output_config", {})) + json.dumps(body.get("system", ""))

"""The OpenAI Python SDK's Responses WebSocket client (``client.responses.connect()``)
driving ccproxy's WebSocket mode: responses in sequence on one socket, a continuation with
``previous_response_id`` and ``store=False`` (held by the socket), and a function-tool loop.
Full and minimal mode; passthrough has no Responses endpoint upstream."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import CLIENT_API_KEY

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    }
]

PREFIXES = ["", "/min"]


def wait_for_response(conn):
    """Events until the response ends: (the final response, the event types seen)."""
    kinds = []
    for event in conn:
        kinds.append(event.type)
        if event.type == "response.completed":
            return event.response, kinds
        if event.type in ("response.failed", "response.incomplete", "error"):
            raise AssertionError(f"response did not complete: {event}")
    raise AssertionError(f"socket closed before the response finished: {kinds}")


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: p.strip("/") or "default")
def test_websocket_continuation_without_store(proxy, sim, prefix, tag):
    client = openai.OpenAI(base_url=f"{proxy.base}{prefix}/openai/v1", api_key=CLIENT_API_KEY, max_retries=0)
    with client.responses.connect() as conn:
        conn.send({"type": "response.create", "model": "gpt-4o", "store": False,
                   "input": f"remember pineapple {tag}"})
        first, kinds = wait_for_response(conn)
        assert kinds[0] == "response.created"
        assert "response.output_text.delta" in kinds
        assert first.status == "completed" and first.output_text
        conn.send({"type": "response.create", "model": "gpt-4o", "store": False,
                   "previous_response_id": first.id, "input": f"which fruit? {tag}"})
        second, _ = wait_for_response(conn)
        assert second.previous_response_id == first.id
        assert second.output_text
    ups = sim.requests_with(tag)
    assert len(ups) == 2, ups
    msgs = json.loads(ups[1]["body"])["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "remember pineapple" in json.dumps(msgs[0])


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: p.strip("/") or "default")
def test_websocket_function_tool_loop(proxy, sim, prefix, tag):
    client = openai.OpenAI(base_url=f"{proxy.base}{prefix}/openai/v1", api_key=CLIENT_API_KEY, max_retries=0)
    with client.responses.connect() as conn:
        conn.send({"type": "response.create", "model": "gpt-4o", "store": False, "tools": TOOLS,
                   "input": f"weather? {tag} [sim:tools]"})
        first, kinds = wait_for_response(conn)
        assert "response.function_call_arguments.delta" in kinds
        calls = [o for o in first.output if o.type == "function_call"]
        assert calls and calls[0].name == "get_weather"
        assert isinstance(json.loads(calls[0].arguments)["location"], str)
        conn.send({"type": "response.create", "model": "gpt-4o", "store": False, "tools": TOOLS,
                   "previous_response_id": first.id,
                   "input": [{"type": "function_call_output", "call_id": calls[0].call_id,
                              "output": "18 C, sunny"}]})
        second, _ = wait_for_response(conn)
        assert second.output_text
    body = json.loads(sim.requests_with(tag)[-1]["body"])
    result = body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == calls[0].call_id

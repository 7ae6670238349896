"""The OpenAI Agents SDK (`openai-agents`) running an agent with one function tool through
ccproxy's Responses route (OpenAIResponsesModel on an AsyncOpenAI client whose base_url is
ccproxy), in full and minimal mode. Tracing export is off (it would send traces to OpenAI)."""

from __future__ import annotations

import asyncio
import json
import os

os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"

import openai  # noqa: E402
import pytest  # noqa: E402
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled  # noqa: E402
from agents.items import ToolCallItem, ToolCallOutputItem  # noqa: E402

from conftest import CLIENT_API_KEY  # noqa: E402

set_tracing_disabled(True)

MODEL = "claude-haiku-4-5"


def run_agent(base_url: str, prompt: str) -> tuple[object, list[str]]:
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"weather-report: 18 C and sunny in {city}"

    async def go():
        client = openai.AsyncOpenAI(base_url=base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=20)
        agent = Agent(
            name="weather",
            instructions="Answer with the weather tool's report.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        )
        try:
            return await Runner.run(agent, prompt, max_turns=4)
        finally:
            await client.close()

    return asyncio.run(go()), seen


@pytest.mark.parametrize("prefix", ["", "/min"], ids=["full", "min"])
def test_agent_calls_its_function_tool_and_uses_the_result(proxy, sim, prefix, tag):
    result, seen = run_agent(f"{proxy.base}{prefix}/openai/v1", f"Weather in Paris? {tag} [sim:tools]")

    # The tool ran once, with arguments that fit its schema.
    assert seen == ["Paris"], seen
    calls = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(calls) == 1 and calls[0].raw_item.name == "get_weather"
    assert json.loads(calls[0].raw_item.arguments) == {"city": "Paris"}
    assert len(outputs) == 1 and "weather-report" in str(outputs[0].output)
    # The final answer is built on the tool's result.
    assert isinstance(result.final_output, str)
    assert "weather-report: 18 C and sunny in Paris" in result.final_output

    # Upstream: two Messages requests; the second carries the call and its result, paired.
    upstream = [json.loads(r["body"]) for r in sim.requests_with(tag)]
    assert len(upstream) == 2, [r.get("messages") for r in upstream]
    assert [t["name"] for t in upstream[0]["tools"]] == ["get_weather"]
    last = upstream[1]["messages"]
    use = next(b for m in last if m["role"] == "assistant" and isinstance(m["content"], list)
               for b in m["content"] if b["type"] == "tool_use")
    result_block = next(b for m in last if m["role"] == "user" and isinstance(m["content"], list)
                        for b in m["content"] if b["type"] == "tool_result")
    assert result_block["tool_use_id"] == use["id"]
    assert "weather-report" in json.dumps(result_block["content"])

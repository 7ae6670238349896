//! The OpenAI Responses API (`POST /openai/v1/responses`) over HTTP, against the
//! simulated upstream: objects and event streams in full and minimal mode, a
//! function-tool round trip, and the refusals (passthrough, bad input, unknown
//! `previous_response_id`: responses are not stored yet).

use serde_json::{Value, json};

use crate::support::*;

fn create(text: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o", "input": text, "stream": stream, "instructions": "Be brief."})
}

/// The last Messages request the upstream received, as JSON.
pub(crate) fn last_upstream(env: &TestEnv) -> Value {
    let reqs = env.sim_state().requests();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.path == "/v1/messages")
        .expect("a Messages request upstream");
    serde_json::from_slice(&last.body).unwrap()
}

/// `event:` / `data:` frames of a Responses stream: (type, JSON).
fn events(text: &str) -> Vec<(String, Value)> {
    parse_sse(text)
}

async fn non_stream_create(base: &str) {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            &format!("{base}/openai/v1/responses"),
            None,
            &create("hello there", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["model"], "gpt-4o", "the model the client asked for: {v}");
    let msg = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .unwrap_or_else(|| panic!("no message item: {v}"));
    assert!(msg["id"].as_str().unwrap().starts_with("msg_"));
    let text = msg["content"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty(), "{v}");
    assert_eq!(msg["content"][0]["annotations"], json!([]));
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{v}");
    // The upstream got a Messages request with the instructions as system.
    let last = last_upstream(&env);
    assert!(last["system"].to_string().contains("Be brief."), "{last}");
    assert_eq!(last["messages"][0]["role"], "user");
}

cases!(non_stream_create {
    full: (""),
    min: ("/min"),
});

async fn stream_create(base: &str) {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            &format!("{base}/openai/v1/responses"),
            None,
            &create("hello [sim:deltas=4]", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let evs = events(&text);
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{text}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{text}");
    for k in [
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    // Sequence numbers are dense from 0, and the deltas add up to the final text.
    for (i, (_, v)) in evs.iter().enumerate() {
        assert_eq!(v["sequence_number"], i, "{text}");
    }
    let deltas: String = evs
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap().to_owned())
        .collect();
    let done = &evs.last().unwrap().1["response"];
    let final_text = done["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .map(|m| m["content"][0]["text"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(deltas, final_text);
    assert!(
        done["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );
}

cases!(stream_create {
    full: (""),
    min: ("/min"),
});

/// A function tool is called with a `call_id`, and its output sent back with that
/// `call_id` reaches the upstream as a `tool_result` for the same `tool_use`.
#[tokio::test]
async fn function_tool_round_trip() {
    let env = TestEnv::with_api_key().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                       "required": ["location"]}}]);
    let body = json!({"model": "gpt-4o", "input": "weather in Paris? [sim:tools]", "tools": tools});
    let v = json_of(env.post("/openai/v1/responses", None, &body).await).await;
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call: {v}"))
        .clone();
    assert_eq!(call["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("fc_"), "{call}");
    let call_id = call["call_id"].as_str().unwrap().to_owned();
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["location"].is_string(), "{args}");
    // The next turn: the history with the call, and its output.
    let body = json!({"model": "gpt-4o", "tools": tools, "input": [
        {"type": "message", "role": "user", "content": "weather in Paris? [sim:tools]"},
        call,
        {"type": "function_call_output", "call_id": call_id, "output": "18 °C, sunny"},
    ]});
    let resp = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(resp.status(), 200);
    let last = last_upstream(&env);
    let msgs = last["messages"].as_array().unwrap();
    let tool_use = &msgs[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{last}"))
        .clone();
    assert_eq!(tool_use["id"], call_id.as_str());
    let result = &msgs[2]["content"][0];
    assert_eq!(result["type"], "tool_result", "{last}");
    assert_eq!(result["tool_use_id"], call_id.as_str());
}

#[tokio::test]
async fn refusals_in_the_openai_envelope() {
    let env = TestEnv::with_api_key().await;
    // Passthrough has no Responses endpoint upstream.
    let r = env
        .post("/pt/openai/v1/responses", None, &create("hi", false))
        .await;
    assert_eq!(r.status(), 404);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/min/openai/v1/responses")
    );
    // A function_call_output without its call names the call_id.
    let body = json!({"model": "gpt-4o", "input": [
        {"type": "function_call_output", "call_id": "call_missing", "output": "x"}]});
    let r = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call_missing"),
        "{v}"
    );
    // Responses are not stored yet: a previous_response_id names nothing.
    let body = json!({"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_unknown"});
    let r = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(r.status(), 404);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert_eq!(v["error"]["param"], "previous_response_id");
    // Wrong method.
    let r = env
        .client
        .get(env.url("/openai/v1/responses"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
}

/// An upstream error mid-stream ends the stream with `response.failed`, never
/// `response.completed`.
#[tokio::test]
async fn upstream_error_mid_stream_is_response_failed() {
    let env = TestEnv::with_api_key().await;
    let text = env
        .post(
            "/openai/v1/responses",
            None,
            &create("[sim:error-midstream]", true),
        )
        .await
        .text()
        .await
        .unwrap();
    let evs = events(&text);
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"response.failed"), "{text}");
    assert!(!kinds.contains(&"response.completed"), "{text}");
}

/// A `namespace` tool (as Codex sends its `multi_agent_v1` sub-agent tools): its functions are
/// offered upstream under joined names, the calls come back as `function_call`s carrying the
/// namespace and the member's own name (object and stream), and the calls sent back in the
/// history (with their outputs) reach the upstream under the joined names again.
#[tokio::test]
async fn namespace_tool_round_trip() {
    let env = TestEnv::with_api_key().await;
    let tools = json!([
        {"type": "function", "name": "exec_command", "parameters": {"type": "object",
            "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
            {"type": "function", "name": "close_agent", "description": "Close an agent.", "strict": false,
             "parameters": {"type": "object", "properties": {"target": {"type": "string"}},
                            "required": ["target"], "additionalProperties": false}},
            {"type": "function", "name": "spawn_agent", "description": "Spawn an agent.",
             "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
                            "required": ["message"]}}]}
    ]);
    // [sim:tools] calls the first two declared tools.
    let prompt = "close the agent [sim:tools]";
    let first = json!({"model": "gpt-4o", "input": prompt, "tools": tools});
    let resp = env.post("/openai/v1/responses", None, &first).await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    let sent = last_upstream(&env);
    let offered: Vec<&str> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        [
            "exec_command",
            "multi_agent_v1__close_agent",
            "multi_agent_v1__spawn_agent"
        ]
    );
    let calls: Vec<Value> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "{v}");
    assert_eq!(calls[0]["name"], "exec_command");
    assert!(calls[0].get("namespace").is_none(), "{}", calls[0]);
    assert_eq!(calls[1]["namespace"], "multi_agent_v1", "{}", calls[1]);
    assert_eq!(calls[1]["name"], "close_agent");
    let args: Value = serde_json::from_str(calls[1]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["target"].is_string(), "{args}");

    // The next turn sends both calls back with their outputs.
    let mut input = vec![json!({"type": "message", "role": "user", "content": prompt})];
    input.extend(calls.iter().cloned());
    for (c, out) in calls.iter().zip(["ran", "closed"]) {
        input.push(json!({"type": "function_call_output", "call_id": c["call_id"], "output": out}));
    }
    let body = json!({"model": "gpt-4o", "tools": tools, "input": input});
    let resp = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(resp.status(), 200);
    let last = last_upstream(&env);
    let msgs = last["messages"].as_array().unwrap();
    let uses: Vec<&Value> = msgs
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_use")
        .collect();
    let names: Vec<&str> = uses.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["exec_command", "multi_agent_v1__close_agent"],
        "{last}"
    );
    assert_eq!(uses[1]["id"], calls[1]["call_id"]);
    let results: Vec<&Value> = msgs
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{last}");
    assert_eq!(results[1]["tool_use_id"], calls[1]["call_id"]);
    assert!(
        results[1]["content"].to_string().contains("closed"),
        "{last}"
    );

    // Streamed, with tool_choice naming the namespaced function: one forced call.
    let body = json!({"model": "gpt-4o", "input": "spawn one", "tools": tools, "stream": true,
        "tool_choice": {"type": "function", "namespace": "multi_agent_v1", "name": "spawn_agent"}});
    let resp = env.post("/min/openai/v1/responses", None, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let sent = last_upstream(&env);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "multi_agent_v1__spawn_agent"})
    );
    let evs = events(&text);
    let done: Vec<&Value> = evs
        .iter()
        .filter(|(k, _)| k == "response.output_item.done")
        .map(|(_, v)| &v["item"])
        .collect();
    assert_eq!(done.len(), 1, "{text}");
    assert_eq!(done[0]["type"], "function_call");
    assert_eq!(done[0]["namespace"], "multi_agent_v1");
    assert_eq!(done[0]["name"], "spawn_agent");
    let completed = &evs.last().unwrap().1;
    assert_eq!(completed["type"], "response.completed", "{text}");
    assert_eq!(
        completed["response"]["output"][0]["namespace"],
        "multi_agent_v1"
    );
}

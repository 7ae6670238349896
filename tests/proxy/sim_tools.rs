//! Tool use through ccproxy, in each mode and dialect: the simulated upstream, like the real
//! service, calls only the tools the request declares, with arguments that fit their schemas,
//! honours `tool_choice`, and refuses a `tool_choice` naming an undeclared tool.

use crate::support::*;
use serde_json::{Value, json};

fn weather_schema() -> Value {
    json!({"type": "object", "properties": {
        "location": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 3},
        "metric": {"type": "boolean"}},
      "required": ["location", "days"]})
}

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "Weather", "input_schema": weather_schema()})
}

fn weather_function() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
           "parameters": weather_schema()}})
}

/// Names of the content blocks of a Messages answer (`text` for text).
fn block_names(v: &Value) -> Vec<String> {
    v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| match b["type"].as_str() {
            Some("tool_use") => b["name"].as_str().unwrap().to_owned(),
            other => other.unwrap_or("").to_owned(),
        })
        .collect()
}

async fn messages_call_only_declared_tools(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let path = format!("{mode}/v1/messages");
    // One tool declared: only it is called, with arguments that fit its schema.
    let mut body = message("weather? [sim:tools]", false);
    body["tools"] = json!([weather_tool()]);
    let v = json_of(env.post(&path, None, &body).await).await;
    assert_eq!(block_names(&v), ["text", "get_weather"], "{mode}: {v}");
    assert_eq!(
        v["content"][1]["input"],
        json!({"location": "New York, NY", "days": 2, "metric": true})
    );
    assert_eq!(v["stop_reason"], "tool_use");
    // No tools: the marker gets a plain answer.
    let v = json_of(env.post(&path, None, &message("[sim:tools]", false)).await).await;
    assert_eq!(block_names(&v), ["text"], "{mode}: {v}");
    assert_eq!(v["stop_reason"], "end_turn");
    // A forced choice calls the tool without the marker, and without text.
    body = message("weather?", false);
    body["tools"] = json!([weather_tool()]);
    body["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let v = json_of(env.post(&path, None, &body).await).await;
    assert_eq!(block_names(&v), ["get_weather"], "{mode}: {v}");
    // `none` wins over the marker.
    body = message("[sim:tools]", false);
    body["tools"] = json!([weather_tool()]);
    body["tool_choice"] = json!({"type": "none"});
    let v = json_of(env.post(&path, None, &body).await).await;
    assert_eq!(block_names(&v), ["text"], "{mode}: {v}");
    // An undeclared tool named: the upstream's 400 reaches the client.
    body["tool_choice"] = json!({"type": "tool", "name": "calculate_distance"});
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 400, "{mode}");
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "Tool 'calculate_distance' not found in provided tools"
    );
}

cases!(messages_call_only_declared_tools {
    full: (""),
    min: ("/min"),
    pt: ("/pt"),
});

/// (name, arguments) of each tool call of a chat completion.
fn tool_calls(v: &Value) -> Vec<(String, Value)> {
    v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let args = c["function"]["arguments"].as_str().unwrap();
            (
                c["function"]["name"].as_str().unwrap().to_owned(),
                serde_json::from_str(args).unwrap(),
            )
        })
        .collect()
}

async fn chat_calls_only_declared_tools(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let path = format!("{mode}/openai/v1/chat/completions");
    let mut body = chat("weather? [sim:tools]", false);
    body["tools"] = json!([weather_function()]);
    let v = json_of(env.post(&path, None, &body).await).await;
    let calls = tool_calls(&v);
    assert_eq!(calls.len(), 1, "{mode}: {v}");
    assert_eq!(calls[0].0, "get_weather");
    assert_eq!(
        calls[0].1,
        json!({"location": "New York, NY", "days": 2, "metric": true})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // `required` forces a call without the marker; `none` keeps the marker from calling.
    for (text, choice, want) in [
        ("weather?", json!("required"), 1),
        ("[sim:tools]", json!("none"), 0),
        ("hello", json!("auto"), 0),
    ] {
        let mut body = chat(text, false);
        body["tools"] = json!([weather_function()]);
        body["tool_choice"] = choice.clone();
        let v = json_of(env.post(&path, None, &body).await).await;
        assert_eq!(tool_calls(&v).len(), want, "{mode} {choice}: {v}");
    }
    // An undeclared tool named: 400 naming the parameter (the proxy's own check in full and
    // minimal mode, the upstream's in passthrough).
    body["tool_choice"] = json!({"type": "function", "function": {"name": "calculate_distance"}});
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 400, "{mode}");
    let v = json_of(resp).await;
    assert_openai_error(&v, "invalid_request_error");
    assert_eq!(
        v["error"]["param"], "tool_choice.function.name",
        "{mode}: {v}"
    );
}

cases!(chat_calls_only_declared_tools {
    full: (""),
    min: ("/min"),
    pt: ("/pt"),
});

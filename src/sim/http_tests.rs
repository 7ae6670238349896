//! The simulated upstream's tool use through real HTTP requests (loopback): only declared tools,
//! arguments that fit their schemas, `tool_choice` honoured, undeclared names refused.

use serde_json::{Value, json};

use super::start;

const KEY: &str = "sk-ant-api03-sim-tests";

fn weather() -> Value {
    json!({"name": "get_weather", "description": "Weather",
           "input_schema": {"type": "object", "properties": {
               "location": {"type": "string"},
               "days": {"type": "integer", "minimum": 1, "maximum": 5},
               "unit": {"enum": ["kelvin", "celsius"]}},
           "required": ["location"]}})
}

fn search() -> Value {
    json!({"name": "search", "input_schema": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "number"}, "exact": {"type": "boolean"},
        "filters": {"type": "array", "items": {"type": "object",
            "properties": {"field": {"type": "string"}}, "required": ["field"]}}},
        "required": ["query", "filters"]}})
}

async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let client = crate::http::client_builder().build().unwrap();
    let resp = client
        .post(format!("{url}{path}"))
        .header("x-api-key", KEY)
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn messages(text: &str, tools: Value, extra: Value) -> Value {
    let mut v = json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": text}], "tools": tools});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// (type, name, input) of each content block.
fn blocks(v: &Value) -> Vec<(String, String, Value)> {
    v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or("").to_owned();
            (s("type"), s("name"), b["input"].clone())
        })
        .collect()
}

#[tokio::test]
async fn messages_call_only_declared_tools_with_fitting_arguments() {
    let sim = start("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let url = sim.url();
    // The marker with one tool: that tool alone, its schema filled.
    let (status, v) = post(
        &url,
        "/v1/messages",
        &messages("[sim:tools]", json!([weather()]), json!({})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let b = blocks(&v);
    assert_eq!(b.len(), 2, "{v}");
    assert_eq!(
        (b[0].0.as_str(), b[1].0.as_str(), b[1].1.as_str()),
        ("text", "tool_use", "get_weather")
    );
    assert_eq!(
        b[1].2,
        json!({"location": "New York, NY", "days": 3, "unit": "celsius"})
    );
    assert_eq!(v["stop_reason"], "tool_use");
    // Two tools: both, in parallel, every required property present and typed.
    let (_, v) = post(
        &url,
        "/v1/messages",
        &messages("[sim:tools]", json!([search(), weather()]), json!({})),
    )
    .await;
    let b = blocks(&v);
    assert_eq!(
        b.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["", "search", "get_weather"]
    );
    let input = &b[1].2;
    assert!(
        input["query"].is_string() && input["limit"].is_number() && input["exact"].is_boolean()
    );
    assert!(input["filters"][0]["field"].is_string(), "{input}");
    // No tools declared: the marker gets a plain answer.
    let (_, v) = post(
        &url,
        "/v1/messages",
        &messages("[sim:tools]", json!([]), json!({})),
    )
    .await;
    assert!(blocks(&v).iter().all(|b| b.0 == "text"), "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn messages_honour_tool_choice() {
    let sim = start("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let url = sim.url();
    let tools = json!([search(), weather()]);
    let names = |v: &Value| -> Vec<String> {
        blocks(v)
            .into_iter()
            .map(|b| if b.0 == "text" { "text".into() } else { b.1 })
            .collect()
    };
    let cases = [
        ("hello", json!({"type": "auto"}), vec!["text"]),
        ("hello", json!({"type": "any"}), vec!["search"]),
        (
            "[sim:tools]",
            json!({"type": "any", "disable_parallel_tool_use": true}),
            vec!["search"],
        ),
        (
            "hello",
            json!({"type": "tool", "name": "get_weather"}),
            vec!["get_weather"],
        ),
        ("[sim:tools]", json!({"type": "none"}), vec!["text"]),
        (
            "[sim:tools]",
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            vec!["text", "search"],
        ),
    ];
    for (text, choice, want) in cases {
        let body = messages(text, tools.clone(), json!({"tool_choice": choice}));
        let (status, v) = post(&url, "/v1/messages", &body).await;
        assert_eq!(status, 200, "{choice}: {v}");
        assert_eq!(names(&v), want, "{choice}");
        // The stream says the same.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (_, sse) = post(&url, "/v1/messages", &streamed).await;
        let sse = sse.as_str().unwrap().to_owned();
        let started: Vec<String> = sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|e| e["type"] == "content_block_start")
            .map(|e| {
                let b = &e["content_block"];
                if b["type"] == "text" {
                    "text".to_owned()
                } else {
                    b["name"].as_str().unwrap().to_owned()
                }
            })
            .collect();
        assert_eq!(started, want, "{choice} streamed");
    }
    // Refused as the real API refuses.
    let refused = [
        (
            tools.clone(),
            json!({"type": "tool", "name": "calculate_distance"}),
            "Tool 'calculate_distance' not found in provided tools",
        ),
        (
            json!([]),
            json!({"type": "any"}),
            "tool_choice may only be specified while providing tools.",
        ),
    ];
    for (tools, choice, message) in refused {
        let body = messages("[sim:tools]", tools, json!({"tool_choice": choice}));
        let (status, v) = post(&url, "/v1/messages", &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], message);
    }
}

#[tokio::test]
async fn chat_completions_honour_tools_and_tool_choice() {
    let sim = start("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let url = sim.url();
    let function = |t: Value| json!({"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}});
    let tools = json!([function(search()), function(weather())]);
    let chat = |text: &str, extra: Value| {
        let mut v = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "tools": tools});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let calls = |v: &Value| -> Vec<(String, Value)> {
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let args =
                    serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
                (c["function"]["name"].as_str().unwrap().to_owned(), args)
            })
            .collect()
    };
    let cases = [
        (
            "[sim:tools]",
            json!({}),
            vec!["search", "get_weather"],
            "tool_calls",
        ),
        (
            "[sim:tools]",
            json!({"parallel_tool_calls": false}),
            vec!["search"],
            "tool_calls",
        ),
        (
            "hello",
            json!({"tool_choice": "required"}),
            vec!["search"],
            "tool_calls",
        ),
        (
            "hello",
            json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            vec!["get_weather"],
            "tool_calls",
        ),
        (
            "[sim:tools]",
            json!({"tool_choice": "none"}),
            vec![],
            "stop",
        ),
        ("hello", json!({"tool_choice": "auto"}), vec![], "stop"),
    ];
    for (text, extra, want, finish) in cases {
        let (status, v) = post(&url, "/v1/chat/completions", &chat(text, extra.clone())).await;
        assert_eq!(status, 200, "{extra}: {v}");
        let got = calls(&v);
        assert_eq!(
            got.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            want,
            "{extra}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], finish, "{extra}");
        if let Some((_, args)) = got.iter().find(|c| c.0 == "get_weather") {
            assert_eq!(args["location"], "New York, NY");
            assert!((1..=5).contains(&args["days"].as_i64().unwrap()));
        }
    }
    // Legacy functions, forced by function_call.
    let legacy = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "functions": [{"name": "search", "parameters": search()["input_schema"]}],
        "function_call": {"name": "search"}});
    let (status, v) = post(&url, "/v1/chat/completions", &legacy).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["function_call"]["name"],
        "search"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "function_call");
    // Refusals, in OpenAI's envelope.
    let refused = [
        (
            chat(
                "hi",
                json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            ),
            "tool_choice.function.name",
        ),
        (
            chat("hi", json!({"tool_choice": "sometimes"})),
            "tool_choice",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}),
            "tool_choice",
        ),
    ];
    for (body, param) in refused {
        let (status, v) = post(&url, "/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
}

//! OpenAI Chat Completions through each mode, over real sockets, against the
//! simulated upstream.

use crate::support::*;
use serde_json::{Value, json};

/// A chat request with a system message and a user message `text`.
fn chat_with_system(text: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": text}
        ]
    })
}

fn tools() -> Value {
    json!([
        {"type":"function","function":{"name":"get_weather","description":"Weather",
            "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}},
        {"type":"function","function":{"name":"calculate_distance","description":"Distance",
            "parameters":{"type":"object","properties":{"lat1":{"type":"string"}}}}}
    ])
}

async fn non_stream_chat_in_full_and_minimal(mode: &str, shaped: bool) {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            &format!("{mode}/openai/v1/chat/completions"),
            Some("dummy"),
            &chat_with_system("hello", false),
        )
        .await;
    assert_eq!(resp.status(), 200, "{mode}");
    let v = json_of(resp).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "gpt-4o",
        "reports the model the client asked for"
    );
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.header("x-api-key"), Some(API_KEY));
    let sent = up.json();
    assert!(sent["model"].as_str().unwrap().starts_with("claude-"));
    let system = serde_json::to_string(&sent["system"]).unwrap();
    assert!(system.contains("Be brief."));
    assert_eq!(system.contains(IDENTITY), shaped, "{mode}: {system}");
    assert_eq!(up.header("x-app").is_some(), shaped);
}

cases!(non_stream_chat_in_full_and_minimal {
    full: ("", true),
    full_prefix: ("/full", true),
    min: ("/min", false)
});

#[tokio::test]
async fn usage_counts_cache_tokens_in_prompt_tokens() {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            "/openai/v1/chat/completions",
            None,
            &chat_with_system("[sim:cache]", false),
        )
        .await;
    let v = json_of(resp).await;
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 8192);
    assert!(
        prompt > 8192 + 2048,
        "prompt includes cache reads and writes: {prompt}"
    );
}

async fn stream_chunks_are_faithful(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let mut body = chat_with_system("[sim:deltas=5]", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = env
        .post(&format!("{mode}/openai/v1/chat/completions"), None, &body)
        .await;
    assert_eq!(resp.status(), 200, "{mode}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (chunks, done) = openai_chunks(&resp.text().await.unwrap());
    assert!(done, "{mode}: ends with [DONE]");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id), "{mode}: one id");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ", "{mode}");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("stop")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{mode}: usage chunk last");
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

cases!(stream_chunks_are_faithful {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn parallel_tool_calls_non_stream_and_stream(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let mut body = chat_with_system("weather and distance [sim:tools]", false);
    body["tools"] = tools();
    let v = json_of(
        env.post(&format!("{mode}/openai/v1/chat/completions"), None, &body)
            .await,
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{mode}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args0: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args0["location"], "New York, NY");

    body["stream"] = json!(true);
    let resp = env
        .post(&format!("{mode}/openai/v1/chat/completions"), None, &body)
        .await;
    let (chunks, done) = openai_chunks(&resp.text().await.unwrap());
    assert!(done);
    let mut announced = Vec::new();
    let mut args = [String::new(), String::new()];
    for c in &chunks {
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if let Some(id) = tc["id"].as_str() {
                announced.push((
                    i,
                    id.to_owned(),
                    tc["function"]["name"].as_str().unwrap().to_owned(),
                ));
            }
            args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(announced.len(), 2, "{mode}: each call announced once");
    assert_eq!((announced[0].0, announced[1].0), (0, 1));
    assert!(!announced[0].1.is_empty() && announced[0].1 != announced[1].1);
    assert_eq!(announced[0].2, "get_weather");
    assert_eq!(announced[1].2, "calculate_distance");
    for (i, a) in args.iter().enumerate() {
        let streamed: Value = serde_json::from_str(a).unwrap();
        let whole: Value =
            serde_json::from_str(calls[i]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(streamed, whole, "{mode}: call {i}");
    }
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("tool_calls")]);
}

cases!(parallel_tool_calls_non_stream_and_stream {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

#[tokio::test]
async fn tool_loop_round_trip() {
    let env = TestEnv::with_api_key().await;
    let mut body = chat_with_system("weather please [sim:tools]", false);
    body["tools"] = tools();
    let v = json_of(env.post("/openai/v1/chat/completions", None, &body).await).await;
    let msg = v["choices"][0]["message"].clone();
    let calls = msg["tool_calls"].as_array().unwrap().clone();
    let mut messages = body["messages"].as_array().unwrap().clone();
    messages.push(msg);
    for (i, c) in calls.iter().enumerate() {
        messages.push(
            json!({"role":"tool","tool_call_id": c["id"], "content": format!("result {i}: sunny")}),
        );
    }
    body["messages"] = json!(messages);
    let v = json_of(env.post("/openai/v1/chat/completions", None, &body).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("result 0: sunny")
    );
    // Upstream got one user turn with both tool_result blocks, in order, ids kept.
    let sent = env.sim_state().last_request().unwrap().json();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    let results: Vec<&Value> = last["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tool_use_id"], calls[0]["id"]);
    assert_eq!(results[1]["tool_use_id"], calls[1]["id"]);
}

#[tokio::test]
async fn images_are_converted() {
    let env = TestEnv::with_api_key().await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let body = json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":[
        {"type":"text","text":"what is this"},
        {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{png}")}},
        {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}}
    ]}]});
    let resp = env
        .post("/min/openai/v1/chat/completions", None, &body)
        .await;
    assert_eq!(resp.status(), 200);
    let sent = env.sim_state().last_request().unwrap().json();
    let blocks = sent["messages"][0]["content"].as_array().unwrap();
    assert_eq!(blocks[1]["type"], "image");
    assert_eq!(
        blocks[1]["source"],
        json!({"type":"base64","media_type":"image/png","data":png})
    );
    assert_eq!(
        blocks[2]["source"],
        json!({"type":"url","url":"https://example.com/cat.jpg"})
    );
}

#[tokio::test]
async fn passthrough_relays_bytes_to_upstream_chat_completions() {
    let env = TestEnv::with_api_key().await;
    let raw = br#"{"model":"gpt-4o",  "messages":[{"role":"user","content":"hi"}]}"#;
    let resp = env
        .client
        .post(env.url("/pt/openai/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(&raw[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["object"], "chat.completion");
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(&up.body[..], &raw[..]);
    assert_eq!(up.header("x-api-key"), Some(CLIENT_KEY));
}

async fn models_in_openai_shape(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let v = json_of(
        env.client
            .get(env.url(&format!("{mode}/openai/v1/models")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert!(
        data.iter()
            .all(|m| m["object"] == "model" && m["id"].is_string())
    );
    let sonnet = data
        .iter()
        .find(|m| m["id"] == "claude-sonnet-4-5-20250929")
        .unwrap();
    assert_eq!(sonnet["created"], 1_759_104_000, "the model's own date");
    assert!(data.iter().any(|m| m["id"] == "gpt-4o"), "aliases listed");
    let v = json_of(env.client.get(env.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(
        v["data"][0]["type"], "model",
        "Anthropic shape on /v1/models"
    );
}

cases!(models_in_openai_shape {
    full: (""),
    min: ("/min")
});

async fn bad_requests_get_openai_errors_naming_the_field(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let cases: Vec<(Value, Option<&str>)> = vec![
        (json!({"model":"gpt-4o"}), Some("messages")),
        (json!({"model":"gpt-4o","messages":[]}), Some("messages")),
        (json!({"model":"gpt-4o","messages":"hi"}), Some("messages")),
        (
            json!({"model":"gpt-4o","n":2,"messages":[{"role":"user","content":"hi"}]}),
            Some("n"),
        ),
        (
            json!({"model":"gpt-4o","messages":[{"role":"wizard","content":"hi"}]}),
            Some("messages[0].role"),
        ),
        (
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"},{"role":"tool","tool_call_id":"nope","content":"x"}]}),
            Some("messages[1].tool_call_id"),
        ),
        (
            json!({"model":"gpt-4o","max_tokens":"lots","messages":[{"role":"user","content":"hi"}]}),
            None,
        ),
        (
            json!({"model":"claude-sonnet-5","response_format":{"type":"json_schema"},
                "messages":[{"role":"user","content":"hi"}]}),
            Some("response_format.json_schema"),
        ),
        (
            json!({"model":"claude-sonnet-5","response_format":{"type":"yaml"},
                "messages":[{"role":"user","content":"hi"}]}),
            Some("response_format.type"),
        ),
        (
            json!({"model":"claude-sonnet-5","response_format":{"type":"json_schema",
                "json_schema":{"name":"person","schema":"object"}},
                "messages":[{"role":"user","content":"hi"}]}),
            Some("response_format.json_schema.schema"),
        ),
        (
            json!({"model":"claude-3-7-sonnet-20250219","response_format":{"type":"json_schema",
                "json_schema":{"name":"person","schema":[1]}},
                "messages":[{"role":"user","content":"hi"}]}),
            Some("response_format.json_schema.schema"),
        ),
    ];
    for (body, param) in &cases {
        let resp = env
            .post(&format!("{mode}/openai/v1/chat/completions"), None, body)
            .await;
        assert_eq!(resp.status(), 400, "{body}");
        let v = json_of(resp).await;
        assert_openai_error(&v, None);
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], *p, "{v}");
        }
        if *param == Some("n") {
            assert!(v["error"]["code"].is_string(), "specific code kept: {v}");
        }
    }
    let resp = env
        .client
        .post(env.url(&format!("{mode}/openai/v1/chat/completions")))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_openai_error(&json_of(resp).await, None);
    assert!(
        env.sim_state().requests().is_empty(),
        "bad requests never reach upstream"
    );
}

cases!(bad_requests_get_openai_errors_naming_the_field {
    full: (""),
    min: ("/min")
});

#[tokio::test]
async fn upstream_errors_map_to_openai_envelope() {
    let env = TestEnv::with_api_key().await;
    for (marker, status) in [("429", 429), ("529", 503), ("400", 400), ("500", 500)] {
        let resp = env
            .post(
                "/openai/v1/chat/completions",
                None,
                &chat_with_system(&format!("[sim:status={marker}]"), false),
            )
            .await;
        assert_eq!(resp.status().as_u16(), status, "{marker}");
        if status == 429 {
            assert_eq!(resp.headers()["retry-after"], "7");
        }
        let v = json_of(resp).await;
        assert_openai_error(&v, None);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Simulated error")
        );
    }
}

#[tokio::test]
async fn mid_stream_error_becomes_an_error_frame_without_done() {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            "/openai/v1/chat/completions",
            None,
            &chat_with_system("[sim:error-midstream]", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let last = openai_stream_error(&body);
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{body}"
    );
}

async fn legacy_functions_get_function_call_answers(mode: &str) {
    let env = TestEnv::with_api_key().await;
    let mut body = chat_with_system("weather [sim:tools]", false);
    body["functions"] = json!([
        {"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}
    ]);
    let v = json_of(
        env.post(&format!("{mode}/openai/v1/chat/completions"), None, &body)
            .await,
    )
    .await;
    let msg = &v["choices"][0]["message"];
    assert_eq!(
        v["choices"][0]["finish_reason"], "function_call",
        "{mode}: {v}"
    );
    assert_eq!(msg["function_call"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(msg["function_call"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["location"], "New York, NY");
    assert!(msg.get("tool_calls").is_none());

    body["stream"] = json!(true);
    let resp = env
        .post(&format!("{mode}/openai/v1/chat/completions"), None, &body)
        .await;
    let (chunks, done) = openai_chunks(&resp.text().await.unwrap());
    assert!(done);
    let mut name = None;
    let mut streamed = String::new();
    for c in &chunks {
        let d = &c["choices"][0]["delta"];
        assert!(d.get("tool_calls").is_none(), "{mode}: {c}");
        if let Some(fc) = d.get("function_call") {
            if let Some(n) = fc["name"].as_str() {
                assert!(name.replace(n.to_owned()).is_none(), "named once");
            }
            streamed.push_str(fc["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), args);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("function_call")]);
}

cases!(legacy_functions_get_function_call_answers {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

fn person_schema() -> Value {
    json!({"type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
            "email": {"type": "string", "format": "email"}},
        "required": ["name", "age", "email"], "additionalProperties": false})
}

fn structured_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who is the contact?"}
        ],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "schema": person_schema(), "strict": true}}
    })
}

/// The answer's `message.content`, or the streamed content deltas joined.
async fn answer_text(resp: reqwest::Response, stream: bool) -> String {
    if stream {
        let (chunks, done) = openai_chunks(&resp.text().await.unwrap());
        assert!(done);
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    } else {
        let v = json_of(resp).await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A model with structured outputs: `output_config.format` upstream (the schema verbatim), no
/// instruction in `system`, and the answer is JSON with the schema's required properties.
async fn json_schema_goes_native_on_models_with_structured_outputs(mode: &str, stream: bool) {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            &format!("{mode}/openai/v1/chat/completions"),
            None,
            &structured_request("claude-sonnet-5", stream),
        )
        .await;
    assert_eq!(resp.status(), 200, "{mode}");
    let text = answer_text(resp, stream).await;
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    for key in ["name", "age", "email"] {
        assert!(answer.get(key).is_some(), "{key} missing: {answer}");
    }
    assert!(answer["age"].is_i64(), "{answer}");
    let sent = env.sim_state().last_request().unwrap().json();
    assert_eq!(
        sent["output_config"],
        json!({"format": {"type": "json_schema", "schema": person_schema()}})
    );
    let system = serde_json::to_string(&sent["system"]).unwrap();
    assert!(system.contains("Be brief."), "{system}");
    assert!(!system.contains("json_schema"), "no instruction: {system}");
    assert!(!system.contains("Respond with"), "no instruction: {system}");
}

cases!(json_schema_goes_native_on_models_with_structured_outputs {
    full: ("", false),
    full_stream: ("", true),
    min: ("/min", false),
    min_stream: ("/min", true)
});

/// A model without structured outputs (Claude 3.7 Sonnet): the schema becomes the system
/// instruction, and nothing goes into `output_config`.
#[tokio::test]
async fn json_schema_falls_back_to_an_instruction_without_structured_outputs() {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            "/openai/v1/chat/completions",
            None,
            &structured_request("claude-3-7-sonnet-20250219", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let sent = env.sim_state().last_request().unwrap().json();
    assert_eq!(sent["model"], "claude-3-7-sonnet-20250219");
    assert!(sent.get("output_config").is_none(), "{sent}");
    // The system text: a string, or text blocks.
    let system: String = match &sent["system"] {
        Value::String(t) => t.clone(),
        blocks => blocks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert!(system.contains("Be brief."), "{system}");
    assert!(
        system.contains("named \"person\"") && system.contains("<json_schema>"),
        "{system}"
    );
    let embedded = &system
        [system.find("<json_schema>\n").unwrap() + 14..system.find("\n</json_schema>").unwrap()];
    assert_eq!(
        serde_json::from_str::<Value>(embedded).unwrap(),
        person_schema(),
        "the schema is embedded verbatim"
    );
}

//! The OpenAI Responses API (`POST /openai/v1/responses`) over HTTP, against the
//! simulated upstream: objects and event streams in full and minimal mode, a
//! function-tool round trip, and the refusals (passthrough, bad input, unknown
//! `previous_response_id`); the store: chains of `previous_response_id`, `item_reference`,
//! `GET`/`DELETE /responses/{id}`, `/input_items`, `/input_tokens`, `store: false`, expiry,
//! and a restart that keeps what was stored.

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
    // A previous_response_id the store does not have.
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

// ---- The store -------------------------------------------------------------------------------

/// A create answered 200; the response object (the `response.completed` one for a stream).
async fn create_ok(env: &TestEnv, base: &str, body: &Value) -> Value {
    let resp = env
        .post(&format!("{base}/openai/v1/responses"), None, body)
        .await;
    assert_eq!(resp.status(), 200);
    if body["stream"] == true {
        let text = resp.text().await.unwrap();
        let evs = events(&text);
        let (kind, last) = evs.last().expect("events");
        assert_eq!(kind, "response.completed", "{text}");
        last["response"].clone()
    } else {
        json_of(resp).await
    }
}

async fn get(env: &TestEnv, path: &str) -> reqwest::Response {
    env.client.get(env.url(path)).send().await.unwrap()
}

/// `POST /openai/v1/responses` with `body` sent as written (JSON a `Value` would re-encode).
async fn post_text(env: &TestEnv, body: String) -> reqwest::Response {
    env.client
        .post(env.url("/openai/v1/responses"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn delete(env: &TestEnv, path: &str) -> reqwest::Response {
    env.client.delete(env.url(path)).send().await.unwrap()
}

/// The text of an answer's message item.
fn answer_text(v: &Value) -> String {
    v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .map(|m| m["content"][0]["text"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no message: {v}"))
}

/// Three turns chained with previous_response_id: the upstream receives every earlier turn
/// (user inputs and the assistant's answers), in order.
async fn chain(base: &str, stream: bool) {
    let env = TestEnv::with_api_key().await;
    let turn = |text: &str, prev: Option<&Value>| {
        let mut b = json!({"model": "gpt-4o", "input": text, "stream": stream});
        if let Some(p) = prev {
            b["previous_response_id"] = p["id"].clone();
        }
        b
    };
    let r1 = create_ok(&env, base, &turn("my name is Ada", None)).await;
    let r2 = create_ok(&env, base, &turn("what is my name?", Some(&r1))).await;
    assert_eq!(r2["previous_response_id"], r1["id"], "{r2}");
    let up = last_upstream(&env);
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{up}");
    assert!(msgs[0].to_string().contains("my name is Ada"), "{up}");
    assert_eq!(msgs[1]["role"], "assistant");
    assert!(
        msgs[1].to_string().contains(&answer_text(&r1)[..10]),
        "the first answer goes back: {up}"
    );
    assert!(msgs[2].to_string().contains("what is my name?"), "{up}");
    let _r3 = create_ok(&env, base, &turn("and again?", Some(&r2))).await;
    let up = last_upstream(&env);
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5, "the whole chain: {up}");
    assert!(msgs[0].to_string().contains("my name is Ada"), "{up}");
    assert!(msgs[4].to_string().contains("and again?"), "{up}");
    // What was stored is what was answered.
    let got = json_of(
        get(
            &env,
            &format!("{base}/openai/v1/responses/{}", r2["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert_eq!(got, r2);
}

cases!(chain {
    full_object: ("", false),
    min_object: ("/min", false),
    full_stream: ("", true),
    min_stream: ("/min", true),
});

/// A continuation whose `previous_response_id` key is written with an escape (valid JSON,
/// which a byte search for the key would miss) still continues the stored response.
#[tokio::test]
async fn an_escaped_previous_response_id_key_still_continues() {
    let env = TestEnv::with_api_key().await;
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "my name is Ada"}),
    )
    .await;
    let body = format!(
        r#"{{"model":"gpt-4o","input":"what is my name?","previous_response\u005fid":"{}"}}"#,
        r1["id"].as_str().unwrap()
    );
    let r = post_text(&env, body).await;
    assert_eq!(r.status(), 200);
    let r2 = json_of(r).await;
    assert_eq!(r2["previous_response_id"], r1["id"], "{r2}");
    let up = last_upstream(&env);
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "the first turn goes back: {up}");
    assert!(msgs[0].to_string().contains("my name is Ada"), "{up}");
}

/// Codex's loop: a function call, then only its output with previous_response_id.
#[tokio::test]
async fn function_call_loop_with_previous_response_id() {
    let env = TestEnv::with_api_key().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                       "required": ["location"]}}]);
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "weather in Paris? [sim:tools]",
        "tools": tools, "stream": true}),
    )
    .await;
    let call = r1["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call: {r1}"))
        .clone();
    let call_id = call["call_id"].as_str().unwrap();
    let r2 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "tools": tools,
        "previous_response_id": r1["id"],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "18 °C"}]}),
    )
    .await;
    assert_eq!(r2["status"], "completed", "{r2}");
    let up = last_upstream(&env);
    let msgs = up["messages"].as_array().unwrap();
    let tool_use = msgs[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{up}"));
    assert_eq!(tool_use["id"], call_id);
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result", "{up}");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], call_id);
}

#[tokio::test]
async fn store_false_keeps_nothing() {
    let env = TestEnv::with_api_key().await;
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "hi", "store": false}),
    )
    .await;
    assert_eq!(r1["store"], false);
    let id = r1["id"].as_str().unwrap();
    let r = env
        .post(
            "/openai/v1/responses",
            None,
            &json!({"model": "gpt-4o", "input": "again", "previous_response_id": id}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert_eq!(v["error"]["param"], "previous_response_id");
    assert!(v["error"]["message"].as_str().unwrap().contains(id), "{v}");
    assert_eq!(
        get(&env, &format!("/openai/v1/responses/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(env.upstream_messages(), 1, "the 404 sent nothing upstream");
}

#[tokio::test]
async fn unknown_ids_are_404_in_the_openai_envelope() {
    let env = TestEnv::with_api_key().await;
    for (method, path) in [
        ("GET", "/openai/v1/responses/resp_nope"),
        ("DELETE", "/openai/v1/responses/resp_nope"),
        ("GET", "/openai/v1/responses/resp_nope/input_items"),
        ("GET", "/min/openai/v1/responses/resp_nope"),
        ("GET", "/pt/openai/v1/responses/resp_nope"),
        ("GET", "/pt/openai/v1/responses/resp_nope/input_items"),
    ] {
        let r = match method {
            "GET" => get(&env, path).await,
            _ => delete(&env, path).await,
        };
        assert_eq!(r.status(), 404, "{method} {path}");
        let v = json_of(r).await;
        assert_openai_error(&v, "invalid_request_error");
    }
    let r = env
        .post(
            "/pt/openai/v1/responses/input_tokens",
            None,
            &create("hi", false),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_openai_error(&json_of(r).await, "invalid_request_error");
    // Wrong method on a stored response.
    let r = env
        .post("/openai/v1/responses/resp_nope", None, &json!({}))
        .await;
    assert_eq!(r.status(), 405);
    assert_openai_error(&json_of(r).await, None);
    assert!(env.sim_state().requests().is_empty());
}

#[tokio::test]
async fn retrieve_list_input_items_and_delete() {
    let env = TestEnv::with_api_key().await;
    let input = json!([
        {"type": "message", "role": "user", "content": "one"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
        {"type": "message", "role": "user", "content": "three", "id": "msg_client_3"},
    ]);
    let r1 = create_ok(&env, "/min", &json!({"model": "gpt-4o", "input": input})).await;
    let id = r1["id"].as_str().unwrap();
    let path = format!("/openai/v1/responses/{id}");
    let got = json_of(get(&env, &path).await).await;
    assert_eq!(got, r1, "retrieved as created");

    // Newest first by default; every item has an id (the client's, or one given).
    let list = json_of(get(&env, &format!("{path}/input_items")).await).await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{list}");
    assert_eq!(data[0]["id"], "msg_client_3");
    assert!(data.iter().all(|i| i["id"].is_string()), "{list}");
    assert_eq!(list["first_id"], "msg_client_3");
    assert_eq!(list["has_more"], false);

    // Pages of two, oldest first.
    let p1 = json_of(get(&env, &format!("{path}/input_items?limit=2&order=asc")).await).await;
    assert_eq!(p1["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        p1["data"][0]["content"],
        json!([{"type": "input_text", "text": "one"}]),
        "stored as OpenAI lists it"
    );
    assert_eq!(p1["data"][0]["type"], "message");
    assert_eq!(p1["has_more"], true);
    let after = p1["last_id"].as_str().unwrap();
    let p2 = json_of(
        get(
            &env,
            &format!("{path}/input_items?limit=2&order=asc&after={after}"),
        )
        .await,
    )
    .await;
    assert_eq!(p2["data"].as_array().unwrap().len(), 1, "{p2}");
    assert_eq!(p2["data"][0]["id"], "msg_client_3");
    assert_eq!(p2["has_more"], false);

    // Bad queries name their parameter.
    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=500", "limit"),
        ("order=sideways", "order"),
        ("after=msg_unknown", "after"),
    ] {
        let r = get(&env, &format!("{path}/input_items?{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        let v = json_of(r).await;
        assert_openai_error(&v, "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{q}: {v}");
    }

    // Delete, then it is gone (retrieve, list, continue, delete again).
    let r = delete(&env, &path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await,
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    assert_eq!(get(&env, &path).await.status(), 404);
    assert_eq!(
        get(&env, &format!("{path}/input_items")).await.status(),
        404
    );
    assert_eq!(delete(&env, &path).await.status(), 404);
    let r = env
        .post(
            "/openai/v1/responses",
            None,
            &json!({"model": "gpt-4o", "input": "x", "previous_response_id": id}),
        )
        .await;
    assert_eq!(r.status(), 404);
}

/// Chained input items: the conversation so far (earlier inputs and outputs, then the new input).
#[tokio::test]
async fn input_items_of_a_chained_response_hold_the_conversation() {
    let env = TestEnv::with_api_key().await;
    let r1 = create_ok(&env, "", &json!({"model": "gpt-4o", "input": "first"})).await;
    let r2 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "second",
        "previous_response_id": r1["id"]}),
    )
    .await;
    let path = format!(
        "/openai/v1/responses/{}/input_items?order=asc",
        r2["id"].as_str().unwrap()
    );
    let list = json_of(get(&env, &path).await).await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{list}");
    assert_eq!(data[0]["content"][0]["text"], "first");
    assert_eq!(
        data[1]["id"], r1["output"][0]["id"],
        "the first answer, as output"
    );
    assert_eq!(data[2]["content"][0]["text"], "second");
}

#[tokio::test]
async fn item_reference_resolves_stored_items() {
    let env = TestEnv::with_api_key().await;
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]);
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "weather? [sim:tools]",
        "tools": tools}),
    )
    .await;
    let call = r1["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("{r1}"))
        .clone();
    // No previous_response_id: the call comes back by reference.
    let body = json!({"model": "gpt-4o", "tools": tools, "input": [
        {"type": "message", "role": "user", "content": "weather? [sim:tools]"},
        {"type": "item_reference", "id": call["id"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
    ]});
    let r2 = create_ok(&env, "/min", &body).await;
    let up = last_upstream(&env);
    let tool_use = up["messages"][1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{up}"))
        .clone();
    assert_eq!(tool_use["id"], call["call_id"]);
    // The reference is stored resolved.
    let path = format!(
        "/openai/v1/responses/{}/input_items?order=asc",
        r2["id"].as_str().unwrap()
    );
    let list = json_of(get(&env, &path).await).await;
    assert_eq!(list["data"][1]["type"], "function_call", "{list}");
    // The same reference with its type written with an escape (valid JSON) resolves too.
    let escaped = body
        .to_string()
        .replace(r#""item_reference""#, r#""item\u005freference""#);
    assert!(!escaped.contains("item_reference"), "{escaped}");
    let r = post_text(&env, escaped).await;
    assert_eq!(r.status(), 200);
    json_of(r).await;
    let up = last_upstream(&env);
    assert!(
        up["messages"][1]["content"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "tool_use" && b["id"] == call["call_id"]),
        "{up}"
    );
    // An unknown reference is a 400 naming it.
    let body =
        json!({"model": "gpt-4o", "input": [{"type": "item_reference", "id": "fc_nothing"}]});
    let r = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert_eq!(v["error"]["param"], "input[0].id", "{v}");
}

#[tokio::test]
async fn input_tokens_counts_through_the_upstream() {
    let env = TestEnv::with_api_key().await;
    for base in ["", "/min"] {
        let r = env
            .post(
                &format!("{base}/openai/v1/responses/input_tokens"),
                None,
                &json!({"model": "gpt-4o", "input": "count me", "instructions": "Be brief.",
                        "max_output_tokens": 50, "stream": true}),
            )
            .await;
        assert_eq!(r.status(), 200, "{base}");
        let v = json_of(r).await;
        assert_eq!(v["object"], "response.input_tokens", "{v}");
        assert!(v["input_tokens"].as_u64().unwrap() > 0, "{v}");
        let reqs = env.sim_state().requests();
        let last = reqs.last().unwrap();
        assert_eq!(last.path, "/v1/messages/count_tokens");
        let sent: Value = serde_json::from_slice(&last.body).unwrap();
        assert!(
            sent.get("max_tokens").is_none() && sent.get("stream").is_none(),
            "{sent}"
        );
        assert!(sent["system"].to_string().contains("Be brief."), "{sent}");
    }
    // With previous_response_id, the earlier turns count too.
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "hello there"}),
    )
    .await;
    let r = env
        .post(
            "/openai/v1/responses/input_tokens",
            None,
            &json!({"model": "gpt-4o", "input": "more", "previous_response_id": r1["id"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let reqs = env.sim_state().requests();
    let sent: Value = serde_json::from_slice(&reqs.last().unwrap().body).unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    // Bad input is a 400, unknown previous a 404.
    let r = env
        .post(
            "/openai/v1/responses/input_tokens",
            None,
            &json!({"input": "no model"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"]["param"], "model");
    let r = env
        .post(
            "/openai/v1/responses/input_tokens",
            None,
            &json!({"model": "gpt-4o", "input": "x", "previous_response_id": "resp_gone"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["param"], "previous_response_id");
}

#[tokio::test]
async fn expired_responses_are_gone() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.responses.ttl = std::time::Duration::from_millis(400)),
        ..Opts::default()
    })
    .await;
    let r1 = create_ok(&env, "", &json!({"model": "gpt-4o", "input": "hi"})).await;
    let path = format!("/openai/v1/responses/{}", r1["id"].as_str().unwrap());
    assert_eq!(get(&env, &path).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(get(&env, &path).await.status(), 404);
    let r = env
        .post(
            "/openai/v1/responses",
            None,
            &json!({"model": "gpt-4o", "input": "x", "previous_response_id": r1["id"]}),
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn stored_responses_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let opts = || Opts {
        api_key: Some(API_KEY),
        usage_db: Some(db.clone()),
        ..Opts::default()
    };
    let env = TestEnv::start(opts()).await;
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "remember me"}),
    )
    .await;
    let health = json_of(get(&env, "/health").await).await;
    assert_eq!(health["responses"]["durable"], true, "{health}");
    let state = env.state.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        state.responses.flush(std::time::Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(flushed);
    drop(env);

    let env = TestEnv::start(opts()).await;
    let got = json_of(
        get(
            &env,
            &format!("/openai/v1/responses/{}", r1["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert_eq!(got, r1);
    let _r2 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "who?",
        "previous_response_id": r1["id"]}),
    )
    .await;
    assert!(
        last_upstream(&env)["messages"][0]
            .to_string()
            .contains("remember me")
    );
}

#[tokio::test]
async fn without_usage_recording_responses_are_kept_in_memory() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.usage.enabled = false),
        ..Opts::default()
    })
    .await;
    let health = json_of(get(&env, "/health").await).await;
    assert_eq!(health["responses"]["durable"], false, "{health}");
    assert!(
        health["responses"]["memory_only_reason"]
            .as_str()
            .unwrap()
            .contains("usage")
    );
    let r1 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "hi", "stream": true}),
    )
    .await;
    let _r2 = create_ok(
        &env,
        "",
        &json!({"model": "gpt-4o", "input": "again",
        "previous_response_id": r1["id"]}),
    )
    .await;
    assert_eq!(last_upstream(&env)["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn stored_responses_need_the_proxy_token() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let r = get(&env, "/openai/v1/responses/resp_x").await;
    assert_eq!(r.status(), 401);
    assert_openai_error(&json_of(r).await, "authentication_error");
    let r = env
        .client
        .get(env.url("/openai/v1/responses/resp_x"))
        .bearer_auth(PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A failed stream is not stored: continuing it is a 404.
#[tokio::test]
async fn failed_responses_are_not_stored() {
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
    let (kind, last) = evs.last().unwrap();
    assert_eq!(kind, "response.failed");
    let id = last["response"]["id"].as_str().unwrap();
    assert_eq!(
        get(&env, &format!("/openai/v1/responses/{id}"))
            .await
            .status(),
        404
    );
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

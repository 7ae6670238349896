//! The Responses API's WebSocket mode (`GET /openai/v1/responses` with an upgrade), against
//! the simulated upstream: responses in sequence on one socket, continuations held by the
//! socket (with `store: false`), a function-tool loop, `generate: false`, errors as `error`
//! events that leave the socket usable, pings, a clean close, and the refusals of the upgrade.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

use crate::responses::last_upstream;
use crate::support::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(env: &TestEnv, base: &str, token: Option<&str>) -> Socket {
    try_connect(env, base, token)
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"))
}

async fn try_connect(
    env: &TestEnv,
    base: &str,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}{base}/openai/v1/responses", env.addr);
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(s, _)| s)
}

/// Sends a ping with `payload`; the next message is its pong.
async fn ping(ws: &mut Socket, payload: &[u8]) {
    ws.send(Message::Ping(payload.to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(payload.to_vec().into()));
}

async fn send(ws: &mut Socket, v: &Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON text frame (pings and pongs skipped).
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Events up to and including the one that ends a response (or an `error`).
async fn events_until_done(ws: &mut Socket) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let ev = next_json(ws).await;
        let kind = ev["type"].as_str().unwrap_or_default().to_owned();
        out.push(ev);
        if matches!(
            kind.as_str(),
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        ) {
            return out;
        }
    }
}

async fn create(ws: &mut Socket, mut body: Value) -> Vec<Value> {
    body["type"] = json!("response.create");
    send(ws, &body).await;
    events_until_done(ws).await
}

fn last_response(evs: &[Value]) -> &Value {
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{evs:?}");
    &last["response"]
}

fn output_text(resp: &Value) -> String {
    resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().clone())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect()
}

/// Two responses on one socket; the second continues the first with `previous_response_id`
/// and only its new input, with `store: false`: the socket holds the first.
async fn continuation_held_by_the_socket(base: &str) {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, base, None).await;
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "input": "remember the word pineapple"}),
    )
    .await;
    assert_eq!(evs[0]["type"], "response.created", "{evs:?}");
    for (k, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], k as u64, "{e}");
    }
    assert!(
        evs.iter()
            .any(|e| e["type"] == "response.output_text.delta"),
        "{evs:?}"
    );
    let first = last_response(&evs).clone();
    let first_text = output_text(&first);
    assert!(!first_text.is_empty(), "{first}");
    let id = first["id"].as_str().unwrap().to_owned();

    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "previous_response_id": id,
               "input": "what was the word?"}),
    )
    .await;
    let second = last_response(&evs);
    assert_eq!(second["previous_response_id"], id.as_str());
    assert_ne!(second["id"], first["id"]);
    let up = last_upstream(&env);
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{up}");
    assert!(msgs[0].to_string().contains("pineapple"), "{up}");
    assert_eq!(msgs[1]["role"], "assistant");
    assert!(
        msgs[1].to_string().contains(first_text.trim()),
        "the first answer went back: {up}"
    );
    assert!(msgs[2].to_string().contains("what was the word?"), "{up}");
    // A third turn continues the second: the whole chain goes up.
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false,
               "previous_response_id": second["id"], "input": "thanks"}),
    )
    .await;
    last_response(&evs);
    let up = last_upstream(&env);
    assert_eq!(up["messages"].as_array().unwrap().len(), 5, "{up}");
}

cases!(continuation_held_by_the_socket {
    full: (""),
    min: ("/min"),
});

/// A function-tool loop: the call arrives as a `function_call` item; the next message sends
/// only its `function_call_output`, continuing the response that made the call.
#[tokio::test]
async fn function_tool_loop_over_the_socket() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                       "required": ["location"]}}]);
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "tools": tools,
               "input": "weather in Paris? [sim:tools]"}),
    )
    .await;
    let resp = last_response(&evs).clone();
    let call = resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call: {resp}"))
        .clone();
    assert!(
        evs.iter()
            .any(|e| e["type"] == "response.function_call_arguments.delta"),
        "{evs:?}"
    );
    let call_id = call["call_id"].as_str().unwrap();
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "tools": tools,
               "previous_response_id": resp["id"],
               "input": [{"type": "function_call_output", "call_id": call_id,
                          "output": "18 °C, sunny"}]}),
    )
    .await;
    let done = last_response(&evs);
    assert!(!output_text(done).is_empty(), "{done}");
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

/// `generate: false` answers at once with an empty completed response and calls nothing
/// upstream; a continuation of it carries its input.
#[tokio::test]
async fn warm_up_then_continue() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "generate": false,
               "instructions": "Be brief.", "input": "the secret is 42"}),
    )
    .await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["response.created", "response.completed"]);
    let warm = last_response(&evs).clone();
    assert_eq!(warm["output"], json!([]));
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "instructions": "Be brief.",
               "previous_response_id": warm["id"], "input": "what is the secret?"}),
    )
    .await;
    last_response(&evs);
    let up = last_upstream(&env);
    let all = up["messages"].to_string();
    assert!(all.contains("the secret is 42"), "{up}");
    assert!(all.contains("what is the secret?"), "{up}");
}

/// Bad messages get an `error` event with a status, and the socket keeps serving.
#[tokio::test]
async fn errors_are_events_and_the_socket_stays_usable() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;

    ws.send(Message::text("{not json")).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["status"], 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");

    send(&mut ws, &json!({"type": "session.update"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["status"], 400, "{e}");
    assert_eq!(e["error"]["param"], "type");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response.create")
    );

    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["status"], 400, "{e}");

    let evs = create(&mut ws, json!({"input": "no model"})).await;
    let e = evs.last().unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["status"], 400);
    assert_eq!(e["error"]["param"], "model", "{e}");

    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "previous_response_id": "resp_unknown", "input": "hi"}),
    )
    .await;
    let e = evs.last().unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["status"], 404);
    assert_eq!(e["error"]["code"], "previous_response_not_found", "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id");

    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
    let evs = create(&mut ws, json!({"model": "gpt-4o", "input": "still there?"})).await;
    last_response(&evs);
}

/// An upstream error mid-stream ends that response with `response.failed`; the next one works.
#[tokio::test]
async fn a_failed_response_leaves_the_socket_usable() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "input": "[sim:error-midstream]"}),
    )
    .await;
    assert_eq!(evs.last().unwrap()["type"], "response.failed", "{evs:?}");
    assert!(!evs.iter().any(|e| e["type"] == "response.completed"));
    let evs = create(&mut ws, json!({"model": "gpt-4o", "input": "again"})).await;
    last_response(&evs);
}

/// A message sent while a response runs waits its turn: both are answered, in order.
#[tokio::test]
async fn messages_sent_back_to_back_are_answered_in_order() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    for text in ["first [sim:deltas=8]", "second"] {
        send(
            &mut ws,
            &json!({"type": "response.create", "model": "gpt-4o", "input": text}),
        )
        .await;
    }
    let a = events_until_done(&mut ws).await;
    let b = events_until_done(&mut ws).await;
    let (ra, rb) = (last_response(&a), last_response(&b));
    assert_ne!(ra["id"], rb["id"]);
    assert_eq!(env.upstream_messages(), 2);
    let reqs = env.sim_state().requests();
    assert!(String::from_utf8_lossy(&reqs[0].body).contains("first"));
    assert!(String::from_utf8_lossy(&reqs[1].body).contains("second"));
}

/// Pings are answered with the same payload; a close is answered with a close.
#[tokio::test]
async fn ping_and_clean_close() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    ping(&mut ws, b"are you there").await;
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match reply {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close handshake, got {other:?}"),
    }
}

/// The upgrade itself: refused under /pt (no Responses endpoint there), without the proxy
/// token when one is set, and a plain GET says the path wants POST or an upgrade.
#[tokio::test]
async fn upgrade_refusals() {
    let env = TestEnv::with_api_key().await;
    match try_connect(&env, "/pt", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected a 404, got {:?}", other.map(|_| ())),
    }
    let r = env
        .client
        .get(env.url("/openai/v1/responses"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v = json_of(r).await;
    assert_openai_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{v}"
    );

    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Default::default()
    })
    .await;
    match try_connect(&env, "", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = connect(&env, "", Some(PROXY_TOKEN)).await;
    let evs = create(&mut ws, json!({"model": "gpt-4o", "input": "hi"})).await;
    last_response(&evs);
}

/// Each response on a socket is its own usage row; closing the socket mid-response cancels
/// the upstream request and records the response as abandoned.
#[tokio::test]
async fn each_response_is_recorded_and_a_close_cancels_the_upstream() {
    use std::sync::atomic::Ordering;
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    last_response(&create(&mut ws, json!({"model": "gpt-4o", "input": "one"})).await);
    send(
        &mut ws,
        &json!({"type": "response.create", "model": "gpt-4o",
                "input": "two [sim:gap=30] [sim:deltas=500]"}),
    )
    .await;
    // Wait for the stream to start, then go away.
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "response.created");
    let cancelled = &env.sim_state().streams_cancelled;
    let before = cancelled.load(Ordering::SeqCst);
    drop(ws);
    wait_until(std::time::Duration::from_secs(2), || {
        cancelled.load(Ordering::SeqCst) > before
    })
    .await
    .expect("the upstream stream was cancelled");
    let rows = crate::usage::rows(&env, 2).await;
    assert_eq!(rows[0].dialect, "openai", "{rows:?}");
    assert!(rows[0].stream && !rows[0].abandoned && rows[0].status == 200);
    assert!(rows[0].tokens.output > 0, "{:?}", rows[0]);
    assert!(rows[1].abandoned, "{:?}", rows[1]);
}

/// Codex on the socket: a `namespace` tool's member is called (the call carries the namespace),
/// and the continuation sends only the call's output with `previous_response_id` (`store:
/// false`): the socket's held call reaches the upstream under the joined name again.
#[tokio::test]
async fn namespace_call_continued_on_the_socket() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    let tools = json!([{"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
        "tools": [{"type": "function", "name": "close_agent",
            "parameters": {"type": "object", "properties": {"target": {"type": "string"}},
                           "required": ["target"]}}]}]);
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "tools": tools, "input": "close it",
            "tool_choice": {"type": "function", "namespace": "multi_agent_v1", "name": "close_agent"}}),
    )
    .await;
    let first = last_response(&evs);
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call", "{first}");
    assert_eq!(call["namespace"], "multi_agent_v1");
    assert_eq!(call["name"], "close_agent");
    let evs = create(
        &mut ws,
        json!({"model": "gpt-4o", "store": false, "tools": tools,
            "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "closed"}]}),
    )
    .await;
    last_response(&evs);
    let sent = last_upstream(&env);
    let uses: Vec<&Value> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses.len(), 1, "{sent}");
    assert_eq!(uses[0]["name"], "multi_agent_v1__close_agent");
    assert_eq!(uses[0]["id"], call["call_id"]);
}

/// With client keys, the upgrade takes a valid key (or the admin token) and refuses others; the
/// key's limits apply to each response on the socket (here rpm = 1).
#[tokio::test]
async fn client_keys_on_the_socket() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let r = env
        .client
        .post(env.url("/api/keys"))
        .header("x-api-key", PROXY_TOKEN)
        .json(&json!({"name": "socket-client", "rpm": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = json_of(r).await["key"].as_str().unwrap().to_owned();
    match try_connect(&env, "", Some("ccp-not-a-real-key-000000000000000000000")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = connect(&env, "", Some(&key)).await;
    last_response(&create(&mut ws, json!({"model": "gpt-4o", "input": "one"})).await);
    let evs = create(&mut ws, json!({"model": "gpt-4o", "input": "two"})).await;
    let e = evs.last().unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["status"], 429, "the key's rpm applies per response: {e}");
    assert_eq!(env.upstream_messages(), 1);
    assert!(!e.to_string().contains(&key));
}

/// A socket keeps its connection's place on its serving thread (what the acceptor's choice and
/// `/health` see) while the session lasts, though the HTTP connection it came from has ended;
/// closed, it gives the place back.
#[tokio::test]
async fn a_socket_counts_as_an_open_connection_until_it_closes() {
    let env = TestEnv::with_api_key().await;
    let mut ws = connect(&env, "", None).await;
    ping(&mut ws, b"up?").await;
    // The socket and the client's own connection.
    assert_eq!(env.serving().await.1.iter().sum::<u64>(), 2);
    ws.close(None).await.unwrap();
    drop(ws);
    let mut left = 0;
    for _ in 0..100 {
        left = env.serving().await.1.iter().sum::<u64>();
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1, "the closed socket is still counted");
}

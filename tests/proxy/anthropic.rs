//! The Anthropic Messages API through each mode, over real sockets, against the
//! simulated upstream.

use std::time::Duration;

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn health_reports_state_without_secrets() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    let resp = env.client.get(env.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for secret in [API_KEY, PROXY_TOKEN, OAUTH_TOKEN, REFRESH_TOKEN] {
        assert!(!text.contains(secret), "health leaks a secret: {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["credentials"]["active"], "oauth");
    assert_eq!(v["credentials"]["oauth"]["expired"], false);
    assert_eq!(v["auth_required"], true);
}

async fn full_mode_shapes_request_as_claude_code_with_api_key(path: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let mut body = message("hello", false);
    body["system"] = json!("Be brief.");
    body["future_field"] = json!({"kept": [1, 2, 3]});
    let resp = env.post(path, Some("dummy"), &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("request-id").is_some());
    let v = json_of(resp).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");

    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.header("x-api-key"), Some(API_KEY));
    assert_eq!(up.header("authorization"), None);
    assert_eq!(up.header("anthropic-beta"), Some("claude-code-20250219"));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(up.header("x-app"), Some("cli"));
    assert_eq!(
        up.header("anthropic-dangerous-direct-browser-access"),
        Some("true")
    );
    assert!(up.header("user-agent").unwrap().starts_with("claude-cli/"));
    assert!(
        up.header("user-agent")
            .unwrap()
            .ends_with(" (external, cli)")
    );
    let sent = up.json();
    assert_eq!(sent["system"][0]["text"], IDENTITY);
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["system"][1], json!({"type":"text","text":"Be brief."}));
    assert_eq!(sent["future_field"], json!({"kept": [1, 2, 3]}));
}

cases!(full_mode_shapes_request_as_claude_code_with_api_key {
    full: ("/v1/messages"),
    full_prefix: ("/full/v1/messages")
});

#[tokio::test]
async fn full_mode_prefers_subscription_over_client_api_key() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    let resp = env
        .client
        .post(env.url("/v1/messages?beta=true"))
        .header("x-api-key", CLIENT_KEY)
        .header(
            "anthropic-beta",
            "interleaved-thinking-2025-05-14,claude-code-20250219",
        )
        .header("anthropic-version", "2026-10-21")
        .json(&message("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.query.as_deref(), Some("beta=true"));
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {OAUTH_TOKEN}").as_str())
    );
    assert_eq!(up.header("x-api-key"), None);
    assert_eq!(up.header("anthropic-version"), Some("2026-10-21"));
    assert_eq!(
        up.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14,claude-code-20250219,oauth-2025-04-20")
    );
}

#[tokio::test]
async fn client_credentials_are_forwarded_correctly() {
    let env = TestEnv::start(Opts::default()).await;
    // An API key sent as Authorization: Bearer (current SDKs) goes upstream as x-api-key.
    let resp = env
        .client
        .post(env.url("/v1/messages"))
        .bearer_auth(CLIENT_KEY)
        .json(&message("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.header("x-api-key"), Some(CLIENT_KEY));
    assert_eq!(up.header("authorization"), None);

    // A client OAuth token goes upstream as a bearer token with the oauth beta.
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 401);
    let resp = env
        .client
        .post(env.url("/v1/messages"))
        .bearer_auth(OAUTH_TOKEN)
        .json(&message("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {OAUTH_TOKEN}").as_str())
    );
    assert!(
        up.header("anthropic-beta")
            .unwrap()
            .contains("oauth-2025-04-20")
    );
}

async fn placeholder_keys_are_never_forwarded(mode: &str) {
    let env = TestEnv::start(Opts::default()).await;
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            Some("dummy"),
            &message("hi", false),
        )
        .await;
    assert_eq!(resp.status(), 401, "mode {mode}");
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "authentication_error");
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing reached upstream"
    );

    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            Some("dummy"),
            &message("hi", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.header("x-api-key"), Some(API_KEY), "mode {mode}");
}

cases!(placeholder_keys_are_never_forwarded {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn minimal_and_passthrough_never_use_subscription(mode: &str) {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(&format!("{mode}/v1/messages"), None, &message("hi", false))
        .await;
    assert_eq!(resp.status(), 401);
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "authentication_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only in full mode")
    );
    assert!(env.sim_state().requests().is_empty());
}

cases!(minimal_and_passthrough_never_use_subscription {
    min: ("/min"),
    pt: ("/pt")
});

#[tokio::test]
async fn minimal_mode_sends_body_bytes_unchanged() {
    let env = TestEnv::start(Opts::default()).await;
    // Odd spacing and key order must survive.
    let raw = b"{ \"model\":\"claude-sonnet-4-5\",  \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":9, \"zzz\":null}";
    let resp = env
        .client
        .post(env.url("/min/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("user-agent", "my-tool/1.0")
        .body(&raw[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(&up.body[..], &raw[..]);
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(up.header("x-api-key"), Some(CLIENT_KEY));
    assert_eq!(up.header("anthropic-beta"), None);
    assert_eq!(up.header("x-app"), None);
    assert_ne!(up.header("user-agent"), Some("my-tool/1.0"));
}

#[tokio::test]
async fn passthrough_relays_bytes_and_headers() {
    let env = TestEnv::start(Opts::default()).await;
    let raw = b"{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    let resp = env
        .client
        .post(env.url("/pt/v1/messages?beta=true"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-custom-header", "kept")
        .header("user-agent", "my-tool/1.0")
        .body(&raw[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("anthropic-ratelimit-unified-status")
            .is_some()
    );
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(&up.body[..], &raw[..]);
    assert_eq!(up.query.as_deref(), Some("beta=true"));
    assert_eq!(up.header("x-custom-header"), Some("kept"));
    assert_eq!(up.header("user-agent"), Some("my-tool/1.0"));
    assert_eq!(up.header("x-api-key"), Some(CLIENT_KEY));
    assert_eq!(up.header("x-app"), None);
}

#[tokio::test]
async fn passthrough_relays_other_v1_paths() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .client
        .get(env.url("/pt/v1/agents?limit=2"))
        .send()
        .await
        .unwrap();
    // The simulated upstream has no /v1/agents (Managed Agents): its own 404 comes back unchanged.
    assert_eq!(resp.status(), 404);
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "not_found_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/agents")
    );
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(up.path, "/v1/agents");
    assert_eq!(up.query.as_deref(), Some("limit=2"));
}

async fn proxy_token_is_required_and_never_forwarded(mode: &str, key: Option<&str>) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(&format!("{mode}/v1/messages"), key, &message("hi", false))
        .await;
    assert_eq!(resp.status(), 401);
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "authentication_error");
    assert!(!v.to_string().contains(PROXY_TOKEN));
    assert!(env.sim_state().requests().is_empty());
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            Some(PROXY_TOKEN),
            &message("hi", false),
        )
        .await;
    assert_eq!(resp.status(), 200, "mode {mode}");
    let resp = env
        .client
        .post(env.url(&format!("{mode}/v1/messages")))
        .bearer_auth(PROXY_TOKEN)
        .header("anthropic-version", "2023-06-01")
        .json(&message("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "mode {mode}");
    for up in env.sim_state().requests() {
        for (k, v) in &up.headers {
            assert!(!v.contains(PROXY_TOKEN), "proxy token forwarded in {k}");
        }
        assert_eq!(up.header("x-api-key"), Some(API_KEY));
    }
    // OpenAI routes are protected too, with the OpenAI envelope.
    let resp = env
        .post(
            "/openai/v1/chat/completions",
            Some("nope"),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 401);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["type"], "authentication_error");
}

// The wrong token differs per mode: none, another value, one character short.
cases!(proxy_token_is_required_and_never_forwarded {
    full: ("", None),
    min: ("/min", Some("wrong")),
    pt: ("/pt", Some("proxy-token-for-tests-7f3a9")),
});

async fn streaming_in_each_mode_relays_events_in_order(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    // The upstream calls only tools the request declares.
    let mut body = message("[sim:tools] [sim:unknown-event]", true);
    body["tools"] = json!([{"name": "get_weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]);
    let resp = env.post(&format!("{mode}/v1/messages"), None, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = resp.text().await.unwrap();
    let events = parse_sse(&body);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{mode}");
    assert_eq!(names.last(), Some(&"message_stop"), "{mode}");
    assert!(
        names.contains(&"sim_future_event"),
        "unknown events forwarded"
    );
    assert!(names.contains(&"ping"));
    // Tool arguments reassemble into the exact JSON.
    let args: String = events
        .iter()
        .filter(|(_, d)| d["index"] == 1 && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed["location"], "New York, NY");
}

cases!(streaming_in_each_mode_relays_events_in_order {
    full: (""),
    full_prefix: ("/full"),
    min: ("/min"),
    pt: ("/pt")
});

async fn stream_is_relayed_as_it_arrives_not_buffered(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let before = env
        .sim_state()
        .streams_completed
        .load(std::sync::atomic::Ordering::SeqCst);
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            None,
            &message("[sim:gap=150] [sim:deltas=10]", true),
        )
        .await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    // The upstream has not finished its stream when the first event arrives.
    assert_eq!(
        env.sim_state()
            .streams_completed
            .load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the first event arrived only after the whole upstream stream ({mode})"
    );
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    assert_eq!(
        env.sim_state()
            .streams_completed
            .load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
}

cases!(stream_is_relayed_as_it_arrives_not_buffered {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

#[tokio::test]
async fn client_disconnect_cancels_upstream_stream() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            "/v1/messages",
            None,
            &message("[sim:gap=50] [sim:deltas=200]", true),
        )
        .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let cancelled = &env.sim_state().streams_cancelled;
    for _ in 0..100 {
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        env.sim_state()
            .streams_completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

async fn mid_stream_error_reaches_client_as_error_event(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            None,
            &message("[sim:error-midstream]", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = parse_sse(&resp.text().await.unwrap());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
}

cases!(mid_stream_error_reaches_client_as_error_event {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn upstream_errors_keep_status_body_and_headers(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    for (status, kind) in [
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (403, "permission_error"),
    ] {
        let resp = env
            .post(
                &format!("{mode}/v1/messages"),
                None,
                &message(&format!("[sim:status={status}]"), false),
            )
            .await;
        assert_eq!(resp.status().as_u16(), status);
        if status == 429 {
            assert_eq!(resp.headers()["retry-after"], "7");
            assert!(
                resp.headers()
                    .get("anthropic-ratelimit-requests-remaining")
                    .is_some()
            );
        }
        assert_eq!(resp.headers()["request-id"], "req_sim_error");
        let v = json_of(resp).await;
        assert_anthropic_error(&v, kind);
        assert_eq!(v["error"]["message"], format!("Simulated error {status}"));
    }
}

cases!(upstream_errors_keep_status_body_and_headers {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

/// `upstream_h2c`: the upstream leg is HTTP/2 with prior knowledge, many requests on one
/// connection; answers and streams are what they are over HTTP/1.1.
async fn h2c_upstream_leg_carries_answers_and_streams(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.upstream.h2c = true),
        ..Opts::default()
    })
    .await;
    let url = format!("{mode}/v1/messages");
    let resp = env.post(&url, None, &message("hi", false)).await;
    assert_eq!(resp.status(), 200, "{mode}");
    let v = json_of(resp).await;
    assert_eq!(v["type"], "message");
    let streams = (0..8).map(|_| async {
        let resp = env
            .post(&url, None, &message("[sim:deltas=16]", true))
            .await;
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        let names: Vec<String> = parse_sse(&body).into_iter().map(|(e, _)| e).collect();
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    });
    futures_util::future::join_all(streams).await;
    let seen = env.sim_state().requests();
    assert_eq!(seen.len(), 9);
    // HTTP/2 carries the authority in its pseudo-header: no `host` header reached the upstream.
    for r in &seen {
        assert!(
            !r.headers.iter().any(|(k, _)| k == "host"),
            "{mode}: {:?}",
            r.headers
        );
    }
}

cases!(h2c_upstream_leg_carries_answers_and_streams {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn exactly_one_upstream_request_per_client_request(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let mut n = 0;
    for text in ["hi", "[sim:status=529]", "[sim:status=500]"] {
        for stream in [false, true] {
            let _ = env
                .post(&format!("{mode}/v1/messages"), None, &message(text, stream))
                .await
                .bytes()
                .await;
            n += 1;
            assert_eq!(env.sim_state().requests().len(), n);
        }
    }
}

cases!(exactly_one_upstream_request_per_client_request {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn malformed_json_is_a_400_in_full_and_minimal(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    for body in [&b"{not json"[..], b"", b"[1,2", b"\"x\""] {
        let resp = env
            .client
            .post(env.url(&format!("{mode}/v1/messages")))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        // A JSON scalar/array is valid JSON for minimal but not an object for full.
        if mode == "/min" && body == b"\"x\"" {
            continue;
        }
        assert_eq!(resp.status(), 400, "mode {mode} body {body:?}");
        let v = json_of(resp).await;
        assert_anthropic_error(&v, "invalid_request_error");
    }
    let resp = env
        .post("/v1/messages", None, &json!({"system": 5, "messages": []}))
        .await;
    assert_eq!(resp.status(), 400);
    let v = json_of(resp).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("system"));
    // Passthrough does not judge: the upstream's own 400 comes back.
    let resp = env
        .client
        .post(env.url("/pt/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v = json_of(resp).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parsing the body")
    );
}

cases!(malformed_json_is_a_400_in_full_and_minimal {
    full: (""),
    full_prefix: ("/full"),
    min: ("/min")
});

async fn oversized_body_is_413(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        max_body_bytes: Some(1024),
        ..Opts::default()
    })
    .await;
    let big = message(&"x".repeat(4096), false);
    let resp = env.post(&format!("{mode}/v1/messages"), None, &big).await;
    assert_eq!(resp.status(), 413);
    assert_anthropic_error(&json_of(resp).await, "request_too_large");
    // Chunked (no content-length) bodies are limited too.
    let stream =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let resp = env
        .client
        .post(env.url("/v1/messages"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(env.sim_state().requests().is_empty());
}

cases!(oversized_body_is_413 {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn unknown_route_is_404_and_wrong_method_405(path: &str) {
    let env = TestEnv::start(Opts::default()).await;
    let resp = env.client.get(env.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_anthropic_error(&json_of(resp).await, "not_found_error");
    let resp = env
        .client
        .get(env.url("/openai/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(json_of(resp).await["error"]["message"].is_string());
    let resp = env.client.get(env.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 405, "{path}");
    assert_anthropic_error(&json_of(resp).await, "invalid_request_error");
    let resp = env
        .client
        .delete(env.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = env
        .client
        .get(env.url("/openai/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Claude Code's HEAD / at startup gets a harmless 404.
    let resp = env.client.head(env.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

cases!(unknown_route_is_404_and_wrong_method_405 {
    full: ("/v1/messages"),
    min: ("/min/v1/messages"),
    pt: ("/pt/v1/messages")
});

async fn upstream_unreachable_is_502_and_slow_upstream_504(mode: &str) {
    // A port that was just free: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://{dead}")),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(&format!("{mode}/v1/messages"), None, &message("hi", false))
        .await;
    assert_eq!(resp.status(), 502);
    assert_anthropic_error(&json_of(resp).await, "api_error");
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_timeout: Some(Duration::from_millis(300)),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post("/v1/messages", None, &message("[sim:delay=3000]", false))
        .await;
    assert_eq!(resp.status(), 504);
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "api_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );
}

cases!(upstream_unreachable_is_502_and_slow_upstream_504 {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

async fn count_tokens_and_models_in_each_mode(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            &format!("{mode}/v1/messages/count_tokens"),
            None,
            &json!({
                "model": "claude-sonnet-4-5", "messages": [{"role":"user","content":"count me"}]
            }),
        )
        .await;
    assert_eq!(resp.status(), 200, "{mode}");
    assert!(json_of(resp).await["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        env.sim_state().last_request().unwrap().path,
        "/v1/messages/count_tokens"
    );

    let resp = env
        .client
        .get(env.url(&format!("{mode}/v1/models")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert!(v["data"].as_array().unwrap().len() >= 3);
    assert_eq!(v["data"][0]["type"], "model");
}

cases!(count_tokens_and_models_in_each_mode {
    full: (""),
    full_prefix: ("/full"),
    min: ("/min"),
    pt: ("/pt")
});

#[tokio::test]
async fn claude_code_requests_go_through_full_mode() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/clients/");
    for (name, headers) in [
        ("claude_code_oauth", "claude_code_oauth"),
        ("claude_code_api_key", "claude_code_api_key"),
        ("claude_code_tool_followup", "claude_code_oauth"),
    ] {
        let raw = std::fs::read(format!("{dir}{name}.request.json")).unwrap();
        let meta: Value =
            serde_json::from_slice(&std::fs::read(format!("{dir}{headers}.headers.json")).unwrap())
                .unwrap();
        let mut rb = env
            .client
            .post(env.url(&format!("/v1/messages?{}", meta["query"].as_str().unwrap())));
        for (k, v) in meta["headers"].as_object().unwrap() {
            if ["content-length", "connection", "accept-encoding"].contains(&k.as_str()) {
                continue;
            }
            rb = rb.header(k, v.as_str().unwrap());
        }
        let resp = rb.body(raw.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let events = parse_sse(&resp.text().await.unwrap());
        assert_eq!(events.last().unwrap().0, "message_stop");

        let up = env.sim_state().last_request().unwrap();
        let client_beta = meta["headers"]["anthropic-beta"].as_str().unwrap();
        let mut expected: Vec<&str> = client_beta.split(',').collect();
        if !expected.contains(&"oauth-2025-04-20") {
            expected.push("oauth-2025-04-20");
        }
        assert_eq!(up.header("anthropic-beta").unwrap(), expected.join(","));
        // Everything but the injected identity block is exactly what the client sent.
        let mut sent = up.json();
        let orig: Value = serde_json::from_slice(&raw).unwrap();
        let first = sent["system"].as_array_mut().unwrap().remove(0);
        assert_eq!(first["text"], IDENTITY);
        assert_eq!(sent, orig, "{name}");
    }
}

#[tokio::test]
async fn expired_subscription_without_refresh_is_a_clear_401() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(
            OAUTH_TOKEN,
            "sk-ant-ort01-invalid-refresh",
            -60_000,
        )),
        ..Opts::default()
    })
    .await;
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 401);
    let v = json_of(resp).await;
    assert_anthropic_error(&v, "authentication_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ccproxy auth login"), "{msg}");
    assert!(!msg.contains(OAUTH_TOKEN));
}

async fn client_disconnect_cancels_pending_non_stream_request(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let client = ccproxy::http::client_builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = client
        .post(env.url(&format!("{mode}/v1/messages")))
        .header("anthropic-version", "2023-06-01")
        .json(&message("[sim:delay=5000]", false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let cancelled = &env.sim_state().requests_cancelled;
    for _ in 0..100 {
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cancelled.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{mode}"
    );
}

cases!(client_disconnect_cancels_pending_non_stream_request {
    full: (""),
    min: ("/min"),
    pt: ("/pt")
});

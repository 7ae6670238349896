//! Request ids and timing headers on every response.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn request_ids_and_server_timing_on_every_response() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    // Generated when absent.
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");
    let timing = resp.headers()["server-timing"].to_str().unwrap();
    assert!(
        timing.starts_with("upstream;dur=") && timing.contains(", proxy;dur="),
        "{timing}"
    );
    // Kept when the client sends one; on errors and OpenAI routes too.
    for (path, body) in [
        ("/min/v1/messages", message("hi", true)),
        ("/v1/messages", json!({"system": 5})),
        ("/openai/v1/chat/completions", json!({"model": "gpt-4o"})),
    ] {
        let resp = env
            .client
            .post(env.url(path))
            .header("x-request-id", "client-chosen-id-42")
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "client-chosen-id-42");
        assert!(resp.headers().get("server-timing").is_some());
    }
    // An unreasonable id is replaced.
    let resp = env
        .client
        .post(env.url("/v1/messages"))
        .header("x-request-id", "x".repeat(300))
        .json(&message("hi", false))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    // Two generated ids differ.
    let a = env.post("/v1/messages", None, &message("hi", false)).await;
    let b = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}

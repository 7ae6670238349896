//! Usage rows recorded by the running proxy (stream, non-stream, error,
//! abandoned stream, OpenAI), and the usage API and dashboard it serves.

use std::time::Duration;

use crate::support::*;
use ccproxy::observability::UsageRecord;
use futures_util::StreamExt;
use serde_json::json;

/// Waits until the store holds `n` rows; returns them (oldest first).
async fn rows(env: &TestEnv, n: usize) -> Vec<UsageRecord> {
    let path = env.dir.path().join("usage.db");
    for _ in 0..200 {
        if let Some(w) = &env.state.usage {
            w.flush();
        }
        if let Ok(conn) = rusqlite::Connection::open(&path) {
            let count: i64 = conn
                .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
                .unwrap_or(0);
            if count as usize >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let reader = ccproxy::observability::usage::report::UsageReader::open(&path)
        .unwrap()
        .unwrap();
    let mut recent = reader.recent(None, 1000).unwrap();
    recent.sort_by_key(|r| r.ts_ms);
    assert_eq!(recent.len(), n, "{recent:#?}");
    recent
}

#[tokio::test]
async fn every_kind_of_request_is_recorded() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    // 1. non-stream with cache usage
    let r = env
        .post("/min/v1/messages", None, &message("[sim:cache]", false))
        .await;
    let sent: serde_json::Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // 2. stream through passthrough
    let r = env
        .post("/pt/v1/messages", None, &message("[sim:deltas=3]", true))
        .await;
    r.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // 3. upstream error
    let r = env
        .post("/v1/messages", None, &message("[sim:status=529]", false))
        .await;
    assert_eq!(r.status(), 529);
    r.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // 4. abandoned stream
    let r = env
        .post(
            "/v1/messages",
            None,
            &message("[sim:gap=30] [sim:deltas=500]", true),
        )
        .await;
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 5. OpenAI, stream
    let r = env
        .post(
            "/openai/v1/chat/completions",
            None,
            &json!({"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
    r.bytes().await.unwrap();

    let rows = rows(&env, 5).await;
    let r0 = &rows[0];
    assert_eq!(
        (r0.mode.as_str(), r0.dialect.as_str()),
        ("minimal", "anthropic")
    );
    assert!(!r0.stream && r0.status == 200 && !r0.abandoned);
    assert_eq!(
        r0.tokens.input,
        sent["usage"]["input_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        r0.tokens.output,
        sent["usage"]["output_tokens"].as_u64().unwrap()
    );
    assert_eq!((r0.tokens.cache_read, r0.tokens.cache_write), (8192, 2048));
    assert_eq!(r0.model.as_deref(), Some("claude-sonnet-4-5"));
    // Sonnet: $3 in, $15 out, $3.75 cache write, $0.30 cache read per million.
    let expect = (r0.tokens.input as f64 * 3.0
        + r0.tokens.output as f64 * 15.0
        + 2048.0 * 3.75
        + 8192.0 * 0.30)
        / 1e6;
    assert!(
        (r0.cost_usd.unwrap() - expect).abs() < 1e-9,
        "{:?} vs {expect}",
        r0.cost_usd
    );
    assert!(r0.ttft_ms.is_some() && r0.duration_ms > 0.0);
    assert_eq!(r0.credential.as_deref(), Some("server_api_key"));

    let r1 = &rows[1];
    assert_eq!(r1.mode, "passthrough");
    assert!(r1.stream && !r1.abandoned && r1.status == 200);
    assert!(r1.tokens.output > 0 && r1.tokens.input > 0);
    assert!(r1.ttft_ms.unwrap() <= r1.duration_ms);

    let r2 = &rows[2];
    assert_eq!((r2.status, r2.upstream_status), (529, Some(529)));
    assert_eq!(r2.tokens.output, 0);

    let r3 = &rows[3];
    assert!(r3.stream && r3.abandoned, "{r3:?}");
    assert!(r3.tokens.input > 0, "what was delivered is recorded");

    let r4 = &rows[4];
    assert_eq!(r4.dialect, "openai");
    assert!(r4.stream && !r4.abandoned);
    assert!(r4.model.as_deref().unwrap().starts_with("claude-haiku"));
    assert!(r4.cost_usd.is_some());
    assert!(r4.tokens.output > 0);

    // Nothing secret is stored.
    let db = std::fs::read(env.dir.path().join("usage.db")).unwrap();
    let text = String::from_utf8_lossy(&db);
    assert!(!text.contains(API_KEY));
}

#[tokio::test]
async fn usage_api_and_dashboard_require_the_proxy_token() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let r = env
        .post("/v1/messages", Some(PROXY_TOKEN), &message("hi", false))
        .await;
    r.bytes().await.unwrap();
    rows(&env, 1).await;
    for path in ["/api/usage?since=24h", "/dashboard"] {
        let r = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = env
        .client
        .get(env.url("/api/usage?since=24h"))
        .bearer_auth(PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v.to_string().contains("claude-sonnet-4-5"), "{v}");
    let r = env
        .client
        .get(env.url(&format!("/dashboard?token={PROXY_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<html") && html.contains("/api/usage"));
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !html.contains(external),
            "the page loads nothing external ({external})"
        );
    }
}

/// An upstream that breaks in the middle of a non-stream body is a failure of
/// the upstream, on both dialects: the client gets a 502 in its dialect, and the
/// usage record says 502 with the error, not that the client walked away.
async fn reset_mid_body_is_recorded_as_an_upstream_failure(path: &str, body: serde_json::Value) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let r = env.post(path, None, &body).await;
    assert_eq!(r.status(), 502, "{path}");
    r.bytes().await.unwrap();
    let rows = rows(&env, 1).await;
    let row = &rows[0];
    assert_eq!(row.status, 502, "{row:?}");
    assert_eq!(row.upstream_status, Some(200), "{row:?}");
    assert!(
        !row.abandoned,
        "an upstream failure is not an abandoned request: {row:?}"
    );
    let error = row.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the upstream connection broke before the end of its response"),
        "{row:?}"
    );
}

cases!(reset_mid_body_is_recorded_as_an_upstream_failure {
    anthropic: ("/min/v1/messages", message("[sim:reset-midstream]", false)),
    openai: (
        "/min/openai/v1/chat/completions",
        json!({"model": "gpt-4o", "stream": false,
            "messages": [{"role": "user", "content": "[sim:reset-midstream]"}]}),
    ),
});

//! Prometheus metrics after known traffic. This test binary holds exactly one
//! test: the metrics recorder is process-wide, and `ccproxy_requests_total` is
//! labelled by mode, dialect and status only, so exact counts (not even deltas)
//! cannot hold while other tests send traffic in the same process.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use crate::support::*;
use serde_json::json;

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_reflect_known_traffic() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    // Protected by the proxy token.
    let resp = env.client.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    for _ in 0..3 {
        let r = env
            .post(
                "/min/v1/messages",
                Some(PROXY_TOKEN),
                &message("[sim:cache]", false),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let r = env
            .post("/pt/v1/messages", Some(PROXY_TOKEN), &message("hi", true))
            .await;
        r.bytes().await.unwrap();
    }
    let r = env
        .post(
            "/v1/messages",
            Some(PROXY_TOKEN),
            &message("[sim:status=529]", false),
        )
        .await;
    assert_eq!(r.status(), 529);
    r.bytes().await.unwrap();
    let r = env
        .post(
            "/openai/v1/chat/completions",
            Some(PROXY_TOKEN),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    // Records are metered off the request path: wait for them to land.
    let mut text = String::new();
    for _ in 0..100 {
        text = env
            .client
            .get(env.url("/metrics"))
            .bearer_auth(PROXY_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "ccproxy_requests_total", &[]) >= 7.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = |mode: &str, dialect: &str, status: &str| {
        metric(
            &text,
            "ccproxy_requests_total",
            &[("mode", mode), ("dialect", dialect), ("status", status)],
        )
    };
    assert_eq!(req("minimal", "anthropic", "2xx"), 3.0, "{text}");
    assert_eq!(req("passthrough", "anthropic", "2xx"), 2.0);
    assert_eq!(req("full", "anthropic", "5xx"), 1.0);
    assert_eq!(req("full", "openai", "2xx"), 1.0);
    assert_eq!(
        metric(
            &text,
            "ccproxy_upstream_errors_total",
            &[("kind", "overloaded")]
        ),
        1.0
    );
    // The sim reports 2048 cache writes and 8192 cache reads per [sim:cache] request.
    assert_eq!(
        metric(
            &text,
            "ccproxy_tokens_total",
            &[("model", "claude-sonnet-4-5"), ("kind", "cache_read")]
        ),
        3.0 * 8192.0
    );
    assert!(metric(&text, "ccproxy_tokens_total", &[("kind", "output")]) > 0.0);
    assert_eq!(
        metric(
            &text,
            "ccproxy_request_duration_seconds_count",
            &[("mode", "minimal")]
        ),
        3.0
    );
    assert!(
        metric(
            &text,
            "ccproxy_ttft_seconds_count",
            &[("mode", "passthrough")]
        ) >= 2.0
    );
    assert!(text.contains("ccproxy_proxy_overhead_seconds_bucket"));
    assert_eq!(metric(&text, "ccproxy_active_streams", &[]), 0.0);
    for secret in [API_KEY, PROXY_TOKEN] {
        assert!(!text.contains(secret));
    }

    // OAuth refreshes are counted by result.
    let oauth = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, -1_000)),
        ..Opts::default()
    })
    .await;
    let r = oauth
        .post("/v1/messages", None, &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    let text = oauth
        .client
        .get(oauth.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&text, "ccproxy_oauth_refreshes_total", &[("result", "ok")]),
        1.0,
        "{text}"
    );
}

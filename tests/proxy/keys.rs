//! Client keys (issue 13) through real sockets: the gate, each limit in both dialects and
//! streaming, revoke, rotate, expiry, model and mode restrictions, the admin routes, spend
//! surviving a restart, and the key absent from the database, the metrics and the upstream.

use std::time::Duration;

use crate::support::*;
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn keyed_env(usage_db: Option<std::path::PathBuf>) -> TestEnv {
    TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        usage_db,
        ..Opts::default()
    })
    .await
}

/// Creates a key through `POST /api/keys` (admin token); returns the key.
async fn create(env: &TestEnv, spec: Value) -> String {
    let r = env
        .client
        .post(env.url("/api/keys"))
        .header("x-api-key", PROXY_TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ccp-") && key.len() >= 36, "{v}");
    key
}

async fn post_bearer(env: &TestEnv, path: &str, key: &str, body: &Value) -> reqwest::Response {
    env.client
        .post(env.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Waits until the observer has handed every finished request to the keys and the store.
async fn settle(env: &TestEnv) {
    let state = env.state.clone();
    tokio::task::spawn_blocking(move || {
        state.observer.flush(Duration::from_secs(5));
        if let Some(w) = &state.usage {
            w.flush();
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_key_opens_both_dialects_and_never_goes_upstream() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "bot"})).await;

    // Anthropic: x-api-key, object and stream; OpenAI: bearer, object and stream.
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    let r = env
        .post("/v1/messages", Some(&key), &message("[sim:deltas=3]", true))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("message_stop"));
    let r = post_bearer(
        &env,
        "/openai/v1/chat/completions",
        &key,
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post_bearer(&env, "/openai/v1/chat/completions", &key, &chat("hi", true)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));

    // No key, an unknown key, a near miss: 401 in the route's dialect.
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), 401);
    assert_anthropic_error(&json_of(r).await, "authentication_error");
    // The last character changed (a random key may already end with `x`).
    let other = if key.ends_with('x') { 'y' } else { 'x' };
    let near = format!("{}{other}", &key[..key.len() - 1]);
    for bad in ["ccp-unknown0000000000000000000000000000", near.as_str()] {
        let r = post_bearer(&env, "/openai/v1/chat/completions", bad, &chat("hi", false)).await;
        assert_eq!(r.status(), 401);
        assert_openai_error(&json_of(r).await, "authentication_error");
    }
    // Passthrough too: the key is taken off, the server's key goes upstream.
    let r = env
        .post("/pt/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    // The proxy (admin) token still works on proxied routes.
    let r = env
        .post("/v1/messages", Some(PROXY_TOKEN), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);

    // The upstream saw the server's key, never the client key.
    for req in env.sim_state().requests() {
        for (_, v) in &req.headers {
            assert!(!v.contains(&key), "client key forwarded upstream: {req:?}");
        }
    }
    // Usage rows carry the key's name.
    settle(&env).await;
    let rows = crate::usage::rows(&env, 9).await;
    let named = rows
        .iter()
        .filter(|r| r.client_key.as_deref() == Some("bot"))
        .count();
    assert_eq!(named, 5, "{rows:#?}");
    let pt = env
        .sim_state()
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/messages")
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "x-api-key" && v == API_KEY)
        })
        .count();
    assert_eq!(pt, 6);
}

#[tokio::test]
async fn admin_routes_refuse_client_keys() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "bot"})).await;
    for path in ["/api/keys", "/api/usage", "/metrics", "/dashboard"] {
        let r = env
            .client
            .get(env.url(path))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let t = r.text().await.unwrap();
        assert!(t.contains("admin"), "{path}: {t}");
        assert!(!t.contains(&key), "{path}: {t}");
        let r = env
            .client
            .get(env.url(&format!("{path}?token={key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}?token=");
        let r = env
            .client
            .get(env.url(path))
            .header("x-api-key", PROXY_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A client key cannot create keys.
    let r = env
        .client
        .post(env.url("/api/keys"))
        .bearer_auth(&key)
        .json(&json!({"name": "escalate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The listing never shows a key.
    let r = env
        .client
        .get(env.url("/api/keys"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(&key), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["keys"][0]["name"], "bot");
    assert_eq!(v["keys"][0]["prefix"], format!("{}…", &key[..8]));
}

#[tokio::test]
async fn revoke_and_rotate_apply_to_the_next_request() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "ci", "rpm": 100})).await;
    assert_eq!(
        env.post("/v1/messages", Some(&key), &message("hi", false))
            .await
            .status(),
        200
    );

    let r = env
        .client
        .post(env.url("/api/keys/ci/rotate"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new = json_of(r).await["key"].as_str().unwrap().to_owned();
    assert_ne!(new, key);
    assert_eq!(
        env.post("/v1/messages", Some(&key), &message("hi", false))
            .await
            .status(),
        401
    );
    assert_eq!(
        env.post("/v1/messages", Some(&new), &message("hi", false))
            .await
            .status(),
        200
    );

    let r = env
        .client
        .delete(env.url("/api/keys/ci"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post_bearer(
        &env,
        "/openai/v1/chat/completions",
        &new,
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 401);
    let v = json_of(r).await;
    assert_openai_error(&v, "authentication_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    // Revoking every key does not open the proxy.
    assert_eq!(
        env.post("/v1/messages", None, &message("hi", false))
            .await
            .status(),
        401
    );
    // Unknown names: 404.
    let r = env
        .client
        .delete(env.url("/api/keys/nobody"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn changes_from_another_process_are_picked_up_within_a_second_or_two() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "bot"})).await;
    // What `ccproxy keys` does: its own connection to the database.
    let db = env.dir.path().join("usage.db");
    let mut kdb = ccproxy::keys::store::KeyDb::open(&db).unwrap();
    let limits = ccproxy::keys::Limits::default();
    let other = kdb
        .create("other", &limits, ccproxy::util::time::now_ms())
        .unwrap();
    kdb.revoke("bot", ccproxy::util::time::now_ms()).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let a = env
            .post("/v1/messages", Some(&key), &message("hi", false))
            .await
            .status();
        let b = env
            .post("/v1/messages", Some(&other), &message("hi", false))
            .await
            .status();
        if a == 401 && b == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "not picked up: {a} {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn expired_keys_are_401() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "old", "expires": "2020-01-01"})).await;
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 401);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    let fresh = create(&env, json!({"name": "fresh", "expires": "30d"})).await;
    assert_eq!(
        env.post("/v1/messages", Some(&fresh), &message("hi", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn models_and_modes_outside_the_key_are_403() {
    let env = keyed_env(None).await;
    let key = create(
        &env,
        json!({"name": "cheap", "models": "claude-haiku-*", "modes": "min,pt"}),
    )
    .await;
    // Model outside the patterns: 403 naming them, both dialects, stream too.
    let r = env
        .post("/min/v1/messages", Some(&key), &message("hi", true))
        .await;
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert_anthropic_error(&v, "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-haiku-*"),
        "{v}"
    );
    let r = post_bearer(
        &env,
        "/min/openai/v1/chat/completions",
        &key,
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert_openai_error(&v, "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-haiku-*"),
        "{v}"
    );
    // Inside: fine.
    let mut body = message("hi", true);
    body["model"] = json!("claude-haiku-4-5");
    let r = env.post("/min/v1/messages", Some(&key), &body).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Mode outside --modes: 403 before anything is read.
    let r = env.post("/v1/messages", Some(&key), &body).await;
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("full mode"),
        "{v}"
    );
    let r = post_bearer(
        &env,
        "/openai/v1/chat/completions",
        &key,
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(env.upstream_messages(), 1);
}

#[tokio::test]
async fn rpm_is_429_with_the_dialects_rate_limit_headers() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "slow", "rpm": 2})).await;
    // Answers carry the key's own windows too.
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "anthropic-ratelimit-requests-limit"), Some("2"));
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining"),
        Some("1")
    );
    let r = post_bearer(&env, "/openai/v1/chat/completions", &key, &chat("hi", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    r.bytes().await.unwrap();
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", true))
        .await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(header(&r, "anthropic-ratelimit-requests-limit"), Some("2"));
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert!(
        header(&r, "anthropic-ratelimit-requests-reset")
            .unwrap()
            .ends_with('Z')
    );
    assert!(header(&r, "x-ratelimit-limit-requests").is_none());
    assert_anthropic_error(&json_of(r).await, "rate_limit_error");

    let r = post_bearer(&env, "/openai/v1/chat/completions", &key, &chat("hi", true)).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    assert!(
        header(&r, "x-ratelimit-reset-requests")
            .unwrap()
            .ends_with('s')
    );
    assert!(header(&r, "anthropic-ratelimit-requests-limit").is_none());
    assert_openai_error(&json_of(r).await, "rate_limit_error");
    assert_eq!(env.upstream_messages(), 2);
    // The refusals are in the usage rows under the key's name.
    settle(&env).await;
    let rows = crate::usage::rows(&env, 4).await;
    assert!(
        rows.iter().all(|r| r.client_key.as_deref() == Some("slow")),
        "{rows:#?}"
    );
    assert_eq!(rows.iter().filter(|r| r.status == 429).count(), 2);
}

#[tokio::test]
async fn tpm_counts_the_real_usage_of_finished_requests() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "tokens", "tpm": 5})).await;
    // The first request starts with no tokens used; its usage (more than 5) counts once done.
    let r = env
        .post("/v1/messages", Some(&key), &message("[sim:deltas=5]", true))
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    settle(&env).await;
    let r = post_bearer(
        &env,
        "/openai/v1/chat/completions",
        &key,
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("5"));
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("0"));
    assert!(header(&r, "retry-after").is_some());
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "anthropic-ratelimit-tokens-limit"), Some("5"));
}

#[tokio::test]
async fn max_concurrent_holds_against_many_parallel_requests() {
    let env = keyed_env(None).await;
    let key = create(&env, json!({"name": "par", "max_concurrent": 2})).await;
    let send = |i: usize| {
        let (env, key) = (&env, &key);
        async move {
            let r = if i.is_multiple_of(2) {
                env.post(
                    "/v1/messages",
                    Some(key),
                    &message("[sim:gap=60] [sim:deltas=10]", true),
                )
                .await
            } else {
                post_bearer(
                    env,
                    "/openai/v1/chat/completions",
                    key,
                    &chat("[sim:gap=60] [sim:deltas=10]", true),
                )
                .await
            };
            let status = r.status().as_u16();
            let retry = header(&r, "retry-after").map(str::to_owned);
            let body = r.text().await.unwrap();
            (status, retry, body)
        }
    };
    let results = join_all((0..12).map(send)).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(limited.len(), 10, "{results:?}");
    assert!(
        limited
            .iter()
            .all(|r| r.1.is_some() && r.2.contains("concurrent"))
    );
    // Slots come back when the streams end.
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", true))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_budget_crossed_during_a_stream_finishes_it_then_refuses() {
    let env = keyed_env(None).await;
    let key = create(
        &env,
        json!({"name": "spender", "budget_usd": 0.000001, "period": "day"}),
    )
    .await;
    let r = env
        .post(
            "/v1/messages",
            Some(&key),
            &message("[sim:deltas=20] [sim:gap=5]", true),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("message_stop"), "{body}");
    settle(&env).await;
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    let v = json_of(r).await;
    assert_anthropic_error(&v, "rate_limit_error");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("budget") && m.contains("day") && m.contains("resets at"),
        "{m}"
    );
    let r = post_bearer(&env, "/openai/v1/chat/completions", &key, &chat("hi", true)).await;
    assert_eq!(r.status(), 429);
    let v = json_of(r).await;
    assert_openai_error(&v, "insufficient_quota");
    assert_eq!(v["error"]["code"], "insufficient_quota");
}

#[tokio::test]
async fn a_budgeted_request_at_no_known_cost_is_counted_as_unpriced() {
    let env = keyed_env(None).await;
    let key = create(
        &env,
        json!({"name": "nopriced", "budget_usd": 5, "period": "day"}),
    )
    .await;
    let unpriced = |metrics: &str| -> Option<String> {
        metrics
            .lines()
            .find(|l| l.starts_with("ccproxy_client_key_unpriced_total{key=\"nopriced\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    let metrics = || async {
        env.client
            .get(env.url("/metrics"))
            .header("x-api-key", PROXY_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // A model the price table knows: counted toward the budget, not unpriced.
    let r = env
        .post("/pt/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    settle(&env).await;
    assert_eq!(unpriced(&metrics().await), None);
    // A model without a price, twice: the budget cannot count them, and says so.
    let mut body = message("hi", false);
    body["model"] = json!("claude-nonesuch-1");
    for _ in 0..2 {
        let r = env.post("/pt/v1/messages", Some(&key), &body).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    settle(&env).await;
    let m = metrics().await;
    assert_eq!(unpriced(&m).as_deref(), Some("2"), "{m}");
}

#[tokio::test]
async fn spend_survives_a_restart_and_the_key_is_nowhere_in_plain_text() {
    let outer = tempfile::tempdir().unwrap();
    let db = outer.path().join("usage.db");
    let env = keyed_env(Some(db.clone())).await;
    let key = create(
        &env,
        json!({"name": "persist", "budget_usd": 0.000001, "period": "month"}),
    )
    .await;
    let r = env
        .post(
            "/v1/messages",
            Some(&key),
            &message("[sim:deltas=5]", false),
        )
        .await;
    assert_eq!(r.status(), 200);
    settle(&env).await;
    let metrics = env
        .client
        .get(env.url("/metrics"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("key=\"persist\""), "{metrics}");
    assert!(!metrics.contains(&key));
    drop(env);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let env = keyed_env(Some(db.clone())).await;
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    let listed = env
        .client
        .get(env.url("/api/keys"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    let v = json_of(listed).await;
    assert!(v["keys"][0]["spend_usd"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["keys"][0]["last_used_ms"].is_i64(), "{v}");
    drop(env);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The database (and its WAL) holds the digest and the prefix, never the key.
    for entry in std::fs::read_dir(outer.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let secret = key.as_bytes();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        let tail = &key.as_bytes()[8..];
        assert!(!bytes.windows(tail.len()).any(|w| w == tail));
    }
}

#[tokio::test]
async fn require_client_keys_closes_the_proxy_before_the_first_key() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        tweak: Some(|s| s.server.require_client_keys = true),
        ..Opts::default()
    })
    .await;
    let r = env
        .post("/v1/messages", Some(CLIENT_KEY), &message("hi", false))
        .await;
    assert_eq!(r.status(), 401);
    let r = env
        .post("/v1/messages", Some(PROXY_TOKEN), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
    let key = create(&env, json!({"name": "first"})).await;
    let r = env
        .post("/v1/messages", Some(&key), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_keys_api_refuses_bad_input_without_panicking() {
    let env = keyed_env(None).await;
    let post = |body: Vec<u8>| {
        env.client
            .post(env.url("/api/keys"))
            .header("x-api-key", PROXY_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for bad in [
        &b"not json"[..],
        br#"{}"#,
        br#"{"name":"a b"}"#,
        br#"{"name":"x","rpm":-1}"#,
        br#"{"name":"x","rpm":0}"#,
        br#"{"name":"x","budget_usd":1e999}"#,
        br#"{"name":"x","budget_usd":-2}"#,
        br#"{"name":"x","period":"year","budget_usd":1}"#,
        br#"{"name":"x","expires":"99999999999999d"}"#,
        br#"{"name":"x","modes":["full","max"]}"#,
        br#"{"name":"x","unknown":1}"#,
    ] {
        let r = post(bad.to_vec()).await.unwrap();
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(bad));
        assert_anthropic_error(&json_of(r).await, "invalid_request_error");
    }
    let ok = br#"{"name":"x","models":["claude-*"],"modes":"min","tpm":18446744073709551615}"#;
    assert_eq!(post(ok.to_vec()).await.unwrap().status(), 201);
    let r = post(ok.to_vec()).await.unwrap();
    assert_eq!(r.status(), 409);
    let r = env
        .client
        .post(env.url("/api/keys/nobody/rotate"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let listed = env
        .client
        .get(env.url("/api/keys"))
        .header("x-api-key", PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    let v = json_of(listed).await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["keys"][0]["modes"], json!(["minimal"]));
}

/// A database that SQLite cannot read (garbage where the usage database should be) may hold
/// keys: the proxy fails closed. Every proxied request is a 503 in its dialect (the cause is in
/// `/health`, not in the client's answer), the admin token still works, and once the file is a
/// database again its keys are read and enforced within a second or two.
#[tokio::test]
async fn keys_that_cannot_be_read_at_startup_close_the_proxy_until_they_can() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    std::fs::write(&db, vec![0x5A; 8192]).unwrap();
    let env = keyed_env(Some(db.clone())).await;

    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        header(&r, "retry-after"),
        Some("1"),
        "the table is read again every second"
    );
    let v = json_of(r).await;
    assert_anthropic_error(&v, "overloaded_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot read its client keys"), "{msg}");
    assert!(!msg.contains(&db.display().to_string()), "{msg}");
    let r = post_bearer(
        &env,
        "/openai/v1/chat/completions",
        "ccp-not-a-key-at-all-0000000000000000000000",
        &chat("hi", false),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_openai_error(&json_of(r).await, "server_error");
    assert_eq!(
        env.upstream_messages(),
        0,
        "a refused request went upstream"
    );

    // The admin token is not a client key: it still goes through.
    let r = env
        .post("/v1/messages", Some(PROXY_TOKEN), &message("hi", false))
        .await;
    assert_eq!(r.status(), 200);

    let health = json_of(env.client.get(env.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert_eq!(health["auth_required"], true, "{health:#}");
    let why = health["client_keys_error"].as_str().unwrap_or_default();
    assert!(why.contains("not a database"), "{health:#}");

    // The file becomes a database holding one key (what `ccproxy keys create` writes).
    std::fs::remove_file(&db).unwrap();
    let mut kdb = ccproxy::keys::store::KeyDb::open(&db).unwrap();
    let key = kdb
        .create(
            "team",
            &ccproxy::keys::Limits::default(),
            ccproxy::util::time::now_ms(),
        )
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let with = env
            .post("/v1/messages", Some(&key), &message("hi", false))
            .await
            .status();
        let without = env
            .post("/v1/messages", None, &message("hi", false))
            .await
            .status();
        if with == 200 && without == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "keys not read: {with} {without}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = json_of(env.client.get(env.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["client_keys_error"], Value::Null, "{health:#}");
    assert_eq!(health["client_keys"], 1, "{health:#}");
}

/// A usage database written by a newer ccproxy (a schema version this build does not know)
/// cannot be opened. If it holds a key, the proxy stays closed (503), as behind a link to a
/// volume that is not there; if it holds none, or the database cannot even be created, there
/// is no key to enforce and the proxy stays open.
#[tokio::test]
async fn a_newer_database_closes_the_proxy_only_when_it_holds_keys() {
    for (holds_a_key, expected) in [(true, 503), (false, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("usage.db");
        {
            let mut kdb = ccproxy::keys::store::KeyDb::open(&db).unwrap();
            if holds_a_key {
                kdb.create(
                    "team",
                    &ccproxy::keys::Limits::default(),
                    ccproxy::util::time::now_ms(),
                )
                .unwrap();
            }
        }
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        // No admin token: only client keys could close this proxy.
        let env = TestEnv::start(Opts {
            api_key: Some(API_KEY),
            usage_db: Some(db.clone()),
            ..Opts::default()
        })
        .await;
        let r = env.post("/v1/messages", None, &message("hi", false)).await;
        assert_eq!(r.status(), expected, "holds a key: {holds_a_key}");
        let health = json_of(env.client.get(env.url("/health")).send().await.unwrap()).await;
        assert_eq!(
            health["client_keys_error"].is_string(),
            holds_a_key,
            "{health:#}"
        );
        if holds_a_key {
            assert!(
                health["client_keys_error"]
                    .as_str()
                    .unwrap()
                    .contains("newer than this ccproxy knows"),
                "{health:#}"
            );
        }
    }

    // A link to a volume that is not mounted may hide a database with keys: closed.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usage.db");
    std::os::unix::fs::symlink(dir.path().join("unmounted/usage.db"), &link).unwrap();
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        usage_db: Some(link),
        ..Opts::default()
    })
    .await;
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), 503);

    // A database that cannot be created (its directory is a file) holds nothing.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        usage_db: Some(blocker.join("usage.db")),
        ..Opts::default()
    })
    .await;
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), 200);
}

//! Usage rows recorded by the running proxy (stream, non-stream, error,
//! abandoned stream, OpenAI), and the usage API and dashboard it serves.

use std::time::Duration;

use crate::support::*;
use ccproxy::observability::UsageRecord;
use futures_util::StreamExt;
use serde_json::json;

/// Waits until the store holds `n` rows; returns them (oldest first).
pub(crate) async fn rows(env: &TestEnv, n: usize) -> Vec<UsageRecord> {
    let path = env.dir.path().join("usage.db");
    for _ in 0..200 {
        if let Some(w) = &env.state.usage {
            w.flush();
        }
        if let Ok(conn) = rusqlite::Connection::open(&path) {
            let count: i64 = conn
                .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
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
    // Newest first (time, then insertion order): reversed, oldest first, and requests that
    // started in the same millisecond stay in the order they were recorded.
    let mut recent = reader.recent(None, 1000).unwrap();
    recent.reverse();
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

// ---- a usage store that fails is reported, not hidden ----

async fn get(env: &TestEnv, path: &str) -> (u16, String) {
    let r = env.client.get(env.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `/health`'s `usage` object once `ready` holds for it (within 10 s).
async fn usage_health(
    env: &TestEnv,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        if let Some(w) = &env.state.usage {
            w.flush();
        }
        let (status, body) = get(env, "/health").await;
        assert_eq!(status, 200, "{body}");
        last = serde_json::from_str(&body).unwrap();
        if ready(&last["usage"]) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/health never got there: {last:#}");
}

/// The value of a metric line `name{…} value` (the first one).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn db_is_garbage(s: &mut ccproxy::config::Settings) {
    std::fs::write(&s.usage.db, vec![0x5A; 4096]).unwrap();
}
fn db_is_a_directory(s: &mut ccproxy::config::Settings) {
    std::fs::create_dir_all(&s.usage.db).unwrap();
}
fn db_parent_is_a_file(s: &mut ccproxy::config::Settings) {
    let parent = s.usage.db.with_file_name("not-a-dir");
    std::fs::write(&parent, "x").unwrap();
    s.usage.db = parent.join("usage.db");
}

/// A usage database that cannot be opened at startup (root ignores permissions,
/// so these are failures root meets too): `/health` says `degraded` with the error
/// naming the file, every record is counted as dropped, `/api/usage` answers 503
/// naming the problem, and the metrics say so. Where no database can be (a directory,
/// a parent that is a file) there are no client keys and the proxy serves; a file
/// that SQLite cannot read may hold keys, and the proxy refuses requests (503) until
/// it can (`keys::keys_that_cannot_be_read_at_startup_close_the_proxy_until_they_can`).
async fn unopenable_usage_store_is_reported(
    tweak: fn(&mut ccproxy::config::Settings),
    problem: &str,
    status: u16,
) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(tweak),
        ..Opts::default()
    })
    .await;
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), status);
    r.bytes().await.unwrap();
    let health = usage_health(&env, |u| u["rows_dropped"] == 1).await;
    let u = &health["usage"];
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert_eq!(
        (u["enabled"].clone(), u["healthy"].clone()),
        (json!(true), json!(false)),
        "{u:#}"
    );
    assert_eq!(u["rows_written"], 0, "{u:#}");
    let path = u["path"].as_str().unwrap();
    assert!(path.ends_with("usage.db"), "{u:#}");
    let last = u["last_error"].as_str().unwrap();
    assert!(last.contains(path) && last.contains(problem), "{u:#}");
    assert!(u["last_error_ms"].as_i64().unwrap() > 0, "{u:#}");

    let (status, body) = get(&env, "/api/usage").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "usage_store_error", "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(path) && msg.contains(problem), "{msg}");

    let (_, text) = get(&env, "/metrics").await;
    assert!(
        metric(&text, "ccproxy_usage_dropped_total").unwrap() >= 1.0,
        "{text}"
    );
    for name in [
        "ccproxy_usage_store_healthy",
        "ccproxy_usage_write_errors_total",
        "ccproxy_usage_rows_written_total",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
}

cases!(
    #[tokio::test]
    unopenable_usage_store_is_reported {
        garbage: (super::db_is_garbage, "not a database", 503),
        directory: (
            super::db_is_a_directory,
            "unable to open database file",
            200
        ),
        parent_is_a_file: (
            super::db_parent_is_a_file,
            "cannot create the directory",
            200
        ),
    }
);

/// A store that breaks while the proxy runs: the table is dropped by another
/// process, then the file is overwritten with garbage. The failed write shows in
/// `/health` (and `/api/usage`'s `store`), and a database that cannot be read
/// makes `/api/usage` answer an error naming it.
#[tokio::test]
async fn usage_store_failing_at_run_time_is_reported() {
    let env = TestEnv::with_api_key().await;
    let db = env.dir.path().join("usage.db");
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    r.bytes().await.unwrap();
    let health = usage_health(&env, |u| u["rows_written"] == 1).await;
    assert_eq!(health["status"], "ok");
    let u = &health["usage"];
    assert_eq!(
        (u["healthy"].clone(), u["last_error"].clone()),
        (json!(true), json!(null)),
        "{u:#}"
    );
    assert_eq!(
        (u["rows_dropped"].clone(), u["write_errors"].clone()),
        (json!(0), json!(0)),
        "{u:#}"
    );

    // Another process breaks the schema under the writer.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE requests")
        .unwrap();
    let r = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let health = usage_health(&env, |u| u["write_errors"] == 1).await;
    assert_eq!(health["status"], "degraded", "{health:#}");
    let u = &health["usage"];
    assert_eq!(
        (
            u["healthy"].clone(),
            u["rows_written"].clone(),
            u["rows_dropped"].clone()
        ),
        (json!(false), json!(1), json!(1)),
        "{u:#}"
    );
    let last = u["last_error"].as_str().unwrap();
    assert!(
        last.contains("no such table: requests") && last.contains(&db.display().to_string()),
        "{last}"
    );
    let (status, body) = get(&env, "/api/usage").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"]["healthy"], false, "{v:#}");
    assert_eq!(v["store"]["write_errors"], 1, "{v:#}");

    let (_, text) = get(&env, "/metrics").await;
    assert!(
        metric(&text, "ccproxy_usage_write_errors_total").unwrap() >= 1.0,
        "{text}"
    );

    // The database is replaced by garbage: it cannot be read.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::write(&db, vec![0x5A; 8192]).unwrap();
    let (status, body) = get(&env, "/api/usage").await;
    assert_eq!(status, 500, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "usage_store_error", "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&db.display().to_string()) && msg.contains("not a database"),
        "{msg}"
    );
}

/// Fast mode (`speed: "fast"`, reported back as `usage.speed`) is priced at the model's fast
/// multiplier, streamed or whole; on a model without fast mode the standard rate applies.
#[tokio::test]
async fn fast_mode_is_priced_at_its_multiplier() {
    let env = TestEnv::with_api_key().await;
    let cases = [
        ("claude-opus-4-8", false, 2.0),
        ("claude-opus-4-8", true, 2.0),
        ("claude-sonnet-4-5", false, 1.0),
    ];
    for (model, stream, _) in cases {
        let body = json!({"model": model, "max_tokens": 64, "stream": stream, "speed": "fast",
            "messages": [{"role": "user", "content": "Hello"}]});
        let resp = env
            .client
            .post(env.url("/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "fast-mode-2026-02-01")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(if model.contains("opus") {
                r#""speed":"fast""#
            } else {
                r#""speed":"standard""#
            }),
            "{text}"
        );
    }
    let rows = rows(&env, cases.len()).await;
    let table = ccproxy::observability::usage::prices::PriceTable::built_in();
    for (r, (model, _, multiplier)) in rows.iter().zip(cases) {
        let standard = table
            .cost(
                model,
                &ccproxy::api::anthropic::Tokens {
                    fast: false,
                    ..r.tokens
                },
            )
            .unwrap();
        let got = r.cost_usd.unwrap();
        assert!(
            (got - multiplier * standard).abs() < 1e-12,
            "{model}: {got} vs {multiplier} × {standard}"
        );
    }
}

/// A whole answer's usage is read after the answer went out (on the observer thread) when it is
/// small, on the request path when it is large: either way the record has the answer's tokens and
/// model, on the Anthropic route and on an OpenAI one.
#[tokio::test]
async fn whole_answers_small_and_large_are_metered() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    // A thousand words make a > 4 KB answer (the simulated upstream writes `tok0 tok1 …`).
    let long = "[sim:deltas=1000]".to_owned();
    let mut sent = Vec::new();
    for text in ["short", long.as_str()] {
        let r = env
            .post("/pt/v1/messages", None, &message(text, false))
            .await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        sent.push((body.len(), v["usage"].clone()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sent[0].0 < 4096 && sent[1].0 > 4096, "{sent:?}");
    for text in ["short", long.as_str()] {
        let r = env
            .post(
                "/openai/v1/chat/completions",
                None,
                &json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":text}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        sent.push((0, v["usage"].clone()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rows = rows(&env, 4).await;
    for (row, (_, usage)) in rows.iter().zip(&sent).take(2) {
        assert_eq!(row.tokens.input, usage["input_tokens"].as_u64().unwrap());
        assert_eq!(row.tokens.output, usage["output_tokens"].as_u64().unwrap());
        assert!(row.tokens.output > 0);
        assert_eq!(row.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(row.ttft_ms.is_some() && row.cost_usd.is_some(), "{row:?}");
    }
    for (row, (_, usage)) in rows.iter().zip(&sent).skip(2) {
        assert_eq!(
            row.tokens.input + row.tokens.cache_read,
            usage["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            row.tokens.output,
            usage["completion_tokens"].as_u64().unwrap()
        );
        assert!(row.tokens.output > 0);
    }
    // The long answers counted more tokens.
    assert!(rows[1].tokens.output > rows[0].tokens.output);
    assert!(rows[3].tokens.output > rows[2].tokens.output);
}

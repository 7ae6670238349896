//! The 2026 Anthropic API surface through full and minimal mode (issue 17): Files (multipart
//! upload streamed through, list, metadata, download streamed, delete), Message Batches
//! (create, retrieve, list, cancel, results JSONL, with `results_url` leading back to the
//! proxy and the results' usage recorded), `/v1/models/{id}`, and the limits on uploads.

use crate::support::*;
use serde_json::{Value, json};

/// Full mode under both its prefixes, and minimal mode.
const PREFIXES: &[&str] = &["", "/full", "/min"];

const BOUNDARY: &str = "ccproxy-test-boundary-7d1f";

pub(crate) fn multipart(filename: &str, mime: &str, content: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(content);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

pub(crate) fn upload(env: &TestEnv, prefix: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    env.client
        .post(env.url(&format!("{prefix}/v1/files")))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "files-api-2025-04-14")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
}

fn get(env: &TestEnv, path: &str) -> reqwest::RequestBuilder {
    env.client
        .get(env.url(path))
        .header("anthropic-version", "2023-06-01")
}

/// Bytes that are not text, of some size.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn files_upload_list_retrieve_download_delete_in_full_and_minimal_mode() {
    let env = TestEnv::with_api_key().await;
    for prefix in PREFIXES {
        env.sim_state().clear_requests();
        let data = content(300 * 1024);
        let body = multipart("report.bin", "application/octet-stream", &data);
        let sent_len = body.len();
        let resp = upload(&env, prefix, body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{prefix}");
        let meta: Value = resp.json().await.unwrap();
        let id = meta["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("file_"), "{meta}");
        assert_eq!(meta["size_bytes"], data.len());
        assert_eq!(meta["filename"], "report.bin");

        // The upstream got the client's multipart body byte for byte, with its boundary and
        // its length (streamed with the declared size, not chunked), and the client's beta.
        let up = env.sim_state().last_request().unwrap();
        assert_eq!(up.path, "/v1/files");
        assert_eq!(up.body.as_ref(), body.as_slice(), "{prefix}");
        let ct = up.header("content-type").unwrap();
        assert!(ct.contains(BOUNDARY), "{ct}");
        assert_eq!(
            up.header("content-length"),
            Some(sent_len.to_string().as_str())
        );
        assert!(up.header("transfer-encoding").is_none());
        assert_eq!(up.header("x-api-key"), Some(API_KEY));
        let beta = up.header("anthropic-beta").unwrap();
        assert!(beta.contains("files-api-2025-04-14"), "{beta}");
        if *prefix == "/min" {
            assert_eq!(beta, "files-api-2025-04-14");
            assert!(up.header("x-app").is_none());
        } else {
            assert!(beta.contains("claude-code-20250219"), "{beta}");
            assert_eq!(up.header("x-app"), Some("cli"));
        }

        let list: Value = get(&env, &format!("{prefix}/v1/files?limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
        assert_eq!(list["first_id"], id.as_str());
        assert_eq!(
            env.sim_state().last_request().unwrap().query.as_deref(),
            Some("limit=1")
        );

        let one: Value = get(&env, &format!("{prefix}/v1/files/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(one, meta);

        let dl = get(&env, &format!("{prefix}/v1/files/{id}/content"))
            .send()
            .await
            .unwrap();
        assert_eq!(dl.status(), 200);
        assert_eq!(
            dl.headers()["content-length"],
            data.len().to_string().as_str()
        );
        assert_eq!(dl.headers()["content-type"], "application/octet-stream");
        assert!(
            dl.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("report.bin")
        );
        assert_eq!(dl.bytes().await.unwrap().as_ref(), data.as_slice());

        let del = env
            .client
            .delete(env.url(&format!("{prefix}/v1/files/{id}")))
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        assert_eq!(del.status(), 200);
        let del: Value = del.json().await.unwrap();
        assert_eq!(del["type"], "file_deleted");

        let gone = get(&env, &format!("{prefix}/v1/files/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 404);
        assert_anthropic_error(&gone.json().await.unwrap(), "not_found_error");
    }
}

#[tokio::test]
async fn uploads_are_not_bound_by_max_body_bytes_but_by_max_upload_bytes() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        max_body_bytes: Some(4096),
        tweak: Some(|s| s.limits.max_upload_bytes = 256 * 1024),
        ..Opts::default()
    })
    .await;
    // Larger than max_body_bytes: streamed, accepted.
    let ok = upload(
        &env,
        "/min",
        multipart("a.bin", "application/pdf", &content(64 * 1024)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);

    // Declared larger than the upload limit: 413 before anything goes upstream.
    env.sim_state().clear_requests();
    let big = multipart("b.bin", "application/pdf", &content(300 * 1024));
    let resp = upload(&env, "/min", big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_anthropic_error(&v, "request_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_upload_bytes")
    );
    assert!(env.sim_state().requests().is_empty());

    // Sent without a length (chunked): cut at the limit, answered with 413, not 502.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = env
        .client
        .post(env.url("/v1/files"))
        .header("anthropic-version", "2023-06-01")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_anthropic_error(&resp.json().await.unwrap(), "request_too_large");

    // A JSON body on a relay route is still bound by max_body_bytes when read whole... unless
    // it declares more, then it is streamed within the upload limit (a large batch).
    let batch = json!({"requests": [{"custom_id": "a", "params": {
        "model": "claude-sonnet-5", "max_tokens": 5,
        "messages": [{"role": "user", "content": "x".repeat(8000)}]}}]});
    let resp = env.post("/min/v1/messages/batches", None, &batch).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn upload_errors_are_the_upstreams_in_the_anthropic_envelope() {
    let env = TestEnv::with_api_key().await;
    for prefix in PREFIXES {
        // Not multipart.
        let resp = env
            .client
            .post(env.url(&format!("{prefix}/v1/files")))
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{prefix}");
        assert_anthropic_error(&resp.json().await.unwrap(), "invalid_request_error");
        // Multipart without a file part.
        let body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nx\r\n--{BOUNDARY}--\r\n"
        );
        let resp = upload(&env, prefix, body.into_bytes())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_anthropic_error(&v, "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("file"));
    }
}

#[tokio::test]
async fn subscription_files_calls_carry_the_oauth_beta_and_the_clients_tags() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    let resp = upload(&env, "", multipart("n.txt", "text/plain", b"note"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = env.sim_state().last_request().unwrap();
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {OAUTH_TOKEN}").as_str())
    );
    assert_eq!(
        up.header("anthropic-beta"),
        Some("files-api-2025-04-14,claude-code-20250219,oauth-2025-04-20")
    );
    // Minimal mode does not use the subscription.
    let resp = get(&env, "/min/v1/files").send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

fn batch_body() -> Value {
    json!({"requests": [
        {"custom_id": "first", "params": {"model": "claude-sonnet-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]}},
        {"custom_id": "second", "params": {"model": "claude-opus-4-8", "max_tokens": 50,
            "messages": [{"role": "user", "content": "[sim:cache] again"}]}},
        {"custom_id": "broken", "params": {"model": "claude-sonnet-5",
            "messages": [{"role": "user", "content": "no max_tokens"}]}}
    ]})
}

#[tokio::test]
async fn batches_create_retrieve_list_results_in_full_and_minimal_mode() {
    let env = TestEnv::with_api_key().await;
    for prefix in PREFIXES {
        let resp = env
            .post(
                &format!("{prefix}/v1/messages/batches"),
                None,
                &batch_body(),
            )
            .await;
        assert_eq!(resp.status(), 200, "{prefix}");
        let created: Value = resp.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("msgbatch_"));
        assert_eq!(created["processing_status"], "in_progress");
        assert_eq!(created["request_counts"]["processing"], 3);
        assert!(created["results_url"].is_null());

        let got: Value = get(&env, &format!("{prefix}/v1/messages/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["processing_status"], "ended", "{got}");
        assert_eq!(got["request_counts"]["succeeded"], 2);
        assert_eq!(got["request_counts"]["errored"], 1);
        // The results URL leads back through the proxy, in the same mode.
        let url = got["results_url"].as_str().unwrap();
        assert_eq!(
            url,
            format!("{}/v1/messages/batches/{id}/results", env.url(prefix))
        );

        let list: Value = get(&env, &format!("{prefix}/v1/messages/batches?limit=5"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["data"][0]["id"], id.as_str());
        assert!(
            list["data"][0]["results_url"]
                .as_str()
                .unwrap()
                .starts_with(&env.url(prefix))
        );

        let results = get(&env, url.trim_start_matches(&env.url("")))
            .send()
            .await
            .unwrap();
        assert_eq!(results.status(), 200);
        let text = results.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["custom_id"], "first");
        assert_eq!(lines[0]["result"]["type"], "succeeded");
        assert_eq!(lines[0]["result"]["message"]["model"], "claude-sonnet-5");
        assert_eq!(lines[2]["result"]["type"], "errored");
    }
}

#[tokio::test]
async fn batch_results_usage_is_recorded_when_fetched() {
    let env = TestEnv::with_api_key().await;
    let created: Value = env
        .post("/min/v1/messages/batches", None, &batch_body())
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let text = get(&env, &format!("/min/v1/messages/batches/{id}/results"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut want = (0, 0, 0);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let u = &v["result"]["message"]["usage"];
        want.0 += u["input_tokens"].as_u64().unwrap_or(0);
        want.1 += u["output_tokens"].as_u64().unwrap_or(0);
        want.2 += u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    }
    assert!(want.0 > 0 && want.2 > 0);
    let rows = crate::usage::rows(&env, 2).await;
    let r = &rows[1];
    assert_eq!(r.mode, "minimal");
    assert_eq!(r.status, 200);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-5"));
    assert_eq!((r.tokens.input, r.tokens.output, r.tokens.cache_read), want);
    // At the Batch API's price: half the standard one.
    let standard = ccproxy::observability::usage::prices::PriceTable::built_in()
        .cost("claude-sonnet-5", &r.tokens)
        .unwrap();
    let got = r.cost_usd.unwrap();
    assert!(
        (got - standard / 2.0).abs() < 1e-12,
        "{got} vs {standard} / 2"
    );
}

#[tokio::test]
async fn batches_cancel_and_bad_batches_in_full_and_minimal_mode() {
    let env = TestEnv::with_api_key().await;
    for prefix in PREFIXES {
        let slow = json!({"requests": [{"custom_id": "s", "params": {"model": "claude-sonnet-5",
            "max_tokens": 5, "messages": [{"role": "user", "content": "[sim:batch-slow]"}]}}]});
        let created: Value = env
            .post(&format!("{prefix}/v1/messages/batches"), None, &slow)
            .await
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().unwrap();
        let early = get(&env, &format!("{prefix}/v1/messages/batches/{id}/results"))
            .send()
            .await
            .unwrap();
        assert_eq!(early.status(), 404);
        assert_anthropic_error(&early.json().await.unwrap(), "not_found_error");
        let canceling: Value = env
            .client
            .post(env.url(&format!("{prefix}/v1/messages/batches/{id}/cancel")))
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(canceling["processing_status"], "canceling");
        let ended: Value = get(&env, &format!("{prefix}/v1/messages/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ended["processing_status"], "ended");
        assert_eq!(ended["request_counts"]["canceled"], 1);

        for (bad, says) in [
            (json!({}), "requests: Field required"),
            (json!({"requests": []}), "at least 1"),
            (
                json!({"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]}),
                "Duplicate",
            ),
            (
                json!({"requests": [{"custom_id": "a b", "params": {}}]}),
                "pattern",
            ),
        ] {
            let resp = env
                .post(&format!("{prefix}/v1/messages/batches"), None, &bad)
                .await;
            assert_eq!(resp.status(), 400, "{bad}");
            let v: Value = resp.json().await.unwrap();
            assert_anthropic_error(&v, "invalid_request_error");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(says),
                "{v}"
            );
        }
        let unknown = get(&env, &format!("{prefix}/v1/messages/batches/msgbatch_nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
    }
}

#[tokio::test]
async fn models_retrieve_and_any_other_path_in_full_and_minimal_mode() {
    let env = TestEnv::with_api_key().await;
    for prefix in PREFIXES {
        let resp = get(&env, &format!("{prefix}/v1/models/claude-opus-4-8"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{prefix}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["id"], "claude-opus-4-8");
        assert_eq!(v["type"], "model");
        let resp = get(&env, &format!("{prefix}/v1/models/claude-none"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_anthropic_error(&resp.json().await.unwrap(), "not_found_error");
        // A path the upstream does not know (Managed Agents here): relayed, its 404 relayed.
        let resp = get(&env, &format!("{prefix}/v1/agents?limit=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let up = env.sim_state().last_request().unwrap();
        assert_eq!(up.path, "/v1/agents");
        assert_eq!(up.query.as_deref(), Some("limit=2"));
        assert_eq!(up.header("x-api-key"), Some(API_KEY));
    }
}

/// The raw JSON text of each top-level field of a body.
fn raw_fields(body: &[u8]) -> std::collections::HashMap<String, Box<serde_json::value::RawValue>> {
    serde_json::from_slice(body).unwrap()
}

/// Sends a message carrying `field: raw` (written with unusual spacing) through full and
/// minimal mode; the upstream must receive that field's bytes exactly as sent.
async fn field_passes_unchanged(field: &str, raw: &str) {
    let env = TestEnv::with_api_key().await;
    let body = format!(
        r#"{{"model":"claude-sonnet-5","max_tokens":32,  "{field}" :  {raw} ,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    for prefix in PREFIXES {
        let resp = env
            .client
            .post(env.url(&format!("{prefix}/v1/messages")))
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{prefix} {field}: {}",
            resp.text().await.unwrap()
        );
        let up = env.sim_state().last_request().unwrap();
        let fields = raw_fields(&up.body);
        assert_eq!(
            fields[field].get(),
            raw,
            "{prefix}: {field} changed on its way"
        );
        if *prefix == "/min" {
            assert_eq!(up.body.as_ref(), body.as_bytes());
        }
    }
}

#[tokio::test]
async fn output_config_passes_unchanged() {
    field_passes_unchanged(
        "output_config",
        r#"{ "effort":"high", "format": {"type":"json_schema","schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}} }"#,
    )
    .await;
}

#[tokio::test]
async fn speed_passes_unchanged() {
    field_passes_unchanged("speed", r#""fast""#).await;
}

#[tokio::test]
async fn inference_geo_passes_unchanged() {
    field_passes_unchanged("inference_geo", r#""us""#).await;
}

#[tokio::test]
async fn context_management_with_compaction_passes_unchanged() {
    field_passes_unchanged(
        "context_management",
        r#"{"edits":[{"type":"compact_20260112","trigger":{"type":"input_tokens","value":150000}}, {"type":"clear_tool_uses_20250919"}]}"#,
    )
    .await;
}

#[tokio::test]
async fn mcp_servers_passes_unchanged() {
    field_passes_unchanged(
        "mcp_servers",
        r#"[{"type":"url","url":"https://mcp.example.com/sse","name":"ex","authorization_token":"t\u00e9st","tool_configuration":{"enabled":true}}]"#,
    )
    .await;
}

#[tokio::test]
async fn top_level_cache_control_passes_unchanged() {
    field_passes_unchanged("cache_control", r#"{"type":"ephemeral","ttl":"1h"}"#).await;
}

#[tokio::test]
async fn container_passes_unchanged() {
    field_passes_unchanged(
        "container",
        r#"{"id":"container_011abc","skills":[{"type":"anthropic","skill_id":"pptx","version":"latest"}]}"#,
    )
    .await;
}

#[tokio::test]
async fn client_beta_and_version_reach_the_upstream_unchanged_in_minimal_and_passthrough() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let beta = "compact-2026-01-12,fast-mode-2026-02-01, structured-outputs-2025-12-15";
    for prefix in ["/min", "/pt"] {
        for path in ["/v1/messages", "/v1/files"] {
            let rb = env
                .client
                .request(
                    if path == "/v1/files" {
                        reqwest::Method::GET
                    } else {
                        reqwest::Method::POST
                    },
                    env.url(&format!("{prefix}{path}")),
                )
                .header("anthropic-version", "2026-10-21")
                .header("anthropic-beta", beta)
                .header("x-api-key", CLIENT_KEY);
            let rb = if path == "/v1/messages" {
                rb.header("content-type", "application/json")
                    .body(message("hi", false).to_string())
            } else {
                rb
            };
            let resp = rb.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{prefix}{path}");
            let up = env.sim_state().last_request().unwrap();
            assert_eq!(up.header("anthropic-beta"), Some(beta), "{prefix}{path}");
            assert_eq!(up.header("anthropic-version"), Some("2026-10-21"));
            assert_eq!(up.header("x-api-key"), Some(CLIENT_KEY));
        }
    }
}

#[tokio::test]
async fn retired_model_ids_reach_the_upstream_as_their_successors_in_full_and_minimal_mode() {
    let env = TestEnv::with_api_key().await;
    for (old, new) in [
        ("claude-3-5-sonnet-20241022", "claude-sonnet-5"),
        ("claude-3-5-haiku-20241022", "claude-haiku-4-5"),
        ("claude-3-opus-20240229", "claude-opus-4-8"),
        ("claude-3-sonnet-20240229", "claude-sonnet-5"),
        ("claude-3-haiku-20240307", "claude-haiku-4-5"),
    ] {
        for prefix in PREFIXES {
            let mut body = message("hi", false);
            body["model"] = json!(old);
            let resp = env
                .post(&format!("{prefix}/v1/messages"), None, &body)
                .await;
            assert_eq!(resp.status(), 200);
            // The answer names the model that served it.
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["model"], new, "{prefix} {old}");
            let up = env.sim_state().last_request().unwrap();
            assert_eq!(up.json()["model"], new, "{prefix} {old}");
        }
        // Passthrough sends what the client sent.
        let mut body = message("hi", false);
        body["model"] = json!(old);
        env.post("/pt/v1/messages", Some(CLIENT_KEY), &body).await;
        assert_eq!(env.sim_state().last_request().unwrap().json()["model"], old);
    }
    let rows = crate::usage::rows(&env, 20).await;
    assert!(
        rows.iter()
            .filter(|r| r.mode != "passthrough")
            .all(|r| { !r.model.as_deref().unwrap_or("").starts_with("claude-3") })
    );
}

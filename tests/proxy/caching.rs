//! Automatic prompt caching for OpenAI-dialect clients (which cannot place `cache_control`):
//! the converted request asks for it, the simulated upstream's prompt cache serves the repeated
//! prefix of a conversation, and the client sees it as `cached_tokens`.

use serde_json::{Value, json};

use crate::support::*;

/// A system prompt of about 2 500 tokens: over the cache's minimum.
fn long_system() -> String {
    "You follow the house style guide in every answer. ".repeat(200)
}

async fn chat(env: &TestEnv, prefix: &str, messages: &Value, extra: Value) -> Value {
    let mut body = json!({"model": "gpt-4o", "messages": messages});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let resp = env
        .post(&format!("{prefix}/openai/v1/chat/completions"), None, &body)
        .await;
    assert_eq!(resp.status(), 200);
    json_of(resp).await
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

async fn a_chat_conversation_reads_its_prefix_from_the_cache(prefix: &str) {
    let env = TestEnv::with_api_key().await;
    let mut messages = json!([
        {"role": "system", "content": long_system()},
        {"role": "user", "content": "First question."}
    ]);
    let first = chat(&env, prefix, &messages, json!({})).await;
    assert_eq!(cached(&first), 0, "{first}");
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    assert_eq!(up["cache_control"], json!({"type": "ephemeral"}));

    let answer = first["choices"][0]["message"]["content"].clone();
    let list = messages.as_array_mut().unwrap();
    list.push(json!({"role": "assistant", "content": answer}));
    list.push(json!({"role": "user", "content": "Second question."}));
    let second = chat(&env, prefix, &messages, json!({})).await;
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let read = cached(&second);
    // The whole first prompt is read back; only the new turns are not.
    assert!(read > 2_000 && read < prompt, "{second}");
    assert!(prompt - read < 100, "{second}");
}

cases!(a_chat_conversation_reads_its_prefix_from_the_cache {
    full: (""),
    min: ("/min")
});

#[tokio::test]
async fn responses_report_cached_tokens_and_24h_retention_asks_for_an_hour() {
    let env = TestEnv::with_api_key().await;
    let create = |input: Value| {
        let body = json!({"model": "gpt-5", "instructions": long_system(), "input": input,
            "prompt_cache_retention": "24h", "store": false});
        let env = &env;
        async move { env.post("/openai/v1/responses", None, &body).await }
    };
    let first = json_of(create(json!("First question.")).await).await;
    assert_eq!(first["usage"]["input_tokens_details"]["cached_tokens"], 0);
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    assert_eq!(
        up["cache_control"],
        json!({"type": "ephemeral", "ttl": "1h"})
    );
    let second = json_of(
        create(json!([
            {"role": "user", "content": "First question."},
            {"role": "assistant", "content": first["output_text"].as_str().unwrap_or("ok")},
            {"role": "user", "content": "Second question."}
        ]))
        .await,
    )
    .await;
    let read = second["usage"]["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(read > 2_000, "{second}");
}

#[tokio::test]
async fn turned_off_or_with_the_clients_own_breakpoints_nothing_is_added() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.upstream.openai_prompt_caching = false),
        ..Opts::default()
    })
    .await;
    let messages = json!([
        {"role": "system", "content": long_system()},
        {"role": "user", "content": "First question."}
    ]);
    for _ in 0..2 {
        let v = chat(&env, "", &messages, json!({})).await;
        assert_eq!(cached(&v), 0, "{v}");
    }
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    assert!(up.get("cache_control").is_none(), "{up}");

    // Caching on, and the client marks its own breakpoint: that one alone is sent.
    let env = TestEnv::with_api_key().await;
    let messages = json!([
        {"role": "system", "content": [{"type": "text", "text": long_system(),
            "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "First question."}
    ]);
    chat(&env, "/min", &messages, json!({})).await;
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    assert!(up.get("cache_control").is_none(), "{up}");
    assert_eq!(
        up["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    let v = chat(&env, "/min", &messages, json!({})).await;
    assert!(cached(&v) > 2_000, "the client's breakpoint is served: {v}");
}

/// One-hour cache writes are priced at twice the input rate (5-minute ones at 1.25×), in the
/// recorded cost of a streamed and a whole answer.
#[tokio::test]
async fn one_hour_cache_writes_are_priced_as_such() {
    let env = TestEnv::with_api_key().await;
    for (i, stream) in [false, true].into_iter().enumerate() {
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "system": [{"type": "text", "text": format!("{i} {}", long_system()),
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": "Hello"}]});
        let resp = env.post("/v1/messages", None, &body).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let rows = crate::usage::rows(&env, 2).await;
    for r in &rows {
        let t = r.tokens;
        assert!(t.cache_write > 2_000 && t.cache_read == 0, "{t:?}");
        // Sonnet 4.5: $3 input, $15 output, $6 per million 1-hour cache writes.
        let expect =
            (t.input as f64 * 3.0 + t.output as f64 * 15.0 + t.cache_write as f64 * 6.0) / 1e6;
        let got = r.cost_usd.unwrap();
        assert!((got - expect).abs() < 1e-9, "{got} vs {expect} ({t:?})");
    }
}

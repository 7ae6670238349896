//! Web search for OpenAI clients: Chat's `web_search_options` becomes Anthropic's web search
//! server tool; the simulated upstream searches (`[sim:search]`) and cites; the answer carries
//! the text and `url_citation` annotations, never the server tool's blocks as tool calls.

use serde_json::{Value, json};

use crate::support::*;

fn request(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "What happened today? [sim:search]"}],
        "web_search_options": {"search_context_size": "low", "user_location": {"type": "approximate",
            "approximate": {"city": "Paris", "country": "FR", "timezone": "Europe/Paris"}}}})
}

async fn chat_web_search_options_search_and_cite(prefix: &str) {
    let env = TestEnv::with_api_key().await;
    let resp = env
        .post(
            &format!("{prefix}/openai/v1/chat/completions"),
            None,
            &request(false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;

    // The upstream was offered its own web search tool, with the location.
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    let tools = up["tools"].as_array().unwrap();
    assert_eq!(
        tools[0],
        json!({"type": "web_search_20250305", "name": "web_search", "user_location":
            {"type": "approximate", "city": "Paris", "country": "FR", "timezone": "Europe/Paris"}})
    );

    let m = &v["choices"][0]["message"];
    let content = m["content"].as_str().unwrap();
    assert!(content.starts_with(ccproxy::sim::search::CITED_TEXT), "{v}");
    let a = &m["annotations"][0];
    assert_eq!(a["type"], "url_citation", "{v}");
    assert_eq!(a["url_citation"]["url"], "https://example.com/result/1");
    assert_eq!(a["url_citation"]["start_index"], 0);
    assert_eq!(
        a["url_citation"]["end_index"],
        ccproxy::sim::search::CITED_TEXT.chars().count()
    );
    assert!(m.get("tool_calls").is_none(), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Streamed: the same text, no tool call chunk.
    let resp = env
        .post(
            &format!("{prefix}/openai/v1/chat/completions"),
            None,
            &request(true),
        )
        .await;
    let text = resp.text().await.unwrap();
    let (chunks, done) = openai_chunks(&text);
    assert!(done, "{text}");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        streamed.starts_with(ccproxy::sim::search::CITED_TEXT),
        "{text}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
        "{text}"
    );
}

cases!(chat_web_search_options_search_and_cite {
    full: (""),
    min: ("/min")
});

#[tokio::test]
async fn responses_web_search_tool_gives_a_web_search_call_and_the_text() {
    let env = TestEnv::with_api_key().await;
    let body = json!({"model": "gpt-5", "store": false,
        "input": "What happened today? [sim:search]",
        "tools": [{"type": "web_search", "filters": {"allowed_domains": ["news.example"]}}]});
    let resp = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    let output = v["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "web_search_call", "{v}");
    assert_eq!(output[0]["action"]["query"], "What happened today?");
    let message = output.iter().find(|i| i["type"] == "message").unwrap();
    let part = &message["content"][0];
    assert_eq!(part["type"], "output_text", "{v}");
    assert!(
        part["text"]
            .as_str()
            .unwrap()
            .starts_with(ccproxy::sim::search::CITED_TEXT),
        "{v}"
    );
    let a = &part["annotations"][0];
    assert_eq!(
        (a["type"].as_str(), a["url"].as_str()),
        (Some("url_citation"), Some("https://news.example/result/1")),
        "{v}"
    );
    assert_eq!(a["start_index"], 0);
    // The search stayed on the allowed domain the client named.
    let up: Value = serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
    assert_eq!(up["tools"][0]["allowed_domains"], json!(["news.example"]));
}

/// `service_tier` reaches the upstream as Anthropic's equivalent (Chat and Responses), and a
/// `web_search_options` of the wrong shape is a 400 naming the field.
#[tokio::test]
async fn service_tier_is_mapped_and_bad_web_search_options_are_refused() {
    let env = TestEnv::with_api_key().await;
    let sent_tier = |env: &TestEnv| {
        let up: Value =
            serde_json::from_slice(&env.sim_state().last_request().unwrap().body).unwrap();
        up.get("service_tier").cloned()
    };
    for (tier, want) in [
        ("default", Some(json!("standard_only"))),
        ("priority", Some(json!("auto"))),
        ("flex", None),
    ] {
        let body = json!({"model": "gpt-4o", "service_tier": tier,
            "messages": [{"role": "user", "content": "hi"}]});
        let resp = env.post("/openai/v1/chat/completions", None, &body).await;
        assert_eq!(resp.status(), 200, "{tier}");
        assert_eq!(sent_tier(&env), want, "chat {tier}");
        let body = json!({"model": "gpt-5", "service_tier": tier, "input": "hi", "store": false});
        let resp = env.post("/min/openai/v1/responses", None, &body).await;
        assert_eq!(resp.status(), 200, "{tier}");
        assert_eq!(sent_tier(&env), want, "responses {tier}");
    }
    let before = env.sim_state().requests().len();
    let body = json!({"model": "gpt-4o", "web_search_options": "yes",
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = env.post("/openai/v1/chat/completions", None, &body).await;
    assert_eq!(resp.status(), 400);
    let v = json_of(resp).await;
    assert!(is_openai_envelope(&v), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web_search_options"),
        "{v}"
    );
    assert_eq!(
        env.sim_state().requests().len(),
        before,
        "nothing went upstream"
    );
}

//! Web search in the simulated upstream: with `[sim:search]` and the web search server tool
//! offered (`web_search_*`), the answer first searches (a `server_tool_use` block with the
//! user's text as the query, then a `web_search_tool_result` of two results on the first allowed
//! domain, or `example.com`), then answers with text that cites the first result, as the real
//! service does; `usage.server_tool_use.web_search_requests` counts the search.

use serde_json::{Value, json};

use super::generate::{Block, SimMessage2};

/// The text of the cited answer (tests look for it).
pub const CITED_TEXT: &str = "The answer, from the first result.";

/// Puts a search and a cited answer in front of `m`'s blocks when `req` offers web search.
pub fn apply(m: &mut SimMessage2, req: &Value, user_text: &str, n: u64) {
    let Some(tool) = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| {
            t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|k| k.starts_with("web_search"))
        })
    else {
        return;
    };
    let domain = tool
        .get("allowed_domains")
        .and_then(|d| d.get(0))
        .and_then(Value::as_str)
        .unwrap_or("example.com");
    let query: String = user_text
        .split_whitespace()
        .filter(|w| !w.starts_with("[sim:"))
        .collect::<Vec<_>>()
        .join(" ");
    let id = format!("srvtoolu_sim{n:012x}");
    let results: Vec<Value> = (1..=2)
        .map(|k| {
            json!({"type": "web_search_result", "url": format!("https://{domain}/result/{k}"),
                "title": format!("Result {k} for {query}"), "page_age": "2 days ago",
                "encrypted_content": format!("EncSim{n:x}r{k}")})
        })
        .collect();
    let citation = json!({"type": "web_search_result_location",
        "url": results[0]["url"], "title": results[0]["title"],
        "encrypted_index": format!("EncIdx{n:x}"), "cited_text": "The first result says so."});
    let searched = [
        Block::ServerToolUse {
            id: id.clone(),
            name: "web_search".to_owned(),
            input: json!({ "query": query }).to_string(),
        },
        Block::ServerResult(json!({"type": "web_search_tool_result", "tool_use_id": id,
            "content": results})),
        Block::CitedText {
            text: CITED_TEXT.to_owned(),
            citations: vec![citation],
        },
    ];
    m.blocks.splice(0..0, searched);
    m.web_searches += 1;
}

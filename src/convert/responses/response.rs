//! Anthropic Messages response → Responses object.
//!
//! | Anthropic content | output item |
//! |---|---|
//! | consecutive `text` blocks | one `message` (`msg_…`) with one `output_text` (`annotations: []`) |
//! | `tool_use` of a function tool | `function_call` (`fc_…`, `call_id` = the tool_use id, `arguments` = the input JSON, compact) |
//! | `tool_use` of a custom tool | `custom_tool_call` (`ctc_…`, `input` = the raw string, unwrapped) |
//! | `thinking`, `redacted_thinking` | one `reasoning` item each (`rs_…`, see [`super`]) |
//! | `server_tool_use` `web_search` | `web_search_call` (`ws_…`, `action: {type: search, query}`) |
//! | server tool results, other blocks | nothing |
//!
//! `status` from `stop_reason` (`max_tokens` → `incomplete` with reason `max_output_tokens`,
//! `refusal` → `incomplete` with `content_filter`, else `completed`); `usage` see
//! [`super::usage`]; `model` is the client's.

use serde_json::Value;

use super::{ResponseContext, ThinkingBlock, encode_reasoning, status_of, usage};
use crate::api::anthropic::{ContentBlock, Message, Tokens};
use crate::api::responses::{
    IncompleteDetails, ItemStatus, OutputContent, OutputItem, Response, SummaryText,
};
use crate::convert::minify_json;

/// Converts a non-stream Messages 200 body into the response object.
pub fn messages_to_response(
    body: &[u8],
    ctx: &ResponseContext,
) -> Result<Response, serde_json::Error> {
    let msg: Message = crate::util::json::from_bytes(body)?;
    Ok(message_to_response(&msg, ctx.clone()))
}

/// [`messages_to_response`] of an answer already read, the context moved into the response.
pub fn message_to_response(msg: &Message<'_>, ctx: ResponseContext) -> Response {
    let mut out = Vec::new();
    let mut text: Option<String> = None;
    let mut annotations = Vec::new();
    let mut thinking_bytes = 0usize;
    for b in &msg.content {
        let kind = b.kind.as_deref().unwrap_or("");
        if kind == "text" {
            let t = text.get_or_insert_with(String::new);
            let start = t.chars().count();
            t.push_str(b.text.as_deref().unwrap_or(""));
            let end = t.chars().count();
            for (url, title) in crate::convert::url_citations(b) {
                annotations.push(serde_json::json!({"type": "url_citation", "url": url,
                    "title": title, "start_index": start, "end_index": end}));
            }
            continue;
        }
        if let Some(t) = text.take() {
            let a = std::mem::take(&mut annotations);
            out.push(message_item_with(
                &ctx,
                out.len(),
                t,
                ItemStatus::Completed,
                a,
            ));
        }
        if kind == "thinking" {
            thinking_bytes += b.thinking.as_deref().map_or(0, str::len);
        }
        if let Some(item) = block_item(&ctx, out.len(), b) {
            out.push(item);
        }
    }
    let (status, reason) = status_of(msg.stop_reason.as_deref());
    if let Some(t) = text.take() {
        let item_status = if reason == Some("max_output_tokens") {
            ItemStatus::Incomplete
        } else {
            ItemStatus::Completed
        };
        let a = std::mem::take(&mut annotations);
        out.push(message_item_with(&ctx, out.len(), t, item_status, a));
    }
    let mut tokens = Tokens::default();
    if let Some(u) = &msg.usage {
        u.merge_into(&mut tokens);
    }
    let mut r = ctx.into_response(status);
    r.output = out;
    r.usage = Some(usage(&tokens, thinking_bytes));
    r.incomplete_details = reason.map(|r| IncompleteDetails {
        reason: r.to_owned(),
    });
    r
}

pub(crate) fn message_item(
    ctx: &ResponseContext,
    n: usize,
    text: String,
    status: ItemStatus,
) -> OutputItem {
    message_item_with(ctx, n, text, status, Vec::new())
}

/// A message item whose text cites web sources (`url_citation` annotations).
fn message_item_with(
    ctx: &ResponseContext,
    n: usize,
    text: String,
    status: ItemStatus,
    annotations: Vec<serde_json::Value>,
) -> OutputItem {
    OutputItem::Message {
        id: ctx.item_id("msg", n),
        status,
        role: "assistant".to_owned(),
        content: vec![OutputContent::OutputText { text, annotations }],
    }
}

/// The output item of a whole non-text block (`None`: the block has no Responses form).
fn block_item(ctx: &ResponseContext, n: usize, b: &ContentBlock<'_>) -> Option<OutputItem> {
    match b.kind.as_deref()? {
        "tool_use" => {
            let name = b.name.as_deref().unwrap_or("").to_owned();
            let call_id = b.id.as_deref().unwrap_or("").to_owned();
            let input = b.input.map_or("{}", |r| r.get());
            Some(tool_item(ctx, n, call_id, name, input))
        }
        "thinking" => Some(reasoning_item(
            ctx,
            n,
            &ThinkingBlock::Thinking {
                thinking: b.thinking.as_deref().unwrap_or("").to_owned(),
                signature: b.signature.as_deref().unwrap_or("").to_owned(),
            },
        )),
        "redacted_thinking" => Some(reasoning_item(
            ctx,
            n,
            &ThinkingBlock::RedactedThinking {
                data: b.data.as_deref().unwrap_or("").to_owned(),
            },
        )),
        "server_tool_use" if b.name.as_deref() == Some("web_search") => {
            Some(web_search_item(ctx, n, b.input.map_or("{}", |r| r.get())))
        }
        _ => None,
    }
}

/// A finished tool call: `input` is the tool_use input JSON.
pub(crate) fn tool_item(
    ctx: &ResponseContext,
    n: usize,
    call_id: String,
    name: String,
    input: &str,
) -> OutputItem {
    if ctx.is_custom(&name) {
        OutputItem::CustomToolCall {
            id: ctx.item_id("ctc", n),
            status: ItemStatus::Completed,
            call_id,
            name,
            input: custom_input(input),
        }
    } else {
        let (namespace, name) = ctx.call_name(&name);
        OutputItem::FunctionCall {
            id: ctx.item_id("fc", n),
            status: ItemStatus::Completed,
            call_id,
            namespace,
            name,
            arguments: minify_json(input),
        }
    }
}

/// The raw text of a custom tool call: the `input` string property of the tool_use input (the
/// whole input JSON when the model answered another shape).
pub(crate) fn custom_input(input: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Wrapped {
        input: String,
    }
    match serde_json::from_str::<Wrapped>(input) {
        Ok(w) => w.input,
        Err(_) => minify_json(input),
    }
}

pub(crate) fn reasoning_item(ctx: &ResponseContext, n: usize, b: &ThinkingBlock) -> OutputItem {
    let summary = match b {
        ThinkingBlock::Thinking { thinking, .. } if ctx.summaries && !thinking.is_empty() => {
            vec![SummaryText::new(thinking.clone())]
        }
        _ => Vec::new(),
    };
    OutputItem::Reasoning {
        id: ctx.item_id("rs", n),
        summary,
        encrypted_content: Some(encode_reasoning(b)),
    }
}

pub(crate) fn web_search_item(ctx: &ResponseContext, n: usize, input: &str) -> OutputItem {
    let query = serde_json::from_str::<Value>(input)
        .ok()
        .and_then(|v| v.get("query").cloned())
        .unwrap_or(Value::Null);
    OutputItem::WebSearchCall {
        id: ctx.item_id("ws", n),
        status: ItemStatus::Completed,
        action: serde_json::json!({"type": "search", "query": query}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::responses::decode_reasoning;
    use serde_json::json;

    pub(crate) fn ctx() -> ResponseContext {
        let mut c = ResponseContext::new("resp_test", 1_700_000_000, "gpt-5");
        c.custom_tools = vec!["apply_patch".to_owned()];
        c
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/../shared/fixtures/anthropic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn convert(v: &Value, c: &ResponseContext) -> Value {
        let r = messages_to_response(&serde_json::to_vec(v).unwrap(), c).unwrap();
        serde_json::to_value(r).unwrap()
    }

    #[test]
    fn fixture_responses_snapshot() {
        for name in ["messages", "messages_tools"] {
            let body = fixture(&format!("{name}.response.json"));
            let r = messages_to_response(&body, &ctx()).unwrap();
            assert_eq!(r.model, "gpt-5");
            assert_eq!(r.object, "response");
            // The context's id and time are fixed: the snapshot is deterministic.
            insta::assert_json_snapshot!(format!("responses_fixture_{name}"), r);
        }
    }

    #[test]
    fn namespaced_tool_use_becomes_a_function_call_with_its_namespace() {
        let mut c = ctx();
        c.namespaced = vec![crate::convert::responses::NamespacedTool {
            namespace: "mcp__node_repl".into(),
            name: "js".into(),
            joined: "mcp__node_repl__js".into(),
        }];
        let v = convert(
            &json!({"id": "msg_1", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "mcp__node_repl__js", "input": {"code": "1+1"}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2}}),
            &c,
        );
        let item = &v["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["namespace"], "mcp__node_repl");
        assert_eq!(item["name"], "js");
        assert_eq!(item["call_id"], "toolu_1");
        assert_eq!(item["arguments"], r#"{"code":"1+1"}"#);
    }

    #[test]
    fn items_by_block_type() {
        let mut c = ctx();
        c.summaries = true;
        let v = convert(
            &json!({"id": "msg_1", "content": [
                {"type": "thinking", "thinking": "Plan.", "signature": "SIG"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello "},
                {"type": "text", "text": "world"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "rust"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "Found."},
                {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": ["ls", "-la"]}},
                {"type": "tool_use", "id": "toolu_2", "name": "apply_patch", "input": {"input": "*** Begin Patch\n*** End Patch\n"}}],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 70}}),
            &c,
        );
        insta::assert_json_snapshot!("responses_items_by_block_type", v["output"]);
        let out = v["output"].as_array().unwrap();
        let types: Vec<&str> = out.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "reasoning",
                "reasoning",
                "message",
                "web_search_call",
                "message",
                "function_call",
                "custom_tool_call"
            ]
        );
        assert_eq!(out[2]["content"][0]["text"], "Hello world");
        assert_eq!(out[2]["content"][0]["annotations"], json!([]));
        assert_eq!(
            out[0]["summary"],
            json!([{"type": "summary_text", "text": "Plan."}])
        );
        assert_eq!(out[1]["summary"], json!([]));
        assert_eq!(out[5]["call_id"], "toolu_1");
        assert_eq!(out[5]["arguments"], r#"{"command":["ls","-la"]}"#);
        assert_eq!(out[6]["call_id"], "toolu_2");
        assert_eq!(out[6]["input"], "*** Begin Patch\n*** End Patch\n");
        for (i, prefix) in [(0, "rs_"), (2, "msg_"), (3, "ws_"), (5, "fc_"), (6, "ctc_")] {
            assert!(out[i]["id"].as_str().unwrap().starts_with(prefix), "{i}");
        }
        assert_eq!(
            decode_reasoning(out[0]["encrypted_content"].as_str().unwrap()),
            Some(ThinkingBlock::Thinking {
                thinking: "Plan.".into(),
                signature: "SIG".into()
            })
        );
        assert_eq!(v["status"], "completed");
        assert_eq!(v["incomplete_details"], Value::Null);
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 115, "input_tokens_details": {"cached_tokens": 100},
                "output_tokens": 70, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 185})
        );
    }

    #[test]
    fn summaries_only_when_asked() {
        let v = convert(
            &json!({"content": [{"type": "thinking", "thinking": "Plan.", "signature": "SIG"}]}),
            &ctx(),
        );
        assert_eq!(v["output"][0]["summary"], json!([]));
        assert!(v["output"][0]["encrypted_content"].is_string());
    }

    #[test]
    fn max_tokens_is_incomplete() {
        let v = convert(
            &json!({"content": [{"type": "text", "text": "cut"}], "stop_reason": "max_tokens"}),
            &ctx(),
        );
        assert_eq!(v["status"], "incomplete");
        assert_eq!(
            v["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(v["output"][0]["status"], "incomplete");
    }

    #[test]
    fn custom_input_unwrapping() {
        assert_eq!(custom_input(r#"{"input":"a\nb"}"#), "a\nb");
        assert_eq!(custom_input(r#"{"other": 1}"#), r#"{"other":1}"#);
        assert_eq!(custom_input("{}"), "{}");
    }

    #[test]
    fn missing_fields_do_not_fail() {
        let v = convert(&json!({}), &ctx());
        assert_eq!(v["output"], json!([]));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["usage"]["total_tokens"], 0);
        assert!(messages_to_response(b"nope", &ctx()).is_err());
    }
}

//! Anthropic Messages response → OpenAI `chat.completion`, and upstream errors → OpenAI's envelope.
//!
//! # Thinking and its signatures
//! Thinking text is exposed as `message.reasoning_content` (all thinking blocks concatenated).
//! Because a later turn must send the blocks back verbatim (text and signature) for Anthropic to
//! accept them, the message also carries `thinking_blocks`: the Anthropic blocks as they came,
//! `[{"type":"thinking","thinking":"…","signature":"…"}, {"type":"redacted_thinking","data":"…"}]`
//! (the field name and shape LiteLLM uses, so clients written for it work). An assistant message
//! handed back with `thinking_blocks` is turned into those blocks again, first in the turn
//! ([`super::request`]). In a stream, each complete block is sent once, as a
//! `delta.thinking_blocks` entry when the block ends (see [`super::stream`]).

use std::borrow::Cow;

use super::{finish_reason, minify_json_into, write_json_str, write_openai_usage};
use crate::api::anthropic::{ContentBlock, Message, Tokens};

/// A new `chatcmpl-…` id.
pub(crate) fn new_completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// Converts a non-stream Anthropic Messages 200 body into an OpenAI `chat.completion` body.
///
/// `model` in the answer is `client_model` (what the client asked for). The id is `chatcmpl-`
/// followed by the Anthropic message id (without `msg_`), so logs on both sides correlate.
/// Text blocks are concatenated into `content` (null when there is none); `tool_use` blocks become
/// `tool_calls` with `arguments` = the `input` JSON, compact; thinking goes to `reasoning_content`
/// and `thinking_blocks` (module docs). Server-tool blocks have no OpenAI form and are omitted.
pub fn messages_to_chat(
    body: &[u8],
    client_model: &str,
    created: u64,
) -> Result<Vec<u8>, serde_json::Error> {
    messages_to_chat_with(body, client_model, created, false)
}

/// [`messages_to_chat`], answering a request that used legacy `functions` when
/// `legacy_functions`: the first `tool_use` becomes `message.function_call`
/// (legacy calls are one at a time) and `tool_use` finishes as `function_call`.
pub fn messages_to_chat_with(
    body: &[u8],
    client_model: &str,
    created: u64,
    legacy_functions: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let msg: Message = crate::util::json::from_bytes(body)?;
    Ok(message_to_chat(
        &msg,
        body.len(),
        client_model,
        created,
        legacy_functions,
    ))
}

/// [`messages_to_chat_with`] of an answer already read (`size` is its body's length, what
/// the Chat body is about to be).
pub fn message_to_chat(
    msg: &Message<'_>,
    size: usize,
    client_model: &str,
    created: u64,
    legacy_functions: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 256);
    write_completion_head(&mut out, msg.id.as_deref(), client_model, created);
    out.extend_from_slice(br#","choices":[{"index":0,"message":{"role":"assistant","content":"#);
    match joined_text(&msg.content) {
        Some(c) => write_json_str(&mut out, &c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","refusal":null"#);
    write_annotations(&mut out, &msg.content);
    write_reasoning(&mut out, &msg.content);
    if legacy_functions {
        write_legacy_function_call(&mut out, &msg.content);
    } else {
        write_tool_calls(&mut out, &msg.content);
    }
    out.extend_from_slice(br#"},"logprobs":null,"finish_reason":"#);
    let finish = finish_reason(msg.stop_reason.as_deref().unwrap_or("end_turn"));
    write_json_str(
        &mut out,
        if legacy_functions && finish == "tool_calls" {
            "function_call"
        } else {
            finish
        },
    );
    out.extend_from_slice(br#"}],"usage":"#);
    let mut usage = Tokens::default();
    if let Some(u) = &msg.usage {
        u.merge_into(&mut usage);
    }
    write_openai_usage(&usage, &mut out);
    out.push(b'}');
    out
}

/// `{"id":…,"object":"chat.completion","created":…,"model":…` — the id is `chatcmpl-` and the
/// Anthropic message id without `msg_` (a fresh one when there is none).
fn write_completion_head(out: &mut Vec<u8>, msg_id: Option<&str>, model: &str, created: u64) {
    out.extend_from_slice(br#"{"id":"#);
    let id = match msg_id {
        Some(id) if !id.is_empty() => {
            format!("chatcmpl-{}", id.strip_prefix("msg_").unwrap_or(id))
        }
        _ => new_completion_id(),
    };
    write_json_str(out, &id);
    out.extend_from_slice(br#","object":"chat.completion","created":"#);
    out.extend_from_slice(created.to_string().as_bytes());
    out.extend_from_slice(br#","model":"#);
    write_json_str(out, model);
}

/// The text blocks, concatenated; `None` when there is none.
fn joined_text<'b>(content: &'b [ContentBlock<'_>]) -> Option<Cow<'b, str>> {
    let mut texts = content
        .iter()
        .filter(|b| b.kind.as_deref() == Some("text"))
        .filter_map(|b| b.text.as_deref());
    match (texts.next(), texts.next()) {
        (None, _) => None,
        (Some(a), None) => Some(Cow::Borrowed(a)),
        (Some(a), Some(b)) => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            texts.for_each(|t| s.push_str(t));
            Some(Cow::Owned(s))
        }
    }
}

/// `,"annotations":[…]`: each web search citation of a text block as OpenAI's `url_citation`,
/// spanning that block's text in `content` (character offsets). Nothing without citations.
fn write_annotations(out: &mut Vec<u8>, content: &[ContentBlock<'_>]) {
    let mut at = 0usize;
    let mut first = true;
    for b in content.iter().filter(|b| b.kind.as_deref() == Some("text")) {
        let len = b.text.as_deref().map_or(0, |t| t.chars().count());
        for (url, title) in super::url_citations(b) {
            out.extend_from_slice(if first { br#","annotations":["# } else { b"," });
            first = false;
            out.extend_from_slice(br#"{"type":"url_citation","url_citation":{"url":"#);
            write_json_str(out, &url);
            out.extend_from_slice(br#","title":"#);
            write_json_str(out, &title);
            out.extend_from_slice(
                format!(r#","start_index":{at},"end_index":{}}}}}"#, at + len).as_bytes(),
            );
        }
        at += len;
    }
    if !first {
        out.push(b']');
    }
}

/// `,"reasoning_content":…` (the thinking text) and `,"thinking_blocks":[…]` (module docs).
fn write_reasoning(out: &mut Vec<u8>, content: &[ContentBlock<'_>]) {
    let mut reasoning: Option<String> = None;
    let mut has_thinking_blocks = false;
    for b in content {
        match b.kind.as_deref() {
            Some("thinking") => {
                has_thinking_blocks = true;
                if let Some(t) = b.thinking.as_deref() {
                    reasoning.get_or_insert_with(String::new).push_str(t);
                }
            }
            Some("redacted_thinking") => has_thinking_blocks = true,
            _ => {}
        }
    }
    if let Some(r) = &reasoning {
        out.extend_from_slice(br#","reasoning_content":"#);
        write_json_str(out, r);
    }
    if !has_thinking_blocks {
        return;
    }
    out.extend_from_slice(br#","thinking_blocks":["#);
    let thinking = content
        .iter()
        .filter(|b| matches!(b.kind.as_deref(), Some("thinking" | "redacted_thinking")));
    for (k, b) in thinking.enumerate() {
        if k > 0 {
            out.push(b',');
        }
        if b.kind.as_deref() == Some("thinking") {
            out.extend_from_slice(br#"{"type":"thinking","thinking":"#);
            write_json_str(out, b.thinking.as_deref().unwrap_or(""));
            out.extend_from_slice(br#","signature":"#);
            write_json_str(out, b.signature.as_deref().unwrap_or(""));
        } else {
            out.extend_from_slice(br#"{"type":"redacted_thinking","data":"#);
            write_json_str(out, b.data.as_deref().unwrap_or(""));
        }
        out.push(b'}');
    }
    out.push(b']');
}

fn tool_uses<'c, 'a>(
    content: &'c [ContentBlock<'a>],
) -> impl Iterator<Item = &'c ContentBlock<'a>> {
    content
        .iter()
        .filter(|b| b.kind.as_deref() == Some("tool_use"))
}

/// `name` and compact `arguments` of a `tool_use` block: `,"name":…,"arguments":…` without the
/// leading comma.
fn write_function(out: &mut Vec<u8>, b: &ContentBlock<'_>, args: &mut String) {
    out.extend_from_slice(br#""name":"#);
    write_json_str(out, b.name.as_deref().unwrap_or(""));
    out.extend_from_slice(br#","arguments":"#);
    args.clear();
    match b.input {
        Some(raw) => minify_json_into(raw.get(), args),
        None => args.push_str("{}"),
    }
    write_json_str(out, args);
}

/// Legacy answer: the first `tool_use` as `,"function_call":{…}`.
fn write_legacy_function_call(out: &mut Vec<u8>, content: &[ContentBlock<'_>]) {
    if let Some(b) = tool_uses(content).next() {
        out.extend_from_slice(br#","function_call":{"#);
        write_function(out, b, &mut String::new());
        out.push(b'}');
    }
}

/// `,"tool_calls":[…]`, absent when there is no `tool_use` block.
fn write_tool_calls(out: &mut Vec<u8>, content: &[ContentBlock<'_>]) {
    let mut args = String::new();
    let mut first = true;
    for b in tool_uses(content) {
        out.extend_from_slice(if first {
            br#","tool_calls":[{"id":"#
        } else {
            br#",{"id":"#
        });
        first = false;
        write_json_str(out, b.id.as_deref().unwrap_or(""));
        out.extend_from_slice(br#","type":"function","function":{"#);
        write_function(out, b, &mut args);
        out.extend_from_slice(b"}}");
    }
    if !first {
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/../shared/fixtures/anthropic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn to_chat(v: &Value) -> Value {
        let out =
            messages_to_chat(&serde_json::to_vec(v).unwrap(), "gpt-4o", 1_700_000_000).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn fixture_responses_snapshot() {
        for name in ["messages", "messages_tools"] {
            let body = fixture(&format!("{name}.response.json"));
            let out = messages_to_chat(&body, "gpt-4o", 1_700_000_000).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["object"], "chat.completion");
            assert_eq!(v["model"], "gpt-4o");
            assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
            insta::assert_json_snapshot!(format!("fixture_{name}"), v);
        }
    }

    #[test]
    fn tool_arguments_are_the_compact_input_json() {
        let v = to_chat(&json!({"id": "msg_1", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"b": [1, {"c": "x y"}], "a": "q\"uote"}},
            {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2}}));
        let calls = &v["choices"][0]["message"]["tool_calls"];
        assert_eq!(
            calls[0]["function"]["arguments"],
            r#"{"b":[1,{"c":"x y"}],"a":"q\"uote"}"#
        );
        assert_eq!(calls[0]["id"], "toolu_1");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["id"], "chatcmpl-1");
    }

    #[test]
    fn text_blocks_join_and_thinking_is_exposed() {
        let v = to_chat(&json!({"id": "msg_2", "content": [
            {"type": "thinking", "thinking": "Let me think. ", "signature": "sig1"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "thinking", "thinking": "Done.", "signature": "sig2"},
            {"type": "text", "text": "Hello ", "citations": []},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "world"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7}}));
        insta::assert_json_snapshot!("thinking_and_text", v);
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Hello world");
        assert_eq!(m["reasoning_content"], "Let me think. Done.");
        assert!(m.get("tool_calls").is_none());
        assert_eq!(v["usage"]["prompt_tokens"], 115);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(v["usage"]["completion_tokens"], 7);
        assert_eq!(v["usage"]["total_tokens"], 122);
    }

    #[test]
    fn web_search_citations_become_url_annotations() {
        let v = to_chat(&json!({"content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "Héllo "},
            {"type": "text", "text": "cited", "citations": [
                {"type": "web_search_result_location", "url": "https://a.example/1", "title": "A",
                 "encrypted_index": "x", "cited_text": "c"},
                {"type": "char_location", "document_index": 0}]}],
            "stop_reason": "end_turn"}));
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Héllo cited");
        assert_eq!(
            m["annotations"],
            json!([{"type": "url_citation", "url_citation": {"url": "https://a.example/1",
                "title": "A", "start_index": 6, "end_index": 11}}])
        );
        assert!(
            m.get("tool_calls").is_none(),
            "server tools are not the client's calls"
        );
        let plain = to_chat(&json!({"content": [{"type": "text", "text": "x"}]}));
        assert!(plain["choices"][0]["message"].get("annotations").is_none());
    }

    #[test]
    fn finish_reasons_in_responses() {
        for (stop, want) in [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("pause_turn"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!(null), "stop"),
        ] {
            let v =
                to_chat(&json!({"content": [{"type": "text", "text": "x"}], "stop_reason": stop}));
            assert_eq!(v["choices"][0]["finish_reason"], want, "{stop}");
            assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        }
    }

    #[test]
    fn missing_fields_do_not_fail() {
        let v = to_chat(&json!({}));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["total_tokens"], 0);
        assert!(v["id"].as_str().unwrap().len() > 12);
        assert!(messages_to_chat(b"not json", "m", 0).is_err());
    }
}

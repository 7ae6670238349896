//! Pure conversions between the OpenAI Chat Completions dialect and the Anthropic Messages API.
//!
//! No I/O, no HTTP types: bytes in, bytes out, so that every rule is covered by table tests,
//! snapshot tests over recorded fixtures and property tests.
//!
//! - [`request`]: `chat.completions` request → Messages request ([`chat_to_messages`]).
//! - [`response`]: Messages response → `chat.completion`, upstream errors → OpenAI error envelope.
//! - [`stream`]: the stateful Messages-SSE → `chat.completion.chunk` converter.
//! - [`sse`]: an incremental SSE parser shared by the stream path and the tests.
//! - [`models`]: model aliases and per-model capabilities.
//! - [`responses`]: the same for the OpenAI Responses API (request, response, stream).

pub(crate) mod delta;
pub mod model_list;
pub mod models;
pub mod request;
pub mod response;
pub mod responses;
pub mod sse;
pub mod stream;
#[cfg(test)]
mod test_support;

pub use models::ModelAliases;
pub use request::{ConvertOptions, ConvertedRequest, RequestError, chat_to_messages};
pub use response::messages_to_chat;
pub use sse::SseParser;
pub use stream::ChatStreamConverter;

use crate::api::anthropic::Tokens;

/// Appends OpenAI's `usage` object for `t`: `prompt_tokens` includes cached tokens (Anthropic's
/// `input_tokens` does not), `cached_tokens` are the cache reads.
pub(crate) fn write_openai_usage(t: &Tokens, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let prompt = t.prompt();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}}}}"#,
        prompt,
        t.output,
        prompt.saturating_add(t.output),
        t.cache_read
    );
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
///
/// end_turn, stop_sequence, pause_turn → `stop`; max_tokens and model_context_window_exceeded →
/// `length`; tool_use → `tool_calls`; refusal → `content_filter`; anything else → `stop`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    crate::api::json::string(out, s);
}

/// Appends valid JSON `raw` without the whitespace between tokens (strings untouched).
pub(crate) fn minify_json_into(raw: &str, out: &mut String) {
    let b = raw.as_bytes();
    let mut i = 0;
    let mut start = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b' ' | b'\n' | b'\r' | b'\t' => {
                    out.push_str(&raw[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    if start < b.len() {
        out.push_str(&raw[start..]);
    }
}

/// Minified copy of valid JSON `raw`.
pub(crate) fn minify_json(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    minify_json_into(raw, &mut s);
    s
}

/// The web sources a text block cites (`citations` with a `url`: web search results), as
/// `(url, title)`; other citation kinds (documents) have no URL and are left out.
pub(crate) fn url_citations(b: &crate::api::anthropic::ContentBlock<'_>) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Cite {
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        title: Option<String>,
    }
    b.citations
        .and_then(|c| serde_json::from_str::<Vec<Cite>>(c.get()).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| Some((c.url?, c.title.unwrap_or_default())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reason_table() {
        for (a, o) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(finish_reason(a), o, "{a}");
        }
    }

    #[test]
    fn usage_json() {
        let u = Tokens {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 7,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        };
        let mut out = Vec::new();
        write_openai_usage(&u, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"prompt_tokens":117,"completion_tokens":5,"total_tokens":122,
                "prompt_tokens_details":{"cached_tokens":100}})
        );
    }

    #[test]
    fn minify() {
        let cases = [
            ("{ \"a\" : 1 }", r#"{"a":1}"#),
            (
                "{\n  \"a b\": \"x \\\" y\",\n  \"c\": [1, 2]\n}",
                r#"{"a b":"x \" y","c":[1,2]}"#,
            ),
            (r#"{"s":"\\"}"#, r#"{"s":"\\"}"#),
            ("{}", "{}"),
            ("  ", ""),
        ];
        for (i, o) in cases {
            assert_eq!(minify_json(i), o);
        }
    }
}

//! Usage taps: read token counts, the model and the first-token time from an
//! upstream response while its bytes are relayed, without changing them.

use serde::Deserialize;

use crate::api::anthropic::{Message, StreamEvent, Tokens, WireUsage};
use crate::convert::SseParser;

use super::jscan;
use memchr::memmem;
use std::sync::LazyLock;

/// The largest non-stream body the tap keeps to read its usage.
const MAX_JSON_TAP: usize = 4 * 1024 * 1024;
/// The largest whole body read on the observer thread (larger ones are read on the request
/// path, so that a queue of records waiting for the observer stays small).
const MAX_DEFERRED: usize = 4 * 1024;

/// What a tap learned.
///
/// `repr(C)`: `first_content`, written per content event, first (beside the tap in
/// [`super::InFlight`]).
#[derive(Debug, Default, Clone)]
#[repr(C)]
pub struct Metered {
    /// Set when the first content event (or, for JSON, the body) was seen.
    pub first_content: bool,
    pub tokens: Tokens,
    pub model: Option<String>,
    /// An error event inside a 200 stream.
    pub stream_error: Option<String>,
}

/// Which format the relayed body is in.
///
/// A stream's parser is held inline, not boxed: the tap is read at every event, and with
/// thousands of streams a box of its own was a cache miss per event (`perf annotate`, 10 000
/// streams: nearly all of `Tap::push`'s samples on its first read of the parser). The tap
/// lives in the request's record, beside what an event reads there.
pub enum Tap {
    None,
    AnthropicSse(SseParser),
    AnthropicJson(Vec<u8>),
    OpenAiSse(SseParser),
    OpenAiJson(Vec<u8>),
    /// Message batch results (JSONL): the partial line so far; each succeeded result's usage
    /// is added up (the model is the first one named).
    BatchResults(Vec<u8>),
    /// A whole non-stream body of at most [`MAX_DEFERRED`] bytes, read when the record is
    /// handled, on the observer thread: off the request path, after the answer went out.
    Whole(WholeKind, bytes::Bytes),
}

/// The dialect of a whole body a [`Tap::Whole`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeKind {
    Anthropic,
    OpenAi,
}

/// One line of a batch's results, as far as usage goes.
#[derive(Deserialize)]
struct BatchLine<'a> {
    #[serde(borrow)]
    result: Option<BatchResult<'a>>,
}

#[derive(Deserialize)]
struct BatchResult<'a> {
    #[serde(borrow)]
    message: Option<Message<'a>>,
}

/// The longest results line the tap keeps whole (longer ones are skipped, not metered).
const MAX_BATCH_LINE: usize = 16 * 1024 * 1024;

fn on_batch_line(line: &[u8], m: &mut Metered) {
    let Ok(BatchLine {
        result: Some(BatchResult { message: Some(msg) }),
    }) = serde_json::from_slice::<BatchLine>(line)
    else {
        return;
    };
    m.first_content = true;
    if let Some(u) = &msg.usage {
        let mut t = Tokens::default();
        u.merge_into(&mut t);
        m.tokens.input += t.input;
        m.tokens.output += t.output;
        m.tokens.cache_read += t.cache_read;
        m.tokens.cache_write += t.cache_write;
        m.tokens.cache_write_1h += t.cache_write_1h;
    }
    m.tokens.batch = true;
    if m.model.is_none() {
        m.model = msg.model.as_deref().map(str::to_owned);
    }
}

#[derive(Deserialize)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<OpenAiPromptDetails>,
}

#[derive(Deserialize)]
struct OpenAiPromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OpenAiBody {
    model: Option<String>,
    usage: Option<OpenAiUsage>,
}

impl OpenAiUsage {
    fn apply(&self, t: &mut Tokens) {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        if let Some(p) = self.prompt_tokens {
            t.input = p.saturating_sub(cached);
            t.cache_read = cached;
        }
        if let Some(c) = self.completion_tokens {
            t.output = c;
        }
    }
}

impl Tap {
    pub fn anthropic(is_sse: bool) -> Tap {
        if is_sse {
            Tap::AnthropicSse(SseParser::reading_only(carries_usage))
        } else {
            Tap::AnthropicJson(Vec::new())
        }
    }

    pub fn openai(is_sse: bool) -> Tap {
        if is_sse {
            Tap::OpenAiSse(SseParser::default())
        } else {
            Tap::OpenAiJson(Vec::new())
        }
    }

    pub fn batch_results() -> Tap {
        Tap::BatchResults(Vec::new())
    }

    /// This tap over a whole body that already arrived: a JSON tap keeps a small body (a copy
    /// of its own, not the connection's read buffer it is a slice of) to read later (see
    /// [`Tap::Whole`]); a larger one, or any other tap, reads it now. While the observer is
    /// behind, its queue holds at most [`MAX_DEFERRED`] bytes of body per record.
    pub fn over_whole(self, body: &[u8], m: &mut Metered) -> Tap {
        let kind = match self {
            Tap::AnthropicJson(_) => WholeKind::Anthropic,
            Tap::OpenAiJson(_) => WholeKind::OpenAi,
            mut other => {
                other.push(body, m);
                return other;
            }
        };
        if body.len() > MAX_DEFERRED {
            read_whole(kind, body, m);
            return Tap::None;
        }
        Tap::Whole(kind, bytes::Bytes::copy_from_slice(body))
    }

    /// Whether this tap reads its body when the record is handled (see [`Tap::Whole`]).
    pub fn is_deferred(&self) -> bool {
        matches!(self, Tap::Whole(..))
    }

    /// Feeds a relayed chunk.
    pub fn push(&mut self, chunk: &[u8], m: &mut Metered) {
        match self {
            Tap::None => {}
            Tap::BatchResults(partial) => {
                let mut rest = chunk;
                while let Some(nl) = memchr::memchr(b'\n', rest) {
                    if partial.is_empty() {
                        on_batch_line(&rest[..nl], m);
                    } else {
                        if partial.len() <= MAX_BATCH_LINE {
                            partial.extend_from_slice(&rest[..nl]);
                            on_batch_line(partial, m);
                        }
                        partial.clear();
                    }
                    rest = &rest[nl + 1..];
                }
                if partial.len() + rest.len() <= MAX_BATCH_LINE + 1 {
                    partial.extend_from_slice(rest);
                }
            }
            Tap::AnthropicSse(p) => {
                p.push(chunk, |event, data| on_anthropic_event(event, data, m));
            }
            Tap::OpenAiSse(p) => p.push(chunk, |_, data| on_openai_chunk(data, m)),
            Tap::AnthropicJson(buf) | Tap::OpenAiJson(buf) => {
                if buf.len() + chunk.len() <= MAX_JSON_TAP {
                    buf.extend_from_slice(chunk);
                }
            }
            // Already whole.
            Tap::Whole(..) => {}
        }
        if let Tap::AnthropicSse(p) | Tap::OpenAiSse(p) = self
            && p.too_long()
        {
            self.too_long();
        }
    }

    /// The stream has an event longer than the parser holds ([`crate::convert::sse::MAX_EVENT`]):
    /// its bytes are still relayed as they are, but its usage is not read any further.
    fn too_long(&mut self) {
        tracing::warn!(
            max_bytes = crate::convert::sse::MAX_EVENT,
            "an upstream stream event is longer than the usage tap reads: its usage is not counted"
        );
        *self = Tap::None;
    }

    /// The body ended (completely).
    pub fn finish(&mut self, m: &mut Metered) {
        match self {
            Tap::AnthropicJson(buf) => anthropic_json(buf, m),
            Tap::OpenAiJson(buf) => openai_json(buf, m),
            Tap::Whole(kind, body) => read_whole(*kind, body, m),
            Tap::BatchResults(partial) => {
                if !partial.is_empty() && partial.len() <= MAX_BATCH_LINE {
                    on_batch_line(partial, m);
                }
                partial.clear();
            }
            _ => {}
        }
    }
}

/// Usage and model of a whole body of `kind` (one larger than [`MAX_JSON_TAP`] only counts as
/// content).
fn read_whole(kind: WholeKind, body: &[u8], m: &mut Metered) {
    if body.len() > MAX_JSON_TAP {
        m.first_content = true;
        return;
    }
    match kind {
        WholeKind::Anthropic => anthropic_json(body, m),
        WholeKind::OpenAi => openai_json(body, m),
    }
}

/// Usage and model of a whole Messages response.
fn anthropic_json(buf: &[u8], m: &mut Metered) {
    m.first_content = true;
    if let Some(quick) = quick_anthropic_usage(buf) {
        quick.0.merge_into(&mut m.tokens);
        if quick.1.is_some() {
            m.model = quick.1;
        }
    } else if let Ok(msg) = crate::util::json::from_bytes::<Message>(buf) {
        on_anthropic_message(&msg, m);
    }
}

/// Usage and model of a whole OpenAI answer.
fn openai_json(buf: &[u8], m: &mut Metered) {
    m.first_content = true;
    if let Ok(b) = crate::util::json::from_bytes::<OpenAiBody>(buf) {
        if let Some(u) = &b.usage {
            u.apply(&mut m.tokens);
        }
        if m.model.is_none() {
            m.model = b.model;
        }
    }
}

/// Reads `usage` and `model` of a Messages response without parsing its content:
/// Anthropic writes `usage` as the last top-level key and `model` near the start,
/// and keys inside content can only appear before `usage`. Falls back (`None`)
/// to a full parse when the body is shaped otherwise.
fn quick_anthropic_usage(buf: &[u8]) -> Option<(WireUsage, Option<String>)> {
    static MODEL: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"model\""));
    static CONTENT: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"content\""));
    let at = rfind_usage_key(buf)?;
    let rest = &buf[at + 7..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let value = &rest[colon + 1..];
    let (usage, used) = jscan::usage(value).or_else(|| {
        let mut it = serde_json::Deserializer::from_slice(value).into_iter::<WireUsage>();
        let usage = it.next()?.ok()?;
        Some((usage, it.byte_offset()))
    })?;
    // Only what follows can be the closing brace of the message.
    let tail = &value[used..];
    if !tail.iter().all(|b| b.is_ascii_whitespace() || *b == b'}') {
        return None;
    }
    // `model` is trusted only before `content` (a tool input may have a `model` key).
    let model_at = MODEL.find(buf)?;
    if CONTENT.find(buf).is_some_and(|c| c < model_at) {
        return None;
    }
    let after = &buf[model_at + 7..];
    let colon = after.iter().position(|b| !b.is_ascii_whitespace())?;
    if after[colon] != b':' {
        return None;
    }
    let value = &after[colon + 1..];
    let model = match jscan::string(value) {
        Some((model, _)) => Some(model.to_owned()),
        None => {
            let mut it = serde_json::Deserializer::from_slice(value).into_iter::<String>();
            it.next()?.ok()
        }
    };
    Some((usage, model))
}

/// Where the last `"usage"` in `buf` starts. Found from its `g`, a rare byte near the end of
/// an answer (memchr's reverse substring search is a byte-at-a-time Two-Way: 1.5k
/// instructions over a small answer's tail, this ~100).
fn rfind_usage_key(buf: &[u8]) -> Option<usize> {
    let mut end = buf.len();
    while let Some(g) = memchr::memrchr(b'g', &buf[..end]) {
        if let Some(at) = g.checked_sub(4)
            && buf.get(at..at + 7) == Some(b"\"usage\"")
        {
            return Some(at);
        }
        end = g;
    }
    None
}

/// Usage and model of a Messages response (or of the `message` of `message_start`).
pub fn on_anthropic_message(msg: &Message<'_>, m: &mut Metered) {
    if let Some(u) = &msg.usage {
        u.merge_into(&mut m.tokens);
    }
    if let Some(model) = msg.model.as_deref() {
        m.model = Some(model.to_owned());
    }
}

/// The Anthropic events whose data [`on_anthropic_event`] reads; of the others (text deltas
/// above all) it reads only the name.
fn carries_usage(event: &str) -> bool {
    matches!(event, "message_start" | "message_delta" | "error")
}

/// Reads one Anthropic SSE event.
pub fn on_anthropic_event(event: &str, data: &[u8], m: &mut Metered) {
    match event {
        "content_block_delta" | "content_block_start" => m.first_content = true,
        "message_start" | "message_delta" | "error" => {
            if let Ok(ev) = crate::util::json::from_bytes::<StreamEvent>(data) {
                if let Some(msg) = &ev.message {
                    on_anthropic_message(msg, m);
                }
                if let Some(u) = ev.usage {
                    u.merge_into(&mut m.tokens);
                }
                if let Some(e) = ev.error {
                    m.stream_error = Some(format!(
                        "{}: {}",
                        e.kind.as_deref().unwrap_or_default(),
                        e.message.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        _ => {}
    }
}

fn on_openai_chunk(data: &[u8], m: &mut Metered) {
    if data == b"[DONE]" {
        return;
    }
    m.first_content = true;
    // Only chunks with usage are parsed fully (cheap check first).
    if memchr::memmem::find(data, b"\"usage\"").is_some()
        && let Ok(b) = crate::util::json::from_bytes::<OpenAiBody>(data)
        && let Some(u) = &b.usage
    {
        u.apply(&mut m.tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_results_add_up_every_succeeded_message() {
        let jsonl = concat!(
            r#"{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-5","content":[{"type":"text","text":"x\ny"}],"usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":4}}}}"#,
            "\n",
            r#"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"no"}}}}"#,
            "\n",
            r#"{"custom_id":"c","result":{"type":"succeeded","message":{"id":"msg_2","type":"message","role":"assistant","model":"claude-opus-4-8","content":[],"usage":{"input_tokens":5,"output_tokens":2}}}}"#,
        );
        for size in [1, 7, 64, jsonl.len()] {
            let mut tap = Tap::batch_results();
            let mut m = Metered::default();
            for chunk in jsonl.as_bytes().chunks(size) {
                tap.push(chunk, &mut m);
            }
            tap.finish(&mut m);
            assert_eq!(m.tokens.input, 15, "chunks of {size}");
            assert_eq!(m.tokens.output, 5);
            assert_eq!(m.tokens.cache_read, 4);
            assert_eq!(m.model.as_deref(), Some("claude-sonnet-5"));
        }
    }

    #[test]
    fn reads_usage_from_recorded_stream() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/anthropic/messages_tools_stream.sse"
        );
        let Ok(raw) = std::fs::read(path) else { return };
        let mut tap = Tap::anthropic(true);
        let mut m = Metered::default();
        for chunk in raw.chunks(11) {
            tap.push(chunk, &mut m);
        }
        tap.finish(&mut m);
        assert_eq!(m.tokens.input, 572);
        assert_eq!(m.tokens.output, 186);
        assert_eq!(m.model.as_deref(), Some("claude-sonnet-4-20250514"));
        assert!(m.first_content);
    }

    #[test]
    fn reads_usage_from_json_body() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/anthropic/messages.response.json"
        );
        let Ok(raw) = std::fs::read(path) else { return };
        let mut tap = Tap::anthropic(false);
        let mut m = Metered::default();
        tap.push(&raw, &mut m);
        tap.finish(&mut m);
        assert_eq!((m.tokens.input, m.tokens.output), (24, 40));
    }

    #[test]
    fn finds_the_last_usage_key() {
        let cases: [(&[u8], Option<usize>); 8] = [
            (b"", None),
            (b"\"usage\"", Some(0)),
            (b"{\"usage\":{},\"x\":\"usage\"}", Some(16)),
            (b"{\"usage\":1,\"msg\":\"big garbage\"}", Some(1)),
            (b"usage usage", None),
            (b"\"usag", None),
            (b"g\"usage", None),
            (b"\"usage\"\"usage\"", Some(7)),
        ];
        for (buf, want) in cases {
            let scan = buf.windows(7).rposition(|w| w == b"\"usage\"");
            assert_eq!(scan, want, "{:?}", String::from_utf8_lossy(buf));
            assert_eq!(
                rfind_usage_key(buf),
                want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn quick_path_reads_api_ordered_bodies_and_refuses_doubtful_ones() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"tool_use","id":"t","name":"f","input":{"usage":{"input_tokens":999},"model":"no"}}],"stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":3,"cache_read_input_tokens":4}}"#;
        let (u, model) = quick_anthropic_usage(body).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (Some(12), Some(3), Some(4))
        );
        assert_eq!(model.as_deref(), Some("claude-x"));
        // usage not last: no quick answer.
        assert!(
            quick_anthropic_usage(br#"{"usage":{"input_tokens":1},"model":"m","x":1}"#).is_none()
        );
        // model after content: no quick answer.
        assert!(
            quick_anthropic_usage(br#"{"content":[],"model":"m","usage":{"input_tokens":1}}"#)
                .is_none()
        );
        let mut tap = Tap::anthropic(false);
        let mut m = Metered::default();
        tap.push(body, &mut m);
        tap.finish(&mut m);
        assert_eq!(m.tokens.input, 12);
    }

    #[test]
    fn openai_usage_splits_cached_tokens() {
        let mut tap = Tap::openai(false);
        let mut m = Metered::default();
        tap.push(
            br#"{"model":"gpt-4o","usage":{"prompt_tokens":100,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":60}}}"#,
            &mut m,
        );
        tap.finish(&mut m);
        assert_eq!(
            m.tokens,
            Tokens {
                input: 40,
                output: 7,
                cache_read: 60,
                cache_write: 0,
                cache_write_1h: 0,
                fast: false,
                batch: false,
            }
        );
    }

    #[test]
    fn error_event_is_noted() {
        let mut m = Metered::default();
        on_anthropic_event(
            "error",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut m,
        );
        assert_eq!(
            m.stream_error.as_deref(),
            Some("overloaded_error: Overloaded")
        );
    }
}

//! Anthropic Messages SSE → OpenAI `chat.completion.chunk` SSE: a state machine, no I/O.
//!
//! Feed it the parsed upstream events ([`SseParser`] gives them) with
//! [`ChatStreamConverter::on_event`], then call [`ChatStreamConverter::finish`] when the upstream
//! ends. Every call appends complete frames (`data: {json}\n\n`) to the caller's buffer.
//!
//! | Anthropic event | OpenAI chunk(s) |
//! |---|---|
//! | `message_start` | `delta:{"role":"assistant","content":""}` (input usage recorded) |
//! | `content_block_start` text | nothing (unless it carries text) |
//! | `content_block_delta` text_delta | `delta:{"content":…}`, one chunk per upstream delta, never re-chunked |
//! | `content_block_start` tool_use | `delta:{"tool_calls":[{"index":k,"id","type":"function","function":{"name","arguments":""}}]}`; k = 0, 1, … over tool calls |
//! | `content_block_delta` input_json_delta | `delta:{"tool_calls":[{"index":k,"function":{"arguments":…}}]}` (fragments as they come; the concatenation is exactly the model's JSON; a call with no fragment gets `"{}"`) |
//! | thinking_delta | `delta:{"reasoning_content":…}` |
//! | thinking block end (after signature_delta) | `delta:{"thinking_blocks":[{"type":"thinking","thinking":<whole text>,"signature":…}]}` |
//! | `content_block_start` redacted_thinking | `delta:{"thinking_blocks":[{"type":"redacted_thinking","data":…}]}` |
//! | `message_delta` with stop_reason | `delta:{}` + `finish_reason` (mapped, see [`super::finish_reason`]); output usage recorded |
//! | `message_stop` | the usage chunk `choices:[]` if `include_usage`, then `data: [DONE]` |
//! | `error` | `data: {"error":{"message","type","param","code"}}` then `data: [DONE]`; the stream ends |
//! | `ping`, citations, server-tool blocks, unknown events, undecodable data | nothing |
//!
//! One `chatcmpl-…` id and one `created` for the whole stream. Events after the end are ignored.

use super::{finish_reason, minify_json, write_json_str, write_openai_usage};
use crate::api::anthropic::{StreamEvent, Tokens};
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::routes::Dialect;

pub use super::sse::SseParser;

#[derive(Debug)]
enum BlockState {
    Text,
    Tool {
        index: u32,
        /// Bytes of arguments sent so far.
        sent: usize,
        /// A non-empty `input` given in the start event itself (sent at stop if no fragment came).
        start_input: Option<String>,
    },
    Thinking {
        text: String,
        signature: String,
    },
    Other,
}

/// See the module docs.
#[derive(Debug)]
pub struct ChatStreamConverter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,` — the common head.
    head: Vec<u8>,
    include_usage: bool,
    role_sent: bool,
    started: bool,
    /// Open (and closed) content blocks by upstream index; few per message.
    blocks: Vec<(u64, BlockState)>,
    tool_calls: u32,
    finish: Option<&'static str>,
    finish_sent: bool,
    done: bool,
    usage: Tokens,
    /// Answer a legacy `functions` request: `function_call` deltas for the first call.
    legacy_functions: bool,
}

impl ChatStreamConverter {
    /// A converter with a fresh `chatcmpl-…` id.
    pub fn new(client_model: String, include_usage: bool, created: u64) -> Self {
        Self::with_id(
            &super::response::new_completion_id(),
            &client_model,
            include_usage,
            created,
        )
    }

    /// A converter with a given id (deterministic output for tests and replays).
    pub fn with_id(id: &str, client_model: &str, include_usage: bool, created: u64) -> Self {
        let mut head = Vec::with_capacity(96 + id.len() + client_model.len());
        head.extend_from_slice(br#"data: {"id":"#);
        write_json_str(&mut head, id);
        head.extend_from_slice(br#","object":"chat.completion.chunk","created":"#);
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(br#","model":"#);
        write_json_str(&mut head, client_model);
        head.push(b',');
        ChatStreamConverter {
            head,
            include_usage,
            role_sent: false,
            started: false,
            blocks: Vec::new(),
            tool_calls: 0,
            finish: None,
            finish_sent: false,
            done: false,
            usage: Tokens::default(),
            legacy_functions: false,
        }
    }

    /// Streams the first tool call as legacy `function_call` deltas (and finishes
    /// with `function_call`), for requests that used legacy `functions`.
    pub fn legacy_functions(mut self, on: bool) -> Self {
        self.legacy_functions = on;
        self
    }

    /// True once `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tokens reported so far (input from `message_start`, output from `message_delta`).
    pub fn usage(&self) -> Tokens {
        self.usage
    }

    /// One parsed upstream SSE event: `event` is the SSE event name (may be empty; the data's
    /// `type` wins), `data` the raw data bytes. Appends zero or more complete frames to `out`.
    pub fn on_event(&mut self, event: &str, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        // Most events are text deltas: copied over without decoding (`super::delta`).
        // (The data's `type` wins over the event's name, as below.)
        if let Some(d) = super::delta::text_delta(data) {
            if !d.is_empty() && matches!(self.state(d.index), Some(BlockState::Text) | None) {
                self.content_literal(b"content", d.literal, out);
            }
            return;
        }
        self.on_decoded(event, data, out);
    }

    /// [`Self::on_event`] through serde_json.
    fn on_decoded(&mut self, event: &str, data: &[u8], out: &mut Vec<u8>) {
        let ev: StreamEvent = match crate::util::json::from_bytes(data) {
            Ok(ev) => ev,
            Err(_) => {
                if event == "error" {
                    let msg = String::from_utf8_lossy(data);
                    let msg = if msg.trim().is_empty() {
                        "upstream stream error"
                    } else {
                        msg.trim()
                    };
                    let e = ProxyError::new(ErrorKind::Internal, Origin::Upstream, msg);
                    self.fail_with(&e, out);
                }
                return;
            }
        };
        let kind = ev.kind.as_deref().unwrap_or(event);
        match kind {
            "message_start" => {
                self.started = true;
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    u.merge_into(&mut self.usage);
                }
                self.ensure_role(out);
            }
            "content_block_start" => self.block_start(&ev, out),
            "content_block_delta" => self.block_delta(&ev, out),
            "content_block_stop" => self.block_stop(ev.index.unwrap_or(0), out),
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    u.merge_into(&mut self.usage);
                }
                if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.finish = Some(finish_reason(r));
                    self.send_finish(out);
                }
            }
            "message_stop" => self.end(out),
            "error" => {
                let (etype, msg) = match &ev.error {
                    Some(e) => (
                        e.kind.as_deref().unwrap_or(""),
                        e.message.as_deref().unwrap_or("upstream stream error"),
                    ),
                    None => ("", "upstream stream error"),
                };
                self.fail_with(&ProxyError::from_upstream_error(etype, msg, 500), out);
            }
            _ => {} // ping, unknown
        }
    }

    /// Ends the stream: called once when the upstream ends. After `message_stop`
    /// nothing is left to do. Otherwise the answer is incomplete, and the client
    /// must not take it for a whole one: the usage chunk (if asked, with what was
    /// counted) then an error chunk, and no `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let why = if !self.started && !self.role_sent {
            "the upstream stream ended before a response started"
        } else {
            if self.include_usage {
                self.usage_chunk(out);
            }
            "the upstream stream ended before message_stop: the answer is incomplete"
        };
        let e = ProxyError::new(ErrorKind::Internal, Origin::Upstream, why);
        self.fail_with(&e, out);
    }

    /// Ends the stream with `e` (the upstream broke, or the server is ending its
    /// streams), unless it already ended.
    pub fn abort(&mut self, e: &ProxyError, out: &mut Vec<u8>) {
        if !self.done {
            self.fail_with(e, out);
        }
    }

    /// Ends the stream with the error chunk of the OpenAI dialect, then `[DONE]`.
    fn fail_with(&mut self, e: &ProxyError, out: &mut Vec<u8>) {
        out.extend_from_slice(&e.stream_event(Dialect::OpenAi));
        self.done = true;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.send_finish(out);
        if self.include_usage {
            self.usage_chunk(out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// The chunk with `choices: []` and the usage so far (`stream_options.include_usage`).
    fn usage_chunk(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(br#""choices":[],"usage":"#);
        write_openai_usage(&self.usage, out);
        out.extend_from_slice(b"}\n\n");
    }

    fn send_finish(&mut self, out: &mut Vec<u8>) {
        if self.finish_sent {
            return;
        }
        if let Some(f) = self.finish {
            let f = if self.legacy_functions && f == "tool_calls" {
                "function_call"
            } else {
                f
            };
            self.ensure_role(out);
            self.chunk_start(out);
            out.extend_from_slice(b"{}");
            self.chunk_end(out, Some(f));
            self.finish_sent = true;
        }
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk_start(out);
            out.extend_from_slice(br#"{"role":"assistant","content":""}"#);
            self.chunk_end(out, None);
        }
    }

    /// Head of a chunk up to the delta object.
    fn chunk_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(br#""choices":[{"index":0,"delta":"#);
    }

    fn chunk_end(&self, out: &mut Vec<u8>, finish: Option<&str>) {
        match finish {
            None => out.extend_from_slice(br#","finish_reason":null}]}"#),
            Some(f) => {
                out.extend_from_slice(br#","finish_reason":"#);
                write_json_str(out, f);
                out.extend_from_slice(b"}]}");
            }
        }
        out.extend_from_slice(b"\n\n");
    }

    fn content(&mut self, field: &str, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.ensure_role(out);
        self.chunk_start(out);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        write_json_str(out, text);
        out.push(b'}');
        self.chunk_end(out, None);
    }

    /// [`Self::content`] with the text as a JSON string literal in serde_json's escaping.
    fn content_literal(&mut self, field: &[u8], literal: &[u8], out: &mut Vec<u8>) {
        self.ensure_role(out);
        self.chunk_start(out);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(literal);
        out.push(b'}');
        self.chunk_end(out, None);
    }

    fn tool_args(&mut self, index: u32, args: &str, out: &mut Vec<u8>) {
        self.ensure_role(out);
        self.chunk_start(out);
        if self.legacy_functions {
            out.extend_from_slice(br#"{"function_call":{"arguments":"#);
            write_json_str(out, args);
            out.extend_from_slice(b"}}");
        } else {
            out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
            out.extend_from_slice(index.to_string().as_bytes());
            out.extend_from_slice(br#","function":{"arguments":"#);
            write_json_str(out, args);
            out.extend_from_slice(b"}}]}");
        }
        self.chunk_end(out, None);
    }

    fn state(&mut self, index: u64) -> Option<&mut BlockState> {
        self.blocks
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s)
    }

    fn block_start(&mut self, ev: &StreamEvent<'_>, out: &mut Vec<u8>) {
        let index = ev.index.unwrap_or(0);
        let Some(b) = &ev.content_block else {
            return;
        };
        // A repeated start for an index replaces the old state.
        self.blocks.retain(|(i, _)| *i != index);
        let state = match b.kind.as_deref() {
            Some("text") => {
                if let Some(t) = b.text.as_deref() {
                    self.content("content", t, out);
                }
                BlockState::Text
            }
            // Legacy `functions` answers carry one call: later ones are dropped.
            Some("tool_use") if self.legacy_functions && self.tool_calls > 0 => BlockState::Other,
            Some("tool_use") => {
                let k = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                self.ensure_role(out);
                self.chunk_start(out);
                if self.legacy_functions {
                    out.extend_from_slice(br#"{"function_call":{"name":"#);
                    write_json_str(out, b.name.as_deref().unwrap_or(""));
                    out.extend_from_slice(br#","arguments":""}}"#);
                } else {
                    out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
                    out.extend_from_slice(k.to_string().as_bytes());
                    out.extend_from_slice(br#","id":"#);
                    write_json_str(out, b.id.as_deref().unwrap_or(""));
                    out.extend_from_slice(br#","type":"function","function":{"name":"#);
                    write_json_str(out, b.name.as_deref().unwrap_or(""));
                    out.extend_from_slice(br#","arguments":""}}]}"#);
                }
                self.chunk_end(out, None);
                let start_input = b
                    .input
                    .map(|r| minify_json(r.get()))
                    .filter(|s| !s.is_empty() && s != "{}");
                BlockState::Tool {
                    index: k,
                    sent: 0,
                    start_input,
                }
            }
            Some("thinking") => {
                let text = b.thinking.as_deref().unwrap_or("").to_owned();
                if !text.is_empty() {
                    self.content("reasoning_content", &text, out);
                }
                BlockState::Thinking {
                    text,
                    signature: b.signature.as_deref().unwrap_or("").to_owned(),
                }
            }
            Some("redacted_thinking") => {
                if let Some(d) = b.data.as_deref() {
                    self.ensure_role(out);
                    self.chunk_start(out);
                    out.extend_from_slice(
                        br#"{"thinking_blocks":[{"type":"redacted_thinking","data":"#,
                    );
                    write_json_str(out, d);
                    out.extend_from_slice(b"}]}");
                    self.chunk_end(out, None);
                }
                BlockState::Other
            }
            _ => BlockState::Other,
        };
        self.blocks.push((index, state));
    }

    fn block_delta(&mut self, ev: &StreamEvent<'_>, out: &mut Vec<u8>) {
        let index = ev.index.unwrap_or(0);
        let Some(d) = &ev.delta else {
            return;
        };
        match d.kind.as_deref() {
            Some("text_delta") => {
                let is_text = matches!(self.state(index), Some(BlockState::Text) | None);
                if is_text && let Some(t) = d.text.as_deref() {
                    self.content("content", t, out);
                }
            }
            Some("input_json_delta") => {
                let Some(p) = d.partial_json.as_deref().filter(|p| !p.is_empty()) else {
                    return;
                };
                if let Some(BlockState::Tool { index: k, sent, .. }) = self.state(index) {
                    *sent += p.len();
                    let k = *k;
                    self.tool_args(k, p, out);
                }
            }
            Some("thinking_delta") => {
                let Some(t) = d.thinking.as_deref() else {
                    return;
                };
                if let Some(BlockState::Thinking { text, .. }) = self.state(index) {
                    text.push_str(t);
                    self.content("reasoning_content", t, out);
                }
            }
            Some("signature_delta") => {
                if let (Some(s), Some(BlockState::Thinking { signature, .. })) =
                    (d.signature.as_deref(), self.state(index))
                {
                    signature.push_str(s);
                }
            }
            _ => {} // citations_delta, unknown
        }
    }

    fn block_stop(&mut self, index: u64, out: &mut Vec<u8>) {
        let Some(pos) = self.blocks.iter().position(|(i, _)| *i == index) else {
            return;
        };
        let (_, state) = self.blocks.swap_remove(pos);
        match state {
            BlockState::Tool {
                index: k,
                sent: 0,
                start_input,
            } => {
                let args = start_input.as_deref().unwrap_or("{}");
                self.tool_args(k, args, out);
            }
            BlockState::Thinking { text, signature } if !signature.is_empty() => {
                self.ensure_role(out);
                self.chunk_start(out);
                out.extend_from_slice(br#"{"thinking_blocks":[{"type":"thinking","thinking":"#);
                write_json_str(out, &text);
                out.extend_from_slice(br#","signature":"#);
                write_json_str(out, &signature);
                out.extend_from_slice(b"}]}");
                self.chunk_end(out, None);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    proptest::proptest! {
        /// The text-delta fast path (`convert::delta`) and the serde path give the same bytes.
        #[test]
        fn text_deltas_come_out_the_same_with_or_without_serde(
            ops in proptest::collection::vec((0u8..10, 0u8..3, ".{0,12}", proptest::bool::weighted(0.8)), 0..24),
            usage in proptest::bool::ANY,
        ) {
            let events = crate::convert::test_support::upstream_events(&ops);
            let (a, b) = crate::convert::test_support::both_paths(
                &events,
                (conv(usage), conv(usage)),
                |c, e, out| c.on_event("", e, out),
                |c, e, out| c.on_decoded("", e, out),
                |c, out| c.finish(out),
            );
            proptest::prop_assert_eq!(a, b);
        }
    }

    fn fixture(path: &str) -> Vec<u8> {
        let p = format!("{}/../shared/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn conv(include_usage: bool) -> ChatStreamConverter {
        ChatStreamConverter::with_id("chatcmpl-test", "gpt-4o", include_usage, 1_700_000_000)
    }

    /// Feeds `chunks` of upstream SSE bytes, then `finish`.
    fn run(c: &mut ChatStreamConverter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for ch in chunks {
            p.push(ch, |e, d| c.on_event(e, d, &mut out));
        }
        c.finish(&mut out);
        out
    }

    /// Output frames: JSON values, `"[DONE]"` as a string. Asserts the framing.
    #[track_caller]
    fn frames(out: &[u8]) -> Vec<Value> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.is_empty() || s.ends_with("\n\n"), "{s}");
        s.split_terminator("\n\n")
            .map(|f| {
                let d = f
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("bad frame {f:?}"));
                assert!(!d.contains('\n'), "{f:?}");
                if d == "[DONE]" {
                    Value::from("[DONE]")
                } else {
                    serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"))
                }
            })
            .collect()
    }

    fn events(evs: &[Value]) -> Vec<u8> {
        let mut s = String::new();
        for e in evs {
            s.push_str(&format!(
                "event: {}\ndata: {}\n\n",
                e["type"].as_str().unwrap_or(""),
                e
            ));
        }
        s.into_bytes()
    }

    /// Arguments per tool-call index, concatenated.
    fn args_by_index(fs: &[Value]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for f in fs {
            for tc in f["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = tc["index"].as_u64().unwrap() as usize;
                if v.len() <= i {
                    v.resize(i + 1, String::new());
                }
                v[i].push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
        v
    }

    #[test]
    fn replay_text_fixture() {
        let sse = fixture("anthropic/messages_stream.sse");
        let mut c = conv(true);
        let fs = frames(&run(&mut c, &[&sse]));
        insta::assert_json_snapshot!("replay_messages_stream", fs);
        assert!(c.is_done());
        assert_eq!(
            c.usage(),
            Tokens {
                input: 24,
                output: 41,
                cache_read: 0,
                cache_write: 0,
                cache_write_1h: 0,
                fast: false,
                batch: false,
            }
        );
        // One chunk per upstream text delta, unchanged; role first; ping dropped.
        let texts: Vec<&str> = fs
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(
            texts,
            [
                "Hello! It",
                "'s nice to meet you. I'm",
                " Claude, an AI assistant created by Anthropic. How are",
                " you doing today, and is there anything I can help you with?"
            ]
        );
        assert_eq!(fs[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(
            fs[1..]
                .iter()
                .all(|f| f["choices"][0]["delta"].get("role").is_none())
        );
    }

    #[test]
    fn replay_tools_fixture() {
        let sse = fixture("anthropic/messages_tools_stream.sse");
        let mut c = conv(false);
        let fs = frames(&run(&mut c, &[&sse]));
        insta::assert_json_snapshot!("replay_messages_tools_stream", fs);
        let args = args_by_index(&fs);
        assert_eq!(
            args,
            [
                r#"{"location": "New York"}"#,
                r#"{"lat1": "40.7128", "lon1": "-74.0060", "lat2": "34.0522", "lon2": "-118.2437"}"#
            ]
        );
        // Each tool call announced exactly once, with id, type and name; fragments carry none.
        let starts: Vec<&Value> = fs
            .iter()
            .flat_map(|f| {
                f["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .filter(|tc| tc.get("id").is_some())
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0]["index"], 0);
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(starts[1]["id"], "toolu_01LaXuzSn9P2JiYc1U99SZRv");
        let last = &fs[fs.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(fs.last().unwrap(), "[DONE]");
    }

    /// Key skeleton of a JSON value (object keys, recursively; arrays by their first element).
    fn keys(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut ks: Vec<(&String, Value)> = m.iter().map(|(k, x)| (k, keys(x))).collect();
                ks.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(ks.into_iter().map(|(k, x)| (k.clone(), x)).collect())
            }
            Value::Array(a) => a.first().map(keys).into_iter().collect(),
            _ => Value::Null,
        }
    }

    #[test]
    fn chunk_shape_matches_recorded_openai_streams() {
        let reference = frames(&fixture("openai-chunks/chat_completions_tools_stream.sse"));
        let ours = frames(&run(
            &mut conv(false),
            &[&fixture("anthropic/messages_tools_stream.sse")],
        ));
        let tool_shapes = |fs: &[Value]| -> Vec<Value> {
            let mut v: Vec<Value> = fs
                .iter()
                .flat_map(|f| {
                    f["choices"][0]["delta"]["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .map(|tc| keys(&tc))
                .collect();
            v.sort_by_key(|x| x.to_string());
            v.dedup();
            v
        };
        assert_eq!(tool_shapes(&ours), tool_shapes(&reference));
        assert_eq!(
            tool_shapes(&ours).len(),
            2,
            "announcement and fragment shapes"
        );
        // Same tool-call index discipline: 0 then 1.
        let idx = |fs: &[Value]| -> Vec<u64> {
            let mut v: Vec<u64> = fs
                .iter()
                .flat_map(|f| {
                    f["choices"][0]["delta"]["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .map(|tc| tc["index"].as_u64().unwrap())
                .collect();
            v.dedup();
            v
        };
        assert_eq!(idx(&ours), idx(&reference));
        for path in [
            "openai-chunks/chat_completions_stream.sse",
            "openai-chunks/chat_completions_tools_stream.sse",
        ] {
            let reference = frames(&fixture(path));
            let reference: Vec<&Value> = reference
                .iter()
                .filter(|f| {
                    f.get("choices")
                        .is_some_and(|c| !c.as_array().unwrap().is_empty())
                })
                .collect();
            for f in &ours[..ours.len() - 1] {
                for k in ["id", "created", "model", "choices"] {
                    assert!(f.get(k).is_some(), "{k} missing in {f}");
                    assert!(reference.iter().all(|r| r.get(k).is_some()));
                }
                let ch = &f["choices"][0];
                assert_eq!(ch["index"], 0);
                assert!(ch["delta"].is_object());
                assert_eq!(f["object"], "chat.completion.chunk");
                assert_eq!(f["id"], "chatcmpl-test");
                assert_eq!(f["created"], 1_700_000_000);
            }
            assert!(reference.last().unwrap()["choices"][0]["delta"].is_object());
        }
    }

    #[test]
    fn include_usage_adds_a_final_usage_chunk() {
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 33}}),
            json!({"type": "message_stop"}),
        ]);
        let fs = frames(&run(&mut conv(true), &[&evs]));
        let n = fs.len();
        assert_eq!(fs[n - 1], "[DONE]");
        assert_eq!(fs[n - 2]["choices"], json!([]));
        assert_eq!(
            fs[n - 2]["usage"],
            json!({"prompt_tokens": 105, "completion_tokens": 33, "total_tokens": 138, "prompt_tokens_details": {"cached_tokens": 90}})
        );
        assert_eq!(fs[n - 3]["choices"][0]["finish_reason"], "length");
        assert_eq!(fs[n - 3]["choices"][0]["delta"], json!({}));
        assert!(fs[..n - 2].iter().all(|f| f.get("usage").is_none()));
        // Without include_usage: no usage chunk.
        let fs = frames(&run(&mut conv(false), &[&evs]));
        assert!(fs.iter().all(|f| f.get("usage").is_none()));
        assert_eq!(fs.iter().filter(|f| **f == "[DONE]").count(), 1);
    }

    #[test]
    fn finish_reason_mapping_in_stream() {
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let evs = events(&[
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
                json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 1}}),
                json!({"type": "message_stop"}),
            ]);
            let fs = frames(&run(&mut conv(false), &[&evs]));
            let finishes: Vec<&Value> = fs
                .iter()
                .filter_map(|f| f["choices"][0].get("finish_reason"))
                .filter(|r| !r.is_null())
                .collect();
            assert_eq!(finishes, [&json!(want)], "{stop}");
        }
    }

    #[test]
    fn upstream_error_event_ends_the_stream() {
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ignored"}}),
        ]);
        let mut c = conv(true);
        let fs = frames(&run(&mut c, &[&evs]));
        assert!(c.is_done());
        assert_eq!(
            fs.last().unwrap(),
            &json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
        );
        assert!(
            fs.iter().all(|f| f != "[DONE]"),
            "an error ends without [DONE]"
        );
        assert!(
            !fs.iter()
                .any(|f| f["choices"][0]["delta"]["content"] == "ignored")
        );
        // Undecodable data on an `error` event still ends the stream.
        let mut c = conv(false);
        let fs = frames(&run(&mut c, &[b"event: error\ndata: upstream broke\n\n"]));
        assert_eq!(fs[0]["error"]["message"], "upstream broke");
        assert_eq!(fs.len(), 1);
    }

    #[test]
    fn ping_unknown_and_garbage_are_ignored() {
        let mut c = conv(false);
        let mut out = Vec::new();
        c.on_event("ping", br#"{"type": "ping"}"#, &mut out);
        c.on_event("mystery", br#"{"type": "mystery_event", "x": 1}"#, &mut out);
        c.on_event("", b"not json", &mut out);
        c.on_event("content_block_delta", br#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#, &mut out);
        assert!(out.is_empty());
        // The event name is used when the data has no type.
        c.on_event(
            "message_start",
            br#"{"message":{"usage":{"input_tokens":3}}}"#,
            &mut out,
        );
        assert_eq!(frames(&out).len(), 1);
        assert_eq!(c.usage().input, 3);
    }

    #[test]
    fn finish_without_message_stop() {
        // Ended after message_delta: the finish reason went out, then the usage
        // chunk (asked for) and an error chunk; no [DONE], which would say the
        // answer is whole.
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
        ]);
        let fs = frames(&run(&mut conv(true), &[&evs]));
        let n = fs.len();
        assert_eq!(fs[n - 3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(fs[n - 2]["usage"]["completion_tokens"], 2);
        let message = fs[n - 1]["error"]["message"].as_str().unwrap();
        assert!(message.contains("message_stop"), "{message}");
        assert!(fs.iter().all(|f| f != "[DONE]"));
        // Cut in the middle of a tool call: no finish reason, an error, no [DONE].
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        ]);
        let fs = frames(&run(&mut conv(false), &[&evs]));
        assert!(fs.iter().all(|f| {
            f["choices"][0]
                .get("finish_reason")
                .is_none_or(Value::is_null)
        }));
        assert!(fs.last().unwrap()["error"]["message"].is_string());
        assert!(fs.iter().all(|f| f != "[DONE]"));
        // Nothing at all: an error frame.
        let fs = frames(&run(&mut conv(false), &[]));
        assert!(fs[0]["error"]["message"].is_string());
        assert_eq!(fs.len(), 1);
        // finish twice, and events after the end, add nothing.
        let mut c = conv(false);
        let mut out = run(&mut c, &[&evs]);
        let len = out.len();
        c.finish(&mut out);
        c.on_event("message_stop", br#"{"type":"message_stop"}"#, &mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn thinking_stream() {
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "see."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCkYI"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "opaque"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Answer."}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 50}}),
            json!({"type": "message_stop"}),
        ]);
        let fs = frames(&run(&mut conv(false), &[&evs]));
        insta::assert_json_snapshot!("thinking_stream", fs);
        let reasoning: String = fs
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "Let me see.");
        let blocks: Vec<&Value> = fs
            .iter()
            .flat_map(|f| {
                f["choices"][0]["delta"]["thinking_blocks"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .collect();
        assert_eq!(
            blocks,
            [
                &json!({"type": "thinking", "thinking": "Let me see.", "signature": "EqQBCkYI"}),
                &json!({"type": "redacted_thinking", "data": "opaque"})
            ]
        );
        // The tool call after two thinking blocks and a text block is still index 0.
        assert_eq!(args_by_index(&fs), ["{\"a\":1}"]);
    }

    #[test]
    fn thinking_blocks_round_trip_through_a_request() {
        use crate::convert::{ConvertOptions, ModelAliases, chat_to_messages};
        let evs = events(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Plan."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
            json!({"type": "message_stop"}),
        ]);
        let fs = frames(&run(&mut conv(false), &[&evs]));
        // A client accumulating deltas the usual way, keeping thinking_blocks.
        let mut tb = Vec::new();
        let mut calls = Vec::new();
        for f in &fs {
            let d = &f["choices"][0]["delta"];
            tb.extend(d["thinking_blocks"].as_array().cloned().unwrap_or_default());
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                if tc.get("id").is_some() {
                    calls.push(tc.clone());
                } else if let Some(c) = calls.last_mut() {
                    let a = c["function"]["arguments"].as_str().unwrap().to_owned()
                        + tc["function"]["arguments"].as_str().unwrap();
                    c["function"]["arguments"] = a.into();
                }
            }
        }
        for c in &mut calls {
            c.as_object_mut().unwrap().remove("index");
        }
        let req = json!({"model": "claude-haiku-4-5", "reasoning_effort": "low",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "tool_calls": calls, "thinking_blocks": tb},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}]});
        let aliases = ModelAliases::with_defaults();
        let c = chat_to_messages(
            &serde_json::to_vec(&req).unwrap(),
            &ConvertOptions {
                default_max_tokens: 4096,
                aliases: &aliases,
                auto_cache: true,
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(v["thinking"]["type"], "enabled");
        assert_eq!(
            v["messages"][1]["content"],
            json!([
                {"type": "thinking", "thinking": "Plan.", "signature": "SIG"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
            ])
        );
    }

    #[test]
    fn tool_call_edge_cases() {
        let evs = events(&[
            json!({"type": "message_start", "message": {}}),
            // A text delta for a block never started still comes through.
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}}),
            // Server tool blocks are not client tool calls.
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":1}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            // Input given whole in the start event, no fragment.
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {"k": "v w"}}}),
            json!({"type": "content_block_stop", "index": 2}),
            // Empty fragments only.
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "t2", "name": "g", "input": {}}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
            json!({"type": "message_stop"}),
        ]);
        let fs = frames(&run(&mut conv(false), &[&evs]));
        assert_eq!(args_by_index(&fs), [r#"{"k":"v w"}"#, "{}"]);
        let contents: String = fs
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(contents, "a");
    }

    mod props {
        use super::*;
        use crate::convert::messages_to_chat;
        use crate::convert::test_support::{fragments, split};
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
                Just(Value::from("quote\" back\\slash \n newline \u{1F600}")),
            ];
            leaf.prop_recursive(4, 32, 5, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-z ]{1,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn tool_input() -> impl Strategy<Value = serde_json::Map<String, Value>> {
            proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..5)
                .prop_map(|m| m.into_iter().collect())
        }

        fn any_event() -> impl Strategy<Value = (String, Vec<u8>)> {
            let kind = prop_oneof![
                Just("message_start"),
                Just("content_block_start"),
                Just("content_block_delta"),
                Just("content_block_stop"),
                Just("message_delta"),
                Just("message_stop"),
                Just("ping"),
                Just("error"),
                Just("weird"),
                Just(""),
            ];
            let btype = prop_oneof![
                Just("text"),
                Just("tool_use"),
                Just("thinking"),
                Just("redacted_thinking"),
                Just("server_tool_use"),
                Just("x"),
            ];
            let dtype = prop_oneof![
                Just("text_delta"),
                Just("input_json_delta"),
                Just("thinking_delta"),
                Just("signature_delta"),
                Just("citations_delta"),
                Just("y"),
            ];
            let structured = (kind.clone(), btype, dtype, 0u64..4, "\\PC{0,6}", any::<bool>(), 0u64..1000).prop_map(
                |(k, b, d, i, s, flag, n)| {
                    let v = json!({
                        "type": k, "index": i,
                        "message": {"usage": {"input_tokens": n, "output_tokens": n}},
                        "content_block": {"type": b, "id": s, "name": s, "text": s, "thinking": s, "data": s,
                            "input": if flag { json!({}) } else { json!({"k": s}) }},
                        "delta": {"type": d, "text": s, "partial_json": s, "thinking": s, "signature": s,
                            "stop_reason": if flag { json!("end_turn") } else { json!(null) }},
                        "usage": {"output_tokens": n},
                        "error": {"type": "overloaded_error", "message": s},
                    });
                    (k.to_owned(), v.to_string().into_bytes())
                },
            );
            let raw = (kind, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(k, b)| (k.to_owned(), b));
            let odd = (kind_any(), json_value()).prop_map(|(k, v)| (k, v.to_string().into_bytes()));
            prop_oneof![6 => structured, 1 => raw, 1 => odd]
        }

        fn kind_any() -> impl Strategy<Value = String> {
            "[a-z_]{0,20}"
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_split_gives_the_same_chunks(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
                                               tools in any::<bool>(), usage in any::<bool>()) {
                let name = if tools { "anthropic/messages_tools_stream.sse" } else { "anthropic/messages_stream.sse" };
                let sse = fixture(name);
                let whole = run(&mut conv(usage), &[&sse]);
                let parts = run(&mut conv(usage), &split(&sse, &cuts));
                prop_assert_eq!(String::from_utf8(parts).unwrap(), String::from_utf8(whole).unwrap());
            }

            #[test]
            fn streamed_arguments_concatenate_to_the_non_stream_arguments(
                inputs in proptest::collection::vec((tool_input(), proptest::collection::vec(any::<prop::sample::Index>(), 0..8), any::<bool>()), 1..4),
                text in "\\PC{0,20}",
                sse_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            ) {
                let mut evs = vec![json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}})];
                let mut content = Vec::new();
                let mut idx = 0;
                if !text.is_empty() {
                    evs.push(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
                    evs.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}));
                    evs.push(json!({"type": "content_block_stop", "index": 0}));
                    content.push(json!({"type": "text", "text": text}));
                    idx = 1;
                }
                let mut model_json = Vec::new();
                for (k, (input, cuts, pretty)) in inputs.iter().enumerate() {
                    // The model's own formatting (Anthropic streams it as produced).
                    let s = if *pretty { serde_json::to_string_pretty(input).unwrap() } else { serde_json::to_string(input).unwrap() };
                    let id = format!("toolu_{k}");
                    evs.push(json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": id, "name": "f", "input": {}}}));
                    evs.push(json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": ""}}));
                    for frag in fragments(&s, cuts) {
                        evs.push(json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": frag}}));
                        evs.push(json!({"type": "ping"}));
                    }
                    evs.push(json!({"type": "content_block_stop", "index": idx}));
                    content.push(json!({"type": "tool_use", "id": id, "name": "f", "input": input}));
                    model_json.push(s);
                    idx += 1;
                }
                evs.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}));
                evs.push(json!({"type": "message_stop"}));
                let sse = events(&evs);
                let fs = frames(&run(&mut conv(false), &split(&sse, &sse_cuts)));
                let streamed = args_by_index(&fs);
                prop_assert_eq!(streamed.len(), inputs.len());

                let message = json!({"id": "msg_x", "content": content, "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9}});
                let ns: Value = serde_json::from_slice(&messages_to_chat(&serde_json::to_vec(&message).unwrap(), "gpt-4o", 0).unwrap()).unwrap();
                let calls = ns["choices"][0]["message"]["tool_calls"].as_array().unwrap();
                for (k, s) in streamed.iter().enumerate() {
                    // Exactly the model's JSON, byte for byte...
                    prop_assert_eq!(s, &model_json[k]);
                    // ...and the same JSON as the non-stream arguments.
                    let a: Value = serde_json::from_str(s).unwrap();
                    let b: Value = serde_json::from_str(calls[k]["function"]["arguments"].as_str().unwrap()).unwrap();
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(&calls[k]["id"], &json!(format!("toolu_{k}")));
                }
                let text_s: String = fs.iter().filter_map(|f| f["choices"][0]["delta"]["content"].as_str()).collect();
                prop_assert_eq!(text_s.as_str(), ns["choices"][0]["message"]["content"].as_str().unwrap_or(""));
            }

            #[test]
            fn never_panics_and_always_ends_cleanly(evs in proptest::collection::vec(any_event(), 0..30), usage in any::<bool>()) {
                let mut c = conv(usage);
                let mut out = Vec::new();
                for (k, d) in &evs {
                    c.on_event(k, d, &mut out);
                }
                c.finish(&mut out);
                prop_assert!(c.is_done());
                let fs = frames(&out);
                // A whole answer ends with [DONE]; any other ends with one error
                // chunk and no [DONE].
                let last = fs.last().unwrap();
                let dones = fs.iter().filter(|f| **f == "[DONE]").count();
                if last == &Value::from("[DONE]") {
                    prop_assert_eq!(dones, 1);
                    prop_assert!(fs.iter().all(|f| f.get("error").is_none()));
                } else {
                    prop_assert!(last["error"]["message"].is_string(), "{last}");
                    prop_assert_eq!(dones, 0);
                    prop_assert_eq!(fs.iter().filter(|f| f.get("error").is_some()).count(), 1);
                }
                // Tool-call indices are dense and announced once each.
                let mut announced = 0u64;
                for f in &fs {
                    for tc in f["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                        if tc.get("id").is_some() {
                            prop_assert_eq!(tc["index"].as_u64(), Some(announced));
                            announced += 1;
                        } else {
                            prop_assert!(tc["index"].as_u64().unwrap() < announced);
                        }
                    }
                }
                // At most one finish_reason.
                let finishes = fs.iter().filter(|f| f["choices"][0].get("finish_reason").is_some_and(|r| !r.is_null())).count();
                prop_assert!(finishes <= 1);
            }
        }
    }
}

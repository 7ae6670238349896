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

use super::response::{AnthropicBlock, AnthropicUsage, openai_error_kind, write_openai_error};
use super::{Usage, finish_reason, minify_json, write_json_str};
use crate::api::openai::Str;
use serde::Deserialize;

pub use super::sse::SseParser;

#[derive(Debug, Default, Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(borrow, default)]
    content_block: Option<AnthropicBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(borrow, default)]
    error: Option<super::response::AnthropicError<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

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
    usage: Usage,
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
            usage: Usage::default(),
        }
    }

    /// True once `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tokens reported so far (input from `message_start`, output from `message_delta`).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// One parsed upstream SSE event: `event` is the SSE event name (may be empty; the data's
    /// `type` wins), `data` the raw data bytes. Appends zero or more complete frames to `out`.
    pub fn on_event(&mut self, event: &str, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let ev: Event = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(_) => {
                if event == "error" {
                    let msg = String::from_utf8_lossy(data);
                    let msg = if msg.trim().is_empty() {
                        "upstream stream error"
                    } else {
                        msg.trim()
                    };
                    self.fail_with(msg, "server_error", None, out);
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
                let (t, code) = openai_error_kind(etype, 500);
                self.fail_with(msg, t, code, out);
            }
            _ => {} // ping, unknown
        }
    }

    /// Ends the stream: called once when the upstream ends, normally or not. Unless already done,
    /// appends the finish chunk (when the stop reason is known and was not sent), the usage chunk
    /// (if asked) and `[DONE]`. If nothing at all came from upstream, an error frame instead.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.started && !self.role_sent {
            self.fail_with(
                "the upstream stream ended before a response started",
                "server_error",
                None,
                out,
            );
            return;
        }
        // Close open tool calls so their arguments are complete JSON where possible.
        let open: Vec<u64> = self.blocks.iter().map(|(i, _)| *i).collect();
        for i in open {
            self.block_stop(i, out);
        }
        self.end(out);
    }

    /// Ends the stream with an OpenAI error frame then `[DONE]` (e.g. the upstream connection broke).
    pub fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        if !self.done {
            self.fail_with(message, "server_error", None, out);
        }
    }

    fn fail_with(&mut self, message: &str, kind: &str, code: Option<&str>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        write_openai_error(out, message, kind, None, code);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        self.done = true;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.send_finish(out);
        if self.include_usage {
            out.extend_from_slice(&self.head);
            out.extend_from_slice(br#""choices":[],"usage":"#);
            self.usage.write_openai(out);
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn send_finish(&mut self, out: &mut Vec<u8>) {
        if self.finish_sent {
            return;
        }
        if let Some(f) = self.finish {
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

    fn tool_args(&mut self, index: u32, args: &str, out: &mut Vec<u8>) {
        self.ensure_role(out);
        self.chunk_start(out);
        out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
        out.extend_from_slice(index.to_string().as_bytes());
        out.extend_from_slice(br#","function":{"arguments":"#);
        write_json_str(out, args);
        out.extend_from_slice(b"}}]}");
        self.chunk_end(out, None);
    }

    fn state(&mut self, index: u64) -> Option<&mut BlockState> {
        self.blocks
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s)
    }

    fn block_start(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
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
            Some("tool_use") => {
                let k = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                self.ensure_role(out);
                self.chunk_start(out);
                out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
                out.extend_from_slice(k.to_string().as_bytes());
                out.extend_from_slice(br#","id":"#);
                write_json_str(out, b.id.as_deref().unwrap_or(""));
                out.extend_from_slice(br#","type":"function","function":{"name":"#);
                write_json_str(out, b.name.as_deref().unwrap_or(""));
                out.extend_from_slice(br#","arguments":""}}]}"#);
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

    fn block_delta(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
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

//! Anthropic Messages SSE → the Responses stream events: a state machine, no I/O.
//!
//! Feed it the parsed upstream events with [`ResponsesStreamConverter::on_event`] and call
//! [`ResponsesStreamConverter::finish`] when the upstream ends (or
//! [`ResponsesStreamConverter::abort`] when it broke). Events go to an [`EventSink`]: a `Vec<u8>`
//! receives SSE frames (`event: <type>\ndata: <json>\n\n`), [`JsonEvents`] one JSON object per
//! event (the WebSocket mode's text frames). Every event has a `sequence_number` from 0.
//!
//! | Anthropic | Responses events |
//! |---|---|
//! | `message_start` | `response.created`, `response.in_progress` |
//! | text block start (none open) | `output_item.added` (message), `content_part.added` (output_text) |
//! | `text_delta` | `output_text.delta` (consecutive text blocks share one message) |
//! | another block starts, or the end | `output_text.done`, `content_part.done`, `output_item.done` |
//! | `tool_use` start / `input_json_delta` / stop | `output_item.added` (function_call), `function_call_arguments.delta` (the fragments as they come) / `.done`, `output_item.done` |
//! | the same for a custom tool | `output_item.added` (custom_tool_call), `custom_tool_call_input.delta` (the decoded text of the `input` property, as it comes) / `.done`, `output_item.done` |
//! | thinking / redacted_thinking | `output_item.added` (reasoning); with summaries asked, `reasoning_summary_part.added`, `reasoning_summary_text.delta` / `.done`, `reasoning_summary_part.done`; `output_item.done` with `encrypted_content` |
//! | `server_tool_use` web_search | `output_item.added` / `.done` (web_search_call) |
//! | `message_stop` | `response.completed`, or `response.incomplete` (max_tokens, refusal) |
//! | `error`, [`abort`](ResponsesStreamConverter::abort), an end without `message_stop` | `response.failed` with the error; the stream ends |
//!
//! The output items, their ids and the final response are the same as [`super::response`] gives
//! for the same message, except that function `arguments` are the model's JSON text as streamed
//! (equal as JSON to the non-stream, compact arguments). Events after the end are ignored.

use super::response::{custom_input, message_item, reasoning_item, web_search_item};
use super::{ResponseContext, ThinkingBlock, status_of, usage};
use crate::api::anthropic::{ContentBlock, StreamEvent as Upstream, Tokens};
use crate::api::responses::{
    EventBody, IncompleteDetails, ItemStatus, OutputContent, OutputItem, Response, ResponseError,
    Status, SummaryText,
};
use crate::convert::minify_json;
use crate::error::{ErrorKind, Origin, ProxyError};

/// Where events go.
pub trait EventSink {
    /// One event: its `type` and its JSON.
    fn event(&mut self, kind: &str, json: &[u8]);
}

/// SSE frames: `event: <type>\ndata: <json>\n\n`.
impl EventSink for Vec<u8> {
    fn event(&mut self, kind: &str, json: &[u8]) {
        self.reserve(kind.len() + json.len() + 17);
        self.extend_from_slice(b"event: ");
        self.extend_from_slice(kind.as_bytes());
        self.extend_from_slice(b"\ndata: ");
        self.extend_from_slice(json);
        self.extend_from_slice(b"\n\n");
    }
}

/// One JSON object per event, without framing (a WebSocket text frame each).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JsonEvents(pub Vec<String>);

impl EventSink for JsonEvents {
    fn event(&mut self, _kind: &str, json: &[u8]) {
        self.0.push(String::from_utf8_lossy(json).into_owned());
    }
}

/// Serialises events with their sequence numbers.
#[derive(Debug, Default)]
struct Emitter {
    seq: u64,
    buf: Vec<u8>,
}

impl Emitter {
    /// `response.output_text.delta`, the same bytes [`Emitter::emit`] writes for an
    /// [`EventBody::OutputTextDelta`], but with the delta's JSON string literal copied as the
    /// upstream wrote it (`convert::delta`, in serde_json's own escaping) instead of unescaped
    /// and escaped again: the one event a stream sends per token.
    fn text_delta(
        &mut self,
        item_id: &str,
        output_index: usize,
        literal: &[u8],
        out: &mut dyn EventSink,
    ) {
        const KIND: &str = "response.output_text.delta";
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(br#"{"type":"response.output_text.delta","item_id":"#);
        crate::convert::write_json_str(b, item_id);
        b.extend_from_slice(br#","output_index":"#);
        b.extend_from_slice(itoa::Buffer::new().format(output_index).as_bytes());
        b.extend_from_slice(br#","content_index":0,"delta":"#);
        b.extend_from_slice(literal);
        b.extend_from_slice(br#","logprobs":[],"sequence_number":"#);
        b.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        b.push(b'}');
        self.seq += 1;
        out.event(KIND, &self.buf);
    }

    /// Writes `response` once per kind in `kinds` (`response.created`, …), each as
    /// [`Emitter::emit`] writes an [`EventBody`] holding it, from one encoding of `response`
    /// (hand-written, [`Response::to_json`]); returns that encoding.
    fn responses(
        &mut self,
        kinds: &[&'static str],
        response: &Response,
        out: &mut dyn EventSink,
    ) -> String {
        let json = response.to_json();
        for kind in kinds {
            let b = &mut self.buf;
            b.clear();
            b.reserve(json.len() + kind.len() + 64);
            b.extend_from_slice(br#"{"type":""#);
            b.extend_from_slice(kind.as_bytes());
            b.extend_from_slice(br#"","response":"#);
            b.extend_from_slice(json.as_bytes());
            b.extend_from_slice(br#","sequence_number":"#);
            b.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
            b.push(b'}');
            self.seq += 1;
            out.event(kind, &self.buf);
        }
        json
    }

    /// Writes `body` as a [`StreamEvent`]: the body (an object tagged by `type`, written by
    /// [`EventBody::write_json`]), then `sequence_number` as its last member.
    fn emit(&mut self, body: EventBody<'_>, out: &mut dyn EventSink) {
        self.buf.clear();
        body.write_json(&mut self.buf);
        // The object's closing brace, reopened for the last member.
        self.buf.pop();
        self.buf.extend_from_slice(br#","sequence_number":"#);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        self.buf.push(b'}');
        self.seq += 1;
        out.event(body.kind(), &self.buf);
    }
}

#[derive(Debug)]
struct OpenMessage {
    index: usize,
    id: String,
    text: String,
}

#[derive(Debug)]
enum Open {
    Text,
    Tool(OpenTool),
    Thinking(OpenThinking),
    Redacted { index: usize, data: String },
    WebSearch { index: usize, input: String },
    Other,
}

/// An open `tool_use` block: a function or custom tool call.
#[derive(Debug)]
struct OpenTool {
    index: usize,
    id: String,
    call_id: String,
    /// The Responses name (a namespace member's own name).
    name: String,
    /// A namespace member's namespace.
    namespace: Option<String>,
    custom: bool,
    /// The input JSON fragments so far.
    args: String,
    /// A non-empty `input` given in the start event itself.
    start_input: Option<String>,
    /// Custom tools: the decoded `input` text sent so far, and the decoder.
    sent: String,
    decoder: InputDecoder,
}

/// An open thinking block.
#[derive(Debug)]
struct OpenThinking {
    index: usize,
    id: String,
    text: String,
    signature: String,
    summary_started: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct ResponsesStreamConverter {
    ctx: ResponseContext,
    resp: Response,
    em: Emitter,
    started: bool,
    done: bool,
    message: Option<OpenMessage>,
    blocks: Vec<(u64, Open)>,
    next_index: usize,
    usage: Tokens,
    stop_reason: Option<String>,
    thinking_bytes: usize,
    /// The JSON of the response as the terminal event sent it, when it completed or ended
    /// incomplete (what the store keeps, without encoding it again).
    final_json: Option<String>,
}

impl ResponsesStreamConverter {
    pub fn new(ctx: ResponseContext) -> Self {
        let resp = ctx.response(Status::InProgress);
        ResponsesStreamConverter {
            ctx,
            resp,
            em: Emitter::default(),
            started: false,
            done: false,
            message: None,
            blocks: Vec::new(),
            next_index: 0,
            usage: Tokens::default(),
            stop_reason: None,
            thinking_bytes: 0,
            final_json: None,
        }
    }

    /// True once the terminal event has been sent.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tokens reported so far.
    pub fn usage(&self) -> Tokens {
        self.usage
    }

    /// The JSON of the response the terminal event sent, once it completed or ended incomplete
    /// (`None` before, and for a failed response); taken once.
    pub fn take_response_json(&mut self) -> Option<String> {
        self.final_json.take()
    }

    /// The response as it stands: once done, the one sent in the terminal event (what the store
    /// keeps), with every finished output item.
    pub fn response(&self) -> &Response {
        &self.resp
    }

    /// One parsed upstream SSE event (`event` is the SSE event name; the data's `type` wins).
    pub fn on_event(&mut self, event: &str, data: &[u8], out: &mut dyn EventSink) {
        if self.done {
            return;
        }
        // Most events are text deltas: read without serde (`convert::delta`). The data's
        // `type` wins over the event's name, as below.
        if let Some(d) = crate::convert::delta::text_delta(data) {
            if !d.is_empty()
                && matches!(
                    self.blocks.iter().find(|(i, _)| *i == d.index),
                    None | Some((_, Open::Text))
                )
            {
                self.open_message(out);
                if let Some(m) = &mut self.message {
                    m.text.push_str(&d.text());
                    self.em.text_delta(&m.id, m.index, d.literal, out);
                }
            }
            return;
        }
        self.on_decoded(event, data, out);
    }

    /// [`Self::on_event`] through serde_json.
    fn on_decoded(&mut self, event: &str, data: &[u8], out: &mut dyn EventSink) {
        let ev: Upstream = match crate::util::json::from_bytes(data) {
            Ok(ev) => ev,
            Err(_) => {
                if event == "error" {
                    let msg = String::from_utf8_lossy(data);
                    let msg = match msg.trim() {
                        "" => "upstream stream error",
                        m => m,
                    };
                    let e = ProxyError::new(ErrorKind::Internal, Origin::Upstream, msg);
                    self.fail(&e, out);
                }
                return;
            }
        };
        match ev.kind.as_deref().unwrap_or(event) {
            "message_start" => {
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    u.merge_into(&mut self.usage);
                }
                self.ensure_started(out);
            }
            "content_block_start" => self.block_start(&ev, out),
            "content_block_delta" => self.block_delta(&ev, out),
            "content_block_stop" => self.block_stop(ev.index.unwrap_or(0), out),
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    u.merge_into(&mut self.usage);
                }
                if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.stop_reason = Some(r.to_owned());
                }
            }
            "message_stop" => self.complete(out),
            "error" => {
                let (kind, msg) = match &ev.error {
                    Some(e) => (
                        e.kind.as_deref().unwrap_or(""),
                        e.message.as_deref().unwrap_or("upstream stream error"),
                    ),
                    None => ("", "upstream stream error"),
                };
                self.fail(&ProxyError::from_upstream_error(kind, msg, 500), out);
            }
            _ => {} // ping, unknown
        }
    }

    /// The upstream ended: without `message_stop` the response failed (never `completed`).
    pub fn finish(&mut self, out: &mut dyn EventSink) {
        if !self.done {
            let e = ProxyError::new(
                ErrorKind::Internal,
                Origin::Upstream,
                "the upstream stream ended before message_stop: the response is incomplete",
            );
            self.fail(&e, out);
        }
    }

    /// Ends the stream with `e` (the upstream broke, or the server is shutting down), unless it
    /// already ended.
    pub fn abort(&mut self, e: &ProxyError, out: &mut dyn EventSink) {
        if !self.done {
            self.fail(e, out);
        }
    }

    fn ensure_started(&mut self, out: &mut dyn EventSink) {
        if !self.started {
            self.started = true;
            // The same response in both.
            self.em.responses(
                &[
                    EventBody::Created {
                        response: &self.resp,
                    }
                    .kind(),
                    EventBody::InProgress {
                        response: &self.resp,
                    }
                    .kind(),
                ],
                &self.resp,
                out,
            );
        }
    }

    fn fail(&mut self, e: &ProxyError, out: &mut dyn EventSink) {
        self.ensure_started(out);
        let (kind, default_code) = e.kind.openai_type();
        self.resp.status = Status::Failed;
        self.resp.error = Some(ResponseError {
            code: e.code.or(default_code).unwrap_or(kind).to_owned(),
            message: e.message().into_owned(),
        });
        self.resp.usage = Some(usage(&self.usage, self.thinking_bytes));
        self.em.emit(
            EventBody::Failed {
                response: &self.resp,
            },
            out,
        );
        self.done = true;
    }

    fn complete(&mut self, out: &mut dyn EventSink) {
        self.ensure_started(out);
        let (status, reason) = status_of(self.stop_reason.as_deref());
        self.close_all(reason == Some("max_output_tokens"), out);
        self.resp.status = status;
        self.resp.incomplete_details = reason.map(|r| IncompleteDetails {
            reason: r.to_owned(),
        });
        self.resp.usage = Some(usage(&self.usage, self.thinking_bytes));
        let kind = match status {
            Status::Incomplete => EventBody::Incomplete {
                response: &self.resp,
            },
            _ => EventBody::Completed {
                response: &self.resp,
            },
        }
        .kind();
        self.final_json = Some(self.em.responses(&[kind], &self.resp, out));
        self.done = true;
    }

    fn add_item(&mut self, item: &OutputItem, out: &mut dyn EventSink) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        self.em.emit(
            EventBody::OutputItemAdded {
                output_index: index,
                item,
            },
            out,
        );
        index
    }

    fn done_item(&mut self, index: usize, item: OutputItem, out: &mut dyn EventSink) {
        self.em.emit(
            EventBody::OutputItemDone {
                output_index: index,
                item: &item,
            },
            out,
        );
        self.resp.output.push(item);
    }

    fn open_message(&mut self, out: &mut dyn EventSink) {
        if self.message.is_some() {
            return;
        }
        self.ensure_started(out);
        let index = self.next_index;
        let id = self.ctx.item_id("msg", index);
        let item = OutputItem::Message {
            id: id.clone(),
            status: ItemStatus::InProgress,
            role: "assistant".to_owned(),
            content: Vec::new(),
        };
        self.add_item(&item, out);
        let part = OutputContent::OutputText {
            text: String::new(),
            annotations: Vec::new(),
        };
        self.em.emit(
            EventBody::ContentPartAdded {
                item_id: &id,
                output_index: index,
                content_index: 0,
                part: &part,
            },
            out,
        );
        self.message = Some(OpenMessage {
            index,
            id,
            text: String::new(),
        });
    }

    fn text(&mut self, t: &str, out: &mut dyn EventSink) {
        if t.is_empty() {
            return;
        }
        self.open_message(out);
        if let Some(m) = &mut self.message {
            m.text.push_str(t);
            self.em.emit(
                EventBody::OutputTextDelta {
                    item_id: &m.id,
                    output_index: m.index,
                    content_index: 0,
                    delta: t,
                    logprobs: [],
                },
                out,
            );
        }
    }

    fn close_message(&mut self, truncated: bool, out: &mut dyn EventSink) {
        let Some(m) = self.message.take() else {
            return;
        };
        self.em.emit(
            EventBody::OutputTextDone {
                item_id: &m.id,
                output_index: m.index,
                content_index: 0,
                text: &m.text,
                logprobs: [],
            },
            out,
        );
        let part = OutputContent::OutputText {
            text: m.text,
            annotations: Vec::new(),
        };
        self.em.emit(
            EventBody::ContentPartDone {
                item_id: &m.id,
                output_index: m.index,
                content_index: 0,
                part: &part,
            },
            out,
        );
        let OutputContent::OutputText { text, .. } = part else {
            return;
        };
        let status = if truncated {
            ItemStatus::Incomplete
        } else {
            ItemStatus::Completed
        };
        let item = message_item(&self.ctx, m.index, text, status);
        self.done_item(m.index, item, out);
    }

    /// Closes every open item (Anthropic never interleaves blocks).
    fn close_all(&mut self, truncated: bool, out: &mut dyn EventSink) {
        self.stop_open_blocks(out);
        self.close_message(truncated, out);
    }

    /// Stops every open block (the message stays open).
    fn stop_open_blocks(&mut self, out: &mut dyn EventSink) {
        let open: Vec<u64> = self.blocks.iter().map(|(i, _)| *i).collect();
        for i in open {
            self.block_stop(i, out);
        }
    }

    fn block_start(&mut self, ev: &Upstream<'_>, out: &mut dyn EventSink) {
        let index = ev.index.unwrap_or(0);
        let Some(b) = &ev.content_block else {
            return;
        };
        self.ensure_started(out);
        let kind = b.kind.as_deref().unwrap_or("");
        // Whatever is still open ends here; a new non-text block ends the message.
        self.stop_open_blocks(out);
        if kind != "text" {
            self.close_message(false, out);
        }
        let state = match kind {
            "text" => {
                self.open_message(out);
                self.text(b.text.as_deref().unwrap_or(""), out);
                Open::Text
            }
            "tool_use" => Open::Tool(self.start_tool(b, out)),
            "thinking" => Open::Thinking(self.start_thinking(b, out)),
            "redacted_thinking" => {
                let (index, _) = self.add_reasoning(out);
                let data = b.data.as_deref().unwrap_or("").to_owned();
                Open::Redacted { index, data }
            }
            "server_tool_use" if b.name.as_deref() == Some("web_search") => {
                self.start_web_search(b, out)
            }
            _ => Open::Other,
        };
        self.blocks.push((index, state));
    }

    /// A `tool_use` block starts: a function call, or a custom tool call.
    fn start_tool(&mut self, b: &ContentBlock<'_>, out: &mut dyn EventSink) -> OpenTool {
        let name = b.name.as_deref().unwrap_or("").to_owned();
        let call_id = b.id.as_deref().unwrap_or("").to_owned();
        let custom = self.ctx.is_custom(&name);
        let (namespace, name) = if custom {
            (None, name)
        } else {
            self.ctx.call_name(&name)
        };
        let n = self.next_index;
        let (id, item) = if custom {
            let id = self.ctx.item_id("ctc", n);
            let item = OutputItem::CustomToolCall {
                id: id.clone(),
                status: ItemStatus::InProgress,
                call_id: call_id.clone(),
                name: name.clone(),
                input: String::new(),
            };
            (id, item)
        } else {
            let id = self.ctx.item_id("fc", n);
            let item = OutputItem::FunctionCall {
                id: id.clone(),
                status: ItemStatus::InProgress,
                call_id: call_id.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                arguments: String::new(),
            };
            (id, item)
        };
        let index = self.add_item(&item, out);
        let start_input = b
            .input
            .map(|r| minify_json(r.get()))
            .filter(|s| !s.is_empty() && s != "{}");
        OpenTool {
            index,
            id,
            call_id,
            name,
            namespace,
            custom,
            args: String::new(),
            start_input,
            sent: String::new(),
            decoder: InputDecoder::default(),
        }
    }

    /// Adds the in-progress reasoning item of a thinking or redacted thinking block.
    fn add_reasoning(&mut self, out: &mut dyn EventSink) -> (usize, String) {
        let n = self.next_index;
        let id = self.ctx.item_id("rs", n);
        let item = OutputItem::Reasoning {
            id: id.clone(),
            summary: Vec::new(),
            encrypted_content: None,
        };
        (self.add_item(&item, out), id)
    }

    fn start_thinking(&mut self, b: &ContentBlock<'_>, out: &mut dyn EventSink) -> OpenThinking {
        let (index, id) = self.add_reasoning(out);
        OpenThinking {
            index,
            id,
            text: b.thinking.as_deref().unwrap_or("").to_owned(),
            signature: b.signature.as_deref().unwrap_or("").to_owned(),
            summary_started: false,
        }
    }

    fn start_web_search(&mut self, b: &ContentBlock<'_>, out: &mut dyn EventSink) -> Open {
        let n = self.next_index;
        let item = OutputItem::WebSearchCall {
            id: self.ctx.item_id("ws", n),
            status: ItemStatus::InProgress,
            action: serde_json::json!({"type": "search", "query": null}),
        };
        let index = self.add_item(&item, out);
        let input = b
            .input
            .map(|r| minify_json(r.get()))
            .filter(|s| s != "{}")
            .unwrap_or_default();
        Open::WebSearch { index, input }
    }

    fn block_delta(&mut self, ev: &Upstream<'_>, out: &mut dyn EventSink) {
        let index = ev.index.unwrap_or(0);
        let Some(d) = &ev.delta else {
            return;
        };
        let summaries = self.ctx.summaries;
        let Some(state) = self.blocks.iter_mut().find(|(i, _)| *i == index) else {
            // A text delta for a block never started still comes through.
            if d.kind.as_deref() == Some("text_delta")
                && let Some(t) = d.text.as_deref()
            {
                self.text(t, out);
            }
            return;
        };
        match (&mut state.1, d.kind.as_deref()) {
            (Open::Text, Some("text_delta")) => {
                if let Some(t) = d.text.as_deref() {
                    self.text(t, out);
                }
            }
            (Open::Tool(tool), Some("input_json_delta")) => {
                if let Some(p) = d.partial_json.as_deref().filter(|p| !p.is_empty()) {
                    tool.delta(&mut self.em, p, out);
                }
            }
            (Open::WebSearch { input, .. }, Some("input_json_delta")) => {
                if let Some(p) = d.partial_json.as_deref() {
                    input.push_str(p);
                }
            }
            (Open::Thinking(th), Some("thinking_delta")) => {
                if let Some(t) = d.thinking.as_deref().filter(|t| !t.is_empty()) {
                    th.delta(&mut self.em, summaries, t, out);
                }
            }
            (Open::Thinking(th), Some("signature_delta")) => {
                if let Some(s) = d.signature.as_deref() {
                    th.signature.push_str(s);
                }
            }
            _ => {} // citations, unknown
        }
    }

    fn block_stop(&mut self, index: u64, out: &mut dyn EventSink) {
        let Some(pos) = self.blocks.iter().position(|(i, _)| *i == index) else {
            return;
        };
        let (_, state) = self.blocks.remove(pos);
        let (index, item) = match state {
            Open::Text | Open::Other => return,
            Open::Tool(tool) => (tool.index, tool.finish(&mut self.em, out)),
            Open::Thinking(th) => (th.index, self.finish_thinking(th, out)),
            Open::Redacted { index, data } => {
                let b = ThinkingBlock::RedactedThinking { data };
                (index, reasoning_item(&self.ctx, index, &b))
            }
            Open::WebSearch { index, input } => {
                let input = if input.is_empty() { "{}" } else { &input };
                (index, web_search_item(&self.ctx, index, input))
            }
        };
        self.done_item(index, item, out);
    }

    /// A thinking block's summary events (when asked for), and its finished reasoning item.
    fn finish_thinking(&mut self, th: OpenThinking, out: &mut dyn EventSink) -> OutputItem {
        let OpenThinking {
            index,
            id,
            text,
            signature,
            mut summary_started,
        } = th;
        if self.ctx.summaries && !text.is_empty() {
            if !summary_started {
                summary_delta(&mut self.em, &id, index, &mut summary_started, &text, out);
            }
            self.em.emit(
                EventBody::ReasoningSummaryTextDone {
                    item_id: &id,
                    output_index: index,
                    summary_index: 0,
                    text: &text,
                },
                out,
            );
            self.em.emit(
                EventBody::ReasoningSummaryPartDone {
                    item_id: &id,
                    output_index: index,
                    summary_index: 0,
                    part: &SummaryText::new(text.clone()),
                },
                out,
            );
        }
        self.thinking_bytes += text.len();
        let b = ThinkingBlock::Thinking {
            thinking: text,
            signature,
        };
        reasoning_item(&self.ctx, index, &b)
    }
}

impl OpenTool {
    /// An `input_json_delta` fragment (not empty): function calls pass it on as it is, custom
    /// tool calls the text it decodes to.
    fn delta(&mut self, em: &mut Emitter, p: &str, out: &mut dyn EventSink) {
        self.args.push_str(p);
        if !self.custom {
            em.emit(
                EventBody::FunctionCallArgumentsDelta {
                    item_id: &self.id,
                    output_index: self.index,
                    delta: p,
                },
                out,
            );
            return;
        }
        let start = self.sent.len();
        self.decoder.push(p, &mut self.sent);
        if self.sent.len() > start {
            em.emit(
                EventBody::CustomToolCallInputDelta {
                    item_id: &self.id,
                    output_index: self.index,
                    delta: &self.sent[start..],
                },
                out,
            );
        }
    }

    /// The block stops: the arguments' (or input's) last events, and the finished item.
    fn finish(mut self, em: &mut Emitter, out: &mut dyn EventSink) -> OutputItem {
        if self.args.is_empty() {
            self.args = self.start_input.take().unwrap_or_else(|| "{}".to_owned());
            if !self.custom {
                em.emit(
                    EventBody::FunctionCallArgumentsDelta {
                        item_id: &self.id,
                        output_index: self.index,
                        delta: &self.args,
                    },
                    out,
                );
            }
        }
        if self.custom {
            self.finish_custom(em, out)
        } else {
            self.finish_function(em, out)
        }
    }

    fn finish_function(self, em: &mut Emitter, out: &mut dyn EventSink) -> OutputItem {
        em.emit(
            EventBody::FunctionCallArgumentsDone {
                item_id: &self.id,
                output_index: self.index,
                name: &self.name,
                arguments: &self.args,
            },
            out,
        );
        OutputItem::FunctionCall {
            id: self.id,
            status: ItemStatus::Completed,
            call_id: self.call_id,
            namespace: self.namespace,
            name: self.name,
            arguments: self.args,
        }
    }

    fn finish_custom(self, em: &mut Emitter, out: &mut dyn EventSink) -> OutputItem {
        let input = custom_input(&self.args);
        // Whatever the incremental decoder could not send yet.
        if let Some(rest) = input.strip_prefix(self.sent.as_str())
            && !rest.is_empty()
        {
            em.emit(
                EventBody::CustomToolCallInputDelta {
                    item_id: &self.id,
                    output_index: self.index,
                    delta: rest,
                },
                out,
            );
        }
        em.emit(
            EventBody::CustomToolCallInputDone {
                item_id: &self.id,
                output_index: self.index,
                input: &input,
            },
            out,
        );
        OutputItem::CustomToolCall {
            id: self.id,
            status: ItemStatus::Completed,
            call_id: self.call_id,
            name: self.name,
            input,
        }
    }
}

impl OpenThinking {
    /// A thinking delta (not empty): kept, and sent as summary text when summaries are asked for.
    fn delta(&mut self, em: &mut Emitter, summaries: bool, t: &str, out: &mut dyn EventSink) {
        self.text.push_str(t);
        if summaries {
            summary_delta(em, &self.id, self.index, &mut self.summary_started, t, out);
        }
    }
}

/// A summary text delta, after the summary part's `added` event the first time.
fn summary_delta(
    em: &mut Emitter,
    id: &str,
    index: usize,
    started: &mut bool,
    t: &str,
    out: &mut dyn EventSink,
) {
    if !*started {
        *started = true;
        em.emit(
            EventBody::ReasoningSummaryPartAdded {
                item_id: id,
                output_index: index,
                summary_index: 0,
                part: &SummaryText::new(""),
            },
            out,
        );
    }
    em.emit(
        EventBody::ReasoningSummaryTextDelta {
            item_id: id,
            output_index: index,
            summary_index: 0,
            delta: t,
        },
        out,
    );
}

/// Decodes, as its fragments arrive, the string value of `input` in `{"input": "…"}` (the custom
/// tool's wrapped call), so the client gets raw text deltas. Another shape turns it off; the
/// `.done` event then carries the whole input.
#[derive(Debug, Default)]
struct InputDecoder {
    state: Decode,
    /// Before the value: what came so far.
    prefix: String,
    /// In a `\u` escape: its hex digits.
    hex: String,
    /// A high surrogate waiting for its pair.
    high: Option<u32>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Decode {
    #[default]
    Seek,
    In,
    Escape,
    Unicode,
    Done,
    Off,
}

impl InputDecoder {
    fn push(&mut self, frag: &str, out: &mut String) {
        let rest = match self.state {
            Decode::Done | Decode::Off => return,
            Decode::Seek => match self.seek(frag) {
                Some(rest) => rest,
                None => return,
            },
            _ => frag.to_owned(),
        };
        for c in rest.chars() {
            if !self.step(c, out) {
                return;
            }
        }
    }

    /// Before the value: gathers `frag`; once the value starts, what follows its opening quote.
    fn seek(&mut self, frag: &str) -> Option<String> {
        self.prefix.push_str(frag);
        match seek_value(&self.prefix) {
            Seek::Partial => None,
            Seek::Mismatch => {
                self.state = Decode::Off;
                None
            }
            Seek::At(i) => {
                self.state = Decode::In;
                let rest = self.prefix.split_off(i);
                self.prefix.clear();
                Some(rest)
            }
        }
    }

    /// One character of the value; false once decoding has ended (or never began).
    fn step(&mut self, c: char, out: &mut String) -> bool {
        match self.state {
            Decode::In => match c {
                '\\' => self.state = Decode::Escape,
                '"' => {
                    self.flush_high(out);
                    self.state = Decode::Done;
                    return false;
                }
                c => {
                    self.flush_high(out);
                    out.push(c);
                }
            },
            Decode::Escape => self.escape(c, out),
            Decode::Unicode => return self.unicode_digit(c, out),
            Decode::Seek | Decode::Done | Decode::Off => return false,
        }
        true
    }

    /// The character after a backslash.
    fn escape(&mut self, c: char, out: &mut String) {
        self.state = Decode::In;
        let mapped = match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'u' => {
                self.state = Decode::Unicode;
                self.hex.clear();
                return;
            }
            c => c, // \" \\ \/
        };
        self.flush_high(out);
        out.push(mapped);
    }

    /// A hex digit of a `\u` escape; at the fourth, the code unit (surrogates are paired). False
    /// when the escape is not hex (decoding stops).
    fn unicode_digit(&mut self, c: char, out: &mut String) -> bool {
        self.hex.push(c);
        if self.hex.len() < 4 {
            return true;
        }
        self.state = Decode::In;
        let Ok(code) = u32::from_str_radix(&self.hex, 16) else {
            self.state = Decode::Off;
            return false;
        };
        match (code, self.high.take()) {
            (0xD800..=0xDBFF, prev) => {
                if prev.is_some() {
                    out.push('\u{FFFD}');
                }
                self.high = Some(code);
            }
            (0xDC00..=0xDFFF, Some(h)) => {
                let c = 0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00);
                out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
            }
            (code, prev) => {
                if prev.is_some() {
                    out.push('\u{FFFD}');
                }
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
        }
        true
    }

    fn flush_high(&mut self, out: &mut String) {
        if self.high.take().is_some() {
            out.push('\u{FFFD}');
        }
    }
}

enum Seek {
    Partial,
    Mismatch,
    /// The value's first byte is at this offset.
    At(usize),
}

/// Matches `{ "input" : "` (any JSON whitespace between tokens) at the start of `s`.
fn seek_value(s: &str) -> Seek {
    let b = s.as_bytes();
    let mut i = 0;
    for tok in [&b"{"[..], b"\"input\"", b":", b"\""] {
        while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
            i += 1;
        }
        let n = tok.len().min(b.len() - i);
        if b[i..i + n] != tok[..n] {
            return Seek::Mismatch;
        }
        if n < tok.len() {
            return Seek::Partial;
        }
        i += n;
    }
    Seek::At(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::SseParser;
    use crate::convert::responses::messages_to_response;
    use serde_json::{Value, json};

    proptest::proptest! {
        /// The text-delta fast path (`convert::delta`) and the serde path give the same bytes.
        #[test]
        fn text_deltas_come_out_the_same_with_or_without_serde(
            ops in proptest::collection::vec((0u8..10, 0u8..3, ".{0,12}", proptest::bool::weighted(0.8)), 0..24),
            summaries in proptest::bool::ANY,
        ) {
            let events = crate::convert::test_support::upstream_events(&ops);
            let (a, b) = crate::convert::test_support::both_paths(
                &events,
                (ResponsesStreamConverter::new(ctx(summaries)), ResponsesStreamConverter::new(ctx(summaries))),
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

    fn ctx(summaries: bool) -> ResponseContext {
        let mut c = ResponseContext::new("resp_test", 1_700_000_000, "gpt-5");
        c.custom_tools = vec!["apply_patch".to_owned()];
        c.summaries = summaries;
        c
    }

    /// Feeds `chunks` of upstream SSE, then `finish`.
    fn run(c: &mut ResponsesStreamConverter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for ch in chunks {
            p.push(ch, |e, d| c.on_event(e, d, &mut out));
        }
        c.finish(&mut out);
        out
    }

    /// The events of SSE output; checks the framing, `event:` = `type` and dense sequence numbers.
    #[track_caller]
    fn events(out: &[u8]) -> Vec<Value> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.is_empty() || s.ends_with("\n\n"), "{s}");
        let evs: Vec<Value> = s
            .split_terminator("\n\n")
            .map(|f| {
                let (ev, data) = f.split_once('\n').unwrap();
                let ev = ev.strip_prefix("event: ").unwrap();
                let data = data.strip_prefix("data: ").unwrap();
                assert!(!data.contains('\n'));
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"], ev);
                // Compact, in serde_json's own escaping, members in order (`Emitter::emit`).
                assert_eq!(serde_json::to_string(&v).unwrap(), data);
                v
            })
            .collect();
        for (k, e) in evs.iter().enumerate() {
            assert_eq!(e["sequence_number"], k as u64, "{e}");
        }
        evs
    }

    fn sse(evs: &[Value]) -> Vec<u8> {
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

    fn types(evs: &[Value]) -> Vec<&str> {
        evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    const TERMINAL: [&str; 3] = [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ];

    #[test]
    fn replay_fixtures_snapshot() {
        for name in ["messages_stream", "messages_tools_stream"] {
            let mut c = ResponsesStreamConverter::new(ctx(false));
            let evs = events(&run(&mut c, &[&fixture(&format!("anthropic/{name}.sse"))]));
            assert!(c.is_done());
            assert_eq!(evs.last().unwrap()["type"], "response.completed");
            insta::assert_json_snapshot!(format!("responses_stream_{name}"), evs);
        }
    }

    #[test]
    fn tool_fixture_event_order_and_final_response() {
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let evs = events(&run(
            &mut c,
            &[&fixture("anthropic/messages_tools_stream.sse")],
        ));
        let t = types(&evs);
        assert_eq!(
            &t[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        let done: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .collect();
        assert_eq!(done.len(), 3);
        assert_eq!(done[1]["item"]["type"], "function_call");
        assert_eq!(done[1]["item"]["call_id"], "toolu_01V8FdsLpokGb6tJ3okwkSDe");
        assert_eq!(done[1]["item"]["arguments"], r#"{"location": "New York"}"#);
        let last = evs.last().unwrap();
        assert_eq!(last["response"]["status"], "completed");
        assert_eq!(last["response"]["usage"]["input_tokens"], 572);
        assert_eq!(last["response"]["usage"]["output_tokens"], 186);
        assert_eq!(last["response"]["output"].as_array().unwrap().len(), 3);
        assert_eq!(
            serde_json::to_value(c.response()).unwrap(),
            last["response"]
        );
        // What the store keeps is the terminal event's response, byte for byte, once.
        let kept = c.take_response_json().unwrap();
        assert_eq!(kept, serde_json::to_string(c.response()).unwrap());
        assert_eq!(
            serde_json::from_str::<Value>(&kept).unwrap(),
            last["response"]
        );
        assert!(c.take_response_json().is_none());
        // `response.created` and `response.in_progress` hold the same response.
        assert_eq!(evs[0]["response"], evs[1]["response"]);
        assert_eq!(evs[0]["response"]["status"], "in_progress");
    }

    #[test]
    fn custom_tool_streams_raw_text() {
        let patch =
            "*** Begin Patch\n*** Add File: a \"q\" \u{e9}\u{1F600}.txt\n+x\\y\n*** End Patch";
        let json = serde_json::to_string(&json!({"input": patch})).unwrap();
        let mut upstream = vec![
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_p", "name": "apply_patch", "input": {}}}),
        ];
        // One byte-ish at a time (on char boundaries).
        let mut cut = 0;
        for (i, _) in json.char_indices().skip(1) {
            upstream.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": &json[cut..i]}}));
            cut = i;
        }
        upstream.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": &json[cut..]}}));
        upstream.push(json!({"type": "content_block_stop", "index": 0}));
        upstream.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}));
        upstream.push(json!({"type": "message_stop"}));
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let evs = events(&run(&mut c, &[&sse(&upstream)]));
        let deltas: String = evs
            .iter()
            .filter(|e| e["type"] == "response.custom_tool_call_input.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, patch);
        assert!(
            evs.iter()
                .filter(|e| e["type"] == "response.custom_tool_call_input.delta")
                .count()
                > 10
        );
        let done = evs
            .iter()
            .find(|e| e["type"] == "response.custom_tool_call_input.done")
            .unwrap();
        assert_eq!(done["input"], patch);
        let item = &evs
            .iter()
            .find(|e| e["type"] == "response.output_item.done")
            .unwrap()["item"];
        assert_eq!(item["type"], "custom_tool_call");
        assert_eq!(item["input"], patch);
        assert_eq!(item["call_id"], "toolu_p");
        assert!(item["id"].as_str().unwrap().starts_with("ctc_"));
        assert!(
            !evs.iter()
                .any(|e| e["type"] == "response.function_call_arguments.delta")
        );
    }

    #[test]
    fn namespaced_tool_calls_carry_their_namespace() {
        let mut cx = ctx(false);
        cx.namespaced = vec![crate::convert::responses::NamespacedTool {
            namespace: "multi_agent_v1".into(),
            name: "close_agent".into(),
            joined: "multi_agent_v1__close_agent".into(),
        }];
        let upstream = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_n", "name": "multi_agent_v1__close_agent", "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"target\":"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"a1\"}"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_p", "name": "exec_command", "input": {}}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let mut c = ResponsesStreamConverter::new(cx.clone());
        let evs = events(&run(&mut c, &[&sse(&upstream)]));
        let added = evs
            .iter()
            .find(|e| e["type"] == "response.output_item.added")
            .unwrap();
        assert_eq!(added["item"]["namespace"], "multi_agent_v1");
        assert_eq!(added["item"]["name"], "close_agent");
        let args_done = evs
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done")
            .unwrap();
        assert_eq!(args_done["name"], "close_agent");
        assert_eq!(args_done["arguments"], r#"{"target":"a1"}"#);
        let done: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .map(|e| &e["item"])
            .collect();
        assert_eq!(done[0]["type"], "function_call");
        assert_eq!(done[0]["namespace"], "multi_agent_v1");
        assert_eq!(done[0]["name"], "close_agent");
        // A plain tool's call has no namespace field at all.
        assert_eq!(done[1]["name"], "exec_command");
        assert!(done[1].get("namespace").is_none(), "{}", done[1]);
        // The non-stream converter agrees.
        let body = json!({"id": "msg_1", "content": [
            {"type": "tool_use", "id": "toolu_n", "name": "multi_agent_v1__close_agent", "input": {"target": "a1"}},
            {"type": "tool_use", "id": "toolu_p", "name": "exec_command", "input": {}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9}});
        let r = messages_to_response(&serde_json::to_vec(&body).unwrap(), &cx).unwrap();
        let out = serde_json::to_value(&r.output).unwrap();
        assert_eq!(out[0]["namespace"], "multi_agent_v1");
        assert_eq!(out[0]["name"], "close_agent");
        assert_eq!(out[0]["arguments"], r#"{"target":"a1"}"#);
        assert!(out[1].get("namespace").is_none());
        assert_eq!(
            serde_json::to_value(c.response()).unwrap()["output"][0]["namespace"],
            "multi_agent_v1"
        );
    }

    #[test]
    fn thinking_with_summaries() {
        let upstream = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "think."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "R"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let mut c = ResponsesStreamConverter::new(ctx(true));
        let evs = events(&run(&mut c, &[&sse(&upstream)]));
        insta::assert_json_snapshot!("responses_stream_thinking", evs);
        assert_eq!(
            types(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        let last = evs.last().unwrap();
        assert_eq!(
            last["response"]["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        // An incomplete response is kept too (`previous_response_id` can continue it).
        let kept: Value = serde_json::from_str(&c.take_response_json().unwrap()).unwrap();
        assert_eq!(kept, last["response"]);
        // The same response as the non-stream converter gives for the same message.
        let message = json!({"content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "SIG"},
            {"type": "redacted_thinking", "data": "R"},
            {"type": "text", "text": "Hi"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 9}});
        let ns = messages_to_response(&serde_json::to_vec(&message).unwrap(), &ctx(true)).unwrap();
        let mut want = serde_json::to_value(&ns).unwrap();
        want["status"] = json!("incomplete");
        assert_eq!(last["response"], want);
    }

    #[test]
    fn failures_end_with_response_failed() {
        // An upstream error event mid-stream.
        let upstream = [
            json!({"type": "message_start", "message": {}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            json!({"type": "message_stop"}),
        ];
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let evs = events(&run(&mut c, &[&sse(&upstream)]));
        let last = evs.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert!(
            c.take_response_json().is_none(),
            "a failed response is not kept"
        );
        assert_eq!(
            last["response"]["error"],
            json!({"code": "overloaded", "message": "Overloaded"})
        );
        assert_eq!(
            evs.iter()
                .filter(|e| TERMINAL.contains(&e["type"].as_str().unwrap()))
                .count(),
            1
        );
        // The upstream ends without message_stop.
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let evs = events(&run(&mut c, &[&sse(&upstream[..3])]));
        assert_eq!(types(&evs).last(), Some(&"response.failed"));
        assert!(
            evs.last().unwrap()["response"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("message_stop")
        );
        // Nothing at all: still a well-formed failed stream.
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let evs = events(&run(&mut c, &[]));
        assert_eq!(
            types(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
        // abort, then nothing more.
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let mut out = Vec::new();
        c.on_event(
            "message_start",
            br#"{"type":"message_start","message":{}}"#,
            &mut out,
        );
        c.abort(
            &ProxyError::new(ErrorKind::GatewayTimeout, Origin::Upstream, "idle"),
            &mut out,
        );
        c.on_event("message_stop", br#"{"type":"message_stop"}"#, &mut out);
        c.finish(&mut out);
        let evs = events(&out);
        assert_eq!(
            types(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
        assert_eq!(evs[2]["response"]["error"]["code"], "upstream_timeout");
    }

    #[test]
    fn json_events_are_the_sse_data() {
        let sse_bytes = fixture("anthropic/messages_tools_stream.sse");
        let a = run(
            &mut ResponsesStreamConverter::new(ctx(false)),
            &[&sse_bytes],
        );
        let mut c = ResponsesStreamConverter::new(ctx(false));
        let mut p = SseParser::new();
        let mut js = JsonEvents::default();
        p.push(&sse_bytes, |e, d| c.on_event(e, d, &mut js));
        c.finish(&mut js);
        let from_sse: Vec<String> = std::str::from_utf8(&a)
            .unwrap()
            .split_terminator("\n\n")
            .map(|f| f.split_once("\ndata: ").unwrap().1.to_owned())
            .collect();
        assert_eq!(js.0, from_sse);
    }

    #[test]
    fn decoder_table() {
        for (frags, want) in [
            (vec![r#"{"input":"a\nb"}"#], "a\nb"),
            (
                vec![
                    "{ \"in",
                    "put\" :",
                    " \"x",
                    "\\",
                    "u00e9\\ud83d",
                    "\\ude00y\"}",
                ],
                "x\u{e9}\u{1F600}y",
            ),
            (vec![r#"{"other":1,"input":"z"}"#], ""),
            (vec![r#"{"input":"a\ud800b"}"#], "a\u{FFFD}b"),
        ] {
            let mut d = InputDecoder::default();
            let mut out = String::new();
            for f in frags {
                d.push(f, &mut out);
            }
            assert_eq!(out, want);
        }
    }

    mod props {
        use super::*;
        use crate::convert::test_support::{fragments, split};
        use proptest::prelude::*;

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
                Just("web_search_tool_result"),
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
            let name = prop_oneof![Just("apply_patch"), Just("f"), Just("web_search")];
            let structured = (kind.clone(), btype, dtype, name, 0u64..4, "\\PC{0,6}", any::<bool>(), 0u64..1000).prop_map(
                |(k, b, d, name, i, s, flag, n)| {
                    let v = json!({
                        "type": k, "index": i,
                        "message": {"usage": {"input_tokens": n, "output_tokens": n}},
                        "content_block": {"type": b, "id": s, "name": name, "text": s, "thinking": s, "data": s,
                            "signature": s, "input": if flag { json!({}) } else { json!({"input": s}) }},
                        "delta": {"type": d, "text": s, "partial_json": s, "thinking": s, "signature": s,
                            "stop_reason": if flag { json!("end_turn") } else { json!("max_tokens") }},
                        "usage": {"output_tokens": n},
                        "error": {"type": "overloaded_error", "message": s},
                    });
                    (k.to_owned(), v.to_string().into_bytes())
                },
            );
            let raw = (kind, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(k, b)| (k.to_owned(), b));
            prop_oneof![6 => structured, 1 => raw]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_split_gives_the_same_events(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
                                               tools in any::<bool>(), summaries in any::<bool>()) {
                let name = if tools { "anthropic/messages_tools_stream.sse" } else { "anthropic/messages_stream.sse" };
                let sse_bytes = fixture(name);
                let whole = run(&mut ResponsesStreamConverter::new(ctx(summaries)), &[&sse_bytes]);
                let parts = run(&mut ResponsesStreamConverter::new(ctx(summaries)), &split(&sse_bytes, &cuts));
                prop_assert_eq!(String::from_utf8(parts).unwrap(), String::from_utf8(whole).unwrap());
            }

            /// Streamed function arguments and custom inputs concatenate to what the non-stream
            /// converter gives for the same message, and the final items agree.
            #[test]
            fn streamed_calls_match_the_non_stream_response(
                calls in proptest::collection::vec((proptest::collection::btree_map("[a-z_]{1,6}", "\\PC{0,10}", 0..4),
                    "\\PC{0,30}", any::<bool>(), proptest::collection::vec(any::<prop::sample::Index>(), 0..8), any::<bool>()), 1..4),
                text in "\\PC{0,20}",
                sse_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            ) {
                let mut up = vec![json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}})];
                let mut content = Vec::new();
                let mut idx = 0;
                if !text.is_empty() {
                    up.push(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
                    up.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}));
                    up.push(json!({"type": "content_block_stop", "index": 0}));
                    content.push(json!({"type": "text", "text": text}));
                    idx = 1;
                }
                for (k, (args, raw, custom, cuts, pretty)) in calls.iter().enumerate() {
                    let (name, input) = if *custom {
                        ("apply_patch", json!({"input": raw}))
                    } else {
                        ("f", serde_json::to_value(args).unwrap())
                    };
                    let s = if *pretty { serde_json::to_string_pretty(&input).unwrap() } else { serde_json::to_string(&input).unwrap() };
                    let id = format!("toolu_{k}");
                    up.push(json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
                    for frag in fragments(&s, cuts) {
                        up.push(json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": frag}}));
                    }
                    up.push(json!({"type": "content_block_stop", "index": idx}));
                    content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
                    idx += 1;
                }
                up.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}));
                up.push(json!({"type": "message_stop"}));
                let mut c = ResponsesStreamConverter::new(ctx(false));
                let evs = events(&run(&mut c, &split(&sse(&up), &sse_cuts)));
                let message = json!({"content": content, "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9}});
                let ns = messages_to_response(&serde_json::to_vec(&message).unwrap(), &ctx(false)).unwrap();
                let streamed = c.response();
                prop_assert_eq!(streamed.output.len(), ns.output.len());
                for (a, b) in streamed.output.iter().zip(&ns.output) {
                    match (a, b) {
                        (OutputItem::FunctionCall { id, arguments: sa, .. }, OutputItem::FunctionCall { arguments: na, .. }) => {
                            let deltas: String = evs.iter()
                                .filter(|e| e["type"] == "response.function_call_arguments.delta" && e["item_id"] == json!(id))
                                .map(|e| e["delta"].as_str().unwrap()).collect();
                            prop_assert_eq!(&deltas, sa);
                            let x: Value = serde_json::from_str(sa).unwrap();
                            let y: Value = serde_json::from_str(na).unwrap();
                            prop_assert_eq!(x, y);
                            let mut a2 = a.clone();
                            if let OutputItem::FunctionCall { arguments, .. } = &mut a2 { *arguments = na.clone(); }
                            prop_assert_eq!(&a2, b);
                        }
                        (OutputItem::CustomToolCall { id, input, .. }, _) => {
                            let deltas: String = evs.iter()
                                .filter(|e| e["type"] == "response.custom_tool_call_input.delta" && e["item_id"] == json!(id))
                                .map(|e| e["delta"].as_str().unwrap()).collect();
                            prop_assert_eq!(&deltas, input);
                            prop_assert_eq!(a, b);
                        }
                        _ => prop_assert_eq!(a, b),
                    }
                }
            }

            #[test]
            fn never_panics_and_ends_with_exactly_one_terminal_event(evs in proptest::collection::vec(any_event(), 0..30), summaries in any::<bool>()) {
                let mut c = ResponsesStreamConverter::new(ctx(summaries));
                let mut out = Vec::new();
                for (k, d) in &evs {
                    c.on_event(k, d, &mut out);
                }
                c.finish(&mut out);
                prop_assert!(c.is_done());
                let got = events(&out);
                let t = types(&got);
                prop_assert_eq!(&t[..2], &["response.created", "response.in_progress"][..]);
                prop_assert_eq!(t.iter().filter(|k| TERMINAL.contains(k)).count(), 1);
                prop_assert!(TERMINAL.contains(t.last().unwrap()));
                // Completed only after message_stop.
                if *t.last().unwrap() != "response.failed" {
                    prop_assert!(evs.iter().any(|(k, d)| k == "message_stop" || String::from_utf8_lossy(d).contains("message_stop")));
                }
                // Items: added then done, each once, with dense output indexes.
                let added: Vec<u64> = got.iter().filter(|e| e["type"] == "response.output_item.added").map(|e| e["output_index"].as_u64().unwrap()).collect();
                prop_assert_eq!(added, (0..got.iter().filter(|e| e["type"] == "response.output_item.added").count() as u64).collect::<Vec<_>>());
                let done = got.iter().filter(|e| e["type"] == "response.output_item.done").count();
                prop_assert!(done <= got.iter().filter(|e| e["type"] == "response.output_item.added").count());
                prop_assert_eq!(c.response().output.len(), done);
            }
        }
    }
}

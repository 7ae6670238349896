//! What the simulated upstream answers: the message, and its SSE rendering in
//! the real event order.

use std::fmt::Write as _;

use axum::body::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::tools::{self, Calls, Choice, Offer, Schema, Tool};
use crate::api::anthropic::{ReceivedRequest, Tokens};

/// A Messages request as the simulated upstream reads it.
pub type SimRequest<'a> = ReceivedRequest<'a>;
/// One message of a [`SimRequest`].
pub type SimMessage<'a> = crate::api::anthropic::ReceivedMessage<'a>;

/// Scenario switches read from the last user message.
#[derive(Debug, Default, Clone)]
pub struct Directives {
    pub tools: bool,
    pub thinking: bool,
    pub status: Option<u16>,
    pub error_midstream: bool,
    pub delay_ms: u64,
    pub gap_ms: u64,
    pub deltas: Option<usize>,
    pub cache: bool,
    /// `[sim:search]`: a web search first, when the request offers the web search tool.
    pub search: bool,
    pub stop: Option<String>,
    pub unknown_event: bool,
    pub no_stop: bool,
    /// `[sim:flaky=N:STATUS]`: the first N requests with this text get STATUS.
    pub flaky: Option<(u32, u16)>,
    /// Fault modes (`[sim:reset-midstream]`, `[sim:silent=MS]`, …): see [`super::faults`].
    pub faults: super::faults::Faults,
    /// Text of the last user turn (markers included).
    pub user_text: String,
    /// Text of the tool results in the last user turn, if any.
    pub tool_result: Option<String>,
    /// The answer's text when a scenario chose it (see [`super::agent`]).
    pub text: Option<String>,
}

impl Directives {
    pub fn from_request(req: &SimRequest<'_>) -> Self {
        let last_user = req
            .messages
            .as_ref()
            .and_then(|m| m.iter().rev().find(|m| m.role == "user"));
        match last_user {
            Some(msg) => {
                let (text, tool_result) = flatten_content(msg.content);
                Directives::from_turn(text, tool_result)
            }
            None => Directives::default(),
        }
    }

    /// From the text of the last user turn and of the tool results in it.
    pub fn from_turn(text: String, tool_result: Option<String>) -> Self {
        let mut d = Directives {
            tool_result,
            ..Directives::default()
        };
        d.parse_markers(&text);
        d.user_text = text;
        d
    }

    pub fn parse_markers(&mut self, text: &str) {
        let mut rest = text;
        while let Some(start) = rest.find("[sim:") {
            let after = &rest[start + 5..];
            let Some(end) = after.find(']') else { break };
            let marker = &after[..end];
            rest = &after[end..];
            let (key, value) = marker.split_once('=').unwrap_or((marker, ""));
            let num = || value.parse::<u64>().ok();
            match key {
                "tools" => self.tools = true,
                "thinking" => self.thinking = true,
                "status" => self.status = num().and_then(|n| u16::try_from(n).ok()),
                "error-midstream" => self.error_midstream = true,
                "delay" => self.delay_ms = num().unwrap_or(0).min(600_000),
                "gap" => self.gap_ms = num().unwrap_or(0).min(60_000),
                "deltas" => self.deltas = num().map(|n| n.clamp(1, 100_000) as usize),
                "cache" => self.cache = true,
                "search" => self.search = true,
                "stop" => self.stop = Some(value.to_owned()),
                "unknown-event" => self.unknown_event = true,
                "no-stop" => self.no_stop = true,
                "flaky" => {
                    let (n, status) = value.split_once(':').unwrap_or((value, "529"));
                    if let (Ok(n), Ok(status)) = (n.parse(), status.parse()) {
                        self.flaky = Some((n, status));
                    }
                }
                _ => self.faults.parse(key, value),
            }
        }
    }
}

/// The text of a content value, and the text of any tool_result blocks in it.
fn flatten_content(raw: &RawValue) -> (String, Option<String>) {
    let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
        return (String::new(), None);
    };
    match v {
        Value::String(s) => (s, None),
        Value::Array(blocks) => {
            let mut text = String::new();
            let mut results: Option<String> = None;
            for b in &blocks {
                match b["type"].as_str() {
                    Some("text") => text.push_str(b["text"].as_str().unwrap_or("")),
                    Some("tool_result") => {
                        let r = results.get_or_insert_with(String::new);
                        match &b["content"] {
                            Value::String(s) => r.push_str(s),
                            Value::Array(parts) => {
                                for p in parts {
                                    r.push_str(p["text"].as_str().unwrap_or(""));
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            (text, results)
        }
        _ => (String::new(), None),
    }
}

pub fn estimate_tokens(body_len: usize) -> u64 {
    (body_len as u64 / 4).max(1)
}

pub enum Block {
    Text(String),
    Thinking {
        thinking: String,
        signature: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: String,
    },
    /// A server tool call (`server_tool_use`); `input` is JSON.
    ServerToolUse {
        id: String,
        name: String,
        input: String,
    },
    /// A server tool's result block, whole (`web_search_tool_result`).
    ServerResult(Value),
    /// Text that cites sources (`citations`, streamed as `citations_delta`).
    CitedText {
        text: String,
        citations: Vec<Value>,
    },
}

pub struct SimMessage2 {
    pub id: String,
    pub model: String,
    pub blocks: Vec<Block>,
    pub stop_reason: String,
    pub tokens: Tokens,
    /// The part of `tokens.cache_write` written with the 1-hour TTL.
    pub cache_write_1h: u64,
    /// Web searches the answer made (`usage.server_tool_use.web_search_requests`).
    pub web_searches: u64,
    /// Fast mode served it (`usage.speed`).
    pub fast: bool,
    /// How many text deltas a streamed text block is cut into.
    pub deltas: usize,
}

/// The request's tools and `tool_choice`, checked as the service checks them: an unknown choice,
/// a choice without tools, a named tool that is not declared, and thinking with a forced choice
/// are refused (the message is the service's).
pub fn offer<'r>(req: &'r SimRequest<'_>) -> Result<Offer<'r>, String> {
    let tools: Vec<Tool<'r>> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| t.kind.as_deref().is_none_or(|k| k == "custom"))
        .filter_map(|t| {
            Some(Tool {
                name: t.name.as_deref()?,
                schema: t.input_schema.map_or(Schema::Absent, Schema::Raw),
            })
        })
        .collect();
    let mut offer = Offer {
        tools,
        choice: Choice::Auto,
        parallel: true,
    };
    let Some(raw) = req.tool_choice else {
        return Ok(offer);
    };
    let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    offer.choice = match (v["type"].as_str(), v["name"].as_str()) {
        (Some("auto"), _) => Choice::Auto,
        (Some("any"), _) => Choice::Any,
        (Some("none"), _) => Choice::None,
        (Some("tool"), Some(name)) => Choice::Tool(name.to_owned()),
        (Some("tool"), None) => return Err("tool_choice.tool.name: Field required".to_owned()),
        _ => {
            return Err(
                "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
                    .to_owned(),
            );
        }
    };
    offer.parallel = v["disable_parallel_tool_use"].as_bool() != Some(true);
    let declared_any = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    if offer.choice != Choice::None && !declared_any {
        return Err("tool_choice may only be specified while providing tools.".to_owned());
    }
    if let Choice::Tool(name) = &offer.choice {
        let any_tool = req
            .tools
            .iter()
            .flatten()
            .any(|t| t.name.as_deref() == Some(name));
        if !any_tool {
            return Err(tools::not_declared(name));
        }
    }
    let thinking = req
        .thinking
        .and_then(|t| serde_json::from_str::<Value>(t.get()).ok());
    let thinking_on = thinking.is_some_and(|t| t["type"] == "enabled");
    if thinking_on && offer.choice.forces() {
        return Err("Thinking may not be enabled when tool_choice forces tool use.".to_owned());
    }
    Ok(offer)
}

/// Builds the answer to a request for `model` making `calls`.
pub fn respond(
    model: Option<&str>,
    calls: &Calls,
    dir: &Directives,
    body_len: usize,
    n: u64,
) -> SimMessage2 {
    let mut blocks = Vec::new();
    if dir.thinking {
        blocks.push(Block::Thinking {
            thinking: "The user wants a short answer. I will keep it brief.".to_owned(),
            signature: format!("EqQBCkYIBxgCKkBzaW0tc2lnbmF0dXJlLXtufQ{n:08x}=="),
        });
    }
    let deltas = dir.deltas.unwrap_or(4);
    let text = if let Some(t) = &dir.text {
        t.clone()
    } else if let Some(n) = dir.deltas {
        let mut t = String::with_capacity(n * 6);
        for i in 0..n {
            let _ = write!(t, "tok{i} ");
        }
        t
    } else if let Some(result) = &dir.tool_result {
        format!("Thanks, the tool returned: {}", truncate(result, 200))
    } else if calls.calls.len() > 1 {
        "I'll check both for you.".to_owned()
    } else if !calls.calls.is_empty() {
        "I'll check that for you.".to_owned()
    } else {
        format!(
            "Hello! This is the ccproxy simulated upstream. You said: {}",
            truncate(&dir.user_text, 200)
        )
    };
    // A forced tool choice prefills the turn: the answer starts with the call.
    if !calls.forced || calls.calls.is_empty() {
        blocks.push(Block::Text(text));
    }
    let mut stop_reason = dir.stop.clone().unwrap_or_else(|| "end_turn".to_owned());
    for (k, call) in calls.calls.iter().enumerate() {
        let suffix = char::from(b'a' + (k % 26) as u8);
        blocks.push(Block::ToolUse {
            id: format!("toolu_sim{n:012x}{suffix}"),
            name: call.name.clone(),
            input: call.input.clone(),
        });
    }
    if !calls.calls.is_empty() && dir.stop.is_none() {
        stop_reason = "tool_use".to_owned();
    }
    let output_tokens = blocks
        .iter()
        .map(|b| match b {
            Block::Text(t) => t.len() as u64 / 4 + 1,
            Block::Thinking { thinking, .. } => thinking.len() as u64 / 4 + 1,
            Block::ToolUse { input, .. } | Block::ServerToolUse { input, .. } => {
                input.len() as u64 / 4 + 8
            }
            Block::ServerResult(_) => 0,
            Block::CitedText { text, .. } => text.len() as u64 / 4 + 1,
        })
        .sum();
    let (cache_creation, cache_read) = if dir.cache { (2048, 8192) } else { (0, 0) };
    SimMessage2 {
        id: format!("msg_sim{n:016x}"),
        model: model.unwrap_or("claude-sonnet-4-5").to_owned(),
        blocks,
        stop_reason,
        tokens: Tokens {
            input: estimate_tokens(body_len),
            output: output_tokens,
            cache_read,
            cache_write: cache_creation,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        },
        cache_write_1h: 0,
        fast: false,
        web_searches: 0,
        deltas,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl SimMessage2 {
    /// Takes the prompt cache's reads and writes out of the input tokens.
    pub fn cached(&mut self, u: super::cache::CacheUse) {
        let t = &mut self.tokens;
        let write = u.write_5m + u.write_1h;
        t.input = t.input.saturating_sub(u.read + write);
        t.cache_read = u.read;
        t.cache_write = write;
        self.cache_write_1h = u.write_1h;
    }

    fn usage(&self, output_tokens: u64) -> Value {
        let t = &self.tokens;
        json!({
            "input_tokens": t.input,
            "cache_creation_input_tokens": t.cache_write,
            "cache_read_input_tokens": t.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": t.cache_write - self.cache_write_1h,
                               "ephemeral_1h_input_tokens": self.cache_write_1h},
            "output_tokens": output_tokens,
            "service_tier": "standard",
            "server_tool_use": {"web_search_requests": self.web_searches},
            "speed": if self.fast { "fast" } else { "standard" },
        })
    }

    fn block_json(b: &Block) -> Value {
        match b {
            Block::Text(t) => json!({"type":"text","text":t}),
            Block::Thinking {
                thinking,
                signature,
            } => {
                json!({"type":"thinking","thinking":thinking,"signature":signature})
            }
            Block::ToolUse { id, name, input } => {
                let input: Value = serde_json::from_str(input).unwrap_or(Value::Null);
                json!({"type":"tool_use","id":id,"name":name,"input":input})
            }
            Block::ServerToolUse { id, name, input } => {
                let input: Value = serde_json::from_str(input).unwrap_or(Value::Null);
                json!({"type":"server_tool_use","id":id,"name":name,"input":input})
            }
            Block::ServerResult(v) => v.clone(),
            Block::CitedText { text, citations } => {
                json!({"type":"text","text":text,"citations":citations})
            }
        }
    }

    pub fn to_json(&self) -> String {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Self::block_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage(self.tokens.output),
        })
        .to_string()
    }
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Splits `s` into about `n` pieces at char boundaries (at least one piece).
fn split_into(s: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let size = s.len().div_ceil(n).max(1);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + size).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    if out.is_empty() {
        out.push("");
    }
    out
}

/// Splits `s` on every `tok ` boundary when the text is made of benchmark tokens,
/// else into `n` pieces.
pub fn text_pieces(s: &str, n: usize) -> Vec<&str> {
    if s.starts_with("tok0 ") {
        return s.split_inclusive(' ').collect();
    }
    split_into(s, n)
}

/// The SSE events for a message, in the real order.
pub fn sse_events(m: &SimMessage2, dir: &Directives) -> Vec<Bytes> {
    let mut ev = Vec::with_capacity(m.deltas + 16);
    ev.push(event(
        "message_start",
        &json!({"type":"message_start","message":{
            "id": m.id, "type":"message","role":"assistant","model": m.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": m.usage(1),
        }}),
    ));
    for (i, b) in m.blocks.iter().enumerate() {
        ev.push(event(
            "content_block_start",
            &json!({"type":"content_block_start","index":i,"content_block":block_start_json(b)}),
        ));
        if i == 0 {
            ev.push(Bytes::from_static(
                b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
            ));
            if dir.unknown_event {
                ev.push(event(
                    "sim_future_event",
                    &json!({"type":"sim_future_event","detail":"an event type clients must tolerate"}),
                ));
            }
        }
        if !push_block_deltas(&mut ev, i, b, m.deltas, dir) {
            return ev;
        }
        ev.push(event(
            "content_block_stop",
            &json!({"type":"content_block_stop","index":i}),
        ));
    }
    let t = &m.tokens;
    ev.push(event(
        "message_delta",
        &json!({"type":"message_delta","delta":{"stop_reason":m.stop_reason,"stop_sequence":null},
                "usage": {"input_tokens": t.input, "cache_creation_input_tokens": t.cache_write,
                          "cache_read_input_tokens": t.cache_read, "output_tokens": t.output}}),
    ));
    if !dir.no_stop {
        ev.push(event("message_stop", &json!({"type":"message_stop"})));
    }
    ev
}

/// The `content_block` of a `content_block_start` event: the block, empty.
fn block_start_json(b: &Block) -> Value {
    match b {
        Block::Text(_) => json!({"type":"text","text":""}),
        Block::Thinking { .. } => json!({"type":"thinking","thinking":"","signature":""}),
        Block::ToolUse { id, name, .. } => {
            json!({"type":"tool_use","id":id,"name":name,"input":{}})
        }
        Block::ServerToolUse { id, name, .. } => {
            json!({"type":"server_tool_use","id":id,"name":name,"input":{}})
        }
        Block::ServerResult(v) => v.clone(),
        Block::CitedText { .. } => json!({"type":"text","text":"","citations":[]}),
    }
}

/// Pushes the `content_block_delta` events of block `i`. False when the stream broke
/// (`[sim:error-midstream]`: an error event after the first text delta ends it).
fn push_block_deltas(
    ev: &mut Vec<Bytes>,
    i: usize,
    b: &Block,
    deltas: usize,
    dir: &Directives,
) -> bool {
    let delta = |d: Value| {
        event(
            "content_block_delta",
            &json!({"type":"content_block_delta","index":i,"delta":d}),
        )
    };
    match b {
        Block::Text(t) => {
            for (k, piece) in text_pieces(t, deltas).into_iter().enumerate() {
                ev.push(delta(json!({"type":"text_delta","text":piece})));
                if dir.error_midstream && k == 0 {
                    ev.push(event(
                        "error",
                        &json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
                    ));
                    return false;
                }
            }
        }
        Block::Thinking {
            thinking,
            signature,
        } => {
            for piece in thinking_pieces(thinking) {
                ev.push(delta(json!({"type":"thinking_delta","thinking":piece})));
            }
            ev.push(delta(
                json!({"type":"signature_delta","signature":signature}),
            ));
        }
        Block::ToolUse { input, .. } | Block::ServerToolUse { input, .. } => {
            ev.push(delta(json!({"type":"input_json_delta","partial_json":""})));
            for piece in input_pieces(input) {
                ev.push(delta(
                    json!({"type":"input_json_delta","partial_json":piece}),
                ));
            }
        }
        Block::ServerResult(_) => {}
        Block::CitedText { text, citations } => {
            for c in citations {
                ev.push(delta(json!({"type":"citations_delta","citation":c})));
            }
            for piece in text_pieces(text, deltas) {
                ev.push(delta(json!({"type":"text_delta","text":piece})));
            }
        }
    }
    true
}

/// How a thinking text is streamed: three pieces.
pub fn thinking_pieces(s: &str) -> Vec<&str> {
    split_into(s, 3)
}

/// How tool input JSON is streamed: seven-byte fragments, which split keys, numbers and
/// multi-byte text mid-token.
pub fn input_pieces(s: &str) -> Vec<&str> {
    split_into(s, s.len().div_ceil(7))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str) -> (SimRequest<'_>, Directives) {
        let r: SimRequest = serde_json::from_str(body).unwrap();
        let d = Directives::from_request(&r);
        (r, d)
    }

    #[test]
    fn markers_are_read_from_last_user_turn() {
        let body = r#"{"model":"m","max_tokens":5,"messages":[
            {"role":"user","content":"[sim:thinking]"},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":[{"type":"text","text":"go [sim:tools] [sim:gap=5] [sim:status=429]"}]}]}"#;
        let (_, d) = req(body);
        assert!(d.tools && !d.thinking);
        assert_eq!(d.gap_ms, 5);
        assert_eq!(d.status, Some(429));
    }

    fn calls(r: &SimRequest<'_>, d: &Directives) -> Calls {
        offer(r).unwrap().calls(d.tools, d.tool_result.is_some())
    }

    #[test]
    fn tool_json_fragments_concatenate_to_input() {
        let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"[sim:tools]"}],
            "tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}},
                     {"name":"calculate_distance","input_schema":{"properties":{"lat1":{"type":"string"},"note":{"type":"string"}}}}]}"#;
        let (r, d) = req(body);
        let m = respond(r.model.as_deref(), &calls(&r, &d), &d, body.len(), 1);
        let events = sse_events(&m, &d);
        let mut args = String::new();
        for e in &events {
            let s = std::str::from_utf8(e).unwrap();
            let data = s.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            if v["index"] == 2 && v["delta"]["type"] == "input_json_delta" {
                args.push_str(v["delta"]["partial_json"].as_str().unwrap());
            }
        }
        let parsed: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(parsed["note"], "ünïcode ✓");
        assert_eq!(m.stop_reason, "tool_use");
    }

    #[test]
    fn benchmark_deltas_count() {
        let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"[sim:deltas=64]"}]}"#;
        let (r, d) = req(body);
        let m = respond(r.model.as_deref(), &calls(&r, &d), &d, body.len(), 1);
        let n = sse_events(&m, &d)
            .iter()
            .filter(|e| e.starts_with(b"event: content_block_delta"))
            .count();
        assert_eq!(n, 64);
    }

    #[test]
    fn only_declared_tools_are_called() {
        let body =
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"[sim:tools]"}]}"#;
        let (r, d) = req(body);
        let m = respond(r.model.as_deref(), &calls(&r, &d), &d, body.len(), 1);
        assert!(m.blocks.iter().all(|b| matches!(b, Block::Text(_))));
        assert_eq!(m.stop_reason, "end_turn");
        let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"web_search_20250305","name":"web_search"},{"name":"f","input_schema":{"type":"object"}}],
            "tool_choice":{"type":"any"}}"#;
        let (r, d) = req(body);
        let m = respond(r.model.as_deref(), &calls(&r, &d), &d, body.len(), 1);
        let names: Vec<&str> = m
            .blocks
            .iter()
            .map(|b| match b {
                Block::ToolUse { name, .. } => name.as_str(),
                _ => "text",
            })
            .collect();
        assert_eq!(names, ["f"], "forced: the call alone, a client tool");
    }

    #[test]
    fn tool_choice_is_checked_as_the_service_does() {
        let tools = r#""tools":[{"name":"f","input_schema":{"type":"object"}}]"#;
        let cases = [
            (
                format!(r#"{tools},"tool_choice":{{"type":"tool","name":"g"}}"#),
                Some("Tool 'g' not found in provided tools"),
            ),
            (
                r#""tool_choice":{"type":"any"}"#.to_owned(),
                Some("tool_choice may only be specified while providing tools."),
            ),
            (r#""tool_choice":{"type":"none"}"#.to_owned(), None),
            (
                format!(r#"{tools},"tool_choice":{{"type":"sometimes"}}"#),
                Some("tool_choice: Input tag"),
            ),
            (
                format!(r#"{tools},"tool_choice":{{"type":"tool"}}"#),
                Some("tool_choice.tool.name"),
            ),
            (
                format!(
                    r#"{tools},"tool_choice":{{"type":"any"}},"thinking":{{"type":"enabled","budget_tokens":1024}}"#
                ),
                Some("Thinking may not be enabled when tool_choice forces tool use."),
            ),
            (
                format!(
                    r#"{tools},"tool_choice":{{"type":"auto"}},"thinking":{{"type":"enabled","budget_tokens":1024}}"#
                ),
                None,
            ),
        ];
        for (extra, want) in cases {
            let body = format!(r#"{{"model":"m","max_tokens":5,"messages":[],{extra}}}"#);
            let r: SimRequest = serde_json::from_str(&body).unwrap();
            let got = offer(&r).err();
            match want {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(w)),
                    "{extra}: {got:?}"
                ),
                None => assert!(got.is_none(), "{extra}: {got:?}"),
            }
        }
    }
}

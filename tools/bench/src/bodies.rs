//! Request bodies: a small request and the ~80 KB Claude Code request, in each dialect
//! (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses), with the simulated
//! upstream's scenario markers in the last user message.

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

/// What an arm sends and how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Anthropic Messages request; Anthropic answer.
    Anthropic,
    /// OpenAI Chat Completions request; OpenAI answer.
    OpenAi,
    /// The OpenAI request converted by ccproxy's own converter, sent as Anthropic Messages:
    /// exactly what ccproxy sends upstream for the OpenAI request (the direct baseline of
    /// the converting modes).
    Converted,
    /// OpenAI Responses request (`input`, `max_output_tokens`); Responses answer (a `response`
    /// object, or `response.*` events ending at `response.completed`).
    Responses,
}

impl BodyKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "anthropic" => BodyKind::Anthropic,
            "openai" => BodyKind::OpenAi,
            "converted" => BodyKind::Converted,
            "responses" => BodyKind::Responses,
            _ => {
                return Err(anyhow!(
                    "unknown body kind {s:?} (anthropic|openai|converted|responses)"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            BodyKind::Anthropic => "anthropic",
            BodyKind::OpenAi => "openai",
            BodyKind::Converted => "converted",
            BodyKind::Responses => "responses",
        }
    }

    /// An OpenAI-dialect request (bearer auth by default, no `anthropic-version`).
    pub fn is_openai(self) -> bool {
        matches!(self, BodyKind::OpenAi | BodyKind::Responses)
    }
}

/// The request shape shared by all arms of a run.
#[derive(Debug, Clone)]
pub struct BodySpec {
    /// `small` or `cc` (the Claude Code request).
    pub size: String,
    pub cc_fixture: String,
    pub model: String,
    pub stream: bool,
    pub deltas: Option<u32>,
    pub gap_ms: u64,
    pub delay_ms: u64,
}

impl BodySpec {
    fn markers(&self) -> String {
        let mut m = String::new();
        if let Some(n) = self.deltas {
            m.push_str(&format!(" [sim:deltas={n}]"));
        }
        if self.gap_ms > 0 {
            m.push_str(&format!(" [sim:gap={}]", self.gap_ms));
        }
        if self.delay_ms > 0 {
            m.push_str(&format!(" [sim:delay={}]", self.delay_ms));
        }
        m
    }

    /// The body bytes for one kind.
    pub fn build(&self, kind: BodyKind) -> Result<Vec<u8>> {
        let anthropic = || -> Result<Value> {
            if self.size == "cc" {
                self.cc_anthropic()
            } else {
                Ok(self.small(false))
            }
        };
        let openai = || -> Result<Value> {
            if self.size == "cc" {
                Ok(anthropic_to_openai(&self.cc_anthropic()?))
            } else {
                Ok(self.small(true))
            }
        };
        Ok(match kind {
            BodyKind::Anthropic => serde_json::to_vec(&anthropic()?)?,
            BodyKind::OpenAi => serde_json::to_vec(&openai()?)?,
            BodyKind::Responses => serde_json::to_vec(&if self.size == "cc" {
                anthropic_to_responses(&self.cc_anthropic()?)
            } else {
                self.small_responses()
            })?,
            BodyKind::Converted => {
                let aliases = ccproxy::convert::ModelAliases::with_defaults();
                let opts = ccproxy::convert::ConvertOptions {
                    default_max_tokens: 4096,
                    aliases: &aliases,
                    auto_cache: true,
                };
                let body = serde_json::to_vec(&openai()?)?;
                ccproxy::convert::chat_to_messages(&body, &opts)
                    .map_err(|e| anyhow!("ccproxy cannot convert the OpenAI body: {e}"))?
                    .body
            }
        })
    }

    fn small(&self, openai: bool) -> Value {
        let text = format!("Say hello to the benchmark.{}", self.markers());
        let mut v = json!({
            "model": self.model,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": text}],
        });
        if self.stream {
            v["stream"] = json!(true);
        } else if !openai {
            v["stream"] = json!(false);
        }
        v
    }

    /// The small request as a Responses create body: the same model and text (markers
    /// included) as the other dialects', so the simulated upstream does the same work.
    fn small_responses(&self) -> Value {
        json!({
            "model": self.model,
            "input": format!("Say hello to the benchmark.{}", self.markers()),
            "stream": self.stream,
            "max_output_tokens": 256,
        })
    }

    fn cc_anthropic(&self) -> Result<Value> {
        let raw = std::fs::read(&self.cc_fixture)
            .with_context(|| format!("reading the Claude Code request {}", self.cc_fixture))?;
        let mut v: Value = serde_json::from_slice(&raw)?;
        v["model"] = json!(self.model);
        v["stream"] = json!(self.stream);
        let markers = self.markers();
        if !markers.is_empty() {
            let msgs = v["messages"]
                .as_array_mut()
                .ok_or_else(|| anyhow!("fixture has no messages"))?;
            let last_user = msgs
                .iter_mut()
                .rev()
                .find(|m| m["role"] == "user")
                .ok_or_else(|| anyhow!("fixture has no user message"))?;
            match &mut last_user["content"] {
                Value::String(s) => s.push_str(&markers),
                Value::Array(blocks) => {
                    let block = blocks
                        .iter_mut()
                        .rev()
                        .find(|b| b["type"] == "text")
                        .ok_or_else(|| anyhow!("last user message has no text block"))?;
                    if let Some(Value::String(s)) = block.get_mut("text") {
                        s.push_str(&markers);
                    }
                }
                _ => return Err(anyhow!("unexpected user content shape")),
            }
        }
        Ok(v)
    }
}

fn text_of(content: &Value) -> Value {
    match content {
        Value::String(s) => json!(s),
        Value::Array(blocks) => Value::Array(
            blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .map(|b| json!({"type": "text", "text": b["text"]}))
                .collect(),
        ),
        _ => json!(""),
    }
}

/// An Anthropic request's system prompt as one text (blocks joined by a blank line).
fn system_text(a: &Value) -> String {
    match &a["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => String::new(),
    }
}

/// The OpenAI-dialect equivalent of an Anthropic request: the same system text, turns and
/// tools (as functions), so the two dialects carry comparable bytes.
pub fn anthropic_to_openai(a: &Value) -> Value {
    let mut messages = Vec::new();
    let system = system_text(a);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    if let Some(msgs) = a["messages"].as_array() {
        for m in msgs {
            messages.push(json!({"role": m["role"], "content": text_of(&m["content"])}));
        }
    }
    let tools: Vec<Value> = a["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t["name"], "description": t["description"],
                        "parameters": t["input_schema"]}})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut v = json!({
        "model": a["model"],
        "max_tokens": a["max_tokens"],
        "messages": messages,
    });
    if !tools.is_empty() {
        v["tools"] = Value::Array(tools);
    }
    if a["stream"] == json!(true) {
        v["stream"] = json!(true);
    }
    v
}

/// The Responses-dialect equivalent of an Anthropic request: the system text as `instructions`,
/// the turns as input messages (`input_text` / `output_text` parts), the tools as function
/// tools.
pub fn anthropic_to_responses(a: &Value) -> Value {
    let instructions = system_text(a);
    let input: Vec<Value> = a["messages"]
        .as_array()
        .map(|msgs| {
            msgs.iter()
                .map(|m| {
                    let part = if m["role"] == "assistant" {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    let content = match text_of(&m["content"]) {
                        Value::Array(blocks) => Value::Array(
                            blocks
                                .into_iter()
                                .map(|b| json!({"type": part, "text": b["text"]}))
                                .collect(),
                        ),
                        other => other,
                    };
                    json!({"type": "message", "role": m["role"], "content": content})
                })
                .collect()
        })
        .unwrap_or_default();
    let tools: Vec<Value> = a["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    json!({"type": "function", "name": t["name"],
                        "description": t["description"], "parameters": t["input_schema"]})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut v = json!({"model": a["model"]});
    if !instructions.is_empty() {
        v["instructions"] = json!(instructions);
    }
    v["input"] = Value::Array(input);
    if !tools.is_empty() {
        v["tools"] = Value::Array(tools);
    }
    v["stream"] = json!(a["stream"] == json!(true));
    v["max_output_tokens"] = a["max_tokens"].clone();
    v
}

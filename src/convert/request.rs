//! OpenAI `chat.completions` request → Anthropic Messages request.
//!
//! The body is deserialised once into borrowed types ([`crate::api::openai`]); the Messages body is
//! serialised straight from borrowed data. Tool schemas, `cache_control` and handed-back thinking
//! blocks are forwarded without re-parsing.
//!
//! # Mapping
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | `system`, in order (a string, or text blocks when there are several or `cache_control`) |
//! | `user` text / `image_url` / `file` parts | text / image (`data:` → base64, `http(s):` → URL source) / PDF document blocks |
//! | `assistant` content, `tool_calls`, legacy `function_call` | text and `tool_use` blocks (ids kept; characters Anthropic rejects become `_`) |
//! | `assistant.thinking_blocks` | thinking / redacted_thinking blocks first in the turn (see [`super::response`]) |
//! | `tool` (and legacy `function`) messages | `tool_result` blocks, merged into one user turn, results first, in order |
//! | consecutive same-role turns | merged into one turn |
//! | `tools`, legacy `functions` | `tools` (`parameters` → `input_schema`, default `{"type":"object","properties":{}}`) |
//! | `tool_choice` / `function_call` | none → `{"type":"none"}`, auto → auto, required → any, named → tool |
//! | `parallel_tool_calls: false` | `disable_parallel_tool_use: true` on `tool_choice` |
//! | `max_completion_tokens` ∨ `max_tokens` ∨ default | `max_tokens` |
//! | `stop` (string or array) | `stop_sequences` (empty strings dropped) |
//! | `temperature`, `top_p` | same (nulls omitted; temperature clamped to Anthropic's 0..1) |
//! | `response_format` | an instruction appended to `system` ([`response_format_instruction`]) |
//! | `reasoning_effort` | `thinking` (+ `output_config.effort`), see [`thinking`](#thinking) |
//! | `user` (or `safety_identifier`) | `metadata.user_id` |
//! | `stream`, `stream_options.include_usage` | `stream`; [`ConvertedRequest::include_usage`] |
//!
//! ## Refused with a 400
//! `n` other than 1; unknown roles; a `tool` message whose `tool_call_id` matches no earlier
//! assistant tool call; audio input and uploaded-file ids; images that are not `data:` URLs of a
//! supported type (jpeg, png, gif, webp) or `http(s)` URLs; non-object tool arguments; malformed JSON
//! and wrong types (the message names the field, e.g. `messages[2].role: unknown role "foo"`).
//!
//! ## Accepted and ignored
//! `logprobs`, `top_logprobs`, `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`,
//! `store`, `metadata`, `service_tier`, `prediction`, `modalities`, `audio`, `verbosity`,
//! `web_search_options`, `prompt_cache_key`, tools' `strict`, image `detail`, message `name`, and any
//! unknown field. Anthropic has no equivalent for these; honouring them partially would mislead.
//!
//! ## Thinking
//! `reasoning_effort` depends on what the target model accepts ([`model_caps`]):
//! - Budget models (Claude ≤ 4.5, Haiku 4.5): `{"type":"enabled","budget_tokens":B}` with B =
//!   1024 (minimal), 2048 (low), 8192 (medium), 16384 (high), 24576 (xhigh). Anthropic requires
//!   B ≥ 1024 and B < `max_tokens`; when the client's limit (or the default) is not above B,
//!   `max_tokens` becomes B + that limit, so the limit still bounds the visible answer.
//! - Adaptive models (Opus/Sonnet 4.6 and newer): `{"type":"adaptive"}` and `output_config.effort`
//!   (minimal/low → low, medium → medium, high/xhigh → high); `max_tokens` unchanged.
//! - `none`: no thinking (`{"type":"disabled"}` for models that think by default).
//! - Absent: the model's default.
//!
//! Thinking is kept off (omitted, or `disabled` where the model would think by default) when
//! `tool_choice` forces a tool (Anthropic rejects forced tool use with thinking), and when the
//! assistant turns after the last user input lack the thinking block Anthropic then requires (the
//! client did not hand back `thinking_blocks` during a tool loop).
//!
//! `temperature` and `top_p` are dropped whenever thinking is on (Anthropic rejects non-default
//! values with thinking) and for models that reject sampling parameters altogether (Opus 4.7+,
//! Sonnet 5+).
//!
//! When the conversation holds tool calls but the request defines no tools (some clients drop
//! `tools` for a final answer), Anthropic would answer 400; the tools named in the history are then
//! declared with an open schema and `tool_choice` `none`.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::models::{ModelAliases, ThinkingMode, model_caps};
use crate::api::openai::{
    ChatCompletionRequest, Content, FunctionCall, Message, Part, ResponseFormat, Stop, Str,
    ThinkingBlock, ToolChoice,
};

/// Conversion settings.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions<'a> {
    /// `max_tokens` when the client sends neither `max_completion_tokens` nor `max_tokens`.
    pub default_max_tokens: u32,
    pub aliases: &'a ModelAliases,
}

/// A converted request, ready to send upstream.
#[derive(Debug, Clone)]
pub struct ConvertedRequest {
    /// Anthropic Messages JSON.
    pub body: Vec<u8>,
    /// The model name the client asked for (reported back in responses).
    pub client_model: String,
    /// The Claude model sent upstream.
    pub upstream_model: String,
    pub stream: bool,
    /// `stream_options.include_usage` (only meaningful when `stream`).
    pub include_usage: bool,
}

/// A request the proxy refuses: always HTTP 400, type `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    /// The offending field, e.g. `messages[2].role`.
    pub param: Option<String>,
    /// `invalid_json`, `missing_required_parameter`, `invalid_type`, `invalid_value` or
    /// `unsupported_value`.
    pub code: Option<&'static str>,
}

impl RequestError {
    fn new(param: impl Into<String>, code: &'static str, what: impl std::fmt::Display) -> Self {
        let param = param.into();
        RequestError {
            message: format!("{param}: {what}"),
            param: Some(param),
            code: Some(code),
        }
    }

    /// The OpenAI error envelope for this error.
    pub fn to_openai_body(&self) -> Vec<u8> {
        super::response::openai_error_body(
            &self.message,
            "invalid_request_error",
            self.param.as_deref(),
            self.code,
        )
    }
}

fn invalid(param: impl Into<String>, what: impl std::fmt::Display) -> RequestError {
    RequestError::new(param, "invalid_value", what)
}

/// Converts a `chat.completions` request body into an Anthropic Messages request body.
pub fn chat_to_messages(
    body: &[u8],
    opts: &ConvertOptions,
) -> Result<ConvertedRequest, RequestError> {
    let req: ChatCompletionRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Err(parse_error(body, e)),
    };
    let client_model = match &req.model {
        Some(m) => m.0.as_ref(),
        None => {
            return Err(RequestError::new(
                "model",
                "missing_required_parameter",
                "missing required parameter",
            ));
        }
    };
    let upstream_model = opts.aliases.resolve(client_model);
    let stream = req.stream.unwrap_or(false);
    let include_usage = stream
        && req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    let out = build(&req, upstream_model, stream, opts.default_max_tokens)?;
    let mut body_out = Vec::with_capacity(body.len() + 256);
    serde_json::to_writer(&mut body_out, &out).map_err(|e| RequestError {
        message: format!("could not encode the converted request: {e}"),
        param: None,
        code: None,
    })?;
    Ok(ConvertedRequest {
        body: body_out,
        client_model: client_model.to_owned(),
        upstream_model: upstream_model.to_owned(),
        stream,
        include_usage,
    })
}

/// Turns a serde error into a 400 naming the field; re-parses with path tracking (error path only).
fn parse_error(body: &[u8], e: serde_json::Error) -> RequestError {
    use serde_json::error::Category;
    if matches!(e.classify(), Category::Syntax | Category::Eof | Category::Io) {
        return RequestError {
            message: format!("the request body is not valid JSON: {e}"),
            param: None,
            code: Some("invalid_json"),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let (path, inner) =
        match serde_path_to_error::deserialize::<_, ChatCompletionRequest>(&mut de) {
            Err(pe) => (pe.path().to_string(), pe.into_inner()),
            Ok(_) => (".".to_owned(), e),
        };
    let mut what = inner.to_string();
    if let Some(i) = what.rfind(" at line ") {
        what.truncate(i);
    }
    if path == "." {
        return RequestError {
            message: format!("the request body must be a JSON object: {what}"),
            param: None,
            code: Some("invalid_type"),
        };
    }
    RequestError::new(path, "invalid_type", what)
}

// ---------------------------------------------------------------------------------------------
// Output types (Anthropic Messages request), borrowed from the parsed request.

#[derive(Serialize)]
struct MessagesRequest<'b> {
    model: &'b str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'b>>,
    messages: Vec<Turn<'b>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'b>>,
}

struct System<'b>(Vec<Block<'b>>);

impl Serialize for System<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_content(&self.0, s)
    }
}

/// One message of the Anthropic conversation.
struct Turn<'b> {
    role: &'static str,
    content: Vec<Block<'b>>,
    /// Leading `tool_result` blocks (they must come first in a user turn).
    results: usize,
}

impl Serialize for Turn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct C<'a, 'b>(&'a [Block<'b>]);
        impl Serialize for C<'_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_content(self.0, s)
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", self.role)?;
        m.serialize_entry("content", &C(&self.content))?;
        m.end()
    }
}

/// A single plain text block is sent as a string (as clients usually write it).
fn serialize_content<S: Serializer>(blocks: &[Block<'_>], s: S) -> Result<S::Ok, S::Error> {
    if let [
        Block::Text {
            text,
            cache_control: None,
        },
    ] = blocks
    {
        return s.serialize_str(text);
    }
    let mut seq = s.serialize_seq(Some(blocks.len()))?;
    for b in blocks {
        seq.serialize_element(b)?;
    }
    seq.end()
}

enum Block<'b> {
    Text {
        text: Cow<'b, str>,
        cache_control: Option<&'b RawValue>,
    },
    Image {
        source: Source<'b>,
        cache_control: Option<&'b RawValue>,
    },
    /// A PDF.
    Document {
        source: Source<'b>,
        title: Option<&'b str>,
        cache_control: Option<&'b RawValue>,
    },
    ToolUse {
        id: Cow<'b, str>,
        name: &'b str,
        input: Input<'b>,
    },
    ToolResult {
        tool_use_id: Cow<'b, str>,
        content: Vec<Block<'b>>,
        cache_control: Option<&'b RawValue>,
    },
    Thinking {
        thinking: &'b str,
        signature: &'b str,
    },
    RedactedThinking {
        data: &'b str,
    },
}

enum Source<'b> {
    Base64 { media_type: &'b str, data: &'b str },
    Url(&'b str),
}

enum Input<'b> {
    Borrowed(&'b RawValue),
    Owned(Box<RawValue>),
    Empty,
}

impl Serialize for Source<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            Source::Base64 { media_type, data } => {
                m.serialize_entry("type", "base64")?;
                m.serialize_entry("media_type", media_type)?;
                m.serialize_entry("data", data)?;
            }
            Source::Url(u) => {
                m.serialize_entry("type", "url")?;
                m.serialize_entry("url", u)?;
            }
        }
        m.end()
    }
}

impl Serialize for Input<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Borrowed(r) => r.serialize(s),
            Input::Owned(r) => r.serialize(s),
            Input::Empty => s.serialize_map(Some(0))?.end(),
        }
    }
}

impl Serialize for Block<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            Block::Text {
                text,
                cache_control,
            } => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                if let Some(c) = cache_control {
                    m.serialize_entry("cache_control", c)?;
                }
            }
            Block::Image {
                source,
                cache_control,
            } => {
                m.serialize_entry("type", "image")?;
                m.serialize_entry("source", source)?;
                if let Some(c) = cache_control {
                    m.serialize_entry("cache_control", c)?;
                }
            }
            Block::Document {
                source,
                title,
                cache_control,
            } => {
                m.serialize_entry("type", "document")?;
                m.serialize_entry("source", source)?;
                if let Some(t) = title {
                    m.serialize_entry("title", t)?;
                }
                if let Some(c) = cache_control {
                    m.serialize_entry("cache_control", c)?;
                }
            }
            Block::ToolUse { id, name, input } => {
                m.serialize_entry("type", "tool_use")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("input", input)?;
            }
            Block::ToolResult {
                tool_use_id,
                content,
                cache_control,
            } => {
                m.serialize_entry("type", "tool_result")?;
                m.serialize_entry("tool_use_id", tool_use_id)?;
                if !content.is_empty() {
                    struct C<'a, 'b>(&'a [Block<'b>]);
                    impl Serialize for C<'_, '_> {
                        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                            serialize_content(self.0, s)
                        }
                    }
                    m.serialize_entry("content", &C(content))?;
                }
                if let Some(c) = cache_control {
                    m.serialize_entry("cache_control", c)?;
                }
            }
            Block::Thinking {
                thinking,
                signature,
            } => {
                m.serialize_entry("type", "thinking")?;
                m.serialize_entry("thinking", thinking)?;
                m.serialize_entry("signature", signature)?;
            }
            Block::RedactedThinking { data } => {
                m.serialize_entry("type", "redacted_thinking")?;
                m.serialize_entry("data", data)?;
            }
        }
        m.end()
    }
}

struct ToolDef<'b> {
    name: &'b str,
    description: Option<&'b str>,
    /// None: the default empty object schema.
    input_schema: Option<&'b RawValue>,
}

impl Serialize for ToolDef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Empty {
            #[serde(rename = "type")]
            kind: &'static str,
            properties: serde_json::Map<String, serde_json::Value>,
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", self.name)?;
        if let Some(d) = self.description {
            m.serialize_entry("description", d)?;
        }
        match self.input_schema {
            Some(r) => m.serialize_entry("input_schema", r)?,
            None => m.serialize_entry(
                "input_schema",
                &Empty {
                    kind: "object",
                    properties: serde_json::Map::new(),
                },
            )?,
        }
        m.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChoiceKind<'b> {
    None,
    Auto,
    Any,
    Tool(&'b str),
}

struct ToolChoiceOut<'b> {
    kind: ChoiceKind<'b>,
    disable_parallel: bool,
}

impl Serialize for ToolChoiceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.kind {
            ChoiceKind::None => m.serialize_entry("type", "none")?,
            ChoiceKind::Auto => m.serialize_entry("type", "auto")?,
            ChoiceKind::Any => m.serialize_entry("type", "any")?,
            ChoiceKind::Tool(n) => {
                m.serialize_entry("type", "tool")?;
                m.serialize_entry("name", n)?;
            }
        }
        if self.disable_parallel && self.kind != ChoiceKind::None {
            m.serialize_entry("disable_parallel_tool_use", &true)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ThinkingOut {
    Enabled { budget_tokens: u32 },
    Adaptive,
    Disabled,
}

#[derive(Serialize)]
struct OutputConfig {
    effort: &'static str,
}

#[derive(Serialize)]
struct Metadata<'b> {
    user_id: &'b str,
}

// ---------------------------------------------------------------------------------------------
// Building.

const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// `reasoning_effort` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
    XHigh,
}

impl Effort {
    fn budget(self) -> u32 {
        match self {
            Effort::None => 0,
            Effort::Minimal => 1024,
            Effort::Low => 2048,
            Effort::Medium => 8192,
            Effort::High => 16384,
            Effort::XHigh => 24576,
        }
    }
    fn adaptive_effort(self) -> &'static str {
        match self {
            Effort::None | Effort::Minimal | Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High | Effort::XHigh => "high",
        }
    }
}

fn build<'b>(
    req: &'b ChatCompletionRequest<'_>,
    model: &'b str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<MessagesRequest<'b>, RequestError> {
    if let Some(n) = req.n
        && n != 1
    {
        return Err(RequestError::new(
            "n",
            "unsupported_value",
            format_args!("only n=1 is supported (got {n})"),
        ));
    }
    let (max_param, max_tokens) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", m),
        (None, Some(m)) => ("max_tokens", m),
        (None, None) => ("", default_max_tokens.max(1)),
    };
    if max_tokens == 0 {
        return Err(invalid(max_param, "must be at least 1"));
    }
    let effort = match req.reasoning_effort.as_deref() {
        None => None,
        Some("none") => Some(Effort::None),
        Some("minimal") => Some(Effort::Minimal),
        Some("low") => Some(Effort::Low),
        Some("medium") => Some(Effort::Medium),
        Some("high") => Some(Effort::High),
        Some("xhigh") => Some(Effort::XHigh),
        Some(other) => {
            return Err(invalid(
                "reasoning_effort",
                format_args!(
                    "unknown value {other:?} (expected none, minimal, low, medium, high or xhigh)"
                ),
            ));
        }
    };

    let Some(messages) = &req.messages else {
        return Err(RequestError::new(
            "messages",
            "missing_required_parameter",
            "missing required parameter",
        ));
    };
    if messages.is_empty() {
        return Err(invalid("messages", "must contain at least one message"));
    }

    // Tools first: tool_choice validation needs their names.
    let mut tools: Vec<ToolDef<'b>> = Vec::new();
    if let Some(ts) = &req.tools {
        tools.reserve(ts.len());
        for (i, t) in ts.iter().enumerate() {
            if let Some(k) = t.kind.as_deref()
                && k != "function"
            {
                return Err(RequestError::new(
                    format!("tools[{i}].type"),
                    "unsupported_value",
                    format_args!("unsupported tool type {k:?} (only \"function\")"),
                ));
            }
            let Some(f) = &t.function else {
                return Err(RequestError::new(
                    format!("tools[{i}].function"),
                    "missing_required_parameter",
                    "missing required field",
                ));
            };
            tools.push(tool_def(f, || format!("tools[{i}].function.name"))?);
        }
    }
    if let Some(fs) = &req.functions {
        for (i, f) in fs.iter().enumerate() {
            tools.push(tool_def(f, || format!("functions[{i}].name"))?);
        }
    }

    let conv = convert_messages(messages)?;
    let Conversation {
        system,
        mut turns,
        history_tools,
    } = conv;
    if turns.is_empty() {
        return Err(invalid(
            "messages",
            "must contain at least one non-empty user or assistant message",
        ));
    }
    // A final assistant turn (prefill) may not end with whitespace.
    if let Some(last) = turns.last_mut()
        && last.role == "assistant"
    {
        if let Some(Block::Text { text, .. }) = last.content.last_mut() {
            let trimmed = text.trim_end().len();
            if trimmed == 0 {
                last.content.pop();
            } else if trimmed < text.len() {
                match text {
                    Cow::Borrowed(s) => *s = &s[..trimmed],
                    Cow::Owned(s) => s.truncate(trimmed),
                }
            }
        }
        if last.content.is_empty() {
            turns.pop();
            if turns.is_empty() {
                return Err(invalid(
                    "messages",
                    "must contain at least one non-empty user or assistant message",
                ));
            }
        }
    }

    // tool_choice / function_call.
    let choice_src = match (&req.tool_choice, &req.function_call) {
        (Some(c), _) => Some(("tool_choice", c)),
        (None, Some(c)) => Some(("function_call", c)),
        (None, None) => None,
    };
    let mut choice = match choice_src {
        None => None,
        Some((param, c)) => Some(tool_choice(param, c)?),
    };
    if let Some(ChoiceKind::Tool(name)) = choice
        && !tools.iter().any(|t| t.name == name)
    {
        let param = match choice_src {
            Some(("function_call", _)) => "function_call.name",
            _ => "tool_choice.function.name",
        };
        return Err(invalid(param, format_args!("no tool named {name:?} is defined")));
    }
    if tools.is_empty() && !history_tools.is_empty() {
        for name in history_tools {
            tools.push(ToolDef {
                name,
                description: None,
                input_schema: None,
            });
        }
        choice = Some(ChoiceKind::None);
    }
    let tool_choice = if tools.is_empty() {
        None
    } else {
        let disable_parallel = req.parallel_tool_calls == Some(false);
        match choice {
            Some(kind) => Some(ToolChoiceOut {
                kind,
                disable_parallel,
            }),
            None if disable_parallel => Some(ToolChoiceOut {
                kind: ChoiceKind::Auto,
                disable_parallel,
            }),
            None => None,
        }
    };
    let forced = matches!(
        tool_choice.as_ref().map(|c| c.kind),
        Some(ChoiceKind::Any | ChoiceKind::Tool(_))
    );

    // Thinking.
    let caps = model_caps(model);
    let blocked = forced || lacks_required_thinking(&turns);
    let mut max_tokens = max_tokens;
    let want = effort.filter(|e| *e != Effort::None);
    let adaptive = |e: Effort| {
        (
            Some(ThinkingOut::Adaptive),
            Some(OutputConfig {
                effort: e.adaptive_effort(),
            }),
        )
    };
    let (thinking, output_config) = match (caps.thinking, want) {
        // Cannot be turned off: only the effort can be chosen.
        (ThinkingMode::AlwaysOn, Some(e)) => adaptive(e),
        (ThinkingMode::AlwaysOn, None) => (None, None),
        (ThinkingMode::AdaptiveOnly, _) if blocked || effort == Some(Effort::None) => {
            (Some(ThinkingOut::Disabled), None)
        }
        (_, None) => (None, None),
        (_, Some(_)) if blocked => (None, None),
        (ThinkingMode::Adaptive | ThinkingMode::AdaptiveOnly, Some(e)) => adaptive(e),
        (ThinkingMode::Budget, Some(e)) => {
            let budget = e.budget();
            if max_tokens <= budget {
                max_tokens = budget.saturating_add(max_tokens);
            }
            (
                Some(ThinkingOut::Enabled {
                    budget_tokens: budget,
                }),
                None,
            )
        }
    };
    let thinking_on = match &thinking {
        Some(ThinkingOut::Enabled { .. } | ThinkingOut::Adaptive) => true,
        Some(ThinkingOut::Disabled) => false,
        None => matches!(
            caps.thinking,
            ThinkingMode::AdaptiveOnly | ThinkingMode::AlwaysOn
        ),
    };
    let sampling = caps.sampling_params && !thinking_on;
    let temperature = req
        .temperature
        .filter(|_| sampling)
        .map(|t| t.clamp(0.0, 1.0));
    let top_p = req.top_p.filter(|_| sampling);

    let stop_sequences = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => {
            if s.is_empty() {
                Vec::new()
            } else {
                vec![&**s]
            }
        }
        Some(Stop::Many(v)) => v.iter().filter(|s| !s.is_empty()).map(|s| &**s).collect(),
    };

    let mut system = system;
    if let Some(rf) = &req.response_format
        && let Some(text) = response_format_instruction(rf)?
    {
        system.push(Block::Text {
            text: Cow::Owned(text),
            cache_control: None,
        });
    }

    let user_id = req.user.as_deref().or(req.safety_identifier.as_deref());
    Ok(MessagesRequest {
        model,
        max_tokens,
        system: if system.is_empty() {
            None
        } else {
            Some(System(system))
        },
        messages: turns,
        stop_sequences,
        temperature,
        top_p,
        stream,
        tools,
        tool_choice,
        thinking,
        output_config,
        metadata: user_id.filter(|u| !u.is_empty()).map(|u| Metadata { user_id: u }),
    })
}

fn tool_def<'b>(
    f: &'b crate::api::openai::FunctionDef<'_>,
    name_param: impl FnOnce() -> String,
) -> Result<ToolDef<'b>, RequestError> {
    let name = match f.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(RequestError::new(
                name_param(),
                "missing_required_parameter",
                "missing required field",
            ));
        }
    };
    // `{}` (or no schema) means "no parameters"; Anthropic requires `"type":"object"`.
    let input_schema = f
        .parameters
        .filter(|p| !p.get().bytes().all(|c| matches!(c, b'{' | b'}' | b' ' | b'\n' | b'\r' | b'\t')));
    Ok(ToolDef {
        name,
        description: f.description.as_deref().filter(|d| !d.is_empty()),
        input_schema,
    })
}

fn tool_choice<'b>(param: &str, c: &'b ToolChoice<'_>) -> Result<ChoiceKind<'b>, RequestError> {
    let mode = |m: &str, p: String| -> Result<ChoiceKind<'b>, RequestError> {
        match m {
            "none" => Ok(ChoiceKind::None),
            "auto" => Ok(ChoiceKind::Auto),
            "required" | "any" => Ok(ChoiceKind::Any),
            other => Err(invalid(
                p,
                format_args!("unknown value {other:?} (expected none, auto or required)"),
            )),
        }
    };
    match c {
        ToolChoice::Mode(m) => mode(m, param.to_owned()),
        ToolChoice::Object(o) => {
            let name = o
                .function
                .as_ref()
                .and_then(|f| f.name.as_deref())
                .or(o.name.as_deref());
            if let Some(n) = name {
                return Ok(ChoiceKind::Tool(n));
            }
            if o.kind.as_deref() == Some("allowed_tools")
                && let Some(m) = o.allowed_tools.as_ref().and_then(|a| a.mode.as_deref())
            {
                return mode(m, format!("{param}.allowed_tools.mode"));
            }
            Err(RequestError::new(
                if param == "function_call" {
                    "function_call.name".to_owned()
                } else {
                    format!("{param}.function.name")
                },
                "missing_required_parameter",
                "missing required field",
            ))
        }
    }
}

/// `response_format` → an instruction appended to the system prompt.
///
/// Approach: Anthropic's Messages API has no JSON mode that works on every model without a beta
/// header, and forcing a synthetic tool would change the response shape (and conflicts with the
/// client's own tools and with thinking). The model is instead told, as the last system block (after
/// the client's blocks, so their prompt cache stays valid), to answer with JSON only, without
/// Markdown fences; for `json_schema` the schema is embedded verbatim with its name and description.
/// The reply text is passed through unchanged (the proxy does not strip or validate).
/// `{"type":"text"}` adds nothing.
pub fn response_format_instruction(rf: &ResponseFormat<'_>) -> Result<Option<String>, RequestError> {
    const TAIL: &str = "Output only the JSON value itself: no explanation before or after it and no Markdown code fences.";
    match rf.kind.as_deref() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(format!(
            "Respond with a single valid JSON object. {TAIL}"
        ))),
        Some("json_schema") => {
            let Some(js) = &rf.json_schema else {
                return Err(RequestError::new(
                    "response_format.json_schema",
                    "missing_required_parameter",
                    "missing required field",
                ));
            };
            let mut s = String::from("Respond with a single valid JSON value that conforms to the JSON Schema");
            if let Some(n) = js.name.as_deref().filter(|n| !n.is_empty()) {
                s.push_str(" named \"");
                s.push_str(n);
                s.push('"');
            }
            s.push_str(" below.");
            if let Some(d) = js.description.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(" Purpose of the schema: ");
                s.push_str(d);
            }
            s.push(' ');
            s.push_str(TAIL);
            if let Some(schema) = js.schema {
                s.push_str("\n<json_schema>\n");
                s.push_str(schema.get());
                s.push_str("\n</json_schema>");
            }
            Ok(Some(s))
        }
        Some(other) => Err(invalid(
            "response_format.type",
            format_args!("unknown value {other:?} (expected text, json_object or json_schema)"),
        )),
    }
}

struct Conversation<'b> {
    system: Vec<Block<'b>>,
    turns: Vec<Turn<'b>>,
    /// Names of tools called in the history (in first-use order), for requests without `tools`.
    history_tools: Vec<&'b str>,
}

/// Appends blocks as a turn of `role`, merging with the previous turn of the same role;
/// `tool_result` blocks go after the turn's leading results (Anthropic wants them first).
fn push_turn<'b>(turns: &mut Vec<Turn<'b>>, role: &'static str, blocks: Vec<Block<'b>>) {
    if blocks.is_empty() {
        return;
    }
    if turns.last().is_none_or(|t| t.role != role) {
        turns.push(Turn {
            role,
            content: Vec::with_capacity(blocks.len()),
            results: 0,
        });
    }
    let Some(last) = turns.last_mut() else {
        return;
    };
    for b in blocks {
        if matches!(b, Block::ToolResult { .. }) {
            last.content.insert(last.results, b);
            last.results += 1;
        } else {
            last.content.push(b);
        }
    }
}

fn convert_messages<'b>(messages: &'b [Message<'_>]) -> Result<Conversation<'b>, RequestError> {
    let mut system: Vec<Block<'b>> = Vec::new();
    let mut turns: Vec<Turn<'b>> = Vec::with_capacity(messages.len());
    let mut call_ids: HashSet<&'b str> = HashSet::new();
    let mut history_tools: Vec<&'b str> = Vec::new();
    let mut last_legacy: Option<String> = None;

    for (i, m) in messages.iter().enumerate() {
        let Some(role) = m.role.as_deref() else {
            return Err(RequestError::new(
                format!("messages[{i}].role"),
                "missing_required_parameter",
                "missing required field",
            ));
        };
        match role {
            "system" | "developer" => {
                match &m.content {
                    None => {}
                    Some(Content::Text(t)) => push_text(&mut system, t, None),
                    Some(Content::Parts(parts)) => {
                        for (j, p) in parts.iter().enumerate() {
                            match p.kind.as_deref() {
                                Some("text") => {
                                    push_text(&mut system, text_of(p, i, j)?, p.cache_control)
                                }
                                other => {
                                    return Err(bad_part(i, j, other, "system and developer messages accept only text parts"));
                                }
                            }
                        }
                    }
                }
            }
            "user" => {
                let mut blocks = Vec::new();
                match &m.content {
                    None => {}
                    Some(Content::Text(t)) => push_text(&mut blocks, t, None),
                    Some(Content::Parts(parts)) => {
                        for (j, p) in parts.iter().enumerate() {
                            user_part(&mut blocks, p, i, j)?;
                        }
                    }
                }
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(tbs) = &m.thinking_blocks {
                    for tb in tbs {
                        thinking_block(&mut blocks, tb);
                    }
                }
                match &m.content {
                    None => {
                        if let Some(r) = &m.refusal {
                            push_text(&mut blocks, r, None);
                        }
                    }
                    Some(Content::Text(t)) => push_text(&mut blocks, t, None),
                    Some(Content::Parts(parts)) => {
                        for (j, p) in parts.iter().enumerate() {
                            match p.kind.as_deref() {
                                Some("text") => {
                                    push_text(&mut blocks, text_of(p, i, j)?, p.cache_control)
                                }
                                Some("refusal") => {
                                    if let Some(r) = &p.refusal {
                                        push_text(&mut blocks, r, None);
                                    }
                                }
                                other => {
                                    return Err(bad_part(i, j, other, "assistant messages accept only text and refusal parts"));
                                }
                            }
                        }
                    }
                }
                if let Some(calls) = &m.tool_calls {
                    for (j, c) in calls.iter().enumerate() {
                        let p = |f: &str| format!("messages[{i}].tool_calls[{j}].{f}");
                        let id = match c.id.as_deref() {
                            Some(id) if !id.is_empty() => id,
                            _ => {
                                return Err(RequestError::new(
                                    p("id"),
                                    "missing_required_parameter",
                                    "missing required field",
                                ));
                            }
                        };
                        if let Some(k) = c.kind.as_deref()
                            && k != "function"
                        {
                            return Err(RequestError::new(
                                p("type"),
                                "unsupported_value",
                                format_args!("unsupported tool call type {k:?}"),
                            ));
                        }
                        let Some(f) = &c.function else {
                            return Err(RequestError::new(
                                p("function"),
                                "missing_required_parameter",
                                "missing required field",
                            ));
                        };
                        let (name, input) = function_call(f, &p)?;
                        call_ids.insert(id);
                        if !history_tools.contains(&name) {
                            history_tools.push(name);
                        }
                        blocks.push(Block::ToolUse {
                            id: sanitize_id(id),
                            name,
                            input,
                        });
                    }
                }
                if let Some(f) = &m.function_call {
                    let p = |x: &str| format!("messages[{i}].function_call.{x}");
                    let (name, input) = function_call(f, &p)?;
                    let id = format!("call_legacy_{i}");
                    last_legacy = Some(id.clone());
                    if !history_tools.contains(&name) {
                        history_tools.push(name);
                    }
                    blocks.push(Block::ToolUse {
                        id: Cow::Owned(id),
                        name,
                        input,
                    });
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = match m.tool_call_id.as_deref() {
                    Some(id) if !id.is_empty() => id,
                    _ => {
                        return Err(RequestError::new(
                            format!("messages[{i}].tool_call_id"),
                            "missing_required_parameter",
                            "missing required field",
                        ));
                    }
                };
                if !call_ids.contains(id) {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id"),
                        format_args!(
                            "{id:?} does not match any tool call of an earlier assistant message"
                        ),
                    ));
                }
                let content = tool_content(m, i)?;
                push_turn(
                    &mut turns,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: sanitize_id(id),
                        content,
                        cache_control: None,
                    }],
                );
            }
            "function" => {
                let Some(id) = last_legacy.take() else {
                    return Err(invalid(
                        format!("messages[{i}].role"),
                        "a function message must follow an assistant message with a function_call",
                    ));
                };
                let content = tool_content(m, i)?;
                push_turn(
                    &mut turns,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: Cow::Owned(id),
                        content,
                        cache_control: None,
                    }],
                );
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format_args!(
                        "unknown role {other:?} (expected system, developer, user, assistant or tool)"
                    ),
                ));
            }
        }
    }
    Ok(Conversation {
        system,
        turns,
        history_tools,
    })
}

fn bad_part(i: usize, j: usize, kind: Option<&str>, why: &str) -> RequestError {
    match kind {
        None => RequestError::new(
            format!("messages[{i}].content[{j}].type"),
            "missing_required_parameter",
            "missing required field",
        ),
        Some(k) => RequestError::new(
            format!("messages[{i}].content[{j}].type"),
            "unsupported_value",
            format_args!("unsupported content part type {k:?}: {why}"),
        ),
    }
}

fn text_of<'p, 'a>(p: &'p Part<'a>, i: usize, j: usize) -> Result<&'p Str<'a>, RequestError> {
    p.text.as_ref().ok_or_else(|| {
        RequestError::new(
            format!("messages[{i}].content[{j}].text"),
            "missing_required_parameter",
            "missing required field",
        )
    })
}

/// Anthropic rejects empty and whitespace-only text blocks: they are skipped.
fn push_text<'b>(blocks: &mut Vec<Block<'b>>, t: &'b str, cache_control: Option<&'b RawValue>) {
    if t.trim().is_empty() {
        return;
    }
    blocks.push(Block::Text {
        text: Cow::Borrowed(t),
        cache_control,
    });
}

fn user_part<'b>(
    blocks: &mut Vec<Block<'b>>,
    p: &'b Part<'_>,
    i: usize,
    j: usize,
) -> Result<(), RequestError> {
    match p.kind.as_deref() {
        Some("text") => push_text(blocks, text_of(p, i, j)?, p.cache_control),
        Some("image_url") => {
            let param = || format!("messages[{i}].content[{j}].image_url.url");
            let Some(url) = p.image_url.as_ref().and_then(|u| u.url.as_deref()) else {
                return Err(RequestError::new(
                    param(),
                    "missing_required_parameter",
                    "missing required field",
                ));
            };
            blocks.push(Block::Image {
                source: image_source(url, param)?,
                cache_control: p.cache_control,
            });
        }
        Some("file") => {
            let param = |f: &str| format!("messages[{i}].content[{j}].file.{f}");
            let Some(f) = &p.file else {
                return Err(RequestError::new(
                    format!("messages[{i}].content[{j}].file"),
                    "missing_required_parameter",
                    "missing required field",
                ));
            };
            let Some(data) = f.file_data.as_deref() else {
                let what = if f.file_id.is_some() {
                    "uploaded file ids are not supported; send the file inline as file_data"
                } else {
                    "missing required field"
                };
                return Err(RequestError::new(param("file_data"), "unsupported_value", what));
            };
            let (media_type, b64) = parse_data_url(data)
                .ok_or_else(|| invalid(param("file_data"), "expected a base64 data: URL"))?;
            if media_type != "application/pdf" {
                return Err(RequestError::new(
                    param("file_data"),
                    "unsupported_value",
                    format_args!("unsupported file type {media_type:?} (only application/pdf)"),
                ));
            }
            blocks.push(Block::Document {
                source: Source::Base64 {
                    media_type,
                    data: b64,
                },
                title: f.filename.as_deref().filter(|t| !t.is_empty()),
                cache_control: p.cache_control,
            });
        }
        Some("input_audio") => {
            return Err(bad_part(i, j, Some("input_audio"), "Claude does not accept audio input"));
        }
        other => {
            return Err(bad_part(
                i,
                j,
                other,
                "user messages accept text, image_url and file parts",
            ));
        }
    }
    Ok(())
}

/// `data:<media>;base64,<data>` → (media, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    // Parameters such as `;charset=` before `;base64` are not expected for images/PDFs.
    if media.is_empty() || media.contains(';') || data.is_empty() {
        return None;
    }
    Some((media, data))
}

fn image_source<'b>(
    url: &'b str,
    param: impl Fn() -> String,
) -> Result<Source<'b>, RequestError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url).ok_or_else(|| {
            invalid(param(), "expected a data: URL of the form data:image/png;base64,<data>")
        })?;
        let media_type = if media_type == "image/jpg" {
            "image/jpeg"
        } else {
            media_type
        };
        if !IMAGE_TYPES.contains(&media_type) {
            return Err(RequestError::new(
                param(),
                "unsupported_value",
                format_args!(
                    "unsupported image type {media_type:?} (expected image/jpeg, image/png, image/gif or image/webp)"
                ),
            ));
        }
        return Ok(Source::Base64 { media_type, data });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Source::Url(url));
    }
    Err(invalid(param(), "expected a data: URL or an https: URL"))
}

fn thinking_block<'b>(blocks: &mut Vec<Block<'b>>, tb: &'b ThinkingBlock<'_>) {
    match tb.kind.as_deref() {
        Some("thinking") => {
            // Without a signature Anthropic cannot verify the block: drop it.
            if let (Some(t), Some(s)) = (tb.thinking.as_deref(), tb.signature.as_deref())
                && !s.is_empty()
            {
                blocks.push(Block::Thinking {
                    thinking: t,
                    signature: s,
                });
            }
        }
        Some("redacted_thinking") => {
            if let Some(d) = tb.data.as_deref().filter(|d| !d.is_empty()) {
                blocks.push(Block::RedactedThinking { data: d });
            }
        }
        _ => {}
    }
}

/// (name, input) of an assistant function call; `arguments` must be a JSON object (or empty).
fn function_call<'b>(
    f: &'b FunctionCall<'_>,
    p: &dyn Fn(&str) -> String,
) -> Result<(&'b str, Input<'b>), RequestError> {
    let name = match f.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(RequestError::new(
                p("name"),
                "missing_required_parameter",
                "missing required field",
            ));
        }
    };
    let not_object = || invalid(p("arguments"), "must be a JSON object encoded as a string");
    let input = match f.arguments {
        None => Input::Empty,
        Some(raw) => {
            let r = raw.get();
            match r.as_bytes().first() {
                Some(b'{') => Input::Borrowed(raw),
                Some(b'n') => Input::Empty, // null
                Some(b'"') => {
                    let s: String = serde_json::from_str(r).map_err(|_| not_object())?;
                    if s.trim().is_empty() {
                        Input::Empty
                    } else {
                        let v = RawValue::from_string(s).map_err(|e| {
                            let mut what = e.to_string();
                            if let Some(i) = what.rfind(" at line ") {
                                what.truncate(i);
                            }
                            invalid(p("arguments"), format_args!("is not valid JSON: {what}"))
                        })?;
                        if !v.get().trim_start().starts_with('{') {
                            return Err(not_object());
                        }
                        Input::Owned(v)
                    }
                }
                _ => return Err(not_object()),
            }
        }
    };
    Ok((name, input))
}

fn tool_content<'b>(m: &'b Message<'_>, i: usize) -> Result<Vec<Block<'b>>, RequestError> {
    let mut blocks = Vec::new();
    match &m.content {
        None => {}
        Some(Content::Text(t)) => push_text(&mut blocks, t, None),
        Some(Content::Parts(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                match p.kind.as_deref() {
                    Some("text") | Some("image_url") => user_part(&mut blocks, p, i, j)?,
                    other => {
                        return Err(bad_part(i, j, other, "tool messages accept text and image_url parts"));
                    }
                }
            }
        }
    }
    Ok(blocks)
}

/// Anthropic ids match `^[a-zA-Z0-9_-]+$`; other characters become `_` (consistently for calls
/// and results, so pairs still match).
fn sanitize_id(id: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.chars().all(ok) {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(id.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

/// True when the assistant turns after the last real user input (the current tool loop, or a
/// prefill) do not start with a thinking block: Anthropic then rejects enabled thinking.
fn lacks_required_thinking(turns: &[Turn<'_>]) -> bool {
    let start = turns
        .iter()
        .rposition(|t| {
            t.role == "user"
                && t.content
                    .iter()
                    .any(|b| !matches!(b, Block::ToolResult { .. }))
        })
        .map_or(0, |k| k + 1);
    turns[start..].iter().any(|t| {
        t.role == "assistant"
            && !matches!(
                t.content.first(),
                Some(Block::Thinking { .. } | Block::RedactedThinking { .. })
            )
    })
}


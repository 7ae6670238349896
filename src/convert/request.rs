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
//! | `response_format` `json_schema` with `strict: true`, on models with structured outputs ([`ModelCaps::structured_outputs`]) | `output_config.format` (`{"type":"json_schema","schema":…}`) |
//! | other `response_format` (`json_object`, or any on older models) | an instruction appended to `system` ([`response_format_instruction`]) |
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
//! Also mapped: `service_tier` ([`service_tier`]), `web_search_options` (the web search server
//! tool), and automatic prompt caching ([`auto_cache`], `prompt_cache_retention`).
//!
//! ## Accepted and ignored
//! `logprobs`, `top_logprobs`, `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`,
//! `store`, `metadata` (Anthropic's holds only a user id), `service_tier` `flex` and `scale`,
//! `prediction`, `modalities`, `audio`, `verbosity`, `prompt_cache_key` (the pool's affinity uses
//! it), tools' `strict`, image `detail`, message `name`, and any unknown field. Anthropic has no
//! equivalent for these; honouring them partially would mislead.
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
//! client did not hand back `thinking_blocks` during a tool loop). Models that always think (Fable,
//! Mythos) cannot be turned off and get only the effort.
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
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;

use super::models::{ModelAliases, ModelCaps, ThinkingMode, model_caps};
use crate::api::anthropic::{
    Block, MessagesRequest, Metadata, OutputConfig, Source, System, Thinking, ToolChoice,
    ToolChoiceKind, ToolDef, ToolInput, Tools, Turn, WebSearchTool,
};
use crate::api::openai::{
    self, ChatCompletionRequest, Content, FunctionCall, Message, Part, ResponseFormat, Stop, Str,
    ThinkingBlock, ToolCall,
};

/// Conversion settings.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions<'a> {
    /// `max_tokens` when the client sends neither `max_completion_tokens` nor `max_tokens`.
    pub default_max_tokens: u32,
    pub aliases: &'a ModelAliases,
    /// Automatic prompt caching ([`auto_cache`]; `openai_prompt_caching`).
    pub auto_cache: bool,
}

/// The top-level `cache_control` an OpenAI-dialect request gets: OpenAI clients cannot place
/// breakpoints, and OpenAI caches long prefixes by itself, so ccproxy asks for automatic caching
/// (prefixes under the model's minimum, about 1024 tokens, are neither cached nor charged) —
/// unless it is turned off, or the client placed its own `cache_control` somewhere (the
/// converters keep those, and the client is then managing its cache). `prompt_cache_retention:
/// "24h"` asks for the 1-hour lifetime, the longest there is.
pub(crate) fn auto_cache(
    body: &[u8],
    opts: &ConvertOptions<'_>,
    retention: Option<&str>,
) -> Option<crate::api::anthropic::AutoCache> {
    (opts.auto_cache && memchr::memmem::find(body, b"\"cache_control\"").is_none()).then(|| {
        crate::api::anthropic::AutoCache {
            one_hour: retention == Some("24h"),
        }
    })
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
    /// The request declared legacy `functions` (and no `tools`): answer with the
    /// legacy `function_call` field and finish reason instead of `tool_calls`.
    pub legacy_functions: bool,
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

impl From<RequestError> for crate::error::ProxyError {
    fn from(e: RequestError) -> Self {
        let mut pe = crate::error::ProxyError::invalid(e.message);
        pe.param = e.param;
        pe.code = e.code;
        pe
    }
}

impl RequestError {
    pub(crate) fn new(
        param: impl Into<String>,
        code: &'static str,
        what: impl std::fmt::Display,
    ) -> Self {
        let param = param.into();
        RequestError {
            message: format!("{param}: {what}"),
            param: Some(param),
            code: Some(code),
        }
    }
}

pub(crate) fn invalid(param: impl Into<String>, what: impl std::fmt::Display) -> RequestError {
    RequestError::new(param, "invalid_value", what)
}

pub(crate) fn missing(param: impl Into<String>) -> RequestError {
    RequestError::new(
        param,
        "missing_required_parameter",
        "missing required field",
    )
}

/// Converts a `chat.completions` request body into an Anthropic Messages request body.
pub fn chat_to_messages(
    body: &[u8],
    opts: &ConvertOptions,
) -> Result<ConvertedRequest, RequestError> {
    // serde also accepts a struct as a positional array: only objects are requests.
    let first = body.iter().find(|c| !c.is_ascii_whitespace());
    if first.is_some_and(|c| *c != b'{') {
        return Err(RequestError {
            message: "the request body must be a JSON object".to_owned(),
            param: None,
            code: Some("invalid_type"),
        });
    }
    let req: ChatCompletionRequest = match crate::util::json::from_bytes(body) {
        Ok(r) => r,
        Err(e) => return Err(parse_error::<ChatCompletionRequest>(body, e)),
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
    let (mut out, format) = build(&req, upstream_model, stream, opts.default_max_tokens)?;
    out.cache_control = auto_cache(body, opts, req.prompt_cache_retention.as_deref());
    let mut body_out = Vec::with_capacity(body.len() + 256);
    let written = match format {
        None => serde_json::to_writer(&mut body_out, &out),
        Some(format) => {
            // `output_config` gains the format (the shared Messages type has only the effort).
            let effort = out.output_config.take().map(|c| c.effort);
            let output_config = Some(StructuredConfig {
                effort,
                format: Some(format),
            });
            serde_json::to_writer(
                &mut body_out,
                &WithFormat {
                    body: out,
                    output_config,
                },
            )
        }
    };
    written.map_err(|e| RequestError {
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
        legacy_functions: req.functions.is_some() && req.tools.is_none(),
    })
}

/// Turns a serde error into a 400 naming the field; re-parses `body` as a `T` with path tracking
/// (error path only).
pub(crate) fn parse_error<'de, T: serde::Deserialize<'de>>(
    body: &'de [u8],
    e: serde_json::Error,
) -> RequestError {
    use serde_json::error::Category;
    if matches!(
        e.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return RequestError {
            message: format!("the request body is not valid JSON: {e}"),
            param: None,
            code: Some("invalid_json"),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let (path, inner) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
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
// Building.

const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// `reasoning_effort` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effort {
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

/// A Messages request with a native structured-output format in its `output_config`.
#[derive(Serialize)]
struct WithFormat<'b> {
    #[serde(flatten)]
    body: MessagesRequest<'b>,
    output_config: Option<StructuredConfig<'b>>,
}

/// `output_config` with room for a structured-output `format` (shared with the Responses
/// converter).
#[derive(Serialize)]
pub(crate) struct StructuredConfig<'b> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<JsonSchema<'b>>,
}

/// `output_config.format` for native structured outputs: `{"type":"json_schema","schema":…}`.
pub(crate) struct JsonSchema<'b>(pub &'b RawValue);

impl Serialize for JsonSchema<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", "json_schema")?;
        m.serialize_entry("schema", self.0)?;
        m.end()
    }
}

/// A `json_schema` response format's schema, when there is one: a JSON object (a JSON Schema);
/// anything else is a 400 naming `param`.
pub(crate) fn schema_object<'b>(
    schema: Option<&'b RawValue>,
    param: &str,
) -> Result<Option<&'b RawValue>, RequestError> {
    match schema.filter(|s| s.get() != "null") {
        Some(s) if !s.get().starts_with('{') => Err(RequestError::new(
            param,
            "invalid_type",
            "must be a JSON object (a JSON Schema)",
        )),
        s => Ok(s),
    }
}

/// Builds the Messages request: each step validates and converts one part of the request. The
/// native structured-output format, when there is one, is returned beside it.
fn build<'b>(
    req: &'b ChatCompletionRequest<'_>,
    model: &'b str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<(MessagesRequest<'b>, Option<JsonSchema<'b>>), RequestError> {
    check_n(req)?;
    let max_tokens = max_tokens(req, default_max_tokens)?;
    let effort = reasoning_effort(req)?;
    let messages = required_messages(req)?;
    // Tools first: tool_choice validation needs their names.
    let mut tools = declared_tools(req)?;
    let Conversation {
        mut system,
        mut turns,
        history_tools,
        ..
    } = convert_messages(messages)?;
    trim_prefill(&mut turns)?;
    let tool_choice = resolve_tool_choice(req, &mut tools, history_tools)?;
    let forced = matches!(
        tool_choice.as_ref().map(|c| c.kind),
        Some(ToolChoiceKind::Any | ToolChoiceKind::Tool(_))
    );
    let caps = model_caps(model);
    let blocked = forced || lacks_required_thinking(&turns);
    let (thinking, output_config, max_tokens) =
        thinking(caps.thinking, effort, blocked, max_tokens);
    let (temperature, top_p) = sampling(req.temperature, req.top_p, &caps, thinking.as_ref());
    let format = response_format(req, caps.structured_outputs, &mut system)?;
    let user_id = req.user.as_deref().or(req.safety_identifier.as_deref());
    let out = MessagesRequest {
        model,
        max_tokens,
        system: (!system.is_empty()).then_some(System(system)),
        messages: turns,
        stop_sequences: stop_sequences(req),
        temperature,
        top_p,
        stream,
        tools: Tools {
            defs: tools,
            web_search: web_search(req),
        },
        tool_choice,
        thinking,
        output_config,
        metadata: user_id
            .filter(|u| !u.is_empty())
            .map(|u| Metadata { user_id: u }),
        cache_control: None,
        service_tier: service_tier(req.service_tier.as_deref()),
    };
    Ok((out, format))
}

/// `response_format`: a `json_schema` with a schema goes native (returned) on models with
/// structured outputs; everything else becomes an instruction appended to `system`
/// ([`response_format_instruction`]).
fn response_format<'b>(
    req: &'b ChatCompletionRequest<'_>,
    native: bool,
    system: &mut Vec<Block<'b>>,
) -> Result<Option<JsonSchema<'b>>, RequestError> {
    let Some(rf) = &req.response_format else {
        return Ok(None);
    };
    if rf.kind.as_deref() == Some("json_schema") {
        let Some(js) = &rf.json_schema else {
            return Err(missing("response_format.json_schema"));
        };
        let schema = schema_object(js.schema, "response_format.json_schema.schema")?;
        // Native only for strict schemas (as the Responses converter): a non-strict schema may
        // use what structured outputs refuse, and the instruction never fails.
        if native
            && js.strict == Some(true)
            && let Some(schema) = schema
        {
            return Ok(Some(JsonSchema(schema)));
        }
    }
    if let Some(text) = response_format_instruction(rf)? {
        system.push(Block::Text {
            text: Cow::Owned(text),
            cache_control: None,
        });
    }
    Ok(None)
}

/// Only `n` = 1 is supported.
fn check_n(req: &ChatCompletionRequest<'_>) -> Result<(), RequestError> {
    match req.n {
        Some(n) if n != 1 => Err(RequestError::new(
            "n",
            "unsupported_value",
            format_args!("only n=1 is supported (got {n})"),
        )),
        _ => Ok(()),
    }
}

/// `max_completion_tokens` ∨ `max_tokens` ∨ the default; at least 1.
fn max_tokens(req: &ChatCompletionRequest<'_>, default: u32) -> Result<u32, RequestError> {
    let (param, max_tokens) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", m),
        (None, Some(m)) => ("max_tokens", m),
        (None, None) => ("", default.max(1)),
    };
    if max_tokens == 0 {
        return Err(invalid(param, "must be at least 1"));
    }
    Ok(max_tokens)
}

fn reasoning_effort(req: &ChatCompletionRequest<'_>) -> Result<Option<Effort>, RequestError> {
    parse_effort("reasoning_effort", req.reasoning_effort.as_deref())
}

/// An effort level (`none`, `minimal`, `low`, `medium`, `high`, `xhigh`) read from `param`.
pub(crate) fn parse_effort(
    param: &str,
    value: Option<&str>,
) -> Result<Option<Effort>, RequestError> {
    Ok(Some(match value {
        None => return Ok(None),
        Some("none") => Effort::None,
        Some("minimal") => Effort::Minimal,
        Some("low") => Effort::Low,
        Some("medium") => Effort::Medium,
        Some("high") => Effort::High,
        Some("xhigh") => Effort::XHigh,
        Some(other) => {
            return Err(invalid(
                param,
                format_args!(
                    "unknown value {other:?} (expected none, minimal, low, medium, high or xhigh)"
                ),
            ));
        }
    }))
}

fn required_messages<'b, 'a>(
    req: &'b ChatCompletionRequest<'a>,
) -> Result<&'b [Message<'a>], RequestError> {
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
    Ok(messages)
}

/// OpenAI's `service_tier` → Anthropic's: `auto`, `priority` and `fast` (priority's 2026 name) → `auto` (priority capacity is
/// used when the organisation has it), `default` → `standard_only`; `flex` and `scale` have no
/// equivalent (nothing is sent: the organisation's default applies).
pub(crate) fn service_tier(tier: Option<&str>) -> Option<&'static str> {
    match tier? {
        "auto" | "priority" | "fast" => Some("auto"),
        "default" => Some("standard_only"),
        _ => None,
    }
}

/// `web_search_options`: Anthropic's web search server tool, with the approximate location.
/// (`search_context_size` has no equivalent: the model decides how much to search.)
fn web_search<'b>(req: &'b ChatCompletionRequest<'_>) -> Option<WebSearchTool<'b>> {
    let o = req.web_search_options.as_ref()?;
    let loc = o
        .user_location
        .as_ref()
        .and_then(|l| l.approximate.as_ref());
    Some(WebSearchTool {
        city: loc.and_then(|l| l.city.as_deref()),
        region: loc.and_then(|l| l.region.as_deref()),
        country: loc.and_then(|l| l.country.as_deref()),
        timezone: loc.and_then(|l| l.timezone.as_deref()),
    })
}

/// `tools`, then legacy `functions`.
fn declared_tools<'b>(
    req: &'b ChatCompletionRequest<'_>,
) -> Result<Vec<ToolDef<'b>>, RequestError> {
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
                return Err(missing(format!("tools[{i}].function")));
            };
            tools.push(tool_def(f, || format!("tools[{i}].function.name"))?);
        }
    }
    if let Some(fs) = &req.functions {
        for (i, f) in fs.iter().enumerate() {
            tools.push(tool_def(f, || format!("functions[{i}].name"))?);
        }
    }
    Ok(tools)
}

/// A final assistant turn (prefill) may not end with whitespace: trims it, dropping what becomes
/// empty. Fails when no turn is left.
pub(crate) fn trim_prefill(turns: &mut Vec<Turn<'_>>) -> Result<(), RequestError> {
    let no_turn = || {
        invalid(
            "messages",
            "must contain at least one non-empty user or assistant message",
        )
    };
    if turns.is_empty() {
        return Err(no_turn());
    }
    let Some(last) = turns.last_mut().filter(|t| t.role == "assistant") else {
        return Ok(());
    };
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
            return Err(no_turn());
        }
    }
    Ok(())
}

/// `tool_choice` (or legacy `function_call`) and `parallel_tool_calls`. When the request defines
/// no tools but the history calls some, those are declared (open schema) with choice `none`.
fn resolve_tool_choice<'b>(
    req: &'b ChatCompletionRequest<'_>,
    tools: &mut Vec<ToolDef<'b>>,
    history_tools: Vec<&'b str>,
) -> Result<Option<ToolChoice<'b>>, RequestError> {
    let choice_src = match (&req.tool_choice, &req.function_call) {
        (Some(c), _) => Some(("tool_choice", c)),
        (None, Some(c)) => Some(("function_call", c)),
        (None, None) => None,
    };
    let mut choice = match choice_src {
        None => None,
        Some((param, c)) => Some(tool_choice(param, c)?),
    };
    if let Some(ToolChoiceKind::Tool(name)) = choice
        && !tools.iter().any(|t| t.name == name)
    {
        let param = match choice_src {
            Some(("function_call", _)) => "function_call.name",
            _ => "tool_choice.function.name",
        };
        return Err(invalid(
            param,
            format_args!("no tool named {name:?} is defined"),
        ));
    }
    if tools.is_empty() && !history_tools.is_empty() {
        tools.extend(history_tools.into_iter().map(|name| ToolDef {
            name,
            description: None,
            input_schema: None,
        }));
        choice = Some(ToolChoiceKind::None);
    }
    if tools.is_empty() {
        return Ok(None);
    }
    let disable_parallel = req.parallel_tool_calls == Some(false);
    Ok(match choice {
        Some(kind) => Some(ToolChoice {
            kind,
            disable_parallel,
        }),
        None if disable_parallel => Some(ToolChoice {
            kind: ToolChoiceKind::Auto,
            disable_parallel,
        }),
        None => None,
    })
}

/// `thinking`, `output_config` and the (possibly raised) `max_tokens` for the model's thinking
/// mode (module docs, [Thinking](#thinking)). `blocked`: thinking must stay off.
pub(crate) fn thinking(
    mode: ThinkingMode,
    effort: Option<Effort>,
    blocked: bool,
    max_tokens: u32,
) -> (Option<Thinking>, Option<OutputConfig>, u32) {
    let want = effort.filter(|e| *e != Effort::None);
    let adaptive = |e: Effort| {
        (
            Some(Thinking::Adaptive),
            Some(OutputConfig {
                effort: e.adaptive_effort(),
            }),
            max_tokens,
        )
    };
    match (mode, want) {
        // Cannot be turned off: only the effort can be chosen.
        (ThinkingMode::AlwaysOn, Some(e)) => adaptive(e),
        (ThinkingMode::AlwaysOn, None) => (None, None, max_tokens),
        (ThinkingMode::AdaptiveOnly, _) if blocked || effort == Some(Effort::None) => {
            (Some(Thinking::Disabled), None, max_tokens)
        }
        (_, None) => (None, None, max_tokens),
        (_, Some(_)) if blocked => (None, None, max_tokens),
        (ThinkingMode::Adaptive | ThinkingMode::AdaptiveOnly, Some(e)) => adaptive(e),
        (ThinkingMode::Budget, Some(e)) => {
            let budget = e.budget();
            let max_tokens = if max_tokens <= budget {
                budget.saturating_add(max_tokens)
            } else {
                max_tokens
            };
            (
                Some(Thinking::Enabled {
                    budget_tokens: budget,
                }),
                None,
                max_tokens,
            )
        }
    }
}

/// (`temperature`, `top_p`): dropped with thinking on and for models that reject them.
pub(crate) fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    caps: &ModelCaps,
    thinking: Option<&Thinking>,
) -> (Option<f64>, Option<f64>) {
    let thinking_on = match thinking {
        Some(Thinking::Enabled { .. } | Thinking::Adaptive) => true,
        Some(Thinking::Disabled) => false,
        None => matches!(
            caps.thinking,
            ThinkingMode::AdaptiveOnly | ThinkingMode::AlwaysOn
        ),
    };
    let sampling = caps.sampling_params && !thinking_on;
    let temperature = temperature.filter(|_| sampling).map(|t| t.clamp(0.0, 1.0));
    (temperature, top_p.filter(|_| sampling))
}

/// `stop`, empty strings dropped.
fn stop_sequences<'b>(req: &'b ChatCompletionRequest<'_>) -> Vec<&'b str> {
    match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) if s.is_empty() => Vec::new(),
        Some(Stop::One(s)) => vec![&**s],
        Some(Stop::Many(v)) => v.iter().filter(|s| !s.is_empty()).map(|s| &**s).collect(),
    }
}

fn tool_def<'b>(
    f: &'b openai::FunctionDef<'_>,
    name_param: impl FnOnce() -> String,
) -> Result<ToolDef<'b>, RequestError> {
    let name = match f.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(missing(name_param()));
        }
    };
    // `{}` (or no schema) means "no parameters"; Anthropic requires `"type":"object"`.
    let input_schema = f.parameters.filter(|p| {
        !p.get()
            .bytes()
            .all(|c| matches!(c, b'{' | b'}' | b' ' | b'\n' | b'\r' | b'\t'))
    });
    Ok(ToolDef {
        name,
        description: f.description.as_deref().filter(|d| !d.is_empty()),
        input_schema,
    })
}

fn tool_choice<'b>(
    param: &str,
    c: &'b openai::ToolChoice<'_>,
) -> Result<ToolChoiceKind<'b>, RequestError> {
    let mode = |m: &str, p: String| -> Result<ToolChoiceKind<'b>, RequestError> {
        match m {
            "none" => Ok(ToolChoiceKind::None),
            "auto" => Ok(ToolChoiceKind::Auto),
            "required" | "any" => Ok(ToolChoiceKind::Any),
            other => Err(invalid(
                p,
                format_args!("unknown value {other:?} (expected none, auto or required)"),
            )),
        }
    };
    match c {
        openai::ToolChoice::Mode(m) => mode(m, param.to_owned()),
        openai::ToolChoice::Object(o) => {
            let name = o
                .function
                .as_ref()
                .and_then(|f| f.name.as_deref())
                .or(o.name.as_deref());
            if let Some(n) = name {
                return Ok(ToolChoiceKind::Tool(n));
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

/// `response_format` → an instruction appended to the system prompt: the fallback for models
/// without native structured outputs, and for `json_object` (which has no native equivalent).
///
/// Approach: older models have no native JSON mode, and forcing a synthetic tool would change the response shape (and conflicts with the
/// client's own tools and with thinking). The model is instead told, as the last system block (after
/// the client's blocks, so their prompt cache stays valid), to answer with JSON only, without
/// Markdown fences; for `json_schema` the schema is embedded verbatim with its name and description.
/// The reply text is passed through unchanged (the proxy does not strip or validate).
/// `{"type":"text"}` adds nothing.
pub fn response_format_instruction(
    rf: &ResponseFormat<'_>,
) -> Result<Option<String>, RequestError> {
    const TAIL: &str = "Output only the JSON value itself: no explanation before or after it and no Markdown code fences.";
    match rf.kind.as_deref() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(format!(
            "Respond with a single valid JSON object. {TAIL}"
        ))),
        Some("json_schema") => {
            let Some(js) = &rf.json_schema else {
                return Err(missing("response_format.json_schema"));
            };
            let mut s = String::from(
                "Respond with a single valid JSON value that conforms to the JSON Schema",
            );
            if let Some(n) = js.name.as_deref().filter(|n| !n.is_empty()) {
                s.push_str(" named \"");
                s.push_str(n);
                s.push('"');
            }
            s.push_str(" below.");
            if let Some(d) = js.description.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(" Purpose of the schema: ");
                s.push_str(d.trim_end());
                if !d.trim_end().ends_with(['.', '!', '?']) {
                    s.push('.');
                }
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
    /// Ids of the assistant tool calls so far (a `tool` message must answer one).
    call_ids: HashSet<&'b str>,
    /// Id given to the last legacy `function_call`, answered by the next `function` message.
    last_legacy: Option<String>,
}

/// Appends blocks as a turn of `role`, merging with the previous turn of the same role;
/// `tool_result` blocks go after the turn's leading results (Anthropic wants them first).
pub(crate) fn push_turn<'b>(turns: &mut Vec<Turn<'b>>, role: &'static str, blocks: Vec<Block<'b>>) {
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

/// The messages as Anthropic's `system` and turns, one message at a time by role.
fn convert_messages<'b>(messages: &'b [Message<'_>]) -> Result<Conversation<'b>, RequestError> {
    let mut conv = Conversation {
        system: Vec::new(),
        turns: Vec::with_capacity(messages.len()),
        history_tools: Vec::new(),
        call_ids: HashSet::new(),
        last_legacy: None,
    };
    for (i, m) in messages.iter().enumerate() {
        let Some(role) = m.role.as_deref() else {
            return Err(missing(format!("messages[{i}].role")));
        };
        match role {
            "system" | "developer" => conv.system_message(m, i)?,
            "user" => conv.user_message(m, i)?,
            "assistant" => conv.assistant_message(m, i)?,
            "tool" => conv.tool_message(m, i)?,
            "function" => conv.function_message(m, i)?,
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
    Ok(conv)
}

impl<'b> Conversation<'b> {
    /// `system` / `developer`: text appended to `system`, in order.
    fn system_message(&mut self, m: &'b Message<'_>, i: usize) -> Result<(), RequestError> {
        match &m.content {
            None => {}
            Some(Content::Text(t)) => push_text(&mut self.system, t, None),
            Some(Content::Parts(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    if p.kind.as_deref() != Some("text") {
                        return Err(bad_part(
                            i,
                            j,
                            p.kind.as_deref(),
                            "system and developer messages accept only text parts",
                        ));
                    }
                    push_text(&mut self.system, text_of(p, i, j)?, p.cache_control);
                }
            }
        }
        Ok(())
    }

    fn user_message(&mut self, m: &'b Message<'_>, i: usize) -> Result<(), RequestError> {
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
        push_turn(&mut self.turns, "user", blocks);
        Ok(())
    }

    /// Thinking blocks first, then text, then tool calls (and a legacy function call).
    fn assistant_message(&mut self, m: &'b Message<'_>, i: usize) -> Result<(), RequestError> {
        let mut blocks = Vec::new();
        for tb in m.thinking_blocks.iter().flatten() {
            thinking_block(&mut blocks, tb);
        }
        assistant_content(&mut blocks, m, i)?;
        for (j, c) in m.tool_calls.iter().flatten().enumerate() {
            let (id, name, input) = tool_call(c, i, j)?;
            self.call_ids.insert(id);
            self.note_history_tool(name);
            blocks.push(Block::ToolUse {
                id: sanitize_id(id),
                name,
                input,
            });
        }
        if let Some(f) = &m.function_call {
            let p = |x: &str| format!("messages[{i}].function_call.{x}");
            let (name, input) = function_call(f, &p)?;
            let id = format!("call_legacy_{i}");
            self.last_legacy = Some(id.clone());
            self.note_history_tool(name);
            blocks.push(Block::ToolUse {
                id: Cow::Owned(id),
                name,
                input,
            });
        }
        push_turn(&mut self.turns, "assistant", blocks);
        Ok(())
    }

    fn note_history_tool(&mut self, name: &'b str) {
        if !self.history_tools.contains(&name) {
            self.history_tools.push(name);
        }
    }

    /// A `tool_result` answering an earlier assistant tool call.
    fn tool_message(&mut self, m: &'b Message<'_>, i: usize) -> Result<(), RequestError> {
        let param = || format!("messages[{i}].tool_call_id");
        let id = match m.tool_call_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Err(missing(param()));
            }
        };
        if !self.call_ids.contains(id) {
            return Err(invalid(
                param(),
                format_args!("{id:?} does not match any tool call of an earlier assistant message"),
            ));
        }
        self.push_result(sanitize_id(id), tool_content(m, i)?);
        Ok(())
    }

    /// Legacy: the result of the preceding assistant `function_call`.
    fn function_message(&mut self, m: &'b Message<'_>, i: usize) -> Result<(), RequestError> {
        let Some(id) = self.last_legacy.take() else {
            return Err(invalid(
                format!("messages[{i}].role"),
                "a function message must follow an assistant message with a function_call",
            ));
        };
        self.push_result(Cow::Owned(id), tool_content(m, i)?);
        Ok(())
    }

    fn push_result(&mut self, tool_use_id: Cow<'b, str>, content: Vec<Block<'b>>) {
        let result = Block::ToolResult {
            tool_use_id,
            content,
            cache_control: None,
        };
        push_turn(&mut self.turns, "user", vec![result]);
    }
}

/// An assistant message's `content` (or `refusal`) as text blocks.
fn assistant_content<'b>(
    blocks: &mut Vec<Block<'b>>,
    m: &'b Message<'_>,
    i: usize,
) -> Result<(), RequestError> {
    match &m.content {
        None => {
            if let Some(r) = &m.refusal {
                push_text(blocks, r, None);
            }
        }
        Some(Content::Text(t)) => push_text(blocks, t, None),
        Some(Content::Parts(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                match p.kind.as_deref() {
                    Some("text") => push_text(blocks, text_of(p, i, j)?, p.cache_control),
                    Some("refusal") => {
                        if let Some(r) = &p.refusal {
                            push_text(blocks, r, None);
                        }
                    }
                    other => {
                        return Err(bad_part(
                            i,
                            j,
                            other,
                            "assistant messages accept only text and refusal parts",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// (id, name, input) of an assistant `tool_calls` entry.
fn tool_call<'b>(
    c: &'b ToolCall<'_>,
    i: usize,
    j: usize,
) -> Result<(&'b str, &'b str, ToolInput<'b>), RequestError> {
    let p = |f: &str| format!("messages[{i}].tool_calls[{j}].{f}");
    let id = match c.id.as_deref() {
        Some(id) if !id.is_empty() => id,
        _ => {
            return Err(missing(p("id")));
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
        return Err(missing(p("function")));
    };
    let pf = |x: &str| format!("messages[{i}].tool_calls[{j}].function.{x}");
    let (name, input) = function_call(f, &pf)?;
    Ok((id, name, input))
}

fn bad_part(i: usize, j: usize, kind: Option<&str>, why: &str) -> RequestError {
    match kind {
        None => missing(format!("messages[{i}].content[{j}].type")),
        Some(k) => RequestError::new(
            format!("messages[{i}].content[{j}].type"),
            "unsupported_value",
            format_args!("unsupported content part type {k:?}: {why}"),
        ),
    }
}

fn text_of<'p, 'a>(p: &'p Part<'a>, i: usize, j: usize) -> Result<&'p Str<'a>, RequestError> {
    p.text
        .as_ref()
        .ok_or_else(|| missing(format!("messages[{i}].content[{j}].text")))
}

/// Anthropic rejects empty and whitespace-only text blocks: they are skipped.
pub(crate) fn push_text<'b>(
    blocks: &mut Vec<Block<'b>>,
    t: &'b str,
    cache_control: Option<&'b RawValue>,
) {
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
                return Err(missing(param()));
            };
            blocks.push(Block::Image {
                source: image_source(url, param)?,
                cache_control: p.cache_control,
            });
        }
        Some("file") => {
            let param = |f: &str| format!("messages[{i}].content[{j}].file.{f}");
            let Some(f) = &p.file else {
                return Err(missing(format!("messages[{i}].content[{j}].file")));
            };
            let Some(data) = f.file_data.as_deref() else {
                let what = if f.file_id.is_some() {
                    "uploaded file ids are not supported; send the file inline as file_data"
                } else {
                    "missing required field"
                };
                return Err(RequestError::new(
                    param("file_data"),
                    "unsupported_value",
                    what,
                ));
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
            return Err(bad_part(
                i,
                j,
                Some("input_audio"),
                "Claude does not accept audio input",
            ));
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
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    // Parameters such as `;charset=` before `;base64` are not expected for images/PDFs.
    if media.is_empty() || media.contains(';') || data.is_empty() {
        return None;
    }
    Some((media, data))
}

pub(crate) fn image_source<'b>(
    url: &'b str,
    param: impl Fn() -> String,
) -> Result<Source<'b>, RequestError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url).ok_or_else(|| {
            invalid(
                param(),
                "expected a data: URL of the form data:image/png;base64,<data>",
            )
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
) -> Result<(&'b str, ToolInput<'b>), RequestError> {
    let name = match f.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(missing(p("name")));
        }
    };
    Ok((name, tool_input(f.arguments, &|| p("arguments"))?))
}

/// A tool call's `arguments` as a `tool_use` input: a JSON string holding a JSON object (or
/// empty), or (leniently) an object or null. `param` names the field in errors.
pub(crate) fn tool_input<'b>(
    arguments: Option<&'b RawValue>,
    param: &dyn Fn() -> String,
) -> Result<ToolInput<'b>, RequestError> {
    let not_object = || invalid(param(), "must be a JSON object encoded as a string");
    let input = match arguments {
        None => ToolInput::Empty,
        Some(raw) => {
            let r = raw.get();
            match r.as_bytes().first() {
                Some(b'{') => ToolInput::Borrowed(raw),
                Some(b'n') => ToolInput::Empty, // null
                Some(b'"') => {
                    let s: String = serde_json::from_str(r).map_err(|_| not_object())?;
                    if s.trim().is_empty() {
                        ToolInput::Empty
                    } else {
                        let v = RawValue::from_string(s).map_err(|e| {
                            let mut what = e.to_string();
                            if let Some(i) = what.rfind(" at line ") {
                                what.truncate(i);
                            }
                            invalid(param(), format_args!("is not valid JSON: {what}"))
                        })?;
                        if !v.get().trim_start().starts_with('{') {
                            return Err(not_object());
                        }
                        ToolInput::Owned(v)
                    }
                }
                _ => return Err(not_object()),
            }
        }
    };
    Ok(input)
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
                        return Err(bad_part(
                            i,
                            j,
                            other,
                            "tool messages accept text and image_url parts",
                        ));
                    }
                }
            }
        }
    }
    Ok(blocks)
}

/// Anthropic ids match `^[a-zA-Z0-9_-]+$`; other characters become `_` (consistently for calls
/// and results, so pairs still match).
pub(crate) fn sanitize_id(id: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.chars().all(ok) {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(id.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

/// True when the assistant turns after the last real user input (the current tool loop, or a
/// prefill) do not start with a thinking block: Anthropic then rejects enabled thinking.
pub(crate) fn lacks_required_thinking(turns: &[Turn<'_>]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn aliases() -> &'static ModelAliases {
        static A: std::sync::OnceLock<ModelAliases> = std::sync::OnceLock::new();
        A.get_or_init(ModelAliases::with_defaults)
    }

    fn opts() -> ConvertOptions<'static> {
        ConvertOptions {
            default_max_tokens: 4096,
            aliases: aliases(),
            auto_cache: false,
        }
    }

    fn convert_full(v: &Value) -> Result<ConvertedRequest, RequestError> {
        chat_to_messages(&serde_json::to_vec(v).unwrap(), &opts())
    }

    #[track_caller]
    fn conv(v: Value) -> Value {
        let c = convert_full(&v).unwrap_or_else(|e| panic!("unexpected error: {e}"));
        serde_json::from_slice(&c.body).unwrap()
    }

    #[track_caller]
    fn err(v: Value) -> RequestError {
        match convert_full(&v) {
            Ok(c) => panic!(
                "expected an error, got {}",
                String::from_utf8_lossy(&c.body)
            ),
            Err(e) => e,
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    /// A request for `model` with one user message plus `extra` top-level fields.
    fn req(model: &str, extra: Value) -> Value {
        let mut v = json!({"model": model, "messages": [user("hi")]});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    fn fixture(path: &str) -> Vec<u8> {
        let p = format!("{}/../shared/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn fixture_requests_snapshot() {
        for name in [
            "chat_completions_stream.request.json",
            "chat_completions_tools_stream.request.json",
        ] {
            let body = fixture(&format!("openai-chunks/{name}"));
            let c = chat_to_messages(&body, &opts()).unwrap();
            assert_eq!(c.client_model, "gpt-4o");
            assert_eq!(c.upstream_model, super::super::models::DEFAULT_SONNET);
            assert!(c.stream);
            assert!(!c.include_usage);
            let v: Value = serde_json::from_slice(&c.body).unwrap();
            let snap = format!("fixture_{}", name.trim_end_matches(".request.json"));
            insta::assert_json_snapshot!(snap, v);
        }
        let sdk: Value =
            serde_json::from_slice(&fixture("clients/openai_python_sdk.json")).unwrap();
        let c = convert_full(&sdk["body"]).unwrap();
        assert_eq!(c.client_model, "x");
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v,
            json!({"model": super::super::models::DEFAULT_SONNET, "max_tokens": 4096,
                "messages": [{"role": "user", "content": "hi"}], "stream": true})
        );
    }

    #[test]
    fn kitchen_sink_snapshot() {
        let v = conv(json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
                {"role": "user", "content": "Thanks. Summarise."}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time", "parameters": {}}}
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "max_completion_tokens": 500,
            "temperature": 0.2,
            "top_p": null,
            "stop": ["END"],
            "user": "user-42",
            "seed": 7, "logprobs": true, "presence_penalty": 0.5, "frequency_penalty": 0.1,
            "logit_bias": {"50256": -100}, "store": false, "metadata": {"a": "b"}
        }));
        insta::assert_json_snapshot!("kitchen_sink", v);
    }

    #[test]
    fn system_and_developer_hoisted_in_order() {
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            {"role": "system", "content": "A"},
            user("hi"),
            {"role": "developer", "content": "B"},
        ]}));
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "A"}, {"type": "text", "text": "B"}])
        );
        assert_eq!(v["messages"], json!([{"role": "user", "content": "hi"}]));
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            {"role": "system", "content": "Only"}, user("hi")]}));
        assert_eq!(v["system"], json!("Only"));
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            {"role": "system", "content": [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]},
            user("hi")]}));
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}])
        );
    }

    #[test]
    fn consecutive_turns_merge() {
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            user("a"), user("b"),
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            user("e"),
        ]}));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
                {"role": "user", "content": "e"}
            ])
        );
    }

    #[test]
    fn tool_results_merge_into_one_user_turn_first_and_in_order() {
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            user("q"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
            {"role": "tool", "tool_call_id": "b", "content": "B"},
            user("and also"),
            {"role": "tool", "tool_call_id": "a", "content": "A"},
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                {"type": "tool_use", "id": "b", "name": "f", "input": {"x": 1}}]})
        );
        assert_eq!(
            v["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "b", "content": "B"},
                {"type": "tool_result", "tool_use_id": "a", "content": "A"},
                {"type": "text", "text": "and also"}]})
        );
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn tool_message_without_matching_call_is_400() {
        let e = err(json!({"model": "gpt-4o", "messages": [
            user("q"),
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "zzz", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[2].tool_call_id"));
        assert!(
            e.message.starts_with("messages[2].tool_call_id: \"zzz\""),
            "{}",
            e.message
        );
        // A later call does not count.
        let e = err(json!({"model": "gpt-4o", "messages": [
            user("q"),
            {"role": "tool", "tool_call_id": "a", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"));
        let e = err(
            json!({"model": "gpt-4o", "messages": [user("q"), {"role": "tool", "content": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"));
    }

    #[test]
    fn images() {
        let img = |url: &str| {
            json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})
        };
        let v = conv(img("data:image/jpeg;base64,/9j/4AAQ"));
        assert_eq!(
            v["messages"][0]["content"][0],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}})
        );
        let v = conv(img("data:image/jpg;base64,AAAA"));
        assert_eq!(
            v["messages"][0]["content"][0]["source"]["media_type"],
            "image/jpeg"
        );
        let v = conv(img("https://example.com/a.webp"));
        assert_eq!(
            v["messages"][0]["content"][0],
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.webp"}})
        );
        // The string shorthand some clients send.
        let v = conv(
            json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": "https://example.com/b.png"}]}]}),
        );
        assert_eq!(
            v["messages"][0]["content"][0]["source"]["url"],
            "https://example.com/b.png"
        );

        for (url, code) in [
            ("data:image/bmp;base64,AAAA", "unsupported_value"),
            ("data:image/png,rawdata", "invalid_value"),
            ("data:image/png;base64,", "invalid_value"),
            ("ftp://example.com/a.png", "invalid_value"),
            ("file:///etc/passwd", "invalid_value"),
        ] {
            let e = err(img(url));
            assert_eq!(
                e.param.as_deref(),
                Some("messages[0].content[0].image_url.url"),
                "{url}"
            );
            assert_eq!(e.code, Some(code), "{url}");
        }
        let e = err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {}}]}]}),
        );
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
    }

    #[test]
    fn content_parts_errors() {
        let part = |p: Value| json!({"model": "m", "messages": [{"role": "user", "content": [p]}]});
        let e = err(part(
            json!({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}),
        ));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = err(part(json!({"type": "weird"})));
        assert!(e.message.contains("\"weird\""), "{}", e.message);
        let e = err(part(json!({"text": "no type"})));
        assert_eq!(e.code, Some("missing_required_parameter"));
        let e = err(part(json!({"type": "text"})));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].text"));
        let e = err(part(json!({"type": "file", "file": {"file_id": "file-1"}})));
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].file.file_data")
        );
        let e = err(json!({"model": "m", "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, user("hi")]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn pdf_file_part() {
        let v = conv(
            json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
            {"type": "text", "text": "Summarise"}]}]}),
        );
        assert_eq!(
            v["messages"][0]["content"][0],
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "a.pdf"})
        );
        let e = err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}]}]}),
        );
        assert_eq!(e.code, Some("unsupported_value"));
    }

    #[test]
    fn tools_and_legacy_functions() {
        let v = conv(req(
            "claude-haiku-4-5",
            json!({
                "tools": [{"type": "function", "function": {"name": "a", "description": "", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": true}}],
                "functions": [{"name": "b", "description": "legacy"}]
            }),
        ));
        assert_eq!(
            v["tools"],
            json!([
                {"name": "a", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"name": "b", "description": "legacy", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert!(v.get("tool_choice").is_none());
        let e = err(req(
            "m",
            json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = err(req("m", json!({"tools": [{"type": "function"}]})));
        assert_eq!(e.param.as_deref(), Some("tools[0].function"));
        let e = err(req(
            "m",
            json!({"tools": [{"type": "function", "function": {"description": "x"}}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].function.name"));
        let e = err(req("m", json!({"functions": [{"parameters": {}}]})));
        assert_eq!(e.param.as_deref(), Some("functions[0].name"));
    }

    #[test]
    fn tool_choice_table() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let cases = [
            (json!({"tool_choice": "none"}), json!({"type": "none"})),
            (json!({"tool_choice": "auto"}), json!({"type": "auto"})),
            (json!({"tool_choice": "required"}), json!({"type": "any"})),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
                json!({"type": "tool", "name": "f"}),
            ),
            (json!({"function_call": "none"}), json!({"type": "none"})),
            (json!({"function_call": "auto"}), json!({"type": "auto"})),
            (
                json!({"function_call": {"name": "f"}}),
                json!({"type": "tool", "name": "f"}),
            ),
            (
                json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}}),
                json!({"type": "any"}),
            ),
            (
                json!({"parallel_tool_calls": false}),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (
                json!({"tool_choice": "required", "parallel_tool_calls": false}),
                json!({"type": "any", "disable_parallel_tool_use": true}),
            ),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false}),
                json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
            ),
            (
                json!({"tool_choice": "none", "parallel_tool_calls": false}),
                json!({"type": "none"}),
            ),
            (json!({"parallel_tool_calls": true}), Value::Null),
            (
                json!({"tool_choice": "auto", "function_call": "none"}),
                json!({"type": "auto"}),
            ),
        ];
        for (extra, want) in cases {
            let mut e = extra.clone();
            e["tools"] = tools.clone();
            let v = conv(req("claude-haiku-4-5", e));
            assert_eq!(
                v.get("tool_choice").cloned().unwrap_or(Value::Null),
                want,
                "{extra}"
            );
        }
        // Without tools, tool_choice is dropped.
        let v = conv(req("claude-haiku-4-5", json!({"tool_choice": "required"})));
        assert!(v.get("tool_choice").is_none());
        let e = err(req(
            "m",
            json!({"tool_choice": "sometimes", "tools": tools}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = err(req(
            "m",
            json!({"tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": tools}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice.function.name"));
        let e = err(req(
            "m",
            json!({"function_call": {"name": "g"}, "tools": tools}),
        ));
        assert_eq!(e.param.as_deref(), Some("function_call.name"));
        let e = err(req(
            "m",
            json!({"tool_choice": {"type": "function"}, "tools": tools}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice.function.name"));
    }

    #[test]
    fn max_tokens_table() {
        let cases = [
            (json!({}), 4096),
            (json!({"max_tokens": 100}), 100),
            (json!({"max_completion_tokens": 200}), 200),
            (
                json!({"max_completion_tokens": 200, "max_tokens": 100}),
                200,
            ),
            (
                json!({"max_completion_tokens": null, "max_tokens": 100}),
                100,
            ),
        ];
        for (extra, want) in cases {
            let v = conv(req("claude-haiku-4-5", extra.clone()));
            assert_eq!(v["max_tokens"], want, "{extra}");
        }
        let e = err(req("m", json!({"max_tokens": 0})));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(req("m", json!({"max_completion_tokens": -5})));
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
        assert_eq!(e.code, Some("invalid_type"));
    }

    #[test]
    fn stop_table() {
        let cases = [
            (json!({"stop": "END"}), json!(["END"])),
            (json!({"stop": ["a", "", "b"]}), json!(["a", "b"])),
            (json!({"stop": "\n"}), json!(["\n"])),
            (json!({"stop": ""}), Value::Null),
            (json!({"stop": []}), Value::Null),
            (json!({"stop": null}), Value::Null),
        ];
        for (extra, want) in cases {
            let v = conv(req("claude-haiku-4-5", extra.clone()));
            assert_eq!(
                v.get("stop_sequences").cloned().unwrap_or(Value::Null),
                want,
                "{extra}"
            );
        }
        let e = err(req("m", json!({"stop": 5})));
        assert_eq!(e.param.as_deref(), Some("stop"));
        let e = err(req("m", json!({"stop": ["a", 1]})));
        assert_eq!(e.param.as_deref(), Some("stop[1]"));
    }

    #[test]
    fn sampling_table() {
        // (model, extra, temperature, top_p)
        let cases = [
            (
                "claude-haiku-4-5",
                json!({"temperature": 0.7, "top_p": 0.9}),
                json!(0.7),
                json!(0.9),
            ),
            (
                "claude-haiku-4-5",
                json!({"temperature": null, "top_p": null}),
                Value::Null,
                Value::Null,
            ),
            (
                "claude-haiku-4-5",
                json!({"temperature": 1.8}),
                json!(1.0),
                Value::Null,
            ),
            (
                "claude-haiku-4-5",
                json!({"temperature": 0}),
                json!(0.0),
                Value::Null,
            ),
            // Models that reject sampling parameters.
            (
                "claude-sonnet-5",
                json!({"temperature": 0.7, "top_p": 0.9}),
                Value::Null,
                Value::Null,
            ),
            (
                "gpt-4o",
                json!({"temperature": 0.7}),
                Value::Null,
                Value::Null,
            ),
            (
                "claude-opus-4-8",
                json!({"top_p": 0.5}),
                Value::Null,
                Value::Null,
            ),
            // Thinking on: dropped.
            (
                "claude-haiku-4-5",
                json!({"temperature": 0.7, "reasoning_effort": "low"}),
                Value::Null,
                Value::Null,
            ),
            (
                "claude-sonnet-4-6",
                json!({"top_p": 0.9, "reasoning_effort": "high"}),
                Value::Null,
                Value::Null,
            ),
            (
                "claude-sonnet-4-6",
                json!({"top_p": 0.9}),
                Value::Null,
                json!(0.9),
            ),
        ];
        for (model, extra, t, p) in cases {
            let v = conv(req(model, extra.clone()));
            assert_eq!(
                v.get("temperature").cloned().unwrap_or(Value::Null),
                t,
                "{model} {extra}"
            );
            assert_eq!(
                v.get("top_p").cloned().unwrap_or(Value::Null),
                p,
                "{model} {extra}"
            );
        }
    }

    #[test]
    fn reasoning_effort_table() {
        // (model, extra, thinking, output_config, max_tokens)
        let cases = [
            (
                "claude-haiku-4-5",
                json!({}),
                Value::Null,
                Value::Null,
                4096,
            ),
            (
                "claude-haiku-4-5",
                json!({"reasoning_effort": "none"}),
                Value::Null,
                Value::Null,
                4096,
            ),
            (
                "claude-haiku-4-5",
                json!({"reasoning_effort": "minimal"}),
                json!({"type": "enabled", "budget_tokens": 1024}),
                Value::Null,
                4096,
            ),
            (
                "claude-haiku-4-5",
                json!({"reasoning_effort": "low"}),
                json!({"type": "enabled", "budget_tokens": 2048}),
                Value::Null,
                4096,
            ),
            (
                "claude-haiku-4-5",
                json!({"reasoning_effort": "medium"}),
                json!({"type": "enabled", "budget_tokens": 8192}),
                Value::Null,
                8192 + 4096,
            ),
            (
                "claude-sonnet-4-5",
                json!({"reasoning_effort": "high", "max_tokens": 20000}),
                json!({"type": "enabled", "budget_tokens": 16384}),
                Value::Null,
                20000,
            ),
            (
                "claude-sonnet-4-5",
                json!({"reasoning_effort": "high", "max_tokens": 100}),
                json!({"type": "enabled", "budget_tokens": 16384}),
                Value::Null,
                16484,
            ),
            (
                "claude-sonnet-4-5",
                json!({"reasoning_effort": "minimal", "max_tokens": 1024}),
                json!({"type": "enabled", "budget_tokens": 1024}),
                Value::Null,
                2048,
            ),
            (
                "claude-opus-4-1",
                json!({"reasoning_effort": "xhigh", "max_completion_tokens": 30000}),
                json!({"type": "enabled", "budget_tokens": 24576}),
                Value::Null,
                30000,
            ),
            (
                "claude-sonnet-4-6",
                json!({"reasoning_effort": "medium"}),
                json!({"type": "adaptive"}),
                json!({"effort": "medium"}),
                4096,
            ),
            (
                "claude-sonnet-4-6",
                json!({}),
                Value::Null,
                Value::Null,
                4096,
            ),
            (
                "claude-sonnet-4-6",
                json!({"reasoning_effort": "none"}),
                Value::Null,
                Value::Null,
                4096,
            ),
            (
                "claude-sonnet-5",
                json!({"reasoning_effort": "minimal"}),
                json!({"type": "adaptive"}),
                json!({"effort": "low"}),
                4096,
            ),
            (
                "claude-opus-4-8",
                json!({"reasoning_effort": "xhigh"}),
                json!({"type": "adaptive"}),
                json!({"effort": "high"}),
                4096,
            ),
            ("claude-sonnet-5", json!({}), Value::Null, Value::Null, 4096),
            (
                "claude-sonnet-5",
                json!({"reasoning_effort": "none"}),
                json!({"type": "disabled"}),
                Value::Null,
                4096,
            ),
            (
                "claude-fable-5",
                json!({"reasoning_effort": "none"}),
                Value::Null,
                Value::Null,
                4096,
            ),
            (
                "claude-fable-5",
                json!({"reasoning_effort": "high"}),
                json!({"type": "adaptive"}),
                json!({"effort": "high"}),
                4096,
            ),
        ];
        for (model, extra, thinking, oc, max) in cases {
            let v = conv(req(model, extra.clone()));
            assert_eq!(
                v.get("thinking").cloned().unwrap_or(Value::Null),
                thinking,
                "{model} {extra}"
            );
            assert_eq!(
                v.get("output_config").cloned().unwrap_or(Value::Null),
                oc,
                "{model} {extra}"
            );
            assert_eq!(v["max_tokens"], max, "{model} {extra}");
            if let Some(b) = v["thinking"]["budget_tokens"].as_u64() {
                assert!(b >= 1024 && b < v["max_tokens"].as_u64().unwrap());
            }
        }
        let e = err(req("m", json!({"reasoning_effort": "extreme"})));
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
    }

    #[test]
    fn thinking_kept_off_when_tool_forced_or_blocks_missing() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        // Forced tool use.
        let v = conv(req(
            "claude-haiku-4-5",
            json!({"reasoning_effort": "low", "tools": tools, "tool_choice": "required"}),
        ));
        assert!(v.get("thinking").is_none());
        let v = conv(req(
            "claude-sonnet-5",
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ));
        assert_eq!(v["thinking"], json!({"type": "disabled"}));
        // Mid tool loop without the thinking blocks handed back.
        let loop_msgs = |tb: Value| {
            json!([
                user("q"),
                {"role": "assistant", "content": null, "thinking_blocks": tb, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "r"}
            ])
        };
        let v = conv(
            json!({"model": "claude-haiku-4-5", "reasoning_effort": "low", "tools": tools, "messages": loop_msgs(Value::Null)}),
        );
        assert!(v.get("thinking").is_none());
        let v = conv(
            json!({"model": "claude-sonnet-5", "tools": tools, "messages": loop_msgs(Value::Null)}),
        );
        assert_eq!(v["thinking"], json!({"type": "disabled"}));
        // ...and with them: thinking stays on and the blocks come first.
        let tb = json!([
            {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "thinking", "thinking": "unsigned"},
            {"type": "other"}
        ]);
        let v = conv(
            json!({"model": "claude-haiku-4-5", "reasoning_effort": "low", "tools": tools, "messages": loop_msgs(tb.clone())}),
        );
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(
            v["messages"][1]["content"],
            json!([
                {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
            ])
        );
        // A finished earlier loop does not matter once the user spoke again.
        let mut msgs = loop_msgs(Value::Null);
        msgs.as_array_mut()
            .unwrap()
            .push(json!({"role": "assistant", "content": "done"}));
        msgs.as_array_mut().unwrap().push(user("next"));
        let v = conv(
            json!({"model": "claude-haiku-4-5", "reasoning_effort": "low", "tools": tools, "messages": msgs}),
        );
        assert_eq!(v["thinking"]["type"], "enabled");
    }

    #[test]
    fn response_format_table() {
        let v = conv(req(
            "claude-haiku-4-5",
            json!({"response_format": {"type": "text"}}),
        ));
        assert!(v.get("system").is_none());
        let v = conv(req(
            "claude-haiku-4-5",
            json!({"response_format": {"type": "json_object"}}),
        ));
        let s = v["system"].as_str().unwrap();
        assert!(
            s.contains("JSON object") && s.contains("code fences"),
            "{s}"
        );
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let with_schema = |model: &str, extra: Value| {
            let mut r = json!({"model": model,
                "messages": [{"role": "system", "content": "Be brief."}, user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "description": "A person",
                    "schema": schema, "strict": true}}});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            conv(r)
        };
        // No structured outputs (Claude 3.7): the instruction.
        let v = with_schema("claude-3-7-sonnet-20250219", json!({}));
        assert!(v.get("output_config").is_none());
        insta::assert_json_snapshot!("response_format_json_schema", v["system"]);
        // Structured outputs: the schema goes native, verbatim, and no instruction is added.
        for model in [
            "claude-haiku-4-5",
            "claude-opus-4-1",
            "claude-sonnet-4-6",
            "claude-sonnet-5",
            "claude-fable-5",
        ] {
            let v = with_schema(model, json!({}));
            assert_eq!(
                v["output_config"],
                json!({"format": {"type": "json_schema", "schema": schema}}),
                "{model}"
            );
            assert_eq!(v["system"], "Be brief.", "{model}");
        }
        // Beside the effort of adaptive thinking.
        let v = with_schema("claude-sonnet-5", json!({"reasoning_effort": "high"}));
        assert_eq!(
            v["output_config"],
            json!({"effort": "high", "format": {"type": "json_schema", "schema": schema}})
        );
        assert_eq!(v["thinking"], json!({"type": "adaptive"}));
        // A schema not marked strict may use what structured outputs refuse: the instruction.
        for strict in [json!(false), Value::Null] {
            let v = conv(req(
                "claude-sonnet-5",
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "person",
                    "schema": schema, "strict": strict}}}),
            ));
            assert!(v.get("output_config").is_none(), "strict {strict}");
            assert!(v["system"].as_str().unwrap().contains("named \"person\""));
        }
        // json_object has no native form; a json_schema without a schema neither.
        let v = conv(req(
            "claude-sonnet-5",
            json!({"response_format": {"type": "json_object"}}),
        ));
        assert!(v.get("output_config").is_none());
        assert!(v["system"].as_str().unwrap().contains("JSON object"));
        let v = conv(req(
            "claude-sonnet-5",
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": null}}}),
        ));
        assert!(v.get("output_config").is_none());
        assert!(v["system"].as_str().unwrap().contains("named \"x\""));
        // A schema that is not an object is refused on every model.
        for model in ["claude-sonnet-5", "claude-3-7-sonnet-20250219"] {
            for bad in [json!("object"), json!([1]), json!(true)] {
                let e = err(req(
                    model,
                    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}}),
                ));
                assert_eq!(
                    e.param.as_deref(),
                    Some("response_format.json_schema.schema"),
                    "{model} {bad}"
                );
            }
        }
        let e = err(req("m", json!({"response_format": {"type": "yaml"}})));
        assert_eq!(e.param.as_deref(), Some("response_format.type"));
        let e = err(req(
            "m",
            json!({"response_format": {"type": "json_schema"}}),
        ));
        assert_eq!(e.param.as_deref(), Some("response_format.json_schema"));
    }

    #[test]
    fn user_metadata_stream_and_include_usage() {
        let v = conv(req("claude-haiku-4-5", json!({"user": "u1"})));
        assert_eq!(v["metadata"], json!({"user_id": "u1"}));
        let v = conv(req("claude-haiku-4-5", json!({"safety_identifier": "s1"})));
        assert_eq!(v["metadata"], json!({"user_id": "s1"}));
        let v = conv(req("claude-haiku-4-5", json!({"user": ""})));
        assert!(v.get("metadata").is_none());
        for (extra, stream, usage) in [
            (json!({}), false, false),
            (json!({"stream": true}), true, false),
            (
                json!({"stream": true, "stream_options": {"include_usage": true}}),
                true,
                true,
            ),
            (
                json!({"stream": false, "stream_options": {"include_usage": true}}),
                false,
                false,
            ),
            (
                json!({"stream": null, "stream_options": null}),
                false,
                false,
            ),
        ] {
            let c = convert_full(&req("claude-haiku-4-5", extra.clone())).unwrap();
            assert_eq!((c.stream, c.include_usage), (stream, usage), "{extra}");
            let v: Value = serde_json::from_slice(&c.body).unwrap();
            assert_eq!(v.get("stream").is_some(), stream);
        }
    }

    #[test]
    fn n_must_be_one() {
        let e = err(req("m", json!({"n": 3})));
        assert_eq!(e.param.as_deref(), Some("n"));
        assert_eq!(e.code, Some("unsupported_value"));
        assert!(e.message.starts_with("n: "), "{}", e.message);
        assert!(err(req("m", json!({"n": 0}))).param.as_deref() == Some("n"));
        conv(req("m", json!({"n": 1})));
        conv(req("m", json!({"n": null})));
    }

    #[test]
    fn ignored_fields_change_nothing() {
        let base = conv(req("claude-haiku-4-5", json!({})));
        let v = conv(req(
            "claude-haiku-4-5",
            json!({"logprobs": true, "top_logprobs": 5, "seed": 1, "presence_penalty": 1.0,
                "frequency_penalty": -1.0, "logit_bias": {"1": 2}, "store": true, "metadata": {"k": "v"},
                "service_tier": "flex", "modalities": ["text"], "verbosity": "low", "prediction": {"type": "content", "content": "x"},
                "prompt_cache_key": "k", "something_new": [1, 2]}),
        ));
        assert_eq!(v, base);
    }

    #[test]
    fn service_tier_maps_where_anthropic_has_one() {
        for (openai, anthropic) in [
            ("auto", json!("auto")),
            ("priority", json!("auto")),
            ("default", json!("standard_only")),
            ("flex", Value::Null),
            ("scale", Value::Null),
        ] {
            let v = conv(req("claude-haiku-4-5", json!({"service_tier": openai})));
            assert_eq!(
                v.get("service_tier").cloned().unwrap_or(Value::Null),
                anthropic,
                "{openai}"
            );
        }
    }

    #[test]
    fn bad_input_errors_name_the_field() {
        let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
            (b"{not json".to_vec(), None, "invalid_json"),
            (b"".to_vec(), None, "invalid_json"),
            (b"[1,2]".to_vec(), None, "invalid_type"),
            (br#"{"model":"m"}"#.to_vec(), Some("messages"), "missing_required_parameter"),
            (br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(), Some("model"), "missing_required_parameter"),
            (br#"{"model":"m","messages":[]}"#.to_vec(), Some("messages"), "invalid_value"),
            (br#"{"model":"m","messages":{}}"#.to_vec(), Some("messages"), "invalid_type"),
            (br#"{"model":5,"messages":[]}"#.to_vec(), Some("model"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":5}]}"#.to_vec(), Some("messages[0].content"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":7}]}"#.to_vec(), Some("messages[1].role"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"foo","content":"x"}]}"#.to_vec(), Some("messages[1].role"), "invalid_value"),
            (br#"{"model":"m","messages":[{"content":"x"}]}"#.to_vec(), Some("messages[0].role"), "missing_required_parameter"),
            (br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":3}]}]}"#.to_vec(), Some("messages[0].content[0].text"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.to_vec(), Some("temperature"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":5}"#.to_vec(), Some("tool_choice"), "invalid_type"),
            (br#"{"model":"m","messages":[{"role":"user","content":""}]}"#.to_vec(), Some("messages"), "invalid_value"),
            (br#"{"model":"m","messages":[{"role":"system","content":"only system"}]}"#.to_vec(), Some("messages"), "invalid_value"),
        ];
        for (body, param, code) in cases {
            let e = chat_to_messages(&body, &opts()).unwrap_err();
            let shown = String::from_utf8_lossy(&body);
            assert_eq!(e.param.as_deref(), param, "{shown}: {}", e.message);
            assert_eq!(e.code, Some(code), "{shown}: {}", e.message);
            if let Some(p) = param {
                assert!(e.message.starts_with(&format!("{p}: ")), "{}", e.message);
            }
            if code != "invalid_json" {
                assert!(!e.message.contains(" at line "), "{}", e.message);
            }
            let body =
                crate::error::ProxyError::from(e.clone()).body(crate::routes::Dialect::OpenAi);
            let env: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(env["error"]["type"], "invalid_request_error");
            assert_eq!(env["error"]["message"], e.message.as_str());
        }
        let e = chat_to_messages(
            br#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"foo"}]}"#,
            &opts(),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            r#"messages[1].role: unknown role "foo" (expected system, developer, user, assistant or tool)"#
        );
    }

    #[test]
    fn tool_call_arguments() {
        let call = |args: Value| {
            json!({"model": "claude-haiku-4-5", "tools": [{"type": "function", "function": {"name": "f"}}], "messages": [
                user("q"),
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]})
        };
        for (args, input) in [
            (
                json!("{\"a\": [1, 2], \"b\": \"x\"}"),
                json!({"a": [1, 2], "b": "x"}),
            ),
            (json!(""), json!({})),
            (json!("  "), json!({})),
            (json!(null), json!({})),
            (json!({"already": "object"}), json!({"already": "object"})),
        ] {
            let v = conv(call(args.clone()));
            assert_eq!(v["messages"][1]["content"][0]["input"], input, "{args}");
        }
        for args in [
            json!("not json"),
            json!("[1]"),
            json!("42"),
            json!(5),
            json!("{\"a\":"),
        ] {
            let e = err(call(args.clone()));
            assert_eq!(
                e.param.as_deref(),
                Some("messages[1].tool_calls[0].function.arguments"),
                "{args}"
            );
        }
        let e = err(
            json!({"model": "m", "messages": [user("q"), {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_calls[0].id"));
        let e = err(
            json!({"model": "m", "messages": [user("q"), {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]}),
        );
        assert_eq!(
            e.param.as_deref(),
            Some("messages[1].tool_calls[0].function.name")
        );
    }

    #[test]
    fn history_tools_declared_when_request_has_none() {
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            user("q"),
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}]}));
        assert_eq!(
            v["tools"],
            json!([{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert_eq!(v["tool_choice"], json!({"type": "none"}));
    }

    #[test]
    fn legacy_function_messages() {
        let v = conv(
            json!({"model": "claude-haiku-4-5", "functions": [{"name": "f"}], "messages": [
            user("q"),
            {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{\"x\":1}"}},
            {"role": "function", "name": "f", "content": "42"}]}),
        );
        assert_eq!(
            v["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "call_legacy_1", "name": "f", "input": {"x": 1}}])
        );
        assert_eq!(
            v["messages"][2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "call_legacy_1", "content": "42"}])
        );
        let e = err(
            json!({"model": "m", "messages": [user("q"), {"role": "function", "name": "f", "content": "42"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn ids_are_sanitized_consistently() {
        let v = conv(
            json!({"model": "claude-haiku-4-5", "tools": [{"type": "function", "function": {"name": "f"}}], "messages": [
            user("q"),
            {"role": "assistant", "tool_calls": [{"id": "call:0/x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call:0/x", "content": "r"}]}),
        );
        assert_eq!(v["messages"][1]["content"][0]["id"], "call_0_x");
        assert_eq!(v["messages"][2]["content"][0]["tool_use_id"], "call_0_x");
    }

    #[test]
    fn empty_text_and_prefill_whitespace() {
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [
            user("q"),
            {"role": "assistant", "content": ""},
            user("again"),
            {"role": "assistant", "content": "Sure:  \n"}]}));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "again"}]},
                {"role": "assistant", "content": "Sure:"}
            ])
        );
        let v = conv(
            json!({"model": "claude-haiku-4-5", "messages": [user("q"), {"role": "assistant", "content": "   "}]}),
        );
        assert_eq!(v["messages"], json!([{"role": "user", "content": "q"}]));
        // An assistant refusal is kept as text.
        let v = conv(json!({"model": "claude-haiku-4-5", "messages": [user("q"),
            {"role": "assistant", "content": null, "refusal": "I can't."}, user("ok")]}));
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "I can't."})
        );
    }

    #[test]
    fn automatic_prompt_caching_unless_the_client_placed_breakpoints() {
        let cached = ConvertOptions {
            auto_cache: true,
            ..opts()
        };
        let conv_with = |v: Value, o: &ConvertOptions<'_>| -> Value {
            let c = chat_to_messages(&serde_json::to_vec(&v).unwrap(), o).unwrap();
            serde_json::from_slice(&c.body).unwrap()
        };
        let plain = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            conv_with(plain.clone(), &cached)["cache_control"],
            json!({"type": "ephemeral"})
        );
        let mut day = plain.clone();
        day["prompt_cache_retention"] = json!("24h");
        assert_eq!(
            conv_with(day, &cached)["cache_control"],
            json!({"type": "ephemeral", "ttl": "1h"})
        );
        assert!(conv_with(plain, &opts()).get("cache_control").is_none());
        // The client's own breakpoint: kept, and no automatic one beside it.
        let own = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}]}]});
        let v = conv_with(own, &cached);
        assert!(v.get("cache_control").is_none(), "{v}");
        assert_eq!(
            v["messages"][0]["content"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
    }

    #[test]
    fn cache_control_on_parts_is_forwarded() {
        let v = conv(
            json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}),
        );
        assert_eq!(
            v["messages"][0]["content"],
            json!([{"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        );
    }

    #[test]
    fn escaped_strings_survive() {
        let v = conv(
            json!({"model": "claude-haiku-4-5", "messages": [user("line1\nline2 \"quoted\" \u{1F600} \\ end")]}),
        );
        assert_eq!(
            v["messages"][0]["content"],
            "line1\nline2 \"quoted\" \u{1F600} \\ end"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("model"),
                Just("messages"),
                Just("role"),
                Just("content"),
                Just("type"),
                Just("text"),
                Just("image_url"),
                Just("url"),
                Just("tool_calls"),
                Just("tool_call_id"),
                Just("id"),
                Just("function"),
                Just("name"),
                Just("arguments"),
                Just("parameters"),
                Just("tools"),
                Just("tool_choice"),
                Just("function_call"),
                Just("functions"),
                Just("stop"),
                Just("n"),
                Just("max_tokens"),
                Just("max_completion_tokens"),
                Just("temperature"),
                Just("top_p"),
                Just("reasoning_effort"),
                Just("response_format"),
                Just("json_schema"),
                Just("schema"),
                Just("thinking_blocks"),
                Just("thinking"),
                Just("signature"),
                Just("data"),
                Just("file"),
                Just("file_data"),
                Just("stream"),
                Just("stream_options"),
                Just("include_usage"),
                Just("parallel_tool_calls"),
                Just("user"),
                Just("cache_control"),
                Just("refusal"),
                Just("allowed_tools"),
                Just("mode"),
            ]
            .prop_map(str::to_owned)
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                (-3i64..70000).prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                prop_oneof![
                    Just("user"),
                    Just("assistant"),
                    Just("system"),
                    Just("developer"),
                    Just("tool"),
                    Just("function"),
                    Just("text"),
                    Just("image_url"),
                    Just("file"),
                    Just("function"),
                    Just("none"),
                    Just("auto"),
                    Just("required"),
                    Just("low"),
                    Just("high"),
                    Just("minimal"),
                    Just("json_object"),
                    Just("json_schema"),
                    Just("thinking"),
                    Just("redacted_thinking"),
                    Just("data:image/png;base64,AAAA"),
                    Just("https://x.y/z.png"),
                    Just("data:,"),
                    Just("{\"a\":1}"),
                    Just("{"),
                    Just(""),
                    Just(" "),
                    Just("c1"),
                    Just("gpt-4o"),
                    Just("claude-sonnet-5"),
                    Just("claude-haiku-4-5"),
                    Just("claude-sonnet-4-6"),
                    Just("data:application/pdf;base64,AA"),
                    Just("allowed_tools"),
                ]
                .prop_map(Value::from),
                ".{0,8}".prop_map(Value::from),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    proptest::collection::vec((key(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn never_panics_on_arbitrary_json(v in value()) {
                let body = serde_json::to_vec(&v).unwrap();
                if let Ok(c) = chat_to_messages(&body, &opts()) {
                    let out: Value = serde_json::from_slice(&c.body).unwrap();
                    prop_assert!(out["messages"].as_array().is_some_and(|m| !m.is_empty()));
                    prop_assert!(out["max_tokens"].as_u64().is_some_and(|m| m > 0));
                }
            }

            #[test]
            fn never_panics_on_request_shaped_json(
                msgs in proptest::collection::vec(value(), 1..6),
                extra in proptest::collection::vec((key(), value()), 0..6),
                model in leaf(),
            ) {
                let mut o = serde_json::Map::new();
                for (k, x) in extra {
                    o.insert(k, x);
                }
                o.insert("model".into(), model);
                o.insert("messages".into(), Value::Array(msgs));
                let body = serde_json::to_vec(&Value::Object(o)).unwrap();
                if let Ok(c) = chat_to_messages(&body, &opts()) {
                    let out: Value = serde_json::from_slice(&c.body).unwrap();
                    prop_assert!(out["messages"].as_array().is_some_and(|m| !m.is_empty()));
                }
            }

            #[test]
            fn never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = chat_to_messages(&b, &opts());
            }
        }
    }
}

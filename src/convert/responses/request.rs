//! Responses create body → Anthropic Messages body.
//!
//! The body is parsed once into borrowed types ([`crate::api::responses`]) and the Messages body is
//! written straight from them; the rules shared with the Chat converter (model aliases, thinking
//! and effort per model family, sampling, images, tool arguments, turn merging, the structured
//! output instruction) are the Chat converter's own functions ([`crate::convert::request`]).
//!
//! # Mapping
//!
//! | Responses | Anthropic |
//! |---|---|
//! | `instructions`, then `system` / `developer` messages (anywhere) | `system` text blocks, in order |
//! | `input` string | one user turn |
//! | `message` parts `input_text`, `output_text`, `refusal` | text blocks |
//! | `input_image` (`data:` or `http(s):` `image_url`) | image block (base64 / URL source) |
//! | `input_file` (`file_data` PDF data URL, or `file_url`) | document block (`filename` → title) |
//! | `function_call` | `tool_use` (`call_id` → id; `arguments` JSON text → input) |
//! | `custom_tool_call` | `tool_use` with input `{"input": <raw text>}` |
//! | `function_call_output`, `custom_tool_call_output` | `tool_result` (string or parts), consecutive outputs merged into one user turn, in order |
//! | `reasoning` with our `encrypted_content` | the identical thinking / redacted_thinking block (see [`super`]) |
//! | `item_reference` | the stored item, through the [`ItemResolver`] |
//! | `web_search_call` (history) | dropped: its results cannot be replayed |
//! | consecutive same-role turns | merged into one turn |
//! | `tools` `function` | tool (`parameters` → `input_schema`; `strict: true` kept where the model supports it) |
//! | `tools` `custom` | tool with one required string property `input` (a grammar goes in the description) |
//! | `tools` `web_search`, `web_search_preview` (dated too) | server tool `web_search_20250305` (`user_location`, `filters.allowed_domains` kept) |
//! | `tool_choice` | none / auto / required → any / `{type: function|custom, name}` → tool / `allowed_tools` → its mode |
//! | `parallel_tool_calls: false` | `disable_parallel_tool_use: true` |
//! | `max_output_tokens` ∨ default | `max_tokens` |
//! | `temperature`, `top_p` | as the Chat converter (dropped with thinking and for models that refuse them) |
//! | `reasoning.effort` | `thinking` (+ `output_config.effort`): the Chat converter's rules |
//! | `reasoning.summary` | [`ResponseContext::summaries`] |
//! | `text.format` `json_schema` with `strict: true`, on models with structured outputs | `output_config.format` |
//! | other `json_schema`, `json_object` | the Chat converter's system instruction |
//! | `user` ∨ `safety_identifier` | `metadata.user_id` |
//! | `prompt_cache_key` | top-level `cache_control: {"type":"ephemeral"}` (automatic caching) |
//! | `stream`, `store`, `previous_response_id`, `metadata` | [`ConvertedResponsesRequest`] / [`ResponseContext`] (not sent upstream) |
//!
//! ## Refused with a 400 naming the field
//! `background: true`, `conversation`, `prompt` (stored prompts), `top_logprobs` > 0, unknown
//! `truncation`, built-in tools other than web search (`file_search`, `code_interpreter`,
//! `computer_use_preview`, `image_generation`, `local_shell`, `mcp`, …), uploaded-file ids, an
//! output whose `call_id` no earlier call has, unknown item types, roles and part types, malformed
//! JSON and wrong types.
//!
//! `service_tier` maps as in the Chat converter; automatic prompt caching likewise.
//!
//! ## Accepted and ignored
//! `include`, `service_tier` `flex` and `scale`, `max_tool_calls`, `text.verbosity`,
//! `stream_options`, `client_metadata`, image `detail`, item `id` and `status`, and unknown fields.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{NamespacedTool, ResponseContext, ThinkingBlock, decode_reasoning, new_response_id};
use crate::api::anthropic::{
    Block, Metadata, Source, System, Thinking, ToolChoice, ToolChoiceKind, ToolDef, ToolInput, Turn,
};
use crate::api::openai;
use crate::api::responses::{
    Content, ContentPart, CreateRequest, Input, InputItem, Str, TextFormat, Tool,
    ToolChoice as RToolChoice,
};
use crate::convert::models::model_caps;
use crate::convert::request::{
    ConvertOptions, JsonSchema, RequestError, StructuredConfig, image_source, invalid,
    lacks_required_thinking, missing, parse_data_url, parse_effort, parse_error, push_text,
    push_turn, response_format_instruction, sampling, sanitize_id, schema_object, thinking,
    tool_input, trim_prefill,
};

/// Looks stored items up by id (for `item_reference`). The store comes with the pipeline; a
/// closure `Fn(&str) -> Option<Box<RawValue>>` is a resolver, and [`NoStore`] resolves nothing.
pub trait ItemResolver {
    /// The stored input or output item `id`, as its JSON.
    fn resolve(&self, id: &str) -> Option<Box<RawValue>>;
}

impl<F: Fn(&str) -> Option<Box<RawValue>>> ItemResolver for F {
    fn resolve(&self, id: &str) -> Option<Box<RawValue>> {
        self(id)
    }
}

/// A resolver without a store: every `item_reference` is unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl ItemResolver for NoStore {
    fn resolve(&self, _: &str) -> Option<Box<RawValue>> {
        None
    }
}

/// A converted request, ready to send upstream.
#[derive(Debug, Clone)]
pub struct ConvertedResponsesRequest {
    /// Anthropic Messages JSON.
    pub body: Vec<u8>,
    /// The Claude model sent upstream.
    pub upstream_model: String,
    pub stream: bool,
    /// `store` (default true): keep the input and output items under the response id.
    pub store: bool,
    /// The `previous_response_id` the request continues (its items were `prior`).
    pub previous_response_id: Option<String>,
    /// For the response or stream converter (holds the new `resp_…` id and the client's model).
    pub context: ResponseContext,
    /// `input` when it was a string (one user message) and the response is stored.
    pub input_text: Option<String>,
}

/// Converts a Responses create body into an Anthropic Messages body.
///
/// `prior`: the items of the response named by `previous_response_id` (its input items, then its
/// output items), converted before `input`; empty otherwise. `resolver` looks up
/// `item_reference`s. `created_at` is the response's creation time (Unix seconds).
pub fn responses_to_messages(
    body: &[u8],
    prior: &[Box<RawValue>],
    resolver: &dyn ItemResolver,
    opts: &ConvertOptions,
    created_at: u64,
) -> Result<ConvertedResponsesRequest, RequestError> {
    let req = parse(body)?;
    let client_model = client_model(&req)?;
    check_unsupported(&req)?;
    let upstream_model = opts.aliases.resolve(client_model);

    // Owners of everything the items borrow: the prior items, then the referenced ones.
    let prior_items = parse_prior(prior)?;
    let request_items: &[InputItem] = match &req.input {
        Some(Input::Items(v)) => v,
        _ => &[],
    };
    let listed = list_items(&prior_items, request_items);
    let referenced = fetch_references(&listed, resolver)?;
    let referenced_items = referenced
        .iter()
        .map(|raw| serde_json::from_str::<InputItem>(raw.get()))
        .collect::<Vec<_>>();
    let items = substitute_references(listed, &referenced_items)?;
    let decoded = decode_reasoning_items(&items);
    let names = Namespaces::of(&req, &items);

    let mut built = build(
        &req,
        &items,
        &decoded,
        &names,
        upstream_model,
        opts.default_max_tokens,
    )?;
    built.body.cache_control =
        crate::convert::request::auto_cache(body, opts, req.prompt_cache_retention.as_deref());
    let out = encode(&built.body, body.len() + 256)?;
    let mut context = context(&req, client_model, built.custom_tools, created_at);
    context.namespaced = names.0;
    Ok(ConvertedResponsesRequest {
        body: out,
        upstream_model: upstream_model.to_owned(),
        stream: req.stream.unwrap_or(false),
        store: req.store.unwrap_or(true),
        previous_response_id: req.previous_response_id.as_deref().map(str::to_owned),
        context,
        input_text: match &req.input {
            Some(Input::Text(t)) if req.store.unwrap_or(true) => Some(String::from(&**t)),
            _ => None,
        },
    })
}

/// The client's `model` (required).
fn client_model<'r>(req: &'r CreateRequest<'_>) -> Result<&'r str, RequestError> {
    match req.model.as_deref() {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(RequestError::new(
            "model",
            "missing_required_parameter",
            "missing required parameter",
        )),
    }
}

/// The stored items of the previous response, parsed.
fn parse_prior(prior: &[Box<RawValue>]) -> Result<Vec<InputItem<'_>>, RequestError> {
    prior
        .iter()
        .enumerate()
        .map(|(k, raw)| {
            serde_json::from_str::<InputItem>(raw.get()).map_err(|e| {
                invalid(
                    "previous_response_id",
                    format_args!("stored item {k} cannot be read: {e}"),
                )
            })
        })
        .collect()
}

/// The path of an input item or of one of its parts, for an error's `param`. Written out only
/// when an error names it: formatting one for every item and part cost hundreds of instructions
/// each on every request, and a coding agent's conversation has hundreds of items.
#[derive(Clone, Copy, Debug)]
enum Param<'a> {
    /// The `k`th item of the response `previous_response_id` continues.
    Prior(usize),
    /// `input[k]`.
    Input(usize),
    /// A part of an item: `{item}.{field}[{j}]`.
    Part(&'a Param<'a>, &'static str, usize),
}

impl std::fmt::Display for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Param::Prior(k) => write!(f, "previous_response_id[{k}]"),
            Param::Input(k) => write!(f, "input[{k}]"),
            Param::Part(item, field, j) => write!(f, "{item}.{field}[{j}]"),
        }
    }
}

/// The prior items, then the request's, each with its parameter path.
fn list_items<'a, 'i>(
    prior: &'a [InputItem<'i>],
    request: &'a [InputItem<'i>],
) -> Vec<(Param<'static>, &'a InputItem<'i>)> {
    prior
        .iter()
        .enumerate()
        .map(|(k, it)| (Param::Prior(k), it))
        .chain(
            request
                .iter()
                .enumerate()
                .map(|(k, it)| (Param::Input(k), it)),
        )
        .collect()
}

/// The stored items the `item_reference`s name, in order, as their JSON.
fn fetch_references(
    listed: &[(Param<'static>, &InputItem<'_>)],
    resolver: &dyn ItemResolver,
) -> Result<Vec<Box<RawValue>>, RequestError> {
    let mut referenced = Vec::new();
    for (param, it) in listed {
        if it.kind.as_deref() == Some("item_reference") {
            let id = match it.id.as_deref() {
                Some(id) if !id.is_empty() => id,
                _ => return Err(missing(format!("{param}.id"))),
            };
            let raw = resolver.resolve(id).ok_or_else(|| {
                invalid(
                    format!("{param}.id"),
                    format_args!("no stored item with id {id:?}"),
                )
            })?;
            referenced.push(raw);
        }
    }
    Ok(referenced)
}

/// `listed` with each `item_reference` replaced by the item it names (`referenced`, in order).
fn substitute_references<'a, 'i>(
    listed: Vec<(Param<'static>, &'a InputItem<'i>)>,
    referenced: &'a [serde_json::Result<InputItem<'i>>],
) -> Result<Vec<(Param<'static>, &'a InputItem<'i>)>, RequestError> {
    let mut refs = referenced.iter();
    let mut items = Vec::with_capacity(listed.len());
    for (param, it) in listed {
        if it.kind.as_deref() != Some("item_reference") {
            items.push((param, it));
            continue;
        }
        match refs.next() {
            Some(Ok(r)) if r.kind.as_deref() != Some("item_reference") => items.push((param, r)),
            _ => {
                return Err(invalid(
                    format!("{param}.id"),
                    "the stored item cannot be used as input",
                ));
            }
        }
    }
    Ok(items)
}

/// The thinking block each `reasoning` item carries (ours), by item.
fn decode_reasoning_items(
    items: &[(Param<'static>, &InputItem<'_>)],
) -> Vec<Option<ThinkingBlock>> {
    items
        .iter()
        .map(|(_, it)| {
            (it.kind.as_deref() == Some("reasoning"))
                .then(|| it.encrypted_content.as_deref().and_then(decode_reasoning))
                .flatten()
        })
        .collect()
}

fn encode(body: &Body<'_>, capacity: usize) -> Result<Vec<u8>, RequestError> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, body).map_err(|e| RequestError {
        message: format!("could not encode the converted request: {e}"),
        param: None,
        code: None,
    })?;
    Ok(out)
}

/// The `previous_response_id` a create body names, read before converting it (the caller fetches
/// that response's items and passes them as `prior`).
pub fn continued_id(body: &[u8]) -> Result<Option<String>, RequestError> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        previous_response_id: Option<String>,
    }
    let only: Only = serde_json::from_slice(body).map_err(|e| parse_error::<Only>(body, e))?;
    Ok(only.previous_response_id)
}

/// The request's `input` as items, as the store keeps them (a string input becomes one user
/// message item), each as its JSON.
pub fn input_items(body: &[u8]) -> Result<Vec<Box<RawValue>>, RequestError> {
    #[derive(serde::Deserialize)]
    struct Only<'a> {
        #[serde(borrow, default)]
        input: Option<&'a RawValue>,
    }
    let only: Only = serde_json::from_slice(body).map_err(|e| parse_error::<Only>(body, e))?;
    let Some(raw) = only.input else {
        return Ok(Vec::new());
    };
    if raw.get().starts_with('"') {
        let text: String =
            serde_json::from_str(raw.get()).map_err(|e| invalid("input", format_args!("{e}")))?;
        let item = serde_json::json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]});
        let raw = serde_json::value::to_raw_value(&item)
            .map_err(|e| invalid("input", format_args!("{e}")))?;
        return Ok(vec![raw]);
    }
    serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
        .map_err(|e| invalid("input", format_args!("must be a string or an array: {e}")))
}

fn parse(body: &[u8]) -> Result<CreateRequest<'_>, RequestError> {
    let first = body.iter().find(|c| !c.is_ascii_whitespace());
    if first.is_some_and(|c| *c != b'{') {
        return Err(RequestError {
            message: "the request body must be a JSON object".to_owned(),
            param: None,
            code: Some("invalid_type"),
        });
    }
    crate::util::json::from_bytes(body).map_err(|e| parse_error::<CreateRequest>(body, e))
}

/// Fields whose meaning the proxy cannot honour.
fn check_unsupported(req: &CreateRequest<'_>) -> Result<(), RequestError> {
    let unsupported = |param: &str, what: &str| {
        Err(RequestError::new(
            param.to_owned(),
            "unsupported_value",
            what.to_owned(),
        ))
    };
    if req.background == Some(true) {
        return unsupported(
            "background",
            "background responses are not supported by this proxy; send the request without background (stream it instead)",
        );
    }
    if req.conversation.is_some_and(|c| c.get() != "null") {
        return unsupported(
            "conversation",
            "conversations are not supported by this proxy; continue with previous_response_id",
        );
    }
    if req.prompt.is_some_and(|c| c.get() != "null") {
        return unsupported(
            "prompt",
            "stored prompt templates are not supported by this proxy; send instructions and input",
        );
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return unsupported("top_logprobs", "Claude does not return log probabilities");
    }
    match req.truncation.as_deref() {
        None | Some("auto" | "disabled") => {}
        Some(other) => {
            return Err(invalid(
                "truncation",
                format_args!("unknown value {other:?} (expected auto or disabled)"),
            ));
        }
    }
    if req.max_output_tokens == Some(0) {
        return Err(invalid("max_output_tokens", "must be at least 1"));
    }
    Ok(())
}

/// The settings echoed in the response, and what the answer's converters need.
fn context(
    req: &CreateRequest<'_>,
    client_model: &str,
    custom_tools: Vec<String>,
    created_at: u64,
) -> ResponseContext {
    let reasoning = req.reasoning.as_ref();
    let summary = reasoning.and_then(|r| r.summary.as_deref().or(r.generate_summary.as_deref()));
    // Built whole: every setting once (a default replaced later was built for nothing).
    ResponseContext {
        id: new_response_id(),
        created_at,
        model: client_model.to_owned(),
        custom_tools,
        namespaced: Vec::new(),
        summaries: summary.is_some_and(|s| s != "none"),
        instructions: req.instructions.as_deref().map(str::to_owned),
        previous_response_id: req.previous_response_id.as_deref().map(str::to_owned),
        metadata: json_value(req.metadata)
            .filter(|m| !m.is_null())
            .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
        tools: Value::Array(
            req.tools
                .iter()
                .flatten()
                .map(echo_tool)
                .collect::<Vec<_>>(),
        ),
        tool_choice: echo_tool_choice(req.tool_choice.as_ref()),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens,
        reasoning: serde_json::json!({
            "effort": reasoning.and_then(|r| r.effort.as_deref()),
            "summary": summary,
        }),
        text: match req.text.as_ref().and_then(|t| t.format.as_ref()) {
            Some(f) => serde_json::json!({"format": echo_text_format(f)}),
            None => super::default_text(),
        },
        store: req.store.unwrap_or(true),
        truncation: req.truncation.as_deref().unwrap_or("disabled").to_owned(),
        user: req.user.as_deref().map(str::to_owned),
    }
}

/// `tool_choice` as the response echoes it.
fn echo_tool_choice(choice: Option<&RToolChoice<'_>>) -> Value {
    match choice {
        None => Value::from("auto"),
        Some(RToolChoice::Mode(m)) => Value::from(&**m),
        Some(RToolChoice::Object(o)) => {
            let mut m = serde_json::Map::new();
            if let Some(k) = o.kind.as_deref() {
                m.insert("type".into(), k.into());
            }
            if let Some(n) = o.name.as_deref() {
                m.insert("name".into(), n.into());
            }
            if let Some(n) = o.mode.as_deref() {
                m.insert("mode".into(), n.into());
            }
            Value::Object(m)
        }
    }
}

/// `text.format` as the response echoes it.
fn echo_text_format(f: &TextFormat<'_>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), f.kind.as_deref().unwrap_or("text").into());
    if let Some(n) = f.name.as_deref() {
        m.insert("name".into(), n.into());
    }
    if let Some(d) = f.description.as_deref() {
        m.insert("description".into(), d.into());
    }
    if let Some(s) = json_value(f.schema) {
        m.insert("schema".into(), s);
    }
    if let Some(s) = f.strict {
        m.insert("strict".into(), s.into());
    }
    Value::Object(m)
}

/// Raw JSON as a value (none when it does not parse).
fn json_value(r: Option<&RawValue>) -> Option<Value> {
    r.and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
}

fn echo_tool(t: &Tool<'_>) -> Value {
    let mut m = serde_json::Map::new();
    let kind = t.kind.as_deref().unwrap_or("function");
    m.insert("type".into(), kind.into());
    if let Some(n) = t.name.as_deref() {
        m.insert("name".into(), n.into());
    }
    if let Some(d) = t.description.as_deref() {
        m.insert("description".into(), d.into());
    }
    if kind == "function" {
        let params = t
            .parameters
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok());
        m.insert("parameters".into(), params.unwrap_or(Value::Null));
        m.insert("strict".into(), t.strict.unwrap_or(false).into());
    }
    if kind == "namespace" {
        let members = t.tools.iter().flatten().map(echo_tool).collect::<Vec<_>>();
        m.insert("tools".into(), Value::Array(members));
    }
    if kind == "custom"
        && let Some(f) = &t.format
    {
        let mut fm = serde_json::Map::new();
        fm.insert("type".into(), f.kind.as_deref().unwrap_or("text").into());
        if let Some(s) = f.syntax.as_deref() {
            fm.insert("syntax".into(), s.into());
        }
        if let Some(d) = f.definition.as_deref() {
            fm.insert("definition".into(), d.into());
        }
        m.insert("format".into(), Value::Object(fm));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// The Messages body.

#[derive(Serialize)]
struct Body<'b> {
    model: &'b str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'b>>,
    messages: Vec<Turn<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolSpec<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<StructuredConfig<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<crate::api::anthropic::AutoCache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'static str>,
}

/// A tool offered to Claude.
enum ToolSpec<'b> {
    Function {
        def: ToolDef<'b>,
        strict: bool,
    },
    /// A freeform tool: one string property `input`.
    Custom {
        name: &'b str,
        description: Option<String>,
    },
    WebSearch {
        user_location: Option<&'b RawValue>,
        allowed_domains: Option<&'b RawValue>,
    },
}

/// The description of a custom tool's only property.
const CUSTOM_INPUT: &str = "The raw input for this tool, exactly as the tool expects it (it is passed on verbatim, not parsed).";

impl ToolSpec<'_> {
    fn name(&self) -> &str {
        match self {
            ToolSpec::Function { def, .. } => def.name,
            ToolSpec::Custom { name, .. } => name,
            ToolSpec::WebSearch { .. } => "web_search",
        }
    }
}

impl Serialize for ToolSpec<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolSpec::Function { def, strict } => {
                #[derive(Serialize)]
                struct Strict<'a, 'b> {
                    #[serde(flatten)]
                    def: &'a ToolDef<'b>,
                    #[serde(skip_serializing_if = "std::ops::Not::not")]
                    strict: bool,
                }
                Strict {
                    def,
                    strict: *strict,
                }
                .serialize(s)
            }
            ToolSpec::Custom { name, description } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("name", name)?;
                if let Some(d) = description {
                    m.serialize_entry("description", d)?;
                }
                m.serialize_entry(
                    "input_schema",
                    &serde_json::json!({"type": "object",
                        "properties": {"input": {"type": "string", "description": CUSTOM_INPUT}},
                        "required": ["input"], "additionalProperties": false}),
                )?;
                m.end()
            }
            ToolSpec::WebSearch {
                user_location,
                allowed_domains,
            } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "web_search_20250305")?;
                m.serialize_entry("name", "web_search")?;
                if let Some(d) = allowed_domains {
                    m.serialize_entry("allowed_domains", d)?;
                }
                if let Some(u) = user_location {
                    m.serialize_entry("user_location", u)?;
                }
                m.end()
            }
        }
    }
}

struct Built<'b> {
    body: Body<'b>,
    custom_tools: Vec<String>,
}

fn build<'b>(
    req: &'b CreateRequest<'b>,
    items: &[(Param<'static>, &'b InputItem<'b>)],
    decoded: &'b [Option<ThinkingBlock>],
    names: &'b Namespaces,
    model: &'b str,
    default_max_tokens: u32,
) -> Result<Built<'b>, RequestError> {
    let max_tokens = req.max_output_tokens.unwrap_or(default_max_tokens.max(1));
    let reasoning = req.reasoning.as_ref();
    let effort = parse_effort(
        "reasoning.effort",
        reasoning.and_then(|r| r.effort.as_deref()),
    )?;
    let caps = model_caps(model);
    let native = caps.structured_outputs;
    let mut tools = declared_tools(req, native, names)?;
    let mut conv = Conversation::of_request(req, items, decoded, names)?;
    let tool_choice = resolve_tool_choice(req, &mut tools, &conv.history_tools, names)?;
    let blocked = forces_tool(tool_choice.as_ref()) || lacks_required_thinking(&conv.turns);
    let (thinking, effort_config, max_tokens) =
        thinking(caps.thinking, effort, blocked, max_tokens);
    let (temperature, top_p) = sampling(req.temperature, req.top_p, &caps, thinking.as_ref());
    let format = text_format(req, native, &mut conv.system)?;
    let effort = effort_config.map(|c| c.effort);
    let output_config =
        (effort.is_some() || format.is_some()).then_some(StructuredConfig { effort, format });
    let custom_tools = custom_tool_names(&tools);
    Ok(Built {
        body: Body {
            model,
            max_tokens,
            system: (!conv.system.is_empty()).then_some(System(conv.system)),
            messages: conv.turns,
            temperature,
            top_p,
            stream: req.stream.unwrap_or(false),
            tools,
            tool_choice,
            thinking,
            output_config,
            metadata: metadata(req),
            cache_control: None,
            service_tier: crate::convert::request::service_tier(req.service_tier.as_deref()),
        },
        custom_tools,
    })
}

/// Whether the choice makes Claude call a tool (which rules thinking out).
fn forces_tool(choice: Option<&ToolChoice<'_>>) -> bool {
    matches!(
        choice.map(|c| c.kind),
        Some(ToolChoiceKind::Any | ToolChoiceKind::Tool(_))
    )
}

/// `metadata.user_id`: `user`, else `safety_identifier`.
fn metadata<'b>(req: &'b CreateRequest<'_>) -> Option<Metadata<'b>> {
    let user_id = req.user.as_deref().or(req.safety_identifier.as_deref());
    user_id
        .filter(|u| !u.is_empty())
        .map(|u| Metadata { user_id: u })
}

/// The names of the custom tools (their calls are answered as custom tool calls).
fn custom_tool_names(tools: &[ToolSpec<'_>]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| matches!(t, ToolSpec::Custom { .. }))
        .map(|t| t.name().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// The members of the request's `namespace` tools and of the namespaces its history calls, each
/// with the name Claude knows it by (see [`NamespacedTool`]), in first-seen order.
#[derive(Debug, Default)]
struct Namespaces(Vec<NamespacedTool>);

/// The longest Anthropic tool name.
const MAX_TOOL_NAME: usize = 128;

impl Namespaces {
    /// Declared members first (in order), then namespaced calls in the history; the joined names
    /// avoid every plain tool name the request declares or its history calls.
    fn of(req: &CreateRequest<'_>, items: &[(Param<'static>, &InputItem<'_>)]) -> Self {
        fn non_empty<'s>(s: Option<&'s Str<'_>>) -> Option<&'s str> {
            s.map(|s| &**s).filter(|s| !s.is_empty())
        }
        let mut taken: HashSet<String> = HashSet::new();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for t in req.tools.iter().flatten() {
            match t.kind.as_deref() {
                Some("namespace") => {
                    let Some(ns) = non_empty(t.name.as_ref()) else {
                        continue;
                    };
                    for m in t.tools.iter().flatten() {
                        if let Some(name) = non_empty(m.name.as_ref()) {
                            pairs.push((ns, name));
                        }
                    }
                }
                Some(k) if k.starts_with("web_search") => {
                    taken.insert("web_search".to_owned());
                }
                _ => {
                    if let Some(name) = non_empty(t.name.as_ref()) {
                        taken.insert(name.to_owned());
                    }
                }
            }
        }
        for (_, it) in items {
            if !matches!(
                it.kind.as_deref(),
                Some("function_call" | "custom_tool_call")
            ) {
                continue;
            }
            let Some(name) = non_empty(it.name.as_ref()) else {
                continue;
            };
            match non_empty(it.namespace.as_ref()) {
                Some(ns) if it.kind.as_deref() == Some("function_call") => pairs.push((ns, name)),
                _ => {
                    taken.insert(name.to_owned());
                }
            }
        }
        let mut out: Vec<NamespacedTool> = Vec::new();
        for (ns, name) in pairs {
            if out.iter().any(|t| t.namespace == ns && t.name == name) {
                continue;
            }
            let joined = unique_name(&join_name(ns, name), &taken);
            taken.insert(joined.clone());
            out.push(NamespacedTool {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                joined,
            });
        }
        Namespaces(out)
    }

    /// The name Claude knows `namespace`'s member `name` by.
    fn joined(&self, namespace: &str, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|t| t.namespace == namespace && t.name == name)
            .map(|t| t.joined.as_str())
    }
}

/// `{namespace}__{name}` with every character outside `[a-zA-Z0-9_-]` replaced by `_`, at most
/// [`MAX_TOOL_NAME`] characters.
fn join_name(namespace: &str, name: &str) -> String {
    let mut out: String = format!("{namespace}__{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(MAX_TOOL_NAME); // ASCII only by now
    out
}

/// `base`, or `base` with a numeric suffix (`_2`, `_3`, …), whichever is not taken.
fn unique_name(base: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(base) {
        return base.to_owned();
    }
    (2usize..)
        .map(|k| {
            let suffix = format!("_{k}");
            let keep = MAX_TOOL_NAME.saturating_sub(suffix.len()).min(base.len());
            format!("{}{suffix}", &base[..keep])
        })
        .find(|c| !taken.contains(c))
        .unwrap_or_else(|| base.to_owned())
}

/// `tools`: function, custom and web search tools, and the functions of `namespace` tools (each
/// under its joined name); other built-ins are refused.
fn declared_tools<'b>(
    req: &'b CreateRequest<'_>,
    native: bool,
    names: &'b Namespaces,
) -> Result<Vec<ToolSpec<'b>>, RequestError> {
    let mut tools = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        let name = || match t.name.as_deref() {
            Some(n) if !n.is_empty() => Ok(n),
            _ => Err(missing(format!("tools[{i}].name"))),
        };
        let spec = match t.kind.as_deref() {
            Some("function") => ToolSpec::Function {
                def: ToolDef {
                    name: name()?,
                    description: t.description.as_deref().filter(|d| !d.is_empty()),
                    input_schema: t.parameters.filter(|p| !is_empty_object(p.get())),
                },
                strict: native && t.strict == Some(true),
            },
            Some("custom") => ToolSpec::Custom {
                name: name()?,
                description: custom_description(t, i)?,
            },
            Some(k) if k.starts_with("web_search") => ToolSpec::WebSearch {
                user_location: t.user_location.filter(|u| u.get() != "null"),
                allowed_domains: t
                    .filters
                    .as_ref()
                    .and_then(|f| f.allowed_domains)
                    .filter(|d| d.get() != "null"),
            },
            Some("namespace") => {
                let ns = name()?;
                let Some(members) = &t.tools else {
                    return Err(missing(format!("tools[{i}].tools")));
                };
                for (j, m) in members.iter().enumerate() {
                    let p = |field: &str| format!("tools[{i}].tools[{j}].{field}");
                    match m.kind.as_deref() {
                        Some("function") | None => {}
                        Some(k) => {
                            return Err(RequestError::new(
                                p("type"),
                                "unsupported_value",
                                format_args!("a namespace holds function tools, not {k:?}"),
                            ));
                        }
                    }
                    let member = match m.name.as_deref() {
                        Some(n) if !n.is_empty() => n,
                        _ => return Err(missing(p("name"))),
                    };
                    let Some(joined) = names.joined(ns, member) else {
                        return Err(missing(p("name")));
                    };
                    tools.push(ToolSpec::Function {
                        def: ToolDef {
                            name: joined,
                            description: m.description.as_deref().filter(|d| !d.is_empty()),
                            input_schema: m.parameters.filter(|p| !is_empty_object(p.get())),
                        },
                        strict: native && m.strict == Some(true),
                    });
                }
                continue;
            }
            Some(k) => {
                return Err(RequestError::new(
                    format!("tools[{i}].type"),
                    "unsupported_value",
                    format_args!(
                        "the built-in tool {k:?} has no Claude equivalent (supported: function, custom, namespace, web_search)"
                    ),
                ));
            }
            None => return Err(missing(format!("tools[{i}].type"))),
        };
        tools.push(spec);
    }
    Ok(tools)
}

fn is_empty_object(raw: &str) -> bool {
    raw.bytes()
        .all(|c| matches!(c, b'{' | b'}' | b' ' | b'\n' | b'\r' | b'\t'))
}

/// A custom tool's description, with its grammar when it has one.
fn custom_description(t: &Tool<'_>, i: usize) -> Result<Option<String>, RequestError> {
    let mut d = t.description.as_deref().unwrap_or("").trim_end().to_owned();
    match t.format.as_ref().map(|f| (f, f.kind.as_deref())) {
        None | Some((_, None | Some("text"))) => {}
        Some((f, Some("grammar"))) => {
            let Some(def) = f.definition.as_deref() else {
                return Err(missing(format!("tools[{i}].format.definition")));
            };
            let syntax = f.syntax.as_deref().unwrap_or("lark");
            if !d.is_empty() {
                d.push_str("\n\n");
            }
            d.push_str("The input must match this ");
            d.push_str(syntax);
            d.push_str(" grammar:\n");
            d.push_str(def);
        }
        Some((_, Some(other))) => {
            return Err(invalid(
                format!("tools[{i}].format.type"),
                format_args!("unknown value {other:?} (expected text or grammar)"),
            ));
        }
    }
    Ok((!d.is_empty()).then_some(d))
}

/// `tool_choice` and `parallel_tool_calls`; when the request defines no tools but the history
/// calls some, those are declared (open schema) with choice `none` (as the Chat converter does).
fn resolve_tool_choice<'b>(
    req: &'b CreateRequest<'_>,
    tools: &mut Vec<ToolSpec<'b>>,
    history_tools: &[&'b str],
    names: &'b Namespaces,
) -> Result<Option<ToolChoice<'b>>, RequestError> {
    let mut choice = match &req.tool_choice {
        None => None,
        Some(c) => Some(tool_choice(c, names)?),
    };
    if let Some(ToolChoiceKind::Tool(name)) = choice
        && !tools.iter().any(|t| t.name() == name)
    {
        return Err(invalid(
            "tool_choice.name",
            format_args!("no tool named {name:?} is defined"),
        ));
    }
    if tools.is_empty() && !history_tools.is_empty() {
        tools.extend(history_tools.iter().map(|name| ToolSpec::Function {
            def: ToolDef {
                name,
                description: None,
                input_schema: None,
            },
            strict: false,
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

/// `tool_choice` as a Claude choice; `{"type":"function","namespace","name"}` names a namespace's
/// member (by its joined name).
fn tool_choice<'b>(
    c: &'b RToolChoice<'_>,
    names: &'b Namespaces,
) -> Result<ToolChoiceKind<'b>, RequestError> {
    let mode = |m: &str, p: &str| -> Result<ToolChoiceKind<'b>, RequestError> {
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
        RToolChoice::Mode(m) => mode(m, "tool_choice"),
        RToolChoice::Object(o) => match o.kind.as_deref() {
            Some("function" | "custom") => match (o.name.as_deref(), o.namespace.as_deref()) {
                (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => {
                    match names.joined(ns, n) {
                        Some(joined) => Ok(ToolChoiceKind::Tool(joined)),
                        None => Err(invalid(
                            "tool_choice.name",
                            format_args!("no function {n:?} is defined in a namespace {ns:?}"),
                        )),
                    }
                }
                (Some(n), _) if !n.is_empty() => Ok(ToolChoiceKind::Tool(n)),
                _ => Err(missing("tool_choice.name")),
            },
            Some("allowed_tools") => mode(o.mode.as_deref().unwrap_or("auto"), "tool_choice.mode"),
            Some(k) if k.starts_with("web_search") => Ok(ToolChoiceKind::Tool("web_search")),
            Some(k) => Err(RequestError::new(
                "tool_choice.type",
                "unsupported_value",
                format_args!("unsupported tool choice {k:?}"),
            )),
            None => Err(missing("tool_choice.type")),
        },
    }
}

/// `text.format`: native structured output (returned), or an instruction appended to `system`.
fn text_format<'b>(
    req: &'b CreateRequest<'_>,
    native: bool,
    system: &mut Vec<Block<'b>>,
) -> Result<Option<JsonSchema<'b>>, RequestError> {
    let Some(f) = req.text.as_ref().and_then(|t| t.format.as_ref()) else {
        return Ok(None);
    };
    let kind = f.kind.as_deref();
    if kind == Some("json_schema") {
        let Some(schema) = schema_object(f.schema, "text.format.schema")? else {
            return Err(missing("text.format.schema"));
        };
        if native && f.strict == Some(true) {
            return Ok(Some(JsonSchema(schema)));
        }
    }
    let rf = openai::ResponseFormat {
        kind: f.kind.clone(),
        json_schema: Some(openai::JsonSchemaFormat {
            name: f.name.clone(),
            description: f.description.clone(),
            schema: f.schema,
            strict: f.strict,
        }),
    };
    let text = response_format_instruction(&rf).map_err(|e| match e.param.as_deref() {
        Some("response_format.type") => invalid(
            "text.format.type",
            format_args!(
                "unknown value {:?} (expected text, json_object or json_schema)",
                kind.unwrap_or("")
            ),
        ),
        _ => e,
    })?;
    if let Some(text) = text {
        system.push(Block::Text {
            text: Cow::Owned(text),
            cache_control: None,
        });
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Items.

#[derive(Default)]
struct Conversation<'b> {
    system: Vec<Block<'b>>,
    turns: Vec<Turn<'b>>,
    /// Names of the tools called in the history, in first-use order.
    history_tools: Vec<&'b str>,
    /// Call ids of the calls so far: an output must answer one.
    call_ids: HashSet<&'b str>,
    /// Joined names of namespaced calls.
    names: Option<&'b Namespaces>,
}

impl<'b> Conversation<'b> {
    /// `instructions`, the items, then a string `input`; an input with no turn is refused.
    fn of_request(
        req: &'b CreateRequest<'b>,
        items: &[(Param<'static>, &'b InputItem<'b>)],
        decoded: &'b [Option<ThinkingBlock>],
        names: &'b Namespaces,
    ) -> Result<Self, RequestError> {
        let mut conv = Conversation {
            names: Some(names),
            ..Conversation::default()
        };
        if let Some(i) = req.instructions.as_deref() {
            push_text(&mut conv.system, i, None);
        }
        conv.items(items, decoded)?;
        if let Some(Input::Text(t)) = &req.input {
            let mut blocks = Vec::new();
            push_text(&mut blocks, t, None);
            push_turn(&mut conv.turns, "user", blocks);
        }
        if req.input.is_none() && items.is_empty() {
            return Err(RequestError::new(
                "input",
                "missing_required_parameter",
                "missing required parameter",
            ));
        }
        let no_turn = || {
            invalid(
                "input",
                "must contain at least one non-empty message or tool output",
            )
        };
        if conv.turns.is_empty() {
            return Err(no_turn());
        }
        trim_prefill(&mut conv.turns).map_err(|_| no_turn())?;
        Ok(conv)
    }
    fn items(
        &mut self,
        items: &[(Param<'static>, &'b InputItem<'b>)],
        decoded: &'b [Option<ThinkingBlock>],
    ) -> Result<(), RequestError> {
        for (k, (p, it)) in items.iter().enumerate() {
            self.item(p, it, decoded.get(k).and_then(Option::as_ref))?;
        }
        Ok(())
    }

    fn item(
        &mut self,
        p: &Param<'_>,
        it: &'b InputItem<'b>,
        decoded: Option<&'b ThinkingBlock>,
    ) -> Result<(), RequestError> {
        let kind = match it.kind.as_deref() {
            Some(k) => k,
            None if it.role.is_some() => "message",
            None => return Err(missing(format!("{p}.type"))),
        };
        match kind {
            "message" => self.message(p, it),
            "function_call" | "custom_tool_call" => {
                self.tool_call(p, it, kind == "custom_tool_call")
            }
            "function_call_output" | "custom_tool_call_output" => self.tool_output(p, it),
            "reasoning" => {
                if let Some(b) = decoded {
                    push_turn(&mut self.turns, "assistant", vec![b.as_block()]);
                }
                Ok(())
            }
            "web_search_call" => Ok(()),
            other => Err(RequestError::new(
                format!("{p}.type"),
                "unsupported_value",
                format_args!(
                    "unsupported input item type {other:?} (supported: message, function_call, function_call_output, custom_tool_call, custom_tool_call_output, reasoning, item_reference)"
                ),
            )),
        }
    }

    /// A `function_call` or `custom_tool_call`: a `tool_use` in an assistant turn.
    fn tool_call(
        &mut self,
        p: &Param<'_>,
        it: &'b InputItem<'b>,
        custom: bool,
    ) -> Result<(), RequestError> {
        let id = required(it.call_id.as_ref(), p, "call_id")?;
        let mut name = required(it.name.as_ref(), p, "name")?;
        if let Some(ns) = it.namespace.as_deref().filter(|ns| !ns.is_empty())
            && !custom
        {
            name = self
                .names
                .and_then(|n| n.joined(ns, name))
                .ok_or_else(|| missing(format!("{p}.name")))?;
        }
        let input = if custom {
            let text = it.input.as_deref().unwrap_or("");
            let raw = serde_json::value::to_raw_value(&serde_json::json!({"input": text}))
                .map_err(|e| invalid(format!("{p}.input"), e))?;
            ToolInput::Owned(raw)
        } else {
            tool_input(it.arguments, &|| format!("{p}.arguments"))?
        };
        self.call_ids.insert(id);
        if !self.history_tools.contains(&name) {
            self.history_tools.push(name);
        }
        let block = Block::ToolUse {
            id: sanitize_id(id),
            name,
            input,
        };
        push_turn(&mut self.turns, "assistant", vec![block]);
        Ok(())
    }

    /// A `function_call_output` or `custom_tool_call_output`: a `tool_result` in a user turn.
    fn tool_output(&mut self, p: &Param<'_>, it: &'b InputItem<'b>) -> Result<(), RequestError> {
        let id = required(it.call_id.as_ref(), p, "call_id")?;
        if !self.call_ids.contains(id) {
            return Err(invalid(
                format!("{p}.call_id"),
                format_args!(
                    "no function_call or custom_tool_call with call_id {id:?} comes before this output"
                ),
            ));
        }
        let mut content = Vec::new();
        match &it.output {
            None => {}
            Some(Content::Text(t)) => push_text(&mut content, t, None),
            Some(Content::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    user_part(&mut content, part, &Param::Part(p, "output", j))?;
                }
            }
        }
        let result = Block::ToolResult {
            tool_use_id: sanitize_id(id),
            content,
            cache_control: None,
        };
        push_turn(&mut self.turns, "user", vec![result]);
        Ok(())
    }

    fn message(&mut self, p: &Param<'_>, it: &'b InputItem<'b>) -> Result<(), RequestError> {
        let Some(role) = it.role.as_deref() else {
            return Err(missing(format!("{p}.role")));
        };
        let role: &'static str = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(invalid(
                    format!("{p}.role"),
                    format_args!(
                        "unknown role {other:?} (expected user, assistant, system or developer)"
                    ),
                ));
            }
        };
        let mut blocks = Vec::new();
        match &it.content {
            None => {}
            Some(Content::Text(t)) => push_text(&mut blocks, t, None),
            Some(Content::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let pp = Param::Part(p, "content", j);
                    match (role, part.kind.as_deref()) {
                        ("user", _) => user_part(&mut blocks, part, &pp)?,
                        (_, Some("input_text" | "output_text" | "text")) => {
                            push_text(&mut blocks, text_of(part, &pp)?, None);
                        }
                        ("assistant", Some("refusal")) => {
                            if let Some(r) = &part.refusal {
                                push_text(&mut blocks, r, None);
                            }
                        }
                        (_, other) => {
                            return Err(bad_part(
                                &pp,
                                other,
                                if role == "assistant" {
                                    "assistant messages accept output_text and refusal parts"
                                } else {
                                    "system and developer messages accept only text parts"
                                },
                            ));
                        }
                    }
                }
            }
        }
        if role == "system" {
            self.system.extend(blocks);
        } else {
            push_turn(&mut self.turns, role, blocks);
        }
        Ok(())
    }
}

fn required<'b>(
    v: Option<&'b Str<'_>>,
    p: &Param<'_>,
    field: &str,
) -> Result<&'b str, RequestError> {
    match v.map(|s| &**s) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(missing(format!("{p}.{field}"))),
    }
}

fn text_of<'p>(part: &'p ContentPart<'_>, p: &Param<'_>) -> Result<&'p str, RequestError> {
    part.text
        .as_deref()
        .ok_or_else(|| missing(format!("{p}.text")))
}

fn bad_part(p: &Param<'_>, kind: Option<&str>, why: &str) -> RequestError {
    match kind {
        None => missing(format!("{p}.type")),
        Some(k) => RequestError::new(
            format!("{p}.type"),
            "unsupported_value",
            format_args!("unsupported content part type {k:?}: {why}"),
        ),
    }
}

/// A user (or tool output) part: text, image or PDF.
fn user_part<'b>(
    blocks: &mut Vec<Block<'b>>,
    part: &'b ContentPart<'_>,
    p: &Param<'_>,
) -> Result<(), RequestError> {
    match part.kind.as_deref() {
        Some("input_text" | "output_text" | "text") => push_text(blocks, text_of(part, p)?, None),
        Some("input_image") => {
            let Some(url) = part.image_url.as_deref() else {
                if part.file_id.is_some() {
                    return Err(no_file_ids(format!("{p}.file_id")));
                }
                return Err(missing(format!("{p}.image_url")));
            };
            blocks.push(Block::Image {
                source: image_source(url, || format!("{p}.image_url"))?,
                cache_control: None,
            });
        }
        Some("input_file") => {
            let source = if let Some(data) = part.file_data.as_deref() {
                let param = || format!("{p}.file_data");
                let (media_type, b64) = parse_data_url(data)
                    .ok_or_else(|| invalid(param(), "expected a base64 data: URL"))?;
                if media_type != "application/pdf" {
                    return Err(RequestError::new(
                        param(),
                        "unsupported_value",
                        format_args!("unsupported file type {media_type:?} (only application/pdf)"),
                    ));
                }
                Source::Base64 {
                    media_type,
                    data: b64,
                }
            } else if let Some(url) = part.file_url.as_deref() {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(format!("{p}.file_url"), "expected an https: URL"));
                }
                Source::Url(url)
            } else if part.file_id.is_some() {
                return Err(no_file_ids(format!("{p}.file_id")));
            } else {
                return Err(missing(format!("{p}.file_data")));
            };
            blocks.push(Block::Document {
                source,
                title: part.filename.as_deref().filter(|t| !t.is_empty()),
                cache_control: None,
            });
        }
        other => {
            return Err(bad_part(
                p,
                other,
                "user messages and tool outputs accept input_text, input_image and input_file parts",
            ));
        }
    }
    Ok(())
}

fn no_file_ids(param: String) -> RequestError {
    RequestError::new(
        param,
        "unsupported_value",
        "uploaded file ids are not supported; send the file inline (file_data or a data: URL)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::models::ModelAliases;
    use crate::convert::responses::{encode_reasoning, messages_to_response};
    use serde_json::json;

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

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn run(
        v: &Value,
        prior: &[Value],
        resolver: &dyn ItemResolver,
    ) -> Result<ConvertedResponsesRequest, RequestError> {
        run_with(v, prior, resolver, &opts())
    }

    fn run_with(
        v: &Value,
        prior: &[Value],
        resolver: &dyn ItemResolver,
        opts: &ConvertOptions<'_>,
    ) -> Result<ConvertedResponsesRequest, RequestError> {
        let prior: Vec<Box<RawValue>> = prior.iter().map(raw).collect();
        responses_to_messages(&serde_json::to_vec(v).unwrap(), &prior, resolver, opts, 7)
    }

    #[test]
    fn automatic_prompt_caching() {
        let cached = ConvertOptions {
            auto_cache: true,
            ..opts()
        };
        let body = |extra: Value| {
            let mut v = json!({"model": "gpt-5", "input": "hi"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let conv_with = |v: Value, o: &ConvertOptions<'_>| -> Value {
            serde_json::from_slice(&run_with(&v, &[], &NoStore, o).unwrap().body).unwrap()
        };
        let v = conv_with(body(json!({})), &cached);
        assert_eq!(v["cache_control"], json!({"type": "ephemeral"}));
        let v = conv_with(body(json!({"prompt_cache_retention": "24h"})), &cached);
        assert_eq!(
            v["cache_control"],
            json!({"type": "ephemeral", "ttl": "1h"})
        );
        let v = conv_with(
            body(json!({"prompt_cache_retention": "in-memory"})),
            &cached,
        );
        assert_eq!(v["cache_control"], json!({"type": "ephemeral"}));
        // Turned off: none.
        assert!(
            conv_with(body(json!({})), &opts())
                .get("cache_control")
                .is_none()
        );
    }

    #[track_caller]
    fn conv(v: Value) -> Value {
        let c = run(&v, &[], &NoStore).unwrap_or_else(|e| panic!("unexpected error: {e}"));
        serde_json::from_slice(&c.body).unwrap()
    }

    #[track_caller]
    fn err(v: Value) -> RequestError {
        match run(&v, &[], &NoStore) {
            Ok(c) => panic!(
                "expected an error, got {}",
                String::from_utf8_lossy(&c.body)
            ),
            Err(e) => e,
        }
    }

    fn req(model: &str, extra: Value) -> Value {
        let mut v = json!({"model": model, "input": "hi"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    #[test]
    fn string_input_and_instructions() {
        let c = run(
            &json!({"model": "gpt-5", "instructions": "Be terse.", "input": "Hello"}),
            &[],
            &NoStore,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v,
            json!({"model": crate::convert::models::DEFAULT_SONNET, "max_tokens": 4096,
                "system": "Be terse.", "messages": [{"role": "user", "content": "Hello"}]})
        );
        assert_eq!(c.context.model, "gpt-5");
        assert_eq!(c.context.created_at, 7);
        assert!(c.context.id.starts_with("resp_"));
        assert!(c.store && !c.stream);
        assert_eq!(c.previous_response_id, None);
    }

    /// A Codex-shaped request: developer and user messages, a function and a custom tool, a tool
    /// loop with reasoning, a custom tool call and its output.
    #[test]
    fn codex_tool_loop_snapshot() {
        let thinking = ThinkingBlock::Thinking {
            thinking: "I should list files.".into(),
            signature: "SIG1".into(),
        };
        let c = run_with(
            &json!({
                "model": "gpt-5-codex",
                "instructions": "You are Codex.",
                "input": [
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: workspace-write."}]},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files, then add a README."}]},
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode_reasoning(&thinking)},
                    {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
                    {"type": "function_call_output", "call_id": "call_a", "output": "src\nCargo.toml"},
                    {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": encode_reasoning(&ThinkingBlock::RedactedThinking { data: "R".into() })},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Now the README."}]},
                    {"type": "custom_tool_call", "call_id": "call_b", "name": "apply_patch", "input": "*** Begin Patch\n*** Add File: README.md\n+hi\n*** End Patch\n"},
                    {"type": "custom_tool_call_output", "call_id": "call_b", "output": "Done!"}
                ],
                "tools": [
                    {"type": "function", "name": "shell", "description": "Runs a command.", "strict": false,
                     "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}},
                    {"type": "custom", "name": "apply_patch", "description": "Edit files.",
                     "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"}}
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": false,
                "reasoning": {"effort": "medium", "summary": "auto"},
                "store": false, "stream": true,
                "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": "thread-1",
                "text": {"verbosity": "medium"},
                "service_tier": "auto",
                "client_metadata": {"x": "y"}
            }),
            &[],
            &NoStore,
            &ConvertOptions {
                auto_cache: true,
                ..opts()
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        insta::assert_json_snapshot!("responses_codex_tool_loop", v);
        assert!(c.stream && !c.store);
        assert_eq!(c.context.custom_tools, ["apply_patch"]);
        assert!(c.context.summaries);
        // The reasoning item is the first block of its assistant turn, unchanged.
        assert_eq!(
            v["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "I should list files.", "signature": "SIG1"})
        );
        assert_eq!(
            v["messages"][3]["content"][2]["input"],
            json!({"input": "*** Begin Patch\n*** Add File: README.md\n+hi\n*** End Patch\n"})
        );
        assert_eq!(v["cache_control"], json!({"type": "ephemeral"}));
    }

    #[test]
    fn consecutive_outputs_merge_in_order() {
        let v = conv(json!({"model": "claude-haiku-4-5", "input": [
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "b", "output": "B"},
            {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_text", "text": "A"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "and?"}]}
        ], "tools": [{"type": "function", "name": "f"}]}));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "b", "content": "B"},
                    {"type": "tool_result", "tool_use_id": "a", "content": "A"},
                    {"type": "text", "text": "and?"}]}
            ])
        );
        assert_eq!(
            v["tools"],
            json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
        );
    }

    #[test]
    fn output_without_its_call_names_the_call_id() {
        let e = err(json!({"model": "m", "input": [
            {"role": "user", "content": "q"},
            {"type": "function_call_output", "call_id": "call_lost", "output": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[1].call_id"));
        assert!(e.message.contains("call_lost"), "{}", e.message);
        let e = err(json!({"model": "m", "input": [
            {"type": "custom_tool_call_output", "call_id": "c", "output": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].call_id"));
    }

    #[test]
    fn previous_items_come_first() {
        let prior = [
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}),
            json!({"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "toolu_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"}),
        ];
        let c = run(
            &json!({"model": "claude-sonnet-4-5", "previous_response_id": "resp_1",
                "input": [{"type": "function_call_output", "call_id": "toolu_1", "output": "18C"}],
                "tools": [{"type": "function", "name": "weather"}]}),
            &prior,
            &NoStore,
        )
        .unwrap();
        assert_eq!(c.previous_response_id.as_deref(), Some("resp_1"));
        assert_eq!(c.context.previous_response_id.as_deref(), Some("resp_1"));
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}
            ])
        );
        // A string input after previous items.
        let c = run(
            &json!({"model": "m", "input": "And tomorrow?"}),
            &prior[..1],
            &NoStore,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "text", "text": "And tomorrow?"}]}])
        );
        // A stored item that cannot be read.
        let e = run(&json!({"model": "m", "input": "x"}), &[json!(42)], &NoStore).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("previous_response_id"));
    }

    #[test]
    fn item_references_resolve_through_the_resolver() {
        let store = |id: &str| -> Option<Box<RawValue>> {
            (id == "msg_stored").then(|| {
                raw(&json!({"type": "message", "id": "msg_stored", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Stored answer.", "annotations": []}]}))
            })
        };
        let c = run(
            &json!({"model": "m", "input": [
                {"role": "user", "content": "q"},
                {"type": "item_reference", "id": "msg_stored"},
                {"role": "user", "content": "more"}]}),
            &[],
            &store,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Stored answer."})
        );
        let e = run(
            &json!({"model": "m", "input": [{"type": "item_reference", "id": "nope"}]}),
            &[],
            &store,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].id"));
        assert!(e.message.contains("nope"));
    }

    #[test]
    fn parts_images_and_files() {
        let v = conv(json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
            {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
            {"type": "input_file", "file_url": "https://example.com/b.pdf"}
        ]}]}));
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "a.pdf"},
                {"type": "document", "source": {"type": "url", "url": "https://example.com/b.pdf"}}
            ])
        );
        for (part, param) in [
            (
                json!({"type": "input_image", "file_id": "file_1"}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"type": "input_file", "file_id": "file_1"}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"type": "input_image", "image_url": "ftp://x"}),
                "input[0].content[0].image_url",
            ),
            (
                json!({"type": "input_file", "file_data": "data:text/plain;base64,eA=="}),
                "input[0].content[0].file_data",
            ),
            (json!({"type": "input_audio"}), "input[0].content[0].type"),
            (json!({"type": "input_text"}), "input[0].content[0].text"),
        ] {
            let e = err(json!({"model": "m", "input": [{"role": "user", "content": [part]}]}));
            assert_eq!(e.param.as_deref(), Some(param), "{e}");
        }
        // Deeper paths: a later item's later part, and a tool output's parts.
        let e = err(json!({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "a"}, {"type": "input_image"}]},
        ]}));
        assert_eq!(e.param.as_deref(), Some("input[1].content[1].type"), "{e}");
        let e = err(json!({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [
                {"type": "input_text", "text": "ok"}, {"type": "input_text", "text": "ok"}, {"type": "input_audio"},
            ]},
        ]}));
        assert_eq!(e.param.as_deref(), Some("input[2].output[2].type"), "{e}");
    }

    #[test]
    fn roles() {
        let v = conv(json!({"model": "m", "instructions": "I", "input": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u"},
            {"role": "developer", "content": [{"type": "input_text", "text": "D"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}, {"type": "refusal", "refusal": "r"}]},
        ]}));
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "I"}, {"type": "text", "text": "S"}, {"type": "text", "text": "D"}])
        );
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": "u"},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "r"}]}])
        );
        let e = err(json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].role"));
        let e = err(json!({"model": "m", "input": [{"type": "local_shell_call", "call_id": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        let e = err(json!({"model": "m", "input": [{"content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
    }

    #[test]
    fn tools_table() {
        // Function (strict kept on models with structured outputs), custom, web search.
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"tools": [
                {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true},
                {"type": "custom", "name": "raw"},
                {"type": "web_search", "user_location": {"type": "approximate", "city": "Paris"}, "filters": {"allowed_domains": ["example.com"]}}
            ]}),
        ));
        assert_eq!(
            v["tools"],
            json!([
                {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true},
                {"name": "raw", "input_schema": {"type": "object",
                    "properties": {"input": {"type": "string", "description": CUSTOM_INPUT}},
                    "required": ["input"], "additionalProperties": false}},
                {"type": "web_search_20250305", "name": "web_search", "allowed_domains": ["example.com"],
                    "user_location": {"type": "approximate", "city": "Paris"}}
            ])
        );
        // strict dropped where the model has no structured outputs.
        let v = conv(req(
            "claude-3-7-sonnet-latest",
            json!({"tools": [
            {"type": "function", "name": "f", "strict": true}]}),
        ));
        assert_eq!(
            v["tools"],
            json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
        );
        for kind in [
            "file_search",
            "code_interpreter",
            "computer_use_preview",
            "image_generation",
            "local_shell",
            "mcp",
        ] {
            let e = err(req(
                "m",
                json!({"tools": [{"type": "function", "name": "f"}, {"type": kind}]}),
            ));
            assert_eq!(e.param.as_deref(), Some("tools[1].type"), "{kind}");
            assert!(e.message.contains(kind), "{}", e.message);
        }
        let e = err(req("m", json!({"tools": [{"type": "function"}]})));
        assert_eq!(e.param.as_deref(), Some("tools[0].name"));
        let e = err(req(
            "m",
            json!({"tools": [{"type": "custom", "name": "x", "format": {"type": "grammar"}}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].format.definition"));
    }

    #[test]
    fn tool_choice_table() {
        let tools = json!([{"type": "function", "name": "f"}, {"type": "custom", "name": "c"}, {"type": "web_search_preview"}]);
        for (choice, parallel, want) in [
            (json!("auto"), Value::Null, json!({"type": "auto"})),
            (
                json!("auto"),
                json!(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (json!("none"), Value::Null, json!({"type": "none"})),
            (json!("required"), Value::Null, json!({"type": "any"})),
            (
                json!({"type": "function", "name": "f"}),
                Value::Null,
                json!({"type": "tool", "name": "f"}),
            ),
            (
                json!({"type": "custom", "name": "c"}),
                json!(false),
                json!({"type": "tool", "name": "c", "disable_parallel_tool_use": true}),
            ),
            (
                json!({"type": "allowed_tools", "mode": "required", "tools": []}),
                Value::Null,
                json!({"type": "any"}),
            ),
            (
                json!({"type": "web_search_preview"}),
                Value::Null,
                json!({"type": "tool", "name": "web_search"}),
            ),
        ] {
            let mut extra = json!({"tools": tools, "tool_choice": choice});
            if !parallel.is_null() {
                extra["parallel_tool_calls"] = parallel.clone();
            }
            let v = conv(req("claude-sonnet-4-5", extra));
            let got = v.get("tool_choice").cloned().unwrap_or(Value::Null);
            assert_eq!(got, want, "{choice} {parallel}");
        }
        let e = err(req(
            "m",
            json!({"tools": tools, "tool_choice": {"type": "function", "name": "zz"}}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice.name"));
        let e = err(req(
            "m",
            json!({"tools": tools, "tool_choice": "sometimes"}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        // History tools declared when the request has none.
        let v = conv(json!({"model": "m", "input": [
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "ok"}]}));
        assert_eq!(v["tool_choice"], json!({"type": "none"}));
        assert_eq!(v["tools"][0]["name"], "f");
    }

    #[test]
    fn reasoning_effort_shares_the_chat_rules() {
        // Budget model: enabled + budget, max_tokens raised above the budget.
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"reasoning": {"effort": "low"}, "max_output_tokens": 1000}),
        ));
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(v["max_tokens"], 3048);
        // Adaptive model: adaptive + effort.
        let v = conv(req(
            "claude-opus-4-8",
            json!({"reasoning": {"effort": "high", "summary": "detailed"}}),
        ));
        assert_eq!(v["thinking"], json!({"type": "adaptive"}));
        assert_eq!(v["output_config"], json!({"effort": "high"}));
        let v = conv(req(
            "claude-opus-4-8",
            json!({"reasoning": {"effort": "none"}, "temperature": 0.5}),
        ));
        assert_eq!(v["thinking"], json!({"type": "disabled"}));
        assert!(
            v.get("temperature").is_none(),
            "Opus 4.8 takes no sampling parameters"
        );
        // Sampling kept without thinking on a model that takes it.
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"temperature": 1.5, "top_p": 0.9}),
        ));
        assert_eq!(
            (v["temperature"].as_f64(), v["top_p"].as_f64()),
            (Some(1.0), Some(0.9))
        );
        // Forced tool: thinking kept off.
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"reasoning": {"effort": "high"},
            "tools": [{"type": "function", "name": "f"}], "tool_choice": "required"}),
        ));
        assert!(v.get("thinking").is_none());
        let e = err(req("m", json!({"reasoning": {"effort": "maximal"}})));
        assert_eq!(e.param.as_deref(), Some("reasoning.effort"));
    }

    #[test]
    fn text_format_table() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false});
        // Native structured outputs: strict json_schema on a model that has them.
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"text": {"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": true}}}),
        ));
        assert_eq!(
            v["output_config"],
            json!({"format": {"type": "json_schema", "schema": schema}})
        );
        assert!(v.get("system").is_none());
        // The Chat converter's instruction otherwise.
        for (model, strict) in [
            ("claude-3-7-sonnet-latest", true),
            ("claude-sonnet-4-5", false),
        ] {
            let v = conv(req(
                model,
                json!({"text": {"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": strict}}}),
            ));
            assert!(v.get("output_config").is_none());
            let s = v["system"].as_str().unwrap();
            assert!(
                s.contains("named \"A\"") && s.contains("<json_schema>"),
                "{s}"
            );
        }
        let v = conv(req(
            "m",
            json!({"text": {"format": {"type": "json_object"}}}),
        ));
        assert!(v["system"].as_str().unwrap().contains("JSON object"));
        let v = conv(req(
            "m",
            json!({"text": {"format": {"type": "text"}, "verbosity": "low"}}),
        ));
        assert!(v.get("system").is_none());
        let e = err(req(
            "m",
            json!({"text": {"format": {"type": "json_schema", "name": "A"}}}),
        ));
        assert_eq!(e.param.as_deref(), Some("text.format.schema"));
        // A schema that is not an object: the Chat converter's rule.
        let e = err(req(
            "m",
            json!({"text": {"format": {"type": "json_schema", "name": "A", "schema": "object", "strict": true}}}),
        ));
        assert_eq!(e.param.as_deref(), Some("text.format.schema"));
        let e = err(req("m", json!({"text": {"format": {"type": "yaml"}}})));
        assert_eq!(e.param.as_deref(), Some("text.format.type"));
    }

    #[test]
    fn unsupported_fields_name_the_field() {
        for (extra, param) in [
            (json!({"background": true}), "background"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"truncation": "sometimes"}), "truncation"),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"input": 3}), "input"),
        ] {
            let e = err(req("m", extra.clone()));
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e}");
        }
        // Accepted and ignored.
        let base = conv(req("claude-sonnet-4-5", json!({})));
        let v = conv(req(
            "claude-sonnet-4-5",
            json!({"background": false, "conversation": null,
            "truncation": "auto", "service_tier": "flex", "max_tool_calls": 3, "include": ["x"],
            "store": false, "metadata": {"k": "v"}, "top_logprobs": 0, "stream_options": {"include_obfuscation": false}}),
        ));
        assert_eq!(v, base);
        let e = err(json!({"input": "x"}));
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = err(json!({"model": "m"}));
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = err(json!({"model": "m", "input": []}));
        assert_eq!(e.param.as_deref(), Some("input"));
        assert_eq!(
            run(&json!([1]), &[], &NoStore).unwrap_err().code,
            Some("invalid_type")
        );
        assert_eq!(
            responses_to_messages(b"{", &[], &NoStore, &opts(), 0)
                .unwrap_err()
                .code,
            Some("invalid_json")
        );
    }

    #[test]
    fn user_metadata_and_echo() {
        let c = run(
            &req("m", json!({"user": "u1", "metadata": {"k": "v"}, "store": false, "max_output_tokens": 50,
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                "tool_choice": {"type": "function", "name": "f"},
                "text": {"format": {"type": "json_schema", "name": "A", "schema": {"type": "object"}, "strict": true}}})),
            &[],
            &NoStore,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(v["metadata"], json!({"user_id": "u1"}));
        assert_eq!(v["max_tokens"], 50);
        let ctx = &c.context;
        assert_eq!(ctx.metadata, json!({"k": "v"}));
        assert_eq!(
            ctx.tools,
            json!([{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": false}])
        );
        assert_eq!(ctx.tool_choice, json!({"type": "function", "name": "f"}));
        assert_eq!(ctx.text["format"]["name"], "A");
        assert_eq!(ctx.max_output_tokens, Some(50));
        assert!(!ctx.store);
        let v = conv(req("m", json!({"safety_identifier": "s1"})));
        assert_eq!(v["metadata"], json!({"user_id": "s1"}));
    }

    #[test]
    fn foreign_or_missing_reasoning_is_dropped() {
        let v = conv(json!({"model": "m", "input": [
            {"role": "user", "content": "q"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}], "encrypted_content": "gAAAAB-openai"},
            {"type": "reasoning", "summary": []},
            {"role": "assistant", "content": "a"}]}));
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "a"})
        );
    }

    #[test]
    fn input_items_for_the_store() {
        let items = input_items(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(items[0].get()).unwrap(),
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        );
        let items = input_items(
            br#"{"input":[{"role":"user","content":"a"},{"type":"item_reference","id":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].get(), r#"{"type":"item_reference","id":"x"}"#);
        assert!(input_items(b"{}").unwrap().is_empty());
        assert!(input_items(br#"{"input":3}"#).is_err());
    }

    /// A response's output items, sent back as input, give back the same Anthropic blocks.
    #[test]
    fn output_items_round_trip_into_the_next_request() {
        let mut ctx = ResponseContext::new("resp_x", 0, "gpt-5");
        ctx.custom_tools = vec!["apply_patch".into()];
        let content = json!([
            {"type": "thinking", "thinking": "Think \"hard\" \u{1F600}\n", "signature": "EqQB+/="},
            {"type": "redacted_thinking", "data": "REDACTED"},
            {"type": "text", "text": "Editing."},
            {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": ["ls"]}},
            {"type": "tool_use", "id": "toolu_2", "name": "apply_patch", "input": {"input": "*** Begin Patch\n*** End Patch"}}
        ]);
        let r = messages_to_response(
            &serde_json::to_vec(&json!({"content": content, "stop_reason": "tool_use"})).unwrap(),
            &ctx,
        )
        .unwrap();
        let mut input: Vec<Value> = vec![json!({"role": "user", "content": "go"})];
        input.extend(r.output.iter().map(|i| serde_json::to_value(i).unwrap()));
        input.push(json!({"type": "function_call_output", "call_id": "toolu_1", "output": "a"}));
        input.push(json!({"type": "custom_tool_call_output", "call_id": "toolu_2", "output": "b"}));
        let c = run(
            &json!({"model": "claude-sonnet-4-5", "input": input, "reasoning": {"effort": "low"},
                "tools": [{"type": "function", "name": "shell"}, {"type": "custom", "name": "apply_patch"}]}),
            &[],
            &NoStore,
        )
        .unwrap();
        let body = String::from_utf8(c.body).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["messages"][1]["content"], content);
        // Byte for byte: the blocks as serde writes them.
        for b in content.as_array().unwrap().iter().take(2) {
            assert!(body.contains(&serde_json::to_string(b).unwrap()));
        }
        assert_eq!(
            v["thinking"]["type"], "enabled",
            "thinking stays on: the blocks came back"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

            /// Any thinking block, through a response and back as a reasoning item, is the same
            /// bytes in the next request.
            #[test]
            fn reasoning_round_trips_byte_identical(thinking in "\\PC{0,40}", signature in "[A-Za-z0-9+/=]{1,40}",
                                                    redacted in any::<bool>(), summaries in any::<bool>()) {
                let block = if redacted {
                    json!({"type": "redacted_thinking", "data": signature})
                } else {
                    json!({"type": "thinking", "thinking": thinking, "signature": signature})
                };
                let block_bytes = serde_json::to_string(&block).unwrap();
                let mut ctx = ResponseContext::new("resp_p", 0, "m");
                ctx.summaries = summaries;
                let r = messages_to_response(format!(r#"{{"content":[{block_bytes}]}}"#).as_bytes(), &ctx).unwrap();
                let item = serde_json::to_value(&r.output[0]).unwrap();
                let c = run(&json!({"model": "m", "input": [{"role": "user", "content": "q"}, item, {"role": "user", "content": "again"}]}), &[], &NoStore).unwrap();
                let body = String::from_utf8(c.body).unwrap();
                let want = format!(r#"{{"role":"assistant","content":[{block_bytes}]}}"#);
                prop_assert!(body.contains(&want), "{} not in {}", want, body);
            }

            #[test]
            fn never_panics_on_arbitrary_items(kinds in proptest::collection::vec(
                prop_oneof![Just("message"), Just("function_call"), Just("function_call_output"), Just("custom_tool_call"),
                    Just("custom_tool_call_output"), Just("reasoning"), Just("item_reference"), Just("web_search_call"), Just("x")], 0..8),
                role in prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("developer"), Just("tool")],
                s in "\\PC{0,12}") {
                let input: Vec<Value> = kinds.iter().map(|k| json!({"type": k, "role": role, "content": s, "call_id": s,
                    "name": s, "arguments": s, "output": s, "input": s, "encrypted_content": s, "id": s})).collect();
                let _ = run(&json!({"model": s, "input": input, "tools": [{"type": "custom", "name": s}]}), &[], &NoStore);
            }
        }
    }

    fn namespace_tool() -> Value {
        json!({"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
        "tools": [
            {"type": "function", "name": "close_agent", "description": "Close an agent.",
             "strict": false, "parameters": {"type": "object",
                "properties": {"target": {"type": "string"}}, "required": ["target"]}},
            {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}
        ]})
    }

    #[test]
    fn namespace_members_are_offered_under_joined_names() {
        let v = req(
            "claude-sonnet-4-5",
            json!({"tools": [{"type": "function", "name": "exec_command"}, namespace_tool()]}),
        );
        let c = run(&v, &[], &NoStore).unwrap();
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        let names: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "exec_command",
                "multi_agent_v1__close_agent",
                "multi_agent_v1__spawn_agent"
            ]
        );
        assert_eq!(body["tools"][1]["description"], "Close an agent.");
        assert_eq!(
            body["tools"][1]["input_schema"]["required"],
            json!(["target"])
        );
        let ns = &c.context.namespaced;
        assert_eq!(ns.len(), 2);
        assert_eq!(
            (
                ns[0].namespace.as_str(),
                ns[0].name.as_str(),
                ns[0].joined.as_str()
            ),
            (
                "multi_agent_v1",
                "close_agent",
                "multi_agent_v1__close_agent"
            )
        );
        // The response echoes the namespace tool with its members.
        assert_eq!(c.context.tools[1]["type"], "namespace");
        assert_eq!(c.context.tools[1]["tools"][0]["name"], "close_agent");
    }

    #[test]
    fn namespace_names_are_valid_and_unique() {
        let long = "n".repeat(120);
        let v = req(
            "claude-sonnet-4-5",
            json!({"tools": [
                {"type": "function", "name": "a__b"},
                {"type": "namespace", "name": "a", "tools": [{"type": "function", "name": "b"}]},
                {"type": "namespace", "name": "mcp.server/x", "tools": [{"type": "function", "name": "do it"}]},
                {"type": "namespace", "name": long, "tools": [
                    {"type": "function", "name": "first_member"},
                    {"type": "function", "name": "first_member_too"}]}
            ]}),
        );
        let c = run(&v, &[], &NoStore).unwrap();
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        let names: Vec<String> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names[0], "a__b");
        assert_eq!(names[1], "a__b_2");
        assert_eq!(names[2], "mcp_server_x__do_it");
        assert_eq!(names.len(), 5);
        for n in &names {
            assert!(
                (1..=128).contains(&n.len())
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{n}"
            );
        }
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn namespaced_history_calls_and_tool_choice_use_the_joined_name() {
        let v = json!({"model": "claude-sonnet-4-5", "tools": [namespace_tool()],
        "tool_choice": {"type": "function", "namespace": "multi_agent_v1", "name": "close_agent"},
        "input": [
            {"type": "message", "role": "user", "content": "close it"},
            {"type": "function_call", "call_id": "call_1", "namespace": "multi_agent_v1",
             "name": "close_agent", "arguments": "{\"target\":\"a1\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "closed"}
        ]});
        let body = conv(v);
        let uses: Vec<&Value> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["content"].as_array().into_iter().flatten())
            .filter(|b| b["type"] == "tool_use")
            .collect();
        assert_eq!(uses.len(), 1);
        assert_eq!(uses[0]["name"], "multi_agent_v1__close_agent");
        assert_eq!(uses[0]["input"], json!({"target": "a1"}));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "multi_agent_v1__close_agent"})
        );
        // A tool_choice naming a member of no namespace is refused.
        let e = err(req(
            "claude-sonnet-4-5",
            json!({"tools": [namespace_tool()],
                "tool_choice": {"type": "function", "namespace": "multi_agent_v1", "name": "nope"}}),
        ));
        assert_eq!(e.param.as_deref(), Some("tool_choice.name"));
        // The joined name works as a tool_choice too.
        let body = conv(req(
            "claude-sonnet-4-5",
            json!({"tools": [namespace_tool()],
                "tool_choice": {"type": "function", "name": "multi_agent_v1__spawn_agent"}}),
        ));
        assert_eq!(body["tool_choice"]["name"], "multi_agent_v1__spawn_agent");
    }

    #[test]
    fn namespaced_history_without_declared_tools_is_declared_open() {
        let v = json!({"model": "claude-sonnet-4-5", "input": [
            {"type": "function_call", "call_id": "c1", "namespace": "mcp__node_repl",
             "name": "js", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"}
        ]});
        let c = run(&v, &[], &NoStore).unwrap();
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(body["tools"][0]["name"], "mcp__node_repl__js");
        assert_eq!(body["tool_choice"]["type"], "none");
        assert_eq!(
            c.context.call_name("mcp__node_repl__js").0.as_deref(),
            Some("mcp__node_repl")
        );
    }

    #[test]
    fn bad_namespace_tools_are_refused_by_path() {
        let e = err(req(
            "claude-sonnet-4-5",
            json!({"tools": [{"type": "namespace", "name": "ns"}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].tools"));
        let e = err(req(
            "claude-sonnet-4-5",
            json!({"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].tools[0].type"));
        let e = err(req(
            "claude-sonnet-4-5",
            json!({"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "function"}]}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].tools[0].name"));
        let e = err(req(
            "claude-sonnet-4-5",
            json!({"tools": [{"type": "namespace", "tools": []}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("tools[0].name"));
    }

    #[test]
    fn codex_first_request_converts() {
        let raw = include_str!("../../../tests/codex/fixtures/codex-0.171.0-first-request.json");
        let fixture: Value = serde_json::from_str(raw).unwrap();
        let c = run(&fixture["body"], &[], &NoStore).unwrap();
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        let names: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"multi_agent_v1__spawn_agent"), "{names:?}");
        assert!(names.contains(&"exec_command"), "{names:?}");
        assert!(
            c.context
                .namespaced
                .iter()
                .all(|t| t.namespace == "multi_agent_v1")
        );
    }
}

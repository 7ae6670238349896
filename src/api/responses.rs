//! OpenAI Responses API wire types (`POST /v1/responses`).
//!
//! - Request side ([`CreateRequest`], [`InputItem`], [`Tool`], …): lenient containers borrowed
//!   from the body, like [`super::openai`]: every field optional and validated by the converter
//!   (`convert::responses::request`), which names the offending field. JSON that is only forwarded
//!   (schemas, `metadata`, `user_location`) stays a [`RawValue`]. Unknown fields are ignored.
//!   The same [`InputItem`] reads stored items back (input items and [`OutputItem`]s alike).
//! - Response side ([`Response`], [`OutputItem`], [`Usage`], [`StreamEvent`]): owned, serialised
//!   by the converters; [`Response`] and [`OutputItem`] also deserialise (the store keeps them).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use super::Str;

mod encode;

// ---------------------------------------------------------------------------------------------
// Request.

/// `POST /v1/responses` body (also the payload of a WebSocket `response.create` message).
#[derive(Debug, Default, Deserialize)]
pub struct CreateRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub input: Option<Input<'a>>,
    #[serde(borrow, default)]
    pub instructions: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    pub tool_choice: Option<ToolChoice<'a>>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Default true.
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(borrow, default)]
    pub previous_response_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub reasoning: Option<ReasoningConfig<'a>>,
    #[serde(borrow, default)]
    pub text: Option<TextConfig<'a>>,
    /// E.g. `reasoning.encrypted_content`.
    #[serde(borrow, default)]
    pub include: Option<Vec<Str<'a>>>,
    /// Up to 16 string pairs; echoed in the response.
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub user: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub safety_identifier: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<Str<'a>>,
    /// `in-memory` | `24h`: how long OpenAI keeps the cached prefix.
    #[serde(borrow, default)]
    pub prompt_cache_retention: Option<Str<'a>>,
    /// `auto` | `disabled`.
    #[serde(borrow, default)]
    pub truncation: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub service_tier: Option<Str<'a>>,
    #[serde(default)]
    pub background: Option<bool>,
    /// Server-side conversations (not supported).
    #[serde(borrow, default)]
    pub conversation: Option<&'a RawValue>,
    /// Stored prompt templates (not supported).
    #[serde(borrow, default)]
    pub prompt: Option<&'a RawValue>,
    #[serde(default)]
    pub max_tool_calls: Option<u32>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub stream_options: Option<&'a RawValue>,
    /// Codex's per-request metadata (ignored).
    #[serde(borrow, default)]
    pub client_metadata: Option<&'a RawValue>,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Debug)]
pub enum Input<'a> {
    Text(Str<'a>),
    Items(Vec<InputItem<'a>>),
}

/// `content` of a message, or `output` of a tool call output: a string or a list of parts.
#[derive(Debug)]
pub enum Content<'a> {
    Text(Str<'a>),
    Parts(Vec<ContentPart<'a>>),
}

/// A string-or-list visitor shared by [`Input`] and [`Content`].
struct StrOrSeq<T, F>(PhantomData<(T, F)>);

trait StrOrSeqKind<'a>: Sized {
    type Elem;
    fn text(s: Str<'a>) -> Self;
    fn seq(v: Vec<Self::Elem>) -> Self;
}

impl<'de: 'a, 'a, T: StrOrSeqKind<'a>> Visitor<'de> for StrOrSeq<T, &'a ()>
where
    T::Elem: Deserialize<'de>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::text(Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::text(Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::text(Str(Cow::Owned(v))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(256));
        while let Some(x) = seq.next_element::<T::Elem>()? {
            items.push(x);
        }
        Ok(T::seq(items))
    }
}

impl<'a> StrOrSeqKind<'a> for Input<'a> {
    type Elem = InputItem<'a>;
    fn text(s: Str<'a>) -> Self {
        Input::Text(s)
    }
    fn seq(v: Vec<InputItem<'a>>) -> Self {
        Input::Items(v)
    }
}

impl<'a> StrOrSeqKind<'a> for Content<'a> {
    type Elem = ContentPart<'a>;
    fn text(s: Str<'a>) -> Self {
        Content::Text(s)
    }
    fn seq(v: Vec<ContentPart<'a>>) -> Self {
        Content::Parts(v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Input<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrSeq::<Input<'a>, &'a ()>(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrSeq::<Content<'a>, &'a ()>(PhantomData))
    }
}

/// One input item, flat over its types (`type` says which fields matter; a missing `type` with a
/// `role` is a message):
///
/// - `message`: `role`, `content`;
/// - `function_call`: `call_id`, `name`, `namespace` (a member of a `namespace` tool), `arguments`
///   (JSON text in a string);
/// - `function_call_output`: `call_id`, `output` (string or parts);
/// - `custom_tool_call`: `call_id`, `name`, `input` (raw text);
/// - `custom_tool_call_output`: `call_id`, `output`;
/// - `reasoning`: `summary`, `encrypted_content`;
/// - `item_reference`: `id`;
/// - `web_search_call`: `action`.
#[derive(Debug, Default, Deserialize)]
pub struct InputItem<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub role: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub call_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    /// A `function_call` to a member of a `namespace` tool: the namespace's name.
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    /// Normally a JSON string holding JSON text; an object is accepted too.
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub output: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub input: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub summary: Option<Vec<SummaryPart<'a>>>,
    #[serde(borrow, default)]
    pub encrypted_content: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub status: Option<Str<'a>>,
}

/// A content part: `input_text` / `output_text` / `refusal` (`text`, `refusal`), `input_image`
/// (`image_url` data or https URL, or `file_id`; `detail`), `input_file` (`file_data` data URL,
/// `file_url`, `file_id`, `filename`).
#[derive(Debug, Default, Deserialize)]
pub struct ContentPart<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub image_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub file_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub file_data: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub file_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub filename: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub detail: Option<Str<'a>>,
}

/// `{"type":"summary_text","text":…}`.
#[derive(Debug, Default, Deserialize)]
pub struct SummaryPart<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
}

/// A `tools` entry, flat over its types: `function` (`name`, `description`, `parameters`,
/// `strict`), `custom` (`name`, `description`, `format`), `namespace` (`name`, `description`,
/// `tools`: function tools called as `{"type":"function_call","namespace","name",…}`), built-ins (`web_search`,
/// `web_search_preview`, dated variants: `search_context_size`, `user_location`, `filters`;
/// `file_search`, `code_interpreter`, `computer_use_preview`, `image_generation`, `local_shell`,
/// `mcp`, …).
#[derive(Debug, Default, Deserialize)]
pub struct Tool<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
    #[serde(borrow, default)]
    pub format: Option<CustomFormat<'a>>,
    #[serde(borrow, default)]
    pub user_location: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub filters: Option<WebSearchFilters<'a>>,
    #[serde(borrow, default)]
    pub search_context_size: Option<Str<'a>>,
    /// A `namespace` tool's members (function tools).
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
}

/// A custom tool's input format: `{"type":"text"}` or `{"type":"grammar","syntax":"lark"|"regex",
/// "definition":…}`.
#[derive(Debug, Default, Deserialize)]
pub struct CustomFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub syntax: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub definition: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WebSearchFilters<'a> {
    #[serde(borrow, default)]
    pub allowed_domains: Option<&'a RawValue>,
}

/// `tool_choice`: `none` | `auto` | `required`, or an object: `{"type":"function"|"custom",
/// "name"}`, `{"type":"allowed_tools","mode","tools"}`, `{"type":"web_search"…}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice<'a> {
    Mode(#[serde(borrow)] Str<'a>),
    Object(#[serde(borrow)] ToolChoiceObject<'a>),
}

#[derive(Debug, Default, Deserialize)]
pub struct ToolChoiceObject<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    /// A function of a `namespace` tool: the namespace's name (`name` is the member's).
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub mode: Option<Str<'a>>,
}

/// `reasoning`: `effort` (`none` … `xhigh`), `summary` (`auto` | `concise` | `detailed`;
/// `generate_summary` is its older name).
#[derive(Debug, Default, Deserialize)]
pub struct ReasoningConfig<'a> {
    #[serde(borrow, default)]
    pub effort: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub summary: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub generate_summary: Option<Str<'a>>,
}

/// `text`: `format` and `verbosity`.
#[derive(Debug, Default, Deserialize)]
pub struct TextConfig<'a> {
    #[serde(borrow, default)]
    pub format: Option<TextFormat<'a>>,
    #[serde(borrow, default)]
    pub verbosity: Option<Str<'a>>,
}

/// `text.format`: `{"type":"text"}`, `{"type":"json_object"}`, or (flat, unlike Chat)
/// `{"type":"json_schema","name","description","schema","strict"}`.
#[derive(Debug, Default, Deserialize)]
pub struct TextFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Response.

/// `status` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

/// The response object (`object: "response"`). The request's settings are echoed as OpenAI does,
/// so SDKs that read them find them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub status: Status,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub usage: Option<Usage>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub error: Option<ResponseError>,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub metadata: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<u32>,
    pub reasoning: Value,
    pub text: Value,
    pub store: bool,
    pub truncation: String,
    pub background: bool,
    pub user: Option<String>,
}

/// `incomplete_details`: `{"reason":"max_output_tokens"|"content_filter"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    pub reason: String,
}

/// `error` of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// An output item (also what the store keeps and what clients send back as input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// `msg_…`.
    Message {
        id: String,
        status: ItemStatus,
        role: String,
        content: Vec<OutputContent>,
    },
    /// `fc_…`; `call_id` is the Anthropic `tool_use` id; `arguments` JSON text. A call to a
    /// member of a `namespace` tool names the namespace too (`name` is the member's name).
    FunctionCall {
        id: String,
        status: ItemStatus,
        call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        name: String,
        arguments: String,
    },
    /// `ctc_…`; `input` is the raw text (never JSON-wrapped).
    CustomToolCall {
        id: String,
        status: ItemStatus,
        call_id: String,
        name: String,
        input: String,
    },
    /// `rs_…`; `encrypted_content` carries the Anthropic thinking block (opaque).
    Reasoning {
        id: String,
        summary: Vec<SummaryText>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<String>,
    },
    /// `ws_…`: Anthropic's server-side web search.
    WebSearchCall {
        id: String,
        status: ItemStatus,
        action: Value,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. }
            | OutputItem::FunctionCall { id, .. }
            | OutputItem::CustomToolCall { id, .. }
            | OutputItem::Reasoning { id, .. }
            | OutputItem::WebSearchCall { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// A message's content part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputContent {
    OutputText {
        text: String,
        annotations: Vec<Value>,
    },
    Refusal {
        refusal: String,
    },
}

/// `{"type":"summary_text","text":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl SummaryText {
    pub fn new(text: impl Into<String>) -> Self {
        SummaryText {
            kind: "summary_text".to_owned(),
            text: text.into(),
        }
    }
}

/// `usage`: `input_tokens` counts every prompt token (cache reads and writes included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

// ---------------------------------------------------------------------------------------------
// Stream events.

/// One stream event: `{"type":…,…,"sequence_number":n}` (SSE `event:` = `type`; the WebSocket
/// mode sends the same object as one text frame).
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvent<'e> {
    #[serde(flatten)]
    pub body: EventBody<'e>,
    pub sequence_number: u64,
}

/// The event types, tagged by `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum EventBody<'e> {
    #[serde(rename = "response.created")]
    Created { response: &'e Response },
    #[serde(rename = "response.in_progress")]
    InProgress { response: &'e Response },
    #[serde(rename = "response.completed")]
    Completed { response: &'e Response },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: &'e Response },
    #[serde(rename = "response.failed")]
    Failed { response: &'e Response },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        output_index: usize,
        item: &'e OutputItem,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        output_index: usize,
        item: &'e OutputItem,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: &'e str,
        output_index: usize,
        content_index: usize,
        part: &'e OutputContent,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: &'e str,
        output_index: usize,
        content_index: usize,
        part: &'e OutputContent,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: &'e str,
        output_index: usize,
        content_index: usize,
        delta: &'e str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: &'e str,
        output_index: usize,
        content_index: usize,
        text: &'e str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        item_id: &'e str,
        output_index: usize,
        delta: &'e str,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        item_id: &'e str,
        output_index: usize,
        name: &'e str,
        arguments: &'e str,
    },
    #[serde(rename = "response.custom_tool_call_input.delta")]
    CustomToolCallInputDelta {
        item_id: &'e str,
        output_index: usize,
        delta: &'e str,
    },
    #[serde(rename = "response.custom_tool_call_input.done")]
    CustomToolCallInputDone {
        item_id: &'e str,
        output_index: usize,
        input: &'e str,
    },
    #[serde(rename = "response.reasoning_summary_part.added")]
    ReasoningSummaryPartAdded {
        item_id: &'e str,
        output_index: usize,
        summary_index: usize,
        part: &'e SummaryText,
    },
    #[serde(rename = "response.reasoning_summary_part.done")]
    ReasoningSummaryPartDone {
        item_id: &'e str,
        output_index: usize,
        summary_index: usize,
        part: &'e SummaryText,
    },
    #[serde(rename = "response.reasoning_summary_text.delta")]
    ReasoningSummaryTextDelta {
        item_id: &'e str,
        output_index: usize,
        summary_index: usize,
        delta: &'e str,
    },
    #[serde(rename = "response.reasoning_summary_text.done")]
    ReasoningSummaryTextDone {
        item_id: &'e str,
        output_index: usize,
        summary_index: usize,
        text: &'e str,
    },
}

impl EventBody<'_> {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Created { .. } => "response.created",
            EventBody::InProgress { .. } => "response.in_progress",
            EventBody::Completed { .. } => "response.completed",
            EventBody::Incomplete { .. } => "response.incomplete",
            EventBody::Failed { .. } => "response.failed",
            EventBody::OutputItemAdded { .. } => "response.output_item.added",
            EventBody::OutputItemDone { .. } => "response.output_item.done",
            EventBody::ContentPartAdded { .. } => "response.content_part.added",
            EventBody::ContentPartDone { .. } => "response.content_part.done",
            EventBody::OutputTextDelta { .. } => "response.output_text.delta",
            EventBody::OutputTextDone { .. } => "response.output_text.done",
            EventBody::FunctionCallArgumentsDelta { .. } => {
                "response.function_call_arguments.delta"
            }
            EventBody::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            EventBody::CustomToolCallInputDelta { .. } => "response.custom_tool_call_input.delta",
            EventBody::CustomToolCallInputDone { .. } => "response.custom_tool_call_input.done",
            EventBody::ReasoningSummaryPartAdded { .. } => "response.reasoning_summary_part.added",
            EventBody::ReasoningSummaryPartDone { .. } => "response.reasoning_summary_part.done",
            EventBody::ReasoningSummaryTextDelta { .. } => "response.reasoning_summary_text.delta",
            EventBody::ReasoningSummaryTextDone { .. } => "response.reasoning_summary_text.done",
        }
    }
}

//! Anthropic Messages API wire types. Pure data: no I/O, nothing of the rest of the crate.
//!
//! - [`Tokens`]: the token counts of one request, the one usage type shared by the converters, the
//!   usage taps, the usage store and the simulated upstream; [`WireUsage`] is its wire form
//!   (`input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`).
//! - Request, as the proxy writes it ([`MessagesRequest`], [`Turn`], [`Block`], …): serialised
//!   straight from data borrowed from the client's request; tool schemas, `cache_control` and tool
//!   inputs stay raw JSON and are never re-parsed.
//! - Request, as an upstream reads it ([`ReceivedRequest`]): lenient, content kept raw.
//! - Response and stream events, as the proxy reads them ([`Message`], [`ContentBlock`],
//!   [`StreamEvent`], [`Delta`]): flat structs, every field optional, so that unknown block types
//!   and new fields never fail a parse (`RawValue` does not work inside internally tagged enums).
//! - Errors: [`ErrorBody`] (`{"type":"error","error":{"type","message"}}`).
//!
//! None of these types round-trips, so none keeps unknown fields: what the proxy forwards
//! unchanged it never parses (passthrough relays bytes; full mode splits the body into raw values,
//! see `claude_code`), and the read side ignores what it does not use.

use std::borrow::Cow;

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Str;

// ---------------------------------------------------------------------------------------------
// Usage.

/// Token counts of one request. Serialised (usage store, report, dashboard) as
/// `{"input","output","cache_read","cache_write"}`; `input` excludes cache reads and writes, as in
/// Anthropic's `input_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    /// The part of `cache_write` written with the 1-hour TTL (priced higher); not stored.
    #[serde(default, skip)]
    pub cache_write_1h: u64,
    /// Fast mode served the request (`usage.speed: "fast"`, priced higher); not stored.
    #[serde(default, skip)]
    pub fast: bool,
    /// Message Batches results (half price); not stored.
    #[serde(default, skip)]
    pub batch: bool,
}

impl Tokens {
    /// All prompt tokens: input plus cache reads and writes (OpenAI's `prompt_tokens`).
    pub fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }
}

/// Anthropic's `usage` object. Absent fields stay `None`: `message_delta` usage is cumulative and
/// may be partial.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// The cache writes by TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<CacheCreation>,
    /// `speed`: whether fast mode served the request (`"fast"`) or not (`"standard"`).
    #[serde(
        default,
        rename = "speed",
        deserialize_with = "fast_speed",
        skip_serializing
    )]
    pub fast: Option<bool>,
}

fn fast_speed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let speed: Option<Cow<'de, str>> = Option::deserialize(d)?;
    Ok(speed.map(|s| s == "fast"))
}

/// `usage.cache_creation`: the cache writes by TTL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCreation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_1h_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Merges reported values into `t`: counts only grow, output is the latest report.
    pub fn merge_into(&self, t: &mut Tokens) {
        if let Some(v) = self.input_tokens {
            t.input = t.input.max(v);
        }
        if let Some(v) = self.cache_read_input_tokens {
            t.cache_read = t.cache_read.max(v);
        }
        if let Some(v) = self.cache_creation_input_tokens {
            t.cache_write = t.cache_write.max(v);
        }
        if let Some(v) = self
            .cache_creation
            .and_then(|c| c.ephemeral_1h_input_tokens)
        {
            t.cache_write_1h = t.cache_write_1h.max(v);
        }
        if let Some(fast) = self.fast {
            t.fast |= fast;
        }
        if let Some(v) = self.output_tokens {
            t.output = v;
        }
    }
}

impl From<Tokens> for WireUsage {
    fn from(t: Tokens) -> Self {
        WireUsage {
            input_tokens: Some(t.input),
            output_tokens: Some(t.output),
            cache_read_input_tokens: Some(t.cache_read),
            cache_creation_input_tokens: Some(t.cache_write),
            cache_creation: None,
            fast: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request, as the proxy writes it: borrowed from the parsed client request.

#[derive(Serialize)]
pub struct MessagesRequest<'b> {
    pub model: &'b str,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<System<'b>>,
    pub messages: Vec<Turn<'b>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Tools::is_empty")]
    pub tools: Tools<'b>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<OutputConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<AutoCache>,
    /// `auto` (priority capacity when the organisation has it) | `standard_only`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<&'static str>,
}

/// A top-level `cache_control` (automatic prompt caching: the breakpoint sits on the last
/// cacheable block and moves forward with the conversation): `{"type":"ephemeral"}`, with
/// `"ttl":"1h"` for the longer lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoCache {
    pub one_hour: bool,
}

impl Serialize for AutoCache {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1 + usize::from(self.one_hour)))?;
        m.serialize_entry("type", "ephemeral")?;
        if self.one_hour {
            m.serialize_entry("ttl", "1h")?;
        }
        m.end()
    }
}

pub struct System<'b>(pub Vec<Block<'b>>);

impl Serialize for System<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_content(&self.0, s)
    }
}

/// One message of the Anthropic conversation.
pub struct Turn<'b> {
    pub role: &'static str,
    pub content: Vec<Block<'b>>,
    /// Leading `tool_result` blocks (they must come first in a user turn).
    pub results: usize,
}

impl Serialize for Turn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", self.role)?;
        m.serialize_entry("content", &Blocks(&self.content))?;
        m.end()
    }
}

/// A content array, written by [`serialize_content`].
struct Blocks<'a, 'b>(&'a [Block<'b>]);

impl Serialize for Blocks<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_content(self.0, s)
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

pub enum Block<'b> {
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
        input: ToolInput<'b>,
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

pub enum Source<'b> {
    Base64 { media_type: &'b str, data: &'b str },
    Url(&'b str),
}

pub enum ToolInput<'b> {
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

impl Serialize for ToolInput<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolInput::Borrowed(r) => r.serialize(s),
            ToolInput::Owned(r) => r.serialize(s),
            ToolInput::Empty => s.serialize_map(Some(0))?.end(),
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
                    m.serialize_entry("content", &Blocks(content))?;
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

/// The tools of a request: the client's own, then Anthropic's web search server tool when asked.
/// Derefs to the client's tools.
#[derive(Default)]
pub struct Tools<'b> {
    pub defs: Vec<ToolDef<'b>>,
    pub web_search: Option<WebSearchTool<'b>>,
}

impl<'b> std::ops::Deref for Tools<'b> {
    type Target = Vec<ToolDef<'b>>;
    fn deref(&self) -> &Self::Target {
        &self.defs
    }
}

impl std::ops::DerefMut for Tools<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.defs
    }
}

impl Tools<'_> {
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty() && self.web_search.is_none()
    }
}

impl Serialize for Tools<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(
            self.defs.len() + usize::from(self.web_search.is_some()),
        ))?;
        for d in &self.defs {
            seq.serialize_element(d)?;
        }
        if let Some(w) = &self.web_search {
            seq.serialize_element(w)?;
        }
        seq.end()
    }
}

/// The web search server tool (`web_search_20250305`), with the user's approximate location.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WebSearchTool<'b> {
    pub city: Option<&'b str>,
    pub region: Option<&'b str>,
    pub country: Option<&'b str>,
    pub timezone: Option<&'b str>,
}

impl Serialize for WebSearchTool<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Location<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            city: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            region: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            country: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            timezone: Option<&'a str>,
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", "web_search_20250305")?;
        m.serialize_entry("name", "web_search")?;
        if self
            .city
            .or(self.region)
            .or(self.country)
            .or(self.timezone)
            .is_some()
        {
            m.serialize_entry(
                "user_location",
                &Location {
                    kind: "approximate",
                    city: self.city,
                    region: self.region,
                    country: self.country,
                    timezone: self.timezone,
                },
            )?;
        }
        m.end()
    }
}

pub struct ToolDef<'b> {
    pub name: &'b str,
    pub description: Option<&'b str>,
    /// None: the default empty object schema.
    pub input_schema: Option<&'b RawValue>,
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
pub enum ToolChoiceKind<'b> {
    None,
    Auto,
    Any,
    Tool(&'b str),
}

pub struct ToolChoice<'b> {
    pub kind: ToolChoiceKind<'b>,
    pub disable_parallel: bool,
}

impl Serialize for ToolChoice<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.kind {
            ToolChoiceKind::None => m.serialize_entry("type", "none")?,
            ToolChoiceKind::Auto => m.serialize_entry("type", "auto")?,
            ToolChoiceKind::Any => m.serialize_entry("type", "any")?,
            ToolChoiceKind::Tool(n) => {
                m.serialize_entry("type", "tool")?;
                m.serialize_entry("name", n)?;
            }
        }
        if self.disable_parallel && self.kind != ToolChoiceKind::None {
            m.serialize_entry("disable_parallel_tool_use", &true)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Thinking {
    Enabled { budget_tokens: u32 },
    Adaptive,
    Disabled,
}

#[derive(Serialize)]
pub struct OutputConfig {
    pub effort: &'static str,
}

#[derive(Serialize)]
pub struct Metadata<'b> {
    pub user_id: &'b str,
}

// ---------------------------------------------------------------------------------------------
// Request, as an upstream reads it (the simulated upstream): lenient, content kept raw.

/// A Messages request body; everything not listed is ignored.
#[derive(Debug, Deserialize)]
pub struct ReceivedRequest<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    pub max_tokens: Option<u64>,
    #[serde(borrow)]
    pub messages: Option<Vec<ReceivedMessage<'a>>>,
    #[serde(borrow)]
    pub system: Option<&'a RawValue>,
    #[serde(borrow)]
    pub tools: Option<Vec<ReceivedTool<'a>>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}`.
    #[serde(borrow)]
    pub tool_choice: Option<&'a RawValue>,
    /// `{"type": "enabled" | "adaptive" | "disabled", …}`.
    #[serde(borrow)]
    pub thinking: Option<&'a RawValue>,
    pub stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ReceivedMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    /// A string or an array of content blocks.
    #[serde(borrow)]
    pub content: &'a RawValue,
}

#[derive(Debug, Deserialize)]
pub struct ReceivedTool<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// Absent or `custom` for a client tool; a versioned name for a server tool.
    #[serde(borrow, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    /// A client tool's JSON schema.
    #[serde(borrow)]
    pub input_schema: Option<&'a RawValue>,
}

// ---------------------------------------------------------------------------------------------
// Response and stream events, as the proxy reads them.

/// A Messages response (also the `message` of a `message_start` event, with empty content).
#[derive(Debug, Default, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub model: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub content: Vec<ContentBlock<'a>>,
    #[serde(borrow, default)]
    pub stop_reason: Option<Str<'a>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

/// A content block of any type, flat: `type` says which fields are meaningful.
#[derive(Debug, Default, Deserialize)]
pub struct ContentBlock<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub data: Option<Str<'a>>,
    /// A text block's sources (web search results, documents).
    #[serde(borrow, default)]
    pub citations: Option<&'a RawValue>,
}

/// One SSE event's data, flat over the event types (`message_start`, `content_block_start`,
/// `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`, `error`).
#[derive(Debug, Default, Deserialize)]
pub struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub message: Option<Message<'a>>,
    #[serde(borrow, default)]
    pub content_block: Option<ContentBlock<'a>>,
    #[serde(borrow, default)]
    pub delta: Option<Delta<'a>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(borrow, default)]
    pub error: Option<ErrorDetail<'a>>,
}

/// The `delta` of `content_block_delta` (text, input JSON, thinking, signature) and of
/// `message_delta` (stop reason).
#[derive(Debug, Default, Deserialize)]
pub struct Delta<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub stop_reason: Option<Str<'a>>,
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// `{"type":"error","error":{"type":"…","message":"…"}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody<'a> {
    #[serde(borrow, default)]
    pub error: Option<ErrorDetail<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub message: Option<Str<'a>>,
}

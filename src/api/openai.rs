//! OpenAI Chat Completions wire types (the request side), borrowed from the request body.
//!
//! These types are deliberately lenient containers: every field is optional and validated by
//! the converter (`convert::request`), which knows the JSON path of each value and can therefore
//! name the offending field in its 400 answers. Strings borrow from the body when they contain no
//! escapes ([`Str`]); JSON that is only forwarded (tool schemas, `cache_control`) stays a [`RawValue`] and is
//! never re-parsed. Unknown fields are ignored.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

pub use super::Str;

/// `POST /v1/chat/completions` request body.
///
/// Fields that are accepted and deliberately ignored are not declared here (see
/// `convert::request` for the list).
#[derive(Debug, Default, Deserialize)]
pub struct ChatCompletionRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub messages: Option<Vec<Message<'a>>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(borrow, default)]
    pub stop: Option<Stop<'a>>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
    /// Legacy (pre-tools) function definitions.
    #[serde(borrow, default)]
    pub functions: Option<Vec<FunctionDef<'a>>>,
    #[serde(borrow, default)]
    pub tool_choice: Option<ToolChoice<'a>>,
    /// Legacy form of `tool_choice`.
    #[serde(borrow, default)]
    pub function_call: Option<ToolChoice<'a>>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(borrow, default)]
    pub response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    pub reasoning_effort: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub user: Option<Str<'a>>,
    /// Newer replacement of `user`.
    #[serde(borrow, default)]
    pub safety_identifier: Option<Str<'a>>,
    /// `in-memory` | `24h`: how long OpenAI keeps the cached prefix.
    #[serde(borrow, default)]
    pub prompt_cache_retention: Option<Str<'a>>,
    /// `auto` | `default` | `flex` | `priority` | `scale`.
    #[serde(borrow, default)]
    pub service_tier: Option<Str<'a>>,
    /// Web search for the model (OpenAI's search models).
    #[serde(borrow, default)]
    pub web_search_options: Option<WebSearchOptions<'a>>,
}

/// `web_search_options`: `user_location` (`{"type":"approximate","approximate":{…}}`) and
/// `search_context_size` (no Claude equivalent).
#[derive(Debug, Default, Deserialize)]
pub struct WebSearchOptions<'a> {
    #[serde(borrow, default)]
    pub user_location: Option<UserLocation<'a>>,
    #[serde(borrow, default)]
    pub search_context_size: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserLocation<'a> {
    #[serde(borrow, default)]
    pub approximate: Option<ApproximateLocation<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ApproximateLocation<'a> {
    #[serde(borrow, default)]
    pub city: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub region: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub country: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub timezone: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One entry of `messages`. The role is validated by the converter.
#[derive(Debug, Default, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default)]
    pub role: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    /// Legacy assistant function call.
    #[serde(borrow, default)]
    pub function_call: Option<FunctionCall<'a>>,
    #[serde(borrow, default)]
    pub tool_call_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub refusal: Option<Str<'a>>,
    /// Thinking blocks given back by the client (see `convert::response`).
    #[serde(borrow, default)]
    pub thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
}

/// Message content: a string or an array of parts.
#[derive(Debug)]
pub enum Content<'a> {
    Text(Str<'a>),
    Parts(Vec<Part<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Owned(v))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(64));
                while let Some(p) = seq.next_element::<Part<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A content part, flat so that the converter can dispatch on `type` and name bad fields.
#[derive(Debug, Default, Deserialize)]
pub struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub image_url: Option<ImageUrl<'a>>,
    #[serde(borrow, default)]
    pub file: Option<FilePart<'a>>,
    /// Not OpenAI, but sent by clients written for OpenAI-compatible Claude gateways: forwarded.
    #[serde(borrow, default)]
    pub cache_control: Option<&'a RawValue>,
}

/// `image_url`: `{"url": "...", "detail": "..."}`, or (leniently) just the URL string.
#[derive(Debug)]
pub struct ImageUrl<'a> {
    pub url: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ImageUrl<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Obj<'a> {
            #[serde(borrow, default)]
            url: Option<Str<'a>>,
        }
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ImageUrl<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with a `url` or a URL string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ImageUrl {
                    url: Some(Str(Cow::Borrowed(v))),
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ImageUrl {
                    url: Some(Str(Cow::Owned(v.to_owned()))),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let o = Obj::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ImageUrl { url: o.url })
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `{"type":"file","file":{"file_data":"data:application/pdf;base64,...","filename":"..."}}`.
#[derive(Debug, Default, Deserialize)]
pub struct FilePart<'a> {
    #[serde(borrow, default)]
    pub file_data: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub file_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub filename: Option<Str<'a>>,
}

/// Assistant `tool_calls` entry.
#[derive(Debug, Default, Deserialize)]
pub struct ToolCall<'a> {
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub function: Option<FunctionCall<'a>>,
}

/// `{"name": "...", "arguments": "<JSON text>"}`. `arguments` is kept raw: normally a JSON string
/// holding JSON text, but an object is accepted too.
#[derive(Debug, Default, Deserialize)]
pub struct FunctionCall<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
}

/// Thinking block handed back on an assistant message (`thinking_blocks`), in Anthropic's shape.
#[derive(Debug, Default, Deserialize)]
pub struct ThinkingBlock<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub data: Option<Str<'a>>,
}

/// `tools` entry: `{"type":"function","function":{...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct Tool<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub function: Option<FunctionDef<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionDef<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    /// JSON Schema, forwarded untouched as Anthropic's `input_schema`.
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
}

/// `tool_choice` / `function_call`: a mode string or an object naming a function.
#[derive(Debug)]
pub enum ToolChoice<'a> {
    Mode(Str<'a>),
    Object(ToolChoiceObject<'a>),
}

/// Object form, flat over its variants: `{"type":"function","function":{"name"}}` (tool_choice),
/// `{"name"}` (legacy function_call), `{"type":"allowed_tools","allowed_tools":{"mode"}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ToolChoiceObject<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub function: Option<NamedFunction<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub allowed_tools: Option<AllowedTools<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NamedFunction<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AllowedTools<'a> {
    #[serde(borrow, default)]
    pub mode: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ToolChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ToolChoice::Mode(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ToolChoice::Mode(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ToolChoiceObject::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ToolChoice::Object)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `stop`: a string or an array of strings.
#[derive(Debug)]
pub enum Stop<'a> {
    One(Str<'a>),
    Many(Vec<Str<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Stop<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Stop<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Stop::One(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Stop::One(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<Str<'a>>()? {
                    v.push(s);
                }
                Ok(Stop::Many(v))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `response_format`: `{"type":"text"|"json_object"|"json_schema","json_schema":{...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub json_schema: Option<JsonSchemaFormat<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JsonSchemaFormat<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    /// The schema follows OpenAI's strict subset (what native structured outputs accept).
    #[serde(default)]
    pub strict: Option<bool>,
}

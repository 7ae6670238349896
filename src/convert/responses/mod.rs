//! Pure conversions between the OpenAI Responses API and the Anthropic Messages API.
//!
//! No I/O and no storage: the pipeline fetches stored items and passes them in, and keeps what
//! these functions return.
//!
//! - [`request`]: a create body → a Messages body ([`responses_to_messages`]), plus the
//!   [`ResponseContext`] the answer needs.
//! - [`response`]: a Messages response → the response object ([`messages_to_response`]).
//! - [`stream`]: Messages SSE → the Responses event sequence ([`ResponsesStreamConverter`]).
//!
//! # The pipeline's side of the contract
//!
//! - **`previous_response_id`**: the pipeline looks the id up (unknown → 404 in the OpenAI
//!   envelope) and passes that response's input items followed by its output items, as JSON, as
//!   `prior`; they are converted as if they came first in `input`. The converter does not check the
//!   id: [`ConvertedResponsesRequest::previous_response_id`] says which one was asked for.
//! - **`item_reference`**: resolved through the [`ItemResolver`] the caller passes (any stored
//!   input or output item by id); an unknown id is a 400 naming `input[i].id`.
//! - **Storing** (when [`ConvertedResponsesRequest::store`]): the request's input items
//!   ([`input_items`]) and the final [`Response`]'s `output`, under its `id`.
//!
//! # Reasoning, without loss
//!
//! Each Anthropic `thinking` / `redacted_thinking` block becomes its own `reasoning` item whose
//! `encrypted_content` is the block itself ([`encode_reasoning`]: the block's JSON, base64url, with
//! a `ccp1.` prefix) and whose `summary` holds the thinking text when the request asked for
//! summaries (`reasoning.summary`). A `reasoning` item sent back becomes the identical block, first
//! in its assistant turn, so tool loops with thinking keep working. Reasoning items that are not
//! ours (another provider's `encrypted_content`, or none) are dropped: Claude cannot verify them.
//! `encrypted_content` is always returned, whatever `include` says: clients that send output items
//! back unchanged need it, and it only holds what Anthropic already returned.

pub mod request;
pub mod response;
pub mod stream;

pub use request::{
    ConvertedResponsesRequest, ItemResolver, NoStore, continued_id, input_items,
    responses_to_messages,
};
pub use response::{message_to_response, messages_to_response};
pub use stream::{EventSink, JsonEvents, ResponsesStreamConverter};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::api::anthropic::{Block, Tokens};
use crate::api::responses::{InputTokensDetails, OutputTokensDetails, Response, Status, Usage};

/// A function inside a `namespace` tool (Codex's `multi_agent_v1`, MCP servers' tools): Claude
/// has no namespaces, so it is offered as a tool of its own named `joined` (`{namespace}__{name}`,
/// made a valid Anthropic tool name, `^[a-zA-Z0-9_-]{1,128}$`, and unique among the request's
/// tools), and Claude's calls of `joined` go back as `function_call`s with `namespace` and `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacedTool {
    pub namespace: String,
    pub name: String,
    pub joined: String,
}

/// What the response (or stream) converter needs to know about the request: the ids, the name
/// the client asked for, which tools are custom (their calls are unwrapped), whether summaries
/// were asked for, and the settings echoed in the response object.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseContext {
    /// `resp_…`.
    pub id: String,
    pub created_at: u64,
    /// The model the client asked for (reported back).
    pub model: String,
    /// Names of the request's custom (freeform) tools.
    pub custom_tools: Vec<String>,
    /// The members of the request's `namespace` tools (and of namespaces its history calls),
    /// with the names Claude knows them by.
    pub namespaced: Vec<NamespacedTool>,
    /// `reasoning.summary` was set: reasoning items carry the thinking text as their summary.
    pub summaries: bool,
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
    pub user: Option<String>,
}

/// `text` as echoed when the request sets no format.
pub(crate) fn default_text() -> Value {
    serde_json::json!({"format": {"type": "text"}})
}

impl ResponseContext {
    /// A context with defaults for everything but the id, time and model (tests, replays).
    pub fn new(id: impl Into<String>, created_at: u64, model: impl Into<String>) -> Self {
        ResponseContext {
            id: id.into(),
            created_at,
            model: model.into(),
            custom_tools: Vec::new(),
            namespaced: Vec::new(),
            summaries: false,
            instructions: None,
            previous_response_id: None,
            metadata: Value::Object(serde_json::Map::new()),
            tools: Value::Array(Vec::new()),
            tool_choice: Value::from("auto"),
            parallel_tool_calls: true,
            temperature: None,
            top_p: None,
            max_output_tokens: None,
            reasoning: serde_json::json!({"effort": null, "summary": null}),
            text: default_text(),
            store: true,
            truncation: "disabled".to_owned(),
            user: None,
        }
    }

    pub(crate) fn is_custom(&self, tool: &str) -> bool {
        self.custom_tools.iter().any(|t| t == tool)
    }

    /// The Responses name of the tool Claude calls `tool`: a namespace member's namespace and
    /// own name, else no namespace and `tool` itself.
    pub(crate) fn call_name(&self, tool: &str) -> (Option<String>, String) {
        match self.namespaced.iter().find(|t| t.joined == tool) {
            Some(t) => (Some(t.namespace.clone()), t.name.clone()),
            None => (None, tool.to_owned()),
        }
    }

    /// An empty response object in `status`, echoing the request's settings.
    pub fn response(&self, status: Status) -> Response {
        self.clone().into_response(status)
    }

    /// [`ResponseContext::response`], the context's strings and settings moved into it.
    pub fn into_response(self, status: Status) -> Response {
        Response {
            id: self.id,
            object: "response".to_owned(),
            created_at: self.created_at,
            status,
            model: self.model,
            output: Vec::new(),
            usage: None,
            incomplete_details: None,
            error: None,
            instructions: self.instructions,
            previous_response_id: self.previous_response_id,
            metadata: self.metadata,
            tools: self.tools,
            tool_choice: self.tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            temperature: self.temperature,
            top_p: self.top_p,
            max_output_tokens: self.max_output_tokens,
            reasoning: self.reasoning,
            text: self.text,
            store: self.store,
            truncation: self.truncation,
            background: false,
            user: self.user,
        }
    }

    /// The id of output item `n` with OpenAI's `prefix` (`msg`, `fc`, `ctc`, `rs`, `ws`): unique
    /// within the response and across responses, and stable for a given response id.
    pub(crate) fn item_id(&self, prefix: &str, n: usize) -> String {
        let base = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        // Written by hand: `format!` took 1.8k instructions a response (callgrind).
        let mut id = String::with_capacity(prefix.len() + 1 + base.len() + 3);
        id.push_str(prefix);
        id.push('_');
        id.push_str(base);
        crate::util::fmt::push_hex_padded(&mut id, n as u64, 3);
        id
    }
}

/// A new `resp_…` id (48 hex digits, as OpenAI's): the creation time in milliseconds (12
/// digits), then 18 bytes from the thread's CSPRNG (seeded from the OS; an id is what
/// `GET /responses/{id}` needs, so it must not be guessable: 144 random bits are).
///
/// Time first, so new ids sort after the stored ones: the store's index on `id` grows at its
/// end, and a batch of puts changes a few of its pages. Random ids changed one index page per
/// response, scattered over the whole index (as many pages written as for the rows themselves
/// once the store holds a few thousand responses).
pub fn new_response_id() -> String {
    let mut id = String::with_capacity(53);
    id.push_str("resp_");
    let ms = u64::try_from(crate::util::time::now_ms()).unwrap_or(0);
    crate::util::fmt::push_hex(&mut id, &ms.to_be_bytes()[2..]);
    crate::util::fmt::push_hex(&mut id, &rand::random::<[u8; 18]>());
    id
}

/// Responses `usage` from Anthropic's counts: `input_tokens` includes cache reads and writes,
/// `cached_tokens` are the reads. Anthropic does not count thinking tokens apart:
/// `reasoning_tokens` is an estimate from the visible thinking text (`thinking_bytes / 4`), never
/// more than `output_tokens`.
pub(crate) fn usage(t: &Tokens, thinking_bytes: usize) -> Usage {
    let input = t.prompt();
    let estimate = u64::try_from(thinking_bytes.div_ceil(4)).unwrap_or(u64::MAX);
    Usage {
        input_tokens: input,
        input_tokens_details: InputTokensDetails {
            cached_tokens: t.cache_read,
        },
        output_tokens: t.output,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: estimate.min(t.output),
        },
        total_tokens: input.saturating_add(t.output),
    }
}

/// Anthropic `stop_reason` → (`status`, `incomplete_details.reason`).
pub(crate) fn status_of(stop_reason: Option<&str>) -> (Status, Option<&'static str>) {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => {
            (Status::Incomplete, Some("max_output_tokens"))
        }
        Some("refusal") => (Status::Incomplete, Some("content_filter")),
        _ => (Status::Completed, None),
    }
}

const REASONING_PREFIX: &str = "ccp1.";

/// A thinking block as Anthropic sent it (the content of a reasoning item).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingBlock {
    Thinking { thinking: String, signature: String },
    RedactedThinking { data: String },
}

impl ThinkingBlock {
    /// The block as it goes upstream.
    pub(crate) fn as_block(&self) -> Block<'_> {
        match self {
            ThinkingBlock::Thinking {
                thinking,
                signature,
            } => Block::Thinking {
                thinking,
                signature,
            },
            ThinkingBlock::RedactedThinking { data } => Block::RedactedThinking { data },
        }
    }
}

/// `encrypted_content` for a thinking block: `ccp1.` + base64url(the block's JSON, as it is
/// sent upstream).
pub fn encode_reasoning(block: &ThinkingBlock) -> String {
    let json = serde_json::to_vec(&block.as_block()).unwrap_or_default();
    let mut s = String::with_capacity(REASONING_PREFIX.len() + json.len() * 4 / 3 + 4);
    s.push_str(REASONING_PREFIX);
    URL_SAFE_NO_PAD.encode_string(&json, &mut s);
    s
}

/// The thinking block inside `encrypted_content`, if it is one of ours.
pub fn decode_reasoning(encrypted: &str) -> Option<ThinkingBlock> {
    let b64 = encrypted.strip_prefix(REASONING_PREFIX)?;
    let json = URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()?;
    let block: ThinkingBlock = serde_json::from_slice(&json).ok()?;
    match &block {
        ThinkingBlock::Thinking { signature, .. } if signature.is_empty() => None,
        ThinkingBlock::RedactedThinking { data } if data.is_empty() => None,
        _ => Some(block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_are_48_hex_digits_time_first() {
        let a = new_response_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_response_id();
        assert_ne!(a, b);
        // Later ids sort after earlier ones (the store's index grows at its end).
        assert!(a < b, "{a} {b}");
        let ms = u64::from_str_radix(&a[5..17], 16).unwrap();
        let now = u64::try_from(crate::util::time::now_ms()).unwrap();
        assert!(ms <= now && now - ms < 60_000, "{ms} {now}");
        // The rest is random: two ids made in the same millisecond still differ.
        let same: std::collections::HashSet<String> = (0..1000)
            .map(|_| new_response_id()[17..].to_owned())
            .collect();
        assert_eq!(same.len(), 1000);
        for id in [&a, &b] {
            let hex = id.strip_prefix("resp_").unwrap();
            assert_eq!(hex.len(), 48, "{id}");
            assert!(
                hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
    }

    #[test]
    fn reasoning_encoding_round_trips() {
        for b in [
            ThinkingBlock::Thinking {
                thinking: "Let me think \"about\" it.\n\u{1F600}".to_owned(),
                signature: "EqQBCkYIBxgCKkB+/=".to_owned(),
            },
            ThinkingBlock::RedactedThinking {
                data: "opaque==".to_owned(),
            },
        ] {
            let e = encode_reasoning(&b);
            assert!(e.starts_with("ccp1."));
            assert_eq!(decode_reasoning(&e), Some(b));
        }
        for bad in [
            "",
            "ccp1.",
            "ccp1.!!!",
            "gAAAAABo-openai-encrypted",
            "ccp1.e30",
        ] {
            assert_eq!(decode_reasoning(bad), None, "{bad}");
        }
        let unsigned = encode_reasoning(&ThinkingBlock::Thinking {
            thinking: "x".into(),
            signature: String::new(),
        });
        assert_eq!(decode_reasoning(&unsigned), None);
    }

    #[test]
    fn usage_and_status() {
        let t = Tokens {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 7,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        };
        let u = usage(&t, 400);
        assert_eq!(
            serde_json::to_value(u).unwrap(),
            serde_json::json!({"input_tokens": 117, "input_tokens_details": {"cached_tokens": 100},
                "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 122})
        );
        assert_eq!(usage(&t, 9).output_tokens_details.reasoning_tokens, 3);
        assert_eq!(usage(&t, 0).output_tokens_details.reasoning_tokens, 0);
        for (r, s, why) in [
            (Some("end_turn"), Status::Completed, None),
            (Some("tool_use"), Status::Completed, None),
            (Some("pause_turn"), Status::Completed, None),
            (None, Status::Completed, None),
            (
                Some("max_tokens"),
                Status::Incomplete,
                Some("max_output_tokens"),
            ),
            (
                Some("model_context_window_exceeded"),
                Status::Incomplete,
                Some("max_output_tokens"),
            ),
            (Some("refusal"), Status::Incomplete, Some("content_filter")),
        ] {
            assert_eq!(status_of(r), (s, why), "{r:?}");
        }
    }

    #[test]
    fn ids_keep_openai_prefixes() {
        let id = new_response_id();
        assert!(id.starts_with("resp_") && id.len() == 5 + 48, "{id}");
        let c = ResponseContext::new("resp_abc", 0, "gpt-5");
        assert_eq!(c.item_id("msg", 0), "msg_abc000");
        assert_eq!(c.item_id("fc", 17), "fc_abc011");
    }
}

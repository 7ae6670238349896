//! The `prepare` phase: a pure function of (route, mode, request) that decides
//! the upstream request (method, path, body) and what to do with its answer
//! (relay, meter, convert). No I/O; tested with a table below.

use std::collections::HashMap;

use axum::http::Method;
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::claude_code;
use crate::convert;
use crate::convert::models::ModelAliases;
use crate::error::ProxyError;
use crate::observability::tap::Tap;
use crate::routes::{self, Mode, Route};
use crate::upstream::UpBody;

/// What `prepare` needs besides the request.
pub struct PrepareOptions<'a> {
    /// `max_tokens` for converted requests that set none.
    pub default_max_tokens: u32,
    pub aliases: &'a ModelAliases,
    /// Automatic prompt caching for OpenAI-dialect requests (`openai_prompt_caching`).
    pub auto_cache: bool,
    /// For the Responses routes: what the store holds for this request.
    pub stored: &'a StoredItems,
    /// The client's `Host` (for links in answers that must lead back to the proxy).
    pub host: Option<&'a str>,
}

/// The items of a response a transport holds itself (a WebSocket keeps its last response): its
/// input items, then its output items. Passed as a request extension; used instead of the store
/// when the request's `previous_response_id` names it.
#[derive(Debug, Clone)]
pub struct Prior {
    /// The response id they belong to.
    pub id: String,
    pub items: std::sync::Arc<[Box<RawValue>]>,
}

/// The stored items a Responses request needs, looked up before `prepare` (which does no I/O).
#[derive(Debug, Default)]
pub struct StoredItems {
    /// The `previous_response_id` the request names, when it was found.
    pub previous: Option<String>,
    /// That response's input items, then its output items.
    pub prior: Vec<Box<RawValue>>,
    /// The items the request's `item_reference`s name, by id.
    pub items: HashMap<String, Box<RawValue>>,
}

/// What to do with the upstream's answer.
#[derive(Debug, PartialEq)]
pub enum Conversion {
    /// Relay it (streams as they come; other answers read whole, then sent).
    None,
    /// Anthropic Messages → OpenAI Chat Completions.
    Chat(ChatInfo),
    /// Anthropic Messages → OpenAI Responses (object or event stream).
    Responses(Box<ResponsesInfo>),
    /// Anthropic token count → `response.input_tokens`.
    InputTokens,
    /// The upstream's model list (or the cached or built-in one), merged with the aliases and
    /// known limits, in the client's dialect (`model_catalog`).
    Models,
    /// Any other `/v1/*` path: the answer streamed as it comes (file downloads, batch results),
    /// whatever its type.
    Relay(RelayKind),
}

/// What a relayed answer needs besides its bytes.
#[derive(Debug, PartialEq)]
pub enum RelayKind {
    Plain,
    /// A message batch or a list of them: each `results_url` is made to lead to this proxy
    /// (`{origin}/v1/messages/batches/{id}/results`), so that an SDK fetching it comes back
    /// through the same mode and credentials rather than to the upstream directly.
    Batch {
        origin: String,
    },
    /// A batch's results (JSONL): the usage of each succeeded message is metered.
    BatchResults,
}

#[derive(Debug, PartialEq)]
pub struct ChatInfo {
    pub client_model: String,
    pub include_usage: bool,
    pub legacy_functions: bool,
}

/// What the Responses converters need, and what to store.
#[derive(Debug, PartialEq)]
pub struct ResponsesInfo {
    pub context: crate::convert::responses::ResponseContext,
    /// The conversation's input items (a JSON array, each with an `id`) to store with the
    /// response; `None` for `store: false`.
    pub keep: Option<String>,
}

/// Which usage tap reads a relayed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    None,
    Anthropic,
    OpenAi,
    /// Message batch results (JSONL).
    BatchResults,
}

impl Meter {
    pub fn tap(self, is_sse: bool) -> Tap {
        match self {
            Meter::None => Tap::None,
            Meter::BatchResults => Tap::batch_results(),
            Meter::Anthropic => Tap::anthropic(is_sse),
            Meter::OpenAi => Tap::openai(is_sse),
        }
    }
}

/// The upstream request, and how to answer.
#[derive(Debug)]
pub struct Prepared {
    /// The model the request names (when it was read), for usage records.
    pub model: Option<String>,
    /// The model the client asked for, when the alias table sent another (a retired id).
    pub requested_model: Option<String>,
    pub stream: bool,
    pub meter: Meter,
    pub method: Method,
    /// Upstream path.
    pub path: String,
    /// Whether the client's query string goes upstream.
    pub keep_query: bool,
    /// Bytes, or (relay routes) the client's body streamed through: set by the pipeline.
    pub body: UpBody,
    pub conversion: Conversion,
}

impl Prepared {
    fn relay(method: &Method, path: &str, body: Bytes, meter: Meter) -> Prepared {
        Prepared {
            model: None,
            requested_model: None,
            stream: false,
            meter,
            method: method.clone(),
            path: path.to_owned(),
            keep_query: true,
            body: body.into(),
            conversion: Conversion::None,
        }
    }

    fn get(path: &str, conversion: Conversion) -> Prepared {
        Prepared {
            keep_query: conversion == Conversion::None,
            conversion,
            ..Prepared::relay(&Method::GET, path, Bytes::new(), Meter::None)
        }
    }
}

/// Decides the upstream request for `route` in `mode`.
pub fn prepare(
    route: Route,
    mode: Mode,
    method: &Method,
    client_path: &str,
    body: Bytes,
    opts: &PrepareOptions,
) -> Result<Prepared, ProxyError> {
    Ok(match (route, mode) {
        (Route::Messages, _) => {
            let path = "/v1/messages";
            messages(mode, method, path, body, Meter::Anthropic, opts.aliases)?
        }
        (Route::CountTokens, _) => {
            let path = "/v1/messages/count_tokens";
            messages(mode, method, path, body, Meter::None, opts.aliases)?
        }
        (Route::Models, Mode::Passthrough) => Prepared::get("/v1/models", Conversion::None),
        (Route::Models, _) => Prepared::get("/v1/models", Conversion::Models),
        // Any other /v1/* path: the mode prefix comes off; the body is the client's.
        (Route::Relay, _) => relay(mode, method, client_path, body, opts)?,
        (Route::ChatCompletions, Mode::Passthrough) => {
            Prepared::relay(method, "/v1/chat/completions", body, Meter::OpenAi)
        }
        (Route::ChatCompletions, _) => chat(mode, &body, opts)?,
        (Route::Responses, Mode::Passthrough) => {
            return Err(ProxyError::not_found(
                "passthrough has no Responses API (the upstream has none): use \
                 /openai/v1/responses (full mode) or /min/openai/v1/responses (minimal mode)",
            ));
        }
        (Route::Responses, _) => responses(mode, &body, opts)?,
        (
            Route::StoredResponse | Route::ResponseInputItems | Route::ResponseInputTokens,
            Mode::Passthrough,
        ) => {
            return Err(ProxyError::not_found(
                "passthrough has no Responses API (the upstream has none): use the full or \
                 minimal prefix (/openai/v1/responses…, /min/openai/v1/responses…)",
            ));
        }
        (Route::ResponseInputTokens, _) => input_tokens(mode, &body, opts)?,
        (Route::StoredResponse | Route::ResponseInputItems, _) => {
            // Answered from the store before `prepare` (pipeline/stored.rs).
            return Err(ProxyError::new(
                crate::error::ErrorKind::Internal,
                crate::error::Origin::Proxy,
                "a stored-response route reached prepare",
            ));
        }
        (Route::OpenAiModels, Mode::Passthrough) => Prepared::get("/v1/models", Conversion::None),
        (Route::OpenAiModels, _) => Prepared::get("/v1/models", Conversion::Models),
    })
}

/// Any other `/v1/*` path, in every mode: method, path, query and body as the client sent them
/// (the pipeline streams the body when it is an upload). Message batch answers get their
/// `results_url` pointed at the proxy in every mode (passthrough too: otherwise an SDK fetches
/// the results from the upstream directly, around the proxy); in full mode, each request of a
/// batch created with a body read whole is shaped as a message would be.
fn relay(
    mode: Mode,
    method: &Method,
    client_path: &str,
    body: Bytes,
    opts: &PrepareOptions,
) -> Result<Prepared, ProxyError> {
    let path = routes::strip_mode_prefix(client_path);
    let batches = path
        .strip_prefix("/v1/messages/batches")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let (kind, meter) = match batches {
        Some(rest) if rest.ends_with("/results") => (RelayKind::BatchResults, Meter::BatchResults),
        Some(_) => {
            let prefix = routes::mode_prefix(client_path);
            let host = opts.host.unwrap_or("localhost");
            let origin = format!("http://{host}{prefix}");
            (RelayKind::Batch { origin }, Meter::None)
        }
        None => (RelayKind::Plain, Meter::None),
    };
    let body = if mode == Mode::Full && batches == Some("") && method == Method::POST {
        shape_batch(body)?
    } else {
        body
    };
    Ok(Prepared {
        conversion: Conversion::Relay(kind),
        ..Prepared::relay(method, path, body, meter)
    })
}

/// Full mode: each `requests[i].params` of a batch shaped as full mode shapes a message (the
/// Claude Code identity first in `system`); everything else as it came. A body that is not a
/// batch is left for the upstream to refuse.
fn shape_batch(body: Bytes) -> Result<Bytes, ProxyError> {
    let Ok(mut batch) = serde_json::from_slice::<serde_json::Map<String, Value>>(&body) else {
        return Ok(body);
    };
    let Some(Value::Array(requests)) = batch.get_mut("requests") else {
        return Ok(body);
    };
    for (i, r) in requests.iter_mut().enumerate() {
        let Some(params) = r.get_mut("params").filter(|p| p.is_object()) else {
            continue;
        };
        let raw = serde_json::to_vec(params)
            .map_err(|e| ProxyError::invalid(format!("requests.{i}.params cannot be read: {e}")))?;
        let (shaped, _) = claude_code::shape_request(&raw)
            .map_err(|e| ProxyError::from(e).with_param(format!("requests.{i}.params")))?;
        *params = serde_json::from_slice(&shaped).map_err(|e| {
            ProxyError::invalid(format!("requests.{i}.params cannot be shaped: {e}"))
        })?;
    }
    serde_json::to_vec(&batch)
        .map(Bytes::from)
        .map_err(|e| ProxyError::invalid(format!("the batch cannot be encoded: {e}")))
}

/// Messages and count_tokens: shaped in full mode, read in minimal, untouched in passthrough;
/// in full and minimal mode a retired model id is replaced by its successor (the alias table),
/// every other byte as it was.
fn messages(
    mode: Mode,
    method: &Method,
    path: &str,
    body: Bytes,
    meter: Meter,
    aliases: &ModelAliases,
) -> Result<Prepared, ProxyError> {
    let (body, model, stream) = match mode {
        Mode::Full => {
            let (shaped, info) = claude_code::shape_request(&body)?;
            (Bytes::from(shaped), info.model, info.stream)
        }
        Mode::Minimal => {
            let head = read_head(&body)?;
            (body, head.model, head.stream.unwrap_or(false))
        }
        Mode::Passthrough => return Ok(Prepared::relay(method, path, body, meter)),
    };
    let mut p = Prepared::relay(method, path, body, meter);
    p.stream = stream;
    p.model = model;
    let successor = p.model.as_deref().and_then(|m| aliases.successor(m));
    if let (Some(new), Some(bytes)) = (successor, p.body.bytes())
        && let Some(replaced) = replace_model(bytes, new)
    {
        p.body = UpBody::Bytes(Bytes::from(replaced));
        p.requested_model = p.model.replace(new.to_owned());
    }
    Ok(p)
}

/// The body with its top-level `model` value replaced by `model`, every other byte unchanged.
fn replace_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let obj = claude_code::RawObject::parse(body).ok()?;
    let raw = obj.get("model")?;
    // The raw value is a slice of `body`: its offset is where the value starts.
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.len();
    if end > body.len() {
        return None;
    }
    let value = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

/// OpenAI Chat Completions converted to a Messages request (then shaped in full mode).
fn chat(mode: Mode, body: &[u8], opts: &PrepareOptions) -> Result<Prepared, ProxyError> {
    let convert_opts = convert::request::ConvertOptions {
        default_max_tokens: opts.default_max_tokens,
        aliases: opts.aliases,
        auto_cache: opts.auto_cache,
    };
    let converted = convert::request::chat_to_messages(body, &convert_opts)?;
    let out = if mode == Mode::Full {
        Bytes::from(claude_code::shape_request(&converted.body)?.0)
    } else {
        Bytes::from(converted.body)
    };
    Ok(Prepared {
        requested_model: None,
        model: Some(converted.upstream_model),
        stream: converted.stream,
        meter: Meter::Anthropic,
        method: Method::POST,
        path: "/v1/messages".to_owned(),
        keep_query: false,
        body: out.into(),
        conversion: Conversion::Chat(ChatInfo {
            client_model: converted.client_model,
            include_usage: converted.include_usage,
            legacy_functions: converted.legacy_functions,
        }),
    })
}

/// OpenAI Responses create converted to a Messages request (then shaped in full mode), with the
/// stored items it continues or references.
fn responses(mode: Mode, body: &[u8], opts: &PrepareOptions) -> Result<Prepared, ProxyError> {
    let converted = convert_responses(body, opts)?;
    let keep = if converted.store {
        Some(match &converted.input_text {
            Some(text) => text_items_to_store(&opts.stored.prior, text, &converted.context.id),
            None => items_to_store(opts.stored, body, &converted.context.id)?,
        })
    } else {
        None
    };
    let out = if mode == Mode::Full {
        Bytes::from(claude_code::shape_request(&converted.body)?.0)
    } else {
        Bytes::from(converted.body)
    };
    Ok(Prepared {
        requested_model: None,
        model: Some(converted.upstream_model),
        stream: converted.stream,
        meter: Meter::Anthropic,
        method: Method::POST,
        path: "/v1/messages".to_owned(),
        keep_query: false,
        body: out.into(),
        conversion: Conversion::Responses(Box::new(ResponsesInfo {
            context: converted.context,
            keep,
        })),
    })
}

/// `POST /openai/v1/responses/input_tokens`: the create body converted as a create would be,
/// then counted by the upstream's `count_tokens` (which takes only the fields that make input).
fn input_tokens(mode: Mode, body: &[u8], opts: &PrepareOptions) -> Result<Prepared, ProxyError> {
    let converted = convert_responses(body, opts)?;
    let mut full: serde_json::Map<String, Value> = serde_json::from_slice(&converted.body)
        .map_err(|e| {
            ProxyError::new(
                crate::error::ErrorKind::Internal,
                crate::error::Origin::Proxy,
                format!("the converted request cannot be read back: {e}"),
            )
        })?;
    full.retain(|k, _| {
        matches!(
            k.as_str(),
            "model" | "messages" | "system" | "tools" | "tool_choice" | "thinking"
        )
    });
    let counted = serde_json::to_vec(&full).map_err(|e| {
        ProxyError::new(
            crate::error::ErrorKind::Internal,
            crate::error::Origin::Proxy,
            format!("the count request cannot be encoded: {e}"),
        )
    })?;
    let out = if mode == Mode::Full {
        Bytes::from(claude_code::shape_request(&counted)?.0)
    } else {
        Bytes::from(counted)
    };
    Ok(Prepared {
        requested_model: None,
        model: Some(converted.upstream_model),
        stream: false,
        meter: Meter::None,
        method: Method::POST,
        path: "/v1/messages/count_tokens".to_owned(),
        keep_query: false,
        body: out.into(),
        conversion: Conversion::InputTokens,
    })
}

/// The converter, with the previous response's items as `prior` and the referenced items as the
/// resolver. A `previous_response_id` the lookup did not find is a 404.
fn convert_responses(
    body: &[u8],
    opts: &PrepareOptions,
) -> Result<convert::responses::ConvertedResponsesRequest, ProxyError> {
    use crate::convert::responses as r;
    let convert_opts = convert::request::ConvertOptions {
        default_max_tokens: opts.default_max_tokens,
        aliases: opts.aliases,
        auto_cache: opts.auto_cache,
    };
    let now = crate::util::time::now_secs();
    let stored = opts.stored;
    let resolver = |id: &str| stored.items.get(id).cloned();
    let converted = r::responses_to_messages(body, &stored.prior, &resolver, &convert_opts, now)?;
    if let Some(id) = &converted.previous_response_id
        && stored.previous.as_deref() != Some(id.as_str())
    {
        return Err(unknown_previous(id));
    }
    Ok(converted)
}

/// The 404 for a `previous_response_id` the store does not have.
pub fn unknown_previous(id: &str) -> ProxyError {
    ProxyError::not_found(format!(
        "previous response with id {id:?} not found: it is unknown, expired, deleted, or was \
         created with store: false"
    ))
    .with_param("previous_response_id")
}

/// What is stored with the response: the prior items, then the request's input items with each
/// `item_reference` replaced by the item it names, messages as OpenAI lists them (`type:
/// "message"`, content as parts) and an `id` given to items without one (`msg_`, `fco_`, …
/// followed by the response id's hex and `i` + the index).
fn items_to_store(stored: &StoredItems, body: &[u8], resp_id: &str) -> Result<String, ProxyError> {
    let base = resp_id.strip_prefix("resp_").unwrap_or(resp_id);
    let mut all: Vec<&RawValue> = stored.prior.iter().map(|b| &**b).collect();
    let input = convert::responses::input_items(body)?;
    let mut own: Vec<Box<RawValue>> = Vec::with_capacity(input.len());
    for (n, raw) in input.iter().enumerate() {
        let Ok(Value::Object(mut item)) = serde_json::from_str::<Value>(raw.get()) else {
            own.push(raw.clone());
            continue;
        };
        if item.get("type").is_none_or(Value::is_null) && item.contains_key("role") {
            item.insert("type".into(), Value::from("message"));
        }
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_owned();
        let kind = kind.as_str();
        if kind == "message"
            && let Some(Value::String(text)) = item.get("content")
        {
            // As OpenAI lists them: content as parts.
            let part = if item.get("role").and_then(Value::as_str) == Some("assistant") {
                "output_text"
            } else {
                "input_text"
            };
            let parts = serde_json::json!([{"type": part, "text": text}]);
            item.insert("content".into(), parts);
        }
        let id = item.get("id").and_then(Value::as_str);
        if kind == "item_reference"
            && let Some(found) = id.and_then(|id| stored.items.get(id))
        {
            own.push(found.clone());
            continue;
        }
        if item.get("id").is_none_or(Value::is_null) {
            let prefix = match kind {
                "message" => "msg",
                "function_call" => "fc",
                "function_call_output" => "fco",
                "custom_tool_call" => "ctc",
                "custom_tool_call_output" => "ctco",
                "reasoning" => "rs",
                _ => "item",
            };
            item.insert("id".into(), Value::from(format!("{prefix}_{base}i{n:03x}")));
        }
        let encoded = serde_json::value::to_raw_value(&item).map_err(|e| {
            ProxyError::invalid(format!("input[{n}] cannot be stored: {e}")).with_param("input")
        })?;
        own.push(encoded);
    }
    all.extend(own.iter().map(|b| &**b));
    serde_json::to_string(&all).map_err(|e| {
        ProxyError::new(
            crate::error::ErrorKind::Internal,
            crate::error::Origin::Proxy,
            format!("the input items cannot be stored: {e}"),
        )
    })
}

/// [`items_to_store`] for an `input` that is a string, written directly: the prior items, then
/// the one user message the string stands for, as the general path lists it (content as parts,
/// its `id` last) — without parsing the body again and building, encoding and parsing the item.
fn text_items_to_store(prior: &[Box<RawValue>], text: &str, resp_id: &str) -> String {
    let base = resp_id.strip_prefix("resp_").unwrap_or(resp_id);
    let mut out = Vec::with_capacity(
        prior.iter().map(|p| p.get().len() + 1).sum::<usize>() + text.len() + base.len() + 96,
    );
    out.push(b'[');
    for p in prior {
        out.extend_from_slice(p.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(
        br#"{"type":"message","role":"user","content":[{"type":"input_text","text":"#,
    );
    convert::write_json_str(&mut out, text);
    out.extend_from_slice(br#"}],"id":"msg_"#);
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(br#"i000"}]"#);
    // Only UTF-8 was written (the items are JSON text, `text` and `base` strings).
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The few top-level fields minimal mode reads (the rest is validated and skipped).
#[derive(serde::Deserialize)]
struct RequestHead {
    model: Option<String>,
    stream: Option<bool>,
}

fn read_head(body: &[u8]) -> Result<RequestHead, ProxyError> {
    match serde_json::from_slice::<RequestHead>(body) {
        Ok(h) => Ok(h),
        // Valid JSON that is not an object of this shape: the upstream judges it.
        Err(e) if e.is_data() => Ok(RequestHead {
            model: None,
            stream: None,
        }),
        Err(e) => Err(ProxyError::invalid(format!("invalid JSON body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_string_input_is_stored_as_the_general_path_stores_it() {
        let id = "resp_0123456789abcdef0123456789abcdef0123456789abcdef";
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        for prior in [
            vec![],
            vec![
                raw(
                    r#"{"type":"message","role":"user","content":[{"type":"input_text","text":"a"}],"id":"msg_1"}"#,
                ),
                raw(r#"{"type":"message","role":"assistant","content":[],"id":"msg_2"}"#),
            ],
        ] {
            let stored = StoredItems {
                prior,
                ..StoredItems::default()
            };
            for text in [
                "hi",
                "",
                "quote \" back\\ nl\n tab\t \u{1} é 😀 </script>",
                "\u{7f}\u{2028}",
            ] {
                let body =
                    serde_json::to_vec(&serde_json::json!({"model": "m", "input": text})).unwrap();
                let general = items_to_store(&stored, &body, id).unwrap();
                assert_eq!(
                    text_items_to_store(&stored.prior, text, id),
                    general,
                    "{text:?}"
                );
                let items: Vec<Value> = serde_json::from_str(&general).unwrap();
                assert_eq!(items.len(), stored.prior.len() + 1);
                assert_eq!(items.last().unwrap()["content"][0]["text"], text);
            }
        }
    }

    const MSG: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    const CHAT: &str =
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    fn run(route: Route, mode: Mode, method: Method, path: &str, body: &str) -> Prepared {
        let aliases = ModelAliases::with_defaults();
        let stored = StoredItems::default();
        let opts = PrepareOptions {
            default_max_tokens: 4096,
            auto_cache: false,
            aliases: &aliases,
            stored: &stored,
            host: Some("proxy.test"),
        };
        prepare(
            route,
            mode,
            &method,
            path,
            Bytes::from(body.to_owned()),
            &opts,
        )
        .unwrap()
    }

    /// One row: the request in, and what must go upstream.
    struct Case {
        route: Route,
        mode: Mode,
        method: Method,
        path: &'static str,
        body: &'static str,
        up: (Method, &'static str),
        meter: Meter,
        keep_query: bool,
        model: Option<&'static str>,
        stream: bool,
        conversion: &'static str,
        body_untouched: bool,
    }

    #[rustfmt::skip]
    #[allow(clippy::too_many_arguments)] // one row of the table, positionally
    fn case(route: Route, mode: Mode, method: Method, path: &'static str, body: &'static str,
            up: (Method, &'static str), meter: Meter, keep_query: bool, model: Option<&'static str>,
            stream: bool, conversion: &'static str, body_untouched: bool) -> Case {
        Case { route, mode, method, path, body, up, meter, keep_query, model, stream, conversion, body_untouched }
    }

    #[test]
    fn table() {
        use Method as M;
        use Mode::*;
        use Route::*;
        let sonnet = Some("claude-sonnet-4-5");
        let mapped = Some("claude-sonnet-5");
        #[rustfmt::skip]
        let cases = [
            case(Messages, Full, M::POST, "/v1/messages", MSG, (M::POST, "/v1/messages"), Meter::Anthropic, true, sonnet, true, "none", false),
            case(Messages, Minimal, M::POST, "/min/v1/messages", MSG, (M::POST, "/v1/messages"), Meter::Anthropic, true, sonnet, true, "none", true),
            case(Messages, Passthrough, M::POST, "/pt/v1/messages", MSG, (M::POST, "/v1/messages"), Meter::Anthropic, true, None, false, "none", true),
            case(CountTokens, Minimal, M::POST, "/min/v1/messages/count_tokens", MSG, (M::POST, "/v1/messages/count_tokens"), Meter::None, true, sonnet, true, "none", true),
            case(Models, Full, M::GET, "/v1/models", "", (M::GET, "/v1/models"), Meter::None, false, None, false, "models", true),
            case(Relay, Passthrough, M::DELETE, "/pt/v1/files/f_1", "", (M::DELETE, "/v1/files/f_1"), Meter::None, true, None, false, "relay", true),
            case(Relay, Full, M::GET, "/v1/files/f_1/content", "", (M::GET, "/v1/files/f_1/content"), Meter::None, true, None, false, "relay", true),
            case(Relay, Full, M::GET, "/full/v1/models/claude-opus-4-8", "", (M::GET, "/v1/models/claude-opus-4-8"), Meter::None, true, None, false, "relay", true),
            case(Relay, Minimal, M::POST, "/min/v1/messages/batches", MSG, (M::POST, "/v1/messages/batches"), Meter::None, true, None, false, "batch", true),
            case(Relay, Minimal, M::GET, "/min/v1/messages/batches/msgbatch_1/results", "", (M::GET, "/v1/messages/batches/msgbatch_1/results"), Meter::BatchResults, true, None, false, "batch_results", true),
            case(Relay, Minimal, M::GET, "/min/v1/messages/batchesx", "", (M::GET, "/v1/messages/batchesx"), Meter::None, true, None, false, "relay", true),
            case(ChatCompletions, Full, M::POST, "/openai/v1/chat/completions", CHAT, (M::POST, "/v1/messages"), Meter::Anthropic, false, mapped, true, "chat", false),
            case(ChatCompletions, Minimal, M::POST, "/min/openai/v1/chat/completions", CHAT, (M::POST, "/v1/messages"), Meter::Anthropic, false, mapped, true, "chat", false),
            case(ChatCompletions, Passthrough, M::POST, "/pt/openai/v1/chat/completions", CHAT, (M::POST, "/v1/chat/completions"), Meter::OpenAi, true, None, false, "none", true),
            case(OpenAiModels, Full, M::GET, "/openai/v1/models", "", (M::GET, "/v1/models"), Meter::None, false, None, false, "models", true),
            case(OpenAiModels, Passthrough, M::GET, "/pt/openai/v1/models", "", (M::GET, "/v1/models"), Meter::None, true, None, false, "none", true),
        ];
        for c in cases {
            let name = format!("{:?} {:?}", c.route, c.mode);
            let p = run(c.route, c.mode, c.method, c.path, c.body);
            assert_eq!((p.method, p.path.as_str()), c.up, "{name}");
            assert_eq!(p.meter, c.meter, "{name}");
            assert_eq!(p.keep_query, c.keep_query, "{name}");
            assert_eq!(p.model.as_deref(), c.model, "{name}");
            assert_eq!(p.stream, c.stream, "{name}");
            let kind = match p.conversion {
                Conversion::None => "none",
                Conversion::Chat(_) => "chat",
                Conversion::Responses(_) => "responses",
                Conversion::InputTokens => "input_tokens",
                Conversion::Models => "models",
                Conversion::Relay(RelayKind::Plain) => "relay",
                Conversion::Relay(RelayKind::Batch { .. }) => "batch",
                Conversion::Relay(RelayKind::BatchResults) => "batch_results",
            };
            assert_eq!(kind, c.conversion, "{name}");
            let sent = p.body.bytes().unwrap();
            assert_eq!(sent == c.body.as_bytes(), c.body_untouched, "{name}");
        }
    }

    #[test]
    fn batch_answers_lead_back_to_the_proxy_in_the_same_mode() {
        for (path, origin) in [
            ("/min/v1/messages/batches", "http://proxy.test/min"),
            ("/v1/messages/batches/msgbatch_1", "http://proxy.test"),
            (
                "/full/v1/messages/batches/msgbatch_1/cancel",
                "http://proxy.test/full",
            ),
        ] {
            let p = run(Route::Relay, Mode::Full, Method::POST, path, "");
            let want = Conversion::Relay(RelayKind::Batch {
                origin: origin.into(),
            });
            assert_eq!(p.conversion, want, "{path}");
        }
    }

    #[test]
    fn full_mode_shapes_each_request_of_a_batch_and_the_others_do_not() {
        let batch = r#"{"requests":[{"custom_id":"a","params":{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}}],"extra":1}"#;
        let p = run(
            Route::Relay,
            Mode::Full,
            Method::POST,
            "/v1/messages/batches",
            batch,
        );
        let v: Value = serde_json::from_slice(p.body.bytes().unwrap()).unwrap();
        let system = &v["requests"][0]["params"]["system"];
        assert_eq!(system[0]["text"], claude_code::IDENTITY);
        assert_eq!(system[1]["text"], "Be brief.");
        assert_eq!(v["extra"], 1);
        for mode in [Mode::Minimal, Mode::Passthrough] {
            let p = run(
                Route::Relay,
                mode,
                Method::POST,
                "/min/v1/messages/batches",
                batch,
            );
            assert_eq!(p.body.bytes().unwrap(), batch.as_bytes());
        }
    }

    #[test]
    fn retired_models_get_their_successor_in_full_and_minimal_mode_only() {
        let body = r#"{ "model" : "claude-3-5-sonnet-20241022", "max_tokens":5,"messages":[{"role":"user","content":"claude-3-5-sonnet-20241022"}]}"#;
        let p = run(
            Route::Messages,
            Mode::Minimal,
            Method::POST,
            "/min/v1/messages",
            body,
        );
        assert_eq!(p.model.as_deref(), Some("claude-sonnet-5"));
        assert_eq!(
            p.requested_model.as_deref(),
            Some("claude-3-5-sonnet-20241022")
        );
        let want = body.replacen("\"claude-3-5-sonnet-20241022\"", "\"claude-sonnet-5\"", 1);
        assert_eq!(p.body.bytes().unwrap(), want.as_bytes());
        let p = run(
            Route::CountTokens,
            Mode::Full,
            Method::POST,
            "/v1/messages/count_tokens",
            body,
        );
        let v: Value = serde_json::from_slice(p.body.bytes().unwrap()).unwrap();
        assert_eq!(v["model"], "claude-sonnet-5");
        assert_eq!(v["system"][0]["text"], claude_code::IDENTITY);
        let p = run(
            Route::Messages,
            Mode::Passthrough,
            Method::POST,
            "/pt/v1/messages",
            body,
        );
        assert_eq!(p.body.bytes().unwrap(), body.as_bytes());
        assert_eq!(p.requested_model, None);
        let p = run(
            Route::Messages,
            Mode::Minimal,
            Method::POST,
            "/min/v1/messages",
            MSG,
        );
        assert_eq!(p.requested_model, None);
        assert_eq!(p.body.bytes().unwrap(), MSG.as_bytes());
    }

    #[test]
    fn full_mode_shapes_the_system_prompt() {
        let p = run(
            Route::Messages,
            Mode::Full,
            Method::POST,
            "/v1/messages",
            MSG,
        );
        let v: serde_json::Value = serde_json::from_slice(p.body.bytes().unwrap()).unwrap();
        assert_eq!(v["system"][0]["text"], claude_code::IDENTITY);
    }

    #[test]
    fn invalid_bodies_are_client_errors() {
        let aliases = ModelAliases::with_defaults();
        let stored = StoredItems::default();
        let opts = PrepareOptions {
            default_max_tokens: 4096,
            auto_cache: false,
            aliases: &aliases,
            stored: &stored,
            host: Some("proxy.test"),
        };
        for (route, mode, body) in [
            (Route::Messages, Mode::Full, "{nope"),
            (Route::Messages, Mode::Minimal, "{nope"),
            (
                Route::ChatCompletions,
                Mode::Minimal,
                r#"{"model":"gpt-4o"}"#,
            ),
        ] {
            let e = prepare(route, mode, &Method::POST, "/", Bytes::from(body), &opts).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{route:?} {mode:?}");
            assert_eq!(e.origin, crate::error::Origin::Client);
        }
        // Passthrough judges nothing.
        let p = prepare(
            Route::Messages,
            Mode::Passthrough,
            &Method::POST,
            "/pt/v1/messages",
            Bytes::from("{nope"),
            &opts,
        );
        assert!(p.is_ok());
    }

    fn prepare_with(
        route: Route,
        body: &str,
        stored: &StoredItems,
    ) -> Result<Prepared, ProxyError> {
        let aliases = ModelAliases::with_defaults();
        let opts = PrepareOptions {
            default_max_tokens: 4096,
            auto_cache: false,
            aliases: &aliases,
            stored,
            host: None,
        };
        let path = "/min/openai/v1/responses";
        let body = Bytes::from(body.to_owned());
        prepare(route, Mode::Minimal, &Method::POST, path, body, &opts)
    }

    #[test]
    fn responses_keep_the_conversation_unless_store_is_false() {
        let mut stored = StoredItems {
            previous: Some("resp_prev".into()),
            ..StoredItems::default()
        };
        stored.prior.push(
            serde_json::value::to_raw_value(&serde_json::json!({"type": "message", "id": "msg_p",
                "role": "user", "content": [{"type": "input_text", "text": "before"}]}))
            .unwrap(),
        );
        let body = r#"{"model":"gpt-4o","input":[{"role":"user","content":"now"}],"previous_response_id":"resp_prev"}"#;
        let p = prepare_with(Route::Responses, body, &stored).unwrap();
        let Conversion::Responses(info) = p.conversion else {
            panic!("{:?}", p.conversion)
        };
        let kept: Value = serde_json::from_str(info.keep.as_deref().unwrap()).unwrap();
        assert_eq!(kept[0]["id"], "msg_p");
        assert_eq!(kept[1]["type"], "message");
        assert_eq!(
            kept[1]["content"],
            serde_json::json!([{"type": "input_text", "text": "now"}])
        );
        assert!(kept[1]["id"].as_str().unwrap().starts_with("msg_"));
        let sent: Value = serde_json::from_slice(p.body.bytes().unwrap()).unwrap();
        assert_eq!(sent["messages"][0]["content"][0]["text"], "before");

        let body = r#"{"model":"gpt-4o","input":"x","store":false}"#;
        let p = prepare_with(Route::Responses, body, &StoredItems::default()).unwrap();
        let Conversion::Responses(info) = p.conversion else {
            panic!()
        };
        assert_eq!(info.keep, None);
    }

    #[test]
    fn an_unknown_previous_response_is_404() {
        let body = r#"{"model":"gpt-4o","input":"x","previous_response_id":"resp_gone"}"#;
        for route in [Route::Responses, Route::ResponseInputTokens] {
            let e = prepare_with(route, body, &StoredItems::default()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert_eq!(e.param.as_deref(), Some("previous_response_id"));
        }
    }

    #[test]
    fn input_tokens_sends_only_what_count_tokens_takes() {
        let body = r#"{"model":"gpt-4o","input":"x","instructions":"sys","max_output_tokens":9,"temperature":0.5,"stream":true}"#;
        let p = prepare_with(Route::ResponseInputTokens, body, &StoredItems::default()).unwrap();
        assert_eq!(p.path, "/v1/messages/count_tokens");
        assert_eq!(p.conversion, Conversion::InputTokens);
        assert!(!p.stream);
        let sent: serde_json::Map<String, Value> =
            serde_json::from_slice(p.body.bytes().unwrap()).unwrap();
        let mut keys: Vec<&str> = sent.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["messages", "model", "system"]);
    }
}

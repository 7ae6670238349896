//! Fuzzing with proptest: the request parsers and converters, the SSE parser,
//! the stream converter and full-mode shaping never panic and always give a
//! well-formed answer; and through HTTP, random methods, headers and bodies on
//! every route always get a response with a well-formed error envelope in the
//! route's dialect (or a success), never a panic, a hang or a dropped connection.
//!
//! Bounded for the normal test run (about a minute on 2 cores, debug build).
//! Longer runs: `CCPROXY_FUZZ_CASES=N cargo test --release --test fuzz`
//! (N cases for every pure property, N/5 for the HTTP ones); see README.

use std::time::Duration;

use ccproxy::convert::{self, ChatStreamConverter, SseParser};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// Cases for pure properties (and a fifth of that for the HTTP ones).
fn cases(default: u32) -> u32 {
    std::env::var("CCPROXY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Shrinking is bounded too: a failure is reported within seconds.
        max_shrink_iters: 2048,
        max_shrink_time: 20_000,
        // The failing input is printed; no regression files in the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- generators

const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "detail",
    "input_audio",
    "tool_calls",
    "tool_call_id",
    "id",
    "function",
    "name",
    "arguments",
    "parameters",
    "strict",
    "tools",
    "tool_choice",
    "function_call",
    "functions",
    "stop",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "reasoning_effort",
    "response_format",
    "json_schema",
    "schema",
    "thinking",
    "budget_tokens",
    "signature",
    "data",
    "file",
    "file_data",
    "filename",
    "stream",
    "stream_options",
    "include_usage",
    "parallel_tool_calls",
    "user",
    "metadata",
    "system",
    "cache_control",
    "refusal",
    "source",
    "media_type",
    "input",
    "input_schema",
    "tool_use_id",
    "is_error",
    "logprobs",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "store",
    "",
];

const STRINGS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "text",
    "image_url",
    "image",
    "file",
    "tool_use",
    "tool_result",
    "input_audio",
    "none",
    "auto",
    "required",
    "any",
    "low",
    "medium",
    "high",
    "minimal",
    "json_object",
    "json_schema",
    "thinking",
    "redacted_thinking",
    "ephemeral",
    "enabled",
    "disabled",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:image/jpeg;base64,",
    "data:;base64,@@",
    "data:,",
    "https://example.com/a.png",
    "http://[::1",
    "{\"a\":1}",
    "{\"location\":",
    "{",
    "[]",
    "",
    " ",
    "\u{0}",
    "\u{feff}",
    "\u{1F600}\u{200d}",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1-20250805",
    "[sim:tools]",
    "[sim:thinking]",
    "[sim:status=400]",
    "[sim:status=429]",
    "[sim:error-midstream]",
    "[sim:no-stop]",
    "[sim:unknown-event]",
    "[sim:malformed-sse]",
    "[sim:bad-json-event]",
    "[sim:reset-midstream]",
    "[sim:cache]",
    "[sim:stop=max_tokens]",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => prop_oneof![
            -3i64..70_000,
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0),
            Just(-1)
        ]
        .prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        1 => Just(json!(1e300)),
        1 => Just(json!(0.5)),
        4 => prop::sample::select(STRINGS).prop_map(Value::from),
        2 => ".{0,16}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A content part of an OpenAI message, mostly well-formed.
fn content_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,24}".prop_map(|t| json!({"type": "text", "text": t})),
        prop::sample::select(STRINGS)
            .prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        prop::sample::select(STRINGS).prop_map(|u| json!({"type": "image_url", "image_url": u})),
        prop::sample::select(STRINGS)
            .prop_map(|d| json!({"type": "file", "file": {"file_data": d, "filename": "a.pdf"}})),
        Just(json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})),
        Just(json!({"type": "text"})),
        Just(json!({"type": "refusal", "refusal": "no"})),
        value(),
    ]
}

fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(Value::from),
        2 => ".{0,32}".prop_map(Value::from),
        3 => prop::collection::vec(content_part(), 0..4).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => value(),
    ]
}

fn tool_call() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("call_1"), Just("call_2"), Just(""), Just("x y")],
        prop_oneof![Just("get_weather"), Just(""), Just("a.b"), Just("ünï")],
        prop_oneof![
            Just("{\"location\":\"Paris\"}"),
            Just("{}"),
            Just(""),
            Just("{\"a\":"),
            Just("[1,2]"),
            Just("null"),
        ],
        prop::bool::weighted(0.9),
    )
        .prop_map(|(id, name, args, well)| {
            if well {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            } else {
                json!({"id": id, "function": {"name": name, "arguments": {"already": "object"}}})
            }
        })
}

fn chat_message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => Just("user"),
            3 => Just("assistant"),
            1 => Just("system"),
            1 => Just("developer"),
            2 => Just("tool"),
            1 => Just("function"),
            1 => Just("bogus"),
        ],
        content(),
        prop::option::weighted(0.3, prop::collection::vec(tool_call(), 0..3)),
        prop::option::weighted(0.3, prop_oneof![Just("call_1"), Just("call_2"), Just("")]),
        prop::option::weighted(0.2, prop::collection::vec((key(), value()), 0..3)),
    )
        .prop_map(|(role, content, calls, call_id, extra)| {
            let mut m = serde_json::Map::new();
            m.insert("role".into(), role.into());
            m.insert("content".into(), content);
            if let Some(c) = calls {
                m.insert("tool_calls".into(), Value::Array(c));
            }
            if let Some(id) = call_id {
                m.insert("tool_call_id".into(), id.into());
            }
            for (k, v) in extra.unwrap_or_default() {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

fn tool_def() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (prop_oneof![Just("get_weather"), Just("calc"), Just("")], value()).prop_map(|(n, p)| {
            json!({"type": "function", "function": {"name": n, "description": "d",
                "parameters": {"type": "object", "properties": {"x": p}}}})
        }),
        1 => value(),
    ]
}

/// A chat.completions request: realistic skeleton, random details.
fn noisy_chat_request() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => prop::sample::select(STRINGS).prop_map(Value::from), 1 => leaf()],
        prop::collection::vec(chat_message(), 0..6),
        prop::option::weighted(0.3, prop::collection::vec(tool_def(), 0..3)),
        prop::collection::vec(
            (prop::sample::select(KEYS).prop_map(str::to_owned), value()),
            0..5,
        ),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(model, messages, tools, extra, stream)| {
            let mut o = serde_json::Map::new();
            for (k, v) in extra {
                o.insert(k, v);
            }
            o.insert("model".into(), model);
            o.insert("messages".into(), Value::Array(messages));
            if let Some(t) = tools {
                o.insert("tools".into(), Value::Array(t));
            }
            if let Some(s) = stream {
                o.insert("stream".into(), s.into());
            }
            Value::Object(o)
        })
}

/// A top-level parameter with a plausible value (sometimes out of range).
fn chat_param() -> impl Strategy<Value = (String, Value)> {
    fn p(k: &'static str, v: BoxedStrategy<Value>) -> BoxedStrategy<(String, Value)> {
        v.prop_map(move |v| (k.to_owned(), v)).boxed()
    }
    prop_oneof![
        p(
            "temperature",
            prop_oneof![0.0f64..2.0, -1.0f64..3.0]
                .prop_map(Value::from)
                .boxed()
        ),
        p("top_p", (0.0f64..1.0).prop_map(Value::from).boxed()),
        p(
            "max_tokens",
            prop_oneof![1u64..100_000, Just(0)]
                .prop_map(Value::from)
                .boxed()
        ),
        p(
            "max_completion_tokens",
            (1u64..200_000).prop_map(Value::from).boxed()
        ),
        p(
            "n",
            prop_oneof![Just(1), Just(2)].prop_map(Value::from).boxed()
        ),
        p("seed", any::<i64>().prop_map(Value::from).boxed()),
        p(
            "stop",
            prop_oneof![
                ".{0,8}".prop_map(Value::from),
                prop::collection::vec(".{0,8}", 0..6).prop_map(Value::from),
                Just(Value::Null),
            ]
            .boxed()
        ),
        p(
            "stream_options",
            any::<bool>()
                .prop_map(|b| json!({"include_usage": b}))
                .boxed()
        ),
        p(
            "response_format",
            prop_oneof![
                Just(json!({"type": "text"})),
                Just(json!({"type": "json_object"})),
                value().prop_map(|s| json!({"type": "json_schema",
                    "json_schema": {"name": "out", "schema": s, "strict": true}})),
            ]
            .boxed()
        ),
        p(
            "reasoning_effort",
            prop::sample::select(&["minimal", "low", "medium", "high", "none"][..])
                .prop_map(Value::from)
                .boxed()
        ),
        p(
            "tool_choice",
            prop_oneof![
                prop::sample::select(&["auto", "none", "required"][..]).prop_map(Value::from),
                Just(json!({"type": "function", "function": {"name": "get_weather"}})),
                Just(
                    json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "calc"}}]}})
                ),
            ]
            .boxed()
        ),
        p(
            "parallel_tool_calls",
            any::<bool>().prop_map(Value::from).boxed()
        ),
        p("user", ".{0,16}".prop_map(Value::from).boxed()),
        p("metadata", Just(json!({"k": "v"})).boxed()),
        p("logprobs", any::<bool>().prop_map(Value::from).boxed()),
        p("service_tier", Just(json!("auto")).boxed()),
        p(
            "thinking",
            (0u64..40_000)
                .prop_map(|b| json!({"type": "enabled", "budget_tokens": b}))
                .boxed()
        ),
        (key(), value()).boxed(),
    ]
}

/// A conversation a real client would send: valid roles, tool calls answered
/// by tool messages, mostly valid parts; details random.
fn realistic_chat_request() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        4 => ".{0,24}".prop_map(|t| json!({"type": "text", "text": t})),
        1 => prop::sample::select(&[
            "data:image/png;base64,iVBORw0KGgo=",
            "https://example.com/a.png",
            "data:image/gif;base64,R0lGOD==",
        ][..])
        .prop_map(|u| json!({"type": "image_url", "image_url": {"url": u, "detail": "low"}})),
        1 => Just(json!({"type": "file", "file": {
            "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}})),
    ];
    let text_or_parts = prop_oneof![
        3 => ".{0,32}".prop_map(Value::from),
        1 => prop::sample::select(STRINGS).prop_map(Value::from),
        2 => prop::collection::vec(part, 1..4).prop_map(Value::Array),
    ];
    let turn = (
        prop_oneof![
            5 => Just("user"),
            1 => Just("system"),
            1 => Just("developer"),
            3 => Just("assistant_text"),
            2 => Just("assistant_tools"),
        ],
        text_or_parts,
        prop::collection::vec(tool_call(), 1..3),
    );
    (
        prop::sample::select(
            &["gpt-4o", "gpt-4o-mini", "o3", "claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4.1"][..],
        ),
        prop::collection::vec(turn, 1..7),
        prop::option::weighted(0.4, prop::collection::vec(tool_def(), 1..3)),
        prop::collection::vec(chat_param(), 0..5),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(model, turns, tools, params, stream)| {
            let mut messages = Vec::new();
            for (kind, content, calls) in turns {
                match kind {
                    "assistant_text" => {
                        messages.push(json!({"role": "assistant", "content": content}));
                    }
                    "assistant_tools" => {
                        messages.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
                        for c in &calls {
                            messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": content}));
                        }
                    }
                    role => messages.push(json!({"role": role, "content": content})),
                }
            }
            if messages.last().is_some_and(|m| m["role"] == "assistant") {
                messages.push(json!({"role": "user", "content": "go on"}));
            }
            let mut o = serde_json::Map::new();
            for (k, v) in params {
                o.insert(k, v);
            }
            o.insert("model".into(), model.into());
            o.insert("messages".into(), Value::Array(messages));
            if let Some(t) = tools {
                o.insert("tools".into(), Value::Array(t));
            }
            if let Some(s) = stream {
                o.insert("stream".into(), s.into());
            }
            Value::Object(o)
        })
}

fn chat_request() -> impl Strategy<Value = Value> {
    prop_oneof![3 => realistic_chat_request(), 2 => noisy_chat_request()]
}

/// An Anthropic Messages request: realistic skeleton, random details.
fn messages_request() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(STRINGS),
        prop::collection::vec(
            (
                prop_oneof![Just("user"), Just("assistant"), Just("system")],
                content(),
            ),
            0..5,
        ),
        prop_oneof![
            Just(Value::Null),
            ".{0,16}".prop_map(Value::from),
            prop::collection::vec(content_part(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                Just(json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}})),
                0..6
            )
            .prop_map(Value::Array),
            leaf(),
        ],
        prop::collection::vec(
            (prop::sample::select(KEYS).prop_map(str::to_owned), value()),
            0..4,
        ),
    )
        .prop_map(|(model, msgs, system, extra)| {
            let mut o = serde_json::Map::new();
            for (k, v) in extra {
                o.insert(k, v);
            }
            o.insert("model".into(), model.into());
            o.insert("max_tokens".into(), 64.into());
            o.insert(
                "messages".into(),
                msgs.into_iter()
                    .map(|(r, c)| json!({"role": r, "content": c}))
                    .collect(),
            );
            if !system.is_null() {
                o.insert("system".into(), system);
            }
            Value::Object(o)
        })
}

/// Bytes that are nearly JSON: a valid document cut, or with one byte changed.
fn mutated(doc: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (doc, any::<prop::sample::Index>(), any::<u8>(), 0u8..3).prop_map(|(v, at, b, op)| {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        if bytes.is_empty() {
            return bytes;
        }
        let i = at.index(bytes.len());
        match op {
            0 => bytes.truncate(i),
            1 => bytes[i] = b,
            _ => bytes.insert(i, b),
        }
        bytes
    })
}

// ---------------------------------------------------------------- checks

fn aliases() -> &'static convert::ModelAliases {
    static A: std::sync::OnceLock<convert::ModelAliases> = std::sync::OnceLock::new();
    A.get_or_init(convert::ModelAliases::with_defaults)
}

fn opts() -> convert::ConvertOptions<'static> {
    convert::ConvertOptions {
        default_max_tokens: 4096,
        aliases: aliases(),
    }
}

/// Converts; checks the result either way.
fn check_chat_to_messages(body: &[u8]) -> Result<(), TestCaseError> {
    match convert::chat_to_messages(body, &opts()) {
        Ok(c) => {
            let out: Value = serde_json::from_slice(&c.body)
                .map_err(|e| TestCaseError::fail(format!("converted body is not JSON: {e}")))?;
            prop_assert!(out["model"].is_string(), "{out}");
            prop_assert!(out["max_tokens"].as_u64().is_some_and(|n| n > 0), "{out}");
            prop_assert!(
                out["messages"].as_array().is_some_and(|m| !m.is_empty()),
                "{out}"
            );
            // Every converted request can be shaped for full mode.
            let (shaped, _) = ccproxy::claude_code::shape_request(&c.body).map_err(|e| {
                TestCaseError::fail(format!("shape failed on a converted body: {e}"))
            })?;
            let shaped: Value = serde_json::from_slice(&shaped).unwrap();
            prop_assert_eq!(
                &shaped["system"][0]["text"],
                &Value::from(ccproxy::claude_code::IDENTITY)
            );
        }
        Err(e) => {
            prop_assert!(!e.message.is_empty());
            let body = ccproxy::error::ProxyError::from(e).body(ccproxy::routes::Dialect::OpenAi);
            let v: Value = serde_json::from_slice(&body).unwrap();
            prop_assert!(crate::support::is_openai_envelope(&v), "{v}");
        }
    }
    Ok(())
}

fn count_cache_control(v: &Value) -> usize {
    match v {
        Value::Array(items) => items.iter().map(count_cache_control).sum(),
        Value::Object(m) => {
            usize::from(m.get("cache_control").is_some_and(|c| !c.is_null()))
                + m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "cache_control" | "input_schema" | "input")
                    })
                    .map(|(_, v)| count_cache_control(v))
                    .sum::<usize>()
        }
        _ => 0,
    }
}

fn check_shape(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok((out, info)) = ccproxy::claude_code::shape_request(body) else {
        return Ok(());
    };
    // Values are copied byte for byte: JSON that serde_json itself refuses
    // (numbers out of range) stays as it came.
    let Ok(input) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let out: Value = serde_json::from_slice(&out)
        .map_err(|e| TestCaseError::fail(format!("shaped body is not JSON: {e}")))?;
    let first = &out["system"][0];
    let ident = ccproxy::claude_code::IDENTITY;
    prop_assert!(
        first["text"] == ident || out["system"] == ident,
        "identity is not first: {out}"
    );
    if info.identity_added {
        let count = |v: &Value| -> usize {
            ["system", "messages", "tools"]
                .iter()
                .map(|k| count_cache_control(&v[*k]))
                .sum()
        };
        let (before, after) = (count(&input), count(&out));
        prop_assert!(
            after <= before.max(4),
            "shaping made {after} cache_control blocks from {before}"
        );
    }
    Ok(())
}

/// Every frame is `data: <json object>` with choices or an error, and exactly one
/// `data: [DONE]` ends the output.
fn check_openai_stream(out: &[u8]) -> Result<(), TestCaseError> {
    let text =
        std::str::from_utf8(out).map_err(|_| TestCaseError::fail("stream output is not UTF-8"))?;
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    // A whole answer ends with [DONE]; a failed one with its one error chunk.
    let last = frames.last().copied().unwrap_or_default();
    let failed = last.starts_with("data: {\"error\"");
    prop_assert!(
        failed || text.ends_with("data: [DONE]\n\n"),
        "neither [DONE] nor an error at the end: {text}"
    );
    prop_assert!(
        !(failed && text.contains("[DONE]")),
        "[DONE] in a failed stream: {text}"
    );
    let mut error_seen = false;
    for (i, f) in frames.iter().enumerate() {
        let data = f
            .strip_prefix("data: ")
            .ok_or_else(|| TestCaseError::fail(format!("not a data frame: {f:?}")))?;
        if data == "[DONE]" {
            prop_assert_eq!(i, frames.len() - 1, "[DONE] before the end: {}", text);
            continue;
        }
        prop_assert!(!error_seen, "a chunk after the error frame: {text}");
        let v: Value = serde_json::from_str(data)
            .map_err(|e| TestCaseError::fail(format!("bad chunk JSON {e}: {data}")))?;
        if v.get("error").is_some() {
            prop_assert!(crate::support::is_openai_envelope(&v), "{v}");
            error_seen = true;
        } else {
            prop_assert_eq!(&v["object"], "chat.completion.chunk");
            prop_assert!(v["choices"].is_array(), "{v}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- SSE events

fn block_start() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"type": "text", "text": ""})),
        Just(json!({"type": "text", "text": "pre"})),
        Just(json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}})),
        Just(json!({"type": "tool_use", "id": "toolu_2", "name": "calc", "input": {"x": 1}})),
        Just(json!({"type": "thinking", "thinking": "", "signature": ""})),
        Just(json!({"type": "redacted_thinking", "data": "abc"})),
        Just(
            json!({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}})
        ),
        Just(json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []})),
        value(),
    ]
}

fn delta() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,12}".prop_map(|t| json!({"type": "text_delta", "text": t})),
        prop_oneof![
            Just("{\"loc"),
            Just("ation\": \"Par"),
            Just("is\"}"),
            Just(""),
            Just("}"),
            Just("\\u00e9"),
        ]
        .prop_map(|p| json!({"type": "input_json_delta", "partial_json": p})),
        ".{0,12}".prop_map(|t| json!({"type": "thinking_delta", "thinking": t})),
        Just(json!({"type": "signature_delta", "signature": "sig=="})),
        Just(json!({"type": "citations_delta", "citation": {"type": "char_location"}})),
        value(),
    ]
}

fn index() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u64..4).prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(Value::Null),
    ]
}

fn stop_reason() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("end_turn")),
        Just(json!("max_tokens")),
        Just(json!("tool_use")),
        Just(json!("stop_sequence")),
        Just(json!("refusal")),
        Just(json!("pause_turn")),
        Just(json!("model_context_window_exceeded")),
        Just(json!("something_new")),
        Just(Value::Null),
        leaf(),
    ]
}

fn usage() -> impl Strategy<Value = Value> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(i, o)| json!({"input_tokens": i, "output_tokens": o})),
        Just(json!({"input_tokens": u64::MAX, "output_tokens": u64::MAX,
            "cache_read_input_tokens": u64::MAX, "cache_creation_input_tokens": u64::MAX})),
        Just(json!({"output_tokens": -5})),
        value(),
    ]
}

/// One upstream event: its SSE name and data bytes.
fn event() -> impl Strategy<Value = (String, Vec<u8>)> {
    let j = |name: &'static str, v: Value| (name.to_owned(), serde_json::to_vec(&v).unwrap());
    prop_oneof![
        2 => usage().prop_map(move |u| j("message_start", json!({"type": "message_start",
            "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                        "content": [], "usage": u}}))),
        3 => (index(), block_start()).prop_map(move |(i, b)| j("content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": b}))),
        6 => (index(), delta()).prop_map(move |(i, d)| j("content_block_delta",
            json!({"type": "content_block_delta", "index": i, "delta": d}))),
        2 => index().prop_map(move |i| j("content_block_stop",
            json!({"type": "content_block_stop", "index": i}))),
        2 => (stop_reason(), usage()).prop_map(move |(r, u)| j("message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": r, "stop_sequence": null}, "usage": u}))),
        1 => Just(j("message_stop", json!({"type": "message_stop"}))),
        1 => Just(j("ping", json!({"type": "ping"}))),
        1 => prop_oneof![Just("overloaded_error"), Just("api_error"), Just("rate_limit_error"), Just("")]
            .prop_map(move |t| j("error", json!({"type": "error", "error": {"type": t, "message": "boom"}}))),
        1 => (prop::sample::select(&["", "error", "message_start", "content_block_delta", "x"][..]),
              prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(n, d)| (n.to_owned(), d)),
        1 => (prop::sample::select(&["", "content_block_delta", "sim_future"][..]), value())
            .prop_map(|(n, v)| (n.to_owned(), serde_json::to_vec(&v).unwrap())),
    ]
}

/// Renders events as SSE text (data on one line; JSON has no raw newlines).
fn render_sse(events: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in events {
        if !name.is_empty() {
            out.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        out.extend_from_slice(b"data: ");
        // Keep each data line a line: raw newlines in garbage data are escaped.
        for &b in data {
            match b {
                b'\n' | b'\r' => out.extend_from_slice(b"\\n"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(b"\n\n");
    }
    out
}

/// Text that is nearly SSE: lines from a vocabulary with mixed line ends.
fn near_sse() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"event: message_start".to_vec()),
        Just(b"event:content_block_delta".to_vec()),
        Just(b"data: {\"type\":\"ping\"}".to_vec()),
        Just(b"data:{\"a\":1}".to_vec()),
        Just(b"data".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xEF\xBB".to_vec()),
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    let end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])];
    prop::collection::vec((line, end), 0..24).prop_map(|ls| {
        let mut out = Vec::new();
        for (l, e) in ls {
            out.extend_from_slice(&l);
            out.extend_from_slice(e);
        }
        out
    })
}

fn parse_all(chunks: &[&[u8]]) -> (Vec<(String, Vec<u8>)>, SseParser) {
    let mut p = SseParser::new();
    let mut events = Vec::new();
    for c in chunks {
        p.push(c, |e, d| events.push((e.to_owned(), d.to_vec())));
    }
    (events, p)
}

/// Splits `bytes` at the given cut points (indexes into it).
fn split_at<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&bytes[last..p]);
        last = p;
    }
    out.push(&bytes[last..]);
    out
}

// ---------------------------------------------------------------- pure properties

#[test]
fn fuzz_chat_to_messages() {
    let mut runner = TestRunner::new(config(cases(8000)));
    runner
        .run(&chat_request(), |v| {
            check_chat_to_messages(&serde_json::to_vec(&v).unwrap())
        })
        .unwrap();
    let mut runner = TestRunner::new(config(cases(8000) / 3));
    runner
        .run(&mutated(chat_request()), |b| check_chat_to_messages(&b))
        .unwrap();
    runner
        .run(&value(), |v| {
            check_chat_to_messages(&serde_json::to_vec(&v).unwrap())
        })
        .unwrap();
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |b| {
            check_chat_to_messages(&b)
        })
        .unwrap();
}

#[test]
fn fuzz_shape_request() {
    let mut runner = TestRunner::new(config(cases(8000)));
    runner
        .run(&messages_request(), |v| {
            let body = serde_json::to_vec(&v).unwrap();
            prop_assert!(
                ccproxy::claude_code::shape_request(&body).is_ok()
                    || !(v["system"].is_null()
                        || v["system"].is_string()
                        || v["system"].is_array()),
                "a well-formed request was refused: {v}"
            );
            check_shape(&body)
        })
        .unwrap();
    let mut runner = TestRunner::new(config(cases(8000) / 3));
    runner
        .run(&mutated(messages_request()), |b| check_shape(&b))
        .unwrap();
    runner
        .run(&value(), |v| check_shape(&serde_json::to_vec(&v).unwrap()))
        .unwrap();
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |b| {
            let _ = ccproxy::claude_code::shape_request(&b);
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_sse_parser() {
    let mut runner = TestRunner::new(config(cases(8000)));
    let input = prop_oneof![
        near_sse(),
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(event(), 0..12).prop_map(|e| render_sse(&e)),
    ];
    runner
        .run(
            &(
                input,
                prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            ),
            |(bytes, cuts)| {
                let (whole, _) = parse_all(&[&bytes]);
                let (split, _) = parse_all(&split_at(&bytes, &cuts));
                prop_assert_eq!(&whole, &split, "chunking changed the events");
                // Byte by byte too.
                let singles: Vec<&[u8]> = bytes.chunks(1).collect();
                let (bytewise, _) = parse_all(&singles);
                prop_assert_eq!(&whole, &bytewise);
                // Nothing is held once a complete event block has ended.
                let mut closed = bytes.clone();
                closed.extend_from_slice(b"\n\n");
                let (_, p) = parse_all(&[&closed]);
                prop_assert_eq!(p.buffered_len(), 0);
                Ok(())
            },
        )
        .unwrap();
    // Rendered events come back as they were.
    runner
        .run(&prop::collection::vec(event(), 0..12), |events| {
            let (parsed, _) = parse_all(&[&render_sse(&events)]);
            prop_assert_eq!(parsed.len(), events.len());
            for ((n1, d1), (n2, d2)) in parsed.iter().zip(&events) {
                prop_assert_eq!(n1, n2);
                if !d2.contains(&b'\n') && !d2.contains(&b'\r') {
                    prop_assert_eq!(d1, d2);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_chat_stream_converter() {
    let mut runner = TestRunner::new(config(cases(8000)));
    let strategy = (
        prop::collection::vec(event(), 0..24),
        any::<bool>(),
        0u8..3,
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    );
    runner
        .run(&strategy, |(events, include_usage, ending, cuts)| {
            // Events straight into the converter.
            let mut conv =
                ChatStreamConverter::with_id("chatcmpl-fuzz", "gpt-4o", include_usage, 1);
            let mut out = Vec::new();
            for (name, data) in &events {
                conv.on_event(name, data, &mut out);
            }
            let lost = |m: &str| {
                ccproxy::error::ProxyError::new(
                    ccproxy::error::ErrorKind::BadGateway,
                    ccproxy::error::Origin::Upstream,
                    m,
                )
            };
            match ending {
                0 => conv.finish(&mut out),
                1 => conv.abort(&lost("upstream connection lost"), &mut out),
                _ => {
                    conv.finish(&mut out);
                    conv.finish(&mut out);
                    conv.abort(&lost("again"), &mut out);
                }
            }
            prop_assert!(conv.is_done());
            check_openai_stream(&out)?;
            // Nothing more once done.
            let mut after = Vec::new();
            for (name, data) in &events {
                conv.on_event(name, data, &mut after);
            }
            prop_assert!(after.is_empty());

            // The same events as SSE bytes, cut anywhere: the same output.
            let sse = render_sse(&events);
            let mut conv2 =
                ChatStreamConverter::with_id("chatcmpl-fuzz", "gpt-4o", include_usage, 1);
            let mut parser = SseParser::new();
            let mut out2 = Vec::new();
            for piece in split_at(&sse, &cuts) {
                parser.push(piece, |e, d| conv2.on_event(e, d, &mut out2));
            }
            conv2.finish(&mut out2);
            check_openai_stream(&out2)?;
            if ending == 0 {
                let clean = events
                    .iter()
                    .all(|(_, d)| !d.contains(&b'\n') && !d.contains(&b'\r'));
                if clean {
                    prop_assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&out2)
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_response_converters() {
    let mut runner = TestRunner::new(config(cases(8000)));
    let message = (
        prop::collection::vec(block_start(), 0..4),
        stop_reason(),
        usage(),
    )
        .prop_map(|(content, stop, usage)| {
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                   "content": content, "stop_reason": stop, "usage": usage})
        });
    runner
        .run(&prop_oneof![message, value()], |v| {
            let body = serde_json::to_vec(&v).unwrap();
            if let Ok(out) = convert::messages_to_chat(&body, "gpt-4o", 1) {
                let c: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(&c["object"], "chat.completion");
                prop_assert!(c["choices"][0]["message"].is_object(), "{c}");
            }
            Ok(())
        })
        .unwrap();
    runner
        .run(
            &(
                prop_oneof![400u16..600, 0u16..1000],
                prop_oneof![
                    value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
                    prop::collection::vec(any::<u8>(), 0..600),
                ],
            ),
            |(status, body)| {
                let e = ccproxy::error::ProxyError::from_upstream_response(status, &body);
                let code = e.status().as_u16();
                prop_assert!(code == status || (status == 529 && code == 503));
                let out = e.body(ccproxy::routes::Dialect::OpenAi);
                let v: Value = serde_json::from_slice(&out).unwrap();
                prop_assert!(crate::support::is_openai_envelope(&v), "{v}");
                prop_assert!(v["error"]["message"].as_str().unwrap().len() <= 1024);
                Ok(())
            },
        )
        .unwrap();
}

// ---------------------------------------------------------------- through HTTP

const PATHS: &[&str] = &[
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/openai/v1/chat/completions",
    "/openai/v1/models",
];

fn route() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (prop::sample::select(&["", "/full", "/min", "/pt"][..]), prop::sample::select(PATHS))
            .prop_map(|(p, r)| format!("{p}{r}")),
        1 => prop::sample::select(&[
            "/health", "/metrics", "/dashboard", "/api/usage", "/pt/v1/files", "/pt/v1/messages/batches", "/nope",
            "/v1/messages?beta=true", "/openai/v1/embeddings", "/v2/messages", "/%ff", "//v1/messages",
        ][..]).prop_map(str::to_owned),
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "application/json",
                "text/plain",
                "application/json; charset=utf-8",
                "text/event-stream",
                "2023-06-01",
                "garbage",
                "",
                "dummy",
                "sk-ant-api03-fuzz-client-key",
                "sk-ant-oat01-fuzz-client-token",
                "Bearer ",
                "Bearer dummy",
                "Bearer sk-ant-api03-fuzz",
                "oauth-2025-04-20",
                "a,b,,c",
                "claude-code-20250219",
                "*",
                "gzip",
                "chunked",
                "http://localhost",
                "1",
            ][..]
        )
        .prop_map(str::to_owned),
        "[ -~]{0,40}",
        "[ -~]{200,300}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(
            &[
                "content-type",
                "anthropic-version",
                "anthropic-beta",
                "x-api-key",
                "authorization",
                "accept",
                "x-request-id",
                "user-agent",
                "x-stainless-retry-count",
                "accept-encoding",
                "x-claude-code-session-id",
                "expect",
                "te",
                "upgrade",
                "connection",
                "cookie",
            ][..]
        )
        .prop_map(str::to_owned),
        "x-[a-z]{1,10}",
    ];
    prop::collection::vec((name, header_value()), 0..6)
}

fn http_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => chat_request().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        3 => messages_request().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => mutated(chat_request()),
        1 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => Just(Vec::new()),
    ]
}

/// Checks one HTTP exchange: a response came, and errors are envelopes in the
/// route's dialect; streams are well-formed.
fn check_http(
    method: &str,
    path: &str,
    r: &crate::support::RawResponse,
) -> Result<(), TestCaseError> {
    prop_assert!((100..600).contains(&r.status), "status {}", r.status);
    prop_assert!(
        r.status != 500 || !r.body.is_empty(),
        "an empty 500 (a panic?)"
    );
    if method == "HEAD" || r.body.is_empty() {
        // Only hyper's own refusals of malformed HTTP have no body; and (known,
        // reported) the operational routes answer a wrong method with a bare 405.
        let ops = ["/health", "/metrics", "/dashboard", "/api/usage"].contains(&path);
        prop_assert!(
            method == "HEAD"
                || matches!(r.status, 200 | 204 | 400 | 431)
                || (ops && r.status == 405),
            "{method} {path}: {} with an empty body",
            r.status
        );
        return Ok(());
    }
    let ctype = r.header("content-type").unwrap_or("");
    let openai = path.contains("/openai/");
    if r.status >= 400 {
        let v: Value = serde_json::from_slice(&r.body).map_err(|_| {
            TestCaseError::fail(format!(
                "{method} {path}: {} not JSON: {}",
                r.status,
                r.text()
            ))
        })?;
        if openai {
            prop_assert!(
                crate::support::is_openai_envelope(&v),
                "{method} {path}: {v}"
            );
        } else {
            prop_assert!(
                crate::support::is_anthropic_envelope(&v),
                "{method} {path}: {v}"
            );
        }
    } else if ctype.starts_with("text/event-stream") {
        let text = r.text();
        if openai {
            // A whole answer ends with [DONE]; a failed one with its one error chunk (and no
            // [DONE]), as `check_openai_stream` says.
            let last = text
                .split("\n\n")
                .filter(|f| !f.is_empty())
                .last()
                .unwrap_or("");
            let failed = last.starts_with("data: {\"error\"") && !text.contains("[DONE]");
            prop_assert!(
                failed || text.ends_with("data: [DONE]\n\n"),
                "{path}: {text}"
            );
        } else {
            let events = crate::support::parse_sse(&text);
            let last = events.last().map(|(n, _)| n.as_str()).unwrap_or("");
            prop_assert!(
                matches!(last, "message_stop" | "error" | "message_delta"),
                "{path}: stream ends with {last:?}: {text}"
            );
        }
    } else if ctype.starts_with("application/json") {
        prop_assert!(
            serde_json::from_slice::<Value>(&r.body).is_ok(),
            "{path}: {}",
            r.text()
        );
    }
    Ok(())
}

#[test]
fn fuzz_http_routes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(crate::support::TestEnv::start(crate::support::Opts {
        api_key: Some(crate::support::API_KEY),
        max_body_bytes: Some(64 * 1024),
        upstream_timeout: Some(Duration::from_secs(5)),
        tweak: Some(|s| s.upstream.stream_idle_timeout = Duration::from_secs(5)),
        ..crate::support::Opts::default()
    }));
    let addr = env.addr.to_string();
    let method = prop_oneof![
        8 => Just(""),
        1 => prop::sample::select(&["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"][..]),
    ];
    let mut runner = TestRunner::new(config((cases(8000) / 5).max(1)));
    runner
        .run(
            &(method, route(), headers(), http_body()),
            |(method, path, headers, body)| {
                // Mostly the route's own method.
                let ops = ["/health", "/metrics", "/dashboard", "/api/usage"];
                let method = match method {
                    "" if path.contains("models") || ops.contains(&path.as_str()) => "GET",
                    "" => "POST",
                    m => m,
                };
                let mut req =
                    format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
                for (k, v) in &headers {
                    if matches!(
                        k.as_str(),
                        "connection"
                            | "te"
                            | "upgrade"
                            | "expect"
                            | "content-length"
                            | "transfer-encoding"
                    ) {
                        continue;
                    }
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(&body);
                let r = crate::support::raw_http(&addr, &bytes, Duration::from_secs(10)).map_err(
                    |e| TestCaseError::fail(format!("{method} {path}: no response: {e}")),
                )?;
                check_http(method, &path, &r)
            },
        )
        .unwrap();
    // Malformed HTTP itself: refused or closed, never a hang; the server lives on.
    let garbage = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..256),
        (prop::collection::vec(any::<u8>(), 0..64), "[ -~]{0,64}").prop_map(|(b, s)| {
            let mut r =
                format!("POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n{s}\r\n").into_bytes();
            r.extend_from_slice(&b);
            r.extend_from_slice(b"\r\n\r\n");
            r
        }),
    ];
    let mut runner = TestRunner::new(config((cases(8000) / 15).max(1)));
    runner
        .run(&garbage, |bytes| {
            let addr = addr.clone();
            let t0 = std::time::Instant::now();
            // An incomplete head may be waited on: the client gives up first.
            let _ = crate::support::raw_http(&addr, &bytes, Duration::from_millis(300));
            prop_assert!(t0.elapsed() < Duration::from_secs(3));
            Ok(())
        })
        .unwrap();
    let health = crate::support::raw_http(
        &addr,
        &crate::support::raw_request("GET", "/health", "127.0.0.1", &[], b""),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(health.status, 200);
    drop(env);
}

/// Shaping must not take a request over Anthropic's 4 `cache_control` blocks,
/// however the client spelled the key (`cache\u005fcontrol` is the same key).
#[test]
fn shaping_counts_escaped_cache_control_keys() {
    let block = r#"{"type":"text","text":"x","cache\u005fcontrol":{"type":"ephemeral"}}"#;
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":9,"system":[{block},{block}],"messages":[{{"role":"user","content":[{block},{block}]}}]}}"#
    );
    let (out, _) = ccproxy::claude_code::shape_request(body.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let n = ["system", "messages", "tools"]
        .iter()
        .map(|k| count_cache_control(&v[*k]))
        .sum::<usize>();
    assert!(n <= 4, "{n} cache_control blocks after shaping");
}

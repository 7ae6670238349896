//! Request bodies, response parsing and error-envelope assertions of both dialects.

use serde_json::Value;

/// The system prompt that makes a request look like Claude Code's.
pub const IDENTITY: &str = "You are Claude Code, Anthropic's official CLI for Claude.";

/// A small Messages request whose last user text is `text`.
pub fn message(text: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": text}]
    })
}

/// An OpenAI chat request whose user text is `text`.
pub fn chat(text: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [{"role": "user", "content": text}]
    })
}

/// The body of `resp` as JSON; panics with the body when it is not JSON.
pub async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

/// Asserts the Anthropic error envelope with this `error.type`.
pub fn assert_anthropic_error(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// Asserts the OpenAI error envelope (`message`, `type`, `param` and `code` present,
/// a non-empty message) and, when `kind` is given, its `error.type`.
pub fn assert_openai_error<'a>(v: &Value, kind: impl Into<Option<&'a str>>) {
    let e = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.contains_key(k), "{k} missing: {v}");
    }
    assert!(e["type"].is_string(), "{v}");
    if let Some(kind) = kind.into() {
        assert_eq!(e["type"], kind, "{v}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Whether `v` is an error envelope of either dialect.
pub fn is_anthropic_envelope(v: &Value) -> bool {
    v["type"] == "error" && v["error"]["type"].is_string() && v["error"]["message"].is_string()
}

pub fn is_openai_envelope(v: &Value) -> bool {
    v["error"]["message"].is_string()
        && v["error"]["type"].is_string()
        && v["error"]
            .as_object()
            .is_some_and(|e| e.contains_key("param") && e.contains_key("code"))
}

/// The JSON of each `data:` line of an OpenAI stream, and whether `[DONE]` ended it
/// (nothing may follow `[DONE]`).
pub fn openai_chunks(body: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for line in body.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            assert!(!done, "data after [DONE]: {body}");
            if d == "[DONE]" {
                done = true;
            } else {
                out.push(
                    serde_json::from_str(d).unwrap_or_else(|_| panic!("bad chunk {d}: {body}")),
                );
            }
        }
    }
    (out, done)
}

/// The text content of OpenAI chunks, concatenated.
pub fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Parses an SSE body into (event, data JSON) pairs.
pub fn parse_sse(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for frame in body.split("\n\n") {
        let mut event = String::new();
        let mut data = String::new();
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if data.is_empty() {
            continue;
        }
        let v = serde_json::from_str(&data).unwrap_or(Value::String(data));
        out.push((event, v));
    }
    out
}

/// The error chunk that ends a failed OpenAI stream: exactly one, last, and no
/// `[DONE]` (which would tell the client the answer is whole).
pub fn openai_stream_error(text: &str) -> Value {
    let (chunks, done) = openai_chunks(text);
    assert!(!done, "a failed stream must not end with [DONE]: {text}");
    let last = chunks.last().unwrap_or_else(|| panic!("no chunk: {text}"));
    assert!(last["error"]["message"].is_string(), "{text}");
    let errors = chunks.iter().filter(|c| c.get("error").is_some()).count();
    assert_eq!(errors, 1, "{text}");
    last.clone()
}

/// Reads a streamed body until it ends or breaks: the bytes that came, and
/// whether the body was cut (ended abnormally) rather than ended.
pub async fn body_until_cut(resp: reqwest::Response) -> (Vec<u8>, bool) {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Reads a streamed answer until its first text delta: `false` if it ends or fails first.
pub async fn first_text_delta(resp: &mut reqwest::Response) -> bool {
    let mut seen = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        seen.extend_from_slice(&chunk);
        if seen.windows(10).any(|w| w == b"text_delta") {
            return true;
        }
    }
    false
}

/// Opens `n` streams at once with `open` and reads each to its first text delta; how many got
/// there within `limit` of their start (the request included), and the answers that did (held
/// open: what the streams hold stays held).
pub async fn streams_started<F, Fut>(
    n: usize,
    limit: std::time::Duration,
    open: F,
) -> (usize, Vec<reqwest::Response>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let opened = futures_util::future::join_all((0..n).map(|_| {
        let start = open();
        tokio::time::timeout(limit, async {
            let mut resp = start.await;
            assert_eq!(resp.status(), 200);
            first_text_delta(&mut resp).await.then_some(resp)
        })
    }))
    .await;
    let started: Vec<_> = opened
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    (started.len(), started)
}

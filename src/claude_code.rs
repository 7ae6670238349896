//! Full mode: make a Messages request acceptable to Anthropic as Claude Code.
//!
//! The body is never fully re-parsed: the top-level object is split into raw
//! values, only `system` is rebuilt, and everything else (unknown fields,
//! `metadata`, `thinking`, mid-conversation `role:"system"` messages, …) is
//! copied byte for byte.

use std::borrow::Cow;

use memchr::memmem;
use serde::Deserialize;
use serde::de;
use serde_json::value::RawValue;

/// The identity text the service requires as the first system block for OAuth tokens.
pub const IDENTITY: &str = "You are Claude Code, Anthropic's official CLI for Claude.";

/// The identity block, byte-identical on every request (prompt caching depends on it).
const IDENTITY_BLOCK_CACHED: &str = r#"{"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude.","cache_control":{"type":"ephemeral"}}"#;
const IDENTITY_BLOCK_PLAIN: &str =
    r#"{"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude."}"#;

/// Beta tag Claude Code always sends.
pub const BETA_CLAUDE_CODE: &str = "claude-code-20250219";
/// Beta tag required with OAuth tokens.
pub const BETA_OAUTH: &str = "oauth-2025-04-20";
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// At most this many blocks may carry `cache_control` in one request.
pub const MAX_CACHE_CONTROL_BLOCKS: usize = 4;

/// A JSON object split into its keys and raw (unparsed) values, in order.
///
/// Split by structure only, in one pass: keys are decoded; a value's extent is found by its
/// brackets and strings (escapes honoured), and a scalar value is checked, but the inside of an
/// object or array value is not validated: whoever reads a value parses it (shaping parses
/// `system`, `model`, and the blocks it counts `cache_control` in, when it must), and the rest
/// goes upstream byte for byte, which judges it. An 80 KB Claude Code body is split at memchr
/// speed instead of being validated whole.
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a str)>);

impl<'a> RawObject<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        let text = std::str::from_utf8(body).map_err(|_| invalid("the body is not UTF-8"))?;
        let mut p = Scan { text, at: 0 };
        p.expect(b'{', "the body is not a JSON object")?;
        let mut entries = Vec::with_capacity(12);
        p.skip_ws();
        if p.peek() == Some(b'}') {
            p.at += 1;
        } else {
            loop {
                p.skip_ws();
                let key = p.key()?;
                p.skip_ws();
                p.expect(b':', "expected `:` after an object key")?;
                p.skip_ws();
                let value = p.value()?;
                entries.push((key, value));
                p.skip_ws();
                match p.peek() {
                    Some(b',') => p.at += 1,
                    Some(b'}') => {
                        p.at += 1;
                        break;
                    }
                    _ => return Err(invalid("expected `,` or `}` after an object value")),
                }
            }
        }
        p.skip_ws();
        if p.at != text.len() {
            return Err(invalid("trailing characters after the JSON object"));
        }
        Ok(RawObject(entries))
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

fn invalid(msg: &str) -> serde_json::Error {
    <serde_json::Error as de::Error>::custom(msg)
}

/// The cursor of [`RawObject::parse`].
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, b: u8, msg: &str) -> Result<(), serde_json::Error> {
        self.skip_ws();
        if self.peek() != Some(b) {
            return Err(invalid(msg));
        }
        self.at += 1;
        Ok(())
    }

    /// The end (past the closing quote) of the string whose opening quote is at `self.at`.
    fn string_end(&self) -> Result<usize, serde_json::Error> {
        let b = self.bytes();
        let mut from = self.at + 1;
        loop {
            let Some(off) = memchr::memchr2(b'"', b'\\', &b[from..]) else {
                return Err(invalid("unterminated string"));
            };
            let i = from + off;
            if b[i] == b'"' {
                return Ok(i + 1);
            }
            // An escape: skip the backslash and the character it escapes.
            from = i + 2;
            if from > b.len() {
                return Err(invalid("unterminated string"));
            }
        }
    }

    fn key(&mut self) -> Result<Cow<'a, str>, serde_json::Error> {
        if self.peek() != Some(b'"') {
            return Err(invalid("expected a string key"));
        }
        let end = self.string_end()?;
        let raw = &self.text[self.at..end];
        self.at = end;
        let inner = &raw[1..raw.len() - 1];
        if inner.bytes().any(|c| c == b'\\' || c < 0x20) {
            // Escapes are decoded (and checked) as serde_json does.
            return Ok(Cow::Owned(serde_json::from_str::<String>(raw)?));
        }
        Ok(Cow::Borrowed(inner))
    }

    /// One value: its text, from its first character to its last.
    fn value(&mut self) -> Result<&'a str, serde_json::Error> {
        let start = self.at;
        let b = self.bytes();
        match self.peek() {
            Some(b'"') => self.at = self.string_end()?,
            Some(b'{' | b'[') => {
                // Brackets must match; strings inside are skipped whole.
                let mut open: Vec<u8> = Vec::new();
                loop {
                    let Some(off) = b[self.at..]
                        .iter()
                        .position(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))
                    else {
                        return Err(invalid("unterminated object or array"));
                    };
                    self.at += off;
                    match b[self.at] {
                        b'"' => {
                            self.at = self.string_end()?;
                            continue;
                        }
                        c @ (b'{' | b'[') => open.push(c),
                        c => {
                            let want = if c == b'}' { b'{' } else { b'[' };
                            if open.pop() != Some(want) {
                                return Err(invalid("mismatched brackets"));
                            }
                        }
                    }
                    self.at += 1;
                    if open.is_empty() {
                        break;
                    }
                }
            }
            Some(_) => {
                let len = b[start..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(b.len() - start);
                self.at = start + len;
                // A scalar is short: checked whole (a number, true, false or null).
                serde_json::from_str::<de::IgnoredAny>(&self.text[start..self.at])?;
            }
            None => return Err(invalid("expected a value")),
        }
        Ok(&self.text[start..self.at])
    }
}

/// Why a body could not be shaped (each is the client's fault: 400).
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    /// The parser's message is part of this one, so it is not also the `source`
    /// (a printed chain would repeat it).
    #[error("invalid JSON body: {0}")]
    Json(serde_json::Error),
    #[error("system: must be a string or an array of content blocks")]
    SystemType,
}

impl From<serde_json::Error> for ShapeError {
    fn from(e: serde_json::Error) -> Self {
        ShapeError::Json(e)
    }
}

impl From<ShapeError> for crate::error::ProxyError {
    fn from(e: ShapeError) -> Self {
        crate::error::ProxyError::invalid(e.to_string())
    }
}

#[derive(Deserialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// What shaping did (for logs and tests), and what it read on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    pub identity_added: bool,
    pub identity_cached: bool,
    /// The request's `model`, when it is a string.
    pub model: Option<String>,
    /// The request's `stream` is `true`.
    pub stream: bool,
}

/// Prepends the Claude Code identity block to `system` unless it is already first.
/// A string `system` becomes a text block after it. The identity block carries
/// `cache_control` only while the request stays within 4 cache_control blocks.
pub fn shape_request(body: &[u8]) -> Result<(Vec<u8>, Shaped), ShapeError> {
    let obj = RawObject::parse(body)?;
    let mut shaped = Shaped {
        identity_added: false,
        identity_cached: false,
        model: obj
            .get("model")
            .and_then(|m| serde_json::from_str::<String>(m).ok()),
        stream: obj.get("stream").is_some_and(|s| s == "true"),
    };
    let system = obj.get("system").filter(|v| *v != "null");
    let rest = match system {
        None => None,
        Some(raw) => match system_after_identity(raw)? {
            Some(rest) => Some(rest),
            None => return Ok((body.to_vec(), shaped)),
        },
    };
    let cached = cache_control_count(body, &obj)? < MAX_CACHE_CONTROL_BLOCKS;
    let system_json = system_with_identity(cached, rest.as_deref());
    shaped.identity_added = true;
    shaped.identity_cached = cached;
    Ok((with_system(body.len(), &obj, &system_json), shaped))
}

/// The blocks of a (non-null) `system` to keep after the identity block, as the inside of a JSON
/// array (empty for none); `None` when the identity already comes first.
fn system_after_identity(text: &str) -> Result<Option<String>, ShapeError> {
    match text.as_bytes().first() {
        Some(b'"') => {
            let s: Cow<str> = serde_json::from_str(text)?;
            if s == IDENTITY {
                return Ok(None);
            }
            Ok(Some(if s.is_empty() {
                String::new()
            } else {
                format!(r#"{{"type":"text","text":{text}}}"#)
            }))
        }
        Some(b'[') => {
            let blocks: Vec<&RawValue> = serde_json::from_str(text)?;
            if let Some(first) = blocks.first()
                && let Ok(tb) = serde_json::from_str::<TextBlock>(first.get())
                && tb.kind == Some("text")
                && tb.text.as_deref() == Some(IDENTITY)
            {
                return Ok(None);
            }
            // The raw array without its brackets.
            Ok(Some(text[1..text.len() - 1].trim().to_owned()))
        }
        _ => Err(ShapeError::SystemType),
    }
}

/// `[identity, rest…]`; the identity block carries `cache_control` when `cached`.
fn system_with_identity(cached: bool, rest: Option<&str>) -> String {
    let identity = if cached {
        IDENTITY_BLOCK_CACHED
    } else {
        IDENTITY_BLOCK_PLAIN
    };
    let mut system_json = String::with_capacity(identity.len() + 2);
    system_json.push('[');
    system_json.push_str(identity);
    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
        system_json.push(',');
        system_json.push_str(rest);
    }
    system_json.push(']');
    system_json
}

/// The object again, byte for byte, with `system` replaced (or added last).
fn with_system(body_len: usize, obj: &RawObject<'_>, system_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body_len + system_json.len() + 16);
    out.push(b'{');
    let mut wrote_system = false;
    let mut first = true;
    for (k, v) in &obj.0 {
        if !first {
            out.push(b',');
        }
        first = false;
        write_key(&mut out, k);
        if k == "system" {
            out.extend_from_slice(system_json.as_bytes());
            wrote_system = true;
        } else {
            out.extend_from_slice(v.as_bytes());
        }
    }
    if !wrote_system {
        if !first {
            out.push(b',');
        }
        write_key(&mut out, "system");
        out.extend_from_slice(system_json.as_bytes());
    }
    out.push(b'}');
    out
}

fn write_key(out: &mut Vec<u8>, k: &str) {
    // Keys are short; serde_json escapes exactly as needed.
    let _ = serde_json::to_writer(&mut *out, k);
    out.push(b':');
}

/// Counts the blocks with a (non-null) `cache_control` in system, messages and tools.
///
/// Fast path: a key `"cache_control"` can only appear unescaped as an object key,
/// so fewer than 4 occurrences in the whole body proves there are fewer than 4
/// blocks. Only bodies with 4 or more occurrences are parsed to count exactly.
pub fn cache_control_count(body: &[u8], obj: &RawObject<'_>) -> Result<usize, ShapeError> {
    let quick = memmem::find_iter(body, b"\"cache_control\"").count();
    if quick < MAX_CACHE_CONTROL_BLOCKS && !has_escaped_ascii_letter(body) {
        return Ok(quick);
    }
    let mut n = 0;
    for key in ["system", "messages", "tools"] {
        if let Some(raw) = obj.get(key) {
            let v: serde_json::Value = serde_json::from_str(raw)?;
            n += count_in(&v);
        }
    }
    Ok(n)
}

/// Whether the body spells an ASCII letter or `_` as a `\u00XX` escape: then a
/// key such as `cache_control` could be hidden from the byte search.
fn has_escaped_ascii_letter(body: &[u8]) -> bool {
    memmem::find_iter(body, b"\\u00").any(|i| {
        let hex = body
            .get(i + 4..i + 6)
            .and_then(|h| std::str::from_utf8(h).ok());
        hex.and_then(|h| u8::from_str_radix(h, 16).ok())
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
    })
}

fn count_in(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => items.iter().map(count_in).sum(),
        serde_json::Value::Object(map) => {
            let own = usize::from(map.get("cache_control").is_some_and(|c| !c.is_null()));
            own + map
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "cache_control" | "input_schema" | "input"))
                .map(|(_, v)| count_in(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// The `anthropic-beta` value for full mode: the client's tags in order, then the
/// ones full mode requires, without duplicates and nothing else added.
pub fn merge_beta(client: Option<&str>, oauth: bool) -> String {
    let mut tags: Vec<&str> = Vec::with_capacity(8);
    let required: &[&str] = if oauth {
        &[BETA_CLAUDE_CODE, BETA_OAUTH]
    } else {
        &[BETA_CLAUDE_CODE]
    };
    for t in client
        .into_iter()
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .chain(required.iter().copied())
    {
        if !t.is_empty() && !tags.contains(&t) {
            tags.push(t);
        }
    }
    tags.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn raw_object_splits_by_structure() {
        let body =
            br#" { "model" : "m", "a\u0062" : [1, {"x": "]}\"{"}], "s": true ,"n":-1.5e3,"o":{}} "#;
        let obj = RawObject::parse(body).unwrap();
        let keys: Vec<&str> = obj.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["model", "ab", "s", "n", "o"]);
        assert_eq!(obj.get("model"), Some(r#""m""#));
        assert_eq!(obj.get("ab"), Some(r#"[1, {"x": "]}\"{"}]"#));
        assert_eq!(obj.get("s"), Some("true"));
        assert_eq!(obj.get("n"), Some("-1.5e3"));
        assert_eq!(obj.get("o"), Some("{}"));
        assert!(RawObject::parse(b"{}").unwrap().0.is_empty());
        for bad in [
            &b""[..],
            b"{not json",
            b"[1,2",
            b"\"x\"",
            b"{\"a\":1,}",
            b"{\"a\":[}",
            b"{\"a\":{]}",
            b"{\"a\":1} x",
            b"{\"a\":tru}",
            b"{\"a\" 1}",
            b"{\"a\":\"x}",
            b"{\"a\":}",
            b"{\"a\":[\"x\\\"]}",
            b"{\"\\q\":1}",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                RawObject::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn shape(v: Value) -> (Value, Shaped) {
        let (out, s) = shape_request(&serde_json::to_vec(&v).unwrap()).unwrap();
        (serde_json::from_slice(&out).unwrap(), s)
    }

    #[test]
    fn adds_identity_when_no_system() {
        let (v, s) = shape(json!({"model":"m","messages":[]}));
        assert!(s.identity_added && s.identity_cached);
        assert_eq!(v["system"][0]["text"], IDENTITY);
        assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(v["system"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn string_system_becomes_block_after_identity() {
        let (v, _) = shape(json!({"system":"Be brief.","model":"m"}));
        assert_eq!(v["system"][0]["text"], IDENTITY);
        assert_eq!(v["system"][1], json!({"type":"text","text":"Be brief."}));
    }

    #[test]
    fn existing_identity_left_alone() {
        let body = json!({"system":[{"type":"text","text":IDENTITY}],"x":1});
        let raw = serde_json::to_vec(&body).unwrap();
        let (out, s) = shape_request(&raw).unwrap();
        assert!(!s.identity_added);
        assert_eq!(out, raw);
    }

    #[test]
    fn blocks_keep_order_and_unknown_fields_stay() {
        let (v, _) = shape(json!({
            "model":"m","future_field":{"a":[1,2]},
            "system":[{"type":"text","text":"A"},{"type":"text","text":"B","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":"hi"},{"role":"system","content":"mid"}]
        }));
        assert_eq!(v["future_field"], json!({"a":[1,2]}));
        let sys = v["system"].as_array().unwrap();
        assert_eq!(sys.len(), 3);
        assert_eq!(sys[1]["text"], "A");
        assert_eq!(sys[2]["text"], "B");
        assert_eq!(v["messages"][1]["role"], "system");
    }

    #[test]
    fn no_cache_control_when_four_already() {
        let cc = json!({"type":"ephemeral"});
        let (v, s) = shape(json!({
            "system":[{"type":"text","text":"A","cache_control":cc}],
            "tools":[{"name":"t","input_schema":{},"cache_control":cc}],
            "messages":[{"role":"user","content":[
                {"type":"text","text":"x","cache_control":cc},
                {"type":"text","text":"y","cache_control":cc}]}]
        }));
        assert!(s.identity_added && !s.identity_cached);
        assert!(v["system"][0].get("cache_control").is_none());
    }

    #[test]
    fn exact_count_when_quick_count_overestimates() {
        // Four occurrences, but one is null and one is a schema property name.
        let (_, s) = shape(json!({
            "system":[{"type":"text","text":"A","cache_control":null}],
            "tools":[{"name":"t","input_schema":{"properties":{"cache_control":{"type":"string"}}}}],
            "messages":[{"role":"user","content":[
                {"type":"text","text":"x","cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"y","cache_control":{"type":"ephemeral"}}]}]
        }));
        assert!(s.identity_cached);
    }

    #[test]
    fn escaped_keys_are_counted() {
        // Four blocks, one key spelled with an escape: no cache_control on the identity.
        let body = br#"{"system":[{"type":"text","text":"A","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":[
              {"type":"text","text":"x","cache_control":{"type":"ephemeral"}},
              {"type":"text","text":"y","cache_control":{"type":"ephemeral"}},
              {"type":"text","text":"z","cache\u005fcontrol":{"type":"ephemeral"}}]}]}"#;
        let (_, s) = shape_request(body).unwrap();
        assert!(s.identity_added && !s.identity_cached);
        // Ordinary control-character escapes keep the fast path correct.
        assert!(!has_escaped_ascii_letter(br#"{"text":"a\u001b[0m"}"#));
    }

    #[test]
    fn identity_block_is_byte_stable() {
        let a = shape_request(br#"{"system":"one"}"#).unwrap().0;
        let b = shape_request(br#"{"system":"two"}"#).unwrap().0;
        let prefix = br#"{"system":[{"type":"text","text":"You are Claude Code"#;
        assert!(a.starts_with(prefix) && b.starts_with(prefix));
        assert_eq!(
            a[..IDENTITY_BLOCK_CACHED.len() + 11],
            b[..IDENTITY_BLOCK_CACHED.len() + 11]
        );
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"system\":5}",
            b"{\"system\":[1",
            b"",
        ] {
            assert!(
                shape_request(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn claude_code_fixture_passes_through_intact() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/clients/claude_code_oauth.request.json"
        );
        let Ok(raw) = std::fs::read(path) else { return };
        let orig: Value = serde_json::from_slice(&raw).unwrap();
        let (out, s) = shape_request(&raw).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(s.identity_added && s.identity_cached);
        let mut expected = orig.clone();
        let sys = expected["system"].as_array_mut().unwrap();
        sys.insert(
            0,
            json!({"type":"text","text":IDENTITY,"cache_control":{"type":"ephemeral"}}),
        );
        assert_eq!(v, expected);
    }

    #[test]
    fn beta_merge() {
        assert_eq!(merge_beta(None, false), "claude-code-20250219");
        assert_eq!(
            merge_beta(Some("a, claude-code-20250219 ,b"), true),
            "a,claude-code-20250219,b,oauth-2025-04-20"
        );
        assert_eq!(
            merge_beta(Some(""), true),
            "claude-code-20250219,oauth-2025-04-20"
        );
    }
}

//! Model lists: the upstream's `GET /v1/models` objects merged with the alias table and the
//! known token limits, in each dialect's shape, and the built-in list used when the upstream
//! gives none.
//!
//! - Anthropic shape: the upstream's model objects as they came (every field kept), with
//!   `max_input_tokens` / `max_tokens` filled in from [`KNOWN_LIMITS`] where the upstream left
//!   them out; then the configured aliases that are not Claude ids (`[model_aliases]`), as models
//!   whose `display_name` says what they stand for. One page: `has_more` is `false`.
//! - OpenAI shape: `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`, with
//!   `context_length` and `max_completion_tokens` where known (the fields OpenRouter-style clients
//!   read), then every alias of the table (`owned_by: "ccproxy"`, `root`: the Claude id).

use serde_json::{Map, Value, json};

use super::models::{DEFAULT_HAIKU, DEFAULT_OPUS, DEFAULT_SONNET, ModelAliases};

/// Token limits of Claude models by id prefix (longest match at a `-` boundary wins): the input
/// context window and the largest `max_tokens`, from Anthropic's model overview. Models that
/// are not listed here get only what the upstream says.
pub const KNOWN_LIMITS: &[(&str, u64, u64)] = &[
    ("claude-opus-4-6", 200_000, 128_000),
    ("claude-opus-4-5", 200_000, 64_000),
    ("claude-opus-4-1", 200_000, 32_000),
    ("claude-opus-4", 200_000, 32_000),
    ("claude-sonnet-4-6", 200_000, 64_000),
    ("claude-sonnet-4-5", 200_000, 64_000),
    ("claude-sonnet-4", 200_000, 64_000),
    ("claude-haiku-4-5", 200_000, 64_000),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-3-5-haiku", 200_000, 8_192),
    ("claude-3-haiku", 200_000, 4_096),
];

/// The list served when the upstream has not answered and nothing was cached: the current
/// defaults of the alias table (id, display name, release date — the epoch where this table
/// does not know it, as the Models API itself does).
const BUILT_IN: &[(&str, &str, &str)] = &[
    (DEFAULT_SONNET, "Claude Sonnet 5", "1970-01-01T00:00:00Z"),
    (DEFAULT_OPUS, "Claude Opus 4.8", "1970-01-01T00:00:00Z"),
    (DEFAULT_HAIKU, "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
];

/// `(max_input_tokens, max_tokens)` of `model`, when known.
pub fn known_limits(model: &str) -> Option<(u64, u64)> {
    KNOWN_LIMITS
        .iter()
        .filter(|(prefix, ..)| {
            // The id itself, or the id with a snapshot date (`-20250929`).
            model.strip_prefix(prefix).is_some_and(|rest| {
                rest.is_empty()
                    || rest.len() == 9
                        && rest.starts_with('-')
                        && rest[1..].bytes().all(|b| b.is_ascii_digit())
            })
        })
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|(_, input, output)| (*input, *output))
}

/// The model objects of an upstream list page (`data`), or `None` when `body` is not one.
pub fn parse_page(body: &[u8]) -> Option<(Vec<Value>, bool, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    let models: Vec<Value> = data
        .iter()
        .filter(|m| m.get("id").is_some_and(Value::is_string))
        .cloned()
        .collect();
    let more = v.get("has_more").and_then(Value::as_bool).unwrap_or(false);
    let last = v.get("last_id").and_then(Value::as_str).map(str::to_owned);
    Some((models, more, last))
}

/// The built-in list, as upstream model objects.
pub fn built_in() -> Vec<Value> {
    BUILT_IN
        .iter()
        .map(|(id, name, created)| {
            json!({"type": "model", "id": id, "display_name": name, "created_at": created})
        })
        .collect()
}

/// Fills in the known limits the upstream left out.
fn with_limits(m: &Value) -> Value {
    let mut m = m.clone();
    let known = m_id(&m).and_then(|id| known_limits(&id));
    if let (Some(o), Some((input, output))) = (m.as_object_mut(), known) {
        o.entry("max_input_tokens").or_insert(input.into());
        o.entry("max_tokens").or_insert(output.into());
    }
    m
}

fn m_id(m: &Value) -> Option<String> {
    m.get("id").and_then(Value::as_str).map(str::to_owned)
}

/// The Anthropic-shaped list of `models` (upstream objects) and the configured aliases.
pub fn anthropic_list(models: &[Value], aliases: &ModelAliases) -> Vec<u8> {
    let mut data: Vec<Value> = models.iter().map(with_limits).collect();
    for (alias, target) in aliases.configured() {
        if alias.starts_with("claude-") || data.iter().any(|m| m["id"] == alias) {
            continue;
        }
        let mut m = Map::new();
        m.insert("type".into(), "model".into());
        m.insert("id".into(), alias.into());
        m.insert("display_name".into(), format!("{alias} → {target}").into());
        m.insert("created_at".into(), "1970-01-01T00:00:00Z".into());
        if let Some((input, output)) = known_limits(target) {
            m.insert("max_input_tokens".into(), input.into());
            m.insert("max_tokens".into(), output.into());
        }
        data.push(Value::Object(m));
    }
    let first = data.first().and_then(m_id);
    let last = data.last().and_then(m_id);
    json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
        .to_string()
        .into_bytes()
}

/// The OpenAI-shaped list of `models` (upstream objects) and every alias. Models keep their own
/// creation date (`created_at`, RFC 3339); aliases and undated models get `now` (epoch seconds).
pub fn openai_list(models: &[Value], aliases: &ModelAliases, now: u64) -> Vec<u8> {
    let limits = |m: &Value, id: &str| {
        let known = known_limits(id);
        let input = m["max_input_tokens"].as_u64().or(known.map(|k| k.0));
        let output = m["max_tokens"].as_u64().or(known.map(|k| k.1));
        (input, output)
    };
    let entry = |id: &str, created: u64, owner: &str, input: Option<u64>, output: Option<u64>| {
        let mut o = Map::new();
        o.insert("id".into(), id.into());
        o.insert("object".into(), "model".into());
        o.insert("created".into(), created.into());
        o.insert("owned_by".into(), owner.into());
        if let Some(n) = input {
            o.insert("context_length".into(), n.into());
        }
        if let Some(n) = output {
            o.insert("max_completion_tokens".into(), n.into());
        }
        o
    };
    let mut data: Vec<Value> = Vec::new();
    for m in models {
        let Some(id) = m["id"].as_str() else { continue };
        let created = m["created_at"]
            .as_str()
            .and_then(crate::util::time::parse_rfc3339_secs)
            .unwrap_or(now);
        let (input, output) = limits(m, id);
        data.push(Value::Object(entry(
            id,
            created,
            "anthropic",
            input,
            output,
        )));
    }
    for (alias, target) in aliases.list() {
        let served = models.iter().find(|m| m["id"] == target);
        let (input, output) =
            served.map_or_else(|| limits(&Value::Null, target), |m| limits(m, target));
        let mut o = entry(alias, now, "ccproxy", input, output);
        o.insert("root".into(), target.into());
        data.push(Value::Object(o));
    }
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(
            crate::util::time::parse_rfc3339_secs("2025-09-29T00:00:00Z"),
            Some(1_759_104_000)
        );
        assert_eq!(
            crate::util::time::parse_rfc3339_secs("1970-01-01T00:00:01Z"),
            Some(1)
        );
        assert_eq!(
            crate::util::time::parse_rfc3339_secs("2024-02-29T12:30:00.5Z"),
            Some(1_709_209_800)
        );
        assert_eq!(crate::util::time::parse_rfc3339_secs("nope"), None);
    }

    #[test]
    fn known_limits_by_prefix_at_a_word_boundary() {
        assert_eq!(
            known_limits("claude-opus-4-1-20250805"),
            Some((200_000, 32_000))
        );
        assert_eq!(
            known_limits("claude-opus-4-20250514"),
            Some((200_000, 32_000))
        );
        assert_eq!(known_limits("claude-opus-4-6"), Some((200_000, 128_000)));
        assert_eq!(
            known_limits("claude-sonnet-4-5-20250929"),
            Some((200_000, 64_000))
        );
        assert_eq!(
            known_limits("claude-3-5-haiku-20241022"),
            Some((200_000, 8_192))
        );
        // `claude-opus-4` must not claim Opus 4.9 or a 40.
        assert_eq!(known_limits("claude-opus-4-9"), None);
        assert_eq!(known_limits("claude-opus-40"), None);
        assert_eq!(known_limits("claude-fable-5"), None);
    }

    #[test]
    fn openai_list_keeps_dates_adds_limits_and_aliases() {
        let models = vec![
            json!({"id": "claude-sonnet-5", "created_at": "2025-09-29T00:00:00Z"}),
            json!({"id": "x", "max_input_tokens": 5, "max_tokens": 6}),
        ];
        let out: Value =
            serde_json::from_slice(&openai_list(&models, &ModelAliases::with_defaults(), 7))
                .unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["data"][0]["created"], 1_759_104_000);
        assert!(out["data"][0].get("context_length").is_none(), "not known");
        assert_eq!(out["data"][1]["created"], 7);
        assert_eq!(
            out["data"][1]["context_length"], 5,
            "the upstream's own figure"
        );
        assert_eq!(out["data"][1]["max_completion_tokens"], 6);
        let gpt = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "gpt-4o")
            .unwrap();
        assert_eq!(gpt["owned_by"], "ccproxy");
        assert_eq!(gpt["root"], DEFAULT_SONNET);
        let mini = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "gpt-4o-mini")
            .unwrap();
        assert_eq!(mini["context_length"], 200_000, "the Haiku it stands for");
    }

    #[test]
    fn anthropic_list_keeps_upstream_fields_and_adds_configured_aliases() {
        let models = vec![
            json!({"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "H",
                   "created_at": "2025-10-01T00:00:00Z", "capabilities": {"batch": {"supported": true}}}),
            json!({"type": "model", "id": "claude-new-9", "display_name": "N",
                   "created_at": "2026-10-01T00:00:00Z", "max_input_tokens": 1_000_000, "max_tokens": 9}),
        ];
        let aliases = ModelAliases::with_defaults().with_overrides([
            ("fast".to_owned(), "claude-haiku-4-5".to_owned()),
            ("claude-x".to_owned(), "claude-sonnet-5".to_owned()),
        ]);
        let out: Value = serde_json::from_slice(&anthropic_list(&models, &aliases)).unwrap();
        let data = out["data"].as_array().unwrap();
        assert_eq!(data.len(), 3, "{out}");
        assert_eq!(data[0]["capabilities"]["batch"]["supported"], true);
        assert_eq!(data[0]["max_input_tokens"], 200_000);
        assert_eq!(data[1]["max_input_tokens"], 1_000_000, "never overwritten");
        assert_eq!(data[1]["max_tokens"], 9);
        assert_eq!(data[2]["id"], "fast");
        assert_eq!(data[2]["max_tokens"], 64_000);
        assert_eq!(out["has_more"], false);
        assert_eq!(out["first_id"], "claude-haiku-4-5-20251001");
        assert_eq!(out["last_id"], "fast");
        // Built-in OpenAI names are not offered to Anthropic clients.
        assert!(!data.iter().any(|m| m["id"] == "gpt-4o"));
    }

    #[test]
    fn pages_parse() {
        let (m, more, last) =
            parse_page(br#"{"data":[{"id":"a"},{"no":1}],"has_more":true,"last_id":"a"}"#).unwrap();
        assert_eq!(m.len(), 1);
        assert!(more);
        assert_eq!(last.as_deref(), Some("a"));
        assert!(parse_page(b"{}").is_none());
        assert!(parse_page(b"nope").is_none());
    }
}

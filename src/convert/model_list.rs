//! Anthropic's model list (`GET /v1/models`) in OpenAI's list shape, with the
//! configured aliases listed as models of their own.

use super::models::ModelAliases;

/// Converts an Anthropic model list body. Models keep their own creation date
/// (`created_at`, RFC 3339); aliases and undated models get `now` (epoch seconds).
pub fn models_to_openai(anthropic_list: &[u8], aliases: &ModelAliases, now: u64) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(anthropic_list).unwrap_or_default();
    let mut data: Vec<serde_json::Value> = Vec::new();
    if let Some(items) = v["data"].as_array() {
        for m in items {
            if let Some(id) = m["id"].as_str() {
                let created = m["created_at"]
                    .as_str()
                    .and_then(crate::util::time::parse_rfc3339_secs)
                    .unwrap_or(now);
                data.push(serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": "anthropic"}));
            }
        }
    }
    for (alias, target) in aliases.list() {
        data.push(
            serde_json::json!({"id": alias, "object": "model", "created": now,
            "owned_by": "ccproxy", "root": target}),
        );
    }
    serde_json::json!({"object": "list", "data": data})
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
    fn list_keeps_dates_and_adds_aliases() {
        let body = br#"{"data":[{"id":"claude-sonnet-5","created_at":"2025-09-29T00:00:00Z"},{"id":"x"}]}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&models_to_openai(body, &ModelAliases::with_defaults(), 7))
                .unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["data"][0]["created"], 1_759_104_000);
        assert_eq!(out["data"][1]["created"], 7);
        assert!(
            out["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["owned_by"] == "ccproxy")
        );
    }
}

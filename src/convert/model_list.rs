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
                    .and_then(parse_rfc3339_seconds)
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

/// Seconds since the epoch of an RFC 3339 UTC time (`2025-09-29T00:00:00Z`,
/// fractions and offsets ignored beyond the seconds).
fn parse_rfc3339_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(
            parse_rfc3339_seconds("2025-09-29T00:00:00Z"),
            Some(1_759_104_000)
        );
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:01Z"), Some(1));
        assert_eq!(
            parse_rfc3339_seconds("2024-02-29T12:30:00.5Z"),
            Some(1_709_209_800)
        );
        assert_eq!(parse_rfc3339_seconds("nope"), None);
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

//! `ccproxy status`: the running server's upstream credentials, as its `/health` reports them —
//! which ones take requests, which cool down or are held back and until when, and each
//! subscription's 5-hour and 7-day utilisation with their reset times.

use anyhow::Context;
use serde_json::Value;

use crate::cli::ReportFormat;
use crate::config::Settings;

/// Fetches `/health` from the server the settings describe and prints its pool.
pub async fn run(settings: &Settings, format: ReportFormat) -> anyhow::Result<u8> {
    let health = call_server(settings, reqwest::Method::GET, "/health")
        .await?
        .1;
    let creds = &health["credentials"];
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(creds)?),
        ReportFormat::Table | ReportFormat::Csv => {
            let now = crate::util::time::now_secs();
            print!("{}", render(creds, now, local_offset_secs()));
        }
    }
    Ok(0)
}

/// Calls the running server the settings describe (the admin token as bearer, when one is set)
/// and reads its JSON answer, with the response headers.
pub async fn call_server(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(reqwest::header::HeaderMap, Value)> {
    let host = match settings.server.host.as_str() {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let url = if host.contains(':') {
        format!("http://[{host}]:{}{path}", settings.server.port)
    } else {
        format!("http://{host}:{}{path}", settings.server.port)
    };
    let client = crate::http::client_builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut req = client.request(method, &url);
    if let Some(t) = &settings.server.auth_token {
        req = req.bearer_auth(t.expose());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach ccproxy at {url}: is it running (ccproxy serve)?"))?
        .error_for_status()
        .with_context(|| format!("{url} refused the request"))?;
    let headers = resp.headers().clone();
    let v = resp
        .json()
        .await
        .with_context(|| format!("{url} did not answer with JSON"))?;
    Ok((headers, v))
}

/// The pool as a table.
pub fn render(creds: &Value, now: u64, offset: i64) -> String {
    let members = creds["pool"].as_array().cloned().unwrap_or_default();
    if members.is_empty() {
        return "no upstream credential is configured on this server (clients bring their own \
                keys)\n"
            .to_owned();
    }
    let mut rows = vec![[
        "CREDENTIAL".to_owned(),
        "KIND".to_owned(),
        "STATE".to_owned(),
        "5H".to_owned(),
        "7D".to_owned(),
        "NOTE".to_owned(),
    ]];
    for m in &members {
        let u = &m["unified"];
        let state = match (m["state"].as_str(), m["until"].as_u64()) {
            (Some("available"), _) | (None, _) => "available".to_owned(),
            (Some(s), Some(until)) => format!("{s} until {}", when(until, now, offset)),
            (Some(s), None) => s.to_owned(),
        };
        let note = m["reason"]
            .as_str()
            .or_else(|| m["last_error"].as_str())
            .unwrap_or_default();
        rows.push([
            m["name"].as_str().unwrap_or_default().to_owned(),
            m["kind"].as_str().unwrap_or_default().to_owned(),
            state,
            window(u, "five_hour", now, offset),
            window(u, "seven_day", now, offset),
            note.chars().take(80).collect(),
        ]);
    }
    let mut out = format!(
        "routing: {}\n",
        creds["routing"].as_str().unwrap_or("priority")
    );
    out.push_str(&columns(&rows));
    out
}

/// Rows as left-aligned columns two spaces apart.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `█████░░░░░  52% resets 14:05 (in 2h 3m)`, or `-` when the subscription said nothing.
fn window(u: &Value, prefix: &str, now: u64, offset: i64) -> String {
    let Some(util) = u[format!("{prefix}_utilization")].as_f64() else {
        return "-".to_owned();
    };
    let filled = ((util.clamp(0.0, 1.0) * 10.0).round()) as usize;
    let bar = format!("{}{}", "█".repeat(filled), "░".repeat(10 - filled));
    let pct = (util * 100.0).round();
    match u[format!("{prefix}_reset")].as_u64() {
        Some(r) => format!("{bar} {pct:>3}% resets {}", when(r, now, offset)),
        None => format!("{bar} {pct:>3}%"),
    }
}

/// A time in local time (`HH:MM`, with the date when not today) and relative.
fn when(epoch: u64, now: u64, offset: i64) -> String {
    let local = |t: u64| i64::try_from(t).unwrap_or(i64::MAX).saturating_add(offset);
    let (at, today) = (local(epoch), local(now));
    let stamp = crate::util::time::format_utc(at.saturating_mul(1000));
    // format_utc: `YYYY-MM-DD HH:MM:SS UTC`-like; keep the date only on another day.
    let date = &stamp[..10.min(stamp.len())];
    let time = stamp.get(11..16).unwrap_or_default();
    let rel = crate::util::time::format_relative(
        (i64::try_from(epoch).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(0)) * 1000,
    );
    if at.div_euclid(86_400) == today.div_euclid(86_400) {
        format!("{time} ({rel})")
    } else {
        format!("{date} {time} ({rel})")
    }
}

/// This machine's offset from UTC now, in seconds (the C library's local time, through SQLite,
/// which the usage report uses for its local days too).
fn local_offset_secs() -> i64 {
    rusqlite::Connection::open_in_memory()
        .and_then(|c| {
            c.query_row(
                "SELECT CAST(strftime('%s', 'now', 'localtime') AS INTEGER) - CAST(strftime('%s', 'now') AS INTEGER)",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_state_bars_and_resets() {
        let creds = serde_json::json!({"routing": "priority", "pool": [
            {"name": "me", "kind": "oauth", "state": "extra_usage", "until": 1_000_000 + 7200,
             "reason": "the subscription reported serving from extra usage (overage)",
             "unified": {"five_hour_utilization": 0.52, "five_hour_reset": 1_000_000 + 3600,
                         "seven_day_utilization": 0.1}},
            {"name": "team", "kind": "api_key", "state": "available", "unified": null}
        ]});
        let t = render(&creds, 1_000_000, 0);
        assert!(t.contains("me "), "{t}");
        assert!(t.contains("█████░░░░░  52% resets"), "{t}");
        assert!(t.contains("(in 1h 0m)"), "{t}");
        assert!(t.contains("extra_usage until"), "{t}");
        assert!(t.contains("(in 2h 0m)"), "{t}");
        assert!(t.contains("█░░░░░░░░░  10%"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("team") && l.contains("available")),
            "{t}"
        );
    }
}

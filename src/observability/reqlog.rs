//! The per-request log line and metrics, written by the observer thread.
//!
//! The line is formatted by hand into a reused buffer (the fields are known),
//! in the same shapes as the tracing subscriber's pretty and JSON output; the
//! metric handles are looked up once per label set and kept.

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::{Finished, UsageRecord, prom};

/// How request lines are written (matches `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    Pretty,
    Json,
}

/// Formats `f` as one line (ending in `\n`) into `out`.
pub fn write_line(out: &mut String, f: &Finished, style: LogStyle) {
    out.clear();
    let r = &f.record;
    let now = crate::util::time::since_epoch();
    let mut fields = Fields {
        out,
        style,
        first: true,
    };
    match style {
        LogStyle::Pretty => {
            write_timestamp(fields.out, now);
            fields.out.push_str("  INFO ccproxy::request: request");
        }
        LogStyle::Json => {
            fields.out.push_str("{\"timestamp\":\"");
            write_timestamp(fields.out, now);
            fields
                .out
                .push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
            fields.first = false;
        }
    }
    fields.str("request_id", &r.request_id);
    fields.str("mode", &r.mode);
    fields.str("dialect", &r.dialect);
    fields.str("route", f.route);
    fields.str("model", r.model.as_deref().unwrap_or("-"));
    fields.raw("stream", if r.stream { "true" } else { "false" });
    fields.num("status", r.status);
    match r.upstream_status {
        Some(s) => fields.num("upstream_status", s),
        None => fields.str("upstream_status", "-"),
    }
    fields.str(
        "upstream_request_id",
        f.upstream_request_id.as_deref().unwrap_or("-"),
    );
    fields.float("duration_ms", r.duration_ms, 2);
    match r.ttft_ms {
        Some(t) => fields.float("ttft_ms", t, 2),
        None => fields.str("ttft_ms", "-"),
    }
    fields.float("proxy_ms", r.proxy_ms, 3);
    fields.num("input_tokens", r.tokens.input);
    fields.num("output_tokens", r.tokens.output);
    fields.num("cache_read_tokens", r.tokens.cache_read);
    fields.num("cache_write_tokens", r.tokens.cache_write);
    match r.cost_usd {
        Some(c) => fields.float("cost_usd", c, 6),
        None => fields.str("cost_usd", "-"),
    }
    fields.str("credential", r.credential.as_deref().unwrap_or("-"));
    if let Some(k) = r.client_key.as_deref() {
        fields.str("client_key", k);
    }
    fields.raw("abandoned", if r.abandoned { "true" } else { "false" });
    fields.str("error", r.error.as_deref().unwrap_or("-"));
    if style == LogStyle::Json {
        out.push_str("},\"target\":\"ccproxy::request\"}");
    }
    out.push('\n');
}

struct Fields<'a> {
    out: &'a mut String,
    style: LogStyle,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        match self.style {
            LogStyle::Pretty => {
                self.out.push(' ');
                self.out.push_str(k);
                self.out.push('=');
            }
            LogStyle::Json => {
                if !self.first {
                    self.out.push(',');
                }
                self.first = false;
                self.out.push('"');
                self.out.push_str(k);
                self.out.push_str("\":");
            }
        }
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        let plain = self.style == LogStyle::Pretty
            && !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if plain {
            self.out.push_str(v);
        } else {
            // A JSON string literal is also a readable quoted form for the pretty style.
            crate::api::json::string(self.out, v);
        }
    }

    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }

    fn num(&mut self, k: &str, v: impl Into<u64>) {
        self.key(k);
        crate::util::fmt::push_padded(self.out, v.into(), 0);
    }

    fn float(&mut self, k: &str, v: f64, decimals: u32) {
        self.key(k);
        if v.is_finite() {
            crate::util::fmt::push_fixed(self.out, v, decimals);
        } else {
            self.out.push_str("null");
        }
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-24T05:16:37.812383Z`.
fn write_timestamp(out: &mut String, since_epoch: std::time::Duration) {
    let secs = since_epoch.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::util::time::civil_from_days(days);
    use crate::util::fmt::push_padded;
    push_padded(out, y.max(0) as u64, 4);
    out.push('-');
    push_padded(out, m as u64, 2);
    out.push('-');
    push_padded(out, d as u64, 2);
    out.push('T');
    let rem = rem as u64;
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push('Z');
}

/// Static label values for the few modes and dialects.
fn static_label(v: &str) -> &'static str {
    match v {
        "full" => "full",
        "minimal" => "minimal",
        "passthrough" => "passthrough",
        "anthropic" => "anthropic",
        "openai" => "openai",
        _ => "other",
    }
}

/// Metric handles by label set, looked up once and reused. Maps keyed by the crate's own static
/// labels use foldhash (fast, not meant to resist chosen keys); the ones keyed by a model family,
/// which a client chooses, keep std's SipHash.
#[derive(Default)]
pub struct MetricCache {
    requests: foldhash::HashMap<(&'static str, &'static str, &'static str), Counter>,
    timings: foldhash::HashMap<(&'static str, &'static str), [Histogram; 3]>,
    tokens: HashMap<String, [Counter; 4]>,
    cost: HashMap<String, Gauge>,
    upstream_errors: foldhash::HashMap<&'static str, Counter>,
}

impl MetricCache {
    pub fn record(&mut self, r: &UsageRecord) {
        let mode = static_label(&r.mode);
        let dialect = static_label(&r.dialect);
        let status = prom::status_class(r.status);
        self.requests
            .entry((mode, dialect, status))
            .or_insert_with(|| {
                counter!("ccproxy_requests_total", "mode" => mode, "dialect" => dialect, "status" => status)
            })
            .increment(1);
        let [duration, overhead, ttft] = self.timings.entry((mode, dialect)).or_insert_with(|| {
            [
                histogram!("ccproxy_request_duration_seconds", "mode" => mode, "dialect" => dialect),
                histogram!("ccproxy_proxy_overhead_seconds", "mode" => mode, "dialect" => dialect),
                histogram!("ccproxy_ttft_seconds", "mode" => mode, "dialect" => dialect),
            ]
        });
        duration.record(r.duration_ms / 1000.0);
        overhead.record(r.proxy_ms / 1000.0);
        if let Some(t) = r.ttft_ms {
            ttft.record(t / 1000.0);
        }
        let family = prom::model_family(r.model.as_deref());
        let t = &r.tokens;
        if t.input + t.output + t.cache_read + t.cache_write > 0 {
            let counters = match self.tokens.get(family.as_str()) {
                Some(c) => c,
                None => {
                    let f = family.clone();
                    let make = |kind: &'static str| counter!("ccproxy_tokens_total", "model" => f.clone(), "kind" => kind);
                    let c = [
                        make("input"),
                        make("output"),
                        make("cache_read"),
                        make("cache_write"),
                    ];
                    self.tokens.entry(family.clone()).or_insert(c)
                }
            };
            for (c, n) in counters
                .iter()
                .zip([t.input, t.output, t.cache_read, t.cache_write])
            {
                if n > 0 {
                    c.increment(n);
                }
            }
        }
        if let Some(c) = r.cost_usd {
            match self.cost.get(family.as_str()) {
                Some(g) => g.increment(c),
                None => {
                    let g = gauge!("ccproxy_cost_usd_total", "model" => family.clone());
                    g.increment(c);
                    self.cost.insert(family, g);
                }
            }
        }
        let upstream_kind = match (r.upstream_status, r.status) {
            (None, 502) => Some("connect"),
            (None, 504) => Some("timeout"),
            (Some(429), _) => Some("rate_limited"),
            (Some(529), _) => Some("overloaded"),
            (Some(s), _) if s >= 500 => Some("server_error"),
            (Some(_), _) if r.error.is_some() && r.status < 400 => Some("stream_error"),
            _ => None,
        };
        if let Some(kind) = upstream_kind {
            self.upstream_errors
                .entry(kind)
                .or_insert_with(|| counter!("ccproxy_upstream_errors_total", "kind" => kind))
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Finished {
        Finished {
            deferred: None,
            record: UsageRecord {
                request_id: "req_1".into(),
                mode: "full".into(),
                dialect: "openai".into(),
                model: Some("claude-x".into()),
                status: 200,
                upstream_status: Some(200),
                duration_ms: 1.5,
                error: Some("a \"quoted\" problem".into()),
                ..UsageRecord::default()
            },
            route: "chat_completions",
            upstream_request_id: None,
            held: Vec::new(),
        }
    }

    #[test]
    fn the_line_names_the_client_key() {
        let mut f = finished();
        let mut s = String::new();
        write_line(&mut s, &f, LogStyle::Pretty);
        assert!(!s.contains("client_key"), "{s}");
        f.record.client_key = Some("n8n-bot".into());
        write_line(&mut s, &f, LogStyle::Json);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["fields"]["client_key"], "n8n-bot");
    }

    #[test]
    fn json_line_is_json_in_the_subscriber_shape() {
        let mut s = String::new();
        write_line(&mut s, &finished(), LogStyle::Json);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["target"], "ccproxy::request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["error"], "a \"quoted\" problem");
        assert_eq!(v["fields"]["duration_ms"], 1.5);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn pretty_line_quotes_only_what_needs_it() {
        let mut s = String::new();
        write_line(&mut s, &finished(), LogStyle::Pretty);
        assert!(s.contains(" mode=full "), "{s}");
        assert!(s.contains(r#" error="a \"quoted\" problem""#), "{s}");
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn timestamps() {
        let mut s = String::new();
        write_timestamp(&mut s, std::time::Duration::new(1_709_209_800, 5_000));
        assert_eq!(s, "2024-02-29T12:30:00.000005Z");
    }
}

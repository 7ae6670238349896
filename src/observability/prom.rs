//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! Labels stay low-cardinality: mode, dialect, status class, model family,
//! token kind, error kind.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The installed recorder's handle (installed on first use; `None` if another
/// recorder was installed first by an embedding program).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            // Without an exporter task nothing drains histogram samples between
            // scrapes: do the exporter's upkeep here, or memory grows unscraped.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("ccproxy-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "ccproxy_requests_total",
        "Requests by mode, dialect and status class"
    );
    describe_histogram!("ccproxy_request_duration_seconds", "Whole request duration");
    describe_histogram!("ccproxy_ttft_seconds", "Time to the first content event");
    describe_histogram!(
        "ccproxy_proxy_overhead_seconds",
        "Time the proxy itself added before the response head"
    );
    describe_counter!("ccproxy_upstream_errors_total", "Upstream failures by kind");
    describe_counter!("ccproxy_tokens_total", "Tokens by model family and kind");
    describe_gauge!(
        "ccproxy_cost_usd_total",
        "Estimated cost in USD by model family"
    );
    describe_gauge!(
        "ccproxy_credential_available",
        "1 when the upstream credential takes requests, 0 while it cools down, failed or is held by plan_limits_only"
    );
    describe_gauge!(
        "ccproxy_credential_in_flight",
        "Requests waiting for the upstream's answer on the credential"
    );
    describe_gauge!(
        "ccproxy_credential_unavailable_until_seconds",
        "Epoch second the credential's cooldown or hold ends (0: available)"
    );
    describe_gauge!(
        "ccproxy_credential_utilization",
        "The subscription's reported utilisation of its 5-hour and 7-day limits (fraction)"
    );
    describe_gauge!("ccproxy_active_streams", "Streams being relayed now");
    describe_gauge!(
        "ccproxy_client_connections",
        "Client connections open on each serving thread (label thread; setting workers)"
    );
    describe_gauge!(
        "ccproxy_upstream_lanes",
        "Pooled upstream clients of a TLS or h2c upstream, each at most one HTTP/2 connection (another opens when every one carries as many requests as it allows)"
    );
    describe_gauge!(
        "ccproxy_upstream_streams_per_connection",
        "Requests one upstream HTTP/2 connection carries at most: upstream_h2_max_streams, or the server's SETTINGS_MAX_CONCURRENT_STREAMS if smaller"
    );
    describe_gauge!(
        "ccproxy_upstream_lane_requests",
        "Requests in flight on the pooled upstream clients (answer not yet read to the end)"
    );
    describe_counter!(
        "ccproxy_oauth_refreshes_total",
        "OAuth token refreshes by result"
    );
    describe_counter!(
        "ccproxy_usage_dropped_total",
        "Usage records dropped (queue full, failed write, or a usage database that cannot be opened)"
    );
    describe_counter!(
        "ccproxy_usage_rows_written_total",
        "Usage records written to the usage database"
    );
    describe_counter!(
        "ccproxy_usage_write_errors_total",
        "Failed writes (transactions) to the usage database"
    );
    describe_gauge!(
        "ccproxy_usage_store_healthy",
        "1 when the usage database opened and its last write succeeded, else 0"
    );
    describe_counter!(
        "ccproxy_observer_dropped_total",
        "Finished-request records dropped before logging (queue full)"
    );
}

/// The metrics text in Prometheus exposition format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// A low-cardinality model label: the model name without a date suffix, and
/// only for Claude-looking names.
pub fn model_family(model: Option<&str>) -> String {
    let Some(m) = model else {
        return "unknown".to_owned();
    };
    if !m.starts_with("claude") || m.len() > 64 {
        return "other".to_owned();
    }
    let trimmed = match m.rsplit_once('-') {
        Some((head, tail)) if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => m,
    };
    trimmed.to_owned()
}

/// `2xx`, `4xx`, …
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            model_family(Some("claude-sonnet-4-20250514")),
            "claude-sonnet-4"
        );
        assert_eq!(model_family(Some("claude-sonnet-4-5")), "claude-sonnet-4-5");
        assert_eq!(model_family(Some("gpt-4o")), "other");
        assert_eq!(model_family(None), "unknown");
    }
}

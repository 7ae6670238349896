//! The `send` phase: one upstream request, with the optional retries before the
//! first byte (connection failures, 529, 429 when enabled) and one retry after a
//! forced OAuth refresh when the upstream rejects the server's token.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};

use super::credential::Chosen;
use super::prepare::Prepared;
use crate::config::Settings;
use crate::error::{ErrorKind, ProxyError};
use crate::state::AppState;
use crate::upstream::UpstreamAuth;

/// Sends `prepared` upstream; `headers_for` builds the headers for a credential.
pub async fn send(
    state: &AppState,
    prepared: &Prepared,
    query: Option<&str>,
    chosen: &Chosen,
    headers_for: impl Fn(&UpstreamAuth) -> HeaderMap,
) -> Result<reqwest::Response, ProxyError> {
    let settings = &state.settings;
    let mut pending_headers = Some(headers_for(&chosen.auth));
    let mut attempt = 0;
    let resp = loop {
        // Clone the headers only while another attempt may follow.
        let headers = if attempt < settings.retries {
            pending_headers.clone().unwrap_or_default()
        } else {
            pending_headers.take().unwrap_or_default()
        };
        let result = once(state, prepared, query, headers).await;
        match retry_delay(settings, attempt, &result) {
            Some(delay) => {
                tracing::info!(
                    attempt = attempt + 1,
                    delay_ms = delay.as_millis() as u64,
                    "retrying the upstream request"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            None => break result?,
        }
    };
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    let (Some(used), Some(mgr)) = (chosen.oauth.as_ref(), state.oauth.as_ref()) else {
        return Ok(resp);
    };
    match mgr.force_refresh(used).await {
        Ok(fresh) => {
            tracing::info!("upstream rejected the OAuth token; retrying once with a refreshed one");
            let headers = headers_for(&UpstreamAuth::OAuth(fresh.secret().to_owned()));
            once(state, prepared, query, headers).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "forced OAuth refresh failed");
            Ok(resp)
        }
    }
}

async fn once(
    state: &AppState,
    p: &Prepared,
    query: Option<&str>,
    headers: HeaderMap,
) -> Result<reqwest::Response, ProxyError> {
    state
        .upstream
        .send(p.method.clone(), &p.path, query, headers, p.body.clone())
        .await
}

/// Whether (and after how long) to retry an upstream attempt. Only before any
/// byte went to the client: connection failures, 529, and 429 when enabled;
/// never other statuses. Honours `retry-after` up to the configured maximum.
fn retry_delay(
    settings: &Settings,
    attempt: u32,
    result: &Result<reqwest::Response, ProxyError>,
) -> Option<Duration> {
    if attempt >= settings.retries {
        return None;
    }
    let retry_after = match result {
        Err(e) if e.kind == ErrorKind::BadGateway => None,
        Ok(r) if r.status().as_u16() == 529 || (r.status() == 429 && settings.retry_429) => r
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
        _ => return None,
    };
    if let Some(wait) = retry_after {
        return (wait <= settings.retry_max_wait).then_some(wait);
    }
    // Exponential backoff from 250 ms with full jitter in [50%, 100%].
    let base = Duration::from_millis(250).saturating_mul(1 << attempt.min(6));
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    Some(base.mul_f64(jitter).min(settings.retry_max_wait))
}
